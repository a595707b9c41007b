// llama.cpp's side of bench/vs_llamacpp.py: the timing loops of llama-bench (tg / pp) and of
// llama-server's parallel slots (one unified batch per step), written against llama.h alone,
// so that only libllama + ggml need building (llama-bench and llama-server also need the
// ~60 heavy files of `common/`, too much compile time for the shared 2-core machine).
//
//   vs_llamacpp_driver MODEL THREADS gen   PROMPT GEN REPS    decode GEN tokens after a PROMPT
//   vs_llamacpp_driver MODEL THREADS pp    PROMPT REPS        prefill a PROMPT-token prompt
//   vs_llamacpp_driver MODEL THREADS batch SEQS PROMPT GEN REPS  SEQS requests at once
//
// Each repetition prints one JSON line {"wall_s": …, "cpu_s": …, "tokens": …}: the timed part
// only (gen: the GEN decode steps, greedy argmax over the logits; pp: the prompt; batch: the
// prompts and all decode steps, as a server answering SEQS simultaneous requests). Prompt
// token ids are the ones bench/vs_llamacpp.py gives lmforge's engine.
#include "llama.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string_view>
#include <vector>

static double now(clockid_t clock) {
    timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int argmax(const float * row, int n) {
    return int(std::max_element(row, row + n) - row);
}

static void quiet(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

// Prompt token ids, as in bench/vs_llamacpp.py: gen (7j)%900+3, pp (11j)%900+3,
// batch row i (13i+7j)%900+3.
static std::vector<llama_token> prompt_ids(int mult, int offset, int n) {
    std::vector<llama_token> ids(n);
    for (int j = 0; j < n; j++) ids[j] = (offset + mult * j) % 900 + 3;
    return ids;
}

struct Timer {
    double wall = now(CLOCK_MONOTONIC), cpu = now(CLOCK_PROCESS_CPUTIME_ID);
    void print(long tokens) const {
        printf("{\"wall_s\": %.6f, \"cpu_s\": %.6f, \"tokens\": %ld}\n",
               now(CLOCK_MONOTONIC) - wall, now(CLOCK_PROCESS_CPUTIME_ID) - cpu, tokens);
        fflush(stdout);
    }
};

// Decode `batch` (all tokens of `seqs` sequences, the last of each kept) and return each
// sequence's greedy next token.
static bool run(llama_context * ctx, llama_batch_ext * batch) {
    int rc = llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch);
    if (rc != 0) fprintf(stderr, "llama_process failed: %d\n", rc);
    llama_synchronize(ctx);
    return rc == 0;
}

static void add(llama_batch_ext * batch, int seq, llama_token token, llama_pos pos, bool out) {
    int idx = llama_batch_ext_add_token(batch, seq, token);
    llama_batch_ext_set_pos(batch, idx, &pos);
    if (out) llama_batch_ext_set_output_logits(batch, idx, true);
}

int main(int argc, char ** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL THREADS gen|pp|batch ARGS…\n", argv[0]);
        return 2;
    }
    const char * mode = argv[3];
    int threads = atoi(argv[2]);
    int seqs = 1, prompt = 0, gen = 0, reps = 1;
    if (std::string_view(mode) == "gen" && argc == 7) {
        prompt = atoi(argv[4]), gen = atoi(argv[5]), reps = atoi(argv[6]);
    } else if (std::string_view(mode) == "pp" && argc == 6) {
        prompt = atoi(argv[4]), reps = atoi(argv[5]);
    } else if (std::string_view(mode) == "batch" && argc == 8) {
        seqs = atoi(argv[4]), prompt = atoi(argv[5]), gen = atoi(argv[6]), reps = atoi(argv[7]);
    } else {
        fprintf(stderr, "bad arguments for mode %s\n", mode);
        return 2;
    }
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) return 1;
    int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = std::max(256, seqs * (prompt + gen + 1));
    cp.n_batch = std::max(512, seqs * prompt);  // every prompt in one batch, as the server would
    cp.n_ubatch = 512;
    cp.n_seq_max = seqs;
    cp.kv_unified = true;
    cp.n_threads = cp.n_threads_batch = threads;
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    llama_batch_ext * batch = llama_batch_ext_init(ctx);

    for (int r = 0; r < reps; r++) {
        llama_memory_clear(llama_get_memory(ctx), true);
        if (std::string_view(mode) == "pp") {
            auto ids = prompt_ids(11, 0, prompt);
            Timer t;
            llama_batch_ext_clear(batch);
            for (int j = 0; j < prompt; j++) add(batch, 0, ids[j], j, j == prompt - 1);
            if (!run(ctx, batch)) return 1;
            argmax(llama_get_logits_ith(ctx, prompt - 1), n_vocab);
            t.print(prompt);
            continue;
        }
        // gen: one sequence, the prompt untimed; batch: `seqs` sequences, all timed.
        std::vector<std::vector<llama_token>> ids(seqs);
        for (int s = 0; s < seqs; s++)
            ids[s] = seqs == 1 ? prompt_ids(7, 0, prompt) : prompt_ids(7, 13 * s, prompt);
        Timer whole;
        llama_batch_ext_clear(batch);
        std::vector<int> last(seqs);
        for (int s = 0; s < seqs; s++)
            for (int j = 0; j < prompt; j++) {
                add(batch, s, ids[s][j], j, j == prompt - 1);
                if (j == prompt - 1) last[s] = s * prompt + j;
            }
        if (!run(ctx, batch)) return 1;
        std::vector<llama_token> next(seqs);
        for (int s = 0; s < seqs; s++) next[s] = argmax(llama_get_logits_ith(ctx, last[s]), n_vocab);
        Timer decode;
        for (int i = 0; i < gen; i++) {
            llama_batch_ext_clear(batch);
            for (int s = 0; s < seqs; s++) add(batch, s, next[s], prompt + i, true);
            if (!run(ctx, batch)) return 1;
            for (int s = 0; s < seqs; s++) next[s] = argmax(llama_get_logits_ith(ctx, s), n_vocab);
        }
        (seqs == 1 ? decode : whole).print(long(seqs) * gen);
    }
    llama_batch_ext_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
