/* keygen.c — `fedllm keygen`: a CURVE key pair for one federation party, as PATH.key (the secret,
 * mode 0600) and PATH.pub (the public key that goes to the other parties). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "fedllm/fileio.h"
#include "fedllm/transport.h"

static const char HELP[] =
    "usage: fedllm keygen --out PATH [--json]\n"
    "\n"
    "Writes a CURVE key pair for one party: PATH.key holds the secret key (mode 0600; keep it on\n"
    "that party's machine) and PATH.pub the public key (give it to the other parties; the job\n"
    "file names PATH as the party's `key`). An existing PATH.key is never replaced. Missing\n"
    "folders are created.\n"
    "  --json   print {\"public\": ..., \"key\": ..., \"pub\": ...} instead of text\n";

/* Makes the folders above prefix (everything before its last '/'). */
static int make_parent(const char *prefix, fl_err *err) {
    const char *slash = strrchr(prefix, '/');
    if (!slash || slash == prefix) return FL_OK;
    char dir[4096];
    size_t n = (size_t)(slash - prefix);
    if (n >= sizeof dir) return fl_err_set(err, FL_EINPUT, "--out: path too long");
    memcpy(dir, prefix, n);
    dir[n] = '\0';
    return fl_mkdirs(dir, err);
}

static int check_prefix(const char *prefix, fl_err *err) {
    size_t n = strlen(prefix);
    if (n == 0 || prefix[n - 1] == '/')
        return fl_err_set(err, FL_EINPUT, "--out: expected a path prefix such as keys/alice");
    if (n > 4 && (strcmp(prefix + n - 4, ".key") == 0 || strcmp(prefix + n - 4, ".pub") == 0))
        return fl_err_set(err, FL_EINPUT,
                          "--out %s: give the prefix without .key or .pub (keygen adds both)",
                          prefix);
    if (n > 3000) return fl_err_set(err, FL_EINPUT, "--out: path too long");
    return FL_OK;
}

static int print_json(const char *prefix, const char *public_z85, fl_err *err) {
    char key_file[4096], pub_file[4096];
    snprintf(key_file, sizeof key_file, "%s.key", prefix);
    snprintf(pub_file, sizeof pub_file, "%s.pub", prefix);
    cJSON *out = cJSON_CreateObject();
    char *text = NULL;
    if (out && cJSON_AddStringToObject(out, "public", public_z85) &&
        cJSON_AddStringToObject(out, "key", key_file) &&
        cJSON_AddStringToObject(out, "pub", pub_file))
        text = cJSON_PrintUnformatted(out);
    cJSON_Delete(out);
    if (!text) return fl_err_set(err, FL_ENOMEM, "out of memory");
    printf("%s\n", text);
    free(text);
    return FL_OK;
}

int cli_keygen(int argc, char **argv) {
    cli_opt o[] = {{"out", 1, NULL}, {"json", 0, NULL}};
    int help;
    fl_err err = {0};
    if (cli_parse(argc, argv, 2, o, 2, &help, &err)) return cli_fail("keygen", &err);
    if (help) return fputs(HELP, stdout), 0;
    const char *prefix = o[0].value;
    if (!prefix) {
        fl_err_set(&err, FL_EINPUT, "--out is required (see --help)");
        return cli_fail("keygen", &err);
    }
    fl_keypair kp;
    if (check_prefix(prefix, &err) || make_parent(prefix, &err) ||
        fl_keygen_pair(prefix, &kp, &err))
        return cli_fail("keygen", &err);
    int rc = o[1].value ? print_json(prefix, kp.public_z85, &err) : FL_OK;
    if (!o[1].value)
        printf("public key %s\nwrote %s.key (secret, mode 0600) and %s.pub\n", kp.public_z85,
               prefix, prefix);
    memset(&kp, 0, sizeof kp);
    return rc ? cli_fail("keygen", &err) : 0;
}
