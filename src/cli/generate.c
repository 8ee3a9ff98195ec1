/* generate.c — `fedllm generate`: continues a prompt with a model directory, streaming the text
 * to stdout as it is decoded (key/value cache; greedy or sampled, reproducible from --seed). */
#include <cjson/cJSON.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "fedllm/data.h"
#include "fedllm/fileio.h"
#include "fedllm/generate.h"
#include "fedllm/model.h"

static const char HELP[] =
    "usage: fedllm generate --model DIR [--adapter DIR] --prompt TEXT [options]\n"
    "\n"
    "  --max-tokens N (64)  --temperature T (0.8; 0 = greedy)  --top-k K (0 = off)\n"
    "  --top-p P (0.95)  --repetition-penalty R (1 = off)  --seed S (0)  --stop TEXT\n"
    "  (defaults come from the model's generation_config.json when it has one)\n"
    "  --threads N (all cores)\n"
    "\n"
    "Prints the continuation of the prompt (not the prompt) as it is generated; stops at the\n"
    "end-of-text token, --stop TEXT (not printed) or --max-tokens. The same seed gives the same\n"
    "text. Statistics go to stderr.\n";

enum {
    G_MODEL,
    G_ADAPTER,
    G_PROMPT,
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

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The model's own defaults from DIR/generation_config.json, when it has one (as transformers
 * reads them): do_sample false means greedy; temperature, top_k, top_p, repetition_penalty,
 * max_new_tokens. A file that is there but malformed is an error naming it. */
static int read_generation_config(const char *dir, fl_sampling *s, long *max_tokens, fl_err *err) {
    char path[4096], *text;
    size_t len;
    struct stat st;
    if (fl_path_join(path, sizeof path, dir, "generation_config.json", err)) return FL_EINPUT;
    if (stat(path, &st) != 0) return FL_OK;
    if (fl_read_file(path, &text, &len, 1 << 20, err)) return err->code;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fl_err_set(err, FL_EINPUT, "%s: expected a JSON object", path);
    }
    static const char *const keys[] = {"temperature", "top_k", "top_p", "repetition_penalty",
                                       "max_new_tokens"};
    int rc = FL_OK;
    for (size_t i = 0; i < sizeof keys / sizeof *keys && !rc; i++) {
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, keys[i]);
        if (!item || cJSON_IsNull(item)) continue;
        double x = item->valuedouble;
        if (!cJSON_IsNumber(item) || x < 0) {
            rc =
                fl_err_set(err, FL_EINPUT, "%s: %s: expected a non-negative number", path, keys[i]);
            break;
        }
        if (i == 0)
            s->temperature = (float)x;
        else if (i == 1)
            s->top_k = (int)x;
        else if (i == 2)
            s->top_p = x > 0 && x <= 1 ? (float)x : 1.0f;
        else if (i == 3)
            s->repetition_penalty = x > 0 ? (float)x : 1.0f;
        else if (x >= 1)
            *max_tokens = (long)x;
    }
    const cJSON *sample = cJSON_GetObjectItemCaseSensitive(root, "do_sample");
    if (!rc && cJSON_IsBool(sample) && !cJSON_IsTrue(sample)) s->temperature = 0;
    cJSON_Delete(root);
    return rc;
}

static int parse(cli_opt *o, fl_sampling *s, long *max_tokens, fl_err *err) {
    double x;
    long v;
    *s = fl_sampling_defaults();
    *max_tokens = 64;
    if (!o[G_MODEL].value || !o[G_PROMPT].value)
        return fl_err_set(err, FL_EINPUT, "--model and --prompt are required (see --help)");
    if (read_generation_config(o[G_MODEL].value, s, max_tokens, err)) return err->code;
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

int cli_generate(int argc, char **argv) {
    cli_opt o[G_COUNT] = {
        [G_MODEL] = {"model", 1, NULL},      [G_ADAPTER] = {"adapter", 1, NULL},
        [G_PROMPT] = {"prompt", 1, NULL},    [G_MAX] = {"max-tokens", 1, NULL},
        [G_TEMP] = {"temperature", 1, NULL}, [G_TOPK] = {"top-k", 1, NULL},
        [G_TOPP] = {"top-p", 1, NULL},       [G_REP] = {"repetition-penalty", 1, NULL},
        [G_SEED] = {"seed", 1, NULL},        [G_STOP] = {"stop", 1, NULL},
        [G_THREADS] = {"threads", 1, NULL},
    };
    int help;
    fl_err err = {0};
    fl_sampling sampling;
    long max_tokens;
    if (cli_parse(argc, argv, 2, o, G_COUNT, &help, &err)) return cli_fail("generate", &err);
    if (help) return fputs(HELP, stdout), 0;
    if (parse(o, &sampling, &max_tokens, &err)) return cli_fail("generate", &err);
    fl_model *m = fl_model_load(o[G_MODEL].value, &err);
    if (!m) return cli_fail("generate", &err);
    if (o[G_ADAPTER].value && fl_model_load_adapter(m, o[G_ADAPTER].value, &err)) {
        fl_model_free(m);
        return cli_fail("generate", &err);
    }
    const fl_config *cfg = fl_model_config(m);
    fl_tokenizer tok;
    const char *prompt = o[G_PROMPT].value;
    size_t prompt_len = strlen(prompt);
    int32_t *ids = malloc((prompt_len + 1) * sizeof *ids);
    float *logits = malloc((size_t)cfg->vocab_size * sizeof *logits);
    fl_kv_cache *kc = NULL;
    int rc = ids && logits ? fl_tokenizer_load(&tok, o[G_MODEL].value, &err)
                           : fl_err_set(&err, FL_ENOMEM, "out of memory");
    long n_prompt = rc ? 0 : fl_tokenizer_encode(&tok, prompt, prompt_len, ids, prompt_len + 1);
    if (!rc && n_prompt < 1) rc = fl_err_set(&err, FL_EINPUT, "--prompt: expected some text");
    if (!rc && n_prompt >= cfg->max_position)
        rc = fl_err_set(&err, FL_EINPUT, "--prompt: %ld tokens leave no room in the context of %d",
                        n_prompt, cfg->max_position);
    long room = cfg->max_position - n_prompt;
    if (!rc && max_tokens > room) max_tokens = room;
    if (!rc) kc = fl_kv_cache_new(m, 1, (int)(n_prompt + max_tokens), &err);
    if (!rc && !kc) rc = err.code;
    int32_t *history = NULL;
    if (!rc && !(history = malloc((size_t)(n_prompt + max_tokens) * sizeof *history)))
        rc = fl_err_set(&err, FL_ENOMEM, "out of memory");
    double start = now_s();
    long produced = 0;
    if (!rc) {
        memcpy(history, ids, (size_t)n_prompt * sizeof *ids);
        rc = fl_model_decode(m, kc, ids, (int)n_prompt, logits, &err);
    }
    stream st = {.stop = o[G_STOP].value};
    while (!rc && produced < max_tokens) {
        int32_t next = fl_sample(logits, cfg->vocab_size, &sampling, history,
                                 (int)(n_prompt + produced), (uint64_t)produced);
        history[n_prompt + produced++] = next;
        if (next == tok.eos_id) break;
        char bytes[8];
        size_t n = fl_tokenizer_decode(&tok, &next, 1, bytes, sizeof bytes);
        if (stream_add(&st, bytes, n)) break;
        if (produced < max_tokens) rc = fl_model_decode(m, kc, &next, 1, logits, &err);
    }
    if (!rc) {
        if (st.printed < st.len) fwrite(st.text + st.printed, 1, st.len - st.printed, stdout);
        fputc('\n', stdout);
        double seconds = now_s() - start;
        fprintf(stderr, "%ld prompt + %ld generated tokens, %.1f tokens/s\n", n_prompt, produced,
                produced / (seconds > 0 ? seconds : 1e-9));
    }
    free(st.text);
    free(history);
    free(ids);
    free(logits);
    fl_kv_cache_free(kc);
    fl_model_free(m);
    return rc ? cli_fail("generate", &err) : 0;
}
