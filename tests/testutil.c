/* testutil.c — see testutil.h. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "fedllm/fileio.h"

int tu_failures = 0;
int tu_checks = 0;

double tu_max_rel_diff(const float *a, const float *b, size_t n, double floor,
                       size_t *worst_index) {
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double denom = fabs((double)b[i]) > floor ? fabs((double)b[i]) : floor;
        double d = fabs((double)a[i] - (double)b[i]) / denom;
        if (!(d <= worst)) { /* also catches NaN */
            worst = isnan(d) ? INFINITY : d;
            at = i;
        }
    }
    if (worst_index) *worst_index = at;
    return worst;
}

const char *tu_tmpdir(const char *name) {
    static char path[1024];
    const char *base = getenv("FEDLLM_TMP");
    snprintf(path, sizeof path, "%s/%s", base ? base : "/tmp/fedllm-test", name);
    fl_remove_tree(path);
    fl_mkdirs(path, NULL);
    return path;
}

int tu_finish(const char *test_name) {
    printf("%s: %d passed, %d failed\n", test_name, tu_checks - tu_failures, tu_failures);
    return tu_failures ? 1 : 0;
}
