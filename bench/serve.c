/* serve.c — `fedllm serve` measured as its clients see it: real HTTP, streaming /v1/completions
 * (server-sent events) through libcurl's multi interface, 16 requests run 1, 4 and 16 at a time.
 *
 * Per preset (gpt2-124m, llama-110m) the model is the preset's exact shape with random weights
 * and a real byte-level BPE tokenizer (tests/fixtures/tokenizers/gpt2, 8000 ids) copied beside
 * it; the model keeps the preset's vocabulary (50257, 32000 rows), so the head costs what the
 * preset's does, and the server samples among the tokenizer's 8000 ids only. (`fedllm init-model
 * --tokenizer` would shrink the vocabulary to the tokenizer's instead.) Then it starts
 *
 *   fedllm serve --model DIR --port 0 --max-batch B --threads N
 *
 * and sends the same 16 prompts (text from the tokenizer fixture's sample.jsonl, each cut at
 * --prompt-chars bytes) with "stream": true, temperature 0 and max_tokens --max-tokens, keeping
 * `streams` requests in flight (a new one starts when one ends). At 1 stream this is the
 * sequential baseline: the same 16 requests one after another.
 *
 * Reported per level: generated tokens/s (the usage's completion_tokens of every request over
 * the wall time from the first request to the last [DONE]), p50/p99 time to first token (request
 * sent to the first chunk with text) and p50/p99 inter-token latency (the gaps between a stream's
 * chunks with text after the first; the server sends each decoding step's text as it settles, so
 * a chunk is a token unless text was held back, e.g. an incomplete UTF-8 sequence — the chunk and
 * token counts are printed side by side). Quantiles are nearest-rank: with 16 requests the p99 time
 * to first token is the slowest one's. The server has no knob to ignore end-of-text, so
 * requests that ended early (finish_reason "stop") are counted and their tokens are what they got.
 * Before timing, one untimed round of 16 short requests warms the server.
 *
 * usage: bench/serve [--fedllm build/fedllm] [--model gpt2-124m|llama-110m] [--max-tokens N (128)]
 *        [--prompt-chars N (300)] [--threads N (2)] [--max-batch N (16)] [--streams 1,4,16]
 *        [--tokenizer DIR] [--work DIR] [--json FILE] [--quick]
 * --quick: gpt2-124m only, 32 tokens a request. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_child.h"
#include "fedllm/model.h"
#include "fedllm/tokenizer.h"

enum { N_REQUESTS = 16, MAX_LEVELS = 8 };

typedef struct opts {
    const char *fedllm, *only_model, *tokenizer, *work, *json;
    int max_tokens, prompt_chars, threads, max_batch;
    int levels[MAX_LEVELS], n_levels;
} opts;

/* One streaming request: what arrived and when (seconds on bench_now_s's clock). */
typedef struct stream {
    CURL *curl;
    char *body; /* the request's JSON */
    char *sse;  /* received bytes not yet split into events */
    size_t sse_n, sse_cap;
    double sent_s, first_s, last_s;
    double *gaps_s; /* (gaps_cap) gaps between chunks with text */
    int n_gaps, gaps_cap, chunks, tokens, prompt_tokens, stopped, done, bad;
} stream;

typedef struct level_result {
    int streams, requests, tokens, chunks, stopped, failed;
    double wall_s, tokens_per_s, prompt_tokens_mean;
    double ttft_p50_ms, ttft_p99_ms, itl_p50_ms, itl_p99_ms;
} level_result;

/* ---- the model and the server -------------------------------------------------------------- */

/* The preset with random weights and the tokenizer in tokenizer_dir, written to dir as an HF
 * model directory; end-of-text and beginning ids are the tokenizer's. 0, or -1 (reported). */
static int write_model(const char *preset, const char *tokenizer_dir, const char *dir) {
    fl_err err;
    fl_config cfg;
    fl_tokenizer *tok = NULL;
    fl_arch arch = strcmp(preset, "gpt2-124m") == 0 ? FL_ARCH_GPT2 : FL_ARCH_LLAMA;
    if (fl_config_preset(&cfg, arch, preset, &err) || fl_tokenizer_load(&tok, tokenizer_dir, &err))
        return fprintf(stderr, "bench/serve: %s\n", err.msg), -1;
    if (fl_tokenizer_vocab_size(tok) > cfg.vocab_size) {
        fprintf(stderr, "bench/serve: the tokenizer has more ids than %s's vocabulary\n", preset);
        fl_tokenizer_free(tok);
        return -1;
    }
    cfg.bos_token_id = fl_tokenizer_bos(tok);
    cfg.eos_token_id = fl_tokenizer_eos(tok);
    fl_tokenizer_free(tok);
    if (mkdir(dir, 0755) && errno != EEXIST)
        return fprintf(stderr, "bench/serve: mkdir %s: %s\n", dir, strerror(errno)), -1;
    fl_model *m = fl_model_new_random(&cfg, 1, &err);
    int rc = !m || fl_model_save(m, dir, &err) || fl_tokenizer_copy_files(tokenizer_dir, dir, &err);
    if (rc) fprintf(stderr, "bench/serve: writing %s: %s\n", dir, err.msg);
    fl_model_free(m);
    return rc ? -1 : 0;
}

/* Starts `fedllm serve` on the model (stdout and stderr to log) and waits for its "listening on
 * http://HOST:PORT" line. The port, or -1 (the child is then gone). */
static int server_start(const opts *o, const char *model_dir, const char *log, pid_t *pid) {
    char batch[16], threads[16];
    snprintf(batch, sizeof batch, "%d", o->max_batch);
    snprintf(threads, sizeof threads, "%d", o->threads);
    *pid = fork();
    if (*pid < 0) return -1;
    if (*pid == 0) {
        FILE *f = freopen(log, "w", stderr);
        if (!f || dup2(fileno(stderr), STDOUT_FILENO) < 0) _exit(127);
        execl(o->fedllm, o->fedllm, "serve", "--model", model_dir, "--port", "0", "--max-batch",
              batch, "--threads", threads, (char *)NULL);
        _exit(127);
    }
    for (double t0 = bench_now_s(); bench_now_s() - t0 < 300;) {
        usleep(100 * 1000);
        FILE *f = fopen(log, "r");
        char line[1024];
        while (f && fgets(line, sizeof line, f)) {
            const char *at = strstr(line, "listening on http://");
            const char *colon = at ? strrchr(at, ':') : NULL;
            if (colon) {
                fclose(f);
                return atoi(colon + 1);
            }
        }
        if (f) fclose(f);
        int status;
        if (waitpid(*pid, &status, WNOHANG) == *pid) {
            fprintf(stderr, "bench/serve: fedllm serve exited; its log is %s\n", log);
            return -1;
        }
    }
    fprintf(stderr, "bench/serve: fedllm serve did not start in 300 s (%s)\n", log);
    kill(*pid, SIGTERM);
    waitpid(*pid, NULL, 0);
    return -1;
}

static void server_stop(pid_t pid) {
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

/* N_REQUESTS prompts from the "text" of sample.jsonl's records: record i onwards, joined, cut at
 * the first space after `chars` bytes. 0, or -1 (reported). */
static int load_prompts(const char *path, int chars, char *prompts[N_REQUESTS]) {
    FILE *f = fopen(path, "r");
    if (!f) return fprintf(stderr, "bench/serve: cannot read %s\n", path), -1;
    char *texts[256], *line = NULL;
    size_t cap = 0;
    int n = 0;
    while (n < 256 && getline(&line, &cap, f) > 0) {
        cJSON *o = cJSON_Parse(line);
        const cJSON *t = cJSON_GetObjectItem(o, "text");
        if (cJSON_IsString(t)) texts[n++] = strdup(t->valuestring);
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
    int rc = n >= N_REQUESTS ? 0 : -1;
    for (int p = 0; p < N_REQUESTS && !rc; p++) {
        size_t len = 0;
        prompts[p] = malloc((size_t)chars + 1024);
        prompts[p][0] = '\0';
        for (int i = p * (n / N_REQUESTS); len < (size_t)chars && i < n; i++) {
            size_t k = strlen(texts[i]);
            if (k > (size_t)chars + 1000 - len) k = (size_t)chars + 1000 - len;
            memcpy(prompts[p] + len, texts[i], k);
            len += k;
        }
        prompts[p][len] = '\0';
        char *space = len > (size_t)chars ? strchr(prompts[p] + chars, ' ') : NULL;
        if (space) *space = '\0';
    }
    for (int i = 0; i < n; i++)
        free(texts[i]);
    if (rc) fprintf(stderr, "bench/serve: %s has fewer than %d texts\n", path, N_REQUESTS);
    return rc;
}

/* ---- one streaming request ------------------------------------------------------------------ */

/* Handles one server-sent event (its "data: " line's payload). */
static void stream_event(stream *s, const char *data, double now) {
    if (strcmp(data, "[DONE]") == 0) {
        s->done = 1;
        return;
    }
    cJSON *o = cJSON_Parse(data);
    const cJSON *choices = cJSON_GetObjectItem(o, "choices");
    const cJSON *ch = cJSON_GetArrayItem(choices, 0), *usage = cJSON_GetObjectItem(o, "usage");
    if (!o || cJSON_GetObjectItem(o, "error")) s->bad = 1;
    const cJSON *text = cJSON_GetObjectItem(ch, "text");
    if (cJSON_IsString(text) && text->valuestring[0]) {
        if (s->chunks == 0)
            s->first_s = now;
        else if (s->n_gaps < s->gaps_cap)
            s->gaps_s[s->n_gaps++] = now - s->last_s;
        s->last_s = now;
        s->chunks++;
    }
    const cJSON *finish = cJSON_GetObjectItem(ch, "finish_reason");
    if (cJSON_IsString(finish) && strcmp(finish->valuestring, "stop") == 0) s->stopped = 1;
    const cJSON *completion = cJSON_GetObjectItem(usage, "completion_tokens");
    const cJSON *prompt = cJSON_GetObjectItem(usage, "prompt_tokens");
    if (cJSON_IsNumber(completion) && cJSON_IsNumber(prompt)) {
        s->tokens = completion->valueint;
        s->prompt_tokens = prompt->valueint;
    }
    cJSON_Delete(o);
}

static size_t stream_write(char *data, size_t size, size_t count, void *arg) {
    stream *s = arg;
    size_t n = size * count;
    double now = bench_now_s();
    if (s->sse_n + n + 1 > s->sse_cap) {
        size_t cap = 2 * (s->sse_n + n + 1);
        char *grown = realloc(s->sse, cap);
        if (!grown) return 0;
        s->sse = grown;
        s->sse_cap = cap;
    }
    memcpy(s->sse + s->sse_n, data, n);
    s->sse_n += n;
    s->sse[s->sse_n] = '\0';
    char *start = s->sse, *end;
    while ((end = strstr(start, "\n\n"))) {
        *end = '\0';
        if (strncmp(start, "data: ", 6) == 0) stream_event(s, start + 6, now);
        start = end + 2;
    }
    s->sse_n -= (size_t)(start - s->sse);
    memmove(s->sse, start, s->sse_n + 1);
    return n;
}

/* A request for prompt with max_tokens, added to multi; sent_s is now. */
static int stream_begin(stream *s, CURLM *multi, const char *url, struct curl_slist *headers,
                        const char *prompt, int max_tokens) {
    cJSON *req = cJSON_CreateObject();
    cJSON_AddStringToObject(req, "prompt", prompt);
    cJSON_AddNumberToObject(req, "max_tokens", max_tokens);
    cJSON_AddNumberToObject(req, "temperature", 0);
    cJSON_AddNumberToObject(req, "seed", 1);
    cJSON_AddBoolToObject(req, "stream", 1);
    cJSON_AddItemToObject(cJSON_AddObjectToObject(req, "stream_options"), "include_usage",
                          cJSON_CreateTrue());
    s->body = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    s->gaps_cap = max_tokens + 8;
    s->gaps_s = malloc((size_t)s->gaps_cap * sizeof *s->gaps_s);
    s->curl = curl_easy_init();
    if (!s->body || !s->gaps_s || !s->curl) return -1;
    curl_easy_setopt(s->curl, CURLOPT_URL, url);
    curl_easy_setopt(s->curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(s->curl, CURLOPT_POSTFIELDS, s->body);
    curl_easy_setopt(s->curl, CURLOPT_WRITEFUNCTION, stream_write);
    curl_easy_setopt(s->curl, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(s->curl, CURLOPT_PRIVATE, s);
    curl_easy_setopt(s->curl, CURLOPT_TCP_NODELAY, 1L);
    s->sent_s = bench_now_s();
    return curl_multi_add_handle(multi, s->curl) == CURLM_OK ? 0 : -1;
}

static void stream_free(stream *s) {
    if (s->curl) curl_easy_cleanup(s->curl);
    free(s->body);
    free(s->sse);
    free(s->gaps_s);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (0..1) of n values (sorted here), nearest rank; 0 for none. */
static double quantile(double *v, int n, double q) {
    if (n == 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    int rank = (int)(q * n + 0.999999);
    return v[rank < 1 ? 0 : rank > n ? n - 1 : rank - 1];
}

/* The 16 requests, `streams` at a time, against the server at url; fills res. */
static int run_level(const char *url, char *prompts[N_REQUESTS], int streams, int max_tokens,
                     level_result *res) {
    CURLM *multi = curl_multi_init();
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    stream s[N_REQUESTS];
    memset(s, 0, sizeof s);
    memset(res, 0, sizeof *res);
    res->streams = streams;
    res->requests = N_REQUESTS;
    int next = 0, running = 0, rc = 0;
    double t0 = bench_now_s();
    while (next < N_REQUESTS && running < streams && !rc) {
        rc = stream_begin(&s[next], multi, url, headers, prompts[next], max_tokens);
        next++, running++;
    }
    while (running > 0 && !rc) {
        int active;
        curl_multi_perform(multi, &active);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(multi, &left))) {
            if (msg->msg != CURLMSG_DONE) continue;
            stream *done;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&done);
            long status = 0;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
            if (msg->data.result != CURLE_OK || status != 200 || !done->done) {
                done->bad = 1;
                fprintf(stderr, "bench/serve: a request failed (%s, HTTP %ld): %.300s\n",
                        curl_easy_strerror(msg->data.result), status, done->sse ? done->sse : "");
            }
            curl_multi_remove_handle(multi, msg->easy_handle);
            running--;
            if (next < N_REQUESTS) {
                rc = stream_begin(&s[next], multi, url, headers, prompts[next], max_tokens);
                next++, running++;
            }
        }
        if (running > 0) curl_multi_poll(multi, NULL, 0, 100, NULL);
    }
    res->wall_s = bench_now_s() - t0;
    double ttft[N_REQUESTS], *gaps = malloc((size_t)N_REQUESTS * (max_tokens + 8) * sizeof *gaps);
    int n_ttft = 0, n_gaps = 0;
    for (int i = 0; i < N_REQUESTS && gaps; i++) {
        if (s[i].bad || !s[i].curl) {
            res->failed++;
            continue;
        }
        res->tokens += s[i].tokens;
        res->chunks += s[i].chunks;
        res->stopped += s[i].stopped;
        res->prompt_tokens_mean += (double)s[i].prompt_tokens / N_REQUESTS;
        if (s[i].chunks) ttft[n_ttft++] = s[i].first_s - s[i].sent_s;
        memcpy(gaps + n_gaps, s[i].gaps_s, (size_t)s[i].n_gaps * sizeof *gaps);
        n_gaps += s[i].n_gaps;
    }
    res->tokens_per_s = res->tokens / res->wall_s;
    res->ttft_p50_ms = 1e3 * quantile(ttft, n_ttft, 0.50);
    res->ttft_p99_ms = 1e3 * quantile(ttft, n_ttft, 0.99);
    res->itl_p50_ms = 1e3 * quantile(gaps, n_gaps, 0.50);
    res->itl_p99_ms = 1e3 * quantile(gaps, n_gaps, 0.99);
    free(gaps);
    for (int i = 0; i < N_REQUESTS; i++) {
        if (s[i].curl) curl_multi_remove_handle(multi, s[i].curl); /* (after a failed start) */
        stream_free(&s[i]);
    }
    curl_slist_free_all(headers);
    curl_multi_cleanup(multi);
    return rc || res->failed ? -1 : 0;
}

/* ---- main ------------------------------------------------------------------------------------ */

static double load_average(void) {
    double load = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f && fscanf(f, "%lf", &load) != 1) load = -1;
    if (f) fclose(f);
    return load;
}

static int bench_preset(const opts *o, const char *preset, char *prompts[N_REQUESTS], FILE *json) {
    char dir[1100], log[1200], url[128];
    snprintf(dir, sizeof dir, "%s/%s", o->work, preset);
    snprintf(log, sizeof log, "%s/%s.serve.log", o->work, preset);
    if (write_model(preset, o->tokenizer, dir)) return 1;
    pid_t pid;
    int port = server_start(o, dir, log, &pid);
    if (port <= 0) return 1;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/completions", port);
    level_result warm, res[MAX_LEVELS];
    int failures = run_level(url, prompts, N_REQUESTS, 4, &warm) ? 1 : 0;
    double sequential_tps = 0;
    for (int li = 0; li < o->n_levels && !failures; li++) {
        double load = load_average();
        level_result *r = &res[li];
        if (run_level(url, prompts, o->levels[li], o->max_tokens, r)) {
            printf("%-11s %7d  failed (%d of %d requests; log %s)\n", preset, r->streams, r->failed,
                   r->requests, log);
            failures++;
            continue;
        }
        if (r->streams == 1) sequential_tps = r->tokens_per_s;
        double ratio = sequential_tps > 0 ? r->tokens_per_s / sequential_tps : 0;
        printf("%-11s %7d %6d %7.0f %6d %6d %8.1f %6.2f %8.0f %8.0f %7.1f %7.1f %5d %5.2f\n",
               preset, r->streams, r->tokens, r->prompt_tokens_mean, r->chunks, r->stopped,
               r->tokens_per_s, ratio, r->ttft_p50_ms, r->ttft_p99_ms, r->itl_p50_ms, r->itl_p99_ms,
               o->threads, load);
        fflush(stdout);
        if (json)
            fprintf(json,
                    "{\"engine\": \"fedllm serve\", \"model\": \"%s\", \"streams\": %d, "
                    "\"requests\": %d, \"max_tokens\": %d, \"prompt_tokens_mean\": %.1f, "
                    "\"tokens\": %d, \"chunks\": %d, \"stopped_early\": %d, \"wall_s\": %.3f, "
                    "\"tokens_per_s\": %.2f, \"vs_sequential\": %.3f, \"ttft_p50_ms\": %.1f, "
                    "\"ttft_p99_ms\": %.1f, \"itl_p50_ms\": %.2f, \"itl_p99_ms\": %.2f, "
                    "\"threads\": %d, \"max_batch\": %d, \"loadavg_1m\": %.2f}\n",
                    preset, r->streams, r->requests, o->max_tokens, r->prompt_tokens_mean,
                    r->tokens, r->chunks, r->stopped, r->wall_s, r->tokens_per_s, ratio,
                    r->ttft_p50_ms, r->ttft_p99_ms, r->itl_p50_ms, r->itl_p99_ms, o->threads,
                    o->max_batch, load);
    }
    server_stop(pid);
    return failures;
}

static int parse_levels(const char *list, opts *o) {
    o->n_levels = 0;
    for (const char *p = list; *p && o->n_levels < MAX_LEVELS;) {
        int v = atoi(p);
        if (v < 1 || v > N_REQUESTS) return -1;
        o->levels[o->n_levels++] = v;
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    return o->n_levels ? 0 : -1;
}

int main(int argc, char **argv) {
    opts o = {.fedllm = "build/fedllm",
              .tokenizer = "tests/fixtures/tokenizers/gpt2",
              .max_tokens = 128,
              .prompt_chars = 300,
              .threads = 2,
              .max_batch = 16};
    parse_levels("1,4,16", &o);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            o.only_model = "gpt2-124m", o.max_tokens = 32;
            continue;
        }
        if (i + 1 >= argc) return fprintf(stderr, "bench/serve: %s needs a value\n", argv[i]), 2;
        const char *k = argv[i], *v = argv[++i];
        if (strcmp(k, "--fedllm") == 0)
            o.fedllm = v;
        else if (strcmp(k, "--model") == 0)
            o.only_model = v;
        else if (strcmp(k, "--tokenizer") == 0)
            o.tokenizer = v;
        else if (strcmp(k, "--work") == 0)
            o.work = v;
        else if (strcmp(k, "--json") == 0)
            o.json = v;
        else if (strcmp(k, "--max-tokens") == 0)
            o.max_tokens = atoi(v);
        else if (strcmp(k, "--prompt-chars") == 0)
            o.prompt_chars = atoi(v);
        else if (strcmp(k, "--threads") == 0)
            o.threads = atoi(v);
        else if (strcmp(k, "--max-batch") == 0)
            o.max_batch = atoi(v);
        else if (strcmp(k, "--streams") == 0) {
            if (parse_levels(v, &o)) return fprintf(stderr, "bench/serve: --streams 1,4,16\n"), 2;
        } else
            return fprintf(stderr, "bench/serve: unknown option %s\n", k), 2;
    }
    if (o.max_tokens < 1 || o.prompt_chars < 1 || o.threads < 1 || o.max_batch < 1)
        return fprintf(stderr, "bench/serve: bad --max-tokens/--prompt-chars/--threads\n"), 2;
    char work[] = "/tmp/fedllm-bench-serve-XXXXXX", sample[1100];
    if (!o.work && !(o.work = mkdtemp(work)))
        return fprintf(stderr, "bench/serve: mkdtemp: %s\n", strerror(errno)), 2;
    if (mkdir(o.work, 0755) && errno != EEXIST)
        return fprintf(stderr, "bench/serve: mkdir %s: %s\n", o.work, strerror(errno)), 2;
    snprintf(sample, sizeof sample, "%s/sample.jsonl", o.tokenizer);
    char *prompts[N_REQUESTS] = {0};
    if (load_prompts(sample, o.prompt_chars, prompts)) return 2;
    FILE *json = o.json ? fopen(o.json, "w") : NULL;
    if (o.json && !json) return fprintf(stderr, "bench/serve: cannot write %s\n", o.json), 2;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    printf("fedllm serve --max-batch %d --threads %d: %d streaming requests of %d tokens each, "
           "`streams` at a time (1 = sequential)\n",
           o.max_batch, o.threads, N_REQUESTS, o.max_tokens);
    printf("%-11s %7s %6s %7s %6s %6s %8s %6s %8s %8s %7s %7s %5s %5s\n", "model", "streams",
           "tokens", "prompt", "chunks", "eos", "tok/s", "vs seq", "ttft p50", "ttft p99",
           "itl p50", "itl p99", "thr", "load");
    printf("%-11s %7s %6s %7s %6s %6s %8s %6s %8s %8s %7s %7s\n", "", "", "", "(mean)", "", "", "",
           "", "(ms)", "(ms)", "(ms)", "(ms)");
    const char *presets[] = {"gpt2-124m", "llama-110m"};
    int failures = 0;
    for (int p = 0; p < 2; p++)
        if (!o.only_model || strcmp(o.only_model, presets[p]) == 0)
            failures += bench_preset(&o, presets[p], prompts, json);
    curl_global_cleanup();
    if (json) fclose(json);
    for (int i = 0; i < N_REQUESTS; i++)
        free(prompts[i]);
    if (o.work == work) {
        char cmd[200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", work);
        if (system(cmd) != 0) fprintf(stderr, "bench/serve: could not remove %s\n", work);
    }
    return failures ? 1 : 0;
}
