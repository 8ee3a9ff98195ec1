/* cli.c — option parsing and atomic output directories for the subcommands. */
#include "cli/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fedllm/fileio.h"

int cli_parse(int argc, char **argv, int first, cli_opt *opts, int n_opts, int *help, fl_err *err) {
    *help = 0;
    for (int i = first; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            *help = 1;
            return FL_OK;
        }
        if (strncmp(arg, "--", 2) != 0)
            return fl_err_set(err, FL_EINPUT, "unexpected argument '%s'", arg);
        cli_opt *o = NULL;
        for (int k = 0; k < n_opts; k++)
            if (strcmp(opts[k].name, arg + 2) == 0) o = &opts[k];
        if (!o) return fl_err_set(err, FL_EINPUT, "unknown option '%s' (see --help)", arg);
        if (!o->takes_value) {
            o->value = "1";
            continue;
        }
        if (i + 1 >= argc) return fl_err_set(err, FL_EINPUT, "option '%s' needs a value", arg);
        o->value = argv[++i];
    }
    return FL_OK;
}

const char *cli_get(const cli_opt *opts, int n_opts, const char *name) {
    for (int k = 0; k < n_opts; k++)
        if (strcmp(opts[k].name, name) == 0) return opts[k].value;
    return NULL;
}

int cli_int(const char *name, const char *text, long lo, long hi, long *out, fl_err *err) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < lo || v > hi)
        return fl_err_set(err, FL_EINPUT, "--%s: expected an integer in [%ld, %ld], got '%s'", name,
                          lo, hi, text);
    *out = v;
    return FL_OK;
}

int cli_float(const char *name, const char *text, double lo, double hi, double *out, fl_err *err) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= lo && v <= hi))
        return fl_err_set(err, FL_EINPUT, "--%s: expected a number in [%g, %g], got '%s'", name, lo,
                          hi, text);
    *out = v;
    return FL_OK;
}

int cli_out_begin(const char *dir, char *tmp, unsigned long tmp_size, fl_err *err) {
    struct stat st;
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode))
        return fl_err_set(err, FL_EINPUT, "%s: exists and is not a directory", dir);
    if ((size_t)snprintf(tmp, tmp_size, "%s.tmp.%ld", dir, (long)getpid()) >= tmp_size)
        return fl_err_set(err, FL_EINPUT, "%s: path too long", dir);
    fl_remove_tree(tmp);
    return fl_mkdirs(tmp, err);
}

int cli_out_commit(const char *tmp, const char *dir, fl_err *err) {
    char old[4096];
    snprintf(old, sizeof old, "%s.old.%ld", dir, (long)getpid());
    struct stat st;
    int had_old = stat(dir, &st) == 0;
    if (had_old && rename(dir, old) != 0)
        return fl_err_set(err, FL_EIO, "%s: cannot replace: %s", dir, strerror(errno));
    if (rename(tmp, dir) != 0) {
        int e = errno;
        if (had_old) rename(old, dir);
        return fl_err_set(err, FL_EIO, "%s: cannot create: %s", dir, strerror(e));
    }
    if (had_old) fl_remove_tree(old);
    return FL_OK;
}

void cli_out_abort(const char *tmp) { fl_remove_tree(tmp); }

int cli_fail(const char *cmd, const fl_err *err) {
    fprintf(stderr, "fedllm %s: %s\n", cmd, err->msg);
    return err->code ? err->code : 1;
}
