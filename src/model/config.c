/* config.c — fl_config from and to Hugging Face config.json, the named presets, and the checks
 * that a shape is one the model code can build.
 *
 * The four families share one struct; they differ in their JSON key names (GPT-2's n_embd is
 * LLaMA's hidden_size) and in a few fixed traits: GPT-2 always has attention biases and one KV
 * head per head, Qwen2 always has q/k/v biases, Mistral never does, LLaMA records them in
 * attention_bias. The loader refuses settings whose math the model code does not implement
 * (rope types other than default/linear/dynamic/yarn/llama3, partial rotary factors, mlp_bias,
 * other activations, Qwen2's sliding window) rather than silently computing something else.
 * RoPE parameters come in two layouts: transformers 4's top-level rope_theta with rope_scaling
 * {type|rope_type, factor, ...}, and transformers 5's rope_parameters {rope_theta, rope_type, ...}
 * (see load_rope for which wins when both are there). Mistral's sliding_window is honoured by
 * lowering max_position to the window: within the window, sliding-window attention is plain causal
 * attention.
 *
 * Sizes are bounded (FL_CFG_MAX_*) so that products such as V*C and L*F*C fit comfortably in
 * 64-bit counts and a typo such as "hidden_size": 7680000 is an error, not an allocation. */
#include "fedllm/config.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fileio.h"

#define FL_CFG_MAX_VOCAB      (1 << 24)
#define FL_CFG_MAX_LAYERS     1024
#define FL_CFG_MAX_WIDTH      (1 << 16) /* d_model */
#define FL_CFG_MAX_HEADS      1024
#define FL_CFG_MAX_HEAD_DIM   4096
#define FL_CFG_MAX_FF         (1 << 20)
#define FL_CFG_MAX_POSITIONS  (1 << 22)
#define FL_CFG_MAX_FILE_BYTES ((size_t)4 << 20)

static const char *const ARCH_NAMES[] = {"gpt2", "llama", "qwen2", "mistral"};
static const char *const ARCH_CLASSES[] = {"GPT2LMHeadModel", "LlamaForCausalLM",
                                           "Qwen2ForCausalLM", "MistralForCausalLM"};

const char *fl_arch_name(fl_arch arch) { return (unsigned)arch < 4 ? ARCH_NAMES[arch] : "unknown"; }

int fl_arch_parse(fl_arch *arch, const char *name, fl_err *err) {
    for (int i = 0; i < 4; i++)
        if (strcmp(name, ARCH_NAMES[i]) == 0) {
            *arch = (fl_arch)i;
            return FL_OK;
        }
    return fl_err_set(err, FL_EINPUT,
                      "architecture '%.40s' is not supported (expected gpt2, llama, qwen2 or "
                      "mistral)",
                      name);
}

/* ---- validation ------------------------------------------------------------------------------ */

/* The family's own key for each size, so that messages point at the line to fix. */
typedef struct key_names {
    const char *vocab, *layers, *width, *heads, *kv_heads, *head_dim, *ff, *positions, *eps;
} key_names;

static const key_names GPT2_KEYS = {"vocab_size", "n_layer",     "n_embd",
                                    "n_head",     "n_head",      "n_embd / n_head",
                                    "n_inner",    "n_positions", "layer_norm_epsilon"};
static const key_names LLAMA_KEYS = {
    "vocab_size",          "num_hidden_layers",       "hidden_size",
    "num_attention_heads", "num_key_value_heads",     "head_dim",
    "intermediate_size",   "max_position_embeddings", "rms_norm_eps"};

static int check_size(const char *where, const char *key, int value, int max, fl_err *err) {
    if (value < 1 || value > max)
        return fl_err_set(err, FL_EINPUT, "%s: %s: expected an integer in 1..%d, got %d", where,
                          key, max, value);
    return FL_OK;
}

static int check_token(const char *where, const char *key, int id, int vocab, fl_err *err) {
    if (id < -1 || id >= vocab)
        return fl_err_set(err, FL_EINPUT, "%s: %s: %d is outside the vocabulary (0..%d)", where,
                          key, id, vocab - 1);
    return FL_OK;
}

static const char *const ROPE_NAMES[] = {"default", "linear", "dynamic", "yarn", "llama3"};

const char *fl_rope_type_name(fl_rope_type type) {
    return (unsigned)type < FL_ROPE_N_TYPES ? ROPE_NAMES[type] : "unknown";
}

/* fl_config_context before it is bounded. */
static double context_positions(const fl_config *c) {
    const fl_rope_scaling *r = &c->rope;
    if (!fl_config_is_gpt2(c) && (r->type == FL_ROPE_LINEAR || r->type == FL_ROPE_DYNAMIC))
        return (double)c->max_position * r->factor;
    if (!fl_config_is_gpt2(c) && r->type == FL_ROPE_YARN)
        return (double)r->original_max_position * r->factor;
    return c->max_position;
}

int fl_config_context(const fl_config *c) {
    double positions = context_positions(c);
    return positions < FL_CFG_MAX_POSITIONS ? (int)positions : FL_CFG_MAX_POSITIONS;
}

/* The scaling's numbers are ones its formulas are defined for (see fl_rope_scaling). */
static int validate_rope(const fl_config *c, const char *where, fl_err *err) {
    const fl_rope_scaling *r = &c->rope;
    if ((unsigned)r->type >= FL_ROPE_N_TYPES)
        return fl_err_set(err, FL_EINPUT, "%s: rope type %d is not known", where, (int)r->type);
    const char *name = ROPE_NAMES[r->type];
    if (r->type == FL_ROPE_DEFAULT) return FL_OK;
    if (!(r->factor >= 1 && isfinite(r->factor)))
        return fl_err_set(err, FL_EINPUT, "%s: rope %s: factor: expected a number >= 1, got %g",
                          where, name, (double)r->factor);
    if (r->type == FL_ROPE_LLAMA3 || r->type == FL_ROPE_YARN) {
        if (r->original_max_position < 1 || r->original_max_position > FL_CFG_MAX_POSITIONS)
            return fl_err_set(err, FL_EINPUT,
                              "%s: rope %s: original_max_position_embeddings: expected an "
                              "integer in 1..%d, got %d",
                              where, name, FL_CFG_MAX_POSITIONS, r->original_max_position);
    }
    if (r->type == FL_ROPE_LLAMA3 &&
        !(r->low_freq_factor > 0 && r->high_freq_factor > r->low_freq_factor &&
          isfinite(r->high_freq_factor)))
        return fl_err_set(err, FL_EINPUT,
                          "%s: rope llama3: expected 0 < low_freq_factor < high_freq_factor, got "
                          "%g and %g",
                          where, (double)r->low_freq_factor, (double)r->high_freq_factor);
    if (r->type == FL_ROPE_YARN) {
        if (!(isfinite(r->beta_fast) && isfinite(r->beta_slow)))
            return fl_err_set(err, FL_EINPUT,
                              "%s: rope yarn: beta_fast, beta_slow: expected numbers", where);
        if (!(r->attention_factor > 0 && isfinite(r->attention_factor)))
            return fl_err_set(err, FL_EINPUT,
                              "%s: rope yarn: attention_factor: expected a positive number, got %g",
                              where, (double)r->attention_factor);
        if (!(c->rope_theta > 1))
            return fl_err_set(err, FL_EINPUT, "%s: rope yarn: rope_theta: expected a number > 1",
                              where);
    }
    if (context_positions(c) > FL_CFG_MAX_POSITIONS)
        return fl_err_set(err, FL_EINPUT,
                          "%s: rope %s: factor %g makes a context of more than %d positions", where,
                          name, (double)r->factor, FL_CFG_MAX_POSITIONS);
    return FL_OK;
}

int fl_config_validate(const fl_config *c, const char *where, fl_err *err) {
    if ((unsigned)c->arch >= 4)
        return fl_err_set(err, FL_EINPUT, "%s: unknown architecture %d", where, (int)c->arch);
    const key_names *k = fl_config_is_gpt2(c) ? &GPT2_KEYS : &LLAMA_KEYS;
    int rc;
    if ((rc = check_size(where, k->vocab, c->vocab_size, FL_CFG_MAX_VOCAB, err)) ||
        (rc = check_size(where, k->layers, c->n_layer, FL_CFG_MAX_LAYERS, err)) ||
        (rc = check_size(where, k->width, c->d_model, FL_CFG_MAX_WIDTH, err)) ||
        (rc = check_size(where, k->heads, c->n_head, FL_CFG_MAX_HEADS, err)) ||
        (rc = check_size(where, k->kv_heads, c->n_kv_head, FL_CFG_MAX_HEADS, err)) ||
        (rc = check_size(where, k->head_dim, c->head_dim, FL_CFG_MAX_HEAD_DIM, err)) ||
        (rc = check_size(where, k->ff, c->d_ff, FL_CFG_MAX_FF, err)) ||
        (rc = check_size(where, k->positions, c->max_position, FL_CFG_MAX_POSITIONS, err)))
        return rc;
    if (c->n_head % c->n_kv_head != 0)
        return fl_err_set(err, FL_EINPUT, "%s: %s (%d) must divide %s (%d)", where, k->kv_heads,
                          c->n_kv_head, k->heads, c->n_head);
    if (!(c->norm_eps > 0 && c->norm_eps < 1))
        return fl_err_set(err, FL_EINPUT, "%s: %s: expected a number in (0, 1), got %g", where,
                          k->eps, (double)c->norm_eps);
    if (fl_config_is_gpt2(c)) {
        if (c->n_kv_head != c->n_head)
            return fl_err_set(err, FL_EINPUT, "%s: GPT-2 has one key/value head per head", where);
        if (c->d_model != c->n_head * c->head_dim)
            return fl_err_set(err, FL_EINPUT,
                              "%s: n_embd (%d) must be n_head (%d) times the "
                              "head size (%d)",
                              where, c->d_model, c->n_head, c->head_dim);
        if (!c->qkv_bias)
            return fl_err_set(err, FL_EINPUT, "%s: GPT-2 always has attention biases", where);
    } else {
        if (c->head_dim % 2 != 0)
            return fl_err_set(err, FL_EINPUT,
                              "%s: head_dim (%d) must be even for rotary "
                              "positions",
                              where, c->head_dim);
        if (!(c->rope_theta > 0 && isfinite(c->rope_theta)))
            return fl_err_set(err, FL_EINPUT, "%s: rope_theta: expected a positive number, got %g",
                              where, (double)c->rope_theta);
        if ((rc = validate_rope(c, where, err))) return rc;
        if (c->arch == FL_ARCH_QWEN2 && !c->qkv_bias)
            return fl_err_set(err, FL_EINPUT, "%s: Qwen2 always has q/k/v biases", where);
        if (c->arch == FL_ARCH_MISTRAL && c->qkv_bias)
            return fl_err_set(err, FL_EINPUT, "%s: Mistral has no attention biases", where);
    }
    if ((rc = check_token(where, "bos_token_id", c->bos_token_id, c->vocab_size, err)) ||
        (rc = check_token(where, "eos_token_id", c->eos_token_id, c->vocab_size, err)))
        return rc;
    return FL_OK;
}

/* ---- presets --------------------------------------------------------------------------------- */

typedef struct preset {
    const char *name;
    int n_layer, d_model, n_head;
    int n_kv_head, d_ff;           /* LLaMA family */
    int gpt2_n_kv_head, gpt2_d_ff; /* GPT-2 */
    int vocab_size, max_position;
} preset;

static const preset PRESETS[] = {
    {"tiny", 2, 64, 4, 2, 128, 4, 256, 512, 256},
    {"small", 4, 256, 8, 4, 688, 8, 1024, 512, 512},
    {"gpt2-124m", 12, 768, 12, 12, 2048, 12, 3072, 50257, 1024},
    {"llama-110m", 12, 768, 12, 12, 2048, 12, 3072, 32000, 1024},
};

/* Family defaults shared by presets and by a config.json that leaves them out. */
static void family_defaults(fl_config *c, fl_arch arch) {
    c->arch = arch;
    c->rope_theta = arch == FL_ARCH_QWEN2 ? 1000000.0f : 10000.0f;
    c->norm_eps = arch == FL_ARCH_GPT2 ? 1e-5f : 1e-6f;
    c->qkv_bias = arch == FL_ARCH_GPT2 || arch == FL_ARCH_QWEN2;
    c->bos_token_id = -1;
}

int fl_config_preset(fl_config *c, fl_arch arch, const char *preset_name, fl_err *err) {
    if ((unsigned)arch >= 4)
        return fl_err_set(err, FL_EINPUT, "unknown architecture %d", (int)arch);
    for (size_t i = 0; i < sizeof PRESETS / sizeof PRESETS[0]; i++) {
        const preset *p = &PRESETS[i];
        if (strcmp(p->name, preset_name) != 0) continue;
        memset(c, 0, sizeof *c);
        family_defaults(c, arch);
        int gpt2 = arch == FL_ARCH_GPT2;
        c->vocab_size = p->vocab_size;
        c->n_layer = p->n_layer;
        c->d_model = p->d_model;
        c->n_head = p->n_head;
        c->n_kv_head = gpt2 ? p->gpt2_n_kv_head : p->n_kv_head;
        c->head_dim = p->d_model / p->n_head;
        c->d_ff = gpt2 ? p->gpt2_d_ff : p->d_ff;
        c->max_position = p->max_position;
        c->tie_embeddings = arch == FL_ARCH_GPT2 || arch == FL_ARCH_QWEN2;
        c->eos_token_id = 256; /* the byte tokenizer's <|endoftext|> */
        return FL_OK;
    }
    return fl_err_set(err, FL_EINPUT,
                      "preset '%.40s' is not known (expected tiny, small, gpt2-124m or llama-110m)",
                      preset_name);
}

/* ---- loading --------------------------------------------------------------------------------- */

typedef struct json_ctx {
    const cJSON *root;
    const char *path;
    fl_err *err;
} json_ctx;

static const cJSON *get_item(const json_ctx *j, const char *key) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(j->root, key);
    return cJSON_IsNull(item) ? NULL : item;
}

static int is_int(const cJSON *item) {
    return cJSON_IsNumber(item) && item->valuedouble == floor(item->valuedouble) &&
           item->valuedouble >= INT_MIN && item->valuedouble <= INT_MAX;
}

/* An integer key; absent or null gives dflt unless required. */
static int get_int(const json_ctx *j, const char *key, int required, int dflt, int *out) {
    const cJSON *item = get_item(j, key);
    if (!item) {
        if (required)
            return fl_err_set(j->err, FL_EINPUT, "%s: %s: missing, expected an integer", j->path,
                              key);
        *out = dflt;
        return FL_OK;
    }
    if (!is_int(item))
        return fl_err_set(j->err, FL_EINPUT, "%s: %s: expected an integer", j->path, key);
    *out = (int)item->valuedouble;
    return FL_OK;
}

static int get_float(const json_ctx *j, const char *key, float dflt, float *out) {
    const cJSON *item = get_item(j, key);
    if (!item) {
        *out = dflt;
        return FL_OK;
    }
    if (!cJSON_IsNumber(item))
        return fl_err_set(j->err, FL_EINPUT, "%s: %s: expected a number", j->path, key);
    *out = (float)item->valuedouble;
    return FL_OK;
}

static int get_bool(const json_ctx *j, const char *key, int dflt, int *out) {
    const cJSON *item = get_item(j, key);
    if (!item) {
        *out = dflt;
        return FL_OK;
    }
    if (!cJSON_IsBool(item))
        return fl_err_set(j->err, FL_EINPUT, "%s: %s: expected true or false", j->path, key);
    *out = cJSON_IsTrue(item);
    return FL_OK;
}

/* bos/eos: an integer, null (-1), or a list of integers (the first one is used). */
static int get_token_id(const json_ctx *j, const char *key, int *out) {
    const cJSON *item = get_item(j, key);
    *out = -1;
    if (!item) return FL_OK;
    if (cJSON_IsArray(item)) item = cJSON_GetArrayItem(item, 0);
    if (item && !is_int(item))
        return fl_err_set(j->err, FL_EINPUT,
                          "%s: %s: expected an integer, a list of integers or null", j->path, key);
    if (item) *out = (int)item->valuedouble;
    return FL_OK;
}

/* A string key that, when present, must be `accepted` or `also_accepted` (may be NULL). */
static int check_string(const json_ctx *j, const char *key, const char *accepted,
                        const char *also_accepted) {
    const cJSON *item = get_item(j, key);
    if (!item) return FL_OK;
    if (!cJSON_IsString(item))
        return fl_err_set(j->err, FL_EINPUT, "%s: %s: expected a string", j->path, key);
    const char *v = item->valuestring;
    if (strcmp(v, accepted) == 0 || (also_accepted && strcmp(v, also_accepted) == 0)) return FL_OK;
    return fl_err_set(j->err, FL_EINPUT, "%s: %s: '%.40s' is not supported (expected '%s'%s%s%s)",
                      j->path, key, v, accepted, also_accepted ? " or '" : "",
                      also_accepted ? also_accepted : "", also_accepted ? "'" : "");
}

/* A boolean key whose `refused` value selects math the model code does not implement. */
static int refuse_bool(const json_ctx *j, const char *key, int refused, const char *why) {
    int value = !refused;
    int rc = get_bool(j, key, !refused, &value);
    if (rc == FL_OK && value == refused)
        rc = fl_err_set(j->err, FL_EINPUT, "%s: %s: %s is not supported (%s)", j->path, key,
                        refused ? "true" : "false", why);
    return rc;
}

static int load_gpt2(fl_config *c, const json_ctx *j) {
    int rc;
    if ((rc = get_int(j, "vocab_size", 1, 0, &c->vocab_size)) ||
        (rc = get_int(j, "n_layer", 1, 0, &c->n_layer)) ||
        (rc = get_int(j, "n_embd", 1, 0, &c->d_model)) ||
        (rc = get_int(j, "n_head", 1, 0, &c->n_head)) ||
        (rc = get_int(j, "n_positions", 1, 0, &c->max_position)))
        return rc;
    long four_c = 4L * c->d_model;
    if ((rc = get_int(j, "n_inner", 0, four_c > INT_MAX ? INT_MAX : (int)four_c, &c->d_ff)) ||
        (rc = get_float(j, "layer_norm_epsilon", 1e-5f, &c->norm_eps)) ||
        (rc = get_bool(j, "tie_word_embeddings", 1, &c->tie_embeddings)) ||
        (rc = check_string(j, "activation_function", "gelu_new", "gelu_pytorch_tanh")) ||
        (rc = refuse_bool(j, "scale_attn_weights", 0, "attention is always scaled")) ||
        (rc = refuse_bool(j, "scale_attn_by_inverse_layer_idx", 1, "expected false")))
        return rc;
    c->n_kv_head = c->n_head;
    c->head_dim = c->n_head > 0 ? c->d_model / c->n_head : 0;
    c->qkv_bias = 1;
    return FL_OK;
}

/* ---- RoPE parameters ---- */

/* The dict of RoPE parameters being read and its name in messages. */
typedef struct rope_dict {
    const cJSON *o; /* NULL: none (every key absent) */
    const char *name;
    const json_ctx *j;
} rope_dict;

static const cJSON *rope_item(const rope_dict *d, const char *key) {
    const cJSON *item = d->o ? cJSON_GetObjectItemCaseSensitive(d->o, key) : NULL;
    return cJSON_IsNull(item) ? NULL : item;
}

/* A number key of the dict: absent or null gives *present = 0 and leaves *out alone. */
static int rope_number(const rope_dict *d, const char *key, double *out, int *present) {
    const cJSON *item = rope_item(d, key);
    *present = item != NULL;
    if (item && !cJSON_IsNumber(item))
        return fl_err_set(d->j->err, FL_EINPUT, "%s: %s.%s: expected a number", d->j->path, d->name,
                          key);
    if (item) *out = item->valuedouble;
    return FL_OK;
}

static int rope_required(const rope_dict *d, const char *key, const char *type, double *out) {
    int present = 0;
    int rc = rope_number(d, key, out, &present);
    if (!rc && !present)
        rc = fl_err_set(d->j->err, FL_EINPUT, "%s: %s.%s: missing (rope_type '%s' needs it)",
                        d->j->path, d->name, key, type);
    return rc;
}

/* original_max_position_embeddings of yarn and llama3, as transformers 5 standardizes it: a
 * top-level key wins over the dict's, and max_position_embeddings is the default. */
static int rope_original(fl_config *c, const rope_dict *d) {
    const cJSON *top = get_item(d->j, "original_max_position_embeddings");
    const cJSON *item = top ? top : rope_item(d, "original_max_position_embeddings");
    c->rope.original_max_position = c->max_position;
    if (!item) return FL_OK;
    if (!is_int(item))
        return fl_err_set(d->j->err, FL_EINPUT,
                          "%s: %s%soriginal_max_position_embeddings: "
                          "expected an integer",
                          d->j->path, top ? "" : d->name, top ? "" : ".");
    c->rope.original_max_position = (int)item->valuedouble;
    return FL_OK;
}

/* YaRN's defaults as _compute_yarn_parameters fills them: a null factor is
 * max_position_embeddings / original; beta_fast and beta_slow fall back to 32 and 1 when absent
 * or 0; attention_factor, unless given, is mscale(factor, mscale) / mscale(factor, mscale_all_dim)
 * when both are nonzero, else 0.1 ln(factor) + 1 (1 for factor <= 1); truncate is true unless
 * false or null. */
static double yarn_mscale(double scale, double mscale) {
    return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

static int rope_yarn(fl_config *c, const rope_dict *d) {
    fl_rope_scaling *r = &c->rope;
    double factor = 0, beta_fast = 0, beta_slow = 0, attention = 0, mscale = 0, mscale_all = 0;
    int has_factor, has_attention, unused;
    int rc = rope_original(c, d);
    if (!rc && !(d->o && cJSON_GetObjectItemCaseSensitive(d->o, "factor"))) /* null: see above */
        rc = fl_err_set(d->j->err, FL_EINPUT, "%s: %s.factor: missing (rope_type 'yarn' needs it)",
                        d->j->path, d->name);
    if (rc || (rc = rope_number(d, "factor", &factor, &has_factor)) ||
        (rc = rope_number(d, "beta_fast", &beta_fast, &unused)) ||
        (rc = rope_number(d, "beta_slow", &beta_slow, &unused)) ||
        (rc = rope_number(d, "attention_factor", &attention, &has_attention)) ||
        (rc = rope_number(d, "mscale", &mscale, &unused)) ||
        (rc = rope_number(d, "mscale_all_dim", &mscale_all, &unused)))
        return rc;
    if (!has_factor) factor = (double)c->max_position / r->original_max_position;
    if (!has_attention)
        attention = mscale != 0 && mscale_all != 0
                        ? yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all)
                        : yarn_mscale(factor, 1.0);
    const cJSON *truncate = d->o ? cJSON_GetObjectItemCaseSensitive(d->o, "truncate") : NULL;
    if (truncate && !cJSON_IsBool(truncate) && !cJSON_IsNull(truncate))
        return fl_err_set(d->j->err, FL_EINPUT, "%s: %s.truncate: expected true, false or null",
                          d->j->path, d->name);
    r->factor = (float)factor;
    r->beta_fast = beta_fast != 0 ? (float)beta_fast : 32.0f;
    r->beta_slow = beta_slow != 0 ? (float)beta_slow : 1.0f;
    r->attention_factor = (float)attention;
    r->truncate = !truncate || cJSON_IsTrue(truncate);
    return FL_OK;
}

static int rope_llama3(fl_config *c, const rope_dict *d) {
    double factor = 0, low = 0, high = 0;
    int rc;
    if ((rc = rope_required(d, "factor", "llama3", &factor)) ||
        (rc = rope_required(d, "low_freq_factor", "llama3", &low)) ||
        (rc = rope_required(d, "high_freq_factor", "llama3", &high)) || (rc = rope_original(c, d)))
        return rc;
    c->rope.factor = (float)factor;
    c->rope.low_freq_factor = (float)low;
    c->rope.high_freq_factor = (float)high;
    return FL_OK;
}

/* The parameters of the rotary embedding, as transformers 5 reads either layout
 * (convert_rope_params_to_dict, standardize_rope_params): a non-empty rope_scaling object wins
 * over rope_parameters; rope_theta is the dict's, else the top-level key, else 10000; rope_type is
 * the dict's rope_type, else its type, else "default". */
static int load_rope(fl_config *c, const json_ctx *j) {
    const cJSON *scaling = get_item(j, "rope_scaling"), *params = get_item(j, "rope_parameters");
    static const char *const keys[] = {"rope_scaling", "rope_parameters"};
    const cJSON *objs[] = {scaling, params};
    for (int i = 0; i < 2; i++)
        if (objs[i] && !cJSON_IsObject(objs[i]))
            return fl_err_set(j->err, FL_EINPUT, "%s: %s: expected an object or null", j->path,
                              keys[i]);
    rope_dict d = {params, "rope_parameters", j};
    if (scaling && scaling->child) d.o = scaling, d.name = "rope_scaling";
    for (const cJSON *item = d.o ? d.o->child : NULL; item; item = item->next)
        if (cJSON_IsObject(item))
            return fl_err_set(j->err, FL_EINPUT,
                              "%s: %s.%.40s: per-layer RoPE parameters are not supported", j->path,
                              d.name, item->string);
    double theta = 10000.0, value = 1;
    int present = 0, rc;
    const cJSON *top_theta = get_item(j, "rope_theta");
    if (top_theta && !cJSON_IsNumber(top_theta))
        return fl_err_set(j->err, FL_EINPUT, "%s: rope_theta: expected a number", j->path);
    if (top_theta) theta = top_theta->valuedouble;
    if ((rc = rope_number(&d, "rope_theta", &theta, &present))) return rc;
    c->rope_theta = (float)theta;
    const cJSON *partial = get_item(j, "partial_rotary_factor");
    if ((rc = rope_number(&d, "partial_rotary_factor", &value, &present))) return rc;
    if (!present && partial) value = cJSON_IsNumber(partial) ? partial->valuedouble : 0;
    if (value != 1)
        return fl_err_set(j->err, FL_EINPUT,
                          "%s: %s%spartial_rotary_factor: only 1 (rotate the whole head) is "
                          "supported",
                          j->path, present ? d.name : "", present ? "." : "");
    const cJSON *type = rope_item(&d, "rope_type");
    const char *type_key = "rope_type";
    if (!type) type = rope_item(&d, "type"), type_key = "type";
    if (type && !cJSON_IsString(type))
        return fl_err_set(j->err, FL_EINPUT, "%s: %s.%s: expected a string", j->path, d.name,
                          type_key);
    const char *name = type ? type->valuestring : "default";
    int t = 0;
    while (t < FL_ROPE_N_TYPES && strcmp(name, ROPE_NAMES[t]) != 0)
        t++;
    if (t == FL_ROPE_N_TYPES)
        return fl_err_set(j->err, FL_EINPUT,
                          "%s: %s.%s: '%.40s' is not supported (expected default, linear, dynamic, "
                          "yarn or llama3)",
                          j->path, d.name, type_key, name);
    memset(&c->rope, 0, sizeof c->rope);
    c->rope.type = (fl_rope_type)t;
    double factor = 1;
    switch (c->rope.type) {
    case FL_ROPE_LINEAR:
    case FL_ROPE_DYNAMIC:
        if ((rc = rope_required(&d, "factor", name, &factor))) return rc;
        c->rope.factor = (float)factor;
        return FL_OK;
    case FL_ROPE_YARN: return rope_yarn(c, &d);
    case FL_ROPE_LLAMA3: return rope_llama3(c, &d);
    default: return FL_OK;
    }
}

/* Mistral's sliding window: see the file comment. */
static int apply_sliding_window(fl_config *c, const json_ctx *j) {
    const cJSON *item = get_item(j, "sliding_window");
    if (!item) return FL_OK;
    if (!is_int(item) || item->valuedouble < 1)
        return fl_err_set(j->err, FL_EINPUT,
                          "%s: sliding_window: expected a positive integer "
                          "or null",
                          j->path);
    if ((int)item->valuedouble < c->max_position && c->rope.type != FL_ROPE_DEFAULT)
        return fl_err_set(j->err, FL_EINPUT,
                          "%s: sliding_window: a window shorter than max_position_embeddings "
                          "together with rope scaling is not supported",
                          j->path);
    if ((int)item->valuedouble < c->max_position) c->max_position = (int)item->valuedouble;
    return FL_OK;
}

static int load_llama_family(fl_config *c, const json_ctx *j) {
    int rc;
    if ((rc = get_int(j, "vocab_size", 1, 0, &c->vocab_size)) ||
        (rc = get_int(j, "num_hidden_layers", 1, 0, &c->n_layer)) ||
        (rc = get_int(j, "hidden_size", 1, 0, &c->d_model)) ||
        (rc = get_int(j, "num_attention_heads", 1, 0, &c->n_head)) ||
        (rc = get_int(j, "intermediate_size", 1, 0, &c->d_ff)) ||
        (rc = get_int(j, "max_position_embeddings", 1, 0, &c->max_position)))
        return rc;
    if ((rc = get_int(j, "num_key_value_heads", 0, c->n_head, &c->n_kv_head)) ||
        (rc =
             get_int(j, "head_dim", 0, c->n_head > 0 ? c->d_model / c->n_head : 0, &c->head_dim)) ||
        (rc = get_float(j, "rms_norm_eps", 1e-6f, &c->norm_eps)) ||
        (rc = get_bool(j, "tie_word_embeddings", 0, &c->tie_embeddings)) ||
        (rc = check_string(j, "hidden_act", "silu", NULL)) || (rc = load_rope(c, j)))
        return rc;
    switch (c->arch) {
    case FL_ARCH_LLAMA:
        if ((rc = get_bool(j, "attention_bias", 0, &c->qkv_bias)) ||
            (rc = refuse_bool(j, "mlp_bias", 1, "MLP biases are not implemented")))
            return rc;
        break;
    case FL_ARCH_QWEN2:
        c->qkv_bias = 1;
        if ((rc = refuse_bool(j, "use_sliding_window", 1,
                              "sliding-window attention is not "
                              "implemented")))
            return rc;
        break;
    default: /* mistral */
        c->qkv_bias = 0;
        if ((rc = apply_sliding_window(c, j))) return rc;
        break;
    }
    return FL_OK;
}

/* DIR/config.json, or path itself when it names a .json file. */
static int config_path(char *out, size_t size, const char *path, fl_err *err) {
    size_t n = strlen(path);
    if (n >= 5 && strcmp(path + n - 5, ".json") == 0) {
        if (n >= size) return fl_err_set(err, FL_EINPUT, "%.200s...: path too long", path);
        memcpy(out, path, n + 1);
        return FL_OK;
    }
    return fl_path_join(out, size, path, "config.json", err);
}

int fl_config_load(fl_config *c, const char *path, fl_err *err) {
    char file[1024];
    int rc = config_path(file, sizeof file, path, err);
    if (rc != FL_OK) return rc;
    char *text = NULL;
    size_t len = 0;
    if ((rc = fl_read_file(file, &text, &len, FL_CFG_MAX_FILE_BYTES, err))) return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    json_ctx j = {root, file, err};
    const cJSON *model_type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    fl_arch arch = FL_ARCH_GPT2;
    if (!root)
        rc = fl_err_set(err, FL_EINPUT, "%s: not valid JSON", file);
    else if (!cJSON_IsObject(root))
        rc = fl_err_set(err, FL_EINPUT, "%s: expected a JSON object", file);
    else if (!cJSON_IsString(model_type))
        rc = fl_err_set(err, FL_EINPUT, "%s: model_type: %s, expected a string", file,
                        model_type ? "wrong type" : "missing");
    else if (fl_arch_parse(&arch, model_type->valuestring, NULL) != FL_OK)
        rc = fl_err_set(err, FL_EINPUT,
                        "%s: model_type: '%.40s' is not supported (expected gpt2, llama, qwen2 or "
                        "mistral)",
                        file, model_type->valuestring);
    if (rc == FL_OK) {
        memset(c, 0, sizeof *c);
        family_defaults(c, arch);
        rc = arch == FL_ARCH_GPT2 ? load_gpt2(c, &j) : load_llama_family(c, &j);
    }
    if (rc == FL_OK && !(rc = get_token_id(&j, "bos_token_id", &c->bos_token_id)))
        rc = get_token_id(&j, "eos_token_id", &c->eos_token_id);
    cJSON_Delete(root);
    return rc == FL_OK ? fl_config_validate(c, file, err) : rc;
}

/* ---- saving ---------------------------------------------------------------------------------- */

/* The shortest decimal that reads back as f, so that 1e-5f is written 1e-05, not
 * 9.99999974737875e-06. */
static double float_as_decimal(float f) {
    char buf[32];
    for (int digits = 6; digits <= 9; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)f);
        double d = strtod(buf, NULL);
        if ((float)d == f) return d;
    }
    return (double)f;
}

static void add_token_id(cJSON *o, const char *key, int id) {
    if (id < 0)
        cJSON_AddNullToObject(o, key);
    else
        cJSON_AddNumberToObject(o, key, id);
}

static void fill_gpt2(cJSON *o, const fl_config *c) {
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "n_layer", c->n_layer);
    cJSON_AddNumberToObject(o, "n_embd", c->d_model);
    cJSON_AddNumberToObject(o, "n_head", c->n_head);
    cJSON_AddNumberToObject(o, "n_inner", c->d_ff);
    cJSON_AddNumberToObject(o, "n_positions", c->max_position);
    cJSON_AddNumberToObject(o, "n_ctx", c->max_position);
    cJSON_AddStringToObject(o, "activation_function", "gelu_new");
    cJSON_AddNumberToObject(o, "layer_norm_epsilon", float_as_decimal(c->norm_eps));
    cJSON_AddNumberToObject(o, "resid_pdrop", 0.0);
    cJSON_AddNumberToObject(o, "embd_pdrop", 0.0);
    cJSON_AddNumberToObject(o, "attn_pdrop", 0.0);
    cJSON_AddBoolToObject(o, "scale_attn_weights", 1);
}

/* rope_scaling in transformers 4's layout (which transformers 5 reads too), with every default
 * written out; null for the default rope. */
static void add_rope_scaling(cJSON *o, const fl_rope_scaling *r) {
    if (r->type == FL_ROPE_DEFAULT) {
        cJSON_AddNullToObject(o, "rope_scaling");
        return;
    }
    cJSON *s = cJSON_AddObjectToObject(o, "rope_scaling");
    if (!s) return;
    cJSON_AddStringToObject(s, "rope_type", ROPE_NAMES[r->type]);
    cJSON_AddNumberToObject(s, "factor", float_as_decimal(r->factor));
    if (r->type == FL_ROPE_LLAMA3 || r->type == FL_ROPE_YARN)
        cJSON_AddNumberToObject(s, "original_max_position_embeddings", r->original_max_position);
    if (r->type == FL_ROPE_LLAMA3) {
        cJSON_AddNumberToObject(s, "low_freq_factor", float_as_decimal(r->low_freq_factor));
        cJSON_AddNumberToObject(s, "high_freq_factor", float_as_decimal(r->high_freq_factor));
    } else if (r->type == FL_ROPE_YARN) {
        cJSON_AddNumberToObject(s, "beta_fast", float_as_decimal(r->beta_fast));
        cJSON_AddNumberToObject(s, "beta_slow", float_as_decimal(r->beta_slow));
        cJSON_AddNumberToObject(s, "attention_factor", float_as_decimal(r->attention_factor));
        cJSON_AddBoolToObject(s, "truncate", r->truncate);
    }
}

static void fill_llama_family(cJSON *o, const fl_config *c) {
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layer);
    cJSON_AddNumberToObject(o, "hidden_size", c->d_model);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->n_head);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_head);
    cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(o, "intermediate_size", c->d_ff);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_position);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddNumberToObject(o, "rms_norm_eps", float_as_decimal(c->norm_eps));
    cJSON_AddNumberToObject(o, "rope_theta", float_as_decimal(c->rope_theta));
    add_rope_scaling(o, &c->rope);
    cJSON_AddNumberToObject(o, "attention_dropout", 0.0);
    if (c->arch == FL_ARCH_LLAMA) {
        cJSON_AddBoolToObject(o, "attention_bias", c->qkv_bias);
        cJSON_AddBoolToObject(o, "mlp_bias", 0);
    } else if (c->arch == FL_ARCH_QWEN2) {
        cJSON_AddBoolToObject(o, "use_sliding_window", 0);
    } else {
        cJSON_AddNullToObject(o, "sliding_window");
    }
}

int fl_config_save(const fl_config *c, const char *path, fl_err *err) {
    char file[1024];
    int rc = config_path(file, sizeof file, path, err);
    if (rc == FL_OK) rc = fl_config_validate(c, file, err);
    if (rc != FL_OK) return rc;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "architectures", cJSON_CreateStringArray(&ARCH_CLASSES[c->arch], 1));
    cJSON_AddStringToObject(o, "model_type", ARCH_NAMES[c->arch]);
    if (fl_config_is_gpt2(c))
        fill_gpt2(o, c);
    else
        fill_llama_family(o, c);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_embeddings);
    add_token_id(o, "bos_token_id", c->bos_token_id);
    add_token_id(o, "eos_token_id", c->eos_token_id);
    cJSON_AddNumberToObject(o, "initializer_range", 0.02);
    cJSON_AddBoolToObject(o, "use_cache", 1);
    cJSON_AddStringToObject(o, "torch_dtype", "float32");
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    if (!text) return fl_err_set(err, FL_ENOMEM, "%s: out of memory writing the config", file);
    size_t len = strlen(text);
    char *with_newline = realloc(text, len + 2);
    if (!with_newline) {
        free(text);
        return fl_err_set(err, FL_ENOMEM, "%s: out of memory writing the config", file);
    }
    with_newline[len] = '\n';
    rc = fl_write_file_atomic(file, with_newline, len + 1, err);
    free(with_newline);
    return rc;
}
