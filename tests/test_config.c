/* test_config.c — config.json for each family (as Hugging Face writes it), save → load
 * roundtrips, the presets, and the errors a user sees for a wrong or unsupported config. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/config.h"
#include "fedllm/fileio.h"
#include "testutil.h"

static const char *dir;

static const char *write_config(const char *name, const char *json) {
    static char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    fl_write_file_atomic(path, json, strlen(json), NULL);
    return path;
}

static int same_config(const fl_config *a, const fl_config *b) {
    return a->arch == b->arch && a->vocab_size == b->vocab_size && a->n_layer == b->n_layer &&
           a->d_model == b->d_model && a->n_head == b->n_head && a->n_kv_head == b->n_kv_head &&
           a->head_dim == b->head_dim && a->d_ff == b->d_ff && a->max_position == b->max_position &&
           a->norm_eps == b->norm_eps && (fl_config_is_gpt2(a) || a->rope_theta == b->rope_theta) &&
           a->tie_embeddings == b->tie_embeddings && a->qkv_bias == b->qkv_bias &&
           a->bos_token_id == b->bos_token_id && a->eos_token_id == b->eos_token_id;
}

static void test_load_families(void) {
    fl_config c;
    fl_err err = {0};
    /* GPT-2 small's config.json, trimmed of keys we ignore. */
    const char *path = write_config(
        "gpt2.json", "{\"activation_function\": \"gelu_new\", \"architectures\": "
                     "[\"GPT2LMHeadModel\"], \"bos_token_id\": 50256, \"eos_token_id\": 50256, "
                     "\"layer_norm_epsilon\": 1e-05, \"model_type\": \"gpt2\", \"n_ctx\": 1024, "
                     "\"n_embd\": 768, \"n_head\": 12, \"n_inner\": null, \"n_layer\": 12, "
                     "\"n_positions\": 1024, \"vocab_size\": 50257}");
    CHECK(fl_config_load(&c, path, &err) == FL_OK, "%s", err.msg);
    CHECK(c.arch == FL_ARCH_GPT2 && c.vocab_size == 50257 && c.n_layer == 12 && c.d_model == 768 &&
              c.n_head == 12 && c.n_kv_head == 12 && c.head_dim == 64 && c.d_ff == 3072 &&
              c.max_position == 1024 && c.norm_eps == 1e-5f && c.tie_embeddings == 1 &&
              c.qkv_bias == 1 && c.bos_token_id == 50256 && c.eos_token_id == 50256,
          "gpt2 fields");

    path = write_config("llama.json",
                        "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
                        "\"vocab_size\": 32000, \"num_hidden_layers\": 22, \"hidden_size\": 2048, "
                        "\"num_attention_heads\": 32, \"num_key_value_heads\": 4, "
                        "\"intermediate_size\": 5632, \"max_position_embeddings\": 2048, "
                        "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"rope_scaling\": null, "
                        "\"hidden_act\": \"silu\", \"attention_bias\": false, \"bos_token_id\": 1, "
                        "\"eos_token_id\": 2, \"torch_dtype\": \"bfloat16\"}");
    CHECK(fl_config_load(&c, path, &err) == FL_OK, "%s", err.msg);
    CHECK(c.arch == FL_ARCH_LLAMA && c.n_layer == 22 && c.d_model == 2048 && c.n_head == 32 &&
              c.n_kv_head == 4 && c.head_dim == 64 && c.d_ff == 5632 && c.max_position == 2048 &&
              c.norm_eps == 1e-5f && c.rope_theta == 10000.0f && c.tie_embeddings == 0 &&
              c.qkv_bias == 0 && c.bos_token_id == 1 && c.eos_token_id == 2,
          "llama fields");

    /* defaults: no num_key_value_heads, head_dim given, eps and theta absent, eos a list */
    path = write_config("llama2.json",
                        "{\"model_type\": \"llama\", \"vocab_size\": 100, \"num_hidden_layers\": 2,"
                        " \"hidden_size\": 64, \"num_attention_heads\": 4, \"head_dim\": 32, "
                        "\"intermediate_size\": 96, \"max_position_embeddings\": 128, "
                        "\"attention_bias\": true, \"tie_word_embeddings\": true, "
                        "\"eos_token_id\": [7, 9]}");
    CHECK(fl_config_load(&c, path, &err) == FL_OK, "%s", err.msg);
    CHECK(c.n_kv_head == 4 && c.head_dim == 32 && c.norm_eps == 1e-6f && c.rope_theta == 10000.0f &&
              c.qkv_bias == 1 && c.tie_embeddings == 1 && c.bos_token_id == -1 &&
              c.eos_token_id == 7,
          "llama defaults");

    path = write_config("qwen2.json",
                        "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", "
                        "\"vocab_size\": 151936, \"num_hidden_layers\": 24, \"hidden_size\": 896, "
                        "\"num_attention_heads\": 14, \"num_key_value_heads\": 2, "
                        "\"intermediate_size\": 4864, \"max_position_embeddings\": 32768, "
                        "\"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, "
                        "\"tie_word_embeddings\": true, \"use_sliding_window\": false, "
                        "\"sliding_window\": 32768, \"max_window_layers\": 21, "
                        "\"bos_token_id\": 151643, \"eos_token_id\": 151643}");
    CHECK(fl_config_load(&c, path, &err) == FL_OK, "%s", err.msg);
    CHECK(c.arch == FL_ARCH_QWEN2 && c.head_dim == 64 && c.n_kv_head == 2 && c.qkv_bias == 1 &&
              c.tie_embeddings == 1 && c.rope_theta == 1000000.0f && c.max_position == 32768,
          "qwen2 fields");

    path = write_config("qwen2b.json",
                        "{\"model_type\": \"qwen2\", \"vocab_size\": 100, \"num_hidden_layers\": 1,"
                        " \"hidden_size\": 32, \"num_attention_heads\": 2, "
                        "\"intermediate_size\": 64, \"max_position_embeddings\": 64}");
    CHECK(fl_config_load(&c, path, &err) == FL_OK, "%s", err.msg);
    CHECK(c.tie_embeddings == 0 && c.rope_theta == 10000.0f && c.qkv_bias == 1, "qwen2 defaults");

    /* Mistral 7B v0.1: the 4096-token window caps max_position */
    path = write_config("mistral.json",
                        "{\"model_type\": \"mistral\", \"vocab_size\": 32000, "
                        "\"num_hidden_layers\": 32, \"hidden_size\": 4096, "
                        "\"num_attention_heads\": 32, \"num_key_value_heads\": 8, "
                        "\"intermediate_size\": 14336, \"max_position_embeddings\": 32768, "
                        "\"sliding_window\": 4096, \"rope_theta\": 10000.0, "
                        "\"hidden_act\": \"silu\", \"bos_token_id\": 1, \"eos_token_id\": 2}");
    CHECK(fl_config_load(&c, path, &err) == FL_OK, "%s", err.msg);
    CHECK(c.arch == FL_ARCH_MISTRAL && c.n_kv_head == 8 && c.max_position == 4096 &&
              c.qkv_bias == 0 && c.tie_embeddings == 0,
          "mistral fields");

    /* a folder holding config.json */
    char sub[1200];
    snprintf(sub, sizeof sub, "%s/model", dir);
    fl_mkdirs(sub, NULL);
    write_config("model/config.json",
                 "{\"model_type\": \"gpt2\", \"vocab_size\": 300, \"n_layer\": 1, \"n_embd\": 8, "
                 "\"n_head\": 2, \"n_positions\": 16, \"n_inner\": 20, "
                 "\"tie_word_embeddings\": false}");
    CHECK(fl_config_load(&c, sub, &err) == FL_OK, "%s", err.msg);
    CHECK(c.d_ff == 20 && c.tie_embeddings == 0 && c.bos_token_id == -1, "folder form");
}

static void test_roundtrip(void) {
    const char *presets[] = {"tiny", "small", "gpt2-124m", "llama-110m"};
    fl_err err = {0};
    for (int a = 0; a < 4; a++)
        for (int p = 0; p < 4; p++) {
            fl_config c, back;
            CHECK(fl_config_preset(&c, (fl_arch)a, presets[p], &err) == FL_OK, "%s", err.msg);
            char path[1200];
            snprintf(path, sizeof path, "%s/rt_%s_%s.json", dir, fl_arch_name((fl_arch)a),
                     presets[p]);
            CHECK(fl_config_save(&c, path, &err) == FL_OK, "%s", err.msg);
            CHECK(fl_config_load(&back, path, &err) == FL_OK, "%s", err.msg);
            CHECK(same_config(&c, &back), "roundtrip %s %s", fl_arch_name((fl_arch)a), presets[p]);
        }
    /* unusual values survive too */
    fl_config c, back;
    fl_config_preset(&c, FL_ARCH_LLAMA, "tiny", &err);
    c.head_dim = 24, c.norm_eps = 3e-7f, c.rope_theta = 500000.0f, c.qkv_bias = 1;
    c.tie_embeddings = 1, c.bos_token_id = 3, c.eos_token_id = -1;
    char path[1200];
    snprintf(path, sizeof path, "%s/odd.json", dir);
    CHECK(fl_config_save(&c, path, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_config_load(&back, path, &err) == FL_OK && same_config(&c, &back), "odd roundtrip %s",
          err.msg);

    /* the HF keys transformers needs */
    char *text = NULL;
    fl_config_preset(&c, FL_ARCH_GPT2, "tiny", &err);
    fl_config_save(&c, path, &err);
    fl_read_file(path, &text, NULL, 1 << 20, &err);
    CHECK(text && strstr(text, "\"GPT2LMHeadModel\"") &&
              strstr(text, "\"model_type\":\t\"gpt2\"") &&
              strstr(text, "\"activation_function\":\t\"gelu_new\"") &&
              strstr(text, "\"n_ctx\":\t256") && strstr(text, "\"torch_dtype\":\t\"float32\"") &&
              strstr(text, "\"layer_norm_epsilon\":\t1e-05"),
          "gpt2 json: %s", text ? text : "(none)");
    free(text);
    fl_config_preset(&c, FL_ARCH_QWEN2, "tiny", &err);
    fl_config_save(&c, path, &err);
    fl_read_file(path, &text, NULL, 1 << 20, &err);
    CHECK(text && strstr(text, "\"Qwen2ForCausalLM\"") &&
              strstr(text, "\"hidden_act\":\t\"silu\"") &&
              strstr(text, "\"rope_theta\":\t1000000") && !strstr(text, "attention_bias") &&
              strstr(text, "\"num_key_value_heads\":\t2"),
          "qwen2 json: %s", text ? text : "(none)");
    free(text);
    fl_config_preset(&c, FL_ARCH_LLAMA, "tiny", &err);
    fl_config_save(&c, path, &err);
    fl_read_file(path, &text, NULL, 1 << 20, &err);
    CHECK(text && strstr(text, "\"LlamaForCausalLM\"") &&
              strstr(text, "\"attention_bias\":\tfalse") &&
              strstr(text, "\"rms_norm_eps\":\t1e-06") && strstr(text, "\"bos_token_id\":\tnull"),
          "llama json: %s", text ? text : "(none)");
    free(text);
    fl_config_preset(&c, FL_ARCH_MISTRAL, "tiny", &err);
    fl_config_save(&c, path, &err);
    fl_read_file(path, &text, NULL, 1 << 20, &err);
    CHECK(text && strstr(text, "\"MistralForCausalLM\"") &&
              strstr(text, "\"model_type\":\t\"mistral\""),
          "mistral json");
    free(text);

    /* save refuses an invalid config and writes nothing */
    c.n_head = 0;
    snprintf(path, sizeof path, "%s/invalid.json", dir);
    CHECK(fl_config_save(&c, path, &err) == FL_EINPUT, "invalid config saved");
    CHECK(fl_read_file(path, &text, NULL, 1 << 20, NULL) != FL_OK, "nothing written");
}

static void expect_error(const char *name, const char *json, const char *phrase) {
    fl_config c;
    fl_err err = {0};
    const char *path = write_config(name, json);
    int rc = fl_config_load(&c, path, &err);
    CHECK(rc == FL_EINPUT && strstr(err.msg, path) && strstr(err.msg, phrase),
          "%s: rc %d, '%s', expected '%s'", name, rc, err.msg, phrase);
}

#define LLAMA_BASE                                                                                 \
    "\"vocab_size\": 100, \"num_hidden_layers\": 2, \"hidden_size\": 64, "                         \
    "\"num_attention_heads\": 4, \"intermediate_size\": 96, \"max_position_embeddings\": 128"
#define GPT2_BASE                                                                                  \
    "\"model_type\": \"gpt2\", \"vocab_size\": 100, \"n_layer\": 2, \"n_embd\": 64, "              \
    "\"n_positions\": 128"

static void test_errors(void) {
    expect_error("bert.json", "{\"model_type\": \"bert\"}",
                 "model_type: 'bert' is not supported (expected gpt2, llama, qwen2 or mistral)");
    expect_error("notype.json", "{\"vocab_size\": 3}", "model_type: missing, expected a string");
    expect_error("typenum.json", "{\"model_type\": 5}", "model_type");
    expect_error("nohead.json", "{" GPT2_BASE "}", "n_head: missing, expected an integer");
    expect_error("strlayer.json",
                 "{\"model_type\": \"llama\", \"vocab_size\": 100, \"num_hidden_layers\": \"2\", "
                 "\"hidden_size\": 64, \"num_attention_heads\": 4, \"intermediate_size\": 96, "
                 "\"max_position_embeddings\": 128}",
                 "num_hidden_layers: expected an integer");
    expect_error("fraclayer.json", "{" GPT2_BASE ", \"n_head\": 2.5}",
                 "n_head: expected an integer");
    expect_error("epsstr.json", "{" GPT2_BASE ", \"n_head\": 4, \"layer_norm_epsilon\": \"x\"}",
                 "layer_norm_epsilon: expected a number");
    expect_error("tiestr.json",
                 "{\"model_type\": \"llama\", " LLAMA_BASE ", \"tie_word_embeddings\": 1}",
                 "tie_word_embeddings: expected true or false");
    expect_error("mlpbias.json", "{\"model_type\": \"llama\", " LLAMA_BASE ", \"mlp_bias\": true}",
                 "mlp_bias: true is not supported");
    expect_error("act.json",
                 "{\"model_type\": \"llama\", " LLAMA_BASE ", \"hidden_act\": \"gelu\"}",
                 "hidden_act: 'gelu' is not supported");
    expect_error("gpt2act.json",
                 "{" GPT2_BASE ", \"n_head\": 4, \"activation_function\": \"relu\"}",
                 "activation_function: 'relu' is not supported");
    expect_error("qwensw.json",
                 "{\"model_type\": \"qwen2\", " LLAMA_BASE ", \"use_sliding_window\": true}",
                 "use_sliding_window");
    expect_error("kvheads.json",
                 "{\"model_type\": \"llama\", " LLAMA_BASE ", \"num_key_value_heads\": 3}",
                 "num_key_value_heads (3) must divide num_attention_heads (4)");
    expect_error("oddhd.json", "{\"model_type\": \"llama\", " LLAMA_BASE ", \"head_dim\": 15}",
                 "head_dim (15) must be even");
    expect_error("zero.json",
                 "{\"model_type\": \"llama\", \"vocab_size\": 0, \"num_hidden_layers\": 2, "
                 "\"hidden_size\": 64, \"num_attention_heads\": 4, \"intermediate_size\": 96, "
                 "\"max_position_embeddings\": 128}",
                 "vocab_size: expected an integer in 1..");
    expect_error("huge.json", "{" GPT2_BASE ", \"n_head\": 4, \"n_inner\": 2000000000}", "n_inner");
    expect_error("indivisible.json", "{" GPT2_BASE ", \"n_head\": 5}",
                 "n_embd (64) must be n_head (5)");
    expect_error("eos.json", "{" GPT2_BASE ", \"n_head\": 4, \"eos_token_id\": 100}",
                 "eos_token_id: 100 is outside the vocabulary");
    expect_error("eosstr.json", "{" GPT2_BASE ", \"n_head\": 4, \"eos_token_id\": \"x\"}",
                 "eos_token_id: expected an integer");
    expect_error("notjson.json", "{\"model_type\": \"gpt2\",", "not valid JSON");
    expect_error("array.json", "[1, 2]", "expected a JSON object");
    expect_error("empty.json", "", "not valid JSON");

    fl_config c;
    fl_err err = {0};
    CHECK(fl_config_load(&c, "/nonexistent/dir", &err) == FL_EINPUT &&
              strstr(err.msg, "/nonexistent/dir/config.json"),
          "missing file: %s", err.msg);
}

static void test_presets(void) {
    const char *presets[] = {"tiny", "small", "gpt2-124m", "llama-110m"};
    fl_err err = {0};
    fl_config c;
    for (int a = 0; a < 4; a++)
        for (int p = 0; p < 4; p++) {
            CHECK(fl_config_preset(&c, (fl_arch)a, presets[p], &err) == FL_OK, "%s", err.msg);
            CHECK(fl_config_validate(&c, presets[p], &err) == FL_OK, "%s %s: %s",
                  fl_arch_name((fl_arch)a), presets[p], err.msg);
            CHECK(c.vocab_size >= 257 && c.eos_token_id == 256 && c.bos_token_id == -1,
                  "byte tokenizer fits %s", presets[p]);
        }
    fl_config_preset(&c, FL_ARCH_GPT2, "tiny", &err);
    CHECK(c.n_layer == 2 && c.d_model == 64 && c.n_head == 4 && c.n_kv_head == 4 && c.d_ff == 256 &&
              c.vocab_size == 512 && c.max_position == 256 && c.tie_embeddings && c.qkv_bias &&
              c.norm_eps == 1e-5f,
          "gpt2 tiny");
    fl_config_preset(&c, FL_ARCH_LLAMA, "tiny", &err);
    CHECK(c.n_kv_head == 2 && c.d_ff == 128 && c.head_dim == 16 && !c.tie_embeddings &&
              !c.qkv_bias && c.norm_eps == 1e-6f && c.rope_theta == 10000.0f,
          "llama tiny");
    fl_config_preset(&c, FL_ARCH_QWEN2, "small", &err);
    CHECK(c.n_layer == 4 && c.d_model == 256 && c.n_head == 8 && c.n_kv_head == 4 &&
              c.d_ff == 688 && c.max_position == 512 && c.tie_embeddings && c.qkv_bias &&
              c.rope_theta == 1e6f,
          "qwen2 small");
    fl_config_preset(&c, FL_ARCH_GPT2, "gpt2-124m", &err);
    CHECK(c.n_layer == 12 && c.d_model == 768 && c.d_ff == 3072 && c.vocab_size == 50257 &&
              c.max_position == 1024,
          "gpt2-124m");
    fl_config_preset(&c, FL_ARCH_LLAMA, "gpt2-124m", &err);
    CHECK(c.n_kv_head == 12 && c.d_ff == 2048 && c.vocab_size == 50257, "llama gpt2-124m");
    fl_config_preset(&c, FL_ARCH_LLAMA, "llama-110m", &err);
    CHECK(c.vocab_size == 32000 && c.d_ff == 2048 && c.n_kv_head == 12, "llama-110m");
    fl_config_preset(&c, FL_ARCH_GPT2, "llama-110m", &err);
    CHECK(c.d_ff == 3072 && c.vocab_size == 32000, "gpt2 llama-110m");
    CHECK(fl_config_preset(&c, FL_ARCH_GPT2, "huge", &err) == FL_EINPUT && strstr(err.msg, "huge"),
          "unknown preset: %s", err.msg);

    fl_arch arch;
    for (int a = 0; a < 4; a++)
        CHECK(fl_arch_parse(&arch, fl_arch_name((fl_arch)a), &err) == FL_OK && arch == (fl_arch)a,
              "arch %d", a);
    CHECK(fl_arch_parse(&arch, "bert", &err) == FL_EINPUT && strstr(err.msg, "'bert'"),
          "bad arch: %s", err.msg);

    fl_config_preset(&c, FL_ARCH_QWEN2, "tiny", &err);
    c.qkv_bias = 0;
    CHECK(fl_config_validate(&c, "x", &err) == FL_EINPUT, "qwen2 without biases");
    fl_config_preset(&c, FL_ARCH_GPT2, "tiny", &err);
    c.n_kv_head = 2;
    CHECK(fl_config_validate(&c, "x", &err) == FL_EINPUT, "gpt2 with GQA");
    fl_config_preset(&c, FL_ARCH_LLAMA, "tiny", &err);
    c.norm_eps = NAN;
    CHECK(fl_config_validate(&c, "x", &err) == FL_EINPUT, "NaN eps");
}

/* ---- RoPE parameters ------------------------------------------------------------------------ */

#define LLAMA_ROPE(extra) "{\"model_type\": \"llama\", " LLAMA_BASE ", " extra "}"

static fl_config load_rope_config(const char *name, const char *json) {
    fl_config c;
    fl_err err = {0};
    memset(&c, 0, sizeof c);
    int rc = fl_config_load(&c, write_config(name, json), &err);
    CHECK(rc == FL_OK, "%s: %s", name, err.msg);
    return c;
}

static void test_rope_layouts(void) {
    /* transformers 5: theta only inside rope_parameters (the bug report's LLaMA and Qwen2) */
    fl_config c =
        load_rope_config("v5.json", LLAMA_ROPE("\"rope_parameters\": {\"rope_theta\": 500000.0, "
                                               "\"rope_type\": \"default\"}"));
    CHECK(c.rope_theta == 500000.0f && c.rope.type == FL_ROPE_DEFAULT, "v5 theta %g",
          (double)c.rope_theta);
    c = load_rope_config("v5qwen.json",
                         "{\"model_type\": \"qwen2\", " LLAMA_BASE
                         ", \"rope_parameters\": {\"rope_theta\": 1000000.0, \"rope_type\": "
                         "\"default\"}}");
    CHECK(c.rope_theta == 1e6f, "v5 qwen2 theta %g", (double)c.rope_theta);
    /* the dict's theta wins over a top-level one; a non-empty rope_scaling over rope_parameters,
     * taking the top-level theta when it has none; an empty one does not count */
    c = load_rope_config("both.json", LLAMA_ROPE("\"rope_theta\": 10000.0, \"rope_parameters\": "
                                                 "{\"rope_theta\": 500000.0}"));
    CHECK(c.rope_theta == 500000.0f, "dict theta first: %g", (double)c.rope_theta);
    c = load_rope_config("scaling_first.json",
                         LLAMA_ROPE("\"rope_theta\": 20000.0, \"rope_scaling\": {\"type\": "
                                    "\"linear\", \"factor\": 2.0}, \"rope_parameters\": "
                                    "{\"rope_type\": \"dynamic\", \"factor\": 4.0, "
                                    "\"rope_theta\": 500000.0}"));
    CHECK(c.rope.type == FL_ROPE_LINEAR && c.rope.factor == 2.0f && c.rope_theta == 20000.0f,
          "rope_scaling first: %s %g %g", fl_rope_type_name(c.rope.type), (double)c.rope.factor,
          (double)c.rope_theta);
    c = load_rope_config("empty_scaling.json",
                         LLAMA_ROPE("\"rope_scaling\": {}, \"rope_parameters\": {\"rope_type\": "
                                    "\"dynamic\", \"factor\": 4.0}"));
    CHECK(c.rope.type == FL_ROPE_DYNAMIC && c.rope_theta == 10000.0f, "empty rope_scaling");
    c = load_rope_config("both_keys.json",
                         LLAMA_ROPE("\"rope_scaling\": {\"type\": \"dynamic\", \"rope_type\": "
                                    "\"linear\", \"factor\": 2.0}"));
    CHECK(c.rope.type == FL_ROPE_LINEAR, "rope_type before type");
    /* contexts, as vLLM derives them */
    CHECK(fl_config_context(&c) == 256, "linear context %d", fl_config_context(&c));
    c = load_rope_config("llama3.json", LLAMA_ROPE("\"rope_scaling\": {\"rope_type\": \"llama3\", "
                                                   "\"factor\": 8.0, \"low_freq_factor\": 1.0, "
                                                   "\"high_freq_factor\": 4.0, "
                                                   "\"original_max_position_embeddings\": 32}"));
    CHECK(c.rope.type == FL_ROPE_LLAMA3 && c.rope.original_max_position == 32 &&
              c.rope.low_freq_factor == 1.0f && c.rope.high_freq_factor == 4.0f &&
              fl_config_context(&c) == 128,
          "llama3: context %d", fl_config_context(&c));
}

static void test_rope_yarn(void) {
    /* the defaults transformers fills in */
    fl_config c = load_rope_config(
        "yarn.json", LLAMA_ROPE("\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}"));
    CHECK(c.rope.type == FL_ROPE_YARN && c.rope.original_max_position == 128 &&
              c.rope.beta_fast == 32.0f && c.rope.beta_slow == 1.0f && c.rope.truncate == 1 &&
              fabsf(c.rope.attention_factor - (float)(0.1 * log(4.0) + 1)) < 1e-7f &&
              fl_config_context(&c) == 512,
          "yarn defaults: %g %g %g %d, context %d", (double)c.rope.beta_fast,
          (double)c.rope.beta_slow, (double)c.rope.attention_factor, c.rope.truncate,
          fl_config_context(&c));
    /* a null factor is max_position / original; null truncate is false; zero betas default;
     * a top-level original_max_position_embeddings wins over the dict's */
    c = load_rope_config("yarn_null.json",
                         LLAMA_ROPE("\"original_max_position_embeddings\": 32, \"rope_scaling\": "
                                    "{\"rope_type\": \"yarn\", \"factor\": null, "
                                    "\"original_max_position_embeddings\": 64, \"truncate\": "
                                    "null, \"beta_fast\": 0, \"mscale\": 2.0}"));
    CHECK(c.rope.factor == 4.0f && c.rope.original_max_position == 32 && c.rope.truncate == 0 &&
              c.rope.beta_fast == 32.0f &&
              fabsf(c.rope.attention_factor - (float)(0.1 * log(4.0) + 1)) < 1e-7f,
          "yarn null factor: %g, original %d, truncate %d, attention %g (mscale alone is unused)",
          (double)c.rope.factor, c.rope.original_max_position, c.rope.truncate,
          (double)c.rope.attention_factor);
    c = load_rope_config("yarn_attention.json",
                         LLAMA_ROPE("\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": "
                                    "8.0, \"attention_factor\": 0.5, \"mscale\": 1.0, "
                                    "\"mscale_all_dim\": 2.0}"));
    CHECK(c.rope.attention_factor == 0.5f, "explicit attention_factor %g",
          (double)c.rope.attention_factor);
}

static void test_rope_roundtrip(void) {
    static const char *const scalings[] = {
        "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.5}",
        "\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 4.0}",
        "\"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", "
        "\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
        "\"original_max_position_embeddings\": 64}",
        "\"rope_parameters\": {\"rope_type\": \"yarn\", \"rope_theta\": 1000000.0, "
        "\"factor\": 4.0, \"original_max_position_embeddings\": 32, \"beta_fast\": 16.0, "
        "\"beta_slow\": 2.0, \"mscale\": 0.707, \"mscale_all_dim\": 1.0, \"truncate\": false}",
    };
    char json[1024], path[1200];
    for (size_t i = 0; i < sizeof scalings / sizeof *scalings; i++) {
        snprintf(json, sizeof json, LLAMA_ROPE("%s"), scalings[i]);
        fl_config c = load_rope_config("rope_in.json", json), back;
        fl_err err = {0};
        snprintf(path, sizeof path, "%s/rope_out.json", dir);
        CHECK(fl_config_save(&c, path, &err) == FL_OK, "%s", err.msg);
        memset(&back, 0, sizeof back);
        CHECK(fl_config_load(&back, path, &err) == FL_OK, "%s", err.msg);
        CHECK(same_config(&c, &back) && memcmp(&c.rope, &back.rope, sizeof c.rope) == 0,
              "rope roundtrip %s: %s factor %g", scalings[i], fl_rope_type_name(back.rope.type),
              (double)back.rope.factor);
        char *text = NULL;
        fl_read_file(path, &text, NULL, 1 << 20, &err);
        char want[64];
        snprintf(want, sizeof want, "\"rope_type\":\t\"%s\"", fl_rope_type_name(c.rope.type));
        CHECK(text && strstr(text, want) && strstr(text, "\"max_position_embeddings\":\t128"),
              "saved %s: %s", want, text ? text : "(none)");
        free(text);
    }
}

static void test_rope_errors(void) {
    /* an unknown type: one error naming the file and the field, in either layout */
    expect_error("longrope.json",
                 LLAMA_ROPE("\"rope_parameters\": {\"rope_type\": \"longrope\", \"rope_theta\": "
                            "10000.0, \"short_factor\": [1, 1], \"long_factor\": [2, 2], "
                            "\"original_max_position_embeddings\": 64}"),
                 "rope_parameters.rope_type: 'longrope' is not supported (expected default, "
                 "linear, dynamic, yarn or llama3)");
    expect_error("foo.json", LLAMA_ROPE("\"rope_scaling\": {\"type\": \"foo\", \"factor\": 2.0}"),
                 "rope_scaling.type: 'foo' is not supported");
    expect_error("typenum_rope.json", LLAMA_ROPE("\"rope_scaling\": {\"rope_type\": 3}"),
                 "rope_scaling.rope_type: expected a string");
    expect_error("nofactor.json", LLAMA_ROPE("\"rope_scaling\": {\"type\": \"linear\"}"),
                 "rope_scaling.factor: missing (rope_type 'linear' needs it)");
    expect_error("yarn_nofactor.json", LLAMA_ROPE("\"rope_scaling\": {\"rope_type\": \"yarn\"}"),
                 "rope_scaling.factor: missing");
    expect_error("llama3_missing.json",
                 LLAMA_ROPE("\"rope_parameters\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                            "\"high_freq_factor\": 4.0}"),
                 "rope_parameters.low_freq_factor: missing");
    expect_error("llama3_bands.json",
                 LLAMA_ROPE("\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                            "\"low_freq_factor\": 4.0, \"high_freq_factor\": 4.0}"),
                 "expected 0 < low_freq_factor < high_freq_factor");
    expect_error("smallfactor.json",
                 LLAMA_ROPE("\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 0.5}"),
                 "factor: expected a number >= 1");
    expect_error("factorstr.json",
                 LLAMA_ROPE("\"rope_scaling\": {\"type\": \"linear\", \"factor\": \"2\"}"),
                 "rope_scaling.factor: expected a number");
    expect_error("partial.json",
                 LLAMA_ROPE("\"rope_parameters\": {\"rope_type\": \"default\", "
                            "\"partial_rotary_factor\": 0.5}"),
                 "rope_parameters.partial_rotary_factor: only 1");
    expect_error("partial_top.json", LLAMA_ROPE("\"partial_rotary_factor\": 0.25"),
                 "partial_rotary_factor: only 1");
    expect_error("nested.json",
                 LLAMA_ROPE("\"rope_parameters\": {\"full_attention\": {\"rope_type\": "
                            "\"default\"}}"),
                 "rope_parameters.full_attention: per-layer RoPE parameters are not supported");
    expect_error("ropestr.json", LLAMA_ROPE("\"rope_parameters\": \"yarn\""),
                 "rope_parameters: expected an object or null");
    expect_error("thetastr.json", LLAMA_ROPE("\"rope_theta\": \"1e4\""),
                 "rope_theta: expected a number");
    expect_error("mistral_window.json",
                 "{\"model_type\": \"mistral\", " LLAMA_BASE
                 ", \"sliding_window\": 64, \"rope_scaling\": {\"type\": \"linear\", "
                 "\"factor\": 2.0}}",
                 "sliding_window");
}

int main(void) {
    dir = tu_tmpdir("test_config");
    test_load_families();
    test_roundtrip();
    test_errors();
    test_rope_layouts();
    test_rope_yarn();
    test_rope_roundtrip();
    test_rope_errors();
    test_presets();
    return tu_finish("test_config");
}
