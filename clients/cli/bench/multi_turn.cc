#include "multi_turn.h"

#include <random>
#include <thread>

#include <fmt/format.h>

#include "report.h"
#include "server_metrics.h"

namespace tandem::bench {
namespace {

using json = nlohmann::json;

std::vector<int32_t> DrawIds(int32_t n, uint64_t seed) {
  // Ordinary text tokens of most vocabularies, as SyntheticRequests draws them.
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> id(1000, 19999);
  std::vector<int32_t> out(static_cast<size_t>(std::max(0, n)));
  for (auto& t : out) t = id(rng);
  return out;
}

double Since(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace

std::vector<int32_t> SystemPrompt(const MultiTurnSpec& spec) {
  return DrawIds(spec.system_len, spec.seed ^ 0x5157e11ull);
}

std::vector<int32_t> UserTurn(const MultiTurnSpec& spec, int32_t conversation, int32_t turn) {
  const uint64_t salt = (static_cast<uint64_t>(conversation) << 20) + static_cast<uint64_t>(turn);
  return DrawIds(spec.user_len, spec.seed + 0x9e3779b97f4a7c15ull * (salt + 1));
}

StatusOr<json> RunMultiTurn(Target& target, const MultiTurnSpec& spec) {
  const std::vector<int32_t> system = SystemPrompt(spec);
  const size_t n = static_cast<size_t>(spec.conversations);
  std::vector<std::vector<int32_t>> history(n, system);
  std::vector<bool> alive(n, true);
  std::vector<std::vector<RequestResult>> by_turn;
  json turns = json::array();
  std::vector<double> later_ttft;
  double wall_s = 0;
  int64_t out_tokens = 0, failed = 0;
  for (int32_t t = 1; t <= spec.turns; ++t) {
    PrefillFigures before;
    if (!spec.metrics_urls.empty()) {
      TANDEM_ASSIGN_OR_RETURN(before, ScrapePrefillFigures(spec.metrics_urls));
    }
    std::vector<RequestResult> results(n);
    std::vector<bool> sent(n, false);
    const auto start = Clock::now();
    std::vector<std::thread> threads;
    for (size_t c = 0; c < n; ++c) {
      if (!alive[c]) continue;
      sent[c] = true;
      threads.emplace_back([&, c] {
        BenchRequest r;
        r.prompt_ids = history[c];
        const auto user = UserTurn(spec, static_cast<int32_t>(c), t);
        r.prompt_ids.insert(r.prompt_ids.end(), user.begin(), user.end());
        r.max_tokens = spec.answer_len;
        r.ignore_eos = true;
        r.temperature = spec.temperature;
        r.seed = spec.seed + c * 1000 + static_cast<uint64_t>(t);
        results[c] = target.Run(r, start);
        if (results[c].ok) {
          history[c] = std::move(r.prompt_ids);
          history[c].insert(history[c].end(), results[c].output_ids.begin(),
                            results[c].output_ids.end());
        }
      });
    }
    for (auto& th : threads) th.join();
    const double duration = Since(start, Clock::now());
    wall_s += duration;
    std::vector<double> ttft, e2e;
    int64_t turn_out = 0, turn_prompt = 0, turn_ok = 0, turn_failed = 0;
    json errors = json::array();
    json requests = json::array();
    for (size_t c = 0; c < n; ++c) {
      if (!sent[c]) continue;
      const RequestResult& r = results[c];
      if (!r.ok) {
        alive[c] = false;
        ++turn_failed;
        if (errors.size() < 5) errors.push_back(r.error);
      } else {
        ++turn_ok;
        ttft.push_back(r.ttft_s);
        e2e.push_back(r.e2e_s);
        turn_out += r.output_tokens;
        turn_prompt += r.prompt_tokens;
        if (t >= 2) later_ttft.push_back(r.ttft_s);
      }
      if (spec.per_request) {
        requests.push_back({{"conversation", c},
                            {"ok", r.ok},
                            {"ttft_ms", r.ttft_s * 1000},
                            {"e2e_ms", r.e2e_s * 1000},
                            {"prompt_tokens", r.prompt_tokens},
                            {"output_tokens", r.output_tokens},
                            {"error", r.error}});
      }
    }
    out_tokens += turn_out;
    failed += turn_failed;
    json turn = {{"turn", t},
                 {"requests", turn_ok + turn_failed},
                 {"completed", turn_ok},
                 {"failed", turn_failed},
                 {"errors", errors},
                 {"duration_s", duration},
                 {"prompt_tokens", turn_prompt},
                 {"output_tokens", turn_out},
                 {"ttft_ms", LatencyStats(ttft)},
                 {"e2e_ms", LatencyStats(e2e)}};
    if (!spec.metrics_urls.empty()) {
      TANDEM_ASSIGN_OR_RETURN(PrefillFigures after, ScrapePrefillFigures(spec.metrics_urls));
      turn["server"] = (after - before).ToJson();
    }
    if (spec.per_request) turn["per_request"] = requests;
    turns.push_back(std::move(turn));
  }
  return json{{"target", target.Describe()},
              {"mode", "multi-turn"},
              {"conversations", spec.conversations},
              {"turns", spec.turns},
              {"system_len", spec.system_len},
              {"user_len", spec.user_len},
              {"answer_len", spec.answer_len},
              {"failed", failed},
              {"duration_s", wall_s},
              {"total_output_tokens", out_tokens},
              {"output_throughput", wall_s > 0 ? static_cast<double>(out_tokens) / wall_s : 0.0},
              {"ttft_ms_turns_2_plus", LatencyStats(later_ttft)},
              {"per_turn", turns}};
}

std::string FormatMultiTurn(const json& s) {
  std::string out = fmt::format(
      "target {}  |  multi-turn: {} conversations x {} turns, system {} + user {} tokens, "
      "answers {} tokens  |  {} failed in {:.2f} s\n",
      s["target"].get<std::string>(), s["conversations"].get<int>(), s["turns"].get<int>(),
      s["system_len"].get<int>(), s["user_len"].get<int>(), s["answer_len"].get<int>(),
      s["failed"].get<int64_t>(), s["duration_s"].get<double>());
  out += fmt::format("throughput  {:.1f} output tok/s\n", s["output_throughput"].get<double>());
  const bool server = !s["per_turn"].empty() && s["per_turn"][0].contains("server");
  out += fmt::format("{:<5} {:>4} {:>8} {:>10} {:>10} {:>10}", "turn", "ok", "prompt", "ttft p50",
                     "ttft p99", "e2e p50");
  if (server) {
    out += fmt::format(" {:>9} {:>9} {:>7} {:>7} {:>11}", "computed", "hit", "pages", "held",
                       "kv bytes");
  }
  out += "\n";
  for (const json& t : s["per_turn"]) {
    const int64_t ok = t["completed"].get<int64_t>();
    out += fmt::format("{:<5} {:>4} {:>8.0f} {:>10.2f} {:>10.2f} {:>10.2f}", t["turn"].get<int>(),
                       ok, ok > 0 ? t["prompt_tokens"].get<double>() / ok : 0.0,
                       t["ttft_ms"]["p50"].get<double>(), t["ttft_ms"]["p99"].get<double>(),
                       t["e2e_ms"]["p50"].get<double>());
    if (t.contains("server")) {
      const json& v = t["server"];
      out += fmt::format(" {:>9.0f} {:>9.0f} {:>7.0f} {:>7.0f} {:>11.0f}",
                         v["computed_tokens"].get<double>(), v["prefix_hit_tokens"].get<double>(),
                         v["kv_pages_sent"].get<double>(), v.value("kv_pages_not_sent", 0.0),
                         v["kv_bytes_sent"].get<double>());
    }
    out += "\n";
    for (const auto& e : t["errors"]) out += "error: " + e.get<std::string>() + "\n";
  }
  const json& later = s["ttft_ms_turns_2_plus"];
  out += fmt::format("turns >= 2: ttft p50 {:.2f} ms, p99 {:.2f} ms ({} requests)\n",
                     later["p50"].get<double>(), later["p99"].get<double>(),
                     later["count"].get<size_t>());
  out += "(prompt: mean prompt tokens; ttft / e2e in ms";
  if (server) {
    out +=
        "; computed / hit: prompt tokens the prefill workers computed / took from their prefix "
        "cache; pages, kv bytes: KV shipped to decode workers; held: prompt pages the decode "
        "workers held already (their prefix cache), not shipped";
  }
  out += ")\n";
  return out;
}

}  // namespace tandem::bench
