/* job.h — the job file: one YAML file that every party of a federated run reads.
 *
 * The same file drives `fedllm run job.yaml` (every party on one machine), `fedllm server
 * job.yaml` and `fedllm client job.yaml --name alice`. It names the model, the adapter, the local
 * training, the data format, how the server aggregates, the server's address and key, and every
 * client with its key and data files (see examples/quickstart.yaml and DESIGN.md "Job file").
 *
 * The whole file is validated before anything runs: an unknown key anywhere (a typo such as
 * `local_step`), a missing required key, a value of the wrong type or out of range, a duplicate
 * client name or key, and YAML syntax errors are all reported together, one line each, in file
 * order, as "FILE:LINE: key.path: what was expected". Types follow YAML: integers and floats are
 * plain (unquoted) scalars (an integer is accepted where a float is expected), booleans are
 * `true` / `false` only, a null (`~`, `null` or nothing) means "not given". Aliases (*name), more
 * than one document, nesting deeper than FL_JOB_MAX_DEPTH and files over FL_JOB_MAX_BYTES are
 * refused. Relative paths in the file (model.path, keys, data files, output, ipc:// addresses)
 * are made relative to the job file's directory.
 *
 * Bounds: at most FL_JOB_MAX_CLIENTS clients; every path below FL_JOB_PATH_MAX bytes (a key
 * prefix 4 bytes less, for its ".pub" / ".key"); names below 64 bytes. */
#ifndef FEDLLM_JOB_H
#define FEDLLM_JOB_H

#include <stdint.h>

#include "fedllm/err.h"

#define FL_JOB_PATH_MAX     1024
#define FL_JOB_MAX_BYTES    (1 << 20) /* a job file is a few hundred bytes; refuse anything huge */
#define FL_JOB_MAX_DEPTH    16        /* the schema needs 4 levels */
#define FL_JOB_MAX_CLIENTS  4096
#define FL_JOB_MAX_PROBLEMS 100       /* problems listed; the rest are counted on one last line */
#define FL_JOB_MAX_SEEDS    (1 << 20) /* fedkseed.k: FedKSeed's pool (the paper: 4096) */

typedef enum { FL_DP_NONE = 0, FL_DP_CLIENT, FL_DP_SAMPLE } fl_dp_level;
typedef enum { FL_AGG_FEDAVG = 0, FL_AGG_FEDPROX, FL_AGG_FEDADAM, FL_AGG_FEDYOGI } fl_agg_method;
/* How the round's updates become one (fed.h's aggregator; docs/protocol.md "Robust aggregation").
 */
typedef enum {
    FL_RULE_MEAN = 0,     /* sample-weighted mean */
    FL_RULE_TRIMMED_MEAN, /* coordinate-wise, trim_fraction cut from each end */
    FL_RULE_MEDIAN,       /* coordinate-wise */
    FL_RULE_KRUM,         /* the update closest to its n - f - 2 nearest others */
    FL_RULE_MULTI_KRUM    /* the mean of the krum_select best-scored updates */
} fl_agg_rule;

typedef struct fl_job_client {
    char name[64];               /* [A-Za-z0-9_-], 1..63 chars, unique, not "server" */
    char key[FL_JOB_PATH_MAX];   /* key prefix: KEY.pub (and KEY.key on that client's machine) */
    char train[FL_JOB_PATH_MAX]; /* JSONL */
    char eval[FL_JOB_PATH_MAX];  /* JSONL, "" when absent */
    int line;                    /* job-file lines (1-based; 0: unknown) of the entry and keys */
    int key_line, train_line, eval_line;
} fl_job_client;

typedef struct fl_job {
    char path[FL_JOB_PATH_MAX];       /* the job file, as given */
    char name[64];                    /* job: (required; [A-Za-z0-9_.-], not "." or "..") */
    char algorithm[32]; /* "pellm" (default), "fedkseed" or "offsite_tuning" (src/fed/algo/) */
    int fedkseed;       /* algorithm is fedkseed */
    int offsite;        /* algorithm is offsite_tuning */
    char model_path[FL_JOB_PATH_MAX]; /* model.path (required): an HF model directory */
    int model_path_line;
    /* peft: {method: lora, r, alpha, dropout, targets: [..], train_base: [norms, biases]} */
    int lora_r;               /* default 8, 1..4096 */
    float lora_alpha;         /* default 2*r, > 0 */
    float lora_dropout;       /* default 0, [0, 1) */
    char lora_targets[256];   /* comma-joined roles or HF module names, default "attn_q,attn_v";
                                 each accepted by fl_lora_parse_targets for at least one family
                                 (the model's own family is checked when it is loaded) */
    char lora_train_base[64]; /* comma-joined subset of {norms, biases}, default "" */
    unsigned lora_train_base_mask; /* the same as FL_TRAIN_NORMS | FL_TRAIN_BIASES (model.h) */
    /* train */
    int rounds;                    /* required, 1..1000000 */
    int local_steps, local_epochs; /* exactly one of them > 0 (the other 0) */
    int batch, seq;                /* defaults 4 and 128; batch * seq <= FL_MAX_PASS_TOKENS */
    int grad_accum;                /* default 1 */
    float lr;                      /* required, > 0 */
    char schedule[16];             /* "constant" (default) or "cosine" */
    int warmup_steps;              /* default 0 */
    int schedule_per_round;   /* train.schedule_over: "job" (0, default: warmup and cosine decay run
                                 once over rounds x local steps, as HF Trainer over the same steps)
                                 or "round" (1: the schedule restarts in every round) */
    float weight_decay, clip; /* defaults 0 and 1.0 (0 = no clipping) */
    char precision[8];        /* "fp32" (default) or "bf16" */
    uint64_t seed;            /* default 1 */
    /* data */
    int data_format; /* fl_data_format: FL_DATA_TEXT (default) or FL_DATA_PROMPT_RESPONSE */
    char text_field[64], prompt_field[64], response_field[64]; /* text / prompt / response */
    char template_name[32]; /* data.template: "" (none, default) or plain, chatml, llama-2,
                               llama-3 (fl_tokenizer_set_chat_format); prompt_response only */
    int data_refuse_long;   /* data.truncate: false: a record longer than seq + 1 tokens is an
                               error (default true: truncated, fl_data_spec.refuse_long) */
    /* aggregation */
    fl_agg_method agg; /* method: fedavg (default) | fedprox | fedadam | fedyogi; FedAvg weights
                          each client's update by its sample count */
    float prox_mu;     /* fedprox: mu, required > 0 (0 otherwise) */
    float server_lr, beta1, beta2, tau; /* fedadam/fedyogi: server_lr 1e-1, beta1 0, beta2
                                           0.99, tau 8e-2 (given with other methods: error;
                                           docs/aggregation.md says why these) */
    int bias_correction;                /* fedadam/fedyogi: default 1 (see docs/protocol.md) */
    fl_agg_rule agg_rule;               /* rule: mean (default) | trimmed_mean | median | krum |
                                           multi_krum; not with secure aggregation or client DP */
    double trim_fraction;               /* trimmed_mean: (0, 0.5), default 0.2; it must cut at
                                           least one update at min_clients */
    int byzantine;                      /* krum/multi_krum: f >= 1 (default 1); min_clients must
                                           be >= 2f + 3 */
    int krum_select;                    /* multi_krum: m in 1..min_clients - f; 0: n - f */
    double max_update_norm;             /* L2 bound on one client's update; 0: none (default) */
    int clip_large_updates;             /* on_large_update: reject (0, default) | clip (1) */
    int min_clients;                    /* 1..clients_per_round; default clients_per_round */
    double round_deadline_s;            /* default 600, (0, 1e6] */
    double fraction;                    /* clients sampled per round, (0, 1], default 1 */
    int clients_per_round;              /* ceil(fraction * n_clients), at least 1 (derived) */
    /* privacy.secure_aggregation: true or {threshold, clip_range, bits, neighbours, max_samples}
     * (0 = the default for the round's number of clients n: threshold n/2 + 1, the most bits
     * that n sums fit in 32, the complete graph); a client's weight is samples / max_samples,
     * capped at 1 */
    int secure_aggregation;
    int sa_threshold, sa_bits, sa_neighbours;
    double sa_clip_range;     /* default 1 */
    double sa_max_samples;    /* default 1e6 */
    int dp;                   /* privacy.dp.level: FL_DP_NONE (absent or false), client, sample */
    double dp_clip;           /* clip: L2 norm of each update (client) or row gradient (sample) */
    double dp_noise;          /* noise_multiplier sigma; 0 when target_epsilon is given */
    double dp_target_epsilon; /* calibrate sigma for this epsilon over the whole job; 0: none */
    double dp_delta;          /* default 1e-5 */
    double dp_max_epsilon;    /* stop before a round that would pass it; 0: no limit */
    /* server */
    char server_address[256]; /* required: tcp://HOST:PORT (port 1..65535; HOST a name, an IPv4
                                 address or [IPv6]) or ipc://PATH (resolved like other paths) */
    char server_bind[256];    /* server.bind: what the server binds (tcp host may be the
                                 wildcard "*"). Default: the address itself when its host is an IP
                                 literal or for ipc, 127.0.0.1 for localhost, else the wildcard
                                 host on the same port (ZeroMQ binds interfaces, not DNS names) */
    char server_key[FL_JOB_PATH_MAX]; /* server.key prefix, required */
    int server_key_line;
    double heartbeat_s; /* server.heartbeat_s, default 1, (0, 3600] */
    /* fedkseed: (algorithm fedkseed only; docs/fedkseed.md). With fedkseed, train: gives rounds,
     * batch, seq and seed only, and peft:, secure aggregation and DP are refused. */
    int zo_k;     /* k: candidate seeds K, default 4096, 1..FL_JOB_MAX_SEEDS */
    float zo_eps; /* eps: perturbation scale, default 5e-4, > 0 */
    float zo_lr;  /* lr: required, > 0 */
    int zo_steps; /* steps_per_round: zeroth-order steps per client and round, required */
    int zo_pro;   /* pro: FedKSeed-Pro's seed-importance sampling (default true) */
    float zo_bias_loss_clip; /* bias_loss_clip: |g| clamp of the importance, and the server's
                                bound on a reported scalar; default 1000, > 0 */
    float zo_grad_clip;      /* grad_clip: a local step with |g| above it is skipped; 0: off */
    float zo_weight_decay;   /* weight_decay: default 0 */
    /* offsite: (algorithm offsite_tuning only; docs/offsite.md). The model's bottom and top
     * blocks are the adapters; emulator_layers of the middle blocks, dropped uniformly, stand in
     * for the rest on the clients. */
    int ot_bottom, ot_top; /* adapter_bottom, adapter_top: default 2 and 2, >= 1 */
    int ot_emulator;       /* emulator_layers: middle blocks kept, required, >= 1 */
    int ot_distill;        /* distill: steps of emulator distillation on the server, default 0 */
    int ot_aggregate;      /* aggregate: true (default): OT+, FedAvg of the adapters every round;
                              false: one data owner, whose adapters come back at the end */
    int ot_lora;           /* trainable: full (0, default: every weight of the adapter blocks)
                              or lora (1: LoRA of peft: on the adapter blocks only) */
    int ot_line;           /* the offsite: section's line, for checks against the model */
    /* clients */
    fl_job_client *clients;       /* owned, n_clients entries */
    int n_clients;                /* 1..FL_JOB_MAX_CLIENTS */
    char output[FL_JOB_PATH_MAX]; /* default runs/<job> (relative to the job file) */
} fl_job;

/* Parses and validates the whole file into *job (zeroed first). On failure returns FL_EINPUT
 * (FL_ENOMEM, or FL_EIO when the file cannot be read) and leaves *job empty (fl_job_free is safe);
 * *problems (when problems is not NULL) receives every problem found, one per line, each
 * "FILE:LINE: key.path: what was expected", in file order, at most FL_JOB_MAX_PROBLEMS of them
 * plus a count of the rest (malloc'd, the caller frees; NULL on success); err->msg holds the first
 * line. check_files 1 also checks every file the job names, as fl_job_check_files(job, NULL)
 * does; 0 checks none (each party then calls fl_job_check_files for its own). */
int fl_job_load(fl_job *job, const char *path, int check_files, char **problems, fl_err *err);

/* Checks that the files a party needs exist, reporting as fl_job_load does (the lines are the
 * job-file lines of the keys naming them):
 *   "server": model.path/config.json, the server's KEY.key and KEY.pub, every client's KEY.pub;
 *   a client name: model.path/config.json, the server's KEY.pub, its own KEY.key and KEY.pub,
 *     its train and eval files;
 *   NULL: everything (all parties on one machine).
 * A party that is neither "server" nor a client of the job is FL_EINPUT naming it and the
 * clients. FL_OK and *problems NULL when all is there. */
int fl_job_check_files(const fl_job *job, const char *party, char **problems, fl_err *err);

/* The client named name, or NULL. */
const fl_job_client *fl_job_client_find(const fl_job *job, const char *name);

/* Clients sampled from n for fraction in (0, 1]: ceil(fraction * n), computed so that 0.28 of
 * 25 is 7 (not 8, as 0.28 * 25 is 7.000000000000001 in double), at least 1. The job's
 * clients_per_round is this of all its clients; the server samples this of those that joined. */
int fl_job_sample_count(double fraction, int n);

/* A client's learning-rate schedule for round `round` (0-based) of the job, on n_rows training
 * rows: sets optim's warmup_steps, total_steps and schedule_offset. With train.schedule_over: job
 * (the default) warmup and cosine decay span rounds x steps-per-round (local_steps, or this
 * client's local_epochs x ceil(n_rows / (batch x grad_accum))) and round r starts at step r x
 * per-round; with schedule_over: round, every round runs the whole schedule over its own steps. */
struct fl_optim_spec;
void fl_job_round_schedule(const fl_job *job, int round, long n_rows, struct fl_optim_spec *optim);

/* Releases the clients and zeroes *job; safe on a zeroed or already freed job. */
void fl_job_free(fl_job *job);

#endif
