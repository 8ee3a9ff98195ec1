/* federation.c — what federation costs on top of local training: `fedllm run` with 2, 4 and 8
 * clients on loopback, each round's overhead as a share of its time, bytes per client per round,
 * and the server's aggregation time.
 *
 *   overhead = (round time at the server - slowest client's local training) / round time
 *
 * Round time runs from the server's first round_start to the end of its round_end (sending the
 * adapter, collecting, aggregating, checkpointing); local training is what each client reports
 * for its fl_train_run. Rounds after the first are averaged (the first also waits for the clients
 * to load the model). No eval split, so evaluation is not counted either way.
 *
 * usage: bench/federation [--fedllm build/fedllm] [--preset gpt2-124m] [--clients 2,4,8]
 *        [--rounds 4] [--local-steps 4] [--batch 4] [--seq 128] [--rank 8] [--data FILE.jsonl]
 *        [--work DIR]
 * Needs data/text/fortunes.train.jsonl (scripts/fetch-text fortunes data/text) unless --data. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct opts {
    const char *fedllm, *preset, *clients, *data, *work;
    int rounds, local_steps, batch, seq, rank;
} opts;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "bench/federation: failed (%d): %s\n", rc, cmd);
    return rc;
}

/* Every line of a metrics.jsonl as cJSON objects (caller frees the array). */
static cJSON *read_lines(const char *path) {
    FILE *f = fopen(path, "r");
    cJSON *all = cJSON_CreateArray();
    char *line = NULL;
    size_t cap = 0;
    while (f && getline(&line, &cap, f) > 0) {
        cJSON *o = cJSON_Parse(line);
        if (o) cJSON_AddItemToArray(all, o);
    }
    free(line);
    if (f) fclose(f);
    return all;
}

static double num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItem(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* The line of `round` in a metrics array, or NULL. */
static const cJSON *round_line(const cJSON *lines, int round) {
    const cJSON *o;
    cJSON_ArrayForEach(o, lines) {
        if (cJSON_GetObjectItem(o, "round") && (int)num(o, "round") == round &&
            !cJSON_GetObjectItem(o, "final"))
            return o;
    }
    return NULL;
}

static int run_one(const opts *o, int n, int port) {
    if (n < 1 || n > 1000) return fprintf(stderr, "bench/federation: %d clients?\n", n), 1;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/c%d", o->work, n);
    if (sh("rm -rf '%s' && mkdir -p '%s/keys'", dir, dir)) return 1;
    if (sh("'%s' keygen --out '%s/keys/server' >/dev/null", o->fedllm, dir)) return 1;
    char job[1200];
    snprintf(job, sizeof job, "%s/job.yaml", dir);
    FILE *f = fopen(job, "w");
    if (!f) return 1;
    fprintf(f,
            "job: bench%d\nmodel: {path: ../model}\n"
            "peft: {method: lora, r: %d, alpha: %d, targets: [attn_q, attn_v]}\n"
            "train: {rounds: %d, local_steps: %d, batch: %d, seq: %d, lr: 0.0003}\n"
            "aggregation: {method: fedavg, min_clients: %d, round_deadline_s: 3600}\n"
            "server: {address: \"tcp://127.0.0.1:%d\", key: keys/server}\nclients:\n",
            n, o->rank, 2 * o->rank, o->rounds, o->local_steps, o->batch, o->seq, n, port);
    for (int c = 0; c < n; c++) {
        if (sh("'%s' keygen --out '%s/keys/c%d' >/dev/null", o->fedllm, dir, c)) return 1;
        fprintf(f, "  - {name: c%d, key: keys/c%d, train: %s}\n", c, c, o->data);
    }
    fprintf(f, "output: runs\n");
    fclose(f);
    if (sh("'%s' run '%s' >'%s/run.log' 2>&1", o->fedllm, job, dir)) return 1;
    char path[1400];
    snprintf(path, sizeof path, "%s/runs/server/metrics.jsonl", dir);
    cJSON *server = read_lines(path), **clients = calloc((size_t)n, sizeof *clients);
    for (int c = 0; c < n; c++) {
        snprintf(path, sizeof path, "%s/runs/c%d/metrics.jsonl", dir, c);
        clients[c] = read_lines(path);
    }
    double overhead = 0, round_s = 0, train_s = 0, bytes = 0, agg = 0;
    int counted = 0;
    for (int r = 2; r <= o->rounds; r++) { /* rounds count from 1; the first warms up */
        const cJSON *s = round_line(server, r);
        if (!s) continue;
        double slowest = 0, b = 0;
        for (int c = 0; c < n; c++) {
            const cJSON *l = round_line(clients[c], r);
            double t = num(l, "seconds_training");
            slowest = t > slowest ? t : slowest;
            b += num(l, "bytes_sent") + num(l, "bytes_received");
        }
        double total = num(s, "seconds");
        overhead += (total - slowest) / total;
        round_s += total;
        train_s += slowest;
        bytes += b / n;
        agg += num(s, "seconds_aggregating");
        counted++;
    }
    if (counted)
        printf("| %d | %.2f | %.2f | %.2f%% | %.2f MB | %.2f ms |\n", n, round_s / counted,
               train_s / counted, 100 * overhead / counted, bytes / counted / 1e6,
               1e3 * agg / counted);
    else
        printf("| %d | (no rounds measured: see %s/run.log) |\n", n, dir);
    fflush(stdout);
    cJSON_Delete(server);
    for (int c = 0; c < n; c++)
        cJSON_Delete(clients[c]);
    free(clients);
    return counted ? 0 : 1;
}

int main(int argc, char **argv) {
    opts o = {"build/fedllm",
              "gpt2-124m",
              "2,4,8",
              "data/text/fortunes.train.jsonl",
              "/tmp/fedllm-bench-federation",
              4,
              4,
              4,
              128,
              8};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--fedllm"))
            o.fedllm = v;
        else if (!strcmp(k, "--preset"))
            o.preset = v;
        else if (!strcmp(k, "--clients"))
            o.clients = v;
        else if (!strcmp(k, "--data"))
            o.data = v;
        else if (!strcmp(k, "--work"))
            o.work = v;
        else if (!strcmp(k, "--rounds"))
            o.rounds = atoi(v);
        else if (!strcmp(k, "--local-steps"))
            o.local_steps = atoi(v);
        else if (!strcmp(k, "--batch"))
            o.batch = atoi(v);
        else if (!strcmp(k, "--seq"))
            o.seq = atoi(v);
        else if (!strcmp(k, "--rank"))
            o.rank = atoi(v);
        else {
            fprintf(stderr, "bench/federation: unknown option %s (see the file's comment)\n", k);
            return 2;
        }
    }
    char data[4096];
    if (!realpath(o.data, data)) {
        fprintf(stderr, "bench/federation: %s: not found (scripts/fetch-text fortunes data/text)\n",
                o.data);
        return 2;
    }
    o.data = data;
    if (sh("mkdir -p '%s' && rm -rf '%s/model' && '%s' init-model --arch %s --preset %s --out "
           "'%s/model' >/dev/null",
           o.work, o.work, o.fedllm, strncmp(o.preset, "llama", 5) ? "gpt2" : "llama", o.preset,
           o.work))
        return 1;
    printf("federation overhead, %s LoRA r%d on attn_q,attn_v, %d local steps of %dx%d per round, "
           "rounds 2..%d averaged, %ld cores\n\n",
           o.preset, o.rank, o.local_steps, o.batch, o.seq, o.rounds,
           sysconf(_SC_NPROCESSORS_ONLN));
    printf("| clients | round s | slowest client training s | overhead | bytes per client per "
           "round | aggregation |\n|---|---|---|---|---|---|\n");
    int rc = 0, port = 17700 + getpid() % 500;
    char list[256];
    snprintf(list, sizeof list, "%s", o.clients);
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save))
        rc |= run_one(&o, atoi(t), port++);
    return rc;
}
