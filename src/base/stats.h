/* stats.h: order statistics of measured times (metrics, benchmarks). */
#ifndef DUET_BASE_STATS_H
#define DUET_BASE_STATS_H

void stats_sort(double *v, int n);
/* Nearest-rank q-quantile (0 < q <= 1) of v[n] already sorted; 0 when n is 0. */
double stats_percentile(const double *v, int n, double q);
/* Median of v[n] (sorts v in place; the mean of the two middle values when n is even); 0 when n is 0. */
double stats_median(double *v, int n);

#endif
