/* test_generate.c — decoding with the key/value cache equals recomputing the whole sequence, for
 * every family, with and without LoRA, for a prompt then single tokens; a decode that does not fit
 * is refused and leaves the cache as it was; left-padded prompts of different lengths decode as
 * each alone; continuous batching (slots that sequences join and leave) decodes each as alone;
 * and sampling is what its options say. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/generate.h"
#include "fedllm/model.h"
#include "fedllm/rng.h"
#include "testutil.h"

enum { B = 2, T = 12, PROMPT = 5, V = 48 };

static void check_cache(fl_arch arch, int with_lora) {
    fl_err err;
    fl_config c = tu_config(arch, V, 16, 4, 24, 16, arch != FL_ARCH_LLAMA);
    fl_model *m = fl_model_new_random(&c, 3, &err);
    fl_rng_normal(fl_model_params(m)->data, fl_model_params(m)->numel, 8, 0, 0.2f);
    if (with_lora) {
        fl_lora_spec spec = {.rank = 2,
                             .alpha = 4,
                             .role_mask =
                                 0x7Fu & ~(arch == FL_ARCH_GPT2 ? 1u << FL_ROLE_MLP_GATE : 0)};
        CHECK(fl_model_add_lora(m, &spec, &err) == 0, "%s", err.msg);
        fl_rng_normal(fl_model_trainable(m)->data, fl_model_trainable(m)->numel, 9, 0, 0.2f);
    }
    int32_t tokens[B * T];
    for (int i = 0; i < B * T; i++)
        tokens[i] = (int32_t)(fl_rng_uniform_at(1, 0, (size_t)i) * V);
    fl_pass_result r;
    CHECK(fl_model_forward(m, tokens, NULL, B, T, FL_PASS_LOGITS, 0, &r, &err) == 0, "%s", err.msg);
    float *full = malloc(sizeof(float) * B * T * V);
    memcpy(full, r.logits, sizeof(float) * B * T * V);

    fl_kv_cache *kc = fl_kv_cache_new(m, B, T, &err);
    CHECK(kc != NULL, "%s", err.msg);
    float logits[B * V], want[B * V];
    int32_t step[B * T];
    double worst = 0;
    for (int pos = 0; pos < T;) {
        int n = pos == 0 ? PROMPT : 1; /* the prompt at once, then token by token */
        for (int b = 0; b < B; b++)
            memcpy(step + b * n, tokens + b * T + pos, sizeof(int32_t) * n);
        CHECK(fl_model_decode(m, kc, step, n, logits, &err) == 0, "%s", err.msg);
        pos += n;
        for (int b = 0; b < B; b++)
            memcpy(want + b * V, full + ((size_t)b * T + pos - 1) * V, sizeof(float) * V);
        /* The same sums in other orders (one row against B T rows: another BLAS kernel). */
        double depth = tu_depth_forward(&c, T) + (with_lora ? tu_depth_lora(&c, 2) : 0);
        double d = tu_rounding_excess(logits, want, B * V, depth);
        if (!(d <= worst)) worst = isnan(d) ? INFINITY : d;
    }
    CHECK(worst <= 1, "%s%s: cached decoding differs from recomputation by %.3g of the fp32 bound",
          fl_arch_name(arch), with_lora ? "+lora" : "", worst);
    CHECK(fl_kv_cache_length(kc) == T, "cache length %d", fl_kv_cache_length(kc));
    CHECK(fl_model_decode(m, kc, step, 1, logits, &err) == FL_EINPUT, "decode past the cache");
    CHECK(fl_kv_cache_length(kc) == T, "a refused decode changed the cache");
    fl_kv_cache_reset(kc);
    CHECK(fl_model_decode(m, kc, tokens, 1, logits, &err) == 0 && fl_kv_cache_length(kc) == 1,
          "decode after reset");
    fl_kv_cache_free(kc);
    free(full);
    fl_model_free(m);
}

/* Prompts of different lengths, left-padded in one batch, decode exactly as each alone. */
static void check_padding(fl_arch arch) {
    enum { ROWS = 3, STEPS = 4, LONGEST = 9 };
    const int lengths[ROWS] = {5, 9, 2};
    fl_err err;
    fl_config c = tu_config(arch, V, 16, 4, 24, 16, arch != FL_ARCH_LLAMA);
    fl_model *m = fl_model_new_random(&c, 5, &err);
    fl_rng_normal(fl_model_params(m)->data, fl_model_params(m)->numel, 11, 0, 0.2f);
    int32_t seq[ROWS][LONGEST + STEPS];
    for (int b = 0; b < ROWS; b++)
        for (int t = 0; t < LONGEST + STEPS; t++)
            seq[b][t] = (int32_t)(fl_rng_uniform_at(2, (uint64_t)b, (size_t)t) * V);
    /* each row alone: logits after its prompt and after each further token */
    float alone[ROWS][STEPS + 1][V];
    fl_kv_cache *one = fl_kv_cache_new(m, 1, LONGEST + STEPS, &err);
    for (int b = 0; b < ROWS; b++) {
        fl_kv_cache_reset(one);
        CHECK(fl_model_decode(m, one, seq[b], lengths[b], alone[b][0], &err) == 0, "%s", err.msg);
        for (int s = 1; s <= STEPS; s++)
            fl_model_decode(m, one, &seq[b][lengths[b] + s - 1], 1, alone[b][s], &err);
    }
    fl_kv_cache *kc = fl_kv_cache_new(m, ROWS, LONGEST + STEPS, &err);
    int pad[ROWS];
    int32_t prompt[ROWS * LONGEST], step[ROWS];
    for (int b = 0; b < ROWS; b++) {
        pad[b] = LONGEST - lengths[b];
        for (int t = 0; t < LONGEST; t++)
            prompt[b * LONGEST + t] = t < pad[b] ? 7 : seq[b][t - pad[b]];
    }
    CHECK(fl_kv_cache_set_padding(kc, pad, &err) == 0, "%s", err.msg);
    float logits[ROWS * V];
    double worst = 0;
    CHECK(fl_model_decode(m, kc, prompt, LONGEST, logits, &err) == 0, "%s", err.msg);
    for (int s = 0; s <= STEPS; s++) {
        if (s > 0) {
            for (int b = 0; b < ROWS; b++)
                step[b] = seq[b][lengths[b] + s - 1];
            fl_model_decode(m, kc, step, 1, logits, &err);
        }
        for (int b = 0; b < ROWS; b++) {
            double d = tu_rounding_excess(logits + b * V, alone[b][s], V,
                                          tu_depth_forward(&c, LONGEST + STEPS));
            if (!(d <= worst)) worst = isnan(d) ? INFINITY : d;
        }
    }
    CHECK(worst <= 1, "%s: padded batch differs from single rows by %.3g of the fp32 bound",
          fl_arch_name(arch), worst);
    CHECK(fl_kv_cache_set_padding(kc, pad, &err) == FL_EINPUT, "padding a used cache");
    fl_kv_cache_free(kc);
    fl_kv_cache_free(one);
    fl_model_free(m);
}

/* Continuous batching: sequences join free slots with their prompts (one or two at a time),
 * decode together one token per step, and leave; every row's logits are its sequence's alone. */
static void check_slots(fl_arch arch, int with_lora) {
    enum { SEQS = 6, SLOTS = 3, MAXLEN = 14, STEPS_MAX = 6 };
    const int prompt_len[SEQS] = {4, 4, 7, 1, 9, 4}; /* 0 and 1 join in one step */
    const int steps[SEQS] = {5, 2, 6, 4, 3, 1};
    fl_err err;
    fl_config c = tu_config(arch, V, 16, 4, 24, 16, arch != FL_ARCH_LLAMA);
    fl_model *m = fl_model_new_random(&c, 13, &err);
    fl_rng_normal(fl_model_params(m)->data, fl_model_params(m)->numel, 14, 0, 0.2f);
    if (with_lora) {
        fl_lora_spec spec = {
            .rank = 2, .alpha = 4, .role_mask = 1u << FL_ROLE_ATTN_Q | 1u << FL_ROLE_MLP_DOWN};
        CHECK(fl_model_add_lora(m, &spec, &err) == 0, "%s", err.msg);
        fl_rng_normal(fl_model_trainable(m)->data, fl_model_trainable(m)->numel, 15, 0, 0.2f);
    }
    int32_t seq[SEQS][MAXLEN];
    for (int q = 0; q < SEQS; q++)
        for (int t = 0; t < MAXLEN; t++)
            seq[q][t] = (int32_t)(fl_rng_uniform_at(3, (uint64_t)q, (size_t)t) * V);
    float alone[SEQS][STEPS_MAX + 1][V];
    fl_kv_cache *one = fl_kv_cache_new(m, 1, MAXLEN, &err);
    for (int q = 0; q < SEQS; q++) {
        fl_kv_cache_reset(one);
        fl_model_decode(m, one, seq[q], prompt_len[q], alone[q][0], &err);
        for (int s = 1; s <= steps[q]; s++)
            fl_model_decode(m, one, &seq[q][prompt_len[q] + s - 1], 1, alone[q][s], &err);
    }
    fl_kv_cache *kc = fl_kv_cache_new(m, SLOTS, MAXLEN, &err);
    int slot_of[SEQS], done[SEQS] = {0}, owner[SLOTS] = {-1, -1, -1}, next = 0, finished = 0;
    double worst = 0, depth = tu_depth_forward(&c, MAXLEN) + (with_lora ? tu_depth_lora(&c, 2) : 0);
    float logits[SLOTS * V];
    int32_t step_tokens[SLOTS * MAXLEN];
    int rows_slots[SLOTS], rows_seq[SLOTS], joined_two = 0, steps_run = 0;
    while (finished < SEQS && steps_run++ < 100) {
        /* join: the next waiting sequence (and the one after when its prompt is as long) */
        int free_slot[SLOTS], n_free = 0, R = 0;
        for (int s = 0; s < SLOTS; s++)
            if (owner[s] < 0) free_slot[n_free++] = s;
        while (next < SEQS && R < n_free &&
               (R == 0 || prompt_len[next] == prompt_len[rows_seq[0]])) {
            rows_seq[R] = next;
            rows_slots[R] = free_slot[R];
            memcpy(step_tokens + R * prompt_len[next], seq[next],
                   sizeof(int32_t) * prompt_len[next]);
            R++;
            next++;
        }
        if (R) {
            int n = prompt_len[rows_seq[0]];
            joined_two |= R > 1;
            CHECK(fl_model_decode_slots(m, kc, rows_slots, R, step_tokens, n, logits, &err) == 0,
                  "%s", err.msg);
            for (int r = 0; r < R; r++) {
                owner[rows_slots[r]] = rows_seq[r];
                slot_of[rows_seq[r]] = rows_slots[r];
                double d = tu_rounding_excess(logits + r * V, alone[rows_seq[r]][0], V, depth);
                if (!(d <= worst)) worst = isnan(d) ? INFINITY : d;
            }
        }
        /* decode: one token for every running sequence that has steps left */
        R = 0;
        for (int s = 0; s < SLOTS; s++) {
            int q = owner[s];
            if (q < 0 || done[q] >= steps[q]) continue;
            rows_seq[R] = q;
            rows_slots[R] = s;
            step_tokens[R] = seq[q][prompt_len[q] + done[q]];
            R++;
        }
        if (R) {
            CHECK(fl_model_decode_slots(m, kc, rows_slots, R, step_tokens, 1, logits, &err) == 0,
                  "%s", err.msg);
            for (int r = 0; r < R; r++) {
                int q = rows_seq[r];
                done[q]++;
                double d = tu_rounding_excess(logits + r * V, alone[q][done[q]], V, depth);
                if (!(d <= worst)) worst = isnan(d) ? INFINITY : d;
            }
        }
        /* leave */
        for (int s = 0; s < SLOTS; s++) {
            int q = owner[s];
            if (q < 0 || done[q] < steps[q]) continue;
            CHECK(fl_kv_slot_length(kc, s) == prompt_len[q] + steps[q],
                  "slot %d holds %d positions", s, fl_kv_slot_length(kc, s));
            fl_kv_slot_reset(kc, s);
            owner[s] = -1;
            finished++;
        }
    }
    CHECK(finished == SEQS && joined_two, "the schedule did not run every sequence");
    CHECK(worst <= 1,
          "%s%s: continuous batching differs from each sequence alone by %.3g of the "
          "fp32 bound",
          fl_arch_name(arch), with_lora ? "+lora" : "", worst);
    (void)slot_of;

    /* refusals leave the cache as it was */
    int two[2] = {1, 1}, bad[1] = {SLOTS}, s0[1] = {0};
    int32_t toks[MAXLEN + 1] = {0};
    CHECK(fl_model_decode_slots(m, kc, two, 2, toks, 1, logits, &err) == FL_EINPUT, "a slot twice");
    CHECK(fl_model_decode_slots(m, kc, bad, 1, toks, 1, logits, &err) == FL_EINPUT, "slot range");
    toks[0] = V;
    CHECK(fl_model_decode_slots(m, kc, s0, 1, toks, 1, logits, &err) == FL_EINPUT, "token range");
    toks[0] = 0;
    CHECK(fl_model_decode_slots(m, kc, s0, 1, toks, MAXLEN, logits, &err) == 0, "fill a slot");
    CHECK(fl_model_decode_slots(m, kc, s0, 1, toks, 1, logits, &err) == FL_EINPUT &&
              fl_kv_slot_length(kc, 0) == MAXLEN,
          "a token past a full slot");
    CHECK(fl_model_decode(m, kc, toks, 1, logits, &err) == FL_EINPUT, "lockstep on slots");
    fl_kv_cache_reset(kc);
    CHECK(fl_kv_slot_length(kc, 0) == 0 && fl_model_decode(m, kc, toks, 1, logits, &err) == 0,
          "lockstep after reset");
    CHECK(fl_model_decode_slots(m, kc, s0, 1, toks, 1, logits, &err) == FL_EINPUT,
          "slots on lockstep");
    fl_kv_cache_free(kc);
    fl_kv_cache_free(one);
    fl_model_free(m);
}

static void check_sampling(void) {
    float logits[6] = {1.0f, 3.0f, 2.9f, -1.0f, 0.5f, 2.0f}, work[6];
    fl_sampling greedy = {.temperature = 0, .top_p = 1, .repetition_penalty = 1};
    memcpy(work, logits, sizeof work);
    CHECK(fl_sample(work, 6, &greedy, NULL, 0, 0) == 1, "greedy picks the largest");
    /* Repetition penalty 2 on token 1: 3/2 = 1.5 < 2.9, so greedy moves to token 2. */
    int32_t seen[1] = {1};
    fl_sampling penalised = greedy;
    penalised.repetition_penalty = 2.0f;
    memcpy(work, logits, sizeof work);
    CHECK(fl_sample(work, 6, &penalised, seen, 1, 0) == 2, "repetition penalty");
    /* top_k 1 and a tiny top_p are greedy whatever the temperature and draw. */
    fl_sampling k1 = {.temperature = 5, .top_k = 1, .top_p = 1, .repetition_penalty = 1, .seed = 3};
    fl_sampling p0 = {
        .temperature = 5, .top_k = 0, .top_p = 1e-6f, .repetition_penalty = 1, .seed = 3};
    int k_ok = 1, p_ok = 1, counts[6] = {0};
    for (uint64_t draw = 0; draw < 200; draw++) {
        memcpy(work, logits, sizeof work);
        k_ok &= fl_sample(work, 6, &k1, NULL, 0, draw) == 1;
        memcpy(work, logits, sizeof work);
        p_ok &= fl_sample(work, 6, &p0, NULL, 0, draw) == 1;
    }
    CHECK(k_ok && p_ok, "top_k 1 / top_p ~0 must be greedy");
    /* top_k 3 at temperature 1: only tokens 1, 2, 5, roughly in softmax proportions. */
    fl_sampling k3 = {.temperature = 1, .top_k = 3, .top_p = 1, .repetition_penalty = 1, .seed = 7};
    for (uint64_t draw = 0; draw < 4000; draw++) {
        memcpy(work, logits, sizeof work);
        counts[fl_sample(work, 6, &k3, NULL, 0, draw)]++;
    }
    double z = exp(3.0) + exp(2.9) + exp(2.0);
    CHECK(counts[0] + counts[3] + counts[4] == 0, "top_k 3 sampled outside the top 3");
    CHECK(fabs(counts[1] / 4000.0 - exp(3.0) / z) < 0.03 &&
              fabs(counts[5] / 4000.0 - exp(2.0) / z) < 0.03,
          "top_k 3 frequencies %d %d %d", counts[1], counts[2], counts[5]);
    /* The same (seed, draw) gives the same token. */
    memcpy(work, logits, sizeof work);
    int a = fl_sample(work, 6, &k3, NULL, 0, 42);
    memcpy(work, logits, sizeof work);
    CHECK(fl_sample(work, 6, &k3, NULL, 0, 42) == a, "sampling is not reproducible");
}

int main(void) {
    fl_arch archs[3] = {FL_ARCH_GPT2, FL_ARCH_LLAMA, FL_ARCH_QWEN2};
    for (int i = 0; i < 3; i++) {
        check_cache(archs[i], 0);
        check_cache(archs[i], 1);
        check_padding(archs[i]);
        check_slots(archs[i], 0);
        check_slots(archs[i], 1);
    }
    check_sampling();
    return tu_finish("test_generate");
}
