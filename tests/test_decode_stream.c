/* test_decode_stream.c — streaming a continuation shows only settled text (fl_decode_stream), so
 * the stream equals the batched decode byte for byte.
 *
 * 1. Byte-fallback runs in the SentencePiece fixture (tests/fixtures/tokenizers/sp), whose
 *    decodes `tokenizers` 0.23 gives as: [▁a <0x7C>] "a|", [▁a <0x7C> <0xF2>] "a\uFFFD\uFFFD",
 *    [▁a <0x7C> <0xF2> er] "a\uFFFD\uFFFDer", [▁a <0xE2> <0x82> <0xAC>] "a€": nothing of a run
 *    is shown before the run has ended, and the final text is the batched one.
 * 2. Random continuations over the SentencePiece and the GPT-2 (ByteLevel) fixtures, rich in byte
 *    tokens and multi-byte characters split across tokens: at every step the shown text is valid
 *    UTF-8 and extends what was shown before, and at the end it is decode(prompt + new) minus
 *    decode(prompt) (or the new ids alone where they change the prompt's text).
 * 3. `fedllm generate` on a model whose head favours byte tokens: --prompt's streamed stdout is
 *    valid UTF-8 and equals the text --prompts prints for the same prompt. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "fedllm/fileio.h"
#include "fedllm/model.h"
#include "fedllm/params.h"
#include "fedllm/rng.h"
#include "fedllm/tokenizer.h"
#include "fedllm/unicode.h"
#include "testutil.h"

#define FIXTURES "tests/fixtures/tokenizers"

static fl_tokenizer *load(const char *name) {
    char path[256];
    snprintf(path, sizeof path, FIXTURES "/%s", name);
    fl_tokenizer *tok = NULL;
    fl_err err = {0};
    CHECK(fl_tokenizer_load(&tok, path, &err) == FL_OK, "%s", err.msg);
    return tok;
}

static int32_t id_of(fl_tokenizer *tok, const char *text) {
    for (int id = 0; id < fl_tokenizer_vocab_size(tok); id++) {
        size_t n;
        const char *s = fl_tokenizer_token(tok, id, &n);
        if (s && strcmp(s, text) == 0) return id;
    }
    CHECK(0, "'%s' is not in the vocabulary", text);
    return 0;
}

/* What the batched path prints: the continuation of all ids after the prompt. */
static void batched(const fl_tokenizer *tok, const int32_t *ids, size_t n, size_t n_prompt,
                    fl_str *out) {
    fl_str all = {0}, prompt = {0};
    fl_err err;
    fl_tokenizer_decode(tok, ids, n, 1, &all, &err);
    fl_tokenizer_decode(tok, ids, n_prompt, 1, &prompt, &err);
    out->n = 0;
    fl_str_append(out, "", 0, &err);
    if (all.n >= prompt.n && memcmp(all.s, prompt.s, prompt.n) == 0) {
        fl_str_append(out, all.s + prompt.n, all.n - prompt.n, &err);
    } else {
        fl_tokenizer_decode(tok, ids + n_prompt, n - n_prompt, 1, out, &err);
    }
    fl_str_free(&all);
    fl_str_free(&prompt);
}

/* Streams ids[n_prompt..n) after the prompt; checks every step and the end. Returns the number
 * of steps at which text was held back (shown shorter than the plain decode so far). */
static int check_stream(const char *label, const fl_tokenizer *tok, const int32_t *ids, size_t n,
                        size_t n_prompt, const char *const *shown_after) {
    fl_decode_stream ds;
    fl_err err = {0};
    if (fl_decode_stream_init(&ds, tok, ids, n_prompt, &err) != FL_OK) {
        CHECK(0, "%s: %s", label, err.msg);
        return 0;
    }
    fl_str before = {0}, plain = {0};
    int held = 0, grew = 1, valid = 1, rc = FL_OK;
    for (size_t i = n_prompt; i < n && !rc; i++) {
        fl_str_append(&before, ds.text.s, ds.text.n, &err);
        rc = fl_decode_stream_push(&ds, ids[i], &err);
        CHECK(rc == FL_OK, "%s: %s", label, err.msg);
        size_t bad;
        grew &= ds.text.n >= before.n && memcmp(ds.text.s, before.s, before.n) == 0;
        valid &= fl_utf8_valid(ds.text.s, ds.text.n, &bad);
        batched(tok, ids, i + 1, n_prompt, &plain);
        held += ds.text.n < plain.n;
        if (shown_after)
            CHECK(strcmp(ds.text.s, shown_after[i - n_prompt]) == 0,
                  "%s: after %zu new ids shows '%s', expected '%s'", label, i + 1 - n_prompt,
                  ds.text.s, shown_after[i - n_prompt]);
        before.n = 0;
    }
    CHECK(grew, "%s: the shown text changed instead of growing", label);
    CHECK(valid, "%s: the shown text was not valid UTF-8", label);
    if (!rc) rc = fl_decode_stream_finish(&ds, &err);
    batched(tok, ids, n, n_prompt, &plain);
    CHECK(rc == FL_OK && ds.text.n == plain.n && memcmp(ds.text.s, plain.s, plain.n) == 0,
          "%s: finished as '%s', batched '%s'", label, ds.text.s, plain.s);
    fl_str_free(&before);
    fl_str_free(&plain);
    fl_decode_stream_free(&ds);
    return held;
}

static void check_byte_runs(void) {
    fl_tokenizer *tok = load("sp");
    if (!tok) return;
    int32_t a = id_of(tok, "\xE2\x96\x81"
                           "a"),
            bar = id_of(tok, "<0x7C>"), f2 = id_of(tok, "<0xF2>"), er = id_of(tok, "er"),
            e2 = id_of(tok, "<0xE2>"), x82 = id_of(tok, "<0x82>"), ac = id_of(tok, "<0xAC>");
    /* the report's case: <0x7C> alone is "|", then <0xF2> turns the run into two U+FFFD */
    const int32_t invalid[] = {a, bar, f2, er};
    const char *const shown_invalid[] = {"", "",
                                         "\xEF\xBF\xBD\xEF\xBF\xBD"
                                         "er"};
    CHECK(check_stream("| then F2", tok, invalid, 4, 1, shown_invalid) == 2,
          "the run was not held back");
    /* a valid run: shown once it has ended (here: at the end) */
    const int32_t euro[] = {a, e2, x82, ac};
    const char *const shown_euro[] = {"", "", ""};
    check_stream("euro", tok, euro, 4, 1, shown_euro);
    /* a run that starts in the prompt and that the new bytes complete: the prompt's own text
     * changes, so the continuation is the new ids alone */
    const int32_t split[] = {a, e2, x82, ac, er};
    check_stream("run across the prompt", tok, split, 5, 2, NULL);
    fl_tokenizer_free(tok);
}

/* Random continuations, a third of them byte tokens. */
static void check_random(const char *name) {
    fl_tokenizer *tok = load(name);
    if (!tok) return;
    int32_t bytes[256];
    int n_bytes = 0;
    for (int b = 0; b < 256; b++) {
        char text[8];
        snprintf(text, sizeof text, "<0x%02X>", b);
        for (int id = 0; id < fl_tokenizer_vocab_size(tok) && n_bytes < 256; id++) {
            size_t n;
            const char *s = fl_tokenizer_token(tok, id, &n);
            if (s && strcmp(s, text) == 0) bytes[n_bytes++] = id;
        }
    }
    /* ByteLevel splits multi-byte characters across tokens by itself: encode such text */
    fl_ids text_ids = {0};
    fl_err err = {0};
    const char *sample = "na\xC3\xAFve \xE2\x82\xAC 5 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E "
                         "\xF0\x9F\x98\x80 ok";
    fl_tokenizer_encode(tok, sample, strlen(sample), &text_ids, &err);
    int V = fl_tokenizer_vocab_size(tok), held = 0, cases = 200;
    for (int c = 0; c < cases; c++) {
        int32_t ids[40];
        float u[80];
        fl_rng_uniform(u, 80, 7, (uint64_t)c * 80, 0.0f, 1.0f);
        size_t n = 24 + (size_t)(u[0] * 16), n_prompt = 1 + (size_t)(u[1] * 4);
        for (size_t i = 0; i < n; i++) {
            float pick = u[2 + 2 * i], which = u[3 + 2 * i];
            if (n_bytes && pick < 0.35f)
                ids[i] = bytes[(int)(which * n_bytes) % n_bytes];
            else if (text_ids.n && pick < 0.7f)
                ids[i] = text_ids.v[(size_t)(which * text_ids.n) % text_ids.n];
            else
                ids[i] = (int32_t)(which * V) % V;
        }
        char label[64];
        snprintf(label, sizeof label, "%s random %d", name, c);
        held += check_stream(label, tok, ids, n, n_prompt, NULL) > 0;
    }
    printf("%s: %d random continuations streamed as batched; %d held text back\n", name, cases,
           held);
    CHECK(held > cases / 10, "%s: only %d continuations needed holding back", name, held);
    fl_ids_free(&text_ids);
    fl_tokenizer_free(tok);
}

/* ---- fedllm generate ---- */

static char *run_capture(const char *cmd, const char *out_path, int *status) {
    *status = system(cmd);
    char *text = NULL;
    size_t n = 0;
    if (fl_read_file(out_path, &text, &n, 1 << 20, NULL) != FL_OK) return NULL;
    return text;
}

static void check_cli(void) {
    const char *bin = getenv("FEDLLM_BIN");
    if (!bin) {
        printf("test_decode_stream: FEDLLM_BIN not set, skipping the fedllm generate check\n");
        return;
    }
    const char *dir = tu_tmpdir("test_decode_stream");
    char model[1100], cmd[4096], out[1200], path[1200];
    snprintf(model, sizeof model, "%s/model", dir);
    fl_tokenizer *tok = load("sp");
    fl_err err = {0};
    fl_config cfg = tu_config(FL_ARCH_GPT2, fl_tokenizer_vocab_size(tok), 32, 16, 64, 128, 1);
    cfg.eos_token_id = fl_tokenizer_eos(tok);
    fl_model *m = fl_model_new_random(&cfg, 3, &err);
    CHECK(m != NULL, "%s", err.msg);
    if (!m || !tok) {
        fl_model_free(m);
        fl_tokenizer_free(tok);
        return;
    }
    /* ln_f's bias u and u added to the byte tokens' embeddings: their logits gain |u|^2 = 9, so
     * most steps sample a byte token, ASCII and high bytes mixed as the report had them */
    fl_params *p = fl_model_params(m);
    float *bias = fl_params_get(p, "transformer.ln_f.bias"),
          *wte = fl_params_get(p, "transformer.wte.weight");
    for (int i = 0; i < cfg.d_model; i++)
        bias[i] = i % 2 ? 0.45f : -0.45f;
    int byte_tokens = 0;
    for (int id = 0; id < cfg.vocab_size; id++) {
        size_t n;
        const char *s = fl_tokenizer_token(tok, id, &n);
        int is_byte = s && n == 6 && strncmp(s, "<0x", 3) == 0;
        byte_tokens += is_byte;
        if (!is_byte && id % 16 != 0) continue;
        for (int i = 0; i < cfg.d_model; i++)
            wte[(size_t)id * cfg.d_model + i] += bias[i];
    }
    CHECK(byte_tokens == 256, "%d byte tokens", byte_tokens);
    mkdir(model, 0755);
    CHECK(fl_model_save(m, model, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_tokenizer_copy_files(FIXTURES "/sp", model, &err) == FL_OK, "%s", err.msg);
    fl_model_free(m);
    fl_tokenizer_free(tok);
    snprintf(path, sizeof path, "%s/prompts.txt", dir);
    fl_write_file_atomic(path, "Hello\n", 6, NULL);
    int differ = 0, invalid = 0, status;
    for (int seed = 1; seed <= 4; seed++) {
        snprintf(out, sizeof out, "%s/stream.txt", dir);
        snprintf(cmd, sizeof cmd,
                 "'%s' generate --model '%s' --prompt Hello --temperature 1 --top-p 1 --seed %d "
                 "--max-tokens 48 --threads 1 > '%s' 2>/dev/null",
                 bin, model, seed, out);
        char *streamed = run_capture(cmd, out, &status);
        CHECK(streamed && WIFEXITED(status) && WEXITSTATUS(status) == 0, "generate --prompt");
        snprintf(out, sizeof out, "%s/batch.jsonl", dir);
        snprintf(cmd, sizeof cmd,
                 "'%s' generate --model '%s' --prompts '%s' --temperature 1 --top-p 1 --seed %d "
                 "--max-tokens 48 --threads 1 > '%s' 2>/dev/null",
                 bin, model, path, seed, out);
        char *batch = run_capture(cmd, out, &status);
        CHECK(batch && WIFEXITED(status) && WEXITSTATUS(status) == 0, "generate --prompts");
        cJSON *line = batch ? cJSON_Parse(batch) : NULL;
        const cJSON *text = cJSON_GetObjectItem(line, "text");
        size_t bad, n = streamed ? strlen(streamed) : 0;
        if (streamed && n && streamed[n - 1] == '\n') streamed[--n] = '\0';
        invalid += !streamed || !fl_utf8_valid(streamed, n, &bad);
        differ += !cJSON_IsString(text) || !streamed || strcmp(text->valuestring, streamed) != 0;
        if (seed == 1 && cJSON_IsString(text))
            printf("seed 1: %zu bytes streamed, batched text has %s\n", n,
                   strstr(text->valuestring, "\xEF\xBF\xBD") ? "U+FFFD (invalid byte runs)"
                                                             : "no U+FFFD");
        cJSON_Delete(line);
        free(streamed);
        free(batch);
    }
    CHECK(invalid == 0, "%d of 4 streams were not valid UTF-8", invalid);
    CHECK(differ == 0, "%d of 4 streams differ from the batched text", differ);
}

int main(void) {
    check_byte_runs();
    check_random("sp");
    check_random("gpt2");
    check_cli();
    return tu_finish("test_decode_stream");
}
