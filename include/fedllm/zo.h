/* zo.h — zeroth-order full-parameter training (MeZO's two-point step as FedKSeed uses it): the
 * seeded Gaussian direction z(s), the step, replaying (seed, scalar) updates, and FedKSeed's seed
 * pool (K candidate seeds from one master seed, FedKSeed-Pro probabilities, sampling).
 *
 * The table. Zeroth-order training changes fl_zo_table(m): the model's trainable table when it has
 * one (fl_model_train_full, or LoRA factors), otherwise the whole base table. Full-parameter
 * FedKSeed therefore needs neither fl_model_train_full (whose gradient table doubles the memory)
 * nor optimizer state: the model once plus one evaluation pass's activations.
 *
 * z(s). The packed index of a value is its position when the table's views are laid end to end in
 * table order (for the base: the Hugging Face names in layout order) without the alignment
 * padding between them: element j (row-major) of view v has index start(v) + j, start(v) = the
 * numel of the views before v. z_i(s) ~ N(0, 1) comes from Philox4x32-10 with key s (fl_philox):
 * value i uses counter 16 * floor(i / 64) + i % 16 and, with j = i % 64, the words (w0, w1) when
 * j < 32 and (w2, w3) otherwise, through Box-Muller: u1 = ((wa >> 8) + 1) 2^-24 in (0, 1],
 * angle = 2 pi (wb >> 8) 2^-24, z = sqrt(-2 ln u1) * (cos angle if (j / 16) is even, else sin).
 * So one Philox call gives four normals, and any value can be regenerated alone. z is computed in
 * IEEE single precision with +, -, *, /, sqrt and explicit fused multiply-adds in a fixed order,
 * with its own polynomial log, sin and cos (never libm, whose results vary between versions and
 * CPU dispatch), and its file is compiled without floating-point contraction: the same bits on
 * every CPU, at every thread count, in every build, and for a GPU kernel written the same way.
 *
 * The step (fl_zo_step), per value with e = eps, z = z_i(s), u = 2^-24:
 *   theta = fma(e, z, theta)       then L+ = mean loss of the batch (evaluation pass)
 *   theta = fma(-2e, z, theta)     then L- = mean loss of the batch
 *   theta = fma(e, z, theta)       the round trip back
 *   g = (L+ - L-) / (2e) in double, rounded to float: the scalar a client reports
 *   theta = fma(-a, z, theta - d * theta), a = fl(lr * g), d = fl(lr * weight_decay) on views of
 *   two or more dimensions (matrices, embeddings, LoRA factors; 0 on biases and norm scales).
 * The round trip is not exact in floating point: it returns theta + delta with
 * |delta| <= 3u (|theta| + e |z|) (each fma rounds once). Restoring exactly would need a copy of
 * the model, so the round trip is part of what a step is: fl_zo_replay repeats it, and a party
 * replaying another's step records reaches that party's model bit for bit. A step is skipped (the
 * round trip happens, the update does not) when g is not finite (a NaN or infinite loss) or, with
 * grad_clip > 0, when |g| > grad_clip: FATE-LLM's grad_clip drops the step, it does not clamp g.
 *
 * FedKSeed's model (FATE-LLM 2.2 fedkseed.py ClientTrainer.train_once, and the FedKSeed reference
 * server's update_global_model_by_seed_pool): each round every party rebuilds the model from the
 * initial one, theta_r = fl_zo_apply(theta_0, candidates, S_r, K), where S_r[k] sums every g that
 * any client reported for candidate k in rounds 1..r (not divided by the number of clients in
 * FATE-LLM; the caller chooses the weights). The candidates are taken in their order, a zero sum
 * is skipped, and each non-zero sum is one update theta -= lr (S z + weight_decay theta): weight
 * decay acts once per candidate, neither once per local step nor compounding over rounds. The
 * incremental form, fl_zo_apply(theta_{r-1}, candidates, S_r - S_{r-1}, K), costs only the seeds
 * used in round r and equals the full replay in exact arithmetic when weight_decay is 0 (the model
 * is then linear in the sums); in floating point the two differ by rounding only, bounded in
 * docs/fedkseed.md. With weight_decay > 0 the incremental form decays theta once more per round and
 * is a different model from FedKSeed's: replay from theta_0 then.
 *
 * Departures from FATE-LLM 2.2 (docs/fedkseed.md): its local step applies no weight decay at all
 * (zo_utils takes the first parameter group's 0.0 for every group) and its replay decays every
 * tensor; fedllm decays views of two or more dimensions in both, as the FedKSeed reference (all but
 * biases and norms) and fedllm's AdamW do. z is not torch.normal's stream; both are N(0, 1).
 *
 * Nothing here allocates more than O(views + n) bytes; on error the model is unchanged except
 * where a function says otherwise. A model must not be used from two threads at once. */
#ifndef FEDLLM_ZO_H
#define FEDLLM_ZO_H

#include <stddef.h>
#include <stdint.h>

#include "fedllm/err.h"
#include "fedllm/model.h"
#include "fedllm/params.h"

typedef struct fl_zo_spec {
    float eps;          /* perturbation scale, finite and > 0 (FATE-LLM: 5e-4) */
    float lr;           /* learning rate, finite and >= 0 */
    float weight_decay; /* finite and >= 0; on views of two or more dimensions */
    float grad_clip;    /* > 0: skip a step whose |g| exceeds it; <= 0: off (FATE-LLM: -100) */
} fl_zo_spec;

/* eps 5e-4, lr 1e-5 (FATE-LLM's tutorial), weight_decay 0, grad_clip -100 (off). */
fl_zo_spec fl_zo_defaults(void);

/* The table zeroth-order training changes: fl_model_trainable(m), or the base when m has none. */
fl_params *fl_zo_table(fl_model *m);

/* out[k] = z_{index + k}(seed) for k < n (see above). Cannot fail. */
void fl_zo_normal(float *out, size_t n, uint64_t seed, uint64_t index);

/* The outcome of one step. */
typedef struct fl_zo_result {
    double loss_plus, loss_minus; /* mean loss over counted targets at theta + e z, theta - e z */
    float grad;                   /* g = (L+ - L-) / (2 eps) rounded to float */
    int applied;                  /* 1: theta was updated; 0: skipped (see above) */
} fl_zo_result;

/* One zeroth-order step on tokens/targets (B, T) (targets -100 are not counted) with direction
 * seed, as described above: two evaluation passes, no backward, no gradient memory. FL_EINPUT
 * for a NULL argument, an invalid spec, B or T < 1, T beyond the context, a token or target
 * outside the vocabulary, or a batch without counted targets; the model is then unchanged. If a
 * pass fails later (FL_ENOMEM for its activations) the model is returned to theta within the
 * round-trip bound and the error is returned. */
int fl_zo_step(fl_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
               uint64_t seed, const fl_zo_spec *spec, fl_zo_result *result, fl_err *err);

/* A step as another party replays it. */
typedef struct fl_zo_record {
    uint64_t seed;
    float grad;  /* fl_zo_result.grad */
    int applied; /* fl_zo_result.applied */
} fl_zo_record;

/* Repeats n steps in order, each its round trip with spec->eps and, when applied, its update:
 * given the model the steps started from and the same spec, the result equals the stepping
 * party's model bit for bit at any thread count. Skipped steps must be included to get every bit
 * (leaving one out changes each value by at most its round-trip bound). FL_EINPUT for n < 0, NULL
 * pointers (records may be NULL when n is 0) or an invalid spec; the model is then unchanged. */
int fl_zo_replay(fl_model *m, const fl_zo_record *records, int n, const fl_zo_spec *spec,
                 fl_err *err);

/* Applies n updates in order: for each i with coeffs[i] != 0,
 * theta = fma(-fl(lr * coeffs[i]), z(seeds[i]), theta - d * theta) with d as in the step; a zero
 * coefficient is skipped (no weight decay either), as FedKSeed skips a seed whose sum is zero.
 * With (seed, g) of one applied step this is exactly that step's update; with the candidates and
 * their summed g's it is FedKSeed's model (see above). spec->eps and grad_clip are not used. One
 * pass over the table handles many updates, so K = 4096 seeds cost K normal generations per value
 * but one sweep of memory. FL_EINPUT for n < 0, NULL pointers (allowed when n is 0), a non-finite
 * coefficient, or an invalid lr or weight_decay; the model is then unchanged. */
int fl_zo_apply(fl_model *m, const uint64_t *seeds, const double *coeffs, int n,
                const fl_zo_spec *spec, fl_err *err);

/* ---- FedKSeed's seed pool -------------------------------------------------------------------- */

/* seeds[k] for k < K: candidate k of master seed, the words (w0 | w1 << 32) of
 * fl_philox(master_seed, k), so that only the master seed needs sending. Two candidates collide
 * with probability about K^2 / 2^65 (5e-13 for K = 4096); a collision only means two candidates
 * share a direction. FL_EINPUT for K < 1 or a NULL seeds. */
int fl_zo_candidates(uint64_t master_seed, int K, uint64_t *seeds, fl_err *err);

/* FedKSeed-Pro's importance of one reported g: adds |clamp(g, -bias_loss_clip, bias_loss_clip)|
 * to *amp_sum and 1 to *count (bias_loss_clip <= 0: no clamp). FATE-LLM starts each candidate's
 * history with grad_initial (0.0), which counts as one entry. A NaN g adds nothing. */
void fl_zo_amp_add(double *amp_sum, int64_t *count, float g, float bias_loss_clip);

/* FedKSeed-Pro's sampling probabilities (FATE-LLM zo_utils.probability_from_amps): with
 * amp[k] = amp_sum[k] / count[k] (0 when count[k] is 0), a = (amp - min amp) / (max amp - min amp
 * + 1e-10), probs = softmax(a), in double. FL_EINPUT for K < 1, NULL arrays, a negative count or
 * a negative or non-finite amp_sum. */
int fl_zo_probabilities(const double *amp_sum, const int64_t *count, int K, double *probs,
                        fl_err *err);

/* Draws a candidate index in [0, K) for draw number `draw` of the Philox stream stream_seed:
 * with probabilities probs[0..K-1] (non-negative, not all zero; normalised here), or uniformly
 * when probs is NULL. The same (stream_seed, draw) gives the same index everywhere. FL_EINPUT for
 * K < 1, a NULL index, or negative, non-finite or all-zero probs; *index is then unchanged. */
int fl_zo_sample(const double *probs, int K, uint64_t stream_seed, uint64_t draw, int *index,
                 fl_err *err);

#endif
