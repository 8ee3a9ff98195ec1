/* test_rope.c — fedllm's rotary scalings against transformers 5, without Python: tiny LLaMA and
 * Qwen2 models that transformers saved with each rope type fedllm implements (default with a
 * theta given only in rope_parameters, linear, dynamic NTK, llama3, YaRN with defaults and with
 * every option), each with its config also in transformers 4's layout, and what transformers
 * computed from them in float32 (tools/rope_parity.py wrote tests/fixtures/rope/; see
 * docs/parity.md). For every case:
 *   - both layouts of config.json read as the same config, of the expected type and theta;
 *   - fl_rope_frequencies gives transformers' inv_freq and attention scaling for each pass's
 *     length (dynamic: the default below max_position, rescaled above it);
 *   - the logits and loss of a short pass (2 x 12) and of a long one (past max_position or
 *     original_max_position), run one after the other on one model and then the short one again
 *     (the dynamic tables follow the pass, not the history);
 *   - the logits of every step of transformers' greedy generation, fed the same tokens through the
 *     key/value cache (dynamic: the steps cross max_position, so cached keys keep the frequencies
 *     of their own step, as in transformers), and the greedy choices where they are not a near tie;
 *   - without its scaling (or with theta 10000 for the default cases) the model misses the long
 *     pass's logits by far more than the tolerance, so the fixtures do exercise the scaling.
 *
 * Tolerances. inv_freq: both sides compute the same float32 expression; pow differs by at most
 * an ulp (torch's float32 pow vs double pow rounded) and the ramps and divisions add a few more
 * roundings, so 16 ulp (2e-6 relative) bounds the difference. Logits: everything is fp32; what
 * differs is the order of the GEMM and softmax sums (relative error ~ C * 2^-24 = 2e-6 per layer
 * for C = 32) and the angles t * inv_freq (an ulp of inv_freq moves the angle at position 300 by
 * 300 * 2^-24 = 2e-5 rad, which moves q and k by as much relatively). Two layers of weights of
 * scale 0.08 do not amplify that, so 1e-4 of the largest reference logit (test_hf_parity's bound)
 * leaves a margin of 5x; the loss, a log-softmax, moves by at most twice the largest logit error.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/config.h"
#include "fedllm/model.h"
#include "fedllm/safetensors.h"
#include "testutil.h"

#define FIXTURES       "tests/fixtures/rope"
#define TOLERANCE      1e-4
#define FREQ_TOLERANCE 2e-6
#define HD_MAX         64

typedef struct rope_case {
    const char *name;
    fl_arch arch;
    fl_rope_type type;
    float theta;
} rope_case;

static const rope_case CASES[] = {
    {"llama-default", FL_ARCH_LLAMA, FL_ROPE_DEFAULT, 500000.0f},
    {"qwen2-default", FL_ARCH_QWEN2, FL_ROPE_DEFAULT, 1000000.0f},
    {"llama-linear", FL_ARCH_LLAMA, FL_ROPE_LINEAR, 10000.0f},
    {"llama-dynamic", FL_ARCH_LLAMA, FL_ROPE_DYNAMIC, 10000.0f},
    {"llama-llama3", FL_ARCH_LLAMA, FL_ROPE_LLAMA3, 10000.0f},
    {"qwen2-yarn", FL_ARCH_QWEN2, FL_ROPE_YARN, 1000000.0f},
    {"llama-yarn", FL_ARCH_LLAMA, FL_ROPE_YARN, 10000.0f},
};

/* max |a - b| / max |ref|. */
static double scaled_diff(const float *a, const float *ref, size_t n) {
    double diff = 0, scale = 1e-12;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= diff)) diff = isnan(d) ? INFINITY : d;
        if (fabs((double)ref[i]) > scale) scale = fabs((double)ref[i]);
    }
    return diff / scale;
}

static double max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fabs((double)x[i]) > m ? fabs((double)x[i]) : m;
    return m;
}

/* A tensor of the fixture as floats or ints (malloc'd; NULL with a failed check if absent). */
static void *tensor(const fl_st_file *f, const char *name, size_t *numel, int as_int) {
    const fl_st_tensor *t = fl_st_find(f, name);
    CHECK(t != NULL, "%s: %s missing", f->path, name);
    if (!t) return NULL;
    void *out = malloc((t->numel ? t->numel : 1) * 4);
    fl_err err;
    int rc = as_int ? fl_st_to_i32(t, out, &err) : fl_st_to_f32(t, out, &err);
    CHECK(rc == FL_OK, "%s: %s", name, err.msg);
    if (numel) *numel = t->numel;
    return out;
}

static int same_rope_config(const fl_config *a, const fl_config *b) {
    const fl_rope_scaling *x = &a->rope, *y = &b->rope;
    return a->rope_theta == b->rope_theta && a->max_position == b->max_position &&
           x->type == y->type && x->factor == y->factor &&
           x->original_max_position == y->original_max_position &&
           x->low_freq_factor == y->low_freq_factor && x->high_freq_factor == y->high_freq_factor &&
           x->beta_fast == y->beta_fast && x->beta_slow == y->beta_slow &&
           x->attention_factor == y->attention_factor && x->truncate == y->truncate;
}

/* The model's logits and mean loss for ids (B, T), targets the next token. */
static int run_pass(fl_model *m, const int32_t *ids, int B, int T, float **logits, double *loss) {
    int32_t *targets = malloc((size_t)B * T * sizeof *targets);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            targets[b * T + t] = t + 1 < T ? ids[b * T + t + 1] : -100;
    fl_pass_result r;
    fl_err err;
    int rc = fl_model_forward(m, ids, targets, B, T, FL_PASS_LOGITS, 0, &r, &err);
    CHECK(rc == FL_OK, "forward %d x %d: %s", B, T, err.msg);
    free(targets);
    if (rc) return rc;
    size_t n = (size_t)B * T * fl_model_config(m)->vocab_size;
    *logits = malloc(n * sizeof **logits);
    memcpy(*logits, r.logits, n * sizeof **logits);
    *loss = r.loss_sum / (double)r.n_counted;
    return FL_OK;
}

static void check_frequencies(const rope_case *rc, const fl_config *cfg, const fl_st_file *f, int k,
                              int T) {
    char name[64];
    size_t n = 0;
    snprintf(name, sizeof name, "inv_freq.%d", k);
    float *ref = tensor(f, name, &n, 0);
    snprintf(name, sizeof name, "attention_scaling.%d", k);
    float *scaling = tensor(f, name, NULL, 0);
    if (!ref || !scaling || n != (size_t)cfg->head_dim / 2) {
        CHECK(!ref || n == (size_t)cfg->head_dim / 2, "%s: inv_freq has %zu values", rc->name, n);
        free(ref);
        free(scaling);
        return;
    }
    float inv_freq[HD_MAX / 2];
    float scale = fl_rope_frequencies(cfg, T, inv_freq);
    double worst = 0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)inv_freq[i] - ref[i]) / ref[i]);
    CHECK(worst <= FREQ_TOLERANCE, "%s pass %d (T %d): inv_freq off by %.3g relative", rc->name, k,
          T, worst);
    CHECK(fabs((double)scale - scaling[0]) <= FREQ_TOLERANCE * scaling[0],
          "%s: attention scaling %.9g, transformers %.9g", rc->name, (double)scale,
          (double)scaling[0]);
    free(ref);
    free(scaling);
}

/* Pass k of the fixture through m; returns the logits' distance to the reference. */
static double check_pass(const rope_case *rc, fl_model *m, const fl_st_file *f, int k,
                         const char *label) {
    char name[64];
    snprintf(name, sizeof name, "input_ids.%d", k);
    const fl_st_tensor *ids_t = fl_st_find(f, name);
    CHECK(ids_t && ids_t->ndim == 2, "%s: %s (B, T) missing", rc->name, name);
    if (!ids_t || ids_t->ndim != 2) return INFINITY;
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1];
    int32_t *ids = tensor(f, name, NULL, 1);
    size_t n = 0;
    snprintf(name, sizeof name, "logits.%d", k);
    float *ref = tensor(f, name, &n, 0), *logits = NULL;
    snprintf(name, sizeof name, "loss.%d", k);
    float *ref_loss = tensor(f, name, NULL, 0);
    double loss = 0, d = INFINITY;
    size_t V = (size_t)fl_model_config(m)->vocab_size;
    if (ids && ref && ref_loss && n == (size_t)B * T * V &&
        run_pass(m, ids, B, T, &logits, &loss) == FL_OK) {
        d = scaled_diff(logits, ref, n);
        double loss_bound = 2 * TOLERANCE * max_abs(ref, n);
        if (label) {
            printf("%-14s pass %d (%d x %3d): logits %.2g, loss %.7f vs %.7f\n", rc->name, k, B, T,
                   d, loss, (double)ref_loss[0]);
            CHECK(d <= TOLERANCE, "%s pass %d: logits off by %.3g relative > %g", rc->name, k, d,
                  TOLERANCE);
            CHECK(fabs(loss - ref_loss[0]) <= loss_bound,
                  "%s pass %d: loss %.7f, transformers %.7f", rc->name, k, loss,
                  (double)ref_loss[0]);
        }
    }
    free(ids);
    free(ref);
    free(ref_loss);
    free(logits);
    return d;
}

/* Transformers' greedy generation, step by step through the cache with its own tokens. */
static void check_generation(const rope_case *rc, fl_model *m, const fl_st_file *f) {
    const fl_st_tensor *pt = fl_st_find(f, "gen_prompt"), *gt = fl_st_find(f, "gen_tokens");
    CHECK(pt && gt, "%s: gen_prompt / gen_tokens missing", rc->name);
    if (!pt || !gt) return;
    int P = (int)pt->shape[1], K = (int)gt->shape[1], V = fl_model_config(m)->vocab_size;
    int32_t *prompt = tensor(f, "gen_prompt", NULL, 1), *tokens = tensor(f, "gen_tokens", NULL, 1);
    size_t n = 0;
    float *ref = tensor(f, "gen_logits", &n, 0), *logits = malloc((size_t)V * sizeof *logits);
    fl_err err;
    fl_kv_cache *kc =
        prompt && tokens && ref && n == (size_t)K * V ? fl_kv_cache_new(m, 1, P + K, &err) : NULL;
    CHECK(kc != NULL, "%s: cache for %d tokens: %s", rc->name, P + K, kc ? "" : err.msg);
    double worst = 0;
    int choices = 0, agreed = 0;
    for (int s = 0; kc && s < K; s++) {
        int rc_decode = s == 0 ? fl_model_decode(m, kc, prompt, P, logits, &err)
                               : fl_model_decode(m, kc, tokens + s - 1, 1, logits, &err);
        CHECK(rc_decode == FL_OK, "%s step %d: %s", rc->name, s, err.msg);
        if (rc_decode) break;
        const float *want = ref + (size_t)s * V;
        worst = fmax(worst, scaled_diff(logits, want, (size_t)V));
        int best = 0, second = -1;
        for (int v = 1; v < V; v++)
            if (want[v] > want[best])
                second = best, best = v;
            else if (second < 0 || want[v] > want[second])
                second = v;
        if (want[best] - want[second] > 4 * TOLERANCE * max_abs(want, (size_t)V)) {
            int mine = 0;
            for (int v = 1; v < V; v++)
                mine = logits[v] > logits[mine] ? v : mine;
            choices++;
            agreed += mine == tokens[s] && best == tokens[s];
        }
    }
    printf("%-14s generation %d + %d through the cache: logits %.2g, greedy %d/%d\n", rc->name, P,
           K, worst, agreed, choices);
    CHECK(worst <= TOLERANCE, "%s generation: step logits off by %.3g relative", rc->name, worst);
    CHECK(agreed == choices && choices >= K / 2,
          "%s generation: %d of %d clear greedy choices agree", rc->name, agreed, choices);
    fl_kv_cache_free(kc);
    free(prompt);
    free(tokens);
    free(ref);
    free(logits);
}

/* The same weights under cfg (the scaling removed): the long pass must come out far off. */
static void check_sensitivity(const rope_case *rc, fl_model *m, const fl_st_file *f) {
    fl_config cfg = *fl_model_config(m);
    cfg.max_position = fl_config_context(&cfg); /* so that the plain model runs the long pass */
    if (cfg.rope.type == FL_ROPE_DEFAULT)
        cfg.rope_theta = 10000.0f;
    else
        memset(&cfg.rope, 0, sizeof cfg.rope);
    fl_err err;
    fl_model *plain = fl_model_new_random(&cfg, 1, &err);
    CHECK(plain != NULL, "%s: %s", rc->name, err.msg);
    if (!plain) return;
    memcpy(fl_model_params(plain)->data, fl_model_params(m)->data,
           fl_model_params(m)->numel * sizeof(float));
    double d = check_pass(rc, plain, f, 1, NULL);
    printf("%-14s without its scaling, the long pass is off by %.2g\n", rc->name, d);
    CHECK(d > 20 * TOLERANCE, "%s: the scaling moves the logits by only %.3g", rc->name, d);
    fl_model_free(plain);
}

static void check_case(const rope_case *rc) {
    char dir[256], legacy[256], expect_path[256];
    snprintf(dir, sizeof dir, FIXTURES "/%s/model", rc->name);
    snprintf(legacy, sizeof legacy, FIXTURES "/%s/legacy-config.json", rc->name);
    snprintf(expect_path, sizeof expect_path, FIXTURES "/%s/expect.safetensors", rc->name);
    fl_err err;
    fl_config v5, v4;
    int rc5 = fl_config_load(&v5, dir, &err);
    CHECK(rc5 == FL_OK, "%s", err.msg);
    int rc4 = fl_config_load(&v4, legacy, &err);
    CHECK(rc4 == FL_OK, "%s", err.msg);
    if (rc5 || rc4) return;
    CHECK(v5.arch == rc->arch && v5.rope.type == rc->type && v5.rope_theta == rc->theta,
          "%s: read as %s, rope %s, theta %g", rc->name, fl_arch_name(v5.arch),
          fl_rope_type_name(v5.rope.type), (double)v5.rope_theta);
    CHECK(same_rope_config(&v5, &v4), "%s: the two layouts read differently", rc->name);
    fl_st_file f;
    if (fl_st_open(&f, expect_path, &err) != FL_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    fl_model *m = fl_model_load(dir, &err);
    CHECK(m != NULL, "%s: %s", rc->name, err.msg);
    for (int k = 0; m && k < 2; k++) {
        char name[32];
        snprintf(name, sizeof name, "input_ids.%d", k);
        const fl_st_tensor *ids = fl_st_find(&f, name);
        if (ids) check_frequencies(rc, &v5, &f, k, (int)ids->shape[1]);
    }
    if (m) {
        check_pass(rc, m, &f, 0, "");
        check_pass(rc, m, &f, 1, "");
        check_pass(rc, m, &f, 0, ""); /* after the long one */
        check_generation(rc, m, &f);
        check_sensitivity(rc, m, &f);
    }
    fl_model_free(m);
    fl_st_close(&f);
}

int main(void) {
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
        check_case(&CASES[i]);
    return tu_finish("test_rope");
}
