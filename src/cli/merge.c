/* merge.c — `fedllm merge`: a base model and a LoRA adapter directory (fedllm's or peft's) folded
 * into one Hugging Face model directory, written atomically. */
#include <stdio.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "fedllm/fileio.h"
#include "fedllm/model.h"
#include "fedllm/tokenizer.h"

static const char HELP[] =
    "usage: fedllm merge --model DIR --adapter DIR --out DIR\n"
    "\n"
    "Writes the base model with the adapter folded into its weights (W += alpha/r B A), plus the\n"
    "base's tokenizer, as an HF model directory.\n";

int cli_merge(int argc, char **argv) {
    cli_opt o[] = {{"model", 1, NULL}, {"adapter", 1, NULL}, {"out", 1, NULL}};
    int help;
    fl_err err = {0};
    if (cli_parse(argc, argv, 2, o, 3, &help, &err)) return cli_fail("merge", &err);
    if (help) return fputs(HELP, stdout), 0;
    const char *model = o[0].value, *adapter = o[1].value, *out = o[2].value;
    if (!model || !adapter || !out) {
        fl_err_set(&err, FL_EINPUT, "--model, --adapter and --out are required (see --help)");
        return cli_fail("merge", &err);
    }
    char tmp[4096], out_dir[4096];
    const char *inputs[2] = {model, adapter};
    if (cli_out_begin(out, inputs, 2, out_dir, sizeof out_dir, tmp, sizeof tmp, &err))
        return cli_fail("merge", &err);
    fl_model *m = fl_model_load(model, &err);
    int rc = m ? FL_OK : err.code;
    if (!rc) rc = fl_model_load_adapter(m, adapter, &err);
    if (!rc) rc = fl_model_merge_adapter(m, &err);
    if (!rc) rc = fl_model_save(m, tmp, &err);
    char tokenizer_path[4096];
    struct stat st;
    if (!rc &&
        !fl_path_join(tokenizer_path, sizeof tokenizer_path, model, "tokenizer.json", NULL) &&
        stat(tokenizer_path, &st) == 0)
        rc = fl_tokenizer_copy_files(model, tmp, &err);
    if (!rc) rc = cli_out_commit(tmp, out_dir, &err);
    fl_model_free(m);
    if (rc) {
        cli_out_abort(tmp);
        return cli_fail("merge", &err);
    }
    printf("wrote %s\n", out_dir);
    return 0;
}
