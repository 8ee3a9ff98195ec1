/* bench_child.h — what the benchmark programs share: a monotonic clock, and running one case in a
 * child process of its own, so that the peak RSS it reports is that case's alone. */
#ifndef FEDLLM_BENCH_CHILD_H
#define FEDLLM_BENCH_CHILD_H

#include <stddef.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static inline double bench_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Runs fn(ctx, out) in a forked child and copies its `size`-byte result back into out. Returns 0
 * with the child's peak RSS in *peak_rss_mb, or -1 when the child failed (fn returned nonzero). */
static inline int bench_in_child(int (*fn)(const void *ctx, void *out), const void *ctx, void *out,
                                 size_t size, double *peak_rss_mb) {
    int fds[2];
    if (pipe(fds)) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        close(fds[0]);
        int rc = fn(ctx, out);
        ssize_t w = write(fds[1], out, size);
        _exit(w == (ssize_t)size && rc == 0 ? 0 : 1);
    }
    close(fds[1]);
    ssize_t got = read(fds[0], out, size);
    close(fds[0]);
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0 || got != (ssize_t)size || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        return -1;
    *peak_rss_mb = (double)ru.ru_maxrss / 1024.0;
    return 0;
}

#endif
