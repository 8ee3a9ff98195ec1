/* secagg.h — secure aggregation (SecAgg, Bonawitz et al. 2017; SecAgg+, Bell et al. 2020): the
 * server learns the sum of the clients' weighted updates and the sum of their weights, and nothing
 * about any one client's, even when clients drop out part-way through a round.
 *
 * This is the message-level core, without sockets: a client object and a server object per round,
 * one function per protocol stage, and every message as bytes that the runtime ships in its
 * payloads. docs/secagg.md describes the protocol, the byte layout of every message, the security
 * argument and the parameter limits. One round, with U1 ⊇ U2 ⊇ U3 ⊇ U4 the clients that completed
 * each stage:
 *
 *   stage             client (each i)                         server
 *   0 AdvertiseKeys   advertise() ──ADVERTISE──▶              collect_advertise() per client
 *                                 ◀──KEYS (one for all U1)──  end_advertise()
 *   1 ShareKeys       share_keys(KEYS) ──SHARES──▶            collect_shares() per client
 *                                 ◀──FORWARD (one per i∈U2)── end_shares(), forward_for(i)
 *   2 MaskedInput     masked_input(FORWARD, x, w) ──MASKED──▶ collect_masked() per client
 *                                 ◀──SURVIVORS (one for U3)── end_masked()
 *   3 Unmasking       unmask(SURVIVORS) ──UNMASK──▶           collect_unmask() per client
 *                                                             finish() → Σ w·x, Σ w
 *
 * Objects are for one round (fresh keys every round): make new ones with the round's config.
 * Client indices are 0 .. n_clients-1, the same on every party (the runtime maps names to them);
 * the server is told which index sent a message (`from`, from the transport's authentication) and
 * refuses a message whose own sender field differs.
 *
 * Failure: every function returns FL_OK or a code from err.h with err->msg set. A refused peer
 * message is FL_EPEER, and the object is unchanged (the runtime logs the reason and goes on). A
 * round that cannot complete (too few clients left for the threshold) is FL_EPEER from the
 * server's end_* or finish(), after which that server object refuses everything (the round is
 * over and the server holds nothing it could unmask). Calling a stage out of order is
 * FL_EINTERNAL. Nothing aborts on outside input. Output messages are malloc'd and the caller
 * frees them; on error *msg is NULL. Not thread-safe per object; different objects may be used from
 * different threads. */
#ifndef FEDLLM_SECAGG_H
#define FEDLLM_SECAGG_H

#include <stddef.h>
#include <stdint.h>

#include "fedllm/err.h"

#define FL_SECAGG_MAX_CLIENTS  65535u /* share points x = index + 1 are nonzero GF(2^16) values */
#define FL_SECAGG_MAX_VALUES   (1u << 30) /* vector_len bound: a masked message stays under 4 GiB */
#define FL_SECAGG_HEADER_BYTES 32         /* every message starts with this header */
#define FL_SECAGG_SERVER_INDEX 0xFFFFFFFFu /* the sender field of the server's messages */

/* Called with one line (no newline) for things refused inside a call that still succeeds: a share
 * that fails authentication, a wrong share found while unmasking, values clipped. */
typedef void (*fl_secagg_log_fn)(void *log_ctx, const char *line);

/* The round's public parameters: every party of a round must use the same values (they are
 * hashed into a session id that binds every message and key; a mismatch is refused). */
typedef struct fl_secagg_config {
    uint32_t n_clients;  /* 2 .. FL_SECAGG_MAX_CLIENTS: indices 0 .. n_clients-1 */
    uint32_t threshold;  /* t: shares needed to rebuild a secret; 2 <= t <= k+1, 2t > k+1 */
    uint32_t neighbours; /* k: 0 (or >= n_clients-1) = complete graph (SecAgg); else even, >= 2:
                          * each client is masked with and shares its secrets among k others
                          * (SecAgg+'s random Harary graph) */
    uint32_t bits;       /* fixed-point resolution: 1 .. 31, n_clients * (2^bits - 1) < 2^32 */
    double clip_range;   /* c > 0: each weighted value is clipped to [-c, c] */
    uint64_t round;      /* the round id, bound into every key and message */
    uint64_t vector_len; /* L: values per update, 0 .. FL_SECAGG_MAX_VALUES (+1 for the weight) */
    uint8_t graph_seed[32]; /* public seed of the neighbour graph (with the round) */
    fl_secagg_log_fn log;   /* may be NULL; not part of the session */
    void *log_ctx;
} fl_secagg_config;

/* FL_OK when cfg is usable, else FL_EINPUT naming the field and the bound (for example a bits
 * value with which n_clients sums could overflow 32 bits). Cannot change cfg. */
int fl_secagg_config_check(const fl_secagg_config *cfg, fl_err *err);

/* The quantisation step 2c / (2^bits - 1): the secure sum of m clients differs from the plain
 * sum of their clipped weighted values by less than m steps per value (and the total weight by
 * less than m / (2^bits - 1)). */
double fl_secagg_step(const fl_secagg_config *cfg);

/* Message sizes in bytes, for the runtime's limits: MASKED is the big one, 32 + 4 (L + 1). */
size_t fl_secagg_masked_bytes(const fl_secagg_config *cfg);

/* ---- message headers --------------------------------------------------------------------- */

typedef enum {
    FL_SECAGG_MSG_ADVERTISE = 1, /* client -> server: its two public keys, a commitment */
    FL_SECAGG_MSG_KEYS,          /* server -> U1: every advertised client's public keys */
    FL_SECAGG_MSG_SHARES,        /* client -> server: encrypted shares, one per neighbour */
    FL_SECAGG_MSG_FORWARD,       /* server -> i in U2: the shares addressed to i */
    FL_SECAGG_MSG_MASKED,        /* client -> server: the masked input vector */
    FL_SECAGG_MSG_SURVIVORS,     /* server -> U3: who is in the sum */
    FL_SECAGG_MSG_UNMASK,        /* client -> server: shares of neighbours' secrets */
} fl_secagg_msg_type;

typedef struct fl_secagg_msg_info {
    fl_secagg_msg_type type;
    uint64_t round;
    uint32_t sender; /* a client index, or FL_SECAGG_SERVER_INDEX */
    uint32_t count;  /* entries (values for MASKED) in the body */
} fl_secagg_msg_info;

/* Reads a message's header (for routing and logs) without checking the body. FL_EPEER for a
 * buffer shorter than the header, another magic or version, or an unknown type. */
int fl_secagg_msg_peek(const uint8_t *msg, size_t len, fl_secagg_msg_info *info, fl_err *err);

/* ---- client ------------------------------------------------------------------------------ */

typedef struct fl_secagg_client fl_secagg_client;

/* A client for one round. quant_seed (32 bytes) keys the stochastic rounding, so that a test can
 * repeat it; NULL draws a random one (what a real client does). NULL with err set on a bad
 * config or index, or out of memory. */
fl_secagg_client *fl_secagg_client_new(const fl_secagg_config *cfg, uint32_t index,
                                       const uint8_t *quant_seed, fl_err *err);
/* Wipes the secrets and frees; NULL is fine. */
void fl_secagg_client_free(fl_secagg_client *c);

/* Stage 0: makes the round's key pairs and self-mask seed; *msg = ADVERTISE. */
int fl_secagg_client_advertise(fl_secagg_client *c, uint8_t **msg, size_t *len, fl_err *err);

/* Stage 1: takes the server's KEYS and makes SHARES: b_i and s_i^SK split t-of-(holders) among
 * this client and its advertised neighbours, each neighbour's pair encrypted for it. FL_EPEER for
 * a KEYS message that is malformed, of another round or session, lacks this client's own keys,
 * holds an invalid key, or leaves fewer than t holders. */
int fl_secagg_client_share_keys(fl_secagg_client *c, const uint8_t *keys, size_t keys_len,
                                uint8_t **msg, size_t *len, fl_err *err);

/* Stage 2: takes FORWARD (the neighbours that shared, with their shares for this client) and the
 * update: values update[0..L-1] times weight, clipped to [-c, c], plus the weight itself, are
 * quantised and masked into MASKED. weight must be in [0, 1] (a fraction of a public maximum,
 * such as samples / max_samples: the mean is unchanged by the scale) and every value finite,
 * else FL_EINPUT. A share that fails authentication is logged and dropped (that neighbour is
 * still masked with, as the server expects); FL_EPEER for a malformed FORWARD or when fewer than
 * t holders of this client's secrets are left. */
int fl_secagg_client_masked_input(fl_secagg_client *c, const uint8_t *forward, size_t forward_len,
                                  const float *update, double weight, uint8_t **msg, size_t *len,
                                  fl_err *err);

/* Stage 3: takes SURVIVORS and makes UNMASK: for each neighbour that shared, the share of its
 * self-mask seed if it is a survivor, else the share of its mask key; never both for one client.
 * Answers once per round (a second call is FL_EINTERNAL). FL_EPEER when SURVIVORS is malformed,
 * leaves this client out, names a neighbour that did not share, or has fewer than t clients. */
int fl_secagg_client_unmask(fl_secagg_client *c, const uint8_t *survivors, size_t survivors_len,
                            uint8_t **msg, size_t *len, fl_err *err);

/* Values clipped to [-c, c] in this client's masked input (0 before it). */
uint64_t fl_secagg_client_clipped(const fl_secagg_client *c);

/* ---- server ------------------------------------------------------------------------------ */

typedef struct fl_secagg_server fl_secagg_server;

/* How far a client got in the server's view of the round. */
typedef enum {
    FL_SECAGG_NONE = 0,   /* nothing accepted from it this round */
    FL_SECAGG_ADVERTISED, /* its keys were accepted: in U1 */
    FL_SECAGG_SHARED,     /* its shares were accepted: in U2 */
    FL_SECAGG_MASKED,     /* its masked input is in the sum: in U3 */
    FL_SECAGG_UNMASKED,   /* its unmasking shares were accepted: in U4 */
} fl_secagg_progress;

/* A server for one round; NULL with err set on a bad config or out of memory. */
fl_secagg_server *fl_secagg_server_new(const fl_secagg_config *cfg, fl_err *err);
void fl_secagg_server_free(fl_secagg_server *s);

/* Each collect_* takes one client's message for the current stage; `from` is the sender's index
 * as the transport authenticated it. FL_EPEER (object unchanged) for a message that is
 * malformed, of another round or session, from another index than `from`, a duplicate, from a
 * client that did not complete the stage before, or late (its stage closed). */
int fl_secagg_server_collect_advertise(fl_secagg_server *s, uint32_t from, const uint8_t *msg,
                                       size_t len, fl_err *err);
/* Closes stage 0: *msg = KEYS, to send to every advertised client. FL_EPEER (round over) with
 * fewer than t advertised clients. */
int fl_secagg_server_end_advertise(fl_secagg_server *s, uint8_t **msg, size_t *len, fl_err *err);

int fl_secagg_server_collect_shares(fl_secagg_server *s, uint32_t from, const uint8_t *msg,
                                    size_t len, fl_err *err);
/* Closes stage 1. FL_EPEER (round over) with fewer than t clients that shared. */
int fl_secagg_server_end_shares(fl_secagg_server *s, fl_err *err);
/* After end_shares: *msg = FORWARD for client `to` (which must have shared). */
int fl_secagg_server_forward_for(fl_secagg_server *s, uint32_t to, uint8_t **msg, size_t *len,
                                 fl_err *err);

int fl_secagg_server_collect_masked(fl_secagg_server *s, uint32_t from, const uint8_t *msg,
                                    size_t len, fl_err *err);
/* Closes stage 2: *msg = SURVIVORS, to send to every client whose masked input arrived.
 * FL_EPEER (round over, no share requested) with fewer than t of them, when some secret could
 * not reach t shares from them, or when they fall apart into groups not linked by the neighbour
 * graph (unmasking would reveal each group's sum). */
int fl_secagg_server_end_masked(fl_secagg_server *s, uint8_t **msg, size_t *len, fl_err *err);

int fl_secagg_server_collect_unmask(fl_secagg_server *s, uint32_t from, const uint8_t *msg,
                                    size_t len, fl_err *err);
/* 1 when every secret the server must rebuild has at least t shares, so finish() may be called
 * without waiting for the rest; else 0. */
int fl_secagg_server_ready(const fl_secagg_server *s);
/* Closes the round: rebuilds the survivors' self-mask seeds and the dropped clients' mask keys,
 * removes the masks, and writes sum_out[0..L-1] = Σ clip(w_i x_i) (room for L doubles; the
 * layout of fl_aggregator.sum) and *total_weight = Σ w_i over the survivors (U3). A share that does
 * not rebuild its commitment is found, logged and left out when enough others remain. FL_EPEER
 * (round over, outputs untouched) when a secret cannot be rebuilt. */
int fl_secagg_server_finish(fl_secagg_server *s, double *sum_out, double *total_weight,
                            fl_err *err);

/* The stage `index` completed in the server's view (FL_SECAGG_NONE for an unknown index). */
fl_secagg_progress fl_secagg_server_progress(const fl_secagg_server *s, uint32_t index);
/* Shares of client `owner`'s secrets the server holds: of its self-mask seed b and of its mask
 * key s^SK (both 0 for an unknown index). By construction at most one of the two is nonzero. */
void fl_secagg_server_shares_held(const fl_secagg_server *s, uint32_t owner, uint32_t *b_shares,
                                  uint32_t *s_shares);

/* ---- Shamir secret sharing over GF(2^16) (exposed for tests and reuse) ------------------- */

/* Splits a 32-byte secret into n shares of 32 bytes, one for each nonzero distinct x in xs, any
 * t of which rebuild it (t-1 reveal nothing). FL_EINPUT for t < 1, n < t, or a zero or repeated
 * x. */
int fl_shamir_split(const uint8_t secret[32], uint32_t t, const uint16_t *xs, size_t n,
                    uint8_t (*shares)[32], fl_err *err);
/* Rebuilds the secret from n shares at distinct nonzero xs by Lagrange interpolation at 0: exact
 * from t or more shares of one split; from fewer (or a wrong share) it is an unrelated value,
 * which a caller detects with a commitment.
 * FL_EINPUT for n = 0 or a zero or repeated x. */
int fl_shamir_combine(const uint16_t *xs, const uint8_t (*shares)[32], size_t n, uint8_t secret[32],
                      fl_err *err);

#endif
