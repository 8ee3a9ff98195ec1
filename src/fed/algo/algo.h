/* algo.h — what a federated algorithm is to the runtime.
 *
 * The server's and the client's loops (src/fed/server.c, client.c) run rounds, deadlines, drops,
 * rejoins, --resume, secure aggregation, DP accounting, the outbox, metrics and the live view, and
 * know no algorithm's details. An algorithm (one file here, one fl_algo table) says what the
 * server sends a client at round start, what the client does with it and sends back, how the
 * server combines what came back, what it checkpoints, and what it writes at the end. The job's
 * `algorithm:` key picks it (fl_algo_find); docs/algorithms.md describes how to add one.
 *
 * Messages. Every payload is safetensors bytes (protocol.h); the loops record each tensor of
 * every payload a party sends in its outbox (fl_party_outbox_payload), and every message's size
 * with its header, so an algorithm cannot send anything unrecorded. Meta fields that an algorithm
 * adds to round_start or to an update are its own; the loops add theirs (rounds, samples,
 * train_loss, eval_loss, seconds, session, secagg, dp_noise).
 *
 * A round, as the loops drive it:
 *   server: round_start(client) for each selected client -> payload + meta;
 *   client: receive(round_start) brings its model to the round's global state; the loop evaluates
 *           it on the eval split; train() runs the local work and fills an fl_algo_update;
 *   server: add_update() for each update (or, under secure aggregation, secure_sum() once for the
 *           masked sum), then apply() (enough updates) or reset() (too few; the round is redone);
 *           save() checkpoints the state after the round;
 *   end:    finish() writes the result and final_start() gives each client what it needs to hold
 *           the final model, which the client loads with receive(final = 1) and evaluates.
 *
 * Ownership. State is the algorithm's own (void *), made by init and released by free (safe on
 * NULL). Payload pointers an algorithm returns stay its own and valid until its next call.
 * Every function returns FL_OK or an fl_err code with err set. */
#ifndef FEDLLM_ALGO_H
#define FEDLLM_ALGO_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "fedllm/data.h"
#include "fedllm/err.h"
#include "fedllm/fed.h"
#include "fedllm/job.h"
#include "fedllm/model.h"
#include "fedllm/protocol.h"
#include "fedllm/secagg.h"

/* What the server did with one update (add_update). */
typedef enum {
    FL_ALGO_ACCEPTED = 0, /* used as sent */
    FL_ALGO_CLIPPED,      /* used, scaled down to a bound (logged with why) */
    FL_ALGO_REJECTED,     /* answered but not used: out of bounds (logged with why) */
    FL_ALGO_REFUSED       /* malformed: refused (rate-limited log); the round still waits for it */
} fl_algo_status;

typedef struct fl_algo_verdict {
    fl_algo_status status;
    char why[320];    /* CLIPPED, REJECTED, REFUSED: the log line's reason, naming the client */
    char detail[128]; /* ACCEPTED, CLIPPED: what the log line adds ("L2 norm 0.41") */
} fl_algo_verdict;

/* What a client did with a round_start or the final round_end (receive). */
typedef enum { FL_ALGO_TAKEN = 0, FL_ALGO_SKIP, FL_ALGO_REJOIN } fl_algo_receipt;

/* What the server knows at apply time that the algorithm may need. */
typedef struct fl_algo_round {
    int64_t round;   /* 1 .. rounds */
    int updates;     /* accepted updates of the round (or the secure sum's count) */
    double dp_noise; /* client-level DP's noise multiplier in use; 0 without DP */
} fl_algo_round;

/* What the client's loop gives an algorithm. */
typedef struct fl_algo_client_ctx {
    const fl_job *job;
    const fl_job_client *me;
    int index; /* in job->clients */
    fl_party_files *pf;
    fl_model *m;       /* the client's model, as fl_algo.model built it */
    fl_dataset *train; /* its training rows */
} fl_algo_client_ctx;

/* What a client sends back for a round. */
typedef struct fl_algo_update {
    cJSON *meta;      /* the algorithm's fields (owned by the update; the loop adds its own) */
    uint8_t *payload; /* plain: the update's payload (safetensors, malloc'd, taken) */
    size_t payload_len;
    /* secure aggregation: the vector to mask and its weight in [0, 1] (the algorithm's memory) */
    const float *vector;
    double weight;
    /* reported by every algorithm: steps taken, mean and last training loss of the round */
    int steps;
    double mean_loss, first_loss, last_loss;
    cJSON *metrics; /* fields for the client's metrics line (owned by the update) */
} fl_algo_update;

/* Frees what an update holds and zeroes it. */
void fl_algo_update_free(fl_algo_update *u);

/* Capabilities: what the job may combine the algorithm with (fl_job_load checks them). */
#define FL_ALGO_SECURE_AGGREGATION 1u /* secure_length / secure_sum implemented */
#define FL_ALGO_DP                 2u /* client- and sample-level DP */
#define FL_ALGO_ROBUST             4u /* aggregation.rule and max_update_norm */

typedef struct fl_algo {
    const char *name; /* the job's `algorithm:` value */
    unsigned caps;

    /* The model every party of the job uses (the server only if the algorithm needs one). */
    fl_model *(*model)(const fl_job *job, fl_err *err);

    /* ---- server ---- */
    int (*server_init)(void **state, const fl_job *job, fl_party_files *pf, fl_err *err);
    /* The longest frame a client may send the server (fl_job_max_message_bytes's rule). */
    size_t (*server_max_message_bytes)(void *state);
    /* A client joined (meta as it sent it); may be NULL. */
    void (*server_join)(void *state, int client, const cJSON *meta);
    /* round_start for client: fields to add to meta, and its payload (may be NULL, len 0). */
    int (*round_start)(void *state, int64_t round, int client, cJSON *meta, const uint8_t **payload,
                       size_t *len, fl_err *err);
    /* One client's update of round (header, meta and payload already checked by protocol.c;
     * weight its sample count). Fills *v. Errors are for the server itself (FL_ENOMEM). */
    int (*add_update)(void *state, int64_t round, int client, const fl_msg *m, double weight,
                      fl_algo_verdict *v, fl_err *err);
    /* Secure aggregation: the length of the vector each client masks, and the round's sum. */
    size_t (*secure_length)(void *state);
    int (*secure_sum)(void *state, fl_secagg_server *sa, int count, fl_err *err);
    /* Combines the round; adds its fields to the round's metrics line (and logs). */
    int (*apply)(void *state, const fl_algo_round *r, cJSON *metrics, fl_err *err);
    /* Forgets a round that is not applied. */
    void (*reset)(void *state);
    /* Checkpoint after round: files under dir and fields in state.json's "algorithm" object
     * (the loop writes state.json after save, atomically); load reads them back for --resume. */
    int (*save)(void *state, const char *dir, int64_t round, cJSON *fields, fl_err *err);
    int (*load)(void *state, const char *dir, int64_t round, const cJSON *fields, fl_err *err);
    /* After state.json names round: removes the files of older rounds (may be NULL). */
    void (*prune)(void *state, const char *dir, int64_t round);
    /* After the last completed round: writes the result under party_dir and names it in the
     * summary ("adapter" or "model"). */
    int (*finish)(void *state, const char *party_dir, int64_t round, cJSON *summary, fl_err *err);
    /* The final round_end's payload for client (what it needs to hold the final model). */
    int (*final_start)(void *state, int client, cJSON *meta, const uint8_t **payload, size_t *len,
                       fl_err *err);
    void (*server_free)(void *state);

    /* ---- client ---- */
    int (*client_init)(void **state, const fl_algo_client_ctx *ctx, fl_err *err);
    /* The longest frame the server may send this client. */
    size_t (*client_max_message_bytes)(void *state);
    /* Secure aggregation: the length of the vector this client masks. */
    size_t (*client_secure_length)(void *state);
    /* Fields for the client's join (what it holds, for a rejoin); may be NULL. */
    void (*client_join)(void *state, cJSON *meta);
    /* A round_start (final 0) or the final round_end (final 1): brings the model to the global
     * state it describes and sets *receipt. FL_ALGO_SKIP: the message does not fit (err says why;
     * the loop logs it and skips the message); FL_ALGO_REJOIN: the same, and the client joins
     * again, so that the server learns what it holds and sends what it needs. A returned error
     * stops the client (a global model that is not finite, say). */
    int (*receive)(void *state, const fl_msg *m, int final, fl_algo_receipt *receipt, fl_err *err);
    /* The round's local work on the model receive() prepared. secure_threshold 0: a plain round
     * (fill payload); else secure aggregation with that threshold t (fill vector and weight). */
    int (*train)(void *state, const fl_msg *start, unsigned secure_threshold, fl_algo_update *out,
                 fl_err *err);
    void (*client_free)(void *state);
} fl_algo;

/* One round of local training for algorithms whose update is the change of the model's trainable
 * table (PELLM, offsite-tuning): anchor holds the round's global values on entry (the FedProx
 * anchor) and the change (local − global) on return, clipped for client-level DP; out gets the
 * steps, losses, meta and metrics, and under secure aggregation (secure_threshold > 0) the vector
 * (anchor's data, noised under client-level DP) and weight. The caller encodes the plain payload.
 * rdp accumulates sample-level DP's privacy loss. */
struct fl_rdp;
int fl_algo_local_round(const fl_algo_client_ctx *ctx, fl_params *trainable, fl_params *anchor,
                        struct fl_rdp *rdp, const fl_msg *m, unsigned secure_threshold,
                        fl_algo_update *out, fl_err *err);

/* For algorithms that combine vectors with fed.h's aggregator (PELLM, offsite-tuning): adds
 * one client's update (named `client` in the verdict's lines) and fills *v: its L2 norm, and
 * clipped or rejected against max_update_norm, or rejected as the aggregator says. */
void fl_algo_aggregate(fl_aggregator *agg, const float *update, double weight, const char *client,
                       double max_update_norm, fl_algo_verdict *v);
/* Secure aggregation's round: the masked sum (and its weight) into the aggregator. */
int fl_algo_secure_sum(fl_aggregator *agg, fl_secagg_server *sa, int count, fl_err *err);

/* The algorithm named name, or NULL. */
const fl_algo *fl_algo_find(const char *name);

extern const fl_algo fl_algo_pellm;
extern const fl_algo fl_algo_fedkseed;
extern const fl_algo fl_algo_offsite;

/* Offsite-tuning's emulator (offsite.c): the full model's block behind each of the *n emulator
 * blocks of an L-block model with bottom and top adapter blocks and `emulator` middle blocks
 * kept (layers: room for bottom + emulator + top). FL_EINPUT when they do not fit. */
int fl_offsite_plan(int L, int bottom, int top, int emulator, int *layers, int *n, fl_err *err);

#endif
