/* params.h — a parameter table: one contiguous fp32 buffer and named views into it.
 *
 * A model's weights, its gradients, a LoRA adapter and optimizer moments are each one table, so a
 * whole-model operation (FedAvg, a seeded perturbation, a checkpoint, "what leaves the party") is
 * one loop over one buffer. View names are the Hugging Face / PEFT tensor names. Views are laid
 * out in the order they were added, each starting on a 16-float boundary. Bounds: at most
 * FL_VIEW_NAME_MAX-1 bytes a name, FL_MAX_DIMS dims a view. */
#ifndef FEDLLM_PARAMS_H
#define FEDLLM_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "fedllm/err.h"

#define FL_VIEW_NAME_MAX 160
#define FL_MAX_DIMS      4

typedef struct fl_view {
    char name[FL_VIEW_NAME_MAX];
    size_t offset; /* in floats from the start of the buffer */
    size_t numel;
    int ndim;
    int64_t shape[FL_MAX_DIMS];
} fl_view;

typedef struct fl_params {
    float *data;  /* numel floats, owned, 64-byte aligned; NULL until fl_params_alloc */
    size_t numel; /* total floats including alignment padding between views */
    fl_view *views;
    int n_views;
    int cap_views;
} fl_params;

/* Appends a view (before fl_params_alloc). Returns its index, or -1 with err set (FL_ENOMEM, or
 * FL_EINPUT for a duplicate or over-long name). */
int fl_params_add(fl_params *p, const char *name, int ndim, const int64_t *shape, fl_err *err);
/* Allocates the zeroed buffer for the views added so far. */
int fl_params_alloc(fl_params *p, fl_err *err);
/* Allocates another table with the same views (for gradients or optimizer moments). */
int fl_params_clone_layout(fl_params *dst, const fl_params *src, fl_err *err);
/* Index of the view with this name, or -1. */
int fl_params_find(const fl_params *p, const char *name);
/* Pointer to the named view's data, or NULL. */
float *fl_params_get(const fl_params *p, const char *name);
/* Frees the buffer and views; leaves *p zeroed. Safe on a zeroed table. */
void fl_params_free(fl_params *p);

#endif
