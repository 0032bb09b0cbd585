/* tokenizer.c: the vocabulary, special tokens and decoding for both kinds of tokenizer, and SentencePiece
 * BPE with byte fallback, behaving as llama.cpp's llm_tokenizer_spm (byte-level BPE is bpe.c).
 *
 * Encoding: the text (with a leading space if add_space_prefix) has every ' ' replaced by U+2581 and is
 * split into UTF-8 characters (by lead byte, as llama.cpp does, so invalid UTF-8 still splits). Adjacent
 * symbols whose concatenation is a vocabulary piece are merged, best score first (ties: leftmost), with
 * a binary heap of candidate bigrams; a candidate is stale once either side changed, which its recorded
 * size detects. Symbols left that are not pieces become their <0xXX> byte tokens. (llama.cpp's
 * "resegment" step cannot fire: a merged symbol is a piece by construction, and an unmerged character
 * can never equal the text of a two-symbol bigram.) */
#include "engine/tokenizer.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/hash.h"
#include "engine/bpe.h"

/* GGUF token types (tokenizer.ggml.token_type), numbered as llama.cpp's llama_token_type. */
enum { TT_UNDEFINED, TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE, TT_COUNT };

/* Longest text duet_tokenize takes: bounds its scratch memory (about 70 bytes per input byte). */
#define TOK_MAX_TEXT ((size_t)16 << 20)

struct duet_tokenizer {
    int n_vocab;
    char *text;        /* every piece, each followed by a NUL (pieces are compared by length) */
    uint32_t *off;     /* [n_vocab] start of piece i in text */
    uint32_t *len;     /* [n_vocab] bytes of piece i */
    float *score;      /* [n_vocab] merge priority */
    uint8_t *type;     /* [n_vocab] TT_* */
    uint8_t *byte;     /* [n_vocab] value of a TT_BYTE token */
    int32_t *slot;     /* [mask + 1] open-addressing piece -> id table, -1 empty */
    size_t mask;
    int byte_id[256];  /* token standing for each raw byte in fallback */
    int *user;         /* [n_user] special tokens (control, user-defined, unknown), longest first: split out
                          before encoding (control and unknown ones only when asked) */
    int n_user;
    bpe *bpe;          /* byte-level BPE (tokenizer.ggml.model "gpt2"), or NULL for SentencePiece */
    char *chat_template; /* tokenizer.chat_template, or NULL */
    int bos, eos, unk;
    bool add_space_prefix, add_bos;
};

static uint64_t piece_hash(const char *s, size_t n) {
    hash64 h;
    hash64_init(&h, 0);
    hash64_update(&h, s, n);
    return hash64_final(&h);
}

/* Id of the piece s[n], or -1. */
static int lookup(const duet_tokenizer *t, const char *s, size_t n) {
    for (size_t i = piece_hash(s, n) & t->mask;; i = (i + 1) & t->mask) {
        int32_t id = t->slot[i];
        if (id < 0) return -1;
        if (t->len[id] == n && !memcmp(t->text + t->off[id], s, n)) return id;
    }
}

/* Duplicate pieces map to the last id, as llama.cpp's token_to_id does. */
static void insert(duet_tokenizer *t, int id) {
    const char *s = t->text + t->off[id];
    size_t n = t->len[id];
    for (size_t i = piece_hash(s, n) & t->mask;; i = (i + 1) & t->mask) {
        int32_t old = t->slot[i];
        if (old < 0 || (t->len[old] == n && !memcmp(t->text + t->off[old], s, n))) {
            t->slot[i] = id;
            return;
        }
    }
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Reads an optional token id key into *id (left at its default when absent), checking its range. */
static int get_id(const gguf *g, const char *key, int n_vocab, int *id, char *err, size_t errlen) {
    int64_t v = *id;
    if (gguf_get_i64(g, key, &v) < 0) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: %s is not an integer", key);
    if (v < 0 || v >= n_vocab)
        return err_set(err, errlen, DUET_EFORMAT, "tokenizer: %s = %lld is outside the vocabulary of %d", key,
                       (long long)v, n_vocab);
    *id = (int)v;
    return 0;
}

static int get_flag(const gguf *g, const char *key, bool *out, char *err, size_t errlen) {
    if (gguf_get_bool(g, key, out) < 0) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: %s is not a bool", key);
    return 0;
}

/* Checks an optional per-token array: absent (1), or exactly n elements (0); < 0 with a message. */
static int per_token_arr(const gguf *g, const char *key, size_t n, char *err, size_t errlen) {
    int et;
    size_t m;
    int rc = gguf_get_arr(g, key, &et, &m);
    if (rc < 0) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: %s is not an array", key);
    if (rc == 0 && m != n)
        return err_set(err, errlen, DUET_EFORMAT, "tokenizer: %s has %zu entries for %zu tokens", key, m, n);
    return rc;
}

typedef struct len_id {
    uint32_t len;
    int id;
} len_id;

static int by_len_desc(const void *a, const void *b) {
    const len_id *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static bool is_special(int type) { return type == TT_CONTROL || type == TT_USER_DEFINED || type == TT_UNKNOWN; }

/* The special tokens, longest first (the order llama.cpp splits them out in). */
static int collect_user_tokens(duet_tokenizer *t) {
    int n = 0;
    for (int i = 0; i < t->n_vocab; i++) n += is_special(t->type[i]);
    if (!n) return 0;
    len_id *tmp = malloc((size_t)n * sizeof *tmp);
    t->user = malloc((size_t)n * sizeof *t->user);
    if (!tmp || !t->user) {
        free(tmp);
        return DUET_ENOMEM;
    }
    for (int i = 0, j = 0; i < t->n_vocab; i++)
        if (is_special(t->type[i])) tmp[j++] = (len_id){t->len[i], i};
    qsort(tmp, (size_t)n, sizeof *tmp, by_len_desc);
    for (int j = 0; j < n; j++) t->user[j] = tmp[j].id;
    t->n_user = n;
    free(tmp);
    return 0;
}

static int load(duet_tokenizer *t, const gguf *g, char *err, size_t errlen) {
    const char *model;
    int rc = gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (rc == 1) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: no tokenizer.ggml.model in the file");
    if (rc < 0) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: tokenizer.ggml.model is not a string");
    bool is_bpe = !strcmp(model, "gpt2");
    if (strcmp(model, "llama") && !is_bpe)
        return err_set(err, errlen, DUET_EUNSUPPORTED,
                       "tokenizer: model '%.64s' is not supported ('llama', SentencePiece, or 'gpt2', byte-level BPE)",
                       model);

    const char *tk = "tokenizer.ggml.tokens", *sk = "tokenizer.ggml.scores", *yk = "tokenizer.ggml.token_type";
    int et;
    size_t n;
    rc = gguf_get_arr(g, tk, &et, &n);
    if (rc == 1) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: no %s in the file", tk);
    if (rc < 0 || et != GGUF_STR) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: %s is not an array of strings", tk);
    if (n == 0) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: empty vocabulary");
    if (n > INT32_MAX / 2) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: vocabulary of %zu tokens is too large", n);
    int has_scores = (rc = per_token_arr(g, sk, n, err, errlen)) == 0;
    if (rc < 0) return rc;
    int has_types = (rc = per_token_arr(g, yk, n, err, errlen)) == 0;
    if (rc < 0) return rc;

    t->n_vocab = (int)n;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        if (!gguf_arr_str(g, tk, i, &len)) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: token %zu unreadable", i);
        if (len == 0) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: token %zu is empty", i);
        if (is_bpe && !bpe_utf8_valid(gguf_arr_str(g, tk, i, &len), len))
            return err_set(err, errlen, DUET_EFORMAT, "tokenizer: token %zu in %s is not valid UTF-8", i, tk);
        total += len + 1;
        if (total > UINT32_MAX) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: pieces exceed 4 GiB");
    }
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    t->text = malloc(total);
    t->off = malloc(n * sizeof *t->off);
    t->len = malloc(n * sizeof *t->len);
    t->score = malloc(n * sizeof *t->score);
    t->type = malloc(n);
    t->byte = calloc(n, 1);
    t->slot = malloc(cap * sizeof *t->slot);
    if (!t->text || !t->off || !t->len || !t->score || !t->type || !t->byte || !t->slot)
        return err_set(err, errlen, DUET_ENOMEM, "tokenizer: out of memory for %zu tokens", n);
    t->mask = cap - 1;
    memset(t->slot, 0xff, cap * sizeof *t->slot);

    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *s = gguf_arr_str(g, tk, i, &len);
        memcpy(t->text + at, s, len);
        t->text[at + len] = '\0';
        t->off[i] = (uint32_t)at;
        t->len[i] = (uint32_t)len;
        at += len + 1;

        float sc = 0;
        if (has_scores && (gguf_arr_f32(g, sk, i, &sc) < 0 || !isfinite(sc)))
            return err_set(err, errlen, DUET_EFORMAT, "tokenizer: score of token %zu is not a finite f32", i);
        t->score[i] = sc;
        int64_t ty = TT_NORMAL;
        if (has_types && (gguf_arr_i64(g, yk, i, &ty) < 0 || ty < 0 || ty >= TT_COUNT))
            return err_set(err, errlen, DUET_EFORMAT, "tokenizer: token %zu has an invalid token type", i);
        t->type[i] = (uint8_t)ty;
        if (ty == TT_BYTE) {
            int hi = len == 6 ? hexval(s[3]) : -1, lo = len == 6 ? hexval(s[4]) : -1;
            if (hi < 0 || lo < 0 || memcmp(s, "<0x", 3) || s[5] != '>')
                return err_set(err, errlen, DUET_EFORMAT, "tokenizer: byte token %zu is '%.16s', not <0xXX>", i, s);
            t->byte[i] = (uint8_t)(hi << 4 | lo);
        }
        insert(t, (int)i);
    }

    t->bos = 1, t->eos = 2, t->unk = 0;
    t->add_space_prefix = true, t->add_bos = true;
    if (is_bpe) { /* llama.cpp's defaults for BPE; the keys below override them */
        if (!(t->bpe = bpe_load(g, t->n_vocab, err, errlen))) return DUET_EFORMAT;
        t->bos = t->eos = t->n_vocab > 11 ? 11 : 0;
        t->add_space_prefix = false;
        t->add_bos = bpe_add_bos(t->bpe);
    }
    if ((rc = get_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos, err, errlen)) ||
        (rc = get_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos, err, errlen)) ||
        (rc = get_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk, err, errlen)) ||
        (rc = get_flag(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err, errlen)) ||
        (rc = get_flag(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err, errlen)))
        return rc;

    if ((rc = collect_user_tokens(t))) return err_set(err, errlen, rc, "tokenizer: out of memory");
    const char *tmpl;
    if (gguf_get_str(g, "tokenizer.chat_template", &tmpl) == 0 && !(t->chat_template = strdup(tmpl)))
        return err_set(err, errlen, DUET_ENOMEM, "tokenizer: out of memory");

    /* Byte fallback as llama.cpp's byte_to_token: the <0xXX> piece, else the one-byte piece, else unknown. */
    for (int b = 0; b < 256; b++) {
        char hex[7] = {'<', '0', 'x', "0123456789ABCDEF"[b >> 4], "0123456789ABCDEF"[b & 15], '>', 0};
        char raw = (char)b;
        int id = lookup(t, hex, 6);
        if (id < 0) id = lookup(t, &raw, 1);
        t->byte_id[b] = id < 0 ? t->unk : id;
    }
    return 0;
}

duet_tokenizer *tokenizer_load(const gguf *g, char *err, size_t errlen) {
    duet_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        err_set(err, errlen, DUET_ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    if (load(t, g, err, errlen)) {
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

void tokenizer_free(duet_tokenizer *t) {
    if (!t) return;
    free(t->text);
    free(t->off);
    free(t->len);
    free(t->score);
    free(t->type);
    free(t->byte);
    free(t->slot);
    free(t->user);
    bpe_free(t->bpe);
    free(t->chat_template);
    free(t);
}

duet_tokenizer *duet_tokenizer_load(const char *path, char *err, size_t errlen) {
    gguf *g = gguf_open(path, err, errlen);
    duet_tokenizer *t = g ? tokenizer_load(g, err, errlen) : NULL; /* copies all it keeps */
    if (g && !t) err_prefix(err, errlen, "%s", path);
    gguf_close(g);
    return t;
}

void duet_tokenizer_free(duet_tokenizer *t) { tokenizer_free(t); }

int duet_tokenizer_n_vocab(const duet_tokenizer *t) { return t->n_vocab; }
int duet_tokenizer_bos(const duet_tokenizer *t) { return t->bos; }
int duet_tokenizer_eos(const duet_tokenizer *t) { return t->eos; }

typedef struct sym {
    int prev, next;       /* neighbours in the live chain, -1 at the ends */
    uint32_t start, n;    /* bytes of the normalized text; n == 0 once merged into its left neighbour */
} sym;

typedef struct bigram {
    float score;
    int left, right;
    uint32_t size;        /* left.n + right.n when pushed: stale if that no longer holds */
} bigram;

typedef struct encoder {
    const duet_tokenizer *t;
    const char *s;        /* [m] normalized text */
    size_t m;
    sym *syms;            /* [n_syms] */
    int n_syms;
    bigram *heap;         /* [cap] max-heap on (score, -left) */
    size_t n_heap, cap;
} encoder;

static bool before(const bigram *a, const bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int try_bigram(encoder *e, int left, int right) {
    if (left < 0 || right < 0) return 0;
    uint32_t size = e->syms[left].n + e->syms[right].n;
    int id = lookup(e->t, e->s + e->syms[left].start, size);
    if (id < 0) return 0;
    if (e->n_heap == e->cap) {
        size_t cap = e->cap * 2;
        bigram *h = realloc(e->heap, cap * sizeof *h);
        if (!h) return DUET_ENOMEM;
        e->heap = h;
        e->cap = cap;
    }
    bigram b = {e->t->score[id], left, right, size};
    size_t i = e->n_heap++;
    while (i > 0 && before(&b, &e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = b;
    return 0;
}

static bigram pop(encoder *e) {
    bigram top = e->heap[0], last = e->heap[--e->n_heap];
    size_t i = 0, n = e->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && before(&e->heap[c + 1], &e->heap[c])) c++;
        if (!before(&e->heap[c], &last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = last;
    return top;
}

/* Characters by lead byte, as llama.cpp's unicode_len_utf8 (continuation and invalid bytes count 1,
 * F8..FF count 4); the last one is cut at the end of the text. */
static size_t char_len(const encoder *e, size_t off) {
    static const uint8_t by_high_nibble[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    size_t k = by_high_nibble[(uint8_t)e->s[off] >> 4];
    return k < e->m - off ? k : e->m - off;
}

/* Where encoded ids go: ids[cap] receives the first cap, n counts them all. */
typedef struct sink {
    int *ids;
    int cap, n;
    bool prev_special; /* the last thing emitted was BOS or a special token (or nothing yet) */
    bool parse_special; /* control tokens written in the text are matched too */
} sink;

static void emit(sink *o, int id) {
    if (o->n < o->cap) o->ids[o->n] = id;
    o->n++;
}

static void emit_cb(void *arg, int id) { emit(arg, id); }

/* Merges the symbols of e->s and emits their ids. */
static int encode(encoder *e, sink *o) {
    for (size_t off = 0; off < e->m;) {
        size_t k = char_len(e, off);
        int i = e->n_syms++;
        e->syms[i] = (sym){i - 1, off + k == e->m ? -1 : i + 1, (uint32_t)off, (uint32_t)k};
        off += k;
    }
    int rc;
    for (int i = 1; i < e->n_syms; i++)
        if ((rc = try_bigram(e, i - 1, i))) return rc;
    while (e->n_heap) {
        bigram b = pop(e);
        sym *l = &e->syms[b.left], *r = &e->syms[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) e->syms[r->next].prev = b.left;
        if ((rc = try_bigram(e, l->prev, b.left)) || (rc = try_bigram(e, b.left, l->next))) return rc;
    }
    for (int i = 0; i >= 0; i = e->syms[i].next) {
        const sym *y = &e->syms[i];
        int id = lookup(e->t, e->s + y->start, y->n);
        if (id >= 0) {
            emit(o, id);
            continue;
        }
        for (uint32_t j = 0; j < y->n; j++) emit(o, e->t->byte_id[(uint8_t)e->s[y->start + j]]);
    }
    return 0;
}

/* Encodes one stretch of plain text (len > 0), with a leading space when it starts the text or follows
 * a special token, as llama.cpp does. */
static int encode_fragment(const duet_tokenizer *t, const char *text, size_t len, sink *o) {
    if (t->bpe) {
        o->prev_special = false;
        return bpe_encode(t->bpe, text, len, true, emit_cb, o);
    }
    char *s = malloc(3 * (len + 1)); /* [m] the text with the prefix and every ' ' as U+2581 */
    if (!s) return DUET_ENOMEM;
    encoder e = {.t = t, .s = s};
    if (t->add_space_prefix && o->prev_special) memcpy(s, "\xe2\x96\x81", 3), e.m = 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') memcpy(s + e.m, "\xe2\x96\x81", 3), e.m += 3;
        else s[e.m++] = text[i];
    }
    /* A character may start inside a U+2581 that an invalid lead byte swallowed, so count them. */
    size_t n_chars = 0;
    for (size_t off = 0; off < e.m; off += char_len(&e, off)) n_chars++;
    e.cap = n_chars;
    e.syms = malloc(n_chars * sizeof *e.syms);
    e.heap = malloc(e.cap * sizeof *e.heap);
    int rc = e.syms && e.heap ? encode(&e, o) : DUET_ENOMEM;
    free(s);
    free(e.syms);
    free(e.heap);
    o->prev_special = false;
    return rc;
}

/* Splits text[len] (len > 0) at the special tokens from the k-th on (longest first): user-defined ones
 * always, as llama.cpp does, control and unknown ones when parsing special tokens; encodes the pieces
 * between. Taking one token at a time over every gap gives the same split as llama.cpp's pass-per-token. */
static int partition(const duet_tokenizer *t, const char *text, size_t len, int k, sink *o) {
    for (; k < t->n_user; k++) {
        int id = t->user[k];
        if (t->type[id] != TT_USER_DEFINED && !o->parse_special) continue;
        const char *piece = t->text + t->off[id];
        size_t plen = t->len[id], at = 0;
        const char *hit = memmem(text, len, piece, plen);
        if (!hit) continue;
        int rc;
        for (; hit; hit = memmem(text + at, len - at, piece, plen)) {
            size_t pos = (size_t)(hit - text);
            if (pos > at && (rc = partition(t, text + at, pos - at, k + 1, o))) return rc;
            emit(o, id);
            o->prev_special = true;
            at = pos + plen;
        }
        return at < len ? partition(t, text + at, len - at, k + 1, o) : 0;
    }
    return encode_fragment(t, text, len, o);
}

int duet_tokenize_ex(const duet_tokenizer *t, const char *text, size_t len, int flags, int *ids, int cap) {
    if (!t || (!text && len) || cap < 0 || (cap > 0 && !ids) || len > TOK_MAX_TEXT) return DUET_EINVAL;
    sink o = {ids, cap, 0, true, (flags & DUET_TOK_SPECIAL) != 0};
    /* DUET_TOK_BOS asks for the special prefix; the vocabulary's add_bos_token decides, as in llama.cpp. */
    if ((flags & DUET_TOK_BOS) && t->add_bos) emit(&o, t->bos);
    int rc = len ? partition(t, text, len, 0, &o) : 0;
    return rc ? rc : o.n;
}

int duet_tokenize(const duet_tokenizer *t, const char *text, size_t len, bool add_bos, int *ids, int cap) {
    return duet_tokenize_ex(t, text, len, add_bos ? DUET_TOK_BOS : 0, ids, cap);
}

int duet_token_find(const duet_tokenizer *t, const char *text, size_t len) {
    return t && (text || !len) ? lookup(t, text, len) : DUET_EINVAL;
}

const char *duet_tokenizer_chat_template(const duet_tokenizer *t) { return t->chat_template; }

static int copy_out(const char *s, size_t len, char *buf, size_t cap) {
    if (cap) memcpy(buf, s, len < cap ? len : cap);
    return (int)len;
}

int duet_token_piece_ex(const duet_tokenizer *t, int id, int flags, char *buf, size_t cap) {
    if (!t || id < 0 || id >= t->n_vocab || (cap && !buf)) return DUET_EINVAL;
    const char *s = t->text + t->off[id];
    size_t len = t->len[id], n = 0;
    if ((flags & DUET_TOK_SPECIAL) && (t->type[id] == TT_CONTROL || t->type[id] == TT_UNKNOWN))
        return copy_out(s, len, buf, cap);
    if (t->bpe && t->type[id] == TT_NORMAL) { /* the bytes of its byte-level text; other text as it is */
        size_t raw_len;
        const char *raw = bpe_bytes(t->bpe, id, &raw_len);
        return raw ? copy_out(raw, raw_len, buf, cap) : copy_out(s, len, buf, cap);
    }
    switch (t->type[id]) {
    case TT_NORMAL: /* U+2581 stands for a space */
        for (size_t i = 0; i < len;) {
            bool sp = len - i >= 3 && !memcmp(s + i, "\xe2\x96\x81", 3);
            if (n < cap) buf[n] = sp ? ' ' : s[i];
            n++;
            i += sp ? 3 : 1;
        }
        return (int)n;
    case TT_USER_DEFINED:
        return copy_out(s, len, buf, cap);
    case TT_BYTE:
        if (cap) buf[0] = (char)t->byte[id];
        return 1;
    default: /* control, unknown, unused and undefined tokens print nothing (llama.cpp's special=false) */
        return 0;
    }
}

int duet_token_piece(const duet_tokenizer *t, int id, char *buf, size_t cap) {
    return duet_token_piece_ex(t, id, 0, buf, cap);
}
