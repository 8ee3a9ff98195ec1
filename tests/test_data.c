/* test_data.c — the byte tokenizer (its tokenizer.json, and the loader's refusal of broken ones),
 * text packing, prompt/response masking and truncation, the line-numbered errors, shuffling and
 * batches. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/data.h"
#include "fedllm/fileio.h"
#include "testutil.h"

#define EOS 256
#define IGN (-100)

static const char *dir;
static fl_tokenizer *tok;

static const char *write_file(const char *name, const char *text) {
    static char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    fl_write_file_atomic(path, text, strlen(text), NULL);
    return path;
}

static int row_equals(const int32_t *row, const int32_t *expect, int T) {
    return memcmp(row, expect, (size_t)T * sizeof *row) == 0;
}

static void test_tokenizer(void) {
    fl_err err = {0};
    CHECK(fl_tokenizer_save_bytes(dir, &err) == FL_OK, "%s", err.msg);
    CHECK(fl_tokenizer_load(&tok, dir, &err) == FL_OK, "%s", err.msg);
    CHECK(tok && fl_tokenizer_vocab_size(tok) == 257 && fl_tokenizer_eos(tok) == 256 &&
              !fl_tokenizer_adds_bos(tok) && fl_tokenizer_is_special(tok, 256),
          "byte tokenizer");

    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    char *text = NULL;
    size_t len = 0;
    fl_read_file(path, &text, &len, 1 << 20, &err);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    const cJSON *model = cJSON_GetObjectItem(root, "model");
    const cJSON *vocab = cJSON_GetObjectItem(model, "vocab");
    const cJSON *added = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "added_tokens"), 0);
    const cJSON *pre = cJSON_GetObjectItem(root, "pre_tokenizer");
    CHECK(cJSON_IsString(cJSON_GetObjectItem(root, "version")) &&
              strcmp(cJSON_GetObjectItem(root, "version")->valuestring, "1.0") == 0,
          "version");
    CHECK(cJSON_GetArraySize(vocab) == 257, "vocab size");
    /* bytes_to_unicode: '!' is itself, space is U+0120, byte 0 is U+0100, 0xAD is U+0143 */
    CHECK(cJSON_GetObjectItem(vocab, "!") && cJSON_GetObjectItem(vocab, "!")->valueint == 33, "!");
    CHECK(cJSON_GetObjectItem(vocab, "\xC4\xA0") &&
              cJSON_GetObjectItem(vocab, "\xC4\xA0")->valueint == 32,
          "space");
    CHECK(cJSON_GetObjectItem(vocab, "\xC4\x80") &&
              cJSON_GetObjectItem(vocab, "\xC4\x80")->valueint == 0,
          "byte 0");
    CHECK(cJSON_GetObjectItem(vocab, "\xC5\x83") &&
              cJSON_GetObjectItem(vocab, "\xC5\x83")->valueint == 0xAD,
          "byte 0xAD");
    CHECK(cJSON_GetObjectItem(vocab, "\xC3\xBF") &&
              cJSON_GetObjectItem(vocab, "\xC3\xBF")->valueint == 255,
          "byte 0xFF");
    CHECK(cJSON_GetObjectItem(vocab, "<|endoftext|>") &&
              cJSON_GetObjectItem(vocab, "<|endoftext|>")->valueint == 256,
          "eos in vocab");
    CHECK(added && cJSON_GetObjectItem(added, "id")->valueint == 256 &&
              cJSON_IsTrue(cJSON_GetObjectItem(added, "special")) &&
              strcmp(cJSON_GetObjectItem(added, "content")->valuestring, "<|endoftext|>") == 0,
          "added token");
    CHECK(pre && strcmp(cJSON_GetObjectItem(pre, "type")->valuestring, "ByteLevel") == 0 &&
              cJSON_IsFalse(cJSON_GetObjectItem(pre, "add_prefix_space")) &&
              cJSON_IsFalse(cJSON_GetObjectItem(pre, "use_regex")),
          "pre_tokenizer");
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(model, "merges")) == 0, "no merges");

    char bpe_dir[1200];
    char *bpe;
    snprintf(bpe_dir, sizeof bpe_dir, "%s/bpe", dir);
    fl_mkdirs(bpe_dir, NULL);
    fl_tokenizer *other = NULL;
    /* same size, one id swapped */
    cJSON_DeleteItemFromArray(cJSON_GetObjectItem(model, "merges"), 0);
    cJSON_ReplaceItemInObject((cJSON *)vocab, "!", cJSON_CreateNumber(34));
    bpe = cJSON_Print(root);
    write_file("bpe/tokenizer.json", bpe);
    CHECK(fl_tokenizer_load(&other, bpe_dir, &err) == FL_EINPUT && !other &&
              strstr(err.msg, "model.vocab: id 34 appears twice"),
          "swapped id refused: %s", err.msg);
    free(bpe);
    write_file("bpe/tokenizer.json", "not json");
    CHECK(fl_tokenizer_load(&other, bpe_dir, &err) == FL_EINPUT, "garbage refused");
    snprintf(bpe_dir, sizeof bpe_dir, "%s/none", dir);
    CHECK(fl_tokenizer_load(&other, bpe_dir, &err) == FL_EINPUT &&
              strstr(err.msg, "none: not found (expected a tokenizer.json"),
          "missing: %s", err.msg);
    cJSON_Delete(root);
    free(text);

    fl_ids ids = {0};
    CHECK(fl_tokenizer_encode(tok, "h\xc3\xa9<|endoftext|>", 16, &ids, &err) == FL_OK &&
              ids.n == 4 && ids.v[0] == 'h' && ids.v[1] == 0xC3 && ids.v[2] == 0xA9 &&
              ids.v[3] == EOS,
          "encode: bytes, and the special token's text as its id");
    ids.n = 0;
    CHECK(fl_tokenizer_encode(tok, "h\xffi", 3, &ids, &err) == FL_EINPUT &&
              strstr(err.msg, "not valid UTF-8 (byte offset 1)"),
          "invalid UTF-8 refused: %s", err.msg);
    fl_ids_free(&ids);
    int32_t mixed[3] = {'o', EOS, 'k'}, bad[2] = {'o', 257};
    fl_str out = {0};
    CHECK(fl_tokenizer_decode(tok, mixed, 3, 1, &out, &err) == FL_OK && strcmp(out.s, "ok") == 0,
          "decode skips specials");
    out.n = 0;
    CHECK(fl_tokenizer_decode(tok, mixed, 3, 0, &out, &err) == FL_OK &&
              strcmp(out.s, "o<|endoftext|>k") == 0,
          "decode keeps specials: %s", out.s);
    out.n = 0;
    CHECK(fl_tokenizer_decode(tok, bad, 2, 0, &out, &err) == FL_EINPUT &&
              strstr(err.msg, "token id 257 is not in the vocabulary"),
          "decode refuses unknown ids: %s", err.msg);
    fl_str_free(&out);
}

static void test_text_packing(void) {
    fl_err err = {0};
    fl_data_spec spec = {.format = FL_DATA_TEXT};
    fl_dataset ds;
    /* stream: a b c EOS d e EOS (7 tokens) → (7-1)/2 = 3 rows of T=2 */
    const char *path =
        write_file("text.jsonl", "{\"text\": \"abc\"}\n\n{\"text\": \"de\", \"x\": 1}\n");
    CHECK(fl_dataset_load(&ds, path, &spec, tok, 2, &err) == FL_OK, "%s", err.msg);
    CHECK(ds.n_rows == 3 && ds.n_records == 2 && ds.n_counted == 6 && ds.T == 2, "rows %ld rec %ld",
          ds.n_rows, ds.n_records);
    if (ds.n_rows == 3) {
        int32_t tk[6] = {'a', 'b', 'c', EOS, 'd', 'e'}, tg[6] = {'b', 'c', EOS, 'd', 'e', EOS};
        CHECK(row_equals(ds.tokens, tk, 6) && row_equals(ds.targets, tg, 6), "packed rows");
        CHECK(ds.order[0] == 0 && ds.order[1] == 1 && ds.order[2] == 2, "identity order");
    }
    fl_dataset_free(&ds);

    /* tail dropped: 8 tokens, T=3 → (8-1)/3 = 2 rows */
    path = write_file("tail.jsonl", "{\"text\": \"abcdefg\"}\r\n");
    CHECK(fl_dataset_load(&ds, path, &spec, tok, 3, &err) == FL_OK, "%s", err.msg);
    CHECK(ds.n_rows == 2 && ds.n_counted == 6 && ds.targets[5] == 'g', "tail");
    fl_dataset_free(&ds);

    /* shorter than T+1: one row padded with EOS, -100 targets */
    path = write_file("short.jsonl", "{\"body\": \"hi\"}");
    spec.text_field = "body";
    CHECK(fl_dataset_load(&ds, path, &spec, tok, 6, &err) == FL_OK, "%s", err.msg);
    if (ds.n_rows == 1) {
        int32_t tk[6] = {'h', 'i', EOS, EOS, EOS, EOS}, tg[6] = {'i', EOS, IGN, IGN, IGN, IGN};
        CHECK(row_equals(ds.tokens, tk, 6) && row_equals(ds.targets, tg, 6) && ds.n_counted == 2,
              "short row");
    } else {
        CHECK(0, "short: %ld rows", ds.n_rows);
    }
    fl_dataset_free(&ds);
    spec.text_field = NULL;

    /* a long line (1 MB) */
    size_t n = 1 << 20;
    char *big = malloc(n + 32);
    strcpy(big, "{\"text\": \"");
    memset(big + 10, 'x', n);
    strcpy(big + 10 + n, "\"}\n");
    path = write_file("long.jsonl", big);
    free(big);
    CHECK(fl_dataset_load(&ds, path, &spec, tok, 1000, &err) == FL_OK, "%s", err.msg);
    CHECK(ds.n_rows == (long)(n / 1000) && ds.tokens[5] == 'x', "long line rows %ld", ds.n_rows);
    fl_dataset_free(&ds);

    /* only an empty document: nothing to learn */
    path = write_file("emptydoc.jsonl", "{\"text\": \"\"}\n");
    CHECK(fl_dataset_load(&ds, path, &spec, tok, 4, &err) == FL_EINPUT &&
              strstr(err.msg, "no tokens"),
          "empty doc: %s", err.msg);
}

static void test_prompt_response(void) {
    fl_err err = {0};
    fl_data_spec spec = {.format = FL_DATA_PROMPT_RESPONSE};
    fl_dataset ds;
    const char *path = write_file("pr.jsonl", "{\"prompt\": \"ab\", \"response\": \"cd\"}\n"
                                              "{\"prompt\": \"\", \"response\": \"xyzuvw\"}\n"
                                              "{\"prompt\": \"pq\", \"response\": \"\"}\n");
    CHECK(fl_dataset_load(&ds, path, &spec, tok, 6, &err) == FL_OK, "%s", err.msg);
    CHECK(ds.n_rows == 3 && ds.n_records == 3, "pr rows %ld", ds.n_rows);
    if (ds.n_rows == 3) {
        /* a b c d EOS: targets at t = 1..3 predict c, d, EOS */
        int32_t tk0[6] = {'a', 'b', 'c', 'd', EOS, EOS}, tg0[6] = {IGN, 'c', 'd', EOS, IGN, IGN};
        CHECK(row_equals(ds.tokens, tk0, 6) && row_equals(ds.targets, tg0, 6), "row 0");
        /* empty prompt, exactly T+1 tokens: x y z u v w EOS */
        int32_t tk1[6] = {'x', 'y', 'z', 'u', 'v', 'w'}, tg1[6] = {'y', 'z', 'u', 'v', 'w', EOS};
        CHECK(row_equals(ds.tokens + 6, tk1, 6) && row_equals(ds.targets + 6, tg1, 6), "row 1");
        /* empty response: only EOS counts */
        int32_t tk2[6] = {'p', 'q', EOS, EOS, EOS, EOS}, tg2[6] = {IGN, EOS, IGN, IGN, IGN, IGN};
        CHECK(row_equals(ds.tokens + 12, tk2, 6) && row_equals(ds.targets + 12, tg2, 6), "row 2");
        CHECK(ds.n_counted == 3 + 6 + 1, "counted %ld", ds.n_counted);
    }
    fl_dataset_free(&ds);

    spec.prompt_field = "q", spec.response_field = "a";
    path = write_file("qa.jsonl", "{\"q\": \"1+1=\", \"a\": \"2\"}");
    CHECK(fl_dataset_load(&ds, path, &spec, tok, 8, &err) == FL_OK && ds.n_counted == 2,
          "custom fields: %s", err.msg);
    fl_dataset_free(&ds);
}

/* Records longer than a row (T = 6: 7 tokens) are cut as Hugging Face's longest_first cuts a
 * (prompt, response) pair, and counted; with refuse_long they are an error naming the line. */
static void test_truncation(void) {
    fl_err err = {0};
    fl_data_spec spec = {.format = FL_DATA_PROMPT_RESPONSE};
    fl_dataset ds;
    const char *path =
        write_file("trunc.jsonl", "{\"prompt\": \"abcdefgh\", \"response\": \"xy\"}\n"
                                  "{\"prompt\": \"ab\", \"response\": \"uvwxyz12\"}\n"
                                  "{\"prompt\": \"ABCDEFGHIJ\", \"response\": \"0123456789\"}\n"
                                  "{\"prompt\": \"abc\", \"response\": \"de\"}\n"
                                  "{\"prompt\": \"\", \"response\": \"klmnopqrs\"}\n");
    CHECK(fl_dataset_load(&ds, path, &spec, tok, 6, &err) == FL_OK, "%s", err.msg);
    CHECK(ds.n_rows == 5 && ds.n_records == 5 && ds.n_truncated == 4, "rows %ld, truncated %ld",
          ds.n_rows, ds.n_truncated);
    if (ds.n_rows == 5) {
        /* a long prompt loses its beginning; the response and EOS stay: e f g h | x y EOS */
        int32_t tk0[6] = {'e', 'f', 'g', 'h', 'x', 'y'}, tg0[6] = {IGN, IGN, IGN, 'x', 'y', EOS};
        CHECK(row_equals(ds.tokens, tk0, 6) && row_equals(ds.targets, tg0, 6), "long prompt");
        /* a long response behind a short prompt loses its end and its EOS: a b | u v w x y */
        int32_t tk1[6] = {'a', 'b', 'u', 'v', 'w', 'x'}, tg1[6] = {IGN, 'u', 'v', 'w', 'x', 'y'};
        CHECK(row_equals(ds.tokens + 6, tk1, 6) && row_equals(ds.targets + 6, tg1, 6),
              "long response");
        /* both long: each keeps about half, the prompt its tail, the response its head */
        int32_t tk2[6] = {'H', 'I', 'J', '0', '1', '2'}, tg2[6] = {IGN, IGN, '0', '1', '2', '3'};
        CHECK(row_equals(ds.tokens + 12, tk2, 6) && row_equals(ds.targets + 12, tg2, 6),
              "both long");
        /* a record that fits is untouched: a b c d e EOS, padded */
        int32_t tk3[6] = {'a', 'b', 'c', 'd', 'e', EOS}, tg3[6] = {IGN, IGN, 'd', 'e', EOS, IGN};
        CHECK(row_equals(ds.tokens + 18, tk3, 6) && row_equals(ds.targets + 18, tg3, 6), "fits");
        /* no prompt at all: the response's first 7 tokens, all but the first predicted */
        int32_t tk4[6] = {'k', 'l', 'm', 'n', 'o', 'p'}, tg4[6] = {'l', 'm', 'n', 'o', 'p', 'q'};
        CHECK(row_equals(ds.tokens + 24, tk4, 6) && row_equals(ds.targets + 24, tg4, 6),
              "response only");
        CHECK(ds.n_counted == 3 + 5 + 4 + 3 + 6, "counted %ld", ds.n_counted);
    }
    fl_dataset_free(&ds);
    spec.refuse_long = 1;
    CHECK(fl_dataset_load(&ds, path, &spec, tok, 6, &err) == FL_EINPUT && strstr(err.msg, path) &&
              strstr(err.msg, ":1: record is 11 tokens") && strstr(err.msg, "truncation is off") &&
              ds.tokens == NULL,
          "refused: %s", err.msg);
    CHECK(fl_dataset_load(&ds, path, &spec, tok, 10, &err) == FL_EINPUT &&
              strstr(err.msg, ":3: record is 21 tokens"),
          "refused at the first record too long: %s", err.msg);
    spec.refuse_long = 0;
    CHECK(fl_dataset_load(&ds, path, &spec, tok, 12, &err) == FL_OK && ds.n_truncated == 1,
          "T = 12: %ld truncated", ds.n_truncated);
    fl_dataset_free(&ds);
}

static void expect_load_error(const char *name, const char *text, fl_data_format format, int T,
                              const char *phrase) {
    fl_err err = {0};
    fl_data_spec spec = {.format = format, .refuse_long = 1};
    fl_dataset ds;
    const char *path = write_file(name, text);
    char want[1400];
    snprintf(want, sizeof want, "%s%s", path, phrase);
    int rc = fl_dataset_load(&ds, path, &spec, tok, T, &err);
    CHECK(rc == FL_EINPUT && strstr(err.msg, want), "%s: rc %d '%s', expected '%s'", name, rc,
          err.msg, want);
    CHECK(ds.n_rows == 0 && ds.tokens == NULL && ds.targets == NULL && ds.order == NULL,
          "%s: left empty", name);
}

static void test_errors(void) {
    expect_load_error("toolong.jsonl",
                      "{\"prompt\": \"a\", \"response\": \"b\"}\n\n"
                      "{\"prompt\": \"abc\", \"response\": \"defg\"}\n",
                      FL_DATA_PROMPT_RESPONSE, 6, ":3: record is 8 tokens");
    expect_load_error("badline.jsonl", "{\"text\": \"ok\"}\n{bad\n", FL_DATA_TEXT, 4,
                      ":2: not a JSON object");
    expect_load_error("arrayline.jsonl", "[\"text\"]\n", FL_DATA_TEXT, 4, ":1: not a JSON object");
    expect_load_error("trailing.jsonl", "{\"text\": \"a\"} x\n", FL_DATA_TEXT, 4,
                      ":1: not a JSON object");
    expect_load_error("twoobjs.jsonl", "{\"text\": \"a\"}{\"text\": \"b\"}\n", FL_DATA_TEXT, 4,
                      ":1: not a JSON object");
    expect_load_error("nofield.jsonl", "{\"text\": \"a\"}\n\n\n{\"txt\": \"b\"}\n", FL_DATA_TEXT, 4,
                      ":4: field 'text' missing or not a string");
    expect_load_error("numfield.jsonl", "{\"text\": 5}", FL_DATA_TEXT, 4,
                      ":1: field 'text' missing or not a string");
    expect_load_error("noresp.jsonl", "{\"prompt\": \"a\"}", FL_DATA_PROMPT_RESPONSE, 4,
                      ":1: field 'response' missing or not a string");
    expect_load_error("empty.jsonl", "", FL_DATA_TEXT, 4, ": no records");
    expect_load_error("blank.jsonl", "\n  \n\t\r\n", FL_DATA_TEXT, 4, ": no records");
    expect_load_error("badT.jsonl", "{\"text\": \"a\"}", FL_DATA_TEXT, 0, ": rows of 0 tokens");

    fl_err err = {0};
    fl_data_spec spec = {.format = FL_DATA_TEXT};
    fl_dataset ds;
    CHECK(fl_dataset_load(&ds, "/nonexistent/x.jsonl", &spec, tok, 4, &err) == FL_EINPUT &&
              strstr(err.msg, "/nonexistent/x.jsonl"),
          "missing file: %s", err.msg);
}

static void test_shuffle_and_batch(void) {
    fl_err err = {0};
    fl_data_spec spec = {.format = FL_DATA_TEXT};
    fl_dataset ds;
    /* 1000 tokens + EOS, T=10: 100 rows, row r starts with token 10r */
    char line[1100];
    strcpy(line, "{\"text\": \"");
    for (int i = 0; i < 1000; i++)
        line[10 + i] = (char)('A' + (i / 10) % 26);
    strcpy(line + 1010, "\"}");
    const char *path = write_file("rows.jsonl", line);
    CHECK(fl_dataset_load(&ds, path, &spec, tok, 10, &err) == FL_OK, "%s", err.msg);
    CHECK(ds.n_rows == 100, "rows %ld", ds.n_rows);
    if (ds.n_rows != 100) return;

    int64_t first[100], again[100];
    fl_dataset_shuffle(&ds, 1234, 0);
    memcpy(first, ds.order, sizeof first);
    char seen[100] = {0};
    int permutation = 1, moved = 0;
    for (int i = 0; i < 100; i++) {
        if (first[i] < 0 || first[i] >= 100 || seen[first[i]])
            permutation = 0;
        else
            seen[first[i]] = 1;
        moved += first[i] != i;
    }
    CHECK(permutation, "shuffle is a permutation");
    CHECK(moved > 50, "shuffle moved %d rows", moved);
    fl_dataset_shuffle(&ds, 1234, 1);
    CHECK(memcmp(first, ds.order, sizeof first) != 0, "epochs differ");
    fl_dataset_shuffle(&ds, 99, 0);
    CHECK(memcmp(first, ds.order, sizeof first) != 0, "seeds differ");
    fl_dataset_shuffle(&ds, 1234, 0);
    memcpy(again, ds.order, sizeof again);
    CHECK(memcmp(first, again, sizeof first) == 0, "deterministic");
    fl_dataset_shuffle(&ds, 0, 5);
    int identity = 1;
    for (int i = 0; i < 100; i++)
        identity &= ds.order[i] == i;
    CHECK(identity, "seed 0 is identity");

    /* batches follow the order and wrap around the end */
    fl_dataset_shuffle(&ds, 1234, 0);
    int32_t tokens[4 * 10], targets[4 * 10];
    fl_dataset_batch(&ds, 98, 4, tokens, targets);
    int64_t rows[4] = {first[98], first[99], first[0], first[1]};
    int ok = 1;
    for (int b = 0; b < 4; b++) {
        ok &= memcmp(tokens + 10 * b, ds.tokens + 10 * rows[b], 10 * sizeof(int32_t)) == 0;
        ok &= memcmp(targets + 10 * b, ds.targets + 10 * rows[b], 10 * sizeof(int32_t)) == 0;
    }
    CHECK(ok, "batch wraps");
    fl_dataset_batch(&ds, 198, 1, tokens, targets);
    CHECK(memcmp(tokens, ds.tokens + 10 * first[98], 10 * sizeof(int32_t)) == 0,
          "first_row past the end wraps");
    fl_dataset_free(&ds);
    CHECK(ds.tokens == NULL && ds.n_rows == 0, "free zeroes");
}

int main(void) {
    dir = tu_tmpdir("test_data");
    test_tokenizer();
    test_text_packing();
    test_prompt_response();
    test_truncation();
    test_errors();
    test_shuffle_and_batch();
    fl_tokenizer_free(tok);
    return tu_finish("test_data");
}
