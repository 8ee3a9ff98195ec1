/* init_model.c — `fedllm init-model`: a randomly initialised model in Hugging Face layout
 * (config.json, model.safetensors, tokenizer.json), written atomically. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "fedllm/config.h"
#include "fedllm/fileio.h"
#include "fedllm/model.h"
#include "fedllm/tokenizer.h"

static const char HELP[] =
    "usage: fedllm init-model --arch gpt2|llama|qwen2|mistral --preset NAME --out DIR [--seed N]\n"
    "                         [--tokenizer FILE_OR_DIR]\n"
    "\n"
    "Writes a randomly initialised model (HF layout) and its tokenizer to DIR: fedllm's "
    "byte-level\n"
    "tokenizer, or with --tokenizer a Hugging Face tokenizer (its files are copied, the "
    "vocabulary\n"
    "sizes the embeddings, and its BOS/EOS go into config.json).\n"
    "Presets: tiny, small, gpt2-124m, llama-110m.\n";

/* --tokenizer names a model directory (copy its tokenizer files) or a tokenizer.json file (copy
 * it and a tokenizer_config.json beside it, when there is one). */
static int copy_tokenizer(const char *path, const char *dir, fl_err *err) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return fl_tokenizer_copy_files(path, dir, err);
    char folder[4096], to[4096], *data = NULL;
    size_t len = 0;
    const char *slash = strrchr(path, '/');
    snprintf(folder, sizeof folder, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    int rc = fl_read_file(path, &data, &len, (size_t)512 << 20, err);
    if (!rc) rc = fl_path_join(to, sizeof to, dir, "tokenizer.json", err);
    if (!rc) rc = fl_write_file_atomic(to, data, len, err);
    free(data);
    char config[4096];
    if (!rc && !fl_path_join(config, sizeof config, folder, "tokenizer_config.json", NULL) &&
        stat(config, &st) == 0) {
        rc = fl_read_file(config, &data, &len, 64 << 20, err);
        if (!rc) rc = fl_path_join(to, sizeof to, dir, "tokenizer_config.json", err);
        if (!rc) rc = fl_write_file_atomic(to, data, len, err);
        free(data);
    }
    return rc;
}

int cli_init_model(int argc, char **argv) {
    cli_opt opts[] = {{"arch", 1, NULL},
                      {"preset", 1, NULL},
                      {"out", 1, NULL},
                      {"seed", 1, NULL},
                      {"tokenizer", 1, NULL}};
    int n = sizeof opts / sizeof opts[0], help;
    fl_err err = {0};
    if (cli_parse(argc, argv, 2, opts, n, &help, &err)) return cli_fail("init-model", &err);
    if (help) return fputs(HELP, stdout), 0;
    const char *arch_name = cli_get(opts, n, "arch"), *preset = cli_get(opts, n, "preset");
    const char *out = cli_get(opts, n, "out"), *seed_text = cli_get(opts, n, "seed");
    const char *tokenizer = cli_get(opts, n, "tokenizer");
    if (!arch_name || !preset || !out) {
        fl_err_set(&err, FL_EINPUT, "--arch, --preset and --out are required (see --help)");
        return cli_fail("init-model", &err);
    }
    fl_arch arch;
    fl_config cfg;
    long seed = 1234;
    if (fl_arch_parse(&arch, arch_name, &err) || fl_config_preset(&cfg, arch, preset, &err) ||
        (seed_text && cli_int("seed", seed_text, 0, 1L << 62, &seed, &err)))
        return cli_fail("init-model", &err);
    char tmp[4096], out_dir[4096];
    const char *inputs[1] = {tokenizer};
    if (cli_out_begin(out, inputs, tokenizer ? 1 : 0, out_dir, sizeof out_dir, tmp, sizeof tmp,
                      &err))
        return cli_fail("init-model", &err);
    out = out_dir;
    fl_tokenizer *tok = NULL;
    if (tokenizer) {
        if (fl_tokenizer_load(&tok, tokenizer, &err)) return cli_fail("init-model", &err);
        cfg.vocab_size = fl_tokenizer_vocab_size(tok);
        cfg.bos_token_id = fl_tokenizer_bos(tok);
        cfg.eos_token_id = fl_tokenizer_eos(tok);
        fl_tokenizer_free(tok);
    }
    fl_model *m = fl_model_new_random(&cfg, (uint64_t)seed, &err);
    if (!m) return cli_fail("init-model", &err);
    int rc = fl_model_save(m, tmp, &err);
    if (!rc && tokenizer) rc = copy_tokenizer(tokenizer, tmp, &err);
    if (!rc && !tokenizer) rc = fl_tokenizer_save_bytes(tmp, &err);
    if (!rc) rc = cli_out_commit(tmp, out, &err);
    if (rc) cli_out_abort(tmp);
    size_t n_params = 0;
    const fl_params *p = fl_model_params(m);
    for (int i = 0; i < p->n_views; i++)
        n_params += p->views[i].numel;
    fl_model_free(m);
    if (rc) return cli_fail("init-model", &err);
    printf("wrote %s: %s preset %s, %.2fM parameters\n", out, fl_arch_name(arch), preset,
           (double)n_params / 1e6);
    return 0;
}
