/* eval.c — `fedllm eval`: held-out loss and perplexity of a model (with an adapter, when given) on
 * a JSONL file, as one JSON line on stdout. The demo's table and the federated clients use the
 * same fl_evaluate. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "fedllm/model.h"
#include "fedllm/train.h"

static const char HELP[] =
    "usage: fedllm eval --model DIR [--adapter DIR] --data FILE.jsonl [options]\n"
    "\n"
    "Prints {\"loss\", \"perplexity\", \"tokens\", \"rows\"}: the mean next-token loss over every\n"
    "counted target of the file, cut into rows as `fedllm train` cuts them.\n"
    "  --seq T (128)  --batch B (8)  --format text|prompt_response (text)\n"
    "  --text-field F (text)  --prompt-field F (prompt)  --response-field F (response)\n";

enum { E_MODEL, E_ADAPTER, E_DATA, E_SEQ, E_BATCH, E_FORMAT, E_TEXT, E_PROMPT, E_RESPONSE, E_N };

int cli_eval(int argc, char **argv) {
    cli_opt o[E_N] = {[E_MODEL] = {"model", 1, NULL},
                      [E_ADAPTER] = {"adapter", 1, NULL},
                      [E_DATA] = {"data", 1, NULL},
                      [E_SEQ] = {"seq", 1, NULL},
                      [E_BATCH] = {"batch", 1, NULL},
                      [E_FORMAT] = {"format", 1, NULL},
                      [E_TEXT] = {"text-field", 1, NULL},
                      [E_PROMPT] = {"prompt-field", 1, NULL},
                      [E_RESPONSE] = {"response-field", 1, NULL}};
    int help;
    fl_err err = {0};
    long seq = 128, batch = 8;
    if (cli_parse(argc, argv, 2, o, E_N, &help, &err)) return cli_fail("eval", &err);
    if (help) return fputs(HELP, stdout), 0;
    if (!o[E_MODEL].value || !o[E_DATA].value) {
        fl_err_set(&err, FL_EINPUT, "--model and --data are required (see --help)");
        return cli_fail("eval", &err);
    }
    if ((o[E_SEQ].value && cli_int("seq", o[E_SEQ].value, 1, 1 << 20, &seq, &err)) ||
        (o[E_BATCH].value && cli_int("batch", o[E_BATCH].value, 1, 1 << 16, &batch, &err)))
        return cli_fail("eval", &err);
    fl_data_spec spec = {.format = FL_DATA_TEXT,
                         .text_field = o[E_TEXT].value,
                         .prompt_field = o[E_PROMPT].value,
                         .response_field = o[E_RESPONSE].value};
    if (o[E_FORMAT].value && strcmp(o[E_FORMAT].value, "prompt_response") == 0)
        spec.format = FL_DATA_PROMPT_RESPONSE;
    else if (o[E_FORMAT].value && strcmp(o[E_FORMAT].value, "text") != 0) {
        fl_err_set(&err, FL_EINPUT, "--format: expected text or prompt_response, got '%s'",
                   o[E_FORMAT].value);
        return cli_fail("eval", &err);
    }
    fl_model *m = fl_model_load(o[E_MODEL].value, &err);
    fl_tokenizer *tok = NULL;
    fl_dataset ds = {0};
    int rc = m ? FL_OK : err.code;
    if (!rc && o[E_ADAPTER].value) rc = fl_model_load_adapter(m, o[E_ADAPTER].value, &err);
    if (!rc)
        rc = fl_tokenizer_load_for_model(&tok, o[E_MODEL].value, fl_model_config(m)->vocab_size,
                                         &err);
    if (!rc && seq > fl_config_context(fl_model_config(m)))
        rc = fl_err_set(&err, FL_EINPUT, "--seq %ld exceeds the context of %s (%d positions)", seq,
                        o[E_MODEL].value, fl_config_context(fl_model_config(m)));
    if (!rc) rc = fl_dataset_load(&ds, o[E_DATA].value, &spec, tok, (int)seq, &err);
    double loss = 0;
    long counted = 0;
    if (!rc) rc = fl_evaluate(m, &ds, (int)batch, &loss, &counted, &err);
    if (!rc)
        printf("{\"loss\": %.6f, \"perplexity\": %.4f, \"tokens\": %ld, \"rows\": %ld}\n", loss,
               exp(loss), counted, ds.n_rows);
    fl_dataset_free(&ds);
    fl_tokenizer_free(tok);
    fl_model_free(m);
    return rc ? cli_fail("eval", &err) : 0;
}
