/* busy.c — fedllm on a busy machine: the wall time of `fedllm train` (LoRA r 8, B 8, T 128) with
 * the machine idle and with N competing processes that do nothing but compute, for several
 * ways of waiting:
 *
 *   fedllm    the program's own choice (OMP_WAIT_POLICY, GOMP_SPINCOUNT, OMP_NUM_THREADS unset);
 *   passive   OMP_WAIT_POLICY=passive, the reference a busy machine is judged against;
 *   spin      libgomp's default spinning forced back (GOMP_SPINCOUNT=300000, the count libgomp
 *             uses when nothing is set: what train, eval, generate, server and client waited
 *             with before fedllm chose its waiting);
 *   baseline  another fedllm binary (--baseline PATH) with the variables unset.
 *
 * The competing load is the bench's own: N child processes spinning in a loop, started before a
 * load level's runs and killed after them. Configurations alternate within each repetition so
 * that the machine's other activity falls on all of them alike; each row gives the median of the
 * repetitions (tokens/s = steps * 8 * 128 / that wall time, start-up included), the 1-minute load
 * average seen at the start of the runs and the share of the CPUs that processes other than the
 * measured one used meanwhile (/proc/stat's busy time less the command's own CPU time; with a
 * competing load this includes that load).
 *
 * usage: busy [--fedllm build/fedllm] [--baseline PATH] [--model models/base] [--data FILE.jsonl]
 *             [--steps 20] [--reps 3] [--load 0,8] [--configs fedllm,passive,spin] [--json FILE]
 * Needs a JSONL file of {"text": ...} records (--data; default data/text/fortunes.train.jsonl,
 * from scripts/fetch-text fortunes data/text). */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_child.h"

enum { MAX_REPS = 64, MAX_LOADS = 8, MAX_CONFIGS = 4 };

typedef struct opts {
    const char *fedllm, *baseline, *model, *data, *json, *configs;
    int steps, reps, n_loads, loads[MAX_LOADS];
} opts;

typedef struct sample {
    double wall_s, others; /* others: CPU share (0..1 of all CPUs) used by other processes */
    double loadavg;
} sample;

/* Busy jiffies (user + nice + system + irq + softirq) of all CPUs, from /proc/stat. */
static double busy_s(void) {
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long user = 0, nice = 0, sys = 0, idle = 0, iowait = 0, irq = 0, softirq = 0;
    if (f && fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &sys, &idle, &iowait,
                    &irq, &softirq) != 7)
        user = nice = sys = irq = softirq = 0;
    if (f) fclose(f);
    return (double)(user + nice + sys + irq + softirq) / (double)sysconf(_SC_CLK_TCK);
}

static double loadavg1(void) {
    double l[1] = {0};
    return getloadavg(l, 1) == 1 ? l[0] : -1;
}

/* Runs one `fedllm train` in the configuration; 0 on success. */
static int run_train(const opts *o, const char *config, const char *out_dir, sample *s) {
    const char *bin = strcmp(config, "baseline") == 0 ? o->baseline : o->fedllm;
    char steps[16];
    snprintf(steps, sizeof steps, "%d", o->steps);
    s->loadavg = loadavg1();
    fflush(stdout);
    double b0 = busy_s(), t0 = bench_now_s();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        unsetenv("OMP_WAIT_POLICY");
        unsetenv("GOMP_SPINCOUNT");
        unsetenv("OMP_NUM_THREADS");
        unsetenv("FEDLLM_THREADS_SET");
        if (strcmp(config, "passive") == 0) setenv("OMP_WAIT_POLICY", "passive", 1);
        if (strcmp(config, "spin") == 0) setenv("GOMP_SPINCOUNT", "300000", 1);
        if (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr)) _exit(126);
        execl(bin, bin, "train", "--model", o->model, "--data", o->data, "--lora", "8", "--steps",
              steps, "--batch", "8", "--seq", "128", "--log-every", "1000", "--out", out_dir,
              (char *)NULL);
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    s->wall_s = bench_now_s() - t0;
    double own = (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
                 (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
    double others = (busy_s() - b0 - own) / (s->wall_s * (double)sysconf(_SC_NPROCESSORS_ONLN));
    s->others = others < 0 ? 0 : others > 1 ? 1 : others;
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n) {
    double sorted[MAX_REPS];
    memcpy(sorted, v, (size_t)n * sizeof *v);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_double);
    return n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
}

static void start_load(pid_t *pids, int n) {
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* the load ends with the bench, however it ends */
            volatile unsigned long spin = 0;
            for (;;)
                spin++;
        }
    }
}

static void stop_load(pid_t *pids, int n) {
    for (int i = 0; i < n; i++)
        if (pids[i] > 0) kill(pids[i], SIGKILL), waitpid(pids[i], NULL, 0);
}

static int parse(int argc, char **argv, opts *o) {
    *o = (opts){"build/fedllm",
                NULL,
                "models/base",
                "data/text/fortunes.train.jsonl",
                NULL,
                "fedllm,passive,spin",
                20,
                3,
                2,
                {0, 8}};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--fedllm"))
            o->fedllm = v;
        else if (!strcmp(k, "--baseline"))
            o->baseline = v;
        else if (!strcmp(k, "--model"))
            o->model = v;
        else if (!strcmp(k, "--data"))
            o->data = v;
        else if (!strcmp(k, "--json"))
            o->json = v;
        else if (!strcmp(k, "--configs"))
            o->configs = v;
        else if (!strcmp(k, "--steps"))
            o->steps = atoi(v);
        else if (!strcmp(k, "--reps"))
            o->reps = atoi(v);
        else if (!strcmp(k, "--load")) {
            o->n_loads = 0;
            for (const char *p = v; *p && o->n_loads < MAX_LOADS; p += strcspn(p, ","), p += !!*p)
                o->loads[o->n_loads++] = atoi(p);
        } else
            return fprintf(stderr, "busy: unknown option %s\n", k), -1;
    }
    if (o->steps < 1 || o->reps < 1 || o->reps > MAX_REPS || o->n_loads < 1)
        return fprintf(stderr, "busy: bad --steps, --reps (1..%d) or --load\n", MAX_REPS), -1;
    return 0;
}

int main(int argc, char **argv) {
    opts o;
    if (parse(argc, argv, &o)) return 2;
    char configs[MAX_CONFIGS][16], list[128];
    int n_configs = 0;
    snprintf(list, sizeof list, "%s%s", o.configs, o.baseline ? ",baseline" : "");
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t && n_configs < MAX_CONFIGS;
         t = strtok_r(NULL, ",", &save))
        snprintf(configs[n_configs++], sizeof configs[0], "%s", t);
    char out_dir[64];
    snprintf(out_dir, sizeof out_dir, "/tmp/fedllm-busy-%d", (int)getpid());
    FILE *json = o.json ? fopen(o.json, "w") : NULL;
    if (o.json && !json) return fprintf(stderr, "busy: cannot write %s\n", o.json), 2;
    printf(
        "fedllm train --model %s --lora 8 --batch 8 --seq 128 --steps %d, median of %d, %ld CPUs\n",
        o.model, o.steps, o.reps, sysconf(_SC_NPROCESSORS_ONLN));
    printf("%-5s %-9s %9s %10s %8s %8s\n", "load", "config", "wall s", "tokens/s", "loadavg",
           "others");
    int failures = 0;
    for (int li = 0; li < o.n_loads; li++) {
        int n_load = o.loads[li];
        pid_t pids[256] = {0};
        if (n_load > 256) n_load = 256;
        start_load(pids, n_load);
        sample s[MAX_CONFIGS][MAX_REPS];
        int ok[MAX_CONFIGS] = {0};
        for (int r = 0; r < o.reps; r++)
            for (int c = 0; c < n_configs; c++)
                if (run_train(&o, configs[c], out_dir, &s[c][ok[c]]) == 0)
                    ok[c]++;
                else
                    failures++;
        stop_load(pids, n_load);
        for (int c = 0; c < n_configs; c++) {
            if (!ok[c]) {
                printf("%-5d %-9s failed\n", n_load, configs[c]);
                continue;
            }
            double wall[MAX_REPS], la[MAX_REPS], others[MAX_REPS];
            for (int r = 0; r < ok[c]; r++)
                wall[r] = s[c][r].wall_s, la[r] = s[c][r].loadavg, others[r] = s[c][r].others;
            double w = median(wall, ok[c]), tps = (double)o.steps * 8 * 128 / w;
            printf("%-5d %-9s %9.2f %10.0f %8.2f %8.2f\n", n_load, configs[c], w, tps,
                   median(la, ok[c]), median(others, ok[c]));
            if (json)
                fprintf(
                    json,
                    "{\"load_procs\": %d, \"config\": \"%s\", \"model\": \"%s\", \"steps\": %d, "
                    "\"reps\": %d, \"median_wall_s\": %.3f, \"tokens_per_s\": %.1f, "
                    "\"median_loadavg\": %.2f, \"median_others\": %.3f}\n",
                    n_load, configs[c], o.model, o.steps, ok[c], w, tps, median(la, ok[c]),
                    median(others, ok[c]));
        }
        fflush(stdout);
    }
    if (json) fclose(json);
    return failures ? 1 : 0;
}
