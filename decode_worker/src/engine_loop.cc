#include "tandem/decode_worker/engine_loop.h"

#include <algorithm>
#include <chrono>
#include <span>

#include "tandem/common/logging.h"

namespace tandem {

namespace {
constexpr std::chrono::milliseconds kStalledRetry{5};
}  // namespace

EngineLoop::EngineLoop(Engine& engine, const GeneratorOptions& options, KvStaging* staging)
    : engine_(engine), staging_(staging), generator_(engine, options) {
  thread_ = std::thread([this] { Run(); });
}

EngineLoop::~EngineLoop() { Stop(); }

int64_t EngineLoop::Submit(GenerationRequest request, std::vector<int32_t> blocks,
                           int32_t first_token, std::shared_ptr<TokenSink> sink,
                           int32_t cached_blocks) {
  Command cmd;
  cmd.request = std::move(request);
  cmd.blocks = std::move(blocks);
  cmd.cached_blocks = cached_blocks;
  cmd.first_token = first_token;
  cmd.sink = std::move(sink);
  {
    std::lock_guard<std::mutex> lock(mu_);
    cmd.id = next_id_++;
    if (!stop_) {
      const int64_t id = cmd.id;
      ++num_active_;
      commands_.push_back(std::move(cmd));
      cv_.notify_one();
      return id;
    }
  }
  ReleaseBlocks(cmd.blocks);
  cmd.sink->OnError(UnavailableError("decode engine is stopped"));
  return cmd.id;
}

void EngineLoop::Cancel(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) return;
  Command cmd;
  cmd.id = id;
  cmd.cancel = true;
  commands_.push_back(std::move(cmd));
  cv_.notify_one();
}

void EngineLoop::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void EngineLoop::ReleaseBlocks(std::span<const int32_t> blocks) {
  if (PrefixCache* pc = engine_.prefix_cache()) {
    pc->Release(blocks);
  } else {
    engine_.kv_cache().allocator().Release(blocks);
  }
}

void EngineLoop::Apply(Command& cmd) {
  if (cmd.cancel) {
    auto it = handle_of_.find(cmd.id);
    if (it != handle_of_.end()) generator_.Cancel(it->second);
    return;
  }
  if (staging_ != nullptr) {
    // Device pages: the transfer wrote the mirror. The prompt's blocks (with the tokens
    // generated before a failover) go to the device before the request can join a batch (this
    // thread runs every forward, so none reads them yet).
    const int64_t arrived =
        static_cast<int64_t>(cmd.request.prompt.size() + cmd.request.generated.size());
    const size_t prompt_blocks =
        std::min(cmd.blocks.size(), static_cast<size_t>(engine_.kv_cache().BlocksFor(arrived)));
    // Blocks from the prefix cache are on the device already (and may be read by others).
    const size_t first = std::min(prompt_blocks, static_cast<size_t>(cmd.cached_blocks));
    Status st = staging_->ToDevice(
        std::span<const int32_t>(cmd.blocks.data() + first, prompt_blocks - first));
    if (!st.ok()) {  // the sink logs it with the request's id
      ReleaseBlocks(cmd.blocks);
      --num_active_;
      cmd.sink->OnError(
          InternalError("copying the received KV pages to the device failed: {}", st.message()));
      return;
    }
  }
  auto handle = generator_.AddPrefilled(std::move(cmd.request), cmd.blocks, cmd.first_token);
  if (!handle.ok()) {
    ReleaseBlocks(cmd.blocks);
    --num_active_;
    cmd.sink->OnError(handle.status());
    return;
  }
  by_handle_[*handle] = Active{cmd.id, std::move(cmd.sink)};
  handle_of_[cmd.id] = *handle;
}

void EngineLoop::Run() {
  std::vector<TokenEvent> events;
  // Nothing runs and the waiting (preempted) requests found no pages: those are held by
  // reservations whose KV is still arriving, which the table frees without telling this loop.
  bool stalled = false;
  for (;;) {
    std::deque<Command> commands;
    {
      std::unique_lock<std::mutex> lock(mu_);
      auto ready = [&] { return stop_ || !commands_.empty() || generator_.HasWork(); };
      if (stalled) {
        cv_.wait_for(lock, kStalledRetry, [&] { return stop_ || !commands_.empty(); });
      } else {
        cv_.wait(lock, ready);
      }
      if (stop_) {
        commands = std::move(commands_);
        commands_.clear();
        lock.unlock();
        // Shutdown: queued submissions and running requests end with UNAVAILABLE.
        for (auto& cmd : commands) {
          if (cmd.cancel) continue;
          ReleaseBlocks(cmd.blocks);
          --num_active_;
          cmd.sink->OnError(UnavailableError("decode worker is shutting down"));
        }
        for (auto& [handle, active] : by_handle_) {
          generator_.Cancel(handle);  // frees its pages now
          --num_active_;
          active.sink->OnError(UnavailableError("decode worker is shutting down"));
        }
        by_handle_.clear();
        handle_of_.clear();
        events.clear();
        (void)generator_.Step(&events);  // drains the cancel confirmations
        return;
      }
      commands = std::move(commands_);
      commands_.clear();
    }
    for (auto& cmd : commands) Apply(cmd);
    stalled = false;
    if (!generator_.HasWork()) continue;
    events.clear();
    Status st = generator_.Step(&events);
    stalled = st.ok() && events.empty() && generator_.num_running() == 0 && generator_.HasWork();
    preemptions_.store(generator_.num_preemptions());
    for (const TokenEvent& ev : events) {
      auto it = by_handle_.find(ev.request);
      if (it == by_handle_.end()) continue;
      it->second.sink->OnEvent(ev);
      if (ev.finish != FinishReason::kNone) {
        handle_of_.erase(it->second.id);
        by_handle_.erase(it);
        --num_active_;
      }
    }
    if (!st.ok()) {
      TLOG_ERROR("decode step failed: {}; ending {} requests", st.ToString(), by_handle_.size());
      for (auto& [handle, active] : by_handle_) {
        generator_.Cancel(handle);
        --num_active_;
        active.sink->OnError(InternalError("decode step failed: {}", st.message()));
      }
      by_handle_.clear();
      handle_of_.clear();
      events.clear();
      (void)generator_.Step(&events);
    }
  }
}

}  // namespace tandem
