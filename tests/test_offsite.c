/* test_offsite.c — offsite-tuning (algorithm: offsite_tuning) as a federated job with real
 * processes, on 8-block GPT-2 and LLaMA models made here (adapters 2 + 2, an emulator of 2 of the
 * 4 middle blocks):
 *
 *   1. the emulator's block indices (FATE-LLM's uniform drop) and the refusals of splits that do
 *      not fit;
 *   2. OT+ with two clients, every weight of the adapter blocks trained (GPT-2 and LLaMA): the job
 *      completes; no tensor of a dropped block appears in any outbox, the kept ones go to each
 *      client once; the server's model is the full model with the adapter blocks replaced by the
 *      last round's adapters, bit for bit, and every other block the full model's own;
 *   3. LoRA on the adapter blocks (LLaMA): the plugged model differs from the full model only in
 *      the adapter blocks;
 *   4. one data owner (aggregate: false): its adapters leave it only in the last round;
 *   5. a client killed mid-round under OT+ and started again: it has lost the emulator, asks for
 *      it, gets it again, and the job completes;
 *   6. the server killed after round 2 and resumed with --resume: the job completes.
 * Needs FEDLLM_BIN (set by ctest); skipped with a message without it. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fed/algo/algo.h"
#include "fedllm/fed.h"
#include "fedllm/fileio.h"
#include "fedllm/model.h"
#include "fedllm/safetensors.h"
#include "fedllm/tokenizer.h"
#include "testutil.h"

enum { L = 8 };
static const int EMULATOR[] = {0, 1, 2, 5, 6, 7}; /* kept: 2 + round(i * 3 / 1) for i = 0, 1 */
static const char *bin, *dir;

static const char *path_of(const char *name) {
    static char paths[8][1200];
    static int next;
    char *out = paths[next++ % 8];
    snprintf(out, sizeof paths[0], "%s/%s", dir, name);
    return out;
}

static void check_plan(void) {
    int layers[64], n = 0;
    fl_err err = {0};
    CHECK(!fl_offsite_plan(L, 2, 2, 2, layers, &n, &err), "%s", err.msg);
    CHECK(n == 6 && !memcmp(layers, EMULATOR, sizeof EMULATOR),
          "8 blocks, 2 of 4 kept: %d %d %d %d %d %d", layers[0], layers[1], layers[2], layers[3],
          layers[4], layers[5]);
    CHECK(!fl_offsite_plan(12, 2, 2, 4, layers, &n, &err), "%s", err.msg);
    int want12[] = {0, 1, 2, 4, 7, 9, 10, 11}; /* 2 + round(i * 7 / 3) */
    CHECK(n == 8 && !memcmp(layers, want12, sizeof want12), "12 blocks, 4 of 8: %d %d %d %d",
          layers[2], layers[3], layers[4], layers[5]);
    int want6[] = {0, 1, 2, 4,
                   7, 8, 9}; /* M 6, E 3: 2 + round(0, 2.5, 5) = 2, 4, 7 (half to even) */
    CHECK(!fl_offsite_plan(10, 2, 2, 3, layers, &n, &err) && n == 7 &&
              !memcmp(layers, want6, sizeof want6),
          "10 blocks, 3 of 6: %d %d %d", layers[2], layers[3], layers[4]);
    CHECK(!fl_offsite_plan(12, 2, 2, 8, layers, &n, &err) && n == 12, "the whole middle");
    for (int i = 0; i < 12; i++)
        CHECK(layers[i] == i, "the whole middle: block %d is %d", i, layers[i]);
    CHECK(fl_offsite_plan(8, 2, 2, 5, layers, &n, &err) == FL_EINPUT, "5 of 4 middle blocks");
    CHECK(fl_offsite_plan(4, 2, 2, 1, layers, &n, &err) == FL_EINPUT, "no middle");
    CHECK(fl_offsite_plan(8, 0, 2, 1, layers, &n, &err) == FL_EINPUT, "no bottom adapter");
}

/* An 8-block model of arch with fedllm's byte tokenizer, in DIR. */
static int make_model(fl_arch arch, const char *name) {
    fl_config cfg = tu_config(arch, 512, 32, 8, 64, 64, arch == FL_ARCH_GPT2);
    cfg.n_layer = L;
    cfg.eos_token_id = 256;
    fl_err err = {0};
    fl_model *m = fl_model_new_random(&cfg, 3, &err);
    int rc = m ? fl_mkdirs(path_of(name), &err) : -1;
    if (!rc) rc = fl_model_save(m, path_of(name), &err);
    if (!rc) rc = fl_tokenizer_save_bytes(path_of(name), &err);
    fl_model_free(m);
    CHECK(rc == 0, "%s: %s", name, err.msg);
    return rc;
}

static int setup(void) {
    if (make_model(FL_ARCH_GPT2, "gpt2") || make_model(FL_ARCH_LLAMA, "llama")) return -1;
    const char *names[4] = {"server", "alice", "bob", "eval"};
    const char *texts[3] = {
        "The Lord is my shepherd; I shall not want. He maketh me to lie down in green pastures.",
        "In the beginning God created the heaven and the earth. And the earth was without form.",
        "Vanity of vanities, saith the Preacher, vanity of vanities; all is vanity."};
    fl_err err = {0};
    fl_mkdirs(path_of("keys"), &err);
    for (int i = 0; i < 3; i++) {
        char prefix[1300];
        fl_keypair kp;
        snprintf(prefix, sizeof prefix, "%s/keys/%s", dir, names[i]);
        if (fl_keygen_pair(prefix, &kp, &err)) return -1;
    }
    for (int c = 1; c < 4; c++) {
        char name[64];
        snprintf(name, sizeof name, "%s.jsonl", names[c]);
        FILE *f = fopen(path_of(name), "w");
        if (!f) return -1;
        for (int i = 0; i < 24; i++)
            fprintf(f, "{\"text\": \"%s %d\"}\n", texts[c < 3 ? c - 1 : i % 3], i);
        fclose(f);
    }
    return 0;
}

/* Writes NAME.yaml for model, the clients (space-separated), rounds, steps, offsite: extras. */
static const char *write_job(const char *name, const char *model, const char *clients, int rounds,
                             int steps, const char *offsite_extra, const char *peft) {
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
             "algorithm: offsite_tuning\n"
             "model: {path: %s}\n"
             "offsite: {adapter_bottom: 2, adapter_top: 2, emulator_layers: 2%s}\n"
             "%s"
             "train: {rounds: %d, local_steps: %d, batch: 2, seq: 32, lr: 1e-3, seed: 5}\n"
             "aggregation: {round_deadline_s: 300}\n"
             "server: {address: \"ipc://%s.ipc\", key: keys/server, heartbeat_s: 0.2}\n"
             "clients:\n%s"
             "output: runs/%s\n",
             name, model, offsite_extra, peft, rounds, steps, name, list, name);
    static char path[1300];
    snprintf(path, sizeof path, "%s", path_of(file));
    fl_write_file_atomic(path, text, strlen(text), NULL);
    return path;
}

static pid_t start(const char *job, const char *party, const char *log, int resume) {
    char *server_argv[] = {(char *)bin, "server", (char *)job, resume ? "--resume" : NULL, NULL};
    char *client_argv[] = {(char *)bin, "client", (char *)job, "--name", (char *)party, NULL};
    return tu_spawn(strcmp(party, "server") ? client_argv : server_argv, path_of(log));
}

static int run_job(const char *job, const char *name) {
    char *argv[] = {(char *)bin, "run", (char *)job, NULL};
    char log[128];
    snprintf(log, sizeof log, "%s.out", name);
    int status = tu_wait_exit(tu_spawn(argv, path_of(log)), 300);
    CHECK(status == 0, "%s: fedllm run exited %d (see %s/%s)", name, status, dir, log);
    return status;
}

/* The block index of a tensor name, or -1. */
static int block_of(const char *name) {
    const char *m = strstr(name, ".h.");
    if (!m) m = strstr(name, ".layers.");
    if (!m) return -1;
    m = strchr(m + 1, '.') + 1;
    return atoi(m);
}

/* name with its block index replaced by block. */
static void with_block(const char *name, int block, char *out, size_t size) {
    const char *m = strstr(name, ".h.");
    if (!m) m = strstr(name, ".layers.");
    const char *digits = strchr(m + 1, '.') + 1, *tail = strchr(digits, '.');
    snprintf(out, size, "%.*s%d%s", (int)(digits - name), name, block, tail);
}

/* Counts, over the server's outbox, the tensors of each block sent to client (NULL: any). */
static void blocks_sent(const char *name, const char *client, int *count) {
    char path[256];
    snprintf(path, sizeof path, "runs/%s/server/outbox.jsonl", name);
    memset(count, 0, L * sizeof *count);
    char *text = tu_slurp(path_of(path));
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "name");
        const cJSON *peer = cJSON_GetObjectItemCaseSensitive(j, "peer");
        if (cJSON_IsString(n) && cJSON_IsString(peer) &&
            (!client || !strcmp(peer->valuestring, client))) {
            int b = block_of(n->valuestring);
            if (b >= 0 && b < L) count[b]++;
        }
        cJSON_Delete(j);
    }
    free(text);
}

/* Compares the server's plugged model with the full model: blocks outside adapters equal, and
 * (full training) the adapter blocks equal the last checkpoint's adapters. */
static void check_plug_in(const char *name, const char *model, int rounds, int lora) {
    char path[256];
    fl_err err = {0};
    snprintf(path, sizeof path, "runs/%s/server/model", name);
    fl_model *plugged = fl_model_load(path_of(path), &err),
             *full = fl_model_load(path_of(model), &err);
    CHECK(plugged && full, "%s: %s", name, err.msg);
    if (!plugged || !full) return fl_model_free(plugged), fl_model_free(full);
    fl_st_file ck = {0};
    int have_ck = 0;
    if (!lora) {
        snprintf(path, sizeof path, "runs/%s/server/checkpoint/adapters-%05d.safetensors", name,
                 rounds);
        have_ck = fl_st_open(&ck, path_of(path), &err) == 0;
        CHECK(have_ck, "%s: the last round's adapters: %s", name, err.msg);
    }
    const fl_params *p = fl_model_params(plugged), *f = fl_model_params(full);
    int same_frozen = 1, changed_adapter = 0, equal_ck = 1;
    for (int v = 0; v < p->n_views; v++) {
        const fl_view *view = &p->views[v];
        const float *a = p->data + view->offset, *b = fl_params_get(f, view->name);
        int block = block_of(view->name), adapter = block == 0 || block == 1 || block >= L - 2;
        int same = b && !memcmp(a, b, view->numel * sizeof *a);
        if (!adapter)
            same_frozen &= same;
        else
            changed_adapter |= !same;
        if (adapter && have_ck) { /* the model's block b is the emulator's block emu */
            int emu = block < 2 ? block : block - (L - 6);
            char ename[FL_VIEW_NAME_MAX];
            with_block(view->name, emu, ename, sizeof ename);
            const fl_st_tensor *t = fl_st_find(&ck, ename);
            float *want = t ? malloc(t->numel * sizeof *want) : NULL;
            equal_ck &= t && t->numel == view->numel && !fl_st_to_f32(t, want, &err) &&
                        !memcmp(want, a, view->numel * sizeof *a);
            free(want);
        }
    }
    CHECK(same_frozen, "%s: a block outside the adapters differs from the full model's", name);
    CHECK(changed_adapter, "%s: the adapter blocks did not change", name);
    if (have_ck)
        CHECK(equal_ck, "%s: the plugged adapter blocks are not the last round's adapters", name);
    if (have_ck) fl_st_close(&ck);
    fl_model_free(plugged);
    fl_model_free(full);
}

static void check_outbox(const char *name, const char *clients) {
    int any[L];
    blocks_sent(name, NULL, any);
    CHECK(any[3] == 0 && any[4] == 0,
          "%s: tensors of the dropped blocks 3 and 4 left the server "
          "(%d, %d)",
          name, any[3], any[4]);
    char copy[128];
    snprintf(copy, sizeof copy, "%s", clients);
    for (char *c = strtok(copy, " "); c; c = strtok(NULL, " ")) {
        int mine[L];
        blocks_sent(name, c, mine);
        /* kept middle blocks go once per client; adapter blocks every round and at the end */
        CHECK(mine[2] > 0 && mine[2] == mine[5], "%s: kept blocks to %s: %d and %d tensors", name,
              c, mine[2], mine[5]);
        CHECK(mine[0] > mine[2], "%s: the adapters did not go to %s every round", name, c);
    }
}

static void test_ot_plus(const char *model) {
    char name[32];
    snprintf(name, sizeof name, "ot-%s", model);
    const char *job = write_job(name, model, "alice bob", 3, 6, "", "");
    if (run_job(job, name)) return;
    check_outbox(name, "alice bob");
    check_plug_in(name, model, 3, 0);
    int kept[L];
    blocks_sent(name, "alice", kept);
    int per_tensor_block = kept[2]; /* the tensors of one block, sent once */
    CHECK(kept[0] == per_tensor_block * 4,
          "%s: block 0 went %d times its tensors, expected 4 "
          "(3 rounds and the end)",
          name, kept[0] / (per_tensor_block ? per_tensor_block : 1));
}

static void test_lora(void) {
    const char *job = write_job("ot-lora", "llama", "alice bob", 2, 6, ", trainable: lora",
                                "peft: {method: lora, r: 4, targets: [attn_q, attn_v]}\n");
    if (run_job(job, "ot-lora")) return;
    check_outbox("ot-lora", "alice bob");
    check_plug_in("ot-lora", "llama", 2, 1);
}

static void test_one_owner(void) {
    const char *job = write_job("ot-one", "gpt2", "alice", 3, 6, ", aggregate: false", "");
    if (run_job(job, "ot-one")) return;
    check_plug_in("ot-one", "gpt2", 3, 0);
    /* alice's outbox: adapter tensors only in round 3 */
    char *text = tu_slurp(path_of("runs/ot-one/alice/outbox.jsonl"));
    int early = 0, last = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "name");
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "round");
        if (cJSON_IsString(n) && block_of(n->valuestring) >= 0 && cJSON_IsNumber(r)) {
            if (r->valuedouble < 3)
                early++;
            else
                last++;
        }
        cJSON_Delete(j);
    }
    free(text);
    CHECK(early == 0 && last > 0,
          "one data owner sent %d adapter tensors before the last round, "
          "%d in it",
          early, last);
}

static void test_killed_client(void) {
    const char *job = write_job("ot-kill", "gpt2", "alice bob", 4, 400, "", "");
    pid_t server = start(job, "server", "ot-kill.server.out", 0);
    pid_t alice = start(job, "alice", "ot-kill.alice.out", 0);
    pid_t bob = start(job, "bob", "ot-kill.bob.out", 0);
    CHECK(
        tu_wait_for_text(path_of("runs/ot-kill/server/log"), "round 2: sent round_start to 2", 60),
        "round 2 never started");
    kill(bob, SIGKILL);
    waitpid(bob, NULL, 0);
    bob = start(job, "bob", "ot-kill.bob2.out", 0);
    int ok = tu_wait_exit(server, 300) == 0;
    ok &= tu_wait_exit(alice, 60) == 0;
    ok &= tu_wait_exit(bob, 60) == 0;
    CHECK(ok, "ot-kill: the job did not complete after bob was killed (see %s/ot-kill.*.out)", dir);
    char *log = tu_slurp(path_of("runs/ot-kill/server/log"));
    int sends = 0;
    for (const char *at = log; at && (at = strstr(at, "sending bob the emulator")); at++)
        sends++;
    CHECK(sends == 2,
          "bob got the emulator %d times, expected twice (before and after he was "
          "killed)",
          sends);
    free(log);
    check_plug_in("ot-kill", "gpt2", 4, 0);
}

static void test_resume(void) {
    const char *job = write_job("ot-res", "gpt2", "alice bob", 4, 20, "", "");
    pid_t server = start(job, "server", "ot-res.server.out", 0);
    pid_t alice = start(job, "alice", "ot-res.alice.out", 0);
    pid_t bob = start(job, "bob", "ot-res.bob.out", 0);
    CHECK(tu_wait_for_text(path_of("runs/ot-res/server/log"), "round 2 done", 60),
          "round 2 never completed");
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
    server = start(job, "server", "ot-res.server2.out", 1);
    int ok = tu_wait_exit(server, 300) == 0;
    ok &= tu_wait_exit(alice, 60) == 0;
    ok &= tu_wait_exit(bob, 60) == 0;
    CHECK(ok, "ot-res: the resumed job did not complete (see %s/ot-res.*.out)", dir);
    check_plug_in("ot-res", "gpt2", 4, 0);
}

int main(void) {
    check_plan();
    bin = getenv("FEDLLM_BIN");
    if (!bin || access(bin, X_OK) != 0) {
        printf("test_offsite: FEDLLM_BIN not set (ctest sets it); the federated part skipped\n");
        return tu_finish("test_offsite");
    }
    dir = tu_tmpdir("offsite");
    if (setup() != 0) return tu_finish("test_offsite");
    test_ot_plus("gpt2");
    test_ot_plus("llama");
    test_lora();
    test_one_owner();
    test_killed_client();
    test_resume();
    return tu_finish("test_offsite");
}
