/* sample.c — the next token from logits: repetition penalty, then greedy or temperature with top-k
 * and top-p (as transformers orders them), with the random number drawn from Philox(seed, draw). */
#include <math.h>
#include <stdlib.h>

#include "fedllm/generate.h"
#include "fedllm/rng.h"

fl_sampling fl_sampling_defaults(void) {
    return (fl_sampling){
        .temperature = 0.8f, .top_k = 0, .top_p = 0.95f, .repetition_penalty = 1.0f, .seed = 0};
}

typedef struct candidate {
    float prob;
    int id;
} candidate;

static int by_prob_desc(const void *a, const void *b) {
    float pa = ((const candidate *)a)->prob, pb = ((const candidate *)b)->prob;
    return pa < pb ? 1 : pa > pb ? -1 : ((const candidate *)a)->id - ((const candidate *)b)->id;
}

static void penalise(float *logits, int V, float penalty, const int32_t *history, int n_history) {
    unsigned char *done = calloc((size_t)V, 1);
    for (int i = 0; i < n_history; i++) {
        int t = history[i];
        if (t < 0 || t >= V || (done && done[t])) continue;
        if (done) done[t] = 1;
        logits[t] = logits[t] > 0 ? logits[t] / penalty : logits[t] * penalty;
    }
    free(done);
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int fl_sample(float *logits, int V, const fl_sampling *s, const int32_t *history, int n_history,
              uint64_t draw) {
    if (s->repetition_penalty > 0 && s->repetition_penalty != 1.0f && history)
        penalise(logits, V, s->repetition_penalty, history, n_history);
    int best = argmax(logits, V);
    if (!(s->temperature > 0)) return best;
    candidate *c = malloc((size_t)V * sizeof *c);
    if (!c) return best; /* no memory for sampling: fall back to greedy */
    double sum = 0;
    for (int i = 0; i < V; i++) {
        c[i].prob = expf((logits[i] - logits[best]) / s->temperature);
        c[i].id = i;
        sum += c[i].prob;
    }
    qsort(c, (size_t)V, sizeof *c, by_prob_desc);
    int keep = s->top_k > 0 && s->top_k < V ? s->top_k : V;
    if (s->top_p < 1.0f) { /* the smallest prefix whose mass reaches top_p, at least one token */
        double mass = 0, need = s->top_p * sum;
        int n = 0;
        while (n < keep && (n == 0 || mass < need))
            mass += c[n++].prob;
        keep = n;
    }
    double kept = 0;
    for (int i = 0; i < keep; i++)
        kept += c[i].prob;
    double u = fl_rng_uniform_at(s->seed, 0, (size_t)draw) * kept, acc = 0;
    int token = c[keep - 1].id;
    for (int i = 0; i < keep; i++) {
        acc += c[i].prob;
        if (u < acc) {
            token = c[i].id;
            break;
        }
    }
    free(c);
    return token;
}
