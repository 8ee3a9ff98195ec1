/* generate.c — `fedllm generate`: continues a prompt with a model directory, streaming the text
 * to stdout as it is decoded (key/value cache; greedy or sampled, reproducible from --seed). */
#include <cjson/cJSON.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "fedllm/clock.h"
#include "fedllm/fileio.h"
#include "fedllm/generate.h"
#include "fedllm/model.h"
#include "fedllm/tokenizer.h"

static const char HELP[] =
    "usage: fedllm generate --model DIR [--adapter DIR] (--prompt TEXT | --prompts FILE) "
    "[options]\n"
    "\n"
    "  --max-tokens N (64)  --temperature T (0.8; 0 = greedy)  --top-k K (0 = off)\n"
    "  --top-p P (0.95)  --repetition-penalty R (1 = off)  --seed S (0)  --stop TEXT\n"
    "  (defaults come from the model's generation_config.json when it has one)\n"
    "  --chat               the prompt is a user message, rendered with the chat template\n"
    "  --system TEXT        a system message before it (with --chat)\n"
    "  --chat-template NAME plain, chatml, llama-2 or llama-3 instead of the tokenizer's\n"
    "  --threads N (the CPUs it may use: affinity mask, cgroup quota)\n"
    "\n"
    "Prints the continuation of the prompt (not the prompt) as it is generated; stops at an\n"
    "end-of-text id (generation_config.json's eos_token_id, else config.json's, and the\n"
    "tokenizer's), --stop TEXT (not printed) or --max-tokens. The same seed gives the same\n"
    "text. --prompts FILE generates for every line of FILE in one batch (prompts of different\n"
    "lengths are left-padded) and prints one JSON line per prompt: {\"prompt\", \"text\"}.\n"
    "Statistics go to stderr.\n";

enum {
    G_MODEL,
    G_ADAPTER,
    G_PROMPT,
    G_PROMPTS,
    G_CHAT,
    G_SYSTEM,
    G_TEMPLATE,
    G_MAX,
    G_TEMP,
    G_TOPK,
    G_TOPP,
    G_REP,
    G_SEED,
    G_STOP,
    G_THREADS,
    G_COUNT
};

static int parse(cli_opt *o, fl_sampling *s, long *max_tokens, cli_stop_ids *stops, fl_err *err) {
    double x;
    long v;
    *s = fl_sampling_defaults();
    *max_tokens = 64;
    if (!o[G_MODEL].value || !o[G_PROMPT].value == !o[G_PROMPTS].value)
        return fl_err_set(err, FL_EINPUT,
                          "--model and one of --prompt or --prompts are required (see --help)");
    if ((o[G_SYSTEM].value || o[G_TEMPLATE].value) && !o[G_CHAT].value)
        return fl_err_set(err, FL_EINPUT, "--system and --chat-template go with --chat");
    if (cli_read_generation_config(o[G_MODEL].value, s, max_tokens, stops, err)) return err->code;
    if (o[G_MAX].value && cli_int("max-tokens", o[G_MAX].value, 1, 1 << 20, max_tokens, err))
        return FL_EINPUT;
    if (o[G_TEMP].value && cli_float("temperature", o[G_TEMP].value, 0, 100, &x, err))
        return FL_EINPUT;
    if (o[G_TEMP].value) s->temperature = (float)x;
    if (o[G_TOPK].value && cli_int("top-k", o[G_TOPK].value, 0, 1 << 24, &v, err)) return FL_EINPUT;
    if (o[G_TOPK].value) s->top_k = (int)v;
    if (o[G_TOPP].value && cli_float("top-p", o[G_TOPP].value, 1e-9, 1, &x, err)) return FL_EINPUT;
    if (o[G_TOPP].value) s->top_p = (float)x;
    if (o[G_REP].value && cli_float("repetition-penalty", o[G_REP].value, 1e-3, 100, &x, err))
        return FL_EINPUT;
    if (o[G_REP].value) s->repetition_penalty = (float)x;
    if (o[G_SEED].value && cli_int("seed", o[G_SEED].value, 0, 1L << 62, &v, err)) return FL_EINPUT;
    if (o[G_SEED].value) s->seed = (uint64_t)v;
    if (o[G_THREADS].value) {
        if (cli_int("threads", o[G_THREADS].value, 1, 1024, &v, err)) return FL_EINPUT;
        omp_set_num_threads((int)v);
    }
    return FL_OK;
}

/* Streams text to stdout, holding back the bytes that could still begin the stop string.
 * Returns 1 once the text ends with stop (which is not printed). */
typedef struct stream {
    char *text;
    size_t len, printed, cap;
    const char *stop;
} stream;

static int stream_add(stream *st, const char *bytes, size_t n) {
    if (st->len + n + 1 > st->cap) {
        size_t cap = (st->len + n + 1) * 2;
        char *grown = realloc(st->text, cap);
        if (!grown) return 1;
        st->text = grown, st->cap = cap;
    }
    memcpy(st->text + st->len, bytes, n);
    st->len += n;
    st->text[st->len] = 0;
    size_t stop_len = st->stop ? strlen(st->stop) : 0;
    if (stop_len && st->len >= stop_len && strstr(st->text + (st->printed), st->stop)) {
        size_t at = (size_t)(strstr(st->text + st->printed, st->stop) - st->text);
        fwrite(st->text + st->printed, 1, at - st->printed, stdout);
        st->printed = st->len;
        return 1;
    }
    size_t safe = stop_len && st->len >= stop_len - 1 ? st->len - (stop_len - 1)
                  : stop_len                          ? 0
                                                      : st->len;
    if (safe > st->printed) {
        fwrite(st->text + st->printed, 1, safe - st->printed, stdout);
        st->printed = safe;
        fflush(stdout);
    }
    return 0;
}

/* The prompts: --prompt, or the non-blank lines of --prompts FILE. */
typedef struct prompts {
    char **text;
    int n;
    char *file; /* --prompts' contents, which text points into */
} prompts;

static int read_prompts(const cli_opt *o, prompts *p, fl_err *err) {
    if (o[G_PROMPT].value) {
        p->text = malloc(sizeof *p->text);
        if (!p->text) return fl_err_set(err, FL_ENOMEM, "out of memory");
        p->text[0] = (char *)o[G_PROMPT].value;
        p->n = 1;
        return FL_OK;
    }
    size_t len;
    if (fl_read_file(o[G_PROMPTS].value, &p->file, &len, 64 << 20, err)) return err->code;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += p->file[i] == '\n';
    if (!(p->text = malloc(lines * sizeof *p->text)))
        return fl_err_set(err, FL_ENOMEM, "out of memory");
    for (char *save = NULL, *line = strtok_r(p->file, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        size_t n = strlen(line);
        if (n && line[n - 1] == '\r') line[--n] = '\0';
        if (strspn(line, " \t") < n) p->text[p->n++] = line;
    }
    if (p->n == 0)
        return fl_err_set(err, FL_EINPUT, "%s: no prompts (every line is blank)",
                          o[G_PROMPTS].value);
    return FL_OK;
}

/* A prompt's ids: the chat rendering (which carries its own BOS) or BOS + the text. */
static int prompt_ids(fl_tokenizer *tok, const cli_opt *o, const char *text, fl_ids *ids,
                      fl_err *err) {
    if (!o[G_CHAT].value) {
        int rc = fl_tokenizer_adds_bos(tok) ? fl_ids_push(ids, fl_tokenizer_bos(tok), err) : 0;
        return rc ? rc : fl_tokenizer_encode(tok, text, strlen(text), ids, err);
    }
    fl_chat_msg msgs[2] = {{"system", o[G_SYSTEM].value}, {"user", text}};
    int first = o[G_SYSTEM].value ? 0 : 1;
    fl_str rendered = {0};
    int rc = fl_chat_render(tok, msgs + first, 2 - first, 1, &rendered, err);
    if (!rc) rc = fl_tokenizer_encode(tok, rendered.s, rendered.n, ids, err);
    fl_str_free(&rendered);
    return rc;
}

/* One row of the batch: its ids and the settled text of what it has generated (the streamed text
 * equals the batched one because both are this stream's). */
typedef struct row {
    fl_decode_stream ds;
    int done;
} row;

static void print_json_string(const char *s) {
    cJSON *str = cJSON_CreateString(s);
    char *json = str ? cJSON_PrintUnformatted(str) : NULL;
    fputs(json ? json : "null", stdout);
    free(json);
    cJSON_Delete(str);
}

typedef struct job {
    fl_model *m;
    fl_tokenizer *tok;
    fl_sampling sampling;
    long max_tokens;
    const char *stop;
    cli_stop_ids stops; /* the end-of-text ids */
    int B;
    int streaming; /* --prompt: print as it comes; --prompts: JSON lines at the end */
    row *rows;
    long produced;
} job;

static int run(job *j, fl_err *err) {
    const fl_config *cfg = fl_model_config(j->m);
    int B = j->B, V = cfg->vocab_size, eos = fl_tokenizer_eos(j->tok);
    if (!j->stops.from_generation_config) cli_stop_add(&j->stops, cfg->eos_token_id);
    cli_stop_add(&j->stops, eos);
    if (eos < 0 && j->stops.n) eos = j->stops.id[0]; /* what pads and ends a finished row */
    /* sample only ids the tokenizer can print (models often pad their vocabulary) */
    int V_text = fl_tokenizer_vocab_size(j->tok) < V ? fl_tokenizer_vocab_size(j->tok) : V;
    size_t longest = 0;
    for (int b = 0; b < B; b++)
        longest = j->rows[b].ds.n_prompt > longest ? j->rows[b].ds.n_prompt : longest;
    if ((long)longest >= fl_config_context(cfg))
        return fl_err_set(err, FL_EINPUT, "prompt: %zu tokens leave no room in the context of %d",
                          longest, fl_config_context(cfg));
    long room = fl_config_context(cfg) - (long)longest;
    if (j->max_tokens > room) j->max_tokens = room;
    int T0 = (int)longest;
    int32_t *tokens = malloc((size_t)B * (size_t)T0 * sizeof *tokens);
    int *pad = malloc((size_t)B * sizeof *pad);
    float *logits = malloc((size_t)B * (size_t)V * sizeof *logits);
    fl_kv_cache *kc = NULL;
    int rc = tokens && pad && logits ? FL_OK : fl_err_set(err, FL_ENOMEM, "out of memory");
    for (int b = 0; b < B && !rc; b++) {
        row *r = &j->rows[b];
        pad[b] = T0 - (int)r->ds.n_prompt;
        for (int t = 0; t < T0; t++)
            tokens[(size_t)b * T0 + t] =
                t < pad[b] ? (eos >= 0 ? eos : 0) : r->ds.ids.v[t - pad[b]];
    }
    if (!rc && !(kc = fl_kv_cache_new(j->m, B, T0 + (int)j->max_tokens, err))) rc = err->code;
    if (!rc) rc = fl_kv_cache_set_padding(kc, pad, err);
    if (!rc) rc = fl_model_decode(j->m, kc, tokens, T0, logits, err);
    stream st = {.stop = j->stop};
    int active = B;
    while (!rc && active && j->produced < j->max_tokens) {
        for (int b = 0; b < B && !rc; b++) {
            row *r = &j->rows[b];
            int32_t next = eos >= 0 ? eos : 0;
            if (!r->done) {
                next = fl_sample(logits + (size_t)b * V, V_text, &j->sampling, r->ds.ids.v,
                                 (int)r->ds.ids.n, (uint64_t)b << 32 | (uint64_t)j->produced);
                if (cli_is_stop(&j->stops, next)) {
                    r->done = 1;
                } else {
                    rc = fl_decode_stream_push(&r->ds, next, err);
                    const fl_str *text = &r->ds.text; /* settled: it only grows */
                    if (!rc && j->streaming && text->n > st.len &&
                        stream_add(&st, text->s + st.len, text->n - st.len))
                        r->done = 1;
                    if (!rc && !j->streaming && j->stop && strstr(text->s, j->stop)) r->done = 1;
                }
                active -= r->done;
            }
            tokens[b] = next;
        }
        j->produced++;
        if (!rc && active && j->produced < j->max_tokens)
            rc = fl_model_decode(j->m, kc, tokens, 1, logits, err);
    }
    for (int b = 0; b < B && !rc; b++) {
        fl_str *text = &j->rows[b].ds.text;
        rc = fl_decode_stream_finish(&j->rows[b].ds, err);
        char *stop = !rc && j->stop ? strstr(text->s, j->stop) : NULL;
        if (stop && !j->streaming) text->n = (size_t)(stop - text->s), *stop = '\0';
    }
    if (!rc && j->streaming) {
        const fl_str *text = &j->rows[0].ds.text;
        if (text->n > st.len && !(st.stop && strstr(st.text ? st.text : "", st.stop)))
            stream_add(&st, text->s + st.len, text->n - st.len);
        if (st.printed < st.len && !(st.stop && strstr(st.text, st.stop)))
            fwrite(st.text + st.printed, 1, st.len - st.printed, stdout);
        fputc('\n', stdout);
    }
    free(st.text);
    free(tokens);
    free(pad);
    free(logits);
    fl_kv_cache_free(kc);
    return rc;
}

int cli_generate(int argc, char **argv) {
    cli_opt o[G_COUNT] = {
        [G_MODEL] = {"model", 1, NULL},
        [G_ADAPTER] = {"adapter", 1, NULL},
        [G_PROMPT] = {"prompt", 1, NULL},
        [G_PROMPTS] = {"prompts", 1, NULL},
        [G_CHAT] = {"chat", 0, NULL},
        [G_SYSTEM] = {"system", 1, NULL},
        [G_TEMPLATE] = {"chat-template", 1, NULL},
        [G_MAX] = {"max-tokens", 1, NULL},
        [G_TEMP] = {"temperature", 1, NULL},
        [G_TOPK] = {"top-k", 1, NULL},
        [G_TOPP] = {"top-p", 1, NULL},
        [G_REP] = {"repetition-penalty", 1, NULL},
        [G_SEED] = {"seed", 1, NULL},
        [G_STOP] = {"stop", 1, NULL},
        [G_THREADS] = {"threads", 1, NULL},
    };
    int help;
    fl_err err = {0};
    job j = {0};
    if (cli_parse(argc, argv, 2, o, G_COUNT, &help, &err)) return cli_fail("generate", &err);
    if (help) return fputs(HELP, stdout), 0;
    if (parse(o, &j.sampling, &j.max_tokens, &j.stops, &err)) return cli_fail("generate", &err);
    j.stop = o[G_STOP].value;
    j.streaming = o[G_PROMPT].value != NULL;
    prompts p = {0};
    int rc = read_prompts(o, &p, &err);
    if (!rc && !(j.m = fl_model_load(o[G_MODEL].value, &err))) rc = err.code;
    if (!rc && o[G_ADAPTER].value) rc = fl_model_load_adapter(j.m, o[G_ADAPTER].value, &err);
    if (!rc)
        rc = fl_tokenizer_load_for_model(&j.tok, o[G_MODEL].value, fl_model_config(j.m)->vocab_size,
                                         &err);
    if (!rc && o[G_TEMPLATE].value)
        rc = fl_tokenizer_set_chat_format(j.tok, o[G_TEMPLATE].value, &err);
    if (!rc && !(j.rows = calloc((size_t)p.n, sizeof *j.rows)))
        rc = fl_err_set(&err, FL_ENOMEM, "out of memory");
    j.B = rc ? 0 : p.n;
    for (int b = 0; b < j.B && !rc; b++) {
        fl_ids ids = {0};
        rc = prompt_ids(j.tok, o, p.text[b], &ids, &err);
        if (!rc && ids.n == 0)
            rc = fl_err_set(&err, FL_EINPUT, "prompt %d: expected some text", b + 1);
        if (!rc) rc = fl_decode_stream_init(&j.rows[b].ds, j.tok, ids.v, ids.n, &err);
        fl_ids_free(&ids);
    }
    double start = fl_now_s();
    if (!rc) rc = run(&j, &err);
    for (int b = 0; b < j.B && !rc && !j.streaming; b++) {
        fputs("{\"prompt\": ", stdout);
        print_json_string(p.text[b]);
        fputs(", \"text\": ", stdout);
        print_json_string(j.rows[b].ds.text.s ? j.rows[b].ds.text.s : "");
        fputs("}\n", stdout);
    }
    if (!rc) {
        double seconds = fl_now_s() - start;
        fprintf(stderr, "%d prompt(s), %ld steps, %.1f tokens/s per prompt\n", j.B, j.produced,
                j.produced / (seconds > 0 ? seconds : 1e-9));
    }
    for (int b = 0; b < j.B; b++)
        fl_decode_stream_free(&j.rows[b].ds);
    free(j.rows);
    free(p.text);
    free(p.file);
    fl_tokenizer_free(j.tok);
    fl_model_free(j.m);
    return rc ? cli_fail("generate", &err) : 0;
}
