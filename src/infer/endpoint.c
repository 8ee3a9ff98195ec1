/* endpoint.c — requests to an OpenAI-compatible endpoint over libcurl
 * (include/fedllm/endpoint.h). One easy handle per request: requests are few and long (a batch of
 * prompts each), so a connection pool would buy nothing measurable. */
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/endpoint.h"

enum { MAX_ANSWER_BYTES = 64 << 20, CONNECT_TIMEOUT_S = 10 };

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

int fl_endpoint_init(fl_endpoint *ep, const char *base_url, const char *api_key, const char *model,
                     double timeout_s, fl_err *err) {
    memset(ep, 0, sizeof *ep);
    size_t n = strlen(base_url);
    while (n > 0 && base_url[n - 1] == '/')
        n--;
    if ((strncmp(base_url, "http://", 7) != 0 && strncmp(base_url, "https://", 8) != 0) ||
        n >= sizeof ep->base_url || n <= 8)
        return fl_err_set(err, FL_EINPUT,
                          "endpoint '%.200s': expected an http:// or https:// URL of at most %zu "
                          "bytes (e.g. http://127.0.0.1:8000/v1)",
                          base_url, sizeof ep->base_url - 1);
    if (api_key && strlen(api_key) >= sizeof ep->api_key)
        return fl_err_set(err, FL_EINPUT, "API key: longer than %zu bytes", sizeof ep->api_key - 1);
    if (model && strlen(model) >= sizeof ep->model)
        return fl_err_set(err, FL_EINPUT, "model: longer than %zu bytes", sizeof ep->model - 1);
    if (!(timeout_s > 0))
        return fl_err_set(err, FL_EINPUT, "endpoint timeout: expected seconds > 0");
    memcpy(ep->base_url, base_url, n);
    if (api_key) snprintf(ep->api_key, sizeof ep->api_key, "%s", api_key);
    if (model) snprintf(ep->model, sizeof ep->model, "%s", model);
    ep->timeout_s = timeout_s;
    pthread_once(&curl_once, curl_init);
    return FL_OK;
}

typedef struct answer {
    char *data;
    size_t len;
    int too_big;
} answer;

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *user) {
    answer *a = user;
    size_t n = size * nmemb;
    if (a->len + n > MAX_ANSWER_BYTES) return a->too_big = 1, 0;
    char *grown = realloc(a->data, a->len + n + 1);
    if (!grown) return 0;
    memcpy(grown + a->len, ptr, n);
    a->data = grown;
    a->len += n;
    a->data[a->len] = 0;
    return n;
}

/* The endpoint's own error message of an error body ({"error": {"message": ...}}), or a prefix
 * of the body with non-printable bytes replaced. */
static void error_text(const answer *a, char *out, size_t size) {
    cJSON *j = a->data ? cJSON_ParseWithLength(a->data, a->len) : NULL;
    cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    cJSON *m = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "message")
                                 : (cJSON_IsString(e) ? e : NULL);
    if (cJSON_IsString(m))
        snprintf(out, size, "%s", m->valuestring);
    else {
        size_t n = 0;
        for (size_t i = 0; a->data && i < a->len && n + 1 < size && n < 120; i++)
            out[n++] = a->data[i] >= 0x20 && a->data[i] < 0x7f ? a->data[i] : '?';
        out[n] = 0;
    }
    for (char *c = out; *c; c++)
        if (*c == '\n' || *c == '\r') *c = ' ';
    cJSON_Delete(j);
}

/* One request: body NULL is a GET. On success *out holds the parsed JSON answer. */
static int request(const fl_endpoint *ep, const char *path, const char *body, cJSON **out,
                   size_t *received, fl_err *err) {
    char url[640];
    snprintf(url, sizeof url, "%s/%s", ep->base_url, path);
    CURL *c = curl_easy_init();
    if (!c) return fl_err_set(err, FL_ENOMEM, "%s: libcurl could not start a request", url);
    answer a = {0};
    char auth[300], curl_msg[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (ep->api_key[0]) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", ep->api_key);
        headers = curl_slist_append(headers, auth);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)CONNECT_TIMEOUT_S);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(ep->timeout_s * 1000));
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &a);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_msg);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    if (body) curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    CURLcode cc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    int rc = FL_OK;
    if (a.too_big)
        rc =
            fl_err_set(err, FL_EPEER, "%s: the answer is over %d MiB", url, MAX_ANSWER_BYTES >> 20);
    else if (cc != CURLE_OK)
        rc =
            fl_err_set(err, FL_EIO, "%s: %s", url, curl_msg[0] ? curl_msg : curl_easy_strerror(cc));
    else if (status < 200 || status > 299) {
        char why[300];
        error_text(&a, why, sizeof why);
        rc = fl_err_set(err, FL_EPEER, "%s: HTTP %ld: %s", url, status, why);
    } else if (!(*out = a.data ? cJSON_ParseWithLength(a.data, a.len) : NULL) ||
               !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        char why[300];
        error_text(&a, why, sizeof why);
        rc = fl_err_set(err, FL_EPEER, "%s: the answer is not a JSON object (it begins \"%s\")",
                        url, why);
    }
    if (received) *received = a.len;
    free(a.data);
    return rc;
}

int fl_endpoint_check_model(fl_endpoint *ep, fl_err *err) {
    cJSON *j = NULL;
    int rc = request(ep, "models", NULL, &j, NULL, err);
    if (rc) return rc;
    cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data"), *m;
    char listed[256] = "";
    size_t used = 0;
    int found = 0, any = 0;
    cJSON_ArrayForEach(m, data) {
        cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
        if (!cJSON_IsString(id)) continue;
        if (!any && !ep->model[0]) snprintf(ep->model, sizeof ep->model, "%s", id->valuestring);
        any = 1;
        if (strcmp(id->valuestring, ep->model) == 0) found = 1;
        if (used + strlen(id->valuestring) + 3 < sizeof listed)
            used += (size_t)snprintf(listed + used, sizeof listed - used, "%s%s", used ? ", " : "",
                                     id->valuestring);
    }
    cJSON_Delete(j);
    if (!cJSON_IsArray(data) || !any)
        return fl_err_set(err, FL_EPEER,
                          "%s/models: the answer lists no model (\"data\": [{\"id\"...}])",
                          ep->base_url);
    if (!found)
        return fl_err_set(err, FL_EPEER, "%s/models: has no model '%s' (it has %s)", ep->base_url,
                          ep->model, listed);
    return FL_OK;
}

static char *completion_body(const fl_endpoint *ep, const char *const *prompts, int n,
                             const fl_completion_params *p) {
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "model", ep->model);
    cJSON *list = cJSON_AddArrayToObject(b, "prompt");
    for (int i = 0; i < n; i++)
        cJSON_AddItemToArray(list, cJSON_CreateString(prompts[i]));
    cJSON_AddNumberToObject(b, "max_tokens", (double)p->max_tokens);
    cJSON_AddNumberToObject(b, "temperature", p->temperature);
    cJSON_AddNumberToObject(b, "top_p", p->top_p);
    if (p->seed >= 0) cJSON_AddNumberToObject(b, "seed", (double)p->seed);
    if (p->n_stops > 0) {
        cJSON *stops = cJSON_AddArrayToObject(b, "stop");
        for (int i = 0; i < p->n_stops; i++)
            cJSON_AddItemToArray(stops, cJSON_CreateString(p->stops[i]));
    }
    char *text = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    return text;
}

int fl_endpoint_complete(const fl_endpoint *ep, const char *const *prompts, int n,
                         const fl_completion_params *p, char **texts, size_t *sent,
                         size_t *received, fl_err *err) {
    char *body = completion_body(ep, prompts, n, p);
    if (!body) return fl_err_set(err, FL_ENOMEM, "out of memory for a request");
    if (sent) *sent = strlen(body);
    cJSON *j = NULL;
    int rc = request(ep, "completions", body, &j, received, err);
    free(body);
    if (rc) return rc;
    cJSON *choices = cJSON_GetObjectItemCaseSensitive(j, "choices"), *c;
    const char **got = calloc((size_t)n, sizeof *got);
    if (!got)
        rc = fl_err_set(err, FL_ENOMEM, "out of memory");
    else if (!cJSON_IsArray(choices))
        rc = fl_err_set(err, FL_EPEER, "%s/completions: the answer has no \"choices\" list",
                        ep->base_url);
    cJSON *list = rc ? NULL : choices;
    cJSON_ArrayForEach(c, list) {
        cJSON *index = cJSON_GetObjectItemCaseSensitive(c, "index");
        cJSON *text = cJSON_GetObjectItemCaseSensitive(c, "text");
        int i = cJSON_IsNumber(index) ? (int)index->valuedouble : -1;
        if (i < 0 || i >= n || (double)i != index->valuedouble || got[i] || !cJSON_IsString(text)) {
            rc = fl_err_set(err, FL_EPEER,
                            "%s/completions: a choice without a new index below %d and a string "
                            "\"text\"",
                            ep->base_url, n);
            break;
        }
        got[i] = text->valuestring;
    }
    for (int i = 0; !rc && i < n; i++)
        if (!got[i])
            rc = fl_err_set(err, FL_EPEER, "%s/completions: no choice for prompt %d of %d",
                            ep->base_url, i, n);
    for (int i = 0; !rc && i < n; i++)
        if (!(texts[i] = strdup(got[i]))) {
            for (int k = 0; k < i; k++)
                free(texts[k]), texts[k] = NULL;
            rc = fl_err_set(err, FL_ENOMEM, "out of memory");
        }
    free(got);
    cJSON_Delete(j);
    return rc;
}
