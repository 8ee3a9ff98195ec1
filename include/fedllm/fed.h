/* fed.h — the federated parties: a server and N clients that tune one model together. The data
 * never leaves a client. What a round sends and how updates combine is the job's algorithm's
 * (src/fed/algo/algo.h): FATE-LLM's PELLM (the server sends the global LoRA adapter, every
 * selected client trains it and sends back the change, the server averages the changes and applies
 * them with its optimizer: FedAvg, FedProx, FedAdam, FedYogi; the aggregator below) or FedKSeed
 * (seeds and scalars). The loops here run the rounds around either.
 *
 * Run directory: JOB.output/PARTY/ holds `log` (what the party did, with times), `metrics.jsonl`
 * (a line per round), `outbox.jsonl` (every message the party sent, and every tensor in it: round,
 * peer, name, shape, dtype, bytes, sha256, l2_norm), `status.json` (what it is doing now, for
 * `fedllm run`'s live view); rounds count from 1 in all of them and in messages; the server adds
 * `checkpoint/` (state after the last completed round) and the algorithm's result (`adapter/`, PEFT
 * layout, or `model/`, an HF model directory); JOB.output/summary.json ends the run. */
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
#include "fedllm/transport.h"

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
    int dp_clipped;     /* updates of this round the server had to clip (their client did not) */
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

#define FL_REFUSAL_PEERS    32   /* peers counted apart; the rest share the last slot */
#define FL_REFUSAL_BURST    3    /* refusals logged in full per peer and window */
#define FL_REFUSAL_WINDOW_S 60.0 /* then one line per window counts the rest */

/* Refusals of one peer in the current window. */
typedef struct fl_refusal_count {
    char peer[72];    /* "alice", "key <Z85>"; "" when the slot is free */
    const char *what; /* "messages" or "connections" */
    double since;     /* window start, monotonic seconds */
    int logged;       /* lines written in this window, <= the burst */
    long suppressed;  /* refusals counted but not written */
} fl_refusal_count;

typedef struct fl_party_files {
    char dir[FL_JOB_PATH_MAX]; /* JOB.output/PARTY */
    char party[64];
    FILE *log, *metrics, *outbox;
    double started; /* monotonic seconds */
    double last_status;
    double refusal_window_s; /* 0: FL_REFUSAL_WINDOW_S */
    fl_refusal_count refusals[FL_REFUSAL_PEERS];
    int denied_seen;   /* connections with unlisted keys already reported by the endpoint */
    int debug;         /* FEDLLM_DEBUG set (not "0"): fl_party_debug lines go to the log */
    char warning[256]; /* shown by the live view while set (status.json "warning"); "" for none */
} fl_party_files;

/* Creates the party's directory and opens log, metrics.jsonl and outbox.jsonl (appending when
 * resume, else truncating). Nothing is written through a symbolic link: the party's folder, those
 * files, status.json, console, checkpoint/ and adapter/ must not be links (FL_EINPUT "PATH: is a
 * symbolic link; fedllm does not write through links here (remove it)", before anything is
 * written), nor FIFOs, devices or hard links. */
int fl_party_open(fl_party_files *pf, const fl_job *job, const char *party, int resume,
                  fl_err *err);
/* Writes the refusal counts still pending (see fl_party_refused), closes the files. */
void fl_party_close(fl_party_files *pf);
/* A timestamped line in the log and on stderr, escaped as fl_log_escape does (a line holds at most
 * 1023 bytes before escaping). */
void fl_party_log(fl_party_files *pf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A refusal of something peer sent, logged like fl_party_log but rate limited: the first
 * FL_REFUSAL_BURST of each peer in a window of refusal_window_s are written; the rest are counted,
 * and once the window has passed (seen at the next line, status update or close) one line says
 * "refused N more messages from PEER in the last T s". So a flood of garbage costs a few lines a
 * minute, and the count is never lost. */
void fl_party_refused(fl_party_files *pf, const char *peer, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Server: logs the connections the endpoint denied since the last call (an unlisted key), one line
 * per key and window ("refused a connection from ADDRESS: its key KEY is not listed in the job"),
 * counted like fl_party_refused beyond that. Call it wherever the server waits for messages. */
void fl_party_log_denied(fl_party_files *pf, fl_endpoint *e);
/* Copies in to out (size > 0, always NUL-terminated, cut at a character boundary when short)
 * with every byte that is not part of a printable UTF-8 character written as \xNN: invalid UTF-8,
 * C0 and C1 control characters and DEL. So a peer's bytes quoted in a log line can neither break
 * the line, forge another one, nor drive a terminal. Returns the length written. */
size_t fl_log_escape(char *out, size_t size, const char *in);
/* A line in the log only, marked "debug:", when the environment has FEDLLM_DEBUG (not "0"):
 * things that are expected and need no one's attention (a late but harmless message). */
void fl_party_debug(fl_party_files *pf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends line (a JSON object, taken and freed) to metrics.jsonl; NaN values become null. */
void fl_party_metrics(fl_party_files *pf, cJSON *line);
/* Records every view of p that is being sent to peer in round: name, shape, F32, bytes, SHA-256
 * and L2 norm of its values. */
void fl_party_outbox(fl_party_files *pf, int64_t round, const char *peer, const fl_params *p);
/* Records every tensor of payload (safetensors bytes) sent to peer in round, as fl_party_outbox
 * does: name, shape, dtype, bytes, SHA-256 of its bytes, and the L2 norm of its values (F32, F64
 * and I32; null for other dtypes). A payload that does not parse is recorded as one U8 line. */
void fl_party_outbox_payload(fl_party_files *pf, int64_t round, const char *peer,
                             const uint8_t *payload, size_t len);
/* Records one whole message sent to peer in round: its type (as "name"), "dtype": "MESSAGE",
 * "bytes" = header_bytes + payload_bytes (what crossed the wire above the transport), both parts,
 * and the SHA-256 of the header (which holds the payload's hash). Summing these lines gives a
 * party's bytes sent per round and peer. */
void fl_party_outbox_message(fl_party_files *pf, int64_t round, const char *peer, const char *type,
                             const char *header, size_t header_bytes, size_t payload_bytes);
/* Records meta, the JSON fields of a message sent to peer in round (a report that leaves the
 * party beside its tensors), as an outbox line named name with "dtype": "JSON" and "value". */
void fl_party_outbox_meta(fl_party_files *pf, int64_t round, const char *peer, const char *name,
                          const cJSON *meta);
/* Sets (text) or clears (NULL) the warning the live view shows; quotes and control characters
 * become spaces. */
void fl_party_set_warning(fl_party_files *pf, const char *text);
/* Replaces status.json (atomically) with {"party", "state", "round", "step", "steps", "loss"}
 * and "warning" while one is set; at most every 0.3 s unless force. steps 0: no progress count;
 * loss NAN: none yet (null). */
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
/* The longest frame any party of the job can legitimately send, for the transport's bound
 * (transport.h): the adapter as a payload (the global model, an update; measured by encoding
 * trainable once), with secure aggregation also its largest message (the masked input,
 * 32 + 4 (L + 1) bytes, or a list of 108 bytes per client) in its payload wrapper; plus
 * FL_PAYLOAD_FRAMING_BYTES for the wrapper's header; and never below a header frame's
 * FL_MSG_MAX_HEADER_BYTES. On error (out of memory) FL_ENOMEM and *bytes is 0. */
#define FL_PAYLOAD_FRAMING_BYTES 65536
int fl_job_max_message_bytes(const fl_job *job, const fl_params *trainable, size_t *bytes,
                             fl_err *err);

#endif
