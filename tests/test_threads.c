/* test_threads.c — fedllm's threading policy (src/base/threads.c): the waiting decision from the
 * environment, cgroup CPU quotas from cpu.max / cfs files in a folder tree made here, the team size
 * under a one-CPU affinity mask, and fl_threads_setup itself: this program runs itself with chosen
 * environments and reads what libgomp reports (OMP_DISPLAY_ENV=verbose prints the values it took,
 * once per program start, so the number of reports counts the executions). */
#define _GNU_SOURCE
#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fedllm/threads.h"
#include "testutil.h"

static void test_wait_plan(void) {
    CHECK(fl_threads_wait_plan(NULL, NULL, NULL) == FL_WAIT_REEXEC, "nothing set");
    CHECK(fl_threads_wait_plan("", "", "") == FL_WAIT_REEXEC, "empty values count as unset");
    CHECK(fl_threads_wait_plan("passive", NULL, NULL) == FL_WAIT_USER, "user's policy");
    CHECK(fl_threads_wait_plan("active", NULL, NULL) == FL_WAIT_USER, "user's policy");
    CHECK(fl_threads_wait_plan(NULL, "50", NULL) == FL_WAIT_USER, "user's spin count");
    CHECK(fl_threads_wait_plan(NULL, "1000", "1") == FL_WAIT_DONE, "already executed again");
    CHECK(fl_threads_wait_plan(NULL, NULL, "1") == FL_WAIT_DONE, "marker alone: no loop");
}

static void test_quota(void) {
    CHECK(fl_quota_cpus(-1, 100000) == 0, "v1 -1 is no limit");
    CHECK(fl_quota_cpus(100000, 100000) == 1, "one CPU");
    CHECK(fl_quota_cpus(150000, 100000) == 2, "1.5 CPUs round up");
    CHECK(fl_quota_cpus(20000, 100000) == 1, "a fifth of a CPU is still one thread");
    CHECK(fl_quota_cpus(800000, 100000) == 8, "eight");
    CHECK(fl_quota_cpus(100000, 0) == 0, "period 0");
    long long q = 7, p = 7;
    CHECK(fl_parse_cpu_max("max 100000\n", &q, &p) == 0 && q == -1 && p == 100000, "max");
    CHECK(fl_parse_cpu_max("250000 100000\n", &q, &p) == 0 && q == 250000 && p == 100000, "pair");
    q = p = 7;
    const char *bad[] = {"", "max", "100000", "abc 100", "-5 100", "100 0", "100 100 x", "max 1e5"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(fl_parse_cpu_max(bad[i], &q, &p) == -1 && q == 7 && p == 7, "'%s' refused", bad[i]);
}

static void put(const char *dir, const char *name, const char *text) {
    char cmd[1024], path[1024];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    CHECK(system(cmd) == 0, "%s", cmd);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "write %s", path);
    if (f) fputs(text, f), fclose(f);
}

static void test_cgroup_tree(void) {
    char root[512], d[768];
    snprintf(root, sizeof root, "%s", tu_tmpdir("test_threads"));
    /* v2: the tightest of the process's cgroup and those above it. */
    snprintf(d, sizeof d, "%s/a", root), put(d, "cpu.max", "150000 100000\n");
    snprintf(d, sizeof d, "%s/a/b", root), put(d, "cpu.max", "max 100000\n");
    CHECK(fl_cgroup_cpus(root, "0::/a/b\n") == 2, "v2 limit from the parent");
    snprintf(d, sizeof d, "%s/a/b", root), put(d, "cpu.max", "100000 100000\n");
    CHECK(fl_cgroup_cpus(root, "0::/a/b\n") == 1, "v2 limit of the cgroup itself");
    CHECK(fl_cgroup_cpus(root, "0::/elsewhere\n") == 0, "no limit where nothing is written");
    /* A cgroup namespace's view: the path names folders not mounted here; the mount's own files
     * (the container's cgroup) still count. */
    put(root, "cpu.max", "300000 100000\n");
    CHECK(fl_cgroup_cpus(root, "0::/docker/abc\n") == 3, "mount's own limit");
    /* v1: cpu,cpuacct hierarchy, quota and period files; other controllers are not read. */
    snprintf(d, sizeof d, "%s/v1", root);
    char x[1024];
    snprintf(x, sizeof x, "%s/cpu,cpuacct/job", d);
    put(x, "cpu.cfs_quota_us", "250000\n"), put(x, "cpu.cfs_period_us", "100000\n");
    CHECK(fl_cgroup_cpus(d, "5:memory:/job\n4:cpu,cpuacct:/job\n") == 3, "v1 quota");
    CHECK(fl_cgroup_cpus(d, "5:memory:/job\n") == 0, "memory alone");
    snprintf(x, sizeof x, "%s/cpu", d);
    put(x, "cpu.cfs_quota_us", "-1\n"), put(x, "cpu.cfs_period_us", "100000\n");
    CHECK(fl_cgroup_cpus(d, "1:cpu:/\n") == 0, "v1 unlimited");
    snprintf(x, sizeof x, "%s/cpu/job", d);
    put(x, "cpu.cfs_quota_us", "50000\n"), put(x, "cpu.cfs_period_us", "100000\n");
    CHECK(fl_cgroup_cpus(d, "1:cpu:/job\n2:cpuacct:/job\n") == 1, "v1 cpu hierarchy");
    /* Both v1 and v2 lines (hybrid systems, v2 mounted at unified/): the tightest wins. */
    snprintf(d, sizeof d, "%s/hybrid", root);
    snprintf(x, sizeof x, "%s/cpu,cpuacct/job", d);
    put(x, "cpu.cfs_quota_us", "250000\n"), put(x, "cpu.cfs_period_us", "100000\n");
    snprintf(x, sizeof x, "%s/unified/job", d);
    put(x, "cpu.max", "200000 100000\n");
    CHECK(fl_cgroup_cpus(d, "4:cpu,cpuacct:/job\n0::/job\n") == 2, "hybrid");
    CHECK(fl_cgroup_cpus(d, "4:cpu,cpuacct:/job\n") == 3, "hybrid, v1 line alone");
    CHECK(fl_cgroup_cpus(root, "garbage without colons\n\n:\n") == 0, "malformed lines");
}

/* fl_threads_available under a one-CPU affinity mask, in a child so the test keeps its CPUs. */
static void test_affinity(void) {
    int all = fl_threads_available();
    cpu_set_t mask;
    CHECK(sched_getaffinity(0, sizeof mask, &mask) == 0, "sched_getaffinity");
    CHECK(all >= 1 && all <= CPU_COUNT(&mask), "%d threads for %d CPUs", all, CPU_COUNT(&mask));
    pid_t pid = fork();
    if (pid == 0) {
        cpu_set_t one;
        CPU_ZERO(&one);
        for (int c = 0; c < CPU_SETSIZE; c++)
            if (CPU_ISSET(c, &mask)) {
                CPU_SET(c, &one);
                break;
            }
        _exit(sched_setaffinity(0, sizeof one, &one) == 0 && fl_threads_available() == 1 ? 0 : 1);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "one CPU in the mask gives 1 thread");
}

/* Runs this program as "server --setup" (a party's command: its spin count does not depend on the
 * machine's load) with exactly the environment env (NULL-terminated) and returns
 * its stdout and stderr together (caller frees; never NULL). */
static char *run_setup(char *const env[]) {
    int fds[2];
    if (pipe(fds)) return strdup("(no pipe)");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1), dup2(fds[1], 2);
        close(fds[0]), close(fds[1]);
        alarm(20); /* an execution loop would otherwise never end */
        char *argv[] = {"test_threads", "server", "--setup", NULL};
        execve("/proc/self/exe", argv, env);
        _exit(127);
    }
    close(fds[1]);
    size_t cap = 1 << 16, len = 0;
    char *out = calloc(cap, 1);
    ssize_t got;
    while (out && (got = read(fds[0], out + len, cap - 1 - len)) > 0)
        len += (size_t)got;
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "--setup exit");
    return out;
}

static int count(const char *text, const char *what) {
    int n = 0;
    for (const char *p = text; (p = strstr(p, what)); p += strlen(what))
        n++;
    return n;
}

static void test_setup(void) {
    char expect[64];
    snprintf(expect, sizeof expect, "max_threads=%d\n", fl_threads_available());
    /* Nothing set: libgomp starts twice, the second time with fedllm's spin count. */
    char *env0[] = {"OMP_DISPLAY_ENV=verbose", NULL};
    char *out = run_setup(env0);
    CHECK(count(out, "OPENMP DISPLAY ENVIRONMENT BEGIN") == 2, "executed once more:\n%s", out);
    CHECK(count(out, "GOMP_SPINCOUNT = '1000'") == 1, "libgomp took 1000:\n%s", out);
    CHECK(strstr(out, "spincount=1000 marker=1\n"), "environment:\n%s", out);
    CHECK(strstr(out, expect), "team of fl_threads_available:\n%s", out);
    free(out);
    /* The user's waiting and thread count are left alone, and nothing runs twice. */
    char *env1[] = {"OMP_DISPLAY_ENV=verbose", "OMP_WAIT_POLICY=active", "OMP_NUM_THREADS=3", NULL};
    out = run_setup(env1);
    CHECK(count(out, "OPENMP DISPLAY ENVIRONMENT BEGIN") == 1, "not executed again:\n%s", out);
    CHECK(strstr(out, "spincount=- marker=-\n"), "untouched:\n%s", out);
    CHECK(strstr(out, "max_threads=3\n"), "OMP_NUM_THREADS kept:\n%s", out);
    free(out);
    char *env2[] = {"OMP_DISPLAY_ENV=verbose", "GOMP_SPINCOUNT=7", NULL};
    out = run_setup(env2);
    CHECK(count(out, "OPENMP DISPLAY ENVIRONMENT BEGIN") == 1, "not executed again:\n%s", out);
    CHECK(strstr(out, "spincount=7 marker=-\n"), "user's count kept:\n%s", out);
    free(out);
    /* A fedllm started by fedllm (the marker inherited) does not execute itself again. */
    char *env3[] = {"OMP_DISPLAY_ENV=verbose", "GOMP_SPINCOUNT=1000", FL_THREADS_MARKER "=1", NULL};
    out = run_setup(env3);
    CHECK(count(out, "OPENMP DISPLAY ENVIRONMENT BEGIN") == 1, "inherited:\n%s", out);
    free(out);
}

/* The spin count per command, and what counts as a busy machine. */
static void test_spincount(void) {
    CHECK(!strcmp(fl_threads_spincount("train", 0), "30000") &&
              !strcmp(fl_threads_spincount("train", 1), "1000") &&
              !strcmp(fl_threads_spincount(NULL, 1), "1000"),
          "train: 30000 idle, 1000 busy");
    CHECK(!strcmp(fl_threads_spincount("run", 0), "1000") &&
              !strcmp(fl_threads_spincount("server", 0), "1000") &&
              !strcmp(fl_threads_spincount("client", 1), "1000") &&
              !strcmp(fl_threads_spincount("serve", 0), "1000"),
          "the parties and serve always spin 1000");
    CHECK(!strcmp(fl_threads_spincount("generate", 0), "30000") &&
              !strcmp(fl_threads_spincount("generate", 1), "0"),
          "generate: 30000 idle, passive busy");
    int idle[5] = {1, 2, 1, 1, 3}, busy[5] = {3, 2, 4, 2, 2}, one_busy[5] = {2, 2, 2, 2, 2};
    CHECK(!fl_busy_from_running(idle, 5, 2), "a passing process is not a load");
    CHECK(fl_busy_from_running(busy, 5, 2), "two others in every sample on 2 CPUs is a load");
    CHECK(fl_busy_from_running(one_busy, 5, 2) && !fl_busy_from_running(one_busy, 5, 4),
          "one other process holds half of 2 CPUs, not of 4");
    CHECK(!fl_busy_from_running(busy, 0, 2) && !fl_busy_from_running(busy, 5, 0),
          "no samples or no CPUs: not busy");
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[2], "--setup") == 0) {
        fl_threads_setup(argv);
        const char *spin = getenv("GOMP_SPINCOUNT"), *marker = getenv(FL_THREADS_MARKER);
        printf("spincount=%s marker=%s\nmax_threads=%d\n", spin ? spin : "-", marker ? marker : "-",
               omp_get_max_threads());
        return 0;
    }
    test_wait_plan();
    test_quota();
    test_cgroup_tree();
    test_affinity();
    test_setup();
    test_spincount();
    return tu_finish("test_threads");
}
