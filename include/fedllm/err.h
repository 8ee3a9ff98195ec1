/* err.h — how every fedllm function reports failure.
 *
 * A function that can fail takes an `fl_err *` as its last argument and returns an int status:
 * FL_OK (0) on success, otherwise one of the codes below, with a one-line message in err->msg that
 * names the file, the field and what was expected ("model/config.json: n_head: expected a positive
 * integer"). The CLI prints that line and exits with the code, so FL_EINPUT is exit status 2.
 * `err` may be NULL when the caller does not want the message. Nothing in fedllm aborts on outside
 * input. */
#ifndef FEDLLM_ERR_H
#define FEDLLM_ERR_H

#include <stddef.h>

enum {
    FL_OK = 0,
    FL_EINTERNAL = 1, /* a bug or an impossible state */
    FL_EINPUT = 2,    /* bad input from the user or a file: exit status 2 */
    FL_EIO = 3,       /* the system refused: open, write, mmap, rename */
    FL_ENOMEM = 4,    /* an allocation failed */
    FL_ETIMEOUT = 5,  /* a deadline passed (a receive, a send, a round) */
    FL_EPEER = 6,     /* a peer's message or behaviour was refused (bad header, hash, key) */
};

typedef struct fl_err {
    int code;
    char msg[512]; /* one line, no trailing newline; truncated if longer */
} fl_err;

/* Sets err (when not NULL) to code and the printf-style message, and returns code, so that
 * `return fl_err_set(err, FL_EINPUT, "%s: ...", path);` reads as one statement. */
int fl_err_set(fl_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to err's message (for adding a file name one level up). Returns err->code. */
int fl_err_prefix(fl_err *err, const char *prefix);

/* Allocation helpers that report FL_ENOMEM through err. Memory from fl_alloc is zeroed and
 * 64-byte aligned; release it with free(). They return NULL on failure. */
void *fl_alloc(size_t bytes, fl_err *err);

#endif
