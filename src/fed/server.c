/* server.c — the federated server: runs the rounds, aggregates, checkpoints, writes the result.
 *
 * A round: pick the clients (every joined client, or a seeded sample of `fraction` of them but at
 * least min_clients), send each the global adapter (round_start), collect their updates until all
 * have answered or round_deadline_s passes, then — with at least min_clients updates — apply the
 * sample-weighted mean (fed.h's aggregator), checkpoint, and tell everyone (round_end). Clients
 * that did not answer are marked dropped for the round and told so; they may join again. With
 * fewer than min_clients updates the round is not applied and is tried again (three attempts),
 * so a finished round is never lost and an unfinished one never half-applied.
 *
 * Every received message is decoded and checked (protocol.h); the sender's name comes from the
 * transport's authentication, and must equal the header's; sequence numbers must rise per client
 * (a JOIN with sequence number 1 starts a new client session); an update must be for the current
 * round, from a selected client, once, with the adapter's exact names and shapes. Anything else is
 * logged and refused, and the round goes on.
 *
 * Rounds are numbered 1 .. train.rounds, as people count them, everywhere: in messages, logs,
 * metrics, the outbox, checkpoints and summary.json (seeds and the schedule's first step use the
 * 0-based index round - 1).
 *
 * What is sent, how updates combine and what is checkpointed is the job's algorithm's
 * (src/fed/algo/algo.h: PELLM's global adapter, FedKSeed's seeds and scalars); this file runs the
 * rounds around it and knows none of its details.
 *
 * Checkpoint (output/server/checkpoint/): the algorithm's files for round NNNNN, and state.json
 * written last (the round, the clients' counts, the algorithm's own fields); files of older rounds
 * are removed after. `--resume` loads state.json and continues with the next round; clients
 * reconnect by themselves. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fed/algo/algo.h"
#include "fedllm/clock.h"
#include "fedllm/dp.h"
#include "fedllm/fed.h"
#include "fedllm/fileio.h"
#include "fedllm/protocol.h"
#include "fedllm/rng.h"
#include "fedllm/safetensors.h"
#include "fedllm/transport.h"

#define SEND_TIMEOUT_MS 5000
#define ROUND_ATTEMPTS  3
#define JOIN_GRACE_S    3.0 /* after min_clients joined a fresh server, for the others */

typedef struct peer {
    const fl_job_client *cfg;
    int joined;   /* said JOIN and has not left or been dropped since */
    int selected; /* asked to train this round */
    int replied;  /* its update of this round arrived (and was used, unless rejected) */
    int rejected; /* ... but the aggregator refused it (fed.h's fl_update_verdict) */
    int clipped;  /* ... and was scaled down to aggregation.max_update_norm */
    int left;     /* sent LEAVE after the final round */
    uint64_t seq; /* last sequence number seen */
    int rounds, dropped;
    double train_loss, eval_loss, final_loss, final_ppl;
    long samples; /* training rows, from its join and its updates */
    fl_rdp rdp;   /* sample-level DP: this client's privacy loss so far */
    /* secure aggregation: the round whose survivors list it was sent and whose unmask has not
     * arrived, else 0. The server finishes once it has enough unmask answers, so the rest arrive
     * late, in the next round or the final evaluation: expected, not an attack. */
    int64_t unmask_round;
    double clip_factor; /* client-level DP: its update's norm / the clip, as it reported; NAN */
} peer;

typedef struct server {
    const fl_job *job;
    fl_party_files pf;
    const fl_algo *algo;
    void *algo_state;
    fl_endpoint *ep;
    peer *peers;
    int n;
    uint64_t seq;
    char session[32];
    int64_t round;    /* the round being run, 1 .. job->rounds */
    int started;      /* the first round has begun (joins waited for) */
    double dp_sigma;  /* the noise multiplier in use (calibrated from target_epsilon) */
    fl_rdp rdp;       /* client-level DP: the job's privacy loss so far */
    double epsilon;   /* after the last completed round */
    double last_loss; /* the last completed round's mean train loss, NAN before: the live view */
    int clip_warning; /* the DP clip warning shown: 0 none, 1 clip too small, 2 too large */
    int budget_spent; /* stopped before a round that would pass max_epsilon */
    uint64_t bytes_sent, bytes_received;
    double last_beat;
    size_t max_message_bytes; /* the longest frame a client may send (fl_job_max_message_bytes) */
} server;

static int dp_prepare(server *s, fl_err *err);
static double reported_clip_factor(const fl_msg *m);
static void dp_clip_report(server *s, cJSON *line);
static double sample_rate(const server *s, const peer *p);
static double client_rate(const server *s);

static peer *find_peer(server *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->peers[i].cfg->name, name) == 0) return &s->peers[i];
    return NULL;
}

/* Sends to one client; meta is copied per call (the caller keeps it). FL_EPEER when the client is
 * not connected (it is then marked as not joined). */
static int send_to(server *s, peer *p, fl_msg_type type, int64_t round, const cJSON *meta,
                   const uint8_t *payload, size_t payload_len, fl_err *err) {
    fl_msg m;
    fl_msg_init(&m, s->job->name, round, type, "server", ++s->seq);
    m.meta = meta ? cJSON_Duplicate(meta, 1) : cJSON_CreateObject();
    if (m.meta) cJSON_AddStringToObject(m.meta, "session", s->session);
    m.payload = (uint8_t *)payload;
    m.payload_len = payload_len;
    char *header = NULL;
    size_t header_len = 0;
    int rc = fl_msg_encode_header(&m, &header, &header_len, err);
    if (!rc)
        rc = fl_endpoint_send(s->ep, p->cfg->name, header, header_len, payload, payload_len,
                              SEND_TIMEOUT_MS, err);
    if (!rc) s->bytes_sent += header_len + payload_len;
    if (!rc && type != FL_MSG_HEARTBEAT) /* liveness only: counted in bytes_sent, not listed */
        fl_party_outbox_message(&s->pf, round, p->cfg->name, fl_msg_type_name(type), header,
                                header_len, payload_len);
    if (rc && p->joined) {
        fl_party_log(&s->pf, "%s: cannot send %s: %s", p->cfg->name, fl_msg_type_name(type),
                     err->msg);
        p->joined = 0;
    }
    m.payload = NULL; /* borrowed */
    free(header);
    fl_msg_free(&m);
    return rc;
}

/* Receives and checks one message. Returns FL_OK with *p the sender, FL_ETIMEOUT, or FL_EPEER for
 * a refused message (already logged). */
static int recv_msg(server *s, int timeout_ms, fl_msg *m, peer **p, fl_err *err) {
    char from[64], *header = NULL;
    uint8_t *payload = NULL;
    size_t header_len = 0, payload_len = 0;
    int rc = fl_endpoint_recv(s->ep, timeout_ms, s->max_message_bytes, from, &header, &header_len,
                              &payload, &payload_len, err);
    fl_party_log_denied(&s->pf, s->ep);
    if (rc == FL_ETIMEOUT) return rc;
    if (rc) {
        fl_party_refused(&s->pf, from, "refused a message: %s", err->msg);
        return FL_EPEER;
    }
    s->bytes_received += header_len + payload_len;
    *p = find_peer(s, from);
    rc = fl_msg_decode(m, header, header_len, payload, payload_len, s->job->name, err);
    free(header);
    free(payload);
    if (!rc && !*p) rc = fl_err_set(err, FL_EPEER, "sender '%s' is not a client of the job", from);
    if (!rc && strcmp(m->sender, from) != 0)
        rc = fl_err_set(err, FL_EPEER, "message from %s claims to be from '%s'", from, m->sender);
    if (!rc) rc = fl_msg_check_seq(&(*p)->seq, m, err); /* seq 1: the client restarted */
    if (rc) {
        fl_party_refused(&s->pf, from, "refused a message: %s", err->msg);
        fl_msg_free(m);
        if (*p && strstr(err->msg, "protocol version")) { /* tell it, in our version */
            cJSON *meta = cJSON_CreateObject();
            cJSON_AddStringToObject(meta, "reason", err->msg);
            send_to(s, *p, FL_MSG_ERROR, -1, meta, NULL, 0, NULL);
            cJSON_Delete(meta);
        }
        return FL_EPEER;
    }
    return FL_OK;
}

static int peer_index(const server *s, const peer *p) { return (int)(p - s->peers); }

static int count_joined(const server *s) {
    int n = 0;
    for (int i = 0; i < s->n; i++)
        n += s->peers[i].joined;
    return n;
}

static void heartbeat(server *s, fl_err *err) {
    if (fl_now_s() - s->last_beat < s->job->heartbeat_s) return;
    s->last_beat = fl_now_s();
    for (int i = 0; i < s->n; i++)
        if (s->peers[i].joined)
            send_to(s, &s->peers[i], FL_MSG_HEARTBEAT, s->round, NULL, NULL, 0, err);
}

static int round_start(server *s, peer *p, fl_err *err);
static int round_start_meta(server *s, peer *p, cJSON *meta, fl_err *err);

/* Whether m is p's unmask answer that came after the server no longer needed it (see
 * peer.unmask_round); it is dropped quietly, once. */
static int late_unmask(server *s, peer *p, const fl_msg *m) {
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(m->meta, "stage");
    if (m->type != FL_MSG_SECAGG || !cJSON_IsString(st) || strcmp(st->valuestring, "unmask") ||
        p->unmask_round < 1 || m->round != p->unmask_round)
        return 0;
    fl_party_debug(&s->pf, "%s's unmask for round %lld came after the sum was complete; dropped",
                   p->cfg->name, (long long)m->round);
    p->unmask_round = 0;
    return 1;
}

/* Handles a message outside the update itself: joins, heartbeats, leaves. resend: a selected
 * client that joins again before answering is sent the round again (plain rounds). */
static void handle_other(server *s, peer *p, fl_msg *m, int resend, fl_err *err) {
    if (m->type == FL_MSG_JOIN) {
        const cJSON *samples = cJSON_GetObjectItemCaseSensitive(m->meta, "samples");
        if (cJSON_IsNumber(samples) && samples->valuedouble >= 1 && samples->valuedouble < 1e15)
            p->samples = (long)samples->valuedouble;
        if (!p->joined) fl_party_log(&s->pf, "%s joined", p->cfg->name);
        p->joined = 1;
        p->left = 0;
        if (s->algo->server_join) s->algo->server_join(s->algo_state, peer_index(s, p), m->meta);
        /* a selected client that restarted mid-round gets the round again */
        if (p->selected && !p->replied && resend) round_start(s, p, err);
    } else if (m->type == FL_MSG_LEAVE) {
        const cJSON *loss = cJSON_GetObjectItemCaseSensitive(m->meta, "eval_loss");
        const cJSON *ppl = cJSON_GetObjectItemCaseSensitive(m->meta, "eval_perplexity");
        p->final_loss = cJSON_IsNumber(loss) ? loss->valuedouble : NAN;
        p->final_ppl = cJSON_IsNumber(ppl) ? ppl->valuedouble : NAN;
        p->left = 1;
        p->joined = 0;
    } else if (m->type == FL_MSG_UPDATE) {
        fl_party_refused(&s->pf, p->cfg->name,
                         "refused an update from %s for round %lld (now round %lld%s)",
                         p->cfg->name, (long long)m->round, (long long)s->round,
                         !p->selected ? ", not selected"
                         : p->replied ? ", already answered"
                                      : ", past the deadline");
    } else if (m->type != FL_MSG_HEARTBEAT && !late_unmask(s, p, m)) {
        fl_party_refused(&s->pf, p->cfg->name, "refused a %s message from %s",
                         fl_msg_type_name(m->type), p->cfg->name);
    }
}

static int round_start(server *s, peer *p, fl_err *err) {
    cJSON *meta = cJSON_CreateObject();
    int rc = round_start_meta(s, p, meta, err);
    cJSON_Delete(meta);
    return rc;
}

/* Sends payload to p with meta, and records its tensors in the outbox. */
static int send_payload(server *s, peer *p, fl_msg_type type, const cJSON *meta,
                        const uint8_t *payload, size_t len, fl_err *err) {
    int rc = send_to(s, p, type, s->round, meta, payload, len, err);
    if (!rc) fl_party_outbox_payload(&s->pf, s->round, p->cfg->name, payload, len);
    return rc;
}

/* round_start with meta's fields added to the round's config (meta stays the caller's): the
 * loop's fields, then the algorithm's with its payload for this client. */
static int round_start_meta(server *s, peer *p, cJSON *meta, fl_err *err) {
    const fl_job *job = s->job;
    cJSON_AddNumberToObject(meta, "rounds", job->rounds);
    if (job->dp) cJSON_AddNumberToObject(meta, "dp_noise", s->dp_sigma);
    const uint8_t *payload = NULL;
    size_t len = 0;
    int rc =
        s->algo->round_start(s->algo_state, s->round, peer_index(s, p), meta, &payload, &len, err);
    if (rc) {
        fl_party_log(&s->pf, "round %lld: no round_start for %s: %s", (long long)s->round,
                     p->cfg->name, err->msg);
        return rc;
    }
    return send_payload(s, p, FL_MSG_ROUND_START, meta, payload, len, err);
}

/* Waits until at least `want` clients joined, or the deadline. When the server has just started
 * (first_wait), it then keeps the door open a little longer for the rest of the clients, so that
 * the first round does not start with whoever happened to connect first. */
static int wait_joins(server *s, int want, double deadline_s, int first_wait, fl_err *err) {
    double until = fl_now_s() + deadline_s, grace_until = 0;
    for (;;) {
        int joined = count_joined(s);
        if (joined >= want && (!first_wait || joined == s->n)) break;
        if (joined >= want && grace_until == 0) grace_until = fl_now_s() + JOIN_GRACE_S;
        if (fl_now_s() >= until || (grace_until > 0 && fl_now_s() >= grace_until)) break;
        fl_msg m = {0};
        peer *p = NULL;
        int rc = recv_msg(s, 200, &m, &p, err);
        if (rc == FL_OK) {
            handle_other(s, p, &m, 0, err);
            fl_msg_free(&m);
        }
        heartbeat(s, err);
        fl_party_status(&s->pf, "waiting for clients", s->round, count_joined(s), want,
                        s->last_loss, 0);
    }
    return count_joined(s) >= want ? FL_OK : FL_ETIMEOUT;
}

/* The clients of this round: all joined, or a seeded sample of `fraction` of them. */
static int select_clients(server *s) {
    int joined = count_joined(s), k = fl_job_sample_count(s->job->fraction, joined);
    if (k < s->job->min_clients) k = s->job->min_clients;
    if (k > joined) k = joined;
    int order[1024], n = 0;
    for (int i = 0; i < s->n && n < 1024; i++) {
        s->peers[i].selected = s->peers[i].replied = 0;
        s->peers[i].clip_factor = NAN;
        s->peers[i].rejected = s->peers[i].clipped = 0;
        if (s->peers[i].joined) order[n++] = i;
    }
    for (int i = n - 1; i > 0; i--) { /* Fisher-Yates from (seed, round) */
        int j =
            (int)(fl_rng_uniform_at(s->job->seed ^ 0x5e1ec7u, (uint64_t)(s->round - 1), (size_t)i) *
                  (i + 1));
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int i = 0; i < k; i++)
        s->peers[order[i]].selected = 1;
    return k;
}

/* One update of the round from selected client p: the loop's fields checked, the rest the
 * algorithm's. Returns 1 when it counts as an answer (used, or rejected by a bound). */
static int take_update(server *s, peer *p, const fl_msg *m, fl_err *err) {
    const cJSON *samples = cJSON_GetObjectItemCaseSensitive(m->meta, "samples");
    const cJSON *loss = cJSON_GetObjectItemCaseSensitive(m->meta, "train_loss");
    const cJSON *eval = cJSON_GetObjectItemCaseSensitive(m->meta, "eval_loss");
    double weight = cJSON_IsNumber(samples) ? samples->valuedouble : 0;
    if (!(weight >= 1 && weight < 1e15)) {
        fl_party_refused(&s->pf, p->cfg->name, "refused the update of %s: %s", p->cfg->name,
                         "meta.samples must be a positive count");
        return 0;
    }
    fl_algo_verdict v;
    if (s->algo->add_update(s->algo_state, s->round, peer_index(s, p), m, weight, &v, err)) {
        fl_party_log(&s->pf, "round %lld: cannot take the update of %s: %s", (long long)s->round,
                     p->cfg->name, err->msg);
        return 0;
    }
    if (v.status == FL_ALGO_REFUSED) {
        fl_party_refused(&s->pf, p->cfg->name, "refused the update of %s: %s", p->cfg->name, v.why);
        return 0;
    }
    p->replied = 1; /* it answered: the round does not wait for it any longer */
    p->rejected = v.status == FL_ALGO_REJECTED;
    p->clipped = v.status == FL_ALGO_CLIPPED;
    if (v.status != FL_ALGO_ACCEPTED)
        fl_party_log(&s->pf, "round %lld: %s", (long long)s->round, v.why);
    if (p->rejected) return 1;
    p->rounds++;
    p->samples = (long)weight;
    p->train_loss = cJSON_IsNumber(loss) ? loss->valuedouble : NAN;
    p->eval_loss = cJSON_IsNumber(eval) ? eval->valuedouble : NAN;
    p->clip_factor = reported_clip_factor(m);
    fl_party_log(&s->pf, "round %lld: update from %s (%ld samples, loss %.4f%s%s)",
                 (long long)s->round, p->cfg->name, p->samples, p->train_loss,
                 v.detail[0] ? ", " : "", v.detail);
    return 1;
}

/* Collects updates until every selected client answered or the deadline; returns how many were
 * used. */
static int collect(server *s, int selected, fl_err *err) {
    double until = fl_now_s() + s->job->round_deadline_s;
    int replied = 0;
    while (replied < selected && fl_now_s() < until) {
        int waiting = 0; /* selected, not answered, still connected */
        for (int i = 0; i < s->n; i++)
            waiting += s->peers[i].selected && !s->peers[i].replied && s->peers[i].joined;
        if (waiting == 0) break;
        fl_msg m = {0};
        peer *p = NULL;
        int rc = recv_msg(s, 200, &m, &p, err);
        heartbeat(s, err);
        if (rc) continue;
        if (m.type == FL_MSG_UPDATE && m.round == s->round && p->selected && !p->replied) {
            if (take_update(s, p, &m, err) && !p->rejected) replied++;
        } else {
            handle_other(s, p, &m, 1, err);
        }
        fl_msg_free(&m);
        fl_party_status(&s->pf, "collecting updates", s->round, replied, selected, s->last_loss, 0);
    }
    return replied;
}

/* ---- secure aggregation -------------------------------------------------------------------- */

typedef int (*sa_collect_fn)(fl_secagg_server *, uint32_t, const uint8_t *, size_t, fl_err *);

static int sa_send(server *s, peer *p, const char *stage, const uint8_t *bytes, size_t n,
                   fl_err *err) {
    uint8_t *payload = NULL;
    size_t len = 0;
    int rc = fl_bytes_to_payload(bytes, n, &payload, &len, err);
    cJSON *meta = cJSON_CreateObject();
    cJSON_AddStringToObject(meta, "stage", stage);
    if (!rc) rc = send_to(s, p, FL_MSG_SECAGG, s->round, meta, payload, len, err);
    if (!rc) fl_party_outbox_bytes(&s->pf, s->round, p->cfg->name, stage, bytes, n);
    cJSON_Delete(meta);
    free(payload);
    return rc;
}

/* Collects one stage's messages from the clients flagged in `from` (order[i] is index i) into
 * `got`, until all of them answered, the secagg server is ready (ready_ok), or the deadline. */
static int sa_collect(server *s, fl_secagg_server *sa, peer **order, int k, const char *stage,
                      sa_collect_fn collect, const uint8_t *from, uint8_t *got, int ready_ok,
                      double until, fl_err *err) {
    int want = 0, have = 0;
    for (int i = 0; i < k; i++)
        want += from[i];
    while (have < want && fl_now_s() < until && !(ready_ok && fl_secagg_server_ready(sa))) {
        fl_msg m = {0};
        peer *p = NULL;
        int rc = recv_msg(s, 200, &m, &p, err);
        heartbeat(s, err);
        if (rc) continue;
        int i = 0;
        while (i < k && order[i] != p)
            i++;
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(m.meta, "stage");
        const uint8_t *bytes = NULL;
        size_t n = 0;
        int expected = m.round == s->round && i < k && from[i] && !got[i] && cJSON_IsString(st) &&
                       strcmp(st->valuestring, stage) == 0;
        if (m.type != FL_MSG_SECAGG) {
            handle_other(s, p, &m, 0, err);
        } else if (!expected) { /* a late unmask is expected; anything else is refused */
            if (!late_unmask(s, p, &m))
                fl_party_refused(&s->pf, p->cfg->name,
                                 "refused a secagg message from %s (round %lld, waiting for %s)",
                                 p->cfg->name, (long long)m.round, stage);
        } else if (fl_bytes_from_payload(m.payload, m.payload_len, &bytes, &n, err) ||
                   collect(sa, (uint32_t)i, bytes, n, err)) {
            fl_party_refused(&s->pf, p->cfg->name, "refused %s's %s: %s", p->cfg->name, stage,
                             err->msg);
        } else {
            got[i] = 1;
            have++;
            if (strcmp(stage, "unmask") == 0) p->unmask_round = 0;
            if (strcmp(stage, "masked") == 0) {
                const cJSON *loss = cJSON_GetObjectItemCaseSensitive(m.meta, "train_loss");
                p->train_loss = cJSON_IsNumber(loss) ? loss->valuedouble : NAN;
                p->clip_factor = reported_clip_factor(&m);
            }
        }
        fl_msg_free(&m);
        fl_party_status(&s->pf, stage, s->round, have, want, s->last_loss, 0);
    }
    return have;
}

/* One round under secure aggregation (docs/secagg.md): the clients advertise keys, share their
 * secrets, train and send masked updates, then help remove the masks of the survivors; the server
 * learns only the sum of the survivors' weighted updates and their total weight. Returns how many
 * updates the sum holds (0 when the round failed cleanly). */
static int secure_round(server *s, int selected, fl_err *err) {
    const fl_job *job = s->job;
    peer *order[1024];
    int k = 0;
    for (int i = 0; i < s->n && k < 1024; i++)
        if (s->peers[i].selected) order[k++] = &s->peers[i];
    (void)selected;
    fl_secagg_config cfg;
    if (k < 2) {
        fl_party_log(&s->pf, "round %lld: secure aggregation needs at least 2 clients, got %d",
                     (long long)s->round, k);
        return 0;
    }
    if (fl_job_secagg_config(job, (uint32_t)k, s->round, s->algo->secure_length(s->algo_state),
                             &cfg, err)) {
        fl_party_log(&s->pf, "round %lld: %s", (long long)s->round, err->msg);
        return 0;
    }
    fl_secagg_server *sa = fl_secagg_server_new(&cfg, err);
    if (!sa) return 0;
    uint8_t all[1024], u1[1024] = {0}, u2[1024] = {0}, u3[1024] = {0}, u4[1024] = {0};
    for (int i = 0; i < k; i++) {
        all[i] = 0;
        cJSON *meta = cJSON_CreateObject(), *info = cJSON_AddObjectToObject(meta, "secagg");
        cJSON_AddNumberToObject(info, "index", i);
        cJSON_AddNumberToObject(info, "clients", k);
        if (round_start_meta(s, order[i], meta, err) == 0) all[i] = 1;
        cJSON_Delete(meta);
    }
    double until = fl_now_s() + job->round_deadline_s;
    uint8_t *msg = NULL;
    size_t n = 0;
    int rc = 0, count = 0;
    sa_collect(s, sa, order, k, "advertise", fl_secagg_server_collect_advertise, all, u1, 0, until,
               err);
    rc = fl_secagg_server_end_advertise(sa, &msg, &n, err);
    for (int i = 0; !rc && i < k; i++)
        if (u1[i]) sa_send(s, order[i], "keys", msg, n, err);
    free(msg), msg = NULL;
    if (!rc)
        sa_collect(s, sa, order, k, "shares", fl_secagg_server_collect_shares, u1, u2, 0, until,
                   err);
    if (!rc) rc = fl_secagg_server_end_shares(sa, err);
    for (int i = 0; !rc && i < k; i++)
        if (u2[i] && !fl_secagg_server_forward_for(sa, (uint32_t)i, &msg, &n, err)) {
            sa_send(s, order[i], "forward", msg, n, err);
            free(msg), msg = NULL;
        }
    if (!rc)
        sa_collect(s, sa, order, k, "masked", fl_secagg_server_collect_masked, u2, u3, 0, until,
                   err);
    if (!rc) rc = fl_secagg_server_end_masked(sa, &msg, &n, err);
    for (int i = 0; !rc && i < k; i++)
        if (u3[i] && sa_send(s, order[i], "survivors", msg, n, err) == 0)
            order[i]->unmask_round = s->round;
    free(msg), msg = NULL;
    if (!rc)
        sa_collect(s, sa, order, k, "unmask", fl_secagg_server_collect_unmask, u3, u4, 1,
                   fl_now_s() + job->round_deadline_s, err);
    for (int i = 0; i < k; i++)
        count += u3[i];
    if (!rc) rc = s->algo->secure_sum(s->algo_state, sa, count, err);
    if (rc) {
        count = 0;
        fl_party_log(&s->pf, "round %lld: secure aggregation failed: %s", (long long)s->round,
                     err->msg);
    } else {
        for (int i = 0; i < k; i++) {
            order[i]->replied = u3[i];
            order[i]->rounds += u3[i];
        }
        fl_party_log(&s->pf, "round %lld: the masked sum of %d of %d clients", (long long)s->round,
                     count, k);
    }
    fl_secagg_server_free(sa);
    return rc ? 0 : count;
}

/* ---- checkpoint ----------------------------------------------------------------------------- */

static int checkpoint_path(const server *s, char *out, size_t size, const char *name, fl_err *err) {
    char dir[FL_JOB_PATH_MAX + 32];
    if (fl_path_join(dir, sizeof dir, s->pf.dir, "checkpoint", err) || fl_mkdirs(dir, err))
        return FL_EIO;
    return fl_path_join(out, size, dir, name, err);
}

static int save_checkpoint(server *s, int64_t round, fl_err *err) {
    char dir[FL_JOB_PATH_MAX + 32], path[FL_JOB_PATH_MAX + 128];
    cJSON *state = cJSON_CreateObject(), *algo = cJSON_CreateObject();
    int rc = state && algo ? FL_OK : fl_err_set(err, FL_ENOMEM, "out of memory");
    if (!rc) rc = fl_path_join(dir, sizeof dir, s->pf.dir, "checkpoint", err);
    if (!rc) rc = fl_mkdirs(dir, err);
    if (!rc) rc = s->algo->save(s->algo_state, dir, round, algo, err);
    if (rc) {
        cJSON_Delete(state);
        cJSON_Delete(algo);
        return rc;
    }
    cJSON_AddStringToObject(state, "job", s->job->name);
    cJSON_AddNumberToObject(state, "round_completed", (double)round);
    cJSON_AddNumberToObject(state, "first_round", 1); /* older checkpoints counted from 0 */
    cJSON_AddStringToObject(algo, "name", s->algo->name);
    cJSON_AddItemToObject(state, "algorithm", algo);
    cJSON *clients = cJSON_AddObjectToObject(state, "clients");
    for (int i = 0; i < s->n; i++) {
        cJSON *c = cJSON_AddObjectToObject(clients, s->peers[i].cfg->name);
        cJSON_AddNumberToObject(c, "rounds", s->peers[i].rounds);
        cJSON_AddNumberToObject(c, "dropped", s->peers[i].dropped);
    }
    char *text = cJSON_Print(state);
    cJSON_Delete(state);
    if (!text) rc = fl_err_set(err, FL_ENOMEM, "out of memory");
    if (!rc) rc = checkpoint_path(s, path, sizeof path, "state.json", err);
    if (!rc) rc = fl_write_file_atomic(path, text, strlen(text), err);
    free(text);
    if (!rc && s->algo->prune) s->algo->prune(s->algo_state, dir, round);
    return rc;
}

/* Loads the checkpoint; *next receives the round to run next. */
static int load_checkpoint(server *s, int64_t *next, fl_err *err) {
    char path[FL_JOB_PATH_MAX + 128], dir[FL_JOB_PATH_MAX + 32], *text = NULL;
    size_t len;
    int rc = checkpoint_path(s, path, sizeof path, "state.json", err);
    if (!rc) rc = fl_read_file(path, &text, &len, 16 << 20, err);
    if (rc) return fl_err_set(err, FL_EINPUT, "--resume: %s", err->msg);
    cJSON *state = cJSON_Parse(text);
    free(text);
    const cJSON *done = cJSON_GetObjectItemCaseSensitive(state, "round_completed");
    const cJSON *job = cJSON_GetObjectItemCaseSensitive(state, "job");
    if (!cJSON_IsNumber(done) || !cJSON_IsString(job) || strcmp(job->valuestring, s->job->name))
        rc = fl_err_set(err, FL_EINPUT, "%s: expected round_completed and job '%s'", path,
                        s->job->name);
    /* a checkpoint without an algorithm object is PELLM's, from before there were others */
    const cJSON *algo = cJSON_GetObjectItemCaseSensitive(state, "algorithm");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(algo, "name");
    const char *algo_name = cJSON_IsString(name) ? name->valuestring : "pellm";
    if (!rc && strcmp(algo_name, s->algo->name) != 0)
        rc = fl_err_set(err, FL_EINPUT,
                        "--resume: %s holds a checkpoint of algorithm %s; the job's is %s", path,
                        algo_name, s->algo->name);
    /* round: the last completed round, counted from 1; a checkpoint without first_round counted
     * from 0, and its files carry that number */
    const cJSON *first = cJSON_GetObjectItemCaseSensitive(state, "first_round");
    int64_t file_round = rc ? 0 : (int64_t)done->valuedouble;
    int64_t round = cJSON_IsNumber(first) ? file_round : file_round + 1;
    const cJSON *clients = cJSON_GetObjectItemCaseSensitive(state, "clients");
    for (int i = 0; !rc && i < s->n; i++) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(clients, s->peers[i].cfg->name);
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(c, "rounds");
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(c, "dropped");
        s->peers[i].rounds = cJSON_IsNumber(r) ? r->valueint : 0;
        s->peers[i].dropped = cJSON_IsNumber(d) ? d->valueint : 0;
    }
    cJSON *fields = cJSON_IsObject(algo) ? cJSON_Duplicate(algo, 1) : cJSON_CreateObject();
    if (!rc && !fields) rc = fl_err_set(err, FL_ENOMEM, "out of memory");
    if (!rc && file_round != round)
        cJSON_AddNumberToObject(fields, "file_round", (double)file_round);
    cJSON_Delete(state);
    if (!rc) rc = fl_path_join(dir, sizeof dir, s->pf.dir, "checkpoint", err);
    if (!rc) rc = s->algo->load(s->algo_state, dir, round, fields, err);
    cJSON_Delete(fields);
    if (rc) return fl_err_prefix(err, "--resume");
    *next = round + 1;
    fl_party_log(&s->pf, "--resume: the checkpoint holds round %lld; continuing with round %lld",
                 (long long)round, (long long)round + 1);
    /* the accountant after rounds 1..round (sample level: each client's own rounds) */
    if (s->job->dp) rc = dp_prepare(s, err);
    for (int64_t r = 1; !rc && s->job->dp == FL_DP_CLIENT && r <= round; r++)
        fl_rdp_add(&s->rdp, client_rate(s), s->dp_sigma, 1, NULL);
    long steps = s->job->local_steps > 0 ? s->job->local_steps : 1;
    for (int i = 0; !rc && s->job->dp == FL_DP_SAMPLE && i < s->n; i++)
        fl_rdp_add(&s->peers[i].rdp, sample_rate(s, &s->peers[i]), s->dp_sigma,
                   steps * s->peers[i].rounds, NULL);
    return rc;
}

/* ---- the job ----------------------------------------------------------------------------------
 */

/* ---- differential privacy accounting ----------------------------------------------------------
 */

/* Sampling rate of one client's DP-SGD step: batch / its rows. */
static double sample_rate(const server *s, const peer *p) {
    double q = p->samples > 0 ? (double)s->job->batch / (double)p->samples : 1.0;
    return q < 1 ? q : 1;
}

static double client_rate(const server *s) {
    return (double)s->job->clients_per_round / (double)s->job->n_clients;
}

/* The noise multiplier, once: the job's, or the smallest that keeps the whole job within
 * target_epsilon (client level: one release a round at rate clients_per_round / clients; sample
 * level: rounds * local_steps DP-SGD steps at the largest batch / rows of the joined clients). */
static int dp_prepare(server *s, fl_err *err) {
    const fl_job *job = s->job;
    if (!job->dp || s->dp_sigma > 0) return FL_OK;
    s->dp_sigma = job->dp_noise;
    if (s->dp_sigma > 0) return FL_OK;
    double q = client_rate(s);
    long steps = job->rounds;
    if (job->dp == FL_DP_SAMPLE) {
        q = 0;
        for (int i = 0; i < s->n; i++)
            if (s->peers[i].joined) q = fmax(q, sample_rate(s, &s->peers[i]));
        steps = (long)job->rounds * (job->local_steps > 0 ? job->local_steps : 1);
    }
    if (fl_dp_calibrate_sigma(q, steps, job->dp_target_epsilon, job->dp_delta, &s->dp_sigma, err))
        return fl_err_prefix(err, "privacy.dp.target_epsilon");
    fl_party_log(&s->pf,
                 "DP: noise multiplier %.4f for epsilon %.3g at delta %.3g (q %.4g, %ld "
                 "steps)",
                 s->dp_sigma, job->dp_target_epsilon, job->dp_delta, q, steps);
    return FL_OK;
}

/* A client's reported clip_factor (meta of its update or masked input), NAN when missing or
 * absurd. */
static double reported_clip_factor(const fl_msg *m) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(m->meta, "clip_factor");
    return cJSON_IsNumber(f) && f->valuedouble >= 0 && f->valuedouble < 1e12 ? f->valuedouble : NAN;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Client-level DP: how much the clip took away this round, from the clients' reports (their
 * update norm / the clip; under secure aggregation the server sees nothing else). Adds
 * clip_reports, clipped_fraction and clip_factor_median to the round's metrics line, logs them,
 * and warns (in the log when it starts, in the live view while it holds) when most updates were
 * cut by more than CLIP_WARN_FACTOR: then the mean update is a small fraction of what the
 * clients learned, while the noise and the privacy spent stay the same; or when no update came
 * near the clip (the noise, sigma times the clip, is then larger than it needs to be). */
#define CLIP_WARN_FACTOR 10.0
static void dp_clip_report(server *s, cJSON *line) {
    double factors[1024];
    int n = 0, clipped = 0;
    for (int i = 0; i < s->n && n < 1024; i++)
        if (s->peers[i].replied && isfinite(s->peers[i].clip_factor)) {
            factors[n++] = s->peers[i].clip_factor;
            clipped += s->peers[i].clip_factor > 1;
        }
    cJSON_AddNumberToObject(line, "clip_reports", n);
    if (n == 0) return;
    qsort(factors, (size_t)n, sizeof *factors, compare_double);
    double median = n % 2 ? factors[n / 2] : 0.5 * (factors[n / 2 - 1] + factors[n / 2]);
    double fraction = (double)clipped / n;
    cJSON_AddNumberToObject(line, "clipped_fraction", fraction);
    cJSON_AddNumberToObject(line, "clip_factor_median", median);
    fl_party_log(&s->pf,
                 "round %lld: DP clip %g: %d of %d updates clipped, median update norm %.3gx "
                 "the clip",
                 (long long)s->round, s->job->dp_clip, clipped, n, median);
    char warning[256] = "";
    int kind = fraction > 0.5 && median > CLIP_WARN_FACTOR     ? 1
               : clipped == 0 && median < 1 / CLIP_WARN_FACTOR ? 2
                                                               : 0;
    if (kind == s->clip_warning) return; /* logged and shown already (or nothing to say) */
    s->clip_warning = kind;
    if (kind == 1)
        snprintf(warning, sizeof warning,
                 "DP clip %g cuts most updates %.3gx: the model barely learns while epsilon is "
                 "spent; set privacy.dp.clip near the median update norm %.3g (docs/privacy.md)",
                 s->job->dp_clip, median, median * s->job->dp_clip);
    else if (kind == 2)
        snprintf(warning, sizeof warning,
                 "DP clip %g is %.3gx the median update norm: the noise is that much larger than "
                 "needed; lower privacy.dp.clip towards %.3g (docs/privacy.md)",
                 s->job->dp_clip, 1 / median, median * s->job->dp_clip);
    if (kind) fl_party_log(&s->pf, "warning: %s", warning);
    fl_party_set_warning(&s->pf, kind ? warning : NULL);
}

/* Whether running this round would take the privacy loss past max_epsilon. */
static int dp_would_exceed(server *s) {
    const fl_job *job = s->job;
    if (!job->dp || !(job->dp_max_epsilon > 0)) return 0;
    if (job->dp == FL_DP_CLIENT)
        return fl_rdp_would_exceed(&s->rdp, client_rate(s), s->dp_sigma, 1, job->dp_delta,
                                   job->dp_max_epsilon);
    long steps = job->local_steps > 0 ? job->local_steps : 1;
    for (int i = 0; i < s->n; i++)
        if (s->peers[i].joined &&
            fl_rdp_would_exceed(&s->peers[i].rdp, sample_rate(s, &s->peers[i]), s->dp_sigma, steps,
                                job->dp_delta, job->dp_max_epsilon))
            return 1;
    return 0;
}

/* Composes the round just applied; s->epsilon is the job's epsilon (the largest client's at sample
 * level). */
static void dp_account(server *s) {
    const fl_job *job = s->job;
    if (!job->dp) return;
    if (job->dp == FL_DP_CLIENT) {
        fl_rdp_add(&s->rdp, client_rate(s), s->dp_sigma, 1, NULL);
        s->epsilon = fl_rdp_epsilon(&s->rdp, job->dp_delta, NULL);
        return;
    }
    long steps = job->local_steps > 0 ? job->local_steps : 1;
    s->epsilon = 0;
    for (int i = 0; i < s->n; i++) {
        peer *p = &s->peers[i];
        if (p->replied) fl_rdp_add(&p->rdp, sample_rate(s, p), s->dp_sigma, steps, NULL);
        s->epsilon = fmax(s->epsilon, fl_rdp_epsilon(&p->rdp, job->dp_delta, NULL));
    }
}

static int run_round(server *s, fl_err *err) {
    const fl_job *job = s->job;
    int rc = FL_OK;
    for (int attempt = 1; !rc && attempt <= ROUND_ATTEMPTS; attempt++) {
        double started = fl_now_s();
        s->bytes_sent = s->bytes_received = 0;
        int first_wait = !s->started;
        s->started = 1;
        if (wait_joins(s, job->min_clients, job->round_deadline_s, first_wait, err) ==
            FL_ETIMEOUT) {
            fl_party_log(&s->pf, "round %lld: only %d of the %d clients needed have joined",
                         (long long)s->round, count_joined(s), job->min_clients);
            continue;
        }
        if ((rc = dp_prepare(s, err))) break;
        if (dp_would_exceed(s)) {
            s->budget_spent = 1;
            fl_party_log(&s->pf,
                         "the privacy budget is spent: round %lld would take epsilon past "
                         "max_epsilon %.3g (now %.4g at delta %.3g); stopping before it",
                         (long long)s->round, job->dp_max_epsilon, s->epsilon, job->dp_delta);
            return FL_OK;
        }
        int selected = select_clients(s);
        for (int i = 0; i < s->n && !job->secure_aggregation; i++)
            if (s->peers[i].selected && round_start(s, &s->peers[i], err))
                selected--, s->peers[i].selected = 0;
        fl_party_log(&s->pf, "round %lld: sent round_start to %d clients%s", (long long)s->round,
                     selected, job->secure_aggregation ? " (secure aggregation)" : "");
        double sent = fl_now_s();
        int replied =
            job->secure_aggregation ? secure_round(s, selected, err) : collect(s, selected, err);
        double waited = fl_now_s() - sent;
        cJSON *meta = cJSON_CreateObject(), *dropped = cJSON_AddArrayToObject(meta, "dropped");
        for (int i = 0; i < s->n; i++) {
            peer *p = &s->peers[i];
            if (p->selected && !p->replied) {
                cJSON_AddItemToArray(dropped, cJSON_CreateString(p->cfg->name));
                p->dropped++;
            }
        }
        if (replied < job->min_clients) {
            fl_party_log(&s->pf,
                         "round %lld: %d updates of the %d needed by the deadline "
                         "(attempt %d of %d)",
                         (long long)s->round, replied, job->min_clients, attempt, ROUND_ATTEMPTS);
            s->algo->reset(s->algo_state);
            cJSON_Delete(meta);
            continue;
        }
        double agg_start = fl_now_s();
        fl_algo_round info = {.round = s->round, .updates = replied, .dp_noise = s->dp_sigma};
        cJSON *extra = cJSON_CreateObject(); /* the algorithm's fields of the metrics line */
        rc = extra ? s->algo->apply(s->algo_state, &info, extra, err)
                   : fl_err_set(err, FL_ENOMEM, "out of memory");
        if (!rc) dp_account(s);
        double seconds_agg = fl_now_s() - agg_start;
        if (!rc) rc = save_checkpoint(s, s->round, err);
        double loss = 0, eval = 0, weight = 0;
        int rejected = 0, clipped = 0;
        for (int i = 0; i < s->n; i++) {
            rejected += s->peers[i].rejected;
            clipped += s->peers[i].clipped;
        }
        for (int i = 0; i < s->n; i++)
            if (s->peers[i].replied &&
                !s->peers[i].rejected) { /* under secure aggregation the counts are hidden */
                double w = job->secure_aggregation ? 1.0 : (double)s->peers[i].samples;
                loss += w * s->peers[i].train_loss;
                eval += w * s->peers[i].eval_loss;
                weight += w;
            }
        cJSON_AddNumberToObject(meta, "clients", replied);
        for (int i = 0; !rc && i < s->n; i++) {
            peer *p = &s->peers[i];
            cJSON *mine = cJSON_Duplicate(meta, 1);
            if (p->selected && !p->replied) cJSON_AddBoolToObject(mine, "you_dropped", 1);
            if (p->joined) send_to(s, p, FL_MSG_ROUND_END, s->round, mine, NULL, 0, err);
            if (p->selected && !p->replied) p->joined = 0;
            cJSON_Delete(mine);
        }
        cJSON_Delete(meta);
        if (rc) {
            cJSON_Delete(extra);
            break;
        }
        cJSON *line = cJSON_CreateObject();
        cJSON_AddNumberToObject(line, "round", (double)s->round);
        cJSON_AddNumberToObject(line, "clients", replied);
        cJSON_AddNumberToObject(line, "dropped", selected - replied - rejected);
        cJSON_AddNumberToObject(line, "rejected", rejected);
        cJSON_AddNumberToObject(line, "clipped", clipped);
        cJSON_AddNumberToObject(line, "train_loss", loss / weight);
        cJSON_AddNumberToObject(line, "eval_loss", eval / weight); /* null without eval splits */
        cJSON_AddNumberToObject(line, "bytes_sent", (double)s->bytes_sent);
        cJSON_AddNumberToObject(line, "bytes_received", (double)s->bytes_received);
        cJSON_AddNumberToObject(line, "seconds_waiting", waited);
        cJSON_AddNumberToObject(line, "seconds_aggregating", seconds_agg);
        cJSON_AddNumberToObject(line, "seconds", fl_now_s() - started);
        if (job->dp) {
            cJSON_AddNumberToObject(line, "epsilon", s->epsilon);
            cJSON_AddNumberToObject(line, "delta", job->dp_delta);
            cJSON_AddNumberToObject(line, "noise_multiplier", s->dp_sigma);
        }
        if (job->dp == FL_DP_CLIENT) dp_clip_report(s, line);
        for (cJSON *f = extra->child; f;) {
            cJSON *next = f->next;
            cJSON_AddItemToObject(line, f->string, cJSON_DetachItemViaPointer(extra, f));
            f = next;
        }
        cJSON_Delete(extra);
        fl_party_metrics(&s->pf, line);
        s->last_loss = loss / weight;
        fl_party_log(&s->pf,
                     "round %lld done: %d updates, %d dropped, %d rejected, %d clipped, mean "
                     "train loss %.4f",
                     (long long)s->round, replied, selected - replied - rejected, rejected, clipped,
                     loss / weight);
        return FL_OK;
    }
    if (!rc)
        rc = fl_err_set(err, FL_ETIMEOUT,
                        "round %lld: fewer than min_clients (%d) updates in %d attempts of %.0f s",
                        (long long)s->round, job->min_clients, ROUND_ATTEMPTS,
                        job->round_deadline_s);
    return rc;
}

/* The final round_end to p: what it needs to hold the final model. */
static int send_final(server *s, peer *p, const cJSON *meta, fl_err *err) {
    cJSON *mine = cJSON_Duplicate(meta, 1);
    const uint8_t *payload = NULL;
    size_t len = 0;
    int rc = mine ? s->algo->final_start(s->algo_state, peer_index(s, p), mine, &payload, &len, err)
                  : fl_err_set(err, FL_ENOMEM, "out of memory");
    if (!rc) rc = send_payload(s, p, FL_MSG_ROUND_END, mine, payload, len, err);
    cJSON_Delete(mine);
    return rc;
}

/* After the last round: the final model to every client, their final evaluations back, the
 * result on disk, summary.json. */
static int finish(server *s, fl_err *err) {
    const fl_job *job = s->job;
    char path[FL_JOB_PATH_MAX + 64];
    cJSON *summary = cJSON_CreateObject();
    if (!summary) return fl_err_set(err, FL_ENOMEM, "out of memory");
    cJSON_AddStringToObject(summary, "job", job->name);
    cJSON_AddStringToObject(summary, "algorithm", s->algo->name);
    cJSON_AddNumberToObject(summary, "rounds", job->rounds);
    cJSON *meta = cJSON_CreateObject();
    cJSON_AddBoolToObject(meta, "final", 1);
    for (int i = 0; i < s->n; i++) {
        s->peers[i].final_loss = s->peers[i].final_ppl = NAN;
        if (s->peers[i].joined) send_final(s, &s->peers[i], meta, err);
    }
    double until = fl_now_s() + job->round_deadline_s;
    while (count_joined(s) > 0 && fl_now_s() < until) {
        fl_msg m = {0};
        peer *p = NULL;
        if (recv_msg(s, 200, &m, &p, err) == FL_OK) {
            int was_joined = p->joined;
            handle_other(s, p, &m, 0, err);
            if (m.type == FL_MSG_JOIN && !was_joined && !p->left) send_final(s, p, meta, err);
            fl_msg_free(&m);
        }
        heartbeat(s, err);
        int reported = 0; /* clients that sent their final evaluation, of those asked */
        for (int i = 0; i < s->n; i++)
            reported += s->peers[i].left;
        fl_party_status(&s->pf, "final evaluation", s->round, reported, reported + count_joined(s),
                        s->last_loss, 0);
    }
    cJSON_Delete(meta);
    /* the result on disk after the clients have left: writing it may take a while (FedKSeed
     * replays every round), and a server that does not read would lose their connections */
    int rc = s->algo->finish(s->algo_state, s->pf.dir, s->round, summary, err);
    if (rc) {
        cJSON_Delete(summary);
        return rc;
    }
    cJSON_AddNumberToObject(summary, "rounds_completed", (double)s->round);
    if (job->dp) {
        cJSON_AddStringToObject(summary, "dp", job->dp == FL_DP_CLIENT ? "client" : "sample");
        cJSON_AddNumberToObject(summary, "epsilon", s->epsilon);
        cJSON_AddNumberToObject(summary, "delta", job->dp_delta);
        cJSON_AddNumberToObject(summary, "noise_multiplier", s->dp_sigma);
    }
    if (s->budget_spent)
        cJSON_AddStringToObject(summary, "stopped", "privacy budget spent (max_epsilon)");
    cJSON *clients = cJSON_AddObjectToObject(summary, "clients");
    for (int i = 0; i < s->n; i++) {
        peer *p = &s->peers[i];
        cJSON *c = cJSON_AddObjectToObject(clients, p->cfg->name);
        cJSON_AddNumberToObject(c, "rounds", p->rounds);
        cJSON_AddNumberToObject(c, "dropped_rounds", p->dropped);
        if (p->left && isfinite(p->final_loss)) {
            cJSON_AddNumberToObject(c, "final_eval_loss", p->final_loss);
            cJSON_AddNumberToObject(c, "final_eval_perplexity", p->final_ppl);
        } else {
            cJSON_AddNullToObject(c, "final_eval_loss");
        }
    }
    char *text = cJSON_Print(summary);
    cJSON_Delete(summary);
    rc = text ? fl_path_join(path, sizeof path, job->output, "summary.json", err)
              : fl_err_set(err, FL_ENOMEM, "out of memory");
    if (!rc) rc = fl_write_file_atomic(path, text, strlen(text), err);
    free(text);
    if (!rc) fl_party_log(&s->pf, "wrote %s", path);
    return rc;
}

static int setup(server *s, int resume, int64_t *first_round, fl_err *err) {
    const fl_job *job = s->job;
    fl_keypair keys;
    int rc = fl_key_load_pair(job->server_key, &keys, err);
    fl_peer_key *allowed = calloc((size_t)s->n, sizeof *allowed);
    if (!rc && !allowed) rc = fl_err_set(err, FL_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < s->n; i++) {
        snprintf(allowed[i].name, sizeof allowed[i].name, "%s", job->clients[i].name);
        rc = fl_key_load_public(job->clients[i].key, allowed[i].public_z85, err);
    }
    if (!rc && !(s->algo = fl_algo_find(job->algorithm)))
        rc = fl_err_set(err, FL_EINPUT, "%s: algorithm: unknown algorithm '%s'", job->path,
                        job->algorithm);
    if (!rc) rc = s->algo->server_init(&s->algo_state, job, &s->pf, err);
    *first_round = 1;
    if (!rc && resume) rc = load_checkpoint(s, first_round, err);
    if (!rc) {
        s->max_message_bytes = s->algo->server_max_message_bytes(s->algo_state);
        s->ep = fl_endpoint_server(job->server_address, &keys, allowed, s->n,
                                   (int)(job->heartbeat_s * 1000), s->max_message_bytes, err);
        if (!s->ep) rc = err->code;
    }
    sodium_memzero(&keys, sizeof keys);
    free(allowed);
    return rc;
}

int fl_server_run(const fl_job *job, int resume, fl_err *err) {
    server s = {.job = job, .n = job->n_clients, .last_loss = NAN};
    s.peers = calloc((size_t)s.n, sizeof *s.peers);
    if (!s.peers) return fl_err_set(err, FL_ENOMEM, "out of memory");
    fl_rdp_init(&s.rdp);
    for (int i = 0; i < s.n; i++) {
        s.peers[i].cfg = &job->clients[i];
        fl_rdp_init(&s.peers[i].rdp);
    }
    snprintf(s.session, sizeof s.session, "%08x%08x", randombytes_random(), randombytes_random());
    int rc = fl_party_open(&s.pf, job, "server", resume, err);
    int64_t first = 1;
    if (!rc) rc = setup(&s, resume, &first, err);
    if (!rc) {
        fl_party_log(&s.pf, "%s: %s, %d clients, %d rounds from round %lld, listening on %s",
                     job->name, s.algo->name, s.n, job->rounds, (long long)first,
                     job->server_address);
        int64_t last = first - 1; /* the last completed round, 0 for none */
        for (s.round = first; !rc && !s.budget_spent && s.round <= job->rounds; s.round++) {
            rc = run_round(&s, err);
            if (!rc && !s.budget_spent) last = s.round;
        }
        if (!rc) {
            s.round = last;
            rc = finish(&s, err);
        }
        for (int i = 0; i < s.n; i++) /* tell whoever is still there */
            if (s.peers[i].joined) {
                cJSON *meta = cJSON_CreateObject();
                if (rc) cJSON_AddStringToObject(meta, "reason", err->msg);
                send_to(&s, &s.peers[i], rc ? FL_MSG_ERROR : FL_MSG_LEAVE, s.round, meta, NULL, 0,
                        NULL);
                cJSON_Delete(meta);
            }
    }
    if (rc && s.pf.log) fl_party_log(&s.pf, "stopped: %s", err->msg);
    if (s.pf.dir[0]) fl_party_status(&s.pf, rc ? "failed" : "done", s.round, 0, 0, s.last_loss, 1);
    fl_endpoint_free(s.ep);
    if (s.algo) s.algo->server_free(s.algo_state);
    fl_party_close(&s.pf);
    free(s.peers);
    return rc;
}
