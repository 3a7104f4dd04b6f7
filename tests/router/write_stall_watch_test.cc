#include "../../router/src/write_stall_watch.h"

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <thread>

#include <gtest/gtest.h>

namespace tandem {
namespace {

using std::chrono::milliseconds;

// Hang guard only: every wait below ends as soon as the stall it waits for is reported.
constexpr auto kWait = std::chrono::seconds(120);

// A stream whose stalls are counted and the first one reported through `stalled`.
struct Watched {
  explicit Watched(WriteStallWatch& watch) {
    stream = watch.Watch([this] {
      if (stalls.fetch_add(1) == 0) stalled.set_value();
    });
  }
  std::atomic<int> stalls{0};
  std::promise<void> stalled;
  std::shared_ptr<WriteStallWatch::Stream> stream;
};

TEST(WriteStallWatchTest, OffWatchesNothing) {
  WriteStallWatch watch(milliseconds(0));
  EXPECT_EQ(watch.Watch([] {}), nullptr);
}

TEST(WriteStallWatchTest, WriteInFlightTooLongStallsOnce) {
  WriteStallWatch watch(milliseconds(20));
  Watched a(watch);
  const auto start = std::chrono::steady_clock::now();
  a.stream->WriteStarted();
  ASSERT_EQ(a.stalled.get_future().wait_for(kWait), std::future_status::ready);
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(20));
  // Later writes of a stalled stream are not watched: the call is ending.
  a.stream->WriteEnded();
  a.stream->WriteStarted();
  Watched b(watch);  // due after any second stall of `a` would have been
  b.stream->WriteStarted();
  ASSERT_EQ(b.stalled.get_future().wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(a.stalls.load(), 1);
  a.stream->Close();
  b.stream->Close();
}

// Writes start in time order and share the timeout, so a stream armed after another is due
// after it: when the later one stalls, the earlier one would have stalled first.
TEST(WriteStallWatchTest, WritesThatEndInTimeAndClosedStreamsNeverStall) {
  WriteStallWatch watch(milliseconds(50));
  Watched ended(watch), closed(watch), idle(watch), late(watch);
  for (int i = 0; i < 100; ++i) {  // each write ends: none is in flight for long
    ended.stream->WriteStarted();
    ended.stream->WriteEnded();
  }
  ended.stream->WriteStarted();
  ended.stream->WriteEnded();
  closed.stream->WriteStarted();
  closed.stream->Close();
  late.stream->WriteStarted();
  ASSERT_EQ(late.stalled.get_future().wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(ended.stalls.load(), 0);
  EXPECT_EQ(closed.stalls.load(), 0);
  EXPECT_EQ(idle.stalls.load(), 0);
  ended.stream->Close();
  idle.stream->Close();
  late.stream->Close();
}

TEST(WriteStallWatchTest, CloseWaitsForARunningStall) {
  WriteStallWatch watch(milliseconds(1));
  std::promise<void> entered, release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> done{false};
  auto stream = watch.Watch([&] {
    entered.set_value();
    released.wait();
    done.store(true);
  });
  stream->WriteStarted();
  ASSERT_EQ(entered.get_future().wait_for(kWait), std::future_status::ready);
  std::thread closer([&] {
    stream->Close();
    EXPECT_TRUE(done.load());  // Close returned only after on_stall did
  });
  release.set_value();
  closer.join();
}

TEST(WriteStallWatchTest, DestroyedWithWritesInFlight) {
  auto watch = std::make_unique<WriteStallWatch>(std::chrono::hours(1));
  Watched a(*watch);
  a.stream->WriteStarted();
  watch.reset();  // joins without waiting for the hour
  EXPECT_EQ(a.stalls.load(), 0);
}

}  // namespace
}  // namespace tandem
