/* fed.c — `fedllm server`, `fedllm client` and `fedllm run`: the federated parties.
 *
 * `run` starts the server and every client as separate processes of this same binary (the
 * deployment path, only on loopback), sends each one's console to JOB.output/PARTY/console, shows
 * one live view built from the parties' status.json files, and exits non-zero when any party
 * failed, naming it and its log. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "fedllm/fed.h"
#include "fedllm/fileio.h"
#include "fedllm/job.h"
#include "fedllm/threads.h"

static const char HELP_SERVER[] =
    "usage: fedllm server JOB.yaml [--resume]\n"
    "\n"
    "Runs the job's server: waits for min_clients, runs every round (round_deadline_s each),\n"
    "checkpoints after each, and writes OUTPUT/server/adapter (PEFT layout) and\n"
    "OUTPUT/summary.json. --resume continues after the last checkpointed round; running clients\n"
    "reconnect by themselves.\n";
static const char HELP_CLIENT[] = "usage: fedllm client JOB.yaml --name NAME\n"
                                  "\n"
                                  "Runs client NAME of the job: joins the server, trains every\n"
                                  "round it is sent on its own data, reports the final adapter's\n"
                                  "eval loss. Its files go to OUTPUT/NAME/.\n";
static const char HELP_RUN[] =
    "usage: fedllm run JOB.yaml\n"
    "\n"
    "Starts the server and every client of the job as separate processes on this machine and\n"
    "shows their progress. Each party's log, metrics.jsonl, outbox.jsonl and console output are "
    "in\n"
    "OUTPUT/PARTY/. Exits non-zero if any party failed.\n";

/* JOB is the first argument; the options follow. */
static int parse_job_args(int argc, char **argv, cli_opt *o, int n, const char *help,
                          const char **job, fl_err *err) {
    int want_help = 0;
    if (argc >= 3 && argv[2][0] != '-') {
        *job = argv[2];
        if (cli_parse(argc, argv, 3, o, n, &want_help, err)) return FL_EINPUT;
    } else {
        *job = NULL;
        if (cli_parse(argc, argv, 2, o, n, &want_help, err)) return FL_EINPUT;
    }
    if (want_help) return fputs(help, stdout), -1;
    if (!*job) return fl_err_set(err, FL_EINPUT, "expected the job file first (see --help)");
    return FL_OK;
}

/* Loads and validates the job; prints every problem (one per line) and returns 2 on failure. */
static int load_job(const char *cmd, const char *path, const char *party, fl_job *job) {
    char *problems = NULL;
    fl_err err = {0};
    int rc = fl_job_load(job, path, 0, &problems, &err);
    if (!rc && (rc = fl_job_check_files(job, party, &problems, &err))) fl_job_free(job);
    if (rc) {
        if (problems && *problems)
            fprintf(stderr, "fedllm %s: %s", cmd, problems);
        else
            cli_fail(cmd, &err);
        if (problems && *problems && problems[strlen(problems) - 1] != '\n') fputc('\n', stderr);
    }
    free(problems);
    return rc ? (err.code ? err.code : FL_EINPUT) : 0;
}

int cli_server(int argc, char **argv) {
    cli_opt o[] = {{"resume", 0, NULL}};
    const char *path;
    fl_err err = {0};
    int rc = parse_job_args(argc, argv, o, 1, HELP_SERVER, &path, &err);
    if (rc < 0) return 0;
    if (rc) return cli_fail("server", &err);
    fl_job job;
    if ((rc = load_job("server", path, "server", &job))) return rc;
    rc = fl_server_run(&job, o[0].value != NULL, &err);
    fl_job_free(&job);
    return rc ? cli_fail("server", &err) : 0;
}

int cli_client(int argc, char **argv) {
    cli_opt o[] = {{"name", 1, NULL}};
    const char *path;
    fl_err err = {0};
    int rc = parse_job_args(argc, argv, o, 1, HELP_CLIENT, &path, &err);
    if (rc < 0) return 0;
    if (!rc && !o[0].value) rc = fl_err_set(&err, FL_EINPUT, "--name is required");
    if (rc) return cli_fail("client", &err);
    fl_job job;
    if ((rc = load_job("client", path, o[0].value, &job))) return rc;
    rc = fl_client_run(&job, o[0].value, &err);
    fl_job_free(&job);
    return rc ? cli_fail("client", &err) : 0;
}

/* ---- run --------------------------------------------------------------------------------------
 */

typedef struct party {
    char name[64];
    pid_t pid;
    int status; /* exit status once exited */
    int running;
    char last[2048];  /* last line shown (non-terminal mode) */
    char warned[256]; /* its last warning shown */
} party;

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

static pid_t start_party(const fl_job *job, const char *job_path, const char *name, int threads,
                         fl_err *err) {
    char dir[FL_JOB_PATH_MAX + 64], console[FL_JOB_PATH_MAX + 80];
    if (fl_path_join(dir, sizeof dir, job->output, name, err) || fl_mkdirs(dir, err) ||
        fl_path_join(console, sizeof console, dir, "console", err))
        return -1;
    pid_t pid = fork();
    if (pid < 0) return fl_err_set(err, FL_EIO, "fork: %s", strerror(errno)), -1;
    if (pid > 0) return pid;
    int fd = open(console, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    char nthreads[16];
    snprintf(nthreads, sizeof nthreads, "%d", threads);
    if (!getenv("OMP_NUM_THREADS")) setenv("OMP_NUM_THREADS", nthreads, 1);
    setenv("OMP_WAIT_POLICY", "passive", 0);
    if (strcmp(name, "server") == 0)
        execl("/proc/self/exe", "fedllm", "server", job_path, (char *)NULL);
    else
        execl("/proc/self/exe", "fedllm", "client", job_path, "--name", name, (char *)NULL);
    _exit(127);
}

#define DASH "\xe2\x80\x94" /* U+2014, for what is not known (yet) */

/* One line per party from its status.json; key names its round and state only; warning receives
 * the party's warning ("" for none). */
static void describe(const fl_job *job, const party *p, char *line, size_t size, char *key,
                     size_t key_size, char *warning, size_t warning_size) {
    char path[FL_JOB_PATH_MAX + 96], *text = NULL;
    size_t len;
    snprintf(path, sizeof path, "%s/%s/status.json", job->output, p->name);
    cJSON *st = NULL;
    if (fl_read_file(path, &text, &len, 1 << 16, NULL) == 0) st = cJSON_Parse(text);
    free(text);
    const cJSON *state = cJSON_GetObjectItem(st, "state"),
                *round = cJSON_GetObjectItem(st, "round");
    const cJSON *step = cJSON_GetObjectItem(st, "step"), *steps = cJSON_GetObjectItem(st, "steps");
    const cJSON *loss = cJSON_GetObjectItem(st, "loss"), *warn = cJSON_GetObjectItem(st, "warning");
    snprintf(warning, warning_size, "%s", cJSON_IsString(warn) ? warn->valuestring : "");
    if (!p->running && p->status != 0)
        snprintf(line, size, "%-12s FAILED (exit %d): see %s/%s/log", p->name, p->status,
                 job->output, p->name);
    else if (cJSON_IsString(state) && cJSON_IsNumber(round)) {
        /* only what is true: a dash for no round yet, no progress count, no loss yet (the
         * server's loss is the last round's mean train loss) */
        char round_text[16] = DASH "  ", count[32] = "    " DASH "      ", loss_text[32] = DASH;
        if (round->valueint >= 1) snprintf(round_text, sizeof round_text, "%-3d", round->valueint);
        if (cJSON_IsNumber(steps) && steps->valueint > 0)
            snprintf(count, sizeof count, "%5d/%-5d", cJSON_IsNumber(step) ? step->valueint : 0,
                     steps->valueint);
        if (cJSON_IsNumber(loss)) snprintf(loss_text, sizeof loss_text, "%.4f", loss->valuedouble);
        snprintf(line, size, "%-12s round %s %-20s %s loss %s", p->name, round_text,
                 state->valuestring, count, loss_text);
    } else
        snprintf(line, size, "%-12s starting", p->name);
    snprintf(key, key_size, "%d %d %s", p->running, cJSON_IsNumber(round) ? round->valueint : -2,
             cJSON_IsString(state) ? state->valuestring : "");
    cJSON_Delete(st);
}

static void show(const fl_job *job, party *parties, int n, int tty, int *drawn) {
    char(*lines)[2048] = malloc((size_t)n * sizeof *lines), key[128], warning[256];
    if (!lines) return;
    if (tty && *drawn) fprintf(stderr, "\033[%dA", *drawn);
    for (int i = 0; i < n; i++) { /* a new warning goes above the view, and stays on screen */
        describe(job, &parties[i], lines[i], sizeof lines[i], key, sizeof key, warning,
                 sizeof warning);
        if (warning[0] && strcmp(warning, parties[i].warned) != 0)
            fprintf(stderr, "%s%s: warning: %s\n", tty ? "\033[2K" : "", parties[i].name, warning);
        snprintf(parties[i].warned, sizeof parties[i].warned, "%s", warning);
        if (!tty && strcmp(key, parties[i].last) != 0) /* not a terminal: state changes only */
            fprintf(stderr, "%s\n", lines[i]);
        snprintf(parties[i].last, sizeof parties[i].last, "%s", tty ? lines[i] : key);
    }
    for (int i = 0; tty && i < n; i++)
        fprintf(stderr, "\033[2K%s\n", lines[i]);
    *drawn = tty ? n : 0;
    fflush(stderr);
    free(lines);
}

/* The privacy spent, from summary.json, when the job had differential privacy. */
static void print_privacy(const fl_job *job) {
    char path[FL_JOB_PATH_MAX + 32], *text = NULL;
    size_t len;
    snprintf(path, sizeof path, "%s/summary.json", job->output);
    if (!job->dp || fl_read_file(path, &text, &len, 1 << 20, NULL)) return;
    cJSON *summary = cJSON_Parse(text);
    free(text);
    const cJSON *eps = cJSON_GetObjectItem(summary, "epsilon");
    const cJSON *stopped = cJSON_GetObjectItem(summary, "stopped");
    if (cJSON_IsNumber(eps))
        fprintf(stderr, "fedllm run: privacy spent: epsilon %.3f at delta %g (%s-level DP%s)%s%s\n",
                eps->valuedouble, job->dp_delta, job->dp == FL_DP_CLIENT ? "client" : "sample",
                job->secure_aggregation ? ", noise added by the clients under secure aggregation"
                                        : "",
                cJSON_IsString(stopped) ? "; stopped: " : "",
                cJSON_IsString(stopped) ? stopped->valuestring : "");
    cJSON_Delete(summary);
}

int cli_run(int argc, char **argv) {
    const char *path;
    fl_err err = {0};
    int rc = parse_job_args(argc, argv, NULL, 0, HELP_RUN, &path, &err);
    if (rc < 0) return 0;
    if (rc) return cli_fail("run", &err);
    fl_job job;
    if ((rc = load_job("run", path, NULL, &job))) return rc;
    int n = job.n_clients + 1;
    party *parties = calloc((size_t)n, sizeof *parties);
    if (!parties) return fl_job_free(&job), 4;
    long cores = fl_threads_available(); /* affinity and cgroup quota, not all online CPUs */
    int threads = (int)(cores / job.n_clients) > 1 ? (int)(cores / job.n_clients) : 1;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    for (int i = 0; i < n && !rc; i++) {
        snprintf(parties[i].name, sizeof parties[i].name, "%s",
                 i == 0 ? "server" : job.clients[i - 1].name);
        parties[i].pid = start_party(&job, path, parties[i].name, i == 0 ? 1 : threads, &err);
        if (parties[i].pid < 0) rc = err.code;
        parties[i].running = parties[i].pid > 0;
    }
    fprintf(stderr, "fedllm run %s: server and %d clients on this machine; files in %s\n", job.name,
            job.n_clients, job.output);
    int tty = isatty(2), drawn = 0, alive = n, stranded = 0;
    double server_done_at = 0;
    while (alive > 0) {
        struct timespec ts = {0, 300 * 1000 * 1000};
        nanosleep(&ts, NULL);
        for (int i = 0; i < n; i++) {
            int status;
            if (!parties[i].running || waitpid(parties[i].pid, &status, WNOHANG) != parties[i].pid)
                continue;
            parties[i].running = 0;
            parties[i].status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            alive--;
            if (i == 0) server_done_at = (double)time(NULL);
        }
        show(&job, parties, n, tty, &drawn);
        /* clients that stopped with an error do not come back here: with fewer than min_clients
         * left no round can complete, so the server is stopped rather than left to time out */
        int clients_running = 0, clients_failed = 0;
        for (int i = 1; i < n; i++) {
            clients_running += parties[i].running;
            clients_failed += !parties[i].running && parties[i].status != 0;
        }
        if (parties[0].running && clients_failed > 0 && clients_running < job.min_clients &&
            !stranded) {
            fprintf(stderr,
                    "fedllm run: %d client%s stopped with an error and %d still run%s, fewer "
                    "than min_clients %d: stopping the job\n",
                    clients_failed, clients_failed == 1 ? "" : "s", clients_running,
                    clients_running == 1 ? "s" : "", job.min_clients);
            for (int i = 0; i < n; i++)
                if (parties[i].running) kill(parties[i].pid, SIGTERM);
            stranded = 1;
        }
        /* clients get a while to finish after the server; then they are stopped */
        int late = server_done_at > 0 && (double)time(NULL) - server_done_at > 30;
        if (interrupted || late)
            for (int i = 0; i < n; i++)
                if (parties[i].running) kill(parties[i].pid, SIGTERM);
        if (interrupted) break;
    }
    while (wait(NULL) > 0) {
    }
    int failed = 0;
    for (int i = 0; i < n; i++)
        if (parties[i].status != 0 || interrupted) {
            fprintf(stderr, "fedllm run: %s %s (exit %d); its log: %s/%s/log\n", parties[i].name,
                    interrupted ? "stopped" : "failed", parties[i].status, job.output,
                    parties[i].name);
            failed = 1;
        }
    if (!failed) {
        fprintf(stderr, "fedllm run: done; summary in %s/summary.json, %s in %s/server/%s\n",
                job.output, job.fedkseed || job.offsite ? "model" : "adapter", job.output,
                job.fedkseed || job.offsite ? "model" : "adapter");
        print_privacy(&job);
    }
    free(parties);
    fl_job_free(&job);
    return rc ? rc : failed ? 1 : 0;
}
