/* inferdpt.c — `fedllm inferdpt kit|perturb|run`: InferDPT's kit, its perturbation on its own,
 * and the private-inference pipeline against an OpenAI-compatible endpoint (src/infer/). */
#include <cjson/cJSON.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "fedllm/clock.h"
#include "fedllm/endpoint.h"
#include "fedllm/fileio.h"
#include "fedllm/inferdpt.h"
#include "fedllm/model.h"
#include "fedllm/serve.h"

static const char HELP[] =
    "usage: fedllm inferdpt kit|perturb|run [options]   (private inference, docs/inferdpt.md)\n"
    "\n"
    "fedllm inferdpt kit --model DIR --out KIT [--min-len 4] [--max-len 15] [--neighbours 512]\n"
    "  the kit of the remote model DIR (its tokenizer and input embeddings): whole-word tokens,\n"
    "  each one's nearest by cosine similarity, and the range of each dimension\n"
    "fedllm inferdpt perturb --kit KIT --in FILE [--jsonl FIELD [--ids]] [--epsilon 3] [--seed 0]\n"
    "  prints FILE's text (or each record's FIELD, a JSON line each) perturbed; --ids: the\n"
    "  token ids before and after too\n"
    "fedllm inferdpt run --kit KIT --data FILE.jsonl --endpoint URL --local-model DIR --out RUN\n"
    "  for each record: encode template -> perturbed (only this leaves) -> instruction template\n"
    "  -> the endpoint's completion -> decode template -> the local model's answer\n"
    "  --epsilon E (3; inf: no perturbation)  --seed S (0)\n"
    "  --encode-template T ('{{text}}')  --instruction-template T ('{{perturbed_doc}}')\n"
    "  --decode-template T  (a template: text, or @FILE; fields of the record, perturbed_doc and\n"
    "                        perturbed_response; default: both, then the original text)\n"
    "  --remote-model NAME (the endpoint's first)  --api-key KEY (or OPENAI_API_KEY)\n"
    "  --remote-max-tokens N (128)  --remote-temperature T (0)  --remote-stop S  --timeout S "
    "(300)\n"
    "  --local-adapter DIR  --local-max-tokens N (64)  --local-stop S  --batch N (8)\n"
    "  --tokenizer DIR (check the kit against the remote model's tokenizer)  --resume\n"
    "  --threads N\n"
    "RUN gets outbox.jsonl (every prompt sent), progress.jsonl, metrics.jsonl, log, and at the\n"
    "end results.jsonl and summary.json.\n";

static const char DEFAULT_DECODE[] =
    "Perturbed text: {{perturbed_doc}}\nIts answer: {{perturbed_response}}\n"
    "Original text: {{text}}\nAnswer:";

static int parse_epsilon(const char *text, double *eps, fl_err *err) {
    if (!text) return *eps = 3.0, FL_OK;
    if (strcmp(text, "inf") == 0 || strcmp(text, "infinity") == 0) return *eps = INFINITY, FL_OK;
    return cli_float("epsilon", text, 1e-6, 1e6, eps, err);
}

static int parse_seed(const char *text, uint64_t *seed, fl_err *err) {
    long v = 0;
    int rc = text ? cli_int("seed", text, 0, 0x7fffffffffffffffL, &v, err) : FL_OK;
    *seed = (uint64_t)v;
    return rc;
}

static int cmd_kit(int argc, char **argv) {
    enum { K_MODEL, K_OUT, K_MIN, K_MAX, K_NB, K_THREADS, K_N };
    cli_opt o[K_N] = {[K_MODEL] = {"model", 1, NULL},   [K_OUT] = {"out", 1, NULL},
                      [K_MIN] = {"min-len", 1, NULL},   [K_MAX] = {"max-len", 1, NULL},
                      [K_NB] = {"neighbours", 1, NULL}, [K_THREADS] = {"threads", 1, NULL}};
    int help;
    fl_err err = {0};
    if (cli_parse(argc, argv, 3, o, K_N, &help, &err)) return cli_fail("inferdpt kit", &err);
    if (help) return fputs(HELP, stdout), 0;
    if (!o[K_MODEL].value || !o[K_OUT].value) {
        fl_err_set(&err, FL_EINPUT, "--model and --out are required (see --help)");
        return cli_fail("inferdpt kit", &err);
    }
    fl_dpt_kit_options opt = fl_dpt_kit_defaults();
    long min_len = opt.min_len, max_len = opt.max_len, nb = opt.neighbours, threads = 0;
    if ((o[K_MIN].value && cli_int("min-len", o[K_MIN].value, 1, 64, &min_len, &err)) ||
        (o[K_MAX].value && cli_int("max-len", o[K_MAX].value, 1, 64, &max_len, &err)) ||
        (o[K_NB].value && cli_int("neighbours", o[K_NB].value, 1, 1 << 24, &nb, &err)) ||
        (o[K_THREADS].value && cli_int("threads", o[K_THREADS].value, 1, 1024, &threads, &err)))
        return cli_fail("inferdpt kit", &err);
    if (threads) omp_set_num_threads((int)threads);
    opt.min_len = (int)min_len, opt.max_len = (int)max_len, opt.neighbours = (int)nb;
    char out[1024], tmp[1100];
    const char *inputs[] = {o[K_MODEL].value};
    fl_dpt_kit kit;
    int rc = cli_out_begin(o[K_OUT].value, inputs, 1, out, sizeof out, tmp, sizeof tmp, &err);
    if (rc) return cli_fail("inferdpt kit", &err);
    if (!(rc = fl_dpt_kit_make(&kit, o[K_MODEL].value, &opt, &err))) {
        rc = fl_dpt_kit_save(&kit, o[K_MODEL].value, tmp, &err);
        if (!rc) rc = cli_out_commit(tmp, out, &err);
        if (!rc)
            printf("kit %s: %d whole-word tokens of %d, %d dimensions, %d neighbours each\n", out,
                   kit.n, kit.vocab, kit.dim, kit.k);
        fl_dpt_kit_free(&kit);
    }
    if (rc) cli_out_abort(tmp);
    return rc ? cli_fail("inferdpt kit", &err) : 0;
}

/* The kit and its tokenizer (KIT's own, or --tokenizer DIR checked against it). */
static int load_kit(const char *dir, const char *tok_dir, fl_dpt_kit *kit, fl_tokenizer **tok,
                    fl_err *err) {
    int rc = fl_dpt_kit_load(kit, dir, err);
    if (rc) return rc;
    const char *from = tok_dir ? tok_dir : dir;
    if (!(rc = fl_tokenizer_load(tok, from, err)))
        rc = fl_dpt_kit_check_tokenizer(kit, *tok, from, err);
    if (rc) {
        fl_tokenizer_free(*tok);
        *tok = NULL;
        fl_dpt_kit_free(kit);
    }
    return rc;
}

/* One record's line of `perturb --jsonl`: its perturbed text as a JSON string, or with ids an
 * object {"ids", "perturbed", "text"} (token ids before and after, for measuring). */
static int perturb_record(const fl_dpt_kit *kit, fl_tokenizer *tok, const char *text, double eps,
                          uint64_t seed, uint64_t doc, int with_ids, fl_str *all, fl_dpt_stats *st,
                          fl_err *err) {
    fl_ids ids = {0};
    fl_str out = {0};
    int32_t *before = NULL;
    int rc = fl_tokenizer_encode(tok, text, strlen(text), &ids, err);
    if (!rc && ids.n && !(before = malloc(ids.n * sizeof *before)))
        rc = fl_err_set(err, FL_ENOMEM, "out of memory");
    if (!rc && ids.n) memcpy(before, ids.v, ids.n * sizeof *before);
    if (!rc) rc = fl_dpt_perturb_ids(kit, ids.v, ids.n, eps, seed, doc, st, err);
    if (!rc && ids.n) rc = fl_tokenizer_decode(tok, ids.v, ids.n, 0, &out, err);
    cJSON *line = NULL;
    if (!rc) {
        line = with_ids ? cJSON_CreateObject() : cJSON_CreateString(out.s ? out.s : "");
        if (with_ids) {
            cJSON *a = cJSON_AddArrayToObject(line, "ids"),
                  *b = cJSON_AddArrayToObject(line, "perturbed");
            for (size_t i = 0; i < ids.n; i++) {
                cJSON_AddItemToArray(a, cJSON_CreateNumber(before[i]));
                cJSON_AddItemToArray(b, cJSON_CreateNumber(ids.v[i]));
            }
            cJSON_AddStringToObject(line, "text", out.s ? out.s : "");
        }
        char *t = cJSON_PrintUnformatted(line);
        rc =
            t ? fl_str_append(all, t, strlen(t), err) : fl_err_set(err, FL_ENOMEM, "out of memory");
        if (!rc) rc = fl_str_append(all, "\n", 1, err);
        free(t);
    }
    cJSON_Delete(line);
    free(before);
    fl_ids_free(&ids);
    fl_str_free(&out);
    return rc;
}

static int cmd_perturb(int argc, char **argv) {
    enum { P_KIT, P_IN, P_JSONL, P_EPS, P_SEED, P_TOK, P_IDS, P_N };
    cli_opt o[P_N] = {[P_KIT] = {"kit", 1, NULL},     [P_IN] = {"in", 1, NULL},
                      [P_JSONL] = {"jsonl", 1, NULL}, [P_EPS] = {"epsilon", 1, NULL},
                      [P_SEED] = {"seed", 1, NULL},   [P_TOK] = {"tokenizer", 1, NULL},
                      [P_IDS] = {"ids", 0, NULL}};
    int help;
    fl_err err = {0};
    if (cli_parse(argc, argv, 3, o, P_N, &help, &err)) return cli_fail("inferdpt perturb", &err);
    if (help) return fputs(HELP, stdout), 0;
    double eps;
    uint64_t seed;
    if (!o[P_KIT].value || !o[P_IN].value) {
        fl_err_set(&err, FL_EINPUT, "--kit and --in are required (see --help)");
        return cli_fail("inferdpt perturb", &err);
    }
    if (o[P_IDS].value && !o[P_JSONL].value) {
        fl_err_set(&err, FL_EINPUT, "--ids needs --jsonl FIELD");
        return cli_fail("inferdpt perturb", &err);
    }
    if (parse_epsilon(o[P_EPS].value, &eps, &err) || parse_seed(o[P_SEED].value, &seed, &err))
        return cli_fail("inferdpt perturb", &err);
    fl_dpt_kit kit;
    fl_tokenizer *tok = NULL;
    char *data = NULL;
    size_t len = 0;
    int rc = load_kit(o[P_KIT].value, o[P_TOK].value, &kit, &tok, &err);
    if (rc) return cli_fail("inferdpt perturb", &err);
    fl_str all = {0}; /* printed only when every record went through */
    fl_dpt_stats st = {0};
    double t0 = fl_now_s();
    if (!(rc = fl_read_file(o[P_IN].value, &data, &len, (size_t)1 << 30, &err))) {
        if (!o[P_JSONL].value) {
            rc = fl_dpt_perturb_text(&kit, tok, data, len, eps, seed, 0, &all, &st, &err);
        } else {
            long line = 0, doc = 0;
            for (char *p = data; !rc && p < data + len; line++) {
                char *nl = memchr(p, '\n', (size_t)(data + len - p));
                char *end = nl ? nl : data + len;
                cJSON *j = cJSON_ParseWithLength(p, (size_t)(end - p));
                cJSON *f = cJSON_GetObjectItemCaseSensitive(j, o[P_JSONL].value);
                if (end > p && !cJSON_IsString(f))
                    rc = fl_err_set(&err, FL_EINPUT, "%s:%ld: %s: expected a string field",
                                    o[P_IN].value, line + 1, o[P_JSONL].value);
                else if (end > p)
                    rc = perturb_record(&kit, tok, f->valuestring, eps, seed, (uint64_t)doc++,
                                        o[P_IDS].value != NULL, &all, &st, &err);
                cJSON_Delete(j);
                p = end + 1;
            }
        }
    }
    double seconds = fl_now_s() - t0;
    if (!rc) {
        if (all.n) fwrite(all.s, 1, all.n, stdout);
        fprintf(stderr,
                "inferdpt perturb: %ld tokens, %ld in the kit, %ld replaced (epsilon %g), %.3f s "
                "(%.0f kit tokens/s)\n",
                st.tokens, st.in_kit, st.replaced, eps, seconds,
                seconds > 0 ? (double)st.in_kit / seconds : 0.0);
    }
    fl_str_free(&all);
    free(data);
    fl_tokenizer_free(tok);
    fl_dpt_kit_free(&kit);
    return rc ? cli_fail("inferdpt perturb", &err) : 0;
}

/* A template option: the text itself, or @FILE's contents (malloc'd into *owned). */
static int template_arg(const char *value, const char *fallback, const char **out, char **owned,
                        fl_err *err) {
    *owned = NULL;
    if (!value) return *out = fallback, FL_OK;
    if (value[0] != '@') return *out = value, FL_OK;
    size_t len = 0;
    int rc = fl_read_file(value + 1, owned, &len, 1 << 20, err);
    *out = *owned;
    return rc;
}

enum {
    R_KIT,
    R_DATA,
    R_ENDPOINT,
    R_LOCAL,
    R_ADAPTER,
    R_OUT,
    R_EPS,
    R_SEED,
    R_ENC,
    R_INS,
    R_DEC,
    R_RMODEL,
    R_KEY,
    R_RMAX,
    R_RTEMP,
    R_RSTOP,
    R_TIMEOUT,
    R_LMAX,
    R_LSTOP,
    R_BATCH,
    R_TOK,
    R_RESUME,
    R_THREADS,
    R_N
};

typedef struct run_inputs {
    fl_dpt_kit kit;
    fl_tokenizer *kit_tok, *local_tok;
    fl_model *local;
    fl_engine *engine;
    char *templates[3];
} run_inputs;

static void run_inputs_free(run_inputs *in) {
    fl_engine_free(in->engine);
    fl_model_free(in->local);
    fl_tokenizer_free(in->local_tok);
    fl_tokenizer_free(in->kit_tok);
    fl_dpt_kit_free(&in->kit);
    for (int i = 0; i < 3; i++)
        free(in->templates[i]);
}

/* The local model and its engine (batch slots). */
static int load_local(const cli_opt *o, int batch, run_inputs *in, fl_err *err) {
    if (!(in->local = fl_model_load(o[R_LOCAL].value, err))) return err->code;
    int rc = o[R_ADAPTER].value ? fl_model_load_adapter(in->local, o[R_ADAPTER].value, err) : 0;
    const fl_config *c = fl_model_config(in->local);
    if (!rc) rc = fl_tokenizer_load_for_model(&in->local_tok, o[R_LOCAL].value, c->vocab_size, err);
    if (rc) return rc;
    cli_stop_ids stops = {0};
    fl_sampling unused = fl_sampling_defaults();
    long unused_max = 0;
    if ((rc = cli_read_generation_config(o[R_LOCAL].value, &unused, &unused_max, &stops, err)))
        return rc;
    if (!stops.from_generation_config) cli_stop_add(&stops, c->eos_token_id);
    cli_stop_add(&stops, fl_tokenizer_eos(in->local_tok));
    int ctx = fl_config_context(c);
    if (ctx > 4096) ctx = 4096;
    int slots = batch < 16 ? batch : 16;
    if (!(in->engine = fl_engine_new(in->local, in->local_tok, slots, ctx, stops.id, stops.n, err)))
        return err->code;
    return FL_OK;
}

static int cmd_run(int argc, char **argv) {
    cli_opt o[R_N] = {
        [R_KIT] = {"kit", 1, NULL},
        [R_DATA] = {"data", 1, NULL},
        [R_ENDPOINT] = {"endpoint", 1, NULL},
        [R_LOCAL] = {"local-model", 1, NULL},
        [R_ADAPTER] = {"local-adapter", 1, NULL},
        [R_OUT] = {"out", 1, NULL},
        [R_EPS] = {"epsilon", 1, NULL},
        [R_SEED] = {"seed", 1, NULL},
        [R_ENC] = {"encode-template", 1, NULL},
        [R_INS] = {"instruction-template", 1, NULL},
        [R_DEC] = {"decode-template", 1, NULL},
        [R_RMODEL] = {"remote-model", 1, NULL},
        [R_KEY] = {"api-key", 1, NULL},
        [R_RMAX] = {"remote-max-tokens", 1, NULL},
        [R_RTEMP] = {"remote-temperature", 1, NULL},
        [R_RSTOP] = {"remote-stop", 1, NULL},
        [R_TIMEOUT] = {"timeout", 1, NULL},
        [R_LMAX] = {"local-max-tokens", 1, NULL},
        [R_LSTOP] = {"local-stop", 1, NULL},
        [R_BATCH] = {"batch", 1, NULL},
        [R_TOK] = {"tokenizer", 1, NULL},
        [R_RESUME] = {"resume", 0, NULL},
        [R_THREADS] = {"threads", 1, NULL},
    };
    int help;
    fl_err err = {0};
    if (cli_parse(argc, argv, 3, o, R_N, &help, &err)) return cli_fail("inferdpt run", &err);
    if (help) return fputs(HELP, stdout), 0;
    if (!o[R_KIT].value || !o[R_DATA].value || !o[R_ENDPOINT].value || !o[R_LOCAL].value ||
        !o[R_OUT].value) {
        fl_err_set(&err, FL_EINPUT,
                   "--kit, --data, --endpoint, --local-model and --out are required (see --help)");
        return cli_fail("inferdpt run", &err);
    }
    double eps, temp = 0, timeout = 300;
    uint64_t seed;
    long rmax = 128, lmax = 64, batch = 8, threads = 0;
    if (parse_epsilon(o[R_EPS].value, &eps, &err) || parse_seed(o[R_SEED].value, &seed, &err) ||
        (o[R_RMAX].value &&
         cli_int("remote-max-tokens", o[R_RMAX].value, 1, 1 << 20, &rmax, &err)) ||
        (o[R_RTEMP].value &&
         cli_float("remote-temperature", o[R_RTEMP].value, 0, 2, &temp, &err)) ||
        (o[R_TIMEOUT].value &&
         cli_float("timeout", o[R_TIMEOUT].value, 0.1, 86400, &timeout, &err)) ||
        (o[R_LMAX].value &&
         cli_int("local-max-tokens", o[R_LMAX].value, 1, 1 << 20, &lmax, &err)) ||
        (o[R_BATCH].value && cli_int("batch", o[R_BATCH].value, 1, 128, &batch, &err)) ||
        (o[R_THREADS].value && cli_int("threads", o[R_THREADS].value, 1, 1024, &threads, &err)))
        return cli_fail("inferdpt run", &err);
    if ((o[R_RSTOP].value && strlen(o[R_RSTOP].value) == 0) ||
        (o[R_LSTOP].value &&
         (strlen(o[R_LSTOP].value) == 0 || strlen(o[R_LSTOP].value) > FL_GEN_MAX_STOP_LEN))) {
        fl_err_set(&err, FL_EINPUT, "--remote-stop / --local-stop: expected 1..%d bytes",
                   FL_GEN_MAX_STOP_LEN);
        return cli_fail("inferdpt run", &err);
    }
    if (threads) omp_set_num_threads((int)threads);
    run_inputs in = {0};
    const char *enc = NULL, *ins = NULL, *dec = NULL;
    const char *key = o[R_KEY].value ? o[R_KEY].value : getenv("OPENAI_API_KEY");
    fl_endpoint ep;
    int rc = template_arg(o[R_ENC].value, "{{text}}", &enc, &in.templates[0], &err);
    if (!rc) rc = template_arg(o[R_INS].value, "{{perturbed_doc}}", &ins, &in.templates[1], &err);
    if (!rc) rc = template_arg(o[R_DEC].value, DEFAULT_DECODE, &dec, &in.templates[2], &err);
    if (!rc) rc = fl_endpoint_init(&ep, o[R_ENDPOINT].value, key, o[R_RMODEL].value, timeout, &err);
    if (!rc) rc = load_kit(o[R_KIT].value, o[R_TOK].value, &in.kit, &in.kit_tok, &err);
    if (!rc) rc = load_local(o, (int)batch, &in, &err);
    /* Before any text leaves: the endpoint answers and serves the model. */
    if (!rc) rc = fl_endpoint_check_model(&ep, &err);
    fl_completion_params remote = {
        .max_tokens = rmax, .temperature = temp, .top_p = 1.0, .seed = (long)(seed & 0x7fffffff)};
    if (o[R_RSTOP].value) remote.stops[remote.n_stops++] = o[R_RSTOP].value;
    fl_gen_params local = {.sampling = {.temperature = 0, .top_p = 1, .repetition_penalty = 1},
                           .max_tokens = lmax};
    if (o[R_LSTOP].value) local.stops[local.n_stops++] = o[R_LSTOP].value;
    fl_dpt_run_config cfg = {.kit = &in.kit,
                             .kit_tok = in.kit_tok,
                             .endpoint = &ep,
                             .remote = &remote,
                             .local = in.engine,
                             .local_tok = in.local_tok,
                             .local_params = &local,
                             .encode_template = enc,
                             .instruction_template = ins,
                             .decode_template = dec,
                             .epsilon = eps,
                             .seed = seed,
                             .batch = (int)batch,
                             .data_path = o[R_DATA].value,
                             .out_dir = o[R_OUT].value,
                             .resume = o[R_RESUME].value != NULL,
                             .log = stderr};
    fl_dpt_run_summary sum;
    if (!rc) rc = fl_dpt_run(&cfg, &sum, &err);
    if (!rc)
        printf("inferdpt: %ld records (%ld done before), %ld of %ld kit tokens replaced "
               "(epsilon %g), %zu bytes sent -> %s/results.jsonl\n",
               sum.records, sum.done_before, sum.stats.replaced, sum.stats.in_kit, eps,
               sum.bytes_sent, o[R_OUT].value);
    run_inputs_free(&in);
    /* Any failure is exit 2, an endpoint that cannot be reached or answers garbage included:
     * a script tells "did not finish" from the one line on stderr. */
    if (rc) cli_fail("inferdpt run", &err);
    return rc ? 2 : 0;
}

int cli_inferdpt(int argc, char **argv) {
    const char *sub = argc > 2 ? argv[2] : NULL;
    if (sub && strcmp(sub, "kit") == 0) return cmd_kit(argc, argv);
    if (sub && strcmp(sub, "perturb") == 0) return cmd_perturb(argc, argv);
    if (sub && strcmp(sub, "run") == 0) return cmd_run(argc, argv);
    if (sub && (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0))
        return fputs(HELP, stdout), 0;
    fprintf(stderr, "fedllm inferdpt: expected kit, perturb or run\n%s", HELP);
    return 2;
}
