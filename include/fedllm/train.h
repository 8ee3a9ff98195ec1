/* train.h — optimizer, learning-rate schedules, clipping, and the training loop.
 *
 * The optimizer works on a model's trainable table and its gradient table (see model.h), so it is
 * the same code for LoRA and full fine-tuning, and its moments are two more tables of the same
 * layout (a checkpoint or a federated server optimizer is one pass over them). Weight decay applies
 * to views with two or more dimensions (matrices, embeddings, LoRA factors), not to biases and norm
 * scales, as is usual with transformers. */
#ifndef FEDLLM_TRAIN_H
#define FEDLLM_TRAIN_H

#include <stdint.h>
#include <stdio.h>

#include "fedllm/data.h"
#include "fedllm/err.h"
#include "fedllm/model.h"
#include "fedllm/params.h"

typedef enum { FL_SCHED_CONSTANT = 0, FL_SCHED_COSINE } fl_schedule;

typedef struct fl_optim_spec {
    float lr; /* peak learning rate */
    float beta1, beta2, eps;
    float weight_decay; /* decoupled (AdamW) */
    float clip_norm;    /* global gradient-norm clip; <= 0: off */
    fl_schedule schedule;
    int warmup_steps;    /* linear warmup from 0 (cosine and constant alike) */
    int total_steps;     /* for the cosine decay to 0 */
    int schedule_offset; /* steps of the same schedule taken before this optimizer's first one
                            (a federated client's earlier rounds): step k is scheduled at
                            schedule_offset + k, so warmup and decay run once over a whole job */
} fl_optim_spec;

/* lr = 1e-4, betas (0.9, 0.999), eps 1e-8, wd 0, clip 1.0, constant, no warmup. */
fl_optim_spec fl_optim_defaults(void);
/* The learning rate for optimizer step `step` (0-based), as transformers' schedulers compute it:
 * warmup lr*step/warmup, then constant lr or lr*0.5*(1+cos(pi*progress)). */
float fl_schedule_lr(const fl_optim_spec *spec, int step);

typedef struct fl_optimizer {
    fl_optim_spec spec;
    fl_params m, v; /* moments, the trainable table's layout */
    int step;       /* optimizer steps taken */
} fl_optimizer;

int fl_optimizer_init(fl_optimizer *o, const fl_params *trainable, const fl_optim_spec *spec,
                      fl_err *err);
/* Scales grads so that their global L2 norm is at most max_norm (when > 0); returns the norm
 * before clipping. */
double fl_clip_grad_norm(fl_params *grads, float max_norm);
/* One AdamW step at the schedule's lr for o->step, then o->step++. Returns the lr used. */
float fl_optimizer_step(fl_optimizer *o, fl_params *params, const fl_params *grads);
void fl_optimizer_free(fl_optimizer *o);

typedef struct fl_train_spec {
    int batch;      /* B rows per micro-batch */
    int seq;        /* T */
    int grad_accum; /* micro-batches per optimizer step, >= 1 */
    int steps;      /* optimizer steps; 0: derive from epochs */
    int epochs;     /* used when steps == 0 */
    fl_optim_spec optim;
    uint64_t seed;       /* data order (0: file order) */
    uint64_t first_step; /* steps taken by earlier runs of this model (federated rounds), so that
                            LoRA dropout masks never repeat */
    int log_every;       /* steps between metrics lines (>= 1) */
    FILE *metrics;       /* JSONL sink, one line per logged step; NULL: none */
    int progress;        /* 1: live bar on stderr (a terminal); 0: plain lines; -1: silent */
    /* FedProx: adds prox_mu/2 * ||w - prox_anchor||^2 to the loss (prox_mu * (w - anchor) to the
     * gradients, before clipping); anchor has the trainable set's layout. 0 / NULL: off. */
    float prox_mu;
    const float *prox_anchor;
    /* Called after every optimizer step (federated clients report progress with it); may be
     * NULL. */
    void (*on_step)(void *ctx, int step, int total, double loss);
    void *on_step_ctx;
    /* Sample-level DP-SGD (Abadi et al. 2016, Opacus semantics) when dp_clip > 0: every step
     * draws its rows by Poisson sampling (each row with probability q = batch / rows, so the RDP
     * accountant's sampled Gaussian mechanism applies), clips each row's gradient to L2 norm
     * dp_clip, sums them, adds N(0, (dp_noise * dp_clip)^2) to every trainable value and divides by
     * the expected batch size. grad_accum and clip_norm are then unused. */
    float dp_clip;
    float dp_noise; /* noise multiplier sigma */
    uint64_t dp_seed;
} fl_train_spec;

/* One DP-SGD gradient of rows (rows, T) of tokens/targets: for each row its own gradient (mean
 * loss over its counted targets), clipped to L2 norm clip; the sum plus Gaussian noise of std
 * noise * clip (Philox stream (seed, 0)), divided by expected_rows; written to the model's
 * gradient table. *loss_sum and *n_counted cover all rows. Rows without counted targets
 * contribute nothing. */
int fl_dp_sgd_grads(fl_model *m, const int32_t *tokens, const int32_t *targets, int rows, int T,
                    float clip, float noise, uint64_t seed, double expected_rows, double *loss_sum,
                    long *n_counted, fl_err *err);

typedef struct fl_train_stats {
    int steps;
    double first_loss, last_loss;
    double mean_loss;    /* over all steps */
    double tokens_per_s; /* input tokens (B*T per micro-batch) over training time */
    double seconds;
} fl_train_stats;

/* Mean loss per counted target over every row of ds (in file order), B rows per forward-only
 * pass; LoRA dropout is off. *n_counted receives the number of targets. */
int fl_evaluate(fl_model *m, const fl_dataset *ds, int B, double *mean_loss, long *n_counted,
                fl_err *err);

/* Trains m's trainable set on ds. The model must have a trainable set (fl_model_add_lora or
 * fl_model_train_full). An epoch is every row once in the epoch's order; its last step takes the
 * rows that are left (fewer than batch * grad_accum), the loss staying the mean over its targets.
 */
int fl_train_run(fl_model *m, fl_dataset *ds, const fl_train_spec *spec, fl_train_stats *stats,
                 fl_err *err);

#endif
