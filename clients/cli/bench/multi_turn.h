// `tandem bench --conversations C`: a multi-turn chat workload. Every conversation opens with the
// same system prompt; turn t's prompt is the chat so far — the system prompt, then each earlier
// turn's user text and the answer the model actually gave — plus a new user turn. Prompts are
// token ids (exact lengths on every target; answers carried over as the ids that came back), so
// the target must report output ids: gRPC or the in-process engine.
//
// Turns run in lockstep: the C conversations send turn t together and turn t + 1 starts once
// every turn t has ended (a conversation's turns are sequential, as a user's would be). That
// gives each turn index its own window, so the servers' counters scraped before and after it
// (--metrics) belong to that turn alone. A conversation whose turn failed sends no more turns.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "targets.h"
#include "workload.h"

namespace tandem::bench {

struct MultiTurnSpec {
  int32_t conversations = 4;
  int32_t turns = 4;
  int32_t system_len = 512;  // shared system prompt tokens
  int32_t user_len = 64;     // tokens of each user turn
  int32_t answer_len = 32;   // tokens of each answer (EOS ignored)
  float temperature = 0.0f;
  uint64_t seed = 0;
  // /metrics URLs scraped around each turn (prefill figures; see server_metrics.h). Default:
  // none.
  std::vector<std::string> metrics_urls;
  // Keep every request's figures in the summary. Default: false.
  bool per_request = false;
};

// The prompt of `conversation`'s first turn (system prompt + first user turn) and the user
// turns that follow; deterministic in spec.seed. The system prompt is shared by every
// conversation, the user turns are not.
std::vector<int32_t> SystemPrompt(const MultiTurnSpec& spec);
std::vector<int32_t> UserTurn(const MultiTurnSpec& spec, int32_t conversation, int32_t turn);

// Runs the workload on `target`; the summary holds per-turn TTFT / end-to-end latency, output
// throughput, TTFT over turns >= 2 and, with metrics_urls, the servers' figures per turn.
// Setup errors (a metrics URL that cannot be read) are returned; failed requests are counted.
StatusOr<nlohmann::json> RunMultiTurn(Target& target, const MultiTurnSpec& spec);

// A human-readable table of RunMultiTurn's summary.
std::string FormatMultiTurn(const nlohmann::json& summary);

}  // namespace tandem::bench
