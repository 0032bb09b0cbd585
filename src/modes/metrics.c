#include "modes/metrics.h"

#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/stats.h"
#include "duet.h"

void metrics_start(metrics *m, const char *mode) {
    memset(m, 0, sizeof *m);
    m->mode = mode;
    m->fallback_at = -1;
    m->t_start = clock_now_ms();
    m->handover_at = -1;
}

void metrics_free(metrics *m) {
    free(m->ids);
    free(m->t_token);
    m->ids = NULL;
    m->t_token = NULL;
}

int metrics_token(metrics *m, int id) {
    if (m->tokens == m->cap) {
        int cap = m->cap ? m->cap * 2 : 256;
        int *ids = realloc(m->ids, sizeof(int) * (size_t)cap);
        if (!ids) return DUET_ENOMEM;
        m->ids = ids;
        double *t = realloc(m->t_token, sizeof(double) * (size_t)cap);
        if (!t) return DUET_ENOMEM;
        m->t_token = t;
        m->cap = cap;
    }
    m->ids[m->tokens] = id;
    m->t_token[m->tokens] = clock_now_ms() - m->t_start;
    m->tokens++;
    return DUET_OK;
}

void metrics_finish(metrics *m) { m->total_ms = clock_now_ms() - m->t_start; }

/* Length of the longest common subsequence, O(n_a * n_b) time, O(n_b) memory. */
static int lcs(const int *a, int n_a, const int *b, int n_b) {
    int *row = calloc((size_t)n_b + 1, sizeof(int));
    if (!row) return -1;
    for (int i = 1; i <= n_a; i++) {
        int diag = 0;
        for (int j = 1; j <= n_b; j++) {
            int up = row[j];
            row[j] = a[i - 1] == b[j - 1] ? diag + 1 : (row[j] > row[j - 1] ? row[j] : row[j - 1]);
            diag = up;
        }
    }
    int r = row[n_b];
    free(row);
    return r;
}

void metrics_fidelity(metrics *m, const int *ref, int n_ref) {
    int n = m->tokens > n_ref ? m->tokens : n_ref, same = 0;
    for (int i = 0; i < m->tokens && i < n_ref; i++) same += m->ids[i] == ref[i];
    m->exact_match_rate = n ? (double)same / n : 1.0;
    int l = lcs(m->ids, m->tokens, ref, n_ref);
    double p = m->tokens ? (double)l / m->tokens : 0, r = n_ref ? (double)l / n_ref : 0;
    m->rouge_l_f1 = (m->tokens == 0 && n_ref == 0) ? 1.0 : (p + r > 0 ? 2 * p * r / (p + r) : 0);
    m->has_reference = l >= 0;
}

void metrics_print_json(const metrics *m, FILE *f) {
    int n_gap = m->tokens > 1 ? m->tokens - 1 : 0;
    double mean = 0, p50 = 0, p90 = 0, mx = 0;
    double *gaps = n_gap ? malloc(sizeof(double) * (size_t)n_gap) : NULL;
    if (gaps) {
        for (int i = 0; i < n_gap; i++) {
            gaps[i] = m->t_token[i + 1] - m->t_token[i];
            mean += gaps[i] / n_gap;
        }
        stats_sort(gaps, n_gap);
        p50 = stats_percentile(gaps, n_gap, 0.5);
        p90 = stats_percentile(gaps, n_gap, 0.9);
        mx = gaps[n_gap - 1];
        free(gaps);
    }
    double ttft = m->tokens ? m->t_token[0] : 0;
    double decode_ms = m->tokens > 1 ? m->t_token[m->tokens - 1] - m->t_token[0] : 0;
    fprintf(f, "{\"mode\":\"%s\",\"prompt_tokens\":%d,\"tokens\":%d,\"ttft_ms\":%.3f,"
               "\"tbt_ms\":{\"mean\":%.3f,\"p50\":%.3f,\"p90\":%.3f,\"max\":%.3f},"
               "\"total_ms\":%.3f,\"tokens_per_s\":%.2f,"
               "\"prefill_tokens_per_s\":%.2f,\"decode_tokens_per_s\":%.2f,"
               "\"device_compute_ms\":%.3f,\"cloud_compute_ms\":%.3f,\"comm_wait_ms\":%.3f,"
               "\"bytes_up\":%llu,\"bytes_down\":%llu,\"round_trips\":%llu,\"cloud_requests\":%llu,"
               "\"cloud_request_rate\":%.4f,\"accepted_per_round\":%.3f,\"acceptance_rate\":%.4f,"
               "\"cloud_tokens\":%llu",
            m->mode, m->prompt_tokens, m->tokens, ttft, mean, p50, p90, mx, m->total_ms,
            m->total_ms > 0 ? m->tokens * 1e3 / m->total_ms : 0,
            m->prefill_ms > 0 ? m->prompt_tokens * 1e3 / m->prefill_ms : 0,
            decode_ms > 0 ? (m->tokens - 1) * 1e3 / decode_ms : 0,
            m->device_compute_ms, m->cloud_compute_ms, m->comm_wait_ms,
            (unsigned long long)m->bytes_up, (unsigned long long)m->bytes_down,
            (unsigned long long)m->round_trips, (unsigned long long)m->cloud_requests,
            m->tokens ? (double)m->cloud_requests / m->tokens : 0,
            m->rounds ? (double)m->accepted / m->rounds : 0,
            m->drafted ? (double)m->accepted / m->drafted : 0, (unsigned long long)m->cloud_tokens);
    if (m->fallback_at >= 0) fprintf(f, ",\"fallback_at\":%d", m->fallback_at);
    if (m->prefill_chunk > 0) fprintf(f, ",\"prefill_chunk\":%d", m->prefill_chunk);
    if (m->rounds) /* speculative modes: rounds of draft + verification, mean draft length used */
        fprintf(f, ",\"rounds\":%llu,\"draft_len_mean\":%.3f", (unsigned long long)m->rounds,
                (double)m->drafted / m->rounds);
    if (m->reconnects) fprintf(f, ",\"reconnects\":%llu", (unsigned long long)m->reconnects);
    if (m->n_exit_points) {
        fprintf(f, ",\"exits\":[");
        for (int i = 0; i < m->n_exit_points; i++)
            fprintf(f, "%s{\"after_layer\":%d,\"tokens\":%llu}", i ? "," : "", m->exit_layer[i],
                    (unsigned long long)m->exit_tokens[i]);
        fprintf(f, "]");
    }
    if (m->has_pd)
        fprintf(f, ",\"handover_at\":%d,\"pace_ms\":%.3f", m->handover_at, m->pace_ms);
    if (m->has_reference)
        fprintf(f, ",\"fidelity\":{\"exact_match_rate\":%.4f,\"rouge_l_f1\":%.4f}", m->exact_match_rate,
                m->rouge_l_f1);
    fprintf(f, "}\n");
}
