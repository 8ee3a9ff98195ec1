/* peft_check_driver.c — writes, for tools/peft_check.sh, a random tiny model of family argv[1] in
 * HF layout (FAMILY-base/), a LoRA adapter on the roles argv[2] with random nonzero factors
 * (FAMILY-adapter/; with a further argument "norms" the norm parameters and biases train too,
 * saved as PEFT's modules_to_save; with "layers=LIST" only those layers get adapters, saved as
 * PEFT's layers_to_transform), and fedllm's logits of that LoRA model on fixed tokens
 * (FAMILY-logits.safetensors). Not part of fedllm: a measuring tool, like the Python in tools/. */
#include "fedllm/data.h"
#include "fedllm/fileio.h"
#include "fedllm/model.h"
#include "fedllm/rng.h"
#include "fedllm/safetensors.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* "load FAMILY": loads FAMILY-base with the adapter peft wrote (FAMILY-peft-adapter/) and prints
 * the largest relative difference from peft's logits (FAMILY-peft-logits.safetensors). */
static int check_peft_adapter(const char *family) {
    fl_err err;
    char d[256];
    snprintf(d, sizeof d, "%s-base", family);
    fl_model *m = fl_model_load(d, &err);
    snprintf(d, sizeof d, "%s-peft-adapter", family);
    if (!m || fl_model_load_adapter(m, d, &err)) return printf("%s\n", err.msg), 1;
    fl_st_file f;
    snprintf(d, sizeof d, "%s-peft-logits.safetensors", family);
    if (fl_st_open(&f, d, &err)) return printf("%s\n", err.msg), 1;
    const fl_st_tensor *t = fl_st_find(&f, "tokens"), *l = fl_st_find(&f, "logits");
    int32_t tok[64];
    float *want = malloc(l->numel * sizeof(float));
    fl_st_to_i32(t, tok, &err);
    fl_st_to_f32(l, want, &err);
    fl_pass_result r;
    fl_model_forward(m, tok, NULL, (int)t->shape[0], (int)t->shape[1], FL_PASS_LOGITS, 0, &r, &err);
    double diff = 0, scale = 0;
    for (size_t i = 0; i < l->numel; i++) {
        double e = fabs((double)r.logits[i] - want[i]);
        diff = e > diff ? e : diff;
        scale = fabs(want[i]) > scale ? fabs(want[i]) : scale;
    }
    printf("%s: fedllm with peft's adapter vs peft logits, max rel diff %.3g\n", family,
           diff / scale);
    return 0;
}

int main(int argc, char **argv) {
    if (strcmp(argv[1], "load") == 0) return check_peft_adapter(argv[2]);
    fl_err err;
    fl_config c;
    fl_arch arch;
    fl_arch_parse(&arch, argv[1], &err);
    fl_config_preset(&c, arch, "tiny", &err);
    fl_model *m = fl_model_new_random(&c, 5, &err);
    fl_rng_normal(fl_model_params(m)->data, fl_model_params(m)->numel, 77, 0, 0.1f);
    char d[256];
    snprintf(d, sizeof d, "%s-base", argv[1]);
    fl_mkdirs(d, &err);
    if (fl_model_save(m, d, &err)) {
        puts(err.msg);
        return 1;
    }
    fl_lora_spec spec = {.rank = 4, .alpha = 8, .seed = 3};
    fl_lora_parse_targets(argv[2], arch, &spec.role_mask, &err);
    for (int i = 3; i < argc; i++) {
        int layers[FL_LAYERS_MAX], n = 0;
        if (strcmp(argv[i], "norms") == 0) spec.train_base = FL_TRAIN_NORMS | FL_TRAIN_BIASES;
        if (strncmp(argv[i], "layers=", 7) == 0 &&
            fl_layers_parse(argv[i] + 7, c.n_layer, layers, FL_LAYERS_MAX, &n, &err))
            return printf("%s\n", err.msg), 1;
        for (int k = 0; k < n; k++)
            fl_lora_spec_add_layer(&spec, layers[k], &err);
    }
    fl_model_add_lora(m, &spec, &err);
    fl_rng_normal(fl_model_trainable(m)->data, fl_model_trainable(m)->numel, 9, 0, 0.1f);
    int32_t tok[2 * 16];
    for (int i = 0; i < 32; i++)
        tok[i] = (i * 37) % 200;
    fl_pass_result r;
    fl_model_forward(m, tok, NULL, 2, 16, FL_PASS_LOGITS, 0, &r, &err);
    snprintf(d, sizeof d, "%s-adapter", argv[1]);
    fl_mkdirs(d, &err);
    if (fl_model_save_adapter(m, d, "base", &err)) {
        puts(err.msg);
        return 1;
    }
    fl_st_writer *w = fl_st_writer_new(&err);
    int64_t ts[2] = {2, 16}, ls[3] = {2, 16, c.vocab_size};
    fl_st_writer_add(w, "tokens", FL_DTYPE_I32, 2, ts, tok, &err);
    fl_st_writer_add(w, "logits", FL_DTYPE_F32, 3, ls, r.logits, &err);
    snprintf(d, sizeof d, "%s-logits.safetensors", argv[1]);
    return fl_st_write(w, d, &err);
}
