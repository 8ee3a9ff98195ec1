/* cli.h — what the subcommands of the fedllm command share: option parsing that reports one clear
 * line per problem, and building an output directory atomically. */
#ifndef FEDLLM_CLI_H
#define FEDLLM_CLI_H

#include <stdint.h>

#include "fedllm/err.h"
#include "fedllm/generate.h"

/* Subcommands: each returns the process exit status (0, or the fl_err code: 2 for bad input). */
int cli_init_model(int argc, char **argv);
int cli_train(int argc, char **argv);
int cli_generate(int argc, char **argv);
int cli_merge(int argc, char **argv);
int cli_tokenize(int argc, char **argv);
int cli_keygen(int argc, char **argv);
int cli_server(int argc, char **argv);
int cli_client(int argc, char **argv);
int cli_run(int argc, char **argv);
int cli_eval(int argc, char **argv);
int cli_serve(int argc, char **argv);
int cli_inferdpt(int argc, char **argv);

/* A parsed "--name value" / "--flag" list. */
typedef struct cli_opt {
    const char *name; /* without the dashes */
    int takes_value;
    const char *value; /* NULL until seen; "1" for a flag */
} cli_opt;

/* Fills opts from argv[first..]; an unknown option, a missing value or a stray argument is an
 * FL_EINPUT naming it. "--help" sets *help. */
int cli_parse(int argc, char **argv, int first, cli_opt *opts, int n_opts, int *help, fl_err *err);
const char *cli_get(const cli_opt *opts, int n_opts, const char *name);
/* Parses an integer/float option within [lo, hi]; FL_EINPUT "--name: expected ..." otherwise. */
int cli_int(const char *name, const char *text, long lo, long hi, long *out, fl_err *err);
int cli_float(const char *name, const char *text, double lo, double hi, double *out, fl_err *err);

/* Output directories: files go into a fresh OUT.tmp.PID, which replaces OUT only when everything
 * was written (cli_out_commit); on failure cli_out_abort removes it, so OUT is never half-written.
 * Missing parent directories of OUT are created (and stay, empty, after a failure).
 * cli_out_begin normalises dir into out (no trailing slash) and refuses, with FL_EINPUT, an --out
 * that is ".", "..", a file, an existing directory that fedllm did not write, or that is or holds
 * one of the inputs (which replacing it would delete). Call it before reading the inputs. */
int cli_out_begin(const char *dir, const char *const *inputs, int n_inputs, char *out,
                  unsigned long out_size, char *tmp, unsigned long tmp_size, fl_err *err);
int cli_out_commit(const char *tmp, const char *dir, fl_err *err);
void cli_out_abort(const char *tmp);

/* The ids that end a continuation, as transformers' generate takes them: generation_config.json's
 * eos_token_id (an id or a list) when the file has the key, else config.json's; fedllm adds the
 * tokenizer's end-of-text. */
enum { CLI_MAX_STOP_IDS = 16 };
typedef struct cli_stop_ids {
    int32_t id[CLI_MAX_STOP_IDS];
    int n;
    int from_generation_config; /* the file named them (possibly none) */
} cli_stop_ids;
void cli_stop_add(cli_stop_ids *st, int id); /* once; ignored when negative or full */
int cli_is_stop(const cli_stop_ids *st, int id);
/* The model's own defaults from DIR/generation_config.json, when it has one (as transformers
 * reads them) into s, *max_tokens and stops; nothing changes when there is no such file.
 * FL_EINPUT naming the file when it is malformed. */
int cli_read_generation_config(const char *dir, fl_sampling *s, long *max_tokens,
                               cli_stop_ids *stops, fl_err *err);

/* Prints "fedllm CMD: message" on stderr and returns err->code (2 for bad input). */
int cli_fail(const char *cmd, const fl_err *err);

#endif
