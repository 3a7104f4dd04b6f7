// The decode engine loop with host staging: a request's prompt pages go mirror → device before
// it joins the batch, and a failed copy ends it with INTERNAL and frees its pages. The "device"
// pool is a host-backed fake whose memory() is kDevice (the real one is tested under the CUDA
// interpreter in engine_cuda/ and through a cluster in tests/python/test_cuda_backend.py).
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <gtest/gtest.h>

#include "../engine/test_model.h"
#include "tandem/decode_worker/engine_loop.h"
#include "tandem/engine/kv_staging.h"

namespace tandem {
namespace {

using namespace std::chrono_literals;

// Pages in a host vector that claim to be device memory; CopyFromHost fails when told to.
class FakeDevicePool final : public PagePool {
 public:
  FakeDevicePool(const KvGeometry& g, int32_t num_blocks)
      : PagePool(g, num_blocks, PageMemory::kDevice), memory_(bytes()) {
    base_ = memory_.data();
  }
  std::string_view kind() const override { return "fake-device"; }
  Status CopyFromHost(int32_t layer, std::span<const int32_t> blocks,
                      const PagePool& host) override {
    if (fail) return InternalError("fake device: copy failed");
    return PagePool::CopyFromHost(layer, blocks, host);
  }
  bool fail = false;

 private:
  std::vector<std::byte> memory_;
};

class Sink final : public TokenSink {
 public:
  void OnEvent(const TokenEvent& ev) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (ev.finish != FinishReason::kNone) {
      done_ = Status::Ok();
      cv_.notify_all();
    }
  }
  void OnError(const Status& s) override {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = s;
    cv_.notify_all();
  }
  std::optional<Status> Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, 2min, [&] { return done_.has_value(); });
    return done_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Status> done_;
};

class EngineLoopStagingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir("engine_loop_staging");
    testing::TinyModelSpec spec;
    testing::WriteTinyModel(dir_, spec);
    EngineOptions eo;
    eo.kv_cache_bytes = 1 << 20;
    eo.num_threads = 1;
    auto e = Engine::Load(dir_, eo);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(e).value();
    device_ = std::make_unique<FakeDevicePool>(engine_->kv_cache().geometry(),
                                               engine_->kv_cache().allocator().num_blocks());
    auto staging = KvStaging::ForPool(*device_);
    ASSERT_TRUE(staging.ok()) << staging.status().ToString();
    ASSERT_NE(*staging, nullptr);
    staging_ = std::move(staging).value();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Submits a 20-token prompt (2 blocks of 16) with 3 blocks reserved, the first
  // `cached_blocks` of them from the prefix cache; returns its end.
  std::optional<Status> Run(EngineLoop& loop, int32_t cached_blocks = 0) {
    GenerationRequest r;
    for (int t = 0; t < 20; ++t) r.prompt.push_back(3 + t);
    r.max_tokens = 3;
    r.ignore_eos = true;
    r.sampling.temperature = 0.0f;
    auto blocks = engine_->kv_cache().allocator().Allocate(3);
    EXPECT_TRUE(blocks.ok());
    auto sink = std::make_shared<Sink>();
    loop.Submit(r, std::move(blocks).value(), 5, sink, cached_blocks);
    return sink->Wait();
  }

  std::filesystem::path dir_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<FakeDevicePool> device_;
  std::unique_ptr<KvStaging> staging_;
};

TEST_F(EngineLoopStagingTest, PromptBlocksAreCopiedToTheDeviceBeforeDecoding) {
  EngineLoop loop(*engine_, GeneratorOptions{}, staging_.get());
  std::optional<Status> end = Run(loop);
  ASSERT_TRUE(end.has_value());
  EXPECT_TRUE(end->ok()) << end->ToString();
  // The prompt's 2 blocks (not the third, reserved for generated tokens), every layer.
  EXPECT_EQ(staging_->staged_bytes(),
            static_cast<int64_t>(2 * engine_->kv_cache().geometry().BlockBytes()));
  loop.Stop();
  EXPECT_EQ(engine_->kv_cache().allocator().num_used(), 0);
}

TEST_F(EngineLoopStagingTest, BlocksFromThePrefixCacheAreNotCopied) {
  EngineLoop loop(*engine_, GeneratorOptions{}, staging_.get());
  std::optional<Status> end = Run(loop, /*cached_blocks=*/1);
  ASSERT_TRUE(end.has_value());
  EXPECT_TRUE(end->ok()) << end->ToString();
  // Only the prompt's second block arrived in the mirror: the first is on the device already.
  EXPECT_EQ(staging_->staged_bytes(),
            static_cast<int64_t>(engine_->kv_cache().geometry().BlockBytes()));
  loop.Stop();
  EXPECT_EQ(engine_->kv_cache().allocator().num_used(), 0);
}

TEST_F(EngineLoopStagingTest, AFailedCopyEndsTheRequestAndFreesItsPages) {
  device_->fail = true;
  EngineLoop loop(*engine_, GeneratorOptions{}, staging_.get());
  std::optional<Status> end = Run(loop);
  ASSERT_TRUE(end.has_value());
  EXPECT_EQ(end->code(), StatusCode::kInternal) << end->ToString();
  EXPECT_NE(end->message().find("copy failed"), std::string::npos) << end->ToString();
  EXPECT_EQ(loop.num_active(), 0);
  EXPECT_EQ(engine_->kv_cache().allocator().num_used(), 0);
  EXPECT_EQ(staging_->staged_bytes(), 0);
}

}  // namespace
}  // namespace tandem
