/* test_inferdpt.c — InferDPT's kit and RANTEXT (inferdpt.h) and the prompt templates
 * (template.h): the kit picks the whole-word tokens and sorts each one's neighbours; the
 * mechanism's output distribution equals the one the paper defines, computed here independently
 * by Monte Carlo over the Laplace threshold; the stored K nearest and a whole row give the same
 * draws; ε = ∞ and tokens outside the kit leave text as it is; draws depend only on (seed,
 * document, position); the kit file survives a round trip and every corruption is refused with
 * its field; a kit refuses another tokenizer; templates render and refuse what they should. */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fedllm/endpoint.h"
#include "fedllm/fileio.h"
#include "fedllm/inferdpt.h"
#include "fedllm/rng.h"
#include "fedllm/template.h"
#include "testutil.h"

static const char *GPT2_TOK = "tests/fixtures/tokenizers/gpt2";

/* Embeddings (rows, dim) in a few clusters, so that similarities spread over [-1, 1]. */
static float *clustered_embeddings(int rows, int dim, uint64_t seed) {
    float *e = malloc((size_t)rows * dim * sizeof *e);
    float *centres = malloc((size_t)8 * dim * sizeof *centres);
    fl_rng_normal(centres, (size_t)8 * dim, seed, 0, 1.0f);
    fl_rng_normal(e, (size_t)rows * dim, seed + 1, 0, 0.6f);
    for (int r = 0; r < rows; r++)
        for (int d = 0; d < dim; d++)
            e[(size_t)r * dim + d] += centres[(size_t)(r % 8) * dim + d];
    free(centres);
    return e;
}

static int make_kit(fl_dpt_kit *kit, fl_tokenizer *tok, int dim, int min_len, int max_len,
                    int neighbours) {
    int rows = fl_tokenizer_vocab_size(tok);
    float *e = clustered_embeddings(rows, dim, 7);
    fl_dpt_kit_options opt = {min_len, max_len, neighbours};
    fl_err err = {0};
    int rc = fl_dpt_kit_build(kit, tok, e, rows, dim, &opt, "test", &err);
    CHECK(rc == 0, "%s", err.msg);
    free(e);
    return rc;
}

static void check_kit_shape(const fl_dpt_kit *kit, fl_tokenizer *tok) {
    int bad_word = 0, bad_order = 0;
    for (int i = 0; i < kit->n; i++) {
        size_t len;
        const char *s = fl_tokenizer_token(tok, kit->ids[i], &len);
        /* Ġ then 4..15 letters, not all capitals */
        int lower = 0, ok = len >= 6 && len <= 17 && (unsigned char)s[0] == 0xC4 &&
                            (unsigned char)s[1] == 0xA0;
        for (size_t c = 2; ok && c < len; c++) {
            ok = (s[c] >= 'a' && s[c] <= 'z') || (s[c] >= 'A' && s[c] <= 'Z');
            lower |= s[c] >= 'a' && s[c] <= 'z';
        }
        bad_word += !(ok && lower) || strcmp(s, kit->strings[i]) != 0;
        const float *sim = kit->nb_sim + (size_t)i * kit->k;
        bad_order += kit->nb_idx[(size_t)i * kit->k] != i || sim[0] != 1.0f;
        for (int j = 1; j < kit->k; j++)
            bad_order += sim[j] > sim[j - 1];
    }
    CHECK(kit->n > 100, "only %d whole-word tokens in the 8000-token BPE", kit->n);
    CHECK(bad_word == 0, "%d kit tokens are not whole words", bad_word);
    CHECK(bad_order == 0, "%d neighbour lists out of order or not starting with the token",
          bad_order);
    /* Spot check the similarities against a double-precision cosine. */
    double worst = 0;
    for (int i = 0; i < kit->n; i += 37)
        for (int j = 1; j < kit->k; j += 5) {
            int u = kit->nb_idx[(size_t)i * kit->k + j];
            const float *a = kit->emb + (size_t)i * kit->dim, *b = kit->emb + (size_t)u * kit->dim;
            double ab = 0, aa = 0, bb = 0;
            for (int d = 0; d < kit->dim; d++)
                ab += (double)a[d] * b[d], aa += (double)a[d] * a[d], bb += (double)b[d] * b[d];
            double diff = fabs(ab / sqrt(aa * bb) - kit->nb_sim[(size_t)i * kit->k + j]);
            worst = diff > worst ? diff : worst;
        }
    /* fp32 unit rows and a dot of D terms: |error| <= (D + 2) u per value, D = 16 here */
    CHECK(worst < 20 * 0x1p-24 * 4, "stored similarity off the cosine by %g", worst);
}

/* The mechanism's distribution for kit token i, from its definition: the threshold
 * t = cos(e, e + n), n_d ~ Laplace(Δf_d / (ε/2)), sampled here with rand48 (not Philox), then
 * P(u) = 1{s_u >= t} exp(ε s_u / 2) / Σ_{v: s_v >= t} exp(ε s_v / 2), averaged over draws. */
static void reference_distribution(const fl_dpt_kit *kit, int i, double eps, int draws, double *p) {
    const int n = kit->n, D = kit->dim;
    double *sims = malloc((size_t)n * sizeof *sims);
    const float *e = kit->emb + (size_t)i * D;
    for (int u = 0; u < n; u++) {
        const float *b = kit->emb + (size_t)u * D;
        double ab = 0, aa = 0, bb = 0;
        for (int d = 0; d < D; d++)
            ab += (double)e[d] * b[d], aa += (double)e[d] * e[d], bb += (double)b[d] * b[d];
        sims[u] = u == i ? 1.0 : ab / sqrt(aa * bb);
        p[u] = 0;
    }
    srand48(12345);
    for (int k = 0; k < draws; k++) {
        double dot = 0, ee = 0, vv = 0;
        for (int d = 0; d < D; d++) {
            double x = drand48() - 0.5, b = kit->delta_f[d] / (eps / 2);
            double noise = -b * (x < 0 ? -1 : 1) * log(1 - 2 * fabs(x));
            double v = e[d] + noise;
            dot += e[d] * v, ee += (double)e[d] * e[d], vv += v * v;
        }
        double t = dot / sqrt(ee * vv), total = 0;
        for (int u = 0; u < n; u++)
            if (sims[u] >= t) total += exp(eps * sims[u] / 2);
        for (int u = 0; u < n; u++)
            if (sims[u] >= t) p[u] += exp(eps * sims[u] / 2) / total / draws;
    }
    free(sims);
}

/* Outcomes grouped by their similarity rank to token i into `groups` of equal count (the
 * token itself alone in group 0), so that the comparison has few cells. */
static void group_by_rank(const fl_dpt_kit *kit, int i, const double *p, int groups, double *out) {
    for (int g = 0; g < groups; g++)
        out[g] = 0;
    int per = (kit->n - 1 + groups - 2) / (groups - 1);
    const float *e = kit->emb + (size_t)i * kit->dim;
    /* rank of every token by double-precision cosine */
    double *sims = malloc((size_t)kit->n * sizeof *sims);
    for (int u = 0; u < kit->n; u++) {
        const float *b = kit->emb + (size_t)u * kit->dim;
        double ab = 0, aa = 0, bb = 0;
        for (int d = 0; d < kit->dim; d++)
            ab += (double)e[d] * b[d], aa += (double)e[d] * e[d], bb += (double)b[d] * b[d];
        sims[u] = u == i ? 2.0 : ab / sqrt(aa * bb);
    }
    for (int u = 0; u < kit->n; u++) {
        int rank = 0;
        for (int v = 0; v < kit->n; v++)
            rank += sims[v] > sims[u] || (sims[v] == sims[u] && v < u);
        out[rank == 0 ? 0 : 1 + (rank - 1) / per] += p[u];
    }
    free(sims);
}

static void check_distribution(const fl_dpt_kit *kit, double eps) {
    enum { GROUPS = 12 };
    const int n = kit->n, draws = 20000;
    double *want = calloc((size_t)n, sizeof *want), *got = calloc((size_t)n, sizeof *got);
    float *row = malloc((size_t)n * sizeof *row);
    fl_dpt_pair *scratch = malloc((size_t)n * sizeof *scratch);
    int i = n / 3, full_rows = 0;
    reference_distribution(kit, i, eps, draws, want);
    for (int k = 0; k < draws; k++) {
        int full = 0;
        got[fl_dpt_perturb_token(kit, i, eps, 99, (uint64_t)k << 24, row, scratch, &full)] +=
            1.0 / draws;
        full_rows += full;
    }
    double gw[GROUPS], gg[GROUPS], tv = 0;
    group_by_rank(kit, i, want, GROUPS, gw);
    group_by_rank(kit, i, got, GROUPS, gg);
    for (int g = 0; g < GROUPS; g++)
        tv += fabs(gw[g] - gg[g]) / 2;
    /* Two Monte Carlo estimates of 20,000 draws over 12 cells: their total-variation distance
     * is about 0.4 sqrt(12 / 20000) ~ 0.01 (spread ~0.003); 0.035 is beyond sampling noise and
     * below what a wrong noise scale (ε instead of ε/2), exponent or candidate set gives. */
    CHECK(tv < 0.035, "epsilon %g: the output distribution is %.3f from the definition's", eps, tv);
    printf("epsilon %g: total variation %.4f from the definition over %d rank groups, P(kept) "
           "%.3f (definition %.3f), %d whole rows\n",
           eps, tv, GROUPS, gg[0], gw[0], full_rows);
    free(want), free(got), free(row), free(scratch);
}

static void check_stored_vs_full(fl_tokenizer *tok) {
    fl_dpt_kit all, few;
    if (make_kit(&all, tok, 16, 4, 5, 1 << 20) || make_kit(&few, tok, 16, 4, 5, 3)) return;
    CHECK(all.k == all.n && few.k == 3, "k %d of %d, %d", all.k, all.n, few.k);
    float *row = malloc((size_t)all.n * sizeof *row);
    fl_dpt_pair *scratch = malloc((size_t)all.n * sizeof *scratch);
    int differ = 0, uncached_differ = 0, full_rows = 0, trials = 0;
    for (int i = 0; i < all.n; i += 7)
        for (int k = 0; k < 40; k++, trials++) {
            int f1, f2;
            uint64_t counter = (uint64_t)(i * 40 + k) << 24;
            int a = fl_dpt_perturb_token(&all, i, 2.0, 5, counter, row, scratch, &f1);
            int b = fl_dpt_perturb_token(&few, i, 2.0, 5, counter, row, scratch, &f2);
            /* the same draw without the row cache: computed afresh, the same bits */
            fl_dpt_rows *cache = few.rows;
            few.rows = NULL;
            int c = fl_dpt_perturb_token(&few, i, 2.0, 5, counter, row, scratch, &f2);
            few.rows = cache;
            uncached_differ += b != c;
            differ += a != b;
            full_rows += f2;
        }
    /* The stored similarities come from one GEMM, a whole row from a GEMV: they may differ in
     * the last bit, which changes a draw only when the threshold or the uniform falls within
     * ~1e-7 of a boundary (probability ~1e-5 per draw). */
    CHECK(differ <= 2, "%d of %d draws differ between stored lists and whole rows", differ, trials);
    CHECK(full_rows > trials / 2, "only %d of %d draws needed a whole row", full_rows, trials);
    CHECK(few.rows != NULL && uncached_differ == 0,
          "%d of %d draws differ with and without the row cache", uncached_differ, trials);
    free(row);
    free(scratch);
    fl_dpt_kit_free(&all);
    fl_dpt_kit_free(&few);
}

static void check_text(const fl_dpt_kit *kit, fl_tokenizer *tok) {
    const char *text = "The chapter tells of the king and his people, and 1234 !!";
    fl_str a = {0}, b = {0}, c = {0}, inf = {0};
    fl_dpt_stats st = {0}, st_inf = {0};
    fl_err err;
    CHECK(!fl_dpt_perturb_text(kit, tok, text, strlen(text), INFINITY, 1, 0, &inf, &st_inf, &err),
          "%s", err.msg);
    CHECK(inf.s && strcmp(inf.s, text) == 0 && st_inf.replaced == 0, "epsilon inf changed '%s'",
          inf.s);
    CHECK(st_inf.in_kit > 0, "no token of the text is in the kit");
    CHECK(!fl_dpt_perturb_text(kit, tok, text, strlen(text), 0.5, 1, 3, &a, &st, &err), "%s",
          err.msg);
    CHECK(!fl_dpt_perturb_text(kit, tok, text, strlen(text), 0.5, 1, 3, &b, NULL, &err), "%s",
          err.msg);
    CHECK(a.s && b.s && strcmp(a.s, b.s) == 0, "the same seed and document gave '%s' and '%s'", a.s,
          b.s);
    CHECK(st.replaced > 0, "epsilon 0.5 replaced nothing");
    CHECK(strstr(a.s, "1234 !!") != NULL, "tokens outside the kit changed: '%s'", a.s);
    int other = 0;
    for (uint64_t doc = 4; doc < 12; doc++) {
        c.n = 0;
        fl_dpt_perturb_text(kit, tok, text, strlen(text), 0.5, 1, doc, &c, NULL, &err);
        other += strcmp(c.s, a.s) != 0;
    }
    CHECK(other >= 6, "other documents' draws repeat document 3's (%d of 8 differ)", other);
    /* More privacy, more replacement. */
    long replaced[3] = {0};
    double eps[3] = {0.5, 4, 64};
    for (int e = 0; e < 3; e++)
        for (uint64_t doc = 0; doc < 30; doc++) {
            fl_dpt_stats s = {0};
            c.n = 0;
            fl_dpt_perturb_text(kit, tok, text, strlen(text), eps[e], 2, doc, &c, &s, &err);
            replaced[e] += s.replaced;
        }
    CHECK(replaced[0] > replaced[1] && replaced[1] > replaced[2],
          "replacements at epsilon 0.5, 4, 64: %ld, %ld, %ld", replaced[0], replaced[1],
          replaced[2]);
    fl_str_free(&a), fl_str_free(&b), fl_str_free(&c), fl_str_free(&inf);
}

/* Writes kit.bin with one field changed and expects load to refuse it naming what. */
static void check_corrupt(const char *dir, const char *data, size_t len, size_t at, uint32_t value,
                          size_t keep, const char *expect) {
    char path[1024];
    snprintf(path, sizeof path, "%s/kit.bin", dir);
    char *copy = malloc(len);
    memcpy(copy, data, len);
    if (at + 4 <= len) memcpy(copy + at, &value, 4);
    fl_write_file_atomic(path, copy, keep, NULL);
    free(copy);
    fl_dpt_kit kit;
    fl_err err = {0};
    int rc = fl_dpt_kit_load(&kit, dir, &err);
    CHECK(rc == FL_EINPUT && strstr(err.msg, expect),
          "corruption at %zu: rc %d '%s', expected '%s'", at, rc, err.msg, expect);
    if (rc == 0) fl_dpt_kit_free(&kit);
}

static void check_file(const fl_dpt_kit *kit) {
    const char *dir = tu_tmpdir("test_inferdpt");
    fl_err err = {0};
    CHECK(!fl_dpt_kit_save(kit, GPT2_TOK, dir, &err), "%s", err.msg);
    fl_dpt_kit back;
    CHECK(!fl_dpt_kit_load(&back, dir, &err), "%s", err.msg);
    size_t n = (size_t)kit->n, D = (size_t)kit->dim, nk = n * (size_t)kit->k;
    CHECK(back.n == kit->n && back.dim == kit->dim && back.k == kit->k &&
              back.vocab == kit->vocab && !memcmp(back.ids, kit->ids, n * 4) &&
              !memcmp(back.emb, kit->emb, n * D * 4) &&
              !memcmp(back.delta_f, kit->delta_f, D * 4) &&
              !memcmp(back.nb_idx, kit->nb_idx, nk * 4) &&
              !memcmp(back.nb_sim, kit->nb_sim, nk * 4) &&
              !strcmp(back.strings[n - 1], kit->strings[n - 1]),
          "the kit read back differs");
    fl_tokenizer *tok = NULL, *other = NULL;
    CHECK(!fl_tokenizer_load(&tok, dir, &err), "the kit's tokenizer: %s", err.msg);
    CHECK(tok && !fl_dpt_kit_check_tokenizer(&back, tok, dir, &err), "%s", err.msg);
    CHECK(!fl_tokenizer_load(&other, "tests/fixtures/tokenizers/qwen2", &err), "%s", err.msg);
    int rc = other ? fl_dpt_kit_check_tokenizer(&back, other, "qwen2", &err) : -1;
    CHECK(rc == FL_EINPUT && strstr(err.msg, "another tokenizer"), "qwen2's tokenizer: %d '%s'", rc,
          err.msg);
    fl_tokenizer_free(tok);
    fl_tokenizer_free(other);
    fl_dpt_kit_free(&back);

    char path[1024], *data = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/kit.bin", dir);
    CHECK(!fl_read_file(path, &data, &len, 1 << 30, &err), "%s", err.msg);
    size_t strings = n * 8 + 32, block = 0;
    for (size_t i = 0; i < n; i++)
        block += strlen(kit->strings[i]);
    size_t nb_idx = strings + block + n * D * 4 + D * 4;
    check_corrupt(dir, data, len, 0, 0x21212121, len, "not an InferDPT kit");
    check_corrupt(dir, data, len, 12, 0, len, "header"); /* n = 0 */
    check_corrupt(dir, data, len, 12, (uint32_t)kit->n + 1, len, "bytes after the header");
    check_corrupt(dir, data, len, 20, (uint32_t)kit->n + 1, len, "header");   /* k > n */
    check_corrupt(dir, data, len, len, 0, len - 5, "bytes after the header"); /* truncated */
    check_corrupt(dir, data, len, 32 + 4, 0, len, "increasing");              /* ids[1] = 0 */
    check_corrupt(dir, data, len, 32 + n * 4, 0xffffffffu, len, "string_end");
    check_corrupt(dir, data, len, nb_idx + 4, (uint32_t)kit->n, len, "neighbours"); /* index n */
    check_corrupt(dir, data, len, nb_idx + nk * 4 + 8, 0x7fc00000u, len, "neighbours"); /* NaN */
    free(data);
}

static void check_templates(void) {
    cJSON *rec = cJSON_Parse("{\"question\":\"Who?\",\"n\":3,\"choices\":{\"text\":[\"a\",\"b\"],"
                             "\"label\":[\"A\",\"B\"]},\"pad\":\"  x y \",\"nil\":null}");
    struct {
        const char *tpl, *want;
    } ok[] = {
        {"Q: {{question}} ({{ n }})", "Q: Who? (3)"},
        {"{{choices.text | join(\", \")}}|{{ choices.label.1 }}", "a, b|B"},
        {"[{{pad|trim}}] {{ question | upper }}{{ question|lower }}", "[x y] WHO?who?"},
        {"{{ \"{{\" }}literal{{ '}}' }}{{nil}}", "{{literal}}"},
        {"no fields at all", "no fields at all"},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        fl_str out = {0};
        fl_err err = {0};
        int rc = fl_template_render(ok[i].tpl, rec, "t", &out, &err);
        CHECK(rc == 0 && out.s && strcmp(out.s, ok[i].want) == 0, "'%s' gave rc %d '%s' (%s)",
              ok[i].tpl, rc, out.s ? out.s : "", err.msg);
        CHECK(fl_template_check(ok[i].tpl, "t", &err) == 0, "'%s' check: %s", ok[i].tpl, err.msg);
        fl_str_free(&out);
    }
    struct {
        const char *tpl, *expect;
        int syntax; /* fl_template_check refuses it too */
    } bad[] = {
        {"{{ missing }}", "no field 'missing'", 0},
        {"{{ choices.nope }}", "no field 'nope'", 0},
        {"{{ choices.text }}", "use | join", 0},
        {"{{ question | join(\",\") }}", "not a list", 0},
        {"{{ question", "never closed", 1},
        {"{{ question | shout }}", "expected a filter", 1},
        {"{{ question question }}", "expected |", 1},
        {"{{ \"open }}", "never closed", 1},
        {"{{ }}", "expected a field name", 1},
        {"{{ choices | join(sep) }}", "string literal", 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fl_str out = {0};
        fl_err err = {0};
        int rc = fl_template_render(bad[i].tpl, rec, "--t", &out, &err);
        CHECK(rc == FL_EINPUT && strstr(err.msg, bad[i].expect) && !strncmp(err.msg, "--t: ", 5),
              "'%s': rc %d '%s', expected '%s'", bad[i].tpl, rc, err.msg, bad[i].expect);
        rc = fl_template_check(bad[i].tpl, "--t", &err);
        CHECK((rc != 0) == bad[i].syntax, "check '%s': rc %d", bad[i].tpl, rc);
        fl_str_free(&out);
    }
    cJSON_Delete(rec);
}


/* A one-connection HTTP peer: status line and body (Content-Length claiming `missing` bytes
 * more than it sends), or status NULL: close at once, "": never answer. */
typedef struct fake_peer {
    int listen_fd, port;
    const char *status, *body;
    int missing;
    pthread_t thread;
} fake_peer;

static void *fake_serve(void *arg) {
    fake_peer *f = arg;
    int c = accept(f->listen_fd, NULL, NULL);
    if (c < 0) return NULL;
    char buf[8192];
    ssize_t got = recv(c, buf, sizeof buf, 0); /* the request (small) */
    (void)got;
    if (f->status && f->status[0]) {
        char reply[1024];
        int n = snprintf(reply, sizeof reply, "HTTP/1.1 %s\r\nContent-Length: %zu\r\n\r\n%s",
                         f->status, strlen(f->body) + (size_t)f->missing, f->body);
        ssize_t w = send(c, reply, (size_t)n, MSG_NOSIGNAL);
        (void)w;
    } else if (f->status) {
        while (recv(c, buf, sizeof buf, 0) > 0) {
        }
    }
    close(c);
    return NULL;
}

static void fake_start(fake_peer *f, const char *status, const char *body, int missing) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    f->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    bind(f->listen_fd, (struct sockaddr *)&a, sizeof a);
    listen(f->listen_fd, 1);
    getsockname(f->listen_fd, (struct sockaddr *)&a, &len);
    f->port = ntohs(a.sin_port);
    f->status = status, f->body = body, f->missing = missing;
    pthread_create(&f->thread, NULL, fake_serve, f);
}

static void fake_stop(fake_peer *f) {
    pthread_join(f->thread, NULL);
    close(f->listen_fd);
}

static void check_endpoint(void) {
    struct {
        const char *status, *body;
        int missing;
        const char *expect;
        int code;
    } cases[] = {
        {"200 OK", "not json!", 0, "not a JSON object", FL_EPEER},
        {"200 OK", "[1, 2]", 0, "not a JSON object", FL_EPEER},
        {"200 OK", "{}", 0, "no \"choices\" list", FL_EPEER},
        {"200 OK", "{\"choices\":[{\"text\":\"a\"}]}", 0, "a choice without", FL_EPEER},
        {"200 OK", "{\"choices\":[{\"index\":0,\"text\":7},{\"index\":1,\"text\":\"b\"}]}", 0,
         "a choice without", FL_EPEER},
        {"200 OK", "{\"choices\":[{\"index\":0,\"text\":\"a\"}]}", 0, "no choice for prompt 1",
         FL_EPEER},
        {"500 Oops", "{\"error\":{\"message\":\"it broke\\nx\"}}", 0, "HTTP 500: it broke x",
         FL_EPEER},
        {"401 No", "<html>\n</html>", 0, "HTTP 401: <html>?</html>", FL_EPEER},
        {"200 OK", "{\"choi", 100, "", FL_EIO}, /* cut short */
        {NULL, NULL, 0, "", FL_EIO},            /* hangs up */
        {"", NULL, 0, "", FL_EIO},              /* never answers */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fake_peer f;
        fake_start(&f, cases[i].status, cases[i].body, cases[i].missing);
        char url[64];
        snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/", f.port);
        fl_endpoint ep;
        fl_err err = {0};
        CHECK(!fl_endpoint_init(&ep, url, "k", "m", 0.5, &err), "%s", err.msg);
        const char *prompts[2] = {"a", "b"};
        char *texts[2] = {NULL, NULL};
        fl_completion_params p = {.max_tokens = 4, .top_p = 1, .seed = -1};
        double t0 = tu_now_s();
        int rc = fl_endpoint_complete(&ep, prompts, 2, &p, texts, NULL, NULL, &err);
        CHECK(rc == cases[i].code && strstr(err.msg, cases[i].expect) &&
                  strstr(err.msg, "127.0.0.1") && !strchr(err.msg, '\n'),
              "case %zu: rc %d '%s', expected %d '%s'", i, rc, err.msg, cases[i].code,
              cases[i].expect);
        CHECK(texts[0] == NULL && texts[1] == NULL, "case %zu set texts on error", i);
        CHECK(tu_now_s() - t0 < 5, "case %zu took %.1f s with a 0.5 s timeout", i, tu_now_s() - t0);
        
        fake_stop(&f);
    }
    fl_endpoint ep;
    fl_err err = {0};
    CHECK(fl_endpoint_init(&ep, "ftp://x/v1", NULL, NULL, 1, &err) == FL_EINPUT, "ftp accepted");
    CHECK(fl_endpoint_init(&ep, "http://127.0.0.1:1/v1", NULL, NULL, 1, &err) == 0, "%s", err.msg);
    const char *one = "a";
    char *text = NULL;
    fl_completion_params p = {.max_tokens = 4, .top_p = 1, .seed = -1};
    int rc = fl_endpoint_complete(&ep, &one, 1, &p, &text, NULL, NULL, &err);
    CHECK(rc == FL_EIO && strstr(err.msg, "127.0.0.1:1"), "closed port: rc %d '%s'", rc, err.msg);
}

int main(void) {
    fl_tokenizer *tok = NULL;
    fl_err err = {0};
    CHECK(!fl_tokenizer_load(&tok, GPT2_TOK, &err), "%s", err.msg);
    if (!tok) return tu_finish("test_inferdpt");
    fl_dpt_kit kit;
    if (!make_kit(&kit, tok, 16, 4, 15, 64)) {
        check_kit_shape(&kit, tok);
        check_text(&kit, tok);
        check_file(&kit);
        fl_dpt_kit_free(&kit);
    }
    fl_dpt_kit small; /* the 4-letter words: a few hundred outcomes */
    if (!make_kit(&small, tok, 16, 4, 4, 8)) {
        printf("distribution kit: %d tokens, k %d\n", small.n, small.k);
        check_distribution(&small, 1.0);
        check_distribution(&small, 6.0);
        check_distribution(&small, 30.0);
        fl_dpt_kit_free(&small);
    }
    check_stored_vs_full(tok);
    fl_dpt_kit_options none = {20, 30, 8};
    int rows = fl_tokenizer_vocab_size(tok);
    float *e = clustered_embeddings(rows, 4, 1);
    int rc = fl_dpt_kit_build(&kit, tok, e, rows, 4, &none, "m", &err);
    CHECK(rc == FL_EINPUT && strstr(err.msg, "no whole-word token"), "rc %d '%s'", rc, err.msg);
    rc = fl_dpt_kit_build(&kit, tok, e, rows - 1, 4, &none, "m", &err);
    CHECK(rc == FL_EINPUT && strstr(err.msg, "rows"), "rc %d '%s'", rc, err.msg);
    free(e);
    check_templates();
    check_endpoint();
    fl_tokenizer_free(tok);
    return tu_finish("test_inferdpt");
}
