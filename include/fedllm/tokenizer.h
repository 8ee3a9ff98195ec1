/* tokenizer.h — Hugging Face tokenizers (`tokenizer.json`) in C.
 *
 * What it reads: BPE models with a byte-level pre-tokenizer (GPT-2, LLaMA-3, Qwen2, SmolLM, each
 * with its own pre-tokenizer regex) and SentencePiece-style BPE with byte fallback and the "▁"
 * metaspace, written either with the legacy normalizers (Prepend + Replace) or the Metaspace
 * pre-tokenizer (LLaMA-2, TinyLlama, Mistral); NFC; added and special tokens (lstrip, rstrip,
 * single_word); the decoders those tokenizers use (ByteLevel, or Replace / ByteFallback / Fuse /
 * Strip, or Metaspace). Beside it, `tokenizer_config.json` gives bos/eos, add_bos_token and the
 * chat template. fedllm's own byte tokenizer (`fedllm init-model`) is a byte-level BPE without
 * merges, loaded by the same code.
 *
 * Encoding follows the `tokenizers` library step for step, so ids equal
 * `Tokenizer.encode(text, add_special_tokens=False).ids`: the text is split on added tokens
 * (leftmost, longest), each remaining piece is normalized and pre-tokenized, and each pre-token is
 * merged by rank (lowest rank first, leftmost on ties). Regexes are not interpreted: the
 * pre-tokenizer patterns of GPT-2, LLaMA-3 and Qwen2 are recognised by their exact text and run
 * as hand-written matchers with Unicode tables; any other pattern, normalizer, pre-tokenizer,
 * model or decoder is refused at load time with an error that names it. Decoding gives the text
 * `Tokenizer.decode(ids, skip_special_tokens=...)` gives; decode(encode(x)) == x for valid UTF-8.
 */
#ifndef FEDLLM_TOKENIZER_H
#define FEDLLM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "fedllm/err.h"

typedef struct fl_tokenizer fl_tokenizer;

/* A growable array of ids, and a growable NUL-terminated string. Zero-initialise; free with
 * fl_ids_free / fl_str_free. Appending fails only for lack of memory (FL_ENOMEM). */
typedef struct fl_ids {
    int32_t *v;
    size_t n, cap;
} fl_ids;
typedef struct fl_str {
    char *s; /* NUL-terminated once anything was appended */
    size_t n, cap;
} fl_str;
int fl_ids_push(fl_ids *ids, int32_t id, fl_err *err);
void fl_ids_free(fl_ids *ids);
int fl_str_append(fl_str *str, const char *s, size_t n, fl_err *err);
void fl_str_free(fl_str *str);

/* Loads path: a tokenizer.json file, or a directory holding tokenizer.json (and, when present,
 * tokenizer_config.json beside it). On error *tok is NULL and err names the file and field; an
 * unsupported component is FL_EINPUT naming it. The caller frees *tok with fl_tokenizer_free. */
int fl_tokenizer_load(fl_tokenizer **tok, const char *path, fl_err *err);
/* The same from memory; config_json may be NULL. `name` prefixes error messages. */
int fl_tokenizer_parse(fl_tokenizer **tok, const char *json, size_t json_len,
                       const char *config_json, size_t config_len, const char *name, fl_err *err);
void fl_tokenizer_free(fl_tokenizer *tok);
/* fl_tokenizer_load for a model: also checks that every id the tokenizer can produce has a row in
 * a model of model_vocab_size embeddings; FL_EINPUT "PATH: the tokenizer has N ids but the model
 * only M" otherwise (and *tok is NULL). */
int fl_tokenizer_load_for_model(fl_tokenizer **tok, const char *path, int model_vocab_size,
                                fl_err *err);

/* Writes DIR/tokenizer.json and DIR/tokenizer_config.json for fedllm's byte tokenizer: id b is
 * byte b, id 256 is "<|endoftext|>" (EOS). transformers loads it as a GPT-2-style tokenizer. */
int fl_tokenizer_save_bytes(const char *dir, fl_err *err);
/* Copies the tokenizer files of model directory src (tokenizer.json, tokenizer_config.json,
 * special_tokens_map.json, and the vocab/merges/sentencepiece files when present) into dst.
 * Files src lacks are skipped; src without tokenizer.json is FL_EINPUT. */
int fl_tokenizer_copy_files(const char *src, const char *dst, fl_err *err);

/* 1 + the largest id of the vocabulary and the added tokens: a model must have at least this
 * many embedding rows. */
int fl_tokenizer_vocab_size(const fl_tokenizer *tok);
/* Special ids, -1 when the tokenizer has none. */
int fl_tokenizer_bos(const fl_tokenizer *tok);
int fl_tokenizer_eos(const fl_tokenizer *tok);
/* Whether encoding for a model input starts with BOS / ends with EOS (tokenizer_config.json's
 * add_bos_token / add_eos_token, else what the post-processor template adds). */
int fl_tokenizer_adds_bos(const fl_tokenizer *tok);
int fl_tokenizer_adds_eos(const fl_tokenizer *tok);
/* The text of id (vocabulary string, or added token content; NUL-terminated) and its length; NULL
 * if id is not in the vocabulary. Owned by the tokenizer. */
const char *fl_tokenizer_token(const fl_tokenizer *tok, int id, size_t *len);
int fl_tokenizer_is_special(const fl_tokenizer *tok, int id);

/* Encodes len bytes of UTF-8 text and appends the ids to out; special tokens written in the text
 * become their ids; nothing else is added (no BOS/EOS). FL_EINPUT if the text is not valid UTF-8
 * (naming the byte offset). Not thread-safe: the tokenizer keeps a cache of encoded words, so give
 * each thread its own tokenizer. On error out may hold part of the ids. */
int fl_tokenizer_encode(fl_tokenizer *tok, const char *text, size_t len, fl_ids *out, fl_err *err);
/* Appends the text of ids to out, as the tokenizer's decoder produces it (invalid UTF-8 byte runs
 * become U+FFFD, as `tokenizers` does). skip_special drops special tokens. An id outside the
 * vocabulary is FL_EINPUT naming it. */
int fl_tokenizer_decode(const fl_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                        fl_str *out, fl_err *err);

/* How many leading ids of ids[0..n) decode (skip_special) to text that no id appended later can
 * change: all of them, but for a ByteFallback decoder the trailing run of <0xXX> byte tokens
 * (with the special tokens among them), whose bytes decode together. Cannot fail. */
size_t fl_tokenizer_settled_ids(const fl_tokenizer *tok, const int32_t *ids, size_t n);

/* A continuation decoded as it grows, for streaming: text is what can already be shown. It only
 * grows, and after fl_decode_stream_finish it is the whole continuation — decode(prompt + new)
 * minus decode(prompt), or the new ids alone when the new ids change how the prompt decodes — so
 * the concatenation of what it added along the way is the batched decode, byte for byte. Held
 * back until later ids settle them: a trailing run of byte-fallback tokens (one later byte can
 * turn a valid run into U+FFFD per byte) and trailing U+FFFD (an incomplete UTF-8 sequence that
 * later bytes may complete). */
typedef struct fl_decode_stream {
    const fl_tokenizer *tok;
    fl_ids ids; /* the prompt's ids, then the new ones */
    size_t n_prompt;
    fl_str prompt_text; /* decode(prompt) */
    fl_str text;        /* the continuation's settled text so far (NUL-terminated) */
} fl_decode_stream;
/* Copies the prompt's n ids (n >= 0). On error nothing is left allocated. */
int fl_decode_stream_init(fl_decode_stream *ds, const fl_tokenizer *tok, const int32_t *prompt,
                          size_t n, fl_err *err);
/* Appends id and extends text by what has settled. FL_EINPUT for an id outside the vocabulary
 * (the stream keeps its state), FL_ENOMEM. */
int fl_decode_stream_push(fl_decode_stream *ds, int32_t id, fl_err *err);
/* Settles everything: text becomes the whole continuation. */
int fl_decode_stream_finish(fl_decode_stream *ds, fl_err *err);
void fl_decode_stream_free(fl_decode_stream *ds);

/* ---- chat templates ------------------------------------------------------------------------ */

/* The formats fedllm renders. tokenizer_config.json's chat_template is recognised as one of them
 * by its markers (chatml: <|im_start|>; llama-3: <|start_header_id|>; llama-2: [INST] with
 * <<SYS>>). With no chat_template the format is plain. Anything else (Mistral's [INST] without
 * <<SYS>>, Zephyr, Gemma, ...) is unrecognised: pass a format by name instead. */
typedef enum {
    FL_CHAT_UNKNOWN = 0, /* a chat_template fedllm does not recognise: rendering is an error */
    FL_CHAT_PLAIN,       /* "System: ...\n\nUser: ...\n\nAssistant: ..." */
    FL_CHAT_CHATML,      /* <|im_start|>role\ncontent<|im_end|>\n, with the template's default
                            system message when it has one (Qwen2) */
    FL_CHAT_LLAMA2,      /* <s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nuser [/INST] answer </s> */
    FL_CHAT_LLAMA3, /* <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
} fl_chat_format;

typedef struct fl_chat_msg {
    const char *role; /* "system", "user" or "assistant" */
    const char *content;
} fl_chat_msg;

fl_chat_format fl_tokenizer_chat_format(const fl_tokenizer *tok);
/* Overrides the format by name ("plain", "chatml", "llama-2", "llama-3"); FL_EINPUT naming the
 * choices otherwise. */
int fl_tokenizer_set_chat_format(fl_tokenizer *tok, const char *name, fl_err *err);
/* Appends the conversation rendered as the template renders it (transformers'
 * apply_chat_template(messages, tokenize=False, add_generation_prompt=...)). FL_EINPUT for an
 * unrecognised template (naming its first characters), for a role the format has no place for,
 * or for turns out of the order the template demands. */
int fl_chat_render(const fl_tokenizer *tok, const fl_chat_msg *msgs, int n_msgs,
                   int add_generation_prompt, fl_str *out, fl_err *err);

#endif
