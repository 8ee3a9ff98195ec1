/* transport.c — CURVE keys and the ZeroMQ endpoints federation parties talk through (see
 * transport.h; docs/protocol.md describes what travels over them).
 *
 * Server: one ZeroMQ context holding a ROUTER socket (CURVE server) and a ZAP handler, a REP
 * socket bound at inproc://zeromq.zap.01 and served by its own thread. libzmq asks the handler
 * about every CURVE handshake; the handler admits a key listed in the job and answers with the
 * client's name as the ZAP User-Id, which libzmq then attaches to every frame from that
 * connection. So the name fl_endpoint_recv reports is proven by the key. libzmq admits every key
 * when no handler is bound (unless ZMQ_ZAP_ENFORCE_DOMAIN, set where the library has it), so the
 * handler is bound before the ROUTER exists and outlives it, and recv drops anything from a
 * connection without a listed name all the same. The server keeps, for each listed client, the
 * routing id of the connection it last heard from, which is where replies go; a client that
 * reconnects is reachable again once it has sent something.
 *
 * Client: one context holding a DEALER (CURVE client pinned to the server's key) and a PAIR socket
 * reading the DEALER's monitor events. libzmq reconnects by itself and keeps messages sent while
 * disconnected queued for the next connection; the monitor tells this file whether handshakes
 * succeed, fail because the server denied the key (ZAP status 400), or keep failing otherwise
 * (the server cannot decrypt our hello: we hold the wrong server key). Events are drained inside
 * send, recv and the status calls, so the client needs no thread of its own.
 *
 * Every wait is bounded: sends use ZMQ_SNDTIMEO, receives zmq_poll with the time left. Sockets
 * close with ZMQ_LINGER 0, so freeing an endpoint never waits for a peer. The memory a peer can
 * make us hold is bounded too, before it authenticates as after (set_common_options): a frame by
 * the caller's max_message_bytes, a handshake by HANDSHAKE_TIMEOUT_MS, the unread messages of a
 * connection to the server by RECV_QUEUE_MESSAGES. */
#define _GNU_SOURCE
#include "fedllm/transport.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "fedllm/fileio.h"
#include "fedllm/protocol.h"

#define KEY_BYTES                32
#define KEY_FILE_MAX_BYTES       4096
#define DEFAULT_HEARTBEAT_MS     1000
#define HEARTBEAT_MISSES         3     /* a peer silent this many intervals is dropped */
#define RECONNECT_IVL_MS         100   /* first retry after a lost connection */
#define RECONNECT_IVL_MAX_MS     2000  /* backoff ceiling */
#define HANDSHAKE_FAILS_TO_BLAME 3     /* consecutive failed handshakes before we name the key */
#define ROUTING_ID_MAX           256   /* libzmq routing ids are at most 255 bytes */
#define HANDSHAKE_TIMEOUT_MS     10000 /* greeting + CURVE + ZAP; then the connection is dropped */
/* Server, per client connection: unread messages. A client sends a few a round and one per
 * heartbeat while it waits, and the server reads them as they come. Not set on a client: it does
 * not read while it trains, and a full queue stops libzmq reading the connection, ZMTP heartbeats
 * included. */
#define RECV_QUEUE_MESSAGES 64
#define DEFAULT_MAX_MESSAGE (((size_t)4 << 30) + FL_MSG_MAX_HEADER_BYTES)
#define ZAP_ENDPOINT        "inproc://zeromq.zap.01"
#define ZAP_DOMAIN          "fedllm"
#define MONITOR_ENDPOINT    "inproc://fedllm.monitor"
#ifdef ZMQ_ZAP_ENFORCE_DOMAIN
#define ZAP_ENFORCE_DOMAIN ZMQ_ZAP_ENFORCE_DOMAIN
#else
#define ZAP_ENFORCE_DOMAIN 93 /* libzmq >= 4.3 (draft API): no ZAP handler means no admission */
#endif

static const char Z85_ALPHABET[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                   ".-:+=^!/*?&<>()[]{}@%$#";

/* ---- keys ------------------------------------------------------------------------------------ */

static int key_z85_valid(const char *z85) {
    uint8_t raw[KEY_BYTES];
    return strlen(z85) == FL_KEY_Z85_LEN && strspn(z85, Z85_ALPHABET) == FL_KEY_Z85_LEN &&
           zmq_z85_decode(raw, z85) != NULL;
}

static int key_path(char *out, size_t size, const char *prefix, const char *ext, fl_err *err) {
    int n = snprintf(out, size, "%s%s", prefix, ext);
    if (n < 0 || (size_t)n >= size)
        return fl_err_set(err, FL_EINPUT, "%.200s...: key path too long", prefix);
    return FL_OK;
}

/* Reads one Z85 key (40 characters, white space around it allowed) from path. */
static int read_key_file(const char *path, const char *what, char key[41], fl_err *err) {
    char *text = NULL;
    size_t len = 0;
    int rc = fl_read_file(path, &text, &len, KEY_FILE_MAX_BYTES, err);
    if (rc != FL_OK) return rc;
    const char *begin = text, *end = text + len;
    while (begin < end && strchr(" \t\r\n", *begin) && *begin)
        begin++;
    while (end > begin && strchr(" \t\r\n", end[-1]) && end[-1])
        end--;
    size_t n = (size_t)(end - begin);
    if (n == FL_KEY_Z85_LEN) {
        memcpy(key, begin, n);
        key[n] = '\0';
    }
    free(text);
    if (n != FL_KEY_Z85_LEN || !key_z85_valid(key)) {
        key[0] = '\0';
        return fl_err_set(err, FL_EINPUT,
                          "%s: expected a %s key (40 Z85 characters, as fedllm keygen writes)",
                          path, what);
    }
    return FL_OK;
}

/* Writes the secret key to path with mode 0600 without ever replacing an existing file: the bytes
 * go to a private temp file, which is then hard-linked to the final name (link fails if the name
 * exists, so two keygens cannot both win) and unlinked. */
static int write_secret_key(const char *path, const char *secret_z85, fl_err *err) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return fl_err_set(err, FL_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    char line[FL_KEY_Z85_LEN + 2];
    snprintf(line, sizeof line, "%s\n", secret_z85);
    size_t len = strlen(line);
    int rc = FL_OK;
    if (fchmod(fd, 0600) != 0 || write(fd, line, len) != (ssize_t)len || fsync(fd) != 0)
        rc = fl_err_set(err, FL_EIO, "%s: cannot write: %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == FL_OK)
        rc = fl_err_set(err, FL_EIO, "%s: cannot write: %s", tmp, strerror(errno));
    if (rc == FL_OK && link(tmp, path) != 0)
        rc = errno == EEXIST
                 ? fl_err_set(err, FL_EINPUT,
                              "%s: already exists (fedllm keygen never replaces a secret key; "
                              "remove it first)",
                              path)
                 : fl_err_set(err, FL_EIO, "%s: cannot create: %s", path, strerror(errno));
    explicit_bzero(line, sizeof line);
    unlink(tmp);
    return rc;
}

int fl_keygen_pair(const char *prefix, fl_keypair *kp, fl_err *err) {
    memset(kp, 0, sizeof *kp);
    char key_file[4096], pub_file[4096];
    int rc = key_path(key_file, sizeof key_file, prefix, ".key", err);
    if (rc == FL_OK) rc = key_path(pub_file, sizeof pub_file, prefix, ".pub", err);
    if (rc != FL_OK) return rc;
    struct stat st;
    if (lstat(key_file, &st) == 0)
        return fl_err_set(err, FL_EINPUT,
                          "%s: already exists (fedllm keygen never replaces a secret key; remove "
                          "it first)",
                          key_file);
    if (zmq_curve_keypair(kp->public_z85, kp->secret_z85) != 0)
        return fl_err_set(err, FL_EINTERNAL, "cannot make a CURVE key pair: %s",
                          zmq_strerror(zmq_errno()));
    rc = write_secret_key(key_file, kp->secret_z85, err);
    if (rc == FL_OK) {
        char line[FL_KEY_Z85_LEN + 2];
        snprintf(line, sizeof line, "%s\n", kp->public_z85);
        rc = fl_write_file_atomic(pub_file, line, strlen(line), err);
        if (rc != FL_OK) unlink(key_file);
    }
    if (rc != FL_OK) explicit_bzero(kp, sizeof *kp);
    return rc;
}

int fl_keygen(const char *prefix, fl_err *err) {
    fl_keypair kp;
    int rc = fl_keygen_pair(prefix, &kp, err);
    explicit_bzero(&kp, sizeof kp);
    return rc;
}

int fl_key_load_public(const char *prefix, char public_z85[41], fl_err *err) {
    char pub_file[4096];
    public_z85[0] = '\0';
    int rc = key_path(pub_file, sizeof pub_file, prefix, ".pub", err);
    return rc == FL_OK ? read_key_file(pub_file, "public", public_z85, err) : rc;
}

int fl_key_load_pair(const char *prefix, fl_keypair *kp, fl_err *err) {
    memset(kp, 0, sizeof *kp);
    char key_file[4096];
    int rc = key_path(key_file, sizeof key_file, prefix, ".key", err);
    if (rc != FL_OK) return rc;
    struct stat st;
    if (stat(key_file, &st) != 0)
        return errno == ENOENT
                   ? fl_err_set(err, FL_EINPUT, "%s: file not found (make it with fedllm keygen)",
                                key_file)
                   : fl_err_set(err, FL_EIO, "%s: cannot read: %s", key_file, strerror(errno));
    if (!S_ISREG(st.st_mode)) return fl_err_set(err, FL_EINPUT, "%s: not a regular file", key_file);
    if (st.st_mode & 077)
        return fl_err_set(err, FL_EINPUT, "%s: mode %04o, expected 0600 (chmod 600 it)", key_file,
                          (unsigned)(st.st_mode & 07777));
    rc = read_key_file(key_file, "secret", kp->secret_z85, err);
    if (rc == FL_OK) rc = fl_key_load_public(prefix, kp->public_z85, err);
    char derived[41];
    if (rc == FL_OK && zmq_curve_public(derived, kp->secret_z85) != 0)
        rc = fl_err_set(err, FL_EINPUT, "%s: not a valid secret key", key_file);
    if (rc == FL_OK && strcmp(derived, kp->public_z85) != 0)
        rc = fl_err_set(err, FL_EINPUT,
                        "%s.pub is not the public key of %s (the two files do not belong together)",
                        prefix, key_file);
    if (rc != FL_OK) explicit_bzero(kp, sizeof *kp);
    return rc;
}

/* ---- endpoints ------------------------------------------------------------------------------- */

typedef enum { ENDPOINT_SERVER, ENDPOINT_CLIENT } endpoint_role;

/* A listed client as the server knows it. */
typedef struct server_peer {
    char name[FL_MSG_NAME_MAX];
    uint8_t key[KEY_BYTES];
    uint8_t routing_id[ROUTING_ID_MAX]; /* of the connection last heard from */
    size_t routing_id_len;              /* 0: none yet, or that connection is gone */
} server_peer;

/* What the client's monitor has seen. */
typedef enum { CLIENT_OK = 0, CLIENT_KEY_DENIED, CLIENT_HANDSHAKE_FAILING } client_refusal;

struct fl_endpoint {
    endpoint_role role;
    void *ctx;
    void *socket; /* ROUTER or DEALER */
    char address[1024];

    /* server */
    void *zap_socket; /* REP, used only by the ZAP thread once it runs */
    pthread_t zap_thread;
    int zap_thread_running;
    server_peer *peers;
    int n_peers;
    pthread_mutex_t denied_lock; /* guards the three fields below (ZAP thread vs caller) */
    int denied_count;
    char denied_key[41];
    char denied_address[64];

    /* client */
    void *monitor;          /* PAIR reading the DEALER's events */
    int handshake_reported; /* a success not yet returned by fl_endpoint_connected */
    int up;
    int failed_handshakes; /* consecutive, since the last success */
    client_refusal refusal;
};

static int64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int set_int(void *socket, int option, int value) {
    return zmq_setsockopt(socket, option, &value, sizeof value);
}

/* Heartbeats, linger, bounds and the options both roles share. ZMQ_MAXMSGSIZE holds from the first
 * byte a peer sends: libzmq reads the handshake's commands with the same decoder, which allocates
 * a frame's declared size as soon as it reads it, so without it anyone who reaches the port can
 * make us allocate (and, by sending the bytes, fill) any size before proving a key. A frame over
 * the bound ends its connection. With the handshake deadline this bounds what an unauthenticated
 * peer can hold to one frame of max_message_bytes for HANDSHAKE_TIMEOUT_MS. */
static int set_common_options(void *socket, int heartbeat_ms, size_t max_message_bytes) {
    int64_t max_frame = (int64_t)(max_message_bytes ? max_message_bytes : DEFAULT_MAX_MESSAGE);
    if (max_frame < FL_MSG_MAX_HEADER_BYTES) max_frame = FL_MSG_MAX_HEADER_BYTES;
    int rc = zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max_frame, sizeof max_frame);
    rc |= set_int(socket, ZMQ_HANDSHAKE_IVL, HANDSHAKE_TIMEOUT_MS);
    rc |= set_int(socket, ZMQ_LINGER, 0);
    rc |= set_int(socket, ZMQ_HEARTBEAT_IVL, heartbeat_ms);
    rc |= set_int(socket, ZMQ_HEARTBEAT_TIMEOUT, HEARTBEAT_MISSES * heartbeat_ms);
    rc |= set_int(socket, ZMQ_HEARTBEAT_TTL, HEARTBEAT_MISSES * heartbeat_ms);
    return rc;
}

static int heartbeat_value(int heartbeat_ms, int *out, fl_err *err) {
    if (heartbeat_ms < 0 || heartbeat_ms > 600000)
        return fl_err_set(err, FL_EINPUT, "heartbeat of %d ms: expected 0 (default) to 600000",
                          heartbeat_ms);
    *out = heartbeat_ms ? heartbeat_ms : DEFAULT_HEARTBEAT_MS;
    if (*out < 100) *out = 100; /* the TTL has decisecond resolution */
    return FL_OK;
}

/* Why bind or connect to address failed, as one line naming the address. */
static int address_error(const char *address, const char *verb, int errnum, fl_err *err) {
    switch (errnum) {
    case EADDRINUSE: return fl_err_set(err, FL_EINPUT, "%s: address already in use", address);
    case EADDRNOTAVAIL:
        return fl_err_set(err, FL_EINPUT, "%s: address not available on this machine", address);
    case EINVAL:
        return fl_err_set(err, FL_EINPUT,
                          "%s: not a valid address (expected tcp://HOST:PORT or ipc://PATH)",
                          address);
    case EPROTONOSUPPORT:
    case ENOCOMPATPROTO:
        return fl_err_set(err, FL_EINPUT, "%s: unsupported transport (expected tcp:// or ipc://)",
                          address);
    case ENODEV: return fl_err_set(err, FL_EINPUT, "%s: no such network interface", address);
    case EACCES: return fl_err_set(err, FL_EINPUT, "%s: permission denied", address);
    case ENAMETOOLONG:
        return fl_err_set(err, FL_EINPUT, "%s: path too long for an ipc socket (at most 107 bytes)",
                          address);
    case ENOENT: return fl_err_set(err, FL_EINPUT, "%s: no such folder", address);
    default:
        return fl_err_set(err, FL_EIO, "%s: cannot %s: %s", address, verb, zmq_strerror(errnum));
    }
}

static void endpoint_close_sockets(fl_endpoint *e) {
    if (e->monitor) {
        zmq_socket_monitor(e->socket, NULL, 0);
        zmq_close(e->monitor);
        e->monitor = NULL;
    }
    if (e->socket) zmq_close(e->socket);
    e->socket = NULL;
}

void fl_endpoint_free(fl_endpoint *e) {
    if (!e) return;
    endpoint_close_sockets(e);
    if (e->ctx) zmq_ctx_shutdown(e->ctx); /* wakes the ZAP thread with ETERM */
    if (e->zap_thread_running)
        pthread_join(e->zap_thread, NULL);
    else if (e->zap_socket)
        zmq_close(e->zap_socket);
    if (e->ctx) zmq_ctx_term(e->ctx);
    if (e->role == ENDPOINT_SERVER) pthread_mutex_destroy(&e->denied_lock);
    free(e->peers);
    free(e);
}

const char *fl_endpoint_address(const fl_endpoint *e) { return e->address; }

static void remember_address(fl_endpoint *e, const char *fallback) {
    size_t size = sizeof e->address;
    if (zmq_getsockopt(e->socket, ZMQ_LAST_ENDPOINT, e->address, &size) != 0 || !e->address[0])
        snprintf(e->address, sizeof e->address, "%s", fallback);
}

/* ---- server: the ZAP handler ----------------------------------------------------------------- */

/* ZAP request (RFC 27): version, request id, domain, address, identity, mechanism, credentials. */
#define ZAP_REQUEST_FRAMES 7

static void zap_reply(void *socket, zmq_msg_t *request_id, const char *status, const char *text,
                      const char *user_id) {
    zmq_send(socket, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(socket, zmq_msg_data(request_id), zmq_msg_size(request_id), ZMQ_SNDMORE);
    zmq_send(socket, status, strlen(status), ZMQ_SNDMORE);
    zmq_send(socket, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(socket, user_id, strlen(user_id), ZMQ_SNDMORE);
    zmq_send(socket, "", 0, 0);
}

static const server_peer *zap_find_key(const fl_endpoint *e, zmq_msg_t *credentials) {
    if (zmq_msg_size(credentials) != KEY_BYTES) return NULL;
    for (int i = 0; i < e->n_peers; i++)
        if (memcmp(e->peers[i].key, zmq_msg_data(credentials), KEY_BYTES) == 0) return &e->peers[i];
    return NULL;
}

static void zap_record_denied(fl_endpoint *e, zmq_msg_t *credentials, zmq_msg_t *address) {
    pthread_mutex_lock(&e->denied_lock);
    e->denied_count++;
    if (zmq_msg_size(credentials) == KEY_BYTES)
        zmq_z85_encode(e->denied_key, zmq_msg_data(credentials), KEY_BYTES);
    else
        snprintf(e->denied_key, sizeof e->denied_key, "?");
    size_t n = zmq_msg_size(address);
    if (n >= sizeof e->denied_address) n = sizeof e->denied_address - 1;
    memcpy(e->denied_address, zmq_msg_data(address), n);
    e->denied_address[n] = '\0';
    pthread_mutex_unlock(&e->denied_lock);
}

/* Receives one request into frames (the first ZAP_REQUEST_FRAMES of them; *n counts them all).
 * Returns -1 once the context is shutting down; frames kept are then already closed. */
static int zap_recv(void *socket, zmq_msg_t frames[ZAP_REQUEST_FRAMES], int *n) {
    *n = 0;
    for (int more = 1; more;) {
        zmq_msg_t scratch, *f = *n < ZAP_REQUEST_FRAMES ? &frames[*n] : &scratch;
        zmq_msg_init(f);
        if (zmq_msg_recv(f, socket, 0) < 0) {
            zmq_msg_close(f);
            if (zmq_errno() == EINTR) continue;
            for (int i = 0; i < *n && i < ZAP_REQUEST_FRAMES; i++)
                zmq_msg_close(&frames[i]);
            return -1;
        }
        more = zmq_msg_more(f);
        if (f == &scratch) zmq_msg_close(f);
        (*n)++;
    }
    return 0;
}

/* Answers ZAP requests until the context shuts down. A request that is not a well-formed CURVE
 * request is denied like an unlisted key. */
static void *zap_main(void *arg) {
    fl_endpoint *e = arg;
    void *socket = e->zap_socket;
    zmq_msg_t frames[ZAP_REQUEST_FRAMES];
    int n;
    while (zap_recv(socket, frames, &n) == 0) {
        int kept = n < ZAP_REQUEST_FRAMES ? n : ZAP_REQUEST_FRAMES;
        int well_formed = n == ZAP_REQUEST_FRAMES && zmq_msg_size(&frames[0]) == 3 &&
                          memcmp(zmq_msg_data(&frames[0]), "1.0", 3) == 0 &&
                          zmq_msg_size(&frames[5]) == 5 &&
                          memcmp(zmq_msg_data(&frames[5]), "CURVE", 5) == 0;
        const server_peer *peer = well_formed ? zap_find_key(e, &frames[6]) : NULL;
        zmq_msg_t no_id;
        zmq_msg_init(&no_id);
        zmq_msg_t *request_id = kept >= 2 ? &frames[1] : &no_id; /* REP must answer every time */
        if (peer)
            zap_reply(socket, request_id, "200", "OK", peer->name);
        else {
            if (well_formed) zap_record_denied(e, &frames[6], &frames[3]);
            zap_reply(socket, request_id, "400", "this client's key is not listed in the job", "");
        }
        zmq_msg_close(&no_id);
        for (int i = 0; i < kept; i++)
            zmq_msg_close(&frames[i]);
    }
    zmq_close(socket);
    return NULL;
}

int fl_endpoint_denied(fl_endpoint *e, char last_key_z85[41], char last_address[64]) {
    if (e->role != ENDPOINT_SERVER) return 0;
    pthread_mutex_lock(&e->denied_lock);
    int count = e->denied_count;
    if (last_key_z85) snprintf(last_key_z85, 41, "%s", e->denied_key);
    if (last_address) snprintf(last_address, 64, "%s", e->denied_address);
    pthread_mutex_unlock(&e->denied_lock);
    return count;
}

/* ---- server ---------------------------------------------------------------------------------- */

static int server_peers(fl_endpoint *e, const fl_peer_key *clients, int n_clients, fl_err *err) {
    if (n_clients < 0 || (n_clients > 0 && !clients))
        return fl_err_set(err, FL_EINTERNAL, "server with %d clients and no list", n_clients);
    e->peers = calloc((size_t)n_clients + 1, sizeof *e->peers);
    if (!e->peers) return fl_err_set(err, FL_ENOMEM, "out of memory for %d clients", n_clients);
    for (int i = 0; i < n_clients; i++) {
        const fl_peer_key *c = &clients[i];
        size_t name_len = strnlen(c->name, sizeof c->name);
        if (name_len == 0 || name_len >= sizeof c->name)
            return fl_err_set(err, FL_EINPUT, "client %d: the name is empty or too long", i + 1);
        if (strnlen(c->public_z85, sizeof c->public_z85) >= sizeof c->public_z85 ||
            !key_z85_valid(c->public_z85))
            return fl_err_set(err, FL_EINPUT, "client %s: not a valid public key", c->name);
        server_peer *p = &e->peers[i];
        memcpy(p->name, c->name, name_len + 1);
        zmq_z85_decode(p->key, c->public_z85);
        for (int j = 0; j < i; j++) {
            if (strcmp(e->peers[j].name, p->name) == 0)
                return fl_err_set(err, FL_EINPUT, "client %s is listed twice", p->name);
            if (memcmp(e->peers[j].key, p->key, KEY_BYTES) == 0)
                return fl_err_set(err, FL_EINPUT, "clients %s and %s have the same public key",
                                  e->peers[j].name, p->name);
        }
        e->n_peers = i + 1;
    }
    return FL_OK;
}

static int server_start_zap(fl_endpoint *e, fl_err *err) {
    e->zap_socket = zmq_socket(e->ctx, ZMQ_REP);
    if (!e->zap_socket || set_int(e->zap_socket, ZMQ_LINGER, 0) != 0 ||
        zmq_bind(e->zap_socket, ZAP_ENDPOINT) != 0)
        return fl_err_set(err, FL_EIO, "cannot start the key check (ZAP): %s",
                          zmq_strerror(zmq_errno()));
    /* thread creation is the full barrier libzmq asks for when a socket changes threads */
    if (pthread_create(&e->zap_thread, NULL, zap_main, e) != 0)
        return fl_err_set(err, FL_EIO, "cannot start the key check thread");
    e->zap_thread_running = 1;
    return FL_OK;
}

fl_endpoint *fl_endpoint_server(const char *address, const fl_keypair *server,
                                const fl_peer_key *clients, int n_clients, int heartbeat_ms,
                                size_t max_message_bytes, fl_err *err) {
    fl_endpoint *e = calloc(1, sizeof *e);
    if (!e) {
        fl_err_set(err, FL_ENOMEM, "out of memory for an endpoint");
        return NULL;
    }
    e->role = ENDPOINT_SERVER;
    pthread_mutex_init(&e->denied_lock, NULL);
    int hb = 0;
    int rc = heartbeat_value(heartbeat_ms, &hb, err);
    if (rc == FL_OK && (!key_z85_valid(server->secret_z85) || !key_z85_valid(server->public_z85)))
        rc = fl_err_set(err, FL_EINPUT, "the server's key pair is not valid Z85");
    if (rc == FL_OK) rc = server_peers(e, clients, n_clients, err);
    if (rc == FL_OK && !(e->ctx = zmq_ctx_new()))
        rc = fl_err_set(err, FL_EIO, "cannot create a ZeroMQ context: %s",
                        zmq_strerror(zmq_errno()));
    if (rc == FL_OK) rc = server_start_zap(e, err);
    if (rc == FL_OK) {
        e->socket = zmq_socket(e->ctx, ZMQ_ROUTER);
        if (!e->socket || set_common_options(e->socket, hb, max_message_bytes) != 0 ||
            set_int(e->socket, ZMQ_ROUTER_MANDATORY, 1) != 0 ||
            set_int(e->socket, ZMQ_RCVHWM, RECV_QUEUE_MESSAGES) != 0 ||
            set_int(e->socket, ZMQ_CURVE_SERVER, 1) != 0 ||
            zmq_setsockopt(e->socket, ZMQ_CURVE_SECRETKEY, server->secret_z85, FL_KEY_Z85_LEN) !=
                0 ||
            zmq_setsockopt(e->socket, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN, strlen(ZAP_DOMAIN)) != 0)
            rc = fl_err_set(err, FL_EIO, "cannot set up the server socket: %s",
                            zmq_strerror(zmq_errno()));
        /* fail closed should the handler ever be missing (a draft option: best effort; recv also
         * drops anything from a connection without a listed name) */
        if (e->socket) set_int(e->socket, ZAP_ENFORCE_DOMAIN, 1);
    }
    if (rc == FL_OK && zmq_bind(e->socket, address) != 0)
        rc = address_error(address, "bind", zmq_errno(), err);
    if (rc != FL_OK) {
        fl_endpoint_free(e);
        return NULL;
    }
    remember_address(e, address);
    return e;
}

static server_peer *server_find_peer(fl_endpoint *e, const char *name) {
    for (int i = 0; i < e->n_peers; i++)
        if (strcmp(e->peers[i].name, name) == 0) return &e->peers[i];
    return NULL;
}

/* ---- client ---------------------------------------------------------------------------------- */

/* Applies one monitor event to the client's view of its connection. */
static void client_event(fl_endpoint *e, uint16_t event, uint32_t value) {
    switch (event) {
    case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        e->handshake_reported = 1;
        e->up = 1;
        e->failed_handshakes = 0;
        e->refusal = CLIENT_OK;
        break;
    case ZMQ_EVENT_DISCONNECTED:
    case ZMQ_EVENT_CLOSED: e->up = 0; break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        e->up = 0;
        /* ZAP status 400 is "denied"; 300 (try later) and 500 (handler broke) are not our key */
        if (value == 400) e->refusal = CLIENT_KEY_DENIED;
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
        e->up = 0;
        if (++e->failed_handshakes >= HANDSHAKE_FAILS_TO_BLAME && e->refusal != CLIENT_KEY_DENIED)
            e->refusal = CLIENT_HANDSHAKE_FAILING;
        break;
    default: break;
    }
}

/* Reads every monitor event already queued (never waits). An event is two frames: 6 bytes (event
 * number, 16 bits, and value, 32 bits, host order) and the peer's address. */
static void client_drain_monitor(fl_endpoint *e) {
    if (!e->monitor) return;
    for (;;) {
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, e->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&frame);
            return;
        }
        int is_event = zmq_msg_size(&frame) == 6 && zmq_msg_more(&frame);
        uint16_t event = 0;
        uint32_t value = 0;
        if (is_event) {
            memcpy(&event, zmq_msg_data(&frame), 2);
            memcpy(&value, (uint8_t *)zmq_msg_data(&frame) + 2, 4);
        }
        while (zmq_msg_more(&frame)) /* the address frame */
            if (zmq_msg_recv(&frame, e->monitor, ZMQ_DONTWAIT) < 0) break;
        zmq_msg_close(&frame);
        if (is_event) client_event(e, event, value);
    }
}

static int client_refused(fl_endpoint *e, fl_err *err) {
    if (e->refusal == CLIENT_KEY_DENIED)
        return fl_err_set(err, FL_EPEER,
                          "%s: the server refused this client's key (it is not listed in the job)",
                          e->address);
    if (e->refusal == CLIENT_HANDSHAKE_FAILING)
        return fl_err_set(err, FL_EPEER,
                          "%s: the encrypted handshake with the server failed %d times in a row "
                          "(is the server's public key the right one?)",
                          e->address, e->failed_handshakes);
    return FL_OK;
}

int fl_endpoint_connected(fl_endpoint *e) {
    if (e->role != ENDPOINT_CLIENT) return 0;
    client_drain_monitor(e);
    int reported = e->handshake_reported;
    e->handshake_reported = 0;
    return reported;
}

int fl_endpoint_is_up(fl_endpoint *e) {
    if (e->role != ENDPOINT_CLIENT) return 0;
    client_drain_monitor(e);
    return e->up;
}

static int client_start_monitor(fl_endpoint *e, fl_err *err) {
    int events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                 ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                 ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CLOSED;
    if (zmq_socket_monitor(e->socket, MONITOR_ENDPOINT, events) != 0 ||
        !(e->monitor = zmq_socket(e->ctx, ZMQ_PAIR)) || set_int(e->monitor, ZMQ_LINGER, 0) != 0 ||
        zmq_connect(e->monitor, MONITOR_ENDPOINT) != 0)
        return fl_err_set(err, FL_EIO, "cannot watch the connection: %s",
                          zmq_strerror(zmq_errno()));
    return FL_OK;
}

fl_endpoint *fl_endpoint_client(const char *address, const fl_keypair *client,
                                const char *server_public, int heartbeat_ms,
                                size_t max_message_bytes, fl_err *err) {
    fl_endpoint *e = calloc(1, sizeof *e);
    if (!e) {
        fl_err_set(err, FL_ENOMEM, "out of memory for an endpoint");
        return NULL;
    }
    e->role = ENDPOINT_CLIENT;
    int hb = 0;
    int rc = heartbeat_value(heartbeat_ms, &hb, err);
    if (rc == FL_OK && (!key_z85_valid(client->secret_z85) || !key_z85_valid(client->public_z85)))
        rc = fl_err_set(err, FL_EINPUT, "this client's key pair is not valid Z85");
    if (rc == FL_OK && (!server_public || strnlen(server_public, 41) != FL_KEY_Z85_LEN ||
                        !key_z85_valid(server_public)))
        rc = fl_err_set(err, FL_EINPUT, "the server's public key is not valid Z85");
    if (rc == FL_OK && !(e->ctx = zmq_ctx_new()))
        rc = fl_err_set(err, FL_EIO, "cannot create a ZeroMQ context: %s",
                        zmq_strerror(zmq_errno()));
    if (rc == FL_OK) {
        e->socket = zmq_socket(e->ctx, ZMQ_DEALER);
        if (!e->socket || set_common_options(e->socket, hb, max_message_bytes) != 0 ||
            set_int(e->socket, ZMQ_RECONNECT_IVL, RECONNECT_IVL_MS) != 0 ||
            set_int(e->socket, ZMQ_RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS) != 0 ||
            zmq_setsockopt(e->socket, ZMQ_CURVE_SERVERKEY, server_public, FL_KEY_Z85_LEN) != 0 ||
            zmq_setsockopt(e->socket, ZMQ_CURVE_PUBLICKEY, client->public_z85, FL_KEY_Z85_LEN) !=
                0 ||
            zmq_setsockopt(e->socket, ZMQ_CURVE_SECRETKEY, client->secret_z85, FL_KEY_Z85_LEN) != 0)
            rc = fl_err_set(err, FL_EIO, "cannot set up the client socket: %s",
                            zmq_strerror(zmq_errno()));
    }
    snprintf(e->address, sizeof e->address, "%s", address);
    if (rc == FL_OK) rc = client_start_monitor(e, err);
    if (rc == FL_OK && zmq_connect(e->socket, address) != 0)
        rc = address_error(address, "connect", zmq_errno(), err);
    if (rc != FL_OK) {
        fl_endpoint_free(e);
        return NULL;
    }
    return e;
}

/* ---- sending and receiving ------------------------------------------------------------------- */

/* Sends one frame, waiting at most until deadline; retries when a signal interrupts. */
static int send_frame(fl_endpoint *e, const void *data, size_t len, int more, int64_t deadline) {
    for (;;) {
        int64_t left = deadline - now_ms();
        set_int(e->socket, ZMQ_SNDTIMEO, left > 0 ? (int)left : 0);
        if (zmq_send(e->socket, data, len, more ? ZMQ_SNDMORE : 0) >= 0) return 0;
        if (zmq_errno() != EINTR) return zmq_errno();
    }
}

int fl_endpoint_send(fl_endpoint *e, const char *to, const void *header, size_t header_len,
                     const void *payload, size_t payload_len, int timeout_ms, fl_err *err) {
    if (timeout_ms < 0)
        return fl_err_set(err, FL_EINTERNAL, "send with a negative timeout (%d ms)", timeout_ms);
    if (!header || header_len == 0 || (payload_len > 0 && !payload))
        return fl_err_set(err, FL_EINTERNAL, "send without a header or payload data");
    int64_t deadline = now_ms() + timeout_ms;
    server_peer *peer = NULL;
    int errnum = 0;
    if (e->role == ENDPOINT_SERVER) {
        peer = to ? server_find_peer(e, to) : NULL;
        if (!peer) return fl_err_set(err, FL_EINTERNAL, "send to '%s', who is not in the job", to);
        if (peer->routing_id_len == 0)
            return fl_err_set(err, FL_EPEER, "client %s is not connected", peer->name);
        errnum = send_frame(e, peer->routing_id, peer->routing_id_len, 1, deadline);
    } else {
        client_drain_monitor(e);
        int rc = client_refused(e, err);
        if (rc != FL_OK) return rc;
    }
    /* libzmq admits or refuses a message as a whole at its first frame (the HWM counts messages),
     * so once that frame is in, the others go without waiting */
    if (!errnum) errnum = send_frame(e, header, header_len, payload_len > 0, deadline);
    if (!errnum && payload_len > 0) errnum = send_frame(e, payload, payload_len, 0, deadline);
    if (!errnum) return FL_OK;
    if (errnum == EHOSTUNREACH && peer) {
        peer->routing_id_len = 0;
        return fl_err_set(err, FL_EPEER, "client %s is not connected (its connection is gone)",
                          peer->name);
    }
    if (errnum == EAGAIN)
        return fl_err_set(err, FL_ETIMEOUT, "%s: sending took more than %d ms (%s)", e->address,
                          timeout_ms, peer ? peer->name : "server");
    return fl_err_set(err, FL_EIO, "%s: cannot send: %s", e->address, zmq_strerror(errnum));
}

/* Reads every remaining frame of the current message (never waits: a message arrives whole). */
static int drain_frames(void *socket, zmq_msg_t *frame) {
    int count = 0;
    while (zmq_msg_more(frame)) {
        if (zmq_msg_recv(frame, socket, ZMQ_DONTWAIT) < 0) break;
        count++;
    }
    return count;
}

static char *copy_frame(zmq_msg_t *frame, int nul_terminate) {
    size_t n = zmq_msg_size(frame);
    char *copy = malloc(n + (nul_terminate ? 1 : 0) + (n == 0));
    if (!copy) return NULL;
    if (n) memcpy(copy, zmq_msg_data(frame), n);
    if (nul_terminate) copy[n] = '\0';
    return copy;
}

/* Server: frame holds the routing id; reads the header frame into it and finds the client that
 * the connection was admitted as (its ZAP User-Id). *peer stays NULL when there is none. */
static int recv_server_prefix(fl_endpoint *e, zmq_msg_t *frame, server_peer **peer,
                              uint8_t routing_id[ROUTING_ID_MAX], size_t *routing_id_len,
                              fl_err *err) {
    size_t n = zmq_msg_size(frame);
    *routing_id_len = n <= ROUTING_ID_MAX ? n : 0;
    if (*routing_id_len) memcpy(routing_id, zmq_msg_data(frame), n);
    if (!zmq_msg_more(frame) || zmq_msg_recv(frame, e->socket, ZMQ_DONTWAIT) < 0)
        return fl_err_set(err, FL_EPEER, "%s: an empty message from a client; dropped", e->address);
    const char *user = zmq_msg_gets(frame, "User-Id");
    *peer = user ? server_find_peer(e, user) : NULL;
    if (!*peer)
        return fl_err_set(err, FL_EPEER,
                          "%s: a message from a connection without a listed key; dropped",
                          e->address);
    return FL_OK;
}

/* frame holds the header frame: copies it and the payload frame, if any, checking the limits. */
static int recv_body(fl_endpoint *e, zmq_msg_t *frame, const char *who, size_t max_payload_bytes,
                     char **header, size_t *header_len, uint8_t **payload, size_t *payload_len,
                     fl_err *err) {
    size_t header_bytes = zmq_msg_size(frame);
    if (header_bytes > FL_MSG_MAX_HEADER_BYTES)
        return fl_err_set(err, FL_EPEER,
                          "a message from %s with a %zu-byte header (at most %d); dropped", who,
                          header_bytes, FL_MSG_MAX_HEADER_BYTES);
    if (!(*header = copy_frame(frame, 1)))
        return fl_err_set(err, FL_ENOMEM, "out of memory for a message header");
    *header_len = header_bytes;
    if (!zmq_msg_more(frame)) return FL_OK;
    if (zmq_msg_recv(frame, e->socket, ZMQ_DONTWAIT) < 0)
        return fl_err_set(err, FL_EIO, "%s: cannot receive: %s", e->address,
                          zmq_strerror(zmq_errno()));
    size_t bytes = zmq_msg_size(frame);
    if (zmq_msg_more(frame))
        return fl_err_set(err, FL_EPEER,
                          "a message from %s with %d frames (expected a header and at most one "
                          "payload); dropped",
                          who, 2 + drain_frames(e->socket, frame));
    if (bytes > max_payload_bytes)
        return fl_err_set(err, FL_EPEER,
                          "a message from %s with a %zu-byte payload (at most %zu); dropped", who,
                          bytes, max_payload_bytes);
    if (bytes == 0) return FL_OK;
    if (!(*payload = (uint8_t *)copy_frame(frame, 0)))
        return fl_err_set(err, FL_ENOMEM, "out of memory for a %zu-byte payload", bytes);
    *payload_len = bytes;
    return FL_OK;
}

/* Reads one message that is known to be waiting. On the server, a message from an admitted client
 * also updates where that client is reached, even when the message itself is dropped: the
 * connection is authenticated whatever it sent, and the runtime may want to answer with an error.
 */
static int recv_message(fl_endpoint *e, size_t max_payload_bytes, char from[64], char **header,
                        size_t *header_len, uint8_t **payload, size_t *payload_len, fl_err *err) {
    zmq_msg_t frame;
    zmq_msg_init(&frame);
    server_peer *peer = NULL;
    uint8_t routing_id[ROUTING_ID_MAX];
    size_t routing_id_len = 0;
    int rc = FL_OK;
    if (zmq_msg_recv(&frame, e->socket, ZMQ_DONTWAIT) < 0)
        rc = fl_err_set(err, FL_EIO, "%s: cannot receive: %s", e->address,
                        zmq_strerror(zmq_errno()));
    else if (e->role == ENDPOINT_SERVER)
        rc = recv_server_prefix(e, &frame, &peer, routing_id, &routing_id_len, err);
    char who[96];
    snprintf(who, sizeof who, "%s%s", peer ? "client " : "the server", peer ? peer->name : "");
    if (rc == FL_OK)
        rc = recv_body(e, &frame, who, max_payload_bytes, header, header_len, payload, payload_len,
                       err);
    drain_frames(e->socket, &frame);
    zmq_msg_close(&frame);
    if (peer && routing_id_len) {
        memcpy(peer->routing_id, routing_id, routing_id_len);
        peer->routing_id_len = routing_id_len;
    }
    if (peer) snprintf(from, FL_MSG_NAME_MAX, "%s", peer->name);
    if (rc != FL_OK) {
        free(*header);
        free(*payload);
        *header = NULL;
        *payload = NULL;
        *header_len = *payload_len = 0;
        return rc;
    }
    if (!peer) snprintf(from, FL_MSG_NAME_MAX, "%s", FL_MSG_SERVER_NAME);
    return FL_OK;
}

int fl_endpoint_recv(fl_endpoint *e, int timeout_ms, size_t max_payload_bytes, char from[64],
                     char **header, size_t *header_len, uint8_t **payload, size_t *payload_len,
                     fl_err *err) {
    *header = NULL;
    *payload = NULL;
    *header_len = *payload_len = 0;
    from[0] = '\0';
    if (timeout_ms < 0)
        return fl_err_set(err, FL_EINTERNAL, "receive with a negative timeout (%d ms)", timeout_ms);
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        if (e->role == ENDPOINT_CLIENT) { /* a refusal seen earlier (in send) ends the wait now */
            client_drain_monitor(e);
            int rc = client_refused(e, err);
            if (rc != FL_OK) {
                zmq_pollitem_t item = {e->socket, 0, ZMQ_POLLIN, 0};
                if (zmq_poll(&item, 1, 0) <= 0) return rc;
            }
        }
        zmq_pollitem_t items[2] = {{e->socket, 0, ZMQ_POLLIN, 0}, {e->monitor, 0, ZMQ_POLLIN, 0}};
        int n_items = e->monitor ? 2 : 1;
        int64_t left = deadline - now_ms();
        int ready = zmq_poll(items, n_items, left > 0 ? (long)left : 0);
        if (ready < 0 && zmq_errno() != EINTR)
            return fl_err_set(err, FL_EIO, "%s: cannot wait for messages: %s", e->address,
                              zmq_strerror(zmq_errno()));
        if (ready > 0 && (items[0].revents & ZMQ_POLLIN))
            return recv_message(e, max_payload_bytes, from, header, header_len, payload,
                                payload_len, err);
        if (ready > 0) continue; /* monitor events: looked at on the next turn */
        if (now_ms() >= deadline)
            return fl_err_set(err, FL_ETIMEOUT, "%s: no message within %d ms", e->address,
                              timeout_ms);
    }
}
