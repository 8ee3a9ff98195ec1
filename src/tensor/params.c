/* params.c — the parameter table: named views into one contiguous buffer. */
#include "fedllm/params.h"

#include <stdlib.h>
#include <string.h>

int fl_params_add(fl_params *p, const char *name, int ndim, const int64_t *shape, fl_err *err) {
    if (strlen(name) >= FL_VIEW_NAME_MAX)
        return fl_err_set(err, FL_EINPUT, "tensor name too long: %.60s...", name), -1;
    if (ndim < 1 || ndim > FL_MAX_DIMS)
        return fl_err_set(err, FL_EINTERNAL, "%s: %d dims", name, ndim), -1;
    if (fl_params_find(p, name) >= 0)
        return fl_err_set(err, FL_EINPUT, "duplicate tensor name %s", name), -1;
    if (p->n_views == p->cap_views) {
        int cap = p->cap_views ? 2 * p->cap_views : 64;
        fl_view *grown = realloc(p->views, (size_t)cap * sizeof *grown);
        if (!grown) return fl_err_set(err, FL_ENOMEM, "out of memory adding %s", name), -1;
        p->views = grown;
        p->cap_views = cap;
    }
    fl_view *v = &p->views[p->n_views];
    memset(v, 0, sizeof *v);
    strcpy(v->name, name);
    v->ndim = ndim;
    v->numel = 1;
    for (int i = 0; i < ndim; i++) {
        v->shape[i] = shape[i];
        v->numel *= (size_t)shape[i];
    }
    v->offset = (p->numel + 15) / 16 * 16;
    p->numel = v->offset + v->numel;
    return p->n_views++;
}

int fl_params_alloc(fl_params *p, fl_err *err) {
    p->data = fl_alloc(p->numel * sizeof(float), err);
    return p->data ? FL_OK : FL_ENOMEM;
}

int fl_params_clone_layout(fl_params *dst, const fl_params *src, fl_err *err) {
    memset(dst, 0, sizeof *dst);
    dst->views = malloc((size_t)(src->n_views ? src->n_views : 1) * sizeof *dst->views);
    if (!dst->views) return fl_err_set(err, FL_ENOMEM, "out of memory cloning a parameter table");
    memcpy(dst->views, src->views, (size_t)src->n_views * sizeof *dst->views);
    dst->n_views = dst->cap_views = src->n_views;
    dst->numel = src->numel;
    return fl_params_alloc(dst, err);
}

int fl_params_find(const fl_params *p, const char *name) {
    for (int i = 0; i < p->n_views; i++)
        if (strcmp(p->views[i].name, name) == 0) return i;
    return -1;
}

float *fl_params_get(const fl_params *p, const char *name) {
    int i = fl_params_find(p, name);
    return i < 0 || !p->data ? NULL : p->data + p->views[i].offset;
}

void fl_params_free(fl_params *p) {
    free(p->data);
    free(p->views);
    memset(p, 0, sizeof *p);
}
