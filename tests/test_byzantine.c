/* test_byzantine.c — one hostile party cannot end a job. Real runs on this machine: a `fedllm
 * server` and two honest `fedllm client` processes (alice, bob) over the CURVE transport, and
 * mallory, a client listed in the job but played by this program through the library's transport
 * and protocol, who answers every round with an update of 1e30 in every value claiming 1 sample.
 *
 *   1. rule mean with aggregation.max_update_norm: mallory's updates are rejected (the server log
 *      names mallory, the round, the norm and the bound; metrics.jsonl counts them), the job
 *      completes, the honest clients' losses stay finite and the adapter stays small;
 *   1b. the same bound with on_large_update: clip: mallory's updates are scaled down to it and
 *      weigh their one sample;
 *   2. rule median and no bound: mallory's updates are taken in and outvoted, with the same
 *      outcome; with two more honest clients (carol, dave) the same for krum, multi_krum, and
 *      trimmed_mean under FedAdam;
 *   3. a hostile server (this program) sends a global adapter holding NaN to a real client, which
 *      stops with an error naming the tensor rather than train on it.
 *
 * A control run without either defence (rule mean, no bound) shows the attack working: the first
 * round's mean is about 4e28 per value and the honest losses after it are not finite (or the job
 * fails). The unit tests of the rules are in test_aggregate.c. Needs
 * FEDLLM_BIN (set by ctest); skipped with a message without it. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fedllm/fed.h"
#include "fedllm/fileio.h"
#include "fedllm/protocol.h"
#include "fedllm/safetensors.h"
#include "fedllm/transport.h"
#include "testutil.h"

#define MAX_PAYLOAD ((size_t)64 << 20)

static const char *bin, *dir;
static const char *const honest[4] = {"alice", "bob", "carol", "dave"}; /* the real clients */

static const char *path_of(const char *name) {
    static char paths[8][1200];
    static int next;
    char *out = paths[next++ % 8];
    snprintf(out, sizeof paths[0], "%s/%s", dir, name);
    return out;
}

/* The model, keys and data every run shares. */
static int setup(void) {
    char *init[] = {(char *)bin, "init-model", "--arch", "llama",
                    "--preset",  "tiny",       "--out",  (char *)path_of("model"),
                    NULL};
    if (tu_wait_exit(tu_spawn(init, path_of("init.log")), 60) != 0) return -1;
    const char *names[6] = {"server", "alice", "bob", "carol", "dave", "mallory"};
    fl_err err = {0};
    fl_mkdirs(path_of("keys"), &err);
    for (int i = 0; i < 6; i++) {
        char prefix[1300];
        snprintf(prefix, sizeof prefix, "%s/keys/%s", dir, names[i]);
        fl_keypair kp;
        if (fl_keygen_pair(prefix, &kp, &err)) return -1;
    }
    const char *words = "The Lord is my shepherd; I shall not want. He maketh me to lie down in "
                        "green pastures: he leadeth me beside the still waters.";
    for (int c = 0; c < 5; c++) {
        char name[64];
        snprintf(name, sizeof name, "%s.jsonl", names[c + 1]);
        FILE *f = fopen(path_of(name), "w");
        if (!f) return -1;
        for (int i = 0; i < 12; i++)
            fprintf(f, "{\"text\": \"%s %s %d\"}\n", names[c + 1], words, i);
        fclose(f);
    }
    return 0;
}

/* Writes NAME.yaml: n_honest of honest[] and mallory, 2 rounds, the given aggregation mapping's
 * contents. */
static const char *write_job(const char *name, const char *aggregation, int n_honest) {
    char file[128], text[4096], clients[1024] = "";
    snprintf(file, sizeof file, "%s.yaml", name);
    for (int c = 0; c < n_honest; c++) {
        size_t used = strlen(clients);
        snprintf(clients + used, sizeof clients - used,
                 "  - {name: %s, key: keys/%s, train: %s.jsonl, eval: %s.jsonl}\n", honest[c],
                 honest[c], honest[c], honest[c]);
    }
    snprintf(text, sizeof text,
             "job: %s\n"
             "model: {path: model}\n"
             "peft: {method: lora, r: 4, alpha: 8, targets: [attn_q, attn_v]}\n"
             "train: {rounds: 2, local_steps: 3, batch: 2, seq: 32, lr: 0.01}\n"
             "aggregation: {%s}\n"
             "server: {address: \"ipc://%s.ipc\", key: keys/server, heartbeat_s: 0.2}\n"
             "clients:\n%s"
             "  - {name: mallory, key: keys/mallory, train: mallory.jsonl}\n"
             "output: runs/%s\n",
             name, aggregation, name, clients, name);
    const char *path = path_of(file);
    fl_err err = {0};
    fl_write_file_atomic(path, text, strlen(text), &err);
    return path;
}

typedef struct mallory {
    fl_endpoint *ep;
    const fl_job *job;
    uint64_t seq;
    int updates; /* hostile updates sent */
} mallory;

static int mallory_send(mallory *m, fl_msg_type type, int64_t round, cJSON *meta, uint8_t *payload,
                        size_t len) {
    fl_msg msg;
    fl_msg_init(&msg, m->job->name, round, type, "mallory", ++m->seq);
    msg.meta = meta;
    msg.payload = payload;
    msg.payload_len = len;
    char *header = NULL;
    size_t header_len = 0;
    fl_err err = {0};
    int rc = fl_msg_encode_header(&msg, &header, &header_len, &err);
    if (!rc) rc = fl_endpoint_send(m->ep, NULL, header, header_len, payload, len, 5000, &err);
    free(header);
    fl_msg_free(&msg);
    return rc;
}

/* Plays mallory until the server ends the job (or timeout_s): every round_start is answered with
 * the adapter's names and shapes holding 1e30 everywhere, "samples": 1. */
static void play_mallory(const fl_job *job, double timeout_s, mallory *m) {
    fl_err err = {0};
    fl_keypair keys;
    char server_pub[41];
    m->job = job;
    const fl_job_client *me = fl_job_client_find(job, "mallory");
    CHECK(me && fl_key_load_pair(me->key, &keys, &err) == 0 &&
              fl_key_load_public(job->server_key, server_pub, &err) == 0,
          "mallory's keys: %s", err.msg);
    fl_model *model = fl_job_model(job, &err);
    CHECK(model != NULL, "mallory's model: %s", err.msg);
    m->ep = fl_endpoint_client(job->server_address, &keys, server_pub, 200, (size_t)64 << 20, &err);
    CHECK(m->ep != NULL, "mallory's endpoint: %s", err.msg);
    if (!model || !m->ep) {
        fl_model_free(model);
        return;
    }
    fl_params *adapter = fl_model_trainable(model);
    cJSON *meta = cJSON_CreateObject();
    cJSON_AddStringToObject(meta, "name", "mallory");
    cJSON_AddNumberToObject(meta, "samples", 1);
    mallory_send(m, FL_MSG_JOIN, -1, meta, NULL, 0);
    double until = tu_now_s() + timeout_s, last_sent = tu_now_s();
    int done = 0;
    while (!done && tu_now_s() < until) {
        char from[64], *header = NULL;
        uint8_t *payload = NULL;
        size_t header_len = 0, payload_len = 0;
        int rc = fl_endpoint_recv(m->ep, 200, MAX_PAYLOAD, from, &header, &header_len, &payload,
                                  &payload_len, &err);
        if (tu_now_s() - last_sent > 0.5) {
            mallory_send(m, FL_MSG_HEARTBEAT, -1, NULL, NULL, 0);
            last_sent = tu_now_s();
        }
        if (rc) continue;
        fl_msg msg = {0};
        rc = fl_msg_decode(&msg, header, header_len, payload, payload_len, job->name, &err);
        free(header);
        free(payload);
        if (rc) continue;
        const cJSON *final = cJSON_GetObjectItemCaseSensitive(msg.meta, "final");
        if (msg.type == FL_MSG_ROUND_START && msg.payload &&
            fl_params_from_payload(adapter, msg.payload, msg.payload_len, &err) == 0) {
            for (size_t i = 0; i < adapter->numel; i++)
                adapter->data[i] = 1e30f;
            uint8_t *bytes = NULL;
            size_t len = 0;
            fl_params_to_payload(adapter, &bytes, &len, &err);
            cJSON *um = cJSON_CreateObject();
            cJSON_AddNumberToObject(um, "samples", 1);
            cJSON_AddNumberToObject(um, "steps", 1);
            cJSON_AddNumberToObject(um, "train_loss", 0.01);
            if (mallory_send(m, FL_MSG_UPDATE, msg.round, um, bytes, len) == 0) m->updates++;
        } else if (msg.type == FL_MSG_ROUND_END && cJSON_IsTrue(final)) {
            mallory_send(m, FL_MSG_LEAVE, msg.round, cJSON_CreateObject(), NULL, 0);
            done = 1;
        } else if (msg.type == FL_MSG_ERROR || msg.type == FL_MSG_LEAVE) {
            done = 1;
        }
        fl_msg_free(&msg);
    }
    usleep(300000); /* let the LEAVE go out before the socket closes */
    fl_endpoint_free(m->ep);
    m->ep = NULL;
    fl_model_free(model);
}

/* The number value of key in every line of a JSONL file that has it; count of such lines. */
static int jsonl_numbers(const char *path, const char *key, double *out, int max) {
    char *text = tu_slurp(path);
    int n = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line && n < max;
         line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
        if (v) out[n++] = cJSON_IsNumber(v) ? v->valuedouble : NAN; /* null: NaN */
        cJSON_Delete(j);
    }
    free(text);
    return n;
}

/* The largest |value| in the server's final adapter (inf when unreadable). */
static double adapter_max_abs(const char *name) {
    char path[1300];
    snprintf(path, sizeof path, "%s/runs/%s/server/adapter/adapter_model.safetensors", dir, name);
    fl_st_file f;
    fl_err err = {0};
    if (fl_st_open(&f, path, &err)) return INFINITY;
    double worst = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        size_t n = f.tensors[i].numel;
        float *v = malloc(n * sizeof *v);
        if (v && fl_st_to_f32(&f.tensors[i], v, &err) == 0)
            for (size_t k = 0; k < n; k++)
                worst = isfinite(v[k]) ? fmax(worst, fabs(v[k])) : INFINITY;
        else
            worst = INFINITY;
        free(v);
    }
    fl_st_close(&f);
    return worst;
}

/* One job with alice and bob as real clients and mallory played here. expect_rejected: mallory's
 * updates are refused (1) or taken in (0), expect_clipped: scaled to the bound first (1); -1: the
 * control without a defence, where the attack
 * must be seen to work (else this test would prove nothing). */
static void run_with_mallory(const char *name, const char *aggregation, int n_honest,
                             int expect_rejected, int expect_clipped) {
    const char *job_path = write_job(name, aggregation, n_honest);
    fl_job job;
    fl_err err = {0};
    CHECK(fl_job_load(&job, job_path, 1, NULL, &err) == 0, "%s: %s", name, err.msg);
    char log[5][128];
    const char *party[5] = {"server", honest[0], honest[1], honest[2], honest[3]};
    pid_t pids[5];
    for (int i = 0; i <= n_honest; i++) {
        snprintf(log[i], sizeof log[i], "%s.%s.out", name, party[i]);
        char *server_argv[] = {(char *)bin, "server", (char *)job_path, NULL};
        char *client_argv[] = {(char *)bin, "client",         (char *)job_path,
                               "--name",    (char *)party[i], NULL};
        pids[i] = tu_spawn(i == 0 ? server_argv : client_argv, path_of(log[i]));
    }
    mallory m = {0};
    play_mallory(&job, 120, &m);
    int status[5], all_ok = 1;
    for (int i = 0; i <= n_honest; i++) {
        status[i] = tu_wait_exit(pids[i], 60);
        all_ok &= status[i] == 0;
    }
    if (expect_rejected < 0) {
        double loss[8];
        char path[1300];
        snprintf(path, sizeof path, "%s/runs/%s/alice/metrics.jsonl", dir, name);
        int n = jsonl_numbers(path, "eval_loss", loss, 8), finite = n == 3;
        for (int i = 0; i < n; i++)
            finite &= isfinite(loss[i]) != 0;
        CHECK(status[0] != 0 || !finite || adapter_max_abs(name) > 1e20,
              "%s: without a defence mallory did no harm; the test shows nothing", name);
        fl_job_free(&job);
        return;
    }
    CHECK(all_ok, "%s: the server exited %d, alice %d (see %s/%s.*.out)", name, status[0],
          status[1], dir, name);
    CHECK(m.updates == 2, "%s: mallory sent %d hostile updates, expected one a round", name,
          m.updates);
    char path[1300];
    snprintf(path, sizeof path, "%s/runs/%s/server/metrics.jsonl", dir, name);
    double rejected[8], clipped[8], clients[8];
    int rounds = jsonl_numbers(path, "rejected", rejected, 8);
    jsonl_numbers(path, "clipped", clipped, 8);
    jsonl_numbers(path, "clients", clients, 8);
    CHECK(rounds == 2, "%s: %d rounds in the server's metrics", name, rounds);
    for (int r = 0; r < rounds; r++)
        CHECK(rejected[r] == expect_rejected && clipped[r] == expect_clipped &&
                  clients[r] == n_honest + 1 - expect_rejected,
              "%s round %d: %g rejected, %g clipped, %g clients used", name, r, rejected[r],
              clipped[r], clients[r]);
    snprintf(path, sizeof path, "%s/runs/%s/server/log", dir, name);
    char *server_log = tu_slurp(path);
    if (expect_clipped)
        CHECK(server_log &&
                  strstr(server_log, "round 1: clipped the update of mallory: L2 norm ") &&
                  strstr(server_log, " is above aggregation.max_update_norm 10"),
              "%s: the server log does not give the clipping's reason", name);
    if (expect_rejected)
        CHECK(server_log &&
                  strstr(server_log, "round 1: rejected the update of mallory: L2 norm ") &&
                  strstr(server_log, "e+3") &&
                  strstr(server_log, " is above aggregation.max_update_norm 100"),
              "%s: the server log does not give the rejection's reason", name);
    free(server_log);
    for (int c = 0; c < n_honest; c++) {
        double loss[8];
        snprintf(path, sizeof path, "%s/runs/%s/%s/metrics.jsonl", dir, name, honest[c]);
        int n = jsonl_numbers(path, "eval_loss", loss, 8);
        int finite = n == 3; /* each round's global, then the final adapter */
        for (int i = 0; i < n; i++)
            finite &= isfinite(loss[i]) && loss[i] < 20;
        CHECK(finite, "%s: %s's eval losses are not all finite (%d lines, last %g)", name,
              honest[c], n, n ? loss[n - 1] : NAN);
    }
    /* an honest adapter after 6 steps of lr 0.01 is of order 1; mallory's would be 1e28 */
    double biggest = adapter_max_abs(name);
    CHECK(biggest < 10, "%s: the final adapter holds %g", name, biggest);
    fl_job_free(&job);
}

/* A job (named name) whose server this program plays, for alice alone: its endpoint and model.
 * Returns the job file's path, or NULL (reported) when something could not be set up. */
static const char *scripted_server(const char *name, fl_job *job, fl_endpoint **ep,
                                   fl_model **model) {
    const char *job_path =
        write_job(name, "method: fedavg, min_clients: 1, round_deadline_s: 30", 2);
    fl_err err = {0};
    *ep = NULL, *model = NULL;
    if (fl_job_load(job, job_path, 0, NULL, &err)) {
        CHECK(0, "%s: %s", name, err.msg);
        return NULL;
    }
    fl_keypair keys;
    fl_peer_key listed = {.name = "alice"};
    CHECK(fl_key_load_pair(job->server_key, &keys, &err) == 0 &&
              fl_key_load_public(job->clients[0].key, listed.public_z85, &err) == 0,
          "keys: %s", err.msg);
    *ep = fl_endpoint_server(job->server_address, &keys, &listed, 1, 200, (size_t)64 << 20, &err);
    *model = *ep ? fl_job_model(job, &err) : NULL;
    CHECK(*ep && *model, "%s's server: %s", name, err.msg);
    if (*ep && *model) return job_path;
    fl_endpoint_free(*ep);
    fl_model_free(*model);
    fl_job_free(job);
    return NULL;
}

/* This program plays the server and sends alice a global adapter with a NaN in it. */
static void run_hostile_server(void) {
    fl_job job;
    fl_endpoint *ep;
    fl_model *model;
    const char *job_path = scripted_server("nanserver", &job, &ep, &model);
    if (!job_path) return;
    fl_err err = {0};
    fl_params *adapter = fl_model_trainable(model);
    adapter->data[adapter->views[0].offset + 3] = NAN;
    uint8_t *bytes = NULL;
    size_t len = 0;
    fl_params_to_payload(adapter, &bytes, &len, &err);
    char *argv[] = {(char *)bin, "client", (char *)job_path, "--name", "alice", NULL};
    pid_t pid = tu_spawn(argv, path_of("nanserver.alice.out"));
    int sent = 0;
    double until = tu_now_s() + 60;
    while (!sent && tu_now_s() < until) {
        char from[64], *header = NULL;
        uint8_t *payload = NULL;
        size_t header_len = 0, payload_len = 0;
        if (fl_endpoint_recv(ep, 200, MAX_PAYLOAD, from, &header, &header_len, &payload,
                             &payload_len, &err))
            continue;
        fl_msg in = {0};
        int joined =
            fl_msg_decode(&in, header, header_len, payload, payload_len, job.name, &err) == 0 &&
            in.type == FL_MSG_JOIN;
        fl_msg_free(&in);
        free(header);
        free(payload);
        if (!joined) continue;
        fl_msg out;
        fl_msg_init(&out, job.name, 1, FL_MSG_ROUND_START, "server", 1);
        out.meta = cJSON_CreateObject();
        cJSON_AddStringToObject(out.meta, "session", "hostile");
        out.payload = bytes; /* borrowed */
        out.payload_len = len;
        char *h = NULL;
        size_t hl = 0;
        if (fl_msg_encode_header(&out, &h, &hl, &err) == 0 &&
            fl_endpoint_send(ep, "alice", h, hl, bytes, len, 5000, &err) == 0)
            sent = 1;
        free(h);
        out.payload = NULL;
        fl_msg_free(&out);
    }
    CHECK(sent, "the hostile server never got to send");
    int status = tu_wait_exit(pid, 60);
    char *out = tu_slurp(path_of("nanserver.alice.out"));
    CHECK(status > 0 && status < 128, "the client exited %d on a NaN global adapter", status);
    CHECK(out &&
              strstr(out, "the global adapter of round 1 from the server holds nan at "
                          "base_model.model.model.layers.0.") &&
              strstr(out, "[3]; refusing to train"),
          "the client's error does not say what was wrong:\n%s", out ? out : "(no output)");
    free(out);
    free(bytes);
    fl_endpoint_free(ep);
    fl_model_free(model);
    fl_job_free(&job);
}

/* Sends a round_start for round 1 (sequence seq) carrying bytes as the global adapter. */
static int send_round_start(fl_endpoint *ep, const fl_job *job, uint64_t seq, uint8_t *bytes,
                            size_t len, fl_err *err) {
    fl_msg out;
    fl_msg_init(&out, job->name, 1, FL_MSG_ROUND_START, "server", seq);
    out.meta = cJSON_CreateObject();
    cJSON_AddStringToObject(out.meta, "session", "repeat");
    out.payload = bytes; /* borrowed */
    out.payload_len = len;
    char *h = NULL;
    size_t hl = 0;
    int rc = fl_msg_encode_header(&out, &h, &hl, err);
    if (!rc) rc = fl_endpoint_send(ep, "alice", h, hl, bytes, len, 5000, err);
    free(h);
    out.payload = NULL;
    fl_msg_free(&out);
    return rc;
}

/* This program plays a server that lost alice's update (as a dropped connection loses it) and
 * asks for round 1 again in the same session: alice sends the same update again, byte for byte,
 * instead of refusing a round she has done (which stalled the round until its deadline). */
static void run_repeating_server(void) {
    fl_job job;
    fl_endpoint *ep;
    fl_model *model;
    const char *job_path = scripted_server("repeat", &job, &ep, &model);
    if (!job_path) return;
    fl_err err = {0};
    uint8_t *bytes = NULL;
    size_t len = 0;
    fl_params_to_payload(fl_model_trainable(model), &bytes, &len, &err);
    char *argv[] = {(char *)bin, "client", (char *)job_path, "--name", "alice", NULL};
    pid_t pid = tu_spawn(argv, path_of("repeat.alice.out"));
    uint8_t *first = NULL;
    size_t first_len = 0;
    int updates = 0, same = 0;
    uint64_t seq = 0;
    double until = tu_now_s() + 90;
    while (updates < 2 && tu_now_s() < until) {
        char from[64], *header = NULL;
        uint8_t *payload = NULL;
        size_t header_len = 0, payload_len = 0;
        if (fl_endpoint_recv(ep, 200, MAX_PAYLOAD, from, &header, &header_len, &payload,
                             &payload_len, &err))
            continue;
        fl_msg in = {0};
        int ok = fl_msg_decode(&in, header, header_len, payload, payload_len, job.name, &err) == 0;
        if (ok && in.type == FL_MSG_JOIN && seq == 0) {
            send_round_start(ep, &job, ++seq, bytes, len, &err);
        } else if (ok && in.type == FL_MSG_UPDATE && in.round == 1) {
            if (++updates == 1) { /* "lost": ask again */
                first = malloc(payload_len ? payload_len : 1);
                memcpy(first, payload, payload_len);
                first_len = payload_len;
                send_round_start(ep, &job, ++seq, bytes, len, &err);
            } else {
                same = payload_len == first_len && memcmp(payload, first, first_len) == 0;
            }
        }
        fl_msg_free(&in);
        free(header);
        free(payload);
    }
    kill(pid, SIGKILL);
    tu_wait_exit(pid, 10);
    char *out = tu_slurp(path_of("repeat.alice.out"));
    CHECK(updates == 2 && same, "asked twice for round 1, alice sent %d updates (%s):\n%s", updates,
          same ? "the same" : "not the same", out ? out : "(no output)");
    CHECK(out && strstr(out, "the server asks again; sending the same update") &&
              !strstr(out, "refused"),
          "alice's log does not say she sent the update again:\n%s", out ? out : "(no output)");
    free(out);
    free(first);
    free(bytes);
    fl_endpoint_free(ep);
    fl_model_free(model);
    fl_job_free(&job);
}

int main(void) {
    bin = getenv("FEDLLM_BIN");
    if (!bin) {
        printf("test_byzantine: FEDLLM_BIN not set (ctest sets it), skipping\n");
        return 0;
    }
    dir = tu_tmpdir("test_byzantine");
    if (chdir(dir) != 0 || setup() != 0) {
        CHECK(0, "setup in %s failed", dir);
        return tu_finish("test_byzantine");
    }
    signal(SIGPIPE, SIG_IGN);
    run_with_mallory("bound",
                     "method: fedavg, min_clients: 2, max_update_norm: 100, round_deadline_s: 30",
                     2, 1, 0);
    run_with_mallory("clip",
                     "method: fedavg, min_clients: 2, max_update_norm: 10, on_large_update: clip, "
                     "round_deadline_s: 30",
                     2, 0, 1);
    run_with_mallory("median", "method: fedavg, rule: median, min_clients: 3, round_deadline_s: 30",
                     2, 0, 0);
    /* four honest clients and mallory: the rules that need 2f + 3 = 5 updates, and a robust rule
     * under FedAdam */
    run_with_mallory("krum", "rule: krum, byzantine: 1, min_clients: 5, round_deadline_s: 30", 4, 0,
                     0);
    run_with_mallory("multikrum",
                     "rule: multi_krum, byzantine: 1, min_clients: 5, round_deadline_s: 30", 4, 0,
                     0);
    run_with_mallory("trimmed",
                     "method: fedadam, rule: trimmed_mean, trim_fraction: 0.2, min_clients: 5, "
                     "round_deadline_s: 30",
                     4, 0, 0);
    run_with_mallory("undefended", "method: fedavg, min_clients: 2, round_deadline_s: 2", 2, -1, 0);
    run_hostile_server();
    run_repeating_server();
    return tu_finish("test_byzantine");
}
