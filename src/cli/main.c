/* main.c — the fedllm command: dispatches to one subcommand per file. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "fedllm/threads.h"

static const char USAGE[] =
    "usage: fedllm COMMAND [options]   (fedllm COMMAND --help for each)\n"
    "\n"
    "  init-model   write a randomly initialised model in Hugging Face layout\n"
    "  train        fine-tune a model on a JSONL file (full or LoRA)\n"
    "  generate     continue a prompt with a model (key/value cache, sampling)\n"
    "  serve        serve a model on an OpenAI-compatible HTTP API (continuous batching)\n"
    "  inferdpt     private inference: perturb text (InferDPT) before a remote model sees it\n"
    "  merge        fold a LoRA adapter into its base model\n"
    "  tokenize     text to token ids and back with a model's tokenizer\n"
    "  keygen       make a CURVE key pair for a federation party (PATH.key, PATH.pub)\n"
    "  run          run a federated job: its server and every client, on this machine\n"
    "  server       run a federated job's server (for deployments across machines)\n"
    "  client       run one client of a federated job\n"
    "  eval         held-out loss and perplexity of a model (and adapter) on a JSONL file\n";

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    fl_threads_setup(argv); /* before any parallel work: it may execute fedllm again */
    if (strcmp(argv[1], "init-model") == 0) return cli_init_model(argc, argv);
    if (strcmp(argv[1], "train") == 0) return cli_train(argc, argv);
    if (strcmp(argv[1], "generate") == 0) return cli_generate(argc, argv);
    if (strcmp(argv[1], "serve") == 0) return cli_serve(argc, argv);
    if (strcmp(argv[1], "inferdpt") == 0) return cli_inferdpt(argc, argv);
    if (strcmp(argv[1], "merge") == 0) return cli_merge(argc, argv);
    if (strcmp(argv[1], "tokenize") == 0) return cli_tokenize(argc, argv);
    if (strcmp(argv[1], "keygen") == 0) return cli_keygen(argc, argv);
    if (strcmp(argv[1], "server") == 0) return cli_server(argc, argv);
    if (strcmp(argv[1], "client") == 0) return cli_client(argc, argv);
    if (strcmp(argv[1], "run") == 0) return cli_run(argc, argv);
    if (strcmp(argv[1], "eval") == 0) return cli_eval(argc, argv);
    fprintf(stderr, "fedllm: unknown command '%s'\n%s", argv[1], USAGE);
    return 2;
}
