/* algo.c — the table of federated algorithms (algo.h): the job's `algorithm:` names one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fed/algo/algo.h"

static const fl_algo *const ALGORITHMS[] = {&fl_algo_pellm, &fl_algo_fedkseed, &fl_algo_offsite,
                                            NULL};

const fl_algo *fl_algo_find(const char *name) {
    for (int i = 0; name && ALGORITHMS[i]; i++)
        if (strcmp(ALGORITHMS[i]->name, name) == 0) return ALGORITHMS[i];
    return NULL;
}

void fl_algo_update_free(fl_algo_update *u) {
    cJSON_Delete(u->meta);
    cJSON_Delete(u->metrics);
    free(u->payload);
    memset(u, 0, sizeof *u);
}

void fl_algo_aggregate(fl_aggregator *agg, const float *update, double weight, const char *client,
                       double max_update_norm, fl_algo_verdict *v) {
    double norm = 0;
    fl_update_verdict verdict = fl_aggregator_add(agg, update, weight, &norm);
    snprintf(v->detail, sizeof v->detail, "L2 norm %.4g", norm);
    if (verdict == FL_UPDATE_REJECTED_NORM || verdict == FL_UPDATE_CLIPPED) {
        v->status = verdict == FL_UPDATE_CLIPPED ? FL_ALGO_CLIPPED : FL_ALGO_REJECTED;
        snprintf(v->why, sizeof v->why,
                 "%s the update of %s: L2 norm %.4g is above aggregation.max_update_norm %.4g",
                 verdict == FL_UPDATE_CLIPPED ? "clipped" : "rejected", client, norm,
                 max_update_norm);
    } else if (verdict != FL_UPDATE_ACCEPTED) {
        v->status = FL_ALGO_REJECTED;
        snprintf(v->why, sizeof v->why, "the update of %s is %s", client,
                 fl_update_verdict_name(verdict));
    }
}

int fl_algo_secure_sum(fl_aggregator *agg, fl_secagg_server *sa, int count, fl_err *err) {
    int rc = fl_secagg_server_finish(sa, agg->sum, &agg->weight, err);
    if (!rc) agg->count = count;
    return rc;
}
