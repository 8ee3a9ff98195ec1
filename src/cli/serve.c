/* serve.c — `fedllm serve`: a model (and adapter) behind an OpenAI-compatible HTTP API, with
 * continuous batching (src/serve/). Runs until SIGINT or SIGTERM. */
#include <errno.h>
#include <limits.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "fedllm/model.h"
#include "fedllm/serve.h"
#include "fedllm/tokenizer.h"
#include "serve/http.h"

static const char HELP[] =
    "usage: fedllm serve --model DIR [--adapter DIR] [options]\n"
    "\n"
    "Serves the model on an OpenAI-compatible API: GET /v1/models, POST /v1/completions,\n"
    "POST /v1/chat/completions (the model's chat template), streaming with \"stream\": true.\n"
    "Concurrent requests share the model: each step decodes one token of every running\n"
    "sequence, and new requests join between steps.\n"
    "  --host ADDR (127.0.0.1)  --port N (8000; 0 = any free port)\n"
    "  --api-key KEY            require 'Authorization: Bearer KEY' (or FEDLLM_API_KEY)\n"
    "  --max-batch N (16)       sequences decoded together; more wait in a queue\n"
    "  --ctx N                  positions per sequence, prompt included (the model's context,\n"
    "                           at most 4096 unless given)\n"
    "  --max-tokens N           the most max_tokens a request may ask for (--ctx)\n"
    "  --max-body BYTES (1048576)  --name ID (the model directory's name)\n"
    "  --chat-template NAME     plain, chatml, llama-2 or llama-3 instead of the tokenizer's\n"
    "  --threads N (the CPUs it may use)\n"
    "Prints 'listening on http://HOST:PORT' when ready, then one line per request.\n"
    "Fields, limits, log-probs and the log: docs/serve.md.\n";

enum {
    S_MODEL,
    S_ADAPTER,
    S_HOST,
    S_PORT,
    S_KEY,
    S_BATCH,
    S_CTX,
    S_MAXTOK,
    S_BODY,
    S_NAME,
    S_TEMPLATE,
    S_THREADS,
    S_N
};

/* The served name: --name, else the model directory's last component. */
static void model_name(const char *dir, const char *given, char *out, size_t size) {
    if (given) {
        snprintf(out, size, "%s", given);
        return;
    }
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    size_t start = n;
    while (start > 0 && dir[start - 1] != '/')
        start--;
    snprintf(out, size, "%.*s", (int)(n - start), dir + start);
}

int cli_serve(int argc, char **argv) {
    cli_opt o[S_N] = {[S_MODEL] = {"model", 1, NULL},
                      [S_ADAPTER] = {"adapter", 1, NULL},
                      [S_HOST] = {"host", 1, NULL},
                      [S_PORT] = {"port", 1, NULL},
                      [S_KEY] = {"api-key", 1, NULL},
                      [S_BATCH] = {"max-batch", 1, NULL},
                      [S_CTX] = {"ctx", 1, NULL},
                      [S_MAXTOK] = {"max-tokens", 1, NULL},
                      [S_BODY] = {"max-body", 1, NULL},
                      [S_NAME] = {"name", 1, NULL},
                      [S_TEMPLATE] = {"chat-template", 1, NULL},
                      [S_THREADS] = {"threads", 1, NULL}};
    int help;
    fl_err err = {0};
    if (cli_parse(argc, argv, 2, o, S_N, &help, &err)) return cli_fail("serve", &err);
    if (help) return fputs(HELP, stdout), 0;
    if (!o[S_MODEL].value) {
        fl_err_set(&err, FL_EINPUT, "--model is required (see --help)");
        return cli_fail("serve", &err);
    }
    long port = 8000, batch = 16, ctx = 0, max_tokens = 0, body = 1 << 20, threads = 0;
    if ((o[S_PORT].value && cli_int("port", o[S_PORT].value, 0, 65535, &port, &err)) ||
        (o[S_BATCH].value && cli_int("max-batch", o[S_BATCH].value, 1, 1024, &batch, &err)) ||
        (o[S_CTX].value && cli_int("ctx", o[S_CTX].value, 2, INT_MAX, &ctx, &err)) ||
        (o[S_MAXTOK].value &&
         cli_int("max-tokens", o[S_MAXTOK].value, 1, INT_MAX, &max_tokens, &err)) ||
        (o[S_BODY].value && cli_int("max-body", o[S_BODY].value, 1024, 1L << 30, &body, &err)) ||
        (o[S_THREADS].value && cli_int("threads", o[S_THREADS].value, 1, 1024, &threads, &err)))
        return cli_fail("serve", &err);
    const char *key = o[S_KEY].value ? o[S_KEY].value : getenv("FEDLLM_API_KEY");
    if (threads) omp_set_num_threads((int)threads);

    fl_sampling defaults = {
        .temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .repetition_penalty = 1.0f}; /* OpenAI's */
    long gen_max = 0;
    cli_stop_ids stops = {0};
    fl_model *m = NULL;
    fl_tokenizer *tok = NULL;
    fl_engine *engine = NULL;
    fl_http *http = NULL;
    int rc = cli_read_generation_config(o[S_MODEL].value, &defaults, &gen_max, &stops, &err);
    if (!rc && !(m = fl_model_load(o[S_MODEL].value, &err))) rc = err.code;
    if (!rc && o[S_ADAPTER].value) rc = fl_model_load_adapter(m, o[S_ADAPTER].value, &err);
    if (!rc)
        rc = fl_tokenizer_load_for_model(&tok, o[S_MODEL].value, fl_model_config(m)->vocab_size,
                                         &err);
    if (!rc && o[S_TEMPLATE].value)
        rc = fl_tokenizer_set_chat_format(tok, o[S_TEMPLATE].value, &err);
    if (!rc) {
        int model_ctx = fl_config_context(fl_model_config(m));
        if (ctx == 0) ctx = model_ctx < 4096 ? model_ctx : 4096;
        if (ctx > model_ctx)
            rc =
                fl_err_set(&err, FL_EINPUT, "--ctx %ld: the model's context is %d", ctx, model_ctx);
        if (max_tokens == 0 || max_tokens > ctx) max_tokens = ctx;
    }
    if (!rc) {
        if (!stops.from_generation_config) cli_stop_add(&stops, fl_model_config(m)->eos_token_id);
        cli_stop_add(&stops, fl_tokenizer_eos(tok));
        if (!(engine = fl_engine_new(m, tok, (int)batch, (int)ctx, stops.id, stops.n, &err)))
            rc = err.code;
    }
    /* The signals that stop the server go to this thread only (sigwait below). */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN);
    char name[256];
    model_name(o[S_MODEL].value, o[S_NAME].value, name, sizeof name);
    fl_http_config cfg = {.host = o[S_HOST].value ? o[S_HOST].value : "127.0.0.1",
                          .port = (int)port,
                          .api_key = key,
                          .model_id = name,
                          .max_body = (size_t)body,
                          .max_tokens = max_tokens,
                          .max_n = 16,
                          .defaults = defaults,
                          .log = stderr};
    if (!rc && !(http = fl_http_start(engine, tok, &cfg, &err))) rc = err.code;
    if (!rc) {
        int v6 = strchr(cfg.host, ':') != NULL;
        fprintf(stderr,
                "fedllm serve: %s (%d slots of %ld positions%s) listening on http://%s%s%s:%d\n",
                name, (int)batch, ctx, key && key[0] ? ", API key required" : "", v6 ? "[" : "",
                cfg.host, v6 ? "]" : "", fl_http_port(http));
        int sig = 0;
        while (sigwait(&stop_signals, &sig) != 0 && errno == EINTR)
            ;
        fprintf(stderr, "fedllm serve: stopping (%s)\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    }
    fl_http_stop(http);
    fl_engine_free(engine);
    fl_tokenizer_free(tok);
    fl_model_free(m);
    return rc ? cli_fail("serve", &err) : 0;
}
