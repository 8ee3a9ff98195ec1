/* data.c — JSONL datasets cut into (tokens, targets) rows, tokenized by the model's tokenizer.
 *
 * Datasets: one JSON object per line, read with getline so that a line has no length limit. Text
 * records become one token stream, each document followed by EOS; rows are consecutive windows of
 * T+1 tokens that overlap by one (row r holds stream[r*T .. r*T+T]), so every token but the first
 * is a target exactly once and the tail shorter than a window is dropped. A stream shorter than
 * T+1 gives one row padded with EOS whose padded targets are -100. A document starts with BOS when
 * the tokenizer adds one (LLaMA). Prompt/response records each become one row: [BOS] + prompt +
 * response + EOS, padded with EOS; the targets that predict prompt tokens or padding are -100; a
 * record longer than a row is truncated as Hugging Face's "longest_first" does (data.h), or
 * refused. Everything is held in memory as int32: four bytes a token. */
#define _GNU_SOURCE
#include "fedllm/data.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fileio.h"
#include "fedllm/rng.h"

#define IGNORE_TARGET (-100)

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
    fl_tokenizer *tok;
    int eos_id, bos_id; /* bos_id -1: none added */
    int T;
    long line;
    i32_vec stream; /* FL_DATA_TEXT: all documents, EOS after each */
    i32_vec tokens; /* FL_DATA_PROMPT_RESPONSE: finished rows */
    i32_vec targets;
    fl_ids record; /* FL_DATA_PROMPT_RESPONSE: scratch for one record's tokens */
    long n_records;
    long n_truncated;
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

/* Appends ids to a vector, through the tokenizer's error reporting. */
static int encode_into(loader *ld, const char *text, fl_ids *ids, fl_err *err) {
    int rc = fl_tokenizer_encode(ld->tok, text, strlen(text), ids, err);
    if (rc == FL_EINPUT) {
        char where[64];
        snprintf(where, sizeof where, "%ld", ld->line);
        fl_err_prefix(err, where);
        return fl_err_prefix(err, ld->path);
    }
    return rc;
}

static int add_text(loader *ld, const char *text, fl_err *err) {
    fl_ids *ids = &ld->record;
    ids->n = 0;
    int rc = ld->bos_id >= 0 ? fl_ids_push(ids, ld->bos_id, err) : FL_OK;
    if (!rc) rc = encode_into(ld, text, ids, err);
    if (!rc) rc = fl_ids_push(ids, ld->eos_id, err);
    if (!rc) rc = vec_reserve(&ld->stream, ids->n, err);
    if (rc) return rc;
    memcpy(ld->stream.v + ld->stream.n, ids->v, ids->n * sizeof *ids->v);
    ld->stream.n += ids->n;
    return FL_OK;
}

/* Hugging Face's truncation="longest_first" of a pair: a token at a time off the longer of the
 * two, the second (the response) on a tie, until they fit in budget. */
static void fit_longest_first(size_t *prompt, size_t *response, size_t budget) {
    while (*prompt + *response > budget) {
        if (*prompt > *response)
            (*prompt)--;
        else
            (*response)--;
    }
}

/* A record of bos + p + r + 1 tokens ([BOS] prompt response EOS, laid out so in seq) cut to the
 * row's T+1 in place: the prompt's tail and the response's head are kept; a cut response loses
 * its EOS and takes that slot. Returns the new length; *prompt_end is where the response starts. */
static size_t truncate_record(fl_ids *seq, size_t bos, size_t p, size_t r, size_t row,
                              size_t *prompt_end) {
    size_t keep_p = p, keep_r = r, eos = 1;
    fit_longest_first(&keep_p, &keep_r, row - bos - 1);
    if (keep_r < r) eos = 0, keep_r++; /* a cut response has no end of text: one more token */
    memmove(seq->v + bos, seq->v + bos + (p - keep_p), keep_p * sizeof *seq->v);
    memmove(seq->v + bos + keep_p, seq->v + bos + p, keep_r * sizeof *seq->v);
    if (eos) seq->v[bos + keep_p + keep_r] = seq->v[bos + p + r];
    *prompt_end = bos + keep_p;
    return bos + keep_p + keep_r + eos;
}

/* One prompt/response row: [BOS] + prompt + response + EOS (truncated to fit, unless refused),
 * padded with EOS; targets count from the first response token on. */
static int add_prompt_response(loader *ld, const char *prompt, const char *response, fl_err *err) {
    size_t T = (size_t)ld->T, bos = ld->bos_id >= 0;
    fl_ids *seq = &ld->record;
    seq->n = 0;
    int rc = bos ? fl_ids_push(seq, ld->bos_id, err) : FL_OK;
    if (!rc) rc = encode_into(ld, prompt, seq, err);
    size_t prompt_len = seq->n;
    if (!rc) rc = encode_into(ld, response, seq, err);
    if (!rc) rc = fl_ids_push(seq, ld->eos_id, err);
    if (rc) return rc;
    size_t n = seq->n;
    if (n > T + 1 && ld->spec->refuse_long)
        return fl_err_set(err, FL_EINPUT,
                          "%s:%ld: record is %zu tokens (prompt %zu + response %zu + EOS), more "
                          "than the %zu a row holds (T+1), and truncation is off",
                          ld->path, ld->line, n, prompt_len, n - prompt_len - 1, T + 1);
    if (n > T + 1) {
        n = truncate_record(seq, bos, prompt_len - bos, n - prompt_len - 1, T + 1, &prompt_len);
        ld->n_truncated++;
    }
    rc = vec_reserve(&ld->tokens, T, err);
    if (rc == FL_OK) rc = vec_reserve(&ld->targets, T, err);
    if (rc != FL_OK) return fl_err_prefix(err, ld->path);
    int32_t *tokens = ld->tokens.v + ld->tokens.n, *targets = ld->targets.v + ld->targets.n;
    for (size_t t = 0; t < T; t++) {
        tokens[t] = t < n ? seq->v[t] : ld->eos_id;
        targets[t] = t + 1 < n && t + 1 >= prompt_len ? seq->v[t + 1] : IGNORE_TARGET;
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
        ds->tokens[t] = t < n ? ld->stream.v[t] : ld->eos_id;
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

int fl_dataset_load(fl_dataset *ds, const char *path, const fl_data_spec *spec, fl_tokenizer *tok,
                    int T, fl_err *err) {
    static const fl_data_spec text_spec = {.format = FL_DATA_TEXT};
    if (!spec) spec = &text_spec;
    memset(ds, 0, sizeof *ds);
    if (T < 1) return fl_err_set(err, FL_EINPUT, "%s: rows of %d tokens, expected T >= 1", path, T);
    if (fl_tokenizer_eos(tok) < 0)
        return fl_err_set(err, FL_EINPUT,
                          "%s: the tokenizer has no end-of-text token to separate records", path);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return errno == ENOENT
                   ? fl_err_set(err, FL_EINPUT, "%s: file not found", path)
                   : fl_err_set(err, FL_EIO, "%s: cannot open: %s", path, strerror(errno));
    loader ld = {.path = path,
                 .spec = spec,
                 .tok = tok,
                 .eos_id = fl_tokenizer_eos(tok),
                 .bos_id = fl_tokenizer_adds_bos(tok) ? fl_tokenizer_bos(tok) : -1,
                 .T = T};
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
    fl_ids_free(&ld.record);
    free(ld.tokens.v);
    free(ld.targets.v);
    ds->T = T;
    ds->n_records = ld.n_records;
    ds->n_truncated = ld.n_truncated;
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
