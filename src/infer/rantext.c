/* rantext.c — InferDPT's RANTEXT perturbation of text with a kit (include/fedllm/inferdpt.h).
 *
 * Random numbers: token at position pos of document doc uses Philox(seed, counter) for counters
 * from ((doc << 20 | pos) << 24): dim/2 + 1 of them give its Laplace noise (two doubles each),
 * one more the exponential mechanism's draw. So documents up to 2^20 tokens and dims up to 2^24
 * never share a counter, and a document's perturbation does not depend on the others. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/inferdpt.h"
#include "fedllm/rng.h"

enum { MAX_DOC_TOKENS = 1 << 20 };

/* Two doubles in (0, 1) from one Philox block (53 bits each). */
static void uniform2(uint64_t seed, uint64_t counter, double out[2]) {
    uint32_t x[4];
    fl_philox(seed, counter, x);
    for (int i = 0; i < 2; i++) {
        uint64_t bits = ((uint64_t)x[2 * i] << 21) ^ (uint64_t)x[2 * i + 1];
        bits &= (1ull << 53) - 1;
        out[i] = ((double)bits + 0.5) / 9007199254740992.0;
    }
}

/* The random threshold: cos(e, e + n), n_d ~ Laplace(0, Δf_d / (ε/2)). */
static double noisy_similarity(const fl_dpt_kit *kit, int i, double epsilon, uint64_t seed,
                               uint64_t counter) {
    const float *e = kit->emb + (size_t)i * kit->dim;
    double dot = 0, ee = 0, nn = 0, u[2];
    for (int d = 0; d < kit->dim; d++) {
        if (d % 2 == 0) uniform2(seed, counter + (uint64_t)(d / 2), u);
        double c = u[d % 2] - 0.5; /* in (-0.5, 0.5) */
        double scale = kit->delta_f[d] / (0.5 * epsilon);
        double noise = c < 0 ? scale * log1p(2 * c) : -scale * log1p(-2 * c);
        double v = e[d] + noise;
        dot += (double)e[d] * v;
        ee += (double)e[d] * e[d];
        nn += v * v;
    }
    if (ee == 0 || nn == 0) return 1.0;
    double s = dot / sqrt(ee * nn);
    return s > 1.0 ? 1.0 : s;
}

/* How many leading entries of the non-increasing sims[0..k) are >= t. */
static int count_at_least(const float *sims, int k, double t) {
    int lo = 0, hi = k;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if ((double)sims[mid] >= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Draws from candidates[0..count) (kit indices, their similarities sims) with weights
 * exp(ε/2 · (sim_j − 1)) (every sim <= 1, so nothing overflows) and the uniform u. */
static int draw_exponential(const float *sims, const int32_t *candidates, int count, double epsilon,
                            double u) {
    double total = 0;
    for (int j = 0; j < count; j++)
        total += exp(0.5 * epsilon * ((double)sims[j] - 1.0));
    double target = u * total, acc = 0;
    for (int j = 0; j < count; j++) {
        acc += exp(0.5 * epsilon * ((double)sims[j] - 1.0));
        if (acc > target) return candidates[j];
    }
    return candidates[count - 1];
}

/* row[j] = unit_i · unit_j for every kit token, on this thread (a fixed summation order, so the
 * same bits on every machine running this binary). */
static void row_similarities(const fl_dpt_kit *kit, int i, float *row) {
    const size_t D = (size_t)kit->dim;
    const float *a = kit->unit + (size_t)i * D;
    for (int j = 0; j < kit->n; j++) {
        const float *b = kit->unit + (size_t)j * D;
        float acc[8] = {0};
        size_t d = 0;
        for (; d + 8 <= D; d += 8)
            for (int l = 0; l < 8; l++)
                acc[l] += a[d + l] * b[d + l];
        float sum = 0;
        for (; d < D; d++)
            sum += a[d] * b[d];
        for (int l = 0; l < 8; l++)
            sum += acc[l];
        row[j] = sum;
    }
}

static int by_sim_desc(const void *a, const void *b) {
    const fl_dpt_pair *x = a, *y = b;
    if (x->sim != y->sim) return x->sim > y->sim ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* Token i's whole row, sorted as kit.c sorts the stored lists: itself first (similarity 1),
 * then by similarity, then by index. row is scratch of n floats. */
static void sorted_row(const fl_dpt_kit *kit, int i, float *row, fl_dpt_pair *out) {
    row_similarities(kit, i, row);
    int n = 0;
    out[n++] = (fl_dpt_pair){1.0f, i};
    for (int j = 0; j < kit->n; j++)
        if (j != i) out[n++] = (fl_dpt_pair){row[j] > 1.0f ? 1.0f : row[j], j};
    qsort(out + 1, (size_t)n - 1, sizeof *out, by_sim_desc);
}

/* The draw over the leading entries of a sorted row with similarity >= threshold. */
static int draw_from_row(const fl_dpt_pair *p, int n, double threshold, double epsilon, double u) {
    int lo = 1, hi = n; /* p[0], the token itself, is always a candidate */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if ((double)p[mid].sim >= threshold)
            lo = mid + 1;
        else
            hi = mid;
    }
    double total = 0;
    for (int j = 0; j < lo; j++)
        total += exp(0.5 * epsilon * ((double)p[j].sim - 1.0));
    double target = u * total, acc = 0;
    for (int j = 0; j < lo; j++) {
        acc += exp(0.5 * epsilon * ((double)p[j].sim - 1.0));
        if (acc > target) return p[j].idx;
    }
    return p[lo - 1].idx;
}

/* ---- the cache of whole rows -------------------------------------------------------------- */

/* Whole rows cost N·D multiply-adds and a sort; text repeats its words (Zipf), so the rows of
 * the tokens seen last are kept, evicted by the clock (second-chance) rule. */
struct fl_dpt_rows {
    pthread_mutex_t mu;
    int n, capacity, hand;
    int32_t *slot_of;  /* (n) cache slot of each kit token, -1 */
    int32_t *owner;    /* (capacity) kit token of each slot, -1 */
    uint8_t *used;     /* (capacity) the clock's reference bits */
    fl_dpt_pair *rows; /* (capacity, n) */
    float *scratch;    /* (n) */
};

fl_dpt_rows *fl_dpt_rows_new(int n, size_t budget_bytes) {
    size_t row_bytes = (size_t)n * sizeof(fl_dpt_pair);
    size_t capacity = budget_bytes / row_bytes;
    if (capacity > (size_t)n) capacity = (size_t)n;
    if (capacity == 0) return NULL;
    fl_dpt_rows *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->n = n, c->capacity = (int)capacity;
    c->slot_of = malloc((size_t)n * sizeof *c->slot_of);
    c->owner = malloc(capacity * sizeof *c->owner);
    c->used = calloc(capacity, 1);
    c->rows = malloc(capacity * row_bytes);
    c->scratch = malloc((size_t)n * sizeof *c->scratch);
    if (!c->slot_of || !c->owner || !c->used || !c->rows || !c->scratch) {
        fl_dpt_rows_free(c);
        return NULL;
    }
    for (int i = 0; i < n; i++)
        c->slot_of[i] = -1;
    for (size_t s = 0; s < capacity; s++)
        c->owner[s] = -1;
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void fl_dpt_rows_free(fl_dpt_rows *c) {
    if (!c) return;
    if (c->slot_of && c->owner && c->used && c->rows && c->scratch) pthread_mutex_destroy(&c->mu);
    free(c->slot_of), free(c->owner), free(c->used), free(c->rows), free(c->scratch);
    free(c);
}

/* Token i's sorted row in the cache (computed on a miss); call with c->mu held. */
static const fl_dpt_pair *cached_row(const fl_dpt_kit *kit, fl_dpt_rows *c, int i) {
    int s = c->slot_of[i];
    if (s < 0) {
        while (c->used[c->hand])
            c->used[c->hand] = 0, c->hand = (c->hand + 1) % c->capacity;
        s = c->hand;
        c->hand = (c->hand + 1) % c->capacity;
        if (c->owner[s] >= 0) c->slot_of[c->owner[s]] = -1;
        c->owner[s] = i;
        c->slot_of[i] = s;
        sorted_row(kit, i, c->scratch, c->rows + (size_t)s * c->n);
    }
    c->used[s] = 1;
    return c->rows + (size_t)s * c->n;
}

int fl_dpt_perturb_token(const fl_dpt_kit *kit, int i, double epsilon, uint64_t seed,
                         uint64_t counter, float *row, fl_dpt_pair *scratch, int *full_row) {
    *full_row = 0;
    if (isinf(epsilon)) return i;
    double threshold = noisy_similarity(kit, i, epsilon, seed, counter);
    double u[2];
    uniform2(seed, counter + (uint64_t)(kit->dim / 2 + 1), u);
    const float *sims = kit->nb_sim + (size_t)i * kit->k;
    const int32_t *idx = kit->nb_idx + (size_t)i * kit->k;
    int count = count_at_least(sims, kit->k, threshold);
    if (count < kit->k || kit->k == kit->n)
        return draw_exponential(sims, idx, count, epsilon, u[0]);
    /* The threshold is below the K-th stored similarity: the whole row, from the unit
     * embeddings, in the stored lists' order (cached when the kit has a row cache). */
    *full_row = 1;
    fl_dpt_rows *c = kit->rows;
    if (!c) {
        sorted_row(kit, i, row, scratch);
        return draw_from_row(scratch, kit->n, threshold, epsilon, u[0]);
    }
    pthread_mutex_lock(&c->mu);
    int chosen = draw_from_row(cached_row(kit, c, i), kit->n, threshold, epsilon, u[0]);
    pthread_mutex_unlock(&c->mu);
    return chosen;
}

int fl_dpt_perturb_ids(const fl_dpt_kit *kit, int32_t *ids, size_t n, double epsilon, uint64_t seed,
                       uint64_t doc, fl_dpt_stats *stats, fl_err *err) {
    if (n > MAX_DOC_TOKENS)
        return fl_err_set(err, FL_EINPUT, "inferdpt: a document of %zu tokens (at most %d)", n,
                          MAX_DOC_TOKENS);
    float *row = NULL;
    fl_dpt_pair *scratch = NULL;
    fl_dpt_stats s = {0};
    for (size_t p = 0; p < n; p++) {
        s.tokens++;
        int i = ids[p] >= 0 && ids[p] < kit->vocab ? kit->slot[ids[p]] : -1;
        if (i < 0) continue;
        s.in_kit++;
        if (!row) {
            row = malloc((size_t)kit->n * sizeof *row);
            scratch = malloc((size_t)kit->n * sizeof *scratch);
            if (!row || !scratch) {
                free(row), free(scratch);
                return fl_err_set(err, FL_ENOMEM, "out of memory perturbing a document");
            }
        }
        uint64_t counter = ((doc << 20) | (uint64_t)p) << 24;
        int full = 0;
        int j = fl_dpt_perturb_token(kit, i, epsilon, seed, counter, row, scratch, &full);
        s.full_rows += full;
        if (j != i) s.replaced++, ids[p] = kit->ids[j];
    }
    free(row);
    free(scratch);
    if (stats) {
        stats->tokens += s.tokens, stats->in_kit += s.in_kit;
        stats->replaced += s.replaced, stats->full_rows += s.full_rows;
    }
    return FL_OK;
}

int fl_dpt_perturb_text(const fl_dpt_kit *kit, fl_tokenizer *tok, const char *text, size_t len,
                        double epsilon, uint64_t seed, uint64_t doc, fl_str *out,
                        fl_dpt_stats *stats, fl_err *err) {
    fl_ids ids = {0};
    int rc = fl_tokenizer_encode(tok, text, len, &ids, err);
    if (!rc) rc = fl_dpt_perturb_ids(kit, ids.v, ids.n, epsilon, seed, doc, stats, err);
    if (!rc && ids.n) rc = fl_tokenizer_decode(tok, ids.v, ids.n, 0, out, err);
    if (!rc && !out->s) rc = fl_str_append(out, "", 0, err);
    fl_ids_free(&ids);
    return rc;
}
