/* kv.h: the engine side of duet_kv: per-layer key/value rows of one session. */
#ifndef DUET_ENGINE_KV_H
#define DUET_ENGINE_KV_H

#include "duet.h"

struct duet_kv {
    int n_layers, n_ctx, kv_dim;
    int *len;  /* [n_layers]: positions stored; -1 where the layer is not held */
    float **k; /* [n_layers] -> [n_ctx][kv_dim], NULL where not held */
    float **v; /* same */
    size_t bytes;
};

#endif
