/* test_job.c — the job file: every key read, defaults, paths made relative to the job file, all
 * problems of a bad file reported at once with their lines and in file order, the special cases
 * (steps vs epochs, fedprox's mu, algorithms, empty files, non-mappings), file checks per party,
 * and hostile files (deep nesting, huge scalars, thousands of unknown keys) that must end in an
 * error, quickly, without a crash. Fixtures: tests/fixtures/jobs/. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fedllm/data.h"
#include "fedllm/fileio.h"
#include "fedllm/job.h"
#include "fedllm/model.h"
#include "fedllm/train.h"
#include "testutil.h"

#define FIX "tests/fixtures/jobs/"

static const char *dir;

static const char *tmp_path(const char *name) {
    static char path[4][1200];
    static int next;
    char *out = path[next++ % 4];
    snprintf(out, sizeof path[0], "%s/%s", dir, name);
    return out;
}

static const char *write_tmp(const char *name, const char *text, size_t len) {
    const char *path = tmp_path(name);
    char folder[1200];
    snprintf(folder, sizeof folder, "%s", path);
    *strrchr(folder, '/') = 0;
    fl_mkdirs(folder, NULL);
    fl_write_file_atomic(path, text, len, NULL);
    return path;
}

static const char *write_job(const char *name, const char *text) {
    return write_tmp(name, text, strlen(text));
}

/* Loads path; returns the problems (caller frees; NULL on success) and the status in *rc. */
static char *load(fl_job *job, const char *path, int check_files, int *rc) {
    char *problems = NULL;
    fl_err err = {0};
    *rc = fl_job_load(job, path, check_files, &problems, &err);
    if (*rc != FL_OK && problems) {
        size_t first = strcspn(problems, "\n");
        CHECK(strlen(err.msg) == first && strncmp(err.msg, problems, first) == 0,
              "err.msg is the first problem: '%s'", err.msg);
    }
    return problems;
}

static int count_lines(const char *text) {
    int n = 0;
    for (; text && *text; text++)
        n += *text == '\n';
    return n;
}

/* Does line `index` (0-based) of problems start with "FILE:LINE: KEY" and contain `what`? */
static int problem_is(const char *problems, int index, const char *file, int line, const char *key,
                      const char *what) {
    const char *p = problems;
    for (int i = 0; p && i < index; i++) {
        p = strchr(p, '\n');
        if (p) p++;
    }
    if (!p || !*p) return 0;
    size_t len = strcspn(p, "\n");
    char head[1400], text[4096];
    snprintf(text, sizeof text, "%.*s", (int)len, p);
    snprintf(head, sizeof head, "%s:%d: %s", file, line, key);
    return strncmp(text, head, strlen(head)) == 0 && strstr(text, what) != NULL;
}

#define MIN_REST                                                                                   \
    "model: {path: m}\n"                                                                           \
    "server: {address: \"tcp://127.0.0.1:7600\", key: k/server}\n"                                 \
    "clients: [{name: a, key: k/a, train: a.jsonl}]\n"

static void test_full(void) {
    fl_job job;
    int rc;
    char *problems = load(&job, FIX "full.yaml", 0, &rc);
    CHECK(rc == FL_OK, "full.yaml: %s", problems ? problems : "");
    free(problems);
    if (rc != FL_OK) return;
    CHECK(!strcmp(job.path, FIX "full.yaml"), "%s", job.path);
    CHECK(!strcmp(job.name, "full-test.1") && !strcmp(job.algorithm, "pellm"), "name %s", job.name);
    CHECK(!strcmp(job.model_path, FIX "models/base") && job.model_path_line == 5, "%s",
          job.model_path);
    CHECK(job.lora_r == 16 && job.lora_alpha == 32.0f && fabsf(job.lora_dropout - 0.05f) < 1e-7f,
          "lora %d %g %g", job.lora_r, job.lora_alpha, job.lora_dropout);
    CHECK(!strcmp(job.lora_targets, "attn_q,attn_k,v_proj,mlp_down"), "%s", job.lora_targets);
    unsigned roles = 0;
    CHECK(fl_lora_parse_targets(job.lora_targets, FL_ARCH_LLAMA, &roles, NULL) == FL_OK &&
              roles == (1u << FL_ROLE_ATTN_Q | 1u << FL_ROLE_ATTN_K | 1u << FL_ROLE_ATTN_V |
                        1u << FL_ROLE_MLP_DOWN),
          "targets parse for llama");
    CHECK(!strcmp(job.lora_train_base, "norms,biases") &&
              job.lora_train_base_mask == (FL_TRAIN_NORMS | FL_TRAIN_BIASES),
          "%s", job.lora_train_base);
    CHECK(job.rounds == 5 && job.local_steps == 20 && job.local_epochs == 0, "rounds");
    CHECK(job.batch == 8 && job.seq == 256 && job.grad_accum == 2, "batch");
    CHECK(job.lr == 3.0e-4f && !strcmp(job.schedule, "cosine") && job.warmup_steps == 10, "lr");
    CHECK(job.weight_decay == 0.01f && job.clip == 0.5f && !strcmp(job.precision, "bf16"), "wd");
    CHECK(job.seed == UINT64_MAX, "seed %llu", (unsigned long long)job.seed);
    CHECK(job.data_format == FL_DATA_PROMPT_RESPONSE && !strcmp(job.prompt_field, "question") &&
              !strcmp(job.response_field, "answer") && !strcmp(job.text_field, "text") &&
              !strcmp(job.template_name, "chatml") && job.data_refuse_long == 1,
          "data");
    CHECK(job.agg == FL_AGG_FEDADAM && job.server_lr == 0.02f && job.beta1 == 0.8f &&
              job.beta2 == 0.95f && job.tau == 1e-4f && job.prox_mu == 0,
          "aggregation");
    CHECK(job.min_clients == 2 && job.round_deadline_s == 300 && job.fraction == 0.5 &&
              job.clients_per_round == 2,
          "min %d per round %d", job.min_clients, job.clients_per_round);
    CHECK(!job.secure_aggregation && !job.dp, "privacy");
    CHECK(!strcmp(job.server_address, "tcp://127.0.0.1:7600") &&
              !strcmp(job.server_bind, "tcp://*:7600") && job.heartbeat_s == 2.5,
          "%s %s", job.server_address, job.server_bind);
    CHECK(!strcmp(job.server_key, FIX "keys/server") && job.server_key_line == 40, "%s line %d",
          job.server_key, job.server_key_line);
    CHECK(job.n_clients == 4, "%d clients", job.n_clients);
    if (job.n_clients == 4) {
        const fl_job_client *a = &job.clients[0], *b = &job.clients[1];
        CHECK(!strcmp(a->name, "alice") && !strcmp(a->key, FIX "keys/alice") &&
                  !strcmp(a->train, FIX "data/alice.train.jsonl") &&
                  !strcmp(a->eval, FIX "data/alice.eval.jsonl") && a->line == 43,
              "alice");
        CHECK(!strcmp(b->name, "bob") && !strcmp(b->key, "/abs/keys/bob") && b->eval[0] == 0 &&
                  b->line == 44 && b->key_line == 45 && b->train_line == 46,
              "bob %s line %d", b->key, b->line);
        CHECK(fl_job_client_find(&job, "dave-4") == &job.clients[3], "find");
        CHECK(fl_job_client_find(&job, "carol_3") == &job.clients[2], "find");
        CHECK(fl_job_client_find(&job, "eve") == NULL && fl_job_client_find(&job, "server") == NULL,
              "find absent");
    }
    CHECK(!strcmp(job.output, FIX "out/full"), "%s", job.output);
    fl_job_free(&job);
    CHECK(job.clients == NULL && job.n_clients == 0, "freed");
    fl_job_free(&job); /* twice is fine */
}

static void test_minimal_defaults(void) {
    fl_job job;
    int rc;
    char *problems = load(&job, FIX "minimal.yaml", 0, &rc);
    CHECK(rc == FL_OK && problems == NULL, "minimal.yaml: %s", problems ? problems : "");
    free(problems);
    if (rc != FL_OK) return;
    CHECK(!strcmp(job.algorithm, "pellm"), "algorithm");
    CHECK(job.lora_r == 8 && job.lora_alpha == 16 && job.lora_dropout == 0 &&
              !strcmp(job.lora_targets, "attn_q,attn_v") && !job.lora_train_base[0] &&
              !job.lora_train_base_mask,
          "peft defaults");
    CHECK(job.rounds == 3 && job.local_epochs == 1 && job.local_steps == 0, "epochs");
    CHECK(job.batch == 4 && job.seq == 128 && job.grad_accum == 1 && job.lr == 1e-3f, "train");
    CHECK(!strcmp(job.schedule, "constant") && job.warmup_steps == 0 && job.weight_decay == 0 &&
              job.clip == 1.0f && !strcmp(job.precision, "fp32") && job.seed == 1 &&
              !job.schedule_per_round,
          "train defaults");
    CHECK(job.data_format == FL_DATA_TEXT && !strcmp(job.text_field, "text") &&
              !strcmp(job.prompt_field, "prompt") && !strcmp(job.response_field, "response") &&
              !job.template_name[0] && job.data_refuse_long == 0,
          "data defaults");
    CHECK(job.agg == FL_AGG_FEDAVG && job.server_lr == 1e-1f && job.beta1 == 0 &&
              job.beta2 == 0.99f && job.tau == 8e-2f && job.bias_correction == 1,
          "aggregation defaults");
    CHECK(job.min_clients == 2 && job.clients_per_round == 2 && job.round_deadline_s == 600 &&
              job.fraction == 1,
          "min_clients %d", job.min_clients);
    CHECK(job.heartbeat_s == 1 && !strcmp(job.server_bind, "tcp://*:7600"), "%s", job.server_bind);
    CHECK(!strcmp(job.output, FIX "runs/mini"), "default output %s", job.output);
    CHECK(!strcmp(job.clients[1].train, FIX "bob.jsonl") && !job.clients[1].eval[0], "bob");
    fl_job_free(&job);
}

/* Paths are relative to the job file's folder, absolute ones stay, ipc paths too. */
static void test_paths(void) {
    const char *path = write_job("sub/dir/job.yaml",
                                 "job: paths\n"
                                 "model: {path: ../models/base}\n"
                                 "train: {rounds: 1, local_steps: 1, lr: 1}\n"
                                 "server: {address: \"ipc://fed.sock\", key: /etc/fl/server}\n"
                                 "clients: [{name: a, key: k/a, train: /data/a.jsonl, eval: e}]\n"
                                 "output: out\n");
    fl_job job;
    int rc;
    char *problems = load(&job, path, 0, &rc);
    CHECK(rc == FL_OK, "%s", problems ? problems : "");
    free(problems);
    if (rc != FL_OK) return;
    char expect[1400];
    snprintf(expect, sizeof expect, "%s/sub/models/base", dir); /* sub/dir/.. folded */
    CHECK(!strcmp(job.model_path, expect), "%s", job.model_path);
    snprintf(expect, sizeof expect, "ipc://%s/sub/dir/fed.sock", dir);
    CHECK(!strcmp(job.server_address, expect) && !strcmp(job.server_bind, expect), "%s",
          job.server_address);
    CHECK(!strcmp(job.server_key, "/etc/fl/server"), "%s", job.server_key);
    snprintf(expect, sizeof expect, "%s/sub/dir/k/a", dir);
    CHECK(!strcmp(job.clients[0].key, expect), "%s", job.clients[0].key);
    CHECK(!strcmp(job.clients[0].train, "/data/a.jsonl"), "%s", job.clients[0].train);
    snprintf(expect, sizeof expect, "%s/sub/dir/out", dir);
    CHECK(!strcmp(job.output, expect), "%s", job.output);
    fl_job_free(&job);

    /* a host name binds the wildcard, localhost the loopback, an IPv6 literal itself */
    const char *hosts[][2] = {{"tcp://localhost:80", "tcp://127.0.0.1:80"},
                              {"tcp://[::1]:7600", "tcp://[::1]:7600"},
                              {"tcp://10.0.0.5:7600", "tcp://10.0.0.5:7600"}};
    for (int i = 0; i < 3; i++) {
        char text[1024];
        snprintf(text, sizeof text,
                 "job: h\nmodel: {path: m}\ntrain: {rounds: 1, local_steps: 1, lr: 1}\n"
                 "server: {address: \"%s\", key: k/s}\n"
                 "clients: [{name: a, key: k/a, train: a}]\n",
                 hosts[i][0]);
        problems = load(&job, write_job("host.yaml", text), 0, &rc);
        CHECK(rc == FL_OK && !strcmp(job.server_bind, hosts[i][1]), "%s: %s", hosts[i][0],
              problems ? problems : job.server_bind);
        free(problems);
        fl_job_free(&job);
    }
}

/* Several problems at once, each with its line, in file order. */
static void test_problems(void) {
    const char *f = FIX "problems.yaml";
    fl_job job;
    int rc;
    char *p = load(&job, f, 0, &rc);
    CHECK(rc == FL_EINPUT && p, "problems.yaml must fail");
    if (!p) return;
    struct {
        int line;
        const char *key, *what;
    } expect[] = {
        {4, "peft.r", "expected an integer from 1 to 4096, got 'eight'"},
        {5, "peft.dropout", "1.5 is out of range"},
        {6, "train.local_steps", "missing"},
        {8, "train.local_step", "unknown key (did you mean local_steps?)"},
        {10, "train.batch", "got a list"},
        {11, "server.key", "missing"},
        {12, "server.address", "port from 1 to 65535"},
        {15, "clients[1].evals", "unknown key (did you mean eval?)"},
        {15, "clients[1].name", "duplicate client name 'alice' (first at line 14)"},
        {16, "clients[2].name", "got 'bad name'"},
        {16, "clients[2].key", "same key as clients[0]"},
        {18, "aggregation.fraction", "0 is out of range"},
        {18, "aggregation.min_clients", "5 is out of range (expected an integer from 1 to 3)"},
    };
    int n = (int)(sizeof expect / sizeof expect[0]);
    CHECK(count_lines(p) == n, "%d problems:\n%s", count_lines(p), p);
    for (int i = 0; i < n; i++)
        CHECK(problem_is(p, i, f, expect[i].line, expect[i].key, expect[i].what),
              "problem %d: %d %s '%s' in\n%s", i, expect[i].line, expect[i].key, expect[i].what, p);
    CHECK(job.clients == NULL && job.n_clients == 0, "job left empty on failure");
    free(p);
    fl_job_free(&job);

    /* problems may be NULL, err too */
    CHECK(fl_job_load(&job, f, 0, NULL, NULL) == FL_EINPUT, "NULL problems and err");
}

/* Each file names one problem: its line, key and message. */
static void test_single_problems(void) {
    struct {
        const char *file;
        int line;
        const char *key, *what;
    } cases[] = {
        {FIX "syntax.yaml", 5, "", "YAML syntax error: mapping values are not allowed"},
        {FIX "both_steps.yaml", 6, "train.local_epochs", "not both"},
        {FIX "no_steps.yaml", 3, "train.local_steps", "local_steps or local_epochs"},
        {FIX "fedprox_no_mu.yaml", 4, "aggregation.mu", "fedprox needs mu"},
        {FIX "unknown_algorithm.yaml", 2, "algorithm", "unknown algorithm 'fedsgdx'"},
        {FIX "later_algorithm.yaml", 2, "algorithm", "fedipr is not available yet"},
        {FIX "empty.yaml", 1, "", "empty job file"},
        {FIX "comments_only.yaml", 1, "", "empty job file"},
        {FIX "not_mapping.yaml", 1, "",
         "expected a mapping with job, model, train, server and "
         "clients, got a list"},
        {FIX "scalar.yaml", 1, "", "got 'just some text'"},
        {FIX "two_docs.yaml", 2, "", "a second YAML document"},
        {FIX "alias.yaml", 6, "", "aliases are not supported"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fl_job job;
        int rc;
        char *p = load(&job, cases[i].file, 0, &rc);
        CHECK(rc == FL_EINPUT && count_lines(p) == 1 &&
                  problem_is(p, 0, cases[i].file, cases[i].line, cases[i].key, cases[i].what),
              "%s: rc %d, expected line %d '%s', got:\n%s", cases[i].file, rc, cases[i].line,
              cases[i].what, p ? p : "(none)");
        free(p);
        fl_job_free(&job);
    }
    fl_job job;
    fl_err err = {0};
    char *p = NULL;
    CHECK(fl_job_load(&job, FIX "no-such-job.yaml", 0, &p, &err) == FL_EINPUT &&
              strstr(err.msg, "no-such-job.yaml: file not found") && p && count_lines(p) == 1 &&
              strstr(p, "file not found"),
          "missing job file: %s", err.msg);
    free(p);
}

/* Inline cases: one YAML text, the key and message of its one problem (line 1 unless given). */
static void test_types_and_rules(void) {
    struct {
        const char *yaml;
        int line;
        const char *key, *what;
    } cases[] = {
        {"job: t\ntrain: {rounds: \"3\", local_steps: 1, lr: 1}\n" MIN_REST, 2, "train.rounds",
         "expected an integer from 1 to 1000000, got '3'"},
        {"job: t\ntrain: {rounds: 3.5, local_steps: 1, lr: 1}\n" MIN_REST, 2, "train.rounds",
         "got '3.5'"},
        {"job: t\ntrain: {rounds: 0, local_steps: 1, lr: 1}\n" MIN_REST, 2, "train.rounds",
         "0 is out of range"},
        {"job: t\ntrain: {rounds: 99999999999999999999, local_steps: 1, lr: 1}\n" MIN_REST, 2,
         "train.rounds", "out of range"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 0}\n" MIN_REST, 2, "train.lr",
         "expected a number > 0"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: .inf}\n" MIN_REST, 2, "train.lr",
         "got '.inf'"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1e999}\n" MIN_REST, 2, "train.lr",
         "1e999 is out of range"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 0x10}\n" MIN_REST, 2, "train.lr",
         "got '0x10'"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1}\n" MIN_REST, 2, "train.lr", "missing"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1, seed: -1}\n" MIN_REST, 2, "train.seed",
         "got '-1'"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1, schedule: linear}\n" MIN_REST, 2,
         "train.schedule", "expected one of: constant, cosine, got 'linear'"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1, schedule_over: epoch}\n" MIN_REST, 2,
         "train.schedule_over", "expected one of: job, round, got 'epoch'"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1, batch: 4096, seq: 4096}\n" MIN_REST, 2,
         "train.seq", "more than the 4194304 one pass may hold"},
        {"job: t\ntrain:\n  rounds:\n  local_steps: 1\n  lr: 1\n" MIN_REST, 3, "train.rounds",
         "missing value"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1, lr: 2}\n" MIN_REST, 2, "train.lr",
         "duplicate key (first at line 2)"},
        {"job: t\ntrain: [1, 2]\n" MIN_REST, 2, "train", "expected a mapping"},
        {"job: t\nprivacy: {secure_aggregation: yes}\ntrain: {rounds: 1, local_steps: 1, lr: "
         "1}\n" MIN_REST,
         2, "privacy.secure_aggregation", "expected true, false or a mapping, got 'yes'"},
        {"job: t\nprivacy: {dp: {level: client, clip: 1, noise_multiplier: 1, target_epsilon: "
         "8}}\ntrain: {rounds: 1, local_steps: 1, lr: 1}\n" MIN_REST,
         2, "privacy.dp", "give noise_multiplier or target_epsilon, not both"},
        {"job: t\nprivacy: {dp: {level: row, clip: 1, noise_multiplier: 1}}\ntrain: {rounds: 1, "
         "local_steps: 1, lr: 1}\n" MIN_REST,
         2, "privacy.dp.level", "expected one of: client, sample"},
        {"job: t\npeft: {targets: [attn_q, foo]}\ntrain: {rounds: 1, local_steps: 1, lr: "
         "1}\n" MIN_REST,
         2, "peft.targets", "'foo' is neither a LoRA role"},
        {"job: t\npeft: {targets: []}\ntrain: {rounds: 1, local_steps: 1, lr: 1}\n" MIN_REST, 2,
         "peft.targets", "at least 1 name"},
        {"job: t\npeft: {train_base: [norms, heads]}\ntrain: {rounds: 1, local_steps: 1, lr: "
         "1}\n" MIN_REST,
         2, "peft.train_base", "expected norms or biases, got 'heads'"},
        {"job: t\npeft: {method: prefix}\ntrain: {rounds: 1, local_steps: 1, lr: 1}\n" MIN_REST, 2,
         "peft.method", "expected one of: lora"},
        {"job: t\ndata: {format: text, prompt: q}\ntrain: {rounds: 1, local_steps: 1, lr: "
         "1}\n" MIN_REST,
         2, "data.prompt", "only used with format: prompt_response"},
        {"job: t\ndata: {format: prompt_response, template: vicuna}\ntrain: {rounds: 1, "
         "local_steps: 1, lr: 1}\n" MIN_REST,
         2, "data.template", "plain, chatml, llama-2, llama-3"},
        {"job: t\ndata: {format: prompt_response, truncate: \"yes\"}\ntrain: {rounds: 1, "
         "local_steps: 1, lr: 1}\n" MIN_REST,
         2, "data.truncate", "expected true or false"},
        {"job: t\ndata: {format: text, truncate: true}\ntrain: {rounds: 1, local_steps: 1, lr: "
         "1}\n" MIN_REST,
         2, "data.truncate", "only used with format: prompt_response"},
        {"job: t\naggregation: {method: fedavg, mu: 0.1}\ntrain: {rounds: 1, local_steps: 1, lr: "
         "1}\n" MIN_REST,
         2, "aggregation.mu", "only used with method: fedprox"},
        {"job: t\naggregation: {method: fedprox, beta1: 0.5, mu: 0.1}\ntrain: {rounds: 1, "
         "local_steps: 1, lr: 1}\n" MIN_REST,
         2, "aggregation.beta1", "only used with method: fedadam or fedyogi"},
        {"job: t\naggregation: {method: fedyogi, beta2: 1}\ntrain: {rounds: 1, local_steps: 1, "
         "lr: 1}\n" MIN_REST,
         2, "aggregation.beta2", "expected a number in [0, 1)"},
        {"job: t\naggregation: {method: fedprocs, mu: 0.1}\ntrain: {rounds: 1, local_steps: 1, "
         "lr: 1}\n" MIN_REST,
         2, "aggregation.method", "got 'fedprocs'"},
        {"job: t\ndata: {format: prompt-response, prompt: q}\ntrain: {rounds: 1, local_steps: 1, "
         "lr: 1}\n" MIN_REST,
         2, "data.format", "expected one of: text, prompt_response, got 'prompt-response'"},
        {"job: bad/name\ntrain: {rounds: 1, local_steps: 1, lr: 1}\n" MIN_REST, 1, "job",
         "got 'bad/name'"},
        {"job: ..\ntrain: {rounds: 1, local_steps: 1, lr: 1}\n" MIN_REST, 1, "job", "got '..'"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1}\nmodel: {path: m}\nserver: {address: "
         "\"udp://h:1\", key: k/s}\nclients: [{name: a, key: k/a, train: a}]\n",
         4, "server.address", "expected tcp://HOST:PORT or ipc://PATH, got 'udp://h:1'"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1}\nmodel: {path: m}\nserver: {address: "
         "\"tcp://*:7600\", key: k/s}\nclients: [{name: a, key: k/a, train: a}]\n",
         4, "server.address", "got 'tcp://*:7600'"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1}\nmodel: {path: m}\nserver: {address: "
         "\"tcp://h\", key: k/s}\nclients: [{name: a, key: k/a, train: a}]\n",
         4, "server.address", "no port"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1}\nmodel: {path: m}\nserver: {address: "
         "\"tcp://h:1\", key: k/s}\nclients: [{name: server, key: k/a, train: a}]\n",
         5, "clients[0].name", "'server' names the server"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1}\nmodel: {path: m}\nserver: {address: "
         "\"tcp://h:1\", key: k/s}\nclients: [{name: a, key: k/s, train: a}]\n",
         5, "clients[0].key", "same key as server.key (line 4)"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1}\nmodel: {path: m}\nserver: {address: "
         "\"tcp://h:1\", key: k/s.pub}\nclients: [{name: a, key: k/a, train: a}]\n",
         4, "server.key", "without .pub or .key, got 'k/s.pub'"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1}\nmodel: {path: m}\nserver: {address: "
         "\"tcp://h:1\", key: k/s}\nclients: []\n",
         5, "clients", "0 clients (expected 1 to 4096)"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1}\nmodel: {path: m}\nserver: {address: "
         "\"tcp://h:1\", key: k/s}\nclients: [{name: a, train: a}]\n",
         5, "clients[0].key", "missing"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1}\nmodel: m\nserver: {address: "
         "\"tcp://h:1\", key: k/s}\nclients: [{name: a, key: k/a, train: a}]\n",
         3, "model", "expected a mapping {path: DIR}"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1}\nmodel: {path: m}\nserver: {address: "
         "\"tcp://h:1\", key: \"\"}\nclients: [{name: a, key: k/a, train: a}]\n",
         4, "server.key", "got an empty string"},
        {"job: t\ntrain:\n\trounds: 1\n" MIN_REST, 3, "", "tabs are not allowed for indentation"},
        {"job: \"a\\0b\"\ntrain: {rounds: 1, local_steps: 1, lr: 1}\n" MIN_REST, 1, "job",
         "contains a NUL character"},
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1}\n? [a, b]\n: c\n" MIN_REST, 3, "",
         "a key must be a plain name, got a list"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_job("case.yaml", cases[i].yaml);
        fl_job job;
        int rc;
        char *p = load(&job, path, 0, &rc);
        CHECK(rc == FL_EINPUT && count_lines(p) == 1 &&
                  problem_is(p, 0, path, cases[i].line, cases[i].key, cases[i].what),
              "case %zu: expected line %d %s '%s', got rc %d:\n%s", i, cases[i].line, cases[i].key,
              cases[i].what, rc, p ? p : "(none)");
        free(p);
        fl_job_free(&job);
    }

    /* a typo of a required key: the unknown key and the missing one, both on line 1 */
    const char *typo = write_job("typo.yaml", "jobs: t\ntrain: {rounds: 1, local_steps: 1, lr: "
                                              "1}\n" MIN_REST);
    fl_job typo_job;
    int typo_rc;
    char *typo_p = load(&typo_job, typo, 0, &typo_rc);
    CHECK(typo_rc == FL_EINPUT && count_lines(typo_p) == 2 &&
              problem_is(typo_p, 0, typo, 1, "jobs", "unknown key (did you mean job?)") &&
              problem_is(typo_p, 1, typo, 1, "job", "missing"),
          "typo:\n%s", typo_p ? typo_p : "(none)");
    free(typo_p);

    /* accepted forms: comma strings for lists, integers for floats, fedprox with mu, HF names */
    const char *good[] = {
        "job: t\npeft: {targets: \"attn_q, attn_v\", train_base: norms, alpha: 8}\ntrain: {rounds: "
        "1, local_steps: 1, lr: 1}\n" MIN_REST,
        "job: t\npeft: {targets: [c_attn, mlp.c_proj, mlp_gate]}\ntrain: {rounds: 1, local_epochs: "
        "2, lr: 1}\n" MIN_REST,
        "job: t\naggregation: {method: fedprox, mu: 0.01, fraction: 1, round_deadline_s: 1}\n"
        "train: {rounds: 1, local_steps: 1, lr: 1}\n" MIN_REST,
        "job: t\ndata: {format: prompt_response, template: llama-3}\nprivacy: {secure_aggregation: "
        "false}\ntrain: {rounds: 1, local_steps: 1, lr: +2, seed: 0}\n" MIN_REST,
        "job: t\neval_unused: ~\ntrain: {rounds: 1, local_steps: 1, lr: 1}\n" MIN_REST,
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        fl_job job;
        int rc;
        char *p = load(&job, write_job("good.yaml", good[i]), 0, &rc);
        int expect_ok = i != 4; /* an unknown key is refused even with a null value */
        CHECK((rc == FL_OK) == expect_ok, "good case %zu: %s", i, p ? p : "(ok)");
        if (i == 0 && rc == FL_OK)
            CHECK(!strcmp(job.lora_targets, "attn_q,attn_v") &&
                      job.lora_train_base_mask == FL_TRAIN_NORMS && job.lora_alpha == 8,
                  "comma lists");
        if (i == 2 && rc == FL_OK)
            CHECK(job.agg == FL_AGG_FEDPROX && job.prox_mu == 0.01f, "fedprox mu");
        if (i == 3 && rc == FL_OK)
            CHECK(job.lr == 2 && job.seed == 0 && !strcmp(job.template_name, "llama-3"), "misc");
        free(p);
        fl_job_free(&job);
    }

    /* fraction: 0.3 of 10 clients samples 3 (not 4, whatever the rounding) */
    char text[4096] = "job: f\ntrain: {rounds: 1, local_steps: 1, lr: 1}\nmodel: {path: m}\n"
                      "aggregation: {fraction: 0.3}\n"
                      "server: {address: \"tcp://h:1\", key: k/s}\nclients:\n";
    for (int i = 0; i < 10; i++) {
        size_t used = strlen(text);
        snprintf(text + used, sizeof text - used, "  - {name: c%d, key: k/c%d, train: d%d}\n", i, i,
                 i);
    }
    fl_job job;
    int rc;
    char *p = load(&job, write_job("fraction.yaml", text), 0, &rc);
    CHECK(rc == FL_OK && job.clients_per_round == 3 && job.min_clients == 3, "fraction: %s",
          p ? p : "");
    free(p);
    fl_job_free(&job);
}

/* The files each party needs, and the problems naming what is missing. */
static void test_check_files(void) {
    write_job("files/models/base/config.json", "{}");
    write_job("files/keys/server.key", "s");
    write_job("files/keys/server.pub", "p");
    write_job("files/keys/alice.key", "s");
    write_job("files/keys/alice.pub", "p");
    write_job("files/keys/bob.pub", "p"); /* bob's secret key lives on bob's machine */
    write_job("files/data/alice.jsonl", "{\"text\": \"a\"}\n");
    write_job("files/data/bob.eval.jsonl", "{\"text\": \"b\"}\n");
    const char *path = write_job(
        "files/job.yaml",
        "job: files\n"
        "model: {path: models/base}\n"
        "train: {rounds: 1, local_steps: 1, lr: 1}\n"
        "server: {address: \"tcp://127.0.0.1:7600\", key: keys/server}\n"
        "clients:\n"
        "  - {name: alice, key: keys/alice, train: data/alice.jsonl}\n"
        "  - {name: bob, key: keys/bob, train: data/bob.jsonl, eval: data/bob.eval.jsonl}\n");
    char bob_data[1400], bob_key[1400];
    snprintf(bob_data, sizeof bob_data, "%s/files/data/bob.jsonl does not exist", dir);
    snprintf(bob_key, sizeof bob_key, "%s/files/keys/bob.key does not exist", dir);

    fl_job job;
    int rc;
    char *p = load(&job, path, 1, &rc);
    CHECK(rc == FL_EINPUT && count_lines(p) == 2 &&
              problem_is(p, 0, path, 7, "clients[1].key", bob_key) &&
              strstr(p, "fedllm keygen --out") &&
              problem_is(p, 1, path, 7, "clients[1].train", bob_data),
          "load with file checks:\n%s", p ? p : "(none)");
    free(p);
    fl_job_free(&job);

    p = load(&job, path, 0, &rc);
    CHECK(rc == FL_OK, "without file checks: %s", p ? p : "");
    free(p);
    if (rc != FL_OK) return;
    fl_err err = {0};
    CHECK(fl_job_check_files(&job, "server", &p, &err) == FL_OK && !p, "server: %s", p ? p : "");
    free(p);
    CHECK(fl_job_check_files(&job, "alice", &p, &err) == FL_OK && !p, "alice: %s", p ? p : "");
    free(p);
    CHECK(fl_job_check_files(&job, "bob", &p, &err) == FL_EINPUT && count_lines(p) == 2 &&
              strstr(p, bob_key) && strstr(p, bob_data) && strstr(err.msg, bob_key),
          "bob:\n%s", p ? p : "(none)");
    free(p);
    CHECK(fl_job_check_files(&job, "carol", &p, &err) == FL_EINPUT && count_lines(p) == 1 &&
              strstr(err.msg, "no client named 'carol' in the job (clients: alice, bob)"),
          "carol: %s", err.msg);
    free(p);
    CHECK(fl_job_check_files(&job, NULL, NULL, &err) == FL_EINPUT, "all parties");

    /* a model directory without config.json, a missing server public key */
    char gone[1400];
    snprintf(gone, sizeof gone, "%s/files/models/base/config.json", dir);
    remove(gone);
    snprintf(gone, sizeof gone, "%s/files/keys/server.pub", dir);
    remove(gone);
    CHECK(fl_job_check_files(&job, "alice", &p, &err) == FL_EINPUT && count_lines(p) == 2 &&
              problem_is(p, 0, path, 2, "model.path", "has no config.json") &&
              problem_is(p, 1, path, 4, "server.key", "server.pub does not exist"),
          "alice without model and server key:\n%s", p ? p : "(none)");
    free(p);
    fl_job_free(&job);
}

static double seconds_since(struct timespec t0) {
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
}

/* Hostile files end in an error, quickly, without a crash. */
static void test_hostile(void) {
    size_t big = (size_t)FL_JOB_MAX_BYTES - 64;
    char *text = malloc(big + 1);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    fl_job job;
    int rc;

    /* flow nesting a million levels deep (libyaml alone is quadratic on it) */
    memcpy(text, "job: ", 5);
    memset(text + 5, '[', big - 5);
    char *p = load(&job, write_tmp("deep_flow.yaml", text, big), 0, &rc);
    CHECK(rc == FL_EINPUT && p && strstr(p, ":1: nested deeper than"), "deep flow: %.200s", p);
    free(p);

    /* block nesting by indentation */
    size_t used = 0;
    for (int level = 0; used + 300 < big && level < 400; level++) {
        memset(text + used, ' ', (size_t)level);
        used += (size_t)level;
        used += (size_t)sprintf(text + used, "k%d:\n", level);
    }
    p = load(&job, write_tmp("deep_block.yaml", text, used), 0, &rc);
    CHECK(rc == FL_EINPUT && p && strstr(p, "nested deeper than"), "deep block: %.200s", p);
    free(p);

    /* a scalar of nearly a megabyte as a value and as a key */
    memcpy(text, "job: ", 5);
    memset(text + 5, 'x', big - 5);
    p = load(&job, write_tmp("long_value.yaml", text, big), 0, &rc);
    CHECK(rc == FL_EINPUT && p && strstr(p, ":1: job: longer than 63 characters"),
          "long value: %.300s", p);
    free(p);
    memset(text, 'y', big - 3);
    memcpy(text + big - 3, ": 1", 3);
    p = load(&job, write_tmp("long_key.yaml", text, big), 0, &rc);
    CHECK(rc == FL_EINPUT && p && strlen(p) < 4096, "long key: %.300s", p);
    free(p);

    /* tens of thousands of unknown keys: the first FL_JOB_MAX_PROBLEMS listed, the rest counted */
    used = 0;
    for (int i = 0; used + 64 < big && i < 50000; i++)
        used += (size_t)sprintf(text + used, "unknown_%d: %d\n", i, i);
    p = load(&job, write_tmp("many_keys.yaml", text, used), 0, &rc);
    CHECK(rc == FL_EINPUT && count_lines(p) == FL_JOB_MAX_PROBLEMS + 1 &&
              strstr(p, "more problems"),
          "many keys: %d lines", count_lines(p));
    free(p);

    /* over the size limit, invalid UTF-8, binary */
    memset(text, '#', big);
    char *huge = malloc((size_t)FL_JOB_MAX_BYTES + 16);
    memset(huge, '#', (size_t)FL_JOB_MAX_BYTES + 16);
    p = load(&job, write_tmp("huge.yaml", huge, (size_t)FL_JOB_MAX_BYTES + 16), 0, &rc);
    CHECK(rc == FL_EINPUT && p && strstr(p, "more than the"), "huge: %s", p);
    free(p);
    free(huge);
    p = load(&job, write_tmp("utf8.yaml", "job: t\nmodel: \xff\xfe\x80\n", 17), 0, &rc);
    CHECK(rc == FL_EINPUT && p && strstr(p, ":2: not valid UTF-8"), "utf8: %s", p);
    free(p);
    const char binary[] = "job: t\n\0\x01\x02\x03model: {}\n";
    p = load(&job, write_tmp("binary.yaml", binary, sizeof binary - 1), 0, &rc);
    CHECK(rc == FL_EINPUT && p && count_lines(p) == 1, "binary: %s", p);
    free(p);

    /* a control character in a value never breaks the one-problem-per-line form */
    p = load(&job,
             write_job("ctrl.yaml", "job: \"a\\nb\\rc\"\ntrain: {rounds: 1, local_steps: 1, lr: "
                                    "1}\n" MIN_REST),
             0, &rc);
    CHECK(rc == FL_EINPUT && count_lines(p) == 1 && strstr(p, "got 'a?b?c'"), "ctrl: %s", p);
    free(p);

    free(text);
    fl_job_free(&job);
    double s = seconds_since(t0);
    CHECK(s < 30, "hostile files took %.1f s", s);
}

/* The example job files in examples/ are valid. */
static void test_examples(void) {
    const char *files[] = {"examples/quickstart.yaml",   "examples/two-machines.yaml",
                           "examples/demo-private.yaml", "examples/dp-clients.yaml",
                           "examples/demo-robust.yaml",  "examples/fedkseed.yaml",
                           "examples/offsite.yaml"};
    for (int i = 0; i < 7; i++) {
        fl_job job;
        int rc;
        char *p = load(&job, files[i], 0, &rc);
        CHECK(rc == FL_OK && job.n_clients >= 2, "%s: %s", files[i], p ? p : "");
        free(p);
        fl_job_free(&job);
    }
}

/* The job-wide schedule: round r of R continues where round r - 1 stopped, so the lrs of all rounds
 * are one schedule over R x steps (as HF Trainer runs over the same steps); per round restarts. */
static void test_round_schedule(void) {
    const char *path = write_job(
        "sched.yaml", "job: s\ntrain: {rounds: 3, local_steps: 4, lr: 1, schedule: cosine, "
                      "warmup_steps: 2}\n" MIN_REST);
    fl_job job;
    int rc;
    free(load(&job, path, 0, &rc));
    CHECK(rc == FL_OK, "sched.yaml loads");
    if (rc != FL_OK) return;
    fl_optim_spec whole = fl_optim_defaults();
    whole.lr = 1, whole.schedule = FL_SCHED_COSINE, whole.warmup_steps = 2, whole.total_steps = 12;
    for (int r = 0; r < 3; r++) {
        fl_optim_spec o = fl_optim_defaults();
        o.lr = 1, o.schedule = FL_SCHED_COSINE;
        fl_job_round_schedule(&job, r, 100, &o);
        CHECK(o.schedule_offset == 4 * r && o.total_steps == 12 && o.warmup_steps == 2,
              "round %d: offset %d of %d", r, o.schedule_offset, o.total_steps);
        for (int k = 0; k < 4; k++)
            CHECK(fl_schedule_lr(&o, o.schedule_offset + k) == fl_schedule_lr(&whole, 4 * r + k),
                  "round %d step %d", r, k);
    }
    /* epochs: this client's steps per round from its rows (10 rows, batch 4: 3 steps an epoch) */
    job.local_steps = 0, job.local_epochs = 2, job.batch = 4, job.grad_accum = 1;
    fl_optim_spec o = fl_optim_defaults();
    fl_job_round_schedule(&job, 2, 10, &o);
    CHECK(o.schedule_offset == 12 && o.total_steps == 18, "epochs: %d of %d", o.schedule_offset,
          o.total_steps);
    job.schedule_per_round = 1;
    fl_job_round_schedule(&job, 2, 10, &o);
    CHECK(o.schedule_offset == 0 && o.total_steps == 0 && o.warmup_steps == 2,
          "per round: the schedule restarts");
    fl_job_free(&job);
}

/* fl_path_normalize: lexical tidying, except that "LINK/.." stays (through a symbolic link ".."
 * leads to the link target's parent, not to the folder holding the link). */
static void test_normalize(void) {
    char real[1200], link[1200];
    snprintf(real, sizeof real, "%s/norm/real/deep", dir);
    fl_mkdirs(real, NULL);
    snprintf(link, sizeof link, "%s/norm/link", dir);
    unlink(link);
    CHECK(symlink("real/deep", link) == 0, "symlink %s", link);
    const char *cases[][2] = {
        {"a//b/./c/", "a/b/c"},
        {"/..", "/"},
        {"/../x", "/x"},
        {"./", "."},
        {"../x/..", "../x/.."},
        {"..", ".."},
        {"/", "/"},
        {"nope/../x", "nope/../x"},
        {"%s/norm/real/deep/../../x", "%s/norm/x"},
        {"%s/norm/link/../x", "%s/norm/link/../x"},
        {"%s/norm/real/../real/./deep//", "%s/norm/real/deep"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char in[1400], want[1400];
        snprintf(in, sizeof in, cases[i][0], dir);
        snprintf(want, sizeof want, cases[i][1], dir);
        int n = fl_path_normalize(in);
        CHECK(!strcmp(in, want) && n == (int)strlen(want), "'%s' -> '%s', expected '%s'",
              cases[i][0], in, want);
    }
}

/* aggregation's robust keys: accepted values, defaults, and each bad value or combination refused
 * alone, at its line, naming the key. The jobs have 5 clients so that every rule can run. */
#define FIVE_REST                                                                                  \
    "model: {path: m}\n"                                                                           \
    "server: {address: \"tcp://127.0.0.1:7600\", key: k/server}\n"                                 \
    "clients:\n"                                                                                   \
    "  - {name: a, key: k/a, train: a.jsonl}\n"                                                    \
    "  - {name: b, key: k/b, train: b.jsonl}\n"                                                    \
    "  - {name: c, key: k/c, train: c.jsonl}\n"                                                    \
    "  - {name: d, key: k/d, train: d.jsonl}\n"                                                    \
    "  - {name: e, key: k/e, train: e.jsonl}\n"
#define TRAIN_LINE "train: {rounds: 1, local_steps: 1, lr: 1}\n"

static void test_robust_keys(void) {
    fl_job job;
    int rc;
    char *p = load(&job, write_job("robust.yaml", "job: t\n" TRAIN_LINE FIVE_REST), 0, &rc);
    CHECK(rc == FL_OK && job.agg_rule == FL_RULE_MEAN && job.max_update_norm == 0 &&
              !job.clip_large_updates && job.bias_correction == 1 && job.trim_fraction == 0.2 &&
              job.byzantine == 1 && job.krum_select == 0,
          "robust defaults: %s", p ? p : "");
    free(p);
    fl_job_free(&job);
    p = load(&job,
             write_job("robust.yaml",
                       "job: t\n" TRAIN_LINE
                       "aggregation: {method: fedadam, bias_correction: false, "
                       "rule: multi_krum, byzantine: 1, krum_select: 3,\n"
                       "  max_update_norm: 25.5, on_large_update: clip}\n" FIVE_REST),
             0, &rc);
    CHECK(rc == FL_OK && job.agg_rule == FL_RULE_MULTI_KRUM && job.byzantine == 1 &&
              job.krum_select == 3 && job.max_update_norm == 25.5 && job.clip_large_updates &&
              job.bias_correction == 0,
          "robust keys: %s", p ? p : "");
    free(p);
    fl_job_free(&job);
    p = load(&job,
             write_job("robust.yaml", "job: t\n" TRAIN_LINE
                                      "aggregation: {rule: trimmed_mean, trim_fraction: 0.2, "
                                      "min_clients: 5}\n" FIVE_REST),
             0, &rc);
    CHECK(rc == FL_OK && job.agg_rule == FL_RULE_TRIMMED_MEAN && job.trim_fraction == 0.2,
          "trimmed mean: %s", p ? p : "");
    free(p);
    fl_job_free(&job);
    /* sample-level DP is post-processed by any rule: allowed */
    p = load(&job,
             write_job("robust.yaml", "job: t\n" TRAIN_LINE
                                      "aggregation: {rule: median}\nprivacy: {dp: {level: sample, "
                                      "clip: 1, noise_multiplier: 1}}\n" FIVE_REST),
             0, &rc);
    CHECK(rc == FL_OK && job.agg_rule == FL_RULE_MEDIAN, "median with DP-SGD: %s", p ? p : "");
    free(p);
    fl_job_free(&job);

    static const struct {
        const char *agg;
        int line;
        const char *key, *what;
    } cases[] = {
        {"aggregation: {rule: average}\n", 3, "aggregation.rule",
         "expected one of: mean, trimmed_mean, median, krum, multi_krum, got 'average'"},
        {"aggregation: {rule: median, trim_fraction: 0.1}\n", 3, "aggregation.trim_fraction",
         "only used with rule: trimmed_mean"},
        {"aggregation: {rule: trimmed_mean, trim_fraction: 0.5}\n", 3, "aggregation.trim_fraction",
         "0.5 is out of range (expected a number in (0, 0.5))"},
        {"aggregation: {rule: trimmed_mean,\n  trim_fraction: 0.1}\n", 4,
         "aggregation.trim_fraction", "0.1 cuts no update at min_clients 5"},
        {"aggregation: {rule: trimmed_mean, min_clients: 4}\n", 3, "aggregation.trim_fraction",
         "0.2 cuts no update at min_clients 4 (expected at least 1 / min_clients, 0.25)"},
        {"aggregation: {rule: median, min_clients: 2}\n", 3, "aggregation.rule",
         "median needs min_clients >= 3"},
        {"aggregation: {rule: krum, byzantine: 0}\n", 3, "aggregation.byzantine",
         "0 is out of range (expected an integer from 1 to 4096)"},
        {"aggregation: {rule: krum,\n  byzantine: 2}\n", 4, "aggregation.byzantine",
         "2 needs min_clients >= 7 (2f + 3), got 5"},
        {"aggregation: {rule: multi_krum, min_clients: 4}\n", 3, "aggregation.byzantine",
         "1 needs min_clients >= 5 (2f + 3), got 4"},
        {"aggregation: {rule: multi_krum, krum_select: 5}\n", 3, "aggregation.krum_select",
         "5 is more than min_clients - byzantine = 4"},
        {"aggregation: {rule: krum, krum_select: 2}\n", 3, "aggregation.krum_select",
         "only used with rule: multi_krum"},
        {"aggregation: {byzantine: 1}\n", 3, "aggregation.byzantine",
         "only used with rule: krum or multi_krum"},
        {"aggregation: {max_update_norm: 0}\n", 3, "aggregation.max_update_norm",
         "0 is out of range (expected a number > 0)"},
        {"aggregation: {max_update_norm: .inf}\n", 3, "aggregation.max_update_norm",
         "expected a number > 0, got '.inf'"},
        {"aggregation: {max_update_norm: 10, on_large_update: drop}\n", 3,
         "aggregation.on_large_update", "expected one of: reject, clip, got 'drop'"},
        {"aggregation: {on_large_update: clip}\n", 3, "aggregation.on_large_update",
         "only used with max_update_norm"},
        {"aggregation: {method: fedadam, bias_correction: \"yes\"}\n", 3,
         "aggregation.bias_correction", "expected true or false"},
        {"aggregation: {method: fedavg, bias_correction: true}\n", 3, "aggregation.bias_correction",
         "only used with method: fedadam or fedyogi"},
        {"aggregation: {rule: median}\nprivacy: {secure_aggregation: true}\n", 3,
         "aggregation.rule",
         "median needs every client's update, but under "
         "privacy.secure_aggregation the server sees only their sum"},
        {"aggregation: {rule: trimmed_mean, trim_fraction: 0.2}\nprivacy: {dp: {level: client, "
         "clip: 1, noise_multiplier: 1}}\n",
         3, "aggregation.rule", "trimmed_mean cannot be combined with privacy.dp.level: client"},
        {"aggregation:\n  max_update_norm: 10\nprivacy: {secure_aggregation: true}\n", 4,
         "aggregation.max_update_norm", "cannot be checked under privacy.secure_aggregation"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[2048];
        snprintf(text, sizeof text, "job: t\n" TRAIN_LINE "%s" FIVE_REST, cases[i].agg);
        const char *path = write_job("robust-case.yaml", text);
        p = load(&job, path, 0, &rc);
        CHECK(rc == FL_EINPUT && count_lines(p) == 1 &&
                  problem_is(p, 0, path, cases[i].line, cases[i].key, cases[i].what),
              "robust case %zu: expected line %d %s '%s', got rc %d:\n%s", i, cases[i].line,
              cases[i].key, cases[i].what, rc, p ? p : "(none)");
        free(p);
        fl_job_free(&job);
    }
}

/* FedKSeed's keys: defaults, every bound, and what it cannot be combined with (one clear error
 * each, at validation). */
static void test_fedkseed_keys(void) {
#define ZO_HEAD  "job: t\nalgorithm: fedkseed\n"
#define ZO_TRAIN "train: {rounds: 3, batch: 2, seq: 16}\n"
    fl_job job;
    int rc;
    char *p = load(&job,
                   write_job("zo.yaml", ZO_HEAD ZO_TRAIN
                             "fedkseed: {lr: 1.0e-5, steps_per_round: 20}\n" MIN_REST),
                   0, &rc);
    CHECK(rc == FL_OK && job.fedkseed && !strcmp(job.algorithm, "fedkseed") && job.zo_k == 4096 &&
              job.zo_eps == 5e-4f && job.zo_lr == 1e-5f && job.zo_steps == 20 && job.zo_pro == 1 &&
              job.zo_bias_loss_clip == 1000 && job.zo_grad_clip == 0 && job.zo_weight_decay == 0 &&
              job.local_steps == 0,
          "fedkseed defaults: %s", p ? p : "");
    free(p);
    fl_job_free(&job);
    p = load(&job,
             write_job("zo.yaml", ZO_HEAD ZO_TRAIN
                       "fedkseed: {k: 1024, eps: 1.0e-3, lr: 3.0e-7, steps_per_round: 5, pro: "
                       "false, bias_loss_clip: 50, grad_clip: 20, weight_decay: 0.01}\n" MIN_REST),
             0, &rc);
    CHECK(rc == FL_OK && job.zo_k == 1024 && job.zo_eps == 1e-3f && job.zo_lr == 3e-7f &&
              job.zo_steps == 5 && job.zo_pro == 0 && job.zo_bias_loss_clip == 50 &&
              job.zo_grad_clip == 20 && job.zo_weight_decay == 0.01f,
          "fedkseed keys: %s", p ? p : "");
    free(p);
    fl_job_free(&job);
    struct {
        const char *yaml;
        int line;
        const char *key, *what;
    } cases[] = {
        {"job: t\ntrain: {rounds: 1, local_steps: 1, lr: 1}\nfedkseed: {lr: 1, steps_per_round: "
         "1}\n" MIN_REST,
         3, "fedkseed", "only used with algorithm: fedkseed (the job's is pellm)"},
        {ZO_HEAD ZO_TRAIN MIN_REST, 0, "fedkseed", "missing"},
        {ZO_HEAD ZO_TRAIN "fedkseed: {k: 0, lr: 1, steps_per_round: 1}\n" MIN_REST, 4, "fedkseed.k",
         "0 is out of range"},
        {ZO_HEAD ZO_TRAIN "fedkseed: {eps: 0, lr: 1, steps_per_round: 1}\n" MIN_REST, 4,
         "fedkseed.eps", "out of range"},
        {ZO_HEAD ZO_TRAIN "fedkseed: {eps: -1.0e-3, lr: 1, steps_per_round: 1}\n" MIN_REST, 4,
         "fedkseed.eps", "out of range"},
        {ZO_HEAD ZO_TRAIN "fedkseed: {steps_per_round: 1}\n" MIN_REST, 4, "fedkseed.lr", "missing"},
        {ZO_HEAD ZO_TRAIN "fedkseed: {lr: 1}\n" MIN_REST, 4, "fedkseed.steps_per_round", "missing"},
        {ZO_HEAD ZO_TRAIN "fedkseed: {lr: 1, steps_per_round: 1, pro: 1}\n" MIN_REST, 4,
         "fedkseed.pro", "true or false"},
        {ZO_HEAD ZO_TRAIN "fedkseed: {lr: 1, steps_per_round: 1, seeds: 4}\n" MIN_REST, 4,
         "fedkseed.seeds", "unknown key"},
        {ZO_HEAD ZO_TRAIN
         "peft: {method: lora, r: 4}\nfedkseed: {lr: 1, steps_per_round: 1}\n" MIN_REST,
         4, "peft", "not used by algorithm fedkseed, which tunes every parameter"},
        {ZO_HEAD "train: {rounds: 3, lr: 0.1}\nfedkseed: {lr: 1, steps_per_round: 1}\n" MIN_REST, 3,
         "train.lr", "not used by algorithm fedkseed (fedkseed takes its steps, learning rate"},
        {ZO_HEAD
         "train: {rounds: 3, local_steps: 4}\nfedkseed: {lr: 1, steps_per_round: 1}\n" MIN_REST,
         3, "train.local_steps", "not used by algorithm fedkseed"},
        {ZO_HEAD ZO_TRAIN
         "fedkseed: {lr: 1, steps_per_round: 1}\naggregation: {method: fedadam}\n" MIN_REST,
         5, "aggregation.method", "the fedkseed server sums the clients' scalars per seed"},
        {ZO_HEAD ZO_TRAIN "fedkseed: {lr: 1, steps_per_round: 1}\n"
                          "privacy: {secure_aggregation: true}\n" MIN_REST,
         5, "privacy.secure_aggregation",
         "not supported by algorithm fedkseed (masking each "
         "client's per-seed scalars"},
        {ZO_HEAD ZO_TRAIN "fedkseed: {lr: 1, steps_per_round: 1}\n"
                          "privacy: {dp: {level: sample, clip: 1, noise_multiplier: 1}}\n" MIN_REST,
         5, "privacy.dp", "not supported by algorithm fedkseed"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_job("zo_bad.yaml", cases[i].yaml);
        p = load(&job, path, 0, &rc);
        CHECK(rc == FL_EINPUT && count_lines(p) == 1 &&
                  (cases[i].line == 0
                       ? strstr(p, cases[i].key) && strstr(p, cases[i].what)
                       : problem_is(p, 0, path, cases[i].line, cases[i].key, cases[i].what)),
              "fedkseed case %zu: expected line %d %s '%s', got:\n%s", i, cases[i].line,
              cases[i].key, cases[i].what, p ? p : "(none)");
        free(p);
        fl_job_free(&job);
    }
#undef ZO_HEAD
#undef ZO_TRAIN
}

/* Offsite-tuning's keys: defaults, bounds, what it cannot be combined with, and the split checked
 * against the model's config.json when the files are checked. */
static void test_offsite_keys(void) {
#define OT_HEAD  "job: t\nalgorithm: offsite_tuning\n"
#define OT_TRAIN "train: {rounds: 3, local_steps: 2, lr: 1.0e-4}\n"
    fl_job job;
    int rc;
    char *p = load(
        &job, write_job("ot.yaml", OT_HEAD OT_TRAIN "offsite: {emulator_layers: 4}\n" MIN_REST), 0,
        &rc);
    CHECK(rc == FL_OK && job.offsite && !strcmp(job.algorithm, "offsite_tuning") &&
              job.ot_bottom == 2 && job.ot_top == 2 && job.ot_emulator == 4 &&
              job.ot_distill == 0 && job.ot_aggregate == 1 && job.ot_lora == 0,
          "offsite defaults: %s", p ? p : "");
    free(p);
    fl_job_free(&job);
    p = load(
        &job,
        write_job("ot.yaml", OT_HEAD OT_TRAIN
                  "offsite: {adapter_bottom: 1, adapter_top: 3, emulator_layers: 2, distill: 0, "
                  "aggregate: false, trainable: lora}\npeft: {method: lora, r: 4}\n" MIN_REST),
        0, &rc);
    CHECK(rc == FL_OK && job.ot_bottom == 1 && job.ot_top == 3 && job.ot_emulator == 2 &&
              job.ot_distill == 0 && job.ot_aggregate == 0 && job.ot_lora == 1 && job.lora_r == 4,
          "offsite keys: %s", p ? p : "");
    free(p);
    fl_job_free(&job);
    struct {
        const char *yaml;
        int line;
        const char *key, *what;
    } cases[] = {
        {"job: t\n" OT_TRAIN "offsite: {emulator_layers: 2}\n" MIN_REST, 3, "offsite",
         "only used with algorithm: offsite_tuning (the job's is pellm)"},
        {OT_HEAD OT_TRAIN MIN_REST, 0, "offsite", "missing"},
        {OT_HEAD OT_TRAIN "offsite: {adapter_bottom: 2}\n" MIN_REST, 4, "offsite.emulator_layers",
         "missing"},
        {OT_HEAD OT_TRAIN "offsite: {emulator_layers: 0}\n" MIN_REST, 4, "offsite.emulator_layers",
         "out of range"},
        {OT_HEAD OT_TRAIN "offsite: {emulator_layers: 2, adapter_top: 0}\n" MIN_REST, 4,
         "offsite.adapter_top", "out of range"},
        {OT_HEAD OT_TRAIN "offsite: {emulator_layers: 2, trainable: some}\n" MIN_REST, 4,
         "offsite.trainable", "expected full"},
        {OT_HEAD OT_TRAIN "offsite: {emulator_layers: 2, distill: 100}\n" MIN_REST, 4,
         "offsite.distill", "emulator distillation is not available yet"},
        {OT_HEAD OT_TRAIN "offsite: {emulator_layers: 2, emulator: 3}\n" MIN_REST, 4,
         "offsite.emulator", "unknown key"},
        {OT_HEAD OT_TRAIN "offsite: {emulator_layers: 2}\npeft: {method: lora, r: 4}\n" MIN_REST, 5,
         "peft", "not used by offsite_tuning with offsite.trainable: full"},
        {OT_HEAD OT_TRAIN "offsite: {emulator_layers: 2, aggregate: false}\n"
                          "model: {path: m}\n"
                          "server: {address: \"tcp://127.0.0.1:7600\", key: k/server}\n"
                          "clients: [{name: a, key: k/a, train: a.jsonl}, {name: b, key: k/b, "
                          "train: b.jsonl}]\n",
         4, "offsite.aggregate", "false means one data owner, but the job has 2 clients"},
        {OT_HEAD OT_TRAIN "offsite: {emulator_layers: 2, aggregate: false}\n"
                          "aggregation: {method: fedadam}\n" MIN_REST,
         4, "offsite.aggregate",
         "takes no secure aggregation, client-level DP or server optimizer"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_job("ot_bad.yaml", cases[i].yaml);
        p = load(&job, path, 0, &rc);
        CHECK(rc == FL_EINPUT && count_lines(p) == 1 &&
                  (cases[i].line == 0
                       ? strstr(p, cases[i].key) && strstr(p, cases[i].what)
                       : problem_is(p, 0, path, cases[i].line, cases[i].key, cases[i].what)),
              "offsite case %zu: expected line %d %s '%s', got:\n%s", i, cases[i].line,
              cases[i].key, cases[i].what, p ? p : "(none)");
        free(p);
        fl_job_free(&job);
    }
    /* against an 8-block model's config.json, when the files are checked */
    write_job("ot/m/config.json",
              "{\"model_type\": \"gpt2\", \"vocab_size\": 512, \"n_layer\": 8, \"n_embd\": 32, "
              "\"n_head\": 4, \"n_positions\": 64}");
    struct {
        const char *offsite, *key, *what;
    } splits[] = {
        {"{emulator_layers: 5}", "offsite.emulator_layers", "5 is more than the 4 middle blocks"},
        {"{adapter_bottom: 4, adapter_top: 4, emulator_layers: 1}", "offsite",
         "adapter_bottom 4 + adapter_top 4 leave no middle block of the model's 8"},
        {"{adapter_bottom: 6, adapter_top: 3, emulator_layers: 1}", "offsite",
         "leave no middle block"},
    };
    for (size_t i = 0; i < sizeof splits / sizeof splits[0]; i++) {
        char yaml[1024];
        snprintf(yaml, sizeof yaml,
                 OT_HEAD OT_TRAIN "offsite: %s\nmodel: {path: m}\n"
                                  "server: {address: \"tcp://127.0.0.1:7600\", key: k/server}\n"
                                  "clients: [{name: a, key: k/a, train: a.jsonl}]\n",
                 splits[i].offsite);
        const char *path = write_job("ot/job.yaml", yaml);
        p = NULL;
        CHECK(fl_job_load(&job, path, 0, NULL, NULL) == FL_OK, "split %zu does not parse", i);
        fl_err err = {0};
        rc = fl_job_check_files(&job, "server", &p, &err);
        CHECK(rc == FL_EINPUT && p && strstr(p, splits[i].key) && strstr(p, splits[i].what),
              "split %zu: expected %s '%s', got:\n%s", i, splits[i].key, splits[i].what,
              p ? p : "(none)");
        free(p);
        fl_job_free(&job);
    }
#undef OT_HEAD
#undef OT_TRAIN
}

int main(void) {
    dir = tu_tmpdir("test_job");
    test_full();
    test_minimal_defaults();
    test_paths();
    test_problems();
    test_single_problems();
    test_types_and_rules();
    test_check_files();
    test_robust_keys();
    test_fedkseed_keys();
    test_offsite_keys();
    test_hostile();
    test_examples();
    test_round_schedule();
    test_normalize();
    CHECK(fl_job_sample_count(0.3, 10) == 3 && fl_job_sample_count(0.7, 10) == 7 &&
              fl_job_sample_count(0.01, 10) == 1 && fl_job_sample_count(1, 7) == 7 &&
              fl_job_sample_count(0.5, 3) == 2 && fl_job_sample_count(0.28, 25) == 7,
          "sampled counts");
    return tu_finish("test_job");
}
