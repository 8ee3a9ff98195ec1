/* threads.h — how many threads fedllm computes with and how its idle threads wait.
 *
 * All of fedllm's parallel work (its own kernels, OpenBLAS's and oneDNN's, both built on OpenMP
 * here) runs on libgomp's thread team. libgomp's default makes a thread that waits for the next
 * parallel region, or for its siblings at a barrier, spin for about 3 ms before it sleeps. On a
 * busy machine that spin takes the core that the sibling being waited for needs, and a pass of
 * many small regions becomes 5-60x slower. fedllm therefore picks the waiting itself (see
 * FL_THREADS_SPINCOUNT in threads.c for the measured choice) unless the user did, and sizes the
 * team to the CPUs the process may really use: its affinity mask, capped by a cgroup CPU quota.
 *
 * libgomp reads its environment once, in a constructor that runs before main, so the waiting can
 * only be chosen by setting the environment and executing the program again; fl_threads_setup
 * does that once (FL_THREADS_MARKER guards against a loop). The variables that a user sets
 * (OMP_WAIT_POLICY, GOMP_SPINCOUNT, OMP_NUM_THREADS) are always left as they are. The library
 * itself never calls any of this: the program (the CLI's main) does, before anything else. */
#ifndef FEDLLM_THREADS_H
#define FEDLLM_THREADS_H

/* Set in the environment of a program that fl_threads_setup executed again; its children see it
 * too, so a fedllm started by fedllm (fedllm run's parties) does not execute itself again. */
#define FL_THREADS_MARKER "FEDLLM_THREADS_SET"

/* What fl_threads_wait_plan decided about the OpenMP waiting. */
typedef enum fl_wait_plan {
    FL_WAIT_USER,   /* OMP_WAIT_POLICY or GOMP_SPINCOUNT is the user's: leave it */
    FL_WAIT_DONE,   /* FL_THREADS_MARKER is set: this process already runs with fedllm's waiting */
    FL_WAIT_REEXEC, /* set fedllm's waiting and execute the program again */
} fl_wait_plan;

/* The decision from the three environment values (NULL = unset; an empty string counts as unset,
 * as libgomp ignores it). Pure: reads nothing else, cannot fail. */
fl_wait_plan fl_threads_wait_plan(const char *omp_wait_policy, const char *gomp_spincount,
                                  const char *marker);

/* CPUs granted by a cgroup CPU bandwidth limit of quota/period microseconds: ceil(quota/period),
 * at least 1; 0 when there is no limit (quota < 0, as cgroup v1 writes -1) or period <= 0.
 * Cannot fail. */
int fl_quota_cpus(long long quota_us, long long period_us);

/* Parses a cgroup v2 cpu.max ("QUOTA PERIOD" or "max PERIOD", one line) into *quota_us
 * (-1 for "max") and *period_us. Returns 0, or -1 when the text is not that (nothing is set). */
int fl_parse_cpu_max(const char *text, long long *quota_us, long long *period_us);

/* The smallest cgroup CPU limit on this process: cgroup v2's cpu.max, or v1's cpu.cfs_quota_us and
 * cpu.cfs_period_us, of the process's cgroup and each cgroup above it (as far as they are mounted
 * where /proc/self/cgroup says). `root` is the cgroup file system's mount point
 * ("/sys/fs/cgroup"; tests pass a folder of their own) and `proc_self_cgroup` the text of
 * /proc/self/cgroup. Returns the CPUs as fl_quota_cpus does; 0 when no limit is found or readable.
 */
int fl_cgroup_cpus(const char *root, const char *proc_self_cgroup);

/* The threads fedllm computes with when the user does not say: the CPUs in this process's affinity
 * mask (sched_getaffinity; the online CPUs where that fails), capped by fl_cgroup_cpus. >= 1. */
int fl_threads_available(void);

/* The GOMP_SPINCOUNT fedllm chooses for a command (argv[1]) given whether the machine was busy at
 * start-up: the federated parties (run, server, client) and serve (long-running, often several on a
 * host) always "1000" (about 10 us of spinning, then sleep); other commands "30000" (about 300 us)
 * on an idle machine and, on a busy one, "1000" — or "0" (passive) for generate, whose decoding
 * runs many small parallel regions. Pure. */
const char *fl_threads_spincount(const char *command, int busy);

/* Busy: in every one of n_samples readings of /proc/stat's procs_running (which counts the reader
 * itself), the other runnable processes number at least half of cpus (rounded up). Pure. */
int fl_busy_from_running(const int *running, int n_samples, int cpus);

/* Call first in main, with main's argv (NULL-terminated). Unless the user chose the waiting, sets
 * fedllm's (GOMP_SPINCOUNT from fl_threads_spincount, after sampling the load for 10 ms unless the
 * command is a party's) and FL_THREADS_MARKER and executes /proc/self/exe with the same
 * arguments; if that cannot be done the program goes on with libgomp's default waiting. Then,
 * unless OMP_NUM_THREADS is set, sizes the OpenMP team (and so OpenBLAS's and oneDNN's) to
 * fl_threads_available(). Returns only in the process that goes on to do the work; cannot fail. */
void fl_threads_setup(char **argv);

#endif
