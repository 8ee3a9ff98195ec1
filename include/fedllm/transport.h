/* transport.h — keys and encrypted, authenticated message endpoints between federation parties.
 *
 * ZeroMQ carries the messages: the server binds a ROUTER socket, each client connects a DEALER.
 * Every connection is encrypted and authenticated with CURVE (Curve25519 keys, Z85-encoded as
 * 40 characters): a client pins the server's public key, and the server admits only the client
 * public keys listed in the job, through a ZAP handler that also tells the server which client
 * each connection belongs to. So the sender name that fl_endpoint_recv reports on the server comes
 * from the key, never from the message. ZMTP heartbeats run both ways; clients reconnect by
 * themselves; every wait has a deadline.
 *
 * An endpoint is one ZeroMQ context and socket and is not thread-safe: use it from one thread
 * (the server's ZAP handler is an internal thread of its own). A message is a header frame and,
 * when there is a payload, a payload frame (protocol.h says what they hold). */
#ifndef FEDLLM_TRANSPORT_H
#define FEDLLM_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "fedllm/err.h"

#define FL_KEY_Z85_LEN 40 /* a Curve25519 key in Z85 */

typedef struct fl_keypair {
    char public_z85[41];
    char secret_z85[41];
} fl_keypair;

/* fedllm keygen: PREFIX.key holds the secret key (Z85, one line; file mode 0600, written
 * atomically), PREFIX.pub the public key (Z85, one line). Refuses to overwrite an existing
 * PREFIX.key (FL_EINPUT); the folder must exist. On error neither file is left behind. */
int fl_keygen(const char *prefix, fl_err *err);
/* Like fl_keygen, and also returns the pair. */
int fl_keygen_pair(const char *prefix, fl_keypair *kp, fl_err *err);
/* Reads PREFIX.pub (a Z85 public key of 40 characters; surrounding white space allowed) into
 * public_z85. FL_EINPUT naming the file otherwise. */
int fl_key_load_public(const char *prefix, char public_z85[41], fl_err *err);
/* Reads PREFIX.key and PREFIX.pub and checks that they belong together; refuses a .key readable or
 * writable by group or others (FL_EINPUT "PREFIX.key: mode 0644, expected 0600 (chmod 600 it)").
 * On error *kp is zeroed. */
int fl_key_load_pair(const char *prefix, fl_keypair *kp, fl_err *err);

typedef struct fl_endpoint fl_endpoint;

typedef struct fl_peer_key {
    char name[64];       /* the client's name in the job */
    char public_z85[41]; /* its public key */
} fl_peer_key;

/* Server: a ROUTER bound at address (tcp://HOST:PORT, tcp://HOST:* for a free port, or ipc://PATH)
 * with the server's CURVE keys. A ZAP handler thread admits exactly the listed client keys and
 * names each connection after its client; any other key is denied (ZAP status 400, which the
 * client sees). An address in use or malformed, an invalid key or a duplicated client name or key
 * is FL_EINPUT ("tcp://127.0.0.1:7600: address already in use"). ZMTP heartbeats every
 * heartbeat_ms (0: 1000 ms; a peer silent for 3 intervals is dropped).
 *
 * Bounds, for both roles: no frame a peer sends may be longer than max_message_bytes (at least
 * FL_MSG_MAX_HEADER_BYTES is used; 0: 4 GiB and a header, the protocol's own limit), from the
 * first handshake command on; a longer one ends its connection before it is read. A handshake
 * (greeting, CURVE, the key check) that does not finish within 10 s ends its connection too, and on
 * the server an admitted connection queues at most 64 messages the caller has not received (then
 * libzmq stops reading it). So a peer that has not proven a key holds at most one frame of
 * max_message_bytes for 10 s. fl_job_max_message_bytes gives the bound a job needs. Returns NULL on
 * error. */
fl_endpoint *fl_endpoint_server(const char *address, const fl_keypair *server,
                                const fl_peer_key *clients, int n_clients, int heartbeat_ms,
                                size_t max_message_bytes, fl_err *err);
/* Client: a DEALER connecting to address with its own CURVE keys, pinning server_public.
 * Reconnects by itself (after 100 ms, backing off to 2 s) and keeps ZMTP heartbeats. Messages
 * sent while the server is unreachable are queued and go out once it is back. When the server
 * denies this client's key, sends and receives fail with FL_EPEER "the server refused this
 * client's key (it is not listed in the job)"; when the handshake fails repeatedly otherwise
 * (another server public key), with FL_EPEER naming that. Both clear once a handshake succeeds.
 * max_message_bytes bounds the frames the server (or anyone at its address) may send, as for
 * fl_endpoint_server. Returns NULL on error (FL_EINPUT for a malformed address or key). */
fl_endpoint *fl_endpoint_client(const char *address, const fl_keypair *client,
                                const char *server_public, int heartbeat_ms,
                                size_t max_message_bytes, fl_err *err);

/* Sends one message: a header frame, then a payload frame when payload_len > 0 (both copied).
 * Server: to the client named `to`, over the connection it last received from (FL_EPEER "client
 * bob is not connected" if it never sent anything or that connection is gone). Client: to the
 * server, `to` ignored. Waits at most timeout_ms (>= 0) for the message to be queued, else
 * FL_ETIMEOUT. */
int fl_endpoint_send(fl_endpoint *e, const char *to, const void *header, size_t header_len,
                     const void *payload, size_t payload_len, int timeout_ms, fl_err *err);

/* Receives one message within timeout_ms (>= 0; FL_ETIMEOUT after it). On the server, from is the
 * client's name from its key (the ZAP User-Id); on a client it is "server". A message of more than
 * two frames, a header frame over FL_MSG_MAX_HEADER_BYTES or a payload over max_payload_bytes is
 * dropped and reported as FL_EPEER (the caller logs it and goes on; on the server, from still
 * names the client, who can be answered). On success *header (with a NUL after header_len bytes)
 * and *payload (NULL when there is none) are malloc'd for the caller; on error both are NULL. */
int fl_endpoint_recv(fl_endpoint *e, int timeout_ms, size_t max_payload_bytes, char from[64],
                     char **header, size_t *header_len, uint8_t **payload, size_t *payload_len,
                     fl_err *err);

/* Client: 1 when a CURVE handshake with the server succeeded since the last call (or since the
 * endpoint was made, for the first call), else 0. Each success is reported once, so a 1 after the
 * first also means "reconnected". 0 on a server endpoint. */
int fl_endpoint_connected(fl_endpoint *e);
/* Client: 1 while a connection to the server is up (its handshake succeeded and it has not
 * dropped since), else 0. Server: 0. */
int fl_endpoint_is_up(fl_endpoint *e);
/* The address the endpoint is bound or connected to, with a port chosen by the system filled in
 * (tcp://127.0.0.1:*  ->  tcp://127.0.0.1:41234). Owned by e. */
const char *fl_endpoint_address(const fl_endpoint *e);
/* Server: the number of connections denied so far because of an unlisted key, and the last such
 * key and peer address (either may be NULL), so that the runtime can log them (fed.h's
 * fl_party_log_denied). 0 on a client. */
int fl_endpoint_denied(fl_endpoint *e, char last_key_z85[41], char last_address[64]);

/* Closes the socket at once (unsent messages are dropped), stops the ZAP thread, frees e. NULL is
 * fine. */
void fl_endpoint_free(fl_endpoint *e);

#endif
