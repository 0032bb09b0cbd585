/* chat.h: the chat templates duet applies, recognised from tokenizer.chat_template the way llama.cpp's
 * llm_chat_detect_template recognises them (by their marker tokens, not by running the Jinja). */
#ifndef DUET_ENGINE_CHAT_H
#define DUET_ENGINE_CHAT_H

#include <stddef.h>

enum chat_kind { CHAT_LLAMA3 = 1, CHAT_CHATML = 2 };

/* The kind of template tmpl is, or < 0 with a message that quotes its start (NULL tmpl: none in the file). */
int chat_detect(const char *tmpl, char *err, size_t errlen);
/* The text of the end-of-turn token generation stops at ("<|eot_id|>", "<|im_end|>"). */
const char *chat_eot(int kind);
/* One conversation turn as the template writes it, ending where the assistant's reply starts: an optional
 * system message (NULL or "" for none), then the user's. Returns a malloc'd string (caller frees) or NULL. */
char *chat_apply(int kind, const char *system, const char *user);

#endif
