/* chat.c: Llama 3 and ChatML (Qwen2/2.5/3, SmolLM) prompts, written as llama.cpp's llm_chat_apply_template
 * writes them for LLM_CHAT_TEMPLATE_LLAMA_3 and LLM_CHAT_TEMPLATE_CHATML. */
#include "engine/chat.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "duet.h"

int chat_detect(const char *tmpl, char *err, size_t errlen) {
    if (!tmpl)
        return err_set(err, errlen, DUET_EUNSUPPORTED,
                       "the model has no chat template (tokenizer.chat_template); run without --chat");
    if (strstr(tmpl, "<|start_header_id|>") && strstr(tmpl, "<|end_header_id|>")) return CHAT_LLAMA3;
    if (strstr(tmpl, "<|im_start|>")) return CHAT_CHATML;
    char head[61];
    size_t n = 0;
    for (const char *p = tmpl; *p && n < sizeof head - 1; p++) head[n++] = isprint((unsigned char)*p) ? *p : ' ';
    head[n] = '\0';
    return err_set(err, errlen, DUET_EUNSUPPORTED,
                   "the chat template is not one duet knows (Llama 3: <|start_header_id|>, ChatML: <|im_start|>); it "
                   "starts '%s%s'", head, strlen(tmpl) > n ? "..." : "");
}

const char *chat_eot(int kind) { return kind == CHAT_LLAMA3 ? "<|eot_id|>" : "<|im_end|>"; }

/* Llama 3's template trims each message. */
static void trimmed(const char *s, const char **start, int *len) {
    size_t a = 0, b = strlen(s);
    while (a < b && isspace((unsigned char)s[a])) a++;
    while (b > a && isspace((unsigned char)s[b - 1])) b--;
    *start = s + a;
    *len = (int)(b - a);
}

char *chat_apply(int kind, const char *system, const char *user) {
    bool sys = system && *system;
    size_t cap = strlen(user) + (sys ? strlen(system) : 0) + 256;
    char *out = malloc(cap);
    if (!out) return NULL;
    const char *s, *u;
    int sl = 0, ul;
    if (sys) trimmed(system, &s, &sl);
    if (kind == CHAT_LLAMA3) {
        trimmed(user, &u, &ul);
        int n = 0;
        if (sys) n = snprintf(out, cap, "<|start_header_id|>system<|end_header_id|>\n\n%.*s<|eot_id|>", sl, s);
        snprintf(out + n, cap - (size_t)n,
                 "<|start_header_id|>user<|end_header_id|>\n\n%.*s<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n", ul, u);
    } else {
        int n = 0;
        if (sys) n = snprintf(out, cap, "<|im_start|>system\n%s<|im_end|>\n", system);
        snprintf(out + n, cap - (size_t)n, "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", user);
    }
    return out;
}
