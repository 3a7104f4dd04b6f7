#include "http_generation.h"

#include "tandem/common/logging.h"

namespace tandem::http {

// One call's output: every write becomes an event; the reader's Ack completes it.
class HttpGeneration::Output final : public GenerateOutput {
 public:
  Output(HttpGeneration* owner, int32_t index, std::shared_ptr<GenerateCall> call)
      : owner_(owner), index_(index), call_(std::move(call)) {}

  void StartWrite(const v1::GenerateResponse* msg) override {
    Event e;
    e.index = index_;
    if (msg->has_chunk()) {
      e.chunk = msg->chunk();
    } else {
      e.final = msg->final();
    }
    owner_->Push(std::move(e));
  }
  void Finish(const grpc::Status& status) override {
    Event e;
    e.index = index_;
    e.final_status = status;
    // The reader may destroy this output as soon as it sees the event: touch no member after
    // Push, and keep the call alive until its Pump has returned.
    std::shared_ptr<GenerateCall> keep = call_;
    keep->OnOutputDone();
    owner_->Push(std::move(e));
  }

  GenerateCall& call() { return *call_; }
  bool finished = false;  // guarded by the owner's mu_

 private:
  HttpGeneration* owner_;
  int32_t index_;
  std::shared_ptr<GenerateCall> call_;
};

HttpGeneration::HttpGeneration(RouterBackend* backend, CallTracker* calls, bool draining,
                               std::chrono::system_clock::time_point deadline,
                               const std::vector<v1::GenerateRequest>& requests,
                               int32_t fit_max_tokens) {
  for (size_t i = 0; i < requests.size(); ++i) {
    auto call = std::make_shared<GenerateCall>(backend, calls, deadline, requests[i]);
    call->set_fit_max_tokens(fit_max_tokens);
    outputs_.push_back(std::make_unique<Output>(this, static_cast<int32_t>(i), std::move(call)));
  }
  // Started only once every output exists: a call may finish (and push) during Start.
  for (auto& o : outputs_) o->call().Start(o.get(), draining);
}

HttpGeneration::~HttpGeneration() {
  Cancel();
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!done() && std::chrono::steady_clock::now() < end) {
    if (auto e = Next(std::chrono::milliseconds(100)); e && !e->final_status) Ack(*e, false);
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_ < size()) {
    // A call that never finishes would write into freed outputs: keep them (a bug, logged).
    TLOG_ERROR("http: {} of {} calls did not finish within 30 s of cancellation; leaking them",
               size() - finished_, size());
    for (auto& o : outputs_) (void)o.release();
  }
}

void HttpGeneration::Push(Event e) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (e.final_status) {
      ++finished_;
      outputs_[static_cast<size_t>(e.index)]->finished = true;
    }
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

std::optional<Event> HttpGeneration::Next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return std::nullopt;
  Event e = std::move(events_.front());
  events_.pop_front();
  return e;
}

void HttpGeneration::Ack(const Event& event, bool ok) {
  outputs_[static_cast<size_t>(event.index)]->call().OnWriteDone(ok);
}

void HttpGeneration::Cancel() {
  std::vector<Output*> running;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& o : outputs_) {
      if (!o->finished) running.push_back(o.get());
    }
  }
  for (Output* o : running) o->call().Cancel();
}

bool HttpGeneration::done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_ == size();
}

}  // namespace tandem::http
