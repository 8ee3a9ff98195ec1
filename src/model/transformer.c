/* transformer.c — the forward and backward passes, written out layer by layer as in llm.c.
 *
 * Layer l maps resid[l] to resid[l+1]:
 *   ln1 = norm(x); qkv = linears(ln1) (+ LoRA); rope(q, k) (LLaMA family); atty = attention(qkv);
 *   res_mid = x + o(atty); ln2 = norm(res_mid); fc/up = linears(ln2);
 *   act = gelu(fc) (GPT-2) or silu(fc) * up (LLaMA); resid[l+1] = res_mid + down(act).
 * Backward runs the same steps in reverse. dres carries the residual gradient: each norm's backward
 * adds into it, which is exactly the residual connection's "+ identity".
 *
 * Arena layout (N = B*T rows), one allocation carved by arena_layout():
 *   per layer: ln1 (N,C), ln1 mean/rstd (N), qkv (N,QKV), probs (B,NH,T,T), atty (N,AQ),
 *   res_mid (N,C), ln2 (N,C), ln2 mean/rstd (N), fc, up, act (N,F); resid[0..L] (N,C); per adapter
 *   u (N,r); lnf (N,C) + mean/rstd; dlnf (N,C); a (chunk, V) logits chunk; attention scratch;
 *   backward scratch dres, dln (N,C), dqkv (N,QKV), datty (N,AQ), dfc, dup, dact (N,F), LoRA
 *   du (N,r) and dropout buffers (N, max(C,F,AQ)). An evaluation layout keeps one layer's set,
 *   two residual streams and no probs or backward scratch. Where AQ = NH*HD and
 *   QKV = (NH + 2*NKV)*HD. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/model.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"

/* Rows of the logits chunk: big enough for efficient GEMMs, small enough that (N, V) never
 * exists in training (16M floats = 64 MB at most). */
enum { HEAD_CHUNK_FLOATS = 16 << 20, HEAD_CHUNK_MIN_ROWS = 64 };

static int act_width(const fl_model *m, fl_act_sel s) {
    const fl_config *c = &m->cfg;
    switch (s) {
    case FL_ACT_ATTY: return c->n_head * c->head_dim;
    case FL_ACT_QKV: return (c->n_head + 2 * c->n_kv_head) * c->head_dim;
    case FL_ACT_ACT:
    case FL_ACT_FC:
    case FL_ACT_UP: return c->d_ff;
    default: return c->d_model;
    }
}

float *fl_model_param(fl_model *m, int view) {
    if (view < 0) return NULL;
    if (m->base_in_lora && m->base_in_lora[view] >= 0)
        return m->lora_params.data + m->lora_params.views[m->base_in_lora[view]].offset;
    return m->params.data + m->params.views[view].offset;
}

float *fl_model_param_grad(fl_model *m, int view) {
    if (view < 0) return NULL;
    if (m->trainable == &m->params) return m->grads.data + m->params.views[view].offset;
    if (m->base_in_lora && m->base_in_lora[view] >= 0)
        return m->lora_grads.data + m->lora_grads.views[m->base_in_lora[view]].offset;
    return NULL;
}

/* ---- arena ------------------------------------------------------------------------------------
 */

#define TAKE(ptr, count)                                                                           \
    do {                                                                                           \
        if (base) (ptr) = base + off;                                                              \
        off += ((size_t)(count) + 15) / 16 * 16;                                                   \
    } while (0)

/* Carves the arena for (B, T); with base NULL it only counts. Returns the floats needed. */
static size_t arena_layout(fl_model *m, float *base, int B, int T, int train) {
    const fl_config *c = &m->cfg;
    size_t N = (size_t)B * T, C = c->d_model, F = c->d_ff, V = c->vocab_size;
    size_t AQ = act_width(m, FL_ACT_ATTY), QKV = act_width(m, FL_ACT_QKV);
    int L = c->n_layer, gpt2 = fl_config_is_gpt2(c);
    size_t off = 0;
    int n_sets = train ? L : 1;
    for (int l = 0; l < n_sets; l++) {
        fl_layer_acts *a = &m->acts[l];
        TAKE(a->buf[FL_ACT_LN1], N * C);
        TAKE(a->ln1_mean, N);
        TAKE(a->ln1_rstd, N);
        TAKE(a->buf[FL_ACT_QKV], N * QKV);
        if (train) TAKE(a->probs, (size_t)B * c->n_head * T * T);
        TAKE(a->buf[FL_ACT_ATTY], N * AQ);
        TAKE(a->buf[FL_ACT_RES_MID], N * C);
        TAKE(a->buf[FL_ACT_LN2], N * C);
        TAKE(a->ln2_mean, N);
        TAKE(a->ln2_rstd, N);
        TAKE(a->buf[FL_ACT_FC], N * F);
        if (!gpt2) TAKE(a->buf[FL_ACT_UP], N * F);
        TAKE(a->buf[FL_ACT_ACT], N * F);
    }
    if (base && !train) {
        for (int l = 1; l < L; l++)
            m->acts[l] = m->acts[0];
        for (int l = 0; l < L; l++)
            m->acts[l].probs = NULL;
    }
    for (int l = 0; l <= (train ? L : 1); l++)
        TAKE(m->resid[l], N * C);
    if (base && !train)
        for (int l = 2; l <= L; l++)
            m->resid[l] = m->resid[l % 2];
    int rank = m->has_lora ? m->lora.rank : 0;
    for (int i = 0; i < m->n_adapters; i++) {
        if (train || i == 0)
            TAKE(m->lora_u[i], N * rank);
        else if (base)
            m->lora_u[i] = m->lora_u[0];
    }
    TAKE(m->lnf, N * C);
    TAKE(m->lnf_mean, N);
    TAKE(m->lnf_rstd, N);
    m->chunk_rows = (int)(HEAD_CHUNK_FLOATS / V);
    if (m->chunk_rows < HEAD_CHUNK_MIN_ROWS) m->chunk_rows = HEAD_CHUNK_MIN_ROWS;
    if ((size_t)m->chunk_rows > N) m->chunk_rows = (int)N;
    TAKE(m->logits_chunk, (size_t)m->chunk_rows * V);
    TAKE(m->attn_scratch, fl_attention_scratch_floats(T) * (size_t)omp_get_max_threads());
    float *tokens_slot = NULL; /* int32 tokens kept in float-sized slots */
    TAKE(tokens_slot, N);
    if (base) m->tokens_copy = (int32_t *)tokens_slot;
    if (train) {
        size_t wide = F > C ? F : C;
        if (AQ > wide) wide = AQ;
        TAKE(m->dlnf, N * C);
        TAKE(m->dres, N * C);
        TAKE(m->dln, N * C);
        TAKE(m->dqkv, N * QKV);
        TAKE(m->datty, N * AQ);
        TAKE(m->dfc, N * F);
        if (!gpt2) TAKE(m->dup, N * F);
        TAKE(m->dact, N * F);
        if (m->has_lora) {
            TAKE(m->lora_du, N * rank);
            if (m->lora.dropout > 0) {
                TAKE(m->lora_xd, N * wide);
                TAKE(m->lora_tmp, N * wide);
            }
        }
    }
    return off;
}
#undef TAKE

/* Builds the arena when none fits: a training layout also serves evaluation passes, so once a
 * model has trained it keeps that layout; a larger batch or another T rebuilds it. */
static int ensure_arena(fl_model *m, int B, int T, int train, fl_err *err) {
    if (m->arena && B <= m->arena_B && T == m->arena_T && train <= m->arena_train &&
        omp_get_max_threads() <= m->arena_threads)
        return FL_OK;
    int L = m->cfg.n_layer;
    if (!m->acts) {
        m->acts = calloc((size_t)L, sizeof *m->acts);
        m->resid = calloc((size_t)L + 1, sizeof *m->resid);
        m->lora_u = calloc((size_t)(m->n_adapters ? m->n_adapters : 1), sizeof *m->lora_u);
        if (!m->acts || !m->resid || !m->lora_u) return fl_err_set(err, FL_ENOMEM, "out of memory");
    }
    int new_train = train || m->arena_train;
    int new_B = T == m->arena_T && m->arena_B > B ? m->arena_B : B;
    free(m->arena);
    memset(m->acts, 0, (size_t)L * sizeof *m->acts);
    m->arena_B = m->arena_T = m->arena_train = 0;
    size_t floats = arena_layout(m, NULL, new_B, T, new_train);
    m->arena = fl_alloc(floats * sizeof(float), err);
    if (!m->arena) return FL_ENOMEM;
    m->arena_floats = floats;
    arena_layout(m, m->arena, new_B, T, new_train);
    m->arena_B = new_B;
    m->arena_T = T;
    m->arena_train = new_train;
    m->arena_threads = omp_get_max_threads();
    return FL_OK;
}

/* ---- one layer --------------------------------------------------------------------------------
 */

static void norm_forward(fl_model *m, float *out, float *mean, float *rstd, const float *in, int w,
                         int b, int N) {
    const fl_config *c = &m->cfg;
    if (fl_config_is_gpt2(c))
        fl_layernorm_forward(out, mean, rstd, in, fl_model_param(m, w), fl_model_param(m, b), N,
                             c->d_model, c->norm_eps);
    else
        fl_rmsnorm_forward(out, rstd, in, fl_model_param(m, w), N, c->d_model, c->norm_eps);
}

static void norm_backward(fl_model *m, float *din, const float *dout, const float *in,
                          const float *mean, const float *rstd, int w, int b, int N) {
    const fl_config *c = &m->cfg;
    if (fl_config_is_gpt2(c))
        fl_layernorm_backward(din, fl_model_param_grad(m, w), fl_model_param_grad(m, b), dout, in,
                              fl_model_param(m, w), mean, rstd, N, c->d_model);
    else
        fl_rmsnorm_backward(din, fl_model_param_grad(m, w), dout, in, fl_model_param(m, w), rstd, N,
                            c->d_model);
}

/* Runs every module and adapter of layer l that writes activation `out`; adapter i keeps its
 * (N, r) intermediate in lora_u[i]. */
static void stage_forward(fl_model *m, int l, fl_layer_acts *a, fl_act_sel out, int N,
                          float *const *lora_u) {
    const fl_layer *ly = &m->layers[l];
    int ldo = act_width(m, out);
    for (int i = 0; i < ly->n_mods; i++) {
        const fl_module *mod = &ly->mods[i];
        if (mod->out != out) continue;
        fl_linear_forward(a->buf[out] + mod->out_col, ldo, a->buf[mod->in], mod->ic,
                          fl_model_param(m, mod->w), fl_model_param(m, mod->b), N, mod->ic, mod->oc,
                          mod->w_in_out);
    }
    for (int i = 0; i < m->n_adapters; i++) {
        const fl_adapter *ad = &m->adapters[i];
        if (ad->layer != l || ad->out != out) continue;
        fl_lora_forward(m, ad, a->buf[ad->in], a->buf[out] + ad->out_col, ldo, lora_u[i], N);
    }
}

/* Backward of stage_forward: reads the gradient of `out` from g, adds input gradients into g
 * (when need_din) and weight gradients into the trainable gradients. */
static void stage_backward(fl_model *m, int l, fl_layer_acts *a, fl_layer_acts *g, fl_act_sel out,
                           int N, int need_din) {
    const fl_layer *ly = &m->layers[l];
    int ldo = act_width(m, out);
    for (int i = 0; i < ly->n_mods; i++) {
        const fl_module *mod = &ly->mods[i];
        if (mod->out != out) continue;
        fl_linear_backward(need_din ? g->buf[mod->in] : NULL, mod->ic,
                           fl_model_param_grad(m, mod->w), fl_model_param_grad(m, mod->b),
                           g->buf[out] + mod->out_col, ldo, a->buf[mod->in], mod->ic,
                           fl_model_param(m, mod->w), N, mod->ic, mod->oc, mod->w_in_out);
    }
    for (int i = 0; i < m->n_adapters; i++) {
        const fl_adapter *ad = &m->adapters[i];
        if (ad->layer != l || ad->out != out) continue;
        fl_lora_backward(m, ad, need_din ? g->buf[ad->in] : NULL, g->buf[out] + ad->out_col, ldo,
                         a->buf[ad->in], m->lora_u[i], N);
    }
}

/* Attention of layer l for a decoding step: the n new positions of each row (from cache->len on)
 * are rotated, appended to the cache, and attend to every cached position up to their own. */
/* The slot step's attention: row r (n positions) continues slot step_slot[r] from its own
 * length step_past[r], rotated, stored and attending exactly as that slot alone would. */
static void slot_attention(fl_model *m, fl_kv_cache *kc, int l, fl_layer_acts *a, int R, int n) {
    const fl_config *c = &m->cfg;
    int HD = c->head_dim, AQ = c->n_head * HD, AKV = c->n_kv_head * HD;
    int QKV = act_width(m, FL_ACT_QKV);
    float *qkv = a->buf[FL_ACT_QKV];
    size_t layer_floats = (size_t)kc->B * kc->max_T * AKV, slot_floats = (size_t)kc->max_T * AKV;
    float *k = kc->k + (size_t)l * layer_floats, *v = kc->v + (size_t)l * layer_floats;
    for (int r = 0; r < R; r++) {
        int s = kc->step_slot[r], past = kc->step_past[r];
        float *rows = qkv + (size_t)r * n * QKV;
        if (!fl_config_is_gpt2(c)) {
            fl_model_rope_select(m, past + n, past, past + n); /* as select_decode_rope alone */
            size_t shift = (size_t)past * (HD / 2);
            fl_rope_forward(rows, QKV, m->rope_cos + shift, m->rope_sin + shift, n, n, c->n_head,
                            HD);
            fl_rope_forward(rows + AQ, QKV, m->rope_cos + shift, m->rope_sin + shift, n, n,
                            c->n_kv_head, HD);
        }
        for (int t = 0; t < n; t++) {
            const float *row = rows + (size_t)t * QKV;
            size_t at = (size_t)s * slot_floats + (size_t)(past + t) * AKV;
            memcpy(k + at, row + AQ, (size_t)AKV * sizeof(float));
            memcpy(v + at, row + AQ + AKV, (size_t)AKV * sizeof(float));
        }
    }
    if (n == 1) {
        fl_attention_slots_forward(a->buf[FL_ACT_ATTY], AQ, qkv, QKV, k, v, kc->max_T, kc->scratch,
                                   R, kc->step_slot, kc->step_past, c->n_head, c->n_kv_head, HD);
        return;
    }
    for (int r = 0; r < R; r++) {
        size_t at = (size_t)kc->step_slot[r] * slot_floats;
        fl_attention_cached_forward(a->buf[FL_ACT_ATTY] + (size_t)r * n * AQ, AQ,
                                    qkv + (size_t)r * n * QKV, QKV, k + at, v + at, kc->max_T,
                                    kc->scratch, 1, n, kc->step_past[r], NULL, c->n_head,
                                    c->n_kv_head, HD);
    }
}

static void cached_attention(fl_model *m, fl_kv_cache *cache, int l, fl_layer_acts *a, int B,
                             int n) {
    if (cache->step_slot) {
        slot_attention(m, cache, l, a, B, n);
        return;
    }
    const fl_config *c = &m->cfg;
    int HD = c->head_dim, AQ = c->n_head * HD, AKV = c->n_kv_head * HD;
    int QKV = act_width(m, FL_ACT_QKV), past = cache->len;
    float *qkv = a->buf[FL_ACT_QKV];
    if (!fl_config_is_gpt2(c) && !cache->padded) { /* row r: position past + r % n */
        size_t shift = (size_t)past * (HD / 2);
        fl_rope_forward(qkv, QKV, m->rope_cos + shift, m->rope_sin + shift, B * n, n, c->n_head,
                        HD);
        fl_rope_forward(qkv + AQ, QKV, m->rope_cos + shift, m->rope_sin + shift, B * n, n,
                        c->n_kv_head, HD);
    } else if (!fl_config_is_gpt2(c)) { /* row b's index i is position i - pad[b]; pads stay */
        for (int b = 0; b < B; b++) {
            int skip = cache->pad[b] > past ? cache->pad[b] - past : 0;
            if (skip >= n) continue;
            size_t shift = (size_t)(past + skip - cache->pad[b]) * (HD / 2);
            float *rows = qkv + ((size_t)b * n + skip) * QKV;
            fl_rope_forward(rows, QKV, m->rope_cos + shift, m->rope_sin + shift, n - skip, n - skip,
                            c->n_head, HD);
            fl_rope_forward(rows + AQ, QKV, m->rope_cos + shift, m->rope_sin + shift, n - skip,
                            n - skip, c->n_kv_head, HD);
        }
    }
    size_t layer_floats = (size_t)B * cache->max_T * AKV;
    float *k = cache->k + (size_t)l * layer_floats, *v = cache->v + (size_t)l * layer_floats;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < n; t++) {
            const float *row = qkv + ((size_t)b * n + t) * QKV;
            size_t at = ((size_t)b * cache->max_T + past + t) * AKV;
            memcpy(k + at, row + AQ, (size_t)AKV * sizeof(float));
            memcpy(v + at, row + AQ + AKV, (size_t)AKV * sizeof(float));
        }
    fl_attention_cached_forward(a->buf[FL_ACT_ATTY], AQ, qkv, QKV, k, v, cache->max_T,
                                cache->scratch, B, n, past, cache->padded ? cache->pad : NULL,
                                c->n_head, c->n_kv_head, HD);
}

/* Layer l from x to out (both (B*T, C)) with a's buffers. Training and evaluation passes attend
 * within the T positions; a decoding step (cache not NULL) appends to the cache and attends to it.
 */
static void layer_forward(fl_model *m, int l, fl_layer_acts *a, const float *x, float *out, int B,
                          int T, float *const *lora_u, fl_kv_cache *cache) {
    const fl_config *c = &m->cfg;
    const fl_layer *ly = &m->layers[l];
    int N = B * T, C = c->d_model, HD = c->head_dim;
    int AQ = c->n_head * HD, AKV = c->n_kv_head * HD, QKV = act_width(m, FL_ACT_QKV);
    a->buf[FL_ACT_RES_OUT] = out;

    norm_forward(m, a->buf[FL_ACT_LN1], a->ln1_mean, a->ln1_rstd, x, ly->ln1_w, ly->ln1_b, N);
    stage_forward(m, l, a, FL_ACT_QKV, N, lora_u);
    float *qkv = a->buf[FL_ACT_QKV];
    if (cache) {
        cached_attention(m, cache, l, a, B, T);
    } else {
        if (!fl_config_is_gpt2(c)) {
            fl_rope_forward(qkv, QKV, m->rope_cos, m->rope_sin, N, T, c->n_head, HD);
            fl_rope_forward(qkv + AQ, QKV, m->rope_cos, m->rope_sin, N, T, c->n_kv_head, HD);
        }
        fl_attention_forward(a->buf[FL_ACT_ATTY], AQ, a->probs, qkv, QKV, qkv + AQ, QKV,
                             qkv + AQ + AKV, QKV, m->attn_scratch, B, T, c->n_head, c->n_kv_head,
                             HD);
    }
    stage_forward(m, l, a, FL_ACT_RES_MID, N, lora_u);
    fl_axpy(a->buf[FL_ACT_RES_MID], x, 1.0f, (size_t)N * C);

    norm_forward(m, a->buf[FL_ACT_LN2], a->ln2_mean, a->ln2_rstd, a->buf[FL_ACT_RES_MID], ly->ln2_w,
                 ly->ln2_b, N);
    stage_forward(m, l, a, FL_ACT_FC, N, lora_u);
    size_t nf = (size_t)N * c->d_ff;
    if (fl_config_is_gpt2(c)) {
        fl_gelu_forward(a->buf[FL_ACT_ACT], a->buf[FL_ACT_FC], nf);
    } else {
        stage_forward(m, l, a, FL_ACT_UP, N, lora_u);
        fl_swiglu_forward(a->buf[FL_ACT_ACT], a->buf[FL_ACT_FC], a->buf[FL_ACT_UP], nf);
    }
    stage_forward(m, l, a, FL_ACT_RES_OUT, N, lora_u);
    fl_axpy(out, a->buf[FL_ACT_RES_MID], 1.0f, (size_t)N * C);
}

static void layer_backward(fl_model *m, int l, int B, int T, int need_input_grad) {
    const fl_config *c = &m->cfg;
    const fl_layer *ly = &m->layers[l];
    fl_layer_acts *a = &m->acts[l];
    int N = B * T, HD = c->head_dim;
    int AQ = c->n_head * HD, AKV = c->n_kv_head * HD, QKV = act_width(m, FL_ACT_QKV);
    size_t nf = (size_t)N * c->d_ff;
    fl_layer_acts g = {0};
    g.buf[FL_ACT_LN1] = g.buf[FL_ACT_LN2] = m->dln;
    g.buf[FL_ACT_ATTY] = m->datty;
    g.buf[FL_ACT_ACT] = m->dact;
    g.buf[FL_ACT_QKV] = m->dqkv;
    g.buf[FL_ACT_RES_MID] = g.buf[FL_ACT_RES_OUT] = m->dres;
    g.buf[FL_ACT_FC] = m->dfc;
    g.buf[FL_ACT_UP] = m->dup;
    a->buf[FL_ACT_RES_OUT] = m->resid[l + 1];

    memset(m->dact, 0, nf * sizeof(float));
    stage_backward(m, l, a, &g, FL_ACT_RES_OUT, N, 1);
    memset(m->dfc, 0, nf * sizeof(float));
    if (fl_config_is_gpt2(c)) {
        fl_gelu_backward(m->dfc, m->dact, a->buf[FL_ACT_FC], nf);
    } else {
        memset(m->dup, 0, nf * sizeof(float));
        fl_swiglu_backward(m->dfc, m->dup, m->dact, a->buf[FL_ACT_FC], a->buf[FL_ACT_UP], nf);
    }
    memset(m->dln, 0, (size_t)N * c->d_model * sizeof(float));
    stage_backward(m, l, a, &g, FL_ACT_FC, N, 1);
    if (!fl_config_is_gpt2(c)) stage_backward(m, l, a, &g, FL_ACT_UP, N, 1);
    norm_backward(m, m->dres, m->dln, a->buf[FL_ACT_RES_MID], a->ln2_mean, a->ln2_rstd, ly->ln2_w,
                  ly->ln2_b, N);

    memset(m->datty, 0, (size_t)N * AQ * sizeof(float));
    stage_backward(m, l, a, &g, FL_ACT_RES_MID, N, 1);
    memset(m->dqkv, 0, (size_t)N * QKV * sizeof(float));
    const float *qkv = a->buf[FL_ACT_QKV];
    fl_attention_backward(m->dqkv, m->dqkv + AQ, m->dqkv + AQ + AKV, m->datty, AQ, a->probs, qkv,
                          QKV, qkv + AQ, QKV, qkv + AQ + AKV, QKV, m->attn_scratch, B, T, c->n_head,
                          c->n_kv_head, HD);
    if (!fl_config_is_gpt2(c)) {
        fl_rope_backward(m->dqkv, QKV, m->rope_cos, m->rope_sin, N, T, c->n_head, HD);
        fl_rope_backward(m->dqkv + AQ, QKV, m->rope_cos, m->rope_sin, N, T, c->n_kv_head, HD);
    }
    /* Below layer 0's attention only trainable embeddings or a trainable ln_1 (its weight, or its
     * bias alone when only biases train) need gradients. */
    int need_ln1 = need_input_grad || fl_model_param_grad(m, ly->ln1_w) ||
                   (ly->ln1_b >= 0 && fl_model_param_grad(m, ly->ln1_b));
    memset(m->dln, 0, (size_t)N * c->d_model * sizeof(float));
    stage_backward(m, l, a, &g, FL_ACT_QKV, N, need_ln1);
    if (need_ln1)
        norm_backward(m, need_input_grad ? m->dres : NULL, m->dln, m->resid[l], a->ln1_mean,
                      a->ln1_rstd, ly->ln1_w, ly->ln1_b, N);
}

/* ---- whole model ------------------------------------------------------------------------------
 */

/* The vocabulary projection and the loss, chunk by chunk. In training the chunk's logits are
 * turned into their gradient in place, which gives dlnf and the head's weight gradient at once. */
static void head_forward(fl_model *m, const int32_t *targets, int N, int train, float grad_scale,
                         fl_pass_result *r) {
    const fl_config *c = &m->cfg;
    int C = c->d_model, V = c->vocab_size;
    const float *w = fl_model_param(m, m->head);
    float *dw = fl_model_param_grad(m, m->head);
    for (int r0 = 0; r0 < N; r0 += m->chunk_rows) {
        int rows = N - r0 < m->chunk_rows ? N - r0 : m->chunk_rows;
        const int32_t *tg = targets + r0;
        int counted = 0;
        for (int i = 0; i < rows; i++)
            counted += tg[i] != -100;
        if (!counted) {
            if (train) memset(m->dlnf + (size_t)r0 * C, 0, (size_t)rows * C * sizeof(float));
            continue;
        }
        const float *x = m->lnf + (size_t)r0 * C;
        fl_gemm(0, 1, rows, V, C, 1.0f, x, C, w, C, 0.0f, m->logits_chunk, V);
        r->loss_sum += fl_cross_entropy_forward(NULL, m->logits_chunk, tg, rows, V);
        r->n_counted += counted;
        if (!train) continue;
        fl_cross_entropy_backward(m->logits_chunk, m->logits_chunk, tg, rows, V, grad_scale);
        fl_gemm(0, 0, rows, C, V, 1.0f, m->logits_chunk, V, w, C, 0.0f, m->dlnf + (size_t)r0 * C,
                C);
        if (dw) fl_gemm(1, 0, V, C, rows, 1.0f, m->logits_chunk, V, x, C, 1.0f, dw, C);
    }
}

static int logits_forward(fl_model *m, const int32_t *targets, int N, fl_pass_result *r,
                          fl_err *err) {
    const fl_config *c = &m->cfg;
    size_t need = (size_t)N * c->vocab_size;
    if (need > m->logits_full_floats) {
        free(m->logits_full);
        m->logits_full = fl_alloc(need * sizeof(float), err);
        m->logits_full_floats = m->logits_full ? need : 0;
        if (!m->logits_full) return FL_ENOMEM;
    }
    fl_gemm(0, 1, N, c->vocab_size, c->d_model, 1.0f, m->lnf, c->d_model,
            fl_model_param(m, m->head), c->d_model, 0.0f, m->logits_full, c->vocab_size);
    r->logits = m->logits_full;
    if (targets) {
        r->loss_sum = fl_cross_entropy_forward(NULL, m->logits_full, targets, N, c->vocab_size);
        for (int i = 0; i < N; i++)
            r->n_counted += targets[i] != -100;
    }
    return FL_OK;
}

int fl_model_forward(fl_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                     fl_pass pass, float grad_scale, fl_pass_result *result, fl_err *err) {
    const fl_config *c = &m->cfg;
    memset(result, 0, sizeof *result);
    if (B < 1 || T < 1) return fl_err_set(err, FL_EINPUT, "batch and sequence must be positive");
    if ((int64_t)B * T > FL_MAX_PASS_TOKENS)
        return fl_err_set(err, FL_EINPUT, "a pass of %d x %d tokens exceeds %d", B, T,
                          FL_MAX_PASS_TOKENS);
    if (T > fl_config_context(c))
        return fl_err_set(err, FL_EINPUT, "sequence length %d exceeds the model's context of %d", T,
                          fl_config_context(c));
    if (pass == FL_PASS_TRAIN && !m->trainable)
        return fl_err_set(err, FL_EINTERNAL, "training pass without a trainable set");
    if (pass != FL_PASS_LOGITS && !targets)
        return fl_err_set(err, FL_EINTERNAL, "loss pass without targets");
    int N = B * T;
    for (int i = 0; i < N; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return fl_err_set(err, FL_EINPUT, "token id %d outside the vocabulary (size %d)",
                              tokens[i], c->vocab_size);
        if (targets && targets[i] != -100 && (targets[i] < 0 || targets[i] >= c->vocab_size))
            return fl_err_set(err, FL_EINPUT, "target id %d outside the vocabulary (size %d)",
                              targets[i], c->vocab_size);
    }
    int train = pass == FL_PASS_TRAIN;
    if (ensure_arena(m, B, T, train, err)) return err ? err->code : FL_ENOMEM;
    m->dropout_active = train && m->dropout_on && m->has_lora && m->lora.dropout > 0;
    int32_t *tok = m->tokens_copy;
    memcpy(tok, tokens, (size_t)N * sizeof *tok);

    fl_embedding_forward(m->resid[0], tok, fl_model_param(m, m->wte), fl_model_param(m, m->wpe), N,
                         T, c->d_model);
    fl_model_rope_select(m, T, 0, T);
    for (int l = 0; l < c->n_layer; l++)
        layer_forward(m, l, &m->acts[l], m->resid[l], m->resid[l + 1], B, T, m->lora_u, NULL);
    norm_forward(m, m->lnf, m->lnf_mean, m->lnf_rstd, m->resid[c->n_layer], m->lnf_w, m->lnf_b, N);
    int rc = FL_OK;
    if (pass == FL_PASS_LOGITS)
        rc = logits_forward(m, targets, N, result, err);
    else
        head_forward(m, targets, N, train, grad_scale, result);
    m->last_B = B;
    m->last_T = T;
    m->last_pass = pass;
    return rc;
}

/* Whether a tensor of block l, or an adapter on it, trains. */
static int layer_trains(fl_model *m, int l) {
    const fl_layer *ly = &m->layers[l];
    if (fl_model_param_grad(m, ly->ln1_w) || fl_model_param_grad(m, ly->ln1_b) ||
        fl_model_param_grad(m, ly->ln2_w) || fl_model_param_grad(m, ly->ln2_b))
        return 1;
    for (int i = 0; i < ly->n_mods; i++)
        if (fl_model_param_grad(m, ly->mods[i].w) || fl_model_param_grad(m, ly->mods[i].b))
            return 1;
    for (int i = 0; i < m->n_adapters; i++)
        if (m->adapters[i].layer == l) return 1;
    return 0;
}

int fl_model_backward(fl_model *m) {
    const fl_config *c = &m->cfg;
    if (m->last_pass != FL_PASS_TRAIN || !m->arena_train) return FL_EINTERNAL;
    int B = m->last_B, T = m->last_T, N = B * T, L = c->n_layer;
    memset(m->dres, 0, (size_t)N * c->d_model * sizeof(float));
    norm_backward(m, m->dres, m->dlnf, m->resid[L], m->lnf_mean, m->lnf_rstd, m->lnf_w, m->lnf_b,
                  N);
    float *dwte = fl_model_param_grad(m, m->wte);
    /* the forward pass's tables again (a decode may have come between) */
    fl_model_rope_select(m, T, 0, T);
    /* No gradient is needed below the lowest block that trains (offsite-tuning's frozen middle
     * and LoRA on the top layers skip that work), unless the embeddings train. */
    int lowest = 0;
    while (!dwte && lowest < L && !layer_trains(m, lowest))
        lowest++;
    for (int l = L - 1; l >= lowest; l--)
        layer_backward(m, l, B, T, l > lowest || dwte);
    if (dwte)
        fl_embedding_backward(dwte, fl_model_param_grad(m, m->wpe), m->dres, m->tokens_copy, N, T,
                              c->d_model);
    m->last_pass = -1;
    return FL_OK;
}

/* ---- decoding with a key/value cache ----------------------------------------------------------
 */

/* Carves the cache's buffers for (B, max_T) rows; with base NULL it only counts. */
static size_t cache_layout(const fl_model *m, fl_kv_cache *kc, float *base) {
    const fl_config *c = &m->cfg;
    size_t kv_rows = (size_t)kc->B * kc->max_T, rows = (size_t)kc->act_rows, C = c->d_model,
           F = c->d_ff;
    size_t AKV = (size_t)c->n_kv_head * c->head_dim, off = 0;
    int rank = m->has_lora ? m->max_rank : 0;
#define TAKE(ptr, count)                                                                           \
    do {                                                                                           \
        if (base) (ptr) = base + off;                                                              \
        off += ((size_t)(count) + 15) / 16 * 16;                                                   \
    } while (0)
    TAKE(kc->k, (size_t)c->n_layer * kv_rows * AKV);
    TAKE(kc->v, (size_t)c->n_layer * kv_rows * AKV);
    fl_layer_acts *a = &kc->acts;
    TAKE(a->buf[FL_ACT_LN1], rows * C);
    TAKE(a->ln1_mean, rows);
    TAKE(a->ln1_rstd, rows);
    TAKE(a->buf[FL_ACT_QKV], rows * act_width(m, FL_ACT_QKV));
    TAKE(a->buf[FL_ACT_ATTY], rows * act_width(m, FL_ACT_ATTY));
    TAKE(a->buf[FL_ACT_RES_MID], rows * C);
    TAKE(a->buf[FL_ACT_LN2], rows * C);
    TAKE(a->ln2_mean, rows);
    TAKE(a->ln2_rstd, rows);
    TAKE(a->buf[FL_ACT_FC], rows * F);
    TAKE(a->buf[FL_ACT_UP], rows * F);
    TAKE(a->buf[FL_ACT_ACT], rows * F);
    TAKE(kc->resid[0], rows * C);
    TAKE(kc->resid[1], rows * C);
    TAKE(kc->lora_u0, rows * rank);
    TAKE(kc->last, (size_t)kc->B * C);
    TAKE(kc->last_mean, kc->B);
    TAKE(kc->last_rstd, kc->B);
    TAKE(kc->scratch, fl_attention_scratch_floats(kc->max_T) * (size_t)omp_get_max_threads());
#undef TAKE
    return off;
}

static fl_kv_cache *cache_new(fl_model *m, int batch, int max_tokens, int act_rows, fl_err *err) {
    if (batch < 1 || max_tokens < 1 || max_tokens > fl_config_context(&m->cfg))
        return fl_err_set(err, FL_EINPUT,
                          "cache of %d x %d tokens: expected a batch >= 1 and at "
                          "most %d tokens (the model's context)",
                          batch, max_tokens, fl_config_context(&m->cfg)),
               NULL;
    if ((int64_t)batch * max_tokens > FL_MAX_PASS_TOKENS)
        return fl_err_set(err, FL_EINPUT, "cache of %d x %d tokens is too large", batch,
                          max_tokens),
               NULL;
    fl_kv_cache *kc = calloc(1, sizeof *kc);
    float **lora_u = calloc((size_t)(m->n_adapters ? m->n_adapters : 1), sizeof *lora_u);
    int *pad = calloc((size_t)batch * 3, sizeof *pad); /* pad, slot_len, step_past */
    if (!kc || !lora_u || !pad) {
        free(kc);
        free(lora_u);
        free(pad);
        return fl_err_set(err, FL_ENOMEM, "out of memory"), NULL;
    }
    kc->B = batch;
    kc->act_rows = act_rows;
    kc->pad = pad;
    kc->slot_len = pad + batch;
    kc->step_past = pad + 2 * batch;
    kc->max_T = max_tokens;
    kc->threads = omp_get_max_threads();
    kc->buffer = fl_alloc(cache_layout(m, kc, NULL) * sizeof(float), err);
    if (!kc->buffer) {
        free(lora_u);
        free(pad);
        free(kc);
        return NULL;
    }
    cache_layout(m, kc, kc->buffer);
    for (int i = 0; i < m->n_adapters; i++)
        lora_u[i] = kc->lora_u0; /* used one at a time */
    kc->lora_u = lora_u;
    return kc;
}

fl_kv_cache *fl_kv_cache_new(fl_model *m, int batch, int max_tokens, fl_err *err) {
    return cache_new(m, batch, max_tokens, batch * max_tokens, err);
}

fl_kv_cache *fl_kv_cache_new_slots(fl_model *m, int slots, int max_tokens, fl_err *err) {
    int rows = slots > max_tokens ? slots : max_tokens;
    fl_kv_cache *kc = cache_new(m, slots, max_tokens, rows, err);
    if (kc) kc->slots_only = 1;
    return kc;
}

void fl_kv_cache_free(fl_kv_cache *kc) {
    if (!kc) return;
    free(kc->buffer);
    free(kc->lora_u);
    free(kc->pad);
    free(kc);
}

void fl_kv_cache_reset(fl_kv_cache *kc) {
    kc->len = 0;
    kc->padded = 0;
    kc->slots_used = 0;
    memset(kc->pad, 0, (size_t)kc->B * sizeof *kc->pad);
    memset(kc->slot_len, 0, (size_t)kc->B * sizeof *kc->slot_len);
}

int fl_kv_cache_set_padding(fl_kv_cache *kc, const int *pad, fl_err *err) {
    if (kc->len != 0 || kc->slots_used)
        return fl_err_set(err, FL_EINPUT, "padding is set on an empty cache (%d positions used)",
                          kc->len);
    kc->padded = 0;
    for (int b = 0; b < kc->B; b++) {
        if (pad[b] < 0 || pad[b] >= kc->max_T)
            return fl_err_set(err, FL_EINPUT, "row %d: padding %d outside 0..%d", b, pad[b],
                              kc->max_T - 1);
        kc->pad[b] = pad[b];
        kc->padded |= pad[b] != 0;
    }
    return FL_OK;
}
int fl_kv_cache_length(const fl_kv_cache *kc) { return kc->len; }

/* The rotary tables of a decoding step of n positions per row: row b's positions run from
 * max(len - pad[b], 0) to len + n - 1 - pad[b], and the step's seq_len is the largest + 1 (as
 * transformers' position ids give it under left padding). */
static void select_decode_rope(fl_model *m, const fl_kv_cache *kc, int n) {
    int min_pad = kc->pad[0], max_pad = kc->pad[0];
    for (int b = 1; b < kc->B; b++) {
        if (kc->pad[b] < min_pad) min_pad = kc->pad[b];
        if (kc->pad[b] > max_pad) max_pad = kc->pad[b];
    }
    int seq_len = kc->len + n - min_pad, first = kc->len - max_pad;
    if (seq_len < 1) seq_len = 1;
    if (first < 0) first = 0;
    fl_model_rope_select(m, seq_len, first, seq_len);
}

/* FL_EINPUT naming the first of n tokens outside the vocabulary. */
static int check_tokens(const fl_config *c, const int32_t *tokens, int n, fl_err *err) {
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return fl_err_set(err, FL_EINPUT, "token id %d outside the vocabulary (size %d)",
                              tokens[i], c->vocab_size);
    return FL_OK;
}

/* A decoding step's layers over the embedded rows (rows, n) in resid[0], then the head on each
 * row's last position (only those need it): logits (rows, V). */
static void decode_rows(fl_model *m, fl_kv_cache *kc, int rows, int n, float *logits) {
    const fl_config *c = &m->cfg;
    int C = c->d_model;
    for (int l = 0; l < c->n_layer; l++)
        layer_forward(m, l, &kc->acts, kc->resid[l % 2], kc->resid[(l + 1) % 2], rows, n,
                      kc->lora_u, kc);
    const float *final = kc->resid[c->n_layer % 2];
    for (int r = 0; r < rows; r++)
        memcpy(kc->last + (size_t)r * C, final + ((size_t)r * n + n - 1) * C,
               (size_t)C * sizeof(float));
    norm_forward(m, kc->last, kc->last_mean, kc->last_rstd, kc->last, m->lnf_w, m->lnf_b, rows);
    fl_gemm(0, 1, rows, c->vocab_size, C, 1.0f, kc->last, C, fl_model_param(m, m->head), C, 0.0f,
            logits, c->vocab_size);
}

int fl_model_decode(fl_model *m, fl_kv_cache *kc, const int32_t *tokens, int n, float *logits,
                    fl_err *err) {
    const fl_config *c = &m->cfg;
    int B = kc->B, N = B * n, C = c->d_model;
    if (kc->slots_used || kc->slots_only)
        return fl_err_set(err, FL_EINPUT,
                          "the cache holds independent slots: decode them with "
                          "fl_model_decode_slots%s",
                          kc->slots_only ? "" : ", or reset it");
    if (n < 1 || kc->len + n > kc->max_T)
        return fl_err_set(err, FL_EINPUT, "%d more tokens do not fit the cache (%d of %d used)", n,
                          kc->len, kc->max_T);
    if (omp_get_max_threads() > kc->threads)
        return fl_err_set(err, FL_EINTERNAL, "the cache was made for %d threads", kc->threads);
    if (check_tokens(c, tokens, N, err)) return FL_EINPUT;
    m->dropout_active = 0;
    /* Row b*n + t has position len + t - pad[b]: the learned-position table shifted by that. A
     * padding position (negative) takes position 0; nothing attends to it. */
    const float *wpe = fl_model_param(m, m->wpe), *wte = fl_model_param(m, m->wte);
    if (!kc->padded || !wpe) {
        fl_embedding_forward(kc->resid[0], tokens, wte, wpe ? wpe + (size_t)kc->len * C : NULL, N,
                             n, C);
    } else {
        for (int b = 0; b < B; b++) {
            int skip = kc->pad[b] > kc->len ? kc->pad[b] - kc->len : 0;
            if (skip > n) skip = n;
            float *rows = kc->resid[0] + (size_t)b * n * C;
            if (skip) fl_embedding_forward(rows, tokens + (size_t)b * n, wte, wpe, skip, 1, C);
            if (skip < n)
                fl_embedding_forward(rows + (size_t)skip * C, tokens + (size_t)b * n + skip, wte,
                                     wpe + (size_t)(kc->len + skip - kc->pad[b]) * C, n - skip,
                                     n - skip, C);
        }
    }
    select_decode_rope(m, kc, n);
    decode_rows(m, kc, B, n, logits);
    kc->len += n;
    return FL_OK;
}

/* ---- slots: continuous batching ------------------------------------------------------------- */

int fl_kv_slot_length(const fl_kv_cache *kc, int slot) {
    return slot >= 0 && slot < kc->B ? kc->slot_len[slot] : -1;
}

void fl_kv_slot_reset(fl_kv_cache *kc, int slot) {
    if (slot >= 0 && slot < kc->B) kc->slot_len[slot] = 0;
}

int fl_model_decode_slots(fl_model *m, fl_kv_cache *kc, const int *slots, int rows,
                          const int32_t *tokens, int n, float *logits, fl_err *err) {
    const fl_config *c = &m->cfg;
    int C = c->d_model;
    if (kc->len != 0 || kc->padded)
        return fl_err_set(err, FL_EINPUT,
                          "the cache decodes its rows together (fl_model_decode): reset it "
                          "before using it as slots");
    if (rows < 1 || rows > kc->B || n < 1 || (long)rows * n > kc->act_rows)
        return fl_err_set(err, FL_EINPUT,
                          "a slot step of %d rows of %d tokens (cache of %d slots, %d tokens a "
                          "step)",
                          rows, n, kc->B, kc->act_rows);
    if (omp_get_max_threads() > kc->threads)
        return fl_err_set(err, FL_EINTERNAL, "the cache was made for %d threads", kc->threads);
    for (int r = 0; r < rows; r++) {
        int s = slots[r];
        if (s < 0 || s >= kc->B)
            return fl_err_set(err, FL_EINPUT, "slot %d outside 0..%d", s, kc->B - 1);
        for (int q = 0; q < r; q++)
            if (slots[q] == s) return fl_err_set(err, FL_EINPUT, "slot %d twice in one step", s);
        if (kc->slot_len[s] + n > kc->max_T)
            return fl_err_set(err, FL_EINPUT, "%d more tokens do not fit slot %d (%d of %d used)",
                              n, s, kc->slot_len[s], kc->max_T);
    }
    if (check_tokens(c, tokens, rows * n, err)) return FL_EINPUT;
    m->dropout_active = 0;
    const float *wpe = fl_model_param(m, m->wpe), *wte = fl_model_param(m, m->wte);
    for (int r = 0; r < rows; r++) {
        int past = kc->slot_len[slots[r]];
        kc->step_past[r] = past;
        fl_embedding_forward(kc->resid[0] + (size_t)r * n * C, tokens + (size_t)r * n, wte,
                             wpe ? wpe + (size_t)past * C : NULL, n, n, C);
    }
    kc->step_slot = slots;
    decode_rows(m, kc, rows, n, logits);
    kc->step_slot = NULL;
    for (int r = 0; r < rows; r++)
        kc->slot_len[slots[r]] += n;
    kc->slots_used = 1;
    return FL_OK;
}
