/* bpe.c: byte-level BPE as llama.cpp's llm_tokenizer_bpe.
 *
 * Token texts are stored in GPT-2's byte-to-unicode form (each byte one printable character). Everything
 * here works on the raw bytes instead: each token's text is decoded once at load, so a piece of input is
 * looked up without re-encoding it, and merges become pairs of symbol ids. A symbol is a token, or a merge
 * result / single byte that is not itself a token (llama.cpp compares strings, so those can still merge
 * further); they get ids from n_vocab on.
 *
 * Merging one piece is a binary heap of adjacent pairs by rank (ties: leftmost) over a linked list of
 * symbols, so a long piece (a run of letters or spaces the regex keeps whole) costs O(n log n), not the
 * naive loop's O(n^2). A pair is stale once either side changed, which its recorded byte size detects:
 * a symbol only grows, by absorbing its right neighbour. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "engine/bpe.h"

#include <pcre2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "duet.h"

enum { MAX_RE = 2 };

/* One merge, in one 16-byte slot: looking a pair up costs one cache miss, which is most of encoding. */
struct merge {
    uint64_t key;             /* (left << 32 | right) + 1; 0 empty */
    int32_t rank, out;        /* its rank and the symbol it makes */
};

struct bpe {
    int n_vocab, n_sym;       /* ids >= n_vocab are symbols that are not tokens */
    char *raw;                /* bytes of every symbol */
    uint32_t *off, *len;      /* [n_sym] of raw; len UINT32_MAX: the token's text is not byte-level */
    size_t raw_used, raw_cap, sym_cap;
    int32_t *slot;            /* [mask + 1] raw bytes -> symbol, -1 empty */
    size_t mask;
    struct merge *pair;       /* [pmask + 1] open addressing on (left, right) */
    size_t pmask;
    int byte_sym[256];        /* the symbol of each single byte */
    pcre2_code *re[MAX_RE];   /* applied in turn: each splits the pieces the previous one made */
    int n_re;
    bool ignore_merges;       /* a piece that is a token is taken whole (Llama 3) */
    bool add_bos;
};

/* ---- GPT-2's byte <-> character mapping ------------------------------------------------------------ */

/* Bytes that are printable characters stand for themselves; the other 68 take code points 256.. in order. */
static uint32_t byte_cpt(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return (uint32_t)b;
    int n = 0;
    for (int i = 0; i < b; i++) n += !((i >= 33 && i <= 126) || (i >= 161 && i <= 172) || i >= 174);
    return 256u + (uint32_t)n;
}

/* Strict UTF-8: the code point at s[*i] (advancing *i), or -1 for anything not well formed. */
static int32_t utf8_strict(const uint8_t *s, size_t n, size_t *i) {
    uint8_t c = s[*i];
    int k = c < 0x80 ? 1 : c >= 0xc2 && c < 0xe0 ? 2 : c >= 0xe0 && c < 0xf0 ? 3 : c >= 0xf0 && c < 0xf5 ? 4 : 0;
    if (!k || n - *i < (size_t)k) return -1;
    uint32_t cp = k == 1 ? c : c & (0xff >> (k + 1));
    for (int j = 1; j < k; j++) {
        if ((s[*i + j] & 0xc0) != 0x80) return -1;
        cp = cp << 6 | (s[*i + j] & 0x3f);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) return -1;
    *i += (size_t)k;
    return (int32_t)cp;
}

static size_t utf8_put(uint8_t *d, uint32_t cp) {
    if (cp < 0x80) return d[0] = (uint8_t)cp, 1;
    if (cp < 0x800) return d[0] = (uint8_t)(0xc0 | cp >> 6), d[1] = (uint8_t)(0x80 | (cp & 0x3f)), 2;
    if (cp < 0x10000) {
        d[0] = (uint8_t)(0xe0 | cp >> 12), d[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        d[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    d[0] = (uint8_t)(0xf0 | cp >> 18), d[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
    d[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f)), d[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decodes byte-level text s[n] into dst (at most n bytes) with inv (code point -> byte, -1 for none); the
 * byte count, or -1 if some character is not one of the 256 byte characters (or the text is not UTF-8). */
static long decode_bytes(const int16_t *inv, const char *s, size_t n, char *dst) {
    size_t i = 0, m = 0;
    while (i < n) {
        int32_t cp = utf8_strict((const uint8_t *)s, n, &i);
        if (cp < 0 || cp >= 324 || inv[cp] < 0) return -1;
        dst[m++] = (char)inv[cp];
    }
    return (long)m;
}

/* ---- symbol and pair tables ------------------------------------------------------------------------ */

static uint64_t bytes_hash(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull ^ n;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ h >> 32;
}

/* The symbol with raw bytes s[n], or -1. */
static int sym_find(const bpe *b, const char *s, size_t n) {
    for (size_t i = bytes_hash(s, n) & b->mask;; i = (i + 1) & b->mask) {
        int32_t id = b->slot[i];
        if (id < 0) return -1;
        if (b->len[id] == n && !memcmp(b->raw + b->off[id], s, n)) return id;
    }
}

/* Points raw bytes of symbol id at the table; a later token with the same bytes wins, as in llama.cpp. */
static void sym_index(bpe *b, int id) {
    const char *s = b->raw + b->off[id];
    size_t n = b->len[id];
    for (size_t i = bytes_hash(s, n) & b->mask;; i = (i + 1) & b->mask) {
        int32_t old = b->slot[i];
        if (old < 0 || (b->len[old] == n && !memcmp(b->raw + b->off[old], s, n))) {
            b->slot[i] = id;
            return;
        }
    }
}

/* The symbol for s[n], adding one that is not a token if needed; -1 when out of room (cannot happen with
 * the capacities bpe_load computes). */
static int sym_get(bpe *b, const char *s, size_t n) {
    int id = sym_find(b, s, n);
    if (id >= 0) return id;
    if ((size_t)b->n_sym == b->sym_cap || b->raw_cap - b->raw_used < n) return -1;
    id = b->n_sym++;
    memcpy(b->raw + b->raw_used, s, n);
    b->off[id] = (uint32_t)b->raw_used;
    b->len[id] = (uint32_t)n;
    b->raw_used += n;
    sym_index(b, id);
    return id;
}

static uint64_t pair_hash(uint64_t k) {
    k *= 0x9e3779b97f4a7c15ull;
    return k ^ k >> 31;
}

/* Slot of the pair (left, right): where it is, or the empty slot where it would go. */
static size_t pair_slot(const bpe *b, int left, int right) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32 | (uint32_t)right) + 1;
    size_t i = pair_hash(key) & b->pmask;
    while (b->pair[i].key && b->pair[i].key != key) i = (i + 1) & b->pmask;
    return i;
}

/* ---- loading ------------------------------------------------------------------------------------------ */

/* The pre-tokenizers: llama.cpp's regexes for each tokenizer.ggml.pre (src/llama-vocab.cpp), with the
 * GPT-2 fallback alternative `\s+` written out (llama.cpp's own GPT-2 splitter behaves so). */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define RE_LLAMA3_HEAD "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
#define RE_LLAMA3_TAIL "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

static const struct pre {
    const char *name;
    const char *re[MAX_RE];
    bool ignore_merges, add_bos;
} PRE[] = {
    {"gpt-2", {RE_GPT2}, false, false},
    {"llama-bpe", {RE_LLAMA3_HEAD "\\p{N}{1,3}" RE_LLAMA3_TAIL}, true, true},
    {"llama3", {RE_LLAMA3_HEAD "\\p{N}{1,3}" RE_LLAMA3_TAIL}, true, true},
    {"llama-v3", {RE_LLAMA3_HEAD "\\p{N}{1,3}" RE_LLAMA3_TAIL}, true, true},
    {"qwen2", {RE_LLAMA3_HEAD "\\p{N}" RE_LLAMA3_TAIL}, false, false},
    {"deepseek-r1-qwen", {RE_LLAMA3_HEAD "\\p{N}" RE_LLAMA3_TAIL}, false, false},
    {"smollm", {"\\p{N}", RE_GPT2}, false, false},
};

static int load_pre(bpe *b, const gguf *g, char *err, size_t errlen) {
    const char *name;
    int rc = gguf_get_str(g, "tokenizer.ggml.pre", &name);
    if (rc == 1)
        return err_set(err, errlen, DUET_EFORMAT,
                       "tokenizer: tokenizer.ggml.pre is missing; a gpt2 (byte-level BPE) vocabulary must name its "
                       "pre-tokenizer (duet knows gpt-2, llama-bpe, qwen2, smollm)");
    if (rc < 0) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: tokenizer.ggml.pre is not a string");
    const struct pre *p = NULL;
    for (size_t i = 0; i < sizeof PRE / sizeof PRE[0]; i++)
        if (!strcmp(name, PRE[i].name)) p = &PRE[i];
    if (!p)
        return err_set(err, errlen, DUET_EUNSUPPORTED,
                       "tokenizer: pre-tokenizer '%.64s' (tokenizer.ggml.pre) is not one duet knows "
                       "(gpt-2, llama-bpe, llama3, qwen2, deepseek-r1-qwen, smollm)", name);
    b->ignore_merges = p->ignore_merges;
    b->add_bos = p->add_bos;
    for (int i = 0; i < MAX_RE && p->re[i]; i++) {
        int code;
        PCRE2_SIZE at;
        b->re[i] = pcre2_compile((PCRE2_SPTR)p->re[i], PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code, &at, NULL);
        if (!b->re[i]) {
            char msg[128];
            pcre2_get_error_message(code, (PCRE2_UCHAR *)msg, sizeof msg);
            return err_set(err, errlen, DUET_ERR, "tokenizer: PCRE2 refuses the '%s' regex at %zu: %s", name,
                           (size_t)at, msg);
        }
        b->n_re = i + 1;
        /* Without JIT (a PCRE2 built without it) the interpreter gives the same matches, slower. */
        pcre2_jit_compile(b->re[i], PCRE2_JIT_COMPLETE);
    }
    return 0;
}

static int load(bpe *b, const gguf *g, int n_vocab, char *err, size_t errlen) {
    int rc;
    if ((rc = load_pre(b, g, err, errlen))) return rc;
    const char *tk = "tokenizer.ggml.tokens", *mk = "tokenizer.ggml.merges";
    int et;
    size_t n_merges;
    rc = gguf_get_arr(g, mk, &et, &n_merges);
    if (rc == 1)
        return err_set(err, errlen, DUET_EFORMAT, "tokenizer: %s is missing (a gpt2 vocabulary needs its merges)", mk);
    if (rc < 0 || et != GGUF_STR) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: %s is not an array of strings", mk);
    if (n_merges > INT32_MAX / 4) return err_set(err, errlen, DUET_EFORMAT, "tokenizer: %zu merges are too many", n_merges);

    size_t text = 0;
    for (int i = 0; i < n_vocab; i++) {
        size_t len;
        gguf_arr_str(g, tk, (size_t)i, &len);
        text += len;
    }
    for (size_t i = 0; i < n_merges; i++) {
        size_t len;
        gguf_arr_str(g, mk, i, &len);
        text += len;
    }
    b->n_vocab = n_vocab;
    b->sym_cap = (size_t)n_vocab + n_merges + 256;
    b->raw_cap = text + 256;
    size_t cap = 16, pcap = 16;
    while (cap < 2 * b->sym_cap) cap *= 2;
    while (pcap < 2 * n_merges) pcap *= 2;
    b->raw = malloc(b->raw_cap);
    b->off = malloc(b->sym_cap * sizeof *b->off);
    b->len = malloc(b->sym_cap * sizeof *b->len);
    b->slot = malloc(cap * sizeof *b->slot);
    b->pair = calloc(pcap, sizeof *b->pair);
    if (!b->raw || !b->off || !b->len || !b->slot || !b->pair)
        return err_set(err, errlen, DUET_ENOMEM, "tokenizer: out of memory for %d tokens and %zu merges", n_vocab,
                       n_merges);
    memset(b->slot, 0xff, cap * sizeof *b->slot);
    b->mask = cap - 1;
    b->pmask = pcap - 1;

    int16_t inv[324]; /* code point -> byte */
    for (int c = 0; c < 324; c++) inv[c] = -1;
    for (int c = 0; c < 256; c++) inv[byte_cpt(c)] = (int16_t)c;

    b->n_sym = n_vocab;
    for (int i = 0; i < n_vocab; i++) {
        size_t len;
        const char *s = gguf_arr_str(g, tk, (size_t)i, &len);
        long m = decode_bytes(inv, s, len, b->raw + b->raw_used);
        b->off[i] = (uint32_t)b->raw_used;
        if (m < 0) {
            b->len[i] = UINT32_MAX; /* special text (e.g. CJK in an added token): never a BPE symbol */
            continue;
        }
        b->len[i] = (uint32_t)m;
        b->raw_used += (size_t)m;
        sym_index(b, i);
    }
    for (int c = 0; c < 256; c++) {
        char ch = (char)c;
        b->byte_sym[c] = sym_get(b, &ch, 1);
    }

    /* Two passes: a merge's parts may be made by merges of higher rank, so every result gets its symbol
     * before any part is looked up. A part that is never made cannot occur in a piece: its merge is dropped. */
    char *tmp = malloc(text + 1);
    if (!tmp) return err_set(err, errlen, DUET_ENOMEM, "tokenizer: out of memory for %zu merges", n_merges);
    for (int pass = 0; pass < 2 && !rc; pass++) {
        for (size_t i = 0; i < n_merges; i++) {
            size_t len;
            const char *s = gguf_arr_str(g, mk, i, &len);
            const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL; /* llama.cpp: find(' ', 1) */
            if (!sp) {
                rc = err_set(err, errlen, DUET_EFORMAT,
                             "tokenizer: merge %zu ('%.40s') in %s is not two parts separated by a space", i, s, mk);
                break;
            }
            size_t la = (size_t)(sp - s);
            long ma = decode_bytes(inv, s, la, tmp), mb = ma < 0 ? -1 : decode_bytes(inv, sp + 1, len - la - 1, tmp + ma);
            if (ma <= 0 || mb <= 0) {
                rc = err_set(err, errlen, DUET_EFORMAT,
                             "tokenizer: merge %zu ('%.40s') in %s has a part that is empty or not byte-level text", i,
                             s, mk);
                break;
            }
            if (pass == 0) {
                if (sym_get(b, tmp, (size_t)(ma + mb)) < 0) {
                    rc = err_set(err, errlen, DUET_ERR, "tokenizer: symbol table full");
                    break;
                }
                continue;
            }
            int x = sym_find(b, tmp, (size_t)ma), y = sym_find(b, tmp + ma, (size_t)mb);
            if (x < 0 || y < 0) continue;
            size_t at = pair_slot(b, x, y);
            if (b->pair[at].key) continue; /* duplicates: the first (best) rank stays, as in llama.cpp */
            b->pair[at] = (struct merge){((uint64_t)(uint32_t)x << 32 | (uint32_t)y) + 1, (int32_t)i,
                                         sym_find(b, tmp, (size_t)(ma + mb))};
        }
    }
    free(tmp);
    return rc;
}

bpe *bpe_load(const gguf *g, int n_vocab, char *err, size_t errlen) {
    bpe *b = calloc(1, sizeof *b);
    if (!b) {
        err_set(err, errlen, DUET_ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    if (load(b, g, n_vocab, err, errlen)) {
        bpe_free(b);
        return NULL;
    }
    return b;
}

void bpe_free(bpe *b) {
    if (!b) return;
    for (int i = 0; i < MAX_RE; i++) pcre2_code_free(b->re[i]);
    free(b->raw);
    free(b->off);
    free(b->len);
    free(b->slot);
    free(b->pair);
    free(b);
}

bool bpe_utf8_valid(const char *s, size_t n) {
    for (size_t i = 0; i < n;)
        if (utf8_strict((const uint8_t *)s, n, &i) < 0) return false;
    return true;
}

bool bpe_add_bos(const bpe *b) { return b->add_bos; }

const char *bpe_bytes(const bpe *b, int id, size_t *len) {
    if (id < 0 || id >= b->n_vocab || b->len[id] == UINT32_MAX) return NULL;
    *len = b->len[id];
    return b->raw + b->off[id];
}

/* ---- encoding ------------------------------------------------------------------------------------------ */

typedef struct sym {
    int prev, next;      /* neighbours in the live chain, -1 at the ends */
    int id;              /* symbol */
    uint32_t start, n;   /* bytes of the text; n == 0 once merged into its left neighbour */
} sym;

typedef struct cand {
    int32_t rank, out;   /* of the merge; out is the symbol it makes */
    int left, right;
    uint32_t size;       /* left.n + right.n when pushed: stale if that no longer holds */
} cand;

/* Pieces seen before in the same text: English repeats its words, and their merges cost more than a look-up.
 * Direct-mapped; short pieces with few tokens only. */
enum { CACHE_WORD = 22, CACHE_IDS = 9, CACHE_FROM = 4096 /* bytes of text */, CACHE_MAX = 1 << 16 /* slots */ };

typedef struct cached {
    uint8_t len, n;          /* bytes of word, ids; len 0 empty */
    char word[CACHE_WORD];
    int32_t ids[CACHE_IDS];
} cached;

typedef struct work {
    const bpe *b;
    const char *s;       /* [m] the text, valid UTF-8 */
    bpe_emit_fn emit;
    void *arg;
    pcre2_match_data *md;
    sym *syms;           /* [cap] symbols of the current piece */
    cand *heap;          /* [3 * cap] min-heap on (rank, left): every merge pushes at most two */
    size_t cap, n_heap;
    cached *cache;       /* [cache_mask + 1], or NULL for short texts */
    size_t cache_mask;
    int32_t rec[CACHE_IDS]; /* ids of the current piece, for the cache */
    int n_rec;           /* how many; > CACHE_IDS: too many to cache */
} work;

static void out(work *w, int id) {
    if (w->n_rec < CACHE_IDS) w->rec[w->n_rec] = id;
    w->n_rec++;
    w->emit(w->arg, id);
}

static bool before(const cand *x, const cand *y) { return x->rank < y->rank || (x->rank == y->rank && x->left < y->left); }

static void push(work *w, int left, int right) {
    if (left < 0 || right < 0) return;
    const bpe *b = w->b;
    const sym *l = &w->syms[left], *r = &w->syms[right];
    size_t at = pair_slot(b, l->id, r->id);
    if (!b->pair[at].key) return;
    cand c = {b->pair[at].rank, b->pair[at].out, left, right, l->n + r->n};
    size_t i = w->n_heap++;
    while (i > 0 && before(&c, &w->heap[(i - 1) / 2])) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = c;
}

static cand pop(work *w) {
    cand top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && before(&w->heap[c + 1], &w->heap[c])) c++;
        if (!before(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

/* A symbol that is not a token: llama.cpp then emits the tokens of the single bytes of its byte-level
 * text, which exist only for the printable ASCII bytes (the other characters take two bytes). */
static void emit_sym(work *w, int id, uint32_t start, uint32_t n) {
    const bpe *b = w->b;
    if (id < b->n_vocab) {
        out(w, id);
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)w->s[start + i];
        if (c >= 33 && c <= 126 && b->byte_sym[c] < b->n_vocab) out(w, b->byte_sym[c]);
    }
}

static int merge(work *w, size_t start, size_t n);

/* Emits the tokens of one piece s[start, start+n), from the cache when it was seen before. */
static int word(work *w, size_t start, size_t n) {
    if (!w->cache || n > CACHE_WORD) return merge(w, start, n);
    const char *s = w->s + start;
    cached *c = &w->cache[bytes_hash(s, n) & w->cache_mask];
    if (c->len == n && !memcmp(c->word, s, n)) {
        for (int i = 0; i < c->n; i++) w->emit(w->arg, c->ids[i]);
        return 0;
    }
    w->n_rec = 0;
    int rc = merge(w, start, n);
    if (!rc && w->n_rec <= CACHE_IDS) {
        c->len = (uint8_t)n;
        c->n = (uint8_t)w->n_rec;
        memcpy(c->word, s, n);
        memcpy(c->ids, w->rec, sizeof(int32_t) * (size_t)w->n_rec);
    }
    return rc;
}

/* Merges one piece s[start, start+n) and emits its tokens. */
static int merge(work *w, size_t start, size_t n) {
    const bpe *b = w->b;
    const char *s = w->s + start;
    if (n == 1) {
        emit_sym(w, b->byte_sym[(uint8_t)s[0]], (uint32_t)start, 1);
        return 0;
    }
    if (b->ignore_merges) {
        int id = sym_find(b, s, n);
        if (id >= 0 && id < b->n_vocab) {
            out(w, id);
            return 0;
        }
    }
    if (n > w->cap) { /* grows to the longest piece of the text, once */
        size_t cap = n < 64 ? 64 : n;
        free(w->syms);
        free(w->heap);
        w->syms = malloc(cap * sizeof *w->syms);
        w->heap = malloc(3 * cap * sizeof *w->heap);
        w->cap = w->syms && w->heap ? cap : 0;
        if (!w->cap) return DUET_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        w->syms[i] = (sym){(int)i - 1, i + 1 == n ? -1 : (int)i + 1, b->byte_sym[(uint8_t)s[i]],
                           (uint32_t)(start + i), 1};
    w->n_heap = 0;
    for (size_t i = 1; i < n; i++) push(w, (int)i - 1, (int)i);
    while (w->n_heap) {
        cand c = pop(w);
        sym *l = &w->syms[c.left], *r = &w->syms[c.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != c.size) continue;
        l->id = c.out;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) w->syms[r->next].prev = c.left;
        push(w, l->prev, c.left);
        push(w, c.left, l->next);
    }
    for (int i = 0; i >= 0; i = w->syms[i].next) emit_sym(w, w->syms[i].id, w->syms[i].start, w->syms[i].n);
    return 0;
}

/* Splits s[start, end) with regex k (matches and the gaps between them are pieces), and each piece with
 * the regexes after it; the last level merges. */
static int split(work *w, int k, size_t start, size_t end) {
    if (k == w->b->n_re) return word(w, start, end - start);
    const PCRE2_SPTR subj = (PCRE2_SPTR)w->s + start;
    const size_t n = end - start;
    size_t pos = 0, gap = 0;
    int rc;
    while (pos < n) {
        int m = pcre2_match(w->b->re[k], subj, n, pos, PCRE2_NO_UTF_CHECK, w->md, NULL);
        if (m == PCRE2_ERROR_NOMATCH) break;
        if (m < 0) return DUET_ERR;
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
        const size_t ms = ov[0], me = ov[1]; /* the levels below reuse the match data */
        if (me == ms) { /* no pre-tokenizer matches empty text; step over a character if one did */
            for (pos = ms + 1; pos < n && (subj[pos] & 0xc0) == 0x80; pos++) {}
            continue;
        }
        if (ms > gap && (rc = split(w, k + 1, start + gap, start + ms))) return rc;
        if ((rc = split(w, k + 1, start + ms, start + me))) return rc;
        pos = gap = me;
    }
    return gap < n ? split(w, k + 1, start + gap, end) : 0;
}

/* Copies in[n] to out (room for 3n) as llama.cpp's unicode_cpts_from_utf8 reads it: a lead byte with its
 * continuation bytes is one code point (overlong forms too, written back in shortest form); a byte that
 * cannot start one becomes U+FFFD. Surrogates and code points past U+10FFFF, which llama.cpp passes on,
 * become U+FFFD here too: PCRE2 matches only well-formed UTF-8. */
static size_t sanitize(const uint8_t *in, size_t n, uint8_t *out) {
    size_t i = 0, m = 0;
    while (i < n) {
        uint8_t c = in[i];
        if (c < 0x80) {
            out[m++] = c, i++;
            continue;
        }
        int k = (c & 0x40) == 0 ? 0 : (c & 0x20) == 0 ? 2 : (c & 0x10) == 0 ? 3 : (c & 0x08) == 0 ? 4 : 0;
        uint32_t cp = k ? c & (0x7f >> k) : 0;
        bool ok = k && n - i >= (size_t)k;
        for (int j = 1; ok && j < k; j++) {
            ok = (in[i + j] & 0xc0) == 0x80;
            cp = cp << 6 | (in[i + j] & 0x3f);
        }
        if (!ok) {
            m += utf8_put(out + m, 0xfffd);
            i++;
            continue;
        }
        if (cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) cp = 0xfffd;
        m += utf8_put(out + m, cp);
        i += (size_t)k;
    }
    return m;
}

int bpe_encode(const bpe *b, const char *text, size_t len, bool cache, bpe_emit_fn emit, void *arg) {
    if (!len) return 0;
    char *s = malloc(3 * len);
    work w = {.b = b, .s = s, .emit = emit, .arg = arg, .md = pcre2_match_data_create(1, NULL)};
    if (cache && len >= CACHE_FROM) { /* about one slot per 8 bytes of text; optional: NULL works too */
        size_t slots = 512;
        while (slots < len / 8 && slots < CACHE_MAX) slots *= 2;
        w.cache = calloc(slots, sizeof *w.cache);
        w.cache_mask = slots - 1;
    }
    int rc = DUET_ENOMEM;
    if (s && w.md) rc = split(&w, 0, 0, sanitize((const uint8_t *)text, len, (uint8_t *)s));
    pcre2_match_data_free(w.md);
    free(w.cache);
    free(w.syms);
    free(w.heap);
    free(s);
    return rc;
}
