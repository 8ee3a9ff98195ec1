/* test_fedkseed.c — FedKSeed as a federated job (algorithm: fedkseed), with real processes on this
 * machine: `fedllm run`, `fedllm server` and `fedllm client` over the CURVE transport, and
 * mallory, a listed client played by this program through the library's transport.
 *
 *   1. a 3-client `fedllm run`: the eval loss falls over rounds; every client ends with the same
 *      model and the server's model directory is that model (its eval loss, computed here, equals
 *      the clients' to the last bit); the server's model equals the replay of its checkpoint's
 *      per-round sums bit for bit (incremental replay) and the one-shot replay of the summed seeds
 *      from the base model within the rounding bound of docs/fedkseed.md (full replay, the
 *      oracle); at k 4096 each client's messages of a round, both directions with headers, as the
 *      outboxes record them, are under 18 KB;
 *   2. mallory answers round 1 with a seed index that is not a candidate and round 2 with counts
 *      that do not match its steps: both are rejected and logged, the rounds complete with the
 *      honest clients;
 *   3. a client killed in round 3 and started again: it replays rounds 1..2 from the base model,
 * the job ends with every client holding the server's model;
 *   4. the server killed after round 2 and resumed with --resume: the clients reconnect, the job
 *      completes, and the model is the replay of the whole history.
 * The bad job files are test_job.c's; the zeroth-order core is test_zo.c's. Needs FEDLLM_BIN (set
 * by ctest); skipped with a message without it. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fedllm/fed.h"
#include "fedllm/fileio.h"
#include "fedllm/protocol.h"
#include "fedllm/safetensors.h"
#include "fedllm/tokenizer.h"
#include "fedllm/train.h"
#include "fedllm/transport.h"
#include "fedllm/zo.h"
#include "testutil.h"

#define K     4096
#define LR    2e-4
#define EPS   1e-3
#define STEPS 10
#define BATCH 2
#define SEQ   32
#define KB18  18000 /* the paper's bound, in bytes */

static const char *bin, *dir;

static const char *path_of(const char *name) {
    static char paths[8][1200];
    static int next;
    char *out = paths[next++ % 8];
    snprintf(out, sizeof paths[0], "%s/%s", dir, name);
    return out;
}

/* The model, keys and data every run shares: each client its own text, one eval file for all
 * (so that equal models give equal losses). */
static int setup(void) {
    char *init[] = {(char *)bin, "init-model", "--arch", "llama",
                    "--preset",  "tiny",       "--out",  (char *)path_of("model"),
                    NULL};
    if (tu_wait_exit(tu_spawn(init, path_of("init.log")), 60) != 0) return -1;
    const char *names[5] = {"server", "alice", "bob", "carol", "mallory"};
    const char *texts[4] = {
        "The Lord is my shepherd; I shall not want. He maketh me to lie down in green pastures.",
        "In the beginning God created the heaven and the earth. And the earth was without form.",
        "Blessed is the man that walketh not in the counsel of the ungodly, nor standeth in the "
        "way.",
        "Vanity of vanities, saith the Preacher, vanity of vanities; all is vanity."};
    fl_err err = {0};
    fl_mkdirs(path_of("keys"), &err);
    for (int i = 0; i < 5; i++) {
        char prefix[1300];
        fl_keypair kp;
        snprintf(prefix, sizeof prefix, "%s/keys/%s", dir, names[i]);
        if (fl_keygen_pair(prefix, &kp, &err)) return -1;
    }
    for (int c = 0; c < 5; c++) {
        char name[64];
        snprintf(name, sizeof name, "%s.jsonl", c < 4 ? names[c + 1] : "eval");
        FILE *f = fopen(path_of(name), "w");
        if (!f) return -1;
        for (int i = 0; i < 16; i++)
            fprintf(f, "{\"text\": \"%s %d\"}\n", texts[c < 4 ? c : (i % 4)], i);
        fclose(f);
    }
    return 0;
}

/* Writes NAME.yaml: the listed clients (a space-separated list), rounds, min_clients, deadline,
 * steps per round. */
static const char *write_job(const char *name, const char *clients, int rounds, int min_clients,
                             double deadline_s, int steps) {
    char file[128], text[4096], list[1024] = "", copy[256];
    snprintf(copy, sizeof copy, "%s", clients);
    for (char *c = strtok(copy, " "); c; c = strtok(NULL, " ")) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used,
                 "  - {name: %s, key: keys/%s, train: %s.jsonl, eval: eval.jsonl}\n", c, c, c);
    }
    snprintf(file, sizeof file, "%s.yaml", name);
    snprintf(text, sizeof text,
             "job: %s\n"
             "algorithm: fedkseed\n"
             "model: {path: model}\n"
             "train: {rounds: %d, batch: %d, seq: %d, seed: 5}\n"
             "fedkseed: {k: %d, eps: %g, lr: %g, steps_per_round: %d}\n"
             "aggregation: {min_clients: %d, round_deadline_s: %g}\n"
             "server: {address: \"ipc://%s.ipc\", key: keys/server, heartbeat_s: 0.2}\n"
             "clients:\n%s"
             "output: runs/%s\n",
             name, rounds, BATCH, SEQ, K, EPS, LR, steps, min_clients, deadline_s, name, list,
             name);
    static char path[1300]; /* the job of the test running now, kept apart from path_of's */
    snprintf(path, sizeof path, "%s", path_of(file));
    fl_write_file_atomic(path, text, strlen(text), NULL);
    return path;
}

/* The number value of key in each line of a JSONL file that has it (NaN for null). */
static int jsonl_numbers(const char *path, const char *key, double *out, int max) {
    char *text = tu_slurp(path);
    int n = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line && n < max;
         line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
        if (v) out[n++] = cJSON_IsNumber(v) ? v->valuedouble : NAN;
        cJSON_Delete(j);
    }
    free(text);
    return n;
}

/* Every client's final_eval_loss in runs/NAME/summary.json; returns how many are finite and all
 * equal (else 0). */
static int equal_final_losses(const char *name, const char *clients, double *loss) {
    char path[1300], copy[256];
    snprintf(path, sizeof path, "%s/runs/%s/summary.json", dir, name);
    char *text = tu_slurp(path);
    cJSON *summary = cJSON_Parse(text ? text : "");
    free(text);
    const cJSON *all = cJSON_GetObjectItemCaseSensitive(summary, "clients");
    int n = 0, same = 1;
    snprintf(copy, sizeof copy, "%s", clients);
    for (char *c = strtok(copy, " "); c; c = strtok(NULL, " ")) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(all, c),
                                                          "final_eval_loss");
        if (!cJSON_IsNumber(v))
            same = 0;
        else if (n++ == 0)
            *loss = v->valuedouble;
        else
            same &= v->valuedouble == *loss;
    }
    cJSON_Delete(summary);
    return same ? n : 0;
}

/* The eval loss of the model directory DIR on eval.jsonl, as a client computes it. */
/* The eval loss of a model directory, computed as the parties compute it: with one thread, as
 * tu_spawn starts them. The same weights then give the same bits; at another thread count they
 * need not (OpenBLAS's Haswell kernels, for one, split a product's sums differently at 1 and 2
 * threads), so the comparisons with the clients' losses can be exact. */
static double eval_loss_of(const char *model_dir) {
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    fl_err err = {0};
    fl_model *m = fl_model_load(model_dir, &err);
    fl_tokenizer *tok = NULL;
    fl_dataset ds = {0};
    double loss = NAN;
    long counted = 0;
    fl_data_spec spec = {.format = FL_DATA_TEXT};
    if (m && !fl_tokenizer_load_for_model(&tok, model_dir, fl_model_config(m)->vocab_size, &err) &&
        !fl_dataset_load(&ds, path_of("eval.jsonl"), &spec, tok, SEQ, &err))
        fl_evaluate(m, &ds, BATCH, &loss, &counted, &err);
    CHECK(isfinite(loss), "evaluating %s: %s", model_dir, err.msg);
    fl_dataset_free(&ds);
    fl_tokenizer_free(tok);
    fl_model_free(m);
    omp_set_num_threads(threads);
    return loss;
}

/* The server's model of job NAME against its checkpoint: the incremental replay of each round's
 * sums bit for bit, and the full replay (every candidate's total, once, from the base model) within
 * both replays' rounding bounds. */
static void check_replays(const char *name, int rounds) {
    char path[1300], hex[32];
    fl_err err = {0};
    snprintf(path, sizeof path, "%s/runs/%s/server/checkpoint/state.json", dir, name);
    char *text = tu_slurp(path);
    cJSON *state = cJSON_Parse(text ? text : "");
    free(text);
    const cJSON *master = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(state, "algorithm"), "master_seed");
    snprintf(hex, sizeof hex, "%s", cJSON_IsString(master) ? master->valuestring : "");
    cJSON_Delete(state);
    uint64_t seed = strtoull(hex, NULL, 16), candidates[K];
    CHECK(strlen(hex) == 16 && fl_zo_candidates(seed, K, candidates, &err) == 0,
          "%s: master seed '%s' in state.json", name, hex);
    snprintf(path, sizeof path, "%s/runs/%s/server/checkpoint/seeds-%05d.safetensors", dir, name,
             rounds);
    fl_st_file f;
    int rc = fl_st_open(&f, path, &err);
    CHECK(rc == 0, "%s: %s", name, err.msg);
    if (rc) return;
    const fl_st_tensor *len = fl_st_find(&f, "rounds"), *ix = fl_st_find(&f, "index");
    const fl_st_tensor *gs = fl_st_find(&f, "grad_sum");
    CHECK(len && ix && gs && len->shape[0] == rounds, "%s: the checkpoint's seed records", name);
    if (!len || !ix || !gs || len->shape[0] != rounds) {
        fl_st_close(&f);
        return;
    }
    size_t records = (size_t)ix->shape[0];
    int32_t *index = malloc(records * 4 + 4), *per_round = malloc((size_t)rounds * 4);
    float *grad = malloc(records * 4 + 4);
    fl_st_to_i32(ix, index, &err);
    fl_st_to_i32(len, per_round, &err);
    fl_st_to_f32(gs, grad, &err);
    fl_st_close(&f);
    fl_zo_spec spec = {.eps = (float)EPS, .lr = (float)LR, .weight_decay = 0, .grad_clip = -1};
    fl_model *inc = fl_model_load(path_of("model"), &err),
             *full = fl_model_load(path_of("model"), &err);
    snprintf(path, sizeof path, "%s/runs/%s/server/model", dir, name);
    fl_model *server = fl_model_load(path, &err);
    CHECK(inc && full && server, "%s: loading the models: %s", name, err.msg);
    if (!inc || !full || !server) goto done;
    fl_params *t0 = fl_zo_table(full), *ti = fl_zo_table(inc), *ts = fl_zo_table(server);
    size_t n = t0->numel;
    float *theta0 = malloc(n * sizeof *theta0), *z = malloc(n * sizeof *z);
    double *bound = calloc(n, sizeof *bound);
    memcpy(theta0, t0->data, n * sizeof *theta0);
    uint64_t seeds[K];
    double coeffs[K], totals[K] = {0};
    for (int r = 0, at = 0; r < rounds; r++) {
        for (int i = 0; i < per_round[r]; i++) {
            seeds[i] = candidates[index[at + i]];
            coeffs[i] = grad[at + i];
            totals[index[at + i]] += grad[at + i];
        }
        CHECK(fl_zo_apply(inc, seeds, coeffs, per_round[r], &spec, &err) == 0, "replay: %s",
              err.msg);
        at += per_round[r];
    }
    CHECK(memcmp(ti->data, ts->data, n * sizeof(float)) == 0,
          "%s: the server's model is not the incremental replay of its checkpoint bit for bit",
          name);
    /* the full replay: each candidate's total once (the oracle); A_i = sum over the records of
     * |lr g z_i|, M the updates of each path (docs/fedkseed.md "Replay") */
    int distinct = 0;
    for (int k = 0; k < K; k++)
        distinct += totals[k] != 0;
    CHECK(fl_zo_apply(full, candidates, totals, K, &spec, &err) == 0, "full replay: %s", err.msg);
    for (size_t r = 0; r < records; r++) {
        fl_zo_normal(z, n, candidates[index[r]], 0);
        for (size_t i = 0; i < n; i++)
            bound[i] += fabs(LR * grad[r] * z[i]);
    }
    double worst = 0;
    int m_total = (int)records + distinct;
    for (size_t i = 0; i < n; i++) {
        double tol =
            TU_FP32_U * (2.0 * m_total * (fabs(theta0[i]) + bound[i]) + 2 * bound[i]) * 1.01;
        double excess = fabs((double)ts->data[i] - t0->data[i]) / (tol > 0 ? tol : 1e-30);
        if (excess > worst) worst = excess;
    }
    CHECK(worst <= 1, "%s: incremental and full replay differ by %.3g of their rounding bound",
          name, worst);
    double moved = 0;
    for (size_t i = 0; i < n; i++)
        moved = fmax(moved, fabs((double)ts->data[i] - theta0[i]));
    CHECK(moved > 1e-6, "%s: the model did not move from the base (%g)", name, moved);
    free(theta0);
    free(z);
    free(bound);
done:
    free(index);
    free(per_round);
    free(grad);
    fl_model_free(inc);
    fl_model_free(full);
    fl_model_free(server);
}

/* The largest number of bytes one client's messages of a round took, both directions, headers
 * included: the MESSAGE lines of its outbox and of the server's outbox towards it. */
static long max_round_bytes(const char *name, const char *client, int rounds) {
    long per_round[64] = {0};
    for (int side = 0; side < 2; side++) {
        char path[1300];
        snprintf(path, sizeof path, "%s/runs/%s/%s/outbox.jsonl", dir, name,
                 side ? "server" : client);
        char *text = tu_slurp(path);
        for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
            cJSON *j = cJSON_Parse(line);
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "dtype");
            const cJSON *peer = cJSON_GetObjectItemCaseSensitive(j, "peer");
            const cJSON *round = cJSON_GetObjectItemCaseSensitive(j, "round");
            const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(j, "bytes");
            if (cJSON_IsString(type) && !strcmp(type->valuestring, "MESSAGE") &&
                cJSON_IsString(peer) && !strcmp(peer->valuestring, side ? client : "server") &&
                cJSON_IsNumber(round) && round->valueint >= 1 && round->valueint < 64)
                per_round[round->valueint] += (long)bytes->valuedouble;
            cJSON_Delete(j);
        }
        free(text);
    }
    long worst = 0;
    for (int r = 1; r <= rounds; r++) {
        CHECK(per_round[r] > 0, "%s: no messages of round %d in the outboxes", client, r);
        if (per_round[r] > worst) worst = per_round[r];
    }
    return worst;
}

static void test_run(void) {
    const char *clients = "alice bob carol";
    const char *job = write_job("zo", clients, 4, 3, 300, STEPS);
    char *argv[] = {(char *)bin, "run", (char *)job, NULL};
    int status = tu_wait_exit(tu_spawn(argv, path_of("zo.out")), 300);
    CHECK(status == 0, "fedllm run exited %d (see %s/zo.out)", status, dir);
    double eval[8];
    int n = jsonl_numbers(path_of("runs/zo/server/metrics.jsonl"), "eval_loss", eval, 8);
    CHECK(n == 4 && eval[3] < eval[0] - 0.005,
          "the eval loss does not fall over rounds: %d rounds, %g -> %g", n, eval[0],
          eval[n > 0 ? n - 1 : 0]);
    double final;
    CHECK(equal_final_losses("zo", clients, &final) == 3,
          "the clients do not end with the same model (summary.json)");
    double server = eval_loss_of(path_of("runs/zo/server/model"));
    CHECK(server == final, "the server's model evaluates to %.17g, the clients' to %.17g", server,
          final);
    CHECK(final < eval[0], "the final model (%g) is not better than round 1's (%g)", final,
          eval[0]);
    check_replays("zo", 4);
    for (int c = 0; c < 3; c++) {
        const char *name[3] = {"alice", "bob", "carol"};
        long bytes = max_round_bytes("zo", name[c], 4);
        CHECK(bytes > 0 && bytes < KB18, "%s: %ld bytes in one round (k %d), the bound is %d",
              name[c], bytes, K, KB18);
        if (c == 0) printf("largest round of alice: %ld bytes both ways (k %d)\n", bytes, K);
    }
    char *log = tu_slurp(path_of("runs/zo/alice/outbox.jsonl"));
    CHECK(log && !strstr(log, "model.layers") && strstr(log, "\"name\": \"grad_sum\""),
          "alice's outbox: only seeds and scalars leave her");
    free(log);
}

/* ---- mallory ----------------------------------------------------------------------------------
 */

static int send_as(fl_endpoint *ep, const char *job, fl_msg_type type, int64_t round, uint64_t *seq,
                   cJSON *meta, uint8_t *payload, size_t len) {
    fl_msg msg;
    fl_msg_init(&msg, job, round, type, "mallory", ++*seq);
    msg.meta = meta;
    msg.payload = payload;
    msg.payload_len = len;
    char *header = NULL;
    size_t header_len = 0;
    fl_err err = {0};
    int rc = fl_msg_encode_header(&msg, &header, &header_len, &err);
    if (!rc) rc = fl_endpoint_send(ep, NULL, header, header_len, payload, len, 5000, &err);
    free(header);
    fl_msg_free(&msg);
    return rc;
}

/* An update payload of n records. */
static uint8_t *records(const int32_t *index, const float *grad, const int32_t *count, int n,
                        size_t *len) {
    float amp[8];
    for (int i = 0; i < n; i++)
        amp[i] = fabsf(grad[i]);
    int64_t shape[1] = {n};
    uint8_t *out = NULL;
    fl_err err = {0};
    fl_st_writer *w = fl_st_writer_new(&err);
    fl_st_writer_add(w, "index", FL_DTYPE_I32, 1, shape, index, &err);
    fl_st_writer_add(w, "grad_sum", FL_DTYPE_F32, 1, shape, grad, &err);
    fl_st_writer_add(w, "amp_sum", FL_DTYPE_F32, 1, shape, amp, &err);
    fl_st_writer_add(w, "count", FL_DTYPE_I32, 1, shape, count, &err);
    fl_st_write_mem(w, &out, len, &err);
    fl_st_writer_free(w);
    return out;
}

static void test_mallory(void) {
    const char *job_path = write_job("zom", "alice bob mallory", 2, 2, 30, STEPS);
    fl_job job;
    fl_err err = {0};
    CHECK(fl_job_load(&job, job_path, 1, NULL, &err) == 0, "zom: %s", err.msg);
    pid_t pids[3];
    const char *party[3] = {"server", "alice", "bob"};
    for (int i = 0; i < 3; i++) {
        char log[64];
        snprintf(log, sizeof log, "zom.%s.out", party[i]);
        char *server_argv[] = {(char *)bin, "server", (char *)job_path, NULL};
        char *client_argv[] = {(char *)bin, "client",         (char *)job_path,
                               "--name",    (char *)party[i], NULL};
        pids[i] = tu_spawn(i == 0 ? server_argv : client_argv, path_of(log));
    }
    fl_keypair keys;
    char server_pub[41];
    CHECK(fl_key_load_pair(fl_job_client_find(&job, "mallory")->key, &keys, &err) == 0 &&
              fl_key_load_public(job.server_key, server_pub, &err) == 0,
          "mallory's keys: %s", err.msg);
    fl_endpoint *ep =
        fl_endpoint_client(job.server_address, &keys, server_pub, 200, (size_t)16 << 20, &err);
    uint64_t seq = 0;
    cJSON *meta = cJSON_CreateObject();
    cJSON_AddStringToObject(meta, "name", "mallory");
    cJSON_AddNumberToObject(meta, "samples", 16);
    send_as(ep, job.name, FL_MSG_JOIN, -1, &seq, meta, NULL, 0);
    int sent = 0, done = 0;
    double until = tu_now_s() + 90, last = tu_now_s();
    while (ep && !done && tu_now_s() < until) {
        char from[64], *header = NULL;
        uint8_t *payload = NULL;
        size_t header_len = 0, payload_len = 0;
        int rc = fl_endpoint_recv(ep, 200, (size_t)16 << 20, from, &header, &header_len, &payload,
                                  &payload_len, &err);
        if (tu_now_s() - last > 0.5) {
            send_as(ep, job.name, FL_MSG_HEARTBEAT, -1, &seq, NULL, NULL, 0);
            last = tu_now_s();
        }
        if (rc) continue;
        fl_msg msg = {0};
        rc = fl_msg_decode(&msg, header, header_len, payload, payload_len, job.name, &err);
        free(header);
        free(payload);
        if (rc) continue;
        if (msg.type == FL_MSG_ROUND_START) {
            /* round 1: a seed that is not a candidate; round 2: counts of 3 steps, meta says 10 */
            int32_t index[2] = {7, msg.round == 1 ? K + 904 : 11}, count[2] = {1, 2};
            float grad[2] = {0.5f, -0.25f};
            size_t len = 0;
            uint8_t *bytes = records(index, grad, count, 2, &len);
            cJSON *um = cJSON_CreateObject();
            cJSON_AddNumberToObject(um, "samples", 16);
            cJSON_AddNumberToObject(um, "steps", msg.round == 1 ? 3 : STEPS);
            cJSON_AddNumberToObject(um, "train_loss", 0.01);
            sent += send_as(ep, job.name, FL_MSG_UPDATE, msg.round, &seq, um, bytes, len) == 0;
        } else if (msg.type == FL_MSG_ROUND_END &&
                   cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(msg.meta, "final"))) {
            send_as(ep, job.name, FL_MSG_LEAVE, msg.round, &seq, cJSON_CreateObject(), NULL, 0);
            done = 1;
        } else if (msg.type == FL_MSG_ERROR || msg.type == FL_MSG_LEAVE) {
            done = 1;
        }
        fl_msg_free(&msg);
    }
    usleep(300000);
    fl_endpoint_free(ep);
    int ok = 1;
    for (int i = 0; i < 3; i++)
        ok &= tu_wait_exit(pids[i], 60) == 0;
    CHECK(ok && sent == 2, "zom: the job did not complete around mallory (%d updates sent)", sent);
    char *log = tu_slurp(path_of("runs/zom/server/log"));
    CHECK(log &&
              strstr(log, "round 1: rejected the update of mallory: seed index 5000 is not a "
                          "candidate (k = 4096)") &&
              strstr(log, "round 2: rejected the update of mallory: its counts sum to 3 steps, "
                          "its meta.steps says 10") &&
              strstr(log, "round 2 done: 2 updates, 0 dropped, 1 rejected"),
          "the server's log does not show mallory's updates rejected:\n%s", log ? log : "");
    free(log);
    double rejected[4];
    int n = jsonl_numbers(path_of("runs/zom/server/metrics.jsonl"), "rejected", rejected, 4);
    CHECK(n == 2 && rejected[0] == 1 && rejected[1] == 1, "metrics.jsonl counts %d rounds", n);
    fl_job_free(&job);
}

/* ---- a killed client, a killed server ---------------------------------------------------------
 */

static pid_t start(const char *job, const char *party, const char *log, int resume) {
    char *server_argv[] = {(char *)bin, "server", (char *)job, resume ? "--resume" : NULL, NULL};
    char *client_argv[] = {(char *)bin, "client", (char *)job, "--name", (char *)party, NULL};
    return tu_spawn(strcmp(party, "server") ? client_argv : server_argv, path_of(log));
}

static void test_killed_client(void) {
    const char *clients = "alice bob carol";
    /* rounds long enough to kill a client in: 600 steps take ~2 s here (under the sanitizers
     * ~10x longer, within the deadline); the log is polled every 50 ms */
    const char *job = write_job("zok", clients, 4, 2, 300, 600);
    pid_t server = start(job, "server", "zok.server.out", 0);
    pid_t alice = start(job, "alice", "zok.alice.out", 0);
    pid_t bob = start(job, "bob", "zok.bob.out", 0);
    pid_t carol = start(job, "carol", "zok.carol.out", 0);
    int mid =
        tu_wait_for_text(path_of("runs/zok/server/log"), "round 3: sent round_start to 3", 120);
    CHECK(mid, "round 3 never started");
    kill(bob, SIGKILL);
    waitpid(bob, NULL, 0);
    char *before = tu_slurp(path_of("runs/zok/server/log"));
    CHECK(before && !strstr(before, "round 3: update from bob"),
          "bob finished round 3 before he was killed: the rounds are too short for this test");
    free(before);
    bob = start(job, "bob", "zok.bob2.out", 0);
    int ok = tu_wait_exit(server, 300) == 0;
    ok &= tu_wait_exit(alice, 60) == 0;
    ok &= tu_wait_exit(bob, 60) == 0;
    ok &= tu_wait_exit(carol, 60) == 0;
    CHECK(ok, "zok: the job did not complete after bob was killed (see %s/zok.*.out)", dir);
    char *log = tu_slurp(path_of("zok.bob2.out"));
    CHECK(log && strstr(log, "fedkseed: replayed rounds 1..") && strstr(log, "from the base model"),
          "the restarted bob did not replay from the base model:\n%s", log ? log : "");
    free(log);
    double final;
    CHECK(equal_final_losses("zok", clients, &final) == 3,
          "after a rejoin the clients do not end with the same model");
    CHECK(eval_loss_of(path_of("runs/zok/server/model")) == final,
          "the rejoined job's server model is not the clients'");
    check_replays("zok", 4);
}

static void test_resume(void) {
    const char *clients = "alice bob carol";
    const char *job = write_job("zor", clients, 4, 3, 300, STEPS * 5);
    pid_t server = start(job, "server", "zor.server.out", 0);
    pid_t alice = start(job, "alice", "zor.alice.out", 0);
    pid_t bob = start(job, "bob", "zor.bob.out", 0);
    pid_t carol = start(job, "carol", "zor.carol.out", 0);
    CHECK(tu_wait_for_text(path_of("runs/zor/server/log"), "round 2 done", 90),
          "round 2 never completed");
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
    server = start(job, "server", "zor.server2.out", 1);
    int ok = tu_wait_exit(server, 300) == 0;
    ok &= tu_wait_exit(alice, 60) == 0;
    ok &= tu_wait_exit(bob, 60) == 0;
    ok &= tu_wait_exit(carol, 60) == 0;
    CHECK(ok, "zor: the resumed job did not complete (see %s/zor.*.out)", dir);
    char *log = tu_slurp(path_of("zor.server2.out"));
    CHECK(log && strstr(log, "4 rounds from round 3") && strstr(log, "round 4 done"),
          "the resumed server did not continue with round 3:\n%s", log ? log : "");
    free(log);
    double final;
    CHECK(equal_final_losses("zor", clients, &final) == 3,
          "after --resume the clients do not end with the same model");
    CHECK(eval_loss_of(path_of("runs/zor/server/model")) == final,
          "the resumed job's server model is not the clients'");
    check_replays("zor", 4);
}

int main(void) {
    bin = getenv("FEDLLM_BIN");
    if (!bin || access(bin, X_OK) != 0) {
        printf("test_fedkseed: FEDLLM_BIN not set (ctest sets it); skipped\n");
        return 0;
    }
    dir = tu_tmpdir("fedkseed");
    CHECK(setup() == 0, "setup (model, keys, data) in %s", dir);
    test_run();
    test_mallory();
    test_killed_client();
    test_resume();
    return tu_finish("test_fedkseed");
}
