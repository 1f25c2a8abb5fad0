/* llama-probe: what the GGUF export tests compare against transformers, computed by llama.cpp itself.
 *
 *   llama-probe MODEL.gguf N_NEW --text PROMPT     (llama.cpp tokenizes PROMPT: special tokens parsed,
 *                                                   BOS added when the file asks for it)
 *   llama-probe MODEL.gguf N_NEW --ids 1,2,3       (exact token ids, bypassing the tokenizer)
 *
 * stdout, one line each:
 *   tokens ID...            the prompt's token ids
 *   logits POS V0 V1 ...    the logits at every prompt position
 *   greedy ID...            N_NEW argmax tokens after the prompt; it does not stop at end-of-generation,
 *                           so the caller can compare a fixed length
 * llama.cpp's own warnings and errors go to stderr; exit status 1 on any failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet_log(enum ggml_log_level level, const char *text, void *user_data) {
    (void) user_data;
    if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) if (v[i] > v[best]) best = i;
    return best;
}

static int prompt_tokens(const struct llama_vocab *vocab, const char *mode, const char *arg,
                         llama_token *out, int max) {
    if (strcmp(mode, "--text") == 0)
        return llama_tokenize(vocab, arg, (int) strlen(arg), out, max, true, true);
    if (strcmp(mode, "--ids") != 0) return -1;
    int n = 0;
    for (const char *p = arg; *p && n < max; ) {
        char *end;
        out[n++] = (llama_token) strtol(p, &end, 10);
        if (end == p) return -1;
        p = *end == ',' ? end + 1 : end;
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf N_NEW (--text PROMPT | --ids 1,2,3)\n", argv[0]);
        return 1;
    }
    const int n_new = atoi(argv[2]);
    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    struct llama_model *model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    llama_token prompt[512];
    const int n_prompt = prompt_tokens(vocab, argv[3], argv[4], prompt, 512);
    if (n_prompt <= 0) { fprintf(stderr, "bad prompt (%s)\n", argv[3]); return 1; }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = (uint32_t) (n_prompt + n_new + 8);
    cp.n_threads = cp.n_threads_batch = 2;
    cp.type_k = cp.type_v = GGML_TYPE_F32;  /* keep the cache out of the comparison's rounding error */
    cp.no_perf = true;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create a context\n"); return 1; }

    struct llama_batch batch = llama_batch_init(n_prompt, 0, 1);
    printf("tokens");
    for (int i = 0; i < n_prompt; i++) {
        batch.token[i] = prompt[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
        printf(" %d", prompt[i]);
    }
    batch.n_tokens = n_prompt;
    printf("\n");
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decoding the prompt failed\n"); return 1; }
    for (int i = 0; i < n_prompt; i++) {
        const float *row = llama_get_logits_ith(ctx, i);
        printf("logits %d", i);
        for (int v = 0; v < n_vocab; v++) printf(" %.6g", row[v]);
        printf("\n");
    }

    printf("greedy");
    llama_token next = argmax(llama_get_logits_ith(ctx, n_prompt - 1), n_vocab);
    for (int step = 0; step < n_new; step++) {
        printf(" %d", next);
        if (step + 1 == n_new) break;
        if (llama_decode(ctx, llama_batch_get_one(&next, 1)) != 0) { fprintf(stderr, "decoding failed\n"); return 1; }
        next = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
    }
    printf("\n");

    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
