/* test_transport.c — CURVE keys and endpoints over real sockets on this machine: keygen files and
 * modes; a listed client and the server exchange messages both ways (the server names the sender
 * from its key, not from the header); an unlisted client key and a wrong server key are refused
 * and told so, and the server never sees their messages; a second server on a taken address is
 * refused; every receive has a deadline; a client gets through to a restarted server without
 * making a new socket; malformed frames are dropped without taking the endpoint down. The server
 * runs in its own thread where the two sides must act at once. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
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

#include "fedllm/protocol.h"
#include "fedllm/safetensors.h"
#include "fedllm/transport.h"
#include "testutil.h"

#define JOB          "transport-test"
#define HEARTBEAT_MS 200
#define MAX_PAYLOAD  ((size_t)64 << 20)

static char dir[1024];
static fl_keypair server_keys, alice_keys, bob_keys, carol_keys; /* carol is not in the job */
static fl_peer_key listed[2];

static int64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void prefix_of(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", dir, name);
}

/* An adapter-sized payload: one F32 tensor of n floats. */
static uint8_t *make_payload(size_t n, float scale, size_t *len) {
    float *values = malloc(n * sizeof *values);
    for (size_t i = 0; i < n; i++)
        values[i] = scale * (float)i;
    int64_t shape[1] = {(int64_t)n};
    fl_st_writer *w = fl_st_writer_new(NULL);
    uint8_t *bytes = NULL;
    fl_st_writer_add(w, "delta", FL_DTYPE_F32, 1, shape, values, NULL);
    fl_st_write_mem(w, &bytes, len, NULL);
    fl_st_writer_free(w);
    free(values);
    return bytes;
}

/* Encodes and sends one message; claimed_sender is what the header says. */
static int send_msg(fl_endpoint *e, const char *to, fl_msg_type type, const char *claimed_sender,
                    uint64_t seq, const uint8_t *payload, size_t payload_len, fl_err *err) {
    fl_msg m;
    fl_msg_init(&m, JOB, 1, type, claimed_sender, seq);
    m.payload = (uint8_t *)payload;
    m.payload_len = payload_len;
    char *header = NULL;
    size_t header_len = 0;
    int rc = fl_msg_encode_header(&m, &header, &header_len, err);
    if (rc == FL_OK)
        rc = fl_endpoint_send(e, to, header, header_len, payload, payload_len, 2000, err);
    free(header);
    return rc;
}

/* Receives and decodes one message. */
static int recv_msg(fl_endpoint *e, int timeout_ms, fl_msg *m, char from[64], fl_err *err) {
    char *header;
    uint8_t *payload;
    size_t header_len, payload_len;
    memset(m, 0, sizeof *m);
    int rc = fl_endpoint_recv(e, timeout_ms, MAX_PAYLOAD, from, &header, &header_len, &payload,
                              &payload_len, err);
    if (rc == FL_OK) rc = fl_msg_decode(m, header, header_len, payload, payload_len, JOB, err);
    free(header);
    free(payload);
    return rc;
}

static fl_endpoint *start_server(const char *address, fl_err *err) {
    return fl_endpoint_server(address, &server_keys, listed, 2, HEARTBEAT_MS, MAX_PAYLOAD, err);
}

/* ---- keys ------------------------------------------------------------------------------------ */

static void make_keys(void) {
    const char *names[4] = {"server", "alice", "bob", "carol"};
    fl_keypair *pairs[4] = {&server_keys, &alice_keys, &bob_keys, &carol_keys};
    for (int i = 0; i < 4; i++) {
        char prefix[1100];
        fl_err err = {0};
        prefix_of(prefix, sizeof prefix, names[i]);
        CHECK(fl_keygen_pair(prefix, pairs[i], &err) == FL_OK, "keygen %s: %s", names[i], err.msg);
    }
    snprintf(listed[0].name, sizeof listed[0].name, "alice");
    memcpy(listed[0].public_z85, alice_keys.public_z85, 41);
    snprintf(listed[1].name, sizeof listed[1].name, "bob");
    memcpy(listed[1].public_z85, bob_keys.public_z85, 41);
}

static void test_key_files(void) {
    char prefix[1100], path[1200];
    fl_err err = {0};
    prefix_of(prefix, sizeof prefix, "alice");
    struct stat st;
    snprintf(path, sizeof path, "%s.key", prefix);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 07777) == 0600, "alice.key mode %o",
          (unsigned)(st.st_mode & 07777));
    CHECK(st.st_size == 41, "alice.key is one line of 40 characters (%lld bytes)",
          (long long)st.st_size);
    snprintf(path, sizeof path, "%s.pub", prefix);
    CHECK(stat(path, &st) == 0 && st.st_size == 41, "alice.pub is one line");

    fl_keypair kp;
    CHECK(fl_key_load_pair(prefix, &kp, &err) == FL_OK, "load pair: %s", err.msg);
    CHECK(strcmp(kp.public_z85, alice_keys.public_z85) == 0 &&
              strcmp(kp.secret_z85, alice_keys.secret_z85) == 0,
          "the pair read back is the pair made");
    char pub[41];
    CHECK(fl_key_load_public(prefix, pub, &err) == FL_OK && strcmp(pub, kp.public_z85) == 0,
          "load public: %s", err.msg);

    CHECK(fl_keygen(prefix, &err) == FL_EINPUT && strstr(err.msg, "already exists"),
          "keygen refuses to replace a key: %s", err.msg);
    CHECK(fl_key_load_pair(prefix, &kp, NULL) == FL_OK &&
              strcmp(kp.secret_z85, alice_keys.secret_z85) == 0,
          "the refused keygen left the key alone");

    /* a secret key others can read */
    char dave[1100];
    prefix_of(dave, sizeof dave, "dave");
    CHECK(fl_keygen(dave, &err) == FL_OK, "keygen dave: %s", err.msg);
    snprintf(path, sizeof path, "%s.key", dave);
    chmod(path, 0644);
    char want[1300];
    snprintf(want, sizeof want, "%s.key: mode 0644, expected 0600 (chmod 600 it)", dave);
    CHECK(fl_key_load_pair(dave, &kp, &err) == FL_EINPUT && strcmp(err.msg, want) == 0,
          "mode 0644 refused: %s", err.msg);
    chmod(path, 0600);

    /* a .pub that is not the .key's public key */
    snprintf(path, sizeof path, "%s.pub", dave);
    FILE *f = fopen(path, "w");
    fprintf(f, "  %s \n", bob_keys.public_z85);
    fclose(f);
    CHECK(fl_key_load_public(dave, pub, &err) == FL_OK && strcmp(pub, bob_keys.public_z85) == 0,
          "white space around a key is fine: %s", err.msg);
    CHECK(fl_key_load_pair(dave, &kp, &err) == FL_EINPUT && strstr(err.msg, "do not belong"),
          "mismatched pair refused: %s", err.msg);
    f = fopen(path, "w");
    fprintf(f, "not a key\n");
    fclose(f);
    CHECK(fl_key_load_public(dave, pub, &err) == FL_EINPUT && strstr(err.msg, "dave.pub") &&
              strstr(err.msg, "40 Z85"),
          "garbage refused: %s", err.msg);
    f = fopen(path, "w");
    fprintf(f, "%.39s~\n", bob_keys.public_z85); /* '~' is not in the Z85 alphabet */
    fclose(f);
    CHECK(fl_key_load_public(dave, pub, &err) == FL_EINPUT, "bad character refused");
    prefix_of(path, sizeof path, "nobody");
    CHECK(fl_key_load_pair(path, &kp, &err) == FL_EINPUT && strstr(err.msg, "not found"),
          "missing key: %s", err.msg);
}

/* fedllm keygen as a user runs it. */
static void test_keygen_cli(void) {
    const char *bin = getenv("FEDLLM_BIN");
    if (!bin) {
        printf("test_transport: FEDLLM_BIN not set, skipping the fedllm keygen checks\n");
        return;
    }
    char cmd[4096], prefix[1100], path[1200];
    snprintf(prefix, sizeof prefix, "%s/cli/nested/erin", dir);
    snprintf(cmd, sizeof cmd, "'%s' keygen --out '%s' > '%s/cli.out' 2>&1", bin, prefix, dir);
    int status = system(cmd);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "keygen exits 0");
    struct stat st;
    snprintf(path, sizeof path, "%s.key", prefix);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 07777) == 0600, "erin.key made, mode 0600");
    fl_keypair kp;
    CHECK(fl_key_load_pair(prefix, &kp, NULL) == FL_OK, "erin's pair loads");
    snprintf(path, sizeof path, "%s/cli.out", dir);
    FILE *f = fopen(path, "r");
    char out[512] = {0};
    if (f) {
        size_t n = fread(out, 1, sizeof out - 1, f);
        out[n] = '\0';
        fclose(f);
    }
    CHECK(strstr(out, kp.public_z85) && strstr(out, "erin.key") && strstr(out, "erin.pub"),
          "keygen prints the public key and both paths: %s", out);

    status = system(cmd); /* again: the key exists */
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2, "keygen over an existing key exits 2");
    f = fopen(path, "r");
    memset(out, 0, sizeof out);
    if (f) {
        size_t n = fread(out, 1, sizeof out - 1, f);
        out[n] = '\0';
        fclose(f);
    }
    char *newline = strchr(out, '\n');
    CHECK(strstr(out, "already exists") && newline && newline[1] == '\0',
          "one line naming the problem: %s", out);
    snprintf(cmd, sizeof cmd, "'%s' keygen --out '%s/x.key' > /dev/null 2>&1", bin, dir);
    status = system(cmd);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2, "--out ending in .key exits 2");
    snprintf(cmd, sizeof cmd, "'%s' keygen > /dev/null 2>&1", bin);
    status = system(cmd);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2, "no --out exits 2");
}

/* ---- a listed client, both ways ------------------------------------------------------------- */

typedef struct echo_server {
    fl_endpoint *e;
    int handled;
    int bad; /* messages that did not decode */
    char froms[8][64];
} echo_server;

/* Answers each message with a round_start carrying the payload back (times 2 in the name), until
 * a leave from every client or 5 s of silence. */
static void *echo_main(void *arg) {
    echo_server *s = arg;
    int left = 0;
    while (left < 2) {
        fl_msg m;
        char from[64];
        fl_err err = {0};
        int rc = recv_msg(s->e, 5000, &m, from, &err);
        if (rc == FL_ETIMEOUT) break;
        if (rc != FL_OK) {
            s->bad++;
            continue;
        }
        if (s->handled < 8) snprintf(s->froms[s->handled], 64, "%s", from);
        s->handled++;
        if (m.type == FL_MSG_LEAVE)
            left++;
        else
            send_msg(s->e, from, FL_MSG_ROUND_START, "server", (uint64_t)s->handled, m.payload,
                     m.payload_len, &err);
        fl_msg_free(&m);
    }
    return NULL;
}

static void test_round_trip(const char *address) {
    fl_err err = {0};
    echo_server s = {0};
    s.e = start_server(address, &err);
    CHECK(s.e != NULL, "server at %s: %s", address, err.msg);
    if (!s.e) return;
    const char *bound = fl_endpoint_address(s.e);
    CHECK(strstr(bound, "*") == NULL, "bound address %s has a real port", bound);
    fl_endpoint *alice = fl_endpoint_client(bound, &alice_keys, server_keys.public_z85,
                                            HEARTBEAT_MS, MAX_PAYLOAD, &err);
    fl_endpoint *bob = fl_endpoint_client(bound, &bob_keys, server_keys.public_z85, HEARTBEAT_MS,
                                          MAX_PAYLOAD, &err);
    CHECK(alice && bob, "clients: %s", err.msg);
    pthread_t thread;
    pthread_create(&thread, NULL, echo_main, &s);

    size_t len_a, len_b;
    uint8_t *payload_a = make_payload(250000, 1.0f, &len_a); /* 1 MB, several TCP segments */
    uint8_t *payload_b = make_payload(10, -1.0f, &len_b);
    /* alice's header claims to be bob: the server must still see alice */
    CHECK(send_msg(alice, NULL, FL_MSG_UPDATE, "bob", 1, payload_a, len_a, &err) == FL_OK,
          "alice sends: %s", err.msg);
    CHECK(send_msg(bob, NULL, FL_MSG_JOIN, "bob", 1, NULL, 0, &err) == FL_OK, "bob sends: %s",
          err.msg);
    fl_msg m;
    char from[64];
    int rc = recv_msg(alice, 5000, &m, from, &err);
    CHECK(rc == FL_OK && m.type == FL_MSG_ROUND_START && strcmp(from, "server") == 0 &&
              strcmp(m.sender, "server") == 0,
          "alice gets a reply: %s", err.msg);
    CHECK(m.payload_len == len_a && memcmp(m.payload, payload_a, len_a) == 0,
          "alice's megabyte comes back intact");
    fl_msg_free(&m);
    rc = recv_msg(bob, 5000, &m, from, &err);
    CHECK(rc == FL_OK && m.type == FL_MSG_ROUND_START && m.payload_len == 0, "bob's reply: %s",
          err.msg);
    fl_msg_free(&m);
    CHECK(send_msg(bob, NULL, FL_MSG_UPDATE, "bob", 2, payload_b, len_b, &err) == FL_OK,
          "bob sends a payload");
    rc = recv_msg(bob, 5000, &m, from, &err);
    CHECK(rc == FL_OK && m.payload_len == len_b && memcmp(m.payload, payload_b, len_b) == 0,
          "bob's payload comes back: %s", err.msg);
    fl_msg_free(&m);
    CHECK(fl_endpoint_connected(alice) == 1 && fl_endpoint_connected(alice) == 0 &&
              fl_endpoint_is_up(alice) == 1,
          "alice's handshake is reported once, and the connection is up");

    send_msg(alice, NULL, FL_MSG_LEAVE, "alice", 2, NULL, 0, &err);
    send_msg(bob, NULL, FL_MSG_LEAVE, "bob", 3, NULL, 0, &err);
    pthread_join(thread, NULL);
    CHECK(s.handled == 5 && s.bad == 0, "server handled %d messages (%d bad)", s.handled, s.bad);
    int alice_seen = 0, bob_seen = 0;
    for (int i = 0; i < s.handled && i < 8; i++) {
        alice_seen += strcmp(s.froms[i], "alice") == 0;
        bob_seen += strcmp(s.froms[i], "bob") == 0;
    }
    CHECK(alice_seen == 2 && bob_seen == 3, "names come from the keys (alice %d, bob %d)",
          alice_seen, bob_seen);

    /* after bob leaves for good, sending to him fails instead of queueing forever */
    fl_endpoint_free(bob);
    int64_t start = now_ms();
    rc = FL_OK;
    while (rc == FL_OK && now_ms() - start < 3000) {
        rc = send_msg(s.e, "bob", FL_MSG_ROUND_END, "server", 100, NULL, 0, &err);
        if (rc == FL_OK) usleep(20000);
    }
    CHECK(rc == FL_EPEER && strstr(err.msg, "client bob is not connected"),
          "send to a departed client: %s", err.msg);
    CHECK(send_msg(s.e, "zed", FL_MSG_ROUND_END, "server", 101, NULL, 0, &err) == FL_EINTERNAL,
          "send to a name not in the job");
    fl_endpoint_free(alice);
    fl_endpoint_free(s.e);
    free(payload_a);
    free(payload_b);
}

/* ---- refusals -------------------------------------------------------------------------------- */

static void test_unlisted_key(void) {
    fl_err err = {0};
    fl_endpoint *server = start_server("tcp://127.0.0.1:*", &err);
    CHECK(server != NULL, "server: %s", err.msg);
    if (!server) return;
    fl_endpoint *carol =
        fl_endpoint_client(fl_endpoint_address(server), &carol_keys, server_keys.public_z85,
                           HEARTBEAT_MS, MAX_PAYLOAD, &err);
    CHECK(carol != NULL, "carol's endpoint: %s", err.msg);
    CHECK(send_msg(carol, NULL, FL_MSG_JOIN, "alice", 1, NULL, 0, &err) == FL_OK,
          "carol's join is queued: %s", err.msg);
    int64_t start = now_ms();
    fl_msg m;
    char from[64];
    int rc = recv_msg(carol, 5000, &m, from, &err);
    int64_t waited = now_ms() - start;
    CHECK(rc == FL_EPEER && strstr(err.msg, "refused this client's key"), "carol is told: %d %s",
          rc, err.msg);
    CHECK(waited < 2500, "within a couple of seconds (%lld ms)", (long long)waited);
    CHECK(send_msg(carol, NULL, FL_MSG_JOIN, "carol", 2, NULL, 0, &err) == FL_EPEER,
          "later sends fail too");
    CHECK(fl_endpoint_connected(carol) == 0 && fl_endpoint_is_up(carol) == 0, "never connected");
    rc = recv_msg(server, 300, &m, from, &err);
    CHECK(rc == FL_ETIMEOUT, "the server never receives carol's message (%d %s)", rc, err.msg);
    char key[41], address[64];
    CHECK(fl_endpoint_denied(server, key, address) >= 1 &&
              strcmp(key, carol_keys.public_z85) == 0 && strstr(address, "127.0.0.1"),
          "the server can log whom it denied: %s from %s", key, address);
    fl_endpoint_free(carol);
    fl_endpoint_free(server);
}

static void test_wrong_server_key(void) {
    fl_err err = {0};
    fl_endpoint *server = start_server("tcp://127.0.0.1:*", &err);
    CHECK(server != NULL, "server: %s", err.msg);
    if (!server) return;
    /* alice is listed, but pins bob's public key as the server's */
    fl_endpoint *alice = fl_endpoint_client(fl_endpoint_address(server), &alice_keys,
                                            bob_keys.public_z85, HEARTBEAT_MS, MAX_PAYLOAD, &err);
    CHECK(alice != NULL, "alice's endpoint: %s", err.msg);
    send_msg(alice, NULL, FL_MSG_JOIN, "alice", 1, NULL, 0, &err);
    int64_t start = now_ms();
    fl_msg m;
    char from[64];
    int rc = recv_msg(alice, 8000, &m, from, &err);
    int64_t waited = now_ms() - start;
    CHECK(rc == FL_EPEER && strstr(err.msg, "handshake") && strstr(err.msg, "public key"),
          "alice is told: %d %s", rc, err.msg);
    CHECK(waited < 4000, "within a few seconds (%lld ms)", (long long)waited);
    rc = recv_msg(server, 200, &m, from, &err);
    CHECK(rc == FL_ETIMEOUT, "the server receives nothing (%d %s)", rc, err.msg);
    CHECK(fl_endpoint_denied(server, NULL, NULL) == 0, "not a ZAP denial");
    fl_endpoint_free(alice);
    fl_endpoint_free(server);
}

static void test_addresses_and_deadlines(void) {
    fl_err err = {0};
    fl_endpoint *server = start_server("tcp://127.0.0.1:*", &err);
    CHECK(server != NULL, "server: %s", err.msg);
    if (!server) return;
    const char *address = fl_endpoint_address(server);
    fl_endpoint *second = start_server(address, &err);
    char want[1200];
    snprintf(want, sizeof want, "%s: address already in use", address);
    CHECK(!second && err.code == FL_EINPUT && strcmp(err.msg, want) == 0, "second server on %s: %s",
          address, err.msg);
    fl_endpoint_free(second);
    CHECK(!start_server("tcp://127.0.0.1", &err) && err.code == FL_EINPUT &&
              strstr(err.msg, "not a valid address"),
          "no port: %s", err.msg);
    CHECK(!start_server("bogus://x", &err) && err.code == FL_EINPUT, "unknown transport: %s",
          err.msg);
    CHECK(!fl_endpoint_client("tcp://", &alice_keys, server_keys.public_z85, 0, 0, &err) &&
              err.code == FL_EINPUT,
          "client with a malformed address: %s", err.msg);
    CHECK(!fl_endpoint_client(address, &alice_keys, "short", 0, 0, &err) && err.code == FL_EINPUT,
          "client with a malformed server key: %s", err.msg);
    fl_peer_key twice[2] = {listed[0], listed[0]};
    snprintf(twice[1].name, sizeof twice[1].name, "alias");
    CHECK(!fl_endpoint_server("tcp://127.0.0.1:*", &server_keys, twice, 2, 0, 0, &err) &&
              strstr(err.msg, "same public key"),
          "one key listed for two clients: %s", err.msg);

    /* deadlines */
    fl_endpoint *alice = fl_endpoint_client(address, &alice_keys, server_keys.public_z85,
                                            HEARTBEAT_MS, MAX_PAYLOAD, &err);
    char from[64], *header;
    uint8_t *payload;
    size_t header_len, payload_len;
    int64_t start = now_ms();
    int rc = fl_endpoint_recv(server, 150, MAX_PAYLOAD, from, &header, &header_len, &payload,
                              &payload_len, &err);
    int64_t waited = now_ms() - start;
    CHECK(rc == FL_ETIMEOUT && waited >= 140 && waited < 1000,
          "server recv deadline: %d after %lld ms", rc, (long long)waited);
    start = now_ms();
    rc = fl_endpoint_recv(alice, 150, MAX_PAYLOAD, from, &header, &header_len, &payload,
                          &payload_len, &err);
    waited = now_ms() - start;
    CHECK(rc == FL_ETIMEOUT && waited >= 140 && waited < 1000 && !header && !payload,
          "client recv deadline: %d after %lld ms (%s)", rc, (long long)waited, err.msg);
    CHECK(fl_endpoint_recv(alice, -1, MAX_PAYLOAD, from, &header, &header_len, &payload,
                           &payload_len, &err) == FL_EINTERNAL,
          "waiting forever is refused");
    CHECK(fl_endpoint_recv(alice, 0, MAX_PAYLOAD, from, &header, &header_len, &payload,
                           &payload_len, &err) == FL_ETIMEOUT,
          "a zero timeout polls");
    CHECK(fl_endpoint_send(server, "alice", "{}", 2, NULL, 0, 100, &err) == FL_EPEER &&
              strstr(err.msg, "not connected"),
          "send to a client that never spoke: %s", err.msg);
    fl_endpoint_free(alice);
    fl_endpoint_free(server);
}

/* Frames that no fedllm party sends, from a raw socket holding alice's key. */
static void test_malformed_frames(void) {
    fl_err err = {0};
    fl_endpoint *server = start_server("tcp://127.0.0.1:*", &err);
    CHECK(server != NULL, "server: %s", err.msg);
    if (!server) return;
    void *ctx = zmq_ctx_new();
    void *raw = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(raw, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(raw, ZMQ_CURVE_SERVERKEY, server_keys.public_z85, 40);
    zmq_setsockopt(raw, ZMQ_CURVE_PUBLICKEY, alice_keys.public_z85, 40);
    zmq_setsockopt(raw, ZMQ_CURVE_SECRETKEY, alice_keys.secret_z85, 40);
    zmq_connect(raw, fl_endpoint_address(server));
    zmq_send(raw, "a", 1, ZMQ_SNDMORE); /* three frames */
    zmq_send(raw, "b", 1, ZMQ_SNDMORE);
    zmq_send(raw, "c", 1, 0);
    size_t big_len = FL_MSG_MAX_HEADER_BYTES + 1;
    char *big = calloc(1, big_len);
    zmq_send(raw, big, big_len, 0); /* an oversized header */
    zmq_send(raw, "{}", 2, ZMQ_SNDMORE);
    zmq_send(raw, big, 1000, 0); /* a payload over the receiver's limit */
    zmq_send(raw, "{}", 2, 0);   /* and a well-formed two-byte header last */
    free(big);

    char from[64], *header;
    uint8_t *payload;
    size_t header_len, payload_len;
    int rc = fl_endpoint_recv(server, 3000, 500, from, &header, &header_len, &payload, &payload_len,
                              &err);
    CHECK(rc == FL_EPEER && strstr(err.msg, "client alice") && strstr(err.msg, "with 3 frames") &&
              strcmp(from, "alice") == 0 && !header && !payload,
          "three frames dropped: %s", err.msg);
    rc = fl_endpoint_recv(server, 3000, 500, from, &header, &header_len, &payload, &payload_len,
                          &err);
    CHECK(rc == FL_EPEER && strstr(err.msg, "header"), "oversized header dropped: %s", err.msg);
    rc = fl_endpoint_recv(server, 3000, 500, from, &header, &header_len, &payload, &payload_len,
                          &err);
    CHECK(rc == FL_EPEER && strstr(err.msg, "payload"), "oversized payload dropped: %s", err.msg);
    rc = fl_endpoint_recv(server, 3000, 500, from, &header, &header_len, &payload, &payload_len,
                          &err);
    CHECK(rc == FL_OK && header_len == 2 && memcmp(header, "{}", 3) == 0 && !payload &&
              strcmp(from, "alice") == 0,
          "the endpoint goes on: %s", err.msg);
    free(header);
    zmq_close(raw);
    zmq_ctx_term(ctx);
    fl_endpoint_free(server);
}

/* ---- before authentication ------------------------------------------------------------------- */

#define FLOOD_LIMIT       ((size_t)1 << 20) /* the server's frame bound in this test */
#define FLOOD_CONNECTIONS 4
#define FLOOD_STREAM      ((size_t)48 << 20) /* bytes each connection tries to push */

static long vm_rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
    if (f) fclose(f);
    return kib;
}

/* The pre-authentication reproducer over a raw TCP connection to 127.0.0.1:port: a ZMTP 3.0
 * greeting asking for CURVE (signature, version 3.0, mechanism, as-server 0, filler: 64 bytes),
 * then a command frame (flags 0x06: command, 8-byte size) declaring `declared` bytes, then up to
 * `stream` bytes of its body, until the server stops reading (2 s without progress) or closes.
 * Returns the connected socket (the caller closes it), -1 if it could not connect; *pushed gets
 * the body bytes the kernel took. */
static int flood_connection(int port, uint64_t declared, size_t stream, size_t *pushed) {
    *pushed = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval patience = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &patience, sizeof patience);
    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    uint8_t start[64 + 9] = {0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 0, 'C', 'U', 'R', 'V', 'E'};
    start[64] = 0x06;
    for (int i = 0; i < 8; i++)
        start[65 + i] = (uint8_t)(declared >> (56 - 8 * i));
    if (send(fd, start, sizeof start, MSG_NOSIGNAL) != (ssize_t)sizeof start) return fd;
    static uint8_t chunk[1 << 16];
    memset(chunk, 'x', sizeof chunk);
    while (*pushed < stream) {
        ssize_t n = send(fd, chunk, sizeof chunk, MSG_NOSIGNAL);
        if (n <= 0) break; /* closed by the server, or it stopped reading */
        *pushed += (size_t)n;
    }
    return fd;
}

/* A server whose frames are bounded holds no more than the bound per connection that has not
 * proven a key, however much such a connection declares or sends, and still serves its clients. */
static void test_unauthenticated_flood(void) {
    fl_err err = {0};
    fl_endpoint *server = fl_endpoint_server("tcp://127.0.0.1:*", &server_keys, listed, 2,
                                             HEARTBEAT_MS, FLOOD_LIMIT, &err);
    CHECK(server != NULL, "server: %s", err.msg);
    if (!server) return;
    const char *colon = strrchr(fl_endpoint_address(server), ':');
    int port = colon ? atoi(colon + 1) : 0;
    long before = vm_rss_kib();
    /* the reproducer (8 GiB declared), then frames just under the bound: both end in a refusal */
    const uint64_t declared[2] = {(uint64_t)8 << 30, FLOOD_LIMIT - 4096};
    for (int kind = 0; kind < 2; kind++) {
        int fds[FLOOD_CONNECTIONS];
        size_t pushed_total = 0;
        for (int i = 0; i < FLOOD_CONNECTIONS; i++) {
            size_t pushed = 0;
            fds[i] = flood_connection(port, declared[kind], FLOOD_STREAM, &pushed);
            CHECK(fds[i] >= 0, "raw connection %d to port %d", i, port);
            pushed_total += pushed;
        }
        usleep(300 * 1000); /* let the I/O thread read what the kernel buffered */
        long grown = vm_rss_kib() - before;
        /* at most one frame of the bound per connection, and 8 MiB for the I/O thread's buffers
         * and allocator noise; without the bound each connection would hold what it pushed */
        long bound = (long)(FLOOD_CONNECTIONS * FLOOD_LIMIT / 1024) + 8 * 1024;
        CHECK(grown <= bound,
              "%s: the server grew by %ld KiB (bound %ld KiB) after %d connections pushed %zu "
              "bytes",
              kind ? "frames under the bound" : "8 GiB frames", grown, bound, FLOOD_CONNECTIONS,
              pushed_total);
        CHECK(pushed_total < (size_t)FLOOD_CONNECTIONS * FLOOD_STREAM,
              "the server stopped reading the flood (%zu bytes pushed)", pushed_total);
        for (int i = 0; i < FLOOD_CONNECTIONS; i++)
            if (fds[i] >= 0) close(fds[i]);
    }
    fl_endpoint *alice =
        fl_endpoint_client(fl_endpoint_address(server), &alice_keys, server_keys.public_z85,
                           HEARTBEAT_MS, FLOOD_LIMIT, &err);
    CHECK(alice && send_msg(alice, NULL, FL_MSG_JOIN, "alice", 1, NULL, 0, &err) == FL_OK,
          "alice sends after the flood: %s", err.msg);
    fl_msg m;
    char from[64];
    int rc = recv_msg(server, 5000, &m, from, &err);
    CHECK(rc == FL_OK && strcmp(from, "alice") == 0 && m.type == FL_MSG_JOIN,
          "the server still serves alice: %d %s", rc, err.msg);
    if (rc == FL_OK) fl_msg_free(&m);
    rc = alice ? send_msg(server, "alice", FL_MSG_HEARTBEAT, "server", 1, NULL, 0, &err) : -1;
    CHECK(rc == FL_OK && recv_msg(alice, 5000, &m, from, &err) == FL_OK, "and answers her: %s",
          err.msg);
    if (rc == FL_OK) fl_msg_free(&m);
    fl_endpoint_free(alice);
    fl_endpoint_free(server);
}

/* ---- reconnection ---------------------------------------------------------------------------- */

static void test_reconnect(void) {
    fl_err err = {0};
    fl_endpoint *server = start_server("tcp://127.0.0.1:*", &err);
    CHECK(server != NULL, "server: %s", err.msg);
    if (!server) return;
    char address[256];
    snprintf(address, sizeof address, "%s", fl_endpoint_address(server));
    fl_endpoint *alice = fl_endpoint_client(address, &alice_keys, server_keys.public_z85,
                                            HEARTBEAT_MS, MAX_PAYLOAD, &err);
    fl_msg m;
    char from[64];
    send_msg(alice, NULL, FL_MSG_JOIN, "alice", 1, NULL, 0, &err);
    int rc = recv_msg(server, 3000, &m, from, &err);
    CHECK(rc == FL_OK && m.seq == 1 && strcmp(from, "alice") == 0, "first server: %s", err.msg);
    fl_msg_free(&m);
    CHECK(fl_endpoint_connected(alice) == 1, "alice connected");

    /* the server goes away: alice's sends queue, her receives time out (not a refusal) */
    fl_endpoint_free(server);
    int64_t start = now_ms();
    while (fl_endpoint_is_up(alice) && now_ms() - start < 2000)
        usleep(10000);
    CHECK(!fl_endpoint_is_up(alice), "alice notices the server is gone");
    CHECK(send_msg(alice, NULL, FL_MSG_HEARTBEAT, "alice", 2, NULL, 0, &err) == FL_OK,
          "a send while the server is down is queued: %s", err.msg);
    rc = recv_msg(alice, 300, &m, from, &err);
    CHECK(rc == FL_ETIMEOUT, "a receive while it is down times out: %d %s", rc, err.msg);

    /* a new server on the same address: the queued message and the next ones get through */
    server = start_server(address, &err);
    CHECK(server != NULL, "restarted server at %s: %s", address, err.msg);
    if (!server) {
        fl_endpoint_free(alice);
        return;
    }
    rc = recv_msg(server, 5000, &m, from, &err);
    CHECK(rc == FL_OK && m.type == FL_MSG_HEARTBEAT && m.seq == 2 && strcmp(from, "alice") == 0,
          "the queued message arrives at the new server: %s", err.msg);
    fl_msg_free(&m);
    CHECK(send_msg(alice, NULL, FL_MSG_JOIN, "alice", 3, NULL, 0, &err) == FL_OK, "next send");
    rc = recv_msg(server, 5000, &m, from, &err);
    CHECK(rc == FL_OK && m.seq == 3, "the next one too: %s", err.msg);
    fl_msg_free(&m);
    CHECK(send_msg(server, "alice", FL_MSG_ROUND_START, "server", 1, NULL, 0, &err) == FL_OK,
          "the new server reaches alice: %s", err.msg);
    rc = recv_msg(alice, 3000, &m, from, &err);
    CHECK(rc == FL_OK && m.type == FL_MSG_ROUND_START, "alice hears the new server: %s", err.msg);
    fl_msg_free(&m);
    CHECK(fl_endpoint_connected(alice) == 1, "the reconnection is reported");
    fl_endpoint_free(alice);
    fl_endpoint_free(server);
}

int main(void) {
    snprintf(dir, sizeof dir, "%s", tu_tmpdir("test_transport"));
    make_keys();
    test_key_files();
    test_keygen_cli();
    test_round_trip("tcp://127.0.0.1:*");
    char ipc[1200]; /* a socket path holds at most 107 bytes: deep build folders use /tmp */
    snprintf(ipc, sizeof ipc, "ipc://%s/server.sock", dir);
    if (strlen(ipc) - 6 > 100)
        snprintf(ipc, sizeof ipc, "ipc:///tmp/fedllm-test-%d.sock", getpid());
    test_round_trip(ipc);
    if (strncmp(ipc, "ipc:///tmp/", 11) == 0) unlink(ipc + 6);
    test_unlisted_key();
    test_wrong_server_key();
    test_addresses_and_deadlines();
    test_malformed_frames();
    test_unauthenticated_flood();
    test_reconnect();
    return tu_finish("test_transport");
}
