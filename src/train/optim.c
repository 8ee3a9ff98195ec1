/* optim.c — AdamW over a trainable table, global-norm clipping, and the lr schedules. */
#include <math.h>

#include "fedllm/train.h"
#include "kernels/kernels.h"

fl_optim_spec fl_optim_defaults(void) {
    return (fl_optim_spec){.lr = 1e-4f,
                           .beta1 = 0.9f,
                           .beta2 = 0.999f,
                           .eps = 1e-8f,
                           .weight_decay = 0.0f,
                           .clip_norm = 1.0f,
                           .schedule = FL_SCHED_CONSTANT,
                           .warmup_steps = 0,
                           .total_steps = 0,
                           .schedule_offset = 0};
}

float fl_schedule_lr(const fl_optim_spec *spec, int step) {
    if (step < spec->warmup_steps) return spec->lr * (float)step / (float)spec->warmup_steps;
    if (spec->schedule == FL_SCHED_CONSTANT) return spec->lr;
    int decay_steps = spec->total_steps - spec->warmup_steps;
    if (decay_steps <= 0) return spec->lr;
    double progress = (double)(step - spec->warmup_steps) / decay_steps;
    if (progress > 1) progress = 1;
    return (float)(spec->lr * 0.5 * (1.0 + cos(M_PI * progress)));
}

int fl_optimizer_init(fl_optimizer *o, const fl_params *trainable, const fl_optim_spec *spec,
                      fl_err *err) {
    o->spec = *spec;
    o->step = 0;
    if (fl_params_clone_layout(&o->m, trainable, err)) return err ? err->code : FL_ENOMEM;
    if (fl_params_clone_layout(&o->v, trainable, err)) {
        fl_params_free(&o->m);
        return err ? err->code : FL_ENOMEM;
    }
    return FL_OK;
}

double fl_clip_grad_norm(fl_params *grads, float max_norm) {
    double norm = sqrt(fl_sumsq(grads->data, grads->numel));
    if (max_norm > 0 && norm > max_norm)
        fl_scale(grads->data, (float)(max_norm / (norm + 1e-6)), grads->numel);
    return norm;
}

float fl_optimizer_step(fl_optimizer *o, fl_params *params, const fl_params *grads) {
    const fl_optim_spec *s = &o->spec;
    float lr = fl_schedule_lr(s, s->schedule_offset + o->step);
    o->step++;
    for (int i = 0; i < params->n_views; i++) {
        const fl_view *v = &params->views[i];
        float wd = v->ndim >= 2 ? s->weight_decay : 0.0f;
        fl_adamw_update(params->data + v->offset, grads->data + v->offset, o->m.data + v->offset,
                        o->v.data + v->offset, v->numel, lr, s->beta1, s->beta2, s->eps, wd,
                        o->step);
    }
    return lr;
}

void fl_optimizer_free(fl_optimizer *o) {
    fl_params_free(&o->m);
    fl_params_free(&o->v);
}
