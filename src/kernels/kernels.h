/* kernels.h — every numeric op of the engine, forward and backward, declared once.
 *
 * kernels/cpu/ implements these for the CPU (one op family per file, OpenMP inside); a CUDA backend
 * will implement the same declarations. The model code in src/model/ calls only these.
 *
 * Shape legend (all row-major, fp32 unless said):
 *   B batch, T time (sequence length), C channels (d_model), V vocab, NH query heads,
 *   NKV key/value heads (NH % NKV == 0), HD head dim, F ffn dim, N = B*T rows.
 * A "row stride" argument (ld*) is the distance in floats between consecutive rows, so that a
 * kernel can work on a column slice of a wider buffer (q, k and v live side by side in one
 * (N, (NH + 2*NKV)*HD) buffer).
 *
 * Gradient convention (as in llm.c): every backward function ADDS into every gradient it writes,
 * activations and parameters alike; the caller zeroes buffers first. A NULL gradient pointer means
 * "not needed" and that part of the work is skipped. Forward functions overwrite their outputs.
 * None of these functions can fail; shapes are the caller's contract. */
#ifndef FEDLLM_KERNELS_H
#define FEDLLM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* ---- GEMM layer: owns precision. --------------------------------------------------------------
 * C(m,n) = alpha * op(A) op(B) + beta * C, row-major; op(X) = X^T when trans_x is nonzero.
 * A is (m,k) or, transposed, (k,m) with row stride lda; likewise B, C. Under FL_PREC_BF16 the
 * inputs are rounded to bf16 and products accumulate in fp32 (AVX512-BF16 where the CPU has it).
 * Safe to call from inside an OpenMP parallel region (then runs on the calling thread). */
typedef enum { FL_PREC_F32 = 0, FL_PREC_BF16 = 1 } fl_precision;
void fl_gemm_set_precision(fl_precision precision);
fl_precision fl_gemm_precision(void);
void fl_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
             const float *b, int ldb, float beta, float *c, int ldc);

/* ---- Linear ---------------------------------------------------------------------------------
 * out[:, 0:OC] (row stride ldo) = in (N, IC; row stride ldi) @ W^T + bias.
 * W is (OC, IC) as in torch.nn.Linear, or (IC, OC) when w_in_out is nonzero (GPT-2's Conv1D).
 * bias may be NULL. */
void fl_linear_forward(float *out, int ldo, const float *in, int ldi, const float *weight,
                       const float *bias, int N, int IC, int OC, int w_in_out);
/* din += dout @ W;  dweight += dout^T @ in (in W's own layout);  dbias += column sums of dout. */
void fl_linear_backward(float *din, int ldi_grad, float *dweight, float *dbias, const float *dout,
                        int ldo, const float *in, int ldi, const float *weight, int N, int IC,
                        int OC, int w_in_out);

/* ---- Embeddings -----------------------------------------------------------------------------
 * out (N, C) = wte[tokens[i]] (+ wpe[i % T] when wpe is not NULL). tokens are in [0, V). */
void fl_embedding_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe,
                          int N, int T, int C);
void fl_embedding_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
                           int N, int T, int C);

/* ---- Norms ----------------------------------------------------------------------------------
 * LayerNorm: out = (in - mean) * rstd * weight + bias; mean and rstd (N) are saved for backward.
 * RMSNorm (LLaMA): out = in * rstd * weight, rstd = 1/sqrt(mean(in^2) + eps). */
void fl_layernorm_forward(float *out, float *mean, float *rstd, const float *in,
                          const float *weight, const float *bias, int N, int C, float eps);
void fl_layernorm_backward(float *din, float *dweight, float *dbias, const float *dout,
                           const float *in, const float *weight, const float *mean,
                           const float *rstd, int N, int C);
void fl_rmsnorm_forward(float *out, float *rstd, const float *in, const float *weight, int N, int C,
                        float eps);
void fl_rmsnorm_backward(float *din, float *dweight, const float *dout, const float *in,
                         const float *weight, const float *rstd, int N, int C);

/* ---- Activations (elementwise over n values) --------------------------------------------------
 * GELU with the tanh approximation (GPT-2's gelu_new). SwiGLU: out = silu(gate) * up. */
void fl_gelu_forward(float *out, const float *in, size_t n);
void fl_gelu_backward(float *din, const float *dout, const float *in, size_t n);
void fl_swiglu_forward(float *out, const float *gate, const float *up, size_t n);
void fl_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                        const float *up, size_t n);

/* ---- Rotary position embedding (HF LLaMA convention: rotate_half, pairs (i, i + HD/2)) --------
 * fl_rope_table fills rows first .. first+count-1 of cos and sin, each (positions, half = HD/2):
 * cos(t * inv_freq[i]) * scale and sin(...) * scale, the angle a float product and the scale
 * applied after rounding, as transformers computes them (scale is YaRN's attention factor, else 1).
 * fl_rope_forward rotates, in place, n_heads heads of HD values at the start of each row of x
 * (row stride ld); row r has position r % T. fl_rope_backward applies the inverse rotation to a
 * gradient in place (d x_before = R^T d x_after), so it overwrites rather than accumulates. */
void fl_rope_table(float *cos_table, float *sin_table, int first, int count, const float *inv_freq,
                   int half, float scale);
void fl_rope_forward(float *x, int ld, const float *cos_table, const float *sin_table, int N, int T,
                     int n_heads, int HD);
void fl_rope_backward(float *dx, int ld, const float *cos_table, const float *sin_table, int N,
                      int T, int n_heads, int HD);

/* ---- Causal self-attention with grouped-query heads --------------------------------------------
 * q (N, NH*HD; stride ldq), k and v (N, NKV*HD; strides ldk, ldv); query head h reads kv head
 * h / (NH/NKV). Scores are scaled by 1/sqrt(HD), masked causally, softmaxed. out (N, NH*HD;
 * stride ldo). probs (B, NH, T, T) receives the softmax for backward; it may be NULL for
 * forward-only passes. scratch must hold fl_attention_scratch_floats(T) floats per OpenMP thread
 * (omp_get_max_threads() of them). */
size_t fl_attention_scratch_floats(int T);
void fl_attention_forward(float *out, int ldo, float *probs, const float *q, int ldq,
                          const float *k, int ldk, const float *v, int ldv, float *scratch, int B,
                          int T, int NH, int NKV, int HD);
/* dq, dk, dv accumulate (same strides as q, k, v). */
void fl_attention_backward(float *dq, float *dk, float *dv, const float *dout, int ldo,
                           const float *probs, const float *q, int ldq, const float *k, int ldk,
                           const float *v, int ldv, float *scratch, int B, int T, int NH, int NKV,
                           int HD);

/* Attention of n new positions per row over a key/value cache (decoding). q (B*n rows, stride
 * ldq, NH*HD values) holds positions past .. past+n-1 of each row; k_cache and v_cache are
 * (B, cache_T, NKV*HD) and already hold positions 0 .. past+n-1. New position past+t attends to
 * cached positions key_start[b] .. past+t (key_start NULL: from 0; the positions before it are
 * row b's left padding); a position with nothing to attend to gets zeros. out (B*n, NH*HD; stride
 * ldo). scratch as for fl_attention_forward with T = cache_T. */
void fl_attention_cached_forward(float *out, int ldo, const float *q, int ldq, const float *k_cache,
                                 const float *v_cache, int cache_T, float *scratch, int B, int n,
                                 int past, const int *key_start, int NH, int NKV, int HD);
/* Attention of one new position per row over independent cache slots (continuous batching): row
 * r's query (stride ldq) is position past[r] of slot slot[r], whose keys and values (slot s at
 * k_cache + s cache_T NKV HD) already hold positions 0 .. past[r]; it attends to all of them.
 * Each row computes exactly what fl_attention_cached_forward computes for that slot alone with
 * B = 1, n = 1. out (rows, NH*HD; stride ldo). */
void fl_attention_slots_forward(float *out, int ldo, const float *q, int ldq, const float *k_cache,
                                const float *v_cache, int cache_T, float *scratch, int rows,
                                const int *slot, const int *past, int NH, int NKV, int HD);

/* ---- Cross-entropy over the vocabulary --------------------------------------------------------
 * For each of N rows of logits (row stride V) with target in [0,V) or -100 (ignored):
 * losses[i] = logsumexp(row) - row[target] (0 for ignored rows). Returns the sum over counted
 * rows. losses may be NULL.
 * Backward writes dlogits = scale * (softmax(row) - onehot(target)) (0 for ignored rows);
 * dlogits may be the logits buffer itself (in place). Unlike the rest, this overwrites. */
double fl_cross_entropy_forward(float *losses, const float *logits, const int32_t *targets, int N,
                                int V);
void fl_cross_entropy_backward(float *dlogits, const float *logits, const int32_t *targets, int N,
                               int V, float scale);

/* ---- Buffers ----------------------------------------------------------------------------------
 * y += alpha * x;  x *= alpha;  sum of squares (double accumulation). */
void fl_axpy(float *y, const float *x, float alpha, size_t n);
void fl_scale(float *x, float alpha, size_t n);
double fl_sumsq(const float *x, size_t n);
/* The index of the first NaN or infinity among x[0..n), or n when every value is finite. One
 * vectorised pass over the buffer, split over the threads (a load-time check of whole weight slabs:
 * it reads at memory bandwidth). */
size_t fl_first_nonfinite(const float *x, size_t n);

/* ---- AdamW (decoupled weight decay, as torch.optim.AdamW) --------------------------------------
 * step is 1-based (bias correction uses it). For each i:
 *   p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *   p -= lr * (m / (1-b1^step)) / (sqrt(v / (1-b2^step)) + eps). */
void fl_adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                     float beta1, float beta2, float eps, float weight_decay, int step);

#endif
