/* safetensors.c — the safetensors reader (mmap + validation) and writer.
 *
 * A file is an 8-byte little-endian header length H, H bytes of JSON naming each tensor's dtype,
 * shape and [begin, end) byte range within the data that follows, then the data. Checkpoints run
 * from kilobytes (tests) to gigabytes, so the reader maps the file read-only and hands out
 * pointers into the mapping; nothing is copied until a tensor is converted into a parameter
 * table. Every number in the header comes from outside: the reader checks H against the file,
 * each range against the data, each range's length against dtype × shape, and that no two
 * non-empty tensors share a byte, before any pointer is formed. The header JSON is at most
 * ST_HEADER_MAX_BYTES (the reference implementation's bound) and is parsed from a private
 * NUL-terminated copy. fl_st_parse_mem runs the same checks over a buffer already in memory (a
 * federation message's payload).
 *
 * The writer lays tensors out contiguously in the order they were added, pads the header with
 * spaces to a multiple of 8 bytes (so that the data starts 8-aligned), and streams header and data
 * through fl_atomic_file, so a checkpoint never needs a second copy in memory; fl_st_write_mem
 * builds the same bytes in one buffer for a message payload. */
#define _GNU_SOURCE
#include "fedllm/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fedllm/fileio.h"

#define ST_HEADER_MAX_BYTES ((uint64_t)100000000)
/* Largest integer a JSON number (an IEEE double) holds exactly; bounds offsets and dims. */
#define ST_JSON_INT_MAX 9007199254740992.0

static const struct {
    const char *name;
    size_t bytes;
} DTYPES[] = {
    [FL_DTYPE_F32] = {"F32", 4}, [FL_DTYPE_F16] = {"F16", 2}, [FL_DTYPE_BF16] = {"BF16", 2},
    [FL_DTYPE_I32] = {"I32", 4}, [FL_DTYPE_I64] = {"I64", 8}, [FL_DTYPE_F64] = {"F64", 8},
    [FL_DTYPE_U8] = {"U8", 1},
};
#define N_DTYPES ((int)(sizeof DTYPES / sizeof DTYPES[0]))

static int dtype_valid(fl_dtype d) { return (int)d >= 0 && (int)d < N_DTYPES; }

/* "[2, 3]" into buf; shapes have at most FL_MAX_DIMS dims so 128 bytes always suffice. */
static const char *shape_str(char *buf, size_t size, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (n < size) snprintf(buf + n, size - n, "]");
    return buf;
}

/* ---- reader ---------------------------------------------------------------------------------- */

/* An integral JSON number in [0, 2^53]. */
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= ST_JSON_INT_MAX) || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

typedef struct st_range {
    uint64_t begin, end;
    int tensor;
} st_range;

static int range_cmp(const void *a, const void *b) {
    const st_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(((const fl_st_tensor *)a)->name, ((const fl_st_tensor *)b)->name);
}

/* Reads one "name": {dtype, shape, data_offsets} entry into t and *range (offsets within the
 * data section). */
static int parse_tensor(const cJSON *item, fl_st_tensor *t, st_range *range, uint64_t data_size,
                        const char *path, fl_err *err) {
    const char *name = item->string;
    if (strlen(name) >= FL_VIEW_NAME_MAX)
        return fl_err_set(err, FL_EINPUT, "%s: tensor '%.60s...': name longer than %d bytes", path,
                          name, FL_VIEW_NAME_MAX - 1);
    strcpy(t->name, name);
    if (!cJSON_IsObject(item))
        return fl_err_set(err, FL_EINPUT,
                          "%s: tensor '%s': expected an object with dtype, shape and data_offsets",
                          path, name);

    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    if (!cJSON_IsString(dtype))
        return fl_err_set(err, FL_EINPUT, "%s: tensor '%s': dtype: expected a string", path, name);
    int found = -1;
    for (int d = 0; d < N_DTYPES; d++)
        if (strcmp(dtype->valuestring, DTYPES[d].name) == 0) found = d;
    if (found < 0)
        return fl_err_set(err, FL_EINPUT,
                          "%s: tensor '%s': dtype '%.20s' is not supported (expected F32, F16, "
                          "BF16, I32, I64, F64 or U8)",
                          path, name, dtype->valuestring);
    t->dtype = (fl_dtype)found;

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    int ndim = cJSON_IsArray(shape) ? cJSON_GetArraySize(shape) : -1;
    if (ndim < 0 || ndim > FL_MAX_DIMS)
        return fl_err_set(err, FL_EINPUT,
                          "%s: tensor '%s': shape: expected an array of at most %d integers", path,
                          name, FL_MAX_DIMS);
    t->ndim = ndim;
    uint64_t numel = 1;
    int overflow = 0;
    const cJSON *dim;
    int i = 0;
    cJSON_ArrayForEach(dim, shape) {
        uint64_t n;
        if (!json_uint(dim, &n))
            return fl_err_set(err, FL_EINPUT,
                              "%s: tensor '%s': shape[%d]: expected a non-negative integer", path,
                              name, i);
        t->shape[i++] = (int64_t)n;
        overflow |= __builtin_mul_overflow(numel, n, &numel);
    }
    uint64_t need_bytes = 0;
    overflow |= __builtin_mul_overflow(numel, (uint64_t)DTYPES[found].bytes, &need_bytes);
    char shape_buf[128];
    if (overflow)
        return fl_err_set(err, FL_EINPUT, "%s: tensor '%s': shape %s is too large", path, name,
                          shape_str(shape_buf, sizeof shape_buf, t->ndim, t->shape));

    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        !json_uint(cJSON_GetArrayItem(offsets, 0), &begin) ||
        !json_uint(cJSON_GetArrayItem(offsets, 1), &end) || begin > end)
        return fl_err_set(err, FL_EINPUT,
                          "%s: tensor '%s': data_offsets: expected [begin, end] with 0 <= begin "
                          "<= end",
                          path, name);
    if (end > data_size)
        return fl_err_set(err, FL_EINPUT,
                          "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                          "] exceed the file (%" PRIu64 " bytes of data)",
                          path, name, begin, end, data_size);
    if (end - begin != need_bytes)
        return fl_err_set(err, FL_EINPUT,
                          "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                          " bytes, but %s of shape %s needs %" PRIu64,
                          path, name, begin, end, end - begin, DTYPES[found].name,
                          shape_str(shape_buf, sizeof shape_buf, t->ndim, t->shape), need_bytes);
    t->numel = (size_t)numel;
    t->bytes = (size_t)need_bytes;
    range->begin = begin;
    range->end = end;
    return FL_OK;
}

static int parse_metadata(fl_st_file *f, const cJSON *meta, fl_err *err) {
    if (cJSON_IsNull(meta)) return FL_OK;
    if (!cJSON_IsObject(meta))
        return fl_err_set(err, FL_EINPUT, "%s: __metadata__: expected an object of strings",
                          f->path);
    int n = cJSON_GetArraySize(meta);
    f->meta_keys = calloc((size_t)n + 1, sizeof *f->meta_keys);
    f->meta_values = calloc((size_t)n + 1, sizeof *f->meta_values);
    if (!f->meta_keys || !f->meta_values)
        return fl_err_set(err, FL_ENOMEM, "%s: out of memory reading __metadata__", f->path);
    const cJSON *item;
    cJSON_ArrayForEach(item, meta) {
        if (!cJSON_IsString(item))
            return fl_err_set(err, FL_EINPUT, "%s: __metadata__: '%.80s': expected a string",
                              f->path, item->string);
        f->meta_keys[f->n_meta] = strdup(item->string);
        f->meta_values[f->n_meta] = strdup(item->valuestring);
        f->n_meta++; /* counted before the check so that close frees a half-made pair */
        if (!f->meta_keys[f->n_meta - 1] || !f->meta_values[f->n_meta - 1])
            return fl_err_set(err, FL_ENOMEM, "%s: out of memory reading __metadata__", f->path);
    }
    return FL_OK;
}

/* Refuses duplicate names and overlapping non-empty ranges. Sorts f->tensors by name on the way,
 * then restores file order from ranges[].tensor. */
static int check_disjoint(fl_st_file *f, st_range *ranges, fl_err *err) {
    int n = f->n_tensors;
    qsort(ranges, (size_t)n, sizeof *ranges, range_cmp);
    uint64_t covered_end = 0;
    int covered_by = -1;
    for (int i = 0; i < n; i++) {
        if (ranges[i].begin == ranges[i].end) continue; /* empty tensors own no bytes */
        if (covered_by >= 0 && ranges[i].begin < covered_end)
            return fl_err_set(err, FL_EINPUT, "%s: tensors '%s' and '%s' overlap in the data",
                              f->path, f->tensors[covered_by].name,
                              f->tensors[ranges[i].tensor].name);
        covered_end = ranges[i].end;
        covered_by = ranges[i].tensor;
    }
    fl_st_tensor *sorted = malloc((size_t)(n ? n : 1) * sizeof *sorted);
    if (!sorted) return fl_err_set(err, FL_ENOMEM, "%s: out of memory", f->path);
    memcpy(sorted, f->tensors, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, name_cmp);
    for (int i = 1; i < n; i++)
        if (strcmp(sorted[i - 1].name, sorted[i].name) == 0) {
            fl_err_set(err, FL_EINPUT, "%s: tensor '%s' appears twice in the header", f->path,
                       sorted[i].name);
            free(sorted);
            return FL_EINPUT;
        }
    free(sorted);
    return FL_OK;
}

static int parse_header(fl_st_file *f, const unsigned char *bytes, const cJSON *root,
                        uint64_t header_bytes, fl_err *err) {
    if (!cJSON_IsObject(root))
        return fl_err_set(err, FL_EINPUT, "%s: header: expected a JSON object", f->path);
    const unsigned char *data = bytes + 8 + header_bytes;
    uint64_t data_size = f->size - 8 - header_bytes;
    int n = cJSON_GetArraySize(root);
    f->tensors = calloc((size_t)n + 1, sizeof *f->tensors);
    st_range *ranges = calloc((size_t)n + 1, sizeof *ranges);
    if (!f->tensors || !ranges) {
        free(ranges);
        return fl_err_set(err, FL_ENOMEM, "%s: out of memory for %d tensors", f->path, n);
    }
    int rc = FL_OK;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") == 0) {
            rc = f->meta_keys
                     ? fl_err_set(err, FL_EINPUT, "%s: __metadata__ appears twice", f->path)
                     : parse_metadata(f, item, err);
        } else {
            fl_st_tensor *t = &f->tensors[f->n_tensors];
            st_range *r = &ranges[f->n_tensors];
            rc = parse_tensor(item, t, r, data_size, f->path, err);
            if (rc == FL_OK) {
                t->data = data + r->begin;
                r->tensor = f->n_tensors++;
            }
        }
        if (rc != FL_OK) break;
    }
    if (rc == FL_OK) rc = check_disjoint(f, ranges, err);
    free(ranges);
    return rc;
}

static int map_file(fl_st_file *f, const char *path, fl_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT
                   ? fl_err_set(err, FL_EINPUT, "%s: file not found", path)
                   : fl_err_set(err, FL_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    int rc = FL_OK;
    if (fstat(fd, &st) != 0)
        rc = fl_err_set(err, FL_EIO, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = fl_err_set(err, FL_EINPUT, "%s: not a regular file", path);
    else
        f->size = (size_t)st.st_size;
    /* parse_bytes refuses a file shorter than the length field (an empty one cannot be mapped) */
    if (rc == FL_OK && f->size >= 8) {
        f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            rc = fl_err_set(err, FL_EIO, "%s: cannot mmap: %s", path, strerror(errno));
        }
    }
    close(fd);
    return rc;
}

/* Writers pad the header to 8 bytes with spaces (some with NULs); nothing else may follow. */
static int only_padding(const char *p, const char *end) {
    for (; p < end; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != '\0') return 0;
    return 1;
}

/* Validates the size bytes at b (a mapping or a caller's buffer) into f, whose path and size are
 * set. On error the caller closes f. */
static int parse_bytes(fl_st_file *f, const unsigned char *b, fl_err *err) {
    const char *path = f->path;
    if (f->size < 8)
        return fl_err_set(err, FL_EINPUT,
                          "%s: %zu bytes, too short for a safetensors file (8-byte header length)",
                          path, f->size);
    uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; i--)
        header_bytes = header_bytes << 8 | b[i];
    if (header_bytes > f->size - 8)
        return fl_err_set(err, FL_EINPUT,
                          "%s: header length %" PRIu64 " exceeds the file (%zu bytes after the "
                          "length)",
                          path, header_bytes, f->size - 8);
    if (header_bytes > ST_HEADER_MAX_BYTES)
        return fl_err_set(err, FL_EINPUT,
                          "%s: header length %" PRIu64 " exceeds the %" PRIu64 "-byte limit", path,
                          header_bytes, ST_HEADER_MAX_BYTES);
    char *json = malloc((size_t)header_bytes + 1);
    if (!json) return fl_err_set(err, FL_ENOMEM, "%s: out of memory for the header", path);
    memcpy(json, b + 8, (size_t)header_bytes);
    json[header_bytes] = '\0';
    const char *end = NULL;
    int rc;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)header_bytes, &end, 0);
    if (!root)
        rc = fl_err_set(err, FL_EINPUT,
                        "%s: header is not valid JSON (near byte %td of %" PRIu64 ")", path,
                        end ? end - json : (ptrdiff_t)0, header_bytes);
    else if (!only_padding(end, json + header_bytes))
        rc = fl_err_set(err, FL_EINPUT, "%s: header: unexpected bytes after the JSON object at %td",
                        path, end - json);
    else
        rc = parse_header(f, b, root, header_bytes, err);
    cJSON_Delete(root);
    free(json);
    return rc;
}

int fl_st_open(fl_st_file *f, const char *path, fl_err *err) {
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    int rc = map_file(f, path, err);
    if (rc == FL_OK) rc = parse_bytes(f, f->map, err);
    if (rc != FL_OK) fl_st_close(f);
    return rc;
}

int fl_st_parse_mem(fl_st_file *f, const void *data, size_t len, const char *name, fl_err *err) {
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", name);
    f->size = len;
    int rc = data || len == 0 ? parse_bytes(f, data, err)
                              : fl_err_set(err, FL_EINTERNAL, "%s: no data", name);
    if (rc != FL_OK) fl_st_close(f);
    return rc;
}

void fl_st_close(fl_st_file *f) {
    if (f->map) munmap(f->map, f->size);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->tensors);
    memset(f, 0, sizeof *f);
}

const fl_st_tensor *fl_st_find(const fl_st_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *fl_st_meta(const fl_st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

/* ---- conversion ------------------------------------------------------------------------------ */

/* IEEE half to single, exact for every input: subnormals are renormalised, inf and NaN keep their
 * sign and payload. */
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu, bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | mantissa << 13;
    } else if (exponent != 0) {
        bits = sign | (exponent + 112) << 23 | mantissa << 13;
    } else if (mantissa == 0) {
        bits = sign;
    } else { /* mantissa × 2^-24: shift the leading 1 up to bit 10 */
        uint32_t shifts = 0;
        while (!(mantissa & 0x400u))
            mantissa <<= 1, shifts++;
        bits = sign | (113 - shifts) << 23 | (mantissa & 0x3ffu) << 13;
    }
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

static float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* Data in the mapping is only byte-aligned (H is arbitrary), so every element goes through memcpy.
 */
int fl_st_to_f32(const fl_st_tensor *t, float *out, fl_err *err) {
    const unsigned char *src = t->data;
    size_t n = t->numel;
    switch (t->dtype) {
    case FL_DTYPE_F32:
        if (n) memcpy(out, src, n * sizeof(float));
        return FL_OK;
    case FL_DTYPE_F16:
    case FL_DTYPE_BF16: {
        int is_bf16 = t->dtype == FL_DTYPE_BF16;
#pragma omp parallel for schedule(static) if (n > ((size_t)1 << 20))
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = is_bf16 ? bf16_to_f32(h) : f16_to_f32(h);
        }
        return FL_OK;
    }
    case FL_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, src + 8 * i, 8);
            out[i] = (float)d;
        }
        return FL_OK;
    default:
        return fl_err_set(err, FL_EINPUT, "tensor '%s': dtype %s is not a floating-point type",
                          t->name, dtype_valid(t->dtype) ? DTYPES[t->dtype].name : "?");
    }
}

int fl_st_to_i32(const fl_st_tensor *t, int32_t *out, fl_err *err) {
    const unsigned char *src = t->data;
    if (t->dtype == FL_DTYPE_I32) {
        if (t->numel) memcpy(out, src, t->numel * sizeof(int32_t));
        return FL_OK;
    }
    if (t->dtype != FL_DTYPE_I64)
        return fl_err_set(err, FL_EINPUT, "tensor '%s': dtype %s, expected I32 or I64", t->name,
                          dtype_valid(t->dtype) ? DTYPES[t->dtype].name : "?");
    for (size_t i = 0; i < t->numel; i++) {
        int64_t v;
        memcpy(&v, src + 8 * i, 8);
        if (v < INT32_MIN || v > INT32_MAX)
            return fl_err_set(err, FL_EINPUT,
                              "tensor '%s': element %zu is %" PRId64 ", outside the int32 range",
                              t->name, i, v);
        out[i] = (int32_t)v;
    }
    return FL_OK;
}

int fl_st_read_into(const fl_st_file *f, const char *name, int ndim, const int64_t *shape,
                    float *out, fl_err *err) {
    const fl_st_tensor *t = fl_st_find(f, name);
    if (!t) return fl_err_set(err, FL_EINPUT, "%s: tensor '%s' not found", f->path, name);
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char want[128], got[128];
        return fl_err_set(err, FL_EINPUT, "%s: tensor '%s': shape %s in the file, expected %s",
                          f->path, name, shape_str(got, sizeof got, t->ndim, t->shape),
                          shape_str(want, sizeof want, ndim, shape));
    }
    int rc = fl_st_to_f32(t, out, err);
    return rc == FL_OK ? FL_OK : fl_err_prefix(err, f->path);
}

int fl_st_load_params(const fl_st_file *f, fl_params *p, int allow_extra, fl_err *err) {
    if (!p->data)
        return fl_err_set(err, FL_EINTERNAL, "%s: loading into an unallocated table", f->path);
    for (int i = 0; i < p->n_views; i++) {
        const fl_view *v = &p->views[i];
        int rc = fl_st_read_into(f, v->name, v->ndim, v->shape, p->data + v->offset, err);
        if (rc != FL_OK) return rc;
    }
    if (allow_extra) return FL_OK;
    for (int i = 0; i < f->n_tensors; i++)
        if (fl_params_find(p, f->tensors[i].name) < 0)
            return fl_err_set(err, FL_EINPUT, "%s: tensor '%s' is not part of the model", f->path,
                              f->tensors[i].name);
    return FL_OK;
}

/* ---- writer ---------------------------------------------------------------------------------- */

typedef struct st_entry {
    char name[FL_VIEW_NAME_MAX];
    fl_dtype dtype;
    int ndim;
    int64_t shape[FL_MAX_DIMS];
    const void *data; /* borrowed until fl_st_write returns */
    uint64_t bytes;
} st_entry;

struct fl_st_writer {
    st_entry *entries;
    int n_entries, cap_entries;
    char **meta_keys, **meta_values;
    int n_meta, cap_meta;
};

fl_st_writer *fl_st_writer_new(fl_err *err) {
    fl_st_writer *w = calloc(1, sizeof *w);
    if (!w) fl_err_set(err, FL_ENOMEM, "out of memory creating a safetensors writer");
    return w;
}

void fl_st_writer_free(fl_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->meta_keys);
    free(w->meta_values);
    free(w->entries);
    free(w);
}

int fl_st_writer_add(fl_st_writer *w, const char *name, fl_dtype dtype, int ndim,
                     const int64_t *shape, const void *data, fl_err *err) {
    if (strlen(name) >= FL_VIEW_NAME_MAX || strcmp(name, "__metadata__") == 0 || !name[0])
        return fl_err_set(err, FL_EINPUT, "tensor name '%.60s' is empty, reserved or too long",
                          name);
    if (!dtype_valid(dtype) || ndim < 0 || ndim > FL_MAX_DIMS)
        return fl_err_set(err, FL_EINTERNAL, "tensor '%s': dtype %d with %d dims", name, (int)dtype,
                          ndim);
    for (int i = 0; i < w->n_entries; i++)
        if (strcmp(w->entries[i].name, name) == 0)
            return fl_err_set(err, FL_EINPUT, "tensor '%s' added twice", name);
    uint64_t bytes = DTYPES[dtype].bytes;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || __builtin_mul_overflow(bytes, (uint64_t)shape[i], &bytes))
            return fl_err_set(err, FL_EINTERNAL, "tensor '%s': bad shape", name);
    if (bytes > 0 && !data) return fl_err_set(err, FL_EINTERNAL, "tensor '%s': no data", name);
    if (w->n_entries == w->cap_entries) {
        int cap = w->cap_entries ? 2 * w->cap_entries : 64;
        st_entry *grown = realloc(w->entries, (size_t)cap * sizeof *grown);
        if (!grown) return fl_err_set(err, FL_ENOMEM, "out of memory adding tensor '%s'", name);
        w->entries = grown;
        w->cap_entries = cap;
    }
    st_entry *e = &w->entries[w->n_entries++];
    memset(e, 0, sizeof *e);
    strcpy(e->name, name);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    e->data = data;
    e->bytes = bytes;
    return FL_OK;
}

int fl_st_writer_meta(fl_st_writer *w, const char *key, const char *value, fl_err *err) {
    char *value_copy = strdup(value);
    if (!value_copy) return fl_err_set(err, FL_ENOMEM, "out of memory adding metadata");
    for (int i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta_keys[i], key) == 0) {
            free(w->meta_values[i]);
            w->meta_values[i] = value_copy;
            return FL_OK;
        }
    if (w->n_meta == w->cap_meta) {
        int cap = w->cap_meta ? 2 * w->cap_meta : 8;
        char **keys = realloc(w->meta_keys, (size_t)cap * sizeof *keys);
        if (keys) w->meta_keys = keys;
        char **values = keys ? realloc(w->meta_values, (size_t)cap * sizeof *values) : NULL;
        if (values) w->meta_values = values;
        if (!keys || !values) {
            free(value_copy);
            return fl_err_set(err, FL_ENOMEM, "out of memory adding metadata");
        }
        w->cap_meta = cap;
    }
    char *key_copy = strdup(key);
    if (!key_copy) {
        free(value_copy);
        return fl_err_set(err, FL_ENOMEM, "out of memory adding metadata");
    }
    w->meta_keys[w->n_meta] = key_copy;
    w->meta_values[w->n_meta++] = value_copy;
    return FL_OK;
}

int fl_st_writer_add_params(fl_st_writer *w, const fl_params *p, const char *prefix, fl_err *err) {
    if (!p->data) return fl_err_set(err, FL_EINTERNAL, "writing an unallocated parameter table");
    for (int i = 0; i < p->n_views; i++) {
        const fl_view *v = &p->views[i];
        char name[FL_VIEW_NAME_MAX];
        int n = snprintf(name, sizeof name, "%s%s", prefix, v->name);
        if (n < 0 || (size_t)n >= sizeof name)
            return fl_err_set(err, FL_EINPUT, "tensor name '%s%.60s...' longer than %d bytes",
                              prefix, v->name, FL_VIEW_NAME_MAX - 1);
        int rc =
            fl_st_writer_add(w, name, FL_DTYPE_F32, v->ndim, v->shape, p->data + v->offset, err);
        if (rc != FL_OK) return rc;
    }
    return FL_OK;
}

/* A growable string for the header. */
typedef struct st_buf {
    char *s;
    size_t len, cap;
    int failed; /* an allocation failed; the content is incomplete */
} st_buf;

static void buf_put(st_buf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *grown = realloc(b->s, cap);
        if (!grown) {
            b->failed = 1;
            return;
        }
        b->s = grown;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void buf_str(st_buf *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_json_string(st_buf *b, const char *s) {
    buf_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        if (*c == '"' || *c == '\\') {
            esc[0] = '\\', esc[1] = (char)*c;
            buf_put(b, esc, 2);
        } else if (*c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *c);
            buf_put(b, esc, 6);
        } else {
            buf_put(b, (const char *)c, 1);
        }
    }
    buf_put(b, "\"", 1);
}

/* The header JSON, padded with spaces to a multiple of 8 bytes. */
static int build_header(const fl_st_writer *w, st_buf *b, fl_err *err) {
    char num[64];
    buf_str(b, "{");
    if (w->n_meta > 0) {
        buf_str(b, "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++) {
            if (i) buf_str(b, ",");
            buf_json_string(b, w->meta_keys[i]);
            buf_str(b, ":");
            buf_json_string(b, w->meta_values[i]);
        }
        buf_str(b, "}");
    }
    uint64_t offset = 0;
    for (int i = 0; i < w->n_entries; i++) {
        const st_entry *e = &w->entries[i];
        if (i || w->n_meta > 0) buf_str(b, ",");
        buf_json_string(b, e->name);
        buf_str(b, ":{\"dtype\":\"");
        buf_str(b, DTYPES[e->dtype].name);
        buf_str(b, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", e->shape[d]);
            buf_str(b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", offset,
                 offset + e->bytes);
        buf_str(b, num);
        offset += e->bytes;
    }
    buf_str(b, "}");
    while (!b->failed && b->len % 8 != 0)
        buf_str(b, " ");
    if (b->failed) return fl_err_set(err, FL_ENOMEM, "out of memory building a safetensors header");
    if (b->len > ST_HEADER_MAX_BYTES)
        return fl_err_set(err, FL_EINPUT, "safetensors header of %zu bytes exceeds the limit",
                          b->len);
    return FL_OK;
}

int fl_st_write(fl_st_writer *w, const char *path, fl_err *err) {
    st_buf header = {0};
    int rc = build_header(w, &header, err);
    fl_atomic_file out = {.fd = -1};
    if (rc == FL_OK) rc = fl_atomic_open(&out, path, err);
    if (rc == FL_OK) {
        unsigned char len_le[8];
        for (int i = 0; i < 8; i++)
            len_le[i] = (unsigned char)((uint64_t)header.len >> (8 * i));
        rc = fl_atomic_write(&out, len_le, sizeof len_le, err);
    }
    if (rc == FL_OK) rc = fl_atomic_write(&out, header.s, header.len, err);
    for (int i = 0; rc == FL_OK && i < w->n_entries; i++)
        rc = fl_atomic_write(&out, w->entries[i].data, (size_t)w->entries[i].bytes, err);
    if (rc == FL_OK)
        rc = fl_atomic_commit(&out, err);
    else
        fl_atomic_abort(&out);
    free(header.s);
    return rc;
}

int fl_st_write_mem(fl_st_writer *w, uint8_t **out, size_t *len, fl_err *err) {
    *out = NULL;
    *len = 0;
    st_buf header = {0};
    int rc = build_header(w, &header, err);
    size_t total = 8 + header.len;
    for (int i = 0; rc == FL_OK && i < w->n_entries; i++)
        if (__builtin_add_overflow(total, (size_t)w->entries[i].bytes, &total))
            rc = fl_err_set(err, FL_EINPUT, "safetensors data too large for memory");
    uint8_t *bytes = rc == FL_OK ? malloc(total) : NULL;
    if (rc == FL_OK && !bytes)
        rc = fl_err_set(err, FL_ENOMEM, "out of memory for %zu bytes of safetensors", total);
    if (rc == FL_OK) {
        for (int i = 0; i < 8; i++)
            bytes[i] = (uint8_t)((uint64_t)header.len >> (8 * i));
        memcpy(bytes + 8, header.s, header.len);
        size_t at = 8 + header.len;
        for (int i = 0; i < w->n_entries; i++) {
            if (w->entries[i].bytes) memcpy(bytes + at, w->entries[i].data, w->entries[i].bytes);
            at += (size_t)w->entries[i].bytes;
        }
        *out = bytes;
        *len = total;
    }
    free(header.s);
    return rc;
}
