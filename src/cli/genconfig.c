/* genconfig.c — a model's generation defaults (generation_config.json) and the ids that end a
 * continuation, shared by `fedllm generate` and `fedllm serve`. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "fedllm/fileio.h"

void cli_stop_add(cli_stop_ids *st, int id) {
    for (int i = 0; i < st->n; i++)
        if (st->id[i] == id) return;
    if (id >= 0 && st->n < CLI_MAX_STOP_IDS) st->id[st->n++] = id;
}

int cli_is_stop(const cli_stop_ids *st, int id) {
    for (int i = 0; i < st->n; i++)
        if (st->id[i] == id) return 1;
    return 0;
}

static int read_stop_ids(const cJSON *root, const char *path, cli_stop_ids *st, fl_err *err) {
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (!eos) return FL_OK;
    st->from_generation_config = 1;
    if (cJSON_IsNull(eos)) return FL_OK;
    const cJSON *one = eos, *item;
    if (!cJSON_IsArray(eos)) {
        if (!cJSON_IsNumber(one) || one->valuedouble != (int)one->valuedouble)
            return fl_err_set(err, FL_EINPUT,
                              "%s: eos_token_id: expected an integer, a list of integers or null",
                              path);
        cli_stop_add(st, (int)one->valuedouble);
        return FL_OK;
    }
    cJSON_ArrayForEach(item, eos) {
        if (!cJSON_IsNumber(item) || item->valuedouble != (int)item->valuedouble)
            return fl_err_set(err, FL_EINPUT,
                              "%s: eos_token_id: expected an integer, a list of integers or null",
                              path);
        cli_stop_add(st, (int)item->valuedouble);
    }
    return FL_OK;
}

/* The model's own defaults from DIR/generation_config.json, when it has one (as transformers
 * reads them): do_sample false means greedy; temperature, top_k, top_p, repetition_penalty,
 * max_new_tokens, eos_token_id. A file that is there but malformed is an error naming it. */
int cli_read_generation_config(const char *dir, fl_sampling *s, long *max_tokens,
                               cli_stop_ids *stops, fl_err *err) {
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
    if (!rc) rc = read_stop_ids(root, path, stops, err);
    cJSON_Delete(root);
    return rc;
}
