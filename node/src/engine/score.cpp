// The auditor's one-pass scorer (scorer.ts compiles it against the engine's own libllama and
// ggml, and runs one per model file): the model's raw next-token distribution at chosen rows of a
// token sequence, as llama-server reports it with `n_probs` (server-common.cpp
// get_token_probabilities: a softmax of the raw logits, temperature 1, before any sampler), in one
// pass over the sequence.
//
// The pass is cut at the rows wanted: each llama_decode takes the tokens after the previous row up
// to and including the next one (at most n_batch; llama.cpp splits a batch into ubatches of
// n_ubatch), with that row as its only output. The tokens' hidden states and cache entries do not
// depend on how many tokens a batch holds (the per-row matrix products run the same kernels), but
// the output layer's product does depend on how many rows it takes: with several outputs in one
// batch it runs another kernel, and log-probabilities moved by up to 0.4 nats on the CPU build
// against a token-by-token replay. With one output a decode, the output layer computes one row as
// a serving engine's decode step does, and the distributions are the replay's bit for bit
// (bench/auditCalibrate.ts measures it), at the cost of one batched prefill.
//
// Usage: sharedllm-score <model.gguf> <n_ctx> <threads>
// Stdout's first line: {"ready":true,"n_vocab":V,"n_ctx":C}. Then one JSON request per stdin
// line, one JSON answer per stdout line, in order:
//   -> {"tokens":[...],"rows":[r...],"targets":[t...],"top":K}
//   <- {"scores":[{"rank":1..K|null,"logprob":lp,"ids":[...],"logprobs":[...]}...]}
//      or {"error":"..."}
// `rows` (ascending, distinct, < tokens) are the positions in `tokens` whose next-token
// distribution is wanted; `targets[i]` is the token ranked at rows[i]: its rank among the top K
// (null outside them) and its log-probability (ranked or not). The sequence is decoded from an
// empty memory, cleared again after each request. The process ends at the end of stdin (its parent
// gone), so it never outlives the node.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"
#include "nlohmann/json.hpp"

using json = nlohmann::ordered_json;

static void quiet(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static json score_rows(llama_context * ctx, const llama_vocab * vocab, const json & req) {
    const auto tokens = req.at("tokens").get<std::vector<llama_token>>();
    const auto rows = req.at("rows").get<std::vector<int32_t>>();
    const auto targets = req.at("targets").get<std::vector<llama_token>>();
    const size_t top = req.value("top", 1);
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    const int32_t n = (int32_t) tokens.size();
    if (rows.size() != targets.size()) return {{"error", "rows and targets differ in length"}};
    if (n == 0 || (uint32_t) n > llama_n_ctx(ctx)) {
        return {{"error", "the sequence (" + std::to_string(n) + " tokens) does not fit the context (" +
                              std::to_string(llama_n_ctx(ctx)) + ")"}};
    }
    for (llama_token t : tokens) {
        if (t < 0 || t >= n_vocab) return {{"error", "token " + std::to_string(t) + " is outside the vocabulary"}};
    }
    for (size_t i = 0; i < rows.size(); i++) {
        if (rows[i] < 0 || rows[i] >= n || (i > 0 && rows[i] <= rows[i - 1])) {
            return {{"error", "rows must be ascending, distinct and within the sequence"}};
        }
    }

    const int32_t n_batch = (int32_t) llama_n_batch(ctx);
    llama_batch batch = llama_batch_init(n_batch, 0, 1);
    json scores = json::array();
    size_t next = 0;  // the next row to read
    std::string failure;
    std::vector<llama_token_data> cur((size_t) n_vocab);
    for (int32_t start = 0, len = 0; start < n && failure.empty(); start += len) {
        len = std::min(n_batch, n - start);
        // each decode ends at the next row wanted, its only output (see the top of this file)
        if (next < rows.size()) len = std::min(len, rows[next] - start + 1);
        batch.n_tokens = len;
        size_t wanted = next;
        for (int32_t i = 0; i < len; i++) {
            batch.token[i] = tokens[(size_t) (start + i)];
            batch.pos[i] = start + i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            const bool out = wanted < rows.size() && rows[wanted] == start + i;
            batch.logits[i] = out;
            if (out) wanted++;
        }
        const int32_t rc = llama_decode(ctx, batch);
        if (rc != 0) {
            failure = "llama_decode failed (" + std::to_string(rc) + ")";
            break;
        }
        for (; next < wanted; next++) {
            const float * logits = llama_get_logits_ith(ctx, rows[next] - start);
            if (!logits) {
                failure = "no logits for row " + std::to_string(rows[next]);
                break;
            }
            // as get_token_probabilities: partial sort by logit, softmax in that order
            for (llama_token id = 0; id < n_vocab; id++) cur[(size_t) id] = llama_token_data{id, logits[id], 0.0f};
            const size_t k = std::min(top, cur.size());
            std::partial_sort(cur.begin(), cur.begin() + (long) k, cur.end(),
                              [](const llama_token_data & a, const llama_token_data & b) { return a.logit > b.logit; });
            const float max_l = cur[0].logit;
            float cum_sum = 0.0f;
            for (auto & t : cur) {
                t.p = expf(t.logit - max_l);
                cum_sum += t.p;
            }
            const llama_token target = targets[next];
            json rank = nullptr;
            json ids = json::array();
            json logprobs = json::array();
            for (size_t r = 0; r < k; r++) {
                ids.push_back(cur[r].id);
                logprobs.push_back(std::log(cur[r].p / cum_sum));
                if (cur[r].id == target) rank = r + 1;
            }
            json logprob = nullptr;
            if (target >= 0 && target < n_vocab) logprob = std::log(expf(logits[target] - max_l) / cum_sum);
            scores.push_back({{"rank", rank}, {"logprob", logprob}, {"ids", ids}, {"logprobs", logprobs}});
        }
    }
    llama_batch_free(batch);
    llama_memory_clear(llama_get_memory(ctx), true);
    if (!failure.empty()) return {{"error", failure}};
    return {{"scores", scores}};
}

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s <model.gguf> <n_ctx> <threads>\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet, nullptr);
    ggml_backend_load_all();
    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (!model) {
        fprintf(stderr, "could not load the model %s\n", argv[1]);
        return 1;
    }
    // what llama-server's defaults give (common.h)
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t) atoi(argv[2]);
    cparams.n_seq_max = 1;
    cparams.n_threads = atoi(argv[3]);
    cparams.n_threads_batch = cparams.n_threads;
    cparams.swa_full = false;
    cparams.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) {
        fprintf(stderr, "could not make a context of %s tokens\n", argv[2]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::cout << json{{"ready", true}, {"n_vocab", llama_vocab_n_tokens(vocab)}, {"n_ctx", llama_n_ctx(ctx)}}.dump() << std::endl;

    std::string line;
    while (std::getline(std::cin, line)) {
        if (line.empty()) continue;
        json answer;
        try {
            answer = score_rows(ctx, vocab, json::parse(line));
        } catch (const std::exception & e) {
            answer = {{"error", std::string("bad request: ") + e.what()}};
        }
        std::cout << answer.dump(-1, ' ', false, json::error_handler_t::replace) << std::endl;
    }
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
