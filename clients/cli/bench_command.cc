#include "bench_command.h"

#include <sys/utsname.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "bench/multi_turn.h"
#include "bench/report.h"
#include "bench/targets.h"
#include "bench/workload.h"
#include "tandem/common/logging.h"

namespace tandem {
namespace {

using bench::Clock;

struct BenchFlags {
  std::string target;
  std::string model = "models/SmolLM2-135M-Instruct";
  std::string api_key;
  std::string tls_ca;
  std::string dataset;
  int32_t num_requests = 32;
  int32_t input_len = 128;
  int32_t output_len = 64;
  double range_ratio = 0.0;
  std::vector<int32_t> concurrency;
  std::vector<double> rates;
  int32_t max_concurrency = 0;
  int32_t warmup = 2;
  double ttft_slo_ms = 0;
  double tpot_slo_ms = 0;
  double temperature = 0;
  uint64_t seed = 0;
  int32_t threads = 0;
  bool prefix_cache = true;
  double timeout_s = 600;
  std::string json_path;
  std::string log_level = "warn";
  // Multi-turn chat (bench/multi_turn.h): on when conversations > 0.
  int32_t conversations = 0;
  int32_t turns = 4;
  int32_t system_len = 512;
  int32_t user_len = 64;
  std::vector<std::string> metrics_urls;
};

// Runs `reqs` against `target` at a fixed concurrency (rate <= 0) or Poisson arrivals at `rate`
// (with at most `cap` in flight when cap > 0).
std::vector<bench::RequestResult> Drive(bench::Target& target,
                                        const std::vector<bench::BenchRequest>& reqs, double rate,
                                        int32_t concurrency, int32_t cap, uint64_t seed,
                                        double* duration_s) {
  std::vector<bench::RequestResult> results(reqs.size());
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  if (rate <= 0) {
    std::atomic<size_t> next{0};
    for (int32_t c = 0; c < std::max(1, concurrency); ++c) {
      threads.emplace_back([&] {
        for (size_t i; (i = next.fetch_add(1)) < reqs.size();) {
          results[i] = target.Run(reqs[i], start);
        }
      });
    }
  } else {
    const auto arrivals = bench::ArrivalTimes(static_cast<int32_t>(reqs.size()), rate, seed);
    std::mutex mu;
    std::condition_variable cv;
    int32_t in_flight = 0;
    for (size_t i = 0; i < reqs.size(); ++i) {
      std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                std::chrono::duration<double>(arrivals[i])));
      if (cap > 0) {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return in_flight < cap; });
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        ++in_flight;
      }
      threads.emplace_back([&, i] {
        results[i] = target.Run(reqs[i], start);
        std::lock_guard<std::mutex> lock(mu);
        --in_flight;
        cv.notify_all();
      });
    }
  }
  for (auto& t : threads) t.join();
  double first = 1e300, last = 0;
  for (const auto& r : results) {
    first = std::min(first, r.sent_s);
    last = std::max(last, r.sent_s + r.e2e_s);
  }
  *duration_s = results.empty() ? 0 : last - first;
  return results;
}

std::string MachineLine() {
  utsname u{};
  uname(&u);
  std::string cpu;
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);) {
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  }
  return fmt::format("{} {} ({} cores, {})", u.sysname, u.machine,
                     std::thread::hardware_concurrency(), cpu.empty() ? "unknown CPU" : cpu);
}

int WriteJson(const std::string& path, const nlohmann::json& out) {
  std::ofstream os(path);
  os << out.dump(2) << "\n";
  if (!os) {
    std::fprintf(stderr, "error: cannot write %s\n", path.c_str());
    return 1;
  }
  return 0;
}

// --conversations: warm-up requests of user-turn length (no page shared with the system
// prompt), then the multi-turn workload.
int RunMultiTurnBench(const BenchFlags& f, bench::Target& target) {
  if (f.warmup > 0) {
    bench::SyntheticSpec w;
    w.num_requests = f.warmup;
    w.input_len = f.user_len;
    w.output_len = f.output_len;
    w.seed = f.seed + 0x9e3779b97f4a7c15ull;
    double d = 0;
    for (const auto& r : Drive(target, bench::SyntheticRequests(w), 0, f.warmup, 0, f.seed, &d)) {
      if (!r.ok) {
        std::fprintf(stderr, "error: warm-up request failed: %s\n", r.error.c_str());
        return 1;
      }
    }
  }
  bench::MultiTurnSpec spec;
  spec.conversations = f.conversations;
  spec.turns = f.turns;
  spec.system_len = f.system_len;
  spec.user_len = f.user_len;
  spec.answer_len = f.output_len;
  spec.temperature = static_cast<float>(f.temperature);
  spec.seed = f.seed;
  spec.metrics_urls = f.metrics_urls;
  spec.per_request = !f.json_path.empty();
  auto s = bench::RunMultiTurn(target, spec);
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.status().ToString().c_str());
    return 1;
  }
  std::printf("%s\n", bench::FormatMultiTurn(*s).c_str());
  std::fflush(stdout);
  if (!f.json_path.empty()) {
    nlohmann::json out = {{"machine", MachineLine()}, {"runs", nlohmann::json::array({*s})}};
    if (int rc = WriteJson(f.json_path, out); rc != 0) return rc;
  }
  return (*s)["failed"].get<int64_t>() == 0 ? 0 : 2;
}

int RunBench(BenchFlags f) {
  SetLogLevel(f.log_level);
  if (f.conversations > 0 && (f.target.rfind("http", 0) == 0 || !f.dataset.empty())) {
    std::fprintf(stderr,
                 "error: --conversations needs --target grpc://HOST:PORT or engine (each turn "
                 "carries the previous answers' token ids) and no --dataset\n");
    return 1;
  }
  if (f.conversations == 0 && !f.metrics_urls.empty()) {
    std::fprintf(stderr, "error: --metrics is read per turn of --conversations\n");
    return 1;
  }
  bench::TargetOptions to;
  to.api_key = f.api_key;
  to.tls_ca_file = f.tls_ca;
  to.timeout_s = f.timeout_s;
  to.model_dir = f.model;
  to.threads = f.threads;
  to.prefix_cache = f.prefix_cache;
  auto target = bench::MakeTarget(f.target, to);
  if (!target.ok()) {
    std::fprintf(stderr, "error: %s\n", target.status().ToString().c_str());
    return 1;
  }
  if (f.conversations > 0) return RunMultiTurnBench(f, **target);
  std::vector<bench::BenchRequest> reqs;
  // Synthetic prompts are drawn afresh for the warm-up and for every run (seed + run index):
  // a prompt sent twice would find its KV in the workers' prefix cache and measure the cache.
  std::function<std::vector<bench::BenchRequest>(uint64_t)> redraw;
  if (!f.dataset.empty()) {
    auto r = bench::JsonlRequests(f.dataset, f.output_len);
    if (!r.ok()) {
      std::fprintf(stderr, "error: %s\n", r.status().ToString().c_str());
      return 1;
    }
    reqs = std::move(r).value();
    if (f.num_requests > 0 && static_cast<int32_t>(reqs.size()) > f.num_requests) {
      reqs.resize(static_cast<size_t>(f.num_requests));
    }
  } else {
    bench::SyntheticSpec spec;
    spec.num_requests = f.num_requests;
    spec.input_len = f.input_len;
    spec.output_len = f.output_len;
    spec.range_ratio = f.range_ratio;
    spec.seed = f.seed;
    reqs = bench::SyntheticRequests(spec);
    redraw = [spec, &f](uint64_t salt) mutable {
      spec.seed = f.seed + salt * 0x9e3779b97f4a7c15ull;
      auto r = bench::SyntheticRequests(spec);
      for (auto& x : r) x.temperature = static_cast<float>(f.temperature);
      return r;
    };
  }
  for (auto& r : reqs) r.temperature = static_cast<float>(f.temperature);
  if (f.warmup > 0) {
    std::vector<bench::BenchRequest> w = redraw ? redraw(1) : reqs;
    w.resize(std::min<size_t>(f.warmup, w.size()));
    double d = 0;
    auto wr = Drive(**target, w, 0, static_cast<int32_t>(w.size()), 0, f.seed, &d);
    for (const auto& r : wr) {
      if (!r.ok) {
        std::fprintf(stderr, "error: warm-up request failed: %s\n", r.error.c_str());
        return 1;
      }
    }
  }
  // One run per concurrency, then one per rate; plain `tandem bench` is concurrency 1.
  struct Plan {
    double rate;
    int32_t concurrency;
  };
  std::vector<Plan> plans;
  for (int32_t c : f.concurrency) plans.push_back({0, c});
  for (double r : f.rates) plans.push_back({r, f.max_concurrency});
  if (plans.empty()) plans.push_back({0, 1});
  nlohmann::json runs = nlohmann::json::array();
  int failed = 0;
  for (size_t run = 0; run < plans.size(); ++run) {
    const Plan& p = plans[run];
    if (run > 0 && redraw) reqs = redraw(run + 1);
    bench::RunInfo info;
    info.target = (*target)->Describe();
    info.rate = p.rate;
    info.concurrency = p.concurrency;
    info.mode = p.rate > 0 ? fmt::format("rate {:g}/s (poisson{})", p.rate,
                                         p.concurrency > 0
                                             ? fmt::format(", at most {} in flight", p.concurrency)
                                             : "")
                           : fmt::format("concurrency {}", p.concurrency);
    info.ttft_slo_ms = f.ttft_slo_ms;
    info.tpot_slo_ms = f.tpot_slo_ms;
    auto results = Drive(**target, reqs, p.rate, p.concurrency, p.rate > 0 ? p.concurrency : 0,
                         f.seed, &info.duration_s);
    nlohmann::json s = bench::Summarize(info, results, !f.json_path.empty());
    failed += s["failed"].get<int>();
    std::printf("%s\n", bench::FormatSummary(s).c_str());
    std::fflush(stdout);
    runs.push_back(std::move(s));
  }
  if (!f.json_path.empty()) {
    nlohmann::json out = {{"machine", MachineLine()},
                          {"workload",
                           {{"dataset", f.dataset},
                            {"num_requests", reqs.size()},
                            {"input_len", f.input_len},
                            {"output_len", f.output_len},
                            {"range_ratio", f.range_ratio},
                            {"temperature", f.temperature}}},
                          {"runs", runs}};
    if (int rc = WriteJson(f.json_path, out); rc != 0) return rc;
  }
  return failed == 0 ? 0 : 2;
}

}  // namespace

void AddBenchCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<BenchFlags>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Load-test a router (gRPC or OpenAI HTTP) or the in-process engine");
  cmd->add_option("--target", f->target,
                  "grpc://HOST:PORT, http(s)://HOST:PORT (any OpenAI-compatible server) or engine")
      ->required();
  cmd->add_option("--model", f->model, "Checkpoint folder or .gguf file (--target engine)")
      ->capture_default_str();
  cmd->add_option("--api-key", f->api_key, "API key (or $TANDEM_API_KEY)")
      ->envname("TANDEM_API_KEY");
  cmd->add_option(
      "--tls-ca", f->tls_ca,
      "PEM CA file: grpc:// targets use TLS, https:// ones verify the router against it");
  cmd->add_option("--dataset", f->dataset,
                  "JSONL prompts ({\"prompt\": ...} or {\"messages\": [...]}, optional "
                  "max_tokens); default: synthetic token-id prompts");
  cmd->add_option("--num-requests", f->num_requests, "Requests per run")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  cmd->add_option("--input-len", f->input_len, "Synthetic prompt tokens")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--output-len", f->output_len, "Output tokens (synthetic: exact, EOS ignored)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--range-ratio", f->range_ratio,
                  "Synthetic lengths uniform in [len(1-r), len(1+r)]")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--concurrency", f->concurrency,
                  "Fixed concurrency; comma-separated for several runs (e.g. 1,8,32)")
      ->delimiter(',');
  cmd->add_option("--request-rate", f->rates,
                  "Poisson arrivals in requests/s; comma-separated for several runs")
      ->delimiter(',');
  cmd->add_option("--max-concurrency", f->max_concurrency,
                  "With --request-rate: at most this many in flight (0 = unbounded)")
      ->capture_default_str();
  cmd->add_option("--warmup", f->warmup, "Requests sent (and not measured) first")
      ->capture_default_str();
  cmd->add_option("--ttft-slo-ms", f->ttft_slo_ms, "Goodput: TTFT target (0 = none)")
      ->capture_default_str();
  cmd->add_option("--tpot-slo-ms", f->tpot_slo_ms, "Goodput: TPOT target (0 = none)")
      ->capture_default_str();
  cmd->add_option("--temperature", f->temperature, "Sampling temperature (0 = greedy)")
      ->capture_default_str();
  cmd->add_option("--seed", f->seed, "Workload and arrival seed")->capture_default_str();
  cmd->add_option("--prefix-cache", f->prefix_cache,
                  "Reuse cached prompt prefixes (--target engine; a server has its own flag)")
      ->capture_default_str();
  cmd->add_option("--threads", f->threads, "Compute threads (--target engine; 0 = all cores)")
      ->capture_default_str();
  cmd->add_option("--timeout-s", f->timeout_s, "Deadline of one request")->capture_default_str();
  cmd->add_option("--json", f->json_path, "Write every run's summary and per-request figures");
  cmd->add_option("--conversations", f->conversations,
                  "Multi-turn chat: this many conversations at once, their turns in lockstep "
                  "(0 = off; --target grpc:// or engine)")
      ->capture_default_str()
      ->check(CLI::Range(0, 10000));
  cmd->add_option("--turns", f->turns, "Multi-turn: turns per conversation")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--system-len", f->system_len,
                  "Multi-turn: tokens of the system prompt every conversation shares")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--user-len", f->user_len,
                  "Multi-turn: tokens of each user turn (answers: --output-len)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--metrics", f->metrics_urls,
                  "Multi-turn: /metrics URLs of the prefill workers (router and decode URLs may "
                  "be listed too), scraped around each turn; comma-separated")
      ->delimiter(',');
  cmd->add_option("--log-level", f->log_level, "Log level on stderr")->capture_default_str();
  cmd->callback([f, exit_code] { *exit_code = RunBench(*f); });
}

}  // namespace tandem
