/* generate.h — choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus)
 * and repetition penalty, reproducible from a seed (Philox: draw i of seed s is the same on every
 * machine). fl_model_decode (model.h) supplies the logits. */
#ifndef FEDLLM_GENERATE_H
#define FEDLLM_GENERATE_H

#include <stdint.h>

typedef struct fl_sampling {
    float temperature;        /* 0: greedy (argmax); otherwise logits / temperature */
    int top_k;                /* keep the k most likely tokens; 0: all */
    float top_p;              /* keep the smallest set whose probability reaches p; 1: all */
    float repetition_penalty; /* > 1 discourages tokens already in the history (as transformers
                                 does: positive logits divided, negative multiplied); 1: off */
    uint64_t seed;
} fl_sampling;

/* The defaults of `fedllm generate`: temperature 0.8, top_k 0, top_p 0.95, penalty 1, seed 0. */
fl_sampling fl_sampling_defaults(void);

/* Picks a token from logits (V values, modified in place); history (n_history tokens, may be
 * NULL) feeds the repetition penalty; `draw` numbers the random draw (the token's position), so a
 * run is reproducible from its seed. Cannot fail. */
int fl_sample(float *logits, int V, const fl_sampling *sampling, const int32_t *history,
              int n_history, uint64_t draw);

#endif
