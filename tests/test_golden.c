/* test_golden.c — the C engine against PyTorch references (tools/golden.py writes the fixtures):
 * logits and loss within 1e-4, every gradient within 1e-3, and the losses of 20 AdamW steps, for
 * tiny GPT-2, LLaMA (grouped-query attention, untied head) and Qwen2 (q/k/v biases, tied),
 * full fine-tuning and LoRA on attn_q, attn_v and mlp_down. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/model.h"
#include "fedllm/safetensors.h"
#include "fedllm/train.h"
#include "testutil.h"

/* max |a - b| / max |b|: relative to the tensor's scale, so near-zero entries do not dominate. */
static double scaled_diff(const float *a, const float *b, size_t n) {
    double diff = 0, scale = 1e-12;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= diff)) diff = isnan(d) ? INFINITY : d;
        if (fabs((double)b[i]) > scale) scale = fabs((double)b[i]);
    }
    return diff / scale;
}

static float *read_f32(const fl_st_file *f, const char *name, size_t *numel) {
    const fl_st_tensor *t = fl_st_find(f, name);
    if (!t) return NULL;
    float *out = malloc(t->numel * sizeof(float));
    if (out && fl_st_to_f32(t, out, NULL)) {
        free(out);
        return NULL;
    }
    if (numel) *numel = t->numel;
    return out;
}

typedef struct golden {
    fl_st_file file;
    int B, T;
    int32_t *tokens, *targets;
    long counted;
} golden;

static int golden_open(golden *g, const char *dir) {
    char path[512];
    fl_err err;
    snprintf(path, sizeof path, "%s/golden.safetensors", dir);
    if (fl_st_open(&g->file, path, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    const fl_st_tensor *ids = fl_st_find(&g->file, "input_ids");
    const fl_st_tensor *labels = fl_st_find(&g->file, "labels");
    if (!ids || !labels || ids->ndim != 2) return -1;
    g->B = (int)ids->shape[0];
    g->T = (int)ids->shape[1];
    g->tokens = malloc(ids->numel * sizeof(int32_t));
    g->targets = malloc(ids->numel * sizeof(int32_t));
    fl_st_to_i32(ids, g->tokens, NULL);
    fl_st_to_i32(labels, g->targets, NULL);
    g->counted = 0;
    for (size_t i = 0; i < ids->numel; i++)
        g->counted += g->targets[i] != -100;
    return 0;
}

static void golden_close(golden *g) {
    fl_st_close(&g->file);
    free(g->tokens);
    free(g->targets);
}

static void check_logits_and_loss(const char *family, const char *what, fl_model *m, golden *g,
                                  const char *logits_name, const char *loss_name) {
    fl_err err;
    fl_pass_result r;
    CHECK(fl_model_forward(m, g->tokens, g->targets, g->B, g->T, FL_PASS_LOGITS, 0, &r, &err) == 0,
          "%s", err.msg);
    size_t n;
    float *ref = read_f32(&g->file, logits_name, &n);
    float *loss = read_f32(&g->file, loss_name, NULL);
    CHECK(ref && loss, "%s: fixture lacks %s", family, logits_name);
    if (!ref || !loss) return;
    double d = scaled_diff(r.logits, ref, n);
    if (getenv("GOLDEN_VERBOSE"))
        printf("%s %s logits %.3g loss %.6f ref %.6f\n", family, what, d,
               r.loss_sum / (double)r.n_counted, loss[0]);
    CHECK(d < 1e-4, "%s %s logits differ by %.3g (relative)", family, what, d);
    double mean = r.loss_sum / (double)r.n_counted;
    CHECK(fabs(mean - loss[0]) < 1e-4 * fabs(loss[0]), "%s %s loss %.7f vs torch %.7f", family,
          what, mean, loss[0]);
    /* The training pass reports the same loss. */
    fl_pass_result t;
    fl_model_forward(m, g->tokens, g->targets, g->B, g->T, FL_PASS_EVAL, 0, &t, &err);
    CHECK(fabs(t.loss_sum - r.loss_sum) < 1e-4 * fabs(r.loss_sum), "%s eval loss differs", family);
    free(ref);
    free(loss);
}

/* Gradient of every trainable view vs the fixture's `prefix + name` (name mapped by map_name). */
static void check_grads(const char *family, fl_model *m, golden *g,
                        const char *(*map_name)(fl_model *, int, char *), const char *prefix) {
    fl_err err;
    fl_params *grads = fl_model_grads(m), *train = fl_model_trainable(m);
    memset(grads->data, 0, grads->numel * sizeof(float));
    fl_pass_result r;
    CHECK(fl_model_forward(m, g->tokens, g->targets, g->B, g->T, FL_PASS_TRAIN,
                           1.0f / (float)g->counted, &r, &err) == 0,
          "%s", err.msg);
    CHECK(fl_model_backward(m) == FL_OK, "backward refused");
    int checked = 0;
    for (int i = 0; i < train->n_views; i++) {
        char buf[256], name[300];
        const char *ref_name = map_name(m, i, buf);
        snprintf(name, sizeof name, "%s%s", prefix, ref_name);
        size_t n;
        float *ref = read_f32(&g->file, name, &n);
        CHECK(ref && n == train->views[i].numel, "%s: no reference gradient %s", family, name);
        if (!ref) continue;
        double d = scaled_diff(grads->data + train->views[i].offset, ref, n);
        CHECK(d < 1e-3, "%s gradient of %s differs by %.3g (relative)", family, name, d);
        checked++;
        free(ref);
    }
    CHECK(checked == train->n_views, "%s: %d of %d gradients checked", family, checked,
          train->n_views);
}

static void check_adamw(const char *family, fl_model *m, golden *g, const char *losses_name,
                        float lr) {
    fl_err err;
    size_t n;
    float *ref = read_f32(&g->file, losses_name, &n);
    CHECK(ref && n == 20, "%s: fixture lacks %s", family, losses_name);
    if (!ref) return;
    fl_optim_spec spec = fl_optim_defaults();
    spec.lr = lr;
    spec.weight_decay = strcmp(losses_name, "adamw_losses") == 0 ? 0.1f : 0.0f;
    spec.clip_norm = 1.0f;
    spec.schedule = FL_SCHED_COSINE;
    spec.warmup_steps = 5;
    spec.total_steps = 20;
    fl_optimizer opt;
    fl_optimizer_init(&opt, fl_model_trainable(m), &spec, &err);
    double worst = 0;
    for (int step = 0; step < 20; step++) {
        fl_params *grads = fl_model_grads(m);
        memset(grads->data, 0, grads->numel * sizeof(float));
        fl_pass_result r;
        CHECK(fl_model_forward(m, g->tokens, g->targets, g->B, g->T, FL_PASS_TRAIN,
                               1.0f / (float)g->counted, &r, &err) == FL_OK &&
                  fl_model_backward(m) == FL_OK,
              "%s step %d failed", family, step);
        double loss = r.loss_sum / (double)r.n_counted;
        double d = fabs(loss - ref[step]) / fabs(ref[step]);
        if (!(d <= worst)) worst = isnan(d) ? INFINITY : d;
        fl_clip_grad_norm(grads, spec.clip_norm);
        fl_optimizer_step(&opt, fl_model_trainable(m), grads);
    }
    if (getenv("GOLDEN_VERBOSE"))
        printf("%s %s worst %.3g first %.4f last %.4f\n", family, losses_name, worst, ref[0],
               ref[19]);
    CHECK(worst < 1e-3, "%s %s: worst relative loss difference %.3g", family, losses_name, worst);
    CHECK(ref[19] < ref[0] * 0.9, "%s: reference losses do not fall (%g -> %g)", family, ref[0],
          ref[19]);
    fl_optimizer_free(&opt);
    free(ref);
}

static const char *full_name(fl_model *m, int view, char *buf) {
    (void)buf;
    return fl_model_params(m)->views[view].name;
}

/* LoRA view `view` -> "lora.{layer}.{role}.A" or ".B". */
static const char *lora_name(fl_model *m, int view, char *buf) {
    for (int l = 0; l < fl_model_config(m)->n_layer; l++)
        for (int r = 0; r < FL_N_ROLES; r++)
            for (int which = 0; which < 2; which++)
                if (fl_model_lora_view(m, l, (fl_role)r, which) == view) {
                    sprintf(buf, "%d.%s.%s", l, fl_role_name((fl_role)r), which ? "B" : "A");
                    return buf;
                }
    return "?";
}

static void run_family(const char *family) {
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fixtures/golden/%s", family);
    fl_err err;
    golden g;
    CHECK(golden_open(&g, dir) == 0, "%s: cannot read golden.safetensors", family);
    if (g.tokens == NULL) return;

    /* Full fine-tuning. */
    fl_model *m = fl_model_load(dir, &err);
    CHECK(m != NULL, "%s: %s", family, m ? "" : err.msg);
    if (!m) return;
    CHECK(fl_model_train_full(m, &err) == 0, "%s", err.msg);
    check_logits_and_loss(family, "full", m, &g, "logits", "loss");
    check_grads(family, m, &g, full_name, "grad.");
    check_adamw(family, m, &g, "adamw_losses", 1e-3f);
    fl_model_free(m);

    /* LoRA r 4, alpha 8 on attn_q, attn_v, mlp_down with the fixture's factors. */
    m = fl_model_load(dir, &err);
    fl_lora_spec spec = {.rank = 4, .alpha = 8, .dropout = 0, .seed = 1};
    CHECK(fl_lora_parse_targets("attn_q,attn_v,mlp_down", fl_model_config(m)->arch, &spec.role_mask,
                                &err) == 0,
          "%s", err.msg);
    CHECK(fl_model_add_lora(m, &spec, &err) == 0, "%s", err.msg);
    fl_params *lora = fl_model_trainable(m);
    for (int i = 0; i < lora->n_views; i++) {
        char buf[256], name[300];
        snprintf(name, sizeof name, "lora.%s", lora_name(m, i, buf));
        CHECK(fl_st_read_into(&g.file, name, lora->views[i].ndim, lora->views[i].shape,
                              lora->data + lora->views[i].offset, &err) == 0,
              "%s", err.msg);
    }
    check_logits_and_loss(family, "lora", m, &g, "lora_logits", "lora_loss");
    check_grads(family, m, &g, lora_name, "lora_grad.");
    check_adamw(family, m, &g, "lora_adamw_losses", 1e-2f);
    fl_model_free(m);
    golden_close(&g);
}

int main(void) {
    run_family("gpt2");
    run_family("llama");
    run_family("qwen2");
    return tu_finish("test_golden");
}
