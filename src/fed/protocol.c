/* protocol.c — encoding and checking federation message headers (see protocol.h and
 * docs/protocol.md).
 *
 * The header is a small JSON object (well under FL_MSG_MAX_HEADER_BYTES = 64 KiB; the round
 * config and metrics in "meta" are the only open-ended part), so it is built and parsed with cJSON
 * in one piece. Integers are written as plain decimal digits (cJSON would print doubles) and read
 * back only when they are integral and within the range a JSON number holds exactly (2^53). The
 * payload is an opaque safetensors buffer to this file: it is hashed (SHA-256, libsodium), and
 * on receipt also parsed once with fl_st_parse_mem so that a party never hands a malformed
 * payload to the runtime.
 *
 * Decoding checks the fields in an order that gives the most useful refusal: the sender's name
 * first (so that every later message can name it), then the version (a peer on another version
 * may have other fields), then the job, then the rest. */
#include "fedllm/protocol.h"

#include <inttypes.h>
#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/safetensors.h"

/* Largest integer a JSON number (an IEEE double) holds exactly. */
#define JSON_INT_MAX 9007199254740992.0

static const char *const TYPE_NAMES[FL_MSG_TYPE_COUNT] = {
    [FL_MSG_JOIN] = "join",           [FL_MSG_ROUND_START] = "round_start",
    [FL_MSG_UPDATE] = "update",       [FL_MSG_ROUND_END] = "round_end",
    [FL_MSG_LEAVE] = "leave",         [FL_MSG_ERROR] = "error",
    [FL_MSG_HEARTBEAT] = "heartbeat", [FL_MSG_SECAGG] = "secagg",
};

const char *fl_msg_type_name(fl_msg_type t) {
    return (int)t >= 0 && t < FL_MSG_TYPE_COUNT ? TYPE_NAMES[t] : "?";
}

void fl_msg_init(fl_msg *m, const char *job, int64_t round, fl_msg_type type, const char *sender,
                 uint64_t seq) {
    memset(m, 0, sizeof *m);
    m->version = FL_PROTOCOL_VERSION;
    snprintf(m->job, sizeof m->job, "%s", job);
    m->round = round;
    m->type = type;
    snprintf(m->sender, sizeof m->sender, "%s", sender);
    m->seq = seq;
}

void fl_msg_free(fl_msg *m) {
    cJSON_Delete(m->meta);
    free(m->payload);
    memset(m, 0, sizeof *m);
}

/* Why s is not a usable job or party name (at most max_len bytes, not empty, no control
 * characters, which would break a log line), or NULL when it is. */
static const char *name_problem(const char *s, size_t max_len) {
    size_t n = strlen(s);
    if (n == 0) return "empty";
    if (n > max_len) return "too long";
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (*c < 0x20 || *c == 0x7f) return "holds a control character";
    return NULL;
}

static void sha256_hex(const void *data, size_t len, char hex[65]) {
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, data ? data : (const void *)"", len);
    sodium_bin2hex(hex, 65, digest, sizeof digest);
}

/* ---- encoding -------------------------------------------------------------------------------- */

static int add_raw_int(cJSON *root, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int add_raw_int(cJSON *root, const char *key, const char *fmt, ...) {
    char digits[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(digits, sizeof digits, fmt, ap);
    va_end(ap);
    return cJSON_AddRawToObject(root, key, digits) != NULL;
}

/* Refuses what the receiver would refuse, so that a party never sends a message its peer drops. */
static int check_outgoing(const fl_msg *m, fl_err *err) {
    const char *problem;
    if ((int)m->type < 0 || m->type >= FL_MSG_TYPE_COUNT)
        return fl_err_set(err, FL_EINTERNAL, "encoding a message of unknown type %d", (int)m->type);
    if ((problem = name_problem(m->job, FL_MSG_JOB_MAX - 1)))
        return fl_err_set(err, FL_EINTERNAL, "encoding a %s message: job name %s",
                          TYPE_NAMES[m->type], problem);
    if ((problem = name_problem(m->sender, FL_MSG_NAME_MAX - 1)))
        return fl_err_set(err, FL_EINTERNAL, "encoding a %s message: sender name %s",
                          TYPE_NAMES[m->type], problem);
    if (m->seq == 0 || (double)m->seq > JSON_INT_MAX || m->round < -1 ||
        (double)m->round > JSON_INT_MAX)
        return fl_err_set(err, FL_EINTERNAL,
                          "encoding a %s message: seq %" PRIu64 " or round %" PRId64
                          " out of range",
                          TYPE_NAMES[m->type], m->seq, m->round);
    if (m->meta && !cJSON_IsObject(m->meta))
        return fl_err_set(err, FL_EINTERNAL, "encoding a %s message: meta is not a JSON object",
                          TYPE_NAMES[m->type]);
    if (m->payload_len > 0 && !m->payload)
        return fl_err_set(err, FL_EINTERNAL, "encoding a %s message: %zu payload bytes but no data",
                          TYPE_NAMES[m->type], m->payload_len);
    return FL_OK;
}

int fl_msg_encode_header(fl_msg *m, char **header, size_t *header_len, fl_err *err) {
    *header = NULL;
    *header_len = 0;
    int rc = check_outgoing(m, err);
    if (rc != FL_OK) return rc;
    sha256_hex(m->payload, m->payload_len, m->sha256);

    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    ok = ok && add_raw_int(root, "v", "%d", m->version);
    ok = ok && cJSON_AddStringToObject(root, "job", m->job);
    ok = ok && add_raw_int(root, "round", "%" PRId64, m->round);
    ok = ok && cJSON_AddStringToObject(root, "type", TYPE_NAMES[m->type]);
    ok = ok && cJSON_AddStringToObject(root, "from", m->sender);
    ok = ok && add_raw_int(root, "seq", "%" PRIu64, m->seq);
    ok = ok && add_raw_int(root, "bytes", "%zu", m->payload_len);
    ok = ok && cJSON_AddStringToObject(root, "sha256", m->sha256);
    /* a reference: deleting root leaves the caller's meta alone */
    ok = ok && (!m->meta || cJSON_AddItemReferenceToObject(root, "meta", m->meta));
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text) return fl_err_set(err, FL_ENOMEM, "out of memory encoding a message header");
    size_t len = strlen(text);
    if (len > FL_MSG_MAX_HEADER_BYTES) {
        free(text);
        return fl_err_set(err, FL_EINTERNAL,
                          "encoding a %s message: header of %zu bytes exceeds the %d-byte limit "
                          "(too much meta)",
                          TYPE_NAMES[m->type], len, FL_MSG_MAX_HEADER_BYTES);
    }
    *header = text;
    *header_len = len;
    return FL_OK;
}

/* ---- decoding -------------------------------------------------------------------------------- */

/* The refusal context: "message from alice" once the sender is known, else "message". */
typedef struct decode_ctx {
    char who[FL_MSG_NAME_MAX + 16];
    fl_err *err;
} decode_ctx;

static int refuse(decode_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int refuse(decode_ctx *c, const char *fmt, ...) {
    char what[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return fl_err_set(c->err, FL_EPEER, "%s: %s", c->who, what);
}

/* An integral JSON number within [lo, hi] (both exactly representable). */
static int json_int(const cJSON *j, double lo, double hi, double *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= lo && d <= hi) || d != floor(d)) return 0;
    *out = d;
    return 1;
}

/* Top-level keys must be unique: a second "type" or "bytes" that one reader sees and another does
 * not is how parser differentials start. The header has a dozen keys, so a quadratic scan is
 * fine; a bigger object is refused before it. */
static const char *duplicate_key(const cJSON *root) {
    for (const cJSON *a = root->child; a; a = a->next)
        for (const cJSON *b = a->next; b; b = b->next)
            if (a->string && b->string && strcmp(a->string, b->string) == 0) return a->string;
    return NULL;
}

/* from, v, job and type: who sent it, and whether it is for us at all. */
static int decode_identity(fl_msg *m, const cJSON *root, const char *expected_job, decode_ctx *c) {
    /* the name first, where usable, so that every refusal (the version's too) can say whose */
    const cJSON *from = cJSON_GetObjectItemCaseSensitive(root, "from");
    const char *problem = cJSON_IsString(from)
                              ? name_problem(from->valuestring, FL_MSG_NAME_MAX - 1)
                              : "not a string";
    if (!problem) snprintf(c->who, sizeof c->who, "message from %s", from->valuestring);

    double v;
    if (!json_int(cJSON_GetObjectItemCaseSensitive(root, "v"), -JSON_INT_MAX, JSON_INT_MAX, &v))
        return refuse(c, "v: expected an integer (the protocol version)");
    if (v != FL_PROTOCOL_VERSION)
        return refuse(c, "protocol version %.0f, expected %d", v, FL_PROTOCOL_VERSION);
    m->version = (int)v;

    if (!cJSON_IsString(from)) return refuse(c, "from: expected a string (the sender's name)");
    if (problem)
        return refuse(c, "from: the sender's name is %s (at most %d bytes, printable)", problem,
                      FL_MSG_NAME_MAX - 1);
    snprintf(m->sender, sizeof m->sender, "%s", from->valuestring);

    const cJSON *job = cJSON_GetObjectItemCaseSensitive(root, "job");
    if (!cJSON_IsString(job)) return refuse(c, "job: expected a string");
    if (strcmp(job->valuestring, expected_job) != 0) {
        if (name_problem(job->valuestring, FL_MSG_JOB_MAX - 1))
            return refuse(c, "job name is not valid, expected '%s'", expected_job);
        return refuse(c, "job '%s', expected '%s'", job->valuestring, expected_job);
    }
    snprintf(m->job, sizeof m->job, "%s", job->valuestring);

    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "type");
    if (!cJSON_IsString(type)) return refuse(c, "type: expected a string");
    for (int t = 0; t < FL_MSG_TYPE_COUNT; t++)
        if (strcmp(type->valuestring, TYPE_NAMES[t]) == 0) {
            m->type = (fl_msg_type)t;
            return FL_OK;
        }
    int printable = !name_problem(type->valuestring, 40);
    return refuse(c, "unknown message type '%s'", printable ? type->valuestring : "?");
}

/* round, seq, bytes and sha256, the last two checked against the payload that arrived. */
static int decode_counts(fl_msg *m, const cJSON *root, const void *payload, size_t payload_len,
                         decode_ctx *c) {
    double round, seq, bytes;
    const char *type = TYPE_NAMES[m->type];
    if (!json_int(cJSON_GetObjectItemCaseSensitive(root, "round"), -1, JSON_INT_MAX, &round))
        return refuse(c, "round: expected an integer >= -1");
    m->round = (int64_t)round;
    if (!json_int(cJSON_GetObjectItemCaseSensitive(root, "seq"), 1, JSON_INT_MAX, &seq))
        return refuse(c, "seq: expected an integer >= 1");
    m->seq = (uint64_t)seq;
    if (!json_int(cJSON_GetObjectItemCaseSensitive(root, "bytes"), 0, JSON_INT_MAX, &bytes))
        return refuse(c, "bytes: expected an integer >= 0");
    if ((uint64_t)bytes != payload_len)
        return refuse(c, "%s: the header announces %.0f payload bytes, %zu arrived (truncated?)",
                      type, bytes, payload_len);

    const cJSON *sha = cJSON_GetObjectItemCaseSensitive(root, "sha256");
    if (!cJSON_IsString(sha) || strlen(sha->valuestring) != 64 ||
        strspn(sha->valuestring, "0123456789abcdef") != 64)
        return refuse(c, "sha256: expected 64 lowercase hex digits");
    sha256_hex(payload, payload_len, m->sha256);
    if (strcmp(m->sha256, sha->valuestring) != 0)
        return refuse(c,
                      "%s: the payload's SHA-256 does not match the header (tampered with or "
                      "corrupted)",
                      type);
    return FL_OK;
}

/* meta (an object or absent) and the payload (valid safetensors), copied into m. */
static int decode_contents(fl_msg *m, cJSON *root, const void *payload, size_t payload_len,
                           decode_ctx *c) {
    cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "meta");
    if (meta && !cJSON_IsNull(meta) && !cJSON_IsObject(meta))
        return refuse(c, "meta: expected an object");
    if (payload_len > 0) {
        fl_st_file st;
        fl_err st_err = {0};
        if (fl_st_parse_mem(&st, payload, payload_len, "payload", &st_err) != FL_OK)
            return refuse(c, "%s: %s", TYPE_NAMES[m->type], st_err.msg);
        fl_st_close(&st);
        m->payload = malloc(payload_len);
        if (!m->payload)
            return fl_err_set(c->err, FL_ENOMEM, "%s: out of memory for %zu payload bytes", c->who,
                              payload_len);
        memcpy(m->payload, payload, payload_len);
        m->payload_len = payload_len;
    }
    if (cJSON_IsObject(meta)) m->meta = cJSON_DetachItemViaPointer(root, meta);
    return FL_OK;
}

int fl_msg_decode(fl_msg *m, const void *header, size_t header_len, const void *payload,
                  size_t payload_len, const char *expected_job, fl_err *err) {
    memset(m, 0, sizeof *m);
    decode_ctx c = {.who = "message", .err = err};
    if (!expected_job) return fl_err_set(err, FL_EINTERNAL, "decoding without an expected job");
    if (payload_len > 0 && !payload)
        return fl_err_set(err, FL_EINTERNAL, "decoding %zu payload bytes without data",
                          payload_len);
    if (!header || header_len == 0) return refuse(&c, "empty header");
    if (header_len > FL_MSG_MAX_HEADER_BYTES)
        return refuse(&c, "header of %zu bytes exceeds the %d-byte limit", header_len,
                      FL_MSG_MAX_HEADER_BYTES);
    /* cJSON reads a private NUL-terminated copy, so no input byte decides where reading stops */
    char *text = malloc(header_len + 1);
    if (!text) return fl_err_set(err, FL_ENOMEM, "out of memory for a message header");
    memcpy(text, header, header_len);
    text[header_len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, header_len, &end, 0);
    int rc;
    if (!root)
        rc = refuse(&c, "header is not valid JSON (near byte %td of %zu)",
                    end ? end - text : (ptrdiff_t)0, header_len);
    else if (end != text + header_len &&
             strspn(end, " \t\r\n") != (size_t)(text + header_len - end))
        rc = refuse(&c, "header: unexpected bytes after the JSON object at byte %td", end - text);
    else if (!cJSON_IsObject(root))
        rc = refuse(&c, "header: expected a JSON object");
    else if (duplicate_key(root))
        rc = refuse(&c, "header: key '%s' appears twice",
                    name_problem(duplicate_key(root), 40) ? "?" : duplicate_key(root));
    else
        rc = decode_identity(m, root, expected_job, &c);
    if (rc == FL_OK) rc = decode_counts(m, root, payload, payload_len, &c);
    if (rc == FL_OK) rc = decode_contents(m, root, payload, payload_len, &c);
    cJSON_Delete(root);
    free(text);
    if (rc != FL_OK) fl_msg_free(m);
    return rc;
}

int fl_msg_check_seq(uint64_t *last_seq, const fl_msg *m, fl_err *err) {
    if (m->seq != 1 && m->seq <= *last_seq)
        return fl_err_set(err, FL_EPEER,
                          "message from %s: seq %" PRIu64 " after %" PRIu64
                          " (duplicate or out of order)",
                          m->sender, m->seq, *last_seq);
    *last_seq = m->seq;
    return FL_OK;
}
