/* The KV cache keeps f32 keys and values: exact, and at the context lengths duet serves the cache is small
 * next to the weights. */
#include "engine/kv.h"

#include <stdlib.h>

#include "base/err.h"

duet_kv *duet_kv_init(const duet_model *m, const duet_part *part, int n_ctx, char *err, size_t errlen) {
    const duet_config *c = duet_model_config(m);
    const duet_part *held = duet_model_part(m);
    if (n_ctx <= 0 || n_ctx > (1 << 22)) {
        err_set(err, errlen, DUET_EINVAL, "kv: context of %d positions is out of range", n_ctx);
        return NULL;
    }
    duet_kv *kv = calloc(1, sizeof *kv);
    if (!kv) goto nomem;
    kv->n_layers = c->n_layers;
    kv->n_ctx = n_ctx;
    kv->kv_dim = c->n_kv_heads * c->head_dim;
    kv->len = malloc(sizeof(int) * (size_t)c->n_layers);
    kv->k = calloc((size_t)c->n_layers, sizeof(float *));
    kv->v = calloc((size_t)c->n_layers, sizeof(float *));
    if (!kv->len || !kv->k || !kv->v) goto nomem;
    for (int l = 0; l < c->n_layers; l++) {
        kv->len[l] = -1;
        if (!duet_part_has_layer(part, l)) continue;
        if (!duet_part_has_layer(held, l)) {
            err_set(err, errlen, DUET_EINVAL, "kv: layer %d is not held by the model", l);
            duet_kv_free(kv);
            return NULL;
        }
        size_t n = (size_t)n_ctx * kv->kv_dim;
        kv->k[l] = malloc(n * sizeof(float));
        kv->v[l] = malloc(n * sizeof(float));
        if (!kv->k[l] || !kv->v[l]) goto nomem;
        kv->len[l] = 0;
        kv->bytes += 2 * n * sizeof(float);
    }
    return kv;
nomem:
    duet_kv_free(kv);
    err_set(err, errlen, DUET_ENOMEM, "kv: out of memory for %d positions", n_ctx);
    return NULL;
}

void duet_kv_free(duet_kv *kv) {
    if (!kv) return;
    for (int l = 0; kv->k && l < kv->n_layers; l++) free(kv->k[l]);
    for (int l = 0; kv->v && l < kv->n_layers; l++) free(kv->v[l]);
    free(kv->k);
    free(kv->v);
    free(kv->len);
    free(kv);
}

int duet_kv_len(const duet_kv *kv, int layer) {
    return layer >= 0 && layer < kv->n_layers ? kv->len[layer] : -1;
}

int duet_kv_ctx(const duet_kv *kv) { return kv->n_ctx; }

void duet_kv_truncate(duet_kv *kv, int n) {
    if (n < 0) n = 0;
    for (int l = 0; l < kv->n_layers; l++)
        if (kv->len[l] > n) kv->len[l] = n;
}

size_t duet_kv_bytes(const duet_kv *kv) { return kv->bytes; }
