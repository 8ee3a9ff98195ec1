/* rope.c — rotary position embedding in Hugging Face LLaMA's rotate_half layout: within a head of
 * HD values, value i pairs with value i + HD/2 and the pair turns by angle t * inv_freq[i]. The
 * frequencies come from the model (fl_rope_frequencies: the default rope or a scaling); the angle
 * is a float product, as in HF, so tables match theirs. */
#include <math.h>

#include "kernels/kernels.h"

void fl_rope_table(float *cos_table, float *sin_table, int first, int count, const float *inv_freq,
                   int half, float scale) {
    for (int t = first; t < first + count; t++)
        for (int i = 0; i < half; i++) {
            float angle = (float)t * inv_freq[i];
            cos_table[(size_t)t * half + i] = (float)cos((double)angle) * scale;
            sin_table[(size_t)t * half + i] = (float)sin((double)angle) * scale;
        }
}

/* Turns each (i, i + half) pair of the heads of every row by +angle (sign 1) or -angle (-1). */
static void rope_rotate(float *x, int ld, const float *cos_table, const float *sin_table, int N,
                        int T, int n_heads, int HD, float sign) {
    int half = HD / 2;
#pragma omp parallel for
    for (int r = 0; r < N; r++) {
        const float *restrict c = cos_table + (size_t)(r % T) * half;
        const float *restrict s = sin_table + (size_t)(r % T) * half;
        for (int h = 0; h < n_heads; h++) {
            float *restrict lo = x + (size_t)r * ld + (size_t)h * HD;
            float *restrict hi = lo + half;
            for (int i = 0; i < half; i++) {
                float a = lo[i], b = hi[i], si = sign * s[i];
                lo[i] = a * c[i] - b * si;
                hi[i] = b * c[i] + a * si;
            }
        }
    }
}

void fl_rope_forward(float *x, int ld, const float *cos_table, const float *sin_table, int N, int T,
                     int n_heads, int HD) {
    rope_rotate(x, ld, cos_table, sin_table, N, T, n_heads, HD, 1.0f);
}

void fl_rope_backward(float *dx, int ld, const float *cos_table, const float *sin_table, int N,
                      int T, int n_heads, int HD) {
    rope_rotate(dx, ld, cos_table, sin_table, N, T, n_heads, HD, -1.0f);
}
