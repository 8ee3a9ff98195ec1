/* decode_stream.c — a continuation decoded token by token, showing only text that later tokens
 * cannot change (fl_decode_stream in tokenizer.h), so that a streamed generation prints exactly
 * the batched decode.
 *
 * Why text can change: decoding is not per token. A ByteFallback decoder turns a run of <0xXX>
 * tokens into their bytes only if the whole run is valid UTF-8, else into one U+FFFD per token, so
 * <0x7C> alone is "|" but <0x7C><0xF2> is "\uFFFD\uFFFD"; a ByteLevel decoder turns an incomplete
 * UTF-8 sequence at the end into U+FFFD, which the next bytes may complete. So the settled text is
 * the decode of the ids before the trailing byte run (fl_tokenizer_settled_ids), less any
 * trailing U+FFFD; everything before that is the same in every longer decode. The continuation is
 * decode(all) minus decode(prompt), as tokenizers whose decoding depends on the neighbours
 * (SentencePiece's leading space) need; when the new ids change the prompt's own text (they
 * complete a byte sequence the prompt ended with) it is the new ids decoded alone, the same rule
 * at every step and at the end. */
#include <stdlib.h>
#include <string.h>

#include "fedllm/tokenizer.h"

/* The continuation of ids[0..n) into out (replacing it); final keeps a trailing U+FFFD. */
static int continuation(const fl_decode_stream *ds, size_t n, int final, fl_str *out, fl_err *err) {
    fl_str all = {0};
    int rc = fl_tokenizer_decode(ds->tok, ds->ids.v, n, 1, &all, err);
    size_t skip = ds->prompt_text.n;
    if (!rc && (all.n < skip || memcmp(all.s, ds->prompt_text.s, skip) != 0)) {
        all.n = 0; /* the prompt's text changed: decode the new ids alone */
        rc = fl_tokenizer_decode(ds->tok, ds->ids.v + ds->n_prompt, n - ds->n_prompt, 1, &all, err);
        skip = 0;
    }
    size_t end = all.n;
    while (!final && end >= skip + 3 && memcmp(all.s + end - 3, "\xEF\xBF\xBD", 3) == 0)
        end -= 3;
    out->n = 0;
    if (!rc) rc = fl_str_append(out, all.s + skip, end - skip, err);
    fl_str_free(&all);
    return rc;
}

int fl_decode_stream_init(fl_decode_stream *ds, const fl_tokenizer *tok, const int32_t *prompt,
                          size_t n, fl_err *err) {
    memset(ds, 0, sizeof *ds);
    ds->tok = tok;
    int rc = fl_str_append(&ds->text, "", 0, err);
    for (size_t i = 0; i < n && !rc; i++)
        rc = fl_ids_push(&ds->ids, prompt[i], err);
    ds->n_prompt = n;
    if (!rc) rc = fl_tokenizer_decode(tok, prompt, n, 1, &ds->prompt_text, err);
    if (rc) fl_decode_stream_free(ds);
    return rc;
}

/* Replaces text with the continuation of the first n ids when that extends it (which the rules
 * above make the only case; the check keeps what was shown a prefix regardless). */
static int settle(fl_decode_stream *ds, size_t n, int final, fl_err *err) {
    fl_str next = {0};
    int rc = continuation(ds, n, final, &next, err);
    int extends = next.n > ds->text.n && memcmp(next.s, ds->text.s, ds->text.n) == 0;
    if (!rc && (final || extends)) {
        fl_str_free(&ds->text);
        ds->text = next;
        return FL_OK;
    }
    fl_str_free(&next);
    return rc;
}

int fl_decode_stream_push(fl_decode_stream *ds, int32_t id, fl_err *err) {
    size_t len;
    if (!fl_tokenizer_token(ds->tok, id, &len))
        return fl_err_set(err, FL_EINPUT, "token id %d is not in the vocabulary (size %d)", id,
                          fl_tokenizer_vocab_size(ds->tok));
    int rc = fl_ids_push(&ds->ids, id, err);
    if (rc) return rc;
    size_t settled = fl_tokenizer_settled_ids(ds->tok, ds->ids.v, ds->ids.n);
    if (settled < ds->n_prompt) settled = ds->n_prompt;
    return settle(ds, settled, 0, err);
}

int fl_decode_stream_finish(fl_decode_stream *ds, fl_err *err) {
    return settle(ds, ds->ids.n, 1, err);
}

void fl_decode_stream_free(fl_decode_stream *ds) {
    fl_ids_free(&ds->ids);
    fl_str_free(&ds->prompt_text);
    fl_str_free(&ds->text);
}
