/* fileio.h — whole-file reads and atomic writes.
 *
 * Every file fedllm writes goes through a temp file in the same folder, fsync, and rename, so a
 * crash or an error never leaves a half-written file under the final name. */
#ifndef FEDLLM_FILEIO_H
#define FEDLLM_FILEIO_H

#include <stddef.h>

#include "fedllm/err.h"

/* Reads the whole file into a NUL-terminated malloc'd buffer (*len excludes the NUL). The caller
 * frees *data. Refuses files over max_bytes. */
int fl_read_file(const char *path, char **data, size_t *len, size_t max_bytes, fl_err *err);
/* Writes len bytes to path atomically (path.tmp.PID, fsync, rename). */
int fl_write_file_atomic(const char *path, const void *data, size_t len, fl_err *err);
/* mkdir -p. */
int fl_mkdirs(const char *path, fl_err *err);
/* rm -rf of a directory fedllm made (used to drop a half-built output directory). */
int fl_remove_tree(const char *path);
/* Joins dir and name into out (size out_size). FL_EINPUT if it does not fit. */
int fl_path_join(char *out, size_t out_size, const char *dir, const char *name, fl_err *err);

#endif
