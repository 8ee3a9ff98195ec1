/* data.h — JSONL datasets turned into fixed-size (tokens, targets) rows for causal-LM training,
 * tokenized by the model's tokenizer (tokenizer.h).
 *
 * Formats: FL_DATA_TEXT reads a string field (default "text") per line; documents are tokenized,
 * each followed by EOS, concatenated and cut into rows of T+1 tokens (packing); every target
 * counts. FL_DATA_PROMPT_RESPONSE reads two fields (default "prompt", "response"); each record
 * becomes one row, prompt + response + EOS, right-padded; targets inside the prompt and in the
 * padding are -100 so that the loss is on the response only. A record longer than a row (T+1
 * tokens) is truncated to fit, as Hugging Face tokenizers truncate a (prompt, response) pair with
 * truncation="longest_first": a token at a time comes off the longer of the two (the response on a
 * tie) until they fit, the prompt losing its beginning (so what is kept runs up to the response)
 * and the response its end; a response that was cut has no EOS (it does not end there), and
 * [BOS] stays. So a long prompt shrinks to make room for the response, and when both are long each
 * keeps about half the row. fl_dataset.n_truncated counts those records; with refuse_long set a
 * long record is an error naming the file and line instead. Blank lines are skipped; any other
 * line that is not a JSON object with the field as a string is an error naming the file, line and
 * field. */
#ifndef FEDLLM_DATA_H
#define FEDLLM_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "fedllm/err.h"
#include "fedllm/tokenizer.h"

typedef enum { FL_DATA_TEXT = 0, FL_DATA_PROMPT_RESPONSE } fl_data_format;

typedef struct fl_data_spec {
    fl_data_format format;
    const char *text_field;     /* NULL: "text" */
    const char *prompt_field;   /* NULL: "prompt" */
    const char *response_field; /* NULL: "response" */
    int refuse_long;            /* 1: a prompt/response record longer than T+1 tokens is an error;
                                   0 (default): it is truncated (see above) */
} fl_data_spec;

typedef struct fl_dataset {
    int T; /* tokens per row */
    long n_rows;
    int32_t *tokens;  /* (n_rows, T) inputs */
    int32_t *targets; /* (n_rows, T) next-token targets, -100 = not counted */
    long n_counted;   /* targets != -100 over all rows */
    long n_records;   /* JSONL records read */
    long n_truncated; /* prompt/response records cut to fit a row */
    int64_t *order;   /* (n_rows) the row order of the current epoch */
} fl_dataset;

/* Reads and tokenizes the whole file (tok is used, not kept; its word cache changes). On error,
 * FL_EINPUT "FILE:LINE: field 'text': expected a string" (or similar) and *ds is left empty. An
 * empty dataset, or a tokenizer without EOS, is an error. */
int fl_dataset_load(fl_dataset *ds, const char *path, const fl_data_spec *spec, fl_tokenizer *tok,
                    int T, fl_err *err);
/* Sets the row order of an epoch: identity for seed 0, else a Fisher-Yates shuffle seeded by
 * (seed, epoch). */
void fl_dataset_shuffle(fl_dataset *ds, uint64_t seed, int epoch);
/* Copies rows first_row .. first_row+B-1 of the current order (wrapping around the end) into
 * tokens and targets, each (B, T). */
void fl_dataset_batch(const fl_dataset *ds, long first_row, int B, int32_t *tokens,
                      int32_t *targets);
void fl_dataset_free(fl_dataset *ds);

#endif
