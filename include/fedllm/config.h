/* config.h — a transformer's shape and family, read from and written to HF config.json.
 *
 * One struct covers the GPT-2, LLaMA, Qwen2 and Mistral families; the differences are a handful
 * of flags (norm kind, positions, MLP kind, which linears have biases). */
#ifndef FEDLLM_CONFIG_H
#define FEDLLM_CONFIG_H

#include "fedllm/err.h"

typedef enum { FL_ARCH_GPT2 = 0, FL_ARCH_LLAMA, FL_ARCH_QWEN2, FL_ARCH_MISTRAL } fl_arch;

/* The rotary scalings of transformers' modeling_rope_utils.py that fedllm computes (rope_type). */
typedef enum {
    FL_ROPE_DEFAULT = 0, /* inv_freq[i] = theta^(-2i/HD) */
    FL_ROPE_LINEAR,      /* inv_freq / factor (position interpolation) */
    FL_ROPE_DYNAMIC,     /* dynamic NTK: theta grows once a pass is longer than max_position */
    FL_ROPE_YARN,        /* YaRN: per-frequency ramp between interpolation and extrapolation, and
                            cos/sin scaled by attention_factor */
    FL_ROPE_LLAMA3,      /* LLaMA 3.1: low frequencies / factor, high ones kept, a ramp between */
    FL_ROPE_N_TYPES
} fl_rope_type;

/* config.json's rope_scaling (transformers 4) or rope_parameters (transformers 5), with
 * transformers' defaults filled in. All zero is the default rope. */
typedef struct fl_rope_scaling {
    fl_rope_type type;
    float factor;               /* linear, dynamic, yarn, llama3: >= 1 */
    int original_max_position;  /* yarn, llama3: the pre-training context, >= 1 */
    float low_freq_factor;      /* llama3: > 0 */
    float high_freq_factor;     /* llama3: > low_freq_factor */
    float beta_fast, beta_slow; /* yarn: the correction range's rotations (32 and 1 by default) */
    float attention_factor;     /* yarn: cos and sin are multiplied by it (> 0) */
    int truncate;               /* yarn: floor/ceil the correction range (1 by default) */
} fl_rope_scaling;

typedef struct fl_config {
    fl_arch arch;
    int vocab_size;                 /* V, >= 1 */
    int n_layer;                    /* L, >= 1 */
    int d_model;                    /* C */
    int n_head;                     /* NH, divides C unless head_dim is given */
    int n_kv_head;                  /* NKV, divides NH (== NH for GPT-2) */
    int head_dim;                   /* HD (C / NH unless the config says otherwise) */
    int d_ff;                       /* F: GPT-2 n_inner (4C by default), LLaMA intermediate_size */
    int max_position;               /* n_positions / max_position_embeddings */
    float norm_eps;                 /* layer_norm_epsilon / rms_norm_eps */
    float rope_theta;               /* LLaMA family only */
    fl_rope_scaling rope;           /* LLaMA family only */
    int tie_embeddings;             /* lm_head shares wte */
    int qkv_bias;                   /* GPT-2 and Qwen2 */
    int bos_token_id, eos_token_id; /* -1 when absent */
} fl_config;

/* Derived flags, so that the model code reads `if (fl_config_is_gpt2(c))` once per difference. */
static inline int fl_config_is_gpt2(const fl_config *c) { return c->arch == FL_ARCH_GPT2; }
const char *fl_arch_name(fl_arch arch); /* "gpt2", "llama", "qwen2", "mistral" */

/* The longest sequence the model runs: max_position, times the factor for the linear and dynamic
 * scalings and original_max_position times the factor for YaRN (as vLLM derives it). */
int fl_config_context(const fl_config *c);
/* The names of the rope types as config.json spells them ("default", "linear", ...). */
const char *fl_rope_type_name(fl_rope_type type);

/* The HD/2 rotary inverse frequencies of c at a pass of seq_len positions, as transformers
 * computes them in float32 (seq_len matters for the dynamic scaling only), into inv_freq; returns
 * the factor that multiplies cos and sin (YaRN's attention_factor, else 1). Cannot fail for a
 * config that fl_config_validate accepts. */
float fl_rope_frequencies(const fl_config *c, int seq_len, float *inv_freq);

/* Checks that the numbers fit together (positive sizes, NKV | NH, HD even for RoPE, ...).
 * `where` names the source in the message. */
int fl_config_validate(const fl_config *c, const char *where, fl_err *err);

/* Reads DIR/config.json (or the file itself when path ends in .json). On error, FL_EINPUT with the
 * file, the field and what was expected; *c is unspecified. */
int fl_config_load(fl_config *c, const char *path, fl_err *err);
/* Writes config.json in the family's HF form (model_type, architectures, its own key names),
 * atomically. */
int fl_config_save(const fl_config *c, const char *path, fl_err *err);

/* Fills a preset: "tiny", "small", "gpt2-124m", "llama-110m" for arch. FL_EINPUT if unknown. */
int fl_config_preset(fl_config *c, fl_arch arch, const char *preset, fl_err *err);
/* Parses "gpt2" | "llama" | "qwen2" | "mistral". */
int fl_arch_parse(fl_arch *arch, const char *name, fl_err *err);

#endif
