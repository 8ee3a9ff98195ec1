/* test_overfit.c — the whole training stack end to end: a tiny model of each family, trained from
 * scratch with the real trainer on one real paragraph (Psalm 23, KJV, public domain), must
 * memorise it (loss < 0.1). Catches what gradient checks cannot: a trainer, optimizer, schedule or
 * data pipeline that is subtly wrong still lets a model learn, but not down to near zero. */
#include <stdio.h>
#include <string.h>

#include "fedllm/data.h"
#include "fedllm/model.h"
#include "fedllm/train.h"
#include "kernels/kernels.h"
#include "testutil.h"

static void overfit(fl_arch arch, fl_precision precision) {
    fl_gemm_set_precision(precision);
    fl_config c = tu_config(arch, 257, 96, 24, 256, 128, 1);
    fl_err err;
    fl_model *m = fl_model_new_random(&c, 3, &err);
    CHECK(m && fl_model_train_full(m, &err) == 0, "%s", err.msg);
    fl_tokenizer *tok = NULL;
    const char *dir = tu_tmpdir("test_overfit");
    CHECK(fl_tokenizer_save_bytes(dir, &err) == 0 && fl_tokenizer_load(&tok, dir, &err) == 0, "%s",
          err.msg);
    fl_data_spec spec = {.format = FL_DATA_TEXT};
    fl_dataset ds;
    CHECK(fl_dataset_load(&ds, "tests/fixtures/psalm23.jsonl", &spec, tok, 128, &err) == 0, "%s",
          err.msg);
    fl_train_spec ts = {.batch = (int)ds.n_rows,
                        .seq = 128,
                        .grad_accum = 1,
                        .steps = 150,
                        .seed = 1,
                        .log_every = 50,
                        .progress = -1};
    ts.optim = fl_optim_defaults();
    ts.optim.lr = 3e-3f;
    ts.optim.warmup_steps = 10;
    ts.optim.schedule = FL_SCHED_COSINE;
    fl_train_stats stats;
    CHECK(fl_train_run(m, &ds, &ts, &stats, &err) == 0, "%s", err.msg);
    printf("%s %s: loss %.3f -> %.4f in %d steps (%.1f s)\n", fl_arch_name(arch),
           precision == FL_PREC_BF16 ? "bf16" : "fp32", stats.first_loss, stats.last_loss,
           stats.steps, stats.seconds);
    CHECK(stats.first_loss > 5.0, "%s: a fresh model should start near ln(257)",
          fl_arch_name(arch));
    CHECK(stats.last_loss < 0.1, "%s: did not memorise the paragraph (loss %.4f)",
          fl_arch_name(arch), stats.last_loss);
    fl_dataset_free(&ds);
    fl_tokenizer_free(tok);
    fl_model_free(m);
}

int main(void) {
    overfit(FL_ARCH_GPT2, FL_PREC_F32);
    overfit(FL_ARCH_LLAMA, FL_PREC_F32);
    overfit(FL_ARCH_QWEN2, FL_PREC_F32);
    /* bf16 GEMMs (fp32 accumulation and master weights) must train as well. */
    overfit(FL_ARCH_LLAMA, FL_PREC_BF16);
    return tu_finish("test_overfit");
}
