// EngineLoop: the one thread that owns the decode worker's Generator (which is not
// thread-safe). Other threads submit prefilled requests and cancels through a mutex-protected
// command queue; the loop applies them, runs Generator::Step while there is work, and hands
// each request's events to its TokenSink.
//
// Ownership: Submit hands the request's KV blocks to the loop, which releases them exactly
// once (through the Generator on finish / cancel, or at once when AddPrefilled refuses them).
// Every submitted request gets exactly one terminal call on its sink: an event with a finish
// reason (kLength, kStop, kCancelled) or OnError.
//
// Thread safety: Submit, Cancel and the accessors may be called from any thread. Sinks are
// called on the loop thread and must not block (reactors queue the write and return).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/engine.h"
#include "tandem/engine/kv_staging.h"

namespace tandem {

class TokenSink {
 public:
  virtual ~TokenSink() = default;
  // One generated token (or, with finish == kCancelled and no token, the cancel confirmation).
  virtual void OnEvent(const TokenEvent& event) = 0;
  // The request ended with an error (validation, engine failure, shutdown).
  virtual void OnError(const Status& status) = 0;
};

class EngineLoop {
 public:
  // `staging`: with device pages, the host mirror the transceiver received into; before a
  // submitted request joins the batch, the loop copies its received prompt blocks (every layer;
  // not the leading blocks that came from the prefix cache) mirror → device, and a failed copy
  // ends it (OnError INTERNAL, pages released). nullptr: the pages
  // were received in place. `engine` and `staging` must outlive the loop.
  EngineLoop(Engine& engine, const GeneratorOptions& options, KvStaging* staging = nullptr);
  // Stop().
  ~EngineLoop();
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Queues a request whose prompt KV is in `blocks` (see Generator::AddPrefilled); returns the
  // id used by Cancel. After Stop the sink gets OnError(UNAVAILABLE) and the blocks go back.
  // `cached_blocks`: the leading blocks that hold a cached prefix already on the device (with
  // staging, they are not copied from the mirror).
  int64_t Submit(GenerationRequest request, std::vector<int32_t> blocks, int32_t first_token,
                 std::shared_ptr<TokenSink> sink, int32_t cached_blocks = 0);
  // Cancels a submitted request (its sink then gets a kCancelled event); no-op once it ended.
  void Cancel(int64_t id);
  // Ends every request (OnError UNAVAILABLE), frees their pages and joins the thread.
  void Stop();

  // Requests submitted and not yet ended.
  int32_t num_active() const { return num_active_.load(); }
  // Requests preempted so far to make room for older ones (they resume by recomputing their
  // K/V on this worker; see Generator).
  int64_t num_preemptions() const { return preemptions_.load(); }

 private:
  struct Command {
    int64_t id = 0;
    bool cancel = false;
    GenerationRequest request;
    std::vector<int32_t> blocks;
    int32_t cached_blocks = 0;
    int32_t first_token = -1;
    std::shared_ptr<TokenSink> sink;
  };
  struct Active {
    int64_t id = 0;
    std::shared_ptr<TokenSink> sink;
  };

  void Run();
  void Apply(Command& cmd);
  // Gives blocks back (through the engine's prefix cache when there is one).
  void ReleaseBlocks(std::span<const int32_t> blocks);

  Engine& engine_;
  KvStaging* const staging_;  // null for host pages
  Generator generator_;       // touched only by the loop thread (and the destructor after join)

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Command> commands_;
  bool stop_ = false;
  int64_t next_id_ = 0;

  // Loop thread only.
  std::map<int64_t, Active> by_handle_;   // generator handle → request
  std::map<int64_t, int64_t> handle_of_;  // loop id → generator handle

  std::atomic<int32_t> num_active_{0};
  std::atomic<int64_t> preemptions_{0};
  std::thread thread_;
};

}  // namespace tandem
