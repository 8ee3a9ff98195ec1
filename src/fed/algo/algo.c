/* algo.c — the table of federated algorithms (algo.h): the job's `algorithm:` names one. */
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
