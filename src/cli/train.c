/* train.c — `fedllm train`: centralised fine-tuning (full or LoRA) of an HF model directory on a
 * JSONL file. Writes DIR/metrics.jsonl and either a model directory (full) or a PEFT adapter
 * directory (LoRA), all into a temporary directory that replaces --out only on success. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "fedllm/data.h"
#include "fedllm/fileio.h"
#include "fedllm/model.h"
#include "fedllm/train.h"
#include "kernels/kernels.h"

static const char HELP[] =
    "usage: fedllm train --model DIR --data FILE.jsonl --out DIR [options]\n"
    "\n"
    "  --batch B (8)  --seq T (128)  --steps N | --epochs N (1 epoch)  --grad-accum K (1)\n"
    "  --lr X (3e-4)  --schedule constant|cosine (cosine)  --warmup N (0)  --weight-decay X (0)\n"
    "  --clip X (1.0, 0 = off)  --seed N (1; 0 keeps the file's order)\n"
    "  --lora R  --lora-alpha A (2R)  --lora-dropout P (0)  --lora-targets LIST (attn_q,attn_v)\n"
    "      LIST: roles attn_q attn_k attn_v attn_o mlp_gate mlp_up mlp_down, or HF module names\n"
    "  --lora-train-base norms,biases   also train the norm layers and/or biases with LoRA\n"
    "  --lora-layers LIST   adapters on these blocks only (PEFT's layers_to_transform), e.g. "
    "0,1,10-11\n"
    "  --train-layers LIST  without --lora: train every tensor of these blocks only, the rest\n"
    "      frozen (offsite-tuning's adapter blocks); --out receives the whole model\n"
    "  --format text|prompt_response (detected from the first record)\n"
    "  --text-field NAME (text)  --prompt-field NAME (prompt)  --response-field NAME (response)\n"
    "  --no-truncate   refuse a prompt/response record longer than --seq + 1 tokens; by default "
    "it\n"
    "      is truncated as Hugging Face's longest_first does (the prompt loses its beginning, the\n"
    "      response its end), and the log says how many were\n"
    "  --threads N (the CPUs it may use)  --precision fp32|bf16 (fp32)  --log-every N (10)\n"
    "  --eval FILE.jsonl   held-out data: loss and perplexity before and after training\n"
    "  --dp-clip C --dp-noise S   DP-SGD: Poisson-sampled batches (q = batch / rows), each row's\n"
    "      gradient clipped to norm C, Gaussian noise of std S*C (Opacus semantics)\n"
    "\n"
    "Without --lora the whole model is trained and --out receives an HF model directory; with\n"
    "--lora it receives adapter_config.json and adapter_model.safetensors. metrics.jsonl holds a\n"
    "line per logged step.\n";

enum {
    O_MODEL,
    O_DATA,
    O_OUT,
    O_BATCH,
    O_SEQ,
    O_STEPS,
    O_EPOCHS,
    O_ACCUM,
    O_LR,
    O_SCHEDULE,
    O_WARMUP,
    O_WD,
    O_CLIP,
    O_SEED,
    O_LORA,
    O_ALPHA,
    O_DROPOUT,
    O_TARGETS,
    O_FORMAT,
    O_TEXT,
    O_PROMPT,
    O_RESPONSE,
    O_THREADS,
    O_PRECISION,
    O_LOG_EVERY,
    O_EVAL,
    O_TRAIN_BASE,
    O_DP_CLIP,
    O_DP_NOISE,
    O_NO_TRUNCATE,
    O_LORA_LAYERS,
    O_TRAIN_LAYERS,
    O_COUNT
};

/* text unless the first record has both prompt and response fields. */
static fl_data_format detect_format(const char *path, const char *prompt, const char *response) {
    FILE *f = fopen(path, "r");
    if (!f) return FL_DATA_TEXT;
    char *line = NULL, key_p[300], key_r[300];
    size_t cap = 0;
    fl_data_format format = FL_DATA_TEXT;
    snprintf(key_p, sizeof key_p, "\"%s\"", prompt);
    snprintf(key_r, sizeof key_r, "\"%s\"", response);
    while (getline(&line, &cap, f) > 0) {
        if (strspn(line, " \t\r\n") == strlen(line)) continue;
        if (strstr(line, key_p) && strstr(line, key_r)) format = FL_DATA_PROMPT_RESPONSE;
        break;
    }
    free(line);
    fclose(f);
    return format;
}

typedef struct train_args {
    const char *model, *data, *out, *eval;
    const char *lora_layers, *train_layers; /* layer lists, parsed once the model is loaded */
    fl_train_spec spec;
    fl_lora_spec lora;
    int use_lora;
    fl_data_spec data_spec;
} train_args;

static int parse_args(cli_opt *o, train_args *a, fl_err *err) {
    long v;
    double x;
    a->model = o[O_MODEL].value, a->data = o[O_DATA].value, a->out = o[O_OUT].value;
    a->eval = o[O_EVAL].value;
    if (!a->model || !a->data || !a->out)
        return fl_err_set(err, FL_EINPUT, "--model, --data and --out are required (see --help)");
    fl_train_spec *s = &a->spec;
    s->batch = 8, s->seq = 128, s->grad_accum = 1, s->epochs = 1, s->seed = 1, s->log_every = 10;
    s->optim = fl_optim_defaults();
    s->optim.lr = 3e-4f;
    s->optim.schedule = FL_SCHED_COSINE;
#define INT_OPT(idx, lo, hi, dst)                                                                  \
    if (o[idx].value) {                                                                            \
        if (cli_int(o[idx].name, o[idx].value, lo, hi, &v, err)) return FL_EINPUT;                 \
        dst = v;                                                                                   \
    }
#define FLOAT_OPT(idx, lo, hi, dst)                                                                \
    if (o[idx].value) {                                                                            \
        if (cli_float(o[idx].name, o[idx].value, lo, hi, &x, err)) return FL_EINPUT;               \
        dst = (float)x;                                                                            \
    }
    INT_OPT(O_BATCH, 1, 1 << 20, s->batch);
    INT_OPT(O_SEQ, 1, 1 << 20, s->seq);
    INT_OPT(O_STEPS, 1, 1L << 30, s->steps);
    INT_OPT(O_EPOCHS, 1, 1 << 20, s->epochs);
    INT_OPT(O_ACCUM, 1, 1 << 20, s->grad_accum);
    INT_OPT(O_WARMUP, 0, 1L << 30, s->optim.warmup_steps);
    INT_OPT(O_SEED, 0, 1L << 62, s->seed);
    INT_OPT(O_LOG_EVERY, 1, 1L << 30, s->log_every);
    FLOAT_OPT(O_LR, 0, 10, s->optim.lr);
    FLOAT_OPT(O_WD, 0, 10, s->optim.weight_decay);
    FLOAT_OPT(O_CLIP, 0, 1e9, s->optim.clip_norm);
    FLOAT_OPT(O_DP_CLIP, 1e-9, 1e9, s->dp_clip);
    FLOAT_OPT(O_DP_NOISE, 0, 1e6, s->dp_noise);
    if ((o[O_DP_CLIP].value != NULL) != (o[O_DP_NOISE].value != NULL))
        return fl_err_set(err, FL_EINPUT, "--dp-clip and --dp-noise go together");
    s->dp_seed = s->seed + 0x5eedu;
    if (o[O_SCHEDULE].value) {
        const char *name = o[O_SCHEDULE].value;
        if (strcmp(name, "constant") == 0)
            s->optim.schedule = FL_SCHED_CONSTANT;
        else if (strcmp(name, "cosine") == 0)
            s->optim.schedule = FL_SCHED_COSINE;
        else
            return fl_err_set(err, FL_EINPUT, "--schedule: expected constant or cosine, got '%s'",
                              name);
    }
    a->use_lora = o[O_LORA].value != NULL;
    const int lora_only[] = {O_ALPHA, O_DROPOUT, O_TARGETS, O_TRAIN_BASE, O_LORA_LAYERS};
    for (size_t i = 0; i < sizeof lora_only / sizeof *lora_only; i++)
        if (!a->use_lora && o[lora_only[i]].value)
            return fl_err_set(err, FL_EINPUT, "--%s needs --lora R", o[lora_only[i]].name);
    if (a->use_lora && o[O_TRAIN_LAYERS].value)
        return fl_err_set(err, FL_EINPUT,
                          "--train-layers trains whole blocks; with --lora use --lora-layers");
    a->lora_layers = o[O_LORA_LAYERS].value;
    a->train_layers = o[O_TRAIN_LAYERS].value;
    a->lora = (fl_lora_spec){.rank = 8, .dropout = 0, .seed = s->seed};
    INT_OPT(O_LORA, 1, 4096, a->lora.rank);
    a->lora.alpha = 2.0f * (float)a->lora.rank;
    FLOAT_OPT(O_ALPHA, 1e-6, 1e6, a->lora.alpha);
    FLOAT_OPT(O_DROPOUT, 0, 0.99, a->lora.dropout);
    if (o[O_TRAIN_BASE].value) {
        char list[128];
        snprintf(list, sizeof list, "%s", o[O_TRAIN_BASE].value);
        for (char *save = NULL, *t = strtok_r(list, ",", &save); t;
             t = strtok_r(NULL, ",", &save)) {
            if (strcmp(t, "norms") == 0)
                a->lora.train_base |= FL_TRAIN_NORMS;
            else if (strcmp(t, "biases") == 0)
                a->lora.train_base |= FL_TRAIN_BIASES;
            else
                return fl_err_set(err, FL_EINPUT,
                                  "--lora-train-base: expected norms and/or biases, got '%s'", t);
        }
    }
    if (o[O_THREADS].value) {
        INT_OPT(O_THREADS, 1, 1024, v);
        omp_set_num_threads((int)v);
    }
    if (o[O_PRECISION].value) {
        const char *p = o[O_PRECISION].value;
        if (strcmp(p, "fp32") == 0)
            fl_gemm_set_precision(FL_PREC_F32);
        else if (strcmp(p, "bf16") == 0)
            fl_gemm_set_precision(FL_PREC_BF16);
        else
            return fl_err_set(err, FL_EINPUT, "--precision: expected fp32 or bf16, got '%s'", p);
    }
#undef INT_OPT
#undef FLOAT_OPT
    fl_data_spec *d = &a->data_spec;
    d->text_field = o[O_TEXT].value ? o[O_TEXT].value : "text";
    d->prompt_field = o[O_PROMPT].value ? o[O_PROMPT].value : "prompt";
    d->response_field = o[O_RESPONSE].value ? o[O_RESPONSE].value : "response";
    d->refuse_long = o[O_NO_TRUNCATE].value != NULL;
    if (!o[O_FORMAT].value)
        d->format = detect_format(a->data, d->prompt_field, d->response_field);
    else if (strcmp(o[O_FORMAT].value, "text") == 0)
        d->format = FL_DATA_TEXT;
    else if (strcmp(o[O_FORMAT].value, "prompt_response") == 0)
        d->format = FL_DATA_PROMPT_RESPONSE;
    else
        return fl_err_set(err, FL_EINPUT, "--format: expected text or prompt_response, got '%s'",
                          o[O_FORMAT].value);
    return FL_OK;
}

static double count_params(const fl_params *p) {
    double n = 0;
    for (int i = 0; i < p->n_views; i++)
        n += (double)p->views[i].numel;
    return n;
}

/* Evaluates on the held-out set, prints it and records it in metrics.jsonl. */
static int report_eval(fl_model *m, const fl_dataset *eval, int B, const char *when, int step,
                       FILE *metrics, fl_err *err) {
    double loss;
    long counted;
    int rc = fl_evaluate(m, eval, B, &loss, &counted, err);
    if (rc) return rc;
    fprintf(stderr, "eval %s: loss %.4f perplexity %.2f over %ld tokens\n", when, loss, exp(loss),
            counted);
    fprintf(metrics,
            "{\"step\": %d, \"eval\": \"%s\", \"eval_loss\": %.6f, \"eval_ppl\": %.4f, "
            "\"eval_tokens\": %ld}\n",
            step, when, loss, exp(loss), counted);
    return FL_OK;
}

/* Everything after argument parsing; on failure err says why and tmp may hold partial files. */
static int run(train_args *a, const char *targets, const char *tmp, fl_err *err) {
    fl_model *m = fl_model_load(a->model, err);
    if (!m) return err->code;
    const fl_config *cfg = fl_model_config(m);
    fl_tokenizer *tok = NULL;
    fl_dataset ds = {0}, eval = {0};
    int rc = fl_tokenizer_load_for_model(&tok, a->model, cfg->vocab_size, err);
    if (!rc && a->spec.seq > fl_config_context(cfg))
        rc = fl_err_set(err, FL_EINPUT, "--seq %d exceeds the context of %s (%d positions)",
                        a->spec.seq, a->model, fl_config_context(cfg));
    if (!rc) rc = fl_dataset_load(&ds, a->data, &a->data_spec, tok, a->spec.seq, err);
    if (!rc && a->eval) rc = fl_dataset_load(&eval, a->eval, &a->data_spec, tok, a->spec.seq, err);
    const fl_dataset *sets[2] = {&ds, &eval};
    const char *names[2] = {a->data, a->eval};
    for (int i = 0; !rc && i < 2; i++)
        if (sets[i]->n_truncated)
            fprintf(stderr,
                    "%s: %ld of %ld records are longer than --seq + 1 = %d tokens and were "
                    "truncated (the prompt's beginning, then the response's end; --no-truncate "
                    "refuses them)\n",
                    names[i], sets[i]->n_truncated, sets[i]->n_records, a->spec.seq + 1);
    int layers[FL_LAYERS_MAX], n_layers = 0;
    const char *list = a->use_lora ? a->lora_layers : a->train_layers;
    if (!rc && list &&
        (rc = fl_layers_parse(list, cfg->n_layer, layers, FL_LAYERS_MAX, &n_layers, err)))
        fl_err_prefix(err, a->use_lora ? "--lora-layers" : "--train-layers");
    for (int i = 0; !rc && a->use_lora && i < n_layers; i++)
        rc = fl_lora_spec_add_layer(&a->lora, layers[i], err);
    if (!rc && a->use_lora) {
        rc = fl_lora_parse_targets(targets, cfg->arch, &a->lora.role_mask, err);
        if (!rc) rc = fl_model_add_lora(m, &a->lora, err);
    } else if (!rc && n_layers) {
        rc = fl_model_train_layers(m, layers, n_layers, err);
    } else if (!rc) {
        rc = fl_model_train_full(m, err);
    }
    char path[4096];
    FILE *metrics = NULL;
    if (!rc && !(rc = fl_path_join(path, sizeof path, tmp, "metrics.jsonl", err))) {
        metrics = fopen(path, "w");
        if (!metrics) rc = fl_err_set(err, FL_EIO, "%s: cannot create", path);
    }
    if (!rc) {
        a->spec.metrics = metrics;
        a->spec.progress = isatty(2) ? 1 : 0;
        fprintf(
            stderr,
            "training %s (%s, %s, %.2fM of %.2fM parameters) on %ld rows of %d tokens from %s\n",
            a->model, fl_arch_name(cfg->arch),
            a->use_lora ? "LoRA"
            : n_layers  ? "chosen blocks"
                        : "full",
            count_params(fl_model_trainable(m)) / 1e6, count_params(fl_model_params(m)) / 1e6,
            ds.n_rows, ds.T, a->data);
        fl_train_stats stats = {0};
        if (a->eval) rc = report_eval(m, &eval, a->spec.batch, "before", 0, metrics, err);
        if (!rc) rc = fl_train_run(m, &ds, &a->spec, &stats, err);
        if (!rc)
            fprintf(stderr, "done: %d steps, loss %.4f -> %.4f, %.0f tokens/s\n", stats.steps,
                    stats.first_loss, stats.last_loss, stats.tokens_per_s);
        if (!rc && a->eval)
            rc = report_eval(m, &eval, a->spec.batch, "after", stats.steps, metrics, err);
    }
    if (metrics && fclose(metrics) != 0 && !rc)
        rc = fl_err_set(err, FL_EIO, "%s: write failed", path);
    if (!rc)
        rc =
            a->use_lora ? fl_model_save_adapter(m, tmp, a->model, err) : fl_model_save(m, tmp, err);
    if (!rc && !a->use_lora) rc = fl_tokenizer_copy_files(a->model, tmp, err);
    fl_tokenizer_free(tok);
    fl_dataset_free(&ds);
    fl_dataset_free(&eval);
    fl_model_free(m);
    return rc;
}

int cli_train(int argc, char **argv) {
    cli_opt o[O_COUNT] = {
        [O_MODEL] = {"model", 1, NULL},
        [O_DATA] = {"data", 1, NULL},
        [O_OUT] = {"out", 1, NULL},
        [O_BATCH] = {"batch", 1, NULL},
        [O_SEQ] = {"seq", 1, NULL},
        [O_STEPS] = {"steps", 1, NULL},
        [O_EPOCHS] = {"epochs", 1, NULL},
        [O_ACCUM] = {"grad-accum", 1, NULL},
        [O_LR] = {"lr", 1, NULL},
        [O_SCHEDULE] = {"schedule", 1, NULL},
        [O_WARMUP] = {"warmup", 1, NULL},
        [O_WD] = {"weight-decay", 1, NULL},
        [O_CLIP] = {"clip", 1, NULL},
        [O_SEED] = {"seed", 1, NULL},
        [O_LORA] = {"lora", 1, NULL},
        [O_ALPHA] = {"lora-alpha", 1, NULL},
        [O_DROPOUT] = {"lora-dropout", 1, NULL},
        [O_TARGETS] = {"lora-targets", 1, NULL},
        [O_FORMAT] = {"format", 1, NULL},
        [O_TEXT] = {"text-field", 1, NULL},
        [O_PROMPT] = {"prompt-field", 1, NULL},
        [O_RESPONSE] = {"response-field", 1, NULL},
        [O_THREADS] = {"threads", 1, NULL},
        [O_PRECISION] = {"precision", 1, NULL},
        [O_LOG_EVERY] = {"log-every", 1, NULL},
        [O_EVAL] = {"eval", 1, NULL},
        [O_TRAIN_BASE] = {"lora-train-base", 1, NULL},
        [O_DP_CLIP] = {"dp-clip", 1, NULL},
        [O_DP_NOISE] = {"dp-noise", 1, NULL},
        [O_NO_TRUNCATE] = {"no-truncate", 0, NULL},
        [O_LORA_LAYERS] = {"lora-layers", 1, NULL},
        [O_TRAIN_LAYERS] = {"train-layers", 1, NULL},
    };
    int help;
    fl_err err = {0};
    if (cli_parse(argc, argv, 2, o, O_COUNT, &help, &err)) return cli_fail("train", &err);
    if (help) return fputs(HELP, stdout), 0;
    train_args a = {0};
    if (parse_args(o, &a, &err)) return cli_fail("train", &err);
    if (o[O_STEPS].value && o[O_EPOCHS].value) {
        fl_err_set(&err, FL_EINPUT, "give --steps or --epochs, not both");
        return cli_fail("train", &err);
    }
    char tmp[4096], out_dir[4096];
    const char *inputs[3] = {a.model, a.data, a.eval};
    if (cli_out_begin(a.out, inputs, 3, out_dir, sizeof out_dir, tmp, sizeof tmp, &err))
        return cli_fail("train", &err);
    a.out = out_dir;
    const char *targets = o[O_TARGETS].value ? o[O_TARGETS].value : "attn_q,attn_v";
    int rc = run(&a, targets, tmp, &err);
    if (!rc) rc = cli_out_commit(tmp, a.out, &err);
    if (rc) {
        cli_out_abort(tmp);
        return cli_fail("train", &err);
    }
    printf("wrote %s\n", a.out);
    return 0;
}
