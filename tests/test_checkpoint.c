/* test_checkpoint.c — model directories as Hugging Face writes them: sharded checkpoints with
 * model.safetensors.index.json, and BF16 weights (converted to fp32 exactly); and the refusals: an
 * index naming a missing shard, a tensor not where the index says, a malformed index, a truncated
 * shard, a NaN or infinite weight. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fedllm/fileio.h"
#include "fedllm/model.h"
#include "fedllm/rng.h"
#include "fedllm/safetensors.h"
#include "testutil.h"

static fl_model *tiny(void) {
    fl_config c = tu_config(FL_ARCH_LLAMA, 40, 16, 4, 24, 16, 0);
    fl_err err;
    fl_model *m = fl_model_new_random(&c, 5, &err);
    fl_rng_normal(fl_model_params(m)->data, fl_model_params(m)->numel, 3, 0, 0.5f);
    return m;
}

/* Writes m's views into two shards (the first `split` views, then the rest), storing BF16 when
 * bf16 is set, and an index; `index_json` overrides the index text when not NULL. */
static void write_sharded(fl_model *m, const char *dir, int bf16, const char *index_json) {
    fl_err err;
    char path[1024];
    fl_path_join(path, sizeof path, dir, "config.json", &err);
    fl_config_save(fl_model_config(m), path, &err);
    const fl_params *p = fl_model_params(m);
    int split = p->n_views / 2;
    uint16_t *halves = malloc(p->numel * sizeof *halves);
    for (size_t i = 0; i < p->numel; i++) { /* bf16 by truncation: exactly representable */
        uint32_t bits;
        memcpy(&bits, &p->data[i], 4);
        halves[i] = (uint16_t)(bits >> 16);
    }
    char index[16384] = "{\"metadata\": {}, \"weight_map\": {";
    for (int shard = 0; shard < 2; shard++) {
        fl_st_writer *w = fl_st_writer_new(&err);
        char name[64];
        snprintf(name, sizeof name, "model-%05d-of-00002.safetensors", shard + 1);
        for (int v = shard ? split : 0; v < (shard ? p->n_views : split); v++) {
            const fl_view *view = &p->views[v];
            fl_st_writer_add(
                w, view->name, bf16 ? FL_DTYPE_BF16 : FL_DTYPE_F32, view->ndim, view->shape,
                bf16 ? (const void *)(halves + view->offset) : p->data + view->offset, &err);
            snprintf(index + strlen(index), sizeof index - strlen(index), "%s\"%s\": \"%s\"",
                     v ? ", " : "", view->name, name);
        }
        fl_path_join(path, sizeof path, dir, name, &err);
        CHECK(fl_st_write(w, path, &err) == 0, "%s", err.msg);
        fl_st_writer_free(w);
    }
    strcat(index, "}}");
    fl_path_join(path, sizeof path, dir, "model.safetensors.index.json", &err);
    const char *text = index_json ? index_json : index;
    fl_write_file_atomic(path, text, strlen(text), &err);
    free(halves);
}

int main(void) {
    fl_err err;
    fl_model *m = tiny();
    const fl_params *p = fl_model_params(m);

    const char *dir = tu_tmpdir("test_checkpoint_f32");
    write_sharded(m, dir, 0, NULL);
    fl_model *loaded = fl_model_load(dir, &err);
    CHECK(loaded != NULL, "%s", loaded ? "" : err.msg);
    if (loaded)
        CHECK(memcmp(fl_model_params(loaded)->data, p->data, p->numel * sizeof(float)) == 0,
              "sharded weights differ");
    fl_model_free(loaded);

    dir = tu_tmpdir("test_checkpoint_bf16");
    write_sharded(m, dir, 1, NULL);
    loaded = fl_model_load(dir, &err);
    CHECK(loaded != NULL, "%s", loaded ? "" : err.msg);
    int exact = loaded != NULL;
    for (size_t i = 0; loaded && i < p->numel; i++) {
        uint32_t bits;
        memcpy(&bits, &p->data[i], 4);
        bits &= 0xFFFF0000u;
        float want;
        memcpy(&want, &bits, 4);
        exact &= fl_model_params(loaded)->data[i] == want;
    }
    CHECK(exact, "BF16 weights are not converted exactly");
    fl_model_free(loaded);

    /* Refusals, each naming the file. */
    dir = tu_tmpdir("test_checkpoint_bad");
    write_sharded(
        m, dir, 0,
        "{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00009-of-00009.safetensors\"}}");
    CHECK(fl_model_load(dir, &err) == NULL && err.code == FL_EINPUT && strstr(err.msg, "missing") &&
              strstr(err.msg, "index.json"),
          "missing shard: %s", err.msg);
    write_sharded(
        m, dir, 0,
        "{\"weight_map\": {\"model.norm.weight\": \"model-00001-of-00002.safetensors\"}}");
    CHECK(fl_model_load(dir, &err) == NULL && err.code == FL_EINPUT &&
              strstr(err.msg, "model.norm.weight"),
          "tensor in the wrong shard: %s", err.msg);
    write_sharded(m, dir, 0, "{\"weight_map\": [1, 2]}");
    CHECK(fl_model_load(dir, &err) == NULL && err.code == FL_EINPUT &&
              strstr(err.msg, "weight_map"),
          "malformed index: %s", err.msg);
    write_sharded(m, dir, 0, NULL);
    char shard[1024];
    snprintf(shard, sizeof shard, "%s/model-00002-of-00002.safetensors", dir);
    CHECK(truncate(shard, 200) == 0, "truncate");
    CHECK(fl_model_load(dir, &err) == NULL && err.code == FL_EINPUT && strstr(err.msg, "00002"),
          "truncated shard: %s", err.msg);
    /* Non-finite weights: refused at load, naming the shard and the tensor (and the value). */
    fl_params *w = fl_model_params(m);
    const fl_view *last = &w->views[w->n_views - 1];
    float saved = w->data[last->offset + 5];
    w->data[last->offset + 5] = NAN;
    write_sharded(m, dir, 0, NULL);
    CHECK(fl_model_load(dir, &err) == NULL && err.code == FL_EINPUT &&
              strstr(err.msg, "model-00002-of-00002.safetensors") && strstr(err.msg, last->name) &&
              strstr(err.msg, "NaN at element 5"),
          "NaN weight: %s", err.msg);
    w->data[last->offset + 5] = saved;
    w->data[w->views[0].offset] = -INFINITY; /* stored as BF16 -inf, in the first shard */
    write_sharded(m, dir, 1, NULL);
    CHECK(fl_model_load(dir, &err) == NULL && err.code == FL_EINPUT &&
              strstr(err.msg, "model-00001-of-00002.safetensors") &&
              strstr(err.msg, w->views[0].name) && strstr(err.msg, "-inf at element 0"),
          "-inf BF16 weight: %s", err.msg);
    fl_model_free(m);
    return tu_finish("test_checkpoint");
}
