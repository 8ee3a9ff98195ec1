/* pipeline.c — InferDPT over a data file (fl_dpt_run, include/fedllm/inferdpt.h): render,
 * perturb, send only perturbed text, extract the answer with the local model; every prompt in
 * the outbox before it leaves, progress kept so that a killed run goes on with --resume. */
#include <cjson/cJSON.h>
#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fedllm/clock.h"
#include "fedllm/endpoint.h"
#include "fedllm/fileio.h"
#include "fedllm/inferdpt.h"
#include "fedllm/serve.h"
#include "fedllm/template.h"

enum { MAX_RECORDS = 1 << 20, MAX_BATCH = 256 };
static const size_t MAX_DATA_BYTES = (size_t)1 << 32;

typedef struct run {
    const fl_dpt_run_config *cfg;
    cJSON **records; /* (n) the data */
    long n;
    cJSON **done; /* (n) the three fields of each finished record, NULL until finished */
    FILE *outbox, *progress, *metrics, *logf;
    char dir[1024];
} run;

static void say(run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(run *r, const char *fmt, ...) {
    va_list ap;
    for (int i = 0; i < 2; i++) {
        FILE *f = i ? r->logf : r->cfg->log;
        if (!f) continue;
        va_start(ap, fmt);
        fputs("inferdpt: ", f);
        vfprintf(f, fmt, ap);
        fputc('\n', f);
        fflush(f);
        va_end(ap);
    }
}

static int file_in(run *r, const char *name, char *path, size_t size, fl_err *err) {
    return fl_path_join(path, size, r->dir, name, err);
}

/* The data: one JSON object per non-blank line. */
static int read_records(run *r, fl_err *err) {
    const char *path = r->cfg->data_path;
    char *data = NULL;
    size_t len = 0;
    int rc = fl_read_file(path, &data, &len, MAX_DATA_BYTES, err);
    if (rc) return rc;
    long cap = 0, line = 0;
    for (char *p = data; !rc && p < data + len;) {
        char *nl = memchr(p, '\n', (size_t)(data + len - p));
        char *end = nl ? nl : data + len;
        line++;
        const char *q = p;
        while (q < end && (*q == ' ' || *q == '\t' || *q == '\r'))
            q++;
        if (q < end) {
            cJSON *j = cJSON_ParseWithLength(p, (size_t)(end - p));
            if (!cJSON_IsObject(j)) {
                cJSON_Delete(j);
                rc = fl_err_set(err, FL_EINPUT, "%s:%ld: expected one JSON object per line", path,
                                line);
            } else if (r->n >= MAX_RECORDS) {
                cJSON_Delete(j);
                rc = fl_err_set(err, FL_EINPUT, "%s: more than %d records", path, MAX_RECORDS);
            } else {
                if (r->n == cap) {
                    cap = cap ? cap * 2 : 64;
                    cJSON **grown = realloc(r->records, (size_t)cap * sizeof *grown);
                    if (!grown) {
                        cJSON_Delete(j);
                        rc = fl_err_set(err, FL_ENOMEM, "out of memory reading %s", path);
                        break;
                    }
                    r->records = grown;
                }
                r->records[r->n++] = j;
            }
        }
        p = end + 1;
    }
    free(data);
    if (!rc && r->n == 0) rc = fl_err_set(err, FL_EINPUT, "%s: no records", path);
    if (!rc && !(r->done = calloc((size_t)r->n, sizeof *r->done)))
        rc = fl_err_set(err, FL_ENOMEM, "out of memory");
    return rc;
}

/* What a resumed run must share with the first: the settings that decide every text. */
static char *settings_json(const fl_dpt_run_config *c) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "data", c->data_path);
    if (isinf(c->epsilon))
        cJSON_AddStringToObject(j, "epsilon", "inf");
    else
        cJSON_AddNumberToObject(j, "epsilon", c->epsilon);
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)c->seed);
    cJSON_AddStringToObject(j, "seed", seed);
    cJSON_AddStringToObject(j, "endpoint", c->endpoint->base_url);
    cJSON_AddStringToObject(j, "remote_model", c->endpoint->model);
    cJSON_AddStringToObject(j, "encode_template", c->encode_template);
    cJSON_AddStringToObject(j, "instruction_template", c->instruction_template);
    cJSON_AddStringToObject(j, "decode_template", c->decode_template);
    cJSON_AddNumberToObject(j, "remote_max_tokens", (double)c->remote->max_tokens);
    cJSON_AddNumberToObject(j, "remote_temperature", c->remote->temperature);
    cJSON_AddNumberToObject(j, "local_max_tokens", (double)c->local_params->max_tokens);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return text;
}

/* progress.jsonl's finished records; a last line cut short by a kill is dropped (and cut off
 * the file, so that appending goes on after the last whole line). */
static int read_progress(run *r, const char *path, fl_err *err) {
    char *data = NULL;
    size_t len = 0;
    int rc = fl_read_file(path, &data, &len, MAX_DATA_BYTES, err);
    if (rc) return rc;
    size_t whole = 0;
    long line = 0;
    for (char *p = data; !rc && p < data + len;) {
        char *nl = memchr(p, '\n', (size_t)(data + len - p));
        if (!nl) break;
        line++;
        cJSON *j = cJSON_ParseWithLength(p, (size_t)(nl - p));
        cJSON *doc = cJSON_GetObjectItemCaseSensitive(j, "doc");
        long i = cJSON_IsNumber(doc) ? (long)doc->valuedouble : -1;
        if (i < 0 || i >= r->n || r->done[i] ||
            !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "inferdpt_result"))) {
            cJSON_Delete(j);
            rc = fl_err_set(err, FL_EINPUT, "%s:%ld: not a finished record of this data", path,
                            line);
            break;
        }
        cJSON_DeleteItemFromObjectCaseSensitive(j, "doc");
        r->done[i] = j;
        whole = (size_t)(nl + 1 - data);
        p = nl + 1;
    }
    free(data);
    if (!rc && whole < len && truncate(path, (off_t)whole) != 0)
        rc = fl_err_set(err, FL_EIO, "%s: cannot cut its unfinished last line", path);
    return rc;
}

static int exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

/* The run directory: new (run.json written), or resumed (run.json must match). */
static int open_dir(run *r, fl_dpt_run_summary *sum, fl_err *err) {
    const fl_dpt_run_config *c = r->cfg;
    snprintf(r->dir, sizeof r->dir, "%s", c->out_dir);
    char path[1100], settings_path[1100];
    int rc = fl_mkdirs(r->dir, err);
    if (rc || (rc = file_in(r, "run.json", settings_path, sizeof settings_path, err))) return rc;
    char *settings = settings_json(c);
    if (!settings) return fl_err_set(err, FL_ENOMEM, "out of memory");
    if (!c->resume) {
        static const char *mine[] = {"run.json", "outbox.jsonl", "progress.jsonl", "results.jsonl"};
        for (size_t i = 0; !rc && i < sizeof mine / sizeof mine[0]; i++)
            if (!(rc = file_in(r, mine[i], path, sizeof path, err)) && exists(path))
                rc = fl_err_set(err, FL_EINPUT,
                                "%s: holds an earlier run (%s): --resume to go on with it, or "
                                "another --out",
                                r->dir, mine[i]);
        if (!rc) rc = fl_write_file_atomic(settings_path, settings, strlen(settings), err);
    } else {
        char *before = NULL;
        size_t len = 0;
        rc = fl_read_file(settings_path, &before, &len, 1 << 24, err);
        if (!rc && (len != strlen(settings) || memcmp(before, settings, len) != 0))
            rc = fl_err_set(err, FL_EINPUT,
                            "%s: was run with other settings (data, epsilon, seed, endpoint, "
                            "model, templates or token limits): resume with the same ones",
                            settings_path);
        free(before);
        if (!rc && !(rc = file_in(r, "progress.jsonl", path, sizeof path, err)) && exists(path))
            rc = read_progress(r, path, err);
    }
    free(settings);
    for (long i = 0; i < r->n; i++)
        sum->done_before += r->done[i] != NULL;
    static const char *names[] = {"outbox.jsonl", "progress.jsonl", "metrics.jsonl", "log"};
    FILE **files[] = {&r->outbox, &r->progress, &r->metrics, &r->logf};
    for (int i = 0; !rc && i < 4; i++)
        if (!(rc = file_in(r, names[i], path, sizeof path, err)) &&
            !(*files[i] = fl_open_nofollow(path, 1, err)))
            rc = err->code;
    return rc;
}

/* Appends one JSON line to f and makes it durable before going on. */
static int append_line(FILE *f, cJSON *j, const char *what, fl_err *err) {
    char *text = cJSON_PrintUnformatted(j);
    if (!text) return fl_err_set(err, FL_ENOMEM, "out of memory");
    int ok =
        fputs(text, f) >= 0 && fputc('\n', f) != EOF && fflush(f) == 0 && fsync(fileno(f)) == 0;
    free(text);
    return ok ? FL_OK : fl_err_set(err, FL_EIO, "%s: write failed", what);
}

static int record_outbox(run *r, long doc, const char *prompt, fl_err *err) {
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, (const unsigned char *)prompt, strlen(prompt));
    char hex[2 * crypto_hash_sha256_BYTES + 1];
    sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "doc", (double)doc);
    cJSON_AddStringToObject(j, "peer", r->cfg->endpoint->base_url);
    cJSON_AddStringToObject(j, "name", "prompt");
    cJSON_AddNumberToObject(j, "bytes", (double)strlen(prompt));
    cJSON_AddStringToObject(j, "sha256", hex);
    cJSON_AddStringToObject(j, "text", prompt);
    int rc = append_line(r->outbox, j, "outbox.jsonl", err);
    cJSON_Delete(j);
    return rc;
}

/* Local extraction of n prompts at once through the engine (they share its decode batch). */
static int extract(run *r, const long *docs, fl_str *prompts, int n, fl_str *answers, fl_err *err) {
    const fl_dpt_run_config *c = r->cfg;
    fl_gen *gens[MAX_BATCH] = {0};
    int rc = FL_OK;
    for (int i = 0; !rc && i < n; i++) {
        fl_ids ids = {0};
        if (fl_tokenizer_adds_bos(c->local_tok))
            rc = fl_ids_push(&ids, fl_tokenizer_bos(c->local_tok), err);
        if (!rc) rc = fl_tokenizer_encode(c->local_tok, prompts[i].s, prompts[i].n, &ids, err);
        fl_gen_params p = *c->local_params;
        long room = fl_engine_context(c->local) - (long)ids.n;
        if (!rc && room < 1)
            rc = fl_err_set(err, FL_EINPUT,
                            "%s: record %ld: --decode-template gives the local model %zu "
                            "tokens, its context is %d",
                            c->data_path, docs[i] + 1, ids.n, fl_engine_context(c->local));
        if (!rc && p.max_tokens > room) p.max_tokens = room;
        if (!rc && !(gens[i] = fl_engine_submit(c->local, ids.v, ids.n, &p, err))) rc = err->code;
        fl_ids_free(&ids);
    }
    for (int i = 0; i < n; i++) {
        if (!gens[i]) continue;
        if (rc) fl_gen_cancel(gens[i]);
        fl_gen_view v;
        do
            v = fl_gen_wait(gens[i], (size_t)-1, 1.0, NULL, 0);
        while (v.finish == FL_FINISH_NONE);
        if (!rc && v.finish == FL_FINISH_ERROR)
            rc = fl_err_set(err, FL_EINTERNAL, "%s: record %ld: the local model failed: %s",
                            c->data_path, docs[i] + 1, v.error);
        if (!rc) {
            fl_gen_wait(gens[i], 0, 0, &answers[i], 0);
            if (!answers[i].s) rc = fl_str_append(&answers[i], "", 0, err);
        }
        fl_gen_release(gens[i]);
    }
    return rc;
}

static int add_string(cJSON *j, const char *key, const char *value, fl_err *err) {
    cJSON_DeleteItemFromObjectCaseSensitive(j, key);
    return cJSON_AddStringToObject(j, key, value) ? FL_OK
                                                  : fl_err_set(err, FL_ENOMEM, "out of memory");
}

typedef struct batch {
    long docs[MAX_BATCH];
    int n;
    cJSON *rec[MAX_BATCH];
    fl_str text[MAX_BATCH];
    char *response[MAX_BATCH];
} batch;

static void batch_free(batch *b) {
    for (int i = 0; i < b->n; i++) {
        cJSON_Delete(b->rec[i]);
        fl_str_free(&b->text[i]);
        free(b->response[i]);
    }
    memset(b, 0, sizeof *b);
}

/* Renders and perturbs each record of b into its prompt (b->text). */
static int prepare(run *r, batch *b, fl_dpt_stats *stats, fl_err *err) {
    const fl_dpt_run_config *c = r->cfg;
    int rc = FL_OK;
    for (int i = 0; !rc && i < b->n; i++) {
        fl_str doc = {0}, perturbed = {0};
        if (!(b->rec[i] = cJSON_Duplicate(r->records[b->docs[i]], 1)))
            rc = fl_err_set(err, FL_ENOMEM, "out of memory");
        if (!rc)
            rc = fl_template_render(c->encode_template, b->rec[i], "--encode-template", &doc, err);
        if (!rc)
            rc = fl_dpt_perturb_text(c->kit, c->kit_tok, doc.s, doc.n, c->epsilon, c->seed,
                                     (uint64_t)b->docs[i], &perturbed, stats, err);
        if (!rc) rc = add_string(b->rec[i], "perturbed_doc", perturbed.s, err);
        if (!rc)
            rc = fl_template_render(c->instruction_template, b->rec[i], "--instruction-template",
                                    &b->text[i], err);
        fl_str_free(&doc);
        fl_str_free(&perturbed);
        if (rc) fl_err_prefix(err, r->cfg->data_path);
    }
    return rc;
}

static int do_batch(run *r, batch *b, fl_dpt_run_summary *sum, fl_err *err) {
    const fl_dpt_run_config *c = r->cfg;
    fl_dpt_stats stats = {0};
    int rc = prepare(r, b, &stats, err);
    const char *prompts[MAX_BATCH];
    for (int i = 0; !rc && i < b->n; i++) {
        prompts[i] = b->text[i].s;
        rc = record_outbox(r, b->docs[i], prompts[i], err);
    }
    size_t sent = 0, received = 0;
    double t0 = fl_now_s();
    if (!rc)
        rc = fl_endpoint_complete(c->endpoint, prompts, b->n, c->remote, b->response, &sent,
                                  &received, err);
    double t1 = fl_now_s();
    fl_str local[MAX_BATCH] = {0};
    for (int i = 0; !rc && i < b->n; i++) {
        fl_str_free(&b->text[i]);
        rc = add_string(b->rec[i], "perturbed_response", b->response[i], err);
        if (!rc)
            rc = fl_template_render(c->decode_template, b->rec[i], "--decode-template", &b->text[i],
                                    err);
    }
    if (!rc) rc = extract(r, b->docs, b->text, b->n, local, err);
    double t2 = fl_now_s();
    for (int i = 0; !rc && i < b->n; i++) {
        cJSON *done = cJSON_CreateObject();
        cJSON_AddNumberToObject(done, "doc", (double)b->docs[i]);
        cJSON_AddStringToObject(
            done, "perturbed_doc",
            cJSON_GetObjectItemCaseSensitive(b->rec[i], "perturbed_doc")->valuestring);
        cJSON_AddStringToObject(done, "perturbed_response", b->response[i]);
        cJSON_AddStringToObject(done, "inferdpt_result", local[i].s);
        rc = append_line(r->progress, done, "progress.jsonl", err);
        cJSON_DeleteItemFromObjectCaseSensitive(done, "doc");
        r->done[b->docs[i]] = done;
    }
    for (int i = 0; i < b->n; i++)
        fl_str_free(&local[i]);
    if (rc) return rc;
    sum->stats.tokens += stats.tokens, sum->stats.in_kit += stats.in_kit;
    sum->stats.replaced += stats.replaced, sum->stats.full_rows += stats.full_rows;
    sum->bytes_sent += sent, sum->bytes_received += received;
    sum->remote_s += t1 - t0, sum->local_s += t2 - t1;
    cJSON *m = cJSON_CreateObject();
    cJSON_AddNumberToObject(m, "first_doc", (double)b->docs[0]);
    cJSON_AddNumberToObject(m, "docs", b->n);
    cJSON_AddNumberToObject(m, "tokens", (double)stats.tokens);
    cJSON_AddNumberToObject(m, "in_kit", (double)stats.in_kit);
    cJSON_AddNumberToObject(m, "replaced", (double)stats.replaced);
    cJSON_AddNumberToObject(m, "bytes_sent", (double)sent);
    cJSON_AddNumberToObject(m, "bytes_received", (double)received);
    cJSON_AddNumberToObject(m, "remote_s", t1 - t0);
    cJSON_AddNumberToObject(m, "local_s", t2 - t1);
    rc = append_line(r->metrics, m, "metrics.jsonl", err);
    cJSON_Delete(m);
    say(r, "records %ld..%ld: %ld of %ld kit tokens replaced, remote %.2f s, local %.2f s",
        b->docs[0] + 1, b->docs[b->n - 1] + 1, stats.replaced, stats.in_kit, t1 - t0, t2 - t1);
    return rc;
}

/* results.jsonl (each record with its three fields) and summary.json, atomically. */
static int write_results(run *r, const fl_dpt_run_summary *sum, fl_err *err) {
    char path[1100];
    fl_atomic_file f;
    int rc = file_in(r, "results.jsonl", path, sizeof path, err);
    if (rc || (rc = fl_atomic_open(&f, path, err))) return rc;
    for (long i = 0; !rc && i < r->n; i++) {
        cJSON *j = cJSON_Duplicate(r->records[i], 1), *field;
        cJSON_ArrayForEach(field, r->done[i]) {
            cJSON_DeleteItemFromObjectCaseSensitive(j, field->string);
            cJSON_AddItemToObject(j, field->string, cJSON_Duplicate(field, 1));
        }
        char *text = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        if (!text) rc = fl_err_set(err, FL_ENOMEM, "out of memory");
        if (!rc) rc = fl_atomic_write(&f, text, strlen(text), err);
        if (!rc) rc = fl_atomic_write(&f, "\n", 1, err);
        free(text);
    }
    if (rc) return fl_atomic_abort(&f), rc;
    if ((rc = fl_atomic_commit(&f, err))) return rc;
    cJSON *s = cJSON_CreateObject();
    cJSON_AddNumberToObject(s, "records", (double)sum->records);
    if (isinf(r->cfg->epsilon))
        cJSON_AddStringToObject(s, "epsilon", "inf");
    else
        cJSON_AddNumberToObject(s, "epsilon", r->cfg->epsilon);
    cJSON_AddNumberToObject(s, "resumed_after", (double)sum->done_before);
    cJSON_AddNumberToObject(s, "tokens", (double)sum->stats.tokens);
    cJSON_AddNumberToObject(s, "in_kit", (double)sum->stats.in_kit);
    cJSON_AddNumberToObject(s, "replaced", (double)sum->stats.replaced);
    cJSON_AddNumberToObject(s, "bytes_sent", (double)sum->bytes_sent);
    cJSON_AddNumberToObject(s, "bytes_received", (double)sum->bytes_received);
    cJSON_AddNumberToObject(s, "remote_s", sum->remote_s);
    cJSON_AddNumberToObject(s, "local_s", sum->local_s);
    char *text = cJSON_Print(s);
    cJSON_Delete(s);
    if (!text) return fl_err_set(err, FL_ENOMEM, "out of memory");
    if (!(rc = file_in(r, "summary.json", path, sizeof path, err)))
        rc = fl_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

int fl_dpt_run(const fl_dpt_run_config *cfg, fl_dpt_run_summary *sum, fl_err *err) {
    memset(sum, 0, sizeof *sum);
    if (cfg->batch < 1 || cfg->batch > MAX_BATCH)
        return fl_err_set(err, FL_EINPUT, "batch: expected 1..%d prompts", MAX_BATCH);
    static const struct {
        const char *name;
        size_t offset;
    } templates[] = {{"--encode-template", offsetof(fl_dpt_run_config, encode_template)},
                     {"--instruction-template", offsetof(fl_dpt_run_config, instruction_template)},
                     {"--decode-template", offsetof(fl_dpt_run_config, decode_template)}};
    for (int i = 0; i < 3; i++) {
        const char *t = *(const char *const *)((const char *)cfg + templates[i].offset);
        int rc = fl_template_check(t, templates[i].name, err);
        if (rc) return rc;
    }
    run r = {.cfg = cfg};
    int rc = read_records(&r, err);
    sum->records = r.n;
    if (!rc) rc = open_dir(&r, sum, err);
    if (!rc && sum->done_before)
        say(&r, "resuming: %ld of %ld records were finished before", sum->done_before, r.n);
    batch b = {0};
    for (long i = 0; !rc && i <= r.n; i++) {
        if (i < r.n && !r.done[i]) b.docs[b.n++] = i;
        if (b.n == cfg->batch || (i == r.n && b.n > 0)) {
            rc = do_batch(&r, &b, sum, err);
            batch_free(&b);
        }
    }
    batch_free(&b);
    if (!rc) rc = write_results(&r, sum, err);
    if (rc && r.logf) fprintf(r.logf, "inferdpt: stopped: %s\n", err->msg); /* the caller says it */
    FILE *files[] = {r.outbox, r.progress, r.metrics, r.logf};
    for (int i = 0; i < 4; i++)
        if (files[i]) fclose(files[i]);
    for (long i = 0; i < r.n; i++)
        cJSON_Delete(r.records[i]), cJSON_Delete(r.done ? r.done[i] : NULL);
    free(r.records);
    free(r.done);
    return rc;
}
