/* embedding.c — token (and, for GPT-2, learned position) embeddings. Forward gathers rows; backward
 * scatters them back, where one vocabulary row may receive many tokens: threads own disjoint
 * channel blocks and walk all rows in order, so there are no races and no atomics. */
#include "kernels/cpu/parallel.h"
#include "kernels/kernels.h"

enum { EMBED_CHANNEL_BLOCK = 64 }; /* channels one thread owns in backward */

void fl_embedding_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe,
                          int N, int T, int C) {
#pragma omp parallel for if (FL_PAR_WORTH((double)N * C))
    for (int r = 0; r < N; r++) {
        float *restrict out_row = out + (size_t)r * C;
        const float *restrict tok_row = wte + (size_t)tokens[r] * C;
        if (wpe) {
            const float *restrict pos_row = wpe + (size_t)(r % T) * C;
            for (int c = 0; c < C; c++)
                out_row[c] = tok_row[c] + pos_row[c];
        } else {
            for (int c = 0; c < C; c++)
                out_row[c] = tok_row[c];
        }
    }
}

void fl_embedding_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
                           int N, int T, int C) {
    int n_blocks = (C + EMBED_CHANNEL_BLOCK - 1) / EMBED_CHANNEL_BLOCK;
#pragma omp parallel for if (FL_PAR_WORTH((double)N * C))
    for (int block = 0; block < n_blocks; block++) {
        int c0 = block * EMBED_CHANNEL_BLOCK;
        int width = c0 + EMBED_CHANNEL_BLOCK < C ? EMBED_CHANNEL_BLOCK : C - c0;
        for (int r = 0; r < N; r++) {
            const float *restrict g = dout + (size_t)r * C + c0;
            if (dwte) {
                float *restrict dtok = dwte + (size_t)tokens[r] * C + c0;
                for (int c = 0; c < width; c++)
                    dtok[c] += g[c];
            }
            if (dwpe) {
                float *restrict dpos = dwpe + (size_t)(r % T) * C + c0;
                for (int c = 0; c < width; c++)
                    dpos[c] += g[c];
            }
        }
    }
}
