/* tokenize.c — `fedllm tokenize`: text to token ids and back with a Hugging Face tokenizer, for
 * checking fedllm's tokenizers against the reference and for inspecting what a model sees. All
 * output is built in memory and written at the end, so an error leaves stdout empty. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "fedllm/clock.h"
#include "fedllm/fileio.h"
#include "fedllm/tokenizer.h"

#define MAX_INPUT_BYTES ((size_t)1 << 30)

static const char HELP[] =
    "usage: fedllm tokenize --tokenizer FILE_OR_DIR --in FILE [options]\n"
    "\n"
    "Prints the token ids of FILE's text (no BOS/EOS added; special tokens written in the text\n"
    "become their ids), separated by spaces.\n"
    "  --jsonl FIELD   FILE is JSONL: one line of ids per record's FIELD\n"
    "  --bos           add BOS / EOS as the tokenizer's config asks (add_bos_token ...)\n"
    "  --decode        FILE holds ids (separated by white space): print their exact text\n"
    "  --skip-special  with --decode, leave special tokens out\n"
    "  --stats         bytes, tokens and speed on stderr\n";

enum { T_TOKENIZER, T_IN, T_JSONL, T_BOS, T_DECODE, T_SKIP, T_STATS, T_COUNT };

/* Appends ids as decimal text separated by spaces, then a newline. */
static int put_ids(fl_str *out, const int32_t *ids, size_t n, fl_err *err) {
    char buf[16];
    for (size_t i = 0; i < n; i++) {
        int len = snprintf(buf, sizeof buf, i ? " %d" : "%d", ids[i]);
        if (fl_str_append(out, buf, (size_t)len, err)) return err->code;
    }
    return fl_str_append(out, "\n", 1, err);
}

static int encode_text(fl_tokenizer *tok, const char *text, size_t len, int bos, fl_ids *ids,
                       fl_err *err) {
    ids->n = 0;
    int rc = bos && fl_tokenizer_adds_bos(tok) ? fl_ids_push(ids, fl_tokenizer_bos(tok), err) : 0;
    if (!rc) rc = fl_tokenizer_encode(tok, text, len, ids, err);
    if (!rc && bos && fl_tokenizer_adds_eos(tok)) rc = fl_ids_push(ids, fl_tokenizer_eos(tok), err);
    return rc;
}

/* --jsonl FIELD: every non-blank line a JSON object with FIELD a string. */
static int encode_jsonl(fl_tokenizer *tok, const char *path, char *data, const char *field, int bos,
                        fl_str *out, size_t *n_tokens, fl_err *err) {
    fl_ids ids = {0};
    long line_no = 0;
    int rc = FL_OK;
    for (char *line = data, *next; line && !rc; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        line_no++;
        if (strspn(line, " \t\r") == strlen(line)) continue;
        cJSON *record = cJSON_Parse(line);
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(record, field);
        if (!cJSON_IsObject(record))
            rc = fl_err_set(err, FL_EINPUT, "%s:%ld: not a JSON object", path, line_no);
        else if (!cJSON_IsString(value))
            rc = fl_err_set(err, FL_EINPUT, "%s:%ld: field '%s' missing or not a string", path,
                            line_no, field);
        else if ((rc = encode_text(tok, value->valuestring, strlen(value->valuestring), bos, &ids,
                                   err)) == FL_EINPUT)
            fl_err_set(err, FL_EINPUT, "%s:%ld: %s", path, line_no, err->msg);
        if (!rc) rc = put_ids(out, ids.v, ids.n, err);
        *n_tokens += ids.n;
        cJSON_Delete(record);
    }
    fl_ids_free(&ids);
    return rc;
}

/* --decode: white-space separated ids. */
static int parse_ids(const char *path, const char *data, fl_ids *ids, fl_err *err) {
    const char *p = data;
    for (;;) {
        p += strspn(p, " \t\r\n");
        if (!*p) return FL_OK;
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || (*end && !strchr(" \t\r\n", *end)) || v < 0 || v > INT32_MAX)
            return fl_err_set(err, FL_EINPUT,
                              "%s: id %zu: expected a non-negative integer, got '%.*s'", path,
                              ids->n + 1, (int)strcspn(p, " \t\r\n") % 21, p);
        if (fl_ids_push(ids, (int32_t)v, err)) return err->code;
        p = end;
    }
}

int cli_tokenize(int argc, char **argv) {
    cli_opt o[T_COUNT] = {
        [T_TOKENIZER] = {"tokenizer", 1, NULL}, [T_IN] = {"in", 1, NULL},
        [T_JSONL] = {"jsonl", 1, NULL},         [T_BOS] = {"bos", 0, NULL},
        [T_DECODE] = {"decode", 0, NULL},       [T_SKIP] = {"skip-special", 0, NULL},
        [T_STATS] = {"stats", 0, NULL},
    };
    int help;
    fl_err err = {0};
    if (cli_parse(argc, argv, 2, o, T_COUNT, &help, &err)) return cli_fail("tokenize", &err);
    if (help) return fputs(HELP, stdout), 0;
    const char *path = o[T_IN].value;
    if (!o[T_TOKENIZER].value || !path) {
        fl_err_set(&err, FL_EINPUT, "--tokenizer and --in are required (see --help)");
        return cli_fail("tokenize", &err);
    }
    if (o[T_DECODE].value && (o[T_JSONL].value || o[T_BOS].value)) {
        fl_err_set(&err, FL_EINPUT, "--decode does not go with --jsonl or --bos");
        return cli_fail("tokenize", &err);
    }
    fl_tokenizer *tok = NULL;
    char *data = NULL;
    size_t len = 0, n_tokens = 0;
    fl_str out = {0};
    fl_ids ids = {0};
    int rc = fl_tokenizer_load(&tok, o[T_TOKENIZER].value, &err);
    if (!rc) rc = fl_read_file(path, &data, &len, MAX_INPUT_BYTES, &err);
    if (!rc) rc = fl_str_append(&out, "", 0, &err);
    double start = fl_now_s();
    if (!rc && o[T_DECODE].value) {
        rc = parse_ids(path, data, &ids, &err);
        if (!rc && fl_tokenizer_decode(tok, ids.v, ids.n, o[T_SKIP].value != NULL, &out, &err))
            rc = err.code == FL_EINPUT ? fl_err_prefix(&err, path) : err.code;
        n_tokens = ids.n;
    } else if (!rc && o[T_JSONL].value) {
        rc = encode_jsonl(tok, path, data, o[T_JSONL].value, o[T_BOS].value != NULL, &out,
                          &n_tokens, &err);
    } else if (!rc) {
        rc = encode_text(tok, data, len, o[T_BOS].value != NULL, &ids, &err);
        if (rc == FL_EINPUT) fl_err_prefix(&err, path);
        if (!rc) rc = put_ids(&out, ids.v, ids.n, &err);
        n_tokens = ids.n;
    }
    double seconds = fl_now_s() - start;
    if (!rc && fwrite(out.s, 1, out.n, stdout) != out.n)
        rc = fl_err_set(&err, FL_EIO, "stdout: write failed");
    if (!rc && o[T_STATS].value)
        fprintf(stderr, "%zu bytes, %zu tokens, %.3f s, %.2f MB/s\n", len, n_tokens, seconds,
                (double)len / 1e6 / (seconds > 0 ? seconds : 1e-9));
    free(data);
    fl_ids_free(&ids);
    fl_str_free(&out);
    fl_tokenizer_free(tok);
    return rc ? cli_fail("tokenize", &err) : 0;
}
