/* checkpoint.h — a model directory's weights, single-file or sharded (see checkpoint.c). */
#ifndef FEDLLM_CHECKPOINT_H
#define FEDLLM_CHECKPOINT_H

#include "fedllm/safetensors.h"

#define FL_CHECKPOINT_MAX_SHARDS 256

typedef struct fl_checkpoint {
    fl_st_file files[FL_CHECKPOINT_MAX_SHARDS];
    char names[FL_CHECKPOINT_MAX_SHARDS][128];
    int n_files;
} fl_checkpoint;

/* Opens DIR/model.safetensors, or every shard of DIR/model.safetensors.index.json. On error
 * (FL_EINPUT naming the file: no weights, a malformed index, a missing or truncated shard, a
 * tensor missing from its shard) nothing stays open. */
int fl_checkpoint_open(fl_checkpoint *ck, const char *dir, fl_err *err);
/* The file holding tensor `name`, or NULL. */
const fl_st_file *fl_checkpoint_find(const fl_checkpoint *ck, const char *name);
void fl_checkpoint_close(fl_checkpoint *ck);

#endif
