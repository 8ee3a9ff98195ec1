/* safetensors.h — read (mmap) and write the safetensors format.
 *
 * Format: 8-byte little-endian header length H, H bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__":
 * {"k": "v"}}, then the data. Offsets are relative to the end of the header. A reader trusts
 * nothing: H, every offset pair and every shape must fit the file and agree with each other, and
 * tensors may not overlap; otherwise the file is refused with FL_EINPUT naming the file and tensor.
 */
#ifndef FEDLLM_SAFETENSORS_H
#define FEDLLM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "fedllm/err.h"
#include "fedllm/params.h"

typedef enum {
    FL_DTYPE_F32 = 0,
    FL_DTYPE_F16,
    FL_DTYPE_BF16,
    FL_DTYPE_I32,
    FL_DTYPE_I64,
    FL_DTYPE_F64,
    FL_DTYPE_U8,
} fl_dtype;

typedef struct fl_st_tensor {
    char name[FL_VIEW_NAME_MAX];
    fl_dtype dtype;
    int ndim;
    int64_t shape[FL_MAX_DIMS];
    size_t numel;
    const void *data; /* into the mapping */
    size_t bytes;
} fl_st_tensor;

typedef struct fl_st_file {
    char path[512];
    void *map; /* the whole file, mmapped read-only */
    size_t size;
    fl_st_tensor *tensors;
    int n_tensors;
    char **meta_keys, **meta_values; /* __metadata__ (string values only) */
    int n_meta;
} fl_st_file;

/* Maps and validates the file. On error *f is zeroed and nothing stays mapped. */
int fl_st_open(fl_st_file *f, const char *path, fl_err *err);
/* Parses len bytes already in memory with exactly fl_st_open's validation; name stands for the path
 * in messages. f borrows data (f->map stays NULL, tensor pointers point into data), so data must
 * outlive f; fl_st_close then frees only what the parse allocated. On error *f is zeroed. */
int fl_st_parse_mem(fl_st_file *f, const void *data, size_t len, const char *name, fl_err *err);
void fl_st_close(fl_st_file *f);
/* The tensor with this name, or NULL. */
const fl_st_tensor *fl_st_find(const fl_st_file *f, const char *name);
/* The metadata value for key, or NULL. */
const char *fl_st_meta(const fl_st_file *f, const char *key);

/* Copies tensor t into out (numel floats), converting F32/F16/BF16/F64 to fp32. The caller checks
 * the shape (see fl_st_read_into). FL_EINPUT for an integer dtype. */
int fl_st_to_f32(const fl_st_tensor *t, float *out, fl_err *err);
/* Copies an I32 or I64 tensor into out (numel int32, range-checked). */
int fl_st_to_i32(const fl_st_tensor *t, int32_t *out, fl_err *err);
/* Finds `name`, checks that its shape equals shape[0..ndim), converts to fp32 into out.
 * Errors name the file, the tensor, and the expected and found shapes. */
int fl_st_read_into(const fl_st_file *f, const char *name, int ndim, const int64_t *shape,
                    float *out, fl_err *err);
/* Loads every view of p from the file (names must match); the file may hold more tensors only if
 * allow_extra. */
int fl_st_load_params(const fl_st_file *f, fl_params *p, int allow_extra, fl_err *err);

/* Writer: collects tensors, then writes one file atomically (temp file, fsync, rename).
 * Data pointers must stay valid until fl_st_write returns. Tensors are stored as F32 unless added
 * with another dtype (I32 data as int32_t). */
typedef struct fl_st_writer fl_st_writer;
fl_st_writer *fl_st_writer_new(fl_err *err);
int fl_st_writer_add(fl_st_writer *w, const char *name, fl_dtype dtype, int ndim,
                     const int64_t *shape, const void *data, fl_err *err);
int fl_st_writer_meta(fl_st_writer *w, const char *key, const char *value, fl_err *err);
/* Adds every view of p as F32, with prefix prepended to each name (prefix may be ""). */
int fl_st_writer_add_params(fl_st_writer *w, const fl_params *p, const char *prefix, fl_err *err);
int fl_st_write(fl_st_writer *w, const char *path, fl_err *err);
/* The bytes fl_st_write would write, in one malloc'd buffer (*out, *len) that the caller frees. On
 * error *out is NULL and *len 0. */
int fl_st_write_mem(fl_st_writer *w, uint8_t **out, size_t *len, fl_err *err);
void fl_st_writer_free(fl_st_writer *w);

#endif
