/* checkpoint.c — a model directory's weights as one set of named tensors, whether they sit in
 * model.safetensors or in shards listed by model.safetensors.index.json ({"weight_map": {tensor:
 * file}}), as Hugging Face writes checkpoints over a few GB. Every shard is mmapped, never copied;
 * a shard the index names must exist and hold the tensors the index says it holds. */
#include "model/checkpoint.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fedllm/fileio.h"

enum { INDEX_MAX_BYTES = 64 << 20 };

static int open_shards(fl_checkpoint *ck, const char *dir, const char *index_path, fl_err *err) {
    char *text;
    size_t len;
    if (fl_read_file(index_path, &text, &len, INDEX_MAX_BYTES, err)) return err->code;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(map)) {
        cJSON_Delete(root);
        return fl_err_set(err, FL_EINPUT, "%s: weight_map: expected an object of tensor -> file",
                          index_path);
    }
    int rc = FL_OK;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, map) {
        if (!cJSON_IsString(entry) || strchr(entry->valuestring, '/') || !*entry->valuestring) {
            rc = fl_err_set(err, FL_EINPUT, "%s: weight_map['%s']: expected a file name",
                            index_path, entry->string);
            break;
        }
        int known = 0;
        for (int i = 0; i < ck->n_files && !known; i++)
            known = strcmp(ck->names[i], entry->valuestring) == 0;
        if (known) continue;
        if (ck->n_files == FL_CHECKPOINT_MAX_SHARDS) {
            rc = fl_err_set(err, FL_EINPUT, "%s: more than %d shards", index_path,
                            FL_CHECKPOINT_MAX_SHARDS);
            break;
        }
        char path[1024];
        if ((rc = fl_path_join(path, sizeof path, dir, entry->valuestring, err))) break;
        struct stat st;
        if (stat(path, &st) != 0) {
            rc = fl_err_set(err, FL_EINPUT, "%s: names the shard %s, which is missing", index_path,
                            entry->valuestring);
            break;
        }
        if ((rc = fl_st_open(&ck->files[ck->n_files], path, err))) break;
        snprintf(ck->names[ck->n_files], sizeof ck->names[0], "%s", entry->valuestring);
        ck->n_files++;
    }
    /* Each tensor the index maps must be in its shard. */
    cJSON_ArrayForEach(entry, map) {
        if (rc) break;
        for (int i = 0; i < ck->n_files; i++)
            if (strcmp(ck->names[i], entry->valuestring) == 0 &&
                !fl_st_find(&ck->files[i], entry->string))
                rc = fl_err_set(err, FL_EINPUT, "%s: tensor '%s' is not in %s, as the index says",
                                index_path, entry->string, entry->valuestring);
    }
    cJSON_Delete(root);
    return rc;
}

int fl_checkpoint_open(fl_checkpoint *ck, const char *dir, fl_err *err) {
    memset(ck, 0, sizeof *ck);
    char single[1024], index[1024];
    if (fl_path_join(single, sizeof single, dir, "model.safetensors", err) ||
        fl_path_join(index, sizeof index, dir, "model.safetensors.index.json", err))
        return FL_EINPUT;
    struct stat st;
    int rc;
    if (stat(single, &st) == 0) {
        rc = fl_st_open(&ck->files[0], single, err);
        if (!rc) ck->n_files = 1;
    } else if (stat(index, &st) == 0) {
        rc = open_shards(ck, dir, index, err);
    } else {
        rc = fl_err_set(err, FL_EINPUT,
                        "%s: neither model.safetensors nor "
                        "model.safetensors.index.json is there",
                        dir);
    }
    if (rc) fl_checkpoint_close(ck);
    return rc;
}

const fl_st_file *fl_checkpoint_find(const fl_checkpoint *ck, const char *name) {
    for (int i = 0; i < ck->n_files; i++)
        if (fl_st_find(&ck->files[i], name)) return &ck->files[i];
    return NULL;
}

void fl_checkpoint_close(fl_checkpoint *ck) {
    for (int i = 0; i < ck->n_files; i++)
        fl_st_close(&ck->files[i]);
    ck->n_files = 0;
}
