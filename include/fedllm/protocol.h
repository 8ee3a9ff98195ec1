/* protocol.h — the federation message: a JSON header and an optional safetensors payload.
 *
 * Every message between the server and a client is two ZeroMQ frames: a header, one JSON object
 * of at most FL_MSG_MAX_HEADER_BYTES
 *   {"v":1,"job":"quickstart","round":3,"type":"update","from":"alice","seq":17,
 *    "bytes":81936,"sha256":"9f86...","meta":{"samples":512,"train_loss":2.31}}
 * and, when "bytes" is not 0, a payload frame of exactly that many bytes in safetensors format
 * whose SHA-256 is "sha256". docs/protocol.md is the full description (each type's meta fields,
 * refusal rules, versioning). This file only encodes and checks messages; transport.h moves them.
 *
 * A received message is outside input: fl_msg_decode checks every field before anything is
 * believed, and refuses with FL_EPEER and a message naming the sender (when known) and the
 * problem. It never crashes and never reads outside the buffers it is given. */
#ifndef FEDLLM_PROTOCOL_H
#define FEDLLM_PROTOCOL_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "fedllm/err.h"

#define FL_PROTOCOL_VERSION     1
#define FL_MSG_MAX_HEADER_BYTES 65536 /* a header frame is at most this long */
#define FL_MSG_NAME_MAX         64    /* party names: at most 63 bytes + NUL */
#define FL_MSG_JOB_MAX          128   /* job names: at most 127 bytes + NUL */
#define FL_MSG_SERVER_NAME      "server"

typedef enum {
    FL_MSG_JOIN = 0,    /* client -> server: meta {name} */
    FL_MSG_ROUND_START, /* server -> client: meta {round, local_steps, lr, ...}, global adapter */
    FL_MSG_UPDATE,      /* client -> server: meta {samples, train_loss, seconds_train}, delta */
    FL_MSG_ROUND_END,   /* server -> client: meta {round, clients, dropped} */
    FL_MSG_LEAVE,       /* either way: the sender is done (server: the job is over) */
    FL_MSG_ERROR,       /* either way: meta {reason}; the sender gives up on this job */
    FL_MSG_HEARTBEAT,   /* client -> server while training: meta {step, loss} */
    FL_MSG_SECAGG,      /* either way, secure aggregation: meta {stage}, payload U8 "secagg" */
    FL_MSG_TYPE_COUNT
} fl_msg_type;

/* "join", "round_start", "update", "round_end", "leave", "error", "heartbeat", "secagg"; "?"
 * outside the enum. */
const char *fl_msg_type_name(fl_msg_type t);

typedef struct fl_msg {
    int version;              /* FL_PROTOCOL_VERSION when built locally */
    char job[FL_MSG_JOB_MAX]; /* the job's name, as in the job file */
    int64_t round;            /* -1: not about a round; otherwise 0 .. 2^53 */
    fl_msg_type type;
    char sender[FL_MSG_NAME_MAX]; /* party name: "server" or the client's name */
    uint64_t seq;                 /* per sender and connection, strictly increasing from 1 */
    cJSON *meta;                  /* type-specific fields, owned, may be NULL */
    uint8_t *payload;             /* safetensors bytes or NULL, owned */
    size_t payload_len;
    char sha256[65]; /* lowercase hex SHA-256 of the payload (of zero bytes when none) */
} fl_msg;

/* Zeroes *m and fills the fields every message has (version = FL_PROTOCOL_VERSION; meta and
 * payload NULL). job and sender are truncated to their fields (the caller has checked them). */
void fl_msg_init(fl_msg *m, const char *job, int64_t round, fl_msg_type type, const char *sender,
                 uint64_t seq);

/* Serialises the header of m (computing m->sha256 first, with libsodium's crypto_hash_sha256):
 * {"v":..,"job":..,"round":..,"type":..,"from":..,"seq":..,"bytes":payload_len,"sha256":..,
 * "meta":{..}} ("meta" left out when m->meta is NULL). *header is malloc'd (NUL-terminated;
 * *header_len excludes the NUL) and the caller frees it. FL_EINTERNAL for a message this party
 * could not send (an unknown type, an empty or over-long name, a seq of 0, a meta that is not an
 * object, a header over FL_MSG_MAX_HEADER_BYTES); on error *header is NULL. */
int fl_msg_encode_header(fl_msg *m, char **header, size_t *header_len, fl_err *err);

/* Parses and checks one received message; expected_job is this party's job. Refuses with FL_EPEER
 * (err names the sender when known and the problem: "message from alice: protocol version 2,
 * expected 1") a header that is not a JSON object of at most FL_MSG_MAX_HEADER_BYTES, a field
 * that is missing or of the wrong type, another version, another job, an unknown type, a name
 * longer than 63 bytes, "bytes" != payload_len, a wrong "sha256", and a payload that is not valid
 * safetensors. On success *m owns copies of meta and payload (release with fl_msg_free); on error
 * *m is zeroed and owns nothing. The caller still checks what depends on its state: the round
 * (stale or future), seq (fl_msg_check_seq), and the type-specific meta fields. */
int fl_msg_decode(fl_msg *m, const void *header, size_t header_len, const void *payload,
                  size_t payload_len, const char *expected_job, fl_err *err);

/* Sequence numbers of one sender: *last_seq is the last accepted (0 before the first). Accepts a
 * message whose seq is greater, or exactly 1 (the sender restarted, and starts again), and
 * updates *last_seq; otherwise FL_EPEER "message from alice: seq 7 after 9 (duplicate or out of
 * order)". */
int fl_msg_check_seq(uint64_t *last_seq, const fl_msg *m, fl_err *err);

/* Frees meta and payload and zeroes *m (safe on a zeroed or already freed message). */
void fl_msg_free(fl_msg *m);

#endif
