#include "targets.h"

#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "tandem/client/client.h"
#include "tandem/engine/chat_template.h"
#include "tandem/engine/engine.h"
#include "tandem/rpc/tls_credentials.h"

namespace tandem::bench {
namespace {

double Since(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// Arrival bookkeeping shared by the targets: the first arrival sets TTFT, later ones add gaps.
struct Timer {
  explicit Timer(Clock::time_point run_start) : sent(Clock::now()) {
    result.sent_s = Since(run_start, sent);
  }
  void Arrived() {
    const auto now = Clock::now();
    if (!seen) {
      result.ttft_s = Since(sent, now);
      seen = true;
    } else {
      result.itl_s.push_back(Since(last, now));
    }
    last = now;
  }
  RequestResult Done(Status st) {
    result.e2e_s = Since(sent, Clock::now());
    result.ok = st.ok() && seen;
    if (!st.ok()) result.error = st.ToString();
    if (st.ok() && !seen) result.error = "no output";
    return result;
  }
  Clock::time_point sent, last;
  bool seen = false;
  RequestResult result;
};

// --------------------------------------------------------------------------------- gRPC
class GrpcTarget final : public Target {
 public:
  GrpcTarget(std::unique_ptr<Client> client, std::string address)
      : client_(std::move(client)), address_(std::move(address)) {}

  RequestResult Run(const BenchRequest& r, Clock::time_point run_start) override {
    GenerateParams p;
    p.max_tokens = r.max_tokens;
    p.ignore_eos = r.ignore_eos;
    p.temperature = r.temperature;
    p.seed = r.seed;
    v1::GenerateRequest req;
    if (!r.prompt_ids.empty()) {
      req = TokenRequest(r.prompt_ids, p);
    } else if (!r.prompt_text.empty()) {
      req = TextRequest(r.prompt_text, p);
    } else {
      req = ChatRequest("", "", p);
      req.mutable_chat()->clear_messages();
      for (const auto& [role, content] : r.messages) {
        v1::ChatMessage* m = req.mutable_chat()->add_messages();
        m->set_role(role);
        m->set_content(content);
      }
    }
    Timer t(run_start);
    auto final = client_->Generate(req, [&](const v1::GenerateChunk& chunk) {
      t.result.output_ids.insert(t.result.output_ids.end(), chunk.token_ids().begin(),
                                 chunk.token_ids().end());
      t.Arrived();
      return true;
    });
    if (final.ok()) {
      t.result.prompt_tokens = final->usage().prompt_tokens();
      t.result.output_tokens = final->usage().completion_tokens();
    }
    return t.Done(final.status());
  }
  std::string Describe() const override { return "grpc://" + address_; }

 private:
  std::unique_ptr<Client> client_;
  std::string address_;
};

// --------------------------------------------------------------------------------- HTTP
class HttpTarget final : public Target {
 public:
  HttpTarget(std::string host, int port, bool https, TargetOptions o)
      : host_(std::move(host)), port_(port), https_(https), options_(std::move(o)) {}

  // A client of the router: HTTPS (verified against --tls-ca when given) or plain HTTP.
  std::unique_ptr<httplib::Client> Connect() const {
    auto c = std::make_unique<httplib::Client>(
        fmt::format("{}://{}:{}", https_ ? "https" : "http", host_, port_));
    if (https_) {
      if (!options_.tls_ca_file.empty()) c->set_ca_cert_path(options_.tls_ca_file.c_str());
      c->enable_server_certificate_verification(true);
    }
    return c;
  }

  Status Init() {
    std::unique_ptr<httplib::Client> cli = Connect();
    httplib::Client& c = *cli;
    c.set_read_timeout(30, 0);
    httplib::Headers h;
    if (!options_.api_key.empty()) h.emplace("Authorization", "Bearer " + options_.api_key);
    auto res = c.Get("/v1/models", h);
    if (!res) return UnavailableError("{}: {}", Describe(), httplib::to_string(res.error()));
    if (res->status != 200) {
      return UnavailableError("GET /v1/models answered {}: {}", res->status, res->body);
    }
    auto j = nlohmann::json::parse(res->body, nullptr, false);
    if (j.is_discarded() || !j.contains("data") || j["data"].empty()) {
      return UnavailableError("GET /v1/models listed no model: {}", res->body);
    }
    model_ = j["data"][0].value("id", "");
    return Status::Ok();
  }

  RequestResult Run(const BenchRequest& r, Clock::time_point run_start) override {
    nlohmann::json body = {{"model", model_},
                           {"max_tokens", r.max_tokens},
                           {"temperature", r.temperature},
                           {"seed", r.seed},
                           {"ignore_eos", r.ignore_eos},
                           {"stream", true},
                           {"stream_options", {{"include_usage", true}}}};
    std::string path = "/v1/completions";
    if (!r.prompt_ids.empty()) {
      body["prompt"] = r.prompt_ids;
    } else if (!r.prompt_text.empty()) {
      body["prompt"] = r.prompt_text;
    } else {
      path = "/v1/chat/completions";
      body["messages"] = nlohmann::json::array();
      for (const auto& [role, content] : r.messages) {
        body["messages"].push_back({{"role", role}, {"content", content}});
      }
    }
    std::unique_ptr<httplib::Client> cli = Connect();
    httplib::Client& c = *cli;
    const time_t timeout = static_cast<time_t>(options_.timeout_s);
    c.set_read_timeout(timeout, 0);
    c.set_write_timeout(timeout, 0);
    httplib::Request req;
    req.method = "POST";
    req.path = path;
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    if (!options_.api_key.empty()) req.set_header("Authorization", "Bearer " + options_.api_key);
    std::string raw, buf;
    Timer t(run_start);
    Status stream_error;
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      raw.append(data, n);
      buf.append(data, n);
      size_t end;
      while ((end = buf.find("\n\n")) != std::string::npos) {
        std::string event = buf.substr(0, end);
        buf.erase(0, end + 2);
        if (event.rfind("data: ", 0) != 0) continue;
        const std::string payload = event.substr(6);
        if (payload == "[DONE]") continue;
        auto j = nlohmann::json::parse(payload, nullptr, false);
        if (j.is_discarded()) continue;
        if (j.contains("error")) {
          stream_error = UnavailableError("stream error: {}", j["error"].dump());
        } else if (j.contains("usage") && j["usage"].is_object()) {
          t.result.prompt_tokens = j["usage"].value("prompt_tokens", 0);
          t.result.output_tokens = j["usage"].value("completion_tokens", 0);
        }
        if (j.contains("choices") && !j["choices"].empty()) {
          const auto& ch = j["choices"][0];
          const bool has_text = (ch.contains("text") && !ch["text"].get<std::string>().empty()) ||
                                (ch.contains("delta") && ch["delta"].contains("content") &&
                                 !ch["delta"]["content"].get<std::string>().empty());
          if (has_text) t.Arrived();
        }
      }
      return true;
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    if (!c.send(req, res, err)) {
      return t.Done(UnavailableError("POST {}: {}", path, httplib::to_string(err)));
    }
    if (res.status != 200) {
      return t.Done(UnavailableError("POST {} answered {}: {}", path, res.status, raw));
    }
    return t.Done(stream_error);
  }
  std::string Describe() const override {
    return fmt::format("{}://{}:{}", https_ ? "https" : "http", host_, port_);
  }

 private:
  std::string host_;
  int port_;
  bool https_;
  TargetOptions options_;
  std::string model_;
};

// --------------------------------------------------------------------------------- engine
// One Generator stepped by one thread; Run queues a request and waits for its last event.
class EngineTarget final : public Target {
 public:
  static StatusOr<std::unique_ptr<EngineTarget>> Load(const TargetOptions& o) {
    EngineOptions eo;
    eo.num_threads = o.threads;
    eo.prefix_cache = o.prefix_cache;
    TANDEM_ASSIGN_OR_RETURN(auto engine, Engine::Load(o.model_dir, eo));
    std::unique_ptr<EngineTarget> t(new EngineTarget(std::move(engine), o.model_dir));
    t->loop_ = std::thread([p = t.get()] { p->Loop(); });
    return t;
  }

  ~EngineTarget() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    loop_.join();
  }

  RequestResult Run(const BenchRequest& r, Clock::time_point run_start) override {
    GenerationRequest g;
    g.max_tokens = r.max_tokens;
    g.ignore_eos = r.ignore_eos;
    g.sampling.temperature = r.temperature;
    g.sampling.seed = r.seed;
    Job job(run_start);
    auto prompt = Prompt(r);
    if (!prompt.ok()) return job.timer.Done(prompt.status());
    g.prompt = std::move(prompt).value();
    job.timer.result.prompt_tokens = static_cast<int32_t>(g.prompt.size());
    job.request = std::move(g);
    auto done = job.done.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      incoming_.push_back(&job);
    }
    cv_.notify_all();
    Status st = done.get();
    return job.timer.Done(st);
  }
  std::string Describe() const override { return "engine (in process, " + dir_ + ")"; }

 private:
  struct Job {
    explicit Job(Clock::time_point run_start) : timer(run_start) {}
    GenerationRequest request;
    Timer timer;
    std::promise<Status> done;
  };

  EngineTarget(std::unique_ptr<Engine> engine, std::string dir)
      : engine_(std::move(engine)), dir_(std::move(dir)), gen_(*engine_, GeneratorOptions{}) {}

  StatusOr<std::vector<int32_t>> Prompt(const BenchRequest& r) const {
    if (!r.prompt_ids.empty()) return r.prompt_ids;
    const Tokenizer* tok = engine_->tokenizer();
    if (tok == nullptr) return FailedPreconditionError("{} has no tokenizer", dir_);
    if (!r.prompt_text.empty()) return tok->Encode(r.prompt_text, true);
    TANDEM_ASSIGN_OR_RETURN(ChatFormat format, DetectChatFormat(dir_));
    std::vector<ChatMessage> messages;
    for (const auto& [role, content] : r.messages) messages.push_back({role, content});
    TANDEM_ASSIGN_OR_RETURN(std::string text, ApplyChatTemplate(format, messages, true));
    return tok->Encode(text, true);
  }

  void Loop() {
    std::map<int64_t, Job*> running;
    std::vector<TokenEvent> events;
    while (true) {
      std::deque<Job*> fresh;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !incoming_.empty() || gen_.HasWork(); });
        if (stop_) break;
        fresh.swap(incoming_);
      }
      for (Job* j : fresh) {
        auto h = gen_.Add(j->request);
        if (!h.ok()) {
          j->done.set_value(h.status());
        } else {
          running[*h] = j;
        }
      }
      if (!gen_.HasWork()) continue;
      events.clear();
      Status st = gen_.Step(&events);
      for (const TokenEvent& e : events) {
        auto it = running.find(e.request);
        if (it == running.end()) continue;
        Job* j = it->second;
        j->timer.Arrived();
        ++j->timer.result.output_tokens;
        j->timer.result.output_ids.push_back(e.token);
        if (e.finish != FinishReason::kNone) {
          j->done.set_value(Status::Ok());
          running.erase(it);
        }
      }
      if (!st.ok()) {
        for (auto& [h, j] : running) j->done.set_value(st);
        running.clear();
      }
    }
    for (auto& [h, j] : running) j->done.set_value(CancelledError("bench stopped"));
  }

  std::unique_ptr<Engine> engine_;
  std::string dir_;
  Generator gen_;  // the loop thread only
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job*> incoming_;
  bool stop_ = false;
  std::thread loop_;
};

// "host:port" → parts; false when malformed.
bool SplitHostPort(const std::string& s, std::string* host, int* port) {
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  *host = s.substr(0, colon);
  try {
    *port = std::stoi(s.substr(colon + 1));
  } catch (...) {
    return false;
  }
  return *port > 0 && *port < 65536;
}

}  // namespace

StatusOr<std::unique_ptr<Target>> MakeTarget(const std::string& spec,
                                             const TargetOptions& options) {
  if (spec == "engine") {
    if (options.model_dir.empty()) return InvalidArgumentError("--target engine needs --model");
    TANDEM_ASSIGN_OR_RETURN(auto t, EngineTarget::Load(options));
    return std::unique_ptr<Target>(std::move(t));
  }
  std::string rest = spec, host;
  int port = 0;
  const bool https = rest.rfind("https://", 0) == 0;
  const bool http = https || rest.rfind("http://", 0) == 0;
  if (http) rest = rest.substr(https ? 8 : 7);
  if (rest.rfind("grpc://", 0) == 0) rest = rest.substr(7);
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (!SplitHostPort(rest, &host, &port)) {
    return InvalidArgumentError(
        "--target '{}' is not grpc://HOST:PORT, http(s)://HOST:PORT or engine", spec);
  }
  if (http) {
    auto t = std::make_unique<HttpTarget>(host, port, https, options);
    TANDEM_RETURN_IF_ERROR(t->Init());
    return std::unique_ptr<Target>(std::move(t));
  }
  ClientOptions co;
  co.address = rest;
  co.api_key = options.api_key;
  if (!options.tls_ca_file.empty()) {
    TlsFiles files;
    files.ca = options.tls_ca_file;
    TANDEM_ASSIGN_OR_RETURN(TlsConfig tls, LoadTls(files));
    co.tls_ca_pem = tls.ca_pem;
  }
  co.timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1000));
  co.max_attempts = 1;  // a benchmark counts failures, it does not hide them
  TANDEM_ASSIGN_OR_RETURN(auto client, Client::Connect(co));
  return std::unique_ptr<Target>(std::make_unique<GrpcTarget>(std::move(client), rest));
}

}  // namespace tandem::bench
