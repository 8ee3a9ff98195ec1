/* trainer.c — the training loop: micro-batches, gradient accumulation, clipping, AdamW, the
 * schedule, progress on the terminal and metrics lines.
 *
 * The loss of an optimizer step is the mean over every counted target of its micro-batches, so
 * the head gradient is scaled by 1 / (targets counted in the whole step), whatever the split. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/clock.h"
#include "fedllm/rng.h"
#include "fedllm/train.h"

static void show_progress(const fl_train_spec *spec, int step, int total, double loss,
                          double tokens_per_s, double elapsed) {
    if (spec->progress < 0) return;
    if (spec->progress == 1) {
        enum { WIDTH = 24 };
        int filled = (int)((double)WIDTH * step / total);
        char bar[WIDTH + 1];
        for (int i = 0; i < WIDTH; i++)
            bar[i] = i < filled ? '#' : '.';
        bar[WIDTH] = 0;
        double eta = step ? elapsed / step * (total - step) : 0;
        fprintf(stderr, "\r[%s] step %d/%d  loss %.4f  %.0f tok/s  eta %.0fs   ", bar, step, total,
                loss, tokens_per_s, eta);
        if (step == total) fputc('\n', stderr);
    } else if (step == total || step % spec->log_every == 0 || step == 1) {
        fprintf(stderr, "step %d/%d loss %.4f tokens/s %.0f\n", step, total, loss, tokens_per_s);
    }
}

int fl_evaluate(fl_model *m, const fl_dataset *ds, int B, double *mean_loss, long *n_counted,
                fl_err *err) {
    double sum = 0;
    long counted = 0;
    int T = ds->T;
    for (long row = 0; row < ds->n_rows; row += B) {
        int rows = ds->n_rows - row < B ? (int)(ds->n_rows - row) : B;
        fl_pass_result r;
        int rc = fl_model_forward(m, ds->tokens + (size_t)row * T, ds->targets + (size_t)row * T,
                                  rows, T, FL_PASS_EVAL, 0, &r, err);
        if (rc) return rc;
        sum += r.loss_sum;
        counted += r.n_counted;
    }
    *mean_loss = counted ? sum / (double)counted : 0.0;
    if (n_counted) *n_counted = counted;
    return FL_OK;
}

int fl_dp_sgd_grads(fl_model *m, const int32_t *tokens, const int32_t *targets, int rows, int T,
                    float clip, float noise, uint64_t seed, double expected_rows, double *loss_sum,
                    long *n_counted, fl_err *err) {
    fl_params *grads = fl_model_grads(m);
    if (!grads || !(clip > 0) || !(noise >= 0) || !(expected_rows > 0))
        return fl_err_set(err, FL_EINTERNAL, "DP-SGD needs a trainable set, clip > 0, noise >= 0");
    size_t n = grads->numel;
    float *sum = calloc(n, sizeof *sum);
    if (!sum) return fl_err_set(err, FL_ENOMEM, "out of memory for DP-SGD's gradient sum");
    int rc = FL_OK;
    *loss_sum = 0;
    *n_counted = 0;
    for (int r = 0; r < rows && !rc; r++) {
        const int32_t *row_targets = targets + (size_t)r * T;
        long counted = 0;
        for (int t = 0; t < T; t++)
            counted += row_targets[t] != -100;
        if (!counted) continue;
        memset(grads->data, 0, n * sizeof(float));
        fl_pass_result res;
        rc = fl_model_forward(m, tokens + (size_t)r * T, row_targets, 1, T, FL_PASS_TRAIN,
                              1.0f / (float)counted, &res, err);
        if (!rc) rc = fl_model_backward(m);
        if (rc) break;
        *loss_sum += res.loss_sum;
        *n_counted += res.n_counted;
        double sq = 0;
        for (size_t i = 0; i < n; i++)
            sq += (double)grads->data[i] * grads->data[i];
        double norm = sqrt(sq), scale = norm > clip ? clip / norm : 1.0;
        for (size_t i = 0; i < n; i++)
            sum[i] += (float)(scale * grads->data[i]);
    }
    if (!rc) { /* the noise goes into the gradient table, then (sum + noise) / expected rows */
        fl_rng_normal(grads->data, n, seed, 0, noise * clip);
        float inv = (float)(1.0 / expected_rows);
        for (size_t i = 0; i < n; i++)
            grads->data[i] = (sum[i] + grads->data[i]) * inv;
    }
    free(sum);
    return rc;
}

/* Poisson sampling for DP-SGD: the rows of step `step`, each kept with probability q (at most cap
 * of them). */
static long poisson_rows(const fl_dataset *ds, uint64_t seed, uint64_t step, double q,
                         int32_t *tokens, int32_t *targets, long cap) {
    long n = 0;
    int T = ds->T;
    for (long r = 0; r < ds->n_rows && n < cap; r++)
        if (fl_rng_uniform_at(seed ^ 0xD5u, step, (size_t)r) < q) {
            memcpy(tokens + (size_t)n * T, ds->tokens + (size_t)r * T, (size_t)T * sizeof *tokens);
            memcpy(targets + (size_t)n * T, ds->targets + (size_t)r * T,
                   (size_t)T * sizeof *targets);
            n++;
        }
    return n;
}

int fl_train_run(fl_model *m, fl_dataset *ds, const fl_train_spec *spec, fl_train_stats *stats,
                 fl_err *err) {
    memset(stats, 0, sizeof *stats);
    fl_params *params = fl_model_trainable(m), *grads = fl_model_grads(m);
    if (!params) return fl_err_set(err, FL_EINTERNAL, "model has no trainable set");
    int B = spec->batch, T = spec->seq, accum = spec->grad_accum < 1 ? 1 : spec->grad_accum;
    if (T != ds->T)
        return fl_err_set(err, FL_EINTERNAL, "dataset rows are %d tokens, not %d", ds->T, T);
    long rows_per_step = (long)B * accum;
    int steps_per_epoch = (int)((ds->n_rows + rows_per_step - 1) / rows_per_step);
    int total =
        spec->steps > 0 ? spec->steps : steps_per_epoch * (spec->epochs > 0 ? spec->epochs : 1);
    fl_optim_spec optim = spec->optim;
    if (optim.total_steps <= 0) optim.total_steps = total;
    fl_optimizer opt;
    if (fl_optimizer_init(&opt, params, &optim, err)) return err ? err->code : FL_ENOMEM;
    int dp = spec->dp_clip > 0;
    double q = dp ? (double)B / (double)ds->n_rows : 0;
    if (dp && q > 1) q = 1;
    long dp_cap = dp ? (long)(4.0 * B + 16) : 0; /* a Poisson batch beyond this is cut */
    if (dp && dp_cap > ds->n_rows) dp_cap = ds->n_rows;
    if (dp && dp_cap > rows_per_step) rows_per_step = dp_cap;
    size_t per_step = (size_t)rows_per_step * T;
    int32_t *tokens = malloc(per_step * sizeof *tokens),
            *targets = malloc(per_step * sizeof *targets);
    if (!tokens || !targets) {
        free(tokens);
        free(targets);
        fl_optimizer_free(&opt);
        return fl_err_set(err, FL_ENOMEM, "out of memory");
    }
    int rc = FL_OK, epoch = 0;
    long row = 0;
    fl_dataset_shuffle(ds, spec->seed, epoch);
    double start = fl_now_s(), tokens_seen = 0;
    for (int step = 0; step < total && !rc; step++) {
        double loss_sum = 0, grad_norm = 0;
        long counted = 0, rows;
        float lr;
        if (dp) { /* DP-SGD: Poisson-sampled rows, per-row clipping, noise */
            uint64_t global_step = spec->first_step + (uint64_t)step;
            rows = poisson_rows(ds, spec->dp_seed, global_step, q, tokens, targets, dp_cap);
            fl_model_set_dropout(m, 1, global_step * 65536u);
            rc = fl_dp_sgd_grads(m, tokens, targets, (int)rows, T, spec->dp_clip, spec->dp_noise,
                                 spec->dp_seed * 1000003u + global_step, q * (double)ds->n_rows,
                                 &loss_sum, &counted, err);
            if (rc) break;
        } else {
            if (row >= ds->n_rows) { /* next epoch, new order */
                row = 0;
                fl_dataset_shuffle(ds, spec->seed, ++epoch);
            }
            /* An epoch's last step takes the rows left, so no row trains twice an epoch. */
            rows = ds->n_rows - row < rows_per_step ? ds->n_rows - row : rows_per_step;
            fl_dataset_batch(ds, row, (int)rows, tokens, targets);
            row += rows;
            for (size_t i = 0; i < (size_t)rows * T; i++)
                counted += targets[i] != -100;
            memset(grads->data, 0, grads->numel * sizeof(float));
            for (long first = 0, micro = 0; first < rows && !rc; first += B, micro++) {
                int micro_rows = rows - first < B ? (int)(rows - first) : B;
                /* Every micro-batch draws its own LoRA dropout masks, across runs too. */
                fl_model_set_dropout(
                    m, 1, (spec->first_step + (uint64_t)step) * (uint64_t)accum + (uint64_t)micro);
                fl_pass_result r;
                size_t at = (size_t)first * T;
                rc = fl_model_forward(m, tokens + at, targets + at, micro_rows, T, FL_PASS_TRAIN,
                                      counted ? 1.0f / (float)counted : 0.0f, &r, err);
                if (!rc) rc = fl_model_backward(m);
                loss_sum += r.loss_sum;
            }
            if (rc) break;
            if (spec->prox_mu > 0 && spec->prox_anchor)
                for (size_t i = 0; i < params->numel; i++)
                    grads->data[i] += spec->prox_mu * (params->data[i] - spec->prox_anchor[i]);
            grad_norm = fl_clip_grad_norm(grads, optim.clip_norm);
        }
        lr = fl_optimizer_step(&opt, params, grads);
        double loss = counted ? loss_sum / (double)counted : 0.0;
        if (!isfinite(loss)) {
            rc = fl_err_set(err, FL_EINPUT, "loss became %g at step %d (lower the learning rate)",
                            loss, step + 1);
            break;
        }
        tokens_seen += (double)rows * T;
        double elapsed = fl_now_s() - start;
        if (step == 0) stats->first_loss = loss;
        stats->last_loss = loss;
        stats->steps = step + 1;
        stats->mean_loss += (loss - stats->mean_loss) / (step + 1);
        double tps = tokens_seen / (elapsed > 0 ? elapsed : 1e-9);
        if (spec->metrics && ((step + 1) % spec->log_every == 0 || step + 1 == total || step == 0))
            fprintf(spec->metrics,
                    "{\"step\": %d, \"epoch\": %d, \"loss\": %.6f, \"lr\": %.6g, \"%s\": %.6g, "
                    "\"rows\": %ld, \"tokens\": %.0f, \"tokens_per_s\": %.1f, "
                    "\"elapsed_s\": %.3f}\n",
                    step + 1, epoch, loss, lr, dp ? "dp_noise" : "grad_norm",
                    dp ? (double)spec->dp_noise : grad_norm, rows, tokens_seen, tps, elapsed);
        show_progress(spec, step + 1, total, loss, tps, elapsed);
        if (spec->on_step) spec->on_step(spec->on_step_ctx, step + 1, total, loss);
    }
    stats->seconds = fl_now_s() - start;
    stats->tokens_per_s = tokens_seen / (stats->seconds > 0 ? stats->seconds : 1e-9);
    fl_model_set_dropout(m, 0, 0);
    free(tokens);
    free(targets);
    fl_optimizer_free(&opt);
    return rc;
}
