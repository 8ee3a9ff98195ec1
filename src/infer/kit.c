/* kit.c — InferDPT's kit: made from a model directory's tokenizer and input embeddings, written to
 * and read from KIT/kit.bin beside the tokenizer files (include/fedllm/inferdpt.h).
 *
 * kit.bin, little-endian:
 *   "FLDPTKIT", u32 version (1), u32 n, u32 dim, u32 k, u32 vocab, u32 strings_bytes
 *   i32 ids[n] (increasing, < vocab)
 *   u32 string_end[n] (offsets into the string block, increasing), then the block (strings_bytes)
 *   f32 emb[n][dim], f32 delta_f[dim], i32 nb_idx[n][k], f32 nb_sim[n][k]
 * 11.4k tokens of a 4096-wide model with K 512 take 234 MB (embeddings 187 MB of it); FATE-LLM's
 * JSON of the same holds 130 M pairs as text. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fileio.h"
#include "fedllm/inferdpt.h"
#include "model/checkpoint.h"

#define KIT_MAGIC "FLDPTKIT"
enum { KIT_VERSION = 1, KIT_MAX_TOKENS = 1 << 24, KIT_MAX_DIM = 65536 };

fl_dpt_kit_options fl_dpt_kit_defaults(void) {
    return (fl_dpt_kit_options){.min_len = 4, .max_len = 15, .neighbours = 512};
}

void fl_dpt_kit_free(fl_dpt_kit *kit) {
    if (!kit) return;
    if (kit->strings)
        for (int i = 0; i < kit->n; i++)
            free(kit->strings[i]);
    free(kit->strings);
    free(kit->ids);
    free(kit->emb);
    free(kit->unit);
    free(kit->delta_f);
    free(kit->nb_idx);
    free(kit->nb_sim);
    free(kit->slot);
    fl_dpt_rows_free(kit->rows);
    memset(kit, 0, sizeof *kit);
}

/* A whole-word token: the byte-level (Ġ, U+0120) or SentencePiece (▁, U+2581) marker of a leading
 * space, then min..max ASCII letters, not all of them capitals. */
static int whole_word(const char *s, size_t len, int min_len, int max_len) {
    size_t skip = 0;
    if (len >= 2 && (unsigned char)s[0] == 0xC4 && (unsigned char)s[1] == 0xA0)
        skip = 2;
    else if (len >= 3 && (unsigned char)s[0] == 0xE2 && (unsigned char)s[1] == 0x96 &&
             (unsigned char)s[2] == 0x81)
        skip = 3;
    if (!skip) return 0;
    size_t letters = len - skip;
    if ((int)letters < min_len || (int)letters > max_len) return 0;
    int lower = 0;
    for (size_t i = skip; i < len; i++) {
        char c = s[i];
        if (c >= 'a' && c <= 'z')
            lower = 1;
        else if (!(c >= 'A' && c <= 'Z'))
            return 0;
    }
    return lower;
}

/* The kit's slots for every id (-1 outside), from kit->ids. */
static int fill_slots(fl_dpt_kit *kit, fl_err *err) {
    kit->slot = malloc((size_t)kit->vocab * sizeof *kit->slot);
    if (!kit->slot) return fl_err_set(err, FL_ENOMEM, "out of memory for the kit's slots");
    for (int v = 0; v < kit->vocab; v++)
        kit->slot[v] = -1;
    for (int i = 0; i < kit->n; i++)
        kit->slot[kit->ids[i]] = i;
    return FL_OK;
}

/* kit->unit from kit->emb; a zero row stays zero (its similarities are 0). */
static int fill_unit(fl_dpt_kit *kit, fl_err *err) {
    size_t D = (size_t)kit->dim;
    kit->unit = malloc((size_t)kit->n * D * sizeof *kit->unit);
    if (!kit->unit) return fl_err_set(err, FL_ENOMEM, "out of memory for the kit's unit rows");
    for (int i = 0; i < kit->n; i++) {
        const float *e = kit->emb + (size_t)i * D;
        double ss = 0;
        for (size_t d = 0; d < D; d++)
            ss += (double)e[d] * e[d];
        double inv = ss > 0 ? 1.0 / sqrt(ss) : 0;
        for (size_t d = 0; d < D; d++)
            kit->unit[(size_t)i * D + d] = (float)(e[d] * inv);
    }
    return FL_OK;
}

typedef struct sim_pair {
    float sim;
    int32_t idx;
} sim_pair;

static int by_sim_desc(const void *a, const void *b) {
    const sim_pair *x = a, *y = b;
    if (x->sim != y->sim) return x->sim > y->sim ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* Each token's k nearest: similarities a block of rows at a time (one GEMM of unit rows), each
 * row sorted; the token itself first with similarity 1. */
static int fill_neighbours(fl_dpt_kit *kit, fl_err *err) {
    const int n = kit->n, k = kit->k, D = kit->dim, block = 256;
    kit->nb_idx = malloc((size_t)n * k * sizeof *kit->nb_idx);
    kit->nb_sim = malloc((size_t)n * k * sizeof *kit->nb_sim);
    float *sims = malloc((size_t)block * n * sizeof *sims);
    sim_pair *pairs = malloc((size_t)block * n * sizeof *pairs);
    if (!kit->nb_idx || !kit->nb_sim || !sims || !pairs) {
        free(sims), free(pairs);
        return fl_err_set(err, FL_ENOMEM, "out of memory for the kit's neighbour lists");
    }
    for (int r0 = 0; r0 < n; r0 += block) {
        int rows = n - r0 < block ? n - r0 : block;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, D, 1.0f,
                    kit->unit + (size_t)r0 * D, D, kit->unit, D, 0.0f, sims, n);
#pragma omp parallel for schedule(dynamic, 8)
        for (int r = 0; r < rows; r++) {
            int i = r0 + r;
            sim_pair *p = pairs + (size_t)r * n;
            for (int j = 0; j < n; j++)
                p[j] = (sim_pair){j == i ? 2.0f : sims[(size_t)r * n + j], j};
            qsort(p, (size_t)n, sizeof *p, by_sim_desc);
            for (int j = 0; j < k; j++) {
                float s = p[j].sim > 1.0f ? 1.0f : p[j].sim;
                kit->nb_idx[(size_t)i * k + j] = p[j].idx;
                kit->nb_sim[(size_t)i * k + j] = s;
            }
        }
    }
    free(sims);
    free(pairs);
    return FL_OK;
}

static const fl_st_tensor *find_embedding(const fl_checkpoint *ck) {
    static const char *names[] = {"model.embed_tokens.weight", "transformer.wte.weight",
                                  "wte.weight", "embed_tokens.weight"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const fl_st_file *f = fl_checkpoint_find(ck, names[i]);
        if (f) return fl_st_find(f, names[i]);
    }
    return NULL;
}

/* Picks the whole-word tokens of tok into kit->ids and kit->strings. */
static int pick_tokens(fl_dpt_kit *kit, const fl_tokenizer *tok, const fl_dpt_kit_options *opt,
                       fl_err *err) {
    kit->ids = malloc((size_t)kit->vocab * sizeof *kit->ids);
    kit->strings = calloc((size_t)kit->vocab, sizeof *kit->strings);
    if (!kit->ids || !kit->strings) return fl_err_set(err, FL_ENOMEM, "out of memory for a kit");
    for (int v = 0; v < kit->vocab; v++) {
        size_t len = 0;
        const char *s = fl_tokenizer_token(tok, v, &len);
        if (!s || fl_tokenizer_is_special(tok, v) ||
            !whole_word(s, len, opt->min_len, opt->max_len))
            continue;
        if (!(kit->strings[kit->n] = strndup(s, len)))
            return fl_err_set(err, FL_ENOMEM, "out of memory for a kit");
        kit->ids[kit->n++] = v;
    }
    return FL_OK;
}

int fl_dpt_kit_build(fl_dpt_kit *kit, const fl_tokenizer *tok, const float *emb, int rows, int dim,
                     const fl_dpt_kit_options *opt, const char *what, fl_err *err) {
    memset(kit, 0, sizeof *kit);
    if (opt->min_len < 1 || opt->max_len < opt->min_len || opt->neighbours < 1)
        return fl_err_set(err, FL_EINPUT,
                          "inferdpt kit: expected 1 <= min_len <= max_len and neighbours >= 1");
    int vocab = fl_tokenizer_vocab_size(tok);
    if (rows < vocab || dim < 1 || dim > KIT_MAX_DIM)
        return fl_err_set(err, FL_EINPUT,
                          "%s: embeddings of (%d, %d): expected at least the tokenizer's %d rows "
                          "and 1..%d columns",
                          what, rows, dim, vocab, KIT_MAX_DIM);
    kit->vocab = vocab;
    kit->dim = dim;
    int rc = pick_tokens(kit, tok, opt, err);
    if (!rc && kit->n == 0)
        rc = fl_err_set(err, FL_EINPUT,
                        "%s: no whole-word token (a leading-space marker, then %d..%d letters) in "
                        "the tokenizer's vocabulary",
                        what, opt->min_len, opt->max_len);
    if (rc) return fl_dpt_kit_free(kit), rc;
    kit->k = opt->neighbours < kit->n ? opt->neighbours : kit->n;
    size_t D = (size_t)dim;
    kit->emb = malloc((size_t)kit->n * D * sizeof *kit->emb);
    kit->delta_f = malloc(D * sizeof *kit->delta_f);
    if (!kit->emb || !kit->delta_f) {
        fl_dpt_kit_free(kit);
        return fl_err_set(err, FL_ENOMEM, "out of memory for the embeddings");
    }
    for (int i = 0; i < kit->n; i++)
        memcpy(kit->emb + (size_t)i * D, emb + (size_t)kit->ids[i] * D, D * sizeof *emb);
    for (size_t d = 0; d < D; d++) {
        float lo = kit->emb[d], hi = kit->emb[d];
        for (int i = 1; i < kit->n; i++) {
            float v = kit->emb[(size_t)i * D + d];
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        kit->delta_f[d] = hi - lo;
    }
    if ((rc = fill_unit(kit, err)) || (rc = fill_slots(kit, err)) ||
        (rc = fill_neighbours(kit, err)))
        fl_dpt_kit_free(kit);
    else
        kit->rows = fl_dpt_rows_new(kit->n, FL_DPT_ROW_CACHE_BYTES);
    return rc;
}

int fl_dpt_kit_make(fl_dpt_kit *kit, const char *model_dir, const fl_dpt_kit_options *opt,
                    fl_err *err) {
    memset(kit, 0, sizeof *kit);
    fl_tokenizer *tok = NULL;
    int rc = fl_tokenizer_load(&tok, model_dir, err);
    if (rc) return rc;
    fl_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck) return fl_tokenizer_free(tok), fl_err_set(err, FL_ENOMEM, "out of memory");
    float *all = NULL;
    if ((rc = fl_checkpoint_open(ck, model_dir, err))) goto out;
    const fl_st_tensor *t = find_embedding(ck);
    if (!t || t->ndim != 2 || t->shape[0] > INT32_MAX || t->shape[1] > KIT_MAX_DIM) {
        rc = fl_err_set(err, FL_EINPUT,
                        "%s: no input-embedding tensor (model.embed_tokens.weight or "
                        "transformer.wte.weight) of two dimensions",
                        model_dir);
        goto out;
    }
    if (!(all = malloc(t->numel * sizeof *all))) {
        rc = fl_err_set(err, FL_ENOMEM, "out of memory for the embeddings");
        goto out;
    }
    if ((rc = fl_st_to_f32(t, all, err))) goto out;
    rc = fl_dpt_kit_build(kit, tok, all, (int)t->shape[0], (int)t->shape[1], opt, model_dir, err);
out:
    free(all);
    fl_checkpoint_close(ck);
    free(ck);
    fl_tokenizer_free(tok);
    return rc;
}

static int put(fl_atomic_file *f, const void *data, size_t len, fl_err *err) {
    return fl_atomic_write(f, data, len, err);
}

int fl_dpt_kit_save(const fl_dpt_kit *kit, const char *model_dir, const char *dir, fl_err *err) {
    char path[1024];
    int rc = fl_mkdirs(dir, err);
    if (rc || (rc = fl_path_join(path, sizeof path, dir, "kit.bin", err))) return rc;
    uint32_t *ends = malloc((size_t)kit->n * sizeof *ends);
    if (!ends) return fl_err_set(err, FL_ENOMEM, "out of memory");
    uint32_t total = 0;
    for (int i = 0; i < kit->n; i++)
        ends[i] = total += (uint32_t)strlen(kit->strings[i]);
    uint32_t head[6] = {KIT_VERSION,      (uint32_t)kit->n,     (uint32_t)kit->dim,
                        (uint32_t)kit->k, (uint32_t)kit->vocab, total};
    size_t n = (size_t)kit->n, D = (size_t)kit->dim, nk = n * (size_t)kit->k;
    fl_atomic_file f;
    if ((rc = fl_atomic_open(&f, path, err))) return free(ends), rc;
    rc = put(&f, KIT_MAGIC, 8, err);
    if (!rc) rc = put(&f, head, sizeof head, err);
    if (!rc) rc = put(&f, kit->ids, n * 4, err);
    if (!rc) rc = put(&f, ends, n * 4, err);
    for (int i = 0; !rc && i < kit->n; i++)
        rc = put(&f, kit->strings[i], strlen(kit->strings[i]), err);
    if (!rc) rc = put(&f, kit->emb, n * D * 4, err);
    if (!rc) rc = put(&f, kit->delta_f, D * 4, err);
    if (!rc) rc = put(&f, kit->nb_idx, nk * 4, err);
    if (!rc) rc = put(&f, kit->nb_sim, nk * 4, err);
    free(ends);
    if (rc) return fl_atomic_abort(&f), rc;
    if ((rc = fl_atomic_commit(&f, err))) return rc;
    return fl_tokenizer_copy_files(model_dir, dir, err);
}

/* A cursor over the file that never reads past its end. */
typedef struct reader {
    const uint8_t *p, *end;
    const char *path;
} reader;

static int take(reader *r, void *out, size_t bytes, const char *field, fl_err *err) {
    if ((size_t)(r->end - r->p) < bytes)
        return fl_err_set(err, FL_EINPUT, "%s: truncated in %s (%zu bytes needed, %zu left)",
                          r->path, field, bytes, (size_t)(r->end - r->p));
    memcpy(out, r->p, bytes);
    r->p += bytes;
    return FL_OK;
}

static void *take_array(reader *r, size_t count, size_t size, const char *field, int *rc,
                        fl_err *err) {
    void *a = malloc(count * size > 0 ? count * size : 1);
    if (!a) {
        *rc = fl_err_set(err, FL_ENOMEM, "out of memory reading %s", r->path);
        return NULL;
    }
    if ((*rc = take(r, a, count * size, field, err))) return free(a), NULL;
    return a;
}

/* Every index and similarity in range, lists sorted, self first. */
static int check_lists(const fl_dpt_kit *kit, const char *path, fl_err *err) {
    for (int i = 0; i < kit->n; i++) {
        if (i > 0 && kit->ids[i] <= kit->ids[i - 1])
            return fl_err_set(err, FL_EINPUT, "%s: ids: expected increasing ids", path);
        if (kit->ids[i] < 0 || kit->ids[i] >= kit->vocab)
            return fl_err_set(err, FL_EINPUT, "%s: ids: %d is outside the vocabulary of %d", path,
                              kit->ids[i], kit->vocab);
        const int32_t *idx = kit->nb_idx + (size_t)i * kit->k;
        const float *sim = kit->nb_sim + (size_t)i * kit->k;
        if (idx[0] != i || sim[0] != 1.0f)
            return fl_err_set(err, FL_EINPUT,
                              "%s: neighbours of token %d: expected itself first, similarity 1",
                              path, i);
        for (int j = 0; j < kit->k; j++) {
            if (idx[j] < 0 || idx[j] >= kit->n || !(sim[j] >= -1.0f && sim[j] <= 1.0f) ||
                (j > 0 && sim[j] > sim[j - 1]))
                return fl_err_set(err, FL_EINPUT,
                                  "%s: neighbours of token %d: entry %d is out of range or order",
                                  path, i, j);
        }
    }
    for (int d = 0; d < kit->dim; d++)
        if (!(kit->delta_f[d] >= 0 && isfinite(kit->delta_f[d])))
            return fl_err_set(err, FL_EINPUT, "%s: delta_f[%d]: expected a finite value >= 0", path,
                              d);
    for (size_t x = 0; x < (size_t)kit->n * kit->dim; x++)
        if (!isfinite(kit->emb[x]))
            return fl_err_set(err, FL_EINPUT, "%s: embeddings: a value is not finite", path);
    return FL_OK;
}

static int load_strings(fl_dpt_kit *kit, reader *r, uint32_t total, fl_err *err) {
    int rc = FL_OK;
    uint32_t *ends = take_array(r, (size_t)kit->n, 4, "string_end", &rc, err);
    if (!ends) return rc;
    char *block = take_array(r, total, 1, "strings", &rc, err);
    kit->strings = calloc((size_t)kit->n, sizeof *kit->strings);
    if (!rc && !kit->strings) rc = fl_err_set(err, FL_ENOMEM, "out of memory");
    uint32_t start = 0;
    for (int i = 0; !rc && i < kit->n; i++) {
        if (ends[i] < start || ends[i] > total) {
            rc = fl_err_set(err, FL_EINPUT, "%s: string_end[%d]: out of order or past the block",
                            r->path, i);
            break;
        }
        if (!(kit->strings[i] = strndup(block + start, ends[i] - start)))
            rc = fl_err_set(err, FL_ENOMEM, "out of memory");
        start = ends[i];
    }
    free(ends);
    free(block);
    return rc;
}

int fl_dpt_kit_load(fl_dpt_kit *kit, const char *dir, fl_err *err) {
    memset(kit, 0, sizeof *kit);
    char path[1024];
    int rc = fl_path_join(path, sizeof path, dir, "kit.bin", err);
    if (rc) return rc;
    char *data = NULL;
    size_t len = 0;
    if ((rc = fl_read_file(path, &data, &len, (size_t)1 << 40, err))) return rc;
    reader r = {(const uint8_t *)data, (const uint8_t *)data + len, path};
    char magic[8];
    uint32_t head[6];
    if ((rc = take(&r, magic, 8, "magic", err)) ||
        (rc = take(&r, head, sizeof head, "header", err)))
        goto out;
    if (memcmp(magic, KIT_MAGIC, 8) != 0 || head[0] != KIT_VERSION) {
        rc = fl_err_set(err, FL_EINPUT,
                        "%s: not an InferDPT kit of version %d (make it with "
                        "`fedllm inferdpt kit`)",
                        path, KIT_VERSION);
        goto out;
    }
    if (head[1] < 1 || head[1] >= KIT_MAX_TOKENS || head[2] < 1 || head[2] > KIT_MAX_DIM ||
        head[3] < 1 || head[3] > head[1] || head[4] < head[1] || head[4] >= (1u << 30)) {
        rc = fl_err_set(err, FL_EINPUT,
                        "%s: header: sizes out of range (n %u, dim %u, k %u, "
                        "vocab %u)",
                        path, head[1], head[2], head[3], head[4]);
        goto out;
    }
    kit->n = (int)head[1], kit->dim = (int)head[2], kit->k = (int)head[3],
    kit->vocab = (int)head[4];
    size_t n = (size_t)kit->n, D = (size_t)kit->dim, nk = n * (size_t)kit->k;
    /* The sizes must add up to the file before anything that large is allocated. */
    size_t need = n * 8 + head[5] + n * D * 4 + D * 4 + nk * 8;
    if ((size_t)(r.end - r.p) != need) {
        rc = fl_err_set(err, FL_EINPUT,
                        "%s: %zu bytes after the header, expected %zu for its "
                        "sizes",
                        path, (size_t)(r.end - r.p), need);
        goto out;
    }
    if (!(kit->ids = take_array(&r, n, 4, "ids", &rc, err))) goto out;
    if ((rc = load_strings(kit, &r, head[5], err))) goto out;
    if (!(kit->emb = take_array(&r, n * D, 4, "embeddings", &rc, err)) ||
        !(kit->delta_f = take_array(&r, D, 4, "delta_f", &rc, err)) ||
        !(kit->nb_idx = take_array(&r, nk, 4, "nb_idx", &rc, err)) ||
        !(kit->nb_sim = take_array(&r, nk, 4, "nb_sim", &rc, err)))
        goto out;
    if ((rc = check_lists(kit, path, err)) || (rc = fill_unit(kit, err)) ||
        (rc = fill_slots(kit, err)))
        goto out;
    kit->rows = fl_dpt_rows_new(kit->n, FL_DPT_ROW_CACHE_BYTES);
out:
    free(data);
    if (rc) fl_dpt_kit_free(kit);
    return rc;
}

int fl_dpt_kit_check_tokenizer(const fl_dpt_kit *kit, const fl_tokenizer *tok, const char *what,
                               fl_err *err) {
    int vocab = fl_tokenizer_vocab_size(tok);
    if (vocab != kit->vocab)
        return fl_err_set(err, FL_EINPUT,
                          "%s: has %d ids but the kit's tokenizer %d: the kit was made for another "
                          "tokenizer (make it from the remote model's)",
                          what, vocab, kit->vocab);
    for (int i = 0; i < kit->n; i++) {
        size_t len = 0;
        const char *s = fl_tokenizer_token(tok, kit->ids[i], &len);
        if (!s || len != strlen(kit->strings[i]) || memcmp(s, kit->strings[i], len) != 0)
            return fl_err_set(err, FL_EINPUT,
                              "%s: id %d is not the kit's token \"%s\": the kit was made for "
                              "another tokenizer (make it from the remote model's)",
                              what, kit->ids[i], kit->strings[i]);
    }
    return FL_OK;
}
