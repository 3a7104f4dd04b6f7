#include "report.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

namespace tandem::bench {
namespace {

using json = nlohmann::json;

// Linear interpolation between order statistics (numpy's default).
double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(v.size() - 1, lo + 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

}  // namespace

json LatencyStats(const std::vector<double>& seconds) {
  std::vector<double> ms;
  ms.reserve(seconds.size());
  for (double s : seconds) ms.push_back(s * 1000.0);
  const double mean =
      ms.empty() ? 0 : std::accumulate(ms.begin(), ms.end(), 0.0) / static_cast<double>(ms.size());
  return {{"mean", mean},
          {"p50", Percentile(ms, 50)},
          {"p90", Percentile(ms, 90)},
          {"p99", Percentile(ms, 99)},
          {"count", ms.size()}};
}

namespace {

json Stats(const std::vector<double>& seconds) { return LatencyStats(seconds); }

double Tpot(const RequestResult& r) {
  return r.output_tokens > 1 ? (r.e2e_s - r.ttft_s) / (r.output_tokens - 1) : 0.0;
}

}  // namespace

json Summarize(const RunInfo& info, const std::vector<RequestResult>& results, bool per_request) {
  std::vector<double> ttft, tpot, itl, e2e;
  int64_t in_tokens = 0, out_tokens = 0, good = 0, ok = 0;
  std::vector<std::string> errors;
  for (const auto& r : results) {
    if (!r.ok) {
      if (errors.size() < 5) errors.push_back(r.error);
      continue;
    }
    ++ok;
    ttft.push_back(r.ttft_s);
    if (r.output_tokens > 1) tpot.push_back(Tpot(r));
    itl.insert(itl.end(), r.itl_s.begin(), r.itl_s.end());
    e2e.push_back(r.e2e_s);
    in_tokens += r.prompt_tokens;
    out_tokens += r.output_tokens;
    const bool ttft_ok = info.ttft_slo_ms <= 0 || r.ttft_s * 1000 <= info.ttft_slo_ms;
    const bool tpot_ok = info.tpot_slo_ms <= 0 || Tpot(r) * 1000 <= info.tpot_slo_ms;
    good += ttft_ok && tpot_ok;
  }
  const double d = info.duration_s > 0 ? info.duration_s : 1e-9;
  json s = {{"target", info.target},
            {"mode", info.mode},
            {"request_rate", info.rate},
            {"concurrency", info.concurrency},
            {"num_requests", results.size()},
            {"completed", ok},
            {"failed", static_cast<int64_t>(results.size()) - ok},
            {"errors", errors},
            {"duration_s", info.duration_s},
            {"total_input_tokens", in_tokens},
            {"total_output_tokens", out_tokens},
            {"request_throughput", ok / d},
            {"output_throughput", out_tokens / d},
            {"total_token_throughput", (in_tokens + out_tokens) / d},
            {"ttft_ms", Stats(ttft)},
            {"tpot_ms", Stats(tpot)},
            {"itl_ms", Stats(itl)},
            {"e2e_ms", Stats(e2e)},
            {"goodput",
             {{"ttft_slo_ms", info.ttft_slo_ms},
              {"tpot_slo_ms", info.tpot_slo_ms},
              {"good_requests", good},
              {"requests_per_s", good / d}}}};
  if (per_request) {
    json rs = json::array();
    for (const auto& r : results) {
      json itl_ms = json::array();
      for (double g : r.itl_s) itl_ms.push_back(g * 1000);
      rs.push_back({{"ok", r.ok},
                    {"sent_s", r.sent_s},
                    {"ttft_ms", r.ttft_s * 1000},
                    {"tpot_ms", Tpot(r) * 1000},
                    {"e2e_ms", r.e2e_s * 1000},
                    {"prompt_tokens", r.prompt_tokens},
                    {"output_tokens", r.output_tokens},
                    {"itl_ms", itl_ms},
                    {"error", r.error}});
    }
    s["requests"] = rs;
  }
  return s;
}

std::string FormatSummary(const json& s) {
  std::string out = fmt::format("target {}  |  {}  |  {} requests ({} failed) in {:.2f} s\n",
                                s["target"].get<std::string>(), s["mode"].get<std::string>(),
                                s["num_requests"].get<int64_t>(), s["failed"].get<int64_t>(),
                                s["duration_s"].get<double>());
  out += fmt::format("throughput  {:.2f} req/s  {:.1f} output tok/s  {:.1f} total tok/s\n",
                     s["request_throughput"].get<double>(), s["output_throughput"].get<double>(),
                     s["total_token_throughput"].get<double>());
  out += fmt::format("{:<6} {:>10} {:>10} {:>10} {:>10}\n", "ms", "mean", "p50", "p90", "p99");
  for (const char* k : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    const json& st = s[k];
    out +=
        fmt::format("{:<6} {:>10.2f} {:>10.2f} {:>10.2f} {:>10.2f}\n",
                    std::string(k).substr(0, std::string(k).size() - 3), st["mean"].get<double>(),
                    st["p50"].get<double>(), st["p90"].get<double>(), st["p99"].get<double>());
  }
  const json& g = s["goodput"];
  if (g["ttft_slo_ms"].get<double>() > 0 || g["tpot_slo_ms"].get<double>() > 0) {
    out += fmt::format("goodput {:.2f} req/s ({} of {} within TTFT <= {} ms, TPOT <= {} ms)\n",
                       g["requests_per_s"].get<double>(), g["good_requests"].get<int64_t>(),
                       s["completed"].get<int64_t>(), g["ttft_slo_ms"].get<double>(),
                       g["tpot_slo_ms"].get<double>());
  }
  for (const auto& e : s["errors"]) out += "error: " + e.get<std::string>() + "\n";
  return out;
}

}  // namespace tandem::bench
