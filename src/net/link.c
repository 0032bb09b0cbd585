#include "net/link.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/err.h"
#include "duet.h"


typedef struct profile {
    const char *name;
    link_params p;
} profile;

/* DESIGN section 7, read as down/up (see link.h). */
static const profile profiles[] = {
    {"none", {0, 0, 0, 0, 0, 0}},
    {"lan", {1000000000u, 1000000000u, 1000, 0, 0, 0}},
    {"wifi", {50000000u, 100000000u, 10000, 0, 0, 0}},
    {"wan", {20000000u, 50000000u, 40000, 0, 0, 0}},
    {"4g", {5000000u, 20000000u, 60000, 0, 0, 0}},
};

typedef struct unit {
    const char *name;
    double scale;
} unit;

static const unit rate_units[] = {{"bit", 1}, {"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9}};
static const unit time_units[] = {{"us", 1}, {"ms", 1e3}, {"s", 1e6}};

/* Parses "<number><unit>" from val[len] into the unit's base (bit/s or us). */
static int parse_quantity(const char *key, const char *val, size_t len, const unit *units, int n_units,
                          double max, double *out, char *err, size_t errlen) {
    char buf[64];
    if (len == 0 || len >= sizeof buf)
        return err_set(err, errlen, DUET_EINVAL, "link: %s: expected a number with a unit, got '%.*s'", key,
                       (int)len, val);
    memcpy(buf, val, len);
    buf[len] = 0;
    char *end;
    errno = 0;
    double x = strtod(buf, &end);
    if (end == buf || errno || !isfinite(x) || !(isdigit((unsigned char)buf[0]) || buf[0] == '.'))
        return err_set(err, errlen, DUET_EINVAL, "link: %s: '%s' does not start with a non-negative number", key, buf);
    for (int i = 0; i < n_units; i++) {
        if (strcasecmp(end, units[i].name) == 0) {
            x *= units[i].scale;
            if (x > max)
                return err_set(err, errlen, DUET_EINVAL, "link: %s: '%s' is too large (max %g)", key, buf, max);
            *out = x;
            return 0;
        }
    }
    char names[64] = "";
    for (int i = 0; i < n_units; i++)
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", units[i].name);
    return err_set(err, errlen, DUET_EINVAL, "link: %s: unknown or missing unit in '%s' (use %s)", key, buf, names);
}

static int parse_rate(const char *key, const char *val, size_t len, uint64_t *out, char *err, size_t errlen) {
    double x;
    int rc = parse_quantity(key, val, len, rate_units, 4, (double)LINK_MAX_BPS, &x, err, errlen);
    if (rc) return rc;
    if (x < 1)
        return err_set(err, errlen, DUET_EINVAL, "link: %s: bandwidth must be at least 1 bit/s (omit it for unlimited)",
                       key);
    *out = (uint64_t)llround(x);
    return 0;
}

static int parse_time(const char *key, const char *val, size_t len, uint32_t *out, char *err, size_t errlen) {
    double x;
    int rc = parse_quantity(key, val, len, time_units, 3, (double)LINK_MAX_TIME_US, &x, err, errlen);
    if (rc) return rc;
    *out = (uint32_t)llround(x);
    return 0;
}

static int parse_item(const char *item, size_t len, link_params *p, unsigned *seen, char *err, size_t errlen) {
    static const char *keys[] = {"up", "down", "rtt", "jitter", "dist", "seed"};
    const char *eq = memchr(item, '=', len);
    if (!eq)
        return err_set(err, errlen, DUET_EINVAL,
                       "link: '%.*s' is neither a profile (none, lan, wifi, wan, 4g; first only) nor key=value",
                       (int)len, item);
    size_t klen = (size_t)(eq - item);
    const char *val = eq + 1;
    size_t vlen = len - klen - 1;
    int k = -1;
    for (int i = 0; i < 6; i++)
        if (strlen(keys[i]) == klen && memcmp(keys[i], item, klen) == 0) k = i;
    if (k < 0)
        return err_set(err, errlen, DUET_EINVAL, "link: unknown key '%.*s' (use up, down, rtt, jitter, dist, seed)",
                       (int)klen, item);
    if (*seen & (1u << k)) return err_set(err, errlen, DUET_EINVAL, "link: '%s' given twice", keys[k]);
    *seen |= 1u << k;
    switch (k) {
    case 0: return parse_rate("up", val, vlen, &p->up_bps, err, errlen);
    case 1: return parse_rate("down", val, vlen, &p->down_bps, err, errlen);
    case 2: return parse_time("rtt", val, vlen, &p->rtt_us, err, errlen);
    case 3: return parse_time("jitter", val, vlen, &p->jitter_us, err, errlen);
    case 4:
        if (vlen == 7 && memcmp(val, "uniform", 7) == 0) p->jitter_dist = LINK_JITTER_UNIFORM;
        else if (vlen == 6 && memcmp(val, "normal", 6) == 0) p->jitter_dist = LINK_JITTER_NORMAL;
        else return err_set(err, errlen, DUET_EINVAL, "link: dist: '%.*s' (use uniform or normal)", (int)vlen, val);
        return 0;
    default: {
        char buf[16], *end;
        if (vlen == 0 || vlen >= sizeof buf || !isdigit((unsigned char)val[0]))
            return err_set(err, errlen, DUET_EINVAL, "link: seed: '%.*s' is not a number", (int)vlen, val);
        memcpy(buf, val, vlen);
        buf[vlen] = 0;
        errno = 0;
        unsigned long long s = strtoull(buf, &end, 10);
        if (*end || errno || s > UINT32_MAX)
            return err_set(err, errlen, DUET_EINVAL, "link: seed: '%s' is not a number below 2^32", buf);
        p->seed = (uint32_t)s;
        return 0;
    }
    }
}

int link_parse(const char *spec, link_params *out, char *err, size_t errlen) {
    if (!spec || !*spec)
        return err_set(err, errlen, DUET_EINVAL, "link: empty spec (use none, lan, wifi, wan, 4g or up=..,down=..,rtt=..)");
    link_params p = {0};
    unsigned seen = 0;
    const char *s = spec;
    for (int first = 1;; first = 0) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        if (len == 0) return err_set(err, errlen, DUET_EINVAL, "link: empty item in '%s'", spec);
        int is_profile = 0;
        for (size_t i = 0; first && i < sizeof profiles / sizeof profiles[0]; i++) {
            if (strlen(profiles[i].name) == len && strncasecmp(profiles[i].name, s, len) == 0) {
                p = profiles[i].p;
                is_profile = 1;
            }
        }
        if (!is_profile) {
            int rc = parse_item(s, len, &p, &seen, err, errlen);
            if (rc) return rc;
        }
        if (!comma) break;
        s = comma + 1;
    }
    *out = p;
    return 0;
}

int link_check(const link_params *p, char *err, size_t errlen) {
    const char *dir = p->up_bps > LINK_MAX_BPS ? "up" : p->down_bps > LINK_MAX_BPS ? "down" : NULL;
    if (dir)
        return err_set(err, errlen, DUET_EINVAL, "link: %s bandwidth %llu bit/s above the maximum %llu", dir,
                       (unsigned long long)(dir[0] == 'u' ? p->up_bps : p->down_bps), LINK_MAX_BPS);
    if (p->rtt_us > LINK_MAX_TIME_US || p->jitter_us > LINK_MAX_TIME_US)
        return err_set(err, errlen, DUET_EINVAL, "link: rtt %u us / jitter %u us above the maximum %u us", p->rtt_us,
                       p->jitter_us, LINK_MAX_TIME_US);
    if (p->jitter_dist > LINK_JITTER_NORMAL)
        return err_set(err, errlen, DUET_EINVAL, "link: jitter distribution %u unknown", p->jitter_dist);
    return 0;
}

static int format_rate(char *buf, size_t cap, const char *key, uint64_t bps) {
    if (bps == 0) return 0;
    int u = 0;
    while (u < 3 && bps % (uint64_t)rate_units[u + 1].scale == 0) u++;
    return snprintf(buf, cap, "%s=%llu%s,", key, (unsigned long long)(bps / (uint64_t)rate_units[u].scale),
                    rate_units[u].name);
}

int link_format(const link_params *p, char *buf, size_t cap) {
    if (!link_active(p)) return snprintf(buf, cap, "none");
    char tmp[256];
    size_t n = 0;
    n += (size_t)format_rate(tmp + n, sizeof tmp - n, "up", p->up_bps);
    n += (size_t)format_rate(tmp + n, sizeof tmp - n, "down", p->down_bps);
    n += (size_t)snprintf(tmp + n, sizeof tmp - n, "rtt=%uus,jitter=%uus,dist=%s,seed=%u", p->rtt_us, p->jitter_us,
                          p->jitter_dist == LINK_JITTER_NORMAL ? "normal" : "uniform", p->seed);
    return snprintf(buf, cap, "%s", tmp);
}

bool link_active(const link_params *p) {
    return p->up_bps || p->down_bps || p->rtt_us || p->jitter_us;
}

/* splitmix64: a tiny seeded stream; jitter only needs reproducibility, not quality. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { /* [0, 1) */
    return (double)(rng_next(s) >> 11) * 0x1p-53;
}

void link_pipe_init(link_pipe *p, const link_params *lp, enum link_dir dir) {
    uint64_t bps = dir == LINK_UP ? lp->up_bps : lp->down_bps;
    p->ms_per_byte = bps ? 8000.0 / (double)bps : 0;
    p->delay_ms = lp->rtt_us / 2000.0;
    p->jitter_ms = lp->jitter_us / 1000.0;
    p->dist = (int)lp->jitter_dist;
    p->rng = ((uint64_t)lp->seed << 1) | (uint64_t)dir; /* the two directions draw different streams */
    p->free_at = 0;
    p->last_deliver = 0;
}

double link_pipe_push(link_pipe *p, double now_ms, size_t bytes, double *done_ms) {
    double start = now_ms > p->free_at ? now_ms : p->free_at;
    double done = start + (double)bytes * p->ms_per_byte;
    p->free_at = done;
    double delay = p->delay_ms;
    if (p->jitter_ms > 0) {
        if (p->dist == LINK_JITTER_NORMAL) { /* Box-Muller */
            double u1 = 1.0 - rng_unit(&p->rng), u2 = rng_unit(&p->rng);
            delay += p->jitter_ms * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
        } else {
            delay += p->jitter_ms * (2.0 * rng_unit(&p->rng) - 1.0);
        }
        if (delay < 0) delay = 0;
    }
    double deliver = done + delay;
    if (deliver < p->last_deliver) deliver = p->last_deliver;
    p->last_deliver = deliver;
    if (done_ms) *done_ms = done;
    return deliver;
}

double link_worst_ms(const link_params *p, enum link_dir dir, size_t bytes) {
    uint64_t bps = dir == LINK_UP ? p->up_bps : p->down_bps;
    double ser = bps ? (double)bytes * 8e3 / (double)bps : 0;
    double jitter = p->jitter_us / 1e3 * (p->jitter_dist == LINK_JITTER_NORMAL ? 4 : 1);
    return ser + p->rtt_us / 2e3 + jitter;
}
