/* Order statistics used by metrics (tbt p50/p90) and benchmarks (medians, p99). */
#include "base/stats.h"
#include "test.h"

TEST(test_stats_percentile_and_median) {
    double v[] = {5, 1, 4, 2, 3};
    stats_sort(v, 5);
    for (int i = 0; i < 5; i++) CHECK_EQ_INT(v[i], i + 1);
    CHECK_NEAR(stats_percentile(v, 5, 0.5), 3, 0);  /* nearest rank: ceil(2.5) = 3rd */
    CHECK_NEAR(stats_percentile(v, 5, 0.9), 5, 0);  /* ceil(4.5) = 5th */
    CHECK_NEAR(stats_percentile(v, 5, 0.2), 1, 0);
    CHECK_NEAR(stats_percentile(v, 0, 0.5), 0, 0);
    double odd[] = {9, 1, 5}, even[] = {8, 2, 6, 4};
    CHECK_NEAR(stats_median(odd, 3), 5, 0);
    CHECK_NEAR(stats_median(even, 4), 5, 0);       /* mean of 4 and 6 */
}
