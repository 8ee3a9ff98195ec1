/* rope.c — the rotary frequencies of a config (the default rope and the linear, dynamic NTK, YaRN
 * and LLaMA 3.1 scalings) and the cos/sin tables a model keeps for its passes.
 *
 * The frequencies follow transformers' modeling_rope_utils.py step by step, in its precision:
 * torch computes them on float32 tensors, with Python numbers (factor, wavelength bounds) cast to
 * float32 where they meet a tensor and kept double where they meet only other Python numbers
 * (YaRN's correction range, LLaMA 3's wavelength bounds). pow is taken in double and rounded, which
 * is within an ulp of torch's float32 pow; a config's values are floats, so a Python double that
 * is no float (a factor of 0.1) is rounded once more than in transformers — an ulp again.
 *
 * Tables: positions x HD/2 floats of cos and of sin, indexed by absolute position. Every type but
 * dynamic has one table over the whole context (fl_config_context), computed at load. Dynamic NTK
 * depends on the pass: transformers recomputes inv_freq from seq_len = the largest position id + 1
 * whenever that exceeds max_position_embeddings, so a pass of T <= max_position uses the default
 * table and a longer one a table computed for its own seq_len, kept until a pass needs another.
 * transformers additionally remembers the largest seq_len it has seen (a later pass shorter than
 * that but longer than max_position reuses the larger one until a pass shorter than
 * max_position resets it); fedllm's tables depend on the pass alone, which is what transformers
 * computes for a fresh model and along one generation, where seq_len only grows. */
#include <math.h>
#include <string.h>

#include "fedllm/config.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"

static float pow_f32(float base, float exponent) {
    return (float)pow((double)base, (double)exponent);
}

/* inv_freq[i] = 1 / base^(2i/dim), as 1.0 / (base ** (arange(0, dim, 2).float() / dim)). */
static void default_frequencies(float *inv_freq, int dim, float base) {
    for (int i = 0; i < dim / 2; i++)
        inv_freq[i] = 1.0f / pow_f32(base, (float)(2 * i) / (float)dim);
}

/* _compute_llama3_parameters. */
static void llama3_frequencies(float *inv_freq, int dim, float base, const fl_rope_scaling *r) {
    default_frequencies(inv_freq, dim, base);
    double old_context = r->original_max_position;
    float low_wavelen = (float)(old_context / r->low_freq_factor);
    float high_wavelen = (float)(old_context / r->high_freq_factor);
    float factor = r->factor, low = r->low_freq_factor;
    float band = (float)((double)r->high_freq_factor - (double)r->low_freq_factor);
    for (int i = 0; i < dim / 2; i++) {
        float wavelen = (float)(2 * M_PI) / inv_freq[i];
        float f = wavelen > low_wavelen ? inv_freq[i] / factor : inv_freq[i];
        float smooth = ((float)old_context / wavelen - low) / band;
        float smoothed = (1.0f - smooth) * f / factor + smooth * f;
        int medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
        inv_freq[i] = medium ? smoothed : f;
    }
}

/* find_correction_dim: the dimension at which a wavelength makes num_rotations turns over the
 * original context (Python doubles). */
static double yarn_correction_dim(double num_rotations, int dim, double base, double positions) {
    return dim * log(positions / (num_rotations * 2 * M_PI)) / (2 * log(base));
}

/* _compute_yarn_parameters: frequencies below the correction range are interpolated (divided by
 * factor), above it kept (extrapolated), with a linear ramp between. */
static void yarn_frequencies(float *inv_freq, int dim, float base, const fl_rope_scaling *r) {
    double positions = r->original_max_position;
    double low = yarn_correction_dim(r->beta_fast, dim, base, positions);
    double high = yarn_correction_dim(r->beta_slow, dim, base, positions);
    if (r->truncate) low = floor(low), high = ceil(high);
    if (low < 0) low = 0;
    if (high > dim - 1) high = dim - 1;
    if (low == high) high += 0.001; /* linear_ramp_factor's guard against a zero width */
    float ramp_low = (float)low, ramp_width = (float)(high - low), factor = r->factor;
    for (int i = 0; i < dim / 2; i++) {
        float pos_freq = pow_f32(base, (float)(2 * i) / (float)dim);
        float extrapolation = 1.0f / pos_freq, interpolation = 1.0f / (factor * pos_freq);
        float ramp = ((float)i - ramp_low) / ramp_width;
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float keep = 1.0f - ramp; /* inv_freq_extrapolation_factor */
        inv_freq[i] = interpolation * (1.0f - keep) + extrapolation * keep;
    }
}

/* _compute_dynamic_ntk_parameters with a tensor seq_len (the forward pass): the base grows as
 * theta * (factor * seq_len / L - (factor - 1))^(dim / (dim - 2)), in float32. */
static float dynamic_base(const fl_config *c, int seq_len, int dim) {
    const fl_rope_scaling *r = &c->rope;
    float x = r->factor * (float)seq_len;
    x = x / (float)c->max_position;
    x = x - (float)((double)r->factor - 1.0);
    x = pow_f32(x, (float)((double)dim / (dim - 2)));
    return c->rope_theta * x;
}

float fl_rope_frequencies(const fl_config *c, int seq_len, float *inv_freq) {
    const fl_rope_scaling *r = &c->rope;
    int dim = c->head_dim;
    switch (r->type) {
    case FL_ROPE_LINEAR:
        default_frequencies(inv_freq, dim, c->rope_theta);
        for (int i = 0; i < dim / 2; i++)
            inv_freq[i] /= r->factor;
        return 1.0f;
    case FL_ROPE_DYNAMIC:
        default_frequencies(inv_freq, dim,
                            seq_len > c->max_position ? dynamic_base(c, seq_len, dim)
                                                      : c->rope_theta);
        return 1.0f;
    case FL_ROPE_YARN:
        yarn_frequencies(inv_freq, dim, c->rope_theta, r);
        return r->attention_factor;
    case FL_ROPE_LLAMA3: llama3_frequencies(inv_freq, dim, c->rope_theta, r); return 1.0f;
    default: default_frequencies(inv_freq, dim, c->rope_theta); return 1.0f;
    }
}

/* ---- a model's tables ------------------------------------------------------------------------ */

int fl_model_rope_init(fl_model *m, fl_err *err) {
    const fl_config *c = &m->cfg;
    fl_rope_tables *rt = &m->rope;
    if (fl_config_is_gpt2(c)) return FL_OK;
    int half = c->head_dim / 2, context = fl_config_context(c);
    int dynamic = c->rope.type == FL_ROPE_DYNAMIC;
    rt->rows = dynamic && c->max_position < context ? c->max_position : context;
    size_t table = (size_t)rt->rows * half, long_table = dynamic ? (size_t)context * half : 0;
    rt->buffer = fl_alloc((2 * table + 2 * long_table + (size_t)half) * sizeof(float), err);
    if (!rt->buffer) return FL_ENOMEM;
    rt->cos = rt->buffer;
    rt->sin = rt->cos + table;
    rt->long_cos = dynamic ? rt->sin + table : NULL;
    rt->long_sin = dynamic ? rt->long_cos + long_table : NULL;
    rt->inv_freq = rt->sin + table + 2 * long_table;
    float scale = fl_rope_frequencies(c, rt->rows, rt->inv_freq);
    fl_rope_table(rt->cos, rt->sin, 0, rt->rows, rt->inv_freq, half, scale);
    rt->long_seq_len = 0;
    m->rope_cos = rt->cos;
    m->rope_sin = rt->sin;
    return FL_OK;
}

void fl_model_rope_select(fl_model *m, int seq_len, int first, int end) {
    const fl_config *c = &m->cfg;
    fl_rope_tables *rt = &m->rope;
    if (fl_config_is_gpt2(c)) return;
    if (c->rope.type != FL_ROPE_DYNAMIC || seq_len <= c->max_position) {
        m->rope_cos = rt->cos;
        m->rope_sin = rt->sin;
        return;
    }
    if (rt->long_seq_len != seq_len || first < rt->long_first || end > rt->long_end) {
        int half = c->head_dim / 2;
        float scale = fl_rope_frequencies(c, seq_len, rt->inv_freq);
        fl_rope_table(rt->long_cos, rt->long_sin, first, end - first, rt->inv_freq, half, scale);
        rt->long_seq_len = seq_len;
        rt->long_first = first;
        rt->long_end = end;
    }
    m->rope_cos = rt->long_cos;
    m->rope_sin = rt->long_sin;
}
