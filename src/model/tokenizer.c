/* tokenizer.c — loading tokenizer.json / tokenizer_config.json, encoding and decoding.
 *
 * Layout: every token string (vocabulary entries, added tokens, merge results) lives in one pool;
 * `model_tok[id]` and `added_of[id]` point into it. Two open-addressing hash tables index the
 * vocabulary (string -> id) and the merges ((left id, right id) -> rank and merged id). A word
 * cache maps short pre-tokens to their ids, which is what makes byte-level BPE fast on real text
 * (most words repeat); it is cleared when full.
 *
 * Encoding a text: split on added tokens, then for each remaining segment run the normalizers
 * (whole segment), the pre-tokenizers (each splits every current piece further and may rewrite
 * it), and the BPE model on every piece. Byte-level tokenizers are handled without building the
 * mapped strings: the ByteLevel pre-tokenizer only marks the tokenizer as byte-level, and the
 * model starts each piece from `byte_id[b]`, the vocabulary id of byte b's stand-in character.
 *
 * BPE merging follows `tokenizers`' Word::merge_all: a min-heap of candidate pairs ordered by
 * (rank, position); a popped pair is applied if both symbols are still there and still form it;
 * each merge pushes the new pairs with the left and right neighbours. O(n log n) in the piece
 * length, which matters for SentencePiece-style tokenizers where a whole line is one piece.
 *
 * Bounds: ids below 2^24; a tokenizer.json up to 512 MB; texts up to 2 GB per call. */
#define _GNU_SOURCE
#include "fedllm/tokenizer.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fedllm/fileio.h"
#include "fedllm/unicode.h"
#include "model/tokenizer_internal.h"

#define MAX_FILE_BYTES   ((size_t)512 << 20)
#define MAX_ID           (1 << 24)
#define MAX_TEXT_BYTES   ((size_t)1 << 31)
#define CACHE_WORD_BYTES 48        /* pre-tokens up to this long are cached */
#define CACHE_SLOTS      (1 << 16) /* entries before the cache is cleared: 64 Ki */
#define MAX_STEPS        16        /* normalizer / pre-tokenizer / decoder steps */
#define NO_STRING        UINT32_MAX

/* ---- small containers -------------------------------------------------------------------- */

int fl_ids_push(fl_ids *ids, int32_t id, fl_err *err) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 256;
        int32_t *grown = realloc(ids->v, cap * sizeof *grown);
        if (!grown) return fl_err_set(err, FL_ENOMEM, "out of memory for %zu token ids", cap);
        ids->v = grown;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return FL_OK;
}

void fl_ids_free(fl_ids *ids) {
    free(ids->v);
    memset(ids, 0, sizeof *ids);
}

int fl_str_append(fl_str *str, const char *s, size_t n, fl_err *err) {
    if (str->n + n + 1 > str->cap) {
        size_t cap = str->cap ? str->cap : 256;
        while (cap < str->n + n + 1)
            cap *= 2;
        char *grown = realloc(str->s, cap);
        if (!grown) return fl_err_set(err, FL_ENOMEM, "out of memory for %zu bytes of text", cap);
        str->s = grown;
        str->cap = cap;
    }
    if (n) memcpy(str->s + str->n, s, n);
    str->n += n;
    str->s[str->n] = '\0';
    return FL_OK;
}

void fl_str_free(fl_str *str) {
    free(str->s);
    memset(str, 0, sizeof *str);
}

/* A list of strings held as spans of one buffer: the pieces of pre-tokenization and the token
 * strings of decoding. */
typedef struct span {
    uint32_t off, len;
} span;

typedef struct str_list {
    fl_str buf;
    span *v;
    size_t n, cap;
    size_t first_at_start; /* 1 when piece 0 starts at offset 0 of the encoded text */
} str_list;

static int list_add(str_list *l, const char *s, size_t n, fl_err *err) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        span *grown = realloc(l->v, cap * sizeof *grown);
        if (!grown) return fl_err_set(err, FL_ENOMEM, "out of memory for %zu pieces", cap);
        l->v = grown;
        l->cap = cap;
    }
    l->v[l->n].off = (uint32_t)l->buf.n;
    l->v[l->n].len = (uint32_t)n;
    l->n++;
    return fl_str_append(&l->buf, s, n, err);
}

/* Appends to the last piece (it must be the last thing added to buf). */
static int list_extend_last(str_list *l, const char *s, size_t n, fl_err *err) {
    l->v[l->n - 1].len += (uint32_t)n;
    return fl_str_append(&l->buf, s, n, err);
}

static void list_clear(str_list *l) {
    l->n = 0;
    l->buf.n = 0;
    if (l->buf.s) l->buf.s[0] = '\0';
}

static void list_free(str_list *l) {
    fl_str_free(&l->buf);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static const char *list_at(const str_list *l, size_t i) { return l->buf.s + l->v[i].off; }

/* ---- hashing ----------------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
        h ^= h >> 29;
    }
    uint64_t tail = 0;
    memcpy(&tail, s + i, n - i);
    h = (h ^ tail) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 32;
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ull;
    return x ^ (x >> 33);
}

static size_t table_size(size_t n) {
    size_t size = 16;
    while (size < n * 2)
        size *= 2;
    return size;
}

/* ---- the tokenizer ------------------------------------------------------------------------ */

typedef enum { NORM_NFC, NORM_PREPEND, NORM_REPLACE } norm_kind;
typedef enum { PRE_SPLIT, PRE_BYTE_LEVEL, PRE_METASPACE } pre_kind;
typedef enum {
    DEC_BYTE_LEVEL,
    DEC_REPLACE,
    DEC_BYTE_FALLBACK,
    DEC_FUSE,
    DEC_STRIP,
    DEC_METASPACE
} dec_kind;
typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend_scheme;

typedef struct step {
    int kind;
    span a, b;        /* strings in the pool: Prepend text; Replace pattern / content;
                         Metaspace replacement; Strip content */
    int pattern;      /* PRE_SPLIT: fl_pattern */
    int prefix_space; /* PRE_BYTE_LEVEL: add_prefix_space */
    int use_regex;    /* PRE_BYTE_LEVEL */
    int scheme;       /* PRE_/DEC_METASPACE: prepend_scheme */
    int split;        /* PRE_METASPACE */
    int start, stop;  /* DEC_STRIP */
} step;

typedef struct added_token {
    span text;
    int32_t id;
    uint8_t special, lstrip, rstrip, single_word;
} added_token;

typedef struct cache_entry {
    uint32_t key_off, key_len; /* in cache_bytes */
    uint32_t ids_off, ids_n;   /* in cache_ids */
} cache_entry;

typedef struct symbol {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    int32_t alive;
} symbol;

typedef struct merge_cand {
    uint32_t rank, pos;
    int32_t new_id;
} merge_cand;

struct fl_tokenizer {
    char *name; /* the file, for messages */
    fl_str pool;
    int n_ids;         /* 1 + the largest id */
    span *model_tok;   /* (n_ids) vocabulary strings; off == NO_STRING: none */
    int32_t *added_of; /* (n_ids) index into added, or -1 */
    uint8_t *special;  /* (n_ids) */
    int32_t *vocab_slots;
    size_t vocab_mask;
    uint64_t *merge_keys; /* (left << 32 | right), UINT64_MAX: empty */
    uint32_t *merge_rank;
    int32_t *merge_new;
    size_t merge_mask;
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;
    int32_t fallback_id[256]; /* <0xXX> ids, -1: absent */
    added_token *added;
    int n_added;
    uint8_t added_first[256]; /* 1 when some added token starts with this byte */
    step norm[MAX_STEPS], pre[MAX_STEPS], dec[MAX_STEPS];
    int n_norm, n_pre, n_dec;
    int has_decoder;
    int byte_level;         /* a ByteLevel pre-tokenizer maps bytes to stand-in characters */
    int32_t byte_id[256];   /* vocabulary id of byte b's stand-in, -1: absent */
    char byte_char[256][4]; /* UTF-8 of byte b's stand-in (1 or 2 bytes + NUL) */
    int16_t char_byte[324]; /* inverse over code points 0..323, -1: not a stand-in */
    int bos_id, eos_id, adds_bos, adds_eos;
    char *chat_template;
    fl_chat_format chat_format;
    /* scratch, reused across calls */
    cache_entry *cache;
    size_t cache_mask, cache_n;
    fl_str cache_bytes;
    fl_ids cache_ids;
    str_list pieces[2];
    fl_str normalized, mapped;
    symbol *sym;
    merge_cand *heap;
    size_t sym_cap;
    fl_split_scratch split;
};

/* ---- the vocabulary and the merges -------------------------------------------------------- */

static int pool_add(fl_tokenizer *t, const char *s, size_t n, span *out, fl_err *err) {
    out->off = (uint32_t)t->pool.n;
    out->len = (uint32_t)n;
    if (t->pool.n + n + 1 >= NO_STRING)
        return fl_err_set(err, FL_EINPUT, "%s: more than 4 GB of token strings", t->name);
    /* each string keeps its NUL, so that fl_tokenizer_token's result is a C string */
    if (fl_str_append(&t->pool, s, n, err)) return err->code;
    return fl_str_append(&t->pool, "", 1, err);
}

static const char *pool_at(const fl_tokenizer *t, span s) { return t->pool.s + s.off; }

static int32_t vocab_find(const fl_tokenizer *t, const char *s, size_t n) {
    size_t i = hash_bytes(s, n) & t->vocab_mask;
    for (;; i = (i + 1) & t->vocab_mask) {
        int32_t id = t->vocab_slots[i];
        if (id < 0) return -1;
        span tok = t->model_tok[id];
        if (tok.len == n && memcmp(pool_at(t, tok), s, n) == 0) return id;
    }
}

static void vocab_insert(fl_tokenizer *t, int32_t id) {
    span tok = t->model_tok[id];
    size_t i = hash_bytes(pool_at(t, tok), tok.len) & t->vocab_mask;
    while (t->vocab_slots[i] >= 0)
        i = (i + 1) & t->vocab_mask;
    t->vocab_slots[i] = id;
}

static int merge_find(const fl_tokenizer *t, int32_t left, int32_t right, uint32_t *rank,
                      int32_t *new_id) {
    if (!t->merge_mask) return 0;
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = hash_u64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        if (t->merge_keys[i] == UINT64_MAX) return 0;
        if (t->merge_keys[i] == key) {
            *rank = t->merge_rank[i];
            *new_id = t->merge_new[i];
            return 1;
        }
    }
}

/* Reads model.vocab: ids in range, each id once. */
static int load_vocab(fl_tokenizer *t, const cJSON *vocab, fl_err *err) {
    const cJSON *entry;
    cJSON_ArrayForEach(entry, vocab) {
        double v = entry->valuedouble;
        if (!cJSON_IsNumber(entry) || v < 0 || v >= MAX_ID || v != (int)v)
            return fl_err_set(err, FL_EINPUT,
                              "%s: model.vocab: entry '%.40s': expected an id in 0..%d", t->name,
                              entry->string, MAX_ID - 1);
        int id = (int)v;
        if (t->model_tok[id].off != NO_STRING)
            return fl_err_set(err, FL_EINPUT, "%s: model.vocab: id %d appears twice", t->name, id);
        if (pool_add(t, entry->string, strlen(entry->string), &t->model_tok[id], err))
            return err->code;
    }
    size_t slots = table_size((size_t)cJSON_GetArraySize(vocab));
    t->vocab_slots = malloc(slots * sizeof *t->vocab_slots);
    if (!t->vocab_slots) return fl_err_set(err, FL_ENOMEM, "out of memory for the vocabulary");
    memset(t->vocab_slots, 0xFF, slots * sizeof *t->vocab_slots);
    t->vocab_mask = slots - 1;
    for (int id = 0; id < t->n_ids; id++)
        if (t->model_tok[id].off != NO_STRING) {
            if (vocab_find(t, pool_at(t, t->model_tok[id]), t->model_tok[id].len) >= 0)
                return fl_err_set(err, FL_EINPUT, "%s: model.vocab: '%.40s' appears twice", t->name,
                                  pool_at(t, t->model_tok[id]));
            vocab_insert(t, id);
        }
    return FL_OK;
}

/* One merge: "left right" (split at the first space... as `tokenizers` requires exactly one) or
 * ["left", "right"]. */
static int merge_parts(const fl_tokenizer *t, const cJSON *m, int i, const char **left,
                       size_t *left_len, const char **right, size_t *right_len, fl_err *err) {
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *space = strchr(s, ' ');
        if (space && !strchr(space + 1, ' ')) {
            *left = s, *left_len = (size_t)(space - s);
            *right = space + 1, *right_len = strlen(space + 1);
            return FL_OK;
        }
    } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
               cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
               cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
        *left = cJSON_GetArrayItem(m, 0)->valuestring, *left_len = strlen(*left);
        *right = cJSON_GetArrayItem(m, 1)->valuestring, *right_len = strlen(*right);
        return FL_OK;
    }
    return fl_err_set(err, FL_EINPUT,
                      "%s: model.merges[%d]: expected \"left right\" or [\"left\", \"right\"]",
                      t->name, i);
}

static int load_merges(fl_tokenizer *t, const cJSON *merges, fl_err *err) {
    int n = cJSON_GetArraySize(merges);
    if (n == 0) return FL_OK;
    size_t slots = table_size((size_t)n);
    t->merge_keys = malloc(slots * sizeof *t->merge_keys);
    t->merge_rank = malloc(slots * sizeof *t->merge_rank);
    t->merge_new = malloc(slots * sizeof *t->merge_new);
    fl_str joined = {0};
    if (!t->merge_keys || !t->merge_rank || !t->merge_new)
        return fl_err_set(err, FL_ENOMEM, "out of memory for %d merges", n);
    memset(t->merge_keys, 0xFF, slots * sizeof *t->merge_keys);
    t->merge_mask = slots - 1;
    int i = 0, rc = FL_OK;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        const char *left = NULL, *right = NULL;
        size_t left_len = 0, right_len = 0;
        if ((rc = merge_parts(t, m, i, &left, &left_len, &right, &right_len, err))) break;
        int32_t a = vocab_find(t, left, left_len), b = vocab_find(t, right, right_len);
        joined.n = 0;
        if ((rc = fl_str_append(&joined, left, left_len, err)) ||
            (rc = fl_str_append(&joined, right, right_len, err)))
            break;
        int32_t c = vocab_find(t, joined.s, joined.n);
        if (a < 0 || b < 0 || c < 0) {
            rc = fl_err_set(err, FL_EINPUT,
                            "%s: model.merges[%d]: '%.40s' is not in the vocabulary", t->name, i,
                            a < 0   ? left
                            : b < 0 ? right
                                    : joined.s);
            break;
        }
        uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
        size_t s = hash_u64(key) & t->merge_mask;
        while (t->merge_keys[s] != UINT64_MAX && t->merge_keys[s] != key)
            s = (s + 1) & t->merge_mask;
        if (t->merge_keys[s] == UINT64_MAX) { /* a repeated merge keeps its first rank */
            t->merge_keys[s] = key;
            t->merge_rank[s] = (uint32_t)i;
            t->merge_new[s] = c;
        }
        i++;
    }
    fl_str_free(&joined);
    return rc;
}

/* ---- reading the JSON ---------------------------------------------------------------------- */

static const cJSON *get(const cJSON *o, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static const char *type_of(const cJSON *o) {
    const cJSON *type = get(o, "type");
    return cJSON_IsString(type) ? type->valuestring : "";
}

static int flag(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = get(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

/* A string field, required. */
static int string_of(const fl_tokenizer *t, const cJSON *o, const char *where, const char *key,
                     const char **out, fl_err *err) {
    const cJSON *v = get(o, key);
    if (!cJSON_IsString(v))
        return fl_err_set(err, FL_EINPUT, "%s: %s.%s: expected a string", t->name, where, key);
    *out = v->valuestring;
    return FL_OK;
}

static int add_string(fl_tokenizer *t, const char *s, span *out, fl_err *err) {
    return pool_add(t, s, strlen(s), out, err);
}

/* Replace's pattern: {"String": "..."}; a Regex pattern is refused. */
static int replace_step(fl_tokenizer *t, const cJSON *o, const char *where, step *st, fl_err *err) {
    const cJSON *pattern = get(o, "pattern");
    const cJSON *literal = get(pattern, "String");
    const char *content = NULL;
    if (!cJSON_IsString(literal) || !literal->valuestring[0])
        return fl_err_set(err, FL_EINPUT,
                          "%s: %s: only Replace with a non-empty String pattern is supported",
                          t->name, where);
    if (string_of(t, o, where, "content", &content, err)) return FL_EINPUT;
    st->kind = NORM_REPLACE;
    if (add_string(t, literal->valuestring, &st->a, err)) return err->code;
    return add_string(t, content, &st->b, err);
}

static int parse_normalizer(fl_tokenizer *t, const cJSON *o, fl_err *err) {
    if (!o || cJSON_IsNull(o)) return FL_OK;
    const char *type = type_of(o);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *item;
        cJSON_ArrayForEach(item, get(o, "normalizers")) {
            if (parse_normalizer(t, item, err)) return err->code;
        }
        return FL_OK;
    }
    if (t->n_norm == MAX_STEPS)
        return fl_err_set(err, FL_EINPUT, "%s: normalizer: more than %d steps", t->name, MAX_STEPS);
    step *st = &t->norm[t->n_norm];
    memset(st, 0, sizeof *st);
    if (strcmp(type, "NFC") == 0) {
        st->kind = NORM_NFC;
    } else if (strcmp(type, "Prepend") == 0) {
        const char *text = NULL;
        if (string_of(t, o, "normalizer", "prepend", &text, err)) return FL_EINPUT;
        st->kind = NORM_PREPEND;
        if (add_string(t, text, &st->a, err)) return err->code;
    } else if (strcmp(type, "Replace") == 0) {
        if (replace_step(t, o, "normalizer", st, err)) return err->code;
    } else {
        return fl_err_set(err, FL_EINPUT,
                          "%s: normalizer: type '%s' is not supported (fedllm reads NFC, Prepend, "
                          "Replace and Sequence)",
                          t->name, type);
    }
    t->n_norm++;
    return FL_OK;
}

static int parse_scheme(const fl_tokenizer *t, const cJSON *o, const char *where, int *scheme,
                        fl_err *err) {
    const cJSON *v = get(o, "prepend_scheme");
    if (!v) { /* tokenizers < 0.14 wrote add_prefix_space */
        *scheme = flag(o, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
        return FL_OK;
    }
    const char *s = cJSON_IsString(v) ? v->valuestring : "";
    *scheme = strcmp(s, "always") == 0  ? PREPEND_ALWAYS
              : strcmp(s, "first") == 0 ? PREPEND_FIRST
              : strcmp(s, "never") == 0 ? PREPEND_NEVER
                                        : -1;
    if (*scheme < 0)
        return fl_err_set(err, FL_EINPUT,
                          "%s: %s.prepend_scheme: expected \"always\", \"first\" or \"never\"",
                          t->name, where);
    return FL_OK;
}

static int parse_pretokenizer(fl_tokenizer *t, const cJSON *o, fl_err *err) {
    if (!o || cJSON_IsNull(o)) return FL_OK;
    const char *type = type_of(o);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *item;
        cJSON_ArrayForEach(item, get(o, "pretokenizers")) {
            if (parse_pretokenizer(t, item, err)) return err->code;
        }
        return FL_OK;
    }
    if (t->n_pre == MAX_STEPS)
        return fl_err_set(err, FL_EINPUT, "%s: pre_tokenizer: more than %d steps", t->name,
                          MAX_STEPS);
    step *st = &t->pre[t->n_pre];
    memset(st, 0, sizeof *st);
    if (strcmp(type, "ByteLevel") == 0) {
        st->kind = PRE_BYTE_LEVEL;
        st->prefix_space = flag(o, "add_prefix_space", 0);
        st->use_regex = flag(o, "use_regex", 1);
        t->byte_level = 1;
    } else if (strcmp(type, "Split") == 0) {
        const cJSON *regex = get(get(o, "pattern"), "Regex");
        const cJSON *behavior = get(o, "behavior");
        st->kind = PRE_SPLIT;
        st->pattern =
            cJSON_IsString(regex) ? fl_pattern_from_text(regex->valuestring) : FL_PATTERN_NONE;
        if (st->pattern == FL_PATTERN_NONE)
            return fl_err_set(err, FL_EINPUT,
                              "%s: pre_tokenizer: Split pattern %.80s is not one fedllm knows "
                              "(it runs GPT-2's, LLaMA-3's and Qwen2's)",
                              t->name,
                              cJSON_IsString(regex) ? regex->valuestring : "(not a Regex)");
        if (!cJSON_IsString(behavior) || strcmp(behavior->valuestring, "Isolated") != 0 ||
            flag(o, "invert", 0))
            return fl_err_set(err, FL_EINPUT,
                              "%s: pre_tokenizer: only Split with behavior Isolated and invert "
                              "false is supported",
                              t->name);
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *rep = NULL;
        st->kind = PRE_METASPACE;
        if (string_of(t, o, "pre_tokenizer", "replacement", &rep, err)) return FL_EINPUT;
        if (add_string(t, rep, &st->a, err)) return err->code;
        if (parse_scheme(t, o, "pre_tokenizer", &st->scheme, err)) return FL_EINPUT;
        st->split = flag(o, "split", 1);
    } else {
        return fl_err_set(err, FL_EINPUT,
                          "%s: pre_tokenizer: type '%s' is not supported (fedllm reads ByteLevel, "
                          "Split, Metaspace and Sequence)",
                          t->name, type);
    }
    t->n_pre++;
    return FL_OK;
}

static int parse_decoder(fl_tokenizer *t, const cJSON *o, fl_err *err) {
    if (!o || cJSON_IsNull(o)) return FL_OK;
    t->has_decoder = 1;
    const char *type = type_of(o);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *item;
        cJSON_ArrayForEach(item, get(o, "decoders")) {
            if (parse_decoder(t, item, err)) return err->code;
        }
        return FL_OK;
    }
    if (t->n_dec == MAX_STEPS)
        return fl_err_set(err, FL_EINPUT, "%s: decoder: more than %d steps", t->name, MAX_STEPS);
    step *st = &t->dec[t->n_dec];
    memset(st, 0, sizeof *st);
    if (strcmp(type, "ByteLevel") == 0) {
        st->kind = DEC_BYTE_LEVEL;
    } else if (strcmp(type, "Replace") == 0) {
        if (replace_step(t, o, "decoder", st, err)) return err->code;
        st->kind = DEC_REPLACE;
    } else if (strcmp(type, "ByteFallback") == 0) {
        st->kind = DEC_BYTE_FALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        st->kind = DEC_FUSE;
    } else if (strcmp(type, "Strip") == 0) {
        const char *content = NULL;
        const cJSON *start = get(o, "start"), *stop = get(o, "stop");
        if (string_of(t, o, "decoder", "content", &content, err)) return FL_EINPUT;
        if (!cJSON_IsNumber(start) || !cJSON_IsNumber(stop) || start->valuedouble < 0 ||
            stop->valuedouble < 0 || start->valuedouble > 1e6 || stop->valuedouble > 1e6)
            return fl_err_set(err, FL_EINPUT, "%s: decoder: Strip start/stop: expected counts",
                              t->name);
        st->kind = DEC_STRIP;
        st->start = (int)start->valuedouble;
        st->stop = (int)stop->valuedouble;
        if (add_string(t, content, &st->a, err)) return err->code;
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *rep = NULL;
        st->kind = DEC_METASPACE;
        if (string_of(t, o, "decoder", "replacement", &rep, err)) return FL_EINPUT;
        if (add_string(t, rep, &st->a, err)) return err->code;
        if (parse_scheme(t, o, "decoder", &st->scheme, err)) return FL_EINPUT;
    } else {
        return fl_err_set(err, FL_EINPUT,
                          "%s: decoder: type '%s' is not supported (fedllm reads ByteLevel, "
                          "Replace, ByteFallback, Fuse, Strip, Metaspace and Sequence)",
                          t->name, type);
    }
    t->n_dec++;
    return FL_OK;
}

/* The id of a token text: an added token first, then the vocabulary; -1 if neither. */
static int32_t id_of_text(const fl_tokenizer *t, const char *s) {
    size_t n = strlen(s);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].text.len == n && memcmp(pool_at(t, t->added[i].text), s, n) == 0)
            return t->added[i].id;
    return vocab_find(t, s, n);
}

/* TemplateProcessing's "single" template says whether BOS / EOS surround a sequence. */
static void parse_post_processor(fl_tokenizer *t, const cJSON *o) {
    const char *type = type_of(o);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *item;
        cJSON_ArrayForEach(item, get(o, "processors")) parse_post_processor(t, item);
        return;
    }
    if (strcmp(type, "TemplateProcessing") != 0) return;
    const cJSON *single = get(o, "single");
    int n = cJSON_GetArraySize(single);
    for (int end = 0; end < 2 && n > 0; end++) {
        const cJSON *part = get(cJSON_GetArrayItem(single, end ? n - 1 : 0), "SpecialToken");
        const cJSON *name = get(part, "id");
        if (!cJSON_IsString(name)) continue;
        int32_t id = id_of_text(t, name->valuestring);
        if (id < 0) continue;
        if (end)
            t->eos_id = t->eos_id < 0 ? id : t->eos_id, t->adds_eos = 1;
        else
            t->bos_id = id, t->adds_bos = 1;
    }
}

static int parse_added(fl_tokenizer *t, const cJSON *added, fl_err *err) {
    int n = cJSON_GetArraySize(added);
    if (n == 0) return FL_OK;
    if (!(t->added = calloc((size_t)n, sizeof *t->added)))
        return fl_err_set(err, FL_ENOMEM, "out of memory for %d added tokens", n);
    const cJSON *item;
    cJSON_ArrayForEach(item, added) {
        const cJSON *id = get(item, "id"), *content = get(item, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= MAX_ID ||
            id->valuedouble != (int)id->valuedouble || !cJSON_IsString(content) ||
            !content->valuestring[0])
            return fl_err_set(err, FL_EINPUT,
                              "%s: added_tokens[%d]: expected an id in 0..%d and a non-empty "
                              "content",
                              t->name, t->n_added, MAX_ID - 1);
        added_token *a = &t->added[t->n_added++];
        a->id = (int32_t)id->valuedouble;
        a->special = (uint8_t)flag(item, "special", 0);
        a->lstrip = (uint8_t)flag(item, "lstrip", 0);
        a->rstrip = (uint8_t)flag(item, "rstrip", 0);
        a->single_word = (uint8_t)flag(item, "single_word", 0);
        if (add_string(t, content->valuestring, &a->text, err)) return err->code;
        t->added_first[(unsigned char)content->valuestring[0]] = 1;
    }
    return FL_OK;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes map
 * in order to U+0100 onwards. Returns byte b's stand-in code point. */
static unsigned byte_stand_in(int b) {
    unsigned next = 256;
    for (int k = 0; k <= b; k++) {
        int printable = (k >= '!' && k <= '~') || (k >= 0xA1 && k <= 0xAC) || (k >= 0xAE);
        if (k == b) return printable ? (unsigned)k : next;
        if (!printable) next++;
    }
    return 0;
}

static void init_byte_chars(fl_tokenizer *t) {
    for (int i = 0; i < 324; i++)
        t->char_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        unsigned cp = byte_stand_in(b);
        int n = fl_utf8_put(cp, t->byte_char[b]);
        t->byte_char[b][n] = '\0';
        t->char_byte[cp] = (int16_t)b;
        t->byte_id[b] = vocab_find(t, t->byte_char[b], (size_t)n);
        char fallback[8];
        snprintf(fallback, sizeof fallback, "<0x%02X>", b);
        t->fallback_id[b] = vocab_find(t, fallback, strlen(fallback));
    }
}

static int parse_model(fl_tokenizer *t, const cJSON *model, fl_err *err) {
    if (!cJSON_IsObject(model))
        return fl_err_set(err, FL_EINPUT, "%s: model: expected an object", t->name);
    if (strcmp(type_of(model), "BPE") != 0 && !(type_of(model)[0] == 0 && get(model, "merges")))
        return fl_err_set(err, FL_EINPUT,
                          "%s: model.type: '%s' is not supported (fedllm reads BPE models)",
                          t->name, type_of(model));
    const cJSON *vocab = get(model, "vocab"), *merges = get(model, "merges");
    if (!cJSON_IsObject(vocab) || cJSON_GetArraySize(vocab) == 0)
        return fl_err_set(err, FL_EINPUT, "%s: model.vocab: expected a non-empty object", t->name);
    if (merges && !cJSON_IsArray(merges))
        return fl_err_set(err, FL_EINPUT, "%s: model.merges: expected an array", t->name);
    static const char *const unsupported[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = get(model, unsupported[i]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !v->valuestring[0]))
            return fl_err_set(err, FL_EINPUT, "%s: model.%s: not supported (expected null)",
                              t->name, unsupported[i]);
    }
    const cJSON *dropout = get(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout) &&
        !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
        return fl_err_set(err, FL_EINPUT,
                          "%s: model.dropout: BPE dropout is not supported (expected null)",
                          t->name);
    t->byte_fallback = flag(model, "byte_fallback", 0);
    t->fuse_unk = flag(model, "fuse_unk", 0);
    t->ignore_merges = flag(model, "ignore_merges", 0);
    int rc = load_vocab(t, vocab, err);
    if (!rc && merges) rc = load_merges(t, merges, err);
    if (rc) return rc;
    const cJSON *unk = get(model, "unk_token");
    t->unk_id = -1;
    if (cJSON_IsString(unk) &&
        (t->unk_id = vocab_find(t, unk->valuestring, strlen(unk->valuestring))) < 0)
        return fl_err_set(err, FL_EINPUT, "%s: model.unk_token: '%.40s' is not in the vocabulary",
                          t->name, unk->valuestring);
    return FL_OK;
}

/* The largest id named by model.vocab and added_tokens, to size the id tables. */
static int max_id(const cJSON *root) {
    int top = -1;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, get(get(root, "model"), "vocab")) {
        if (cJSON_IsNumber(entry) && entry->valuedouble >= 0 && entry->valuedouble < MAX_ID &&
            entry->valuedouble > top)
            top = (int)entry->valuedouble;
    }
    cJSON_ArrayForEach(entry, get(root, "added_tokens")) {
        const cJSON *id = get(entry, "id");
        if (cJSON_IsNumber(id) && id->valuedouble >= 0 && id->valuedouble < MAX_ID &&
            id->valuedouble > top)
            top = (int)id->valuedouble;
    }
    return top;
}

/* bos_token / eos_token in tokenizer_config.json: a string, {"content": ...}, or null. */
static int config_token(fl_tokenizer *t, const cJSON *cfg, const char *key, int32_t *id,
                        fl_err *err) {
    const cJSON *v = get(cfg, key);
    if (!v || cJSON_IsNull(v)) return FL_OK;
    if (cJSON_IsObject(v)) v = get(v, "content");
    if (!cJSON_IsString(v))
        return fl_err_set(err, FL_EINPUT,
                          "%s: tokenizer_config.json: %s: expected a string or {\"content\": ...}",
                          t->name, key);
    int32_t found = id_of_text(t, v->valuestring);
    if (found < 0)
        return fl_err_set(err, FL_EINPUT,
                          "%s: tokenizer_config.json: %s: '%.40s' is not in the vocabulary",
                          t->name, key, v->valuestring);
    *id = found;
    return FL_OK;
}

/* Without a tokenizer_config.json, or one that does not name eos_token (the hub's GPT-2 has only
 * {"model_max_length": 1024}): the usual end-of-text names, as transformers' tokenizer classes
 * default to them (GPT-2 and Qwen2: <|endoftext|>; LLaMA: </s>). */
static void guess_specials(fl_tokenizer *t) {
    static const char *const eos_names[] = {"<|endoftext|>", "</s>", "<|end_of_text|>"};
    for (size_t i = 0; i < sizeof eos_names / sizeof *eos_names && t->eos_id < 0; i++)
        t->eos_id = id_of_text(t, eos_names[i]);
}

static int parse_config(fl_tokenizer *t, const cJSON *cfg, fl_err *err) {
    if (!cJSON_IsObject(cfg))
        return fl_err_set(err, FL_EINPUT, "%s: tokenizer_config.json: expected a JSON object",
                          t->name);
    if (config_token(t, cfg, "bos_token", &t->bos_id, err) ||
        config_token(t, cfg, "eos_token", &t->eos_id, err))
        return FL_EINPUT;
    if (!cJSON_HasObjectItem(cfg, "eos_token")) guess_specials(t); /* null: explicitly none */
    t->adds_bos = flag(cfg, "add_bos_token", t->adds_bos) && t->bos_id >= 0;
    t->adds_eos = flag(cfg, "add_eos_token", t->adds_eos) && t->eos_id >= 0;
    const cJSON *tpl = get(cfg, "chat_template");
    if (cJSON_IsArray(tpl)) { /* [{"name": "default", "template": ...}, ...] */
        const cJSON *item, *chosen = NULL;
        cJSON_ArrayForEach(item, tpl) {
            const cJSON *name = get(item, "name");
            if (!chosen || (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0))
                chosen = item;
        }
        tpl = get(chosen, "template");
    }
    if (tpl && !cJSON_IsNull(tpl) && !cJSON_IsString(tpl))
        return fl_err_set(err, FL_EINPUT,
                          "%s: tokenizer_config.json: chat_template: expected a string", t->name);
    if (cJSON_IsString(tpl)) {
        if (!(t->chat_template = strdup(tpl->valuestring)))
            return fl_err_set(err, FL_ENOMEM, "out of memory");
        t->chat_format = fl_chat_detect(t->chat_template);
    }
    return FL_OK;
}

static int build(fl_tokenizer *t, const cJSON *root, const cJSON *cfg, fl_err *err) {
    if (!cJSON_IsObject(root))
        return fl_err_set(err, FL_EINPUT, "%s: expected a JSON object (tokenizer.json)", t->name);
    if (!get(root, "model")) return fl_err_set(err, FL_EINPUT, "%s: model: missing", t->name);
    t->n_ids = max_id(root) + 1;
    if (t->n_ids <= 0)
        return fl_err_set(err, FL_EINPUT, "%s: model.vocab: expected a non-empty object", t->name);
    t->model_tok = malloc((size_t)t->n_ids * sizeof *t->model_tok);
    t->added_of = malloc((size_t)t->n_ids * sizeof *t->added_of);
    t->special = calloc((size_t)t->n_ids, 1);
    if (!t->model_tok || !t->added_of || !t->special)
        return fl_err_set(err, FL_ENOMEM, "out of memory for %d ids", t->n_ids);
    for (int i = 0; i < t->n_ids; i++) {
        t->model_tok[i].off = NO_STRING;
        t->added_of[i] = -1;
    }
    t->bos_id = t->eos_id = t->unk_id = -1;
    if (parse_model(t, get(root, "model"), err)) return err->code;
    const cJSON *added = get(root, "added_tokens");
    if (added && !cJSON_IsArray(added))
        return fl_err_set(err, FL_EINPUT, "%s: added_tokens: expected an array", t->name);
    if (parse_added(t, added, err) || parse_normalizer(t, get(root, "normalizer"), err) ||
        parse_pretokenizer(t, get(root, "pre_tokenizer"), err) ||
        parse_decoder(t, get(root, "decoder"), err))
        return err->code;
    for (int i = 0; i < t->n_added; i++) {
        t->added_of[t->added[i].id] = i;
        t->special[t->added[i].id] = t->added[i].special;
    }
    init_byte_chars(t);
    parse_post_processor(t, get(root, "post_processor"));
    t->chat_format = FL_CHAT_PLAIN;
    if (cfg && parse_config(t, cfg, err)) return err->code;
    if (!cfg) guess_specials(t);
    t->cache_mask = CACHE_SLOTS * 2 - 1;
    if (!(t->cache = calloc(CACHE_SLOTS * 2, sizeof *t->cache)))
        return fl_err_set(err, FL_ENOMEM, "out of memory for the word cache");
    return FL_OK;
}

int fl_tokenizer_parse(fl_tokenizer **out, const char *json, size_t json_len,
                       const char *config_json, size_t config_len, const char *name, fl_err *err) {
    *out = NULL;
    fl_tokenizer *t = calloc(1, sizeof *t);
    if (!t || !(t->name = strdup(name ? name : "tokenizer.json"))) {
        free(t);
        return fl_err_set(err, FL_ENOMEM, "out of memory");
    }
    cJSON *root = cJSON_ParseWithLength(json, json_len);
    cJSON *cfg = config_json ? cJSON_ParseWithLength(config_json, config_len) : NULL;
    int rc;
    if (!root)
        rc = fl_err_set(err, FL_EINPUT, "%s: not valid JSON", t->name);
    else if (config_json && !cfg)
        rc = fl_err_set(err, FL_EINPUT, "%s: tokenizer_config.json: not valid JSON", t->name);
    else
        rc = build(t, root, cfg, err);
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    if (rc) {
        fl_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return FL_OK;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int fl_tokenizer_load(fl_tokenizer **out, const char *path, fl_err *err) {
    char file[4096], config[4096];
    *out = NULL;
    if (!exists(path))
        return fl_err_set(err, FL_EINPUT,
                          "%s: not found (expected a tokenizer.json or a model directory)", path);
    if (is_dir(path)) {
        if (fl_path_join(file, sizeof file, path, "tokenizer.json", err)) return FL_EINPUT;
        if (fl_path_join(config, sizeof config, path, "tokenizer_config.json", err))
            return FL_EINPUT;
    } else {
        const char *slash = strrchr(path, '/');
        int dir_len = slash ? (int)(slash - path) : 1;
        if ((size_t)snprintf(file, sizeof file, "%s", path) >= sizeof file ||
            (size_t)snprintf(config, sizeof config, "%.*s/tokenizer_config.json", dir_len,
                             slash ? path : ".") >= sizeof config)
            return fl_err_set(err, FL_EINPUT, "%s: path too long", path);
    }
    char *json = NULL, *cfg = NULL;
    size_t json_len = 0, cfg_len = 0;
    int rc = fl_read_file(file, &json, &json_len, MAX_FILE_BYTES, err);
    if (!rc && exists(config)) rc = fl_read_file(config, &cfg, &cfg_len, 64 << 20, err);
    if (!rc) rc = fl_tokenizer_parse(out, json, json_len, cfg, cfg_len, file, err);
    free(json);
    free(cfg);
    return rc;
}

int fl_tokenizer_load_for_model(fl_tokenizer **tok, const char *path, int model_vocab_size,
                                fl_err *err) {
    int rc = fl_tokenizer_load(tok, path, err);
    if (!rc && (*tok)->n_ids > model_vocab_size) {
        rc = fl_err_set(err, FL_EINPUT, "%s: the tokenizer has %d ids but the model only %d", path,
                        (*tok)->n_ids, model_vocab_size);
        fl_tokenizer_free(*tok);
        *tok = NULL;
    }
    return rc;
}

void fl_tokenizer_free(fl_tokenizer *t) {
    if (!t) return;
    free(t->name);
    fl_str_free(&t->pool);
    free(t->model_tok);
    free(t->added_of);
    free(t->special);
    free(t->vocab_slots);
    free(t->merge_keys);
    free(t->merge_rank);
    free(t->merge_new);
    free(t->added);
    free(t->chat_template);
    free(t->cache);
    fl_str_free(&t->cache_bytes);
    fl_ids_free(&t->cache_ids);
    list_free(&t->pieces[0]);
    list_free(&t->pieces[1]);
    fl_str_free(&t->normalized);
    fl_str_free(&t->mapped);
    free(t->sym);
    free(t->heap);
    fl_split_scratch_free(&t->split);
    free(t);
}

int fl_tokenizer_vocab_size(const fl_tokenizer *t) { return t->n_ids; }
int fl_tokenizer_bos(const fl_tokenizer *t) { return t->bos_id; }
int fl_tokenizer_eos(const fl_tokenizer *t) { return t->eos_id; }
int fl_tokenizer_adds_bos(const fl_tokenizer *t) { return t->adds_bos; }
int fl_tokenizer_adds_eos(const fl_tokenizer *t) { return t->adds_eos; }
const char *fl_tokenizer_chat_template(const fl_tokenizer *t) { return t->chat_template; }
fl_chat_format fl_tokenizer_chat_format_of(const fl_tokenizer *t) { return t->chat_format; }
fl_chat_format fl_tokenizer_chat_format(const fl_tokenizer *t) { return t->chat_format; }

int fl_tokenizer_set_chat_format(fl_tokenizer *t, const char *name, fl_err *err) {
    static const struct {
        const char *name;
        fl_chat_format format;
    } formats[] = {{"plain", FL_CHAT_PLAIN},
                   {"chatml", FL_CHAT_CHATML},
                   {"llama-2", FL_CHAT_LLAMA2},
                   {"llama-3", FL_CHAT_LLAMA3}};
    for (size_t i = 0; i < sizeof formats / sizeof *formats; i++)
        if (strcmp(name, formats[i].name) == 0) {
            t->chat_format = formats[i].format;
            return FL_OK;
        }
    return fl_err_set(err, FL_EINPUT,
                      "chat template '%s': expected plain, chatml, llama-2 or llama-3", name);
}

const char *fl_tokenizer_token(const fl_tokenizer *t, int id, size_t *len) {
    if (id < 0 || id >= t->n_ids) return NULL;
    span s = t->added_of[id] >= 0 ? t->added[t->added_of[id]].text : t->model_tok[id];
    if (s.off == NO_STRING) return NULL;
    if (len) *len = s.len;
    return pool_at(t, s);
}

int fl_tokenizer_is_special(const fl_tokenizer *t, int id) {
    return id >= 0 && id < t->n_ids && t->special[id];
}

/* ---- BPE ---------------------------------------------------------------------------------- */

static int heap_less(const merge_cand *a, const merge_cand *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(merge_cand *h, size_t *n, merge_cand c) {
    size_t i = (*n)++;
    while (i > 0 && heap_less(&c, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = c;
}

static merge_cand heap_pop(merge_cand *h, size_t *n) {
    merge_cand top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= *n) break;
        if (child + 1 < *n && heap_less(&h[child + 1], &h[child])) child++;
        if (!heap_less(&h[child], &last)) break;
        h[i] = h[child];
        i = child;
    }
    if (*n) h[i] = last;
    return top;
}

static int reserve_symbols(fl_tokenizer *t, size_t n, fl_err *err) {
    if (n <= t->sym_cap) return FL_OK;
    size_t cap = n * 2;
    symbol *sym = realloc(t->sym, cap * sizeof *sym);
    if (sym) t->sym = sym;
    merge_cand *heap = realloc(t->heap, cap * 2 * sizeof *heap);
    if (heap) t->heap = heap;
    if (!sym || !heap) return fl_err_set(err, FL_ENOMEM, "out of memory for a %zu-symbol word", n);
    t->sym_cap = cap;
    return FL_OK;
}

/* Symbols of a word, as `tokenizers`' merge_word builds them: each character's vocabulary id;
 * failing that its <0xXX> byte tokens (byte_fallback); failing that unk, consecutive unknowns
 * fused into one when fuse_unk; with no unk token the character is dropped. */
typedef struct word {
    size_t n;
    int32_t pending_unk; /* -1: none */
} word;

static void word_add(fl_tokenizer *t, word *w, int32_t id) {
    symbol *s = &t->sym[w->n];
    s->id = id;
    s->prev = (int32_t)w->n - 1;
    s->next = (int32_t)w->n + 1;
    s->alive = 1;
    w->n++;
}

static void word_char(fl_tokenizer *t, word *w, int32_t id, const unsigned char *bytes, size_t n) {
    if (id >= 0) {
        if (w->pending_unk >= 0) word_add(t, w, w->pending_unk), w->pending_unk = -1;
        word_add(t, w, id);
        return;
    }
    if (t->byte_fallback) {
        size_t k = 0;
        while (k < n && t->fallback_id[bytes[k]] >= 0)
            k++;
        if (k == n) {
            for (k = 0; k < n; k++)
                word_add(t, w, t->fallback_id[bytes[k]]);
            return;
        }
    }
    if (t->unk_id < 0) return;
    if (w->pending_unk >= 0 && !t->fuse_unk) word_add(t, w, w->pending_unk);
    w->pending_unk = t->unk_id;
}

static void merge_all(fl_tokenizer *t, size_t n) {
    if (n == 0) return;
    t->sym[n - 1].next = -1;
    size_t heap_n = 0;
    uint32_t rank;
    int32_t new_id;
    for (size_t i = 0; i + 1 < n; i++)
        if (merge_find(t, t->sym[i].id, t->sym[i + 1].id, &rank, &new_id))
            heap_push(t->heap, &heap_n, (merge_cand){rank, (uint32_t)i, new_id});
    while (heap_n) {
        merge_cand top = heap_pop(t->heap, &heap_n);
        symbol *left = &t->sym[top.pos];
        if (!left->alive || left->next < 0) continue;
        symbol *right = &t->sym[left->next];
        int32_t expect;
        if (!merge_find(t, left->id, right->id, &rank, &expect) || expect != top.new_id) continue;
        left->id = top.new_id;
        right->alive = 0;
        left->next = right->next;
        if (right->next >= 0) t->sym[right->next].prev = (int32_t)top.pos;
        if (left->prev >= 0 && merge_find(t, t->sym[left->prev].id, left->id, &rank, &new_id))
            heap_push(t->heap, &heap_n, (merge_cand){rank, (uint32_t)left->prev, new_id});
        if (left->next >= 0 && merge_find(t, left->id, t->sym[left->next].id, &rank, &new_id))
            heap_push(t->heap, &heap_n, (merge_cand){rank, top.pos, new_id});
    }
}

static int cache_get(const fl_tokenizer *t, const char *s, size_t n, fl_ids *out, fl_err *err) {
    if (n > CACHE_WORD_BYTES) return 0;
    for (size_t i = hash_bytes(s, n) & t->cache_mask;; i = (i + 1) & t->cache_mask) {
        const cache_entry *e = &t->cache[i];
        if (e->key_len == 0) return 0;
        if (e->key_len == n && memcmp(t->cache_bytes.s + e->key_off, s, n) == 0) {
            for (uint32_t k = 0; k < e->ids_n; k++)
                if (fl_ids_push(out, t->cache_ids.v[e->ids_off + k], err)) return -1;
            return 1;
        }
    }
}

static void cache_put(fl_tokenizer *t, const char *s, size_t n, const int32_t *ids, size_t n_ids) {
    if (n > CACHE_WORD_BYTES || n == 0) return;
    if (t->cache_n >= CACHE_SLOTS) { /* full: start over */
        memset(t->cache, 0, (t->cache_mask + 1) * sizeof *t->cache);
        t->cache_n = 0;
        t->cache_bytes.n = 0;
        t->cache_ids.n = 0;
    }
    size_t key_off = t->cache_bytes.n, ids_off = t->cache_ids.n;
    if (fl_str_append(&t->cache_bytes, s, n, NULL)) return;
    for (size_t k = 0; k < n_ids; k++)
        if (fl_ids_push(&t->cache_ids, ids[k], NULL)) return;
    size_t i = hash_bytes(s, n) & t->cache_mask;
    while (t->cache[i].key_len)
        i = (i + 1) & t->cache_mask;
    t->cache[i] = (cache_entry){(uint32_t)key_off, (uint32_t)n, (uint32_t)ids_off, (uint32_t)n_ids};
    t->cache_n++;
}

/* The vocabulary string of a byte-level piece: each byte's stand-in character. */
static int map_bytes(fl_tokenizer *t, const char *s, size_t n, fl_err *err) {
    t->mapped.n = 0;
    for (size_t i = 0; i < n; i++) {
        const char *c = t->byte_char[(unsigned char)s[i]];
        if (fl_str_append(&t->mapped, c, strlen(c), err)) return err->code;
    }
    return FL_OK;
}

/* Encodes one pre-token with the BPE model. */
static int model_encode(fl_tokenizer *t, const char *s, size_t n, fl_ids *out, fl_err *err) {
    int hit = cache_get(t, s, n, out, err);
    if (hit) return hit < 0 ? err->code : FL_OK;
    size_t first = out->n;
    if (t->ignore_merges) {
        int32_t whole = -1;
        if (t->byte_level) {
            if (map_bytes(t, s, n, err)) return err->code;
            whole = vocab_find(t, t->mapped.s, t->mapped.n);
        } else {
            whole = vocab_find(t, s, n);
        }
        if (whole >= 0) {
            cache_put(t, s, n, &whole, 1);
            return fl_ids_push(out, whole, err);
        }
    }
    if (reserve_symbols(t, n * 4 + 1, err)) return err->code;
    word w = {0, -1};
    const unsigned char *u = (const unsigned char *)s;
    if (t->byte_level) {
        for (size_t i = 0; i < n; i++)
            word_char(t, &w, t->byte_id[u[i]], u + i, 1);
    } else {
        for (size_t i = 0; i < n;) {
            size_t len = u[i] < 0x80 ? 1 : u[i] < 0xE0 ? 2 : u[i] < 0xF0 ? 3 : 4;
            if (i + len > n) len = n - i;
            word_char(t, &w, vocab_find(t, s + i, len), u + i, len);
            i += len;
        }
    }
    if (w.pending_unk >= 0) word_add(t, &w, w.pending_unk);
    merge_all(t, w.n);
    for (size_t i = 0; i < w.n; i++)
        if (t->sym[i].alive && fl_ids_push(out, t->sym[i].id, err)) return err->code;
    /* an empty result (no byte of the piece in the vocabulary, no unk) leaves out->v NULL */
    cache_put(t, s, n, out->n > first ? out->v + first : NULL, out->n - first);
    return FL_OK;
}

/* ---- normalizers and pre-tokenizers -------------------------------------------------------- */

static int replace_all(fl_str *dst, const char *s, size_t n, const char *pat, size_t pat_len,
                       const char *with, size_t with_len, fl_err *err) {
    dst->n = 0;
    if (fl_str_append(dst, "", 0, err)) return err->code;
    size_t i = 0;
    while (i < n) {
        const char *hit = pat_len <= n - i ? memmem(s + i, n - i, pat, pat_len) : NULL;
        size_t upto = hit ? (size_t)(hit - s) : n;
        if (fl_str_append(dst, s + i, upto - i, err)) return err->code;
        if (!hit) break;
        if (fl_str_append(dst, with, with_len, err)) return err->code;
        i = upto + pat_len;
    }
    return FL_OK;
}

/* Runs the normalizers over s into t->normalized (which then holds the segment). */
static int normalize(fl_tokenizer *t, const char *s, size_t n, fl_err *err) {
    fl_str *cur = &t->normalized, tmp = {0};
    cur->n = 0;
    int rc = fl_str_append(cur, s, n, err);
    for (int k = 0; k < t->n_norm && !rc; k++) {
        const step *st = &t->norm[k];
        if (st->kind == NORM_NFC) {
            char *composed;
            size_t len;
            if (fl_uni_nfc(cur->s, cur->n, &composed, &len))
                rc = fl_err_set(err, FL_ENOMEM, "out of memory normalizing");
            else {
                cur->n = 0;
                rc = fl_str_append(cur, composed, len, err);
                free(composed);
            }
        } else if (st->kind == NORM_PREPEND) {
            if (cur->n == 0) continue; /* Prepend leaves an empty string empty */
            tmp.n = 0;
            rc = fl_str_append(&tmp, pool_at(t, st->a), st->a.len, err);
            if (!rc) rc = fl_str_append(&tmp, cur->s, cur->n, err);
            if (!rc) cur->n = 0, rc = fl_str_append(cur, tmp.s, tmp.n, err);
        } else {
            rc = replace_all(&tmp, cur->s, cur->n, pool_at(t, st->a), st->a.len, pool_at(t, st->b),
                             st->b.len, err);
            if (!rc) cur->n = 0, rc = fl_str_append(cur, tmp.s, tmp.n, err);
        }
    }
    fl_str_free(&tmp);
    return rc;
}

typedef struct split_ctx {
    str_list *dst;
    const char *src;
} split_ctx;

static int emit_piece(void *ctx, size_t start, size_t end) {
    split_ctx *c = ctx;
    return list_add(c->dst, c->src + start, end - start, NULL) ? FL_ENOMEM : FL_OK;
}

/* Metaspace: spaces become the replacement, which is prepended by the scheme; with split, each
 * replacement starts a new piece (MergedWithNext). */
static int metaspace_piece(const fl_tokenizer *t, const step *st, const char *s, size_t n,
                           int at_start, str_list *dst, fl_err *err) {
    const char *rep = pool_at(t, st->a);
    size_t rep_len = st->a.len;
    fl_str text = {0};
    int rc = replace_all(&text, s, n, " ", 1, rep, rep_len, err);
    int starts = !rc && text.n >= rep_len && memcmp(text.s, rep, rep_len) == 0;
    if (!rc && !starts &&
        (st->scheme == PREPEND_ALWAYS || (st->scheme == PREPEND_FIRST && at_start))) {
        fl_str with = {0};
        rc = fl_str_append(&with, rep, rep_len, err);
        if (!rc) rc = fl_str_append(&with, text.s, text.n, err);
        fl_str_free(&text);
        text = with;
    }
    if (!rc && !st->split) rc = list_add(dst, text.s, text.n, err);
    for (size_t i = 0, begin = 0; !rc && st->split && i <= text.n;) {
        int at_rep = i < text.n && i + rep_len <= text.n && memcmp(text.s + i, rep, rep_len) == 0;
        if (i == text.n || (at_rep && i > begin)) {
            if (i > begin) rc = list_add(dst, text.s + begin, i - begin, err);
            begin = i;
        }
        i += at_rep ? rep_len : 1;
        if (i > text.n) break;
    }
    fl_str_free(&text);
    return rc;
}

/* Runs the pre-tokenizers over the normalized segment; the pieces end in *out. */
static int pre_tokenize(fl_tokenizer *t, int at_start, str_list **out, fl_err *err) {
    str_list *cur = &t->pieces[0], *next = &t->pieces[1];
    list_clear(cur);
    if (list_add(cur, t->normalized.s, t->normalized.n, err)) return err->code;
    for (int k = 0; k < t->n_pre; k++) {
        const step *st = &t->pre[k];
        list_clear(next);
        for (size_t i = 0; i < cur->n; i++) {
            const char *s = list_at(cur, i);
            size_t n = cur->v[i].len;
            int rc = FL_OK;
            if (st->kind == PRE_BYTE_LEVEL) {
                if (st->prefix_space && (n == 0 || s[0] != ' ')) {
                    rc = list_add(next, " ", 1, err);
                    if (!rc) rc = list_extend_last(next, s, n, err);
                    if (!rc && st->use_regex) { /* split the prefixed piece */
                        str_list *tmp = next;
                        size_t at = tmp->n - 1;
                        fl_str piece = {0};
                        rc = fl_str_append(&piece, list_at(tmp, at), tmp->v[at].len, err);
                        tmp->buf.n = tmp->v[at].off;
                        tmp->n--;
                        split_ctx c = {next, piece.s};
                        if (!rc)
                            rc = fl_pattern_split(FL_PATTERN_GPT2, piece.s, piece.n, &t->split,
                                                  emit_piece, &c, err);
                        fl_str_free(&piece);
                    }
                } else if (st->use_regex) {
                    split_ctx c = {next, s};
                    rc = fl_pattern_split(FL_PATTERN_GPT2, s, n, &t->split, emit_piece, &c, err);
                } else {
                    rc = list_add(next, s, n, err);
                }
            } else if (st->kind == PRE_SPLIT) {
                split_ctx c = {next, s};
                rc =
                    fl_pattern_split((fl_pattern)st->pattern, s, n, &t->split, emit_piece, &c, err);
            } else {
                rc = metaspace_piece(t, st, s, n, at_start && i == 0, next, err);
            }
            if (rc) return rc;
            s = NULL; /* cur's buffer is not touched while next grows */
        }
        str_list *swap = cur;
        cur = next;
        next = swap;
    }
    *out = cur;
    return FL_OK;
}

static int encode_segment(fl_tokenizer *t, const char *s, size_t n, int at_start, fl_ids *out,
                          fl_err *err) {
    if (n == 0) return FL_OK;
    str_list *pieces = NULL;
    if (normalize(t, s, n, err) || pre_tokenize(t, at_start, &pieces, err)) return err->code;
    for (size_t i = 0; i < pieces->n; i++)
        if (pieces->v[i].len && model_encode(t, list_at(pieces, i), pieces->v[i].len, out, err))
            return err->code;
    return FL_OK;
}

/* ---- added tokens --------------------------------------------------------------------------- */

/* The code point ending just before byte `at` (at > 0) and where it begins. */
static uint32_t cp_before(const char *s, size_t at, size_t *begin) {
    size_t k = at - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    size_t pos = k;
    uint32_t c = 0;
    fl_utf8_next(s, at, &pos, &c);
    *begin = k;
    return c;
}

/* The code point at byte `at` (< n) and the offset after it. */
static uint32_t cp_at(const char *s, size_t n, size_t at, size_t *after) {
    size_t pos = at;
    uint32_t c = (unsigned char)s[at];
    if (c < 0x80)
        pos++;
    else if (!fl_utf8_next(s, n, &pos, &c))
        pos++;
    *after = pos;
    return c;
}

static int is_word_cp(uint32_t c) { return c == '_' || fl_uni_is_letter(c) || fl_uni_is_number(c); }

/* Finds the leftmost-longest added token in s[from..n). Returns 1 with the match [*start, *end)
 * — widened over the whitespace an lstrip / rstrip token absorbs — and its id. A single_word
 * token matches only between non-word characters. */
static int find_added(const fl_tokenizer *t, const char *s, size_t n, size_t from, size_t *start,
                      size_t *end, int32_t *id) {
    for (size_t i = from; i < n; i++) {
        if (!t->added_first[(unsigned char)s[i]]) continue;
        int best = -1;
        for (int k = 0; k < t->n_added; k++) {
            const added_token *a = &t->added[k];
            if (a->text.len > n - i || (best >= 0 && a->text.len <= t->added[best].text.len) ||
                memcmp(s + i, pool_at(t, a->text), a->text.len) != 0)
                continue;
            size_t edge, e = i + a->text.len;
            if (a->single_word && ((i > 0 && is_word_cp(cp_before(s, i, &edge))) ||
                                   (e < n && is_word_cp(cp_at(s, n, e, &edge)))))
                continue;
            best = k;
        }
        if (best < 0) continue;
        const added_token *a = &t->added[best];
        size_t b = i, e = i + a->text.len, next;
        while (a->lstrip && b > from && fl_uni_is_space(cp_before(s, b, &next)))
            b = next;
        while (a->rstrip && e < n && fl_uni_is_space(cp_at(s, n, e, &next)))
            e = next;
        *start = b;
        *end = e;
        *id = a->id;
        return 1;
    }
    return 0;
}

int fl_tokenizer_encode(fl_tokenizer *t, const char *text, size_t len, fl_ids *out, fl_err *err) {
    size_t bad;
    if (len >= MAX_TEXT_BYTES)
        return fl_err_set(err, FL_EINPUT, "text of %zu bytes: at most 2 GB per call", len);
    if (!fl_utf8_valid(text, len, &bad))
        return fl_err_set(err, FL_EINPUT, "text is not valid UTF-8 (byte offset %zu)", bad);
    size_t pos = 0, start, end;
    int32_t id;
    while (pos < len && t->n_added && find_added(t, text, len, pos, &start, &end, &id)) {
        if (encode_segment(t, text + pos, start - pos, pos == 0, out, err) ||
            fl_ids_push(out, id, err))
            return err->code;
        pos = end;
    }
    return encode_segment(t, text + pos, len - pos, pos == 0, out, err);
}

/* ---- decoding ----------------------------------------------------------------------------- */

/* Appends s with invalid UTF-8 replaced as Rust's from_utf8_lossy does: each maximal prefix of a
 * valid sequence that cannot be completed becomes one U+FFFD. */
static int append_lossy(fl_str *dst, const char *s, size_t n, fl_err *err) {
    size_t i = 0, clean = 0;
    while (i < n) {
        size_t pos = i;
        uint32_t c;
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        if (fl_utf8_next(s, n, &pos, &c)) {
            i = pos;
            continue;
        }
        if (fl_str_append(dst, s + clean, i - clean, err) ||
            fl_str_append(dst, "\xEF\xBF\xBD", 3, err))
            return err->code;
        unsigned char b = (unsigned char)s[i];
        unsigned lo = 0x80, hi = 0xBF;
        size_t need = b >= 0xC2 && b <= 0xDF   ? 1
                      : b >= 0xE0 && b <= 0xEF ? 2
                      : b >= 0xF0 && b <= 0xF4 ? 3
                                               : 0;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
        i++;
        for (size_t k = 0; k < need && i < n; k++) {
            unsigned char cb = (unsigned char)s[i];
            if (cb < (k == 0 ? lo : 0x80) || cb > (k == 0 ? hi : 0xBF)) break;
            i++;
        }
        clean = i;
    }
    return fl_str_append(dst, s + clean, n - clean, err);
}

/* ByteLevel: every token's characters back to bytes (a token with a character that is no byte's
 * stand-in keeps its UTF-8 as is), the whole as one lossy string. */
static int dec_byte_level(const fl_tokenizer *t, const str_list *in, str_list *out, fl_err *err) {
    fl_str bytes = {0};
    int rc = fl_str_append(&bytes, "", 0, err);
    for (size_t i = 0; i < in->n && !rc; i++) {
        const char *s = list_at(in, i);
        size_t n = in->v[i].len, mark = bytes.n, pos = 0;
        uint32_t c;
        while (!rc && pos < n) {
            if (!fl_utf8_next(s, n, &pos, &c) || c >= 324 || t->char_byte[c] < 0) break;
            char b = (char)t->char_byte[c];
            rc = fl_str_append(&bytes, &b, 1, err);
        }
        if (!rc && pos < n) { /* not all stand-ins: the raw text */
            bytes.n = mark;
            rc = fl_str_append(&bytes, s, n, err);
        }
    }
    fl_str lossy = {0};
    if (!rc) rc = fl_str_append(&lossy, "", 0, err);
    if (!rc) rc = append_lossy(&lossy, bytes.s, bytes.n, err);
    if (!rc) rc = list_add(out, lossy.s, lossy.n, err);
    fl_str_free(&bytes);
    fl_str_free(&lossy);
    return rc;
}

static int hex_byte(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        char c = s[k];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* ByteFallback: runs of <0xXX> tokens become their bytes when those are valid UTF-8, else one
 * U+FFFD per byte token. */
static int dec_byte_fallback(const str_list *in, str_list *out, fl_err *err) {
    fl_str run = {0};
    int rc = FL_OK;
    for (size_t i = 0; i <= in->n && !rc; i++) {
        int b = i < in->n ? hex_byte(list_at(in, i), in->v[i].len) : -1;
        if (b >= 0) {
            char c = (char)b;
            rc = fl_str_append(&run, &c, 1, err);
            continue;
        }
        if (run.n) {
            size_t bad;
            if (fl_utf8_valid(run.s, run.n, &bad))
                rc = list_add(out, run.s, run.n, err);
            else
                for (size_t k = 0; k < run.n && !rc; k++)
                    rc = list_add(out, "\xEF\xBF\xBD", 3, err);
            run.n = 0;
        }
        if (!rc && i < in->n) rc = list_add(out, list_at(in, i), in->v[i].len, err);
    }
    fl_str_free(&run);
    return rc;
}

static int dec_step(const fl_tokenizer *t, const step *st, const str_list *in, str_list *out,
                    fl_err *err) {
    if (st->kind == DEC_BYTE_LEVEL) return dec_byte_level(t, in, out, err);
    if (st->kind == DEC_BYTE_FALLBACK) return dec_byte_fallback(in, out, err);
    int rc = FL_OK;
    if (st->kind == DEC_FUSE) {
        rc = list_add(out, "", 0, err);
        for (size_t i = 0; i < in->n && !rc; i++)
            rc = list_extend_last(out, list_at(in, i), in->v[i].len, err);
        return rc;
    }
    fl_str tmp = {0};
    for (size_t i = 0; i < in->n && !rc; i++) {
        const char *s = list_at(in, i);
        size_t n = in->v[i].len;
        if (st->kind == DEC_REPLACE || st->kind == DEC_METASPACE) {
            /* Metaspace drops every replacement of the first token (prepend scheme not never) */
            const char *with = st->kind == DEC_REPLACE ? pool_at(t, st->b) : " ";
            size_t with_len = st->kind == DEC_REPLACE ? st->b.len : 1;
            if (st->kind == DEC_METASPACE && i == 0 && st->scheme != PREPEND_NEVER) with_len = 0;
            rc = replace_all(&tmp, s, n, pool_at(t, st->a), st->a.len, with, with_len, err);
            if (!rc) rc = list_add(out, tmp.s, tmp.n, err);
        } else { /* DEC_STRIP: up to start leading and stop trailing copies of content */
            const char *c = pool_at(t, st->a);
            size_t c_len = st->a.len, b = 0, e = n;
            for (int k = 0; k < st->start && c_len && b + c_len <= e && !memcmp(s + b, c, c_len);
                 k++)
                b += c_len;
            for (int k = 0;
                 k < st->stop && c_len && e >= b + c_len && !memcmp(s + e - c_len, c, c_len); k++)
                e -= c_len;
            rc = list_add(out, s + b, e - b, err);
        }
    }
    fl_str_free(&tmp);
    return rc;
}

size_t fl_tokenizer_settled_ids(const fl_tokenizer *t, const int32_t *ids, size_t n) {
    int byte_runs = 0;
    for (int k = 0; k < t->n_dec; k++)
        byte_runs |= t->dec[k].kind == DEC_BYTE_FALLBACK;
    if (!byte_runs) return n;
    size_t end = n;
    while (end > 0) {
        size_t len;
        int32_t id = ids[end - 1];
        const char *s = fl_tokenizer_token(t, id, &len);
        int skipped = s && t->special[id]; /* dropped before the decoders: joins the run */
        if (!s || (!skipped && hex_byte(s, len) < 0)) break;
        end--;
    }
    return end;
}

int fl_tokenizer_decode(const fl_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                        fl_str *out, fl_err *err) {
    str_list a = {0}, b = {0}, *cur = &a, *next = &b;
    int rc = fl_str_append(out, "", 0, err);
    for (size_t i = 0; i < n && !rc; i++) {
        size_t len;
        const char *s = fl_tokenizer_token(t, ids[i], &len);
        if (!s)
            rc = fl_err_set(err, FL_EINPUT, "token id %d is not in the vocabulary (size %d)",
                            ids[i], t->n_ids);
        else if (!(skip_special && t->special[ids[i]]))
            rc = list_add(cur, s, len, err);
    }
    for (int k = 0; k < t->n_dec && !rc; k++) {
        list_clear(next);
        rc = dec_step(t, &t->dec[k], cur, next, err);
        str_list *swap = cur;
        cur = next;
        next = swap;
    }
    for (size_t i = 0; i < cur->n && !rc; i++) {
        if (!t->has_decoder && i > 0) rc = fl_str_append(out, " ", 1, err);
        if (!rc) rc = fl_str_append(out, list_at(cur, i), cur->v[i].len, err);
    }
    list_free(&a);
    list_free(&b);
    return rc;
}

/* ---- fedllm's byte tokenizer, and copying tokenizer files ------------------------------------ */

#define BYTE_EOS      256
#define BYTE_EOS_TEXT "<|endoftext|>"

static cJSON *byte_level_part(void) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "ByteLevel");
    cJSON_AddBoolToObject(o, "add_prefix_space", 0);
    cJSON_AddBoolToObject(o, "trim_offsets", 1);
    cJSON_AddBoolToObject(o, "use_regex", 0);
    return o;
}

static cJSON *byte_model(void) {
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
        char name[5];
        name[fl_utf8_put(byte_stand_in(b), name)] = '\0';
        cJSON_AddNumberToObject(vocab, name, b);
    }
    if (vocab) cJSON_AddNumberToObject(vocab, BYTE_EOS_TEXT, BYTE_EOS);
    cJSON_AddArrayToObject(model, "merges");
    return model;
}

static int write_json(const char *dir, const char *name, cJSON *root, fl_err *err) {
    char path[4096];
    int rc = fl_path_join(path, sizeof path, dir, name, err);
    char *text = rc ? NULL : cJSON_Print(root);
    if (!rc && !text) rc = fl_err_set(err, FL_ENOMEM, "%s: out of memory", path);
    if (!rc) rc = fl_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

int fl_tokenizer_save_bytes(const char *dir, fl_err *err) {
    cJSON *root = cJSON_CreateObject(), *config = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    cJSON *eos = cJSON_CreateObject();
    cJSON_AddNumberToObject(eos, "id", BYTE_EOS);
    cJSON_AddStringToObject(eos, "content", BYTE_EOS_TEXT);
    cJSON_AddBoolToObject(eos, "single_word", 0);
    cJSON_AddBoolToObject(eos, "lstrip", 0);
    cJSON_AddBoolToObject(eos, "rstrip", 0);
    cJSON_AddBoolToObject(eos, "normalized", 0);
    cJSON_AddBoolToObject(eos, "special", 1);
    cJSON_AddItemToArray(added, eos);
    cJSON_AddNullToObject(root, "normalizer");
    cJSON_AddItemToObject(root, "pre_tokenizer", byte_level_part());
    cJSON_AddNullToObject(root, "post_processor");
    cJSON_AddItemToObject(root, "decoder", byte_level_part());
    cJSON_AddItemToObject(root, "model", byte_model());
    cJSON_AddStringToObject(config, "tokenizer_class", "PreTrainedTokenizerFast");
    cJSON_AddStringToObject(config, "eos_token", BYTE_EOS_TEXT);
    cJSON_AddStringToObject(config, "bos_token", BYTE_EOS_TEXT);
    cJSON_AddBoolToObject(config, "add_bos_token", 0);
    cJSON_AddNumberToObject(config, "model_max_length", 1e9);
    /* Check what was built before writing: an allocation failure leaves a part missing. */
    fl_tokenizer *check = NULL;
    char *text = cJSON_PrintUnformatted(root), *cfg_text = cJSON_PrintUnformatted(config);
    int rc = text && cfg_text ? fl_tokenizer_parse(&check, text, strlen(text), cfg_text,
                                                   strlen(cfg_text), "tokenizer.json", err)
                              : fl_err_set(err, FL_ENOMEM, "out of memory building a tokenizer");
    if (!rc &&
        (fl_tokenizer_vocab_size(check) != BYTE_EOS + 1 || fl_tokenizer_eos(check) != BYTE_EOS))
        rc = fl_err_set(err, FL_ENOMEM, "out of memory building a tokenizer");
    fl_tokenizer_free(check);
    free(text);
    free(cfg_text);
    if (!rc) rc = write_json(dir, "tokenizer.json", root, err);
    if (!rc) rc = write_json(dir, "tokenizer_config.json", config, err);
    cJSON_Delete(root);
    cJSON_Delete(config);
    return rc;
}

int fl_tokenizer_copy_files(const char *src, const char *dst, fl_err *err) {
    static const char *const names[] = {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
        "merges.txt",     "tokenizer.model",       "added_tokens.json"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char from[4096], to[4096], *data = NULL;
        size_t len = 0;
        if (fl_path_join(from, sizeof from, src, names[i], err) ||
            fl_path_join(to, sizeof to, dst, names[i], err))
            return FL_EINPUT;
        if (!exists(from)) {
            if (i == 0)
                return fl_err_set(err, FL_EINPUT, "%s: missing (the model has no tokenizer)", from);
            continue;
        }
        int rc = fl_read_file(from, &data, &len, MAX_FILE_BYTES, err);
        if (!rc) rc = fl_write_file_atomic(to, data, len, err);
        free(data);
        if (rc) return rc;
    }
    return FL_OK;
}
