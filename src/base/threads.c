/* threads.c — fedllm's threading policy: the OpenMP waiting it runs with and the team size it
 * computes with (see fedllm/threads.h for why, and docs/performance.md for the measurements).
 *
 * The waiting: GOMP_SPINCOUNT=FL_THREADS_SPINCOUNT. A waiting thread spins that many pause
 * iterations (libgomp's estimate: 100 per microsecond, so about 10 us) before it sleeps on a
 * futex. On an idle machine that covers the short gaps between consecutive parallel regions, so
 * the team does not pay a wake-up per region (pure sleeping, OMP_WAIT_POLICY=passive, cost the
 * tiny model 22% of its idle speed; 1000 cost it 0-4%, models/base nothing measurable); on a busy
 * one it wastes at most those few microseconds before giving the core back, where libgomp's
 * default (300000, about 3 ms) burns most of a scheduler slice: 4-10x slower than passive beside
 * 4 busy processes on 2 cores, where 1000 stayed within 1.1x. 3000 and 10000 were tried: no
 * faster idle beyond the noise, 1.4-2x and 2-4x slower than passive under load. */
#define _GNU_SOURCE
#include "fedllm/threads.h"

#include <limits.h>
#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FL_THREADS_SPINCOUNT "1000"
/* On an idle machine 1000 lets the team fall asleep in gaps between regions that are longer
 * than 10 us: decoding (several small regions per layer and token) kept 85-92% of libgomp's
 * default speed, training models/base about 90%. 30000 (about 300 us) kept 100-104% of both, so a
 * command that finds the machine idle at start-up spins that long; one that finds it busy spins
 * 1000, and generate, whose many small regions suffer most from any spinning beside a load, waits
 * passively (GOMP_SPINCOUNT=0). docs/performance.md has the measurements. */
#define FL_THREADS_IDLE_SPIN "30000"

static int set(const char *s) { return s && *s; }

fl_wait_plan fl_threads_wait_plan(const char *omp_wait_policy, const char *gomp_spincount,
                                  const char *marker) {
    if (set(marker)) return FL_WAIT_DONE;
    return set(omp_wait_policy) || set(gomp_spincount) ? FL_WAIT_USER : FL_WAIT_REEXEC;
}

int fl_quota_cpus(long long quota_us, long long period_us) {
    if (quota_us < 0 || period_us <= 0) return 0;
    long long cpus = quota_us / period_us + (quota_us % period_us != 0);
    return cpus < 1 ? 1 : cpus > INT_MAX ? INT_MAX : (int)cpus;
}

int fl_parse_cpu_max(const char *text, long long *quota_us, long long *period_us) {
    long long quota = -1, period;
    int used = 0;
    if (strncmp(text, "max ", 4) == 0) {
        if (sscanf(text + 4, "%lld%n", &period, &used) != 1) return -1;
        used += 4;
    } else if (sscanf(text, "%lld %lld%n", &quota, &period, &used) != 2 || quota < 0) {
        return -1;
    }
    for (const char *p = text + used; *p; p++)
        if (*p != '\n' && *p != ' ') return -1;
    if (period <= 0) return -1;
    *quota_us = quota;
    *period_us = period;
    return 0;
}

/* The first line of a small text file into buf (NUL-terminated); -1 when it cannot be read. */
static int read_line(const char *path, char *buf, size_t size) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *got = fgets(buf, (int)size, f);
    fclose(f);
    return got ? 0 : -1;
}

/* min(best, cpus) over the positive ones; 0 = no limit yet. */
static int tighter(int best, int cpus) {
    return cpus > 0 && (best == 0 || cpus < best) ? cpus : best;
}

/* The CPU limit in one cgroup folder: v2's cpu.max, else v1's quota and period. */
static int folder_cpus(const char *dir) {
    char path[PATH_MAX + 32], line[128], line2[128];
    long long quota, period;
    snprintf(path, sizeof path, "%s/cpu.max", dir);
    if (read_line(path, line, sizeof line) == 0)
        return fl_parse_cpu_max(line, &quota, &period) == 0 ? fl_quota_cpus(quota, period) : 0;
    snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir);
    if (read_line(path, line, sizeof line)) return 0;
    snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
    if (read_line(path, line2, sizeof line2)) return 0;
    return sscanf(line, "%lld", &quota) == 1 && sscanf(line2, "%lld", &period) == 1
               ? fl_quota_cpus(quota, period)
               : 0;
}

/* The tightest limit in mount/cgroup_path and every folder above it up to mount itself. */
static int hierarchy_cpus(const char *mount, const char *cgroup_path) {
    char rel[PATH_MAX], dir[PATH_MAX];
    snprintf(rel, sizeof rel, "%s", cgroup_path);
    int best = 0;
    for (;;) {
        size_t len = strlen(rel);
        while (len > 0 && rel[len - 1] == '/')
            rel[--len] = '\0';
        if ((size_t)snprintf(dir, sizeof dir, "%s%s", mount, rel) < sizeof dir)
            best = tighter(best, folder_cpus(dir));
        char *slash = strrchr(rel, '/');
        if (!slash || len == 0) break;
        *slash = '\0';
    }
    return best;
}

int fl_cgroup_cpus(const char *root, const char *proc_self_cgroup) {
    int best = 0;
    const char *line = proc_self_cgroup;
    while (line && *line) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char entry[PATH_MAX], mount[PATH_MAX];
        if (len < sizeof entry) {
            memcpy(entry, line, len);
            entry[len] = '\0';
            char *c1 = strchr(entry, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
            if (c2) {
                *c2 = '\0';
                const char *controllers = c1 + 1, *path = c2 + 1;
                if (*controllers == '\0') { /* v2: one unified hierarchy */
                    best = tighter(best, hierarchy_cpus(root, path));
                    snprintf(mount, sizeof mount, "%s/unified", root);
                    best = tighter(best, hierarchy_cpus(mount, path));
                } else {
                    char list[256];
                    snprintf(list, sizeof list, ",%s,", controllers);
                    if (strstr(list, ",cpu,")) { /* v1: cpu or cpu,cpuacct */
                        snprintf(mount, sizeof mount, "%s/%s", root, controllers);
                        best = tighter(best, hierarchy_cpus(mount, path));
                        snprintf(mount, sizeof mount, "%s/cpu", root);
                        if (strcmp(controllers, "cpu") != 0)
                            best = tighter(best, hierarchy_cpus(mount, path));
                    }
                }
            }
        }
        line = end ? end + 1 : NULL;
    }
    return best;
}

int fl_threads_available(void) {
    int cpus = 0;
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof mask, &mask) == 0) cpus = CPU_COUNT(&mask);
    if (cpus < 1) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        cpus = online > 0 && online < INT_MAX ? (int)online : 1;
    }
    char text[4096];
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (f) {
        size_t n = fread(text, 1, sizeof text - 1, f);
        text[n] = '\0';
        fclose(f);
        int quota = fl_cgroup_cpus("/sys/fs/cgroup", text);
        if (quota > 0 && quota < cpus) cpus = quota;
    }
    return cpus;
}

/* Federated parties often share a host with each other (fedllm run, or parties started by hand)
 * and run for long: a load sampled at their start says little, so they always bound spinning. */
static int is_party(const char *command) {
    return command &&
           (!strcmp(command, "run") || !strcmp(command, "server") || !strcmp(command, "client") ||
            !strcmp(command, "serve"));
}

const char *fl_threads_spincount(const char *command, int busy) {
    if (is_party(command)) return FL_THREADS_SPINCOUNT;
    if (command && strcmp(command, "generate") == 0) return busy ? "0" : FL_THREADS_IDLE_SPIN;
    return busy ? FL_THREADS_SPINCOUNT : FL_THREADS_IDLE_SPIN;
}

int fl_busy_from_running(const int *running, int n_samples, int cpus) {
    if (n_samples < 1 || cpus < 1) return 0;
    int least = running[0];
    for (int i = 1; i < n_samples; i++)
        if (running[i] < least) least = running[i];
    /* procs_running counts this process (it is running while it reads): the others are the rest */
    return least - 1 >= (cpus + 1) / 2;
}

/* procs_running from /proc/stat; -1 when it cannot be read. */
static int procs_running(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    char line[256];
    int n = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "procs_running %d", &n) == 1) break;
    fclose(f);
    return n;
}

/* Whether other runnable processes hold at least half of the CPUs in each of 5 samples 2 ms
 * apart (10 ms at start-up, once): a load that lasts, not a passing process. */
static int machine_busy(void) {
    int running[5], n = 0;
    for (int i = 0; i < 5; i++) {
        int r = procs_running();
        if (r < 0) return 0;
        running[n++] = r;
        if (i < 4) {
            struct timespec pause = {0, 2000000};
            nanosleep(&pause, NULL);
        }
    }
    return fl_busy_from_running(running, n, fl_threads_available());
}

void fl_threads_setup(char **argv) {
    fl_wait_plan plan = fl_threads_wait_plan(getenv("OMP_WAIT_POLICY"), getenv("GOMP_SPINCOUNT"),
                                             getenv(FL_THREADS_MARKER));
    const char *command = argv && argv[0] ? argv[1] : NULL;
    const char *spin = FL_THREADS_SPINCOUNT;
    if (plan == FL_WAIT_REEXEC)
        spin = fl_threads_spincount(command, is_party(command) ? 0 : machine_busy());
    if (plan == FL_WAIT_REEXEC && setenv("GOMP_SPINCOUNT", spin, 1) == 0 &&
        setenv(FL_THREADS_MARKER, "1", 1) == 0) {
        execv("/proc/self/exe", argv);
        /* Not executed again (no /proc): go on with libgomp's waiting, and keep the environment
         * true to this process for its children. */
        unsetenv("GOMP_SPINCOUNT");
        unsetenv(FL_THREADS_MARKER);
    }
    const char *n = getenv("OMP_NUM_THREADS");
    if (!set(n)) omp_set_num_threads(fl_threads_available());
}
