/* trainer.c — the training loop: micro-batches, gradient accumulation, clipping, AdamW, the
 * schedule, progress on the terminal and metrics lines.
 *
 * The loss of an optimizer step is the mean over every counted target of its micro-batches, so
 * the head gradient is scaled by 1 / (targets counted in the whole step), whatever the split. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fedllm/train.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

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
    double start = now_s(), tokens_seen = 0;
    for (int step = 0; step < total && !rc; step++) {
        if (row >= ds->n_rows) { /* next epoch, new order */
            row = 0;
            fl_dataset_shuffle(ds, spec->seed, ++epoch);
        }
        /* An epoch's last step takes the rows that are left, so no row trains twice an epoch. */
        long rows = ds->n_rows - row < rows_per_step ? ds->n_rows - row : rows_per_step;
        size_t step_tokens = (size_t)rows * T;
        fl_dataset_batch(ds, row, (int)rows, tokens, targets);
        row += rows;
        long counted = 0;
        for (size_t i = 0; i < step_tokens; i++)
            counted += targets[i] != -100;
        memset(grads->data, 0, grads->numel * sizeof(float));
        double loss_sum = 0;
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
        double grad_norm = fl_clip_grad_norm(grads, optim.clip_norm);
        float lr = fl_optimizer_step(&opt, params, grads);
        double loss = counted ? loss_sum / (double)counted : 0.0;
        if (!isfinite(loss)) {
            rc = fl_err_set(err, FL_EINPUT, "loss became %g at step %d (lower the learning rate)",
                            loss, step + 1);
            break;
        }
        tokens_seen += (double)step_tokens;
        double elapsed = now_s() - start;
        if (step == 0) stats->first_loss = loss;
        stats->last_loss = loss;
        stats->steps = step + 1;
        stats->mean_loss += (loss - stats->mean_loss) / (step + 1);
        double tps = tokens_seen / (elapsed > 0 ? elapsed : 1e-9);
        if (spec->metrics && ((step + 1) % spec->log_every == 0 || step + 1 == total || step == 0))
            fprintf(
                spec->metrics,
                "{\"step\": %d, \"epoch\": %d, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6g, "
                "\"tokens\": %.0f, \"tokens_per_s\": %.1f, \"elapsed_s\": %.3f}\n",
                step + 1, epoch, loss, lr, grad_norm, tokens_seen, tps, elapsed);
        show_progress(spec, step + 1, total, loss, tps, elapsed);
        if (spec->on_step) spec->on_step(spec->on_step_ctx, step + 1, total, loss);
    }
    stats->seconds = now_s() - start;
    stats->tokens_per_s = tokens_seen / (stats->seconds > 0 ? stats->seconds : 1e-9);
    fl_model_set_dropout(m, 0, 0);
    free(tokens);
    free(targets);
    fl_optimizer_free(&opt);
    return rc;
}
