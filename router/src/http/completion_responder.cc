#include "completion_responder.h"

#include <chrono>
#include <memory>
#include <random>

#include <fmt/format.h>

#include "http_generation.h"
#include "tandem/common/logging.h"
#include "tandem/rpc/grpc_status.h"

namespace tandem::http {
namespace {

using json = nlohmann::json;
// How often a waiting handler checks whether its client hung up.
constexpr auto kPoll = std::chrono::milliseconds(100);

std::string NewId(ApiKind kind) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}-{:016x}{:08x}", kind == ApiKind::kChat ? "chatcmpl" : "cmpl", rng(),
                     static_cast<uint32_t>(rng()));
}

int64_t NowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct Choice {
  std::string text;
  std::optional<v1::GenerateFinal> final;
  std::optional<LogprobsBuilder> logprobs;
  bool started = false;  // streams: the role / echo chunk went out
};

// One request's calls and what they produced so far.
class Session {
 public:
  Session(const ResponderContext& ctx, OpenAiRequest request, ConnectionWatch watch)
      : ctx_(ctx), req_(std::move(request)), watch_(watch), id_(NewId(req_.kind)) {
    if (ctx_.open_responses != nullptr) ctx_.open_responses->fetch_add(1);
    created_ = NowUnix();
    RouterService* svc = ctx_.service;
    for (size_t i = 0; i < req_.calls.size(); ++i) {
      req_.calls[i].set_request_id(fmt::format("{}-{}", id_, i));
    }
    const Tokenizer* tok = svc->backend() ? svc->backend()->tokenizer.get() : nullptr;
    choices_.resize(req_.calls.size());
    for (size_t i = 0; i < choices_.size(); ++i) {
      const std::string& echo = EchoFor(i);
      choices_[i].text = echo;
      if (req_.logprobs) {
        choices_[i].logprobs.emplace(req_.kind, tok, static_cast<int32_t>(echo.size()));
      }
    }
    gen_ = std::make_unique<HttpGeneration>(svc->backend(), &svc->calls(), svc->draining(),
                                            std::chrono::system_clock::now() + ctx_.request_timeout,
                                            req_.calls, req_.fit_max_tokens);
  }

  ~Session() {
    gen_.reset();  // waits for its calls to finish: still an open response until then
    if (ctx_.open_responses != nullptr) ctx_.open_responses->fetch_sub(1);
  }

  // Whole response: waits for every call; nullopt on success with `*body` filled.
  std::optional<ApiError> RunToEnd(json* body) {
    std::optional<grpc::Status> error;
    while (finals_ < gen_->size()) {
      std::optional<Event> e = gen_->Next(kPoll);
      if (const StopReason why = ShouldStop(); !cancelled_ && why != StopReason::kNone) {
        Cancel(Describe(why));
        if (why == StopReason::kServerStopping && !error) error = ServerStopped();
      }
      if (!e) continue;
      Absorb(*e);
      if (e->final_status && !e->final_status->ok() && !error) {
        error = *e->final_status;
        Cancel("a choice failed");
      }
      if (e->chunk || e->final) gen_->Ack(*e, true);
    }
    if (error) return ErrorForStatus(FromGrpcStatus(*error));
    json choices = json::array();
    for (size_t i = 0; i < choices_.size(); ++i) {
      const Choice& c = choices_[i];
      const json lp = c.logprobs ? c.logprobs->All() : json(nullptr);
      const char* finish = FinishReasonName(c.final->finish_reason());
      if (req_.kind == ApiKind::kChat) {
        choices.push_back({{"index", i},
                           {"message", {{"role", "assistant"}, {"content", c.text}}},
                           {"logprobs", lp},
                           {"finish_reason", finish}});
      } else {
        choices.push_back(
            {{"index", i}, {"text", c.text}, {"logprobs", lp}, {"finish_reason", finish}});
      }
    }
    *body = Envelope(req_.kind == ApiKind::kChat ? "chat.completion" : "text_completion");
    (*body)["choices"] = std::move(choices);
    (*body)["usage"] = Usage();
    return std::nullopt;
  }

  // Streams: waits for the first event; an error before any output is returned (the HTTP
  // status still can say it), anything else is kept for the stream.
  std::optional<ApiError> WaitStart() {
    while (true) {
      std::optional<Event> e = gen_->Next(kPoll);
      if (const StopReason why = ShouldStop(); why != StopReason::kNone) {
        if (e && (e->chunk || e->final)) gen_->Ack(*e, false);
        if (e && e->final_status) ++finals_;
        Cancel(Describe(why));
        return ErrorForStatus(FromGrpcStatus(ServerStopped()));
      }
      if (!e) continue;
      if (e->final_status && !e->final_status->ok()) {
        ++finals_;
        Cancel("another choice failed");
        return ErrorForStatus(FromGrpcStatus(*e->final_status));
      }
      pending_ = std::move(e);
      return std::nullopt;
    }
  }

  // The chunked content provider: writes at least one event per call (blocking until there is
  // one), the usage chunk and [DONE] at the end. False aborts the response (client gone).
  bool Stream(httplib::DataSink& sink) {
    while (true) {
      std::optional<Event> e = std::move(pending_);
      pending_.reset();
      if (!e) e = gen_->Next(kPoll);
      if (const StopReason why = ShouldStop(); why != StopReason::kNone) {
        if (e && (e->chunk || e->final)) gen_->Ack(*e, false);
        Cancel(Describe(why));
        if (why == StopReason::kClientGone) return false;
        // The server stops with the stream unfinished: end it properly, never cut it.
        const ApiError err = ErrorForStatus(FromGrpcStatus(ServerStopped()));
        const std::string tail = "data: " + Dump(err.ToJson()) + "\n\ndata: [DONE]\n\n";
        if (!sink.write(tail.data(), tail.size())) return false;
        sink.done();
        return true;
      }
      if (!e) continue;
      const std::string out = Format(*e);
      const bool ok = out.empty() || sink.write(out.data(), out.size());
      if (e->chunk || e->final) gen_->Ack(*e, ok);
      if (!ok) {
        Cancel("a write to the client failed");
        return false;
      }
      if (finals_ == gen_->size()) {
        std::string tail;
        if (req_.include_usage) {
          json u = Envelope(ChunkObject());
          u["choices"] = json::array();
          u["usage"] = Usage();
          tail += "data: " + Dump(u) + "\n\n";
        }
        tail += "data: [DONE]\n\n";
        if (!sink.write(tail.data(), tail.size())) return false;
        sink.done();
        return true;
      }
      if (!out.empty()) return true;
    }
  }

 private:
  const std::string& EchoFor(size_t choice) const {
    static const std::string kNone;
    const size_t prompt = choice / static_cast<size_t>(req_.n);
    return prompt < req_.echo.size() ? req_.echo[prompt] : kNone;
  }

  const char* ChunkObject() const {
    return req_.kind == ApiKind::kChat ? "chat.completion.chunk" : "text_completion";
  }

  json Envelope(const char* object) const {
    return {{"id", id_}, {"object", object}, {"created", created_}, {"model", ctx_.model}};
  }

  json Usage() const {
    int64_t prompt = 0, completion = 0;
    for (size_t i = 0; i < choices_.size(); ++i) {
      if (!choices_[i].final) continue;
      const auto& u = choices_[i].final->usage();
      if (i % static_cast<size_t>(req_.n) == 0) prompt += u.prompt_tokens();
      completion += u.completion_tokens();
    }
    return {{"prompt_tokens", prompt},
            {"completion_tokens", completion},
            {"total_tokens", prompt + completion}};
  }

  enum class StopReason { kNone, kClientGone, kServerStopping };

  // The client hung up, or the server is stopping. Checked at most every kPoll, whether or
  // not events keep arriving.
  StopReason ShouldStop() {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_check_ < kPoll) return StopReason::kNone;
    last_check_ = now;
    if (watch_.PeerClosed()) return StopReason::kClientGone;
    if (ctx_.stopping != nullptr && ctx_.stopping->load()) return StopReason::kServerStopping;
    return StopReason::kNone;
  }

  static const char* Describe(StopReason why) {
    return why == StopReason::kClientGone ? "the client disconnected" : "the server stops";
  }

  grpc::Status ServerStopped() const {
    return ToGrpcStatus(UnavailableError(
        "{}: the server stopped before the response was complete; retry the request", id_));
  }

  void Cancel(const char* why) {
    if (cancelled_) return;
    cancelled_ = true;
    TLOG_INFO("{}: {}; cancelling {} call(s)", id_, why, gen_->size());
    gen_->Cancel();
  }

  // Records an event in its choice (text, logprobs, final).
  void Absorb(const Event& e) {
    Choice& c = choices_[static_cast<size_t>(e.index)];
    if (e.chunk) {
      c.text += e.chunk->text();
      if (c.logprobs) c.logprobs->Add(*e.chunk);
    } else if (e.final) {
      c.final = *e.final;
    } else if (e.final_status) {
      ++finals_;
    }
  }

  // One event as server-sent events ("" when it adds nothing to the stream).
  std::string Format(const Event& e) {
    Absorb(e);
    Choice& c = choices_[static_cast<size_t>(e.index)];
    std::string out;
    auto emit = [&](json choice) {
      json j = Envelope(ChunkObject());
      j["choices"] = json::array({std::move(choice)});
      if (req_.include_usage) j["usage"] = nullptr;
      out += "data: " + Dump(j) + "\n\n";
    };
    const bool chat = req_.kind == ApiKind::kChat;
    if (!c.started && !e.final_status) {
      c.started = true;
      const std::string& echo = EchoFor(static_cast<size_t>(e.index));
      if (chat) {
        emit({{"index", e.index},
              {"delta", {{"role", "assistant"}, {"content", ""}}},
              {"logprobs", nullptr},
              {"finish_reason", nullptr}});
      } else if (!echo.empty()) {
        emit({{"index", e.index},
              {"text", echo},
              {"logprobs", nullptr},
              {"finish_reason", nullptr}});
      }
    }
    if (e.chunk) {
      const json lp = c.logprobs ? c.logprobs->Take() : json(nullptr);
      if (e.chunk->text().empty() && !c.logprobs) return out;
      if (chat) {
        emit({{"index", e.index},
              {"delta", {{"content", e.chunk->text()}}},
              {"logprobs", lp},
              {"finish_reason", nullptr}});
      } else {
        emit({{"index", e.index},
              {"text", e.chunk->text()},
              {"logprobs", lp},
              {"finish_reason", nullptr}});
      }
    } else if (e.final) {
      const char* finish = FinishReasonName(e.final->finish_reason());
      if (chat) {
        emit({{"index", e.index},
              {"delta", json::object()},
              {"logprobs", nullptr},
              {"finish_reason", finish}});
      } else {
        emit({{"index", e.index}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", finish}});
      }
    } else if (e.final_status && !e.final_status->ok() && !cancelled_) {
      ApiError err = ErrorForStatus(FromGrpcStatus(*e.final_status));
      out += "data: " + Dump(err.ToJson()) + "\n\n";
    }
    return out;
  }

  const ResponderContext ctx_;
  OpenAiRequest req_;
  ConnectionWatch watch_;
  const std::string id_;
  int64_t created_ = 0;
  std::vector<Choice> choices_;
  std::unique_ptr<HttpGeneration> gen_;
  std::optional<Event> pending_;
  std::chrono::steady_clock::time_point last_check_{};
  int32_t finals_ = 0;
  bool cancelled_ = false;
};

}  // namespace

void RespondError(httplib::Response& res, const ApiError& error) {
  res.status = error.http_status;
  res.set_content(Dump(error.ToJson()), "application/json");
}

void Respond(const ResponderContext& ctx, OpenAiRequest request, const httplib::Request& req,
             httplib::Response& res) {
  const bool stream = request.stream;
  auto session = std::make_shared<Session>(
      ctx, std::move(request),
      ConnectionWatch(req.local_addr, req.local_port, req.remote_addr, req.remote_port));
  if (!stream) {
    json body;
    if (auto err = session->RunToEnd(&body)) return RespondError(res, *err);
    res.status = 200;
    res.set_content(Dump(body), "application/json");
    return;
  }
  if (auto err = session->WaitStart()) return RespondError(res, *err);
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [session](size_t /*offset*/, httplib::DataSink& sink) { return session->Stream(sink); });
}

}  // namespace tandem::http
