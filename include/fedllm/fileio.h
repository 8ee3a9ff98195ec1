/* fileio.h — whole-file reads and atomic writes.
 *
 * Every file fedllm writes goes through a temp file in the same folder, fsync, and rename, so a
 * crash or an error never leaves a half-written file under the final name. */
#ifndef FEDLLM_FILEIO_H
#define FEDLLM_FILEIO_H

#include <stddef.h>
#include <stdio.h>

#include "fedllm/err.h"

/* Reads the whole file into a NUL-terminated malloc'd buffer (*len excludes the NUL). The caller
 * frees *data. Refuses files over max_bytes (FL_EINPUT); a missing file is FL_EINPUT too, other
 * system refusals FL_EIO. On error *data is NULL. */
int fl_read_file(const char *path, char **data, size_t *len, size_t max_bytes, fl_err *err);
/* Writes len bytes to path atomically (path.tmp.PID, fsync, rename). */
int fl_write_file_atomic(const char *path, const void *data, size_t len, fl_err *err);
/* Streaming form of the same, for files too big to build in memory (checkpoints): open creates
 * path.tmp.PID, write appends, commit fsyncs, renames over path and fsyncs the folder. On any error
 * the temp file is removed and the handle is closed; abort does that explicitly (safe after a
 * failed or committed handle). */
typedef struct fl_atomic_file {
    int fd;              /* -1 when closed */
    char path[1024];     /* final name */
    char tmp_path[1100]; /* path.tmp.PID */
} fl_atomic_file;
int fl_atomic_open(fl_atomic_file *f, const char *path, fl_err *err);
int fl_atomic_write(fl_atomic_file *f, const void *data, size_t len, fl_err *err);
int fl_atomic_commit(fl_atomic_file *f, fl_err *err);
void fl_atomic_abort(fl_atomic_file *f);
/* Opens path for writing (appending, or from an empty file) without following a symbolic link in
 * its place: a link there is FL_EINPUT "PATH: is a symbolic link; fedllm does not write through
 * links here (remove it)", and so is anything but a regular file of one name (a FIFO, a device, a
 * hard link), before a byte is changed. Creates the file (mode 0644) when missing. NULL on
 * error. */
FILE *fl_open_nofollow(const char *path, int append, fl_err *err);
/* FL_EINPUT (worded as above) when path is a symbolic link; FL_OK otherwise, missing included. */
int fl_refuse_link(const char *path, fl_err *err);
/* mkdir -p. */
int fl_mkdirs(const char *path, fl_err *err);
/* rm -rf of a directory fedllm made (used to drop a half-built output directory). */
int fl_remove_tree(const char *path);
/* Joins dir and name into out (size out_size). FL_EINPUT if it does not fit. */
int fl_path_join(char *out, size_t out_size, const char *dir, const char *name, fl_err *err);
/* Tidies path in place: drops "." components, repeated and trailing slashes, and folds "DIR/.."
 * when DIR is a real directory (not a symbolic link, through which ".." would lead elsewhere), so
 * "examples/../models/base" becomes "models/base" and names the same folder. Returns the length. */
int fl_path_normalize(char *path);

#endif
