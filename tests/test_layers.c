/* test_layers.c — training some transformer blocks only (offsite-tuning's adapter blocks): every
 * tensor of the listed blocks (fl_model_train_layers) or LoRA on those blocks alone (PEFT's
 * layers_to_transform). On four-layer GPT-2 and LLaMA models: the trained blocks' gradients are
 * full training's (the backward that skips frozen work below them computes the same thing), AdamW
 * steps change those blocks and nothing else, LoRA adapters exist only where asked and their
 * adapter directory keeps layers_to_transform through a save and a load, adapters that peft wrote
 * with layers_to_transform load and give peft's logits, and bad input is refused. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fileio.h"
#include "fedllm/model.h"
#include "fedllm/rng.h"
#include "fedllm/safetensors.h"
#include "fedllm/train.h"
#include "testutil.h"

enum { B = 2, T = 8, LAYERS = 4, V = 32 };

static fl_config config_of(fl_arch arch) {
    fl_config c = tu_config(arch, V, 16, 4, 24, 16, arch != FL_ARCH_LLAMA);
    c.n_layer = LAYERS;
    return c;
}

/* Random weights large enough that every gradient is far from zero (norm scales near 1). */
static fl_model *model_of(fl_arch arch) {
    fl_config c = config_of(arch);
    fl_err err;
    fl_model *m = fl_model_new_random(&c, 11, &err);
    CHECK(m != NULL, "%s", err.msg);
    fl_params *p = fl_model_params(m);
    fl_rng_normal(p->data, p->numel, 5, 0, 0.3f);
    for (int i = 0; i < p->n_views; i++)
        if (strstr(p->views[i].name, "norm") || strstr(p->views[i].name, "ln_"))
            for (size_t j = 0; j < p->views[i].numel; j++)
                p->data[p->views[i].offset + j] += 1.0f;
    return m;
}

static void make_batch(int32_t *tokens, int32_t *targets, uint64_t seed) {
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (int32_t)(fl_rng_uniform_at(seed, 0, (size_t)i) * V);
        targets[i] = (int32_t)(fl_rng_uniform_at(seed, 1000, (size_t)i) * V);
    }
    targets[3] = -100;
}

/* A zeroed gradient, then one training forward and backward with the mean-loss scale. */
static void gradient_of(fl_model *m, const int32_t *tokens, const int32_t *targets) {
    fl_params *g = fl_model_grads(m);
    memset(g->data, 0, g->numel * sizeof(float));
    long counted = 0;
    for (int i = 0; i < B * T; i++)
        counted += targets[i] != -100;
    fl_pass_result r;
    fl_err err;
    CHECK(fl_model_forward(m, tokens, targets, B, T, FL_PASS_TRAIN, 1.0f / (float)counted, &r,
                           &err) == FL_OK,
          "%s", err.msg);
    CHECK(fl_model_backward(m) == FL_OK, "backward refused");
}

/* The block a base tensor name belongs to ("transformer.h.3." or "model.layers.3."), or -1. */
static int block_of(const char *name) {
    const char *at = strstr(name, ".h.");
    if (!at) at = strstr(name, ".layers.");
    if (!at) return -1;
    return atoi(strchr(at + 1, '.') + 1);
}

static int listed(const int *layers, int n, int l) {
    for (int i = 0; i < n; i++)
        if (layers[i] == l) return 1;
    return 0;
}

/* The trainable table is the listed blocks' tensors, all of them, under their HF names in the
 * base's order, holding the base's values; their gradients equal full training's. */
static void check_gradients(fl_arch arch, const int *layers, int n) {
    fl_err err;
    fl_model *full = model_of(arch), *part = model_of(arch);
    CHECK(fl_model_train_full(full, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_model_train_layers(part, layers, n, &err) == FL_OK, "%s", err.msg);
    const fl_params *base = fl_model_params(part), *t = fl_model_trainable(part);
    int want = 0, prev = -1, in_order = 1;
    for (int v = 0; v < base->n_views; v++)
        if (listed(layers, n, block_of(base->views[v].name))) {
            int at = fl_params_find(t, base->views[v].name);
            want++;
            in_order &= at > prev;
            prev = at;
            CHECK(at >= 0 &&
                      memcmp(t->data + t->views[at].offset, base->data + base->views[v].offset,
                             base->views[v].numel * sizeof(float)) == 0,
                  "%s: %s missing from the trainable table or not the base's values",
                  fl_arch_name(arch), base->views[v].name);
        }
    CHECK(t->n_views == want && in_order, "%s: %d trainable tensors (want %d)%s",
          fl_arch_name(arch), t->n_views, want, in_order ? "" : ", out of the base's order");
    CHECK(fl_model_grads(part)->numel == t->numel, "gradient table of another layout");

    int32_t tokens[B * T], targets[B * T];
    make_batch(tokens, targets, 7);
    gradient_of(full, tokens, targets);
    gradient_of(part, tokens, targets);
    const fl_params *gf = fl_model_grads(full), *gp = fl_model_grads(part);
    double depth = tu_depth_gradient(fl_model_config(part), B, T), worst = 0;
    const char *where = "";
    for (int v = 0; v < gp->n_views; v++) {
        const fl_view *view = &gp->views[v];
        const float *ref = fl_params_get(gf, view->name);
        CHECK(ref != NULL, "%s not in the full gradient", view->name);
        if (!ref) continue;
        double excess = tu_rounding_excess(gp->data + view->offset, ref, view->numel, depth);
        CHECK(tu_max_abs(ref, view->numel) > 0, "%s: zero gradient, nothing compared", view->name);
        if (!(excess <= worst)) worst = excess, where = view->name;
    }
    CHECK(worst <= 1,
          "%s layers %d..: gradient of %s differs from full training's by %.3g of the "
          "fp32 bound",
          fl_arch_name(arch), layers[0], where, worst);
    if (getenv("FEDLLM_TEST_VERBOSE"))
        printf("%s: train_layers gradients within %.3g of the fp32 bound of full training's\n",
               fl_arch_name(arch), worst);
    fl_model_free(full);
    fl_model_free(part);
}

/* AdamW steps through the trainable table: every listed block's tensors move, and a saved model
 * holds them with every other tensor bit-identical to the original. */
static void check_steps(fl_arch arch) {
    fl_err err;
    fl_model *m = model_of(arch), *orig = model_of(arch);
    int layers[2] = {3, 0};
    CHECK(fl_model_train_layers(m, layers, 2, &err) == FL_OK, "%s", err.msg);
    fl_optim_spec spec = fl_optim_defaults();
    spec.lr = 1e-2f;
    spec.weight_decay = 0.1f;
    fl_optimizer opt;
    CHECK(fl_optimizer_init(&opt, fl_model_trainable(m), &spec, &err) == FL_OK, "%s", err.msg);
    int32_t tokens[B * T], targets[B * T];
    double first = 0, last = 0;
    for (int step = 0; step < 4; step++) {
        make_batch(tokens, targets, 40);
        gradient_of(m, tokens, targets);
        fl_clip_grad_norm(fl_model_grads(m), spec.clip_norm);
        fl_optimizer_step(&opt, fl_model_trainable(m), fl_model_grads(m));
        fl_pass_result r;
        fl_model_forward(m, tokens, targets, B, T, FL_PASS_EVAL, 0, &r, &err);
        if (step == 0) first = r.loss_sum;
        last = r.loss_sum;
    }
    CHECK(last < first, "%s: loss %.6g -> %.6g on the same batch", fl_arch_name(arch), first, last);
    fl_optimizer_free(&opt);
    const char *dir = tu_tmpdir("test_layers_steps");
    CHECK(fl_model_save(m, dir, &err) == FL_OK, "%s", err.msg);
    fl_model *saved = fl_model_load(dir, &err);
    CHECK(saved != NULL, "%s", err.msg);
    const fl_params *before = fl_model_params(orig), *after = fl_model_params(saved);
    const fl_params *t = fl_model_trainable(m);
    int moved = 0, kept = 0;
    for (int v = 0; saved && v < before->n_views; v++) {
        const fl_view *view = &before->views[v];
        const float *now = after->data + after->views[v].offset;
        int same = memcmp(now, before->data + view->offset, view->numel * sizeof(float)) == 0;
        if (listed(layers, 2, block_of(view->name))) {
            const float *trained = fl_params_get(t, view->name);
            CHECK(!same && trained && !memcmp(now, trained, view->numel * sizeof(float)),
                  "%s: trained tensor %s %s", fl_arch_name(arch), view->name,
                  same ? "did not move" : "was not saved with its trained values");
            moved++;
        } else {
            CHECK(same, "%s: frozen tensor %s changed", fl_arch_name(arch), view->name);
            kept++;
        }
    }
    CHECK(moved == t->n_views && kept > moved, "%s: %d tensors moved, %d kept", fl_arch_name(arch),
          moved, kept);
    fl_model_free(saved);
    fl_model_free(orig);
    fl_model_free(m);
}

static int has_key_layers(const char *dir, int *layers, int max, int *n) {
    char path[1100], *text = NULL;
    size_t len;
    fl_err err;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (fl_read_file(path, &text, &len, 1 << 20, &err)) return -1;
    cJSON *config = cJSON_Parse(text), *item;
    free(text);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(config, "layers_to_transform");
    *n = 0;
    cJSON_ArrayForEach(item, list) if (*n < max) layers[(*n)++] = item->valueint;
    int found = list != NULL;
    cJSON_Delete(config);
    return found;
}

/* Writes adapter_config.json in dir: the config of check_lora_layers' adapter, as peft might
 * write it, plus `fields`. */
static void write_config(const char *dir, fl_arch arch, const char *fields) {
    char path[1100], text[1024];
    fl_err err;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    snprintf(text, sizeof text,
             "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": "
             "[\"%s\"]%s, %s}",
             arch == FL_ARCH_GPT2 ? "c_attn" : "q_proj",
             /* GPT-2's q and v adapters were saved as one c_attn adapter of twice the rank */
             arch == FL_ARCH_GPT2 ? ", \"rank_pattern\": {\"c_attn\": 4}, \"alpha_pattern\": "
                                    "{\"c_attn\": 8}"
                                  : "",
             fields);
    fl_write_file_atomic(path, text, strlen(text), &err);
}

/* LoRA on layers 1 and 3 only: adapters there and nowhere else, the gradients of a model with
 * adapters everywhere (B = 0 elsewhere adds nothing), and an adapter directory whose
 * layers_to_transform survives a save and a load, with the same logits. */
static void check_lora_layers(fl_arch arch) {
    fl_err err;
    fl_model *m = model_of(arch), *all = model_of(arch);
    fl_lora_spec spec = {.rank = 2, .alpha = 4, .seed = 3};
    CHECK(fl_lora_parse_targets("attn_q,attn_v,mlp_down", arch, &spec.role_mask, &err) == FL_OK,
          "%s", err.msg);
    fl_lora_spec every = spec;
    CHECK(fl_lora_spec_has_layer(&spec, 2) && !fl_lora_spec_has_layer(&spec, -1),
          "an empty mask means every layer");
    CHECK(fl_lora_spec_add_layer(&spec, 3, &err) == FL_OK &&
              fl_lora_spec_add_layer(&spec, 1, &err) == FL_OK,
          "%s", err.msg);
    CHECK(!fl_lora_spec_has_layer(&spec, 2) && fl_lora_spec_has_layer(&spec, 3), "mask bits");
    CHECK(fl_model_add_lora(m, &spec, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_model_add_lora(all, &every, &err) == FL_OK, "%s", err.msg);
    for (int l = 0; l < LAYERS; l++)
        CHECK((fl_model_lora_view(m, l, FL_ROLE_ATTN_Q, 0) >= 0) == (l == 1 || l == 3) &&
                  (fl_model_lora_view(m, l, FL_ROLE_MLP_DOWN, 1) >= 0) == (l == 1 || l == 3),
              "%s: layer %d adapters", fl_arch_name(arch), l);
    CHECK(fl_model_trainable(m)->n_views == 2 * 3 * 2, "%d adapter tensors",
          fl_model_trainable(m)->n_views);

    /* Nonzero factors; the all-layer model gets the same ones on layers 1 and 3. */
    fl_params *t = fl_model_trainable(m), *ta = fl_model_trainable(all);
    fl_rng_normal(t->data, t->numel, 8, 0, 0.3f);
    for (int v = 0; v < t->n_views; v++) {
        float *dst = fl_params_get(ta, t->views[v].name);
        CHECK(dst != NULL, "%s not in the all-layer model", t->views[v].name);
        if (dst) memcpy(dst, t->data + t->views[v].offset, t->views[v].numel * sizeof(float));
    }
    int32_t tokens[B * T], targets[B * T];
    make_batch(tokens, targets, 9);
    gradient_of(m, tokens, targets);
    gradient_of(all, tokens, targets);
    const fl_params *g = fl_model_grads(m), *gall = fl_model_grads(all);
    double depth =
        tu_depth_gradient(fl_model_config(m), B, T) + tu_depth_lora(fl_model_config(m), 2);
    double worst = 0;
    for (int v = 0; v < g->n_views; v++) {
        const float *ref = fl_params_get(gall, g->views[v].name);
        double excess =
            tu_rounding_excess(g->data + g->views[v].offset, ref, g->views[v].numel, depth);
        if (!(excess <= worst)) worst = excess;
    }
    CHECK(worst <= 1, "%s: LoRA-on-layers gradients differ by %.3g of the fp32 bound",
          fl_arch_name(arch), worst);

    fl_pass_result r;
    CHECK(fl_model_forward(m, tokens, NULL, B, T, FL_PASS_LOGITS, 0, &r, &err) == FL_OK, "%s",
          err.msg);
    size_t n_logits = (size_t)B * T * V;
    float *want = malloc(n_logits * sizeof(float));
    memcpy(want, r.logits, n_logits * sizeof(float));
    char dir[1024]; /* tu_tmpdir's path is overwritten by its next call */
    snprintf(dir, sizeof dir, "%s", tu_tmpdir("test_layers_lora"));
    CHECK(fl_model_save_adapter(m, dir, "base", &err) == FL_OK, "%s", err.msg);
    int layers[8], n = 0;
    CHECK(has_key_layers(dir, layers, 8, &n) == 1 && n == 2 && layers[0] == 1 && layers[1] == 3,
          "%s: layers_to_transform not [1, 3] (%d entries)", fl_arch_name(arch), n);
    fl_model *reloaded = model_of(arch);
    CHECK(fl_model_load_adapter(reloaded, dir, &err) == FL_OK, "%s", err.msg);
    const fl_lora_spec *loaded = fl_model_lora(reloaded);
    CHECK(loaded && fl_lora_spec_has_layer(loaded, 1) && fl_lora_spec_has_layer(loaded, 3) &&
              !fl_lora_spec_has_layer(loaded, 0) && !fl_lora_spec_has_layer(loaded, 2),
          "%s: the loaded spec's layers are not {1, 3}", fl_arch_name(arch));
    CHECK(fl_model_forward(reloaded, tokens, NULL, B, T, FL_PASS_LOGITS, 0, &r, &err) == FL_OK,
          "%s", err.msg);
    const fl_config *c = fl_model_config(m);
    double d = tu_rounding_excess(r.logits, want, n_logits,
                                  tu_depth_forward(c, T) + tu_depth_lora(c, 3 * 2));
    CHECK(d <= 1, "%s: reloaded LoRA-on-layers logits differ by %.3g of the fp32 bound",
          fl_arch_name(arch), d);
    const char *again = tu_tmpdir("test_layers_lora_again");
    CHECK(fl_model_save_adapter(reloaded, again, "base", &err) == FL_OK, "%s", err.msg);
    CHECK(has_key_layers(again, layers, 8, &n) == 1 && n == 2, "re-saved adapter lost its layers");
    /* Without a mask the key is absent, as before layers existed. */
    CHECK(fl_model_save_adapter(all, again, "base", &err) == FL_OK &&
              has_key_layers(again, layers, 8, &n) == 0,
          "an every-layer adapter writes layers_to_transform");
    fl_model_free(reloaded);

    /* PEFT's other spellings load: one index, the family's layers_pattern; adapters outside the
     * listed layers, indices outside the model, other types and patterns are refused. */
    const char *family = arch == FL_ARCH_GPT2 ? "h" : "layers";
    char fields[256];
    static const struct {
        const char *fields, *expect;
    } cases[] = {
        {"\"layers_to_transform\": [1, 3, 3], \"layers_pattern\": null", NULL},
        {"\"layers_to_transform\": [3, 1], \"layers_pattern\": \"%s\"", NULL},
        {"\"layers_to_transform\": [1, 3], \"layers_pattern\": [\"blocks\", \"%s\"]", NULL},
        {"\"layers_to_transform\": 1", "outside layers_to_transform"},
        {"\"layers_to_transform\": [3]", "is in layer 1, outside layers_to_transform"},
        {"\"layers_to_transform\": [1, 4]", "expected layer indices in 0..3, got 4"},
        {"\"layers_to_transform\": [1.5, 3]", "got 1.5"},
        {"\"layers_to_transform\": [\"1\"]", "got a string"},
        {"\"layers_to_transform\": []", "got an empty list"},
        {"\"layers_to_transform\": {}", "got an object"},
        {"\"layers_to_transform\": [1, 3], \"layers_pattern\": \"blocks\"", "layers_pattern"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(fields, sizeof fields, cases[i].fields, family);
        write_config(dir, arch, fields);
        fl_model *x = model_of(arch);
        int rc = fl_model_load_adapter(x, dir, &err);
        if (cases[i].expect)
            CHECK(rc == FL_EINPUT && strstr(err.msg, "adapter_") &&
                      strstr(err.msg, cases[i].expect) && !fl_model_trainable(x),
                  "%s: %s: got %d: %s", fl_arch_name(arch), fields, rc, rc ? err.msg : "accepted");
        else
            CHECK(rc == FL_OK, "%s: %s: %s", fl_arch_name(arch), fields, err.msg);
        fl_model_free(x);
    }

    /* A mask beyond the model, and indices beyond any model. */
    fl_model *x = model_of(arch);
    fl_lora_spec far = every;
    CHECK(fl_lora_spec_add_layer(&far, 5, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_model_add_lora(x, &far, &err) == FL_EINPUT && strstr(err.msg, "layer 5"),
          "LoRA on layer 5 of 4: %s", err.msg);
    CHECK(fl_lora_spec_add_layer(&far, FL_LAYERS_MAX, &err) == FL_EINPUT &&
              fl_lora_spec_add_layer(&far, -1, &err) == FL_EINPUT,
          "mask index outside 0..%d accepted", FL_LAYERS_MAX - 1);
    fl_model_free(x);
    free(want);
    fl_model_free(m);
    fl_model_free(all);
}

/* Adapters peft wrote with layers_to_transform [1] (tools/peft_check.sh with FIXTURE set made
 * tests/fixtures/peft_layers) load onto the base they were made for, rebuilt here from
 * tools/peft_check_driver.c's seeds, with adapters on layer 1 only, and give peft's logits within
 * 1e-4 of the largest (the tolerance of test_hf_parity: torch and fedllm differ in kernels). */
static void check_peft_fixture(fl_arch arch) {
    fl_err err;
    fl_config c;
    CHECK(fl_config_preset(&c, arch, "tiny", &err) == FL_OK, "%s", err.msg);
    fl_model *m = fl_model_new_random(&c, 5, &err);
    fl_rng_normal(fl_model_params(m)->data, fl_model_params(m)->numel, 77, 0, 0.1f);
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fixtures/peft_layers/%s-adapter", fl_arch_name(arch));
    CHECK(fl_model_load_adapter(m, dir, &err) == FL_OK, "%s", err.msg);
    const fl_lora_spec *spec = fl_model_lora(m);
    CHECK(spec && fl_lora_spec_has_layer(spec, 1) && !fl_lora_spec_has_layer(spec, 0),
          "%s: peft's layers_to_transform [1] not read", fl_arch_name(arch));
    for (int v = 0; v < fl_model_trainable(m)->n_views; v++)
        CHECK(strstr(fl_model_trainable(m)->views[v].name, ".1."), "%s: adapter %s off layer 1",
              fl_arch_name(arch), fl_model_trainable(m)->views[v].name);
    fl_st_file f;
    snprintf(dir, sizeof dir, "tests/fixtures/peft_layers/%s-logits.safetensors",
             fl_arch_name(arch));
    CHECK(fl_st_open(&f, dir, &err) == FL_OK, "%s", err.msg);
    const fl_st_tensor *tt = fl_st_find(&f, "tokens"), *lt = fl_st_find(&f, "logits");
    CHECK(tt && lt && tt->numel == 32 && lt->numel == 32 * (size_t)c.vocab_size,
          "%s: logits fixture", dir);
    if (tt && lt && tt->numel == 32 && lt->numel == 32 * (size_t)c.vocab_size) {
        int32_t tokens[32];
        float *want = malloc(lt->numel * sizeof(float));
        fl_st_to_i32(tt, tokens, &err);
        fl_st_to_f32(lt, want, &err);
        fl_pass_result r;
        CHECK(fl_model_forward(m, tokens, NULL, 2, 16, FL_PASS_LOGITS, 0, &r, &err) == FL_OK, "%s",
              err.msg);
        double diff = 0, scale = 1e-12;
        for (size_t i = 0; i < lt->numel; i++) {
            double d = fabs((double)r.logits[i] - want[i]);
            if (!(d <= diff)) diff = isnan(d) ? INFINITY : d;
            if (fabs(want[i]) > scale) scale = fabs(want[i]);
        }
        CHECK(diff / scale <= 1e-4,
              "%s: peft's layers_to_transform adapter: logits differ by "
              "%.3g of the largest",
              fl_arch_name(arch), diff / scale);
        if (getenv("FEDLLM_TEST_VERBOSE"))
            printf("%s: peft layers_to_transform adapter, max relative difference %.2g\n",
                   fl_arch_name(arch), diff / scale);
        free(want);
    }
    fl_st_close(&f);
    fl_model_free(m);
}

/* Bad layer lists and calls out of turn are refused, and leave the model usable. */
static void check_refusals(void) {
    fl_err err;
    fl_model *m = model_of(FL_ARCH_LLAMA);
    int out[1] = {4}, neg[1] = {-1}, twice[3] = {1, 2, 1}, ok[2] = {2, 1};
    CHECK(fl_model_train_layers(m, out, 1, &err) == FL_EINPUT && strstr(err.msg, "layer 4") &&
              strstr(err.msg, "0..3"),
          "layer 4 of 4: %s", err.msg);
    CHECK(fl_model_train_layers(m, neg, 1, &err) == FL_EINPUT, "layer -1 accepted");
    CHECK(fl_model_train_layers(m, twice, 3, &err) == FL_EINPUT && strstr(err.msg, "twice"),
          "repeated layer: %s", err.msg);
    CHECK(fl_model_train_layers(m, ok, 0, &err) == FL_EINPUT && strstr(err.msg, "no layer"),
          "empty list: %s", err.msg);
    CHECK(fl_model_trainable(m) == NULL, "a refused call chose a trainable set");
    CHECK(fl_model_train_layers(m, ok, 2, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_model_train_layers(m, ok, 2, &err) == FL_EINTERNAL && strstr(err.msg, "already"),
          "called twice: %s", err.msg);
    CHECK(fl_model_train_full(m, &err) == FL_EINTERNAL, "train_full after train_layers");
    fl_lora_spec spec = {.rank = 2, .alpha = 4, .role_mask = 1u << FL_ROLE_ATTN_Q};
    CHECK(fl_model_add_lora(m, &spec, &err) == FL_EINTERNAL, "add_lora after train_layers");
    CHECK(fl_model_save_adapter(m, tu_tmpdir("test_layers_refusals"), "base", &err) == FL_EINTERNAL,
          "an adapter saved without LoRA");
    fl_model_free(m);
    m = model_of(FL_ARCH_GPT2);
    CHECK(fl_model_add_lora(m, &spec, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_model_train_layers(m, ok, 2, &err) == FL_EINTERNAL, "train_layers after add_lora");
    fl_model_free(m);

    int layers[8], n = 0;
    CHECK(fl_layers_parse("0,2-3", 4, layers, 8, &n, &err) == FL_OK && n == 3 && layers[0] == 0 &&
              layers[1] == 2 && layers[2] == 3,
          "0,2-3: %s", err.msg);
    CHECK(fl_layers_parse("3,0", 4, layers, 8, &n, &err) == FL_OK && n == 2 && layers[0] == 3,
          "3,0: %s", err.msg);
    static const struct {
        const char *list, *expect;
    } bad[] = {{"", "empty"},      {"4", "layer 4"},    {"1,1", "twice"},     {"0-1,1", "twice"},
               {"-1", "expected"}, {"1,", "comma"},     {"a", "expected"},    {"2-1", "range"},
               {"1-", "range"},    {"1;2", "expected"}, {"0-3,x", "expected"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(fl_layers_parse(bad[i].list, 4, layers, 8, &n, &err) == FL_EINPUT &&
                  strstr(err.msg, bad[i].expect),
              "'%s': %s", bad[i].list, err.msg);
    CHECK(fl_layers_parse("0-3", 4, layers, 2, &n, &err) == FL_EINPUT, "more than max accepted");
}

int main(void) {
    fl_arch archs[2] = {FL_ARCH_GPT2, FL_ARCH_LLAMA};
    int offsite[2] = {0, 3}, top[2] = {3, 2}, one[1] = {1};
    for (int i = 0; i < 2; i++) {
        check_gradients(archs[i], offsite, 2); /* bottom and top: the gradient crosses frozen 1-2 */
        check_gradients(archs[i], top, 2);     /* nothing runs below block 2 */
        check_gradients(archs[i], one, 1);
        check_steps(archs[i]);
        check_lora_layers(archs[i]);
        check_peft_fixture(archs[i]);
    }
    check_refusals();
    return tu_finish("test_layers");
}
