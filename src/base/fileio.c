/* fileio.c — whole-file reads, atomic writes, and the few folder helpers fedllm needs.
 *
 * A write never touches the final name until the bytes are on disk: the data goes to
 * "path.tmp.PID" in the same folder (so the rename stays on one file system), is fsynced, renamed
 * over the final name, and then the folder itself is fsynced so that the rename survives a crash.
 * A failed write removes its temp file. The temp file is always a new one (O_EXCL | O_NOFOLLOW):
 * a link planted under its predictable name is removed, never written through, and the rename
 * replaces a link at the final name instead of following it. Files that are appended to (a
 * party's log) are opened with fl_open_nofollow. Reads are bounded by the caller's max_bytes so
 * that a hostile or mistaken path (a 40 GB file, /dev/zero) ends in an error, not an exhausted
 * machine. */
#define _GNU_SOURCE
#include "fedllm/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Growth step when the size is not known up front (pipes, /proc files). */
#define READ_CHUNK_BYTES ((size_t)1 << 16)

static int read_error(const char *path, int errnum, fl_err *err) {
    if (errnum == ENOENT) return fl_err_set(err, FL_EINPUT, "%s: file not found", path);
    return fl_err_set(err, FL_EIO, "%s: cannot read: %s", path, strerror(errnum));
}

int fl_read_file(const char *path, char **data, size_t *len, size_t max_bytes, fl_err *err) {
    *data = NULL;
    if (len) *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return read_error(path, errno, err);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int errnum = errno;
        close(fd);
        return read_error(path, errnum, err);
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return fl_err_set(err, FL_EINPUT, "%s: is a folder, expected a file", path);
    }
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > max_bytes) {
        close(fd);
        return fl_err_set(err, FL_EINPUT, "%s: %lld bytes, more than the %zu allowed", path,
                          (long long)st.st_size, max_bytes);
    }
    /* Room for the NUL and for one more byte, so that the read that sees EOF needs no growth. */
    size_t cap = S_ISREG(st.st_mode) ? (size_t)st.st_size + 2 : READ_CHUNK_BYTES;
    size_t used = 0;
    char *buf = malloc(cap);
    if (!buf) {
        close(fd);
        return fl_err_set(err, FL_ENOMEM, "%s: out of memory reading %zu bytes", path, cap);
    }
    for (;;) {
        if (used + 1 == cap) { /* full: grow, unless the file has passed the limit */
            if (used > max_bytes) break;
            size_t grown_cap = cap + (cap < READ_CHUNK_BYTES ? READ_CHUNK_BYTES : cap);
            char *grown = realloc(buf, grown_cap);
            if (!grown) {
                free(buf);
                close(fd);
                return fl_err_set(err, FL_ENOMEM, "%s: out of memory reading", path);
            }
            buf = grown;
            cap = grown_cap;
        }
        ssize_t got = read(fd, buf + used, cap - 1 - used);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            int errnum = errno;
            free(buf);
            close(fd);
            return read_error(path, errnum, err);
        }
        if (got == 0) break;
        used += (size_t)got;
    }
    close(fd);
    if (used > max_bytes) {
        free(buf);
        return fl_err_set(err, FL_EINPUT, "%s: more than the %zu bytes allowed", path, max_bytes);
    }
    buf[used] = '\0';
    *data = buf;
    if (len) *len = used;
    return FL_OK;
}

/* fsync of the folder holding path, so that a rename into it is durable. File systems that cannot
 * sync a folder (EINVAL) are accepted as they are. */
static int fsync_parent(const char *path, fl_err *err) {
    char dir[1024];
    const char *slash = strrchr(path, '/');
    if (!slash) {
        strcpy(dir, ".");
    } else {
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        if (n >= sizeof dir) return fl_err_set(err, FL_EINPUT, "%s: path too long", path);
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fl_err_set(err, FL_EIO, "%s: cannot open folder: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int errnum = errno;
    close(fd);
    if (rc != 0 && errnum != EINVAL)
        return fl_err_set(err, FL_EIO, "%s: cannot sync folder: %s", dir, strerror(errnum));
    return FL_OK;
}

int fl_atomic_open(fl_atomic_file *f, const char *path, fl_err *err) {
    f->fd = -1;
    f->path[0] = f->tmp_path[0] = '\0';
    if (strlen(path) >= sizeof f->path)
        return fl_err_set(err, FL_EINPUT, "%.200s...: path too long (at most %zu bytes)", path,
                          sizeof f->path - 1);
    strcpy(f->path, path);
    snprintf(f->tmp_path, sizeof f->tmp_path, "%s.tmp.%ld", path, (long)getpid());
    /* a new file of our own: whatever already has the name (a leftover of a crashed process with
     * this pid, or a link planted to make us write elsewhere) is removed, never written through */
    int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    f->fd = open(f->tmp_path, flags, 0644);
    if (f->fd < 0 && errno == EEXIST && unlink(f->tmp_path) == 0)
        f->fd = open(f->tmp_path, flags, 0644);
    if (f->fd < 0) {
        int errnum = errno;
        f->tmp_path[0] = '\0';
        return fl_err_set(err, FL_EIO, "%s.tmp.%ld: cannot create: %s", path, (long)getpid(),
                          strerror(errnum));
    }
    return FL_OK;
}

int fl_atomic_write(fl_atomic_file *f, const void *data, size_t len, fl_err *err) {
    if (f->fd < 0) return fl_err_set(err, FL_EINTERNAL, "%s: write after close", f->path);
    const char *p = data;
    while (len > 0) {
        ssize_t put = write(f->fd, p, len);
        if (put < 0 && errno == EINTR) continue;
        if (put <= 0) {
            int errnum = put < 0 ? errno : EIO;
            fl_atomic_abort(f);
            return fl_err_set(err, FL_EIO, "%s: cannot write: %s", f->path, strerror(errnum));
        }
        p += put;
        len -= (size_t)put;
    }
    return FL_OK;
}

int fl_atomic_commit(fl_atomic_file *f, fl_err *err) {
    if (f->fd < 0) return fl_err_set(err, FL_EINTERNAL, "%s: commit after close", f->path);
    if (fsync(f->fd) != 0) {
        int errnum = errno;
        fl_atomic_abort(f);
        return fl_err_set(err, FL_EIO, "%s: cannot sync: %s", f->path, strerror(errnum));
    }
    int rc = close(f->fd);
    f->fd = -1;
    if (rc != 0 || rename(f->tmp_path, f->path) != 0) {
        int errnum = errno;
        unlink(f->tmp_path);
        return fl_err_set(err, FL_EIO, "%s: cannot replace: %s", f->path, strerror(errnum));
    }
    f->tmp_path[0] = '\0';
    return fsync_parent(f->path, err);
}

void fl_atomic_abort(fl_atomic_file *f) {
    if (f->fd >= 0) close(f->fd);
    f->fd = -1;
    if (f->tmp_path[0]) unlink(f->tmp_path);
    f->tmp_path[0] = '\0';
}

int fl_write_file_atomic(const char *path, const void *data, size_t len, fl_err *err) {
    fl_atomic_file f;
    int rc = fl_atomic_open(&f, path, err);
    if (rc == FL_OK) rc = fl_atomic_write(&f, data, len, err);
    if (rc == FL_OK) rc = fl_atomic_commit(&f, err);
    return rc;
}

FILE *fl_open_nofollow(const char *path, int append, fl_err *err) {
    /* O_NONBLOCK so that a FIFO in the file's place cannot make the open wait for a reader */
    int fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
    if (fd < 0) {
        int errnum = errno;
        struct stat st;
        int found = lstat(path, &st) == 0;
        if (errnum == ELOOP || (found && S_ISLNK(st.st_mode)))
            fl_err_set(err, FL_EINPUT,
                       "%s: is a symbolic link; fedllm does not write through links here "
                       "(remove it)",
                       path);
        else if (found && !S_ISREG(st.st_mode))
            fl_err_set(err, FL_EINPUT, "%s: cannot open for writing: not a regular file", path);
        else
            fl_err_set(err, FL_EIO, "%s: cannot open for writing: %s", path, strerror(errnum));
        return NULL;
    }
    struct stat st;
    int code = FL_EINPUT;
    const char *problem = NULL;
    if (fstat(fd, &st) != 0)
        code = FL_EIO, problem = strerror(errno);
    else if (!S_ISREG(st.st_mode))
        problem = "not a regular file";
    else if (st.st_nlink > 1)
        problem = "a hard link with another name (remove it)";
    else if (fcntl(fd, F_SETFL, append ? O_APPEND : 0) != 0 || (!append && ftruncate(fd, 0) != 0))
        code = FL_EIO, problem = strerror(errno);
    FILE *f = problem ? NULL : fdopen(fd, append ? "a" : "w");
    if (!f) {
        if (!problem) code = FL_EIO, problem = strerror(errno);
        fl_err_set(err, code, "%s: cannot open for writing: %s", path, problem);
        close(fd);
    }
    return f;
}

int fl_refuse_link(const char *path, fl_err *err) {
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
        return fl_err_set(err, FL_EINPUT,
                          "%s: is a symbolic link; fedllm does not write through links here "
                          "(remove it)",
                          path);
    return FL_OK;
}

static int mkdir_one(const char *path, fl_err *err) {
    if (mkdir(path, 0755) == 0) return FL_OK;
    int errnum = errno;
    struct stat st;
    if (errnum == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return FL_OK;
    if (errnum == EEXIST) return fl_err_set(err, FL_EINPUT, "%s: exists and is not a folder", path);
    return fl_err_set(err, FL_EIO, "%s: cannot create folder: %s", path, strerror(errnum));
}

int fl_mkdirs(const char *path, fl_err *err) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0) return fl_err_set(err, FL_EINPUT, "empty folder name");
    if (n >= sizeof buf) return fl_err_set(err, FL_EINPUT, "%.200s...: path too long", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i < n; i++) {
        if (buf[i] != '/' || buf[i - 1] == '/') continue;
        buf[i] = '\0';
        int rc = mkdir_one(buf, err);
        buf[i] = '/';
        if (rc != FL_OK) return rc;
    }
    return mkdir_one(buf, err);
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)st, (void)type, (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

int fl_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? FL_OK : FL_EIO;
    return nftw(path, remove_entry, 32, FTW_DEPTH | FTW_PHYS) == 0 ? FL_OK : FL_EIO;
}

int fl_path_join(char *out, size_t out_size, const char *dir, const char *name, fl_err *err) {
    size_t dir_len = strlen(dir);
    int need_slash = dir_len > 0 && dir[dir_len - 1] != '/';
    int n = snprintf(out, out_size, "%s%s%s", dir, need_slash ? "/" : "", name);
    if (n < 0 || (size_t)n >= out_size) {
        if (out_size) out[0] = '\0';
        return fl_err_set(err, FL_EINPUT, "%.200s/%s: path too long (at most %zu bytes)", dir, name,
                          out_size ? out_size - 1 : 0);
    }
    return FL_OK;
}
