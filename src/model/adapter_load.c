/* adapter_load.c — PEFT LoRA adapter directories into a model, and adapters merged into the base.
 *
 * An adapter directory is adapter_config.json (peft_type LORA, r, lora_alpha, optional
 * rank_pattern / alpha_pattern / use_rslora, bias, modules_to_save) and adapter_model.safetensors
 * with PEFT's names: "base_model.model.<module>.lora_A.weight" (r, in) and ".lora_B.weight"
 * (out, r) per adapted module, plus trained biases ("<module>.base_layer.bias" under LoRA) and
 * modules_to_save tensors under their base names. Each lora_A/lora_B pair becomes an adapter on
 * the module with that name, of its own rank, whatever wrote it (fedllm or peft); GPT-2's fused
 * c_attn takes one adapter over all its columns. Trained base tensors replace the base's. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fileio.h"
#include "fedllm/safetensors.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"

static const char PREFIX[] = "base_model.model.";

/* ---- adapter_config.json -----------------------------------------------------------------------
 * Every key fedllm reads is checked for its JSON type and range before anything is loaded: r and
 * rank_pattern values are integers in 1..FL_LORA_RANK_MAX, lora_alpha and alpha_pattern values
 * finite numbers in (0, FL_LORA_ALPHA_MAX], lora_dropout a number in [0, 1), the flags booleans (a
 * string "yes" is not one), bias one of PEFT's three words. Keys peft writes that do not change
 * the function (task_type, revision, ...) are left alone; layer_replication, which would, is
 * refused. */

static const char *json_kind(const cJSON *item) {
    return cJSON_IsString(item)   ? "a string"
           : cJSON_IsNumber(item) ? "a number"
           : cJSON_IsBool(item)   ? "a boolean"
           : cJSON_IsNull(item)   ? "null"
           : cJSON_IsArray(item)  ? "a list"
                                  : "an object";
}

/* A rank: an integer in 1..max. */
static int check_rank(const cJSON *v, int max, const char *path, const char *key, fl_err *err) {
    if (cJSON_IsNumber(v) && v->valuedouble >= 1 && v->valuedouble <= max &&
        v->valuedouble == floor(v->valuedouble))
        return FL_OK;
    if (cJSON_IsNumber(v))
        return fl_err_set(err, FL_EINPUT, "%s: %s: expected an integer in 1..%d, got %g", path, key,
                          max, v->valuedouble);
    return fl_err_set(err, FL_EINPUT, "%s: %s: expected an integer in 1..%d, got %s", path, key,
                      max, json_kind(v));
}

/* An alpha: a finite number in (0, max]. */
static int check_alpha(const cJSON *v, double max, const char *path, const char *key, fl_err *err) {
    if (cJSON_IsNumber(v) && v->valuedouble > 0 && v->valuedouble <= max) return FL_OK;
    if (cJSON_IsNumber(v))
        return fl_err_set(err, FL_EINPUT, "%s: %s: expected a number in (0, %g], got %g", path, key,
                          max, v->valuedouble);
    return fl_err_set(err, FL_EINPUT, "%s: %s: expected a number in (0, %g], got %s", path, key,
                      max, json_kind(v));
}

/* rank_pattern / alpha_pattern: absent, null or an object of module -> value. A pattern entry may
 * be up to 3x the per-adapter bounds: fedllm writes GPT-2's q, k and v role adapters as one fused
 * c_attn adapter of rank 3 r and alpha 3 alpha (see lora.c). */
static int check_pattern(const cJSON *config, const char *key, int ranks, const char *path,
                         fl_err *err) {
    const cJSON *obj = cJSON_GetObjectItemCaseSensitive(config, key), *item;
    if (!obj || cJSON_IsNull(obj)) return FL_OK;
    if (!cJSON_IsObject(obj))
        return fl_err_set(err, FL_EINPUT, "%s: %s: expected an object of module -> %s, got %s",
                          path, key, ranks ? "rank" : "alpha", json_kind(obj));
    cJSON_ArrayForEach(item, obj) {
        char where[160];
        snprintf(where, sizeof where, "%s['%.100s']", key, item->string);
        int rc = ranks ? check_rank(item, 3 * FL_LORA_RANK_MAX, path, where, err)
                       : check_alpha(item, 3 * FL_LORA_ALPHA_MAX, path, where, err);
        if (rc) return rc;
    }
    return FL_OK;
}

/* Absent, or a JSON boolean. */
static int check_bool(const cJSON *config, const char *key, const char *path, fl_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(config, key);
    if (!v || cJSON_IsBool(v)) return FL_OK;
    return fl_err_set(err, FL_EINPUT, "%s: %s: expected true or false, got %s", path, key,
                      json_kind(v));
}

/* Absent, null, or a list of strings (or, for target_modules, one string: PEFT's regex form). */
static int check_names(const cJSON *config, const char *key, int string_ok, const char *path,
                       fl_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(config, key), *item;
    if (!v || cJSON_IsNull(v) || (string_ok && cJSON_IsString(v))) return FL_OK;
    int ok = cJSON_IsArray(v);
    if (ok) cJSON_ArrayForEach(item, v) ok &= cJSON_IsString(item);
    if (ok) return FL_OK;
    return fl_err_set(err, FL_EINPUT, "%s: %s: expected a list of module names%s", path, key,
                      string_ok ? " or one pattern string" : "");
}

static int check_config(const cJSON *config, const char *path, fl_err *err) {
    if (!cJSON_IsObject(config))
        return fl_err_set(err, FL_EINPUT, "%s: expected a JSON object", path);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(config, "peft_type");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "LORA"))
        return fl_err_set(err, FL_EINPUT, "%s: peft_type: expected \"LORA\"", path);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(config, "r");
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(config, "lora_alpha");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(config, "lora_dropout");
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(config, "bias");
    const cJSON *replication = cJSON_GetObjectItemCaseSensitive(config, "layer_replication");
    int rc = r ? check_rank(r, FL_LORA_RANK_MAX, path, "r", err)
               : fl_err_set(err, FL_EINPUT, "%s: r: missing (the LoRA rank)", path);
    if (!rc)
        rc = alpha ? check_alpha(alpha, FL_LORA_ALPHA_MAX, path, "lora_alpha", err)
                   : fl_err_set(err, FL_EINPUT, "%s: lora_alpha: missing", path);
    if (!rc && dropout && !cJSON_IsNull(dropout) &&
        !(cJSON_IsNumber(dropout) && dropout->valuedouble >= 0 && dropout->valuedouble < 1))
        rc = cJSON_IsNumber(dropout)
                 ? fl_err_set(err, FL_EINPUT,
                              "%s: lora_dropout: expected a number in [0, 1), got %g", path,
                              dropout->valuedouble)
                 : fl_err_set(err, FL_EINPUT,
                              "%s: lora_dropout: expected a number in [0, 1), got %s", path,
                              json_kind(dropout));
    if (!rc) rc = check_pattern(config, "rank_pattern", 1, path, err);
    if (!rc) rc = check_pattern(config, "alpha_pattern", 0, path, err);
    const char *const flags[] = {"use_rslora", "use_dora", "fan_in_fan_out", "inference_mode"};
    for (size_t i = 0; !rc && i < sizeof flags / sizeof *flags; i++)
        rc = check_bool(config, flags[i], path, err);
    if (!rc && bias && !cJSON_IsNull(bias) &&
        !(cJSON_IsString(bias) &&
          (!strcmp(bias->valuestring, "none") || !strcmp(bias->valuestring, "all") ||
           !strcmp(bias->valuestring, "lora_only"))))
        rc = fl_err_set(err, FL_EINPUT, "%s: bias: expected \"none\", \"all\" or \"lora_only\"",
                        path);
    if (!rc) rc = check_names(config, "target_modules", 1, path, err);
    if (!rc) rc = check_names(config, "modules_to_save", 0, path, err);
    if (!rc && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(config, "use_dora")))
        rc = fl_err_set(err, FL_EINPUT, "%s: use_dora: DoRA adapters are not supported", path);
    if (!rc && replication && !cJSON_IsNull(replication))
        rc = fl_err_set(err, FL_EINPUT,
                        "%s: layer_replication: adapters over replicated layers are not supported",
                        path);
    return rc;
}

/* layers_to_transform (absent, null, an index or a list of indices of m's layers) into
 * spec's layer mask. layers_pattern names the module path part before the index: absent, null
 * or empty (any part, as in PEFT), or the family's ("h" for GPT-2, "layers" otherwise), alone or
 * in a list; another would match none of m's modules. */
static int read_layers(const cJSON *config, const fl_model *m, fl_lora_spec *spec, const char *path,
                       fl_err *err) {
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(config, "layers_to_transform"), *item;
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(config, "layers_pattern");
    const char *family = fl_config_is_gpt2(&m->cfg) ? "h" : "layers";
    int L = m->cfg.n_layer, pattern_ok = !pattern || cJSON_IsNull(pattern) ||
                                         (cJSON_IsString(pattern) && !*pattern->valuestring) ||
                                         (cJSON_IsArray(pattern) && !cJSON_GetArraySize(pattern));
    if (cJSON_IsString(pattern)) pattern_ok |= !strcmp(pattern->valuestring, family);
    if (cJSON_IsArray(pattern)) cJSON_ArrayForEach(item, pattern) {
            pattern_ok |= cJSON_IsString(item) && !strcmp(item->valuestring, family);
        }
    if (!pattern_ok)
        return fl_err_set(err, FL_EINPUT,
                          "%s: layers_pattern: expected null or \"%s\" (the %s module path's "
                          "layer part)",
                          path, family, fl_arch_name(m->cfg.arch));
    if (!layers || cJSON_IsNull(layers)) return FL_OK;
    if (!cJSON_IsNumber(layers) && !(cJSON_IsArray(layers) && cJSON_GetArraySize(layers)))
        return fl_err_set(err, FL_EINPUT,
                          "%s: layers_to_transform: expected a layer index or a list of them, "
                          "got %s",
                          path, cJSON_IsArray(layers) ? "an empty list" : json_kind(layers));
    for (item = cJSON_IsNumber(layers) ? layers : layers->child; item;
         item = cJSON_IsNumber(layers) ? NULL : item->next) {
        if (!cJSON_IsNumber(item))
            return fl_err_set(err, FL_EINPUT,
                              "%s: layers_to_transform: expected layer indices in 0..%d, got %s",
                              path, L - 1, json_kind(item));
        double l = item->valuedouble;
        if (!(l >= 0 && l < L && l == floor(l)))
            return fl_err_set(err, FL_EINPUT,
                              "%s: layers_to_transform: expected layer indices in 0..%d, got %g",
                              path, L - 1, l);
        fl_lora_spec_add_layer(spec, (int)l, err); /* a repeated index means it once, as in PEFT */
    }
    return FL_OK;
}

/* The value of `key` in a PEFT pattern object whose key is a suffix of module, or NULL. */
static const cJSON *pattern(const cJSON *config, const char *key, const char *module) {
    const cJSON *item;
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(config, key)) {
        size_t n = strlen(module), k = strlen(item->string);
        if (cJSON_IsNumber(item) && n >= k && strcmp(module + n - k, item->string) == 0 &&
            (n == k || module[n - k - 1] == '.'))
            return item;
    }
    return NULL;
}

/* Finds the layer and module whose weight view is `module`.weight. */
static const fl_module *find_module(const fl_model *m, const char *module, int *layer) {
    char name[FL_VIEW_NAME_MAX];
    if ((size_t)snprintf(name, sizeof name, "%s.weight", module) >= sizeof name) return NULL;
    int view = fl_params_find(&m->params, name);
    for (int l = 0; view >= 0 && l < m->cfg.n_layer; l++)
        for (int i = 0; i < m->layers[l].n_mods; i++)
            if (m->layers[l].mods[i].w == view) {
                *layer = l;
                return &m->layers[l].mods[i];
            }
    return NULL;
}

/* The role a module plays, or -1 (GPT-2's c_attn serves three). */
static int role_of(const fl_model *m, const char *module) {
    const char *const *names = fl_config_is_gpt2(&m->cfg) ? FL_GPT2_MODULES : FL_LLAMA_MODULES;
    size_t n = strlen(module);
    for (int r = 0; r < FL_N_ROLES; r++) {
        size_t k = names[r] ? strlen(names[r]) : 0;
        if (k && n > k && strcmp(module + n - k, names[r]) == 0 &&
            !(fl_config_is_gpt2(&m->cfg) && r <= FL_ROLE_ATTN_V))
            return r;
    }
    return -1;
}

typedef struct loaded {
    const fl_st_tensor *a, *b;
} loaded;

/* Reads the adapters' tensors into the model: one pass to lay out views, one to copy values. */
static int attach(fl_model *m, const fl_st_file *f, const cJSON *config, const fl_lora_spec *layers,
                  const char *path, fl_err *err) {
    double r_default = cJSON_GetObjectItemCaseSensitive(config, "r")->valuedouble;
    double alpha_default = cJSON_GetObjectItemCaseSensitive(config, "lora_alpha")->valuedouble;
    int rslora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(config, "use_rslora"));
    loaded *pairs = calloc((size_t)f->n_tensors, sizeof *pairs);
    m->adapters = calloc((size_t)f->n_tensors, sizeof *m->adapters);
    if (!pairs || !m->adapters) {
        free(pairs);
        return fl_err_set(err, FL_ENOMEM, "out of memory");
    }
    int rc = FL_OK;
    for (int i = 0; i < f->n_tensors && !rc; i++) {
        const fl_st_tensor *a = &f->tensors[i];
        size_t n = strlen(a->name), suffix = strlen(".lora_A.weight");
        if (n <= suffix + sizeof PREFIX - 1 || strcmp(a->name + n - suffix, ".lora_A.weight") ||
            strncmp(a->name, PREFIX, sizeof PREFIX - 1))
            continue;
        char module[FL_VIEW_NAME_MAX], b_name[FL_VIEW_NAME_MAX + 32];
        snprintf(module, sizeof module, "%.*s", (int)(n - suffix - (sizeof PREFIX - 1)),
                 a->name + sizeof PREFIX - 1);
        snprintf(b_name, sizeof b_name, "%s%s.lora_B.weight", PREFIX, module);
        const fl_st_tensor *b = fl_st_find(f, b_name);
        int layer = -1;
        const fl_module *mod = find_module(m, module, &layer);
        if (!mod) {
            rc = fl_err_set(err, FL_EINPUT,
                            "%s: '%s' adapts '%s', which this %s model does not have", path,
                            a->name, module, fl_arch_name(m->cfg.arch));
            break;
        }
        int R = a->ndim == 2 ? (int)a->shape[0] : 0;
        if (!b || a->ndim != 2 || b->ndim != 2 || R < 1 || a->shape[1] != mod->ic ||
            b->shape[0] != mod->oc || b->shape[1] != R) {
            rc = fl_err_set(err, FL_EINPUT, "%s: %s: expected lora_A (r, %d) and lora_B (%d, r)",
                            path, module, mod->ic, mod->oc);
            break;
        }
        const cJSON *rank_p = pattern(config, "rank_pattern", module);
        const cJSON *alpha_p = pattern(config, "alpha_pattern", module);
        if ((rank_p ? rank_p->valuedouble : r_default) != R) {
            rc = fl_err_set(err, FL_EINPUT, "%s: %s has rank %d, the config says %g", path, module,
                            R, rank_p ? rank_p->valuedouble : r_default);
            break;
        }
        double alpha = alpha_p ? alpha_p->valuedouble : alpha_default;
        fl_adapter *ad = &m->adapters[m->n_adapters];
        *ad = (fl_adapter){.layer = layer,
                           .role = role_of(m, module),
                           .rank = R,
                           .target = mod,
                           .scale = (float)(rslora ? alpha / sqrt(R) : alpha / R),
                           .ic = mod->ic,
                           .oc = mod->oc,
                           .in = mod->in,
                           .out = mod->out,
                           .out_col = mod->out_col};
        snprintf(ad->module, sizeof ad->module, "%s", module);
        if ((ad->a = fl_params_add(&m->lora_params, a->name, 2, a->shape, err)) < 0 ||
            (ad->b = fl_params_add(&m->lora_params, b->name, 2, b->shape, err)) < 0) {
            rc = err->code;
            break;
        }
        pairs[m->n_adapters++] = (loaded){a, b};
        if (R > m->max_rank) m->max_rank = R;
    }
    if (!rc && !m->n_adapters) rc = fl_err_set(err, FL_EINPUT, "%s: no LoRA tensors", path);
    for (int i = 0; !rc && i < m->n_adapters; i++)
        if (!fl_lora_spec_has_layer(layers, m->adapters[i].layer))
            rc = fl_err_set(err, FL_EINPUT, "%s: '%s' is in layer %d, outside layers_to_transform",
                            path, m->adapters[i].module, m->adapters[i].layer);
    if (!rc && (fl_params_alloc(&m->lora_params, err) ||
                fl_params_clone_layout(&m->lora_grads, &m->lora_params, err)))
        rc = err->code;
    for (int i = 0; !rc && i < m->n_adapters; i++) {
        const fl_view *va = &m->lora_params.views[m->adapters[i].a];
        const fl_view *vb = &m->lora_params.views[m->adapters[i].b];
        rc = fl_st_to_f32(pairs[i].a, m->lora_params.data + va->offset, err);
        if (!rc) rc = fl_st_to_f32(pairs[i].b, m->lora_params.data + vb->offset, err);
    }
    if (!rc && (rc = fl_params_check_finite(&m->lora_params, NULL, err))) fl_err_prefix(err, path);
    free(pairs);
    return rc;
}

/* Trained base tensors (biases, modules_to_save) replace the base's. */
static int replace_base(fl_model *m, const fl_st_file *f, const char *path, fl_err *err) {
    for (int i = 0; i < f->n_tensors; i++) {
        const fl_st_tensor *t = &f->tensors[i];
        if (strstr(t->name, ".lora_A.") || strstr(t->name, ".lora_B.")) continue;
        char name[FL_VIEW_NAME_MAX + 32], *wrapped;
        snprintf(name, sizeof name, "%s",
                 strncmp(t->name, PREFIX, sizeof PREFIX - 1) ? t->name
                                                             : t->name + sizeof PREFIX - 1);
        if ((wrapped = strstr(name, ".base_layer.")) != NULL)
            memmove(wrapped, wrapped + 11, strlen(wrapped + 11) + 1);
        int v = fl_params_find(&m->params, name);
        if (v < 0)
            return fl_err_set(err, FL_EINPUT, "%s: tensor '%s' matches nothing in the model", path,
                              t->name);
        const fl_view *view = &m->params.views[v];
        float *dst = m->params.data + view->offset;
        int rc = fl_st_read_into(f, t->name, view->ndim, view->shape, dst, err);
        if (!rc && (rc = fl_values_check_finite(dst, view->numel, t->name, err)))
            fl_err_prefix(err, path);
        if (rc) return rc;
    }
    return FL_OK;
}

int fl_model_load_adapter(fl_model *m, const char *dir, fl_err *err) {
    if (m->trainable || m->arena)
        return fl_err_set(err, FL_EINTERNAL, "an adapter must be loaded before training or passes");
    char path[1024], *text = NULL;
    size_t len;
    if (fl_path_join(path, sizeof path, dir, "adapter_config.json", err) ||
        fl_read_file(path, &text, &len, 1 << 20, err))
        return err ? err->code : FL_EINPUT;
    cJSON *config = cJSON_Parse(text);
    const cJSON *r = config ? cJSON_GetObjectItemCaseSensitive(config, "r") : NULL;
    const cJSON *alpha = config ? cJSON_GetObjectItemCaseSensitive(config, "lora_alpha") : NULL;
    int rc =
        config ? check_config(config, path, err) : fl_err_set(err, FL_EINPUT, "%s: not JSON", path);
    fl_st_file f = {0};
    fl_lora_spec layers = {0}; /* only its layer mask */
    if (!rc) rc = read_layers(config, m, &layers, path, err);
    if (!rc && !(rc = fl_path_join(path, sizeof path, dir, "adapter_model.safetensors", err)))
        rc = fl_st_open(&f, path, err);
    if (!rc) rc = attach(m, &f, config, &layers, path, err);
    if (!rc) rc = replace_base(m, &f, path, err);
    if (!rc) {
        const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(config, "lora_dropout");
        m->lora =
            (fl_lora_spec){.rank = (int)r->valuedouble,
                           .alpha = (float)alpha->valuedouble,
                           .dropout = cJSON_IsNumber(dropout) ? (float)dropout->valuedouble : 0};
        memcpy(m->lora.layer_mask, layers.layer_mask, sizeof m->lora.layer_mask);
        m->has_lora = 1;
        m->trainable = &m->lora_params;
        m->trainable_grads = &m->lora_grads;
        m->loaded_config = text;
        text = NULL;
    } else {
        fl_params_free(&m->lora_params);
        fl_params_free(&m->lora_grads);
        free(m->adapters);
        m->adapters = NULL;
        m->n_adapters = 0;
        m->max_rank = 0;
    }
    fl_st_close(&f);
    cJSON_Delete(config);
    free(text);
    return rc;
}

int fl_model_merge_adapter(fl_model *m, fl_err *err) {
    if (!m->has_lora) return fl_err_set(err, FL_EINTERNAL, "the model has no adapter to merge");
    size_t biggest = 0;
    for (int i = 0; i < m->n_adapters; i++) {
        size_t n = (size_t)m->adapters[i].oc * m->adapters[i].ic;
        if (n > biggest) biggest = n;
    }
    float *delta = fl_alloc(biggest * sizeof(float), err);
    if (!delta) return FL_ENOMEM;
    for (int i = 0; i < m->n_adapters; i++) {
        const fl_adapter *ad = &m->adapters[i];
        const fl_module *mod = ad->target;
        const float *A = m->lora_params.data + m->lora_params.views[ad->a].offset;
        const float *B = m->lora_params.data + m->lora_params.views[ad->b].offset;
        fl_gemm(0, 0, ad->oc, ad->ic, ad->rank, ad->scale, B, ad->rank, A, ad->ic, 0.0f, delta,
                ad->ic); /* (oc, ic) = scale * B A */
        float *W = m->params.data + m->params.views[mod->w].offset;
        int col = ad->out_col - mod->out_col; /* first row (or column) of W the adapter covers */
        for (int o = 0; o < ad->oc; o++)
            for (int k = 0; k < ad->ic; k++) {
                float d = delta[(size_t)o * ad->ic + k];
                if (mod->w_in_out)
                    W[(size_t)k * mod->oc + col + o] += d;
                else
                    W[(size_t)(col + o) * mod->ic + k] += d;
            }
    }
    free(delta);
    /* Trained base tensors go home, then the adapters are gone: the base is the merged model. */
    for (int v = 0; m->base_in_lora && v < m->params.n_views; v++)
        if (m->base_in_lora[v] >= 0)
            memcpy(m->params.data + m->params.views[v].offset,
                   m->lora_params.data + m->lora_params.views[m->base_in_lora[v]].offset,
                   m->params.views[v].numel * sizeof(float));
    free(m->base_in_lora);
    m->base_in_lora = NULL;
    fl_params_free(&m->lora_params);
    fl_params_free(&m->lora_grads);
    free(m->adapters);
    m->adapters = NULL;
    m->n_adapters = m->has_lora = m->max_rank = 0;
    m->trainable = m->trainable_grads = NULL;
    free(m->arena); /* its LoRA buffers were laid out for the adapters */
    m->arena = NULL;
    m->arena_B = m->arena_T = m->arena_train = 0;
    return FL_OK;
}
