/* duet generate: device-only text generation, streaming, with speed and metrics. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/text.h"
#include "engine/chat.h"
#include "modes/mode.h"

static const char *USAGE =
    "usage: duet generate -m MODEL [-p TEXT] [-n N] [options]\n"
    "\n"
    "Generates text with every layer on this machine (the device-only baseline), streaming it as it is made,\n"
    "then prints prefill and decode speed.\n"
    "\n"
    "  -m, --model PATH     GGUF model (e.g. models/stories260K.gguf)\n"
    "  -p, --prompt TEXT    prompt (default: empty, i.e. BOS alone)\n"
    "  -n, --tokens N       tokens to generate (default 64); stops early at end-of-sequence\n"
    "      --temp T         sampling temperature; 0 = greedy (default 0)\n"
    "      --top-k K        keep the K most likely tokens; 0 = all (default 0)\n"
    "      --top-p P        keep the smallest set with probability >= P; 1 = all (default 1)\n"
    "      --seed S         random seed for sampling (default 1)\n"
    "  -t, --threads N      compute threads (default: 1; 0 = all CPUs)\n"
    "      --no-bos         do not put BOS before the prompt\n"
    "      --mmap           read the weights in place from the mapped file instead of copying them into\n"
    "                       memory first: starts faster, decodes slower where the kernel reclaims file pages\n"
    "      --ids            print token ids instead of text\n"
    "      --chat           the prompt is a user message: wrap it in the model's chat template (Llama 3 or\n"
    "                       ChatML, recognised from tokenizer.chat_template as llama.cpp does), print only the\n"
    "                       reply, and stop at the end-of-turn token (<|eot_id|>, <|im_end|>)\n"
    "      --system TEXT    with --chat, a system message before the user's\n"
    "      --json           print the metrics (DESIGN section 6) as one JSON object on stdout;\n"
    "                       the generated text then goes to stderr\n"
    "  -h, --help           this text\n";

int cmd_generate(int argc, char **argv) {
    args_gen g = args_gen_default();
    int ids = 0, chat = 0;
    const char *system = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int took = args_gen_take("generate", argc, argv, &i, &g);
        if (took < 0) return 2;
        if (took) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            return 0;
        } else if (!strcmp(a, "--ids")) {
            ids = 1;
        } else if (!strcmp(a, "--chat")) {
            chat = 1;
        } else if (!strcmp(a, "--system")) {
            if (!(system = args_value("generate", argc, argv, &i))) return 2;
        } else {
            fprintf(stderr, "duet generate: unknown option '%s' (see duet generate --help)\n", a);
            return 2;
        }
    }
    const char *model = g.model, *prompt = g.prompt;
    int n_tokens = g.n_tokens, threads = g.threads, json = g.json, bos = g.bos;
    duet_sampling s = g.sampling;
    if (!model) {
        fprintf(stderr, "duet generate: -m MODEL is required, e.g. -m models/stories260K.gguf\n");
        return 2;
    }
    if (system && !chat) {
        fprintf(stderr, "duet generate: --system needs --chat\n");
        return 2;
    }

    char err[512];
    int status = 1;
    duet_model *m = duet_model_load(model, NULL, g.load_flags, err, sizeof err);
    duet_pool *pool = NULL;
    int *prompt_ids = NULL;
    char *formatted = NULL;
    metrics mt;
    metrics_start(&mt, "device");
    if (!m) goto fail;
    const duet_tokenizer *tok = duet_model_tokenizer(m, err, sizeof err);
    if (!tok || !(pool = duet_pool_init(threads, err, sizeof err))) goto fail;
    int n_prompt, eos = duet_tokenizer_eos(tok);
    if (chat) { /* the template's special tokens are parsed; the end of a turn ends the reply */
        int kind = chat_detect(duet_tokenizer_chat_template(tok), err, sizeof err);
        if (kind < 0) goto fail;
        if (!(formatted = chat_apply(kind, system, prompt))) {
            snprintf(err, sizeof err, "out of memory");
            goto fail;
        }
        const char *eot = chat_eot(kind);
        if ((eos = duet_token_find(tok, eot, strlen(eot))) < 0) {
            snprintf(err, sizeof err, "the vocabulary has no %s token for its chat template", eot);
            goto fail;
        }
    }
    if (cli_tokenize_flags(tok, chat ? formatted : prompt, (bos ? DUET_TOK_BOS : 0) | (chat ? DUET_TOK_SPECIAL : 0),
                           &prompt_ids, &n_prompt, err, sizeof err))
        goto fail;
    const duet_config *c = duet_model_config(m);
    if (n_prompt + n_tokens > c->ctx_len)
        fprintf(stderr, "duet generate: note: %d prompt + %d new tokens exceed the model's trained context of %d\n",
                n_prompt, n_tokens, c->ctx_len);

    cli_text o = {tok, json ? stderr : stdout, ids};
    if (!ids && !chat) fputs(prompt, o.f);
    mode_request rq = {prompt_ids, n_prompt, n_tokens, s, eos};
    if (mode_device_run(m, pool, &rq, cli_text_emit, &o, &mt, err, sizeof err)) goto fail;
    fputc('\n', o.f);
    double decode_ms = mt.tokens > 1 ? mt.t_token[mt.tokens - 1] - mt.t_token[0] : 0;
    fprintf(stderr, "prefill: %d tokens in %.1f ms (%.1f tok/s); decode: %d tokens in %.1f ms (%.1f tok/s); %d thread%s\n",
            n_prompt, mt.prefill_ms, mt.prefill_ms > 0 ? n_prompt * 1e3 / mt.prefill_ms : 0, mt.tokens > 0 ? mt.tokens - 1 : 0,
            decode_ms, decode_ms > 0 ? (mt.tokens - 1) * 1e3 / decode_ms : 0, duet_pool_threads(pool),
            duet_pool_threads(pool) == 1 ? "" : "s");
    if (json) metrics_print_json(&mt, stdout);
    status = 0;
    goto out;
fail:
    fprintf(stderr, "duet generate: %s\n", err);
out:
    metrics_free(&mt);
    free(prompt_ids);
    free(formatted);
    duet_pool_free(pool);
    duet_model_free(m);
    return status;
}
