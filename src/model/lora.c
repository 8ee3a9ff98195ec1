/* lora.c — LoRA adapters: role names and their mapping onto each family's modules, PEFT's
 * initialisation, the adapter forward/backward, and the adapter directory.
 *
 * An adapter adds scale * (drop(x) A^T) B^T to a column range of a module's output, with A (r, in)
 * and B (out, r), scale = alpha / r. Roles map to whole modules in the LLaMA family (q_proj, ...)
 * and, for GPT-2's fused c_attn, to its q, k or v columns; the adapter file merges those back into
 * one c_attn adapter of rank r * (number of roles) with block-structured factors, which is exactly
 * the same function, so PEFT loads it as a plain c_attn LoRA. The target "c_attn" (a module name)
 * is what PEFT trains for it: one adapter over all of c_attn's columns, A (r, C) and B (3C, r), 4rC
 * values a layer where the three roles have 6rC.
 *
 * Dropout masks are not stored: element i of the input of module k (layer * 8 + its index in the
 * layer) at training step s is kept when Philox(seed + s * golden, (k << 40) + i) >= p, so backward
 * regenerates the mask it needs, and GPT-2's q, k and v adapters share c_attn's one mask exactly
 * as PEFT's merged c_attn adapter does. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fileio.h"
#include "fedllm/rng.h"
#include "fedllm/safetensors.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"

static const char *const ROLE_NAMES[FL_N_ROLES] = {"attn_q",   "attn_k", "attn_v",  "attn_o",
                                                   "mlp_gate", "mlp_up", "mlp_down"};
/* HF module names per role, LLaMA family and GPT-2 (NULL: the role does not exist there). */
const char *const FL_LLAMA_MODULES[FL_N_ROLES] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
const char *const FL_GPT2_MODULES[FL_N_ROLES] = {
    "attn.c_attn", "attn.c_attn", "attn.c_attn", "attn.c_proj", NULL, "mlp.c_fc", "mlp.c_proj"};

const char *fl_role_name(fl_role role) {
    return role >= 0 && role < FL_N_ROLES ? ROLE_NAMES[role] : "?";
}

/* Roles named by one HF module name: the full path ("mlp.c_proj") or its last part ("c_proj"),
 * as PEFT matches target_modules by suffix; GPT-2's c_attn is the fused module, FL_LORA_C_ATTN. */
static unsigned roles_of_module(const char *name, fl_arch arch) {
    const char *const *modules = arch == FL_ARCH_GPT2 ? FL_GPT2_MODULES : FL_LLAMA_MODULES;
    if (arch == FL_ARCH_GPT2 && (!strcmp(name, "c_attn") || !strcmp(name, "attn.c_attn")))
        return FL_LORA_C_ATTN;
    unsigned mask = 0;
    for (int r = 0; r < FL_N_ROLES; r++) {
        if (!modules[r]) continue;
        const char *dot = strchr(modules[r], '.');
        if (strcmp(name, modules[r]) == 0 || (dot && strcmp(name, dot + 1) == 0)) mask |= 1u << r;
    }
    return mask;
}

int fl_lora_parse_targets(const char *list, fl_arch arch, unsigned *role_mask, fl_err *err) {
    char buf[512];
    if (strlen(list) >= sizeof buf) return fl_err_set(err, FL_EINPUT, "LoRA target list too long");
    strcpy(buf, list);
    unsigned mask = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ", ", &save); tok;
         tok = strtok_r(NULL, ", ", &save)) {
        unsigned found = 0;
        for (int r = 0; r < FL_N_ROLES; r++)
            if (strcmp(tok, ROLE_NAMES[r]) == 0) found = 1u << r;
        if (found == 1u << FL_ROLE_MLP_GATE && arch == FL_ARCH_GPT2)
            return fl_err_set(err, FL_EINPUT,
                              "LoRA target 'mlp_gate': GPT-2 has no gate projection (use attn_q, "
                              "attn_k, attn_v, attn_o, mlp_up, mlp_down)");
        if (!found) found = roles_of_module(tok, arch);
        if (!found)
            return fl_err_set(err, FL_EINPUT,
                              "LoRA target '%s' is neither a role (attn_q, attn_k, attn_v, attn_o, "
                              "mlp_gate, mlp_up, mlp_down) nor a %s module name",
                              tok, fl_arch_name(arch));
        mask |= found;
    }
    if (!mask) return fl_err_set(err, FL_EINPUT, "LoRA targets: empty list");
    unsigned qkv = (1u << FL_ROLE_ATTN_Q) | (1u << FL_ROLE_ATTN_K) | (1u << FL_ROLE_ATTN_V);
    if ((mask & FL_LORA_C_ATTN) && (mask & qkv))
        return fl_err_set(err, FL_EINPUT,
                          "LoRA targets: c_attn (the fused module, one adapter as in PEFT) and "
                          "attn_q/attn_k/attn_v (one adapter per role) both adapt GPT-2's c_attn: "
                          "name one or the other");
    *role_mask = mask;
    return FL_OK;
}

int fl_lora_spec_add_layer(fl_lora_spec *spec, int layer, fl_err *err) {
    if (layer < 0 || layer >= FL_LAYERS_MAX)
        return fl_err_set(err, FL_EINPUT, "LoRA layer %d: expected 0..%d", layer,
                          FL_LAYERS_MAX - 1);
    spec->layer_mask[layer / 64] |= 1ull << (layer % 64);
    return FL_OK;
}

/* The spec names some layers (otherwise it means every layer). */
static int has_layer_mask(const fl_lora_spec *spec) {
    for (int w = 0; w < FL_LAYERS_MAX / 64; w++)
        if (spec->layer_mask[w]) return 1;
    return 0;
}

int fl_lora_spec_has_layer(const fl_lora_spec *spec, int layer) {
    if (layer < 0 || layer >= FL_LAYERS_MAX) return 0;
    return !has_layer_mask(spec) || (spec->layer_mask[layer / 64] >> (layer % 64) & 1);
}

/* Where role's adapter reads and writes in this family. */
static void role_placement(const fl_config *c, fl_role role, fl_adapter *ad) {
    int C = c->d_model, F = c->d_ff, AQ = c->n_head * c->head_dim, AKV = c->n_kv_head * c->head_dim;
    int gpt2 = fl_config_is_gpt2(c);
    switch (role) {
    case FL_ROLE_ATTN_Q:
    case FL_ROLE_ATTN_K:
    case FL_ROLE_ATTN_V: {
        int which = role - FL_ROLE_ATTN_Q;
        ad->in = FL_ACT_LN1, ad->out = FL_ACT_QKV, ad->ic = C;
        ad->oc = which == 0 ? AQ : AKV;
        ad->out_col = which == 0 ? 0 : which == 1 ? AQ : AQ + AKV;
        break;
    }
    case FL_ROLE_ATTN_O:
        ad->in = FL_ACT_ATTY, ad->out = FL_ACT_RES_MID, ad->ic = AQ, ad->oc = C;
        break;
    case FL_ROLE_MLP_GATE: ad->in = FL_ACT_LN2, ad->out = FL_ACT_FC, ad->ic = C, ad->oc = F; break;
    case FL_ROLE_MLP_UP:
        ad->in = FL_ACT_LN2, ad->out = gpt2 ? FL_ACT_FC : FL_ACT_UP, ad->ic = C, ad->oc = F;
        break;
    default: ad->in = FL_ACT_ACT, ad->out = FL_ACT_RES_OUT, ad->ic = F, ad->oc = C; break;
    }
}

const fl_module *fl_module_at(const fl_model *m, int layer, fl_act_sel out, int col) {
    const fl_layer *ly = &m->layers[layer];
    for (int i = 0; i < ly->n_mods; i++) {
        const fl_module *mod = &ly->mods[i];
        if (mod->out == out && col >= mod->out_col && col < mod->out_col + mod->oc) return mod;
    }
    return NULL;
}

/* The HF module a role adapts in layer `layer`. */
static void module_path(char *out, size_t size, const fl_config *c, int layer, int role) {
    if (fl_config_is_gpt2(c))
        snprintf(out, size, "transformer.h.%d.%s", layer, FL_GPT2_MODULES[role]);
    else
        snprintf(out, size, "model.layers.%d.%s", layer, FL_LLAMA_MODULES[role]);
}

/* The trainable view name prefix of (layer, role): PEFT's module path, with GPT-2's per-role
 * c_attn slices told apart by a ".q"/".k"/".v" suffix (merged when the adapter file is written);
 * role -1, the whole c_attn, is PEFT's name itself. */
static void adapter_prefix(char *out, size_t size, const fl_config *c, int layer, int role) {
    if (fl_config_is_gpt2(c)) {
        const char *slice = role == FL_ROLE_ATTN_Q   ? ".q"
                            : role == FL_ROLE_ATTN_K ? ".k"
                            : role == FL_ROLE_ATTN_V ? ".v"
                                                     : "";
        snprintf(out, size, "base_model.model.transformer.h.%d.%s%s", layer,
                 FL_GPT2_MODULES[role < 0 ? FL_ROLE_ATTN_Q : role], slice);
    } else {
        snprintf(out, size, "base_model.model.model.layers.%d.%s", layer, FL_LLAMA_MODULES[role]);
    }
}

/* Norm parameters (LayerNorm/RMSNorm weights and biases), by HF name. Biases are every ".bias"
 * tensor, norms' included, as PEFT's bias="all" has it. */
static int is_norm_tensor(const char *name) { return strstr(name, "ln_") || strstr(name, "norm."); }
static int is_bias_tensor(const char *name) {
    size_t n = strlen(name);
    return n > 5 && strcmp(name + n - 5, ".bias") == 0;
}

/* Adds a trainable copy (same HF name) of every base tensor of the kinds asked for. */
static int add_base_copies(fl_model *m, unsigned kinds, fl_err *err) {
    m->base_in_lora = malloc((size_t)m->params.n_views * sizeof *m->base_in_lora);
    if (!m->base_in_lora) return fl_err_set(err, FL_ENOMEM, "out of memory");
    for (int v = 0; v < m->params.n_views; v++) {
        const fl_view *view = &m->params.views[v];
        int norm = is_norm_tensor(view->name), bias = is_bias_tensor(view->name);
        m->base_in_lora[v] = -1;
        if ((norm && (kinds & FL_TRAIN_NORMS)) || (bias && (kinds & FL_TRAIN_BIASES))) {
            m->base_in_lora[v] =
                fl_params_add(&m->lora_params, view->name, view->ndim, view->shape, err);
            if (m->base_in_lora[v] < 0) return err->code;
        }
    }
    return FL_OK;
}

int fl_model_add_lora(fl_model *m, const fl_lora_spec *spec, fl_err *err) {
    if (m->trainable) return fl_err_set(err, FL_EINTERNAL, "the trainable set is already chosen");
    if (m->arena) return fl_err_set(err, FL_EINTERNAL, "LoRA must be added before any pass");
    if (spec->rank < 1 || spec->rank > FL_LORA_RANK_MAX)
        return fl_err_set(err, FL_EINPUT, "LoRA rank %d: expected 1..%d", spec->rank,
                          FL_LORA_RANK_MAX);
    if (!(spec->dropout >= 0 && spec->dropout < 1))
        return fl_err_set(err, FL_EINPUT, "LoRA dropout %g: expected a value in [0, 1)",
                          spec->dropout);
    if (!(spec->alpha > 0 && spec->alpha <= FL_LORA_ALPHA_MAX))
        return fl_err_set(err, FL_EINPUT, "LoRA alpha %g: expected a number in (0, %g]",
                          spec->alpha, FL_LORA_ALPHA_MAX);
    unsigned mask = spec->role_mask;
    unsigned qkv = (1u << FL_ROLE_ATTN_Q) | (1u << FL_ROLE_ATTN_K) | (1u << FL_ROLE_ATTN_V);
    int gpt2 = fl_config_is_gpt2(&m->cfg), fused = (mask & FL_LORA_C_ATTN) != 0;
    if (gpt2 && (mask & (1u << FL_ROLE_MLP_GATE)))
        return fl_err_set(err, FL_EINPUT, "LoRA target mlp_gate: GPT-2 has no gate projection");
    if (fused && (!gpt2 || (mask & qkv)))
        return fl_err_set(err, FL_EINPUT, "LoRA target c_attn: %s",
                          gpt2 ? "not beside attn_q/attn_k/attn_v, which adapt the same module"
                               : "only GPT-2 has a fused c_attn module");
    int per_layer = __builtin_popcount(mask & ((1u << FL_N_ROLES) - 1)) + fused;
    if (!per_layer) return fl_err_set(err, FL_EINPUT, "LoRA needs at least one target");
    int masked = has_layer_mask(spec);
    for (int l = m->cfg.n_layer; masked && l < FL_LAYERS_MAX; l++)
        if (fl_lora_spec_has_layer(spec, l))
            return fl_err_set(err, FL_EINPUT, "LoRA layer %d: the model has layers 0..%d", l,
                              m->cfg.n_layer - 1);
    m->adapters = calloc((size_t)per_layer * m->cfg.n_layer, sizeof *m->adapters);
    if (!m->adapters) return fl_err_set(err, FL_ENOMEM, "out of memory");
    char prefix[FL_VIEW_NAME_MAX - 24], name[FL_VIEW_NAME_MAX];
    for (int l = 0; l < m->cfg.n_layer; l++) {
        if (!fl_lora_spec_has_layer(spec, l)) continue;
        for (int r = fused ? -1 : 0; r < FL_N_ROLES; r++) {
            if (r >= 0 && !(mask & (1u << r))) continue;
            fl_adapter *ad = &m->adapters[m->n_adapters++];
            ad->layer = l;
            ad->role = r; /* -1: the whole fused c_attn */
            ad->rank = spec->rank;
            ad->scale = spec->alpha / (float)spec->rank;
            role_placement(&m->cfg, r < 0 ? FL_ROLE_ATTN_Q : r, ad);
            if (r < 0) /* every column of c_attn: q, k and v */
                ad->oc = (m->cfg.n_head + 2 * m->cfg.n_kv_head) * m->cfg.head_dim;
            module_path(ad->module, sizeof ad->module, &m->cfg, l, r < 0 ? FL_ROLE_ATTN_Q : r);
            ad->target = fl_module_at(m, l, ad->out, ad->out_col);
            adapter_prefix(prefix, sizeof prefix, &m->cfg, l, ad->role);
            int64_t a_shape[2] = {spec->rank, ad->ic}, b_shape[2] = {ad->oc, spec->rank};
            snprintf(name, sizeof name, "%s.lora_A.weight", prefix);
            if ((ad->a = fl_params_add(&m->lora_params, name, 2, a_shape, err)) < 0)
                return err->code;
            snprintf(name, sizeof name, "%s.lora_B.weight", prefix);
            if ((ad->b = fl_params_add(&m->lora_params, name, 2, b_shape, err)) < 0)
                return err->code;
        }
    }
    if (spec->train_base && add_base_copies(m, spec->train_base, err)) return err->code;
    if (fl_params_alloc(&m->lora_params, err) ||
        fl_params_clone_layout(&m->lora_grads, &m->lora_params, err))
        return err ? err->code : FL_ENOMEM;
    for (int v = 0; m->base_in_lora && v < m->params.n_views; v++)
        if (m->base_in_lora[v] >= 0)
            memcpy(m->lora_params.data + m->lora_params.views[m->base_in_lora[v]].offset,
                   m->params.data + m->params.views[v].offset,
                   m->params.views[v].numel * sizeof(float));
    /* PEFT: kaiming_uniform_(A, a=sqrt(5)) is U(-1/sqrt(in), 1/sqrt(in)); B = 0. */
    for (int i = 0; i < m->n_adapters; i++) {
        const fl_view *a = &m->lora_params.views[m->adapters[i].a];
        float bound = 1.0f / sqrtf((float)a->shape[1]);
        fl_rng_uniform(m->lora_params.data + a->offset, a->numel, spec->seed, a->offset, -bound,
                       bound);
    }
    m->lora = *spec;
    m->has_lora = 1;
    m->max_rank = spec->rank;
    m->trainable = &m->lora_params;
    m->trainable_grads = &m->lora_grads;
    return FL_OK;
}

int fl_model_lora_view(const fl_model *m, int layer, fl_role role, int which) {
    for (int i = 0; i < m->n_adapters; i++)
        if (m->adapters[i].layer == layer && m->adapters[i].role == (int)role)
            return which ? m->adapters[i].b : m->adapters[i].a;
    return -1;
}

const fl_lora_spec *fl_model_lora(const fl_model *m) { return m->has_lora ? &m->lora : NULL; }

void fl_model_set_dropout(fl_model *m, int enabled, uint64_t step) {
    m->dropout_on = enabled;
    m->dropout_step = step;
}

/* x * keep / (1 - p) with keep regenerated from the counter stream (see the file comment). */
static void dropout_apply(const fl_model *m, const fl_adapter *ad, float *out, const float *in,
                          size_t n) {
    uint64_t seed = m->lora.seed + 0x9E3779B97F4A7C15ull * (m->dropout_step + 1);
    /* One mask per adapted module, as PEFT has it: GPT-2's q, k and v adapters share c_attn's. */
    uint64_t module = (uint64_t)ad->layer * 8 + (uint64_t)(ad->target - m->layers[ad->layer].mods);
    uint64_t offset = module << 40;
    float p = m->lora.dropout, keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] = fl_rng_uniform_at(seed, offset, i) >= p ? in[i] * keep_scale : 0.0f;
}

static float *lora_param(fl_model *m, int view) {
    return m->lora_params.data + m->lora_params.views[view].offset;
}

void fl_lora_forward(fl_model *m, const fl_adapter *ad, const float *in, float *out, int ldo,
                     float *u, int N) {
    int r = ad->rank;
    float scale = ad->scale;
    const float *x = in;
    if (m->dropout_active) {
        dropout_apply(m, ad, m->lora_xd, in, (size_t)N * ad->ic);
        x = m->lora_xd;
    }
    fl_gemm(0, 1, N, r, ad->ic, 1.0f, x, ad->ic, lora_param(m, ad->a), ad->ic, 0.0f, u, r);
    fl_gemm(0, 1, N, ad->oc, r, scale, u, r, lora_param(m, ad->b), r, 1.0f, out, ldo);
}

void fl_lora_backward(fl_model *m, const fl_adapter *ad, float *din, const float *dout, int ldo,
                      const float *in, const float *u, int N) {
    int r = ad->rank;
    float scale = ad->scale;
    const float *A = lora_param(m, ad->a), *Bw = lora_param(m, ad->b);
    float *dA = m->lora_grads.data + m->lora_grads.views[ad->a].offset;
    float *dB = m->lora_grads.data + m->lora_grads.views[ad->b].offset;
    size_t n_in = (size_t)N * ad->ic;
    fl_gemm(1, 0, ad->oc, r, N, scale, dout, ldo, u, r, 1.0f, dB, r);
    fl_gemm(0, 0, N, r, ad->oc, scale, dout, ldo, Bw, r, 0.0f, m->lora_du, r);
    const float *x = in;
    if (m->dropout_active) {
        dropout_apply(m, ad, m->lora_xd, in, n_in);
        x = m->lora_xd;
    }
    fl_gemm(1, 0, r, ad->ic, N, 1.0f, m->lora_du, r, x, ad->ic, 1.0f, dA, ad->ic);
    if (!din) return;
    if (!m->dropout_active) {
        fl_gemm(0, 0, N, ad->ic, r, 1.0f, m->lora_du, r, A, ad->ic, 1.0f, din, ad->ic);
        return;
    }
    /* d x = mask * (du A) / (1 - p): the same dropout applied to du A. */
    fl_gemm(0, 0, N, ad->ic, r, 1.0f, m->lora_du, r, A, ad->ic, 0.0f, m->lora_tmp, ad->ic);
    dropout_apply(m, ad, m->lora_tmp, m->lora_tmp, n_in);
    fl_axpy(din, m->lora_tmp, 1.0f, n_in);
}

/* ---- adapter directory ------------------------------------------------------------------------
 */

/* GPT-2: the q/k/v adapters of one layer as one c_attn adapter of rank r * n_roles:
 * A = [A_q; A_k; A_v] (rows stacked), B (3C, r * n_roles) with B_role in its rows and columns. */
static int add_gpt2_c_attn(fl_model *m, fl_st_writer *w, int layer, float **owned, int *n_owned,
                           fl_err *err) {
    int r = m->lora.rank, C = m->cfg.d_model, n_roles = 0;
    const fl_adapter *parts[3] = {0};
    for (int i = 0; i < m->n_adapters; i++) {
        const fl_adapter *ad = &m->adapters[i];
        if (ad->layer == layer && ad->role >= 0 && ad->role <= FL_ROLE_ATTN_V)
            parts[n_roles++] = ad;
    }
    if (!n_roles) return FL_OK;
    int R = r * n_roles;
    float *A = fl_alloc((size_t)R * C * sizeof(float), err);
    float *B = fl_alloc((size_t)3 * C * R * sizeof(float), err);
    if (!A || !B) {
        free(A);
        free(B);
        return FL_ENOMEM;
    }
    owned[(*n_owned)++] = A;
    owned[(*n_owned)++] = B;
    for (int j = 0; j < n_roles; j++) {
        const fl_adapter *ad = parts[j];
        memcpy(A + (size_t)j * r * C, lora_param(m, ad->a), (size_t)r * C * sizeof(float));
        const float *Bj = lora_param(m, ad->b);
        for (int row = 0; row < C; row++)
            memcpy(B + (size_t)(ad->out_col + row) * R + (size_t)j * r, Bj + (size_t)row * r,
                   (size_t)r * sizeof(float));
    }
    char name[FL_VIEW_NAME_MAX];
    int64_t a_shape[2] = {R, C}, b_shape[2] = {3 * C, R};
    snprintf(name, sizeof name, "base_model.model.transformer.h.%d.attn.c_attn.lora_A.weight",
             layer);
    if (fl_st_writer_add(w, name, FL_DTYPE_F32, 2, a_shape, A, err)) return err->code;
    snprintf(name, sizeof name, "base_model.model.transformer.h.%d.attn.c_attn.lora_B.weight",
             layer);
    return fl_st_writer_add(w, name, FL_DTYPE_F32, 2, b_shape, B, err);
}

/* True when HF module `module` (e.g. "model.layers.3.self_attn.q_proj") carries an adapter. */
static int module_has_adapter(const fl_model *m, const char *module) {
    for (int i = 0; i < m->n_adapters; i++)
        if (strcmp(m->adapters[i].module, module) == 0) return 1;
    return 0;
}

static char *adapter_config_json(const fl_model *m, const char *base_model_path) {
    const fl_config *c = &m->cfg;
    int gpt2 = fl_config_is_gpt2(c), qkv_roles = 0;
    cJSON *root = cJSON_CreateObject(), *targets = cJSON_CreateArray();
    if (m->lora.role_mask & FL_LORA_C_ATTN)
        cJSON_AddItemToArray(targets, cJSON_CreateString("c_attn"));
    for (int r = 0; r < FL_N_ROLES; r++) {
        if (!(m->lora.role_mask & (1u << r))) continue;
        if (gpt2 && r <= FL_ROLE_ATTN_V && qkv_roles++) continue; /* one "c_attn" entry */
        /* PEFT matches by suffix: the last name part, unless GPT-2's two c_proj must differ. */
        const char *module = gpt2 ? FL_GPT2_MODULES[r] : FL_LLAMA_MODULES[r];
        unsigned both_c_proj = (1u << FL_ROLE_ATTN_O) | (1u << FL_ROLE_MLP_DOWN);
        int ambiguous =
            gpt2 && strstr(module, "c_proj") && (m->lora.role_mask & both_c_proj) != both_c_proj;
        if (!ambiguous) module = strchr(module, '.') + 1;
        if (gpt2 && r == FL_ROLE_MLP_DOWN && !ambiguous) continue; /* "c_proj" covers both */
        cJSON_AddItemToArray(targets, cJSON_CreateString(module));
    }
    cJSON_AddStringToObject(root, "peft_type", "LORA");
    cJSON_AddStringToObject(root, "task_type", "CAUSAL_LM");
    char base[4096]; /* as given, tidied ("examples/../models/base" is "models/base") */
    snprintf(base, sizeof base, "%s", base_model_path ? base_model_path : "");
    if (base[0]) fl_path_normalize(base);
    cJSON_AddStringToObject(root, "base_model_name_or_path", base);
    cJSON_AddNumberToObject(root, "r", m->lora.rank);
    cJSON_AddNumberToObject(root, "lora_alpha", m->lora.alpha);
    cJSON_AddNumberToObject(root, "lora_dropout", m->lora.dropout);
    cJSON_AddItemToObject(root, "target_modules", targets);
    if (has_layer_mask(&m->lora)) { /* PEFT matches ".<name>.<index>." in the module's path */
        cJSON *layers = cJSON_CreateArray();
        for (int l = 0; l < c->n_layer; l++)
            if (fl_lora_spec_has_layer(&m->lora, l))
                cJSON_AddItemToArray(layers, cJSON_CreateNumber(l));
        cJSON_AddItemToObject(root, "layers_to_transform", layers);
    }
    cJSON_AddStringToObject(root, "bias", "none");
    cJSON_AddBoolToObject(root, "fan_in_fan_out", gpt2);
    cJSON_AddBoolToObject(root, "inference_mode", 1);
    /* Trained base tensors: biases are PEFT's bias "all"; norm layers are modules_to_save, which
     * PEFT replaces whole (so a linear layer's bias cannot be one: LoRA wraps that module). */
    unsigned train_base = m->lora.train_base;
    cJSON_ReplaceItemInObject(root, "bias",
                              cJSON_CreateString(train_base & FL_TRAIN_BIASES ? "all" : "none"));
    if (train_base & FL_TRAIN_NORMS) {
        cJSON *save = cJSON_CreateArray();
        for (int v = 0; v < m->params.n_views; v++) {
            if (m->base_in_lora[v] < 0 || !is_norm_tensor(m->params.views[v].name)) continue;
            char module[FL_VIEW_NAME_MAX];
            snprintf(module, sizeof module, "%s", m->params.views[v].name);
            *strrchr(module, '.') = 0; /* drop .weight / .bias */
            const cJSON *item;
            int seen = 0;
            cJSON_ArrayForEach(item, save) seen |= strcmp(item->valuestring, module) == 0;
            if (!seen) cJSON_AddItemToArray(save, cJSON_CreateString(module));
        }
        cJSON_AddItemToObject(root, "modules_to_save", save);
    }
    if (qkv_roles > 1) { /* the merged c_attn adapter has rank r * roles and the same scale */
        cJSON *rank = cJSON_CreateObject(), *alpha = cJSON_CreateObject();
        cJSON_AddNumberToObject(rank, "c_attn", m->lora.rank * qkv_roles);
        cJSON_AddNumberToObject(alpha, "c_attn", m->lora.alpha * qkv_roles);
        cJSON_AddItemToObject(root, "rank_pattern", rank);
        cJSON_AddItemToObject(root, "alpha_pattern", alpha);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    return text;
}

int fl_model_save_adapter(const fl_model *mc, const char *dir, const char *base_model_path,
                          fl_err *err) {
    fl_model *m = (fl_model *)mc;
    if (!m->has_lora) return fl_err_set(err, FL_EINTERNAL, "model has no LoRA adapter");
    char path[1024];
    /* A loaded adapter keeps the config it came with (its ranks and patterns are the file's). */
    char *text =
        m->loaded_config ? strdup(m->loaded_config) : adapter_config_json(m, base_model_path);
    if (!text) return fl_err_set(err, FL_ENOMEM, "out of memory");
    int rc = fl_path_join(path, sizeof path, dir, "adapter_config.json", err);
    if (!rc) rc = fl_write_file_atomic(path, text, strlen(text), err);
    free(text);
    if (rc) return rc;
    fl_st_writer *w = fl_st_writer_new(err);
    float **owned = calloc(2 * (size_t)m->cfg.n_layer, sizeof *owned); /* merged c_attn factors */
    int n_owned = 0;
    if (!w || !owned) {
        fl_st_writer_free(w);
        free(owned);
        return fl_err_set(err, FL_ENOMEM, "out of memory");
    }
    /* peft refuses unknown adapter_config.json keys, so fedllm's roles go in the file's metadata.
     */
    char roles[128] = "";
    if (m->lora.role_mask & FL_LORA_C_ATTN) strcpy(roles, "c_attn");
    for (int r = 0; r < FL_N_ROLES; r++)
        if (m->lora.role_mask & (1u << r))
            snprintf(roles + strlen(roles), sizeof roles - strlen(roles), "%s%s", *roles ? "," : "",
                     ROLE_NAMES[r]);
    rc = fl_st_writer_meta(w, "format", "pt", err);
    if (!rc) rc = fl_st_writer_meta(w, "fedllm_roles", roles, err);
    for (int l = 0; !rc && l < m->cfg.n_layer; l++) {
        if (fl_config_is_gpt2(&m->cfg)) rc = add_gpt2_c_attn(m, w, l, owned, &n_owned, err);
        for (int i = 0; !rc && i < m->n_adapters; i++) {
            const fl_adapter *ad = &m->adapters[i];
            if (ad->layer != l ||
                (fl_config_is_gpt2(&m->cfg) && ad->role >= 0 && ad->role <= FL_ROLE_ATTN_V))
                continue;
            const fl_view *va = &m->lora_params.views[ad->a], *vb = &m->lora_params.views[ad->b];
            rc = fl_st_writer_add(w, va->name, FL_DTYPE_F32, 2, va->shape, lora_param(m, ad->a),
                                  err);
            if (!rc)
                rc = fl_st_writer_add(w, vb->name, FL_DTYPE_F32, 2, vb->shape, lora_param(m, ad->b),
                                      err);
        }
    }
    for (int v = 0; !rc && m->base_in_lora && v < m->params.n_views; v++) {
        if (m->base_in_lora[v] < 0) continue;
        const fl_view *copy = &m->lora_params.views[m->base_in_lora[v]];
        char name[FL_VIEW_NAME_MAX + 32], module[FL_VIEW_NAME_MAX];
        snprintf(module, sizeof module, "%s", copy->name);
        char *last = strrchr(module, '.');
        *last = 0;
        /* PEFT keeps the bias of a module it wrapped with LoRA under "base_layer". */
        snprintf(name, sizeof name, "base_model.model.%s.%s%s", module,
                 module_has_adapter(m, module) ? "base_layer." : "", last + 1);
        rc = fl_st_writer_add(w, name, FL_DTYPE_F32, copy->ndim, copy->shape,
                              m->lora_params.data + copy->offset, err);
    }
    if (!rc) rc = fl_path_join(path, sizeof path, dir, "adapter_model.safetensors", err);
    if (!rc) rc = fl_st_write(w, path, err);
    fl_st_writer_free(w);
    for (int i = 0; i < n_owned; i++)
        free(owned[i]);
    free(owned);
    return rc;
}
