/* auto mode: the cost model's picks on fixed probe figures (deterministic), the state file (round trip and
 * malformed bytes), the probe on an emulated link, and `duet run --mode auto` end to end. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/json.h"
#include "duet.h"
#include "modes/auto.h"
#include "modes/cost.h"
#include "test.h"

/* A TinyLlama-shaped model (22 layers, dim 2048) on a device `slowdown` times slower than its cloud, whose
 * figures are this machine's kind of speed: 1 ms a layer plus 0.05 ms a position, 2 ms for the head. */
static cost_inputs shape(const char *link, double slowdown, int n_prompt, int n_tokens) {
    cost_inputs in;
    memset(&in, 0, sizeof in);
    link_params lp;
    char err[128];
    if (link_parse(link, &lp, err, sizeof err)) abort();
    probe_link_nominal(&lp, &in.net);
    in.cloud = (probe_compute){22, 1.0, 0.05, 2.0, 0.1};
    in.dev = (probe_compute){22, 1.0 * slowdown, 0.05 * slowdown, 2.0 * slowdown, 0.1 * slowdown};
    in.row_bytes = 2 * 2048;
    in.n_prompt = n_prompt;
    in.n_tokens = n_tokens;
    return in;
}

static const char *pick(const cost_inputs *in, const autostate *st, int objective, cost_cand *out) {
    static cost_cand c[COST_MAX_CANDS];
    int n = cost_candidates(in, st, 0, c, COST_MAX_CANDS);
    int i = cost_pick(c, n, objective, 1.5, 0, 0, 1);
    if (i < 0) return "none";
    if (out) *out = c[i];
    return cost_mode_name[c[i].mode];
}

TEST(test_cost_pick_changes_with_slowdown) {
    cost_inputs a = shape("lan", 1, 32, 32), b = shape("lan", 8, 32, 32);
    /* as fast as the cloud, the device wins (no network at all); 8x slower, the cloud's stream wins */
    CHECK(!strcmp(pick(&a, NULL, COST_LATENCY, NULL), "device"));
    CHECK(!strcmp(pick(&b, NULL, COST_LATENCY, NULL), "cloud"));
}

TEST(test_cost_pick_changes_with_link) {
    /* privacy on a 4x slower device: the U-shape (token ids stay here) pays a round trip per token, which a
     * LAN makes cheaper than running the middle layers here and 4G does not */
    cost_inputs a = shape("lan", 4, 32, 32), b = shape("4g", 4, 32, 32);
    CHECK(!strcmp(pick(&a, NULL, COST_PRIVACY, NULL), "hat"));
    CHECK(!strcmp(pick(&b, NULL, COST_PRIVACY, NULL), "device"));
    /* latency, a short answer on a 1.05x slower device: the cloud's first token over a LAN is sooner, over
     * 4G the round trip costs more than the device's few extra milliseconds */
    a = shape("lan", 1.05, 32, 4), b = shape("4g", 1.05, 32, 4);
    CHECK(strcmp(pick(&a, NULL, COST_LATENCY, NULL), "device") != 0);
    CHECK(!strcmp(pick(&b, NULL, COST_LATENCY, NULL), "device"));
}

TEST(test_cost_objectives) {
    cost_inputs in = shape("lan", 8, 32, 32);
    cost_cand c;
    /* cloud-cost: the least cloud compute within 1.5x of the fastest, not the fastest itself */
    const char *fast = pick(&in, NULL, COST_LATENCY, NULL), *cheap = pick(&in, NULL, COST_CLOUD_COST, &c);
    CHECK(strcmp(fast, cheap) != 0);
    cost_cand all[COST_MAX_CANDS];
    int n = cost_candidates(&in, NULL, 0, all, COST_MAX_CANDS);
    double fastest = 1e30;
    for (int i = 0; i < n; i++) fastest = all[i].total_ms < fastest ? all[i].total_ms : fastest;
    CHECK(c.total_ms <= 1.5 * fastest);
    for (int i = 0; i < n; i++) CHECK(all[i].total_ms > 1.5 * fastest || all[i].cloud_ms >= c.cloud_ms);
    /* privacy never picks a mode whose tokens reach the cloud; no cloud: device only */
    for (int s = 1; s <= 16; s *= 2) {
        cost_inputs x = shape("wifi", s, 64, 16);
        const char *p = pick(&x, NULL, COST_PRIVACY, NULL);
        CHECK(!strcmp(p, "device") || !strcmp(p, "hat"));
    }
    int i = cost_pick(all, n, COST_LATENCY, 1.5, 0, 0, 0);
    REQUIRE(i >= 0);
    CHECK_EQ_INT(all[i].mode, COST_DEVICE);
}

TEST(test_cost_uses_measured_rates) {
    cost_inputs in = shape("wifi", 4, 32, 64);
    autostate st;
    autostate_init(&st, 1);
    cost_cand before, after;
    REQUIRE(strcmp(pick(&in, &st, COST_PRIVACY, &before), "none"));
    /* hat drafts once acceptance has been measured high, and its predicted time between tokens drops */
    autostate_note_hat(&st, 5, 5, 0, 1000, 900);
    REQUIRE(!strcmp(pick(&in, &st, COST_PRIVACY, &after), "hat"));
    CHECK(after.draft > 0);
    CHECK(after.rates == COST_RATES_MEASURED);
    cost_cand c[COST_MAX_CANDS];
    int n = cost_candidates(&in, NULL, 0, c, COST_MAX_CANDS), n2 = 0;
    double prior = 0;
    for (int i = 0; i < n; i++)
        if (c[i].mode == COST_HAT) prior = c[i].tbt_ms, n2++;
    CHECK_EQ_INT(n2, 1);
    CHECK(after.tbt_ms < prior);
    /* ee below threshold 1 appears once measured, is lossy, and wins only with allow_lossy */
    autostate_note_ee(&st, 10, 15, 0.8f, 0, 100, 60, 30);
    n = cost_candidates(&in, &st, 0, c, COST_MAX_CANDS);
    int lossy = -1;
    for (int i = 0; i < n; i++)
        if (c[i].mode == COST_EE && c[i].threshold < 1) lossy = i;
    REQUIRE(lossy >= 0);
    CHECK(!c[lossy].lossless);
    CHECK_NEAR(c[lossy].exit1_rate, 0.6, 1e-9);
    int best = cost_pick(c, n, COST_LATENCY, 1.5, 0, 0, 1);
    CHECK(best >= 0 && c[best].lossless);
    CHECK(!c[lossy].eligible);
    cost_pick(c, n, COST_LATENCY, 1.5, 0, 1, 1);
    CHECK(c[lossy].eligible);
}

TEST(test_cost_device_margin) {
    /* a 1.05x slower device on a LAN loses a short answer to the cloud by a few percent: with a 10% margin it
     * keeps the request, with none it does not; an 8x slower one loses whatever the margin */
    cost_inputs a = shape("lan", 1.05, 32, 4), b = shape("lan", 8, 32, 4);
    cost_cand c[COST_MAX_CANDS];
    int n = cost_candidates(&a, NULL, 0, c, COST_MAX_CANDS);
    int fast = cost_pick(c, n, COST_LATENCY, 1.5, 0, 0, 1), kept = cost_pick(c, n, COST_LATENCY, 1.5, 0.1, 0, 1);
    REQUIRE(fast >= 0 && kept >= 0);
    CHECK(c[fast].mode != COST_DEVICE);
    CHECK(c[kept].mode == COST_DEVICE);
    CHECK(c[kept].total_ms <= 1.1 * c[fast].total_ms);
    n = cost_candidates(&b, NULL, 0, c, COST_MAX_CANDS);
    kept = cost_pick(c, n, COST_LATENCY, 1.5, 0.1, 0, 1);
    CHECK(kept >= 0 && c[kept].mode != COST_DEVICE);
}

TEST(test_cost_time_corrections) {
    /* the speed class is the device's step over the cloud's, in powers of two */
    cost_inputs a = shape("lan", 1, 32, 32), b = shape("lan", 8, 32, 32);
    CHECK_EQ_INT(cost_speed_class(&a), 0);
    CHECK_EQ_INT(cost_speed_class(&b), 3);
    CHECK_EQ_INT(autostate_speed_class(1, 1000), 0);
    CHECK_EQ_INT(autostate_speed_class(1e6, 1), AUTOSTATE_SPEEDS - 1);
    /* the device wins as fast as the cloud; once device runs measured 3x their prediction at this speed, it no
     * longer does, while the same correction at another speed class changes nothing here */
    autostate st;
    autostate_init(&st, 1);
    cost_cand before, after;
    REQUIRE(!strcmp(pick(&a, &st, COST_LATENCY, &before), "device"));
    for (int i = 0; i < 8; i++) {
        autostate_note_scale(&st.time[COST_DEVICE][3].ttft, 10, 30);
        autostate_note_scale(&st.time[COST_DEVICE][3].tbt, 10, 30);
    }
    CHECK(!strcmp(pick(&a, &st, COST_LATENCY, &after), "device"));
    CHECK_NEAR(after.total_ms, before.total_ms, 1e-9);
    b.speed = 3;
    CHECK(!strcmp(pick(&b, &st, COST_LATENCY, &after), "cloud"));
    for (int i = 0; i < 8; i++) {
        autostate_note_scale(&st.time[COST_DEVICE][0].ttft, 10, 30);
        autostate_note_scale(&st.time[COST_DEVICE][0].tbt, 10, 30);
    }
    CHECK(strcmp(pick(&a, &st, COST_LATENCY, &after), "device") != 0);
    cost_cand c[COST_MAX_CANDS];
    int n = cost_candidates(&a, &st, 0, c, COST_MAX_CANDS);
    REQUIRE(n > 0 && c[0].mode == COST_DEVICE);
    CHECK_NEAR(c[0].ttft_scale, 3, 1e-9);
    CHECK_NEAR(c[0].ttft_ms, 3 * before.ttft_ms, 1e-6);
    CHECK_NEAR(c[0].total_ms, 3 * before.total_ms, 1e-6);
    /* auto_learn compares a run with the uncorrected prediction: a run as long as the corrected one keeps 3 */
    metrics mt;
    metrics_start(&mt, "device");
    double t[2] = {c[0].ttft_ms, c[0].ttft_ms + c[0].tbt_ms};
    mt.tokens = 2, mt.t_token = t, mt.fallback_at = -1;
    auto_learn(&st, &c[0], 0, &mt);
    CHECK_NEAR(st.time[COST_DEVICE][0].ttft.scale, 3, 1e-9);
    CHECK_NEAR(st.time[COST_DEVICE][0].tbt.scale, 3, 1e-9);
    /* hat from prior rates (nothing accepted yet) teaches nothing about the model's error */
    cost_cand h = {.mode = COST_HAT, .rates = COST_RATES_PRIOR, .ttft_ms = 1, .tbt_ms = 1, .ttft_scale = 1, .tbt_scale = 1};
    auto_learn(&st, &h, 0, &mt);
    CHECK_EQ_INT(st.time[COST_HAT][0].ttft.samples, 0);
    h.rates = COST_RATES_MEASURED;
    auto_learn(&st, &h, 0, &mt);
    CHECK_EQ_INT(st.time[COST_HAT][0].ttft.samples, 1);
}

TEST(test_cost_pd_is_pdplan) {
    /* the pd candidate is pdplan_auto's plan on the same figures */
    cost_inputs in = shape("wan", 4, 256, 32);
    cost_cand c = {.mode = COST_PD};
    char err[128];
    REQUIRE(cost_predict(&in, &c, err, sizeof err) == 0);
    pd_costs pc;
    pdplan_from_probe(&in.dev, &pc);
    CHECK_NEAR(pc.dev_fixed_ms, 0.4 + 22 * 4.0 + 8, 1e-9);
    CHECK_NEAR(c.tbt_ms, 1.1 * (pc.dev_fixed_ms + pc.dev_pos_ms), 1e-9);
    CHECK(c.ttft_ms < 22 * (4 + 256 * 0.2) + 8); /* the cloud's first token beats the device's prefill */
    CHECK(c.plan.cloud_tokens > 0);
    cost_cand bad = {.mode = COST_SPLIT, .split = 22};
    CHECK(cost_predict(&in, &bad, err, sizeof err) == DUET_EINVAL);
}

TEST(test_autostate_round_trip) {
    autostate st, back;
    autostate_init(&st, 0x0123456789abcdefull);
    autostate_note_ee(&st, 1, 2, 0.8f, 1, 50, 20, 10);
    autostate_note_ee(&st, 1, 2, 0.8f, 1, 50, 5, 5);
    autostate_note_hat(&st, 1, 1, 0, 40, 30);
    autostate_note_scale(&st.cloud, 10, 20);
    autostate_note_scale(&st.time[COST_HAT][3].ttft, 10, 15);
    autostate_note_scale(&st.time[COST_HAT][3].tbt, 10, 40);
    char buf[8192], err[256];
    int n = autostate_format(&st, buf, sizeof buf);
    REQUIRE(n > 0 && n < (int)sizeof buf);
    REQUIRE_MSG(autostate_parse(buf, (size_t)n, st.fingerprint, &back, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(back.n_ee, 1);
    CHECK_EQ_INT(back.ee[0].tokens, 100);
    CHECK_EQ_INT(back.ee[0].exit1, 25);
    CHECK_EQ_INT(back.ee[0].calibrated, 1);
    CHECK_EQ_INT(back.n_hat, 1);
    CHECK_EQ_INT(back.hat[0].accepted, 30);
    CHECK_NEAR(back.cloud.scale, 2, 1e-6);
    CHECK_NEAR(back.time[COST_HAT][3].ttft.scale, 1.5, 1e-6);
    CHECK_NEAR(back.time[COST_HAT][3].tbt.scale, 4, 1e-6);
    CHECK_EQ_INT(back.time[COST_HAT][3].tbt.samples, 1);
    CHECK_NEAR(back.time[COST_HAT][2].tbt.scale, 1, 0);
    CHECK_EQ_INT(back.time[COST_HAT][2].tbt.samples, 0);
    CHECK(autostate_find_ee(&back, 1, 2, 0.8f, 1) != NULL);
    CHECK(autostate_find_ee(&back, 1, 2, 0.9f, 1) == NULL);
    /* another model's file is refused, and the save/load pair agrees */
    CHECK(autostate_parse(buf, (size_t)n, 42, &back, err, sizeof err) == DUET_EINVAL);
    CHECK(strstr(err, "another model") != NULL);
    char path[] = "/tmp/duet-autostate-XXXXXX";
    REQUIRE(mkdtemp(path));
    char file[256];
    snprintf(file, sizeof file, "%s/sub/state.json", path);
    REQUIRE_MSG(autostate_save(&st, file, err, sizeof err) == 0, "%s", err);
    REQUIRE_MSG(autostate_load(file, st.fingerprint, &back, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(back.hat[0].drafted, 40);
    unlink(file);
    snprintf(file, sizeof file, "%s/sub", path);
    rmdir(file);
    rmdir(path);
    /* a missing file is an empty state */
    CHECK(autostate_load("/nonexistent/duet/state.json", 1, &back, err, sizeof err) == 0);
    CHECK_EQ_INT(back.n_ee + back.n_hat, 0);
}

TEST(test_autostate_malformed) {
    static const char *const bad[] = {
        "",
        "[]",
        "{}",
        "{\"duet_state\":2,\"fingerprint\":\"0000000000000001\"}",
        "{\"duet_state\":1}",
        "{\"duet_state\":1,\"fingerprint\":1}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"cloud\":{\"scale\":-1}}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"cloud\":{\"scale\":1e400}}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"cloud\":[]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"ee\":{}}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"ee\":[1]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"ee\":[{\"e1\":2,\"e2\":1,\"threshold\":0.5}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"ee\":[{\"e1\":0,\"e2\":1}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"ee\":[{\"e1\":0,\"e2\":1,\"threshold\":2}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"ee\":[{\"e1\":0,\"e2\":1,\"threshold\":0.5,"
        "\"tokens\":3,\"exit1\":2,\"exit2\":2}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"ee\":[{\"e1\":0.5,\"e2\":1,\"threshold\":0.5}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"hat\":[{\"input_layers\":1,\"output_layers\":1,"
        "\"drafted\":1,\"accepted\":2}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"hat\":[{\"input_layers\":0,\"output_layers\":1}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"hat\":[{\"output_layers\":1}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"hat\":[{\"input_layers\":1,\"output_layers\":1,"
        "\"drafted\":1e300}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"time\":{}}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"time\":[2]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"time\":[{\"speed\":0}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"time\":[{\"mode\":6,\"speed\":0}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"time\":[{\"mode\":1,\"speed\":8}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"time\":[{\"mode\":1,\"speed\":0.5}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"time\":[{\"mode\":1,\"speed\":0,\"ttft\":{\"scale\":0}}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"time\":[{\"mode\":1,\"speed\":0,\"tbt\":3}]}",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\"} trailing",
        "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",",
    };
    char err[256];
    autostate st;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        CHECK_MSG(autostate_parse(bad[i], strlen(bad[i]), 1, &st, err, sizeof err) == DUET_EINVAL, "accepted: %s", bad[i]);
        CHECK_MSG(err[0] != 0 && st.n_ee == 0 && st.n_hat == 0, "case %zu", i);
    }
    /* too many entries */
    char big[16384];
    int n = snprintf(big, sizeof big, "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"hat\":[");
    for (int i = 0; i <= AUTOSTATE_MAX; i++)
        n += snprintf(big + n, sizeof big - (size_t)n, "%s{\"input_layers\":1,\"output_layers\":%d}", i ? "," : "", i + 1);
    n += snprintf(big + n, sizeof big - (size_t)n, "]}");
    CHECK(autostate_parse(big, (size_t)n, 1, &st, err, sizeof err) == DUET_EINVAL);
    n = snprintf(big, sizeof big, "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"time\":[");
    for (int i = 0; i <= AUTOSTATE_MODES * AUTOSTATE_SPEEDS; i++)
        n += snprintf(big + n, sizeof big - (size_t)n, "%s{\"mode\":0,\"speed\":0}", i ? "," : "");
    n += snprintf(big + n, sizeof big - (size_t)n, "]}");
    CHECK(autostate_parse(big, (size_t)n, 1, &st, err, sizeof err) == DUET_EINVAL);
    /* unknown keys are skipped (a later version may add some) */
    const char *ok = "{\"duet_state\":1,\"fingerprint\":\"0000000000000001\",\"later\":[1,2],"
                     "\"hat\":[{\"input_layers\":1,\"output_layers\":1,\"drafted\":4,\"accepted\":2,\"x\":null}]}";
    CHECK_MSG(autostate_parse(ok, strlen(ok), 1, &st, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(st.n_hat, 1);
}

/* --- end to end ------------------------------------------------------------------------------------- */

/* The first line of out parsed as JSON, or NULL. */
static json *first_json(const char *out) {
    const char *nl = strchr(out, '\n');
    char err[128];
    return json_parse(out, nl ? (size_t)(nl - out) : strlen(out), err, sizeof err);
}

TEST(test_auto_cli_greedy_equals_device) {
    char dir[] = "/tmp/duet-auto-XXXXXX";
    REQUIRE(mkdtemp(dir));
    int st;
    char *want = test_run_cli("run --mode device -m models/stories260K.gguf -p 'Once upon a time' -n 24", &st, 0);
    REQUIRE(want && st == 0);
    /* a 200x slower device over a LAN: auto must leave the device (latency), and whatever it picks for each
     * objective, the greedy text is device-only's */
    static const char *const obj[] = {"latency", "privacy", "cloud-cost"};
    for (int i = 0; i < 3; i++) {
        char args[512];
        snprintf(args, sizeof args, "run --mode auto --objective %s -m models/stories260K.gguf -p 'Once upon a time' "
                 "-n 24 --link lan --device-slowdown 200 --state %s/s.json", obj[i], dir);
        char *got = test_run_cli(args, &st, 0);
        REQUIRE(got);
        CHECK_EQ_INT(st, 0);
        CHECK_MSG(!strcmp(got, want), "%s: %s vs %s", obj[i], got, want);
        free(got);
    }
    char args[512];
    snprintf(args, sizeof args, "run --mode auto -m models/stories260K.gguf -p 'Once upon a time' -n 24 --link lan "
             "--device-slowdown 200 --state %s/s.json --json", dir);
    char *out = test_run_cli(args, &st, 0);
    REQUIRE(out && st == 0);
    json *doc = first_json(out);
    REQUIRE_MSG(doc, "%s", out);
    const json_val *a = json_get(json_root(doc), "auto");
    const char *chosen = json_str(json_get(a, "chosen_mode"), NULL);
    REQUIRE(chosen);
    CHECK_MSG(strcmp(chosen, "device") != 0, "chose %s", chosen);
    /* every candidate has its predictions, and the second line is the run's metrics in the chosen mode */
    const json_val *cands = json_get(a, "candidates");
    CHECK(json_len(cands) >= 6);
    for (size_t i = 0; i < json_len(cands); i++) {
        const json_val *c = json_at(cands, i);
        CHECK(json_get(c, "ttft_ms") && json_get(c, "tbt_ms") && json_get(c, "cloud_compute_ms") && json_get(c, "args"));
    }
    const char *line2 = strchr(out, '\n');
    REQUIRE(line2);
    json *m = first_json(line2 + 1);
    REQUIRE_MSG(m, "%s", line2 + 1);
    CHECK(!strcmp(json_str(json_get(json_root(m), "mode"), NULL), chosen));
    json_free(m);
    json_free(doc);
    free(out);
    free(want);
    char file[300];
    snprintf(file, sizeof file, "%s/s.json", dir);
    unlink(file);
    rmdir(dir);
}

/* The probe measures the emulated link: RTT and bandwidth near the profile's (loose bounds: a shared machine). */
TEST(test_auto_probe_measures_link) {
    int st;
    char *out = test_run_cli("run --mode auto -m models/stories260K.gguf -n 4 --link wan --predict-only --json --state none",
                             &st, 0);
    REQUIRE(out && st == 0);
    json *doc = first_json(out);
    REQUIRE_MSG(doc, "%s", out);
    const json_val *p = json_get(json_get(json_root(doc), "auto"), "probe");
    CHECK(!strcmp(json_str(json_get(p, "source"), NULL), "measured"));
    double rtt = json_num(json_get(p, "rtt_ms")), up = json_num(json_get(p, "up_mbps")), down = json_num(json_get(p, "down_mbps"));
    CHECK_MSG(rtt >= 35 && rtt <= 200, "rtt %g ms, the profile says 40", rtt);
    CHECK_MSG(up >= 5 && up <= 60, "up %g Mbit/s, the profile says 20", up);
    CHECK_MSG(down >= 12 && down <= 150, "down %g Mbit/s, the profile says 50", down);
    json_free(doc);
    free(out);
    /* nominal takes the profile's figures exactly */
    out = test_run_cli("run --mode auto -m models/stories260K.gguf -n 4 --link 4g --net nominal --predict-only --json "
                       "--state none", &st, 0);
    REQUIRE(out && st == 0);
    doc = first_json(out);
    REQUIRE(doc);
    p = json_get(json_get(json_root(doc), "auto"), "probe");
    CHECK_NEAR(json_num(json_get(p, "rtt_ms")), 60, 1e-9);
    CHECK_NEAR(json_num(json_get(p, "up_mbps")), 5, 1e-6);
    json_free(doc);
    free(out);
}

TEST(test_auto_cli_state_and_flags) {
    char dir[] = "/tmp/duet-auto-XXXXXX";
    REQUIRE(mkdtemp(dir));
    char file[300], args[600];
    snprintf(file, sizeof file, "%s/s.json", dir);
    FILE *f = fopen(file, "w");
    REQUIRE(f);
    fputs("{\"duet_state\":1, garbage", f);
    fclose(f);
    /* a malformed state file is ignored with a warning, and the run rewrites it */
    int st;
    snprintf(args, sizeof args, "run --mode hat -m models/stories260K.gguf -p 'Once upon a time' -n 24 --state %s", file);
    char *out = test_run_cli(args, &st, 1);
    REQUIRE(out);
    CHECK_EQ_INT(st, 0);
    CHECK_MSG(strstr(out, "ignoring the state file") != NULL, "%s", out);
    free(out);
    size_t len;
    char *text = test_read_file(file, &len);
    REQUIRE(text);
    char err[128];
    json *doc = json_parse(text, len, err, sizeof err);
    REQUIRE_MSG(doc, "%s: %s", err, text);
    const json_val *hat = json_get(json_root(doc), "hat");
    CHECK_EQ_INT(json_len(hat), 1);
    CHECK(json_num(json_get(json_at(hat, 0), "drafted")) > 0); /* hat's measured acceptance is kept */
    json_free(doc);
    free(text);
    /* and auto's next prediction for hat uses it */
    snprintf(args, sizeof args, "run --mode auto -m models/stories260K.gguf -p 'Once upon a time' -n 24 --state %s "
             "--predict-only --json", file);
    out = test_run_cli(args, &st, 0);
    REQUIRE(out && st == 0);
    CHECK_MSG(strstr(out, "\"mode\":\"hat\"") && strstr(out, "\"rates\":\"measured\""), "%s", out);
    free(out);
    /* a fixed mode given the state predicts itself as auto would and keeps its measured times against that */
    snprintf(args, sizeof args, "run --mode cloud -m models/stories260K.gguf -p 'Once upon a time' -n 24 --link lan "
             "--net nominal --state %s", file);
    out = test_run_cli(args, &st, 1);
    CHECK_MSG(out && st == 0, "%s", out ? out : "");
    free(out);
    text = test_read_file(file, &len);
    REQUIRE(text);
    doc = json_parse(text, len, err, sizeof err);
    REQUIRE_MSG(doc, "%s: %s", err, text);
    const json_val *times = json_get(json_root(doc), "time");
    int cloud_entry = 0;
    for (size_t i = 0; i < json_len(times); i++) {
        const json_val *e = json_at(times, i);
        if (json_num(json_get(e, "mode")) == COST_CLOUD && json_num(json_get(e, "speed")) == 0) {
            cloud_entry = 1;
            CHECK(json_num(json_get(json_get(e, "ttft"), "samples")) == 1);
            CHECK(json_num(json_get(json_get(e, "tbt"), "scale")) > 0);
        }
    }
    CHECK_MSG(cloud_entry, "%s", text);
    json_free(doc);
    free(text);
    unlink(file);
    rmdir(dir);
    /* usage errors name the fix */
    out = test_run_cli("run --mode cloud -m models/stories260K.gguf --net nominal", &st, 1);
    CHECK(out && st == 2 && strstr(out, "--state"));
    free(out);
    out = test_run_cli("run --mode device -m models/stories260K.gguf --objective latency", &st, 1);
    CHECK(out && st == 2 && strstr(out, "--mode auto only"));
    free(out);
    out = test_run_cli("run --mode auto -m models/stories260K.gguf --objective speed", &st, 1);
    CHECK(out && st == 2 && strstr(out, "latency, cloud-cost or privacy"));
    free(out);
    out = test_run_cli("run --mode auto -m models/stories260K.gguf --split 2", &st, 1);
    CHECK(out && st == 2 && strstr(out, "chooses"));
    free(out);
    out = test_run_cli("run --help", &st, 0);
    CHECK(out && strstr(out, "--objective") && strstr(out, "--predict-only") && strstr(out, "--state") &&
          strstr(out, "--net") && strstr(out, "--allow-lossy") && strstr(out, "--latency-budget") &&
          strstr(out, "--device-margin"));
    free(out);
}

/* The decision of a --predict-only --net nominal run with these flags (NULL when the run failed). */
static json *decide(const char *flags) {
    char args[512];
    snprintf(args, sizeof args, "run --mode auto -m models/stories260K.gguf -p 'Once upon a time' --net nominal "
             "--predict-only --json --state none %s", flags);
    int st;
    char *out = test_run_cli(args, &st, 0);
    json *doc = out && st == 0 ? first_json(out) : NULL;
    free(out);
    return doc;
}

/* Its chosen mode ("" when the run failed). */
static void chosen_for(const char *flags, char *mode, size_t cap) {
    json *doc = decide(flags);
    const char *m = doc ? json_str(json_get(json_get(json_root(doc), "auto"), "chosen_mode"), NULL) : NULL;
    snprintf(mode, cap, "%s", m ? m : "");
    json_free(doc);
}

/* The first candidate of `mode` in a decision: its predicted `field` (0 when absent). */
static double predicted(const json *doc, const char *mode, const char *field) {
    const json_val *c = doc ? json_get(json_get(json_root(doc), "auto"), "candidates") : NULL;
    for (size_t i = 0; c && i < json_len(c); i++)
        if (!strcmp(json_str(json_get(json_at(c, i), "mode"), NULL), mode))
            return json_num(json_get(json_at(c, i), field));
    return 0;
}

/* End to end, with the link's nominal figures (the device probe is the only measurement): the pick follows
 * the link and the device's slowdown. The margins are set from this build's own device speed, so they hold
 * in an optimized and a sanitizer build alike. */
TEST(test_auto_cli_pick_follows_link_and_slowdown) {
    char a[32], b[32], flags[256];
    /* the device's own step at full speed, then a slowdown that makes it 20 ms. hat (whose device part is a
     * share f of a step) wins over a link of round trip r when step > r / (1 - f): about 2.5 ms for a LAN and
     * 150 ms for 4G at f = 0.6, so 20 ms leaves a margin of 4x or more either way, which a second probe's noise
     * (a loaded machine, a sanitizer build) does not cross */
    json *doc = decide("-n 16 --device-slowdown 1 --link lan");
    double step = predicted(doc, "device", "tbt_ms");
    json_free(doc);
    REQUIRE(step > 0);
    double slow = 20 / step < 1 ? 1 : 20 / step > 1000 ? 1000 : 20 / step;
    /* privacy: hat's round trip per token is cheaper than the device's middle layers over a LAN, not over 4G */
    snprintf(flags, sizeof flags, "-n 16 --objective privacy --device-slowdown %.3f --link lan", slow);
    chosen_for(flags, a, sizeof a);
    snprintf(flags, sizeof flags, "-n 16 --objective privacy --device-slowdown %.3f --link 4g", slow);
    chosen_for(flags, b, sizeof b);
    CHECK_MSG(!strcmp(a, "hat") && !strcmp(b, "device"), "slowdown %.1f: lan: %s, 4g: %s", slow, a, b);
    /* latency over a LAN: a device as fast as the cloud keeps the request; 8x slower, it hands it over */
    chosen_for("-n 4 --device-slowdown 1 --link lan", a, sizeof a);
    chosen_for("-n 4 --device-slowdown 8 --link lan", b, sizeof b);
    CHECK_MSG(!strcmp(a, "device") && b[0] && strcmp(b, "device") != 0, "slowdown 1: %s, 8: %s", a, b);
    /* latency, the same device over both links: slowed so that its 4 tokens take the geometric middle of the
     * cloud's predicted totals over a LAN and over 4G, it loses the LAN and wins 4G by the same factor (about 7x
     * in an optimized build, 2x under a sanitizer, whose in-process cloud is as slow as its device). */
    doc = decide("-n 4 --device-slowdown 1 --link lan"); /* one probe for both, so they share its noise */
    double dev = predicted(doc, "device", "total_ms"), lan = predicted(doc, "cloud", "total_ms");
    json_free(doc);
    doc = decide("-n 4 --device-slowdown 1 --link 4g");
    double g4 = predicted(doc, "cloud", "total_ms");
    json_free(doc);
    REQUIRE(dev > 0 && lan > 0 && g4 > lan);
    double slow_lat = sqrt(lan * g4) / dev < 1 ? 1 : sqrt(lan * g4) / dev;
    snprintf(flags, sizeof flags, "-n 4 --device-slowdown %.3f --link lan", slow_lat);
    chosen_for(flags, a, sizeof a);
    snprintf(flags, sizeof flags, "-n 4 --device-slowdown %.3f --link 4g", slow_lat);
    chosen_for(flags, b, sizeof b);
    CHECK_MSG(a[0] && strcmp(a, "device") != 0 && !strcmp(b, "device"), "slowdown %.1f: lan: %s, 4g: %s", slow_lat,
              a, b);
}
