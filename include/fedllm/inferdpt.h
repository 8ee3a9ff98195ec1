/* inferdpt.h — InferDPT's perturbation kit and RANTEXT mechanism (Tong et al., "InferDPT:
 * Privacy-preserving Inference for Black-box Large Language Models"): before a client's text goes
 * to a remote model, each of its whole-word tokens is replaced by a token drawn near it in the
 * remote model's input-embedding space, with a differentially private mechanism.
 *
 * The kit is made once from the remote model's tokenizer and input embeddings (public for an
 * open model; the model owner makes it otherwise). It holds N whole-word tokens (a marker for a
 * leading space, then 4..15 ASCII letters, not all capitals: the subset FATE-LLM's tutorial
 * uses), their embeddings (N, D), Δf per dimension (max − min over the subset) and, per token, its
 * K most similar kit tokens by cosine similarity, in decreasing order, with the similarities.
 * FATE-LLM stores every token's complete list as JSON (O(N²): 130 M pairs for 11.4k tokens);
 * fedllm stores the K nearest in binary and computes a whole row from the embeddings in the rare
 * case a threshold falls below the K-th similarity, so the mechanism is the same as with the full
 * table.
 *
 * RANTEXT, for one kit token t with embedding e: noise n_d ~ Laplace(0, Δf_d / (ε/2)) gives a
 * random threshold s* = cos(e, e + n); the candidates are the kit tokens u with cos(e, e_u) >= s*
 * (t itself always, its similarity being 1); one is drawn with probability ∝ exp(ε·cos(e, e_u)/2)
 * (the exponential mechanism with Δu = 1). Tokens outside the kit are kept. ε = ∞ keeps the text
 * as it is (FATE-LLM refuses it; here it is the no-privacy baseline). Every random number is
 * Philox(seed, counter) with a counter of (document, position, draw), so a perturbation is
 * reproducible from its seed, document by document, on any machine. */
#ifndef FEDLLM_INFERDPT_H
#define FEDLLM_INFERDPT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "fedllm/err.h"
#include "fedllm/tokenizer.h"

typedef struct fl_dpt_kit {
    int n;          /* kit tokens, 1 ..< 2^24 */
    int dim;        /* embedding width D, 1 .. 65536 */
    int k;          /* neighbours stored per token, 1 .. n */
    int vocab;      /* the tokenizer's vocabulary size the kit was made for */
    int32_t *ids;   /* (n) token ids, increasing */
    char **strings; /* (n) each token's vocabulary string (e.g. "Ġhouse"), NUL-terminated */
    float *emb;     /* (n, D) input embeddings */
    float *unit;    /* (n, D) the embeddings scaled to unit length (for rows computed on the fly) */
    float *delta_f; /* (D) max − min of each dimension over the kit */
    int32_t *nb_idx; /* (n, k) kit indices of each token's k nearest, most similar first (self) */
    float *nb_sim;   /* (n, k) their cosine similarities, non-increasing, nb_sim[i*k] = 1 */
    int32_t *slot;   /* (vocab) kit index of each token id, -1 when not in the kit */
    struct fl_dpt_rows *rows; /* whole rows computed so far (fl_dpt_rows_new), or NULL */
} fl_dpt_kit;

/* A cache of whole similarity rows (n pairs each) within budget_bytes, shared safely between
 * threads; fl_dpt_kit_make / build / load give every kit one of FL_DPT_ROW_CACHE_BYTES (or all
 * of its rows when they fit). NULL when not one row fits, or out of memory (then rows are
 * computed each time). */
#define FL_DPT_ROW_CACHE_BYTES ((size_t)256 << 20)
typedef struct fl_dpt_rows fl_dpt_rows;
fl_dpt_rows *fl_dpt_rows_new(int n, size_t budget_bytes);
void fl_dpt_rows_free(fl_dpt_rows *rows);

typedef struct fl_dpt_kit_options {
    int min_len, max_len; /* letters of a whole-word token (4, 15) */
    int neighbours;       /* K (512; capped at the kit's size) */
} fl_dpt_kit_options;
fl_dpt_kit_options fl_dpt_kit_defaults(void);

/* Makes the kit of model directory model_dir (its tokenizer and input-embedding tensor, read
 * without loading the rest of the model) into *kit. FL_EINPUT naming the file when there is no
 * embedding tensor, its shape does not match the tokenizer, or no token qualifies. On error
 * nothing is allocated. */
int fl_dpt_kit_make(fl_dpt_kit *kit, const char *model_dir, const fl_dpt_kit_options *opt,
                    fl_err *err);
/* The same from an embedding matrix emb (rows, dim) of tok's ids (rows >= its vocabulary);
 * what names the source in error messages. */
int fl_dpt_kit_build(fl_dpt_kit *kit, const fl_tokenizer *tok, const float *emb, int rows, int dim,
                     const fl_dpt_kit_options *opt, const char *what, fl_err *err);
/* Writes the kit as dir/kit.bin (atomically) with the tokenizer files beside it. */
int fl_dpt_kit_save(const fl_dpt_kit *kit, const char *model_dir, const char *dir, fl_err *err);
/* Reads dir/kit.bin, checking every length and index against the file before using it
 * (FL_EINPUT naming the file and field otherwise). */
int fl_dpt_kit_load(fl_dpt_kit *kit, const char *dir, fl_err *err);
/* Checks that tok is the tokenizer the kit was made for: the same vocabulary size and every kit
 * token the same string. FL_EINPUT naming the first difference otherwise. */
int fl_dpt_kit_check_tokenizer(const fl_dpt_kit *kit, const fl_tokenizer *tok, const char *what,
                               fl_err *err);
void fl_dpt_kit_free(fl_dpt_kit *kit);

/* What perturbing a text did: tokens, how many were in the kit, how many of those changed, and
 * how many took a whole row beyond the stored neighbours. */
typedef struct fl_dpt_stats {
    long tokens, in_kit, replaced, full_rows;
} fl_dpt_stats;

/* Scratch for a whole row of similarities. */
typedef struct fl_dpt_pair {
    float sim;
    int32_t idx;
} fl_dpt_pair;

/* One kit token (kit index i) perturbed: the kit index drawn. epsilon > 0 (INFINITY: i itself).
 * counter is the first Philox counter it may use (it uses at most dim/2 + 2 of them). scratch
 * holds n pairs and row n floats; *full_row tells whether the threshold fell below the stored
 * neighbours. The candidates are drawn from in the stored lists' order (most similar first,
 * the token itself first of all), so a whole row gives the draw the complete lists would.
 * Cannot fail. */
int fl_dpt_perturb_token(const fl_dpt_kit *kit, int i, double epsilon, uint64_t seed,
                         uint64_t counter, float *row, fl_dpt_pair *scratch, int *full_row);

/* Perturbs ids[0..n) in place: document doc's tokens with seed. Adds to stats (may be NULL).
 * FL_ENOMEM only. */
int fl_dpt_perturb_ids(const fl_dpt_kit *kit, int32_t *ids, size_t n, double epsilon, uint64_t seed,
                       uint64_t doc, fl_dpt_stats *stats, fl_err *err);

/* Tokenizes text with tok (the kit's tokenizer), perturbs and decodes into out (appended).
 * FL_EINPUT when the text is too long (over 2^20 tokens) or tok fails. */
int fl_dpt_perturb_text(const fl_dpt_kit *kit, fl_tokenizer *tok, const char *text, size_t len,
                        double epsilon, uint64_t seed, uint64_t doc, fl_str *out,
                        fl_dpt_stats *stats, fl_err *err);

/* The InferDPT pipeline over a data file, as `fedllm inferdpt run` drives it. For each record
 * (a JSON object per line of data_path): encode_template renders the text to protect; it is
 * perturbed (document index = line number - 1) into the record's "perturbed_doc";
 * instruction_template renders the prompt that goes to the endpoint, whose answer becomes
 * "perturbed_response"; decode_template renders the local model's prompt (the record holds the
 * original fields beside both), and its continuation is "inferdpt_result".
 *
 * out_dir receives: outbox.jsonl (every prompt, appended and flushed before it is sent: the
 * record, the endpoint, its bytes and SHA-256 and the text), progress.jsonl (each finished
 * record, so that resume goes on after the last), metrics.jsonl (one line per batch), log, and
 * at the end results.jsonl and summary.json, each written atomically: a run that fails leaves
 * no results file. */
struct fl_endpoint;
struct fl_completion_params;
struct fl_engine;
struct fl_gen_params;
typedef struct fl_dpt_run_config {
    const fl_dpt_kit *kit;
    fl_tokenizer *kit_tok; /* the remote model's tokenizer (the kit's) */
    const struct fl_endpoint *endpoint;
    const struct fl_completion_params *remote;
    struct fl_engine *local; /* the local model's engine, and its tokenizer */
    fl_tokenizer *local_tok;
    const struct fl_gen_params *local_params;
    const char *encode_template, *instruction_template, *decode_template;
    double epsilon; /* > 0; INFINITY: no perturbation */
    uint64_t seed;
    int batch; /* prompts per request, 1 .. 256 */
    const char *data_path, *out_dir;
    int resume; /* go on from out_dir's progress.jsonl (else out_dir must be new or empty) */
    FILE *log;  /* progress lines (also written to out_dir/log) */
} fl_dpt_run_config;

typedef struct fl_dpt_run_summary {
    long records, done_before; /* in the data; finished by an earlier run (resume) */
    fl_dpt_stats stats;
    size_t bytes_sent, bytes_received;
    double remote_s, local_s;
} fl_dpt_run_summary;

int fl_dpt_run(const fl_dpt_run_config *cfg, fl_dpt_run_summary *summary, fl_err *err);

#endif
