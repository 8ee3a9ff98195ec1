/* secagg.c — secure aggregation (SecAgg / SecAgg+) with libsodium: see secagg.h for the API and
 * docs/secagg.md for the protocol, the byte layouts and the security argument.
 *
 * Arithmetic: inputs are quantised to B-bit fixed point with an offset, q = floor((v + c) S + r)
 * with S = (2^B - 1) / 2c and r uniform in [0, 1) (stochastic rounding, unbiased), so n clients sum
 * to at most n (2^B - 1) < 2^32 and the sum in Z_2^32 never wraps. The weight w in [0, 1] rides
 * along as the last value, quantised as floor(w (2^B - 1) + r). Masks are ChaCha20 keystreams
 * read as little-endian uint32 and added mod 2^32:
 *     y_i = q_i + PRG(b_i) + Σ_{j ∈ N(i), j > i} PRG(s_ij) − Σ_{j ∈ N(i), j < i} PRG(s_ij)
 * so each pair's masks cancel in the sum and the server removes the rest with rebuilt secrets.
 *
 * Secrets (the self-mask seed b_i and the mask secret key s_i^SK, 32 bytes each) are Shamir-shared
 * over GF(2^16) (x^16 + x^12 + x^3 + x + 1, primitive), 16 symbols per secret, share point
 * x = holder index + 1; field multiplication is a constant-time shift-and-add.
 *
 * Sizes: a client keeps O(k) state besides its graph (O(n)); the server keeps O(n k) shares and
 * ciphertexts (104 bytes per directed pair, freed after stage 2) and the running sum (4 (L+1)
 * bytes). Keystreams are made in 16 KiB chunks, in parallel over chunks with OpenMP. */
#include "fedllm/secagg.h"

#include <inttypes.h>
#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "masked vectors are read and written as host uint32: little-endian hosts only");

#define SA_MAGIC          "FLSA"
#define SA_VERSION        1
#define SA_ADVERTISE_BODY 96 /* c_pk, s_pk, commitment of b */
#define SA_KEYS_ENTRY     68 /* index, c_pk, s_pk */
#define SA_NONCE          crypto_aead_xchacha20poly1305_ietf_NPUBBYTES /* 24 */
#define SA_PLAIN          64                                           /* b share || s^SK share */
#define SA_CIPHER         (SA_NONCE + SA_PLAIN + crypto_aead_xchacha20poly1305_ietf_ABYTES) /* 104 */
#define SA_SHARE_ENTRY    (4 + SA_CIPHER) /* peer index, nonce, ciphertext + tag: 108 */
#define SA_UNMASK_ENTRY   40              /* owner, kind, 3 zero bytes, share */
#define SA_KIND_B         1               /* a share of the self-mask seed b */
#define SA_KIND_S         2               /* a share of the mask secret key s^SK */
#define SA_CHUNK          4096 /* values per keystream chunk: 16 KiB, a multiple of 64-byte blocks */

static const char *const MSG_NAMES[] = {"?",       "ADVERTISE", "KEYS",      "SHARES",
                                        "FORWARD", "MASKED",    "SURVIVORS", "UNMASK"};

/* ---- bytes ------------------------------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) {
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void sa_log(const fl_secagg_config *cfg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sa_log(const fl_secagg_config *cfg, const char *fmt, ...) {
    if (!cfg->log) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    cfg->log(cfg->log_ctx, line);
}

/* ---- GF(2^16) and Shamir ----------------------------------------------------------------- */

static uint16_t gf_mul(uint16_t a, uint16_t b) {
    uint32_t r = 0, x = a;
    for (int i = 0; i < 16; i++) {
        r ^= x & (0u - ((b >> i) & 1u));
        x <<= 1;
        x ^= 0x1100Bu & (0u - (x >> 16));
    }
    return (uint16_t)r;
}

/* a^(2^16 - 2) = a^-1 for a != 0 (and 0 for 0). */
static uint16_t gf_inv(uint16_t a) {
    uint16_t result = 1, power = a;
    for (int i = 1; i < 16; i++) { /* exponent 0xFFFE: every bit but bit 0 */
        power = gf_mul(power, power);
        result = gf_mul(result, power);
    }
    return result;
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static int xs_problem(const uint16_t *xs, size_t n, fl_err *err) {
    for (size_t i = 0; i < n; i++) {
        if (xs[i] == 0) return fl_err_set(err, FL_EINPUT, "shamir: share point %zu is 0", i);
        for (size_t j = 0; j < i; j++)
            if (xs[j] == xs[i])
                return fl_err_set(err, FL_EINPUT, "shamir: share point %u given twice", xs[i]);
    }
    return FL_OK;
}

int fl_shamir_split(const uint8_t secret[32], uint32_t t, const uint16_t *xs, size_t n,
                    uint8_t (*shares)[32], fl_err *err) {
    if (t < 1 || n < t)
        return fl_err_set(err, FL_EINPUT, "shamir: %zu shares cannot have threshold %u", n, t);
    int rc = xs_problem(xs, n, err);
    if (rc) return rc;
    uint16_t *coef = malloc((size_t)t * sizeof *coef); /* f(x) = coef[0] + ... + coef[t-1] x^t-1 */
    if (!coef) return fl_err_set(err, FL_ENOMEM, "shamir: out of memory");
    for (int sym = 0; sym < 16; sym++) {
        coef[0] = get16(secret + 2 * sym);
        randombytes_buf(coef + 1, (size_t)(t - 1) * sizeof *coef);
        for (size_t i = 0; i < n; i++) {
            uint16_t y = coef[t - 1];
            for (uint32_t d = t - 1; d-- > 0;)
                y = gf_mul(y, xs[i]) ^ coef[d];
            put16(shares[i] + 2 * sym, y);
        }
    }
    sodium_memzero(coef, (size_t)t * sizeof *coef);
    free(coef);
    return FL_OK;
}

/* lambda[k] = Π_{m != k} x_m / (x_m - x_k): the weights of the shares in f(0). */
static void lagrange_at_zero(const uint16_t *xs, size_t n, uint16_t *lambda) {
    for (size_t k = 0; k < n; k++) {
        uint16_t num = 1, den = 1;
        for (size_t m = 0; m < n; m++) {
            if (m == k) continue;
            num = gf_mul(num, xs[m]);
            den = gf_mul(den, xs[m] ^ xs[k]);
        }
        lambda[k] = gf_mul(num, gf_inv(den));
    }
}

static void lagrange_apply(const uint16_t *lambda, const uint8_t (*shares)[32], size_t n,
                           uint8_t secret[32]) {
    for (int sym = 0; sym < 16; sym++) {
        uint16_t s = 0;
        for (size_t k = 0; k < n; k++)
            s ^= gf_mul(lambda[k], get16(shares[k] + 2 * sym));
        put16(secret + 2 * sym, s);
    }
}

int fl_shamir_combine(const uint16_t *xs, const uint8_t (*shares)[32], size_t n, uint8_t secret[32],
                      fl_err *err) {
    if (n == 0) return fl_err_set(err, FL_EINPUT, "shamir: no shares to combine");
    int rc = xs_problem(xs, n, err);
    if (rc) return rc;
    uint16_t *lambda = malloc(n * sizeof *lambda);
    if (!lambda) return fl_err_set(err, FL_ENOMEM, "shamir: out of memory");
    lagrange_at_zero(xs, n, lambda);
    lagrange_apply(lambda, shares, n, secret);
    free(lambda);
    return FL_OK;
}

/* ---- config, session, graph -------------------------------------------------------------- */

/* k: the neighbour count, n - 1 for the complete graph. */
static uint32_t degree(const fl_secagg_config *cfg) {
    uint32_t n = cfg->n_clients;
    return cfg->neighbours == 0 || cfg->neighbours >= n - 1 ? n - 1 : cfg->neighbours;
}

int fl_secagg_config_check(const fl_secagg_config *cfg, fl_err *err) {
    uint32_t n = cfg->n_clients;
    if (n < 2 || n > FL_SECAGG_MAX_CLIENTS)
        return fl_err_set(err, FL_EINPUT, "secagg: n_clients: %u, expected 2 .. %u", n,
                          FL_SECAGG_MAX_CLIENTS);
    uint32_t k = degree(cfg);
    if (k < n - 1 && (k < 2 || k % 2))
        return fl_err_set(err, FL_EINPUT,
                          "secagg: neighbours: %u, expected 0 (complete graph) or an even number "
                          "from 2 (the Harary graph links k/2 clients on each side)",
                          cfg->neighbours);
    uint32_t t = cfg->threshold, holders = k + 1;
    if (t < 2 || t > holders || 2 * (uint64_t)t <= holders)
        return fl_err_set(err, FL_EINPUT,
                          "secagg: threshold: %u, expected more than half of the %u holders of "
                          "each secret (a client and its %u neighbours) and at most all of them "
                          "(%u .. %u)",
                          t, holders, k, holders / 2 + 1 < 2 ? 2 : holders / 2 + 1, holders);
    if (cfg->bits < 1 || cfg->bits > 31 ||
        (uint64_t)n * ((UINT64_C(1) << cfg->bits) - 1) > UINT32_MAX)
        return fl_err_set(err, FL_EINPUT,
                          "secagg: bits: %u, expected 1 .. 31 with n_clients * (2^bits - 1) < "
                          "2^32 so that the sum cannot wrap (for %u clients at most %d bits)",
                          cfg->bits, n, (int)floor(log2((double)UINT32_MAX / n + 1)));
    if (!isfinite(cfg->clip_range) || !(cfg->clip_range > 0))
        return fl_err_set(err, FL_EINPUT, "secagg: clip_range: %g, expected a finite value > 0",
                          cfg->clip_range);
    if (cfg->vector_len > FL_SECAGG_MAX_VALUES)
        return fl_err_set(err, FL_EINPUT, "secagg: vector_len: %" PRIu64 ", expected at most %u",
                          cfg->vector_len, FL_SECAGG_MAX_VALUES);
    return FL_OK;
}

static double qmax(const fl_secagg_config *cfg) { return (double)((UINT64_C(1) << cfg->bits) - 1); }

double fl_secagg_step(const fl_secagg_config *cfg) { return 2 * cfg->clip_range / qmax(cfg); }

size_t fl_secagg_masked_bytes(const fl_secagg_config *cfg) {
    return FL_SECAGG_HEADER_BYTES + 4 * ((size_t)cfg->vector_len + 1);
}

/* The session id: every public parameter of the round, hashed. */
static void session_id(const fl_secagg_config *cfg, uint8_t out[32]) {
    uint8_t buf[17 + 4 * 4 + 8 * 3 + 32] = "fedllm-secagg-v1";
    uint8_t *p = buf + 17;
    uint64_t clip_bits;
    memcpy(&clip_bits, &cfg->clip_range, 8);
    put32(p, cfg->n_clients), p += 4;
    put32(p, cfg->threshold), p += 4;
    put32(p, degree(cfg)), p += 4;
    put32(p, cfg->bits), p += 4;
    put64(p, clip_bits), p += 8;
    put64(p, cfg->round), p += 8;
    put64(p, cfg->vector_len), p += 8;
    memcpy(p, cfg->graph_seed, 32);
    crypto_generichash(out, 32, buf, sizeof buf, NULL, 0);
}

/* BLAKE2b-256 of label, session, two indices and up to three 32-byte strings (NULL: left out). */
static void derive(uint8_t out[32], const char *label, const uint8_t session[32], uint32_t a,
                   uint32_t b, const uint8_t *x, const uint8_t *y, const uint8_t *z) {
    crypto_generichash_state st;
    uint8_t ab[8];
    put32(ab, a);
    put32(ab + 4, b);
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const uint8_t *)label, strlen(label) + 1);
    crypto_generichash_update(&st, session, 32);
    crypto_generichash_update(&st, ab, 8);
    const uint8_t *parts[3] = {x, y, z};
    for (int i = 0; i < 3; i++)
        if (parts[i]) crypto_generichash_update(&st, parts[i], 32);
    crypto_generichash_final(&st, out, 32);
    sodium_memzero(&st, sizeof st);
}

/* A ChaCha20 keystream read as uint32 words, for the graph's shuffle. */
typedef struct sa_stream {
    uint8_t key[32];
    uint64_t block;
    uint32_t words[16];
    int used;
} sa_stream;

static uint32_t stream_next(sa_stream *s) {
    if (s->used == 16) {
        static const uint8_t zeros[64];
        uint8_t nonce[8] = {0};
        crypto_stream_chacha20_xor_ic((uint8_t *)s->words, zeros, 64, nonce, s->block++, s->key);
        s->used = 0;
    }
    return s->words[s->used++];
}

static uint32_t stream_below(sa_stream *s, uint32_t bound) { /* uniform in [0, bound) */
    uint32_t floor_ = (0u - bound) % bound, r;
    do
        r = stream_next(s);
    while (r < floor_);
    return r % bound;
}

/* The neighbour graph: complete, or a Harary graph H(k, n) (each client linked to the k/2 nearest
 * on each side of a ring) over a random permutation of the clients drawn from the session. */
typedef struct sa_graph {
    uint32_t n, k;
    uint32_t *pos; /* (n) ring position of each client; NULL for the complete graph */
    uint32_t *at;  /* (n) client at each ring position */
} sa_graph;

static void graph_free(sa_graph *g) {
    free(g->pos);
    free(g->at);
    memset(g, 0, sizeof *g);
}

static int graph_init(sa_graph *g, const fl_secagg_config *cfg, const uint8_t session[32],
                      fl_err *err) {
    memset(g, 0, sizeof *g);
    g->n = cfg->n_clients;
    g->k = degree(cfg);
    if (g->k == g->n - 1) return FL_OK;
    g->pos = malloc(g->n * sizeof *g->pos);
    g->at = malloc(g->n * sizeof *g->at);
    if (!g->pos || !g->at) {
        graph_free(g);
        return fl_err_set(err, FL_ENOMEM, "secagg: out of memory for the neighbour graph");
    }
    sa_stream s = {.used = 16};
    derive(s.key, "fedllm-secagg-graph", session, 0, 0, NULL, NULL, NULL);
    for (uint32_t i = 0; i < g->n; i++)
        g->at[i] = i;
    for (uint32_t i = g->n - 1; i > 0; i--) { /* Fisher-Yates */
        uint32_t j = stream_below(&s, i + 1), tmp = g->at[i];
        g->at[i] = g->at[j];
        g->at[j] = tmp;
    }
    for (uint32_t p = 0; p < g->n; p++)
        g->pos[g->at[p]] = p;
    return FL_OK;
}

static int graph_linked(const sa_graph *g, uint32_t a, uint32_t b) {
    if (a == b || a >= g->n || b >= g->n) return 0;
    if (!g->pos) return 1;
    uint32_t d = g->pos[a] > g->pos[b] ? g->pos[a] - g->pos[b] : g->pos[b] - g->pos[a];
    if (g->n - d < d) d = g->n - d;
    return d <= g->k / 2;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* out[0..k-1] = v's neighbours, ascending. */
static void graph_neighbours(const sa_graph *g, uint32_t v, uint32_t *out) {
    if (!g->pos) {
        for (uint32_t i = 0, m = 0; i < g->n; i++)
            if (i != v) out[m++] = i;
        return;
    }
    for (uint32_t d = 1, m = 0; d <= g->k / 2; d++) {
        out[m++] = g->at[(g->pos[v] + d) % g->n];
        out[m++] = g->at[(g->pos[v] + g->n - d) % g->n];
    }
    qsort(out, g->k, sizeof *out, cmp_u32);
}

/* Index of x in the ascending list[0..n-1], or -1. */
static long slot_of(const uint32_t *list, uint32_t n, uint32_t x) {
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (list[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && list[lo] == x ? (long)lo : -1;
}

/* ---- messages ---------------------------------------------------------------------------- */

static const char *msg_name(int type) { return type >= 1 && type <= 7 ? MSG_NAMES[type] : "?"; }

/* who: "client 3" or "the server", for messages. */
static const char *who(char buf[32], uint32_t index) {
    if (index == FL_SECAGG_SERVER_INDEX) return "the server";
    snprintf(buf, 32, "client %u", index);
    return buf;
}

/* A new message with its header filled and a zeroed body of body_bytes. */
static uint8_t *msg_new(const uint8_t session[32], uint64_t round, fl_secagg_msg_type type,
                        uint32_t sender, uint32_t count, size_t body_bytes, size_t *len,
                        fl_err *err) {
    uint8_t *m = calloc(1, FL_SECAGG_HEADER_BYTES + body_bytes);
    if (!m) {
        fl_err_set(err, FL_ENOMEM, "secagg: out of memory for a %s message of %zu bytes",
                   msg_name(type), FL_SECAGG_HEADER_BYTES + body_bytes);
        return NULL;
    }
    memcpy(m, SA_MAGIC, 4);
    m[4] = SA_VERSION;
    m[5] = (uint8_t)type;
    put64(m + 8, round);
    memcpy(m + 16, session, 8);
    put32(m + 24, sender);
    put32(m + 28, count);
    *len = FL_SECAGG_HEADER_BYTES + body_bytes;
    return m;
}

int fl_secagg_msg_peek(const uint8_t *msg, size_t len, fl_secagg_msg_info *info, fl_err *err) {
    if (!msg || len < FL_SECAGG_HEADER_BYTES)
        return fl_err_set(err, FL_EPEER, "secagg: a message of %zu bytes, shorter than its header",
                          msg ? len : 0);
    if (memcmp(msg, SA_MAGIC, 4) != 0)
        return fl_err_set(err, FL_EPEER, "secagg: not a secure aggregation message (bad magic)");
    if (msg[4] != SA_VERSION)
        return fl_err_set(err, FL_EPEER, "secagg: message version %u, expected %u", msg[4],
                          SA_VERSION);
    if (msg[5] < FL_SECAGG_MSG_ADVERTISE || msg[5] > FL_SECAGG_MSG_UNMASK)
        return fl_err_set(err, FL_EPEER, "secagg: unknown message type %u", msg[5]);
    info->type = (fl_secagg_msg_type)msg[5];
    info->round = get64(msg + 8);
    info->sender = get32(msg + 24);
    info->count = get32(msg + 28);
    return FL_OK;
}

/* Checks a received message's header against what the receiver expects and its length against
 * count entries of entry_bytes (count <= max_count); *count is set. `self` names the receiver in
 * refusals. */
static int msg_open(const uint8_t *msg, size_t len, const uint8_t session[32],
                    const fl_secagg_config *cfg, const char *self, fl_secagg_msg_type type,
                    uint32_t sender, size_t entry_bytes, uint32_t max_count, uint32_t *count,
                    fl_err *err) {
    char wb[32], sb[32];
    fl_secagg_msg_info info;
    const char *from = who(wb, sender);
    fl_err peek_err = {0};
    if (fl_secagg_msg_peek(msg, len, &info, &peek_err))
        return fl_err_set(err, FL_EPEER, "secagg round %" PRIu64 ": %s refused %s from %s: %s",
                          cfg->round, self, msg_name(type), from, peek_err.msg);
#define REFUSE(...)                                                                                \
    do {                                                                                           \
        char why_[256];                                                                            \
        snprintf(why_, sizeof why_, __VA_ARGS__);                                                  \
        return fl_err_set(err, FL_EPEER, "secagg round %" PRIu64 ": %s refused %s from %s: %s",    \
                          cfg->round, self, msg_name(type), from, why_);                           \
    } while (0)
    if (info.type != type) REFUSE("it is a %s message", msg_name(info.type));
    if (info.round != cfg->round)
        REFUSE("it is of round %" PRIu64 " (replayed or late)", info.round);
    if (msg[6] || msg[7]) REFUSE("reserved header bytes are not zero");
    if (sodium_memcmp(msg + 16, session, 8) != 0)
        REFUSE("it is of another session (the parties' secure aggregation configs differ)");
    if (info.sender != sender) REFUSE("it claims to be from %s", who(sb, info.sender));
    if (info.count > max_count) REFUSE("%u entries, at most %u expected", info.count, max_count);
    if ((len - FL_SECAGG_HEADER_BYTES) != (size_t)info.count * entry_bytes)
        REFUSE("%zu bytes for %u entries of %zu bytes (expected %zu)", len, info.count, entry_bytes,
               FL_SECAGG_HEADER_BYTES + (size_t)info.count * entry_bytes);
#undef REFUSE
    *count = info.count;
    return FL_OK;
}

/* ---- keys and masks ---------------------------------------------------------------------- */

/* 1 when pk is a usable X25519 public key (X25519 with it is not the all-zero point). */
static int key_usable(const uint8_t pk[32]) {
    static const uint8_t probe[32] = {9,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                      11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                      22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
    uint8_t out[32];
    return crypto_scalarmult(out, probe, pk) == 0;
}

/* The key that encrypts sender's shares for recipient (one direction of the pair), computed by
 * either side: with the sender's secret key (i_send) or the recipient's. -1 for a bad peer key. */
static int share_key(uint8_t key[32], const uint8_t session[32], uint32_t sender,
                     const uint8_t c_pk_sender[32], uint32_t recipient,
                     const uint8_t c_pk_recipient[32], const uint8_t c_sk_mine[32], int i_send) {
    uint8_t dh[32];
    if (crypto_scalarmult(dh, c_sk_mine, i_send ? c_pk_recipient : c_pk_sender) != 0) return -1;
    derive(key, "fedllm-secagg-share", session, sender, recipient, c_pk_sender, c_pk_recipient, dh);
    sodium_memzero(dh, sizeof dh);
    return 0;
}

/* s_ab: the pairwise mask key of clients a and b, computed with a's secret key (the same value as
 * b computes with its own). -1 for a bad key of b. */
static int mask_key(uint8_t key[32], const uint8_t session[32], uint32_t a,
                    const uint8_t s_pk_a[32], const uint8_t s_sk_a[32], uint32_t b,
                    const uint8_t s_pk_b[32]) {
    uint8_t dh[32];
    if (crypto_scalarmult(dh, s_sk_a, s_pk_b) != 0) return -1;
    if (a < b)
        derive(key, "fedllm-secagg-mask", session, a, b, s_pk_a, s_pk_b, dh);
    else
        derive(key, "fedllm-secagg-mask", session, b, a, s_pk_b, s_pk_a, dh);
    sodium_memzero(dh, sizeof dh);
    return 0;
}

static void share_ad(uint8_t ad[40], const uint8_t session[32], uint32_t sender,
                     uint32_t recipient) {
    memcpy(ad, session, 32);
    put32(ad + 32, sender);
    put32(ad + 36, recipient);
}

typedef struct sa_mask {
    uint8_t key[32];
    int negate; /* 1: subtract the keystream, 0: add it */
} sa_mask;

/* y[v] ±= ChaCha20(key)[v] (uint32 words, nonce 0) for every mask, v in [0, n). */
static void masks_apply(uint32_t *y, size_t n, const sa_mask *masks, size_t n_masks) {
    static const uint8_t zeros[SA_CHUNK * 4];
    size_t n_chunks = (n + SA_CHUNK - 1) / SA_CHUNK;
#pragma omp parallel if (n > 65536)
    {
        uint32_t buf[SA_CHUNK];
        uint8_t nonce[8] = {0};
#pragma omp for schedule(static)
        for (size_t c = 0; c < n_chunks; c++) {
            size_t at = c * SA_CHUNK, len = n - at < SA_CHUNK ? n - at : SA_CHUNK;
            for (size_t m = 0; m < n_masks; m++) {
                crypto_stream_chacha20_xor_ic((uint8_t *)buf, zeros, len * 4, nonce, at / 16,
                                              masks[m].key);
                uint32_t *yc = y + at;
                if (masks[m].negate)
                    for (size_t v = 0; v < len; v++)
                        yc[v] -= buf[v];
                else
                    for (size_t v = 0; v < len; v++)
                        yc[v] += buf[v];
            }
        }
        sodium_memzero(buf, sizeof buf);
    }
}

/* y[0..L-1] = quantised clip(weight * x), y[L] = quantised weight; stochastic rounding from the
 * keystream of key with the round as nonce. Returns the number of values clipped. */
static uint64_t quantise(uint32_t *y, const float *x, size_t L, double weight,
                         const fl_secagg_config *cfg, const uint8_t key[32]) {
    static const uint8_t zeros[SA_CHUNK * 4];
    const double c = cfg->clip_range, scale = qmax(cfg) / (2 * c), top = qmax(cfg);
    size_t n = L + 1, n_chunks = (n + SA_CHUNK - 1) / SA_CHUNK;
    uint64_t clipped = 0;
#pragma omp parallel if (n > 65536) reduction(+ : clipped)
    {
        uint32_t buf[SA_CHUNK];
        uint8_t nonce[8];
        put64(nonce, cfg->round);
#pragma omp for schedule(static)
        for (size_t ch = 0; ch < n_chunks; ch++) {
            size_t at = ch * SA_CHUNK, len = n - at < SA_CHUNK ? n - at : SA_CHUNK;
            crypto_stream_chacha20_xor_ic((uint8_t *)buf, zeros, len * 4, nonce, at / 16, key);
            for (size_t v = 0; v < len; v++) {
                double u;
                if (at + v < L) {
                    double val = weight * (double)x[at + v];
                    if (val > c)
                        val = c, clipped++;
                    else if (val < -c)
                        val = -c, clipped++;
                    u = (val + c) * scale;
                } else {
                    u = weight * top;
                }
                double q = floor(u + buf[v] * 0x1p-32);
                y[at + v] = (uint32_t)(q < 0 ? 0 : q > top ? top : q);
            }
        }
        sodium_memzero(buf, sizeof buf);
    }
    return clipped;
}

/* ---- client ------------------------------------------------------------------------------ */

enum { /* what a client knows of a neighbour */
       NB_ABSENT = 0,
       NB_ADVERTISED, /* in the server's key list (U1) */
       NB_SHARED,     /* shared (U2), and its share for this client decrypted */
       NB_SHARED_BAD, /* shared (U2), but its share for this client was refused */
};

enum { CS_ADVERTISE = 0, CS_SHARE, CS_MASK, CS_UNMASK, CS_DONE };

struct fl_secagg_client {
    fl_secagg_config cfg;
    uint32_t index, k, t;
    int stage; /* CS_*: the next call expected */
    char name[32];
    uint8_t session[32];
    sa_graph graph;
    uint32_t *nbr;            /* (k) neighbours, ascending */
    uint8_t *nbr_state;       /* (k) NB_* */
    uint8_t (*nbr_c_pk)[32];  /* (k) their encryption keys, from KEYS */
    uint8_t (*nbr_mask)[32];  /* (k) pairwise mask keys s_ij (secret) */
    uint8_t (*nbr_share)[64]; /* (k) their b share || s^SK share for this client (secret) */
    uint8_t own_share[64];    /* this client's own share of its secrets (x = index + 1) */
    uint8_t c_pk[32], c_sk[32], s_pk[32], s_sk[32], b[32], commit[32], quant_key[32];
    uint64_t clipped;
};

fl_secagg_client *fl_secagg_client_new(const fl_secagg_config *cfg, uint32_t index,
                                       const uint8_t *quant_seed, fl_err *err) {
    if (sodium_init() < 0) {
        fl_err_set(err, FL_EINTERNAL, "secagg: libsodium failed to initialise");
        return NULL;
    }
    if (fl_secagg_config_check(cfg, err)) return NULL;
    if (index >= cfg->n_clients) {
        fl_err_set(err, FL_EINPUT, "secagg: client index %u, expected 0 .. %u", index,
                   cfg->n_clients - 1);
        return NULL;
    }
    fl_secagg_client *c = calloc(1, sizeof *c);
    if (!c) {
        fl_err_set(err, FL_ENOMEM, "secagg: out of memory for a client");
        return NULL;
    }
    c->cfg = *cfg;
    c->index = index;
    c->k = degree(cfg);
    c->t = cfg->threshold;
    snprintf(c->name, sizeof c->name, "client %u", index);
    session_id(cfg, c->session);
    if (graph_init(&c->graph, cfg, c->session, err)) {
        free(c);
        return NULL;
    }
    c->nbr = malloc(c->k * sizeof *c->nbr);
    c->nbr_state = calloc(c->k, 1);
    c->nbr_c_pk = calloc(c->k, 32);
    c->nbr_mask = calloc(c->k, 32);
    c->nbr_share = calloc(c->k, 64);
    if (!c->nbr || !c->nbr_state || !c->nbr_c_pk || !c->nbr_mask || !c->nbr_share) {
        fl_secagg_client_free(c);
        fl_err_set(err, FL_ENOMEM, "secagg: out of memory for a client's %u neighbours", c->k);
        return NULL;
    }
    graph_neighbours(&c->graph, index, c->nbr);
    if (quant_seed)
        memcpy(c->quant_key, quant_seed, 32);
    else
        randombytes_buf(c->quant_key, 32);
    return c;
}

void fl_secagg_client_free(fl_secagg_client *c) {
    if (!c) return;
    if (c->nbr_mask) sodium_memzero(c->nbr_mask, (size_t)c->k * 32);
    if (c->nbr_share) sodium_memzero(c->nbr_share, (size_t)c->k * 64);
    free(c->nbr);
    free(c->nbr_state);
    free(c->nbr_c_pk);
    free(c->nbr_mask);
    free(c->nbr_share);
    graph_free(&c->graph);
    sodium_memzero(c, sizeof *c);
    free(c);
}

uint64_t fl_secagg_client_clipped(const fl_secagg_client *c) { return c->clipped; }

static int client_stage(fl_secagg_client *c, int expected, const char *call, fl_err *err) {
    if (c->stage == expected) return FL_OK;
    return fl_err_set(err, FL_EINTERNAL,
                      "secagg round %" PRIu64 ": %s: %s called out of order (stage %d, expected "
                      "%d)%s",
                      c->cfg.round, c->name, call, c->stage, expected,
                      c->stage == CS_DONE ? ": the unmasking request was already answered" : "");
}

int fl_secagg_client_advertise(fl_secagg_client *c, uint8_t **msg, size_t *len, fl_err *err) {
    *msg = NULL;
    int rc = client_stage(c, CS_ADVERTISE, "advertise", err);
    if (rc) return rc;
    uint8_t *m = msg_new(c->session, c->cfg.round, FL_SECAGG_MSG_ADVERTISE, c->index, 1,
                         SA_ADVERTISE_BODY, len, err);
    if (!m) return FL_ENOMEM;
    crypto_box_keypair(c->c_pk, c->c_sk);
    crypto_box_keypair(c->s_pk, c->s_sk);
    randombytes_buf(c->b, 32);
    derive(c->commit, "fedllm-secagg-commit", c->session, c->index, 0, c->b, NULL, NULL);
    memcpy(m + 32, c->c_pk, 32);
    memcpy(m + 64, c->s_pk, 32);
    memcpy(m + 96, c->commit, 32);
    c->stage = CS_SHARE;
    *msg = m;
    return FL_OK;
}

/* Reads KEYS into the neighbour slots (states, keys, mask keys); on refusal clears them. */
static int client_read_keys(fl_secagg_client *c, const uint8_t *keys, size_t keys_len,
                            uint32_t *holders, fl_err *err) {
    uint32_t count;
    if (msg_open(keys, keys_len, c->session, &c->cfg, c->name, FL_SECAGG_MSG_KEYS,
                 FL_SECAGG_SERVER_INDEX, SA_KEYS_ENTRY, c->cfg.n_clients, &count, err))
        return FL_EPEER;
    memset(c->nbr_state, 0, c->k);
    int have_own = 0;
    *holders = 1;
    const char *why = NULL;
    uint32_t bad = 0, prev = 0;
    for (uint32_t e = 0; e < count && !why; e++) {
        const uint8_t *p = keys + FL_SECAGG_HEADER_BYTES + (size_t)e * SA_KEYS_ENTRY;
        uint32_t j = get32(p);
        bad = j;
        if (j >= c->cfg.n_clients)
            why = "index out of range";
        else if (e > 0 && j <= prev)
            why = "indices not strictly increasing";
        else if (j == c->index) {
            have_own = 1;
            if (memcmp(p + 4, c->c_pk, 32) || memcmp(p + 36, c->s_pk, 32))
                why = "the keys listed for this client are not its own";
        } else {
            long s = slot_of(c->nbr, c->k, j);
            if (s >= 0) {
                memcpy(c->nbr_c_pk[s], p + 4, 32);
                if (mask_key(c->nbr_mask[s], c->session, c->index, c->s_pk, c->s_sk, j, p + 36) ||
                    !key_usable(p + 4))
                    why = "an invalid public key";
                c->nbr_state[s] = NB_ADVERTISED;
                ++*holders;
            }
        }
        prev = j;
    }
    if (!why && !have_own) {
        why = "this client is not listed";
        bad = c->index;
    } else if (!why && count < c->t) {
        why = "fewer clients than the threshold";
        bad = count;
    } else if (!why && *holders < c->t) {
        why = "fewer holders (this client and its listed neighbours) than the threshold";
        bad = *holders;
    }
    if (!why) return FL_OK;
    memset(c->nbr_state, 0, c->k);
    sodium_memzero(c->nbr_mask, (size_t)c->k * 32);
    return fl_err_set(err, FL_EPEER,
                      "secagg round %" PRIu64 ": %s refused KEYS from the server: %s (%u)",
                      c->cfg.round, c->name, why, bad);
}

int fl_secagg_client_share_keys(fl_secagg_client *c, const uint8_t *keys, size_t keys_len,
                                uint8_t **msg, size_t *len, fl_err *err) {
    *msg = NULL;
    int rc = client_stage(c, CS_SHARE, "share_keys", err);
    if (rc) return rc;
    uint32_t holders;
    if (client_read_keys(c, keys, keys_len, &holders, err)) return FL_EPEER;
    uint16_t *xs = malloc(holders * sizeof *xs);
    uint8_t(*bs)[32] = malloc((size_t)holders * 32), (*ss)[32] = malloc((size_t)holders * 32);
    uint8_t *m = msg_new(c->session, c->cfg.round, FL_SECAGG_MSG_SHARES, c->index, holders - 1,
                         (size_t)(holders - 1) * SA_SHARE_ENTRY, len, err);
    if (!xs || !bs || !ss || !m) {
        rc = fl_err_set(err, FL_ENOMEM, "secagg: out of memory for %u shares", holders);
        goto done;
    }
    xs[0] = (uint16_t)(c->index + 1);
    for (uint32_t s = 0, h = 1; s < c->k; s++)
        if (c->nbr_state[s] == NB_ADVERTISED) xs[h++] = (uint16_t)(c->nbr[s] + 1);
    if ((rc = fl_shamir_split(c->b, c->t, xs, holders, bs, err)) ||
        (rc = fl_shamir_split(c->s_sk, c->t, xs, holders, ss, err)))
        goto done;
    memcpy(c->own_share, bs[0], 32);
    memcpy(c->own_share + 32, ss[0], 32);
    uint8_t *p = m + FL_SECAGG_HEADER_BYTES;
    for (uint32_t s = 0, h = 1; s < c->k; s++) {
        if (c->nbr_state[s] != NB_ADVERTISED) continue;
        uint32_t j = c->nbr[s];
        uint8_t key[32], ad[40], plain[SA_PLAIN];
        /* cannot fail: client_read_keys checked the peer's key */
        share_key(key, c->session, c->index, c->c_pk, j, c->nbr_c_pk[s], c->c_sk, 1);
        share_ad(ad, c->session, c->index, j);
        memcpy(plain, bs[h], 32);
        memcpy(plain + 32, ss[h], 32);
        put32(p, j);
        randombytes_buf(p + 4, SA_NONCE);
        crypto_aead_xchacha20poly1305_ietf_encrypt(p + 4 + SA_NONCE, NULL, plain, SA_PLAIN, ad,
                                                   sizeof ad, NULL, p + 4, key);
        sodium_memzero(key, sizeof key);
        sodium_memzero(plain, sizeof plain);
        p += SA_SHARE_ENTRY;
        h++;
    }
    c->stage = CS_MASK;
    *msg = m;
    m = NULL;
done:
    if (bs) sodium_memzero(bs, (size_t)holders * 32);
    if (ss) sodium_memzero(ss, (size_t)holders * 32);
    free(xs);
    free(bs);
    free(ss);
    free(m);
    return rc;
}

/* Reads FORWARD: marks the listed neighbours shared and decrypts their shares for this client. */
static int client_read_forward(fl_secagg_client *c, const uint8_t *fwd, size_t fwd_len,
                               uint32_t *listed, fl_err *err) {
    uint32_t count, prev = 0;
    if (msg_open(fwd, fwd_len, c->session, &c->cfg, c->name, FL_SECAGG_MSG_FORWARD,
                 FL_SECAGG_SERVER_INDEX, SA_SHARE_ENTRY, c->k, &count, err))
        return FL_EPEER;
    for (uint32_t e = 0; e < count; e++) { /* structure first: refuse before changing anything */
        uint32_t j = get32(fwd + FL_SECAGG_HEADER_BYTES + (size_t)e * SA_SHARE_ENTRY);
        long s = slot_of(c->nbr, c->k, j);
        const char *why = e > 0 && j <= prev                 ? "senders not strictly increasing"
                          : s < 0                            ? "the sender is not a neighbour"
                          : c->nbr_state[s] != NB_ADVERTISED ? "the sender did not advertise keys"
                                                             : NULL;
        if (why)
            return fl_err_set(err, FL_EPEER,
                              "secagg round %" PRIu64 ": %s refused FORWARD from the server: "
                              "%s (%u)",
                              c->cfg.round, c->name, why, j);
        prev = j;
    }
    if (count + 1 < c->t)
        return fl_err_set(err, FL_EPEER,
                          "secagg round %" PRIu64 ": %s: only %u of its neighbours shared keys, "
                          "so its secrets have %u holders, fewer than the threshold %u",
                          c->cfg.round, c->name, count, count + 1, c->t);
    for (uint32_t e = 0; e < count; e++) {
        const uint8_t *p = fwd + FL_SECAGG_HEADER_BYTES + (size_t)e * SA_SHARE_ENTRY;
        uint32_t j = get32(p);
        long s = slot_of(c->nbr, c->k, j);
        uint8_t key[32], ad[40];
        share_key(key, c->session, j, c->nbr_c_pk[s], c->index, c->c_pk, c->c_sk, 0);
        share_ad(ad, c->session, j, c->index);
        int bad = crypto_aead_xchacha20poly1305_ietf_decrypt(c->nbr_share[s], NULL, NULL,
                                                             p + 4 + SA_NONCE, SA_PLAIN + 16, ad,
                                                             sizeof ad, p + 4, key);
        sodium_memzero(key, sizeof key);
        c->nbr_state[s] = bad ? NB_SHARED_BAD : NB_SHARED;
        if (bad) {
            sodium_memzero(c->nbr_share[s], 64);
            sa_log(&c->cfg,
                   "secagg round %" PRIu64 ": %s refused the share from client %u: it failed "
                   "authentication (tampered, or not from client %u); counted as missing",
                   c->cfg.round, c->name, j, j);
        }
    }
    *listed = count;
    return FL_OK;
}

int fl_secagg_client_masked_input(fl_secagg_client *c, const uint8_t *forward, size_t forward_len,
                                  const float *update, double weight, uint8_t **msg, size_t *len,
                                  fl_err *err) {
    *msg = NULL;
    int rc = client_stage(c, CS_MASK, "masked_input", err);
    if (rc) return rc;
    size_t L = c->cfg.vector_len;
    if (!(weight >= 0 && weight <= 1))
        return fl_err_set(err, FL_EINPUT,
                          "secagg: weight %g, expected 0 .. 1 (a fraction of a public maximum)",
                          weight);
    if (L && !update) return fl_err_set(err, FL_EINPUT, "secagg: no update values");
    for (size_t v = 0; v < L; v++)
        if (!isfinite(update[v]))
            return fl_err_set(err, FL_EINPUT, "secagg: update value %zu is not finite", v);
    uint8_t *m = msg_new(c->session, c->cfg.round, FL_SECAGG_MSG_MASKED, c->index,
                         (uint32_t)(L + 1), 4 * (L + 1), len, err);
    sa_mask *masks = malloc((c->k + 1) * sizeof *masks); /* self, and one per neighbour */
    uint32_t listed = 0;
    if (!m || !masks) rc = fl_err_set(err, FL_ENOMEM, "secagg: out of memory for the masked input");
    if (rc || client_read_forward(c, forward, forward_len, &listed, err)) {
        free(m);
        free(masks);
        return rc ? rc : FL_EPEER;
    }
    uint32_t *y = (uint32_t *)(m + FL_SECAGG_HEADER_BYTES);
    c->clipped = quantise(y, update, L, weight, &c->cfg, c->quant_key);
    if (c->clipped)
        sa_log(&c->cfg, "secagg round %" PRIu64 ": %s clipped %" PRIu64 " of %zu values to ±%g",
               c->cfg.round, c->name, c->clipped, L, c->cfg.clip_range);
    size_t n_masks = 0;
    memcpy(masks[n_masks].key, c->b, 32);
    masks[n_masks++].negate = 0;
    for (uint32_t s = 0; s < c->k; s++) {
        if (c->nbr_state[s] != NB_SHARED && c->nbr_state[s] != NB_SHARED_BAD) continue;
        memcpy(masks[n_masks].key, c->nbr_mask[s], 32);
        masks[n_masks++].negate = c->nbr[s] < c->index;
    }
    masks_apply(y, L + 1, masks, n_masks);
    sodium_memzero(masks, n_masks * sizeof *masks);
    free(masks);
    c->stage = CS_UNMASK;
    *msg = m;
    return FL_OK;
}

int fl_secagg_client_unmask(fl_secagg_client *c, const uint8_t *survivors, size_t survivors_len,
                            uint8_t **msg, size_t *len, fl_err *err) {
    *msg = NULL;
    int rc = client_stage(c, CS_UNMASK, "unmask", err);
    if (rc) return rc;
    uint32_t count, prev = 0;
    if (msg_open(survivors, survivors_len, c->session, &c->cfg, c->name, FL_SECAGG_MSG_SURVIVORS,
                 FL_SECAGG_SERVER_INDEX, 4, c->cfg.n_clients, &count, err))
        return FL_EPEER;
    uint8_t *alive = calloc(c->k ? c->k : 1, 1); /* (k) 1 when the neighbour survived */
    if (!alive) return fl_err_set(err, FL_ENOMEM, "secagg: out of memory");
    int have_own = 0;
    const char *why = NULL;
    uint32_t j = 0;
    for (uint32_t e = 0; e < count && !why; e++) {
        j = get32(survivors + FL_SECAGG_HEADER_BYTES + 4 * (size_t)e);
        long s = slot_of(c->nbr, c->k, j);
        if (j >= c->cfg.n_clients)
            why = "index out of range";
        else if (e > 0 && j <= prev)
            why = "indices not strictly increasing";
        else if (j == c->index)
            have_own = 1;
        else if (s >= 0 && c->nbr_state[s] != NB_SHARED && c->nbr_state[s] != NB_SHARED_BAD)
            why = "a neighbour that did not share keys is listed as a survivor";
        else if (s >= 0)
            alive[s] = 1;
        prev = j;
    }
    if (!why && !have_own) {
        why = "this client is not listed";
        j = c->index;
    } else if (!why && count < c->t) {
        why = "fewer survivors than the threshold";
        j = count;
    }
    if (why) {
        free(alive);
        return fl_err_set(err, FL_EPEER,
                          "secagg round %" PRIu64 ": %s refused SURVIVORS from the server: %s "
                          "(%u)",
                          c->cfg.round, c->name, why, j);
    }
    uint32_t n_entries = 1;
    for (uint32_t s = 0; s < c->k; s++)
        n_entries += c->nbr_state[s] == NB_SHARED;
    uint8_t *m = msg_new(c->session, c->cfg.round, FL_SECAGG_MSG_UNMASK, c->index, n_entries,
                         (size_t)n_entries * SA_UNMASK_ENTRY, len, err);
    if (!m) {
        free(alive);
        return FL_ENOMEM;
    }
    uint8_t *p = m + FL_SECAGG_HEADER_BYTES;
    int own_done = 0;
    for (uint32_t s = 0; s <= c->k; s++) { /* owners ascending, this client in its place */
        if (!own_done && (s == c->k || c->nbr[s] > c->index)) {
            put32(p, c->index);
            p[4] = SA_KIND_B;
            memcpy(p + 8, c->own_share, 32);
            p += SA_UNMASK_ENTRY;
            own_done = 1;
        }
        if (s == c->k || c->nbr_state[s] != NB_SHARED) continue;
        put32(p, c->nbr[s]);
        p[4] = alive[s] ? SA_KIND_B : SA_KIND_S;
        memcpy(p + 8, c->nbr_share[s] + (alive[s] ? 0 : 32), 32);
        p += SA_UNMASK_ENTRY;
    }
    free(alive);
    sodium_memzero(c->nbr_share, (size_t)c->k * 64); /* answered once: nothing more to reveal */
    sodium_memzero(c->own_share, sizeof c->own_share);
    c->stage = CS_DONE;
    *msg = m;
    return FL_OK;
}

/* ---- server ------------------------------------------------------------------------------ */

enum { SS_ADVERTISE = 0, SS_SHARES, SS_MASKED, SS_UNMASK, SS_DONE, SS_FAILED };

struct fl_secagg_server {
    fl_secagg_config cfg;
    uint32_t n, k, t;
    int stage; /* SS_*: the stage being collected */
    uint8_t session[32];
    sa_graph graph;
    uint32_t *nbr;         /* (n, k) each client's neighbours, ascending */
    uint8_t *progress;     /* (n) fl_secagg_progress */
    uint8_t (*c_pk)[32];   /* (n) from ADVERTISE */
    uint8_t (*s_pk)[32];   /* (n) */
    uint8_t (*commit)[32]; /* (n) commitments of the self-mask seeds */
    uint8_t *cipher;       /* (n, k, SA_CIPHER) client j's share for its s-th neighbour */
    uint32_t *sum;         /* (L+1) Σ masked inputs mod 2^32 */
    uint8_t *share_kind;   /* (n, k+1) SA_KIND_* of the share held from each holder, 0: none;
                              holder slot s < k is the owner's s-th neighbour, slot k itself */
    uint8_t (*shares)[32]; /* (n, k+1) */
};

static const uint32_t *nbrs(const fl_secagg_server *s, uint32_t j) {
    return s->nbr + (size_t)j * s->k;
}

fl_secagg_server *fl_secagg_server_new(const fl_secagg_config *cfg, fl_err *err) {
    if (sodium_init() < 0) {
        fl_err_set(err, FL_EINTERNAL, "secagg: libsodium failed to initialise");
        return NULL;
    }
    if (fl_secagg_config_check(cfg, err)) return NULL;
    fl_secagg_server *s = calloc(1, sizeof *s);
    if (!s) {
        fl_err_set(err, FL_ENOMEM, "secagg: out of memory for the server");
        return NULL;
    }
    s->cfg = *cfg;
    s->n = cfg->n_clients;
    s->k = degree(cfg);
    s->t = cfg->threshold;
    session_id(cfg, s->session);
    if (graph_init(&s->graph, cfg, s->session, err)) {
        free(s);
        return NULL;
    }
    size_t nk = (size_t)s->n * s->k, nk1 = (size_t)s->n * (s->k + 1);
    s->nbr = malloc(nk * sizeof *s->nbr);
    s->progress = calloc(s->n, 1);
    s->c_pk = calloc(s->n, 32);
    s->s_pk = calloc(s->n, 32);
    s->commit = calloc(s->n, 32);
    s->cipher = calloc(nk, SA_CIPHER);
    s->sum = calloc(cfg->vector_len + 1, sizeof *s->sum);
    s->share_kind = calloc(nk1, 1);
    s->shares = calloc(nk1, 32);
    if (!s->nbr || !s->progress || !s->c_pk || !s->s_pk || !s->commit || !s->cipher || !s->sum ||
        !s->share_kind || !s->shares) {
        fl_secagg_server_free(s);
        fl_err_set(err, FL_ENOMEM,
                   "secagg: out of memory for a server of %u clients with %u neighbours each "
                   "and %" PRIu64 " values",
                   cfg->n_clients, degree(cfg), cfg->vector_len);
        return NULL;
    }
    for (uint32_t j = 0; j < s->n; j++)
        graph_neighbours(&s->graph, j, s->nbr + (size_t)j * s->k);
    return s;
}

void fl_secagg_server_free(fl_secagg_server *s) {
    if (!s) return;
    if (s->shares) sodium_memzero(s->shares, (size_t)s->n * (s->k + 1) * 32);
    free(s->nbr);
    free(s->progress);
    free(s->c_pk);
    free(s->s_pk);
    free(s->commit);
    free(s->cipher);
    free(s->sum);
    free(s->share_kind);
    free(s->shares);
    graph_free(&s->graph);
    sodium_memzero(s, sizeof *s);
    free(s);
}

fl_secagg_progress fl_secagg_server_progress(const fl_secagg_server *s, uint32_t index) {
    return index < s->n ? (fl_secagg_progress)s->progress[index] : FL_SECAGG_NONE;
}

void fl_secagg_server_shares_held(const fl_secagg_server *s, uint32_t owner, uint32_t *b_shares,
                                  uint32_t *s_shares) {
    *b_shares = *s_shares = 0;
    if (owner >= s->n) return;
    const uint8_t *kind = s->share_kind + (size_t)owner * (s->k + 1);
    for (uint32_t h = 0; h <= s->k; h++) {
        *b_shares += kind[h] == SA_KIND_B;
        *s_shares += kind[h] == SA_KIND_S;
    }
}

/* Marks the round failed (wiping every share held) and returns FL_EPEER with the reason. */
static int server_fail(fl_secagg_server *s, fl_err *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int server_fail(fl_secagg_server *s, fl_err *err, const char *fmt, ...) {
    char why[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    s->stage = SS_FAILED;
    sodium_memzero(s->shares, (size_t)s->n * (s->k + 1) * 32);
    memset(s->share_kind, 0, (size_t)s->n * (s->k + 1));
    return fl_err_set(err, FL_EPEER, "secagg round %" PRIu64 ": the round fails: %s", s->cfg.round,
                      why);
}

/* Checks that a message for `stage` from client `from` can be taken now: the stage is open and the
 * client completed the stage before it, once. */
static int server_admit(const fl_secagg_server *s, fl_secagg_msg_type type, int stage,
                        uint32_t from, fl_err *err) {
    const char *why = NULL;
    fl_secagg_progress need = (fl_secagg_progress)stage;
    if (from >= s->n)
        why = "no such client index";
    else if (s->stage == SS_FAILED)
        why = "the round has failed";
    else if (s->stage > stage)
        why = "late: its stage is closed";
    else if (s->stage < stage)
        why = "early: its stage has not started";
    else if (s->progress[from] > need)
        why = "a duplicate";
    else if (s->progress[from] < need)
        why = stage == SS_SHARES   ? "the client did not advertise keys"
              : stage == SS_MASKED ? "the client did not share keys"
                                   : "the client is not a survivor";
    if (!why) return FL_OK;
    return fl_err_set(err, FL_EPEER, "secagg round %" PRIu64 ": refused %s from client %u: %s",
                      s->cfg.round, msg_name(type), from, why);
}

static uint32_t count_progress(const fl_secagg_server *s, fl_secagg_progress at_least) {
    uint32_t m = 0;
    for (uint32_t j = 0; j < s->n; j++)
        m += s->progress[j] >= at_least;
    return m;
}

/* Builds a message listing every client with progress >= at_least (4-byte entries) or, for KEYS,
 * with their keys. */
static uint8_t *server_list(const fl_secagg_server *s, fl_secagg_msg_type type,
                            fl_secagg_progress at_least, size_t *len, fl_err *err) {
    uint32_t count = count_progress(s, at_least);
    size_t entry = type == FL_SECAGG_MSG_KEYS ? SA_KEYS_ENTRY : 4;
    uint8_t *m = msg_new(s->session, s->cfg.round, type, FL_SECAGG_SERVER_INDEX, count,
                         count * entry, len, err);
    if (!m) return NULL;
    uint8_t *p = m + FL_SECAGG_HEADER_BYTES;
    for (uint32_t j = 0; j < s->n; j++) {
        if (s->progress[j] < at_least) continue;
        put32(p, j);
        if (type == FL_SECAGG_MSG_KEYS) {
            memcpy(p + 4, s->c_pk[j], 32);
            memcpy(p + 36, s->s_pk[j], 32);
        }
        p += entry;
    }
    return m;
}

int fl_secagg_server_collect_advertise(fl_secagg_server *s, uint32_t from, const uint8_t *msg,
                                       size_t len, fl_err *err) {
    uint32_t count;
    char name[32];
    if (server_admit(s, FL_SECAGG_MSG_ADVERTISE, SS_ADVERTISE, from, err) ||
        msg_open(msg, len, s->session, &s->cfg, "the server", FL_SECAGG_MSG_ADVERTISE, from,
                 SA_ADVERTISE_BODY, 1, &count, err))
        return FL_EPEER;
    if (count != 1 || !key_usable(msg + 32) || !key_usable(msg + 64))
        return fl_err_set(err, FL_EPEER, "secagg round %" PRIu64 ": refused ADVERTISE from %s: %s",
                          s->cfg.round, who(name, from),
                          count != 1 ? "no keys" : "an invalid public key");
    memcpy(s->c_pk[from], msg + 32, 32);
    memcpy(s->s_pk[from], msg + 64, 32);
    memcpy(s->commit[from], msg + 96, 32);
    s->progress[from] = FL_SECAGG_ADVERTISED;
    return FL_OK;
}

int fl_secagg_server_end_advertise(fl_secagg_server *s, uint8_t **msg, size_t *len, fl_err *err) {
    *msg = NULL;
    if (s->stage != SS_ADVERTISE)
        return fl_err_set(err, s->stage == SS_FAILED ? FL_EPEER : FL_EINTERNAL,
                          "secagg round %" PRIu64 ": end_advertise in stage %d", s->cfg.round,
                          s->stage);
    uint32_t u1 = count_progress(s, FL_SECAGG_ADVERTISED);
    if (u1 < s->t)
        return server_fail(s, err, "only %u of %u clients advertised keys (threshold %u)", u1, s->n,
                           s->t);
    if (!(*msg = server_list(s, FL_SECAGG_MSG_KEYS, FL_SECAGG_ADVERTISED, len, err)))
        return FL_ENOMEM;
    s->stage = SS_SHARES;
    return FL_OK;
}

int fl_secagg_server_collect_shares(fl_secagg_server *s, uint32_t from, const uint8_t *msg,
                                    size_t len, fl_err *err) {
    uint32_t count;
    if (server_admit(s, FL_SECAGG_MSG_SHARES, SS_SHARES, from, err) ||
        msg_open(msg, len, s->session, &s->cfg, "the server", FL_SECAGG_MSG_SHARES, from,
                 SA_SHARE_ENTRY, s->k, &count, err))
        return FL_EPEER;
    /* exactly one entry for each advertised neighbour, ascending */
    const uint32_t *nb = nbrs(s, from);
    uint32_t expected = 0, e = 0;
    for (uint32_t slot = 0; slot < s->k; slot++) {
        if (s->progress[nb[slot]] < FL_SECAGG_ADVERTISED) continue;
        expected++;
        if (e < count &&
            get32(msg + FL_SECAGG_HEADER_BYTES + (size_t)e * SA_SHARE_ENTRY) == nb[slot])
            e++;
    }
    if (e != count || count != expected)
        return fl_err_set(err, FL_EPEER,
                          "secagg round %" PRIu64 ": refused SHARES from client %u: expected one "
                          "share for each of its %u advertised neighbours, ascending; entry %u "
                          "does not fit",
                          s->cfg.round, from, expected, e);
    for (uint32_t slot = 0, e2 = 0; slot < s->k; slot++) {
        if (s->progress[nb[slot]] < FL_SECAGG_ADVERTISED) continue;
        memcpy(s->cipher + ((size_t)from * s->k + slot) * SA_CIPHER,
               msg + FL_SECAGG_HEADER_BYTES + (size_t)e2++ * SA_SHARE_ENTRY + 4, SA_CIPHER);
    }
    s->progress[from] = FL_SECAGG_SHARED;
    return FL_OK;
}

int fl_secagg_server_end_shares(fl_secagg_server *s, fl_err *err) {
    if (s->stage != SS_SHARES)
        return fl_err_set(err, s->stage == SS_FAILED ? FL_EPEER : FL_EINTERNAL,
                          "secagg round %" PRIu64 ": end_shares in stage %d", s->cfg.round,
                          s->stage);
    uint32_t u2 = count_progress(s, FL_SECAGG_SHARED);
    if (u2 < s->t)
        return server_fail(s, err, "only %u of %u clients shared keys (threshold %u)", u2, s->n,
                           s->t);
    s->stage = SS_MASKED;
    return FL_OK;
}

int fl_secagg_server_forward_for(fl_secagg_server *s, uint32_t to, uint8_t **msg, size_t *len,
                                 fl_err *err) {
    *msg = NULL;
    if (s->stage != SS_MASKED || !s->cipher)
        return fl_err_set(err, s->stage == SS_FAILED ? FL_EPEER : FL_EINTERNAL,
                          "secagg round %" PRIu64 ": forward_for outside stage 2 (stage %d)",
                          s->cfg.round, s->stage);
    if (to >= s->n || s->progress[to] < FL_SECAGG_SHARED)
        return fl_err_set(err, FL_EINPUT,
                          "secagg round %" PRIu64 ": forward_for client %u, which did not share "
                          "keys",
                          s->cfg.round, to);
    const uint32_t *nb = nbrs(s, to);
    uint32_t count = 0;
    for (uint32_t slot = 0; slot < s->k; slot++)
        count += s->progress[nb[slot]] >= FL_SECAGG_SHARED;
    uint8_t *m = msg_new(s->session, s->cfg.round, FL_SECAGG_MSG_FORWARD, FL_SECAGG_SERVER_INDEX,
                         count, (size_t)count * SA_SHARE_ENTRY, len, err);
    if (!m) return FL_ENOMEM;
    uint8_t *p = m + FL_SECAGG_HEADER_BYTES;
    for (uint32_t slot = 0; slot < s->k; slot++) {
        uint32_t j = nb[slot];
        if (s->progress[j] < FL_SECAGG_SHARED) continue;
        long back = slot_of(nbrs(s, j), s->k, to); /* to's slot among j's neighbours */
        put32(p, j);
        memcpy(p + 4, s->cipher + ((size_t)j * s->k + (size_t)back) * SA_CIPHER, SA_CIPHER);
        p += SA_SHARE_ENTRY;
    }
    *msg = m;
    return FL_OK;
}

int fl_secagg_server_collect_masked(fl_secagg_server *s, uint32_t from, const uint8_t *msg,
                                    size_t len, fl_err *err) {
    uint32_t count;
    size_t n = s->cfg.vector_len + 1;
    if (server_admit(s, FL_SECAGG_MSG_MASKED, SS_MASKED, from, err) ||
        msg_open(msg, len, s->session, &s->cfg, "the server", FL_SECAGG_MSG_MASKED, from, 4,
                 (uint32_t)n, &count, err))
        return FL_EPEER;
    if (count != n)
        return fl_err_set(err, FL_EPEER,
                          "secagg round %" PRIu64 ": refused MASKED from client %u: %u values, "
                          "expected %zu",
                          s->cfg.round, from, count, n);
    const uint8_t *y = msg + FL_SECAGG_HEADER_BYTES; /* any alignment; memory-bound, one thread */
    for (size_t v = 0; v < n; v++) {
        uint32_t value;
        memcpy(&value, y + 4 * v, 4);
        s->sum[v] += value;
    }
    s->progress[from] = FL_SECAGG_MASKED;
    return FL_OK;
}

/* 1 when the clients with progress >= FL_SECAGG_MASKED are one group linked by the graph. */
static int survivors_linked(const fl_secagg_server *s, uint32_t u3, int *oom) {
    uint32_t *queue = malloc(s->n * sizeof *queue), head = 0, tail = 0;
    uint8_t *seen = calloc(s->n, 1);
    *oom = !queue || !seen;
    for (uint32_t j = 0; j < s->n && !*oom && tail == 0; j++)
        if (s->progress[j] >= FL_SECAGG_MASKED) seen[j] = 1, queue[tail++] = j;
    while (!*oom && head < tail) {
        const uint32_t *nb = nbrs(s, queue[head++]);
        for (uint32_t slot = 0; slot < s->k; slot++)
            if (s->progress[nb[slot]] >= FL_SECAGG_MASKED && !seen[nb[slot]])
                seen[nb[slot]] = 1, queue[tail++] = nb[slot];
    }
    free(queue);
    free(seen);
    return tail == u3;
}

/* Fails the round (FL_EPEER) when the survivors cannot be unmasked at all or not safely. */
static int check_unmaskable(fl_secagg_server *s, uint32_t u3, fl_err *err) {
    for (uint32_t j = 0; j < s->n; j++) {
        uint32_t alive_nbrs = 0;
        for (uint32_t slot = 0; slot < s->k; slot++)
            alive_nbrs += s->progress[nbrs(s, j)[slot]] >= FL_SECAGG_MASKED;
        if (s->progress[j] >= FL_SECAGG_MASKED && alive_nbrs + 1 < s->t)
            return server_fail(s, err,
                               "survivor %u's self-mask seed would have %u surviving holders "
                               "(itself and its neighbours in the sum), fewer than the threshold "
                               "%u",
                               j, alive_nbrs + 1, s->t);
        if (s->progress[j] == FL_SECAGG_SHARED && alive_nbrs > 0 && alive_nbrs < s->t)
            return server_fail(s, err,
                               "dropped client %u's mask key would have %u surviving holders "
                               "(its neighbours in the sum), fewer than the threshold %u",
                               j, alive_nbrs, s->t);
    }
    int oom;
    if (!survivors_linked(s, u3, &oom))
        return oom ? fl_err_set(err, FL_ENOMEM, "secagg: out of memory")
                   : server_fail(s, err,
                                 "the %u survivors fall apart into groups not linked by the "
                                 "neighbour graph (unmasking would reveal each group's sum)",
                                 u3);
    return FL_OK;
}

int fl_secagg_server_end_masked(fl_secagg_server *s, uint8_t **msg, size_t *len, fl_err *err) {
    *msg = NULL;
    if (s->stage != SS_MASKED)
        return fl_err_set(err, s->stage == SS_FAILED ? FL_EPEER : FL_EINTERNAL,
                          "secagg round %" PRIu64 ": end_masked in stage %d", s->cfg.round,
                          s->stage);
    uint32_t u3 = count_progress(s, FL_SECAGG_MASKED);
    if (u3 < s->t)
        return server_fail(s, err, "only %u of %u clients sent masked inputs (threshold %u)", u3,
                           s->n, s->t);
    int rc = check_unmaskable(s, u3, err);
    if (rc) return rc;
    if (!(*msg = server_list(s, FL_SECAGG_MSG_SURVIVORS, FL_SECAGG_MASKED, len, err)))
        return FL_ENOMEM;
    free(s->cipher); /* every FORWARD has been made */
    s->cipher = NULL;
    s->stage = SS_UNMASK;
    return FL_OK;
}

int fl_secagg_server_collect_unmask(fl_secagg_server *s, uint32_t from, const uint8_t *msg,
                                    size_t len, fl_err *err) {
    uint32_t count, prev = 0;
    if (server_admit(s, FL_SECAGG_MSG_UNMASK, SS_UNMASK, from, err) ||
        msg_open(msg, len, s->session, &s->cfg, "the server", FL_SECAGG_MSG_UNMASK, from,
                 SA_UNMASK_ENTRY, s->k + 1, &count, err))
        return FL_EPEER;
    for (uint32_t e = 0; e < count; e++) { /* check everything before keeping anything */
        const uint8_t *p = msg + FL_SECAGG_HEADER_BYTES + (size_t)e * SA_UNMASK_ENTRY;
        uint32_t owner = get32(p);
        int linked = owner == from || graph_linked(&s->graph, owner, from);
        int kind = owner < s->n && s->progress[owner] >= FL_SECAGG_MASKED ? SA_KIND_B : SA_KIND_S;
        const char *why = owner >= s->n                           ? "owner index out of range"
                          : e > 0 && owner <= prev                ? "owners not strictly increasing"
                          : !linked                               ? "the owner is not a neighbour"
                          : s->progress[owner] < FL_SECAGG_SHARED ? "the owner did not share keys"
                          : p[5] || p[6] || p[7]                  ? "padding is not zero"
                          : p[4] != SA_KIND_B && p[4] != SA_KIND_S ? "unknown share kind"
                          : p[4] != kind ? (kind == SA_KIND_B ? "a mask-key share of a survivor"
                                                              : "a seed share of a dropped client")
                                         : NULL;
        if (why)
            return fl_err_set(err, FL_EPEER,
                              "secagg round %" PRIu64 ": refused UNMASK from client %u: entry "
                              "%u (owner %u): %s",
                              s->cfg.round, from, e, owner, why);
        prev = owner;
    }
    for (uint32_t e = 0; e < count; e++) {
        const uint8_t *p = msg + FL_SECAGG_HEADER_BYTES + (size_t)e * SA_UNMASK_ENTRY;
        uint32_t owner = get32(p);
        size_t slot = owner == from ? s->k : (size_t)slot_of(nbrs(s, owner), s->k, from);
        size_t at = (size_t)owner * (s->k + 1) + slot;
        s->share_kind[at] = p[4];
        memcpy(s->shares[at], p + 8, 32);
    }
    s->progress[from] = FL_SECAGG_UNMASKED;
    return FL_OK;
}

/* The secrets finish() must rebuild: every survivor's b, and s^SK of every client that shared,
 * dropped, and has a surviving neighbour. kind_out = SA_KIND_* or 0 (none needed). */
static int needed_kind(const fl_secagg_server *s, uint32_t j) {
    if (s->progress[j] >= FL_SECAGG_MASKED) return SA_KIND_B;
    if (s->progress[j] != FL_SECAGG_SHARED) return 0;
    for (uint32_t slot = 0; slot < s->k; slot++)
        if (s->progress[nbrs(s, j)[slot]] >= FL_SECAGG_MASKED) return SA_KIND_S;
    return 0;
}

int fl_secagg_server_ready(const fl_secagg_server *s) {
    if (s->stage != SS_UNMASK) return 0;
    for (uint32_t j = 0; j < s->n; j++) {
        int kind = needed_kind(s, j);
        uint32_t b, sh;
        fl_secagg_server_shares_held(s, j, &b, &sh);
        if (kind && (kind == SA_KIND_B ? b : sh) < s->t) return 0;
    }
    return 1;
}

/* 1 when secret is client j's b (against its commitment) or s^SK (against its public key). */
static int secret_fits(const fl_secagg_server *s, uint32_t j, int kind, const uint8_t secret[32]) {
    uint8_t check[32];
    if (kind == SA_KIND_B)
        derive(check, "fedllm-secagg-commit", s->session, j, 0, secret, NULL, NULL);
    else if (crypto_scalarmult_base(check, secret) != 0)
        return 0;
    return sodium_memcmp(check, kind == SA_KIND_B ? s->commit[j] : s->s_pk[j], 32) == 0;
}

/* Lagrange weights of the last point set used (most clients' shares come from the same holders)
 * and scratch space for one attempt. */
typedef struct sa_lagrange {
    uint32_t t;
    uint16_t *xs;        /* (t) the points of lambda; 0s before the first use */
    uint16_t *lambda;    /* (t) */
    uint16_t *pick_xs;   /* (t) the points of this attempt */
    uint8_t (*pick)[32]; /* (t) the shares of this attempt */
} sa_lagrange;

/* Rebuilds client j's secret of `kind` from the m >= t shares held (points xs, ascending holders):
 * from the first t, and when that does not fit its commitment, from the first t+1 leaving out
 * each in turn, so that one wrong share among them is found, logged and left out. FL_EPEER when
 * nothing fits. */
static int rebuild(fl_secagg_server *s, uint32_t j, int kind, const uint16_t *xs,
                   const uint8_t (*sh)[32], const uint32_t *holders, uint32_t m, sa_lagrange *lg,
                   uint8_t secret[32]) {
    uint32_t t = lg->t;
    for (long skip = -1; skip < (long)t && (skip < 0 || m > t); skip++) {
        for (uint32_t a = 0, b = 0; b < t; a++) {
            if ((long)a == skip) continue;
            lg->pick_xs[b] = xs[a];
            memcpy(lg->pick[b++], sh[a], 32);
        }
        if (memcmp(lg->pick_xs, lg->xs, t * sizeof *lg->xs) != 0) {
            lagrange_at_zero(lg->pick_xs, t, lg->lambda);
            memcpy(lg->xs, lg->pick_xs, t * sizeof *lg->xs);
        }
        lagrange_apply(lg->lambda, (const uint8_t(*)[32])lg->pick, t, secret);
        sodium_memzero(lg->pick, (size_t)t * 32);
        if (secret_fits(s, j, kind, secret)) {
            if (skip >= 0)
                sa_log(&s->cfg,
                       "secagg round %" PRIu64 ": client %u sent a wrong share of client %u's "
                       "%s; left out",
                       s->cfg.round, holders[skip], j, kind == SA_KIND_B ? "seed" : "mask key");
            return FL_OK;
        }
    }
    sodium_memzero(secret, 32);
    return FL_EPEER;
}

int fl_secagg_server_finish(fl_secagg_server *s, double *sum_out, double *total_weight,
                            fl_err *err) {
    if (s->stage != SS_UNMASK)
        return fl_err_set(err, s->stage == SS_FAILED ? FL_EPEER : FL_EINTERNAL,
                          "secagg round %" PRIu64 ": finish in stage %d", s->cfg.round, s->stage);
    uint32_t n = s->n, k = s->k, t = s->t;
    uint16_t *xs = malloc((k + 1) * sizeof *xs);
    uint32_t *holders = malloc((k + 1) * sizeof *holders);
    uint8_t(*sh)[32] = malloc((size_t)(k + 1) * 32);
    sa_lagrange lg = {.t = t,
                      .xs = calloc(t, sizeof *lg.xs),
                      .lambda = calloc(t, sizeof *lg.lambda),
                      .pick_xs = calloc(t, sizeof *lg.pick_xs),
                      .pick = calloc(t, 32)};
    uint8_t(*secrets)[32] = calloc(n, 32);
    uint8_t *kinds = calloc(n, 1);
    sa_mask *masks = NULL;
    int rc = FL_OK;
    if (!xs || !holders || !sh || !lg.xs || !lg.lambda || !lg.pick_xs || !lg.pick || !secrets ||
        !kinds) {
        rc = fl_err_set(err, FL_ENOMEM, "secagg: out of memory to finish the round");
        goto done;
    }
    size_t n_masks = 0;
    for (uint32_t j = 0; j < n; j++) {
        int kind = kinds[j] = (uint8_t)needed_kind(s, j);
        if (!kind) continue;
        uint32_t m = 0;
        const uint8_t *have = s->share_kind + (size_t)j * (k + 1);
        for (uint32_t slot = 0; slot <= k; slot++) { /* holders ascending by index */
            uint32_t h = slot == k ? j : nbrs(s, j)[slot];
            if (have[slot] != kind) continue;
            uint32_t at = m++;
            while (at > 0 && holders[at - 1] > h) { /* insert j itself in its place */
                holders[at] = holders[at - 1];
                xs[at] = xs[at - 1];
                memcpy(sh[at], sh[at - 1], 32);
                at--;
            }
            holders[at] = h;
            xs[at] = (uint16_t)(h + 1);
            memcpy(sh[at], s->shares[(size_t)j * (k + 1) + slot], 32);
        }
        const char *what = kind == SA_KIND_B ? "self-mask seed" : "mask key";
        if (m < t) {
            rc = server_fail(s, err, "client %u's %s has %u shares, threshold %u", j, what, m, t);
            goto done;
        }
        if (rebuild(s, j, kind, xs, (const uint8_t(*)[32])sh, holders, m, &lg, secrets[j])) {
            rc = server_fail(s, err,
                             "the %u shares of client %u's %s do not rebuild it (more than one "
                             "wrong share, or a wrong one with only t held)",
                             m, j, what);
            goto done;
        }
        n_masks += kind == SA_KIND_B ? 1 : 0;
        if (kind == SA_KIND_S)
            for (uint32_t slot = 0; slot < k; slot++)
                n_masks += s->progress[nbrs(s, j)[slot]] >= FL_SECAGG_MASKED;
    }
    masks = malloc((n_masks ? n_masks : 1) * sizeof *masks);
    if (!masks) {
        rc = fl_err_set(err, FL_ENOMEM, "secagg: out of memory for %zu masks", n_masks);
        goto done;
    }
    size_t mi = 0;
    for (uint32_t j = 0; j < n; j++) {
        if (kinds[j] == SA_KIND_B) { /* survivor j added PRG(b_j) */
            memcpy(masks[mi].key, secrets[j], 32);
            masks[mi++].negate = 1;
        } else if (kinds[j] == SA_KIND_S) { /* survivor i added +PRG(s_ij) if j > i, else - */
            for (uint32_t slot = 0; slot < k; slot++) {
                uint32_t i = nbrs(s, j)[slot];
                if (s->progress[i] < FL_SECAGG_MASKED) continue;
                /* cannot fail: collect_advertise checked i's key */
                mask_key(masks[mi].key, s->session, j, s->s_pk[j], secrets[j], i, s->s_pk[i]);
                masks[mi++].negate = j > i;
            }
        }
    }
    size_t L = s->cfg.vector_len;
    masks_apply(s->sum, L + 1, masks, n_masks);
    double step = fl_secagg_step(&s->cfg),
           offset = count_progress(s, FL_SECAGG_MASKED) * s->cfg.clip_range;
    for (size_t v = 0; v < L; v++)
        sum_out[v] = s->sum[v] * step - offset;
    *total_weight = s->sum[L] / qmax(&s->cfg);
    s->stage = SS_DONE;
    sodium_memzero(s->shares, (size_t)n * (k + 1) * 32);
done:
    if (masks) sodium_memzero(masks, n_masks * sizeof *masks);
    if (secrets) sodium_memzero(secrets, (size_t)n * 32);
    if (sh) sodium_memzero(sh, (size_t)(k + 1) * 32);
    free(xs);
    free(holders);
    free(sh);
    free(lg.xs);
    free(lg.lambda);
    free(lg.pick_xs);
    free(lg.pick);
    free(secrets);
    free(kinds);
    free(masks);
    return rc;
}
