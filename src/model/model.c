/* model.c — a model's parameter layout (HF names, module descriptors), random init, and its
 * Hugging Face files. The passes are in transformer.c, the adapters in lora.c.
 *
 * One code path serves GPT-2 (LayerNorm, learned positions, GELU, biases, Conv1D weights) and the
 * LLaMA family (RMSNorm, RoPE, SwiGLU, grouped-query attention; Qwen2 adds q/k/v biases). The
 * differences are data: each layer is a list of linear modules, each reading one activation
 * (ln1, attention output, ln2, MLP activation) and writing a column range of another (qkv, the
 * residual, the MLP input). LoRA adapters are attached to a role and use the same descriptors, so
 * GPT-2's fused c_attn gets per-role adapters on its q, k or v columns. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fileio.h"
#include "fedllm/model.h"
#include "fedllm/rng.h"
#include "fedllm/safetensors.h"
#include "kernels/kernels.h"
#include "model/checkpoint.h"
#include "model/model_internal.h"

/* ---- layout: parameter names and module descriptors ------------------------------------------ */

static int add_view(fl_model *m, const char *name, int64_t d0, int64_t d1, fl_err *err) {
    int64_t shape[2] = {d0, d1};
    return fl_params_add(&m->params, name, d1 ? 2 : 1, shape, err);
}

static void set_module(fl_module *mod, int w, int b, int ic, int oc, int w_in_out, fl_act_sel in,
                       fl_act_sel out, int out_col) {
    *mod = (fl_module){.w = w,
                       .b = b,
                       .ic = ic,
                       .oc = oc,
                       .w_in_out = w_in_out,
                       .in = in,
                       .out = out,
                       .out_col = out_col};
}

static int build_gpt2_layout(fl_model *m, fl_err *err) {
    const fl_config *c = &m->cfg;
    int C = c->d_model, F = c->d_ff;
    char name[FL_VIEW_NAME_MAX];
    if ((m->wte = add_view(m, "transformer.wte.weight", c->vocab_size, C, err)) < 0)
        return err->code;
    if ((m->wpe = add_view(m, "transformer.wpe.weight", c->max_position, C, err)) < 0)
        return err->code;
    for (int l = 0; l < c->n_layer; l++) {
        fl_layer *ly = &m->layers[l];
#define V1(field, suffix, n)                                                                       \
    snprintf(name, sizeof name, "transformer.h.%d.%s", l, suffix);                                 \
    if ((field = add_view(m, name, n, 0, err)) < 0) return err->code
#define V2(field, suffix, r, k)                                                                    \
    snprintf(name, sizeof name, "transformer.h.%d.%s", l, suffix);                                 \
    if ((field = add_view(m, name, r, k, err)) < 0) return err->code
        int w, b;
        V1(ly->ln1_w, "ln_1.weight", C);
        V1(ly->ln1_b, "ln_1.bias", C);
        V2(w, "attn.c_attn.weight", C, 3 * C);
        V1(b, "attn.c_attn.bias", 3 * C);
        set_module(&ly->mods[ly->n_mods++], w, b, C, 3 * C, 1, FL_ACT_LN1, FL_ACT_QKV, 0);
        V2(w, "attn.c_proj.weight", C, C);
        V1(b, "attn.c_proj.bias", C);
        set_module(&ly->mods[ly->n_mods++], w, b, C, C, 1, FL_ACT_ATTY, FL_ACT_RES_MID, 0);
        V1(ly->ln2_w, "ln_2.weight", C);
        V1(ly->ln2_b, "ln_2.bias", C);
        V2(w, "mlp.c_fc.weight", C, F);
        V1(b, "mlp.c_fc.bias", F);
        set_module(&ly->mods[ly->n_mods++], w, b, C, F, 1, FL_ACT_LN2, FL_ACT_FC, 0);
        V2(w, "mlp.c_proj.weight", F, C);
        V1(b, "mlp.c_proj.bias", C);
        set_module(&ly->mods[ly->n_mods++], w, b, F, C, 1, FL_ACT_ACT, FL_ACT_RES_OUT, 0);
#undef V1
#undef V2
    }
    if ((m->lnf_w = add_view(m, "transformer.ln_f.weight", C, 0, err)) < 0) return err->code;
    if ((m->lnf_b = add_view(m, "transformer.ln_f.bias", C, 0, err)) < 0) return err->code;
    m->head = m->wte;
    if (!c->tie_embeddings && (m->head = add_view(m, "lm_head.weight", c->vocab_size, C, err)) < 0)
        return err->code;
    return FL_OK;
}

static int build_llama_layout(fl_model *m, fl_err *err) {
    const fl_config *c = &m->cfg;
    int C = c->d_model, F = c->d_ff, HD = c->head_dim;
    int AQ = c->n_head * HD, AKV = c->n_kv_head * HD;
    char name[FL_VIEW_NAME_MAX];
    m->wpe = -1;
    m->lnf_b = -1;
    if ((m->wte = add_view(m, "model.embed_tokens.weight", c->vocab_size, C, err)) < 0)
        return err->code;
    for (int l = 0; l < c->n_layer; l++) {
        fl_layer *ly = &m->layers[l];
        ly->ln1_b = ly->ln2_b = -1;
#define V(field, suffix, r, k)                                                                     \
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                                  \
    if ((field = add_view(m, name, r, k, err)) < 0) return err->code
        int w, b = -1;
        V(w, "self_attn.q_proj.weight", AQ, C);
        if (c->qkv_bias) {
            V(b, "self_attn.q_proj.bias", AQ, 0);
        }
        set_module(&ly->mods[ly->n_mods++], w, b, C, AQ, 0, FL_ACT_LN1, FL_ACT_QKV, 0);
        V(w, "self_attn.k_proj.weight", AKV, C);
        if (c->qkv_bias) {
            V(b, "self_attn.k_proj.bias", AKV, 0);
        }
        set_module(&ly->mods[ly->n_mods++], w, b, C, AKV, 0, FL_ACT_LN1, FL_ACT_QKV, AQ);
        V(w, "self_attn.v_proj.weight", AKV, C);
        if (c->qkv_bias) {
            V(b, "self_attn.v_proj.bias", AKV, 0);
        }
        set_module(&ly->mods[ly->n_mods++], w, b, C, AKV, 0, FL_ACT_LN1, FL_ACT_QKV, AQ + AKV);
        V(w, "self_attn.o_proj.weight", C, AQ);
        set_module(&ly->mods[ly->n_mods++], w, -1, AQ, C, 0, FL_ACT_ATTY, FL_ACT_RES_MID, 0);
        V(w, "mlp.gate_proj.weight", F, C);
        set_module(&ly->mods[ly->n_mods++], w, -1, C, F, 0, FL_ACT_LN2, FL_ACT_FC, 0);
        V(w, "mlp.up_proj.weight", F, C);
        set_module(&ly->mods[ly->n_mods++], w, -1, C, F, 0, FL_ACT_LN2, FL_ACT_UP, 0);
        V(w, "mlp.down_proj.weight", C, F);
        set_module(&ly->mods[ly->n_mods++], w, -1, F, C, 0, FL_ACT_ACT, FL_ACT_RES_OUT, 0);
        V(ly->ln1_w, "input_layernorm.weight", C, 0);
        V(ly->ln2_w, "post_attention_layernorm.weight", C, 0);
#undef V
    }
    if ((m->lnf_w = add_view(m, "model.norm.weight", C, 0, err)) < 0) return err->code;
    m->head = m->wte;
    if (!c->tie_embeddings && (m->head = add_view(m, "lm_head.weight", c->vocab_size, C, err)) < 0)
        return err->code;
    return FL_OK;
}

static fl_model *model_alloc(const fl_config *cfg, fl_err *err) {
    if (fl_config_validate(cfg, "model config", err)) return NULL;
    fl_model *m = calloc(1, sizeof *m);
    if (!m) return fl_err_set(err, FL_ENOMEM, "out of memory"), NULL;
    m->cfg = *cfg;
    m->layers = calloc((size_t)cfg->n_layer, sizeof *m->layers);
    int rc = m->layers ? FL_OK : fl_err_set(err, FL_ENOMEM, "out of memory");
    if (!rc) rc = fl_config_is_gpt2(cfg) ? build_gpt2_layout(m, err) : build_llama_layout(m, err);
    if (!rc) rc = fl_params_alloc(&m->params, err);
    if (!rc) rc = fl_model_rope_init(m, err);
    if (rc) {
        fl_model_free(m);
        return NULL;
    }
    return m;
}

static int is_output_projection(const char *name) { return strstr(name, "c_proj.weight") != NULL; }

fl_model *fl_model_new_random(const fl_config *cfg, uint64_t seed, fl_err *err) {
    fl_model *m = model_alloc(cfg, err);
    if (!m) return NULL;
    float proj_std = 0.02f / sqrtf(2.0f * (float)cfg->n_layer);
    for (int i = 0; i < m->params.n_views; i++) {
        fl_view *v = &m->params.views[i];
        float *p = m->params.data + v->offset;
        if (v->ndim == 1) {
            int is_norm_weight = strstr(v->name, "norm.weight") || strstr(v->name, "ln_");
            is_norm_weight = is_norm_weight && strstr(v->name, ".weight");
            for (size_t j = 0; j < v->numel; j++)
                p[j] = is_norm_weight ? 1.0f : 0.0f;
        } else {
            float std = fl_config_is_gpt2(cfg) && is_output_projection(v->name) ? proj_std : 0.02f;
            fl_rng_normal(p, v->numel, seed, v->offset, std);
        }
    }
    return m;
}

/* Copies every view of src whose name, with layer index `from` renamed to `to` (or unchanged when
 * from < 0, for non-layer tensors), exists in dst. */
static void copy_views(fl_model *dst, const fl_model *src, int from, int to) {
    char want[FL_VIEW_NAME_MAX], tag_from[32], tag_to[32];
    snprintf(tag_from, sizeof tag_from, fl_config_is_gpt2(&src->cfg) ? ".h.%d." : ".layers.%d.",
             from);
    snprintf(tag_to, sizeof tag_to, fl_config_is_gpt2(&src->cfg) ? ".h.%d." : ".layers.%d.", to);
    for (int i = 0; i < src->params.n_views; i++) {
        const fl_view *v = &src->params.views[i];
        const char *at = strstr(v->name, fl_config_is_gpt2(&src->cfg) ? ".h." : ".layers.");
        if ((from < 0) != (at == NULL) || (from >= 0 && strncmp(at, tag_from, strlen(tag_from))))
            continue;
        if (from < 0)
            snprintf(want, sizeof want, "%s", v->name);
        else
            snprintf(want, sizeof want, "%.*s%s%s", (int)(at - v->name), v->name, tag_to,
                     at + strlen(tag_from));
        float *d = fl_params_get(&dst->params, want);
        if (d) memcpy(d, fl_model_param((fl_model *)src, i), v->numel * sizeof(float));
    }
}

fl_model *fl_model_subset(const fl_model *m, const int *layers, int n_layers, fl_err *err) {
    if (n_layers < 1) return fl_err_set(err, FL_EINPUT, "a model needs at least one layer"), NULL;
    for (int i = 0; i < n_layers; i++)
        if (layers[i] < 0 || layers[i] >= m->cfg.n_layer)
            return fl_err_set(err, FL_EINPUT, "layer %d: the model has layers 0..%d", layers[i],
                              m->cfg.n_layer - 1),
                   NULL;
    fl_config cfg = m->cfg;
    cfg.n_layer = n_layers;
    fl_model *sub = model_alloc(&cfg, err);
    if (!sub) return NULL;
    copy_views(sub, m, -1, -1);
    for (int i = 0; i < n_layers; i++)
        copy_views(sub, m, layers[i], i);
    return sub;
}

/* ---- loading and saving ------------------------------------------------------------------------
 */

int fl_values_check_finite(const float *x, size_t n, const char *tensor, fl_err *err) {
    size_t at = fl_first_nonfinite(x, n);
    if (at == n) return FL_OK;
    return fl_err_set(err, FL_EINPUT,
                      "tensor '%s' holds %s at element %zu of %zu: expected finite weights (the "
                      "file is corrupt, or the training that wrote it diverged)",
                      tensor,
                      isnan(x[at]) ? "NaN"
                      : x[at] > 0  ? "+inf"
                                   : "-inf",
                      at, n);
}

int fl_params_check_finite(const fl_params *p, int *bad_view, fl_err *err) {
    if (fl_first_nonfinite(p->data, p->numel) == p->numel) return FL_OK; /* padding is zero */
    for (int v = 0; v < p->n_views; v++) {
        const fl_view *view = &p->views[v];
        int rc = fl_values_check_finite(p->data + view->offset, view->numel, view->name, err);
        if (rc) {
            if (bad_view) *bad_view = v;
            return rc;
        }
    }
    return fl_err_set(err, FL_EINTERNAL, "a non-finite value outside every tensor");
}

fl_model *fl_model_load(const char *dir, fl_err *err) {
    fl_config cfg;
    if (fl_config_load(&cfg, dir, err)) return NULL;
    fl_model *m = model_alloc(&cfg, err);
    if (!m) return NULL;
    fl_checkpoint *ck = malloc(sizeof *ck);
    if (!ck || fl_checkpoint_open(ck, dir, err)) {
        if (!ck) fl_err_set(err, FL_ENOMEM, "out of memory");
        free(ck);
        fl_model_free(m);
        return NULL;
    }
    int rc = FL_OK;
    for (int i = 0; i < m->params.n_views && !rc; i++) {
        const fl_view *v = &m->params.views[i];
        const char *name = v->name;
        /* The original GPT-2 checkpoints name their tensors without the "transformer." prefix. */
        if (!fl_checkpoint_find(ck, name) && strncmp(name, "transformer.", 12) == 0) name += 12;
        const fl_st_file *f = fl_checkpoint_find(ck, name);
        if (!f) {
            rc = fl_err_set(err, FL_EINPUT, "%s: tensor '%s' is missing from the checkpoint", dir,
                            v->name);
            break;
        }
        rc = fl_st_read_into(f, name, v->ndim, v->shape, m->params.data + v->offset, err);
    }
    int bad = -1;
    if (!rc && (rc = fl_params_check_finite(&m->params, &bad, err)) && bad >= 0) {
        const char *name = m->params.views[bad].name;
        const fl_st_file *f = fl_checkpoint_find(ck, name);
        if (!f && strncmp(name, "transformer.", 12) == 0) f = fl_checkpoint_find(ck, name + 12);
        fl_err_prefix(err, f ? f->path : dir);
    }
    fl_checkpoint_close(ck);
    free(ck);
    if (rc) {
        fl_model_free(m);
        return NULL;
    }
    return m;
}

int fl_model_save(fl_model *m, const char *dir, fl_err *err) {
    char path[1024];
    /* Base tensors that trained alongside LoRA hold their values in the trainable table: bring them
     * home first, so the saved model is the trained one. */
    for (int v = 0; m->base_in_lora && v < m->params.n_views; v++)
        if (m->base_in_lora[v] >= 0)
            memcpy(m->params.data + m->params.views[v].offset, fl_model_param(m, v),
                   m->params.views[v].numel * sizeof(float));
    if (fl_path_join(path, sizeof path, dir, "config.json", err) ||
        fl_config_save(&m->cfg, path, err))
        return err ? err->code : FL_EINPUT;
    fl_st_writer *w = fl_st_writer_new(err);
    if (!w) return FL_ENOMEM;
    int rc = fl_st_writer_meta(w, "format", "pt", err);
    if (!rc) rc = fl_st_writer_add_params(w, &m->params, "", err);
    if (!rc) rc = fl_path_join(path, sizeof path, dir, "model.safetensors", err);
    if (!rc) rc = fl_st_write(w, path, err);
    fl_st_writer_free(w);
    return rc;
}

void fl_model_free(fl_model *m) {
    if (!m) return;
    fl_params_free(&m->params);
    if (m->grads_owned) fl_params_free(&m->grads);
    fl_params_free(&m->lora_params);
    fl_params_free(&m->lora_grads);
    free(m->adapters);
    free(m->base_in_lora);
    free(m->loaded_config);
    free(m->layers);
    free(m->rope.buffer);
    free(m->arena);
    free(m->acts);
    free(m->resid);
    free(m->lora_u);
    free(m->logits_full);
    free(m);
}

const fl_config *fl_model_config(const fl_model *m) { return &m->cfg; }
fl_params *fl_model_params(fl_model *m) { return &m->params; }
fl_params *fl_model_trainable(fl_model *m) { return m->trainable; }
fl_params *fl_model_grads(fl_model *m) { return m->trainable_grads; }

int fl_model_train_full(fl_model *m, fl_err *err) {
    if (m->trainable) return fl_err_set(err, FL_EINTERNAL, "the trainable set is already chosen");
    if (fl_params_clone_layout(&m->grads, &m->params, err)) return err ? err->code : FL_ENOMEM;
    m->grads_owned = 1;
    m->trainable = &m->params;
    m->trainable_grads = &m->grads;
    return FL_OK;
}

/* Marks in layer_of[view] the block each base view belongs to (-1: embeddings, final norm, head).
 */
static void view_layers(const fl_model *m, int *layer_of) {
    for (int v = 0; v < m->params.n_views; v++)
        layer_of[v] = -1;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const fl_layer *ly = &m->layers[l];
        int norms[4] = {ly->ln1_w, ly->ln1_b, ly->ln2_w, ly->ln2_b};
        for (int i = 0; i < 4; i++)
            if (norms[i] >= 0) layer_of[norms[i]] = l;
        for (int i = 0; i < ly->n_mods; i++) {
            layer_of[ly->mods[i].w] = l;
            if (ly->mods[i].b >= 0) layer_of[ly->mods[i].b] = l;
        }
    }
}

int fl_model_train_layers(fl_model *m, const int *layers, int n_layers, fl_err *err) {
    if (m->trainable)
        return fl_err_set(err, FL_EINTERNAL,
                          "train layers: the trainable set is already chosen (full training, "
                          "LoRA, a loaded adapter or these layers)");
    int L = m->cfg.n_layer;
    if (n_layers < 1) return fl_err_set(err, FL_EINPUT, "train layers: no layer given");
    char *chosen = calloc((size_t)L, 1);
    int *layer_of = malloc((size_t)m->params.n_views * sizeof *layer_of);
    int *copy_of = malloc((size_t)m->params.n_views * sizeof *copy_of);
    int rc = chosen && layer_of && copy_of ? FL_OK : fl_err_set(err, FL_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < n_layers; i++) {
        if (layers[i] < 0 || layers[i] >= L)
            rc = fl_err_set(err, FL_EINPUT, "train layers: layer %d: the model has layers 0..%d",
                            layers[i], L - 1);
        else if (chosen[layers[i]]++)
            rc = fl_err_set(err, FL_EINPUT, "train layers: layer %d is listed twice", layers[i]);
    }
    if (!rc) view_layers(m, layer_of);
    for (int v = 0; !rc && v < m->params.n_views; v++) {
        const fl_view *view = &m->params.views[v];
        copy_of[v] = -1;
        if (layer_of[v] >= 0 && chosen[layer_of[v]] &&
            (copy_of[v] =
                 fl_params_add(&m->lora_params, view->name, view->ndim, view->shape, err)) < 0)
            rc = err->code;
    }
    if (!rc && (fl_params_alloc(&m->lora_params, err) ||
                fl_params_clone_layout(&m->lora_grads, &m->lora_params, err)))
        rc = err ? err->code : FL_ENOMEM;
    free(chosen);
    free(layer_of);
    if (rc) {
        fl_params_free(&m->lora_params);
        fl_params_free(&m->lora_grads);
        free(copy_of);
        return rc;
    }
    for (int v = 0; v < m->params.n_views; v++)
        if (copy_of[v] >= 0)
            memcpy(m->lora_params.data + m->lora_params.views[copy_of[v]].offset,
                   m->params.data + m->params.views[v].offset,
                   m->params.views[v].numel * sizeof(float));
    m->base_in_lora = copy_of;
    m->trainable = &m->lora_params;
    m->trainable_grads = &m->lora_grads;
    return FL_OK;
}

int fl_layers_parse(const char *list, int n_layer, int *layers, int max_layers, int *n_layers,
                    fl_err *err) {
    int n = 0;
    const char *p = list;
    while (*p) {
        char *end;
        long first = strtol(p, &end, 10), last = first;
        if (end == p || *p == '-' || *p == '+' || *p == ' ')
            return fl_err_set(err, FL_EINPUT, "layer list '%s': expected indices like 0,1,4-5",
                              list);
        if (*end == '-') {
            const char *q = end + 1;
            last = strtol(q, &end, 10);
            if (end == q || *q == '-' || *q == '+' || *q == ' ' || last < first)
                return fl_err_set(err, FL_EINPUT,
                                  "layer list '%s': expected a range FIRST-LAST with FIRST <= "
                                  "LAST",
                                  list);
        }
        if (*end && *end != ',')
            return fl_err_set(err, FL_EINPUT, "layer list '%s': expected indices like 0,1,4-5",
                              list);
        for (long l = first; l <= last; l++) {
            if (l < 0 || l >= n_layer)
                return fl_err_set(err, FL_EINPUT,
                                  "layer list '%s': layer %ld: the model has "
                                  "layers 0..%d",
                                  list, l, n_layer - 1);
            for (int i = 0; i < n; i++)
                if (layers[i] == l)
                    return fl_err_set(err, FL_EINPUT, "layer list '%s': layer %ld twice", list, l);
            if (n == max_layers)
                return fl_err_set(err, FL_EINPUT, "layer list '%s': more than %d layers", list,
                                  max_layers);
            layers[n++] = (int)l;
        }
        p = *end ? end + 1 : end;
        if (*end && !*p)
            return fl_err_set(err, FL_EINPUT, "layer list '%s': ends with a comma", list);
    }
    if (!n) return fl_err_set(err, FL_EINPUT, "layer list: empty");
    *n_layers = n;
    return FL_OK;
}
