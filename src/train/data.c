/* data.c — the byte-level tokenizer and JSONL datasets cut into (tokens, targets) rows.
 *
 * Tokenizer: until BPE lands, ids 0..255 are the bytes and 256 is <|endoftext|> (EOS). On disk it
 * is a Hugging Face tokenizers file that says exactly that — a ByteLevel pre-tokenizer with no
 * regex split and a BPE model with no merges, whose vocabulary maps GPT-2's printable stand-in for
 * byte b (bytes_to_unicode) to id b — so transformers loads the same tokenizer. The loader
 * recognises that file and nothing else.
 *
 * Datasets: one JSON object per line, read with getline so that a line has no length limit. Text
 * records become one token stream, each document followed by EOS; rows are consecutive windows of
 * T+1 tokens that overlap by one (row r holds stream[r*T .. r*T+T]), so every token but the first
 * is a target exactly once and the tail shorter than a window is dropped. A stream shorter than
 * T+1 gives one row padded with EOS whose padded targets are -100. Prompt/response records each
 * become one row: prompt + response + EOS, padded with EOS; the targets that predict prompt tokens
 * or padding are -100. Everything is held in memory as int32: four bytes a token. */
#define _GNU_SOURCE
#include "fedllm/data.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fileio.h"
#include "fedllm/rng.h"

#define BYTE_VOCAB               257
#define BYTE_EOS                 256
#define EOS_TEXT                 "<|endoftext|>"
#define IGNORE_TARGET            (-100)
#define TOKENIZER_MAX_FILE_BYTES ((size_t)256 << 20)

/* ---- tokenizer ------------------------------------------------------------------------------- */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes map in
 * order to U+0100 onwards. Writes the UTF-8 form (at most 2 bytes + NUL) into out. */
static void byte_symbol(int byte, char out[4]) {
    int printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
                    (byte >= 0xAE && byte <= 0xFF);
    unsigned codepoint = (unsigned)byte;
    if (!printable) {
        codepoint = 256;
        for (int b = 0; b < byte; b++)
            if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)))
                codepoint++;
    }
    if (codepoint < 0x80) {
        out[0] = (char)codepoint;
        out[1] = '\0';
    } else {
        out[0] = (char)(0xC0 | (codepoint >> 6));
        out[1] = (char)(0x80 | (codepoint & 0x3F));
        out[2] = '\0';
    }
}

/* True when model.vocab is exactly the byte vocabulary and model.merges is empty. */
static int is_byte_bpe(const cJSON *root) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "BPE") != 0 || !cJSON_IsObject(vocab) ||
        cJSON_GetArraySize(vocab) != BYTE_VOCAB || !cJSON_IsArray(merges) ||
        cJSON_GetArraySize(merges) != 0)
        return 0;
    char seen[BYTE_VOCAB] = {0};
    const cJSON *entry;
    cJSON_ArrayForEach(entry, vocab) {
        if (!cJSON_IsNumber(entry) || entry->valuedouble < 0 || entry->valuedouble >= BYTE_VOCAB ||
            entry->valuedouble != (int)entry->valuedouble)
            return 0;
        int id = (int)entry->valuedouble;
        char symbol[4];
        if (id != BYTE_EOS) byte_symbol(id, symbol);
        if (seen[id] || strcmp(entry->string, id == BYTE_EOS ? EOS_TEXT : symbol) != 0) return 0;
        seen[id] = 1;
    }
    return 1;
}

int fl_tokenizer_load(fl_tokenizer *tok, const char *model_dir, fl_err *err) {
    char path[1024];
    int rc = fl_path_join(path, sizeof path, model_dir, "tokenizer.json", err);
    char *text = NULL;
    size_t len = 0;
    if (rc == FL_OK) rc = fl_read_file(path, &text, &len, TOKENIZER_MAX_FILE_BYTES, err);
    if (rc != FL_OK) return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    int ok = cJSON_IsObject(root) && is_byte_bpe(root);
    cJSON_Delete(root);
    if (!ok)
        return fl_err_set(err, FL_EINPUT,
                          "%s: only the byte-level tokenizer written by fedllm init-model is "
                          "supported until BPE tokenizers land",
                          path);
    tok->kind = FL_TOKENIZER_BYTES;
    tok->vocab_size = BYTE_VOCAB;
    tok->eos_id = BYTE_EOS;
    tok->bos_id = -1;
    return FL_OK;
}

static cJSON *byte_level_part(void) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "ByteLevel");
    cJSON_AddBoolToObject(o, "add_prefix_space", 0);
    cJSON_AddBoolToObject(o, "trim_offsets", 1);
    cJSON_AddBoolToObject(o, "use_regex", 0);
    return o;
}

static cJSON *byte_bpe_model(void) {
    cJSON *model = cJSON_CreateObject();
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 0);
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (int b = 0; vocab && b < 256; b++) {
        char symbol[4];
        byte_symbol(b, symbol);
        cJSON_AddNumberToObject(vocab, symbol, b);
    }
    if (vocab) cJSON_AddNumberToObject(vocab, EOS_TEXT, BYTE_EOS);
    cJSON_AddArrayToObject(model, "merges");
    return model;
}

int fl_tokenizer_save_bytes(const char *model_dir, fl_err *err) {
    char path[1024];
    int rc = fl_path_join(path, sizeof path, model_dir, "tokenizer.json", err);
    if (rc != FL_OK) return rc;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    cJSON *eos = cJSON_CreateObject();
    cJSON_AddNumberToObject(eos, "id", BYTE_EOS);
    cJSON_AddStringToObject(eos, "content", EOS_TEXT);
    cJSON_AddBoolToObject(eos, "single_word", 0);
    cJSON_AddBoolToObject(eos, "lstrip", 0);
    cJSON_AddBoolToObject(eos, "rstrip", 0);
    cJSON_AddBoolToObject(eos, "normalized", 1);
    cJSON_AddBoolToObject(eos, "special", 1);
    cJSON_AddItemToArray(added, eos);
    cJSON_AddNullToObject(root, "normalizer");
    cJSON_AddItemToObject(root, "pre_tokenizer", byte_level_part());
    cJSON_AddNullToObject(root, "post_processor");
    cJSON_AddItemToObject(root, "decoder", byte_level_part());
    cJSON_AddItemToObject(root, "model", byte_bpe_model());
    /* Any allocation failure above leaves a part missing; the recogniser catches that. */
    int complete = is_byte_bpe(root);
    char *text = complete ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return fl_err_set(err, FL_ENOMEM, "%s: out of memory building the tokenizer", path);
    rc = fl_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

long fl_tokenizer_encode(const fl_tokenizer *tok, const char *text, size_t len, int32_t *out,
                         size_t cap) {
    (void)tok; /* bytes are the only kind so far */
    if (len > cap) return -1;
    const unsigned char *bytes = (const unsigned char *)text;
    for (size_t i = 0; i < len; i++)
        out[i] = bytes[i];
    return (long)len;
}

size_t fl_tokenizer_decode(const fl_tokenizer *tok, const int32_t *ids, size_t n, char *out,
                           size_t cap) {
    (void)tok;
    if (cap == 0) return 0;
    size_t written = 0;
    for (size_t i = 0; i < n && written + 1 < cap; i++)
        if (ids[i] >= 0 && ids[i] < 256) out[written++] = (char)ids[i];
    out[written] = '\0';
    return written;
}

/* ---- datasets -------------------------------------------------------------------------------- */

typedef struct i32_vec {
    int32_t *v;
    size_t n, cap;
} i32_vec;

static int vec_reserve(i32_vec *a, size_t extra, fl_err *err) {
    if (a->n + extra <= a->cap) return FL_OK;
    size_t cap = a->cap ? a->cap : 4096;
    while (cap < a->n + extra)
        cap *= 2;
    int32_t *grown = realloc(a->v, cap * sizeof *grown);
    if (!grown) return fl_err_set(err, FL_ENOMEM, "out of memory for %zu tokens", cap);
    a->v = grown;
    a->cap = cap;
    return FL_OK;
}

/* State while reading one file. */
typedef struct loader {
    const char *path;
    const fl_data_spec *spec;
    const fl_tokenizer *tok;
    int T;
    long line;
    i32_vec stream; /* FL_DATA_TEXT: all documents, EOS after each */
    i32_vec tokens; /* FL_DATA_PROMPT_RESPONSE: finished rows */
    i32_vec targets;
    i32_vec record; /* FL_DATA_PROMPT_RESPONSE: scratch for one record's tokens */
    long n_records;
} loader;

static const char *field_name(const char *given, const char *dflt) { return given ? given : dflt; }

static const char *string_field(const loader *ld, const cJSON *record, const char *field,
                                fl_err *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(record, field);
    if (cJSON_IsString(item)) return item->valuestring;
    fl_err_set(err, FL_EINPUT, "%s:%ld: field '%s' missing or not a string", ld->path, ld->line,
               field);
    return NULL;
}

static int add_text(loader *ld, const char *text, fl_err *err) {
    size_t len = strlen(text);
    int rc = vec_reserve(&ld->stream, len + 1, err);
    if (rc != FL_OK) return fl_err_prefix(err, ld->path);
    ld->stream.n +=
        (size_t)fl_tokenizer_encode(ld->tok, text, len, ld->stream.v + ld->stream.n, len);
    ld->stream.v[ld->stream.n++] = ld->tok->eos_id;
    return FL_OK;
}

/* One prompt/response row: prompt + response + EOS, padded with EOS; targets count from the
 * first response token on. */
static int add_prompt_response(loader *ld, const char *prompt, const char *response, fl_err *err) {
    size_t T = (size_t)ld->T, prompt_len = strlen(prompt), response_len = strlen(response);
    size_t n = prompt_len + response_len + 1;
    if (n > T + 1)
        return fl_err_set(err, FL_EINPUT,
                          "%s:%ld: record is %zu tokens (prompt %zu + response %zu + EOS), more "
                          "than the %zu a row holds (T+1)",
                          ld->path, ld->line, n, prompt_len, response_len, T + 1);
    int rc = vec_reserve(&ld->tokens, T, err);
    if (rc == FL_OK) rc = vec_reserve(&ld->targets, T, err);
    ld->record.n = 0;
    if (rc == FL_OK) rc = vec_reserve(&ld->record, n, err);
    if (rc != FL_OK) return fl_err_prefix(err, ld->path);
    int32_t *seq = ld->record.v;
    fl_tokenizer_encode(ld->tok, prompt, prompt_len, seq, prompt_len);
    fl_tokenizer_encode(ld->tok, response, response_len, seq + prompt_len, response_len);
    seq[n - 1] = ld->tok->eos_id;
    int32_t *tokens = ld->tokens.v + ld->tokens.n, *targets = ld->targets.v + ld->targets.n;
    for (size_t t = 0; t < T; t++) {
        tokens[t] = t < n ? seq[t] : ld->tok->eos_id;
        targets[t] = t + 1 < n && t + 1 >= prompt_len ? seq[t + 1] : IGNORE_TARGET;
    }
    ld->tokens.n += T;
    ld->targets.n += T;
    return FL_OK;
}

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
    return 1;
}

static int read_line(loader *ld, const char *line, size_t len, fl_err *err) {
    if (ld->line == 1 && len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) line += 3, len -= 3;
    if (is_blank(line, len)) return FL_OK;
    const char *end = NULL;
    cJSON *record = cJSON_ParseWithLengthOpts(line, len, &end, 0);
    if (!cJSON_IsObject(record) || !is_blank(end, len - (size_t)(end - line))) {
        cJSON_Delete(record);
        return fl_err_set(err, FL_EINPUT, "%s:%ld: not a JSON object", ld->path, ld->line);
    }
    ld->n_records++;
    int rc = FL_EINPUT;
    const fl_data_spec *spec = ld->spec;
    if (spec->format == FL_DATA_TEXT) {
        const char *text = string_field(ld, record, field_name(spec->text_field, "text"), err);
        if (text) rc = add_text(ld, text, err);
    } else {
        const char *prompt =
            string_field(ld, record, field_name(spec->prompt_field, "prompt"), err);
        const char *response =
            prompt ? string_field(ld, record, field_name(spec->response_field, "response"), err)
                   : NULL;
        if (response) rc = add_prompt_response(ld, prompt, response, err);
    }
    cJSON_Delete(record);
    return rc;
}

/* Cuts the text stream into rows (see the file comment); takes ownership of the stream. */
static int pack_stream(fl_dataset *ds, loader *ld, fl_err *err) {
    size_t T = (size_t)ld->T, n = ld->stream.n;
    if (n >= T + 1) {
        size_t n_rows = (n - 1) / T;
        ds->targets = malloc(n_rows * T * sizeof *ds->targets);
        if (!ds->targets) return fl_err_set(err, FL_ENOMEM, "%s: out of memory for rows", ld->path);
        memcpy(ds->targets, ld->stream.v + 1, n_rows * T * sizeof *ds->targets);
        int32_t *shrunk = realloc(ld->stream.v, n_rows * T * sizeof *shrunk);
        ds->tokens = shrunk ? shrunk : ld->stream.v; /* rows are the stream's prefix, in place */
        ld->stream.v = NULL;
        ds->n_rows = (long)n_rows;
        return FL_OK;
    }
    ds->tokens = malloc(T * sizeof *ds->tokens);
    ds->targets = malloc(T * sizeof *ds->targets);
    if (!ds->tokens || !ds->targets)
        return fl_err_set(err, FL_ENOMEM, "%s: out of memory for rows", ld->path);
    for (size_t t = 0; t < T; t++) {
        ds->tokens[t] = t < n ? ld->stream.v[t] : ld->tok->eos_id;
        ds->targets[t] = t + 1 < n ? ld->stream.v[t + 1] : IGNORE_TARGET;
    }
    ds->n_rows = 1;
    return FL_OK;
}

static int read_records(loader *ld, FILE *fp, fl_err *err) {
    char *line = NULL;
    size_t line_cap = 0;
    int rc = FL_OK;
    for (;;) {
        errno = 0;
        ssize_t len = getline(&line, &line_cap, fp);
        if (len < 0) {
            if (errno == ENOMEM)
                rc = fl_err_set(err, FL_ENOMEM, "%s:%ld: out of memory reading a line", ld->path,
                                ld->line + 1);
            else if (ferror(fp))
                rc = fl_err_set(err, FL_EIO, "%s: read error: %s", ld->path, strerror(errno));
            break;
        }
        ld->line++;
        if ((rc = read_line(ld, line, (size_t)len, err)) != FL_OK) break;
    }
    free(line);
    return rc;
}

int fl_dataset_load(fl_dataset *ds, const char *path, const fl_data_spec *spec,
                    const fl_tokenizer *tok, int T, fl_err *err) {
    static const fl_data_spec text_spec = {FL_DATA_TEXT, NULL, NULL, NULL};
    if (!spec) spec = &text_spec;
    memset(ds, 0, sizeof *ds);
    if (T < 1) return fl_err_set(err, FL_EINPUT, "%s: rows of %d tokens, expected T >= 1", path, T);
    if (tok->kind != FL_TOKENIZER_BYTES)
        return fl_err_set(err, FL_EINTERNAL, "%s: unknown tokenizer kind", path);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return errno == ENOENT
                   ? fl_err_set(err, FL_EINPUT, "%s: file not found", path)
                   : fl_err_set(err, FL_EIO, "%s: cannot open: %s", path, strerror(errno));
    loader ld = {.path = path, .spec = spec, .tok = tok, .T = T};
    int rc = read_records(&ld, fp, err);
    fclose(fp);
    if (rc == FL_OK && ld.n_records == 0)
        rc = fl_err_set(err, FL_EINPUT, "%s: no records (the file is empty)", path);
    if (rc == FL_OK && spec->format == FL_DATA_TEXT) {
        rc = pack_stream(ds, &ld, err);
    } else if (rc == FL_OK) {
        ds->tokens = ld.tokens.v, ds->targets = ld.targets.v;
        ld.tokens.v = ld.targets.v = NULL;
        ds->n_rows = (long)(ld.tokens.n / (size_t)T);
    }
    free(ld.stream.v);
    free(ld.record.v);
    free(ld.tokens.v);
    free(ld.targets.v);
    ds->T = T;
    ds->n_records = ld.n_records;
    for (size_t i = 0; rc == FL_OK && i < (size_t)ds->n_rows * (size_t)T; i++)
        ds->n_counted += ds->targets[i] != IGNORE_TARGET;
    if (rc == FL_OK && ds->n_counted == 0)
        rc = fl_err_set(err, FL_EINPUT, "%s: no tokens to train on", path);
    if (rc == FL_OK) {
        ds->order = malloc((size_t)ds->n_rows * sizeof *ds->order);
        if (!ds->order) rc = fl_err_set(err, FL_ENOMEM, "%s: out of memory", path);
    }
    if (rc != FL_OK) {
        fl_dataset_free(ds);
        return rc;
    }
    fl_dataset_shuffle(ds, 0, 0);
    return FL_OK;
}

void fl_dataset_shuffle(fl_dataset *ds, uint64_t seed, int epoch) {
    for (long i = 0; i < ds->n_rows; i++)
        ds->order[i] = i;
    if (seed == 0) return;
    /* Draw i picks from counter (epoch << 32 | i): each epoch has its own stream for 2^32 rows. */
    uint64_t base = (uint64_t)(uint32_t)epoch << 32;
    for (long i = ds->n_rows - 1; i > 0; i--) {
        uint32_t w[4];
        fl_philox(seed, base | (uint64_t)(uint32_t)i, w);
        uint64_t draw = (uint64_t)w[0] << 32 | w[1];
        long j = (long)(draw % (uint64_t)(i + 1));
        int64_t tmp = ds->order[i];
        ds->order[i] = ds->order[j];
        ds->order[j] = tmp;
    }
}

void fl_dataset_batch(const fl_dataset *ds, long first_row, int B, int32_t *tokens,
                      int32_t *targets) {
    if (ds->n_rows <= 0) return;
    size_t T = (size_t)ds->T;
    long start = first_row % ds->n_rows;
    if (start < 0) start += ds->n_rows;
    for (int b = 0; b < B; b++) {
        int64_t row = ds->order[(start + b) % ds->n_rows];
        memcpy(tokens + (size_t)b * T, ds->tokens + (size_t)row * T, T * sizeof *tokens);
        memcpy(targets + (size_t)b * T, ds->targets + (size_t)row * T, T * sizeof *targets);
    }
}

void fl_dataset_free(fl_dataset *ds) {
    free(ds->tokens);
    free(ds->targets);
    free(ds->order);
    memset(ds, 0, sizeof *ds);
}
