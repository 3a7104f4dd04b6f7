// WriteStallWatch: one thread that ends gRPC streams whose client stopped reading.
//
// A server-streaming call's write completes only once HTTP/2 flow control lets its bytes out; a
// client that never reads never opens its window again, so the write never completes and the
// call (its admission slot, its decode pages) lives until its deadline, possibly never. Keepalive
// does not help: the client's transport still answers pings. Each stream tells the watch when a
// write starts and when it ends; a write still in flight after `timeout` makes the watch run the
// stream's `on_stall` (which cancels the call), once.
//
// One thread for every stream: it sleeps until the oldest write in flight is due (writes start
// in time order and share one timeout, so the oldest is always the first due) or, with none in
// flight, until one starts.
//
// Thread safety: every method may be called concurrently. `on_stall` runs on the watch's thread
// with the stream's lock held, so Close (which takes it too) returns only once a running
// `on_stall` has returned, and none runs after; `on_stall` must therefore not call Close of its
// own stream inline (gRPC runs the reactions of application reactors on its own threads).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <thread>

namespace tandem {

class WriteStallWatch {
 public:
  using Clock = std::chrono::steady_clock;

  // One watched stream (from Watch): WriteStarted before each write, WriteEnded when it
  // completes (at most one in flight), Close once the stream is done.
  class Stream : public std::enable_shared_from_this<Stream> {
   public:
    void WriteStarted();
    void WriteEnded();
    // After it returns `on_stall` is not running and never runs.
    void Close();

   private:
    friend class WriteStallWatch;
    Stream(WriteStallWatch* watch, std::function<void()> on_stall)
        : watch_(watch), on_stall_(std::move(on_stall)) {}

    WriteStallWatch* const watch_;
    std::function<void()> on_stall_;
    std::mutex mu_;        // held while on_stall_ runs
    bool closed_ = false;  // guarded by mu_
    // Guarded by the watch's mu_: the write in flight, if any, and its place in armed_.
    bool armed_ = false;
    bool stalled_ = false;  // on_stall_ was due: later writes are not watched
    Clock::time_point since_;
    std::list<std::shared_ptr<Stream>>::iterator pos_;
  };

  // `timeout` 0 = off: no thread, and Watch returns nullptr.
  explicit WriteStallWatch(std::chrono::milliseconds timeout);
  // Stops the thread; streams still open are not ended. Outlives every Stream it made.
  ~WriteStallWatch();
  WriteStallWatch(const WriteStallWatch&) = delete;
  WriteStallWatch& operator=(const WriteStallWatch&) = delete;

  std::chrono::milliseconds timeout() const { return timeout_; }
  // A stream to watch, or nullptr when the watch is off.
  std::shared_ptr<Stream> Watch(std::function<void()> on_stall);

 private:
  void Run();

  const std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  // Streams with a write in flight, oldest first.
  std::list<std::shared_ptr<Stream>> armed_;
  std::thread thread_;
};

}  // namespace tandem
