#include "cases.h"

#include <stdio.h>
#include <string.h>

#include "base/json.h"
#include "test.h"

int cases_load(ref_case *c, int cap) {
    char err[256];
    FILE *f = fopen(TEST_DATA "/stories260K-greedy.jsonl", "r");
    if (!f) return 0;
    static char line[1 << 16];
    int n = 0;
    while (n < cap && fgets(line, sizeof line, f)) {
        json *doc = json_parse(line, strlen(line), err, sizeof err);
        if (!doc) break;
        const json_val *r = json_root(doc), *p = json_get(r, "prompt_ids"), *o = json_get(r, "output_ids");
        c[n].n_prompt = (int)json_len(p);
        c[n].n_out = (int)json_len(o);
        for (int i = 0; i < c[n].n_prompt && i < 64; i++) c[n].prompt[i] = (int)json_num(json_at(p, i));
        for (int i = 0; i < c[n].n_out && i < 64; i++) c[n].out[i] = (int)json_num(json_at(o, i));
        snprintf(c[n].text, sizeof c[n].text, "%s", json_str(json_get(r, "prompt"), NULL));
        json_free(doc);
        if (c[n].n_prompt > 64 || c[n].n_out > 64) break;
        n++;
    }
    fclose(f);
    return n;
}

mode_request cases_request(const ref_case *c, int n) {
    mode_request rq = {c->prompt, c->n_prompt, n, {.temperature = 0, .top_k = 0, .top_p = 1, .seed = 1}, -1};
    return rq;
}

int cases_same_ids(const metrics *mt, const int *want, int n) {
    if (mt->tokens != n) return 0;
    for (int i = 0; i < n; i++)
        if (mt->ids[i] != want[i]) return 0;
    return 1;
}

transport *cases_fake_cloud_accept(transport_listener *l, frame_request *q) {
    transport_opts o = transport_opts_default(LINK_DOWN);
    transport *t = NULL;
    frame_msg m;
    if (transport_accept(l, &o, 5000, &t, NULL, 0)) return NULL;
    if (transport_expect(t, FRAME_HELLO, &m, 5000, NULL, 0) == 0) {
        m.type = FRAME_HELLO_OK;
        transport_send(t, &m, NULL, 0);
    }
    if (transport_expect(t, FRAME_OPEN, &m, 5000, NULL, 0) == 0) {
        uint32_t n_ctx = m.u.open.n_ctx;
        m = (frame_msg){.type = FRAME_OPENED, .session = 7};
        m.u.opened.n_ctx = n_ctx;
        transport_send(t, &m, NULL, 0);
    }
    while (transport_recv(t, &m, 5000, NULL, 0) == 0 && m.type != FRAME_REQUEST) {}
    *q = m.type == FRAME_REQUEST ? m.u.request : (frame_request){0};
    return t;
}

void cases_fake_cloud_end(transport *t, int drop) {
    frame_msg m;
    if (!drop)
        while (transport_recv(t, &m, 5000, NULL, 0) == 0) {}
    transport_flush(t, 1000, NULL, 0);
    transport_free(t);
}
