/* model_internal.h — the fl_model struct, shared by model.c (layout, files), transformer.c (passes)
 * and lora.c (adapters). Not a public header. */
#ifndef FEDLLM_MODEL_INTERNAL_H
#define FEDLLM_MODEL_INTERNAL_H

#include "fedllm/model.h"

/* Activations a linear module reads or writes. */
typedef enum {
    FL_ACT_LN1 = 0, /* (N, C) */
    FL_ACT_ATTY,    /* (N, NH*HD) attention output */
    FL_ACT_LN2,     /* (N, C) */
    FL_ACT_ACT,     /* (N, F) MLP activation */
    FL_ACT_QKV,     /* (N, QKV) */
    FL_ACT_RES_MID, /* (N, C) residual after attention */
    FL_ACT_FC,      /* (N, F) GPT-2 c_fc output / LLaMA gate */
    FL_ACT_UP,      /* (N, F) LLaMA up */
    FL_ACT_RES_OUT, /* (N, C) residual after the MLP = next layer's input */
    FL_N_ACTS
} fl_act_sel;

/* A linear layer: views of the base table, shapes, and where it reads and writes. */
typedef struct fl_module {
    int w, b;     /* view indices in params; b = -1 when there is no bias */
    int ic, oc;   /* in and out features */
    int w_in_out; /* weight stored (IC, OC) (GPT-2 Conv1D) instead of (OC, IC) */
    fl_act_sel in, out;
    int out_col; /* first column written in the output activation */
} fl_module;

typedef struct fl_layer {
    int ln1_w, ln1_b, ln2_w, ln2_b; /* view indices; _b = -1 for RMSNorm */
    fl_module mods[7];
    int n_mods;
} fl_layer;

/* One LoRA adapter: y[:, out_col:out_col+oc] += scale * (drop(x) A^T) B^T. */
typedef struct fl_adapter {
    int layer;
    int role; /* fl_role, or -1: a whole module (a loaded adapter on GPT-2's fused c_attn) */
    char module[FL_VIEW_NAME_MAX]; /* the HF module it adapts, e.g.
                                      "model.layers.3.self_attn.q_proj" */
    const fl_module *target;       /* that module: its weight view, layout and output columns */
    int rank;    /* r of this adapter (loaded adapters may differ per module: rank_pattern) */
    float scale; /* alpha / r */
    int a, b;    /* view indices in lora_params: A (r, ic), B (oc, r) */
    int ic, oc;
    fl_act_sel in, out;
    int out_col;
} fl_adapter;

/* Pointers of one layer's activations (or their gradients) into the arena. */
typedef struct fl_layer_acts {
    float *buf[FL_N_ACTS]; /* indexed by fl_act_sel; RES_OUT is the next layer's input */
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd;
    float *probs; /* (B, NH, T, T), NULL in evaluation passes */
} fl_layer_acts;

/* The rotary tables of a LLaMA-family model (rope.c): cos and sin, (positions, HD/2) each,
 * indexed by absolute position. */
typedef struct fl_rope_tables {
    float *buffer;              /* one allocation holding everything below */
    float *cos, *sin;           /* (rows, HD/2): every pass but a long dynamic one */
    int rows;                   /* the context, or max_position under dynamic NTK */
    float *long_cos, *long_sin; /* (context, HD/2), dynamic only: rows long_first..long_end-1 for
                                   a pass of long_seq_len positions (0: none yet) */
    int long_seq_len, long_first, long_end;
    float *inv_freq; /* (HD/2) scratch */
} fl_rope_tables;

struct fl_model {
    fl_config cfg;
    fl_params params;                 /* base weights, HF names */
    fl_layer *layers;                 /* n_layer */
    int wte, wpe, lnf_w, lnf_b, head; /* view indices (-1 absent); head == wte when tied */
    fl_rope_tables rope;              /* LLaMA family */
    /* the rotary tables of the pass running now (fl_model_rope_select) */
    const float *rope_cos, *rope_sin;

    /* trainable set */
    fl_params *trainable, *trainable_grads;
    fl_params grads; /* full fine-tuning: gradient of params */
    int grads_owned;
    fl_params lora_params, lora_grads; /* the trainable table unless full: LoRA factors and/or
                                          copies of base tensors (trained norms and biases, or
                                          every tensor of fl_model_train_layers' blocks) */
    fl_lora_spec lora;
    int has_lora;
    int max_rank;        /* the largest adapter rank (sizes the shared buffers) */
    char *loaded_config; /* adapter_config.json of a loaded adapter, written back as is */
    int *base_in_lora;   /* per base view: its trainable copy's view in lora_params, or -1;
                            NULL when no base tensor trains with the adapters or alone */
    fl_adapter *adapters;
    int n_adapters;
    int dropout_on;
    uint64_t dropout_step;

    /* activation arena, sized for (arena_B, arena_T) in train layout */
    float *arena;
    size_t arena_floats;
    int arena_B, arena_T, arena_train;
    int arena_threads;   /* attention scratch is per thread: rebuilt when more threads run */
    fl_layer_acts *acts; /* n_layer entries (evaluation layout: all alias entry 0) */
    float **resid;       /* n_layer + 1 residual streams (N, C); evaluation: two, alternating */
    float **lora_u;      /* per adapter (N, r); evaluation: all alias one buffer */
    float *lnf, *lnf_mean, *lnf_rstd, *dlnf;
    float *logits_chunk; /* (chunk_rows, V) */
    int chunk_rows;
    float *logits_full; /* (N, V) for FL_PASS_LOGITS */
    size_t logits_full_floats;
    float *attn_scratch;
    /* backward scratch */
    float *dres, *dln, *dqkv, *datty, *dfc, *dup, *dact, *lora_du, *lora_xd, *lora_tmp;
    /* the last pass, for backward */
    int last_B, last_T, last_pass;
    int32_t *tokens_copy; /* (arena_B, arena_T) */
    int dropout_active;   /* LoRA dropout applies to the current pass */
};

/* A key/value cache and the buffers of one decoding step (see fl_model_decode). */
struct fl_kv_cache {
    int B, max_T, len;                   /* rows, capacity and filled positions per row */
    int act_rows;                        /* token rows one step may hold (B * max_T, or fewer
                                            for a slot cache) */
    int *pad;                            /* (B) left-padding positions of each row (0: none);
                                            row b's position p sits at cache index pad[b] + p */
    int padded;                          /* some pad[b] > 0 */
    int threads;                         /* attention scratch was sized for this many */
    float *buffer;                       /* one allocation holding everything below */
    float *k, *v;                        /* (L, B, max_T, NKV*HD): rotated keys and values */
    fl_layer_acts acts;                  /* one layer's activations for up to B*max_T rows */
    float *resid[2];                     /* (B*max_T, C), alternating between layers */
    float *lora_u0;                      /* (B*max_T, r), shared by the adapters in turn */
    float **lora_u;                      /* per adapter: lora_u0 */
    float *last, *last_mean, *last_rstd; /* (B, C): each row's last position, normed */
    float *scratch;                      /* attention, per thread */
    /* Slots (continuous batching, fl_model_decode_slots): each row its own sequence. */
    int *slot_len;        /* (B) positions filled in each slot */
    int slots_used;       /* some slot has positions (then len stays 0) */
    int slots_only;       /* made by fl_kv_cache_new_slots */
    const int *step_slot; /* during a slot step: row r's slot; NULL otherwise */
    int *step_past;       /* (B) during a slot step: row r's slot length before it */
};

/* The value and the gradient of base view `view` as the passes must use them: the trainable copy
 * when it trains with LoRA, the gradient table under full fine-tuning, NULL when frozen. */
float *fl_model_param(fl_model *m, int view);
float *fl_model_param_grad(fl_model *m, int view);

/* rope.c: fl_model_rope_init allocates and fills the tables (FL_ENOMEM); fl_model_rope_select
 * points rope_cos/rope_sin at tables valid for positions first..end-1 of a pass whose largest
 * position is seq_len - 1 (dynamic NTK computes them for that seq_len when it exceeds
 * max_position). */
int fl_model_rope_init(fl_model *m, fl_err *err);
void fl_model_rope_select(fl_model *m, int seq_len, int first, int end);

/* Load-time checks of weights (model.c). FL_OK when every value is finite; otherwise FL_EINPUT
 * "tensor 'NAME' holds NaN at element I of N: ..." for the first bad value, which the caller
 * prefixes with the file it came from (fl_err_prefix). fl_params_check_finite makes one parallel
 * vector pass over the whole buffer and sets *bad_view (when not NULL) to the offending view. */
int fl_values_check_finite(const float *x, size_t n, const char *tensor, fl_err *err);
int fl_params_check_finite(const fl_params *p, int *bad_view, fl_err *err);

/* The module of layer `layer` that writes column `col` of activation `out`. */
const fl_module *fl_module_at(const fl_model *m, int layer, fl_act_sel out, int col);
/* Role names and HF module names per role (lora.c). */
extern const char *const FL_LLAMA_MODULES[FL_N_ROLES];
extern const char *const FL_GPT2_MODULES[FL_N_ROLES];

/* lora.c: forward adds the adapter's output; backward accumulates into dA, dB and din. */
void fl_lora_forward(fl_model *m, const fl_adapter *ad, const float *in, float *out, int ldo,
                     float *u, int N);
void fl_lora_backward(fl_model *m, const fl_adapter *ad, float *din, const float *dout, int ldo,
                      const float *in, const float *u, int N);

#endif
