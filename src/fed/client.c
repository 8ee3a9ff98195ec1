/* client.c — a federated client: joins the server, and for every round it is sent does the job's
 * algorithm's local work on its own data (src/fed/algo/algo.h: PELLM trains the global adapter and
 * returns the change; FedKSeed takes zeroth-order steps and returns seeds and scalars) and sends
 * the result back.
 *
 * States: joining -> waiting -> training (a round) -> waiting ... -> final (evaluate the final
 * adapter, report it with LEAVE) -> done. The client never trusts a message for being on its
 * socket: each is decoded and checked (protocol.h), must come from "server", carry a sequence
 * number above the last one of the server's session, and a round above the last one trained.
 * Refused messages are logged and skipped. The server is expected to speak at least every
 * heartbeat; after `silence_s` without a word the client gives up with an error rather than wait
 * forever. When the transport reports a new handshake (the server restarted with --resume), the
 * client joins again. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "fed/algo/algo.h"
#include "fedllm/clock.h"
#include "fedllm/dp.h"
#include "fedllm/fed.h"
#include "fedllm/protocol.h"
#include "fedllm/rng.h"
#include "fedllm/tokenizer.h"
#include "fedllm/train.h"
#include "fedllm/transport.h"

#define SEND_TIMEOUT_MS 10000

typedef struct client {
    const fl_job *job;
    const fl_job_client *me;
    int index; /* in job->clients, for the data-order seed */
    fl_party_files pf;
    fl_model *m;
    fl_tokenizer *tok;
    fl_dataset train, eval;
    int has_eval;
    const fl_algo *algo;
    void *algo_state;
    fl_endpoint *ep;
    uint64_t seq;                          /* our last sequence number */
    char server_session[32];               /* the server's session (changes when it restarts) */
    uint64_t server_seq;                   /* last sequence number seen in that session */
    int64_t round_done;                    /* last round trained (from 1), -1 before the first */
    uint64_t bytes_sent, bytes_received;   /* this round */
    double waiting_since, seconds_waiting; /* this round */
    int64_t status_round;
    double last_loss; /* the last round's final training loss, NAN before one: the live view */
    /* the last plain update sent (round round_done), its meta and payload kept until the next
     * round starts: sent again when the server asks again for that round (it lost the first copy
     * with a dropped connection); NULL under secure aggregation */
    cJSON *sent_meta;
    uint8_t *sent_payload;
    size_t sent_payload_len;
    /* secure aggregation: the round's protocol state, and its round_start kept until the
     * server's FORWARD lets the client mask its update */
    fl_secagg_client *sa;
    fl_msg sa_start;
    uint32_t sa_threshold;    /* the round's t: distributed DP noise is split over t clients */
    size_t max_message_bytes; /* the longest frame the server may send (fl_job_max_message_bytes) */
} client;

/* Sends one message; meta and payload (may be NULL) are taken. */
static int send_built(client *c, fl_msg_type type, int64_t round, cJSON *meta, uint8_t *payload,
                      size_t payload_len, fl_err *err) {
    fl_msg m;
    fl_msg_init(&m, c->job->name, round, type, c->me->name, ++c->seq);
    m.meta = meta;
    m.payload = payload;
    m.payload_len = payload_len;
    char *header = NULL;
    size_t header_len = 0;
    int rc = fl_msg_encode_header(&m, &header, &header_len, err);
    if (!rc)
        rc = fl_endpoint_send(c->ep, NULL, header, header_len, m.payload, m.payload_len,
                              SEND_TIMEOUT_MS, err);
    if (!rc) c->bytes_sent += header_len + m.payload_len;
    if (!rc && type != FL_MSG_HEARTBEAT) /* liveness only: counted in bytes_sent, not listed */
        fl_party_outbox_message(&c->pf, round, "server", fl_msg_type_name(type), header, header_len,
                                m.payload_len);
    free(header);
    fl_msg_free(&m);
    return rc;
}

/* Sends one message with a copy of payload (may be NULL) as its payload, its tensors recorded in
 * the outbox; meta is taken. */
static int send_msg(client *c, fl_msg_type type, int64_t round, cJSON *meta, const uint8_t *payload,
                    size_t len, fl_err *err) {
    uint8_t *copy = NULL;
    if (payload && len && !(copy = malloc(len))) {
        cJSON_Delete(meta);
        return fl_err_set(err, FL_ENOMEM, "out of memory for a message");
    }
    if (copy) memcpy(copy, payload, len);
    int rc = send_built(c, type, round, meta, copy, copy ? len : 0, err);
    if (!rc && copy) fl_party_outbox_payload(&c->pf, round, "server", payload, len);
    return rc;
}

/* A join: the client's name, its sample count (not under secure aggregation, where it stays
 * hidden), round_done after a reconnect, and what the algorithm holds. */
static int send_join(client *c, int with_round_done, fl_err *err) {
    cJSON *meta = cJSON_CreateObject();
    cJSON_AddStringToObject(meta, "name", c->me->name);
    if (with_round_done) cJSON_AddNumberToObject(meta, "round_done", (double)c->round_done);
    if (!c->job->secure_aggregation)
        cJSON_AddNumberToObject(meta, "samples", (double)c->train.n_rows);
    if (c->algo->client_join) c->algo->client_join(c->algo_state, meta);
    return send_msg(c, FL_MSG_JOIN, -1, meta, NULL, 0, err);
}

/* Receives and checks one message. FL_ETIMEOUT when nothing came; FL_EPEER for a message that
 * was refused (logged here) — unless it is the transport saying the server refused our key,
 * which is returned with *fatal set. */
static int recv_msg(client *c, int timeout_ms, fl_msg *m, int *fatal, fl_err *err) {
    char from[64], *header = NULL;
    uint8_t *payload = NULL;
    size_t header_len = 0, payload_len = 0;
    *fatal = 0;
    int rc = fl_endpoint_recv(c->ep, timeout_ms, c->max_message_bytes, from, &header, &header_len,
                              &payload, &payload_len, err);
    if (rc == FL_ETIMEOUT) return rc;
    if (rc) {
        *fatal = strstr(err->msg, "key") != NULL || rc != FL_EPEER;
        if (!*fatal) fl_party_refused(&c->pf, "server", "refused a message: %s", err->msg);
        return rc;
    }
    c->bytes_received += header_len + payload_len;
    rc = fl_msg_decode(m, header, header_len, payload, payload_len, c->job->name, err);
    free(header);
    free(payload);
    if (!rc && strcmp(m->sender, "server") != 0)
        rc = fl_err_set(err, FL_EPEER, "message from '%s', expected the server", m->sender);
    if (!rc) { /* sequence numbers rise within a server session */
        const cJSON *session = cJSON_GetObjectItemCaseSensitive(m->meta, "session");
        const char *s = cJSON_IsString(session) ? session->valuestring : "";
        if (strcmp(s, c->server_session) != 0) { /* a (re)started server: it may redo rounds */
            snprintf(c->server_session, sizeof c->server_session, "%s", s);
            c->server_seq = 0;
            c->round_done = -1;
        }
        rc = fl_msg_check_seq(&c->server_seq, m, err);
    }
    if (rc && strstr(err->msg, "protocol version")) { /* no point waiting: we cannot talk */
        *fatal = 1;
        fl_msg_free(m);
        return fl_err_set(err, FL_EINPUT, "%s (upgrade one side)", err->msg);
    }
    if (rc) {
        fl_party_refused(&c->pf, "server", "refused a message: %s", err->msg);
        fl_msg_free(m);
        return FL_EPEER;
    }
    return FL_OK;
}

/* Mean loss and perplexity of the current adapter on the eval split (NAN when there is none). */
static int evaluate(client *c, double *loss, double *ppl, fl_err *err) {
    *loss = *ppl = NAN;
    if (!c->has_eval) return FL_OK;
    long counted;
    int rc = fl_evaluate(c->m, &c->eval, c->job->batch, loss, &counted, err);
    if (!rc) *ppl = exp(*loss);
    return rc;
}

static int send_secagg(client *c, int64_t round, const char *stage, const uint8_t *bytes, size_t n,
                       cJSON *meta, fl_err *err);

/* Moves the algorithm's fields into meta (after the loop's own). */
static void merge_fields(cJSON *meta, cJSON *fields) {
    for (cJSON *f = fields ? fields->child : NULL; f;) {
        cJSON *next = f->next;
        cJSON_AddItemToObject(meta, f->string, cJSON_DetachItemViaPointer(fields, f));
        f = next;
    }
}

/* The same update again, for a server that asks again for the round it came from. */
static int resend_update(client *c, int64_t round, fl_err *err) {
    fl_party_log(&c->pf, "round %lld: the server asks again; sending the same update",
                 (long long)round);
    cJSON *meta = cJSON_Duplicate(c->sent_meta, 1);
    if (!meta) return fl_err_set(err, FL_ENOMEM, "out of memory for the update's meta");
    int rc = send_msg(c, FL_MSG_UPDATE, round, meta, c->sent_payload, c->sent_payload_len, err);
    if (!rc) fl_party_outbox_meta(&c->pf, round, "server", "update.meta", c->sent_meta);
    return rc;
}

/* Sends the round's result: a plain update (kept for a resend), or (forward != NULL, secure
 * aggregation) the vector masked with the round's secagg state. meta is taken. */
static int send_result(client *c, int64_t round, cJSON *meta, fl_algo_update *u,
                       const uint8_t *forward, size_t forward_len, fl_err *err) {
    cJSON *sent_meta = cJSON_Duplicate(meta, 1);
    int rc;
    if (forward) {
        uint8_t *msg = NULL;
        size_t n = 0;
        rc = fl_secagg_client_masked_input(c->sa, forward, forward_len, u->vector, u->weight, &msg,
                                           &n, err);
        if (!rc)
            rc = send_secagg(c, round, "masked", msg, n, meta, err);
        else
            cJSON_Delete(meta);
        if (!rc) fl_party_outbox_meta(&c->pf, round, "server", "masked.meta", sent_meta);
        cJSON_Delete(sent_meta);
        free(msg);
        return rc;
    }
    rc = send_msg(c, FL_MSG_UPDATE, round, meta, u->payload, u->payload_len, err);
    if (!rc) {
        fl_party_outbox_meta(&c->pf, round, "server", "update.meta", sent_meta);
        c->sent_meta = sent_meta; /* kept with the payload for a resend */
        c->sent_payload = u->payload;
        c->sent_payload_len = u->payload_len;
        u->payload = NULL;
    } else {
        cJSON_Delete(sent_meta);
    }
    return rc;
}

/* Does the round of round_start m and sends the result: as an update, or (forward != NULL,
 * secure aggregation) masked with the round's secagg state. */
static int train_round(client *c, fl_msg *m, const uint8_t *forward, size_t forward_len,
                       fl_err *err) {
    int64_t round = m->round;
    double received = fl_now_s();
    c->seconds_waiting += received - c->waiting_since;
    if (round == c->round_done && c->sent_meta && !forward) return resend_update(c, round, err);
    if (round <= c->round_done) {
        fl_party_log(&c->pf, "refused round_start for round %lld: round %lld is done",
                     (long long)round, (long long)c->round_done);
        return FL_OK;
    }
    cJSON_Delete(c->sent_meta); /* a new round: the last update will not be asked for again */
    c->sent_meta = NULL;
    free(c->sent_payload);
    c->sent_payload = NULL;
    fl_algo_receipt receipt = FL_ALGO_TAKEN;
    int rc = c->algo->receive(c->algo_state, m, 0, &receipt, err);
    if (rc) return rc;
    if (receipt != FL_ALGO_TAKEN) {
        fl_party_log(&c->pf, "refused round %lld: %s", (long long)round, err->msg);
        return receipt == FL_ALGO_REJOIN ? send_join(c, 1, err) : FL_OK;
    }
    c->status_round = round;
    fl_party_status(&c->pf, "evaluating", round, 0, 0, c->last_loss, 1);
    double eval_loss, eval_ppl;
    rc = evaluate(c, &eval_loss, &eval_ppl, err);
    fl_algo_update u = {0};
    double start = fl_now_s();
    if (!rc) rc = c->algo->train(c->algo_state, m, forward ? c->sa_threshold : 0, &u, err);
    double seconds_training = fl_now_s() - start;
    if (rc) {
        fl_algo_update_free(&u);
        return rc;
    }
    cJSON *meta = cJSON_CreateObject();
    if (!forward) { /* under secure aggregation the sample count stays hidden */
        cJSON_AddNumberToObject(meta, "samples", (double)c->train.n_rows);
        cJSON_AddNumberToObject(meta, "steps", u.steps);
    }
    cJSON_AddNumberToObject(meta, "train_loss", u.mean_loss);
    if (c->has_eval && !forward) cJSON_AddNumberToObject(meta, "eval_loss", eval_loss);
    cJSON_AddNumberToObject(meta, "seconds_train", seconds_training);
    merge_fields(meta, u.meta);
    fl_party_status(&c->pf, "sending", round, u.steps, u.steps, u.last_loss, 1);
    rc = send_result(c, round, meta, &u, forward, forward_len, err);
    if (rc) {
        fl_algo_update_free(&u);
        if (forward && rc == FL_EPEER) { /* the round's protocol refused it: the round is lost */
            fl_party_log(&c->pf, "secagg: %s", err->msg);
            return FL_OK;
        }
        return rc;
    }
    c->round_done = round;
    cJSON *line = cJSON_CreateObject();
    cJSON_AddNumberToObject(line, "round", (double)round);
    cJSON_AddNumberToObject(line, "train_loss", u.mean_loss);
    cJSON_AddNumberToObject(line, "eval_loss", eval_loss); /* NaN (null) without an eval split */
    cJSON_AddNumberToObject(line, "eval_perplexity", eval_ppl);
    cJSON_AddNumberToObject(line, "samples", (double)c->train.n_rows);
    cJSON_AddNumberToObject(line, "steps", u.steps);
    cJSON_AddNumberToObject(line, "bytes_sent", (double)c->bytes_sent);
    cJSON_AddNumberToObject(line, "bytes_received", (double)c->bytes_received);
    cJSON_AddNumberToObject(line, "seconds_training", seconds_training);
    cJSON_AddNumberToObject(line, "seconds_waiting", c->seconds_waiting);
    merge_fields(line, u.metrics);
    fl_party_metrics(&c->pf, line);
    fl_party_log(&c->pf, "round %lld: trained %d steps, loss %.4f -> %.4f; global eval loss %.4f",
                 (long long)round, u.steps, u.first_loss, u.last_loss,
                 c->has_eval ? eval_loss : NAN);
    c->bytes_sent = c->bytes_received = 0;
    c->seconds_waiting = 0;
    c->waiting_since = fl_now_s();
    c->last_loss = u.last_loss;
    fl_party_status(&c->pf, "waiting", round, u.steps, u.steps, u.last_loss, 1);
    fl_algo_update_free(&u);
    return FL_OK;
}

/* The last round_end carries the final model (adapter or full, by algorithm): evaluate it and
 * leave. Returns 1 when done. */
static int finish(client *c, fl_msg *m, fl_err *err) {
    fl_algo_receipt receipt = FL_ALGO_TAKEN;
    if (c->algo->receive(c->algo_state, m, 1, &receipt, err)) return -1;
    if (receipt != FL_ALGO_TAKEN) {
        fl_party_log(&c->pf, "refused the final model: %s", err->msg);
        if (receipt == FL_ALGO_REJOIN && send_join(c, 1, err)) return -1;
        return 0;
    }
    fl_party_status(&c->pf, "evaluating", m->round, 0, 0, c->last_loss, 1);
    double loss, ppl;
    if (evaluate(c, &loss, &ppl, err)) return -1;
    cJSON *meta = cJSON_CreateObject();
    if (c->has_eval) {
        cJSON_AddNumberToObject(meta, "eval_loss", loss);
        cJSON_AddNumberToObject(meta, "eval_perplexity", ppl);
        cJSON_AddNumberToObject(meta, "eval_rows", (double)c->eval.n_rows);
    }
    cJSON *line = cJSON_CreateObject();
    cJSON_AddNumberToObject(line, "round", (double)m->round);
    cJSON_AddBoolToObject(line, "final", 1);
    cJSON_AddNumberToObject(line, "eval_loss", loss);
    cJSON_AddNumberToObject(line, "eval_perplexity", ppl);
    fl_party_metrics(&c->pf, line);
    fl_party_log(&c->pf, "final model: eval loss %.4f, perplexity %.2f", loss, ppl);
    if (send_msg(c, FL_MSG_LEAVE, m->round, meta, NULL, 0, err)) return -1;
    fl_party_status(&c->pf, "done", m->round, 0, 0, loss, 1);
    return 1;
}

static int send_secagg(client *c, int64_t round, const char *stage, const uint8_t *bytes, size_t n,
                       cJSON *meta, fl_err *err) {
    uint8_t *payload = NULL;
    size_t len = 0;
    if (!meta) meta = cJSON_CreateObject();
    cJSON_AddStringToObject(meta, "stage", stage);
    if (fl_bytes_to_payload(bytes, n, &payload, &len, err)) {
        cJSON_Delete(meta);
        return err->code;
    }
    int rc = send_built(c, FL_MSG_SECAGG, round, meta, payload, len, err);
    if (!rc) fl_party_outbox_bytes(&c->pf, round, "server", stage, bytes, n);
    return rc;
}

/* round_start under secure aggregation: keep it, start the round's protocol (ADVERTISE). */
static int secure_start(client *c, fl_msg *m, const cJSON *info, fl_err *err) {
    const cJSON *index = cJSON_GetObjectItemCaseSensitive(info, "index");
    const cJSON *count = cJSON_GetObjectItemCaseSensitive(info, "clients");
    fl_secagg_config cfg;
    if (!cJSON_IsNumber(index) || !cJSON_IsNumber(count) || index->valuedouble < 0 ||
        count->valuedouble < 2 || index->valuedouble >= count->valuedouble ||
        count->valuedouble > 65535) {
        fl_party_log(&c->pf, "refused round %lld: secagg index/clients missing or out of range",
                     (long long)m->round);
        return FL_OK;
    }
    if (m->round <= c->round_done ||
        fl_job_secagg_config(c->job, (uint32_t)count->valuedouble, m->round,
                             c->algo->client_secure_length(c->algo_state), &cfg, err)) {
        fl_party_log(&c->pf, "refused round %lld: %s", (long long)m->round,
                     m->round <= c->round_done ? "already done" : err->msg);
        return FL_OK;
    }
    fl_secagg_client_free(c->sa);
    fl_msg_free(&c->sa_start);
    c->sa = fl_secagg_client_new(&cfg, (uint32_t)index->valuedouble, NULL, err);
    c->sa_threshold = cfg.threshold;
    if (!c->sa) return err->code;
    c->sa_start = *m; /* kept until FORWARD: the caller must not free m */
    memset(m, 0, sizeof *m);
    uint8_t *msg = NULL;
    size_t n = 0;
    int rc = fl_secagg_client_advertise(c->sa, &msg, &n, err);
    if (!rc) rc = send_secagg(c, c->sa_start.round, "advertise", msg, n, NULL, err);
    free(msg);
    fl_party_status(&c->pf, "secure aggregation", c->sa_start.round, 0, 0, c->last_loss, 1);
    return rc;
}

/* One stage message of the round's secure aggregation. */
static int secure_stage(client *c, fl_msg *m, fl_err *err) {
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(m->meta, "stage");
    const uint8_t *bytes = NULL;
    size_t n = 0;
    if (!c->sa || m->round != c->sa_start.round || !cJSON_IsString(st) ||
        fl_bytes_from_payload(m->payload, m->payload_len, &bytes, &n, err)) {
        fl_party_log(&c->pf, "refused a secagg message for round %lld", (long long)m->round);
        return FL_OK;
    }
    uint8_t *msg = NULL;
    size_t len = 0;
    int rc = FL_OK;
    if (strcmp(st->valuestring, "keys") == 0) {
        rc = fl_secagg_client_share_keys(c->sa, bytes, n, &msg, &len, err);
        if (!rc) rc = send_secagg(c, m->round, "shares", msg, len, NULL, err);
    } else if (strcmp(st->valuestring, "forward") == 0) {
        rc = train_round(c, &c->sa_start, bytes, n, err);
    } else if (strcmp(st->valuestring, "survivors") == 0) {
        rc = fl_secagg_client_unmask(c->sa, bytes, n, &msg, &len, err);
        if (!rc) rc = send_secagg(c, m->round, "unmask", msg, len, NULL, err);
        fl_secagg_client_free(c->sa);
        c->sa = NULL;
        fl_msg_free(&c->sa_start);
    } else {
        fl_party_log(&c->pf, "refused secagg stage '%.20s'", st->valuestring);
    }
    free(msg);
    if (rc == FL_EPEER) { /* the round's protocol refused it: this round is lost, not the job */
        fl_party_log(&c->pf, "secagg round %lld: %s", (long long)m->round, err->msg);
        rc = FL_OK;
    }
    return rc;
}

static int serve(client *c, fl_err *err) {
    const fl_job *job = c->job;
    int heartbeat_ms = (int)(job->heartbeat_s * 1000);
    double silence_s = fmax(60.0, 20.0 * job->heartbeat_s);
    if (heartbeat_ms < 50) heartbeat_ms = 50;
    int rc = send_join(c, 0, err);
    fl_party_log(&c->pf, "joining %s at %s", job->name, job->server_address);
    fl_party_status(&c->pf, "joining", -1, 0, 0, NAN, 1);
    double last_heard = fl_now_s(), last_sent = fl_now_s();
    int handshakes = 0;
    c->waiting_since = fl_now_s();
    while (!rc) {
        fl_msg m = {0};
        int fatal;
        rc = recv_msg(c, heartbeat_ms, &m, &fatal, err);
        if (fl_endpoint_connected(c->ep) && handshakes++ > 0) { /* the server came back */
            fl_party_log(&c->pf, "reconnected to the server: joining again");
            if (send_join(c, 1, err)) return err->code;
        }
        if (rc == FL_ETIMEOUT || (rc == FL_EPEER && !fatal)) {
            rc = FL_OK;
            if (fl_now_s() - last_heard > silence_s)
                return fl_err_set(err, FL_ETIMEOUT,
                                  "the server at %s has been silent for %.0f s; giving up",
                                  job->server_address, silence_s);
            if (fl_now_s() - last_sent >= job->heartbeat_s) {
                rc = send_msg(c, FL_MSG_HEARTBEAT, c->round_done, NULL, NULL, 0, err);
                last_sent = fl_now_s();
            }
            continue;
        }
        if (rc) return rc;
        last_heard = fl_now_s();
        const cJSON *final = cJSON_GetObjectItemCaseSensitive(m.meta, "final");
        const cJSON *reason = cJSON_GetObjectItemCaseSensitive(m.meta, "reason");
        int done = 0;
        switch (m.type) {
        case FL_MSG_ROUND_START: {
            const cJSON *info = cJSON_GetObjectItemCaseSensitive(m.meta, "secagg");
            if (c->job->secure_aggregation != cJSON_IsObject(info))
                fl_party_log(&c->pf, "refused round %lld: secure aggregation %s",
                             (long long)m.round,
                             c->job->secure_aggregation ? "expected" : "not in the job");
            else if (info)
                rc = secure_start(c, &m, info, err);
            else
                rc = train_round(c, &m, NULL, 0, err);
            break;
        }
        case FL_MSG_SECAGG: rc = secure_stage(c, &m, err); break;
        case FL_MSG_ROUND_END:
            if (cJSON_IsTrue(final)) {
                done = finish(c, &m, err);
                if (done < 0) rc = err->code;
            } else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m.meta, "you_dropped"))) {
                fl_party_log(&c->pf, "the server dropped us from round %lld; joining again",
                             (long long)m.round);
                rc = send_join(c, 0, err);
            }
            break;
        case FL_MSG_ERROR:
            rc = fl_err_set(err, FL_EPEER, "the server stopped the job: %s",
                            cJSON_IsString(reason) ? reason->valuestring : "no reason given");
            break;
        case FL_MSG_LEAVE:
            rc = fl_err_set(err, FL_EPEER, "the server left before the final round");
            break;
        case FL_MSG_HEARTBEAT: break;
        default: fl_party_log(&c->pf, "ignored a %s message", fl_msg_type_name(m.type)); break;
        }
        fl_msg_free(&m);
        if (done > 0) return FL_OK;
    }
    return rc;
}

static int setup(client *c, fl_err *err) {
    const fl_job *job = c->job;
    fl_keypair mine;
    char server_pub[41];
    int rc = fl_key_load_pair(c->me->key, &mine, err);
    if (!rc) rc = fl_key_load_public(job->server_key, server_pub, err);
    if (!rc && !(c->algo = fl_algo_find(job->algorithm)))
        rc = fl_err_set(err, FL_EINPUT, "%s: algorithm: unknown algorithm '%s'", job->path,
                        job->algorithm);
    if (!rc && !(c->m = c->algo->model(job, err))) rc = err->code;
    if (!rc)
        rc = fl_tokenizer_load_for_model(&c->tok, job->model_path,
                                         fl_model_config(c->m)->vocab_size, err);
    fl_data_spec spec = {.format = (fl_data_format)job->data_format,
                         .text_field = job->text_field,
                         .prompt_field = job->prompt_field,
                         .response_field = job->response_field,
                         .refuse_long = job->data_refuse_long};
    if (!rc) rc = fl_dataset_load(&c->train, c->me->train, &spec, c->tok, job->seq, err);
    if (!rc && c->me->eval[0]) {
        rc = fl_dataset_load(&c->eval, c->me->eval, &spec, c->tok, job->seq, err);
        c->has_eval = !rc;
    }
    for (int i = 0; !rc && i < 2; i++) { /* records cut to fit a row (data.truncate) */
        const fl_dataset *ds = i ? &c->eval : &c->train;
        if (ds->n_truncated)
            fl_party_log(&c->pf,
                         "%s: %ld of %ld records longer than seq + 1 = %d tokens were "
                         "truncated (data.truncate: false refuses them)",
                         i ? c->me->eval : c->me->train, ds->n_truncated, ds->n_records,
                         job->seq + 1);
    }
    fl_algo_client_ctx ctx = {
        .job = job, .me = c->me, .index = c->index, .pf = &c->pf, .m = c->m, .train = &c->train};
    if (!rc) rc = c->algo->client_init(&c->algo_state, &ctx, err);
    if (!rc) {
        c->max_message_bytes = c->algo->client_max_message_bytes(c->algo_state);
        c->ep = fl_endpoint_client(job->server_address, &mine, server_pub,
                                   (int)(job->heartbeat_s * 1000), c->max_message_bytes, err);
        if (!c->ep) rc = err->code;
    }
    sodium_memzero(&mine, sizeof mine);
    return rc;
}

int fl_client_run(const fl_job *job, const char *name, fl_err *err) {
    client c = {.job = job, .round_done = -1, .last_loss = NAN};
    c.me = fl_job_client_find(job, name);
    if (!c.me)
        return fl_err_set(err, FL_EINPUT, "%s: clients: no client named '%s'", job->path, name);
    c.index = (int)(c.me - job->clients);
    int rc = fl_party_open(&c.pf, job, name, 0, err);
    if (rc) return rc;
    rc = setup(&c, err);
    if (!rc) {
        fl_party_log(&c.pf, "%s: %ld training rows%s", c.algo->name, c.train.n_rows,
                     c.has_eval ? ", eval split loaded" : "");
        rc = serve(&c, err);
    }
    if (rc) {
        fl_party_log(&c.pf, "stopped: %s", err->msg);
        fl_party_status(&c.pf, "failed", c.round_done, 0, 0, NAN, 1);
    }
    fl_secagg_client_free(c.sa);
    fl_msg_free(&c.sa_start);
    cJSON_Delete(c.sent_meta);
    free(c.sent_payload);
    fl_endpoint_free(c.ep);
    if (c.algo) c.algo->client_free(c.algo_state);
    fl_dataset_free(&c.train);
    fl_dataset_free(&c.eval);
    fl_tokenizer_free(c.tok);
    fl_model_free(c.m);
    fl_party_close(&c.pf);
    return rc;
}
