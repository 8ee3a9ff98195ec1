/* init_model.c — `fedllm init-model`: a randomly initialised model in Hugging Face layout
 * (config.json, model.safetensors, tokenizer.json), written atomically. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "fedllm/config.h"
#include "fedllm/tokenizer.h"
#include "fedllm/model.h"

static const char HELP[] =
    "usage: fedllm init-model --arch gpt2|llama|qwen2|mistral --preset NAME --out DIR [--seed N]\n"
    "\n"
    "Writes a randomly initialised model (HF layout) and the byte-level tokenizer to DIR.\n"
    "Presets: tiny, small, gpt2-124m, llama-110m.\n";

int cli_init_model(int argc, char **argv) {
    cli_opt opts[] = {{"arch", 1, NULL}, {"preset", 1, NULL}, {"out", 1, NULL}, {"seed", 1, NULL}};
    int n = sizeof opts / sizeof opts[0], help;
    fl_err err = {0};
    if (cli_parse(argc, argv, 2, opts, n, &help, &err)) return cli_fail("init-model", &err);
    if (help) return fputs(HELP, stdout), 0;
    const char *arch_name = cli_get(opts, n, "arch"), *preset = cli_get(opts, n, "preset");
    const char *out = cli_get(opts, n, "out"), *seed_text = cli_get(opts, n, "seed");
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
    fl_model *m = fl_model_new_random(&cfg, (uint64_t)seed, &err);
    if (!m) return cli_fail("init-model", &err);
    char tmp[4096], out_dir[4096];
    int rc = cli_out_begin(out, NULL, 0, out_dir, sizeof out_dir, tmp, sizeof tmp, &err);
    out = out_dir;
    if (!rc) rc = fl_model_save(m, tmp, &err);
    if (!rc) rc = fl_tokenizer_save_bytes(tmp, &err);
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
