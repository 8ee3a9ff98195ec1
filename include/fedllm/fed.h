/* fed.h — the federated parties (FATE-LLM's PELLM): a server and N clients that fine-tune one LoRA
 * adapter together. The base model never moves and the data never leaves a client; each round the
 * server sends the global adapter, every selected client trains it on its own data and sends back
 * the change, and the server averages the changes (weighted by sample count) and applies them
 * with its optimizer (FedAvg, FedProx's proximal term on the clients, FedAdam, FedYogi).
 *
 * Run directory: JOB.output/PARTY/ holds `log` (what the party did, with times), `metrics.jsonl`
 * (a line per round), `outbox.jsonl` (every tensor the party sent: round, peer, name, shape,
 * dtype, bytes, sha256, l2_norm), `status.json` (what it is doing now, for `fedllm run`'s live
 * view); the server adds `checkpoint/` (state after the last completed round) and `adapter/` (the
 * final adapter, PEFT layout); JOB.output/summary.json ends the run. */
#ifndef FEDLLM_FED_H
#define FEDLLM_FED_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "fedllm/err.h"
#include "fedllm/job.h"
#include "fedllm/model.h"
#include "fedllm/params.h"
#include "fedllm/secagg.h"

/* ---- server optimizer ----------------------------------------------------------------------- */

/* What the aggregator did with one update (fl_aggregator_add). */
typedef enum {
    FL_UPDATE_ACCEPTED = 0,
    FL_UPDATE_CLIPPED, /* above max_update_norm, scaled down to it (on_large_update: clip) */
    FL_UPDATE_REJECTED_NONFINITE, /* holds NaN or inf: always refused */
    FL_UPDATE_REJECTED_NORM,      /* above max_update_norm (on_large_update: reject) */
    FL_UPDATE_REJECTED_FULL       /* a robust rule's buffer could not grow for it (out of memory) */
} fl_update_verdict;

/* Sums (or, for a robust rule, keeps) the clients' deltas of a round and applies one aggregate to
 * the global trainable buffer: FedAvg / FedProx add it (server learning rate 1); FedAdam and
 * FedYogi (Reddi et al. 2021, "Adaptive Federated Optimization") treat it as a pseudo-gradient
 * with moments m and v.
 *
 * The aggregate is the rule's (job.h's agg_rule): the sample-weighted mean, or — so that one
 * client cannot steer or end the job — a coordinate-wise trimmed mean or median, or (multi-)Krum
 * (Blanchard et al. 2017). The robust rules weigh every client alike (a sample count is the
 * client's own claim) and need every update at once: they keep clients_per_round x n floats
 * (4 bytes each) for the round, where the mean keeps n doubles. Before any rule, an update that
 * holds NaN or inf is refused, and one whose L2 norm is above max_update_norm (when set) is refused
 * or scaled down to it. */
typedef struct fl_aggregator {
    fl_agg_method method;
    fl_agg_rule rule;
    float lr, beta1, beta2, tau;
    int bias_correction;    /* FedAdam/FedYogi: divide m and v by 1 - beta^t (Kingma & Ba) */
    size_t n;               /* values in the buffer */
    double *sum;            /* (n) sum of weight * delta this round (rule mean) */
    double weight;          /* sum of weights this round */
    int count;              /* updates added this round */
    float *rows;            /* (capacity, n) the round's updates, rule != mean; else NULL */
    int capacity;           /* rows' updates: clients_per_round (rule != mean), else unbounded */
    float *step;            /* (n) the round's aggregate, then the step applied */
    double trim_fraction;   /* trimmed_mean: the share cut from each end of every coordinate */
    int byzantine;          /* krum / multi_krum: f, the clients that may be hostile */
    int krum_select;        /* multi_krum: m updates averaged (0: count - f) */
    double max_update_norm; /* L2 bound on one update; 0: none */
    int clip_large;         /* 1: scale an update above the bound down to it; 0: refuse it */
    float *m, *v;           /* (n) FedAdam/FedYogi moments; NULL for FedAvg */
    /* client-level DP-FedAvg (McMahan et al. 2018): every update is clipped to L2 norm dp_clip
     * and weighs 1; the sum gets N(0, (dp_noise * dp_clip)^2) per value before it is divided by
     * the expected number of updates (clients per round). dp_clip 0: off. Only with rule mean. */
    double dp_clip, dp_noise;
    int dp_denominator; /* clients per round: the mean's fixed denominator under DP */
    uint64_t dp_seed;
    int dp_noise_added; /* this round's noise is in sum already */
    int64_t round;      /* rounds applied: numbers the noise stream and the bias correction */
} fl_aggregator;

/* Sets up the aggregator of job (method, rule and bounds) for n values. FL_ENOMEM (naming the
 * bytes a robust rule needs), or FL_EINPUT for a rule the job cannot use (with secure
 * aggregation or client-level DP; fl_job_load refuses these first). On error *a is empty. */
int fl_aggregator_init(fl_aggregator *a, const fl_job *job, size_t n, fl_err *err);
/* Checks one client's delta (local - global) and, unless refused, adds it with weight > 0 (its
 * sample count; 1 under DP and for the robust rules). *norm (may be NULL) gets its L2 norm as
 * sent (computed in double; inf when it holds NaN or inf). Under client-level DP the delta is
 * then clipped to dp_clip (the client clips too; the server does not trust it to). delta is not
 * changed. */
fl_update_verdict fl_aggregator_add(fl_aggregator *a, const float *delta, double weight,
                                    double *norm);
/* "accepted", "clipped", "rejected: not finite", ... for logs. */
const char *fl_update_verdict_name(fl_update_verdict v);
/* The round's aggregate of the updates added into a->step (the rule's, before the optimizer;
 * DP noise included). FL_EINTERNAL with no updates, FL_EINPUT when krum has too few (n < 2f+3).
 * Does not clear the round. */
int fl_aggregator_combine(fl_aggregator *a, fl_err *err);
/* global += the server optimizer's step from this round's aggregate; clears the round. FL_EINTERNAL
 * with no updates or when the step would not be finite (global is then unchanged). */
int fl_aggregator_apply(fl_aggregator *a, float *global, fl_err *err);
/* Forgets the round's updates (a round that is not applied). */
void fl_aggregator_reset(fl_aggregator *a);
void fl_aggregator_free(fl_aggregator *a);
/* Scales v (n values) down to L2 norm max_norm when it is longer; returns the norm before. */
double fl_clip_l2(float *v, size_t n, double max_norm);

/* ---- what a party writes ----------------------------------------------------------------------
 */

typedef struct fl_party_files {
    char dir[FL_JOB_PATH_MAX]; /* JOB.output/PARTY */
    char party[64];
    FILE *log, *metrics, *outbox;
    double started; /* monotonic seconds */
    double last_status;
} fl_party_files;

/* Creates the party's directory and opens log, metrics.jsonl and outbox.jsonl (appending when
 * resume, else truncating). */
int fl_party_open(fl_party_files *pf, const fl_job *job, const char *party, int resume,
                  fl_err *err);
void fl_party_close(fl_party_files *pf);
/* A timestamped line in the log and on stderr. */
void fl_party_log(fl_party_files *pf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends line (a JSON object, taken and freed) to metrics.jsonl; NaN values become null. */
void fl_party_metrics(fl_party_files *pf, cJSON *line);
/* Records every view of p that is being sent to peer in round: name, shape, F32, bytes, SHA-256
 * and L2 norm of its values. */
void fl_party_outbox(fl_party_files *pf, int64_t round, const char *peer, const fl_params *p);
/* Replaces status.json (atomically) with {"party", "state", "round", "step", "steps", "loss"};
 * at most every 0.3 s unless force. */
void fl_party_status(fl_party_files *pf, const char *state, int64_t round, int step, int steps,
                     double loss, int force);

/* ---- the parties --------------------------------------------------------------------------------
 */

/* `fedllm server JOB [--resume]`: runs every round, writes the final adapter and summary.json.
 * Returns FL_OK when the job completed. */
int fl_server_run(const fl_job *job, int resume, fl_err *err);
/* `fedllm client JOB --name NAME`: joins, trains every round it is sent, evaluates the final
 * adapter and leaves. */
int fl_client_run(const fl_job *job, const char *name, fl_err *err);

/* The job's model (model.path) with its LoRA adapters (peft), seeded by train.seed: the same
 * adapter layout on every party. NULL with err set. */
fl_model *fl_job_model(const fl_job *job, fl_err *err);

/* Secure aggregation's messages travel as a payload holding one U8 tensor "secagg". from_payload
 * points *bytes into payload. FL_EPEER for anything else. */
int fl_bytes_to_payload(const uint8_t *bytes, size_t n, uint8_t **out, size_t *len, fl_err *err);
int fl_bytes_from_payload(const uint8_t *payload, size_t len, const uint8_t **bytes, size_t *n,
                          fl_err *err);
/* An outbox line for bytes sent that are not a parameter table (secure aggregation's messages). */
void fl_party_outbox_bytes(fl_party_files *pf, int64_t round, const char *peer, const char *name,
                           const uint8_t *bytes, size_t n);
/* The round's secure-aggregation config from the job, for n selected clients and len values. */
int fl_job_secagg_config(const fl_job *job, uint32_t n, int64_t round, size_t len,
                         fl_secagg_config *cfg, fl_err *err);

/* Payloads: a parameter table as safetensors bytes (F32, the table's names), and back. Loading
 * requires exactly the table's names and shapes. */
int fl_params_to_payload(const fl_params *p, uint8_t **out, size_t *len, fl_err *err);
int fl_params_from_payload(fl_params *p, const uint8_t *data, size_t len, fl_err *err);

#endif
