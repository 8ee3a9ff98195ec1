/* test_secagg.c — secure aggregation (secagg.h): in-process rounds of N simulated clients and a
 * server that pass every message as bytes.
 *
 * - Shamir over GF(2^16): any t shares rebuild, t-1 do not; bad share points are refused.
 * - Configs that could overflow the 32-bit sum or have a weak threshold are refused.
 * - Rounds with N = 3, 5, 16 (complete graph) and N = 64 (16-neighbour graph): the secure sum
 *   equals the plain sum of the clipped weighted updates within one quantisation step per client.
 * - Dropouts before and after each stage: with enough left the round completes with the sum of
 *   the clients that sent masked inputs; with too few it fails cleanly. In every round the server
 *   never holds a mask-key share of a survivor nor a seed share of a dropped client.
 * - One client's masked vector looks uniform (chi-square) whatever its input.
 * - Tampered shares, shares passed off as another client's, wrong shares in unmasking, replays
 *   from an earlier round, malformed messages of every type (and a few hundred random mutations):
 *   refused or identified, never a crash or a wrong sum.
 * FEDLLM_SECAGG_TIMING=1 also prints client and server times for N = 16, 64 and 0.3M, 4M values. */
#include <math.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fedllm/secagg.h"
#include "testutil.h"

#define HDR FL_SECAGG_HEADER_BYTES

static uint64_t rng_state = 0x853c49e6748fea9bull;
static uint64_t rng_next(void) { /* xorshift64*: deterministic test data */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}
static double rng_uniform(double lo, double hi) {
    return lo + (hi - lo) * (double)(rng_next() >> 11) * 0x1p-53;
}

/* ---- log capture ------------------------------------------------------------------------- */

static int log_count;
static char log_all[8192]; /* every logged line of the current round, newline-separated */

static void on_log(void *ctx, const char *line) {
    (void)ctx;
    log_count++;
    size_t used = strlen(log_all);
    snprintf(log_all + used, sizeof log_all - used, "%s\n", line);
}
static void log_reset(void) {
    log_count = 0;
    log_all[0] = 0;
}

static fl_secagg_config make_cfg(uint32_t n, uint32_t t, uint32_t k, uint32_t bits, double clip,
                                 uint64_t round, uint64_t len) {
    fl_secagg_config cfg = {.n_clients = n,
                            .threshold = t,
                            .neighbours = k,
                            .bits = bits,
                            .clip_range = clip,
                            .round = round,
                            .vector_len = len,
                            .log = on_log};
    for (int i = 0; i < 32; i++)
        cfg.graph_seed[i] = (uint8_t)(i * 7 + 1);
    return cfg;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- the simulated round ----------------------------------------------------------------- */

/* Changes (or replaces) a message in flight; party is the sending client for client -> server
 * messages and the receiving client for server -> client ones. *msg may be freed and replaced. */
typedef void (*tamper_fn)(void *ctx, fl_secagg_msg_type type, uint32_t party, uint8_t **msg,
                          size_t *len);

typedef struct sim_opts {
    const int *sends; /* (n) messages client i sends before it drops: 0 none, 1 ADVERTISE, 2 +
                       * SHARES, 3 + MASKED, 4 (or sends == NULL) all */
    tamper_fn tamper;
    void *tamper_ctx;
} sim_opts;

typedef struct sim_result {
    int rc;             /* FL_OK, or the code of the server step that ended the round */
    int failed_stage;   /* 0..3: the server's end of that stage failed; -1: none */
    char why[512];      /* the failure's message */
    double *sum;        /* (L) on success, malloc'd */
    double weight;      /* on success */
    uint8_t *in_sum;    /* (n) 1 for the clients whose masked inputs were collected (U3) */
    int refused;        /* messages a collect_* refused */
    int client_refused; /* messages a client refused */
    int kind_violation; /* an honest UNMASK revealed a seed share of a dropped client or a mask-key
                         * share of a survivor, or the server held one */
    uint32_t max_b_held, max_s_held; /* over owners, just before finish */
    double client_s[4], server_s[4]; /* time per stage, summed over clients */
} sim_result;

static void sim_free(sim_result *r) {
    free(r->sum);
    free(r->in_sum);
    memset(r, 0, sizeof *r);
}

static void deliver_tamper(const sim_opts *o, fl_secagg_msg_type type, uint32_t party,
                           uint8_t **msg, size_t *len) {
    if (o && o->tamper) o->tamper(o->tamper_ctx, type, party, msg, len);
}

static uint8_t *dup_msg(const uint8_t *msg, size_t len) {
    uint8_t *m = malloc(len ? len : 1);
    memcpy(m, msg, len);
    return m;
}

/* Checks what an honest UNMASK message reveals against who survived. */
static int unmask_kinds_ok(const fl_secagg_server *srv, const uint8_t *msg, size_t len) {
    if (len < HDR) return 1;
    uint32_t count = (uint32_t)(len - HDR) / 40;
    for (uint32_t e = 0; e < count; e++) {
        const uint8_t *p = msg + HDR + 40 * (size_t)e;
        uint32_t owner = p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
        int survivor = fl_secagg_server_progress(srv, owner) >= FL_SECAGG_MASKED;
        if (p[4] != (survivor ? 1 : 2)) return 0;
    }
    return 1;
}

static sim_result sim_run(const fl_secagg_config *cfg, float *const *x, const double *w,
                          const sim_opts *o) {
    uint32_t n = cfg->n_clients;
    size_t L = cfg->vector_len;
    sim_result r = {.failed_stage = -1, .in_sum = calloc(n, 1)};
    fl_secagg_client **cl = calloc(n, sizeof *cl);
    fl_err err = {0};
    double t0;
    t0 = now_s();
    fl_secagg_server *srv = fl_secagg_server_new(cfg, &err);
    r.server_s[0] += now_s() - t0;
    CHECK(srv, "server_new: %s", err.msg);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t seed[32] = {(uint8_t)i, (uint8_t)(i >> 8), (uint8_t)cfg->round};
        cl[i] = fl_secagg_client_new(cfg, i, seed, &err);
        CHECK(cl[i], "client_new %u: %s", i, err.msg);
    }
#define SENDS(i) (o && o->sends ? o->sends[i] : 4)
    uint8_t *msg = NULL, *bc = NULL; /* a client's message; the server's broadcast */
    size_t len = 0, bc_len = 0;
    /* stage 0 */
    for (uint32_t i = 0; i < n; i++) {
        if (SENDS(i) < 1) continue;
        t0 = now_s();
        CHECK(fl_secagg_client_advertise(cl[i], &msg, &len, &err) == FL_OK, "%s", err.msg);
        r.client_s[0] += now_s() - t0;
        deliver_tamper(o, FL_SECAGG_MSG_ADVERTISE, i, &msg, &len);
        t0 = now_s();
        if (fl_secagg_server_collect_advertise(srv, i, msg, len, &err)) r.refused++;
        r.server_s[0] += now_s() - t0;
        free(msg);
    }
    t0 = now_s();
    r.rc = fl_secagg_server_end_advertise(srv, &bc, &bc_len, &err);
    r.server_s[0] += now_s() - t0;
    if (r.rc) {
        r.failed_stage = 0;
        goto done;
    }
    /* stage 1 */
    for (uint32_t i = 0; i < n; i++) {
        if (SENDS(i) < 2 || fl_secagg_server_progress(srv, i) < FL_SECAGG_ADVERTISED) continue;
        uint8_t *in = dup_msg(bc, bc_len);
        size_t in_len = bc_len;
        deliver_tamper(o, FL_SECAGG_MSG_KEYS, i, &in, &in_len);
        t0 = now_s();
        int rc = fl_secagg_client_share_keys(cl[i], in, in_len, &msg, &len, &err);
        r.client_s[1] += now_s() - t0;
        free(in);
        if (rc) {
            r.client_refused++;
            continue;
        }
        deliver_tamper(o, FL_SECAGG_MSG_SHARES, i, &msg, &len);
        t0 = now_s();
        if (fl_secagg_server_collect_shares(srv, i, msg, len, &err)) r.refused++;
        r.server_s[1] += now_s() - t0;
        free(msg);
    }
    free(bc);
    bc = NULL;
    t0 = now_s();
    r.rc = fl_secagg_server_end_shares(srv, &err);
    r.server_s[1] += now_s() - t0;
    if (r.rc) {
        r.failed_stage = 1;
        goto done;
    }
    /* stage 2 */
    for (uint32_t i = 0; i < n; i++) {
        if (SENDS(i) < 3 || fl_secagg_server_progress(srv, i) < FL_SECAGG_SHARED) continue;
        uint8_t *in;
        size_t in_len;
        t0 = now_s();
        CHECK(fl_secagg_server_forward_for(srv, i, &in, &in_len, &err) == FL_OK, "%s", err.msg);
        r.server_s[2] += now_s() - t0;
        deliver_tamper(o, FL_SECAGG_MSG_FORWARD, i, &in, &in_len);
        t0 = now_s();
        int rc = fl_secagg_client_masked_input(cl[i], in, in_len, x[i], w[i], &msg, &len, &err);
        r.client_s[2] += now_s() - t0;
        free(in);
        if (rc) {
            r.client_refused++;
            continue;
        }
        deliver_tamper(o, FL_SECAGG_MSG_MASKED, i, &msg, &len);
        t0 = now_s();
        if (fl_secagg_server_collect_masked(srv, i, msg, len, &err)) r.refused++;
        r.server_s[2] += now_s() - t0;
        free(msg);
    }
    t0 = now_s();
    r.rc = fl_secagg_server_end_masked(srv, &bc, &bc_len, &err);
    r.server_s[2] += now_s() - t0;
    for (uint32_t i = 0; i < n; i++)
        r.in_sum[i] = fl_secagg_server_progress(srv, i) >= FL_SECAGG_MASKED;
    if (r.rc) {
        r.failed_stage = 2;
        goto done;
    }
    /* stage 3 */
    for (uint32_t i = 0; i < n; i++) {
        if (SENDS(i) < 4 || !r.in_sum[i]) continue;
        uint8_t *in = dup_msg(bc, bc_len);
        size_t in_len = bc_len;
        deliver_tamper(o, FL_SECAGG_MSG_SURVIVORS, i, &in, &in_len);
        t0 = now_s();
        int rc = fl_secagg_client_unmask(cl[i], in, in_len, &msg, &len, &err);
        r.client_s[3] += now_s() - t0;
        free(in);
        if (rc) {
            r.client_refused++;
            continue;
        }
        if (!unmask_kinds_ok(srv, msg, len)) r.kind_violation = 1;
        deliver_tamper(o, FL_SECAGG_MSG_UNMASK, i, &msg, &len);
        t0 = now_s();
        if (fl_secagg_server_collect_unmask(srv, i, msg, len, &err)) r.refused++;
        r.server_s[3] += now_s() - t0;
        free(msg);
    }
    free(bc);
    bc = NULL;
    for (uint32_t j = 0; j < n; j++) {
        uint32_t b, s;
        fl_secagg_server_shares_held(srv, j, &b, &s);
        if (r.in_sum[j] ? s != 0 : b != 0) r.kind_violation = 1;
        if (b > r.max_b_held) r.max_b_held = b;
        if (s > r.max_s_held) r.max_s_held = s;
    }
    r.sum = malloc((L ? L : 1) * sizeof *r.sum);
    t0 = now_s();
    r.rc = fl_secagg_server_finish(srv, r.sum, &r.weight, &err);
    r.server_s[3] += now_s() - t0;
    if (r.rc) r.failed_stage = 3;
done:
#undef SENDS
    if (r.rc) snprintf(r.why, sizeof r.why, "%s", err.msg);
    free(bc);
    for (uint32_t i = 0; i < n; i++)
        fl_secagg_client_free(cl[i]);
    free(cl);
    fl_secagg_server_free(srv);
    return r;
}

/* Test inputs: values in [-spread, spread] and weights in [0.1, 1]. */
typedef struct inputs {
    uint32_t n;
    float **x;
    double *w;
} inputs;

static inputs make_inputs(uint32_t n, size_t L, double spread) {
    inputs in = {.n = n, .x = calloc(n, sizeof(float *)), .w = calloc(n, sizeof(double))};
    for (uint32_t i = 0; i < n; i++) {
        in.x[i] = malloc((L ? L : 1) * sizeof(float));
        for (size_t v = 0; v < L; v++)
            in.x[i][v] = (float)rng_uniform(-spread, spread);
        in.w[i] = rng_uniform(0.1, 1.0);
    }
    return in;
}

static void free_inputs(inputs *in) {
    for (uint32_t i = 0; i < in->n; i++)
        free(in->x[i]);
    free(in->x);
    free(in->w);
}

/* Checks a completed round against the plain sum of the clipped weighted values of U3. */
static void check_sum(const char *what, const fl_secagg_config *cfg, const inputs *in,
                      const sim_result *r) {
    CHECK(r->rc == FL_OK, "%s: round failed: %s", what, r->why);
    if (r->rc) return;
    double c = cfg->clip_range, worst = 0, plain_w = 0;
    uint32_t m = 0;
    for (uint32_t i = 0; i < cfg->n_clients; i++)
        if (r->in_sum[i]) m++, plain_w += in->w[i];
    for (size_t v = 0; v < cfg->vector_len; v++) {
        double plain = 0;
        for (uint32_t i = 0; i < cfg->n_clients; i++) {
            if (!r->in_sum[i]) continue;
            double val = in->w[i] * (double)in->x[i][v];
            plain += val > c ? c : val < -c ? -c : val;
        }
        double d = fabs(r->sum[v] - plain);
        if (d > worst) worst = d;
    }
    double bound = m * fl_secagg_step(cfg) * (1 + 1e-9);
    CHECK(worst < bound, "%s: max |secure - plain| = %g, bound %g (%u clients)", what, worst, bound,
          m);
    CHECK(fabs(r->weight - plain_w) < m / (double)((1ull << cfg->bits) - 1),
          "%s: total weight %.9f, plain %.9f", what, r->weight, plain_w);
    CHECK(!r->kind_violation, "%s: the server got a share of the wrong kind", what);
}

/* ---- Shamir ------------------------------------------------------------------------------ */

static void test_shamir(void) {
    fl_err err = {0};
    uint8_t secret[32], shares[8][32], out[32];
    randombytes_buf(secret, sizeof secret);
    uint16_t xs[8] = {1, 2, 3, 4, 5, 65535, 40000, 12345};
    CHECK(fl_shamir_split(secret, 3, xs, 8, shares, &err) == FL_OK, "split: %s", err.msg);
    int all_ok = 1, all_differ = 1;
    for (int a = 0; a < 8; a++)
        for (int b = a + 1; b < 8; b++) {
            uint16_t px2[2] = {xs[a], xs[b]};
            uint8_t s2[2][32];
            memcpy(s2[0], shares[a], 32);
            memcpy(s2[1], shares[b], 32);
            fl_shamir_combine(px2, (const uint8_t(*)[32])s2, 2, out, &err);
            all_differ &= memcmp(out, secret, 32) != 0;
            for (int c = b + 1; c < 8; c++) {
                uint16_t px[3] = {xs[a], xs[b], xs[c]};
                uint8_t s3[3][32];
                memcpy(s3[0], shares[a], 32);
                memcpy(s3[1], shares[b], 32);
                memcpy(s3[2], shares[c], 32);
                CHECK(fl_shamir_combine(px, (const uint8_t(*)[32])s3, 3, out, &err) == FL_OK, "%s",
                      err.msg);
                all_ok &= memcmp(out, secret, 32) == 0;
            }
        }
    CHECK(all_ok, "every 3 of 8 shares rebuild the secret");
    CHECK(all_differ, "2 of 8 shares (below the threshold) do not rebuild the secret");
    CHECK(fl_shamir_combine(xs, (const uint8_t(*)[32])shares, 8, out, &err) == FL_OK &&
              memcmp(out, secret, 32) == 0,
          "all 8 shares rebuild the secret");
    /* a random threshold and random points across the whole field */
    for (int trial = 0; trial < 20; trial++) {
        uint32_t t = 1 + (uint32_t)(rng_next() % 8);
        uint16_t px[8];
        for (int i = 0; i < 8; i++) {
            int fresh;
            do {
                px[i] = (uint16_t)(1 + rng_next() % 65535);
                fresh = 1;
                for (int j = 0; j < i; j++)
                    fresh &= px[j] != px[i];
            } while (!fresh);
        }
        randombytes_buf(secret, sizeof secret);
        fl_shamir_split(secret, t, px, 8, shares, &err);
        fl_shamir_combine(px + (8 - t), (const uint8_t(*)[32])(shares + (8 - t)), t, out, &err);
        CHECK(memcmp(out, secret, 32) == 0, "trial %d: the last %u of 8 shares rebuild", trial, t);
    }
    uint16_t zero[2] = {0, 1}, twice[2] = {7, 7};
    CHECK(fl_shamir_split(secret, 2, zero, 2, shares, &err) == FL_EINPUT && strstr(err.msg, "is 0"),
          "share point 0 refused: %s", err.msg);
    CHECK(fl_shamir_split(secret, 2, twice, 2, shares, &err) == FL_EINPUT, "repeated point");
    CHECK(fl_shamir_combine(twice, (const uint8_t(*)[32])shares, 2, out, &err) == FL_EINPUT,
          "repeated point on combine");
    CHECK(fl_shamir_split(secret, 3, xs, 2, shares, &err) == FL_EINPUT, "fewer shares than t");
    CHECK(fl_shamir_combine(xs, (const uint8_t(*)[32])shares, 0, out, &err) == FL_EINPUT,
          "no shares");
}

/* ---- configs ----------------------------------------------------------------------------- */

static void test_config(void) {
    fl_err err = {0};
    fl_secagg_config ok = make_cfg(5, 3, 0, 16, 1.0, 1, 10);
    CHECK(fl_secagg_config_check(&ok, &err) == FL_OK, "valid config: %s", err.msg);
    struct {
        fl_secagg_config cfg;
        const char *field;
    } bad[] = {
        {make_cfg(1, 2, 0, 16, 1.0, 1, 10), "n_clients"},
        {make_cfg(70000, 2, 4, 8, 1.0, 1, 10), "n_clients"},
        {make_cfg(5, 2, 0, 16, 1.0, 1, 10), "threshold"}, /* 2 of 5 holders: not a majority */
        {make_cfg(5, 6, 0, 16, 1.0, 1, 10), "threshold"},
        {make_cfg(64, 8, 16, 16, 1.0, 1, 10), "threshold"},  /* 8 of 17 */
        {make_cfg(64, 18, 16, 16, 1.0, 1, 10), "threshold"}, /* more than 17 */
        {make_cfg(64, 10, 15, 16, 1.0, 1, 10), "neighbours"},
        {make_cfg(64, 2, 1, 16, 1.0, 1, 10), "neighbours"},
        {make_cfg(64, 33, 0, 27, 1.0, 1, 10), "bits"}, /* 64 (2^27 - 1) >= 2^32 */
        {make_cfg(5, 3, 0, 0, 1.0, 1, 10), "bits"},
        {make_cfg(5, 3, 0, 32, 1.0, 1, 10), "bits"},
        {make_cfg(5, 3, 0, 16, 0.0, 1, 10), "clip_range"},
        {make_cfg(5, 3, 0, 16, NAN, 1, 10), "clip_range"},
        {make_cfg(5, 3, 0, 16, -1.0, 1, 10), "clip_range"},
        {make_cfg(5, 3, 0, 16, 1.0, 1, (1ull << 30) + 1), "vector_len"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = fl_secagg_config_check(&bad[i].cfg, &err);
        CHECK(rc == FL_EINPUT && strstr(err.msg, bad[i].field), "bad config %zu (%s): %d %s", i,
              bad[i].field, rc, err.msg);
        CHECK(!fl_secagg_server_new(&bad[i].cfg, &err), "server refuses bad config %zu", i);
        CHECK(!fl_secagg_client_new(&bad[i].cfg, 0, NULL, &err), "client refuses %zu", i);
    }
    fl_secagg_config edge = make_cfg(64, 33, 0, 26, 1.0, 1, 10); /* 64 (2^26 - 1) < 2^32 */
    CHECK(fl_secagg_config_check(&edge, &err) == FL_OK, "26 bits for 64 clients: %s", err.msg);
    edge = make_cfg(64, 9, 16, 16, 1.0, 1, 10);
    CHECK(fl_secagg_config_check(&edge, &err) == FL_OK, "t 9 of 17 holders: %s", err.msg);
    CHECK(!fl_secagg_client_new(&ok, 5, NULL, &err) && strstr(err.msg, "index"),
          "client index out of range: %s", err.msg);
    CHECK(fabs(fl_secagg_step(&ok) - 2.0 / 65535) < 1e-15, "step");
    CHECK(fl_secagg_masked_bytes(&ok) == HDR + 4 * 11, "masked bytes");
}

/* ---- complete rounds --------------------------------------------------------------------- */

static void test_rounds(void) {
    struct {
        uint32_t n, t, k, bits;
        size_t L;
    } cases[] = {{3, 2, 0, 16, 1000},    {5, 3, 0, 20, 1000},  {16, 9, 0, 24, 5000},
                 {64, 10, 16, 16, 2000}, {64, 33, 0, 20, 300}, {2, 2, 0, 31, 100},
                 {5, 3, 0, 16, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fl_secagg_config cfg =
            make_cfg(cases[c].n, cases[c].t, cases[c].k, cases[c].bits, 1.0, 40 + c, cases[c].L);
        inputs in = make_inputs(cfg.n_clients, cfg.vector_len, 1.5); /* some values clip */
        log_reset();
        sim_result r = sim_run(&cfg, in.x, in.w, NULL);
        char what[64];
        snprintf(what, sizeof what, "N=%u t=%u k=%u bits=%u L=%zu", cases[c].n, cases[c].t,
                 cases[c].k, cases[c].bits, cases[c].L);
        check_sum(what, &cfg, &in, &r);
        CHECK(r.refused == 0 && r.client_refused == 0, "%s: nothing refused", what);
        sim_free(&r);
        free_inputs(&in);
    }
    /* stochastic rounding is unbiased: a value a third of a step above a grid point */
    fl_secagg_config cfg = make_cfg(3, 2, 0, 8, 1.0, 7, 30000);
    double step = fl_secagg_step(&cfg), target = -1.0 + (10 + 1.0 / 3) * step;
    inputs in = make_inputs(3, cfg.vector_len, 0);
    for (uint32_t i = 0; i < 3; i++) {
        in.w[i] = 1.0;
        for (size_t v = 0; v < cfg.vector_len; v++)
            in.x[i][v] = (float)target;
    }
    sim_result r = sim_run(&cfg, in.x, in.w, NULL);
    CHECK(r.rc == FL_OK, "unbiased: %s", r.why);
    if (r.rc == FL_OK) {
        double mean = 0, plain = 3 * (double)(float)target;
        for (size_t v = 0; v < cfg.vector_len; v++)
            mean += r.sum[v] / cfg.vector_len;
        /* each client's rounding error: Bernoulli(1/3) steps, sd step sqrt(2/9) */
        double sd = step * sqrt(3 * 2.0 / 9 / cfg.vector_len);
        CHECK(fabs(mean - plain) < 6 * sd, "stochastic rounding mean %.8f, plain %.8f (sd %.2g)",
              mean, plain, sd);
    }
    sim_free(&r);
    free_inputs(&in);
}

/* The neighbour lists of cfg's graph (n rows of k, ascending), read off the SHARES messages of an
 * honest stage 0 and 1; checks that the graph is symmetric and k-regular. */
static int graph_of(const fl_secagg_config *cfg, uint32_t *nbr) {
    uint32_t n = cfg->n_clients, k = cfg->neighbours ? cfg->neighbours : n - 1;
    fl_err err = {0};
    fl_secagg_server *srv = fl_secagg_server_new(cfg, &err);
    fl_secagg_client **cl = calloc(n, sizeof *cl);
    uint8_t *msg, *keys = NULL;
    size_t len, keys_len;
    int ok = srv != NULL;
    for (uint32_t i = 0; i < n && ok; i++) {
        cl[i] = fl_secagg_client_new(cfg, i, NULL, &err);
        ok = cl[i] && fl_secagg_client_advertise(cl[i], &msg, &len, &err) == FL_OK &&
             fl_secagg_server_collect_advertise(srv, i, msg, len, &err) == FL_OK;
        if (cl[i]) free(msg);
    }
    ok = ok && fl_secagg_server_end_advertise(srv, &keys, &keys_len, &err) == FL_OK;
    for (uint32_t i = 0; i < n && ok; i++) {
        ok = fl_secagg_client_share_keys(cl[i], keys, keys_len, &msg, &len, &err) == FL_OK &&
             len == HDR + 108 * (size_t)k;
        for (uint32_t e = 0; ok && e < k; e++) {
            const uint8_t *p = msg + HDR + 108 * (size_t)e;
            nbr[(size_t)i * k + e] = p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
        }
        free(msg);
    }
    for (uint32_t i = 0; i < n && ok; i++) /* symmetric */
        for (uint32_t e = 0; e < k; e++) {
            uint32_t j = nbr[(size_t)i * k + e], back = 0;
            for (uint32_t f = 0; f < k; f++)
                back += nbr[(size_t)j * k + f] == i;
            ok &= back == 1 && j != i;
        }
    if (!ok) fprintf(stderr, "graph_of: %s\n", err.msg);
    free(keys);
    for (uint32_t i = 0; i < n; i++)
        fl_secagg_client_free(cl[i]);
    free(cl);
    fl_secagg_server_free(srv);
    return ok;
}

/* ---- dropouts ---------------------------------------------------------------------------- */

/* below_t: the failure was for want of shares, so every secret has fewer than t. */
static void check_failed_clean(const char *what, const sim_result *r, int stage, uint32_t t,
                               int below_t) {
    CHECK(r->rc == FL_EPEER && r->failed_stage == stage,
          "%s: expected a clean failure at stage %d, got rc %d at %d: %s", what, stage, r->rc,
          r->failed_stage, r->why);
    CHECK(!r->kind_violation, "%s: the server got a share of the wrong kind", what);
    if (stage < 3)
        CHECK(r->max_b_held == 0 && r->max_s_held == 0, "%s: no share requested", what);
    else if (below_t)
        CHECK(r->max_b_held < t && r->max_s_held < t,
              "%s: the server holds %u seed and %u key "
              "shares of some client, fewer than t = %u",
              what, r->max_b_held, r->max_s_held, t);
}

static void test_dropouts(void) {
    /* sends[]: 0 nothing, 1 ADVERTISE, 2 + SHARES, 3 + MASKED, 4 all */
    struct {
        uint32_t n, t, k;
        int sends[8]; /* for the first 8 clients; the rest send all */
        int fails_at; /* -1: completes */
        const char *what;
    } cases[] = {
        {5, 3, 0, {0, 4, 4, 4, 0}, -1, "2 of 5 never advertise"},
        {5, 3, 0, {1, 4, 1, 4, 4}, -1, "2 of 5 drop after AdvertiseKeys"},
        {5, 3, 0, {4, 2, 4, 2, 4}, -1, "2 of 5 drop after ShareKeys"},
        {5, 3, 0, {3, 4, 4, 3, 4}, -1, "2 of 5 drop after MaskedInput"},
        {5, 3, 0, {4, 1, 2, 4, 4}, -1, "one drops after AdvertiseKeys, one after ShareKeys"},
        {5, 3, 0, {4, 4, 2, 4, 3}, -1, "one drops after ShareKeys, one after MaskedInput"},
        {3, 2, 0, {4, 2, 4}, -1, "1 of 3 drops after ShareKeys"},
        {3, 2, 0, {4, 3, 4}, -1, "1 of 3 drops after MaskedInput"},
        {16, 9, 0, {2, 2, 3, 3, 1, 1, 0, 4}, -1, "7 of 16 drop across stages"},
        {64, 10, 16, {1, 2, 3, 4, 2, 3, 1, 2}, -1, "k-graph: 7 of 64 drop across stages"},
        {5, 3, 0, {0, 0, 0, 4, 4}, 0, "3 of 5 never advertise"},
        {5, 3, 0, {1, 1, 1, 4, 4}, 1, "3 of 5 drop after AdvertiseKeys"},
        {5, 3, 0, {2, 2, 2, 4, 4}, 2, "3 of 5 drop after ShareKeys"},
        {5, 3, 0, {3, 3, 3, 4, 4}, 3, "3 of 5 drop after MaskedInput"},
        {3, 2, 0, {4, 2, 2}, 2, "2 of 3 drop after ShareKeys"},
        {16, 9, 0, {2, 2, 2, 2, 3, 3, 3, 3}, 3, "N=16: 8 drop, 4 before unmasking"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        uint32_t n = cases[c].n;
        fl_secagg_config cfg = make_cfg(n, cases[c].t, cases[c].k, 16, 1.0, 100 + c, 500);
        int *sends = malloc(n * sizeof *sends);
        for (uint32_t i = 0; i < n; i++)
            sends[i] = i < 8 ? cases[c].sends[i] : 4;
        inputs in = make_inputs(n, cfg.vector_len, 1.0);
        sim_opts o = {.sends = sends};
        log_reset();
        sim_result r = sim_run(&cfg, in.x, in.w, &o);
        if (cases[c].fails_at < 0) {
            check_sum(cases[c].what, &cfg, &in, &r);
            for (uint32_t i = 0; i < n; i++)
                CHECK(r.in_sum[i] == (sends[i] >= 3), "%s: client %u %s the sum", cases[c].what, i,
                      r.in_sum[i] ? "in" : "not in");
        } else {
            check_failed_clean(cases[c].what, &r, cases[c].fails_at, cases[c].t, 1);
        }
        sim_free(&r);
        free_inputs(&in);
        free(sends);
    }
    /* k-graph: 9 of client 0's 16 neighbours drop after ShareKeys, so client 0's seed has 8
     * holders left (itself and 7), threshold 10: the round fails before any share is asked for */
    fl_secagg_config cfg = make_cfg(64, 10, 16, 16, 1.0, 200, 100);
    uint32_t(*nbr)[16] = malloc(64 * sizeof *nbr);
    CHECK(graph_of(&cfg, &nbr[0][0]), "graph");
    int sends[64];
    for (int i = 0; i < 64; i++)
        sends[i] = 4;
    for (int e = 0; e < 9; e++)
        sends[nbr[0][e]] = 2;
    inputs in = make_inputs(64, cfg.vector_len, 1.0);
    sim_opts o = {.sends = sends};
    sim_result r = sim_run(&cfg, in.x, in.w, &o);
    check_failed_clean("k-graph: 9 of client 0's 16 neighbours drop", &r, 2, cfg.threshold, 1);
    CHECK(strstr(r.why, "holders"), "the reason names the holders: %s", r.why);
    sim_free(&r);
    free_inputs(&in);
    free(nbr);

    /* a ring (k = 2) of 8: two clients opposite each other drop, the survivors are two arcs whose
     * sums unmasking would reveal separately: the round fails before any share is asked for */
    cfg = make_cfg(8, 2, 2, 16, 1.0, 201, 100);
    uint32_t ring_nbr[8][2], order[8], prev = 8, cur = 0;
    CHECK(graph_of(&cfg, &ring_nbr[0][0]), "ring");
    for (int p = 0; p < 8; p++) { /* walk the ring from client 0 */
        order[p] = cur;
        uint32_t next = ring_nbr[cur][0] != prev ? ring_nbr[cur][0] : ring_nbr[cur][1];
        prev = cur;
        cur = next;
    }
    CHECK(cur == 0, "the k = 2 graph is one ring of 8");
    for (int i = 0; i < 8; i++)
        sends[i] = 4;
    sends[order[0]] = sends[order[4]] = 2;
    in = make_inputs(8, cfg.vector_len, 1.0);
    r = sim_run(&cfg, in.x, in.w, &o);
    check_failed_clean("ring: survivors in two arcs", &r, 2, cfg.threshold, 1);
    CHECK(strstr(r.why, "not linked"), "the reason: %s", r.why);
    sim_free(&r);
    sends[order[4]] = 4;
    sends[order[1]] = 2; /* two neighbours drop: one arc, but each dropped key has 1 holder left */
    r = sim_run(&cfg, in.x, in.w, &o);
    check_failed_clean("ring: two neighbours drop", &r, 2, cfg.threshold, 1);
    CHECK(strstr(r.why, "mask key would have 1 surviving holders"), "the reason: %s", r.why);
    sim_free(&r);
    sends[order[1]] = 4;
    r = sim_run(&cfg, in.x, in.w, &o);
    check_sum("ring: one drop", &cfg, &in, &r);
    sim_free(&r);
    free_inputs(&in);
}

/* ---- a masked vector reveals nothing ----------------------------------------------------- */

typedef struct capture {
    fl_secagg_msg_type type;
    uint32_t party;
    uint8_t *msg;
    size_t len;
} capture;

static void capture_tamper(void *ctx, fl_secagg_msg_type type, uint32_t party, uint8_t **msg,
                           size_t *len) {
    capture *c = ctx;
    if (type != c->type || party != c->party) return;
    free(c->msg);
    c->msg = dup_msg(*msg, *len);
    c->len = *len;
}

/* Pearson chi-square of 256 bins (byte `shift` of each value) against uniform. */
static double chi2_uniform(const uint32_t *hist) {
    double total = 0, chi = 0;
    for (int b = 0; b < 256; b++)
        total += hist[b];
    for (int b = 0; b < 256; b++)
        chi += (hist[b] - total / 256) * (hist[b] - total / 256) / (total / 256);
    return chi;
}

static void histogram(const uint8_t *msg, size_t n, int shift, uint32_t hist[256]) {
    memset(hist, 0, 256 * sizeof *hist);
    for (size_t v = 0; v < n; v++) {
        uint32_t y;
        memcpy(&y, msg + HDR + 4 * v, 4);
        hist[(y >> shift) & 255]++;
    }
}

static void test_independence(void) {
    size_t L = 65536;
    /* chi-square with 255 degrees of freedom: mean 255, sd 22.6; 6 sd above */
    const double bound = 255 + 6 * sqrt(2 * 255.0);
    uint32_t hist[2][4][256];
    double mean[2];
    for (int trial = 0; trial < 2; trial++) {
        fl_secagg_config cfg = make_cfg(3, 2, 0, 16, 1.0, 300 + trial, L);
        inputs in = make_inputs(3, L, 0.5);
        for (size_t v = 0; v < L; v++) /* client 0: all at +c with weight 1, or all 0 at 0 */
            in.x[0][v] = trial == 0 ? 1.0f : 0.0f;
        in.w[0] = trial == 0 ? 1.0 : 0.0;
        capture cap = {.type = FL_SECAGG_MSG_MASKED, .party = 0};
        sim_opts o = {.tamper = capture_tamper, .tamper_ctx = &cap};
        sim_result r = sim_run(&cfg, in.x, in.w, &o);
        CHECK(r.rc == FL_OK && cap.msg && cap.len == fl_secagg_masked_bytes(&cfg), "round: %s",
              r.why);
        if (cap.msg) {
            mean[trial] = 0;
            for (size_t v = 0; v <= L; v++) {
                uint32_t y;
                memcpy(&y, cap.msg + HDR + 4 * v, 4);
                mean[trial] += y * 0x1p-32 / (L + 1);
            }
            for (int byte = 0; byte < 4; byte++) {
                histogram(cap.msg, L + 1, 8 * byte, hist[trial][byte]);
                double chi = chi2_uniform(hist[trial][byte]);
                CHECK(chi < bound,
                      "input %d: byte %d of the masked values: chi-square %.1f >= %.1f", trial,
                      byte, chi, bound);
            }
            CHECK(fabs(mean[trial] - 0.5) < 6 / sqrt(12.0 * (L + 1)),
                  "input %d: mean of masked values / 2^32 = %.5f", trial, mean[trial]);
        }
        free(cap.msg);
        sim_free(&r);
        free_inputs(&in);
    }
    for (int byte = 0; byte < 4; byte++) { /* two-sample chi-square: same distribution */
        double chi = 0;
        for (int b = 0; b < 256; b++) {
            double a = hist[0][byte][b], c = hist[1][byte][b];
            if (a + c > 0) chi += (a - c) * (a - c) / (a + c);
        }
        CHECK(chi < bound, "byte %d: the two inputs' masked values differ: chi-square %.1f", byte,
              chi);
    }
    /* the statistic has power: a quantised constant is nowhere near uniform */
    uint32_t skew[256] = {0};
    skew[128] = 60000;
    for (int b = 0; b < 256; b++)
        skew[b] += 20;
    CHECK(chi2_uniform(skew) > 100 * bound, "chi-square detects a constant");
}

/* ---- tampering --------------------------------------------------------------------------- */

typedef struct tamper_spec {
    fl_secagg_msg_type type;
    uint32_t party;
    int action;
    int done;
} tamper_spec;

enum {
    FLIP_CIPHER = 1, /* flip a byte of the first share's ciphertext */
    SWAP_SENDER,     /* FORWARD: put entry 1's ciphertext under entry 0's sender */
    CLAIM_OTHER,     /* header sender := another client */
    SELF_RECIPIENT,  /* SHARES: first recipient := the sender itself */
    WRONG_SHARE,     /* UNMASK: change a share's value */
    WRONG_KIND,      /* UNMASK: ask for the other kind */
    DUP_OWNER,       /* UNMASK: second entry's owner := first entry's */
    OWNER_RANGE,     /* UNMASK: owner := 1000000 */
    TRUNCATE,        /* drop the last byte */
    EXTEND,          /* one byte more */
    MASKED_SHORT,    /* MASKED: one value fewer, count fixed to match */
};

static void put32le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void spec_tamper(void *ctx, fl_secagg_msg_type type, uint32_t party, uint8_t **msg,
                        size_t *len) {
    tamper_spec *t = ctx;
    if (type != t->type || party != t->party) return;
    uint8_t *m = *msg;
    t->done = 1;
    switch (t->action) {
    case FLIP_CIPHER: m[HDR + 4 + 30] ^= 0x40; break;
    case SWAP_SENDER: memcpy(m + HDR + 4, m + HDR + 108 + 4, 104); break;
    case CLAIM_OTHER: put32le(m + 24, (party + 1) % 5); break;
    case SELF_RECIPIENT: put32le(m + HDR, party); break;
    case WRONG_SHARE: m[HDR + 8 + 5] ^= 1; break;
    case WRONG_KIND: m[HDR + 4] = m[HDR + 4] == 1 ? 2 : 1; break;
    case DUP_OWNER: memcpy(m + HDR + 40, m + HDR, 4); break;
    case OWNER_RANGE: put32le(m + HDR, 1000000); break;
    case TRUNCATE: --*len; break;
    case EXTEND:
        *msg = realloc(m, *len + 1);
        (*msg)[(*len)++] = 0;
        break;
    case MASKED_SHORT:
        *len -= 4;
        put32le(m + 28, (uint32_t)((*len - HDR) / 4));
        break;
    default: t->done = 0;
    }
}

static void test_tampering(void) {
    struct {
        fl_secagg_msg_type type;
        uint32_t party;
        int action;
        int refused, client_refused; /* expected counts */
        int in_sum_party;            /* is the tampered party in the sum */
        const char *log;             /* expected in the log, or NULL */
        const char *what;
    } cases[] = {
        {FL_SECAGG_MSG_FORWARD, 0, FLIP_CIPHER, 0, 0, 1, "failed authentication",
         "a tampered share is refused by its recipient"},
        {FL_SECAGG_MSG_FORWARD, 0, SWAP_SENDER, 0, 0, 1, "not from client 1",
         "client 2's share passed off as client 1's fails authentication"},
        {FL_SECAGG_MSG_SHARES, 2, CLAIM_OTHER, 1, 0, 0, NULL,
         "a SHARES message claiming another client's index"},
        {FL_SECAGG_MSG_ADVERTISE, 3, CLAIM_OTHER, 1, 0, 0, NULL,
         "an ADVERTISE claiming another client's index"},
        {FL_SECAGG_MSG_MASKED, 1, CLAIM_OTHER, 1, 0, 0, NULL,
         "a MASKED claiming another client's index"},
        {FL_SECAGG_MSG_SHARES, 3, SELF_RECIPIENT, 1, 0, 0, NULL, "a share addressed to itself"},
        {FL_SECAGG_MSG_UNMASK, 1, WRONG_SHARE, 0, 0, 1, "client 1 sent a wrong share",
         "a wrong share in unmasking is found and left out"},
        {FL_SECAGG_MSG_UNMASK, 2, WRONG_KIND, 1, 0, 1, NULL, "a share of the wrong kind"},
        {FL_SECAGG_MSG_UNMASK, 2, DUP_OWNER, 1, 0, 1, NULL, "a repeated owner"},
        {FL_SECAGG_MSG_UNMASK, 2, OWNER_RANGE, 1, 0, 1, NULL, "an owner out of range"},
        {FL_SECAGG_MSG_UNMASK, 2, TRUNCATE, 1, 0, 1, NULL, "a truncated UNMASK"},
        {FL_SECAGG_MSG_SHARES, 2, TRUNCATE, 1, 0, 0, NULL, "a truncated SHARES"},
        {FL_SECAGG_MSG_ADVERTISE, 2, EXTEND, 1, 0, 0, NULL, "an ADVERTISE a byte too long"},
        {FL_SECAGG_MSG_MASKED, 4, MASKED_SHORT, 1, 0, 0, NULL, "a MASKED one value short"},
        {FL_SECAGG_MSG_MASKED, 4, EXTEND, 1, 0, 0, NULL, "a MASKED a byte too long"},
        {FL_SECAGG_MSG_KEYS, 1, TRUNCATE, 0, 1, 0, NULL, "a truncated KEYS"},
        {FL_SECAGG_MSG_FORWARD, 1, TRUNCATE, 0, 1, 0, NULL, "a truncated FORWARD"},
        {FL_SECAGG_MSG_SURVIVORS, 1, TRUNCATE, 0, 1, 1, NULL, "a truncated SURVIVORS"},
        {FL_SECAGG_MSG_SURVIVORS, 1, CLAIM_OTHER, 0, 1, 1, NULL, "a SURVIVORS not from the server"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fl_secagg_config cfg = make_cfg(5, 3, 0, 16, 1.0, 500 + c, 300);
        inputs in = make_inputs(5, cfg.vector_len, 1.0);
        tamper_spec spec = {cases[c].type, cases[c].party, cases[c].action, 0};
        sim_opts o = {.tamper = spec_tamper, .tamper_ctx = &spec};
        log_reset();
        sim_result r = sim_run(&cfg, in.x, in.w, &o);
        const char *what = cases[c].what;
        CHECK(spec.done, "%s: the tamper ran", what);
        check_sum(what, &cfg, &in, &r);
        CHECK(r.refused == cases[c].refused && r.client_refused == cases[c].client_refused,
              "%s: refused %d by the server (expected %d), %d by clients (expected %d)", what,
              r.refused, cases[c].refused, r.client_refused, cases[c].client_refused);
        CHECK(r.in_sum[cases[c].party] == cases[c].in_sum_party, "%s: client %u %s the sum", what,
              cases[c].party, r.in_sum[cases[c].party] ? "in" : "not in");
        if (cases[c].log)
            CHECK(strstr(log_all, cases[c].log), "%s: log says '%s': %s", what, cases[c].log,
                  log_all);
        sim_free(&r);
        free_inputs(&in);
    }
    /* a wrong share when only t shares are held cannot be found: the round fails cleanly */
    fl_secagg_config cfg = make_cfg(5, 3, 0, 16, 1.0, 600, 100);
    int sends[5] = {4, 4, 4, 3, 3};
    inputs in = make_inputs(5, cfg.vector_len, 1.0);
    tamper_spec spec = {FL_SECAGG_MSG_UNMASK, 1, WRONG_SHARE, 0};
    sim_opts o = {.sends = sends, .tamper = spec_tamper, .tamper_ctx = &spec};
    sim_result r = sim_run(&cfg, in.x, in.w, &o);
    check_failed_clean("a wrong share among exactly t", &r, 3, cfg.threshold, 0);
    CHECK(strstr(r.why, "do not rebuild"), "reason: %s", r.why);
    sim_free(&r);
    free_inputs(&in);
}

/* ---- replays ----------------------------------------------------------------------------- */

typedef struct replay {
    capture old[8]; /* messages of the earlier round, one per type (index = type) */
    fl_secagg_msg_type type;
    uint32_t party;
    int fix_round; /* also rewrite the round field (but not the session) */
    int done;
} replay;

static void record_all(void *ctx, fl_secagg_msg_type type, uint32_t party, uint8_t **msg,
                       size_t *len) {
    replay *rp = ctx;
    if (party != rp->party || rp->old[type].msg) return;
    rp->old[type].msg = dup_msg(*msg, *len);
    rp->old[type].len = *len;
}

static void replay_tamper(void *ctx, fl_secagg_msg_type type, uint32_t party, uint8_t **msg,
                          size_t *len) {
    replay *rp = ctx;
    if (type != rp->type || party != rp->party) return;
    uint64_t round;
    memcpy(&round, *msg + 8, 8);
    free(*msg);
    *msg = dup_msg(rp->old[type].msg, rp->old[type].len);
    *len = rp->old[type].len;
    if (rp->fix_round) memcpy(*msg + 8, &round, 8);
    rp->done = 1;
}

static void test_replay(void) {
    fl_secagg_config cfg = make_cfg(5, 3, 0, 16, 1.0, 700, 200);
    inputs in = make_inputs(5, cfg.vector_len, 1.0);
    replay rp = {.party = 1};
    sim_opts o = {.tamper = record_all, .tamper_ctx = &rp};
    sim_result r = sim_run(&cfg, in.x, in.w, &o);
    CHECK(r.rc == FL_OK, "round 700: %s", r.why);
    sim_free(&r);
    struct {
        fl_secagg_msg_type type;
        int refused, client_refused, in_sum;
    } cases[] = {
        {FL_SECAGG_MSG_ADVERTISE, 1, 0, 0}, {FL_SECAGG_MSG_KEYS, 0, 1, 0},
        {FL_SECAGG_MSG_SHARES, 1, 0, 0},    {FL_SECAGG_MSG_FORWARD, 0, 1, 0},
        {FL_SECAGG_MSG_MASKED, 1, 0, 0},    {FL_SECAGG_MSG_SURVIVORS, 0, 1, 1},
        {FL_SECAGG_MSG_UNMASK, 1, 0, 1},
    };
    cfg.round = 701;
    for (int fix = 0; fix < 2; fix++)
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            rp.type = cases[c].type;
            rp.fix_round = fix;
            rp.done = 0;
            o.tamper = replay_tamper;
            sim_result r2 = sim_run(&cfg, in.x, in.w, &o);
            char what[96];
            snprintf(what, sizeof what, "%s of round 700 replayed into 701%s",
                     (const char *[]){"", "ADVERTISE", "KEYS", "SHARES", "FORWARD", "MASKED",
                                      "SURVIVORS", "UNMASK"}[cases[c].type],
                     fix ? " with its round rewritten" : "");
            CHECK(rp.done, "%s: replayed", what);
            check_sum(what, &cfg, &in, &r2);
            CHECK(r2.refused == cases[c].refused && r2.client_refused == cases[c].client_refused,
                  "%s: refused %d/%d by server/clients", what, r2.refused, r2.client_refused);
            CHECK(r2.in_sum[1] == cases[c].in_sum, "%s: client 1 in the sum: %d", what,
                  r2.in_sum[1]);
            sim_free(&r2);
        }
    /* the refusal says why */
    fl_err err = {0};
    fl_secagg_server *srv = fl_secagg_server_new(&cfg, &err);
    CHECK(fl_secagg_server_collect_advertise(srv, 1, rp.old[FL_SECAGG_MSG_ADVERTISE].msg,
                                             rp.old[FL_SECAGG_MSG_ADVERTISE].len,
                                             &err) == FL_EPEER &&
              strstr(err.msg, "of round 700"),
          "replayed ADVERTISE: %s", err.msg);
    memcpy(rp.old[FL_SECAGG_MSG_ADVERTISE].msg + 8, &cfg.round, 8);
    CHECK(fl_secagg_server_collect_advertise(srv, 1, rp.old[FL_SECAGG_MSG_ADVERTISE].msg,
                                             rp.old[FL_SECAGG_MSG_ADVERTISE].len,
                                             &err) == FL_EPEER &&
              strstr(err.msg, "another session"),
          "replayed ADVERTISE with its round rewritten: %s", err.msg);
    fl_secagg_server_free(srv);
    for (int t = 0; t < 8; t++)
        free(rp.old[t].msg);
    free_inputs(&in);
}

/* ---- bad input and call order ------------------------------------------------------------ */

static void test_bad_input(void) {
    fl_err err = {0};
    fl_secagg_config cfg = make_cfg(3, 2, 0, 16, 1.0, 800, 4);
    fl_secagg_server *srv = fl_secagg_server_new(&cfg, &err);
    fl_secagg_client *c0 = fl_secagg_client_new(&cfg, 0, NULL, &err);
    fl_secagg_client *c1 = fl_secagg_client_new(&cfg, 1, NULL, &err);
    fl_secagg_client *c2 = fl_secagg_client_new(&cfg, 2, NULL, &err);
    uint8_t *m0, *m1, *m2, *keys, *out;
    size_t l0, l1, l2, keys_len, out_len;
    float x[4] = {0.1f, 0.2f, 0.3f, 0.4f};

    /* out of order */
    CHECK(fl_secagg_client_share_keys(c0, (const uint8_t *)"", 0, &out, &out_len, &err) ==
              FL_EINTERNAL,
          "share_keys before advertise: %s", err.msg);
    CHECK(fl_secagg_server_end_shares(srv, &err) == FL_EINTERNAL, "end_shares first");
    CHECK(fl_secagg_server_finish(srv, NULL, NULL, &err) == FL_EINTERNAL, "finish first");
    CHECK(fl_secagg_server_forward_for(srv, 0, &out, &out_len, &err) == FL_EINTERNAL,
          "forward_for first");
    CHECK(!fl_secagg_server_ready(srv), "not ready");

    fl_secagg_client_advertise(c0, &m0, &l0, &err);
    fl_secagg_client_advertise(c1, &m1, &l1, &err);
    fl_secagg_client_advertise(c2, &m2, &l2, &err);
    CHECK(fl_secagg_client_advertise(c0, &out, &out_len, &err) == FL_EINTERNAL, "advertise twice");

    /* headers */
    uint8_t junk[64] = "not a secagg message at all, not even close....";
    fl_secagg_msg_info info;
    CHECK(fl_secagg_msg_peek(m0, l0, &info, &err) == FL_OK &&
              info.type == FL_SECAGG_MSG_ADVERTISE && info.round == 800 && info.sender == 0 &&
              info.count == 1,
          "peek");
    CHECK(fl_secagg_msg_peek(NULL, 0, &info, &err) == FL_EPEER, "peek NULL");
    CHECK(fl_secagg_server_collect_advertise(srv, 0, NULL, 0, &err) == FL_EPEER, "NULL message");
    CHECK(fl_secagg_server_collect_advertise(srv, 0, m0, 10, &err) == FL_EPEER &&
              strstr(err.msg, "shorter than its header"),
          "short: %s", err.msg);
    CHECK(fl_secagg_server_collect_advertise(srv, 0, junk, sizeof junk, &err) == FL_EPEER &&
              strstr(err.msg, "magic"),
          "junk: %s", err.msg);
    uint8_t *bad = dup_msg(m0, l0);
    bad[4] = 2;
    CHECK(fl_secagg_server_collect_advertise(srv, 0, bad, l0, &err) == FL_EPEER &&
              strstr(err.msg, "version 2"),
          "version: %s", err.msg);
    bad[4] = 1, bad[5] = 9;
    CHECK(fl_secagg_server_collect_advertise(srv, 0, bad, l0, &err) == FL_EPEER &&
              strstr(err.msg, "unknown message type"),
          "type: %s", err.msg);
    bad[5] = FL_SECAGG_MSG_MASKED;
    CHECK(fl_secagg_server_collect_advertise(srv, 0, bad, l0, &err) == FL_EPEER &&
              strstr(err.msg, "MASKED message"),
          "wrong type: %s", err.msg);
    bad[5] = FL_SECAGG_MSG_ADVERTISE, bad[6] = 1;
    CHECK(fl_secagg_server_collect_advertise(srv, 0, bad, l0, &err) == FL_EPEER &&
              strstr(err.msg, "reserved"),
          "reserved: %s", err.msg);
    bad[6] = 0, bad[28] = 2;
    CHECK(fl_secagg_server_collect_advertise(srv, 0, bad, l0, &err) == FL_EPEER, "count 2: %s",
          err.msg);
    bad[28] = 1;
    memset(bad + 32, 0, 32); /* an all-zero (low-order) public key */
    CHECK(fl_secagg_server_collect_advertise(srv, 0, bad, l0, &err) == FL_EPEER &&
              strstr(err.msg, "invalid public key"),
          "low-order key: %s", err.msg);
    free(bad);
    CHECK(fl_secagg_server_collect_advertise(srv, 7, m0, l0, &err) == FL_EPEER &&
              strstr(err.msg, "no such client"),
          "from out of range: %s", err.msg);
    CHECK(fl_secagg_server_collect_advertise(srv, 1, m0, l0, &err) == FL_EPEER &&
              strstr(err.msg, "claims to be from client 0"),
          "from another index: %s", err.msg);
    CHECK(fl_secagg_server_progress(srv, 0) == FL_SECAGG_NONE, "nothing accepted yet");
    CHECK(fl_secagg_server_collect_advertise(srv, 0, m0, l0, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_secagg_server_collect_advertise(srv, 0, m0, l0, &err) == FL_EPEER &&
              strstr(err.msg, "duplicate"),
          "duplicate: %s", err.msg);
    CHECK(fl_secagg_server_collect_shares(srv, 0, m0, l0, &err) == FL_EPEER &&
              strstr(err.msg, "early"),
          "early: %s", err.msg);
    fl_secagg_server_collect_advertise(srv, 1, m1, l1, &err);
    fl_secagg_server_collect_advertise(srv, 2, m2, l2, &err);
    CHECK(fl_secagg_server_end_advertise(srv, &keys, &keys_len, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_secagg_server_collect_advertise(srv, 2, m2, l2, &err) == FL_EPEER &&
              strstr(err.msg, "late"),
          "late: %s", err.msg);
    free(m0), free(m1), free(m2);

    /* KEYS checks on the client */
    bad = dup_msg(keys, keys_len);
    bad[HDR + 68] = 5; /* second entry's index out of range */
    CHECK(fl_secagg_client_share_keys(c0, bad, keys_len, &out, &out_len, &err) == FL_EPEER &&
              strstr(err.msg, "out of range"),
          "KEYS index out of range: %s", err.msg);
    memcpy(bad, keys, keys_len);
    bad[HDR + 68] = 0; /* not increasing */
    CHECK(fl_secagg_client_share_keys(c0, bad, keys_len, &out, &out_len, &err) == FL_EPEER &&
              strstr(err.msg, "increasing"),
          "KEYS order: %s", err.msg);
    memcpy(bad, keys, keys_len);
    bad[HDR + 4] ^= 1; /* client 0's own key altered */
    CHECK(fl_secagg_client_share_keys(c0, bad, keys_len, &out, &out_len, &err) == FL_EPEER &&
              strstr(err.msg, "not its own"),
          "KEYS own key: %s", err.msg);
    memcpy(bad, keys, keys_len);
    put32le(bad + 28, 2); /* only two entries: client 0 and 1, within length */
    CHECK(fl_secagg_client_share_keys(c0, bad, HDR + 2 * 68, &out, &out_len, &err) == FL_OK,
          "a KEYS of 2 (threshold 2) is fine: %s", err.msg);
    free(out);
    free(bad);
    /* c0 has shared with 1 only; the server expects shares for 1 and 2 */
    fl_secagg_client_free(c0);
    c0 = fl_secagg_client_new(&cfg, 0, NULL, &err);
    fl_secagg_client_advertise(c0, &m0, &l0, &err);
    free(m0);
    CHECK(fl_secagg_client_share_keys(c0, keys, keys_len, &m0, &l0, &err) == FL_EPEER &&
              strstr(err.msg, "not its own"),
          "a fresh client does not find its keys in the old list: %s", err.msg);

    fl_secagg_client_share_keys(c1, keys, keys_len, &m1, &l1, &err);
    fl_secagg_client_share_keys(c2, keys, keys_len, &m2, &l2, &err);
    CHECK(fl_secagg_server_collect_shares(srv, 0, m1, l1, &err) == FL_EPEER,
          "client 0 passing off client 1's SHARES: %s", err.msg);
    CHECK(fl_secagg_server_collect_shares(srv, 1, m1, l1, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_secagg_server_collect_shares(srv, 2, m2, l2, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_secagg_server_forward_for(srv, 1, &out, &out_len, &err) == FL_EINTERNAL,
          "forward_for before end_shares");
    CHECK(fl_secagg_server_end_shares(srv, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_secagg_server_forward_for(srv, 0, &out, &out_len, &err) == FL_EINPUT,
          "forward_for a client that did not share: %s", err.msg);
    free(m1), free(m2), free(keys);

    uint8_t *f1, *f2;
    size_t fl1, fl2;
    fl_secagg_server_forward_for(srv, 1, &f1, &fl1, &err);
    fl_secagg_server_forward_for(srv, 2, &f2, &fl2, &err);
    /* bad update values */
    float nan_x[4] = {0, NAN, 0, 0};
    CHECK(fl_secagg_client_masked_input(c1, f1, fl1, nan_x, 1.0, &out, &out_len, &err) == FL_EINPUT,
          "NaN refused: %s", err.msg);
    CHECK(fl_secagg_client_masked_input(c1, f1, fl1, x, 1.5, &out, &out_len, &err) == FL_EINPUT,
          "weight > 1 refused");
    CHECK(fl_secagg_client_masked_input(c1, f1, fl1, x, -0.1, &out, &out_len, &err) == FL_EINPUT,
          "negative weight refused");
    CHECK(fl_secagg_client_masked_input(c1, f2, fl2, x, 1.0, &out, &out_len, &err) == FL_EPEER,
          "client 1 given client 2's FORWARD: %s", err.msg);
    CHECK(fl_secagg_client_masked_input(c1, f1, fl1, x, 1.0, &m1, &l1, &err) == FL_OK, "%s",
          err.msg);
    CHECK(fl_secagg_client_masked_input(c2, f2, fl2, x, 0.5, &m2, &l2, &err) == FL_OK, "%s",
          err.msg);
    free(f1), free(f2);
    CHECK(fl_secagg_server_collect_masked(srv, 1, m1, l1 - 4, &err) == FL_EPEER, "short MASKED: %s",
          err.msg);
    uint8_t *unaligned = malloc(l1 + 1);
    memcpy(unaligned + 1, m1, l1);
    CHECK(fl_secagg_server_collect_masked(srv, 1, unaligned + 1, l1, &err) == FL_OK,
          "MASKED at an odd address: %s", err.msg);
    free(unaligned);
    CHECK(fl_secagg_server_collect_masked(srv, 2, m2, l2, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_secagg_server_collect_masked(srv, 2, m2, l2, &err) == FL_EPEER, "duplicate MASKED");
    free(m1), free(m2);
    uint8_t *surv;
    size_t surv_len;
    CHECK(fl_secagg_server_end_masked(srv, &surv, &surv_len, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_secagg_client_unmask(c1, surv, surv_len, &m1, &l1, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_secagg_client_unmask(c1, surv, surv_len, &out, &out_len, &err) == FL_EINTERNAL &&
              strstr(err.msg, "already answered"),
          "a second unmasking request is refused: %s", err.msg);
    CHECK(fl_secagg_client_unmask(c2, surv, surv_len, &m2, &l2, &err) == FL_OK, "%s", err.msg);
    free(surv);
    CHECK(!fl_secagg_server_ready(srv), "not ready before the answers");
    CHECK(fl_secagg_server_collect_unmask(srv, 0, m1, l1, &err) == FL_EPEER,
          "UNMASK from a non-survivor: %s", err.msg);
    CHECK(fl_secagg_server_collect_unmask(srv, 1, m1, l1, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_secagg_server_collect_unmask(srv, 2, m2, l2, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_secagg_server_ready(srv), "ready");
    double sum[4], weight;
    CHECK(fl_secagg_server_finish(srv, sum, &weight, &err) == FL_OK, "%s", err.msg);
    double step = fl_secagg_step(&cfg);
    for (int v = 0; v < 4; v++)
        CHECK(fabs(sum[v] - 1.5 * x[v]) < 2 * step, "value %d: %g vs %g", v, sum[v], 1.5 * x[v]);
    CHECK(fabs(weight - 1.5) < 2.0 / 65535, "weight %g", weight);
    CHECK(fl_secagg_server_finish(srv, sum, &weight, &err) == FL_EINTERNAL, "finish twice");
    CHECK(fl_secagg_server_collect_unmask(srv, 2, m2, l2, &err) == FL_EPEER, "after the end");
    free(m1), free(m2);
    fl_secagg_client_free(c0);
    fl_secagg_client_free(c1);
    fl_secagg_client_free(c2);
    fl_secagg_server_free(srv);

    /* a failed round refuses everything after */
    srv = fl_secagg_server_new(&cfg, &err);
    CHECK(fl_secagg_server_end_advertise(srv, &keys, &keys_len, &err) == FL_EPEER &&
              strstr(err.msg, "only 0 of 3"),
          "no clients: %s", err.msg);
    CHECK(fl_secagg_server_end_advertise(srv, &keys, &keys_len, &err) == FL_EPEER, "after failing");
    CHECK(fl_secagg_server_collect_advertise(srv, 0, junk, sizeof junk, &err) == FL_EPEER,
          "after failing: collect");
    fl_secagg_server_free(srv);
    fl_secagg_client_free(NULL);
    fl_secagg_server_free(NULL);
}

/* ---- random mutations -------------------------------------------------------------------- */

typedef struct mutate {
    fl_secagg_msg_type type;
    uint32_t party;
    uint64_t seed;
    int unchecked; /* the mutation changed MASKED values or KEYS' keys */
} mutate;

static void mutate_tamper(void *ctx, fl_secagg_msg_type type, uint32_t party, uint8_t **msg,
                          size_t *len) {
    mutate *mu = ctx;
    if (type != mu->type || party != mu->party) return;
    uint64_t s = mu->seed;
    int op = (int)(s % 4);
    size_t at = (size_t)((s >> 8) % *len);
    switch (op) {
    case 0:
        at %= HDR < *len ? HDR : *len; /* a header byte */
    /* fall through */
    case 1: (*msg)[at] ^= (uint8_t)(1 + (s >> 40) % 255); break;
    case 2: *len = at; break; /* truncate */
    case 3:
        *msg = realloc(*msg, *len + 4);
        memset(*msg + *len, (int)(s >> 48), 4);
        *len += 4;
        break;
    }
    /* a client sending other values, or a relay changing the key list, changes the sum without
     * any party being able to tell (see docs/secagg.md, threat model) */
    mu->unchecked =
        (type == FL_SECAGG_MSG_MASKED || type == FL_SECAGG_MSG_KEYS) && op < 2 && at >= HDR;
}

static void test_mutations(void) {
    int completed = 0, failed = 0;
    for (int type = FL_SECAGG_MSG_ADVERTISE; type <= FL_SECAGG_MSG_UNMASK; type++)
        for (int trial = 0; trial < 60; trial++) {
            fl_secagg_config cfg = make_cfg(3, 2, 0, 12, 1.0, 900 + trial, 16);
            inputs in = make_inputs(3, cfg.vector_len, 1.0);
            mutate mu = {(fl_secagg_msg_type)type, (uint32_t)(trial % 3), rng_next(), 0};
            sim_opts o = {.tamper = mutate_tamper, .tamper_ctx = &mu};
            log_reset();
            sim_result r = sim_run(&cfg, in.x, in.w, &o);
            CHECK(r.rc == FL_OK || r.rc == FL_EPEER, "mutated %d: rc %d: %s", type, r.rc, r.why);
            CHECK(!r.kind_violation, "mutated %d: wrong kind", type);
            if (r.rc == FL_OK && !mu.unchecked) check_sum("mutated", &cfg, &in, &r);
            completed += r.rc == FL_OK;
            failed += r.rc != FL_OK;
            sim_free(&r);
            free_inputs(&in);
        }
    CHECK(completed > 0 && failed > 0, "mutations: %d rounds completed, %d failed cleanly",
          completed, failed);
}

/* ---- timing (FEDLLM_SECAGG_TIMING=1) ----------------------------------------------------- */

static void timing(void) {
    struct {
        uint32_t n, t, k;
    } shapes[] = {{16, 9, 0}, {64, 33, 0}, {64, 10, 16}};
    size_t lens[] = {300000, 4000000};
    printf("secagg timing (client: mean per client; server: whole round), seconds\n");
    printf("%4s %4s %3s %8s | %8s %8s %8s %8s | %8s %8s %8s %8s\n", "N", "k", "t", "L", "c.adv",
           "c.share", "c.mask", "c.unmask", "s.adv", "s.share", "s.mask", "s.finish");
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++)
        for (size_t li = 0; li < 2; li++) {
            uint32_t n = shapes[sh].n;
            size_t L = lens[li];
            fl_secagg_config cfg = make_cfg(n, shapes[sh].t, shapes[sh].k, 16, 1.0, 1000, L);
            float *x = malloc(L * sizeof *x), **xs = malloc(n * sizeof *xs);
            double *w = malloc(n * sizeof *w);
            for (size_t v = 0; v < L; v++)
                x[v] = (float)rng_uniform(-1, 1);
            for (uint32_t i = 0; i < n; i++)
                xs[i] = x, w[i] = 1.0;
            int sends[64];
            for (uint32_t i = 0; i < n; i++)
                sends[i] = i < n / 10 ? 2 : 4; /* 10% drop after ShareKeys */
            sim_opts o = {.sends = sends};
            sim_result r = sim_run(&cfg, xs, w, &o);
            CHECK(r.rc == FL_OK, "timing round: %s", r.why);
            uint32_t m = 0;
            for (uint32_t i = 0; i < n; i++)
                m += r.in_sum[i];
            printf("%4u %4u %3u %8zu | %8.4f %8.4f %8.4f %8.4f | %8.4f %8.4f %8.4f %8.4f\n", n,
                   shapes[sh].k ? shapes[sh].k : n - 1, shapes[sh].t, L, r.client_s[0] / n,
                   r.client_s[1] / n, r.client_s[2] / m, r.client_s[3] / m, r.server_s[0],
                   r.server_s[1], r.server_s[2], r.server_s[3]);
            fflush(stdout);
            sim_free(&r);
            free(x), free(xs), free(w);
        }
}

int main(void) {
    if (sodium_init() < 0) return 1;
    test_shamir();
    test_config();
    test_rounds();
    test_dropouts();
    test_independence();
    test_tampering();
    test_replay();
    test_bad_input();
    test_mutations();
    const char *timing_env = getenv("FEDLLM_SECAGG_TIMING");
    if (timing_env && strcmp(timing_env, "1") == 0) timing();
    return tu_finish("test_secagg");
}
