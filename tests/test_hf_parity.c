/* test_hf_parity.c — fedllm against the real transformers and peft, without Python: model
 * directories that transformers' save_pretrained wrote (tiny random GPT-2, LLaMA, Qwen2 and
 * Mistral), adapters that peft wrote and adapters that `fedllm train` wrote, each with the logits
 * transformers/peft computed in float32 (tools/hf_parity.py made tests/fixtures/hf/; see
 * docs/parity.md). For every family fedllm must reproduce, within 1e-4 of the largest reference
 * logit:
 *   base            transformers' logits of the saved model,
 *   peft adapter    peft's logits with its own adapter (rank_pattern by module name and by one
 *                   layer's module, alpha_pattern, rsLoRA, fan_in_fan_out on GPT-2's Conv1D),
 *   fedllm adapter  peft's logits with the adapter fedllm trained (so peft reads fedllm's
 *                   adapters as fedllm means them);
 *   module adapter  GPT-2: an adapter fedllm trained with HF module names as targets (c_attn,
 *                   c_proj, c_fc), which must be the adapter peft makes of that LoraConfig: the
 *                   same tensor names as peft's own adapter on those modules, one adapter on the
 *                   fused c_attn (lora_B (3C, r)), peft's trainable parameter count, peft's logits.
 * The fixtures also cover checkpoint shapes, which the test confirms so that they keep doing so:
 * sharded checkpoints (GPT-2, Mistral), BF16 (Qwen2) and F16 (Mistral) weights, tied (GPT-2,
 * Qwen2) and untied (LLaMA, Mistral) heads, grouped-query attention (LLaMA, Qwen2: 4 heads over 2;
 * Mistral: 4 over 1). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fedllm/model.h"
#include "fedllm/safetensors.h"
#include "model/checkpoint.h"
#include "testutil.h"

#define FIXTURES  "tests/fixtures/hf"
#define TOLERANCE 1e-4

/* What a family's fixture is there to exercise. */
typedef struct family_case {
    const char *name;
    fl_arch arch;
    int sharded;            /* model.safetensors.index.json + shards */
    int tie_embeddings;     /* no lm_head.weight in the files */
    int n_kv_head;          /* of 4 attention heads */
    const char *dtype_from; /* a tensor whose stored dtype is `dtype` */
    fl_dtype dtype;
    int module_adapter; /* has fedllm-module-adapter/ (targets named by HF module) */
} family_case;

static const family_case FAMILIES[] = {
    {"gpt2", FL_ARCH_GPT2, 1, 1, 4, "transformer.wte.weight", FL_DTYPE_F32, 1},
    {"llama", FL_ARCH_LLAMA, 0, 0, 2, "model.embed_tokens.weight", FL_DTYPE_F32, 0},
    {"qwen2", FL_ARCH_QWEN2, 0, 1, 2, "model.embed_tokens.weight", FL_DTYPE_BF16, 0},
    {"mistral", FL_ARCH_MISTRAL, 1, 0, 1, "model.embed_tokens.weight", FL_DTYPE_F16, 0},
};

/* The adapters checked on top of the base, and the reference logits of each in expect.safetensors.
 */
typedef struct adapter_case {
    const char *label;
    const char *dir;    /* under the family's folder; NULL for the base model alone */
    const char *logits; /* tensor name in expect.safetensors */
} adapter_case;

static const adapter_case ADAPTERS[] = {
    {"base vs transformers", NULL, "logits"},
    {"peft's adapter vs peft", "peft-adapter", "peft_logits"},
    {"fedllm's adapter vs peft", "fedllm-adapter", "fedllm_adapter_logits"},
};
static const adapter_case MODULE_ADAPTER = {"module adapter vs peft", "fedllm-module-adapter",
                                            "fedllm_module_adapter_logits"};

/* max |a - b| / max |ref|: relative to the logits' scale, so near-zero entries do not dominate. */
static double scaled_diff(const float *a, const float *ref, size_t n) {
    double diff = 0, scale = 1e-12;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= diff)) diff = isnan(d) ? INFINITY : d;
        if (fabs((double)ref[i]) > scale) scale = fabs((double)ref[i]);
    }
    return diff / scale;
}

static int file_exists(const char *dir, const char *name) {
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

/* The saved directory has the traits the family's fixture is meant to cover. */
static void check_fixture_traits(const family_case *fc, const char *model_dir) {
    fl_err err;
    fl_config cfg;
    CHECK(fl_config_load(&cfg, model_dir, &err) == FL_OK, "%s", err.msg);
    CHECK(cfg.arch == fc->arch, "%s: model_type read as %s", fc->name, fl_arch_name(cfg.arch));
    CHECK(cfg.tie_embeddings == fc->tie_embeddings, "%s: tie_embeddings %d", fc->name,
          cfg.tie_embeddings);
    CHECK(cfg.n_head == 4 && cfg.n_kv_head == fc->n_kv_head, "%s: %d heads, %d key/value heads",
          fc->name, cfg.n_head, cfg.n_kv_head);
    CHECK(file_exists(model_dir, "model.safetensors.index.json") == fc->sharded,
          "%s: expected a %s checkpoint", fc->name, fc->sharded ? "sharded" : "single-file");
    fl_checkpoint *ck = malloc(sizeof *ck);
    if (!ck || fl_checkpoint_open(ck, model_dir, &err) != FL_OK) {
        CHECK(0, "%s", ck ? err.msg : "out of memory");
        free(ck);
        return;
    }
    CHECK(!fc->sharded || ck->n_files > 1, "%s: %d shard(s)", fc->name, ck->n_files);
    const fl_st_file *f = fl_checkpoint_find(ck, fc->dtype_from);
    const fl_st_tensor *t = f ? fl_st_find(f, fc->dtype_from) : NULL;
    CHECK(t && t->dtype == fc->dtype, "%s: %s stored as dtype %d, expected %d", fc->name,
          fc->dtype_from, t ? (int)t->dtype : -1, (int)fc->dtype);
    CHECK((fl_checkpoint_find(ck, "lm_head.weight") == NULL) == fc->tie_embeddings,
          "%s: lm_head.weight %s", fc->name, fc->tie_embeddings ? "saved though tied" : "missing");
    fl_checkpoint_close(ck);
    free(ck);
}

/* Loads the model (and adapter), runs the fixture's tokens in logits mode and compares. */
static void check_case(const family_case *fc, const adapter_case *ac, const fl_st_file *expect,
                       const int32_t *tokens, int B, int T) {
    char model_dir[256], adapter_dir[256];
    snprintf(model_dir, sizeof model_dir, FIXTURES "/%s/model", fc->name);
    fl_err err = {0};
    fl_model *m = fl_model_load(model_dir, &err);
    CHECK(m != NULL, "%s %s: %s", fc->name, ac->label, err.msg);
    if (!m) return;
    if (ac->dir) {
        snprintf(adapter_dir, sizeof adapter_dir, FIXTURES "/%s/%s", fc->name, ac->dir);
        int rc = fl_model_load_adapter(m, adapter_dir, &err);
        CHECK(rc == FL_OK, "%s %s: %s", fc->name, ac->label, err.msg);
        if (rc != FL_OK) {
            fl_model_free(m);
            return;
        }
    }
    const fl_st_tensor *ref_t = fl_st_find(expect, ac->logits);
    size_t V = (size_t)fl_model_config(m)->vocab_size, n = (size_t)B * T * V;
    CHECK(ref_t && ref_t->numel == n, "%s: expect.safetensors lacks %s of (%d, %d, %zu)", fc->name,
          ac->logits, B, T, V);
    float *ref = ref_t ? malloc(n * sizeof(float)) : NULL;
    fl_pass_result r;
    if (ref && ref_t->numel == n && fl_st_to_f32(ref_t, ref, &err) == FL_OK) {
        int rc = fl_model_forward(m, tokens, NULL, B, T, FL_PASS_LOGITS, 0, &r, &err);
        CHECK(rc == FL_OK, "%s %s: %s", fc->name, ac->label, err.msg);
        if (rc == FL_OK) {
            double d = scaled_diff(r.logits, ref, n);
            printf("%-8s %-26s max relative difference %.2g\n", fc->name, ac->label, d);
            CHECK(d <= TOLERANCE, "%s %s: max relative difference %.3g > %g", fc->name, ac->label,
                  d, TOLERANCE);
        }
    }
    free(ref);
    fl_model_free(m);
}

/* fedllm-module-adapter is what peft makes of the same LoraConfig: peft-adapter's tensor names
 * (peft's own adapter on the same target_modules), lora_B of c_attn over all 3C columns, and as
 * many trained values as peft's get_peft_model has (peft_module_trainable_params). */
static void check_module_adapter(const family_case *fc, const fl_st_file *expect) {
    char path[256];
    fl_err err;
    fl_st_file ours, peft;
    snprintf(path, sizeof path, FIXTURES "/%s/fedllm-module-adapter/adapter_model.safetensors",
             fc->name);
    if (fl_st_open(&ours, path, &err) != FL_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    snprintf(path, sizeof path, FIXTURES "/%s/peft-adapter/adapter_model.safetensors", fc->name);
    if (fl_st_open(&peft, path, &err) != FL_OK) {
        CHECK(0, "%s", err.msg);
        fl_st_close(&ours);
        return;
    }
    CHECK(ours.n_tensors == peft.n_tensors, "%s: %d tensors, peft's adapter has %d", fc->name,
          ours.n_tensors, peft.n_tensors);
    long values = 0;
    int fused = 0;
    for (int i = 0; i < ours.n_tensors; i++) {
        const fl_st_tensor *t = &ours.tensors[i], *p = fl_st_find(&peft, t->name);
        int is_b = strstr(t->name, ".lora_B.") != NULL;
        /* the rank differs (peft's fixture has rank_pattern c_attn 6), in and out must not */
        CHECK(p && t->ndim == 2 && p->ndim == 2 && t->shape[!is_b] == p->shape[!is_b],
              "%s: %s is not peft's", fc->name, t->name);
        if (strstr(t->name, "attn.c_attn.lora_B")) { /* (3C, r) against lora_A (r, C) */
            char a_name[FL_VIEW_NAME_MAX];
            snprintf(a_name, sizeof a_name, "%s", t->name);
            memcpy(strstr(a_name, "lora_B"), "lora_A", 6);
            const fl_st_tensor *a = fl_st_find(&ours, a_name);
            fused +=
                a && a->ndim == 2 && t->shape[0] == 3 * a->shape[1] && t->shape[1] == a->shape[0];
        }
        values += (long)t->numel;
    }
    CHECK(fused == 2, "%s: %d c_attn adapters over all 3C columns (one per layer expected)",
          fc->name, fused);
    const fl_st_tensor *count = fl_st_find(expect, "peft_module_trainable_params");
    int32_t peft_values = -1;
    CHECK(count && count->numel == 1 && fl_st_to_i32(count, &peft_values, &err) == FL_OK,
          "%s: expect.safetensors lacks peft_module_trainable_params", fc->name);
    CHECK(values == peft_values, "%s: fedllm trained %ld values, peft trains %d", fc->name, values,
          peft_values);
    printf("%-8s %-26s %ld trained values, as peft (%d)\n", fc->name, "module adapter", values,
           peft_values);
    fl_st_close(&ours);
    fl_st_close(&peft);
}

static void check_family(const family_case *fc) {
    char path[256];
    snprintf(path, sizeof path, FIXTURES "/%s/model", fc->name);
    check_fixture_traits(fc, path);
    snprintf(path, sizeof path, FIXTURES "/%s/expect.safetensors", fc->name);
    fl_st_file expect;
    fl_err err;
    if (fl_st_open(&expect, path, &err) != FL_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    const fl_st_tensor *ids = fl_st_find(&expect, "input_ids");
    CHECK(ids && ids->ndim == 2, "%s: input_ids (B, T) missing", path);
    int32_t *tokens = ids && ids->ndim == 2 ? malloc(ids->numel * sizeof(int32_t)) : NULL;
    if (tokens && fl_st_to_i32(ids, tokens, &err) == FL_OK)
        for (size_t i = 0; i < sizeof ADAPTERS / sizeof ADAPTERS[0]; i++)
            check_case(fc, &ADAPTERS[i], &expect, tokens, (int)ids->shape[0], (int)ids->shape[1]);
    if (tokens && fc->module_adapter) {
        check_case(fc, &MODULE_ADAPTER, &expect, tokens, (int)ids->shape[0], (int)ids->shape[1]);
        check_module_adapter(fc, &expect);
    }
    free(tokens);
    fl_st_close(&expect);
}

int main(void) {
    for (size_t i = 0; i < sizeof FAMILIES / sizeof FAMILIES[0]; i++)
        check_family(&FAMILIES[i]);
    return tu_finish("test_hf_parity");
}
