/* clock.h — elapsed time for progress, deadlines and measurements. */
#ifndef FEDLLM_CLOCK_H
#define FEDLLM_CLOCK_H

/* Seconds on the monotonic clock (CLOCK_MONOTONIC): only differences mean anything. Cannot fail. */
double fl_now_s(void);

#endif
