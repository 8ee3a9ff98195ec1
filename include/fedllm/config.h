/* config.h — a transformer's shape and family, read from and written to HF config.json.
 *
 * One struct covers the GPT-2, LLaMA, Qwen2 and Mistral families; the differences are a handful
 * of flags (norm kind, positions, MLP kind, which linears have biases). */
#ifndef FEDLLM_CONFIG_H
#define FEDLLM_CONFIG_H

#include "fedllm/err.h"

typedef enum { FL_ARCH_GPT2 = 0, FL_ARCH_LLAMA, FL_ARCH_QWEN2, FL_ARCH_MISTRAL } fl_arch;

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
    int tie_embeddings;             /* lm_head shares wte */
    int qkv_bias;                   /* GPT-2 and Qwen2 */
    int bos_token_id, eos_token_id; /* -1 when absent */
} fl_config;

/* Derived flags, so that the model code reads `if (fl_config_is_gpt2(c))` once per difference. */
static inline int fl_config_is_gpt2(const fl_config *c) { return c->arch == FL_ARCH_GPT2; }
const char *fl_arch_name(fl_arch arch); /* "gpt2", "llama", "qwen2", "mistral" */

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
