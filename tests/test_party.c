/* test_party.c — what a party writes, and a real server (`fedllm server`) under attack.
 *
 * Unit checks: log lines are escaped (invalid UTF-8, control characters); refusals are rate
 * limited per peer with a count at the end of each window; a party's files are never written
 * through a planted symbolic link (nor a FIFO or a hard link), and an atomic write's temp name
 * cannot be hijacked. End to end, against the server process of a real job: a connection with an
 * unlisted key is logged in exactly one line; 1,000 garbage messages from a listed client cost a
 * few lines and one count, with the invalid UTF-8 they carry escaped; the pre-authentication
 * reproducer (raw TCP, a ZMTP greeting for CURVE, a command frame declaring 8 GiB, then a stream)
 * leaves the server's VmRSS where it was; the server still serves the listed client after all of
 * that; and a server whose run folder holds a planted link refuses to start, leaving the link's
 * target as it was. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "fedllm/fed.h"
#include "fedllm/fileio.h"
#include "fedllm/protocol.h"
#include "fedllm/transport.h"
#include "fedllm/unicode.h"
#include "testutil.h"

static char dir[1024];

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static char *slurp(const char *path) {
    char *text = NULL;
    if (fl_read_file(path, &text, NULL, (size_t)64 << 20, NULL) != FL_OK) return NULL;
    return text;
}

/* Lines of text that hold every one of the (up to two) needles. */
static int count_lines(const char *text, const char *a, const char *b) {
    int n = 0;
    for (const char *line = text; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char *copy = strndup(line, len);
        n += strstr(copy, a) && (!b || strstr(copy, b));
        free(copy);
        line = end ? end + 1 : NULL;
    }
    return n;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* ---- escaping -------------------------------------------------------------------------------- */

static void test_escape(void) {
    char out[256];
    fl_log_escape(out, sizeof out,
                  "ok \xc3\xa9 \xe4\xb8\xad \xff\xfe \x1b[31m\nnext\r \x7f \xc2\x85");
    CHECK(strcmp(out,
                 "ok \xc3\xa9 \xe4\xb8\xad \\xFF\\xFE \\x1B[31m\\x0Anext\\x0D \\x7F \\xC2\\x85") ==
              0,
          "printable UTF-8 kept, the rest escaped: %s", out);
    CHECK(fl_utf8_valid(out, strlen(out), NULL), "the result is valid UTF-8");
    fl_log_escape(out, sizeof out, "\xe4\xb8"); /* a truncated sequence: its bytes escaped */
    CHECK(strcmp(out, "\\xE4\\xB8") == 0, "truncated sequence: %s", out);
    char small[7];
    size_t n = fl_log_escape(small, 6, "ab\xff\xff");
    CHECK(n == 2 && strcmp(small, "ab") == 0, "no half escape when short: '%s'", small);
    n = fl_log_escape(small, sizeof small, "abcd\xe4\xb8\xad");
    CHECK(n == 4 && strcmp(small, "abcd") == 0, "no half character when short: '%s'", small);
}

/* ---- rate limits ----------------------------------------------------------------------------- */

static fl_job job_at(const char *output) {
    fl_job job;
    memset(&job, 0, sizeof job);
    snprintf(job.output, sizeof job.output, "%s", output);
    return job;
}

static void test_rate_limit(void) {
    char output[1100], log_path[1200];
    snprintf(output, sizeof output, "%s/limits", dir);
    fl_job job = job_at(output);
    fl_party_files pf;
    fl_err err = {0};
    CHECK(fl_party_open(&pf, &job, "server", 0, &err) == FL_OK, "open: %s", err.msg);
    pf.refusal_window_s = 0.5;
    double start = now_s();
    for (int i = 0; i < 1000; i++)
        fl_party_refused(&pf, "alice", "refused a message: garbage number %d", i);
    fl_party_refused(&pf, "bob", "refused a message: bob's first");
    fl_party_refused(&pf, "bob", "refused a message: bob's second");
    int in_window = now_s() - start < 0.5;
    snprintf(log_path, sizeof log_path, "%s/server/log", output);
    fflush(pf.log);
    char *log = slurp(log_path);
    if (in_window)
        CHECK(log && count_lines(log, "garbage number", NULL) == FL_REFUSAL_BURST &&
                  count_lines(log, "bob's", NULL) == 2 &&
                  count_lines(log, "more messages", NULL) == 0,
              "inside the window: %d lines of alice's 1000, both of bob's:\n%s", FL_REFUSAL_BURST,
              log);
    free(log);
    usleep(600 * 1000);
    fl_party_status(&pf, "waiting", 0, 0, 0, 0, 1); /* any later call ends the window */
    fl_party_refused(&pf, "alice", "refused a message: after the window");
    fl_party_close(&pf);
    log = slurp(log_path);
    char want[128];
    snprintf(want, sizeof want, "refused %d more messages from alice in the last",
             1000 - FL_REFUSAL_BURST);
    CHECK(log && count_lines(log, want, NULL) == 1 && count_lines(log, "from bob", NULL) == 0 &&
              count_lines(log, "after the window", NULL) == 1 &&
              count_lines(log, "refused", NULL) == FL_REFUSAL_BURST + 2 + 1 + 1,
          "one count line for alice, none for bob, a new window after:\n%s", log);
    free(log);

    /* many peers: each gets its own count until the slots run out, then they share one */
    CHECK(fl_party_open(&pf, &job, "server", 0, &err) == FL_OK, "reopen: %s", err.msg);
    for (int i = 0; i < 3 * FL_REFUSAL_PEERS; i++) {
        char peer[32];
        snprintf(peer, sizeof peer, "peer%d", i);
        for (int k = 0; k < 10; k++)
            fl_party_refused(&pf, peer, "refused a message from %s", peer);
    }
    fl_party_close(&pf);
    log = slurp(log_path);
    int lines = log ? count_lines(log, "refused", NULL) : -1;
    CHECK(lines <= FL_REFUSAL_PEERS * (FL_REFUSAL_BURST + 1) && log &&
              count_lines(log, "more messages from other peers", NULL) == 1,
          "bounded with many peers: %d lines", lines);
    free(log);
}

/* ---- the frame bound ------------------------------------------------------------------------- */

static void test_message_bound(void) {
    fl_params p = {0};
    int64_t a[2] = {16, 64}, b[1] = {1000};
    fl_err err = {0};
    CHECK(fl_params_add(&p, "base_model.model.layers.0.self_attn.q_proj.lora_A.weight", 2, a,
                        &err) >= 0 &&
              fl_params_add(&p, "base_model.model.layers.0.self_attn.q_proj.lora_B.weight", 1, b,
                            &err) >= 0 &&
              fl_params_alloc(&p, &err) == FL_OK,
          "params: %s", err.msg);
    uint8_t *payload = NULL;
    size_t payload_len = 0, bound = 0;
    fl_params_to_payload(&p, &payload, &payload_len, &err);
    free(payload);
    fl_job job = job_at(dir);
    job.n_clients = 3;
    CHECK(fl_job_max_message_bytes(&job, &p, &bound, &err) == FL_OK &&
              bound == payload_len + FL_PAYLOAD_FRAMING_BYTES,
          "plain: the adapter payload (%zu bytes) and the framing: %zu", payload_len, bound);
    job.secure_aggregation = 1;
    fl_secagg_config cfg = {.vector_len = p.numel};
    size_t masked = fl_secagg_masked_bytes(&cfg);
    CHECK(fl_job_max_message_bytes(&job, &p, &bound, &err) == FL_OK &&
              bound == (masked > payload_len ? masked : payload_len) + FL_PAYLOAD_FRAMING_BYTES,
          "secure aggregation, 3 clients: the larger of the adapter and MASKED: %zu", bound);
    job.n_clients = 5000;
    CHECK(fl_job_max_message_bytes(&job, &p, &bound, &err) == FL_OK &&
              bound == FL_SECAGG_HEADER_BYTES + 108 * 5000 + FL_PAYLOAD_FRAMING_BYTES,
          "secure aggregation, 5000 clients: the per-client lists: %zu", bound);
    /* every message secure aggregation makes for such a round fits: masked is the biggest per
     * value, and a wrapped payload adds under the framing */
    uint8_t *wrapped = NULL;
    size_t wrapped_len = 0;
    uint8_t *bytes = calloc(1, masked);
    fl_bytes_to_payload(bytes, masked, &wrapped, &wrapped_len, &err);
    CHECK(wrapped_len - masked < FL_PAYLOAD_FRAMING_BYTES, "the wrapper costs %zu bytes",
          wrapped_len - masked);
    free(bytes);
    free(wrapped);
    fl_params_free(&p);
}

/* ---- links ----------------------------------------------------------------------------------- */

/* Plants name in OUTPUT/server as a link to a victim file (or, for a folder, a victim folder) and
 * checks that fl_party_open refuses it, naming it, and leaves the victim as it was. */
static void check_planted_link(const char *name, int is_folder) {
    char output[1100], party[1200], link_path[1300], victim[1300];
    snprintf(output, sizeof output, "%s/links-%s", dir, name);
    snprintf(party, sizeof party, "%s/server", output);
    fl_mkdirs(party, NULL);
    snprintf(victim, sizeof victim, "%s/victim-%s", dir, name);
    if (is_folder)
        fl_mkdirs(victim, NULL);
    else
        write_text(victim, "precious\n");
    snprintf(link_path, sizeof link_path, "%s/%s", party, name);
    unlink(link_path);
    CHECK(symlink(victim, link_path) == 0, "symlink %s: %s", link_path, strerror(errno));
    fl_job job = job_at(output);
    fl_party_files pf;
    fl_err err = {0};
    int rc = fl_party_open(&pf, &job, "server", 0, &err);
    CHECK(rc == FL_EINPUT && strstr(err.msg, link_path) && strstr(err.msg, "symbolic link"),
          "%s as a link: refused (%d %s)", name, rc, err.msg);
    if (rc == FL_OK) fl_party_close(&pf);
    struct stat st;
    if (is_folder) {
        int entries = 0;
        char probe[1400];
        snprintf(probe, sizeof probe, "%s/log", victim);
        entries = stat(probe, &st) == 0;
        CHECK(!entries, "nothing written into the linked folder");
    } else {
        char *text = slurp(victim);
        CHECK(text && strcmp(text, "precious\n") == 0, "%s's target untouched: '%s'", name,
              text ? text : "(missing)");
        free(text);
    }
    CHECK(lstat(link_path, &st) == 0 && S_ISLNK(st.st_mode), "the link itself is left alone");
}

static void test_links(void) {
    check_planted_link("log", 0);
    check_planted_link("outbox.jsonl", 0);
    check_planted_link("metrics.jsonl", 0);
    check_planted_link("status.json", 0);
    check_planted_link("console", 0);
    check_planted_link("checkpoint", 1);

    /* the party's folder itself as a link */
    char output[1100], party[1200], victim[1200], probe[1300];
    snprintf(output, sizeof output, "%s/links-folder", dir);
    fl_mkdirs(output, NULL);
    snprintf(victim, sizeof victim, "%s/victim-folder", dir);
    fl_mkdirs(victim, NULL);
    snprintf(party, sizeof party, "%s/server", output);
    CHECK(symlink(victim, party) == 0, "symlink the party folder");
    fl_job job = job_at(output);
    fl_party_files pf;
    fl_err err = {0};
    int rc = fl_party_open(&pf, &job, "server", 0, &err);
    snprintf(probe, sizeof probe, "%s/log", victim);
    struct stat st;
    CHECK(rc == FL_EINPUT && strstr(err.msg, "symbolic link") && stat(probe, &st) != 0,
          "the party folder as a link: refused (%s)", err.msg);
    if (rc == FL_OK) fl_party_close(&pf);

    /* a FIFO in a file's place is refused without waiting for a reader; a hard link too */
    snprintf(output, sizeof output, "%s/links-fifo", dir);
    snprintf(party, sizeof party, "%s/server", output);
    fl_mkdirs(party, NULL);
    snprintf(probe, sizeof probe, "%s/metrics.jsonl", party);
    CHECK(mkfifo(probe, 0644) == 0, "mkfifo");
    job = job_at(output);
    rc = fl_party_open(&pf, &job, "server", 0, &err);
    CHECK(rc == FL_EINPUT && strstr(err.msg, "not a regular file"), "FIFO refused: %s", err.msg);
    if (rc == FL_OK) fl_party_close(&pf);
    unlink(probe);
    snprintf(victim, sizeof victim, "%s/victim-hard", dir);
    write_text(victim, "precious\n");
    snprintf(probe, sizeof probe, "%s/log", party);
    unlink(probe);
    CHECK(link(victim, probe) == 0, "hard link");
    rc = fl_party_open(&pf, &job, "server", 0, &err);
    char *text = slurp(victim);
    CHECK(rc == FL_EINPUT && strstr(err.msg, "hard link") && text &&
              strcmp(text, "precious\n") == 0,
          "hard link refused, target untouched: %s", err.msg);
    free(text);
    if (rc == FL_OK) fl_party_close(&pf);

    /* an atomic write whose temp name was planted as a link replaces the final name, not the
     * link's target */
    char target[1200], tmp[1300];
    snprintf(target, sizeof target, "%s/atomic.json", dir);
    snprintf(victim, sizeof victim, "%s/victim-atomic", dir);
    write_text(victim, "precious\n");
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", target, (long)getpid());
    CHECK(symlink(victim, tmp) == 0, "symlink the temp name");
    CHECK(fl_write_file_atomic(target, "{}\n", 3, &err) == FL_OK, "atomic write: %s", err.msg);
    text = slurp(victim);
    char *written = slurp(target);
    CHECK(text && strcmp(text, "precious\n") == 0 && written && strcmp(written, "{}\n") == 0 &&
              lstat(tmp, &st) != 0,
          "the temp link was removed, not followed");
    free(text);
    free(written);
}

/* ---- a real server under attack -------------------------------------------------------------- */

static long rss_kib(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
    if (f) fclose(f);
    return kib;
}

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* The reproducer: greeting for CURVE, a command frame declaring 8 GiB, up to `stream`
 * bytes of it. Returns the socket (kept open by the caller) and the bytes the kernel took. */
static int flood_tcp(int port, size_t stream, size_t *pushed) {
    *pushed = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval patience = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &patience, sizeof patience);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
        close(fd);
        return -1;
    }
    uint8_t start[73] = {0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 0, 'C', 'U', 'R', 'V', 'E'};
    start[64] = 0x06; /* a command frame with an 8-byte size: 2^33 */
    start[65 + 3] = 0x02;
    if (send(fd, start, sizeof start, MSG_NOSIGNAL) != (ssize_t)sizeof start) return fd;
    static uint8_t chunk[1 << 16];
    memset(chunk, 'x', sizeof chunk);
    while (*pushed < stream) {
        ssize_t n = send(fd, chunk, sizeof chunk, MSG_NOSIGNAL);
        if (n <= 0) break;
        *pushed += (size_t)n;
    }
    return fd;
}

static pid_t start_server(const char *bin, const char *job_path, const char *out_path) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) dup2(fd, 1), dup2(fd, 2), close(fd);
        execl(bin, "fedllm", "server", job_path, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Waits up to seconds for pid; kills it after. Returns its exit status, -1 if it had to die. */
static int reap(pid_t pid, double seconds) {
    double until = now_s() + seconds;
    int status = 0;
    while (now_s() < until) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        usleep(100 * 1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

/* A listed client's raw socket: alice's keys, no fedllm protocol on top. */
static void *raw_client(void *ctx, const char *address, const fl_keypair *server,
                        const fl_keypair *me) {
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0, queue = 4096;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_SNDHWM, &queue, sizeof queue);
    zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server->public_z85, 40);
    zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, me->public_z85, 40);
    zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, me->secret_z85, 40);
    zmq_connect(s, address);
    return s;
}

static void test_server_under_attack(void) {
    const char *bin = getenv("FEDLLM_BIN");
    if (!bin) {
        fprintf(stderr, "test_party: FEDLLM_BIN not set, skipping the server checks\n");
        return;
    }
    char cmd[4096], path[1200], job_path[1200], out_path[1200], log_path[1200];
    snprintf(cmd, sizeof cmd,
             "'%s' init-model --arch llama --preset tiny --out '%s/model' >/dev/null", bin, dir);
    CHECK(system(cmd) == 0, "init-model");
    fl_keypair server, alice, bob, carol;
    const char *names[4] = {"server", "alice", "bob", "carol"};
    fl_keypair *pairs[4] = {&server, &alice, &bob, &carol};
    snprintf(path, sizeof path, "%s/keys", dir);
    fl_mkdirs(path, NULL);
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/keys/%s", dir, names[i]);
        CHECK(fl_keygen_pair(path, pairs[i], NULL) == FL_OK, "keygen %s", names[i]);
    }
    for (int i = 1; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s.jsonl", dir, names[i]);
        write_text(path, "{\"text\": \"the lord is my shepherd\"}\n");
    }
    int port = free_port();
    char address[64];
    snprintf(address, sizeof address, "tcp://127.0.0.1:%d", port);
    snprintf(job_path, sizeof job_path, "%s/hostile.yaml", dir);
    FILE *f = fopen(job_path, "w");
    fprintf(f,
            "job: hostile\nmodel: {path: model}\n"
            "peft: {method: lora, r: 4, alpha: 8, targets: [attn_q, attn_v]}\n"
            "train: {rounds: 1, local_steps: 1, batch: 1, seq: 16, lr: 0.01}\n"
            "data: {format: text}\n"
            "aggregation: {method: fedavg, min_clients: 2, round_deadline_s: 2}\n"
            "server: {address: \"%s\", key: keys/server, heartbeat_s: 0.2}\n"
            "clients:\n"
            "  - {name: alice, key: keys/alice, train: alice.jsonl}\n"
            "  - {name: bob, key: keys/bob, train: bob.jsonl}\n"
            "output: runs/hostile\n",
            address);
    fclose(f);
    snprintf(out_path, sizeof out_path, "%s/server.out", dir);
    snprintf(log_path, sizeof log_path, "%s/runs/hostile/server/log", dir);
    pid_t pid = start_server(bin, job_path, out_path);
    CHECK(tu_wait_for_text(log_path, "listening on", 20), "the server starts");

    /* 1. an unlisted key: refused, logged once */
    fl_err err = {0};
    fl_endpoint *stranger = fl_endpoint_client(address, &carol, server.public_z85, 200, 0, &err);
    fl_msg m;
    fl_msg_init(&m, "hostile", 0, FL_MSG_JOIN, "alice", 1);
    char *header = NULL;
    size_t header_len = 0;
    fl_msg_encode_header(&m, &header, &header_len, NULL);
    fl_endpoint_send(stranger, NULL, header, header_len, NULL, 0, 1000, &err);
    char from[64], *got_header;
    uint8_t *got_payload;
    size_t got_header_len, got_payload_len;
    int rc = fl_endpoint_recv(stranger, 5000, 1 << 20, from, &got_header, &got_header_len,
                              &got_payload, &got_payload_len, &err);
    CHECK(rc == FL_EPEER && strstr(err.msg, "refused this client's key"), "carol is refused: %s",
          err.msg);
    fl_endpoint_free(stranger);
    CHECK(tu_wait_for_text(log_path, carol.public_z85, 5), "the server logs carol's key");

    /* 2. a thousand garbage messages from a listed key: bytes that are not JSON, and well-formed
     * headers naming another sender in invalid UTF-8 */
    void *ctx = zmq_ctx_new();
    void *raw = raw_client(ctx, address, &server, &alice);
    for (int i = 0; i < 1000; i++) {
        char garbage[512];
        int n = i % 2
                    ? snprintf(garbage, sizeof garbage, "\xff\xfe not json %d", i)
                    : snprintf(garbage, sizeof garbage,
                               "{\"v\": %d, \"from\": \"al\xffice\", \"job\": \"hostile\", "
                               "\"type\": \"join\", \"round\": 0, \"seq\": %d, \"bytes\": 0, "
                               "\"sha256\": \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca4959"
                               "91b7852b855\"}",
                               FL_PROTOCOL_VERSION, i + 1);
        CHECK(zmq_send(raw, garbage, (size_t)n, ZMQ_DONTWAIT) == n, "garbage %d queued", i);
    }

    /* 3. the pre-authentication reproducer, four connections, against the job's own bound */
    long before = rss_kib(pid);
    int fds[4];
    size_t pushed = 0, total = 0;
    for (int i = 0; i < 4; i++) {
        fds[i] = flood_tcp(port, (size_t)48 << 20, &pushed);
        total += pushed;
    }
    usleep(300 * 1000);
    long grown = rss_kib(pid) - before;
    CHECK(before > 0 && grown < 16 * 1024,
          "the server's VmRSS grew by %ld KiB (from %ld) after 4 connections declared 8 GiB and "
          "pushed %zu bytes",
          grown, before, total);
    CHECK(total < (size_t)4 * (48 << 20), "the server stopped reading them (%zu bytes)", total);
    for (int i = 0; i < 4; i++)
        if (fds[i] >= 0) close(fds[i]);

    /* 4. alice herself, properly: still served */
    fl_endpoint *client = fl_endpoint_client(address, &alice, server.public_z85, 200, 0, &err);
    fl_endpoint_send(client, NULL, header, header_len, NULL, 0, 1000, &err);
    CHECK(tu_wait_for_text(log_path, "alice joined", 10), "alice is served after all that");
    free(header);
    fl_msg_free(&m);
    int status = reap(pid, 30); /* bob never comes: the server gives up after its attempts */
    CHECK(status > 0, "the server stops by itself (status %d)", status);
    fl_endpoint_free(client);
    zmq_close(raw);
    zmq_ctx_term(ctx);

    char *log = slurp(log_path);
    CHECK(log != NULL, "server log");
    if (!log) return;
    CHECK(count_lines(log, "refused a connection", carol.public_z85) == 1,
          "exactly one line for the unlisted key:\n%s", log);
    int alice_lines = count_lines(log, "refused", "alice");
    CHECK(alice_lines >= 2 && alice_lines <= FL_REFUSAL_BURST + 1,
          "a thousand garbage messages cost %d lines:\n%s", alice_lines, log);
    CHECK(count_lines(log, "more messages from alice in the last", NULL) == 1, "and one count");
    CHECK(fl_utf8_valid(log, strlen(log), NULL) && !strchr(log, '\x1b'),
          "the log is valid UTF-8 without escape sequences");
    CHECK(strstr(log, "claims to be from 'al\\xFFice'") != NULL,
          "the invalid bytes are written as \\xNN:\n%s", log);
    free(log);

    /* 5. a link planted as the server's log, then as its outbox: refused, the target untouched */
    const char *planted[2] = {"log", "outbox.jsonl"};
    for (int i = 0; i < 2; i++) {
        char victim[1200], link_path[1300];
        snprintf(victim, sizeof victim, "%s/victim-%s", dir, planted[i]);
        write_text(victim, "precious\n");
        snprintf(link_path, sizeof link_path, "%s/runs/hostile/server/%s", dir, planted[i]);
        unlink(link_path);
        CHECK(symlink(victim, link_path) == 0, "plant %s", planted[i]);
        pid = start_server(bin, job_path, out_path);
        status = reap(pid, 20);
        char *out = slurp(out_path), *text = slurp(victim);
        CHECK(status == FL_EINPUT && out && strstr(out, "symbolic link") && strstr(out, planted[i]),
              "a planted %s: the server refuses (status %d): %s", planted[i], status,
              out ? out : "");
        CHECK(text && strcmp(text, "precious\n") == 0, "the target of %s is untouched", planted[i]);
        free(out);
        free(text);
        unlink(link_path);
    }
}

int main(void) {
    snprintf(dir, sizeof dir, "%s", tu_tmpdir("test_party"));
    test_escape();
    test_rate_limit();
    test_message_bound();
    test_links();
    test_server_under_attack();
    return tu_finish("test_party");
}
