/* test_protocol.c — federation message headers: every type round-trips with and without a
 * payload, and every kind of bad message (another version or job, an unknown type, missing or
 * mistyped fields, a header that is too big or not an object, a payload that was truncated,
 * tampered with or is not safetensors, thousands of random header corruptions) is refused with
 * FL_EPEER and a message that says why, without crashing. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/protocol.h"
#include "fedllm/safetensors.h"
#include "testutil.h"

#define JOB "quickstart"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void) { /* xorshift64*: deterministic, good enough to pick bytes */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* A small adapter-like payload: two F32 tensors and one I32, all non-empty. */
static void make_payload(uint8_t **bytes, size_t *len) {
    static float a[2 * 3] = {1, 2, 3, 4, 5, 6}, b[4] = {-1, 0.5f, 0.25f, 8};
    static int32_t c[2] = {7, 9};
    int64_t shape_a[2] = {2, 3}, shape_b[1] = {4}, shape_c[1] = {2};
    fl_err err = {0};
    fl_st_writer *w = fl_st_writer_new(&err);
    int rc = fl_st_writer_add(w, "base_model.model.layers.0.q_proj.lora_A.weight", FL_DTYPE_F32, 2,
                              shape_a, a, &err);
    rc |= fl_st_writer_add(w, "base_model.model.layers.0.q_proj.lora_B.weight", FL_DTYPE_F32, 1,
                           shape_b, b, &err);
    rc |= fl_st_writer_add(w, "counts", FL_DTYPE_I32, 1, shape_c, c, &err);
    rc |= fl_st_writer_meta(w, "format", "pt", &err);
    rc |= fl_st_write_mem(w, bytes, len, &err);
    CHECK(rc == FL_OK && *bytes && *len > 8, "payload: %s", err.msg);
    fl_st_writer_free(w);
}

/* The meta a message of type t carries in docs/protocol.md. */
static cJSON *make_meta(fl_msg_type t) {
    cJSON *m = cJSON_CreateObject();
    switch (t) {
    case FL_MSG_JOIN: cJSON_AddStringToObject(m, "name", "alice"); break;
    case FL_MSG_ROUND_START:
        cJSON_AddNumberToObject(m, "round", 3);
        cJSON_AddNumberToObject(m, "local_steps", 20);
        cJSON_AddNumberToObject(m, "lr", 3e-4);
        break;
    case FL_MSG_UPDATE:
        cJSON_AddNumberToObject(m, "samples", 512);
        cJSON_AddNumberToObject(m, "train_loss", 2.3125);
        cJSON_AddNumberToObject(m, "seconds_train", 1.5);
        break;
    case FL_MSG_ROUND_END:
        cJSON_AddNumberToObject(m, "round", 3);
        cJSON_AddItemToObject(m, "clients", cJSON_CreateStringArray((const char *[]){"alice"}, 1));
        cJSON_AddItemToObject(m, "dropped", cJSON_CreateStringArray((const char *[]){"bob"}, 1));
        break;
    case FL_MSG_ERROR: cJSON_AddStringToObject(m, "reason", "out of memory \"quoted\"\n"); break;
    case FL_MSG_HEARTBEAT:
        cJSON_AddNumberToObject(m, "step", 7);
        cJSON_AddNumberToObject(m, "loss", 2.5);
        break;
    default: break;
    }
    return m;
}

/* A valid encoded message: header (malloc'd) for the given payload. */
static char *encode(fl_msg_type type, const uint8_t *payload, size_t payload_len, size_t *len) {
    fl_msg m;
    fl_msg_init(&m, JOB, 3, type, "alice", 17);
    m.meta = make_meta(type);
    m.payload = (uint8_t *)payload;
    m.payload_len = payload_len;
    char *header = NULL;
    fl_err err = {0};
    int rc = fl_msg_encode_header(&m, &header, len, &err);
    CHECK(rc == FL_OK, "encode: %s", err.msg);
    cJSON_Delete(m.meta);
    return header;
}

static void test_round_trip(void) {
    uint8_t *payload;
    size_t payload_len;
    make_payload(&payload, &payload_len);
    for (int t = 0; t < FL_MSG_TYPE_COUNT; t++)
        for (int with_payload = 0; with_payload < 2; with_payload++)
            for (int with_meta = 0; with_meta < 2; with_meta++) {
                fl_msg out;
                fl_msg_init(&out, JOB, with_payload ? 12345 : -1, (fl_msg_type)t, "alice", 42);
                out.meta = with_meta ? make_meta((fl_msg_type)t) : NULL;
                out.payload = with_payload ? payload : NULL;
                out.payload_len = with_payload ? payload_len : 0;
                char *header = NULL;
                size_t header_len = 0;
                fl_err err = {0};
                int rc = fl_msg_encode_header(&out, &header, &header_len, &err);
                CHECK(rc == FL_OK, "%s: encode: %s", fl_msg_type_name(t), err.msg);
                CHECK(header && strlen(header) == header_len, "header is a string");
                fl_msg in;
                rc =
                    fl_msg_decode(&in, header, header_len, out.payload, out.payload_len, JOB, &err);
                CHECK(rc == FL_OK, "%s (payload %d, meta %d): decode: %s", fl_msg_type_name(t),
                      with_payload, with_meta, err.msg);
                CHECK(in.version == FL_PROTOCOL_VERSION && in.type == (fl_msg_type)t &&
                          in.round == out.round && in.seq == 42 &&
                          strcmp(in.sender, "alice") == 0 && strcmp(in.job, JOB) == 0,
                      "%s: fields survive", fl_msg_type_name(t));
                CHECK(strcmp(in.sha256, out.sha256) == 0 && strlen(in.sha256) == 64,
                      "sha256 %s vs %s", in.sha256, out.sha256);
                CHECK(in.payload_len == out.payload_len &&
                          (in.payload_len == 0 ? in.payload == NULL
                                               : memcmp(in.payload, payload, payload_len) == 0 &&
                                                     in.payload != payload),
                      "%s: payload copied", fl_msg_type_name(t));
                CHECK(with_meta ? cJSON_Compare(in.meta, out.meta, 1) && in.meta != out.meta
                                : in.meta == NULL,
                      "%s: meta survives", fl_msg_type_name(t));
                fl_msg_free(&in);
                CHECK(in.meta == NULL && in.payload == NULL, "free zeroes");
                cJSON_Delete(out.meta);
                free(header);
            }
    /* the SHA-256 of nothing, as every implementation has it */
    size_t len;
    char *header = encode(FL_MSG_LEAVE, NULL, 0, &len);
    CHECK(strstr(header, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") !=
              NULL,
          "empty payload hash in %s", header);
    CHECK(strncmp(header, "{\"v\":1,\"job\":\"quickstart\",\"round\":3,\"type\":\"leave\"", 50) ==
              0,
          "field order and plain integers: %s", header);
    free(header);
    CHECK(strcmp(fl_msg_type_name(FL_MSG_ROUND_START), "round_start") == 0 &&
              strcmp(fl_msg_type_name(FL_MSG_HEARTBEAT), "heartbeat") == 0 &&
              strcmp(fl_msg_type_name(FL_MSG_TYPE_COUNT), "?") == 0,
          "type names");
    free(payload);
}

/* Decodes and expects FL_EPEER with `want` in the message. */
static void expect_refusal(const char *what, const char *header, size_t header_len,
                           const void *payload, size_t payload_len, const char *want) {
    fl_msg m;
    fl_err err = {0};
    int rc = fl_msg_decode(&m, header, header_len, payload, payload_len, JOB, &err);
    CHECK(rc == FL_EPEER, "%s: expected a refusal, got %d (%s)", what, rc, err.msg);
    CHECK(strstr(err.msg, want) != NULL, "%s: '%s' should say '%s'", what, err.msg, want);
    CHECK(strchr(err.msg, '\n') == NULL, "%s: one line", what);
    CHECK(m.meta == NULL && m.payload == NULL, "%s: nothing owned after a refusal", what);
}

/* The valid update header with one field replaced (value NULL: removed). */
static char *edited(const char *header, const char *key, cJSON *value) {
    cJSON *root = cJSON_Parse(header);
    if (value)
        cJSON_ReplaceItemInObjectCaseSensitive(root, key, value);
    else
        cJSON_DeleteItemFromObjectCaseSensitive(root, key);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

static void test_field_refusals(void) {
    uint8_t *payload;
    size_t payload_len, len;
    make_payload(&payload, &payload_len);
    char *good = encode(FL_MSG_UPDATE, payload, payload_len, &len);
    char *h;

    h = edited(good, "v", cJSON_CreateNumber(2));
    expect_refusal("version", h, strlen(h), payload, payload_len,
                   "message from alice: protocol version 2, expected 1");
    free(h);
    h = edited(good, "job", cJSON_CreateString("other"));
    expect_refusal("job", h, strlen(h), payload, payload_len, "job 'other', expected 'quickstart'");
    free(h);
    h = edited(good, "type", cJSON_CreateString("gossip"));
    expect_refusal("type", h, strlen(h), payload, payload_len, "unknown message type 'gossip'");
    free(h);
    char long_name[80];
    memset(long_name, 'x', 64);
    long_name[64] = '\0';
    h = edited(good, "from", cJSON_CreateString(long_name));
    expect_refusal("long name", h, strlen(h), payload, payload_len, "too long");
    free(h);
    h = edited(good, "from", cJSON_CreateString("al\nice"));
    expect_refusal("control character", h, strlen(h), payload, payload_len, "control character");
    free(h);
    h = edited(good, "round", cJSON_CreateNumber(-2));
    expect_refusal("round -2", h, strlen(h), payload, payload_len, "round");
    free(h);
    h = edited(good, "seq", cJSON_CreateNumber(0));
    expect_refusal("seq 0", h, strlen(h), payload, payload_len, "seq");
    free(h);
    h = edited(good, "seq", cJSON_CreateNumber(1.5));
    expect_refusal("seq 1.5", h, strlen(h), payload, payload_len, "seq");
    free(h);
    h = edited(good, "round", cJSON_CreateNumber(1e300));
    expect_refusal("round 1e300", h, strlen(h), payload, payload_len, "round");
    free(h);
    h = edited(good, "meta", cJSON_CreateString("x"));
    expect_refusal("meta string", h, strlen(h), payload, payload_len, "meta: expected an object");
    free(h);
    h = edited(good, "sha256", cJSON_CreateString("ABC"));
    expect_refusal("sha256 format", h, strlen(h), payload, payload_len, "sha256");
    free(h);

    /* every required field missing, and each with the wrong JSON type */
    static const char *const fields[] = {"v",    "job", "round", "type",
                                         "from", "seq", "bytes", "sha256"};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        char what[64];
        h = edited(good, fields[i], NULL);
        snprintf(what, sizeof what, "missing %s", fields[i]);
        expect_refusal(what, h, strlen(h), payload, payload_len, fields[i]);
        free(h);
        int is_string = !strcmp(fields[i], "job") || !strcmp(fields[i], "type") ||
                        !strcmp(fields[i], "from") || !strcmp(fields[i], "sha256");
        h = edited(good, fields[i], is_string ? cJSON_CreateNumber(1) : cJSON_CreateString("1"));
        snprintf(what, sizeof what, "mistyped %s", fields[i]);
        expect_refusal(what, h, strlen(h), payload, payload_len, fields[i]);
        free(h);
        h = edited(good, fields[i], cJSON_CreateNull());
        snprintf(what, sizeof what, "null %s", fields[i]);
        expect_refusal(what, h, strlen(h), payload, payload_len, fields[i]);
        free(h);
    }

    /* a second "type" that another parser might read instead of the first */
    size_t n = strlen(good);
    h = malloc(n + 32);
    memcpy(h, good, n - 1);
    strcpy(h + n - 1, ",\"type\":\"leave\"}");
    expect_refusal("duplicate key", h, strlen(h), payload, payload_len, "appears twice");
    free(h);

    /* not an object, not JSON, empty, trailing bytes, too big */
    expect_refusal("array", "[1,2]", 5, NULL, 0, "expected a JSON object");
    expect_refusal("string", "\"v\"", 3, NULL, 0, "expected a JSON object");
    expect_refusal("not JSON", "{\"v\":1,", 7, NULL, 0, "not valid JSON");
    expect_refusal("empty", "", 0, NULL, 0, "empty header");
    h = malloc(n + 8);
    memcpy(h, good, n);
    memcpy(h + n, " {}", 3);
    expect_refusal("trailing bytes", h, n + 3, payload, payload_len, "unexpected bytes");
    memcpy(h + n, " \n", 2);
    fl_msg m;
    CHECK(fl_msg_decode(&m, h, n + 2, payload, payload_len, JOB, NULL) == FL_OK,
          "trailing white space is fine");
    fl_msg_free(&m);
    free(h);
    size_t big = FL_MSG_MAX_HEADER_BYTES + 1;
    h = malloc(big);
    memset(h, ' ', big);
    memcpy(h, good, n);
    expect_refusal("oversized", h, big, payload, payload_len, "exceeds the 65536-byte limit");
    free(h);
    /* a header with NUL bytes in it */
    h = malloc(n + 4);
    memcpy(h, good, n);
    memcpy(h + n, "\0\0\0", 3);
    expect_refusal("NUL after the object", h, n + 3, payload, payload_len, "unexpected bytes");
    free(h);

    free(good);
    free(payload);
}

/* Replaces "bytes" and "sha256" so that they describe payload[0, len): a consistent sender. */
static char *consistent_header(const uint8_t *payload, size_t len) {
    fl_msg m;
    fl_msg_init(&m, JOB, 3, FL_MSG_UPDATE, "alice", 17);
    m.payload = (uint8_t *)payload;
    m.payload_len = len;
    char *header = NULL;
    size_t header_len;
    fl_msg_encode_header(&m, &header, &header_len, NULL);
    return header;
}

static void test_payload_refusals(void) {
    uint8_t *payload;
    size_t payload_len, len;
    make_payload(&payload, &payload_len);
    char *good = encode(FL_MSG_UPDATE, payload, payload_len, &len);

    /* tampered: one flipped bit anywhere in the payload */
    int refused_all = 1, said_tampered = 1;
    for (size_t i = 0; i < payload_len; i++) {
        payload[i] ^= 0x10;
        fl_msg m;
        fl_err err = {0};
        int rc = fl_msg_decode(&m, good, len, payload, payload_len, JOB, &err);
        refused_all &= rc == FL_EPEER;
        said_tampered &= strstr(err.msg, "tampered") != NULL;
        payload[i] ^= 0x10;
    }
    CHECK(refused_all && said_tampered, "every flipped payload bit is refused as tampered");

    /* truncated: every shorter length, against the original header (bytes differ) and against a
     * header that a sender computed for the short payload (not valid safetensors) */
    int refused_bytes = 1, refused_format = 1;
    for (size_t cut = 0; cut < payload_len; cut++) {
        fl_msg m;
        fl_err err = {0};
        int rc = fl_msg_decode(&m, good, len, cut ? payload : NULL, cut, JOB, &err);
        refused_bytes &= rc == FL_EPEER && strstr(err.msg, "truncated") != NULL;
        if (cut == 0) continue; /* zero bytes is the valid "no payload" */
        char *h = consistent_header(payload, cut);
        rc = fl_msg_decode(&m, h, strlen(h), payload, cut, JOB, &err);
        refused_format &= rc == FL_EPEER && strstr(err.msg, "payload") != NULL;
        free(h);
    }
    CHECK(refused_bytes, "every truncation is refused (bytes)");
    CHECK(refused_format, "every truncation with a matching header is refused (not safetensors)");

    /* a payload that is not safetensors at all, with a matching hash */
    uint8_t junk[64];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)rng_next();
    char *h = consistent_header(junk, sizeof junk);
    expect_refusal("junk payload", h, strlen(h), junk, sizeof junk, "payload");
    free(h);
    /* bytes says more than arrived */
    h = edited(good, "bytes", cJSON_CreateNumber((double)payload_len + 1));
    expect_refusal("bytes mismatch", h, strlen(h), payload, payload_len, "announces");
    free(h);

    free(good);
    free(payload);
}

/* Thousands of corrupted headers: flipped bytes, random bytes, truncations. Each must decode or
 * be refused with FL_EPEER, never crash (this test also runs under ASan + UBSan). */
static void test_fuzz_headers(void) {
    uint8_t *payload;
    size_t payload_len, len;
    make_payload(&payload, &payload_len);
    char *good = encode(FL_MSG_ROUND_START, payload, payload_len, &len);
    char *h = malloc(len);
    int bad_codes = 0, accepted = 0;
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(h, good, len);
        size_t n = len;
        int flips = 1 + (int)(rng_next() % 4);
        for (int k = 0; k < flips; k++) {
            size_t at = rng_next() % len;
            switch (rng_next() % 4) {
            case 0: h[at] ^= (char)(1u << (rng_next() % 8)); break;
            case 1: h[at] = (char)rng_next(); break;
            case 2: h[at] = "{}[]\",:0\\"[rng_next() % 9]; break;
            default: n = at; break; /* truncate */
            }
        }
        fl_msg m;
        fl_err err = {0};
        int rc = fl_msg_decode(&m, h, n, payload, payload_len, JOB, &err);
        if (rc == FL_OK)
            accepted++;
        else if (rc != FL_EPEER)
            bad_codes++;
        fl_msg_free(&m);
    }
    CHECK(bad_codes == 0, "%d corrupted headers gave a code other than FL_EPEER", bad_codes);
    CHECK(accepted < 20000 / 2, "most corruptions are refused (%d accepted)", accepted);
    /* random payload bytes with a consistent header: always refused or a valid safetensors */
    uint8_t junk[256];
    int bad = 0;
    for (int iter = 0; iter < 2000; iter++) {
        memcpy(junk, payload, payload_len < sizeof junk ? payload_len : sizeof junk);
        size_t n = payload_len < sizeof junk ? payload_len : sizeof junk;
        junk[rng_next() % n] = (uint8_t)rng_next();
        junk[rng_next() % 8] = (uint8_t)rng_next(); /* the header length */
        char *ch = consistent_header(junk, n);
        fl_msg m;
        int rc = fl_msg_decode(&m, ch, strlen(ch), junk, n, JOB, NULL);
        bad += rc != FL_OK && rc != FL_EPEER;
        fl_msg_free(&m);
        free(ch);
    }
    CHECK(bad == 0, "corrupted payloads: %d bad codes", bad);
    free(h);
    free(good);
    free(payload);
}

static void test_encode_refusals_and_seq(void) {
    fl_msg m;
    char *header;
    size_t len;
    fl_err err = {0};
    fl_msg_init(&m, JOB, 0, FL_MSG_JOIN, "alice", 0);
    CHECK(fl_msg_encode_header(&m, &header, &len, &err) == FL_EINTERNAL && !header, "seq 0");
    fl_msg_init(&m, JOB, 0, FL_MSG_TYPE_COUNT, "alice", 1);
    CHECK(fl_msg_encode_header(&m, &header, &len, &err) == FL_EINTERNAL, "unknown type");
    fl_msg_init(&m, JOB, 0, FL_MSG_JOIN, "", 1);
    CHECK(fl_msg_encode_header(&m, &header, &len, &err) == FL_EINTERNAL, "empty sender");
    fl_msg_init(&m, JOB, 0, FL_MSG_JOIN, "alice", 1);
    m.meta = cJSON_CreateArray();
    CHECK(fl_msg_encode_header(&m, &header, &len, &err) == FL_EINTERNAL, "meta not an object");
    cJSON_Delete(m.meta);
    fl_msg_init(&m, JOB, 0, FL_MSG_JOIN, "alice", 1);
    m.meta = cJSON_CreateObject();
    char *huge = malloc(FL_MSG_MAX_HEADER_BYTES + 1);
    memset(huge, 'a', FL_MSG_MAX_HEADER_BYTES);
    huge[FL_MSG_MAX_HEADER_BYTES] = '\0';
    cJSON_AddStringToObject(m.meta, "reason", huge);
    CHECK(fl_msg_encode_header(&m, &header, &len, &err) == FL_EINTERNAL && strstr(err.msg, "limit"),
          "oversized meta: %s", err.msg);
    cJSON_Delete(m.meta);
    free(huge);

    uint64_t last = 0;
    fl_msg_init(&m, JOB, 0, FL_MSG_HEARTBEAT, "alice", 1);
    CHECK(fl_msg_check_seq(&last, &m, NULL) == FL_OK && last == 1, "first seq");
    m.seq = 5;
    CHECK(fl_msg_check_seq(&last, &m, NULL) == FL_OK && last == 5, "a gap is fine");
    m.seq = 5;
    CHECK(fl_msg_check_seq(&last, &m, &err) == FL_EPEER && strstr(err.msg, "seq 5 after 5"),
          "a repeat is refused: %s", err.msg);
    m.seq = 3;
    CHECK(fl_msg_check_seq(&last, &m, NULL) == FL_EPEER && last == 5, "going back is refused");
    m.seq = 1;
    CHECK(fl_msg_check_seq(&last, &m, NULL) == FL_OK && last == 1, "1 starts over (a restart)");
}

static void test_safetensors_mem(void) {
    uint8_t *payload;
    size_t payload_len;
    make_payload(&payload, &payload_len);
    fl_st_file f;
    fl_err err = {0};
    CHECK(fl_st_parse_mem(&f, payload, payload_len, "payload", &err) == FL_OK, "parse: %s",
          err.msg);
    const fl_st_tensor *t = fl_st_find(&f, "base_model.model.layers.0.q_proj.lora_A.weight");
    float values[6] = {0};
    CHECK(t && t->ndim == 2 && t->shape[1] == 3 && fl_st_to_f32(t, values, &err) == FL_OK &&
              values[5] == 6.0f,
          "tensor read back");
    CHECK(f.n_tensors == 3 && fl_st_meta(&f, "format") && f.map == NULL, "borrowed, 3 tensors");
    fl_st_close(&f);
    CHECK(fl_st_parse_mem(&f, payload, 7, "short", &err) == FL_EINPUT &&
              strstr(err.msg, "short: 7 bytes"),
          "too short: %s", err.msg);
    CHECK(fl_st_parse_mem(&f, NULL, 0, "none", &err) == FL_EINPUT, "empty");
    free(payload);
}

int main(void) {
    test_round_trip();
    test_field_refusals();
    test_payload_refusals();
    test_fuzz_headers();
    test_encode_refusals_and_seq();
    test_safetensors_mem();
    return tu_finish("test_protocol");
}
