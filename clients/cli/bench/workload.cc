#include "workload.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

namespace tandem::bench {
namespace {

int32_t Draw(int32_t len, double ratio, std::mt19937_64& rng) {
  if (ratio <= 0) return std::max(1, len);
  const int32_t lo = std::max(1, static_cast<int32_t>(std::floor(len * (1.0 - ratio))));
  const int32_t hi = std::max(lo, static_cast<int32_t>(std::ceil(len * (1.0 + ratio))));
  return std::uniform_int_distribution<int32_t>(lo, hi)(rng);
}

}  // namespace

std::vector<BenchRequest> SyntheticRequests(const SyntheticSpec& spec) {
  std::mt19937_64 rng(spec.seed);
  std::uniform_int_distribution<int32_t> id(spec.id_low, spec.id_high - 1);
  std::vector<BenchRequest> out(static_cast<size_t>(std::max(0, spec.num_requests)));
  for (size_t i = 0; i < out.size(); ++i) {
    BenchRequest& r = out[i];
    const int32_t in = Draw(spec.input_len, spec.range_ratio, rng);
    for (int32_t t = 0; t < in; ++t) r.prompt_ids.push_back(id(rng));
    r.max_tokens = Draw(spec.output_len, spec.range_ratio, rng);
    r.ignore_eos = true;
    r.seed = spec.seed + i;
  }
  return out;
}

StatusOr<std::vector<BenchRequest>> JsonlRequests(const std::string& path,
                                                  int32_t default_max_tokens) {
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot open {}", path);
  std::vector<BenchRequest> out;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return InvalidArgumentError("{}:{}: not a JSON object", path, n);
    }
    BenchRequest r;
    r.ignore_eos = false;
    r.max_tokens = default_max_tokens;
    if (j.contains("max_tokens")) {
      if (!j["max_tokens"].is_number_integer() || j["max_tokens"].get<int>() < 1) {
        return InvalidArgumentError("{}:{}: max_tokens must be an integer >= 1", path, n);
      }
      r.max_tokens = j["max_tokens"].get<int32_t>();
    }
    if (j.contains("prompt") && j["prompt"].is_string()) {
      r.prompt_text = j["prompt"].get<std::string>();
    } else if (j.contains("messages") && j["messages"].is_array()) {
      for (const auto& m : j["messages"]) {
        if (!m.is_object() || !m.value("role", nlohmann::json()).is_string() ||
            !m.value("content", nlohmann::json()).is_string()) {
          return InvalidArgumentError("{}:{}: messages need string role and content", path, n);
        }
        r.messages.emplace_back(m["role"].get<std::string>(), m["content"].get<std::string>());
      }
    }
    if (r.prompt_text.empty() && r.messages.empty()) {
      return InvalidArgumentError("{}:{}: needs a non-empty \"prompt\" or \"messages\"", path, n);
    }
    r.seed = static_cast<uint64_t>(n);
    out.push_back(std::move(r));
  }
  if (out.empty()) return InvalidArgumentError("{} holds no requests", path);
  return out;
}

std::vector<double> ArrivalTimes(int32_t n, double rate, uint64_t seed) {
  std::vector<double> t(static_cast<size_t>(std::max(0, n)), 0.0);
  if (rate <= 0) return t;
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  std::exponential_distribution<double> gap(rate);
  double now = 0;
  for (auto& x : t) {
    x = now;
    now += gap(rng);
  }
  return t;
}

}  // namespace tandem::bench
