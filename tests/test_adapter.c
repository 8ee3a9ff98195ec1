/* test_adapter.c — an adapter directory means what PEFT reads it to mean. The test saves adapters
 * of LoRA models (GPT-2 with its fused c_attn split by role or adapted whole, LLaMA and Qwen2 on
 * every role), then
 * applies the files the way peft does — target_modules matched by name suffix, rank and alpha from
 * rank_pattern/alpha_pattern or r/lora_alpha, W += (alpha/r) B A (transposed for fan_in_fan_out) —
 * to a fresh copy of the base, and requires the same logits as the LoRA model. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fileio.h"
#include "fedllm/model.h"
#include "fedllm/rng.h"
#include "fedllm/safetensors.h"
#include "testutil.h"

enum { B = 2, T = 8 };

static fl_model *tiny(fl_arch arch) {
    fl_config c = tu_config(arch, 40, 16, 4, 24, 16, arch == FL_ARCH_GPT2);
    fl_err err;
    fl_model *m = fl_model_new_random(&c, 5, &err);
    fl_rng_normal(fl_model_params(m)->data, fl_model_params(m)->numel, 77, 0, 0.2f);
    return m;
}

static const cJSON *pattern_value(const cJSON *config, const char *key, const char *module) {
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(config, key), *item;
    cJSON_ArrayForEach(item, pattern) {
        size_t n = strlen(module), k = strlen(item->string);
        if (n >= k && strcmp(module + n - k, item->string) == 0 &&
            (n == k || module[n - k - 1] == '.'))
            return item;
    }
    return NULL;
}

/* PEFT's target matching: the module's full name equals a target or ends with "." + target. */
static int targeted(const cJSON *config, const char *module) {
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(config, "target_modules")) {
        size_t n = strlen(module), k = strlen(t->valuestring);
        if (n >= k && strcmp(module + n - k, t->valuestring) == 0 &&
            (n == k || module[n - k - 1] == '.'))
            return 1;
    }
    return 0;
}

static void check_arch(fl_arch arch, const char *roles, unsigned train_base) {
    fl_err err;
    fl_model *m = tiny(arch), *merged = tiny(arch);
    fl_lora_spec spec = {.rank = 3, .alpha = 7, .seed = 3, .train_base = train_base};
    CHECK(fl_lora_parse_targets(roles, arch, &spec.role_mask, &err) == 0, "%s", err.msg);
    CHECK(fl_model_add_lora(m, &spec, &err) == 0, "%s", err.msg);
    fl_params *lora = fl_model_trainable(m);
    fl_rng_normal(lora->data, lora->numel, 99, 0, 0.3f);
    int32_t tokens[B * T];
    for (int i = 0; i < B * T; i++)
        tokens[i] = (int32_t)(fl_rng_uniform_at(4, 0, (size_t)i) * 40);
    fl_pass_result r;
    CHECK(fl_model_forward(m, tokens, NULL, B, T, FL_PASS_LOGITS, 0, &r, &err) == 0, "%s", err.msg);
    size_t n_logits = (size_t)B * T * 40;
    float *want = malloc(n_logits * sizeof(float));
    memcpy(want, r.logits, n_logits * sizeof(float));

    const char *dir = tu_tmpdir("test_adapter");
    CHECK(fl_model_save_adapter(m, dir, "base", &err) == 0, "%s", err.msg);
    char path[1024], *json;
    size_t len;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    CHECK(fl_read_file(path, &json, &len, 1 << 20, &err) == 0, "%s", err.msg);
    cJSON *config = cJSON_Parse(json);
    free(json);
    int fan_in_fan_out = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(config, "fan_in_fan_out"));
    double r_default = cJSON_GetObjectItemCaseSensitive(config, "r")->valuedouble;
    double alpha_default = cJSON_GetObjectItemCaseSensitive(config, "lora_alpha")->valuedouble;
    fl_st_file f;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    CHECK(fl_st_open(&f, path, &err) == 0, "%s", err.msg);

    /* Every linear module of the base: targeted by name exactly when the file has its factors. */
    fl_params *base = fl_model_params(merged);
    int applied = 0;
    for (int v = 0; v < base->n_views; v++) {
        fl_view *w = &base->views[v];
        size_t n = strlen(w->name);
        if (w->ndim != 2 || strstr(w->name, "wte") || strstr(w->name, "wpe") ||
            strstr(w->name, "embed") || strstr(w->name, "lm_head"))
            continue;
        char module[FL_VIEW_NAME_MAX], a_name[256], b_name[256];
        snprintf(module, sizeof module, "%.*s", (int)(n - 7), w->name); /* drop ".weight" */
        snprintf(a_name, sizeof a_name, "base_model.model.%s.lora_A.weight", module);
        snprintf(b_name, sizeof b_name, "base_model.model.%s.lora_B.weight", module);
        const fl_st_tensor *ta = fl_st_find(&f, a_name), *tb = fl_st_find(&f, b_name);
        CHECK(targeted(config, module) == (ta != NULL), "%s: target_modules %s it but the file %s",
              module, targeted(config, module) ? "match" : "miss", ta ? "has factors" : "has none");
        if (!ta || !tb) continue;
        const cJSON *rp = pattern_value(config, "rank_pattern", module);
        const cJSON *ap = pattern_value(config, "alpha_pattern", module);
        double rank = rp ? rp->valuedouble : r_default,
               alpha = ap ? ap->valuedouble : alpha_default;
        int R = (int)ta->shape[0], in = (int)ta->shape[1], out = (int)tb->shape[0];
        CHECK(R == (int)rank && tb->shape[1] == R, "%s: rank %d vs config %g", module, R, rank);
        float *A = malloc(ta->numel * sizeof(float)), *Bm = malloc(tb->numel * sizeof(float));
        fl_st_to_f32(ta, A, NULL);
        fl_st_to_f32(tb, Bm, NULL);
        float *W = base->data + w->offset;
        for (int o = 0; o < out; o++)
            for (int i = 0; i < in; i++) {
                double delta = 0;
                for (int k = 0; k < R; k++)
                    delta += (double)Bm[o * R + k] * A[k * in + i];
                float *cell = fan_in_fan_out ? &W[(size_t)i * out + o] : &W[(size_t)o * in + i];
                *cell += (float)(alpha / rank * delta);
            }
        free(A);
        free(Bm);
        applied++;
    }
    /* modules_to_save: trained base tensors replace the base's, under their own names. */
    for (int i = 0; i < f.n_tensors; i++) {
        const fl_st_tensor *t = &f.tensors[i];
        if (strstr(t->name, ".lora_")) continue;
        char base_name[256], *wrapped;
        snprintf(base_name, sizeof base_name, "%s", t->name + strlen("base_model.model."));
        if ((wrapped = strstr(base_name, ".base_layer.")) != NULL) /* bias of a LoRA module */
            memmove(wrapped, wrapped + 11, strlen(wrapped + 11) + 1);
        float *dst = fl_params_get(base, base_name);
        CHECK(strncmp(t->name, "base_model.model.", 17) == 0 && dst, "%s: unknown tensor", t->name);
        if (dst) fl_st_to_f32(t, dst, NULL), applied++;
    }
    CHECK(applied > 0, "no adapter applied");
    CHECK(fl_model_forward(merged, tokens, NULL, B, T, FL_PASS_LOGITS, 0, &r, &err) == 0, "%s",
          err.msg);
    /* (W + s B A) x against W x + s B (A x): the same function, its sums in other orders. */
    const fl_config *c = fl_model_config(m);
    double depth = tu_depth_forward(c, T) + tu_depth_lora(c, spec.rank);
    double d = tu_rounding_excess(r.logits, want, n_logits, depth);
    CHECK(d <= 1,
          "%s (%s): PEFT-merged logits differ from the LoRA model by %.3g of the fp32 bound",
          fl_arch_name(arch), roles, d);
    fl_st_close(&f);
    cJSON_Delete(config);

    /* The directory loads back onto a fresh base and gives the same logits; merged, too. */
    fl_model *reloaded = tiny(arch);
    CHECK(fl_model_load_adapter(reloaded, dir, &err) == 0, "%s", err.msg);
    CHECK(fl_model_forward(reloaded, tokens, NULL, B, T, FL_PASS_LOGITS, 0, &r, &err) == 0, "%s",
          err.msg);
    d = tu_rounding_excess(r.logits, want, n_logits, depth);
    CHECK(d <= 1, "%s (%s): reloaded adapter differs by %.3g of the fp32 bound", fl_arch_name(arch),
          roles, d);
    CHECK(fl_model_merge_adapter(reloaded, &err) == 0, "%s", err.msg);
    CHECK(fl_model_forward(reloaded, tokens, NULL, B, T, FL_PASS_LOGITS, 0, &r, &err) == 0, "%s",
          err.msg);
    d = tu_rounding_excess(r.logits, want, n_logits, depth);
    CHECK(d <= 1, "%s (%s): merged model differs by %.3g of the fp32 bound", fl_arch_name(arch),
          roles, d);
    CHECK(fl_model_trainable(reloaded) == NULL, "a merged model keeps no adapter");
    fl_model_free(reloaded);
    free(want);
    fl_model_free(m);
    fl_model_free(merged);
}

/* Training with dropout means the same thing split by role or merged: GPT-2's q/k/v adapters
 * draw c_attn's one mask, so the merged c_attn adapter (as peft holds it) gives the same loss. */
static void check_dropout_matches_merged(void) {
    fl_err err;
    fl_model *split = tiny(FL_ARCH_GPT2), *merged = tiny(FL_ARCH_GPT2);
    fl_lora_spec spec = {.rank = 2, .alpha = 4, .dropout = 0.5f, .seed = 0};
    fl_lora_parse_targets("attn_q,attn_k,attn_v", FL_ARCH_GPT2, &spec.role_mask, &err);
    fl_model_add_lora(split, &spec, &err);
    fl_rng_normal(fl_model_trainable(split)->data, fl_model_trainable(split)->numel, 5, 0, 0.3f);
    const char *dir = tu_tmpdir("test_adapter_dropout");
    CHECK(fl_model_save_adapter(split, dir, "base", &err) == 0, "%s", err.msg);
    CHECK(fl_model_load_adapter(merged, dir, &err) == 0, "%s", err.msg);
    int32_t tokens[B * T], targets[B * T];
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (int32_t)(fl_rng_uniform_at(4, 0, (size_t)i) * 40);
        targets[i] = (int32_t)(fl_rng_uniform_at(6, 0, (size_t)i) * 40);
    }
    fl_pass_result a, b;
    fl_model_set_dropout(split, 1, 3);
    fl_model_set_dropout(merged, 1, 3);
    fl_model_forward(split, tokens, targets, B, T, FL_PASS_TRAIN, 0, &a, &err);
    fl_model_forward(merged, tokens, targets, B, T, FL_PASS_TRAIN, 0, &b, &err);
    CHECK(fabs(a.loss_sum - b.loss_sum) < 1e-5 * fabs(a.loss_sum),
          "dropout: split q/k/v loss %.7f, merged c_attn %.7f", a.loss_sum, b.loss_sum);
    fl_model_set_dropout(split, 0, 0);
    fl_model_forward(split, tokens, targets, B, T, FL_PASS_TRAIN, 0, &b, &err);
    CHECK(fabs(a.loss_sum - b.loss_sum) > 1e-4, "dropout 0.5 changed nothing");
    fl_model_free(split);
    fl_model_free(merged);
}

/* Adapters that do not fit are refused with the file named: another architecture, other shapes,
 * another PEFT method. */
static void check_refusals(void) {
    fl_err err;
    fl_model *gpt2 = tiny(FL_ARCH_GPT2);
    fl_lora_spec spec = {.rank = 2, .alpha = 4, .role_mask = 1u << FL_ROLE_ATTN_O};
    fl_model_add_lora(gpt2, &spec, &err);
    const char *dir = tu_tmpdir("test_adapter_refusals");
    CHECK(fl_model_save_adapter(gpt2, dir, "base", &err) == 0, "%s", err.msg);
    fl_model *llama = tiny(FL_ARCH_LLAMA);
    CHECK(fl_model_load_adapter(llama, dir, &err) == FL_EINPUT &&
              strstr(err.msg, "adapter_model") && strstr(err.msg, "does not have"),
          "a GPT-2 adapter on LLaMA: %s", err.msg);
    fl_model_free(llama);
    fl_config wide = tu_config(FL_ARCH_GPT2, 40, 32, 4, 24, 16, 1);
    fl_model *other = fl_model_new_random(&wide, 1, &err);
    CHECK(fl_model_load_adapter(other, dir, &err) == FL_EINPUT &&
              strstr(err.msg, "expected lora_A"),
          "mismatched shapes: %s", err.msg);
    fl_model_free(other);
    char path[1024];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    const char *prefix = "{\"peft_type\": \"PREFIX_TUNING\", \"r\": 2, \"lora_alpha\": 4}";
    fl_write_file_atomic(path, prefix, strlen(prefix), &err);
    fl_model *again = tiny(FL_ARCH_GPT2);
    CHECK(fl_model_load_adapter(again, dir, &err) == FL_EINPUT && strstr(err.msg, "peft_type"),
          "another PEFT method: %s", err.msg);
    fl_model_free(again);
    fl_model_free(gpt2);
}

/* A target named by HF module means that module, as in PEFT: GPT-2's "c_attn" is one adapter on
 * the fused q/k/v matrix (A (r, C), B (3C, r): 4rC values a layer, not the roles' 6rC), saved
 * under PEFT's name with no rank_pattern; the roles keep their meaning; naming both is refused. */
static void check_module_targets(void) {
    fl_err err;
    unsigned mask = 0, qkv = 7u;
    CHECK(fl_lora_parse_targets("c_attn", FL_ARCH_GPT2, &mask, &err) == 0 && mask == FL_LORA_C_ATTN,
          "c_attn: mask %#x", mask);
    CHECK(fl_lora_parse_targets("attn.c_attn,c_fc", FL_ARCH_GPT2, &mask, &err) == 0 &&
              mask == (FL_LORA_C_ATTN | 1u << FL_ROLE_MLP_UP),
          "attn.c_attn,c_fc: mask %#x", mask);
    CHECK(fl_lora_parse_targets("attn_q,attn_k,attn_v", FL_ARCH_GPT2, &mask, &err) == 0 &&
              mask == qkv,
          "roles: mask %#x", mask);
    CHECK(fl_lora_parse_targets("q_proj,v_proj", FL_ARCH_LLAMA, &mask, &err) == 0 &&
              mask == (1u << FL_ROLE_ATTN_Q | 1u << FL_ROLE_ATTN_V),
          "LLaMA modules: mask %#x", mask);
    CHECK(fl_lora_parse_targets("c_attn,attn_v", FL_ARCH_GPT2, &mask, &err) == FL_EINPUT &&
              strstr(err.msg, "c_attn") && strstr(err.msg, "attn_q"),
          "c_attn beside a q/k/v role: %s", err.msg);
    CHECK(fl_lora_parse_targets("c_attn", FL_ARCH_LLAMA, &mask, &err) == FL_EINPUT,
          "c_attn on LLaMA accepted");
    fl_lora_spec spec = {.rank = 3, .alpha = 6, .role_mask = FL_LORA_C_ATTN | qkv};
    fl_model *m = tiny(FL_ARCH_GPT2);
    CHECK(fl_model_add_lora(m, &spec, &err) == FL_EINPUT, "c_attn and its roles both added");
    fl_model_free(m);
    spec.role_mask = FL_LORA_C_ATTN;
    m = tiny(FL_ARCH_LLAMA);
    CHECK(fl_model_add_lora(m, &spec, &err) == FL_EINPUT, "c_attn added to LLaMA");
    fl_model_free(m);

    /* the trained set: per layer one A (3, C) and one B (3C, 3) */
    m = tiny(FL_ARCH_GPT2);
    const fl_config *c = fl_model_config(m);
    int C = c->d_model;
    CHECK(fl_model_add_lora(m, &spec, &err) == 0, "%s", err.msg);
    const fl_params *t = fl_model_trainable(m);
    size_t values = 0;
    for (int v = 0; v < t->n_views; v++)
        values += t->views[v].numel;
    CHECK(t->n_views == 2 * c->n_layer && values == (size_t)c->n_layer * 3 * (C + 3 * C),
          "c_attn adapter: %d views, %zu values (expected %d, %d)", t->n_views, values,
          2 * c->n_layer, c->n_layer * 3 * 4 * C);
    const float *a = fl_params_get(t, "base_model.model.transformer.h.1.attn.c_attn.lora_A.weight");
    const float *b = fl_params_get(t, "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight");
    int bv = fl_params_find(t, "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight");
    CHECK(a && b && t->views[bv].shape[0] == 3 * C && t->views[bv].shape[1] == 3,
          "c_attn factors missing or misshapen");
    fl_lora_spec roles = {.rank = 3, .alpha = 6, .role_mask = qkv};
    fl_model *per_role = tiny(FL_ARCH_GPT2);
    fl_model_add_lora(per_role, &roles, &err);
    size_t role_values = 0;
    for (int v = 0; v < fl_model_trainable(per_role)->n_views; v++)
        role_values += fl_model_trainable(per_role)->views[v].numel;
    CHECK(2 * role_values == 3 * values, "roles train %zu values, c_attn %zu: expected 3:2",
          role_values, values);
    fl_model_free(per_role);

    /* saved as PEFT saves it: the module's own tensors, c_attn in target_modules, no patterns */
    fl_rng_normal(fl_model_trainable(m)->data, fl_model_trainable(m)->numel, 12, 0, 0.3f);
    const char *dir = tu_tmpdir("test_adapter_c_attn");
    CHECK(fl_model_save_adapter(m, dir, "base", &err) == 0, "%s", err.msg);
    char path[1024];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    fl_st_file f;
    CHECK(fl_st_open(&f, path, &err) == 0, "%s", err.msg);
    const fl_st_tensor *fb =
        fl_st_find(&f, "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight");
    CHECK(f.n_tensors == 2 * c->n_layer && fb && fb->shape[0] == 3 * C && fb->shape[1] == 3,
          "saved c_attn adapter: %d tensors", f.n_tensors);
    fl_st_close(&f);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *text = NULL;
    size_t len;
    fl_read_file(path, &text, &len, 1 << 20, &err);
    cJSON *config = text ? cJSON_Parse(text) : NULL;
    const cJSON *targets = cJSON_GetObjectItemCaseSensitive(config, "target_modules");
    CHECK(cJSON_GetArraySize(targets) == 1 &&
              !strcmp(cJSON_GetArrayItem(targets, 0)->valuestring, "c_attn") &&
              !cJSON_GetObjectItemCaseSensitive(config, "rank_pattern") &&
              cJSON_GetObjectItemCaseSensitive(config, "r")->valueint == 3,
          "adapter_config.json: %s", text ? text : "unreadable");
    cJSON_Delete(config);
    free(text);
    fl_model_free(m);
}

/* adapter_config.json values of the wrong type or outside their range are refused with the file
 * and the key named, before anything loads; so are adapter weights that are NaN or infinite. */
static void check_config_values(void) {
    fl_err err;
    fl_model *made = tiny(FL_ARCH_LLAMA);
    fl_lora_spec spec = {.rank = 2,
                         .alpha = 4,
                         .role_mask = 1u << FL_ROLE_ATTN_Q,
                         .train_base = FL_TRAIN_BIASES | FL_TRAIN_NORMS};
    CHECK(fl_model_add_lora(made, &spec, &err) == 0, "%s", err.msg);
    fl_rng_normal(fl_model_trainable(made)->data, fl_model_trainable(made)->numel, 4, 0, 0.2f);
    const char *dir = tu_tmpdir("test_adapter_values");
    CHECK(fl_model_save_adapter(made, dir, "base", &err) == 0, "%s", err.msg);
    char path[1024];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    /* {"key": value} pairs replacing or joining a valid config; NULL expect: it must load. */
    static const struct {
        const char *fields, *expect;
    } cases[] = {
        {"\"lora_alpha\": 1e38", "lora_alpha: expected a number in (0, 16384], got 1e+38"},
        {"\"lora_alpha\": \"4\"", "lora_alpha: expected a number in (0, 16384], got a string"},
        {"\"lora_alpha\": 0", "lora_alpha"},
        {"\"lora_alpha\": -4", "lora_alpha"},
        {"\"lora_alpha\": null", "lora_alpha"},
        {"\"r\": 2.5", "r: expected an integer in 1..4096, got 2.5"},
        {"\"r\": 0", "r: expected an integer"},
        {"\"r\": 5000", "r: expected an integer"},
        {"\"r\": \"2\"", "r: expected an integer in 1..4096, got a string"},
        {"\"lora_dropout\": 5", "lora_dropout: expected a number in [0, 1), got 5"},
        {"\"lora_dropout\": 1", "lora_dropout"},
        {"\"lora_dropout\": -0.1", "lora_dropout"},
        {"\"lora_dropout\": \"0.1\"", "lora_dropout: expected a number in [0, 1), got a string"},
        {"\"use_rslora\": \"yes\"", "use_rslora: expected true or false, got a string"},
        {"\"use_rslora\": 1", "use_rslora: expected true or false, got a number"},
        {"\"fan_in_fan_out\": \"false\"", "fan_in_fan_out"},
        {"\"use_dora\": true", "use_dora"},
        {"\"bias\": \"some\"", "bias"},
        {"\"rank_pattern\": {\"q_proj\": 0}", "rank_pattern['q_proj']: expected an integer"},
        {"\"rank_pattern\": {\"q_proj\": \"2\"}", "rank_pattern['q_proj']"},
        {"\"rank_pattern\": [2]", "rank_pattern: expected an object"},
        {"\"alpha_pattern\": {\"q_proj\": 1e30}", "alpha_pattern['q_proj']"},
        {"\"target_modules\": 5", "target_modules"},
        {"\"modules_to_save\": [1]", "modules_to_save"},
        {"\"layer_replication\": [[0, 1]]", "layer_replication"},
        /* what peft writes (nulls, empty patterns, false flags) and legitimate values still load */
        {"\"lora_dropout\": null, \"rank_pattern\": {}, \"alpha_pattern\": {}, "
         "\"use_rslora\": false, \"use_dora\": false, \"fan_in_fan_out\": false, "
         "\"layer_replication\": null, \"task_type\": null, \"target_modules\": \".*q_proj\"",
         NULL},
        {"\"lora_alpha\": 16384, \"lora_dropout\": 0.99, \"use_rslora\": true, "
         "\"rank_pattern\": {\"q_proj\": 2}, \"alpha_pattern\": {\"q_proj\": 0.5}",
         NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        /* a valid config with the case's keys replaced or added */
        cJSON *config = cJSON_Parse("{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, "
                                    "\"lora_dropout\": 0, \"bias\": \"all\", "
                                    "\"target_modules\": [\"q_proj\"]}");
        char fields[512];
        snprintf(fields, sizeof fields, "{%s}", cases[i].fields);
        cJSON *extra = cJSON_Parse(fields), *item;
        CHECK(extra != NULL, "case %zu is not JSON", i);
        while (extra && extra->child) {
            item = cJSON_DetachItemViaPointer(extra, extra->child);
            char key[64];
            snprintf(key, sizeof key, "%s", item->string);
            cJSON_DeleteItemFromObjectCaseSensitive(config, key);
            cJSON_AddItemToObject(config, key, item);
        }
        cJSON_Delete(extra);
        char *text = cJSON_Print(config);
        cJSON_Delete(config);
        fl_write_file_atomic(path, text, strlen(text), &err);
        free(text);
        fl_model *m = tiny(FL_ARCH_LLAMA);
        int rc = fl_model_load_adapter(m, dir, &err);
        if (cases[i].expect)
            CHECK(rc == FL_EINPUT && strstr(err.msg, path) && strstr(err.msg, cases[i].expect) &&
                      !strchr(err.msg, '\n') && fl_model_trainable(m) == NULL,
                  "%s: got %d: %s", cases[i].fields, rc, rc ? err.msg : "accepted");
        else
            CHECK(rc == FL_OK, "%s: %s", cases[i].fields, err.msg);
        fl_model_free(m);
    }
    /* Non-finite weights: a LoRA factor, then a trained bias (replaced into the base). */
    fl_model_save_adapter(made, dir, "base", &err);
    fl_params *t = fl_model_trainable(made);
    int b = fl_model_lora_view(made, 1, FL_ROLE_ATTN_Q, 1);
    t->data[t->views[b].offset + 3] = NAN;
    fl_model_save_adapter(made, dir, "base", &err);
    fl_model *m = tiny(FL_ARCH_LLAMA);
    CHECK(fl_model_load_adapter(m, dir, &err) == FL_EINPUT &&
              strstr(err.msg, "adapter_model.safetensors") && strstr(err.msg, t->views[b].name) &&
              strstr(err.msg, "NaN at element 3"),
          "NaN in lora_B: %s", err.msg);
    fl_model_free(m);
    t->data[t->views[b].offset + 3] = 0;
    int norm = -1;
    for (int v = 0; v < t->n_views; v++)
        if (strstr(t->views[v].name, "norm")) norm = v;
    CHECK(norm >= 0, "no trained norm in the adapter");
    t->data[t->views[norm].offset] = INFINITY;
    fl_model_save_adapter(made, dir, "base", &err);
    m = tiny(FL_ARCH_LLAMA);
    CHECK(fl_model_load_adapter(m, dir, &err) == FL_EINPUT &&
              strstr(err.msg, "adapter_model.safetensors") && strstr(err.msg, "norm") &&
              strstr(err.msg, "+inf at element 0"),
          "inf in a trained norm: %s", err.msg);
    fl_model_free(m);
    fl_model_free(made);
}

int main(void) {
    unsigned norms_biases = FL_TRAIN_NORMS | FL_TRAIN_BIASES;
    check_arch(FL_ARCH_GPT2, "attn_q,attn_v", 0);
    check_arch(FL_ARCH_GPT2, "attn_k", 0);
    check_arch(FL_ARCH_GPT2, "attn_q,attn_k,attn_v,attn_o,mlp_up,mlp_down", 0);
    check_arch(FL_ARCH_GPT2, "mlp_down", norms_biases);
    check_arch(FL_ARCH_LLAMA, "attn_q,attn_k,attn_v,attn_o,mlp_gate,mlp_up,mlp_down", 0);
    check_arch(FL_ARCH_LLAMA, "attn_q", FL_TRAIN_NORMS);
    check_arch(FL_ARCH_QWEN2, "q_proj,v_proj", norms_biases);
    check_arch(FL_ARCH_GPT2, "c_attn", 0);
    check_arch(FL_ARCH_GPT2, "c_attn,c_proj,c_fc", FL_TRAIN_BIASES);
    check_module_targets();
    check_refusals();
    check_config_values();
    check_dropout_matches_merged();
    return tu_finish("test_adapter");
}
