/* test_tokenizer.c — tokenizers against the Hugging Face `tokenizers` library.
 *
 * 1. Reference fixtures (tests/fixtures/tokenizers/NAME, made by tools/tokenizer_ref.py from real
 *    Debian text): tokenizers trained in the exact configurations of GPT-2, LLaMA-3, Qwen2 and
 *    LLaMA-2 (SentencePiece BPE converted as transformers converts it). Every sample's ids must
 *    equal the reference's, decode must give the reference's text byte for byte (the text itself,
 *    except where NFC or a special token's spacing changes it), and the chat samples must render
 *    as transformers' apply_chat_template did.
 * 2. A hand-written BPE whose expected ids were taken from `tokenizers` 0.19: merge order, unknown
 *    characters fused into one <unk>, added tokens with lstrip/rstrip and single_word, the
 *    decoder-less join, skip_special.
 * 3. Bad files: one clear error naming the file and the field. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fileio.h"
#include "fedllm/tokenizer.h"
#include "testutil.h"

#define FIXTURES "tests/fixtures/tokenizers"

static int ids_equal(const fl_ids *got, const cJSON *want) {
    if ((int)got->n != cJSON_GetArraySize(want)) return 0;
    size_t i = 0;
    const cJSON *id;
    cJSON_ArrayForEach(id, want) {
        if (!cJSON_IsNumber(id) || got->v[i++] != id->valueint) return 0;
    }
    return 1;
}

/* sample.jsonl: {"text", "ids"} per line. */
static void check_samples(const char *name, fl_tokenizer *tok) {
    char path[512];
    snprintf(path, sizeof path, FIXTURES "/%s/sample.jsonl", name);
    char *data = NULL;
    size_t len = 0;
    fl_err err = {0};
    CHECK(fl_read_file(path, &data, &len, 64 << 20, &err) == 0, "%s", err.msg);
    if (!data) return;
    int units = 0, wrong_ids = 0, wrong_text = 0;
    size_t bytes = 0;
    fl_ids ids = {0};
    fl_str text = {0};
    for (char *line = data, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        cJSON *rec = cJSON_Parse(line);
        const cJSON *t = cJSON_GetObjectItem(rec, "text"), *want = cJSON_GetObjectItem(rec, "ids");
        /* where the reference's decode is not the text itself (NFC, special tokens written in
         * the text, a literal metaspace), the fixture gives it as "decoded" */
        const cJSON *decoded = cJSON_GetObjectItem(rec, "decoded");
        const char *back = cJSON_IsString(decoded) ? decoded->valuestring : t ? t->valuestring : "";
        if (!cJSON_IsString(t) || !cJSON_IsArray(want)) {
            cJSON_Delete(rec);
            continue;
        }
        size_t n = strlen(t->valuestring);
        ids.n = 0;
        int rc = fl_tokenizer_encode(tok, t->valuestring, n, &ids, &err);
        if (rc || !ids_equal(&ids, want)) {
            if (wrong_ids++ == 0)
                printf("  %s: first id mismatch on unit %d: %.60s\n", name, units, t->valuestring);
        }
        text.n = 0;
        if (!rc && (fl_tokenizer_decode(tok, ids.v, ids.n, 0, &text, &err) ||
                    text.n != strlen(back) || memcmp(text.s, back, text.n) != 0))
            wrong_text++;
        units++;
        bytes += n;
        cJSON_Delete(rec);
    }
    CHECK(units >= 50, "%s: only %d samples", name, units);
    CHECK(wrong_ids == 0, "%s: %d of %d samples tokenized differently from the reference", name,
          wrong_ids, units);
    CHECK(wrong_text == 0, "%s: %d of %d samples did not decode back to their text", name,
          wrong_text, units);
    printf("%s: %d samples, %zu bytes: ids and decoded text equal the reference's\n", name, units,
           bytes);
    fl_ids_free(&ids);
    fl_str_free(&text);
    free(data);
}

/* chat.jsonl: {"messages": [{"role", "content"}...], "add_generation_prompt", "text"}. */
static void check_chat(const char *name, fl_tokenizer *tok) {
    char path[512];
    snprintf(path, sizeof path, FIXTURES "/%s/chat.jsonl", name);
    char *data = NULL;
    size_t len = 0;
    if (fl_read_file(path, &data, &len, 16 << 20, NULL) != 0) return; /* no chat template */
    int convs = 0, wrong = 0;
    fl_str out = {0};
    fl_err err = {0};
    for (char *line = data, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        cJSON *rec = cJSON_Parse(line);
        const cJSON *msgs = cJSON_GetObjectItem(rec, "messages");
        const cJSON *want = cJSON_GetObjectItem(rec, "text");
        int n = cJSON_GetArraySize(msgs);
        fl_chat_msg m[16];
        for (int i = 0; i < n && i < 16; i++) {
            const cJSON *item = cJSON_GetArrayItem(msgs, i);
            m[i].role = cJSON_GetObjectItem(item, "role")->valuestring;
            m[i].content = cJSON_GetObjectItem(item, "content")->valuestring;
        }
        out.n = 0;
        int gen = cJSON_IsTrue(cJSON_GetObjectItem(rec, "add_generation_prompt"));
        if (fl_chat_render(tok, m, n < 16 ? n : 16, gen, &out, &err) != 0 ||
            strcmp(out.s, want->valuestring) != 0) {
            if (wrong++ == 0)
                printf("  %s chat %d:\n  got  [%s]\n  want [%s]\n", name, convs,
                       out.s ? out.s : err.msg, want->valuestring);
        }
        convs++;
        cJSON_Delete(rec);
    }
    CHECK(convs > 0 && wrong == 0, "%s: %d of %d conversations rendered differently", name, wrong,
          convs);
    printf("%s: %d conversations render as apply_chat_template\n", name, convs);
    fl_str_free(&out);
    free(data);
}

static void check_fixture(const char *name, fl_chat_format format) {
    char dir[512];
    snprintf(dir, sizeof dir, FIXTURES "/%s", name);
    fl_tokenizer *tok = NULL;
    fl_err err = {0};
    CHECK(fl_tokenizer_load(&tok, dir, &err) == 0, "%s", err.msg);
    if (!tok) return;
    CHECK(fl_tokenizer_chat_format(tok) == format, "%s: chat format %d, expected %d", name,
          fl_tokenizer_chat_format(tok), format);
    check_samples(name, tok);
    check_chat(name, tok);
    fl_tokenizer_free(tok);
}

/* ---- a hand-written BPE -------------------------------------------------------------------- */

static const char SYNTHETIC[] =
    "{\"version\": \"1.0\", \"added_tokens\": ["
    "{\"id\": 8, \"content\": \"<m>\", \"single_word\": false, \"lstrip\": true, \"rstrip\": true,"
    " \"normalized\": false, \"special\": true},"
    "{\"id\": 9, \"content\": \"<w>\", \"single_word\": true, \"lstrip\": false, \"rstrip\": false,"
    " \"normalized\": false, \"special\": false}],"
    "\"normalizer\": null, \"pre_tokenizer\": null, \"post_processor\": null, \"decoder\": null,"
    "\"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": \"<unk>\","
    " \"continuing_subword_prefix\": null, \"end_of_word_suffix\": null, \"fuse_unk\": true,"
    " \"byte_fallback\": false, \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, \"abc\": 4,"
    " \"bc\": 5, \" \": 6, \"<unk>\": 7}, \"merges\": [\"a b\", \"ab c\", \"b c\"]}}";

static void check_synthetic(void) {
    static const struct {
        const char *text;
        int ids[4], n;
        const char *decoded, *decoded_skip;
    } cases[] = {
        {"abc", {4}, 1, "abc", "abc"},
        {"bca", {5, 0}, 2, "bc a", "bc a"},
        {"xyzab", {7, 3}, 2, "<unk> ab", "<unk> ab"},
        {"a <m>  b", {0, 8, 1}, 3, "a <m> b", "a b"},          /* lstrip and rstrip eat spaces */
        {"a<w>b", {0, 7, 1}, 3, "a <unk> b", "a <unk> b"},     /* single_word: not inside a word */
        {" <w> c", {6, 9, 6, 2}, 4, "  <w>   c", "  <w>   c"}, /* ... but between spaces */
        {"ab\xC3\xA9\xC3\xA9"
         "c",
         {3, 7, 2},
         3,
         "ab <unk> c",
         "ab <unk> c"},
        {"<m><m>", {8, 8}, 2, "<m> <m>", ""},
    };
    fl_tokenizer *tok = NULL;
    fl_err err = {0};
    CHECK(fl_tokenizer_parse(&tok, SYNTHETIC, strlen(SYNTHETIC), NULL, 0, "syn.json", &err) == 0,
          "%s", err.msg);
    if (!tok) return;
    CHECK(fl_tokenizer_vocab_size(tok) == 10 && fl_tokenizer_is_special(tok, 8) &&
              !fl_tokenizer_is_special(tok, 9),
          "synthetic vocabulary");
    fl_ids ids = {0};
    fl_str out = {0};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        ids.n = 0;
        int rc = fl_tokenizer_encode(tok, cases[c].text, strlen(cases[c].text), &ids, &err);
        int same = rc == 0 && (int)ids.n == cases[c].n &&
                   memcmp(ids.v, cases[c].ids, ids.n * sizeof *ids.v) == 0;
        CHECK(same, "synthetic '%s': ids differ from tokenizers'", cases[c].text);
        out.n = 0;
        CHECK(fl_tokenizer_decode(tok, cases[c].ids, (size_t)cases[c].n, 0, &out, &err) == 0 &&
                  strcmp(out.s, cases[c].decoded) == 0,
              "synthetic '%s': decoded '%s'", cases[c].text, out.s);
        out.n = 0;
        CHECK(fl_tokenizer_decode(tok, cases[c].ids, (size_t)cases[c].n, 1, &out, &err) == 0 &&
                  strcmp(out.s, cases[c].decoded_skip) == 0,
              "synthetic '%s': decoded without specials '%s'", cases[c].text, out.s);
    }
    /* chat: no chat_template means the plain format */
    fl_chat_msg msgs[3] = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}};
    out.n = 0;
    CHECK(fl_chat_render(tok, msgs, 3, 1, &out, &err) == 0 &&
              strcmp(out.s, "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello\n\nAssistant:") == 0,
          "plain chat: %s", out.s);
    CHECK(fl_tokenizer_set_chat_format(tok, "llama-2", &err) == 0, "%s", err.msg);
    fl_chat_msg odd[2] = {{"assistant", "first"}, {"user", "second"}};
    CHECK(fl_chat_render(tok, odd, 2, 0, &out, &err) == FL_EINPUT &&
              strstr(err.msg, "roles must alternate"),
          "llama-2 refuses an assistant first: %s", err.msg);
    CHECK(fl_tokenizer_set_chat_format(tok, "zephyr", &err) == FL_EINPUT &&
              strstr(err.msg, "'zephyr': expected plain, chatml, llama-2 or llama-3"),
          "unknown format name: %s", err.msg);
    fl_ids_free(&ids);
    fl_str_free(&out);
    fl_tokenizer_free(tok);

    /* an unrecognised chat_template loads, and rendering names it */
    const char *config = "{\"chat_template\": \"{{ bos_token }}<|user|>{{ message }}\"}";
    CHECK(fl_tokenizer_parse(&tok, SYNTHETIC, strlen(SYNTHETIC), config, strlen(config), "syn",
                             &err) == 0,
          "%s", err.msg);
    CHECK(fl_tokenizer_chat_format(tok) == FL_CHAT_UNKNOWN &&
              fl_chat_render(tok, msgs, 1, 1, &out, &err) == FL_EINPUT &&
              strstr(err.msg, "chat_template \"{{ bos_token }}<|user|>") &&
              strstr(err.msg, "--chat-template"),
          "unknown template named: %s", err.msg);
    fl_str_free(&out);
    fl_tokenizer_free(tok);
}

/* ---- bad files ------------------------------------------------------------------------------ */

/* SYNTHETIC with `from` replaced by `to` must fail to load with `expect` in the message. */
static void expect_refused(const char *from, const char *to, const char *config,
                           const char *expect) {
    char json[4096];
    const char *at = strstr(SYNTHETIC, from);
    if (!at) {
        CHECK(0, "test bug: '%s' not in the synthetic tokenizer", from);
        return;
    }
    snprintf(json, sizeof json, "%.*s%s%s", (int)(at - SYNTHETIC), SYNTHETIC, to,
             at + strlen(from));
    fl_tokenizer *tok = (fl_tokenizer *)1;
    fl_err err = {0};
    int rc = fl_tokenizer_parse(&tok, json, strlen(json), config, config ? strlen(config) : 0,
                                "bad/tokenizer.json", &err);
    CHECK(rc == FL_EINPUT && tok == NULL && strstr(err.msg, "bad/tokenizer.json") &&
              strstr(err.msg, expect),
          "expected '%s', got rc %d: %s", expect, rc, err.msg);
}

static void check_bad_files(void) {
    expect_refused("{\"version\"", "[{\"version\"", NULL, "not valid JSON");
    expect_refused("\"type\": \"BPE\"", "\"type\": \"WordPiece\"", NULL,
                   "model.type: 'WordPiece' is not supported");
    expect_refused("\"merges\": [\"a b\"", "\"merges\": [\"a z\"", NULL,
                   "model.merges[0]: 'z' is not in the vocabulary");
    expect_refused("\"merges\": [\"a b\"", "\"merges\": [\"a b c\"", NULL,
                   "model.merges[0]: expected \"left right\"");
    expect_refused("\"a\": 0", "\"a\": -1", NULL, "model.vocab: entry 'a': expected an id");
    expect_refused("\"b\": 1", "\"b\": 0", NULL, "model.vocab: id 0 appears twice");
    expect_refused("\"dropout\": null", "\"dropout\": 0.1", NULL, "BPE dropout is not supported");
    expect_refused("\"unk_token\": \"<unk>\"", "\"unk_token\": \"<none>\"", NULL,
                   "model.unk_token: '<none>' is not in the vocabulary");
    expect_refused("\"normalizer\": null", "\"normalizer\": {\"type\": \"Lowercase\"}", NULL,
                   "normalizer: type 'Lowercase' is not supported");
    expect_refused("\"pre_tokenizer\": null",
                   "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\w+\"},"
                   " \"behavior\": \"Isolated\", \"invert\": false}",
                   NULL, "Split pattern \\w+ is not one fedllm knows");
    expect_refused("\"pre_tokenizer\": null", "\"pre_tokenizer\": {\"type\": \"Whitespace\"}", NULL,
                   "pre_tokenizer: type 'Whitespace' is not supported");
    expect_refused("\"decoder\": null", "\"decoder\": {\"type\": \"WordPiece\"}", NULL,
                   "decoder: type 'WordPiece' is not supported");
    expect_refused("\"id\": 8", "\"id\": \"8\"", NULL, "added_tokens[0]: expected an id");
    expect_refused("\"normalizer\"", "\"normalizer\"", "{\"bos_token\": \"<s>\"}",
                   "tokenizer_config.json: bos_token: '<s>' is not in the vocabulary");
    expect_refused("\"normalizer\"", "\"normalizer\"", "{\"eos_token\": 3}",
                   "eos_token: expected a string or {\"content\": ...}");
    expect_refused("\"normalizer\"", "\"normalizer\"", "{\"chat_template\": 7}",
                   "chat_template: expected a string");
    expect_refused("\"normalizer\"", "\"normalizer\"", "{\"bos_token\":", "not valid JSON");
    /* every truncation of the file is refused cleanly */
    size_t n = strlen(SYNTHETIC);
    int refused = 0;
    for (size_t cut = 0; cut < n; cut++) {
        fl_tokenizer *tok = NULL;
        if (fl_tokenizer_parse(&tok, SYNTHETIC, cut, NULL, 0, "t", NULL) == FL_EINPUT && !tok)
            refused++;
        fl_tokenizer_free(tok);
    }
    CHECK(refused == (int)n, "%d of %zu truncations refused", refused, n);
}

/* The hub's GPT-2 tokenizer_config.json names no eos_token: the end-of-text token is the
 * tokenizer class's default, as transformers' GPT2Tokenizer has it; an explicit null means none. */
static void check_eos_defaults(void) {
    char *json = NULL;
    size_t len = 0;
    fl_err err = {0};
    CHECK(fl_read_file(FIXTURES "/gpt2/tokenizer.json", &json, &len, 64 << 20, &err) == FL_OK, "%s",
          err.msg);
    if (!json) return;
    static const struct {
        const char *config;
        int has_eos;
    } cases[] = {{"{\"model_max_length\": 1024}", 1},
                 {"{\"model_max_length\": 1024, \"eos_token\": null}", 0},
                 {"{\"eos_token\": \"<|endoftext|>\"}", 1}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        fl_tokenizer *tok = NULL;
        int rc = fl_tokenizer_parse(&tok, json, len, cases[i].config, strlen(cases[i].config),
                                    "gpt2/tokenizer.json", &err);
        CHECK(rc == FL_OK, "%s", err.msg);
        if (rc) continue;
        size_t n;
        int eos = fl_tokenizer_eos(tok);
        const char *text = eos >= 0 ? fl_tokenizer_token(tok, eos, &n) : NULL;
        CHECK(cases[i].has_eos ? text && strcmp(text, "<|endoftext|>") == 0 : eos == -1,
              "config %s: eos %d (%s)", cases[i].config, eos, text ? text : "none");
        fl_tokenizer_free(tok);
    }
    free(json);
}

/* A byte-level BPE whose vocabulary lacks the input's bytes and that has no unk token: `tokenizers`
 * drops such characters, so pieces encode to nothing (issue 10's reproducer; clang's UBSan once
 * saw a zero offset applied to the NULL id array here). Twice, so the word cache is read too. */
static void check_missing_bytes(void) {
    static const char json[] =
        "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"!\":0},\"merges\":[]},"
        "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
        "\"use_regex\":true},\"decoder\":{\"type\":\"ByteLevel\"}}";
    fl_tokenizer *tok = NULL;
    fl_err err = {0};
    CHECK(fl_tokenizer_parse(&tok, json, strlen(json), NULL, 0, "bytes.json", &err) == 0, "%s",
          err.msg);
    if (!tok) return;
    for (int pass = 0; pass < 2; pass++) {
        fl_ids ids = {0};
        CHECK(fl_tokenizer_encode(tok, "abc", 3, &ids, &err) == 0 && ids.n == 0,
              "pass %d: 'abc' has no byte in the vocabulary: %zu ids", pass, ids.n);
        CHECK(fl_tokenizer_encode(tok, "x!y", 3, &ids, &err) == 0 && ids.n == 1 && ids.v[0] == 0,
              "pass %d: 'x!y' keeps only '!'", pass);
        fl_ids_free(&ids);
    }
    fl_tokenizer_free(tok);
}

int main(void) {
    check_eos_defaults();
    check_fixture("gpt2", FL_CHAT_PLAIN);
    check_fixture("llama3", FL_CHAT_LLAMA3);
    check_fixture("qwen2", FL_CHAT_CHATML);
    check_fixture("sp", FL_CHAT_LLAMA2);
    check_synthetic();
    check_missing_bytes();
    check_bad_files();
    return tu_finish("test_tokenizer");
}
