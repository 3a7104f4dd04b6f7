// TokenizeQueue: tasks run on its own threads, at most `max_waiting` wait, one more is refused
// with RESOURCE_EXHAUSTED naming the bound, and queued tasks still run at destruction.
#include "tandem/router/tokenize_queue.h"

#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <future>
#include <string>

namespace tandem {
namespace {

std::string ThreadName() {
  char name[16] = {};
  pthread_getname_np(pthread_self(), name, sizeof(name));
  return name;
}

TEST(TokenizeQueueTest, RunsTasksOnItsOwnThreads) {
  TokenizeQueue q(2, 8);
  std::promise<std::string> name;
  ASSERT_TRUE(q.Submit([&] { name.set_value(ThreadName()); }).ok());
  EXPECT_EQ(name.get_future().get(), "tandem-tokenize");
}

TEST(TokenizeQueueTest, BeyondTheBoundATaskIsRefusedWithTheBoundNamed) {
  std::atomic<int> ran{0};
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::promise<void> started;
  {
    TokenizeQueue q(1, 2);
    // The one thread blocks in the first task; two more wait; a fourth is refused.
    ASSERT_TRUE(q.Submit([&] {
                   started.set_value();
                   released.wait();
                   ++ran;
                 }).ok());
    started.get_future().wait();
    ASSERT_TRUE(q.Submit([&] { ++ran; }).ok());
    ASSERT_TRUE(q.Submit([&] { ++ran; }).ok());
    EXPECT_EQ(q.waiting(), 2);
    Status refused = q.Submit([&] { ++ran; });
    EXPECT_EQ(refused.code(), StatusCode::kResourceExhausted);
    EXPECT_NE(refused.message().find("--max-tokenize-queue 2"), std::string::npos)
        << refused.message();
    release.set_value();
  }  // the destructor runs what waits
  EXPECT_EQ(ran.load(), 3);
}

}  // namespace
}  // namespace tandem
