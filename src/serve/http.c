/* http.c — the OpenAI-compatible API (see http.h) on libmicrohttpd.
 *
 * libmicrohttpd parses HTTP; this file parses the JSON bodies (cJSON), turns a request into one
 * engine sequence per choice, and answers either at once (the whole text) or as server-sent
 * events: a content-reader callback that waits on the engine for text and writes OpenAI's chunk
 * objects, then "data: [DONE]". Each connection has its own thread (MHD_USE_THREAD_PER_CONNECTION),
 * so waiting on the engine blocks only that connection. A client that goes away ends its request,
 * which cancels its sequences: they leave the batch at the next step. A stream notices when a
 * write fails (the completion callback); a whole answer's wait looks at the socket every 0.1 s.
 * Log-probs, when asked for, are the engine's records (fedllm/serve.h) in OpenAI's shapes, each
 * token's text decoded alone.
 */
#define _GNU_SOURCE /* POLLRDHUP */
#include "serve/http.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include "fedllm/clock.h"

enum { MAX_CHOICES = 16, MAX_PROMPTS = 16, MAX_MESSAGES = 256 };
#define CLIENT_POLL_S 0.1 /* how often a non-streamed request looks whether its client left */

struct fl_http {
    struct MHD_Daemon *daemon;
    fl_engine *engine;
    fl_tokenizer *tok;
    fl_http_config cfg;
    int port;
    pthread_mutex_t log_mu;
    pthread_mutex_t tok_mu; /* fl_tokenizer_encode's word cache is not thread-safe */
};

typedef struct request {
    fl_http *h;
    fl_str body;
    int too_large;
    char method[16], path[160];
    double start;
    int status;
    /* the answer */
    int chat, stream, include_usage, n_gens;
    fl_gen *gens[MAX_CHOICES];
    size_t sent[MAX_CHOICES];
    int done[MAX_CHOICES], started[MAX_CHOICES];
    int logprobs;                /* the request asked for log-probs */
    size_t lp_sent[MAX_CHOICES]; /* log-prob records already answered */
    long lp_offset[MAX_CHOICES]; /* characters of the answered records' tokens (text_offset) */
    long completion_tokens;
    size_t prompt_tokens;
    char id[48];
    long created;
    fl_str out; /* stream bytes not yet handed to libmicrohttpd */
    size_t out_at;
    int finished; /* [DONE] queued */
    int cancelled;
} request;

/* ---- responses ---------------------------------------------------------------------------- */

static enum MHD_Result send_text(struct MHD_Connection *c, request *r, int status, char *json) {
    struct MHD_Response *res =
        MHD_create_response_from_buffer(strlen(json), json, MHD_RESPMEM_MUST_FREE);
    if (!res) {
        free(json);
        return MHD_NO;
    }
    MHD_add_response_header(res, "Content-Type", "application/json");
    r->status = status;
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, res);
    MHD_destroy_response(res);
    return ok;
}

static enum MHD_Result send_json(struct MHD_Connection *c, request *r, int status, cJSON *obj) {
    char *json = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!json) return MHD_NO;
    return send_text(c, r, status, json);
}

/* OpenAI's error shape: {"error": {"message", "type", "param", "code"}}. */
static enum MHD_Result send_error(struct MHD_Connection *c, request *r, int status,
                                  const char *message, const char *param, const char *code) {
    const char *type = status == 401   ? "authentication_error"
                       : status == 404 ? "not_found_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "type", type);
    if (param)
        cJSON_AddStringToObject(e, "param", param);
    else
        cJSON_AddNullToObject(e, "param");
    if (code)
        cJSON_AddStringToObject(e, "code", code);
    else
        cJSON_AddNullToObject(e, "code");
    return send_json(c, r, status, root);
}

/* ---- request bodies ------------------------------------------------------------------------- */

typedef struct parsed {
    fl_gen_params p;
    int n, stream, include_usage;
    char msg[640];
    const char *param;
    int status; /* 0: fine */
} parsed;

static int bad(parsed *q, int status, const char *param, const char *fmt, const char *what) {
    snprintf(q->msg, sizeof q->msg, fmt, what);
    q->param = param;
    q->status = status;
    return status;
}

/* A number field within [lo, hi] (absent: *out unchanged). */
static int number_field(const cJSON *root, const char *name, double lo, double hi, int integer,
                        double *out, parsed *q) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!it || cJSON_IsNull(it)) return 0;
    if (!cJSON_IsNumber(it) || (integer && it->valuedouble != (double)(long long)it->valuedouble))
        return bad(q, 400, name, integer ? "'%s' must be an integer" : "'%s' must be a number",
                   name);
    if (it->valuedouble < lo || it->valuedouble > hi) {
        snprintf(q->msg, sizeof q->msg, "'%s' is %g: expected %g to %g", name, it->valuedouble, lo,
                 hi);
        q->param = name;
        return q->status = 400;
    }
    *out = it->valuedouble;
    return 0;
}

static int bool_field(const cJSON *root, const char *name, int *out, parsed *q) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!it || cJSON_IsNull(it)) return 0;
    if (!cJSON_IsBool(it)) return bad(q, 400, name, "'%s' must be true or false", name);
    *out = cJSON_IsTrue(it);
    return 0;
}

/* Completions: "logprobs": 0 to 5 alternatives. Chat: "logprobs": true, and "top_logprobs": 0 to
 * 20 alternatives, which needs "logprobs": true (as OpenAI checks). */
static int logprob_fields(const cJSON *root, int chat, parsed *q) {
    double top = -1;
    if (!chat) {
        if (number_field(root, "logprobs", 0, 5, 1, &top, q)) return q->status;
        q->p.logprobs = top >= 0;
    } else {
        if (bool_field(root, "logprobs", &q->p.logprobs, q)) return q->status;
        if (number_field(root, "top_logprobs", 0, FL_GEN_MAX_TOP_LOGPROBS, 1, &top, q))
            return q->status;
        if (top >= 0 && !q->p.logprobs)
            return bad(q, 400, "top_logprobs", "'%s' needs \"logprobs\": true", "top_logprobs");
    }
    q->p.top_logprobs = top > 0 ? (int)top : 0;
    return 0;
}

/* The fields both endpoints share. max_tokens defaults to def_max (0: what the context leaves). */
static int common_fields(fl_http *h, const cJSON *root, int chat, parsed *q) {
    memset(q, 0, sizeof *q);
    q->p.sampling = h->cfg.defaults;
    q->n = 1;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsNull(model)) {
        if (!cJSON_IsString(model)) return bad(q, 400, "model", "'%s' must be a string", "model");
        if (strcmp(model->valuestring, h->cfg.model_id) != 0) {
            snprintf(q->msg, sizeof q->msg,
                     "The model '%.100s' does not exist (this server has '%.100s')",
                     model->valuestring, h->cfg.model_id);
            q->param = "model";
            return q->status = 404;
        }
    }
    double x;
    x = chat ? 0 : 16; /* OpenAI's default for completions; chat: what fits */
    const char *max_name = chat && cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens")
                               ? "max_completion_tokens"
                               : "max_tokens";
    if (number_field(root, max_name, 1, 1e12, 1, &x, q)) return q->status;
    if (x > (double)h->cfg.max_tokens) {
        snprintf(q->msg, sizeof q->msg, "'%s' is %.0f: this server allows at most %ld", max_name, x,
                 h->cfg.max_tokens);
        q->param = max_name;
        return q->status = 400;
    }
    q->p.max_tokens = (long)x;
    x = q->p.sampling.temperature;
    if (number_field(root, "temperature", 0, 2, 0, &x, q)) return q->status;
    q->p.sampling.temperature = (float)x;
    x = q->p.sampling.top_p;
    if (number_field(root, "top_p", 0, 1, 0, &x, q)) return q->status;
    if (x <= 0) return bad(q, 400, "top_p", "'%s' must be above 0", "top_p");
    q->p.sampling.top_p = (float)x;
    x = 1;
    if (number_field(root, "n", 1, h->cfg.max_n, 1, &x, q)) return q->status;
    q->n = (int)x;
    x = -1;
    if (number_field(root, "seed", -9.2e18, 9.2e18, 1, &x, q)) return q->status;
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(root, "seed");
    if (seed && !cJSON_IsNull(seed))
        q->p.sampling.seed = (uint64_t)(long long)x;
    else if (getrandom(&q->p.sampling.seed, sizeof q->p.sampling.seed, 0) !=
             (ssize_t)sizeof q->p.sampling.seed)
        q->p.sampling.seed = (uint64_t)(fl_now_s() * 1e9);
    static const char *const zero_only[] = {"frequency_penalty", "presence_penalty"};
    for (int i = 0; i < 2; i++) {
        x = 0;
        if (number_field(root, zero_only[i], -2, 2, 0, &x, q)) return q->status;
        if (x != 0)
            return bad(q, 400, zero_only[i], "'%s' is not supported by this server (only 0)",
                       zero_only[i]);
    }
    if (logprob_fields(root, chat, q)) return q->status;
    if (bool_field(root, "stream", &q->stream, q)) return q->status;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so))
            return bad(q, 400, "stream_options", "'%s' must be an object", "stream_options");
        if (bool_field(so, "include_usage", &q->include_usage, q)) return q->status;
    }
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop"), *it;
    if (stop && !cJSON_IsNull(stop)) {
        if (cJSON_IsString(stop)) {
            if (stop->valuestring[0]) q->p.stops[q->p.n_stops++] = stop->valuestring;
        } else if (cJSON_IsArray(stop) && cJSON_GetArraySize(stop) <= FL_GEN_MAX_STOPS) {
            cJSON_ArrayForEach(it, stop) {
                if (!cJSON_IsString(it))
                    return bad(q, 400, "stop", "'%s' must be a string or a list of strings",
                               "stop");
                if (it->valuestring[0]) q->p.stops[q->p.n_stops++] = it->valuestring;
            }
        } else {
            return bad(q, 400, "stop", "'%s' must be a string or a list of up to 4 strings",
                       "stop");
        }
        for (int i = 0; i < q->p.n_stops; i++)
            if (strlen(q->p.stops[i]) > FL_GEN_MAX_STOP_LEN)
                return bad(q, 400, "stop", "'%s' strings may have at most 256 bytes", "stop");
    }
    return 0;
}

/* A text's ids: BOS (when add_bos and the tokenizer adds one) and the text, as `fedllm generate`
 * encodes. Connections run on threads of their own and the tokenizer is shared, so encoding takes
 * h->tok_mu. */
static int encode_text(fl_http *h, const char *text, size_t len, int add_bos, fl_ids *ids,
                       fl_err *err) {
    int rc = add_bos && fl_tokenizer_adds_bos(h->tok)
                 ? fl_ids_push(ids, fl_tokenizer_bos(h->tok), err)
                 : FL_OK;
    if (rc) return rc;
    pthread_mutex_lock(&h->tok_mu);
    rc = fl_tokenizer_encode(h->tok, text, len, ids, err);
    pthread_mutex_unlock(&h->tok_mu);
    return rc;
}

/* The prompts of /v1/completions: a string, a list of strings, or a list of token ids. */
static int completion_prompts(fl_http *h, const cJSON *root, fl_ids *prompts, int *n_prompts,
                              parsed *q) {
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(root, "prompt"), *it;
    fl_err err;
    *n_prompts = 0;
    if (!prompt) return bad(q, 400, "prompt", "'%s' is required", "prompt");
    if (cJSON_IsString(prompt)) {
        if (encode_text(h, prompt->valuestring, strlen(prompt->valuestring), 1, &prompts[0], &err))
            return bad(q, 400, "prompt", "%s", err.msg);
        *n_prompts = 1;
        return 0;
    }
    if (!cJSON_IsArray(prompt) || cJSON_GetArraySize(prompt) < 1)
        return bad(q, 400, "prompt", "'%s' must be a string, a list of strings or token ids",
                   "prompt");
    if (cJSON_IsNumber(cJSON_GetArrayItem(prompt, 0))) {
        cJSON_ArrayForEach(it, prompt) {
            if (!cJSON_IsNumber(it) || it->valuedouble != (int)it->valuedouble)
                return bad(q, 400, "prompt", "'%s': a list of token ids holds only integers",
                           "prompt");
            if (fl_ids_push(&prompts[0], (int32_t)it->valuedouble, &err))
                return bad(q, 500, NULL, "%s", err.msg);
        }
        *n_prompts = 1;
        return 0;
    }
    if (cJSON_GetArraySize(prompt) > MAX_PROMPTS)
        return bad(q, 400, "prompt", "'%s': at most 16 prompts in one request", "prompt");
    cJSON_ArrayForEach(it, prompt) {
        if (!cJSON_IsString(it))
            return bad(q, 400, "prompt", "'%s' must be a string, a list of strings or token ids",
                       "prompt");
        if (encode_text(h, it->valuestring, strlen(it->valuestring), 1, &prompts[*n_prompts], &err))
            return bad(q, 400, "prompt", "%s", err.msg);
        (*n_prompts)++;
    }
    return 0;
}

/* A message's content: a string, or a list of {"type": "text", "text": ...} parts (joined). */
static int message_content(const cJSON *content, fl_str *out, parsed *q) {
    fl_err err;
    if (cJSON_IsString(content))
        return fl_str_append(out, content->valuestring, strlen(content->valuestring), &err)
                   ? bad(q, 500, NULL, "%s", err.msg)
                   : 0;
    const cJSON *part;
    if (!cJSON_IsArray(content))
        return bad(q, 400, "messages", "'%s': content must be a string or a list of text parts",
                   "messages");
    cJSON_ArrayForEach(part, content) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 ||
            !cJSON_IsString(text))
            return bad(q, 400, "messages",
                       "'%s': this server takes only text parts ({\"type\": \"text\"})",
                       "messages");
        if (fl_str_append(out, text->valuestring, strlen(text->valuestring), &err))
            return bad(q, 500, NULL, "%s", err.msg);
    }
    return 0;
}

static int chat_prompt(fl_http *h, const cJSON *root, fl_ids *ids, parsed *q) {
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(root, "messages"), *m;
    if (!cJSON_IsArray(messages) || cJSON_GetArraySize(messages) < 1)
        return bad(q, 400, "messages", "'%s' must be a non-empty list", "messages");
    int n = cJSON_GetArraySize(messages);
    if (n > MAX_MESSAGES) return bad(q, 400, "messages", "'%s': at most 256 messages", "messages");
    fl_chat_msg msgs[MAX_MESSAGES];
    fl_str texts[MAX_MESSAGES];
    memset(texts, 0, sizeof texts);
    int k = 0, rc = 0;
    cJSON_ArrayForEach(m, messages) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !content) {
            rc = bad(q, 400, "messages", "'%s': each message needs a role and a content",
                     "messages");
            break;
        }
        if ((rc = message_content(content, &texts[k], q))) break;
        msgs[k].role = role->valuestring;
        msgs[k].content = texts[k].s ? texts[k].s : "";
        k++;
    }
    fl_err err;
    fl_str rendered = {0};
    if (!rc && fl_chat_render(h->tok, msgs, k, 1, &rendered, &err))
        rc = bad(q, 400, "messages", "%s", err.msg);
    if (!rc && encode_text(h, rendered.s, rendered.n, 0, ids, &err))
        rc = bad(q, 400, "messages", "%s", err.msg);
    fl_str_free(&rendered);
    for (int i = 0; i < k + 1 && i < MAX_MESSAGES; i++)
        fl_str_free(&texts[i]);
    return rc;
}

/* ---- answers -------------------------------------------------------------------------------- */

static cJSON *usage_object(const request *r) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)r->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)r->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(r->prompt_tokens + r->completion_tokens));
    return u;
}

static cJSON *answer_head(const request *r, const char *object) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", r->id);
    cJSON_AddStringToObject(root, "object", object);
    cJSON_AddNumberToObject(root, "created", (double)r->created);
    cJSON_AddStringToObject(root, "model", r->h->cfg.model_id);
    return root;
}

/* A token's text as decoded alone, special tokens included (the bytes of an incomplete UTF-8
 * character become U+FFFD, as in the text). Never NULL. */
static const char *token_text(const fl_tokenizer *tok, int32_t id, fl_str *buf) {
    fl_err err;
    buf->n = 0;
    if (fl_tokenizer_decode(tok, &id, 1, 0, buf, &err) != FL_OK) buf->n = 0;
    if (fl_str_append(buf, "", 0, &err) != FL_OK) return "";
    return buf->s;
}

static long utf8_chars(const char *s) {
    long n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* {"token", "logprob", "bytes"}: chat's shape of one token. */
static cJSON *chat_token(const char *text, float logprob) {
    cJSON *t = cJSON_CreateObject(), *bytes;
    cJSON_AddStringToObject(t, "token", text);
    cJSON_AddNumberToObject(t, "logprob", logprob);
    bytes = cJSON_AddArrayToObject(t, "bytes");
    for (const char *b = text; *b; b++)
        cJSON_AddItemToArray(bytes, cJSON_CreateNumber((unsigned char)*b));
    return t;
}

/* Choice i's log-prob records not yet answered (those that exist now), in the request's shape:
 * completions {tokens, token_logprobs, top_logprobs, text_offset}, chat {content: [...]}. NULL
 * when the request did not ask. text_offset counts characters of the tokens' texts from the
 * start of the completion (as vLLM does without echo). */
static cJSON *logprobs_object(request *r, int i) {
    if (!r->logprobs) return NULL;
    const fl_tokenizer *tok = r->h->tok;
    size_t max = 64, n;
    fl_token_logprob *lp = malloc(max * sizeof *lp);
    cJSON *root = cJSON_CreateObject(), *content = NULL, *tokens = NULL, *token_lp = NULL,
          *top_lp = NULL, *offsets = NULL;
    if (r->chat) {
        content = cJSON_AddArrayToObject(root, "content");
        cJSON_AddNullToObject(root, "refusal");
    } else {
        tokens = cJSON_AddArrayToObject(root, "tokens");
        token_lp = cJSON_AddArrayToObject(root, "token_logprobs");
        top_lp = cJSON_AddArrayToObject(root, "top_logprobs");
        offsets = cJSON_AddArrayToObject(root, "text_offset");
    }
    fl_str buf = {0};
    while (lp && (n = fl_gen_logprobs(r->gens[i], r->lp_sent[i], lp, max)) > 0) {
        for (size_t k = 0; k < n; k++) {
            const char *text = token_text(tok, lp[k].id, &buf);
            if (r->chat) {
                cJSON *t = chat_token(text, lp[k].logprob);
                cJSON *top = cJSON_AddArrayToObject(t, "top_logprobs");
                for (int j = 0; j < lp[k].n_top; j++)
                    cJSON_AddItemToArray(top, chat_token(token_text(tok, lp[k].top_id[j], &buf),
                                                         lp[k].top_logprob[j]));
                cJSON_AddItemToArray(content, t);
                continue;
            }
            cJSON_AddItemToArray(tokens, cJSON_CreateString(text));
            cJSON_AddItemToArray(token_lp, cJSON_CreateNumber(lp[k].logprob));
            cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)r->lp_offset[i]));
            r->lp_offset[i] += utf8_chars(text);
            cJSON *top = cJSON_CreateObject();
            for (int j = 0; j < lp[k].n_top; j++) { /* a text two ids share: the likelier one */
                const char *alt = token_text(tok, lp[k].top_id[j], &buf);
                if (!cJSON_GetObjectItemCaseSensitive(top, alt))
                    cJSON_AddNumberToObject(top, alt, lp[k].top_logprob[j]);
            }
            cJSON_AddItemToArray(top_lp, top);
        }
        r->lp_sent[i] += n;
    }
    fl_str_free(&buf);
    free(lp);
    return root;
}

/* The choice's "logprobs": the records not yet answered, or null. */
static void add_logprobs(cJSON *choice, request *r, int i) {
    cJSON *lp = logprobs_object(r, i);
    if (lp)
        cJSON_AddItemToObject(choice, "logprobs", lp);
    else
        cJSON_AddNullToObject(choice, "logprobs");
}

/* Whether the client closed its side of the connection (or it broke). A client that only shuts
 * down its sending half while it waits for the answer reads as gone too; HTTP clients close the
 * whole socket. */
static int client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!info) return 0;
    struct pollfd p = {.fd = info->connect_fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* Waits until every choice finished, looking at the connection every CLIENT_POLL_S. 0 when the
 * client went away first: its sequences are then cancelled (they leave the batch at the next
 * step) and the tokens they made so far counted. */
static int wait_whole(struct MHD_Connection *c, request *r) {
    for (int i = 0; i < r->n_gens; i++) {
        while (fl_gen_wait(r->gens[i], (size_t)-1, CLIENT_POLL_S, NULL, 0).finish ==
               FL_FINISH_NONE) {
            if (!client_gone(c)) continue;
            for (int j = 0; j < r->n_gens; j++) {
                fl_gen_cancel(r->gens[j]);
                r->completion_tokens += fl_gen_wait(r->gens[j], 0, 0, NULL, 0).tokens;
            }
            return 0;
        }
    }
    return 1;
}

/* Waits for every choice to finish and answers with the whole texts; a client that goes away
 * first gets no answer (logged with status 499, as nginx names it). */
static enum MHD_Result answer_whole(struct MHD_Connection *c, request *r) {
    if (!wait_whole(c, r)) {
        r->status = 499;
        return MHD_NO;
    }
    for (int i = 0; i < r->n_gens; i++) {
        fl_gen_view v = fl_gen_wait(r->gens[i], 0, 0, NULL, 0);
        if (v.finish == FL_FINISH_ERROR) {
            char msg[600];
            snprintf(msg, sizeof msg, "the model failed: %.512s", v.error);
            return send_error(c, r, 500, msg, NULL, NULL);
        }
    }
    cJSON *root = answer_head(r, r->chat ? "chat.completion" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    for (int i = 0; i < r->n_gens; i++) {
        fl_str text = {0};
        fl_gen_view v = fl_gen_wait(r->gens[i], 0, 0, &text, 0);
        r->completion_tokens += v.tokens;
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddNumberToObject(ch, "index", i);
        if (r->chat) {
            cJSON *msg = cJSON_AddObjectToObject(ch, "message");
            cJSON_AddStringToObject(msg, "role", "assistant");
            cJSON_AddStringToObject(msg, "content", text.s ? text.s : "");
        } else {
            cJSON_AddStringToObject(ch, "text", text.s ? text.s : "");
        }
        add_logprobs(ch, r, i);
        const char *why = fl_finish_name(v.finish);
        cJSON_AddStringToObject(ch, "finish_reason",
                                v.finish == FL_FINISH_CANCELLED ? "length" : why);
        cJSON_AddItemToArray(choices, ch);
        fl_str_free(&text);
    }
    cJSON_AddItemToObject(root, "usage", usage_object(r));
    return send_json(c, r, 200, root);
}

/* One server-sent event with a chunk object for choice i: text (may be empty), finish (NULL
 * while it runs). */
static void stream_chunk(request *r, int i, const char *text, size_t len, const char *finish) {
    cJSON *root = answer_head(r, r->chat ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(root, "choices"), *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", i);
    char *copy = malloc(len + 1);
    if (copy) memcpy(copy, text, len), copy[len] = '\0';
    if (r->chat) {
        cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
        if (!r->started[i]) cJSON_AddStringToObject(delta, "role", "assistant");
        if (len || !finish) cJSON_AddStringToObject(delta, "content", copy ? copy : "");
    } else {
        cJSON_AddStringToObject(ch, "text", copy ? copy : "");
    }
    free(copy);
    r->started[i] = 1;
    add_logprobs(ch, r, i);
    if (finish)
        cJSON_AddStringToObject(ch, "finish_reason", finish);
    else
        cJSON_AddNullToObject(ch, "finish_reason");
    cJSON_AddItemToArray(choices, ch);
    if (r->include_usage) cJSON_AddNullToObject(root, "usage");
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    fl_err err;
    if (json) {
        fl_str_append(&r->out, "data: ", 6, &err);
        fl_str_append(&r->out, json, strlen(json), &err);
        fl_str_append(&r->out, "\n\n", 2, &err);
    }
    free(json);
}

/* A server-sent event with an OpenAI error object (the model failed a choice mid-stream). */
static void stream_error(request *r, const char *why) {
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    char msg[600];
    snprintf(msg, sizeof msg, "the model failed: %.512s", why);
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", "server_error");
    cJSON_AddNullToObject(e, "param");
    cJSON_AddNullToObject(e, "code");
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    fl_err err;
    if (json) {
        fl_str_append(&r->out, "data: ", 6, &err);
        fl_str_append(&r->out, json, strlen(json), &err);
        fl_str_append(&r->out, "\n\n", 2, &err);
    }
    free(json);
}

/* Fills r->out with what the engine has for this stream; blocks (briefly, repeatedly) until
 * there is something or the stream ends. */
static void stream_fill(request *r) {
    fl_err err;
    while (r->out_at >= r->out.n && !r->finished) {
        r->out.n = r->out_at = 0;
        int waiting = -1;
        for (int i = 0; i < r->n_gens; i++) {
            if (r->done[i]) continue;
            fl_str text = {0};
            fl_gen_view v = fl_gen_wait(r->gens[i], 0, 0, &text, r->sent[i]);
            if (v.text_len > r->sent[i] || (r->chat && !r->started[i]))
                stream_chunk(r, i, text.s ? text.s : "", v.text_len - r->sent[i], NULL);
            fl_str_free(&text);
            r->sent[i] = v.text_len;
            if (v.finish == FL_FINISH_ERROR) stream_error(r, v.error);
            if (v.finish != FL_FINISH_NONE) {
                r->done[i] = 1;
                r->completion_tokens += v.tokens;
                stream_chunk(r, i, "", 0,
                             v.finish == FL_FINISH_CANCELLED ? "length" : fl_finish_name(v.finish));
            } else if (waiting < 0) {
                waiting = i;
            }
        }
        if (waiting < 0) { /* every choice is done */
            if (r->include_usage) {
                cJSON *root = answer_head(r, r->chat ? "chat.completion.chunk" : "text_completion");
                cJSON_AddArrayToObject(root, "choices");
                cJSON_AddItemToObject(root, "usage", usage_object(r));
                char *json = cJSON_PrintUnformatted(root);
                cJSON_Delete(root);
                if (json) {
                    fl_str_append(&r->out, "data: ", 6, &err);
                    fl_str_append(&r->out, json, strlen(json), &err);
                    fl_str_append(&r->out, "\n\n", 2, &err);
                }
                free(json);
            }
            fl_str_append(&r->out, "data: [DONE]\n\n", 14, &err);
            r->finished = 1;
        } else if (r->out.n == 0) {
            fl_gen_wait(r->gens[waiting], r->sent[waiting], 0.25, NULL, 0);
        }
    }
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    request *r = cls;
    stream_fill(r);
    if (r->out_at >= r->out.n) return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = r->out.n - r->out_at < max ? r->out.n - r->out_at : max;
    memcpy(buf, r->out.s + r->out_at, n);
    r->out_at += n;
    return (ssize_t)n;
}

static enum MHD_Result answer_stream(struct MHD_Connection *c, request *r) {
    struct MHD_Response *res =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, r, NULL);
    if (!res) return MHD_NO;
    MHD_add_response_header(res, "Content-Type", "text/event-stream");
    MHD_add_response_header(res, "Cache-Control", "no-cache");
    r->status = 200;
    enum MHD_Result ok = MHD_queue_response(c, 200, res);
    MHD_destroy_response(res);
    return ok;
}

/* POST /v1/completions and /v1/chat/completions. */
static enum MHD_Result generate(struct MHD_Connection *c, request *r, int chat) {
    fl_http *h = r->h;
    cJSON *root = cJSON_ParseWithLength(r->body.s ? r->body.s : "", r->body.n);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return send_error(c, r, 400, "The request body is not a JSON object", NULL, NULL);
    }
    parsed q;
    fl_ids prompts[MAX_PROMPTS];
    memset(prompts, 0, sizeof prompts);
    int n_prompts = 0;
    if (!common_fields(h, root, chat, &q)) {
        if (chat) {
            if (!chat_prompt(h, root, &prompts[0], &q)) n_prompts = 1;
        } else {
            completion_prompts(h, root, prompts, &n_prompts, &q);
        }
    }
    if (!q.status && n_prompts * q.n > MAX_CHOICES)
        bad(&q, 400, "n", "'%s' times the number of prompts may be at most 16", "n");
    r->chat = chat;
    r->stream = q.stream;
    r->include_usage = q.include_usage;
    r->logprobs = q.p.logprobs;
    r->created = (long)time(NULL);
    unsigned char rnd[12];
    randombytes_buf(rnd, sizeof rnd);
    int at = snprintf(r->id, sizeof r->id, chat ? "chatcmpl-" : "cmpl-");
    for (size_t i = 0; i < sizeof rnd; i++)
        at += snprintf(r->id + at, sizeof r->id - (size_t)at, "%02x", rnd[i]);
    for (int pi = 0; pi < n_prompts && !q.status; pi++) {
        fl_gen_params p = q.p;
        long room = fl_engine_context(h->engine) - (long)prompts[pi].n;
        if (p.max_tokens == 0) p.max_tokens = room > 0 ? room : 1;
        for (int j = 0; j < q.n && !q.status; j++) {
            fl_err err;
            p.stream = (uint64_t)j << 32;
            fl_gen *g = fl_engine_submit(h->engine, prompts[pi].v, prompts[pi].n, &p, &err);
            if (!g) {
                bad(&q, err.code == FL_ETIMEOUT ? 503 : 400,
                    err.code == FL_ETIMEOUT ? NULL : (chat ? "messages" : "prompt"), "%s", err.msg);
                break;
            }
            r->gens[r->n_gens++] = g;
        }
        r->prompt_tokens += prompts[pi].n;
    }
    for (int i = 0; i < MAX_PROMPTS; i++)
        fl_ids_free(&prompts[i]);
    cJSON_Delete(root);
    if (q.status) {
        for (int i = 0; i < r->n_gens; i++)
            fl_gen_release(r->gens[i]);
        r->n_gens = 0;
        return send_error(c, r, q.status, q.msg, q.param,
                          q.status == 404 ? "model_not_found" : NULL);
    }
    return r->stream ? answer_stream(c, r) : answer_whole(c, r);
}

static enum MHD_Result list_models(struct MHD_Connection *c, request *r) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data"), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", r->h->cfg.model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "fedllm");
    cJSON_AddNumberToObject(m, "max_model_len", fl_engine_context(r->h->engine));
    cJSON_AddItemToArray(data, m);
    return send_json(c, r, 200, root);
}

/* Bearer-token check in constant time. */
static int authorised(fl_http *h, struct MHD_Connection *c) {
    const char *key = h->cfg.api_key;
    if (!key || !key[0]) return 1;
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!auth || strncmp(auth, "Bearer ", 7) != 0) return 0;
    auth += 7;
    size_t n = strlen(key);
    if (strlen(auth) != n) return 0;
    return sodium_memcmp(auth, key, n) == 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls) {
    (void)version;
    fl_http *h = cls;
    request *r = *con_cls;
    if (!r) {
        if (!(r = calloc(1, sizeof *r))) return MHD_NO;
        r->h = h;
        r->start = fl_now_s();
        snprintf(r->method, sizeof r->method, "%s", method);
        snprintf(r->path, sizeof r->path, "%s", url);
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_size) {
        fl_err err;
        if (r->body.n + *upload_size > h->cfg.max_body)
            r->too_large = 1;
        else if (fl_str_append(&r->body, upload_data, *upload_size, &err))
            r->too_large = 1;
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->status) return MHD_YES; /* answered already */
    int post = strcmp(method, "POST") == 0, get = strcmp(method, "GET") == 0;
    int completions = strcmp(url, "/v1/completions") == 0;
    int chat = strcmp(url, "/v1/chat/completions") == 0;
    int models = strcmp(url, "/v1/models") == 0;
    if (strcmp(url, "/health") == 0) {
        char *ok = strdup("{\"status\":\"ok\"}");
        return ok ? send_text(c, r, 200, ok) : MHD_NO;
    }
    if (!completions && !chat && !models) {
        char msg[240];
        snprintf(msg, sizeof msg, "Unknown path %.160s", url);
        return send_error(c, r, 404, msg, NULL, "unknown_url");
    }
    if (!authorised(h, c))
        return send_error(
            c, r, 401, "Incorrect or missing API key: send the header 'Authorization: Bearer KEY'",
            NULL, "invalid_api_key");
    if (models) return get ? list_models(c, r) : send_error(c, r, 405, "Use GET", NULL, NULL);
    if (!post) return send_error(c, r, 405, "Use POST", NULL, NULL);
    if (r->too_large) {
        char msg[160];
        snprintf(msg, sizeof msg, "The request body is over this server's limit of %zu bytes",
                 h->cfg.max_body);
        return send_error(c, r, 413, msg, NULL, NULL);
    }
    return generate(c, r, chat);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)c;
    fl_http *h = cls;
    request *r = *con_cls;
    if (!r) return;
    int gone = toe != MHD_REQUEST_TERMINATED_COMPLETED_OK;
    for (int i = 0; i < r->n_gens; i++) {
        if (!r->done[i] && r->stream) {
            fl_gen_view v = fl_gen_wait(r->gens[i], 0, 0, NULL, 0);
            if (!r->done[i]) r->completion_tokens += v.tokens;
        }
        fl_gen_release(r->gens[i]); /* cancels what still runs */
    }
    if (h->cfg.log) {
        pthread_mutex_lock(&h->log_mu);
        fprintf(h->cfg.log, "%s %s %d %zu+%ld tokens %.1f ms%s\n", r->method, r->path,
                r->status ? r->status : 500, r->prompt_tokens, r->completion_tokens,
                (fl_now_s() - r->start) * 1e3, gone ? " (the client went away)" : "");
        fflush(h->cfg.log);
        pthread_mutex_unlock(&h->log_mu);
    }
    fl_str_free(&r->body);
    fl_str_free(&r->out);
    free(r);
    *con_cls = NULL;
}

/* libmicrohttpd's own messages (a send that failed, a connection dropped) go to the log as
 * whole lines marked "libmicrohttpd: ", between the request lines. */
static void mhd_log(void *cls, const char *fmt, va_list ap) {
    fl_http *h = cls;
    if (!h->cfg.log) return;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && line[n - 1] == '\n')
        line[--n] = '\0';
    pthread_mutex_lock(&h->log_mu);
    fprintf(h->cfg.log, "libmicrohttpd: %s\n", line);
    fflush(h->cfg.log);
    pthread_mutex_unlock(&h->log_mu);
}

fl_http *fl_http_start(fl_engine *e, fl_tokenizer *tok, const fl_http_config *cfg, fl_err *err) {
    if (sodium_init() < 0) return fl_err_set(err, FL_EINTERNAL, "libsodium did not start"), NULL;
    fl_http *h = calloc(1, sizeof *h);
    if (!h) return fl_err_set(err, FL_ENOMEM, "out of memory"), NULL;
    h->engine = e;
    h->tok = tok;
    h->cfg = *cfg;
    pthread_mutex_init(&h->log_mu, NULL);
    pthread_mutex_init(&h->tok_mu, NULL);
    struct sockaddr_in v4 = {0};
    struct sockaddr_in6 v6 = {0};
    struct sockaddr *addr;
    unsigned flags =
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG;
    if (inet_pton(AF_INET, cfg->host, &v4.sin_addr) == 1) {
        v4.sin_family = AF_INET;
        v4.sin_port = htons((uint16_t)cfg->port);
        addr = (struct sockaddr *)&v4;
    } else if (inet_pton(AF_INET6, cfg->host, &v6.sin6_addr) == 1) {
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons((uint16_t)cfg->port);
        addr = (struct sockaddr *)&v6;
        flags |= MHD_USE_IPv6;
    } else {
        pthread_mutex_destroy(&h->log_mu);
        pthread_mutex_destroy(&h->tok_mu);
        free(h);
        return fl_err_set(err, FL_EINPUT, "--host %s: expected a numeric IPv4 or IPv6 address",
                          cfg->host),
               NULL;
    }
    unsigned limit = (unsigned)fl_engine_slots(e) * 4 + 16;
    h->daemon =
        MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_request, h,
                         MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h, /* first, for every message */
                         MHD_OPTION_SOCK_ADDR, addr, MHD_OPTION_CONNECTION_LIMIT, limit,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_NOTIFY_COMPLETED,
                         on_completed, h, MHD_OPTION_END);
    if (!h->daemon) {
        pthread_mutex_destroy(&h->log_mu);
        pthread_mutex_destroy(&h->tok_mu);
        free(h);
        return fl_err_set(err, FL_EIO, "cannot listen on %s port %d (in use, or not allowed)",
                          cfg->host, cfg->port),
               NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : cfg->port;
    return h;
}

int fl_http_port(const fl_http *h) { return h->port; }

void fl_http_stop(fl_http *h) {
    if (!h) return;
    MHD_stop_daemon(h->daemon);
    pthread_mutex_destroy(&h->log_mu);
    pthread_mutex_destroy(&h->tok_mu);
    free(h);
}
