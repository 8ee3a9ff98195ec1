/* tokenizer_internal.h — what tokenizer.c shares with chat.c and pretokenize.c. */
#ifndef FEDLLM_TOKENIZER_INTERNAL_H
#define FEDLLM_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "fedllm/tokenizer.h"

/* The pre-tokenizer regexes fedllm runs, recognised by their exact text (pretokenize.c). */
typedef enum {
    FL_PATTERN_NONE = -1,
    FL_PATTERN_GPT2 = 0, /* GPT-2: 's|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    FL_PATTERN_LLAMA3,   /* LLaMA-3 / cl100k: case-insensitive contractions, \p{N}{1,3} */
    FL_PATTERN_QWEN2,    /* Qwen2: as LLaMA-3 with single digits */
} fl_pattern;

/* Which pattern text is, or FL_PATTERN_NONE. */
fl_pattern fl_pattern_from_text(const char *text);

/* Scratch for fl_pattern_split: the piece decoded to code points with their byte offsets and
 * character classes. Grown on demand; free with fl_split_scratch_free. */
typedef struct fl_split_scratch {
    uint32_t *cp;  /* (n) code points */
    uint32_t *off; /* (n+1) byte offset of each code point, then the piece length */
    uint8_t *cls;  /* (n) letter / number / space bits */
    size_t cap;
} fl_split_scratch;
void fl_split_scratch_free(fl_split_scratch *s);

/* Splits valid UTF-8 s[0..len) the way `Split(Regex(pattern), "isolated")` does: calls
 * emit(ctx, start, end) for each consecutive match (byte offsets) covering the whole input.
 * Returns FL_OK or FL_ENOMEM. */
int fl_pattern_split(fl_pattern pattern, const char *s, size_t len, fl_split_scratch *scratch,
                     int (*emit)(void *ctx, size_t start, size_t end), void *ctx, fl_err *err);

/* For chat.c: the chat_template text (NULL when there is none) and the tokens' texts. */
const char *fl_tokenizer_chat_template(const fl_tokenizer *tok);
fl_chat_format fl_tokenizer_chat_format_of(const fl_tokenizer *tok);

/* Sets format from a template text (chat.c), used by the loader. */
fl_chat_format fl_chat_detect(const char *template_text);

#endif
