/* err.c — fl_err messages and the allocation helper that reports through them. */
#include "fedllm/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fl_err_set(fl_err *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int fl_err_prefix(fl_err *err, const char *prefix) {
    if (!err) return FL_EINTERNAL;
    char tmp[sizeof err->msg];
    size_t n = strlen(prefix);
    if (n > sizeof tmp - 3) n = sizeof tmp - 3;
    memcpy(tmp, prefix, n);
    memcpy(tmp + n, ": ", 2);
    size_t rest = sizeof tmp - n - 3, len = strlen(err->msg);
    if (len > rest) len = rest;
    memcpy(tmp + n + 2, err->msg, len);
    tmp[n + 2 + len] = 0;
    memcpy(err->msg, tmp, sizeof tmp);
    return err->code;
}

void *fl_alloc(size_t bytes, fl_err *err) {
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded == 0) rounded = 64;
    void *p = aligned_alloc(64, rounded);
    if (!p) {
        fl_err_set(err, FL_ENOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    memset(p, 0, rounded);
    return p;
}
