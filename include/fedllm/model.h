/* model.h — a decoder-only transformer (GPT-2, LLaMA, Qwen2, Mistral families) with optional LoRA,
 * its forward and backward passes, and its Hugging Face files.
 *
 * Memory: the base weights are one fl_params table whose view names are the HF names. The
 * trainable set is one contiguous table too: the base table itself for full fine-tuning, a copy of
 * the chosen blocks' tensors when only some blocks train (offsite-tuning), or the LoRA factors
 * (of the adapted layers and targets) for LoRA; gradients mirror the trainable table. So an
 * optimizer step, FedAvg, a FedKSeed perturbation, a DP clip or "what leaves the party" is one
 * pass over fl_model_trainable(). Activations live in one arena sized for the largest (B, T) seen;
 * nothing allocates in the step loop after the first call.
 *
 * Passes: fl_model_forward in FL_PASS_TRAIN mode keeps every activation, and because the vocab
 * projection is the largest buffer it also computes the gradient of the loss at the head right
 * away, chunk by chunk, so the (N, V) logits never exist at once; fl_model_backward then runs the
 * layers in reverse and ADDS into the trainable gradients (gradient accumulation = several
 * forward/backward pairs before one optimizer step). FL_PASS_EVAL keeps nothing but the loss
 * (FedKSeed's forward-only steps, evaluation). FL_PASS_LOGITS also returns all (B, T, V) logits
 * (FedMKT's per-position logits, generation). Per-example gradients for DP-SGD are a backward with
 * B = 1. */
#ifndef FEDLLM_MODEL_H
#define FEDLLM_MODEL_H

#include <stdint.h>

#include "fedllm/config.h"
#include "fedllm/err.h"
#include "fedllm/params.h"

/* The linear layers LoRA can adapt, named by role so that one job works for every family. */
typedef enum {
    FL_ROLE_ATTN_Q = 0,
    FL_ROLE_ATTN_K,
    FL_ROLE_ATTN_V,
    FL_ROLE_ATTN_O,
    FL_ROLE_MLP_GATE,
    FL_ROLE_MLP_UP,
    FL_ROLE_MLP_DOWN,
    FL_N_ROLES
} fl_role;

const char *fl_role_name(fl_role role); /* "attn_q", ... */

/* Base tensors that can train alongside LoRA adapters. */
enum { FL_TRAIN_NORMS = 1u << 0, FL_TRAIN_BIASES = 1u << 1 };

/* Bounds of LoRA hyperparameters, for adapters made here and adapters loaded from files: the
 * rank of any one adapter, and alpha (a scale alpha / r beyond 4 x the largest rank is a typo or
 * a corrupt file, not a setting: PEFT's usual alpha is r or 2 r). */
#define FL_LORA_RANK_MAX  4096
#define FL_LORA_ALPHA_MAX 16384.0

/* The most layers a layer set can name: the largest model a config may describe. */
#define FL_LAYERS_MAX 1024

typedef struct fl_lora_spec {
    int rank;            /* r in 1 .. FL_LORA_RANK_MAX */
    float alpha;         /* in (0, FL_LORA_ALPHA_MAX]; scale = alpha / r */
    float dropout;       /* in [0, 1) on the adapter's input */
    unsigned role_mask;  /* bit (1u << role) per adapted role, and FL_LORA_C_ATTN */
    unsigned train_base; /* FL_TRAIN_NORMS | FL_TRAIN_BIASES: base tensors trained with the
                            adapters (FedIPR's norm scales); they join the trainable table */
    uint64_t seed;       /* init and dropout streams */
    /* The layers that get adapters (PEFT's layers_to_transform): bit l % 64 of word l / 64 for
     * layer l. All zero (the default) means every layer; set it with fl_lora_spec_add_layer. */
    uint64_t layer_mask[FL_LAYERS_MAX / 64];
} fl_lora_spec;

/* Restricts spec's adapters to layer `layer` too (0 .. FL_LAYERS_MAX-1; FL_EINPUT outside). */
int fl_lora_spec_add_layer(fl_lora_spec *spec, int layer, fl_err *err);
/* Whether layer `layer` gets adapters under spec: every layer when no layer was added. */
int fl_lora_spec_has_layer(const fl_lora_spec *spec, int layer);

/* Parses a layer list, "0,1,10-11" (indices and inclusive ranges, ascending or not), into
 * layers[0 .. *n_layers-1] in the order given, for a model of n_layer layers; at most max_layers
 * entries. FL_EINPUT naming the entry for an index outside 0..n_layer-1, a repeated index, a
 * malformed entry or an empty list. */
int fl_layers_parse(const char *list, int n_layer, int *layers, int max_layers, int *n_layers,
                    fl_err *err);

/* A target beside the roles in fl_lora_spec.role_mask: GPT-2's fused c_attn module adapted whole,
 * as PEFT adapts target_modules ["c_attn"]: one A (r, C) and one B (3C, r) over all of q, k and v,
 * where the roles attn_q, attn_k, attn_v give each its own A (r, C) and B (C, r). */
#define FL_LORA_C_ATTN (1u << FL_N_ROLES)

/* Parses a comma list of roles ("attn_q,attn_v") or the family's HF module names into a role
 * mask. A module name means that module, as in PEFT: "q_proj" is attn_q, "c_fc" is mlp_up,
 * "attn.c_proj" attn_o, a bare "c_proj" both GPT-2 c_proj modules (PEFT matches by suffix), and
 * GPT-2's "c_attn" the fused module (FL_LORA_C_ATTN), not three role adapters. FL_EINPUT naming
 * the unknown or inapplicable name (mlp_gate on GPT-2), or c_attn beside attn_q/k/v (both would
 * adapt the same module). */
int fl_lora_parse_targets(const char *list, fl_arch arch, unsigned *role_mask, fl_err *err);

typedef enum { FL_PASS_EVAL = 0, FL_PASS_TRAIN, FL_PASS_LOGITS } fl_pass;

/* Tokens one pass may hold (B * T), so that every activation index fits an int row count. */
#define FL_MAX_PASS_TOKENS (1 << 22)

typedef struct fl_model fl_model;

/* A model with random weights in HF layout (std 0.02 normal; GPT-2's output projections scaled by
 * 1/sqrt(2L), norms 1, biases 0), seeded. NULL with err set on failure. */
fl_model *fl_model_new_random(const fl_config *cfg, uint64_t seed, fl_err *err);
/* Loads DIR (config.json + model.safetensors). Every expected tensor must be present with its
 * shape; extra tensors are ignored. NULL with FL_EINPUT naming the file and tensor on failure. */
fl_model *fl_model_load(const char *dir, fl_err *err);
/* Writes config.json and model.safetensors into DIR (which must exist), each atomically. Base
 * tensors trained alongside LoRA (fl_lora_spec.train_base) are written with their trained values.
 */
int fl_model_save(fl_model *m, const char *dir, fl_err *err);
void fl_model_free(fl_model *m);

/* A new model made of the embeddings, final norm and head of m and the layers listed (in that
 * order; indices may repeat): offsite-tuning's emulator, a layer-dropped copy of the model. The
 * weights are copied; m is unchanged. NULL with FL_EINPUT for an index outside m's layers. */
fl_model *fl_model_subset(const fl_model *m, const int *layers, int n_layers, fl_err *err);

const fl_config *fl_model_config(const fl_model *m);
fl_params *fl_model_params(fl_model *m); /* the base weights */

/* Adds LoRA adapters (A Kaiming-uniform with a = sqrt(5) as in PEFT, B zero) to the roles of
 * spec->role_mask in the layers of spec->layer_mask (every layer when empty) and makes them the
 * trainable set; the base becomes frozen. Call once, before any pass (FL_EINTERNAL otherwise);
 * FL_EINPUT for bad hyperparameters or a layer mask that names no layer of the model. Backward
 * does no work below the lowest adapted layer. */
int fl_model_add_lora(fl_model *m, const fl_lora_spec *spec, fl_err *err);
/* Makes the whole base trainable (full fine-tuning); allocates its gradient table. */
int fl_model_train_full(fl_model *m, fl_err *err);
/* Makes exactly the transformer blocks listed (n_layers distinct indices, any order) trainable,
 * every tensor of each (attention, MLP, norms, biases), and freezes the rest (embeddings, final
 * norm, head, the other blocks): offsite-tuning's adapter blocks. The trainable table is a copy
 * of those tensors under their HF names, in the base's order (block by block, ascending), and the
 * passes use it; fl_model_save writes the trained values, fl_model_params holds the values from
 * before training until then. Backward skips the weight gradients of frozen blocks and all work
 * below the lowest listed block. FL_EINPUT for an empty list or an index outside the model's
 * layers or repeated; FL_EINTERNAL when the trainable set is already chosen (train_full,
 * add_lora, load_adapter or this); nothing changes then. */
int fl_model_train_layers(fl_model *m, const int *layers, int n_layers, fl_err *err);
/* The trainable table (LoRA factors, chosen blocks or the base) and its gradient table; NULL
 * before one of the calls above. */
fl_params *fl_model_trainable(fl_model *m);
fl_params *fl_model_grads(fl_model *m);
const fl_lora_spec *fl_model_lora(const fl_model *m); /* NULL when not LoRA */

/* The view index, in the trainable table, of LoRA factor A (which 0) or B (which 1) of (layer,
 * role); -1 when that role has no adapter. */
int fl_model_lora_view(const fl_model *m, int layer, fl_role role, int which);

/* Switches LoRA dropout on (training) or off (evaluation); the dropout mask of a pass is drawn
 * from (seed, step), so set the step before each training pass. */
void fl_model_set_dropout(fl_model *m, int enabled, uint64_t step);

typedef struct fl_pass_result {
    double loss_sum;     /* sum of token losses over counted targets */
    long n_counted;      /* targets != -100 */
    const float *logits; /* FL_PASS_LOGITS: (B, T, V), owned by the model until the next pass */
} fl_pass_result;

/* Runs tokens (B, T) through the model; targets (B, T) may be NULL in FL_PASS_LOGITS mode. In
 * FL_PASS_TRAIN mode the head gradient is scaled by grad_scale (1/number of counted targets of
 * the whole optimizer step, for a mean loss). T must not exceed the context. Fails only on
 * allocation or a token outside the vocabulary (FL_EINPUT). */
int fl_model_forward(fl_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                     fl_pass pass, float grad_scale, fl_pass_result *result, fl_err *err);
/* Backward of the training forward just before it; adds into fl_model_grads(). Returns
 * FL_EINTERNAL and does nothing when the last pass was not a training pass (another pass in
 * between overwrites the saved activations), or when backward already ran. */
int fl_model_backward(fl_model *m);

/* Decoding with a key/value cache: the prompt, then one token at a time, each step costing only
 * its new positions. The cache belongs to one model (with its adapters, which must be added
 * before the cache is made) and holds B rows that advance together. */
typedef struct fl_kv_cache fl_kv_cache;
/* A cache for `batch` rows of up to max_tokens positions (at most the model's context). */
fl_kv_cache *fl_kv_cache_new(fl_model *m, int batch, int max_tokens, fl_err *err);
void fl_kv_cache_free(fl_kv_cache *cache);
void fl_kv_cache_reset(fl_kv_cache *cache); /* forget every position */
int fl_kv_cache_length(const fl_kv_cache *cache);
/* Prompts of different lengths in one batch: row b's first pad[b] positions are padding (any
 * valid token id), which its real positions never attend to and which do not count as positions
 * (row b's first real token has position 0). Set on an empty cache; FL_EINPUT otherwise or for a
 * pad outside 0 .. max_tokens-1. fl_kv_cache_reset clears it. */
int fl_kv_cache_set_padding(fl_kv_cache *cache, const int *pad, fl_err *err);
/* Appends tokens (B, n) to the cache and writes the logits (B, V) of each row's last new token.
 * FL_EINPUT when the tokens do not fit or are outside the vocabulary; the cache is then unchanged.
 */
int fl_model_decode(fl_model *m, fl_kv_cache *cache, const int32_t *tokens, int n, float *logits,
                    fl_err *err);

/* Continuous batching: the cache's B rows as independent slots, each holding its own sequence
 * with its own length. A step appends n tokens to each of `rows` distinct slots (a prompt to one
 * slot, or one token to each of the running sequences) and writes the logits (rows, V) of each
 * row's last new token; sequences join and leave between steps (fl_kv_slot_reset frees a slot).
 * A row's attention, positions and cache entries are exactly those of its sequence decoded alone;
 * only the linear layers see other rows (one matrix product over the step's rows), so its logits
 * equal the alone decode's within fp32 rounding. A cache is used either this way or with
 * fl_model_decode until fl_kv_cache_reset (FL_EINPUT otherwise); FL_EINPUT for a slot out of
 * range or twice in one step, tokens that do not fit their slot or outside the vocabulary, and
 * then nothing changes. */
int fl_model_decode_slots(fl_model *m, fl_kv_cache *cache, const int *slots, int rows,
                          const int32_t *tokens, int n, float *logits, fl_err *err);
/* A cache for slot use only: `slots` sequences of up to max_tokens positions each, with
 * activations for one step of max(slots, max_tokens) tokens (a prompt of one slot, or a token
 * for each) instead of fl_kv_cache_new's slots x max_tokens. */
fl_kv_cache *fl_kv_cache_new_slots(fl_model *m, int slots, int max_tokens, fl_err *err);
int fl_kv_slot_length(const fl_kv_cache *cache, int slot); /* -1 outside the cache */
void fl_kv_slot_reset(fl_kv_cache *cache, int slot);       /* empties one slot */

/* Loads a PEFT LoRA adapter directory (written by fedllm or by peft) into m, whose base must be
 * the one it was trained on: every adapter attaches to the module of its name with its own rank
 * and scale (rank_pattern, alpha_pattern, use_rslora), trained biases and modules_to_save replace
 * the base's, and the adapters become the trainable set; layers_to_transform (an index or a list,
 * with layers_pattern absent, null or the family's "h" / "layers") becomes the spec's layer mask
 * and every adapter must lie in those layers. Before any pass. FL_EINPUT naming the file for an
 * adapter of another architecture, mismatched shapes, another peft_type, or a layer outside
 * layers_to_transform or the model; m is then unchanged apart from base tensors already replaced.
 */
int fl_model_load_adapter(fl_model *m, const char *dir, fl_err *err);
/* Folds every adapter into the base weights (W += scale B A) and drops the adapters: the base is
 * then the merged model, ready for fl_model_save. */
int fl_model_merge_adapter(fl_model *m, fl_err *err);

/* LoRA adapter files: adapter_config.json + adapter_model.safetensors in DIR (which must exist).
 * A layer mask is written as PEFT's layers_to_transform (ascending indices); without one the key is
 * absent, as before. */
int fl_model_save_adapter(const fl_model *m, const char *dir, const char *base_model_path,
                          fl_err *err);

#endif
