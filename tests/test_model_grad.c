/* test_model_grad.c — finite-difference checks of whole tiny models: GPT-2, LLaMA with
 * grouped-query attention and an untied head, Qwen2 with q/k/v biases, each fully trainable and
 * with LoRA on every role (with dropout too); plus the properties other features rely on:
 * per-example gradients sum to the batch gradient (DP-SGD), gradient accumulation equals one big
 * batch, evaluation and logits passes agree with the training pass, and a LoRA model starts equal
 * to its base (B = 0). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/model.h"
#include "fedllm/rng.h"
#include "testutil.h"

enum { B = 2, T = 8 };

static fl_config tiny_config(fl_arch arch) {
    return tu_config(arch, 32, 16, 4, 24, 16, arch != FL_ARCH_LLAMA);
}

/* Random weights large enough that every gradient is far from zero. */
static void randomize(fl_params *p, uint64_t seed, float std) {
    fl_rng_normal(p->data, p->numel, seed, 0, std);
    for (int i = 0; i < p->n_views; i++)
        if (strstr(p->views[i].name, "norm") || strstr(p->views[i].name, "ln_"))
            for (size_t j = 0; j < p->views[i].numel; j++)
                p->data[p->views[i].offset + j] += 1.0f;
}

static void make_batch(int32_t *tokens, int32_t *targets, int V, uint64_t seed) {
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (int32_t)(fl_rng_uniform_at(seed, 0, (size_t)i) * V);
        targets[i] = (int32_t)(fl_rng_uniform_at(seed, 1000, (size_t)i) * V);
    }
    targets[3] = targets[B * T - 2] = -100;
}

static double loss_of(fl_model *m, const int32_t *tokens, const int32_t *targets, fl_pass pass) {
    fl_pass_result r;
    fl_err err;
    /* A training pass adds head gradients; they are saved and restored by the caller. */
    if (fl_model_forward(m, tokens, targets, B, T, pass, 0.0f, &r, &err) != FL_OK || !r.n_counted)
        return NAN;
    return r.loss_sum / (double)r.n_counted;
}

/* Compares the analytic gradient of every trainable view against central differences at a few
 * entries per view (the largest-gradient one and two random ones). */
static void check_fd(const char *what, fl_model *m, fl_pass fd_pass) {
    fl_params *p = fl_model_trainable(m), *g = fl_model_grads(m);
    int32_t tokens[B * T], targets[B * T];
    make_batch(tokens, targets, fl_model_config(m)->vocab_size, 7);
    long counted = 0;
    for (int i = 0; i < B * T; i++)
        counted += targets[i] != -100;
    memset(g->data, 0, g->numel * sizeof(float));
    fl_pass_result r;
    fl_err err;
    CHECK(fl_model_forward(m, tokens, targets, B, T, FL_PASS_TRAIN, 1.0f / (float)counted, &r,
                           &err) == 0,
          "%s", err.msg);
    CHECK(fl_model_backward(m) == FL_OK, "backward refused");
    float *analytic = malloc(g->numel * sizeof(float));
    memcpy(analytic, g->data, g->numel * sizeof(float));
    int bad = 0, checked = 0;
    double worst_ratio = 0;
    for (int v = 0; v < p->n_views; v++) {
        const fl_view *view = &p->views[v];
        size_t biggest = 0;
        for (size_t j = 0; j < view->numel; j++)
            if (fabsf(analytic[view->offset + j]) > fabsf(analytic[view->offset + biggest]))
                biggest = j;
        size_t picks[3] = {biggest, (size_t)(fl_rng_uniform_at(3, v, 0) * view->numel),
                           (size_t)(fl_rng_uniform_at(3, v, 1) * view->numel)};
        for (int k = 0; k < 3; k++) {
            float *x = p->data + view->offset + picks[k];
            float saved = *x, h = 2e-3f * fmaxf(1.0f, fabsf(saved));
            *x = saved + h;
            double up = loss_of(m, tokens, targets, fd_pass);
            *x = saved - h;
            double down = loss_of(m, tokens, targets, fd_pass);
            *x = saved;
            double fd = (up - down) / (2.0 * h), an = analytic[view->offset + picks[k]];
            /* Not a sum-order comparison but the central difference's own error: truncation
             * (h^2 f'''/6: the 2% part) plus the loss's rounding over h (the 2e-4 part; up and
             * down run the same kernels on nearly the same numbers, so most of their rounding
             * cancels). Measured to hold 3x over on every OpenBLAS core type (see
             * FEDLLM_TEST_VERBOSE). */
            double tol = 2e-2 * fabs(fd) + 2e-4;
            checked++;
            if (fabs(fd - an) / tol > worst_ratio) worst_ratio = fabs(fd - an) / tol;
            if (!(fabs(fd - an) <= tol)) { /* NaN fails too */
                if (bad++ < 5)
                    fprintf(stderr, "%s: %s[%zu]: analytic %.6g finite difference %.6g\n", what,
                            view->name, picks[k], an, fd);
            }
        }
    }
    CHECK(bad == 0, "%s: %d of %d gradient entries disagree with finite differences", what, bad,
          checked);
    CHECK(checked >= 3 * p->n_views, "%s: too few entries checked", what);
    if (getenv("FEDLLM_TEST_VERBOSE"))
        printf("%s: finite differences within %.3g of their tolerance\n", what, worst_ratio);
    free(analytic);
}

static fl_model *tiny_model_of(fl_config c) {
    fl_err err;
    fl_model *m = fl_model_new_random(&c, 11, &err);
    CHECK(m != NULL, "%s", err.msg);
    randomize(fl_model_params(m), 5, 0.3f);
    return m;
}

static fl_model *tiny_model(fl_arch arch) { return tiny_model_of(tiny_config(arch)); }

static void check_full(fl_arch arch, int untied_gpt2) {
    fl_config c = tiny_config(arch);
    c.tie_embeddings = c.tie_embeddings && !untied_gpt2;
    fl_model *m = tiny_model_of(c);
    fl_err err;
    CHECK(fl_model_train_full(m, &err) == 0, "%s", err.msg);
    char what[64];
    snprintf(what, sizeof what, "%s full%s", fl_arch_name(arch), untied_gpt2 ? " untied" : "");
    check_fd(what, m, FL_PASS_EVAL);
    fl_model_free(m);
}

/* lora_targets 0: every role of the family. */
static void check_lora(fl_arch arch, float dropout, unsigned train_base, unsigned lora_targets) {
    fl_model *m = tiny_model(arch);
    fl_err err;
    unsigned all = arch == FL_ARCH_GPT2 ? 0x7Fu & ~(1u << FL_ROLE_MLP_GATE) : 0x7Fu;
    if (lora_targets) all = lora_targets;
    fl_lora_spec spec = {.rank = 3,
                         .alpha = 6,
                         .dropout = dropout,
                         .role_mask = all,
                         .seed = 9,
                         .train_base = train_base};
    CHECK(fl_model_add_lora(m, &spec, &err) == 0, "%s", err.msg);
    /* A LoRA model with B = 0 computes exactly its base. */
    int32_t tokens[B * T], targets[B * T];
    make_batch(tokens, targets, fl_model_config(m)->vocab_size, 7);
    fl_model *base = tiny_model(arch);
    double l_lora = loss_of(m, tokens, targets, FL_PASS_EVAL);
    double l_base = loss_of(base, tokens, targets, FL_PASS_EVAL);
    CHECK(fabs(l_lora - l_base) < 1e-6, "%s: fresh LoRA changes the loss", fl_arch_name(arch));
    fl_model_free(base);
    randomize(fl_model_trainable(m), 21, 0.3f); /* B != 0 so that dA is not zero */
    fl_model_set_dropout(m, dropout > 0, 4);
    char what[64];
    snprintf(what, sizeof what, "%s lora%s%s%s%s", fl_arch_name(arch),
             lora_targets & FL_LORA_C_ATTN ? " c_attn" : "", dropout > 0 ? "+dropout" : "",
             train_base & FL_TRAIN_NORMS ? "+norms" : "",
             train_base & FL_TRAIN_BIASES ? "+biases" : "");
    check_fd(what, m, dropout > 0 ? FL_PASS_TRAIN : FL_PASS_EVAL);
    fl_model_free(m);
}

/* Two fp32 gradients of the same loss, a and b, against the rounding bound of testutil.h: per
 * tensor, max |a - b| <= 2 D u S with D the gradient's depth and S the tensor's scale, the largest
 * of |b| and of mag (the magnitudes of the terms summed into a, when given). Returns the worst
 * |a - b| / bound over the tensors (<= 1 passes; NaN gives +inf) and names that tensor. */
static double gradient_excess(const fl_params *g, const float *a, const float *b, const float *mag,
                              double depth, const char **where) {
    double worst = 0;
    *where = "";
    for (int v = 0; v < g->n_views; v++) {
        const fl_view *view = &g->views[v];
        double scale = fmax(tu_max_abs(b + view->offset, view->numel),
                            mag ? tu_max_abs(mag + view->offset, view->numel) : 0);
        double diff = 0;
        for (size_t j = 0; j < view->numel; j++) {
            double d = fabs((double)a[view->offset + j] - b[view->offset + j]);
            if (!(d <= diff)) diff = isnan(d) ? INFINITY : d;
        }
        double excess = diff / (2 * depth * TU_FP32_U * scale + 1e-30);
        if (!(excess <= worst)) {
            worst = isnan(excess) ? INFINITY : excess;
            *where = view->name;
        }
    }
    return worst;
}

/* Sum over examples of B = 1 gradients (each scaled by the batch's 1/count) == the batch gradient;
 * two accumulated half batches == the batch; logits pass == evaluation pass == training pass; all
 * within the fp32 rounding bound of testutil.h, since the batched and the per-example passes sum
 * in orders that the BLAS kernel decides. */
static void check_batch_properties(fl_arch arch) {
    fl_model *m = tiny_model(arch);
    fl_err err;
    fl_model_train_full(m, &err);
    fl_params *g = fl_model_grads(m);
    int32_t tokens[B * T], targets[B * T];
    make_batch(tokens, targets, fl_model_config(m)->vocab_size, 13);
    long counted = 0;
    for (int i = 0; i < B * T; i++)
        counted += targets[i] != -100;
    float scale = 1.0f / (float)counted;
    fl_pass_result r;
    memset(g->data, 0, g->numel * sizeof(float));
    fl_model_forward(m, tokens, targets, B, T, FL_PASS_TRAIN, scale, &r, &err);
    CHECK(fl_model_backward(m) == FL_OK, "backward refused");
    double train_loss = r.loss_sum;
    float *batch = malloc(g->numel * sizeof(float)), *sum = calloc(g->numel, sizeof(float));
    float *mag = calloc(g->numel, sizeof(float));
    memcpy(batch, g->data, g->numel * sizeof(float));
    for (int b = 0; b < B; b++) {
        memset(g->data, 0, g->numel * sizeof(float));
        fl_model_forward(m, tokens + b * T, targets + b * T, 1, T, FL_PASS_TRAIN, scale, &r, &err);
        CHECK(fl_model_backward(m) == FL_OK, "backward refused");
        for (size_t i = 0; i < g->numel; i++) {
            sum[i] += g->data[i];
            mag[i] += fabsf(g->data[i]);
        }
    }
    /* The per-example sum adds B - 1 roundings to the gradient's depth. */
    const fl_config *c = fl_model_config(m);
    double depth = tu_depth_gradient(c, B, T) + (B - 1);
    const char *where;
    double excess = gradient_excess(g, sum, batch, mag, depth, &where);
    CHECK(excess <= 1,
          "%s: per-example gradients do not sum to the batch gradient (%s: %.3g of "
          "the fp32 bound)",
          fl_arch_name(arch), where, excess);
    /* Accumulation: the same two examples as two micro-batches into one gradient. */
    memset(g->data, 0, g->numel * sizeof(float));
    for (int b = 0; b < B; b++) {
        fl_model_forward(m, tokens + b * T, targets + b * T, 1, T, FL_PASS_TRAIN, scale, &r, &err);
        CHECK(fl_model_backward(m) == FL_OK, "backward refused");
    }
    double excess_accum = gradient_excess(g, g->data, batch, mag, depth, &where);
    CHECK(excess_accum <= 1, "%s: accumulated gradient differs (%s: %.3g of the fp32 bound)",
          fl_arch_name(arch), where, excess_accum);
    /* The three passes run the same forward. Each token's loss is the log-sum-exp of its logits
     * minus one of them, so its error is within 2 D u (max |logit|) plus one u of the loss. */
    fl_model_forward(m, tokens, targets, B, T, FL_PASS_LOGITS, 0, &r, &err);
    double logits_loss = r.loss_sum;
    double loss_tol =
        2 * (tu_depth_forward(c, T) * TU_FP32_U *
                 (2 * tu_max_abs(r.logits, (size_t)B * T * c->vocab_size)) * (double)r.n_counted +
             TU_FP32_U * fabs(train_loss));
    CHECK(fabs(logits_loss - train_loss) <= loss_tol, "logits loss %.9g vs train %.9g (bound %.3g)",
          logits_loss, train_loss, loss_tol);
    fl_model_forward(m, tokens, targets, B, T, FL_PASS_EVAL, 0, &r, &err);
    CHECK(fabs(r.loss_sum - train_loss) <= loss_tol, "eval loss %.9g vs train %.9g (bound %.3g)",
          r.loss_sum, train_loss, loss_tol);
    if (getenv("FEDLLM_TEST_VERBOSE"))
        printf("%s: per-example sum %.3g, accumulation %.3g of the fp32 bound (depth %.0f); "
               "losses differ by %.3g, %.3g (bound %.3g)\n",
               fl_arch_name(arch), excess, excess_accum, depth, fabs(logits_loss - train_loss),
               fabs(r.loss_sum - train_loss), loss_tol);
    /* Bad input: a token outside the vocabulary, a sequence longer than the context. */
    int32_t bad[B * T];
    memcpy(bad, tokens, sizeof bad);
    bad[5] = 32;
    CHECK(fl_model_forward(m, bad, targets, B, T, FL_PASS_EVAL, 0, &r, &err) == FL_EINPUT &&
              strstr(err.msg, "vocabulary"),
          "out-of-vocabulary token accepted");
    int32_t long_tokens[17] = {0}, long_targets[17] = {0};
    CHECK(fl_model_forward(m, long_tokens, long_targets, 1, 17, FL_PASS_EVAL, 0, &r, &err) ==
                  FL_EINPUT &&
              strstr(err.msg, "context"),
          "over-long sequence accepted");
    free(batch);
    free(sum);
    free(mag);
    fl_model_free(m);
}

/* Offsite-tuning's emulator: a model of chosen layers. All layers in order = the same model; one
 * layer = that layer's weights at index 0; a bad index is refused. */
static void check_subset(fl_arch arch) {
    fl_model *m = tiny_model(arch);
    fl_err err;
    int32_t tokens[B * T], targets[B * T];
    make_batch(tokens, targets, fl_model_config(m)->vocab_size, 17);
    int all[2] = {0, 1}, second[1] = {1}, bad[1] = {2};
    fl_model *same = fl_model_subset(m, all, 2, &err), *one = fl_model_subset(m, second, 1, &err);
    CHECK(same && one, "%s", err.msg);
    double full = loss_of(m, tokens, targets, FL_PASS_EVAL);
    CHECK(fabs(loss_of(same, tokens, targets, FL_PASS_EVAL) - full) < 1e-9 * fabs(full),
          "%s: subset of every layer changes the loss", fl_arch_name(arch));
    CHECK(fl_model_config(one)->n_layer == 1, "subset has %d layers",
          fl_model_config(one)->n_layer);
    const fl_params *p = fl_model_params(m), *q = fl_model_params(one);
    int compared = 0;
    for (int i = 0; i < q->n_views; i++) {
        char name[FL_VIEW_NAME_MAX + 8], *at;
        snprintf(name, sizeof name, "%s", q->views[i].name);
        if ((at = strstr(name, ".0.")) != NULL) at[1] = '1';
        const float *src = fl_params_get(p, name);
        CHECK(src && memcmp(src, q->data + q->views[i].offset, q->views[i].numel * 4) == 0,
              "%s: subset tensor %s is not the original's %s", fl_arch_name(arch), q->views[i].name,
              name);
        compared++;
    }
    CHECK(compared == q->n_views && compared > 4, "compared %d tensors", compared);
    CHECK(fl_model_subset(m, bad, 1, &err) == NULL && err.code == FL_EINPUT, "bad layer accepted");
    fl_model_free(same);
    fl_model_free(one);
    fl_model_free(m);
}

/* The pass contract: backward follows its training forward directly and runs once; LoRA comes
 * before any pass; passes of other shapes in between leave results unchanged. */
static void check_contract(fl_arch arch) {
    fl_err err;
    fl_model *m = tiny_model(arch), *fresh = tiny_model(arch);
    fl_model_train_full(m, &err);
    int32_t tokens[B * T], targets[B * T];
    make_batch(tokens, targets, fl_model_config(m)->vocab_size, 23);
    fl_pass_result r;
    fl_model_forward(m, tokens, targets, B, T, FL_PASS_TRAIN, 0.1f, &r, &err);
    CHECK(fl_model_backward(m) == FL_OK, "backward after a training pass");
    CHECK(fl_model_backward(m) == FL_EINTERNAL, "a second backward must be refused");
    fl_model_forward(m, tokens, targets, B, T, FL_PASS_TRAIN, 0.1f, &r, &err);
    fl_model_forward(m, tokens, targets, 1, T, FL_PASS_EVAL, 0, &r, &err);
    CHECK(fl_model_backward(m) == FL_EINTERNAL,
          "backward after an evaluation pass must be refused");
    /* Other shapes, then the first again: the same loss as a model that never saw them. */
    fl_model_forward(m, tokens, targets, 1, 4, FL_PASS_LOGITS, 0, &r, &err);
    fl_model_forward(m, tokens, targets, B, T / 2, FL_PASS_TRAIN, 0.1f, &r, &err);
    double again = loss_of(m, tokens, targets, FL_PASS_EVAL);
    CHECK(fabs(again - loss_of(fresh, tokens, targets, FL_PASS_EVAL)) < 1e-12,
          "%s: reused arena changes the loss", fl_arch_name(arch));
    fl_lora_spec spec = {.rank = 2, .alpha = 2, .role_mask = 1u << FL_ROLE_ATTN_Q};
    CHECK(fl_model_add_lora(fresh, &spec, &err) == FL_EINTERNAL, "LoRA after a pass accepted");
    fl_model_free(m);
    fl_model_free(fresh);
}

int main(void) {
    fl_arch archs[3] = {FL_ARCH_GPT2, FL_ARCH_LLAMA, FL_ARCH_QWEN2};
    for (int i = 0; i < 3; i++) {
        check_full(archs[i], 0);
        check_contract(archs[i]);
        check_lora(archs[i], 0.0f, 0, 0);
        check_lora(archs[i], 0.25f, 0, 0);
        check_lora(archs[i], 0.0f, FL_TRAIN_NORMS | FL_TRAIN_BIASES, 0);
        check_batch_properties(archs[i]);
        check_subset(archs[i]);
    }
    check_full(FL_ARCH_GPT2, 1); /* GPT-2 with its own lm_head (tie_word_embeddings false) */
    /* GPT-2's fused c_attn adapted whole (PEFT's target "c_attn"), beside the other modules */
    unsigned modules = FL_LORA_C_ATTN | 1u << FL_ROLE_ATTN_O | 1u << FL_ROLE_MLP_UP;
    check_lora(FL_ARCH_GPT2, 0.0f, 0, modules);
    check_lora(FL_ARCH_GPT2, 0.25f, FL_TRAIN_BIASES, modules); /* ln_1's bias alone trains too */
    return tu_finish("test_model_grad");
}
