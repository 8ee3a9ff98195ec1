/* cli.c — option parsing and atomic output directories for the subcommands. */
#include "cli/cli.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
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

/* Whether an existing directory holds only what fedllm writes (an empty one counts). */
static int looks_like_fedllm_output(const char *dir) {
    static const char *const markers[] = {"metrics.jsonl", "adapter_config.json",
                                          "model.safetensors"};
    DIR *d = opendir(dir);
    if (!d) return 0;
    int entries = 0, marked = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        entries++;
        for (size_t i = 0; i < sizeof markers / sizeof *markers; i++)
            marked |= strcmp(e->d_name, markers[i]) == 0;
    }
    closedir(d);
    return entries == 0 || marked;
}

/* The absolute form of path, which need not exist yet (its parent must). */
static int absolute_path(const char *path, char *out, size_t size) {
    if (realpath(path, out)) return 0;
    char parent[PATH_MAX], copy[PATH_MAX];
    snprintf(copy, sizeof copy, "%s", path);
    char *slash = strrchr(copy, '/');
    const char *base = slash ? slash + 1 : copy;
    if (slash) *slash = 0;
    if (!realpath(slash ? (*copy ? copy : "/") : ".", parent)) return -1;
    return (size_t)snprintf(out, size, "%s/%s", strcmp(parent, "/") ? parent : "", base) >= size;
}

int cli_out_begin(const char *dir, const char *const *inputs, int n_inputs, char *out,
                  unsigned long out_size, char *tmp, unsigned long tmp_size, fl_err *err) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--; /* "runs/x/" is "runs/x" */
    if (n >= out_size) return fl_err_set(err, FL_EINPUT, "%s: path too long", dir);
    memcpy(out, dir, n);
    out[n] = 0;
    const char *base = strrchr(out, '/') ? strrchr(out, '/') + 1 : out;
    if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
        return fl_err_set(err, FL_EINPUT, "--out %s: expected a new or fedllm-made directory", dir);
    struct stat st;
    if (stat(out, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return fl_err_set(err, FL_EINPUT, "--out %s: exists and is not a directory", out);
        if (!looks_like_fedllm_output(out))
            return fl_err_set(err, FL_EINPUT,
                              "--out %s: exists and is not a fedllm output; choose another "
                              "directory or remove it",
                              out);
    }
    /* Replacing --out must never remove an input: refuse an --out that is or holds one. Where its
     * parent does not exist yet it holds nothing, and the parents are made (as mkdir -p would)
     * with the temporary directory below. */
    char out_abs[PATH_MAX], in_abs[PATH_MAX];
    int parent_missing = absolute_path(out, out_abs, sizeof out_abs) != 0;
    size_t out_len = parent_missing ? 0 : strlen(out_abs);
    for (int i = 0; !parent_missing && i < n_inputs; i++) {
        if (!inputs[i] || !realpath(inputs[i], in_abs)) continue;
        if (strncmp(in_abs, out_abs, out_len) == 0 &&
            (in_abs[out_len] == 0 || in_abs[out_len] == '/'))
            return fl_err_set(err, FL_EINPUT, "--out %s: would replace the input %s", out,
                              inputs[i]);
    }
    if ((size_t)snprintf(tmp, tmp_size, "%s.tmp.%ld", out, (long)getpid()) >= tmp_size)
        return fl_err_set(err, FL_EINPUT, "%s: path too long", out);
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
