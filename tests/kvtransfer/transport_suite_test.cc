// One fault suite for every KV transport this machine has (tcp, shm, and nccl over the loopback
// fake NCCL, which runs the nccl data plane's code on CPU): the same requests, the
// same faults (a peer process SIGKILLed mid-transfer among them), the same promises — exact pages,
// one terminal status per side, no page handed back while a copy could still land in it, nothing
// leaked. Built with TANDEM_TEST_CUDA_IPC (tests/kvtransfer_cuda/) the same suite runs over
// cuda_ipc instead, device pages on both sides: on the CUDA interpreter in CI, on a GPU in
// tools/gpu_check.sh.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <thread>

#include "child_process.h"
#include "tandem/kvtransfer/nccl_api.h"
#include "tandem/kvtransfer/shared_pages.h"
#include "tandem/kvtransfer/transceiver.h"
#include "test_util.h"
#if TANDEM_TEST_CUDA_IPC
#include "device_pages.h"
#endif

namespace tandem {
namespace {

using namespace std::chrono_literals;
using testing_kv::DoneLatch;
using testing_kv::Eventually;
using testing_kv::In;
using testing_kv::kGuard;
using testing_kv::kLong;

constexpr int32_t kPoolBlocks = 256;

// A receiving worker: its page pool (shared memory for shm) and its transceiver.
struct Receiver {
  std::unique_ptr<SharedPageBuffer> shm_pages;
  std::unique_ptr<HostPageBuffer> host_pages;
  const PageAccessor* pages = nullptr;
  std::unique_ptr<Transceiver> t;
  std::string endpoint;  // what tickets name: "host:port", "shm:<socket>" or "nccl:host:port"
#if TANDEM_TEST_CUDA_IPC
  std::unique_ptr<testing_kv::DevicePool> device;  // cuda_ipc: exportable device memory
#endif
  // The pool's bytes as host memory (a copy taken now for device pools).
  std::span<std::byte> bytes() const {
#if TANDEM_TEST_CUDA_IPC
    if (device) return device->Snapshot().bytes();
#endif
    return shm_pages ? shm_pages->bytes() : host_pages->bytes();
  }
  // The pages for checks, as host memory (a copy taken now for device pools).
  const PageAccessor& View() const {
#if TANDEM_TEST_CUDA_IPC
    if (device) return device->Snapshot();
#endif
    return *pages;
  }
};

// The pages a sender hands the transceiver for host pages `src`: themselves, or for cuda_ipc a
// device copy of them (freed at the end of the test).
const PageAccessor& Src(const KvPageLayout& layout, const HostPageBuffer& src) {
#if TANDEM_TEST_CUDA_IPC
  return testing_kv::DeviceSources::Get().Mirror(layout, src);
#else
  (void)layout;
  return src;
#endif
}

std::unique_ptr<Receiver> MakeReceiver(const std::string& transport, const KvPageLayout& layout,
                                       std::chrono::milliseconds io_timeout = 5000ms) {
  auto r = std::make_unique<Receiver>();
  TransceiverOptions o;
  o.layout = layout;
  o.io_timeout = io_timeout;
#if TANDEM_TEST_CUDA_IPC
  if (transport == "cuda_ipc") {
    r->device = testing_kv::MakeDevicePool(layout, kPoolBlocks);
    if (!r->device) return nullptr;
    r->pages = r->device->pages.get();
    o.device_pool = SharedPagePool{r->device->alloc.fd, r->device->alloc.mapping->base(),
                                   r->device->bytes, kPoolBlocks};
    o.device_ipc = &testing_kv::TestDeviceIpc();
  } else
#endif
      if (transport == "shm") {
    auto buf = SharedPageBuffer::Create(layout, kPoolBlocks);
    if (!buf.ok()) return nullptr;
    r->shm_pages = std::move(buf).value();
    r->pages = r->shm_pages.get();
    o.shm_pool = r->shm_pages->pool();
  } else {
    if (transport == "nccl") o.nccl = &FakeNcclApi();
    r->host_pages = std::make_unique<HostPageBuffer>(layout, kPoolBlocks);
    r->pages = r->host_pages.get();
  }
  auto t = Transceiver::Create(o);
  if (!t.ok()) return nullptr;
  r->t = std::move(t).value();
  r->endpoint = transport == "shm"        ? r->t->shm_endpoint()
                : transport == "nccl"     ? r->t->nccl_endpoint()
                : transport == "cuda_ipc" ? r->t->cuda_ipc_endpoint()
                                          : r->t->endpoint();
  return r;
}

std::unique_ptr<Transceiver> MakeSender(const KvPageLayout& layout,
                                        const NcclApi* nccl = &FakeNcclApi()) {
  TransceiverOptions o;
  o.layout = layout;
  o.listen = false;
  o.nccl = nccl;
#if TANDEM_TEST_CUDA_IPC
  o.device_ipc = &testing_kv::TestDeviceIpc();
#endif
  auto t = Transceiver::Create(o);
  return t.ok() ? std::move(t).value() : nullptr;
}

TransferTicket Ticket(const Receiver& r, uint64_t id, std::vector<int32_t> blocks,
                      std::chrono::milliseconds timeout = kLong) {
  return {id, r.endpoint, std::move(blocks), r.t->fingerprint(), In(timeout)};
}

class TransportSuite : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
#if TANDEM_TEST_CUDA_IPC
    if (const std::string why = testing_kv::NoDeviceIpcReason(); !why.empty()) GTEST_SKIP() << why;
#endif
    layout_ = testing_kv::SmallLayout();
    receiver_ = MakeReceiver(GetParam(), layout_);
    ASSERT_NE(receiver_, nullptr);
    ASSERT_FALSE(receiver_->endpoint.empty());
    sender_ = MakeSender(layout_);
    ASSERT_NE(sender_, nullptr);
  }
#if TANDEM_TEST_CUDA_IPC
  void TearDown() override { testing_kv::DeviceSources::Get().Clear(); }
#endif
  // Every request ended on both sides and every shm page was handed back.
  void ExpectIdle() {
    EXPECT_TRUE(Eventually([&] {
      auto r = receiver_->t->stats();
      return sender_->stats().active_sends == 0 && r.active_receives == 0 && r.fencing == 0;
    }));
  }
  KvPageLayout layout_;
  std::unique_ptr<Receiver> receiver_;
  std::unique_ptr<Transceiver> sender_;
};

TEST_P(TransportSuite, LayersLandOneAtATimeInAnyOrderExactly) {
  std::mt19937_64 rng(3);
  HostPageBuffer src(layout_, 64);
  testing_kv::FillRandom(src, 5);
  auto src_blocks = testing_kv::RandomBlocks(11, 64, rng);
  auto dst_blocks = testing_kv::RandomBlocks(11, kPoolBlocks, rng);
  DoneLatch done;
  ASSERT_TRUE(
      receiver_->t->ExpectTransfer(1, *receiver_->pages, dst_blocks, In(kLong), done.Callback())
          .ok());
  auto h = sender_->StartSend(Ticket(*receiver_, 1, dst_blocks), Src(layout_, src), src_blocks);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  int64_t received = 0;
  for (int32_t layer : {3, 1, 0, 2}) {
    ASSERT_TRUE(sender_->SendLayer(*h, layer).ok());
    // Each layer lands on its own, before the next one is computed (per-layer overlap).
    ASSERT_TRUE(Eventually([&] { return receiver_->t->stats().layers_received == received + 1; }));
    ++received;
  }
  EXPECT_TRUE(sender_->Wait(*h).ok());
  auto got = done.Get();
  ASSERT_TRUE(got.has_value() && got->ok()) << (got ? got->ToString() : "no completion");
  testing_kv::ExpectSamePages(src, src_blocks, receiver_->View(), dst_blocks, layout_.num_layers);
  EXPECT_EQ(receiver_->t->stats().bytes_received,
            int64_t(layout_.num_layers) * 11 * int64_t(layout_.PageBytes()));
  ExpectIdle();
}

TEST_P(TransportSuite, ManyConcurrentTransfersAreExactAndIndependent) {
  constexpr int kRequests = 48, kBlocks = 4;
  std::mt19937_64 rng(4);
  HostPageBuffer src(layout_, kRequests * kBlocks);
  testing_kv::FillRandom(src, 6);
  auto all_dst = testing_kv::RandomBlocks(kRequests * kBlocks, kPoolBlocks, rng);
  std::vector<DoneLatch> done(kRequests);
  std::vector<SendHandle> handles;
  std::vector<std::vector<int32_t>> srcs, dsts;
  for (int i = 0; i < kRequests; ++i) {
    srcs.emplace_back();
    dsts.emplace_back(all_dst.begin() + i * kBlocks, all_dst.begin() + (i + 1) * kBlocks);
    for (int b = 0; b < kBlocks; ++b) srcs.back().push_back(i * kBlocks + b);
    ASSERT_TRUE(
        receiver_->t
            ->ExpectTransfer(100 + i, *receiver_->pages, dsts[i], In(kLong), done[i].Callback())
            .ok());
    auto h = sender_->StartSend(Ticket(*receiver_, 100 + i, dsts[i]), Src(layout_, src), srcs[i]);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    handles.push_back(*h);
  }
  // Interleaved: layer l of every request before layer l + 1 of any.
  for (int32_t l = 0; l < layout_.num_layers; ++l) {
    for (auto& h : handles) ASSERT_TRUE(sender_->SendLayer(h, l).ok());
  }
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_TRUE(sender_->Wait(handles[i]).ok());
    auto got = done[i].Get();
    ASSERT_TRUE(got.has_value() && got->ok());
    testing_kv::ExpectSamePages(src, srcs[i], receiver_->View(), dsts[i], layout_.num_layers);
  }
  ExpectIdle();
}

TEST_P(TransportSuite, ReceiverCancelMidTransferEndsBothSidesOnce) {
  HostPageBuffer src(layout_, 8);
  DoneLatch done;
  ASSERT_TRUE(
      receiver_->t->ExpectTransfer(7, *receiver_->pages, {4, 5}, In(kLong), done.Callback()).ok());
  auto h = sender_->StartSend(Ticket(*receiver_, 7, {4, 5}), Src(layout_, src), {0, 1});
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(sender_->SendLayer(*h, 0).ok());
  ASSERT_TRUE(Eventually([&] { return receiver_->t->stats().layers_received == 1; }));
  ASSERT_TRUE(receiver_->t->Cancel(7).ok());
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kCancelled) << got->ToString();
  EXPECT_EQ(sender_->Wait(*h).code(), StatusCode::kCancelled);
  EXPECT_EQ(sender_->SendLayer(*h, 1).code(), StatusCode::kCancelled);
  ExpectIdle();
  EXPECT_EQ(done.calls(), 1);
}

TEST_P(TransportSuite, SenderCancelMidTransferEndsBothSidesOnce) {
  HostPageBuffer src(layout_, 8);
  DoneLatch done;
  ASSERT_TRUE(
      receiver_->t->ExpectTransfer(8, *receiver_->pages, {9}, In(kLong), done.Callback()).ok());
  auto h = sender_->StartSend(Ticket(*receiver_, 8, {9}), Src(layout_, src), {2});
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(sender_->SendLayer(*h, 2).ok());
  ASSERT_TRUE(Eventually([&] { return receiver_->t->stats().layers_received == 1; }));
  ASSERT_TRUE(sender_->Cancel(8).ok());
  EXPECT_EQ(sender_->Wait(*h).code(), StatusCode::kCancelled);
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kCancelled) << got->ToString();
  ExpectIdle();
}

TEST_P(TransportSuite, DeadlineEndsBothSidesNoEarlierThanItSays) {
  HostPageBuffer src(layout_, 8);
  DoneLatch done;
  ASSERT_TRUE(
      receiver_->t->ExpectTransfer(9, *receiver_->pages, {1, 2}, In(kLong), done.Callback()).ok());
  const Deadline deadline = In(300ms);
  TransferTicket t = Ticket(*receiver_, 9, {1, 2});
  t.deadline = deadline;
  auto h = sender_->StartSend(t, Src(layout_, src), {3, 4});
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(sender_->SendLayer(*h, 0).ok());  // layers 1..3 never come
  Status s = sender_->Wait(*h);
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_GE(std::chrono::steady_clock::now(), deadline);
  auto got = done.Get();  // the sender's kAbort, or the receiver's own deadline
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kDeadlineExceeded) << got->ToString();
  ExpectIdle();
}

TEST_P(TransportSuite, LayoutMismatchRefusedBeforeAnyPageByte) {
  KvPageLayout other = layout_;
  other.model_hash ^= 1;  // same page size, other weights
  auto sender = MakeSender(other);
  ASSERT_NE(sender, nullptr);
  HostPageBuffer src(other, 8);
  testing_kv::FillRandom(src, 8);
  DoneLatch done;
  ASSERT_TRUE(
      receiver_->t->ExpectTransfer(10, *receiver_->pages, {0, 1}, In(kLong), done.Callback()).ok());
  TransferTicket t = Ticket(*receiver_, 10, {0, 1});
  t.dest_fingerprint = layout_.Fingerprint();
  auto h = sender->StartSend(t, Src(layout_, src), {0, 1});
  ASSERT_TRUE(h.ok());
  for (int32_t l = 0; l < other.num_layers; ++l) (void)sender->SendLayer(*h, l);
  Status s = sender->Wait(*h);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kFailedPrecondition) << got->ToString();
  EXPECT_TRUE(testing_kv::AllZero(receiver_->bytes()));
}

TEST_P(TransportSuite, SenderKilledMidTransferReleasesThePages) {
#if TANDEM_TEST_CUDA_IPC && !defined(TANDEM_CUDA_INTERP)
  GTEST_SKIP() << "a process forked after CUDA started cannot use CUDA; the GPU check runs "
                  "senders and receivers as separate programs";
#endif
  const std::string endpoint = receiver_->endpoint;
  const KvPageLayout layout = layout_;
  const uint64_t fingerprint = receiver_->t->fingerprint();
  sender_.reset();  // fork with as few threads as possible
  testing_kv::Child child;
  testing_kv::Spawn(&child, [&](int in, int out) {
    if (testing_kv::ReadInt(in, static_cast<int>(kGuard.count())) != 1) ::_exit(2);
    auto sender = MakeSender(layout);
    if (!sender) ::_exit(3);
    static HostPageBuffer src(layout, 8);
    testing_kv::FillRandom(src, 99);
    TransferTicket t{11, endpoint, {6, 7}, fingerprint, In(kLong)};
    auto h = sender->StartSend(t, Src(layout_, src), {1, 2});
    if (!h.ok()) ::_exit(4);
    (void)sender->SendLayer(*h, 0);
    (void)sender->SendLayer(*h, 1);
    while (true) ::pause();  // killed here
  });
  DoneLatch done;
  ASSERT_TRUE(
      receiver_->t->ExpectTransfer(11, *receiver_->pages, {6, 7}, In(kLong), done.Callback()).ok());
  const int go = 1;
  ASSERT_EQ(::write(child.to_child, &go, sizeof(go)), ssize_t(sizeof(go)));
  ASSERT_TRUE(Eventually([&] { return receiver_->t->stats().layers_received == 2; }));
  ASSERT_EQ(::kill(child.pid, SIGKILL), 0);
  auto got = done.Get();  // long before the request's deadline
  ASSERT_TRUE(got.has_value()) << "pages never handed back after the sender died";
  EXPECT_EQ(got->code(), StatusCode::kUnavailable) << got->ToString();
  HostPageBuffer expect(layout_, 8);
  testing_kv::FillRandom(expect, 99);
  testing_kv::ExpectSamePages(expect, {1, 2}, receiver_->View(), {6, 7}, /*num_layers=*/2);
  EXPECT_TRUE(Eventually([&] {
    auto s = receiver_->t->stats();
    return s.active_receives == 0 && s.fencing == 0 && s.inbound_connections == 0;
  }));
  EXPECT_EQ(done.calls(), 1);
  // The same request id can be reserved again (the registration was released).
  EXPECT_TRUE(receiver_->t->ExpectTransfer(11, *receiver_->pages, {6, 7}, In(kLong), nullptr).ok());
  EXPECT_TRUE(receiver_->t->Cancel(11).ok());
}

TEST_P(TransportSuite, ReceiverKilledMidTransferFailsTheSender) {
#if TANDEM_TEST_CUDA_IPC && !defined(TANDEM_CUDA_INTERP)
  GTEST_SKIP() << "a process forked after CUDA started cannot use CUDA; the GPU check runs "
                  "senders and receivers as separate programs";
#endif
  const std::string transport = GetParam();
  const KvPageLayout layout = layout_;
  receiver_.reset();
  sender_.reset();
  testing_kv::Child child;
  testing_kv::Spawn(&child, [&](int, int out) {
    static auto r = MakeReceiver(transport, layout);
    if (!r || !r->t->ExpectTransfer(12, *r->pages, {3}, In(kLong), nullptr).ok()) ::_exit(2);
    const std::string& ep = r->endpoint;
    std::string msg(sizeof(int), '\0');
    const int n = static_cast<int>(ep.size());
    std::memcpy(msg.data(), &n, sizeof(n));
    msg += ep;
    if (::write(out, msg.data(), msg.size()) != ssize_t(msg.size())) ::_exit(3);
    while (true) ::pause();
  });
  const int n = testing_kv::ReadInt(child.from_child, static_cast<int>(kGuard.count()));
  ASSERT_GT(n, 0);
  std::string ep(n, '\0');
  ASSERT_EQ(::read(child.from_child, ep.data(), n), n);  // written with the length, at once
  auto sender = MakeSender(layout_);
  HostPageBuffer src(layout_, 8);
  auto h =
      sender->StartSend({12, ep, {3}, layout_.Fingerprint(), In(kLong)}, Src(layout_, src), {0});
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_TRUE(sender->SendLayer(*h, 0).ok());
  ASSERT_TRUE(Eventually([&] { return sender->stats().layers_sent == 1; }));
  ASSERT_EQ(::kill(child.pid, SIGKILL), 0);
  Status s = sender->Wait(*h);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_EQ(sender->stats().active_sends, 0);
  EXPECT_EQ(sender->stats().outbound_connections, 0);
  EXPECT_EQ(sender->SendLayer(*h, 1).code(), StatusCode::kUnavailable);
}

TEST_P(TransportSuite, NothingLeaksAcrossCompletedAndFailedTransfers) {
  receiver_.reset();
  sender_.reset();
  const int fds = testing_kv::CountFds(), threads = testing_kv::CountThreads();
  {
    auto r = MakeReceiver(GetParam(), layout_);
    auto s = MakeSender(layout_);
    HostPageBuffer src(layout_, 8);
    for (uint64_t id : {20, 21, 22}) {
      DoneLatch done;
      ASSERT_TRUE(r->t->ExpectTransfer(id, *r->pages, {0, 1}, In(kLong), done.Callback()).ok());
      auto h = s->StartSend(Ticket(*r, id, {0, 1}), Src(layout_, src), {2, 3});
      ASSERT_TRUE(h.ok());
      ASSERT_TRUE(s->SendLayer(*h, 0).ok());
      if (id == 21) {
        ASSERT_TRUE(r->t->Cancel(id).ok());
      }
      if (id == 22) {
        ASSERT_TRUE(s->Cancel(id).ok());
      }
      for (int32_t l = 1; l < layout_.num_layers; ++l) (void)s->SendLayer(*h, l);
      (void)s->Wait(*h);
      ASSERT_TRUE(done.Get().has_value());
    }
    // Destroyed with a registration still waiting for its sender.
    ASSERT_TRUE(r->t->ExpectTransfer(23, *r->pages, {5}, In(kLong), nullptr).ok());
  }
  EXPECT_TRUE(Eventually([&] { return testing_kv::CountThreads() == threads; }));
  EXPECT_EQ(testing_kv::CountFds(), fds);
}

#if TANDEM_TEST_CUDA_IPC
INSTANTIATE_TEST_SUITE_P(Transports, TransportSuite, ::testing::Values("cuda_ipc"),
                         [](const auto& info) { return info.param; });

// --- cuda_ipc only -----------------------------------------------------------------------------

TEST(CudaIpcTransportTest, PagesOutsideTheDevicePoolAreRefused) {
  if (const std::string why = testing_kv::NoDeviceIpcReason(); !why.empty()) GTEST_SKIP() << why;
  const KvPageLayout layout = testing_kv::SmallLayout();
  auto r = MakeReceiver("cuda_ipc", layout);
  ASSERT_NE(r, nullptr);
  auto s = MakeSender(layout);
  HostPageBuffer elsewhere(layout, 8);  // host pages: a cuda_ipc sender cannot write there
  HostPageBuffer src(layout, 8);
  DoneLatch done;
  ASSERT_TRUE(r->t->ExpectTransfer(50, elsewhere, {1}, In(kLong), done.Callback()).ok());
  auto h = s->StartSend(Ticket(*r, 50, {1}), Src(layout, src), {0});
  ASSERT_TRUE(h.ok());
  Status st = s->Wait(*h);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.ToString();
  EXPECT_NE(st.message().find("over cuda_ipc"), std::string::npos) << st.ToString();
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kFailedPrecondition) << got->ToString();
  EXPECT_TRUE(testing_kv::AllZero(r->bytes()));
  testing_kv::DeviceSources::Get().Clear();
}

TEST(CudaIpcTransportTest, ASenderWithoutDeviceMemoryCannotStartOne) {
  const KvPageLayout layout = testing_kv::SmallLayout();
  TransceiverOptions o;
  o.layout = layout;
  o.listen = false;
  auto s = Transceiver::Create(o);
  ASSERT_TRUE(s.ok());
  HostPageBuffer src(layout, 8);
  auto h =
      (*s)->StartSend({51, "cuda_ipc:@nowhere", {0}, layout.Fingerprint(), In(kLong)}, src, {0});
  EXPECT_EQ(h.status().code(), StatusCode::kFailedPrecondition) << h.status().ToString();
  EXPECT_NE(h.status().message().find("cuda_ipc endpoint"), std::string::npos);
}

TEST(CudaIpcTransportTest, AReceiverPoolWithoutDeviceIpcIsRefused) {
  if (const std::string why = testing_kv::NoDeviceIpcReason(); !why.empty()) GTEST_SKIP() << why;
  const KvPageLayout layout = testing_kv::SmallLayout();
  auto pool = testing_kv::MakeDevicePool(layout, 4);
  ASSERT_NE(pool, nullptr);
  TransceiverOptions o;
  o.layout = layout;
  o.device_pool = SharedPagePool{pool->alloc.fd, pool->alloc.mapping->base(), pool->bytes, 4};
  auto t = Transceiver::Create(o);
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument) << t.status().ToString();
}
#else
INSTANTIATE_TEST_SUITE_P(Transports, TransportSuite, ::testing::Values("tcp", "shm", "nccl"),
                         [](const auto& info) { return info.param; });

// --- nccl only --------------------------------------------------------------------------------

// The registration a refused nccl sender leaves behind still completes over tcp.
void ExpectStillReceivable(Receiver& r, uint64_t id, const KvPageLayout& layout) {
  auto tcp = MakeSender(layout, nullptr);
  HostPageBuffer src(layout, 8);
  testing_kv::FillRandom(src, 31);
  TransferTicket t{id, r.t->endpoint(), {4}, r.t->fingerprint(), In(kLong), 77};
  auto h = tcp->StartSend(t, src, {1});
  ASSERT_TRUE(h.ok());
  for (int32_t l = 0; l < layout.num_layers; ++l) ASSERT_TRUE(tcp->SendLayer(*h, l).ok());
  EXPECT_TRUE(tcp->Wait(*h).ok());
  testing_kv::ExpectSamePages(src, {1}, *r.pages, {4}, layout.num_layers);
}

TEST(NcclTransportTest, AReceiverWithoutNcclRefusesAndKeepsTheRegistration) {
  const KvPageLayout layout = testing_kv::SmallLayout();
  auto r = MakeReceiver("tcp", layout);  // no NCCL here
  ASSERT_NE(r, nullptr);
  EXPECT_TRUE(r->t->nccl_endpoint().empty());
  auto s = MakeSender(layout);
  HostPageBuffer src(layout, 8);
  DoneLatch done;
  ASSERT_TRUE(r->t->ExpectTransfer(40, *r->pages, {4}, In(kLong), done.Callback(), 77).ok());
  auto h = s->StartSend({40, "nccl:" + r->t->endpoint(), {4}, r->t->fingerprint(), In(kLong), 77},
                        src, {0});
  ASSERT_TRUE(h.ok());
  Status st = s->Wait(*h);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.ToString();
  EXPECT_NE(st.message().find("has no NCCL"), std::string::npos) << st.ToString();
  ExpectStillReceivable(*r, 40, layout);
  auto got = done.Get();
  ASSERT_TRUE(got.has_value() && got->ok());
}

TEST(NcclTransportTest, AWrongTokenJoinsNoCommunicator) {
  const KvPageLayout layout = testing_kv::SmallLayout();
  auto r = MakeReceiver("nccl", layout);
  ASSERT_NE(r, nullptr);
  auto s = MakeSender(layout);
  HostPageBuffer src(layout, 8);
  DoneLatch done;
  ASSERT_TRUE(r->t->ExpectTransfer(41, *r->pages, {4}, In(kLong), done.Callback(), 77).ok());
  auto h = s->StartSend({41, r->endpoint, {4}, r->t->fingerprint(), In(kLong), 78}, src, {0});
  ASSERT_TRUE(h.ok());
  for (int32_t l = 0; l < layout.num_layers; ++l) (void)s->SendLayer(*h, l);
  Status st = s->Wait(*h);
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
  EXPECT_NE(st.message().find("wrong token"), std::string::npos) << st.ToString();
  EXPECT_FALSE(done.Get(std::chrono::milliseconds(0)).has_value());
  EXPECT_TRUE(testing_kv::AllZero(r->bytes()));
  ExpectStillReceivable(*r, 41, layout);
}

TEST(NcclTransportTest, ASenderWithoutNcclCannotStartOne) {
  const KvPageLayout layout = testing_kv::SmallLayout();
  auto s = MakeSender(layout, nullptr);
  HostPageBuffer src(layout, 8);
  auto h = s->StartSend({42, "nccl:127.0.0.1:9", {4}, layout.Fingerprint(), In(kLong)}, src, {0});
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kFailedPrecondition) << h.status().ToString();
}

// --- shm only ---------------------------------------------------------------------------------

TEST(ShmTransportTest, PagesOutsideTheSharedPoolAreRefused) {
  const KvPageLayout layout = testing_kv::SmallLayout();
  auto r = MakeReceiver("shm", layout);
  ASSERT_NE(r, nullptr);
  auto s = MakeSender(layout);
  HostPageBuffer private_pages(layout, 8), src(layout, 8);
  DoneLatch done;
  ASSERT_TRUE(r->t->ExpectTransfer(30, private_pages, {0}, In(kLong), done.Callback()).ok());
  auto h = s->StartSend(Ticket(*r, 30, {0}), src, {0});
  ASSERT_TRUE(h.ok());
  Status st = s->Wait(*h);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.ToString();
  EXPECT_NE(st.message().find("not in the shared pool"), std::string::npos) << st.ToString();
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kFailedPrecondition);
}

TEST(ShmTransportTest, ReceiverWithOtherPageSizeIsRefusedAtAttach) {
  KvPageLayout small = testing_kv::SmallLayout(), big = small;
  big.page_size = 8;
  auto r = MakeReceiver("shm", big);
  ASSERT_NE(r, nullptr);
  auto s = MakeSender(small);
  HostPageBuffer src(small, 8);
  auto h = s->StartSend({31, r->endpoint, {0}, big.Fingerprint(), In(kLong)}, src, {0});
  ASSERT_TRUE(h.ok());
  Status st = s->Wait(*h);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.ToString();
  EXPECT_TRUE(testing_kv::AllZero(r->bytes()));
}

TEST(ShmTransportTest, BadEndpointsAreNamed) {
  auto s = MakeSender(testing_kv::SmallLayout());
  HostPageBuffer src(testing_kv::SmallLayout(), 8);
  auto bad = s->StartSend({32, "shm:", {0}, 0, In(kLong)}, src, {0});
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  auto absent = s->StartSend({33,
                              "shm:@tandem-kv-nobody-listens",
                              {0},
                              testing_kv::SmallLayout().Fingerprint(),
                              In(kLong)},
                             src, {0});
  ASSERT_TRUE(absent.ok());
  Status st = s->Wait(*absent);
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
  EXPECT_NE(st.message().find("nobody-listens"), std::string::npos) << st.ToString();
}

// A sender frozen mid-transfer never confirms the receiver's abort: after io_timeout the
// receiver cuts the connection and revokes the lease, hands the pages back, and the sender,
// once thawed, copies nothing more into them.
TEST(ShmTransportTest, FrozenSenderIsRevokedAndWritesNothingAfterTheRelease) {
  const KvPageLayout layout = testing_kv::SmallLayout();
  auto r = MakeReceiver("shm", layout, /*io_timeout=*/300ms);
  ASSERT_NE(r, nullptr);
  const std::string endpoint = r->endpoint;
  const uint64_t fingerprint = r->t->fingerprint();
  testing_kv::Child child;
  testing_kv::Spawn(&child, [&](int in, int out) {
    if (testing_kv::ReadInt(in, static_cast<int>(kGuard.count())) != 1) ::_exit(2);
    auto sender = MakeSender(layout);
    static HostPageBuffer src(layout, 8);
    testing_kv::FillRandom(src, 7);
    auto h = sender->StartSend({40, endpoint, {10, 11}, fingerprint, In(kLong)}, src, {0, 1});
    if (!h.ok()) ::_exit(3);
    (void)sender->SendLayer(*h, 0);
    // Layers 1..3 are computed after the thaw.
    if (testing_kv::ReadInt(in, static_cast<int>(kGuard.count())) != 2) ::_exit(4);
    for (int32_t l = 1; l < layout.num_layers; ++l) (void)sender->SendLayer(*h, l);
    const int code = static_cast<int>(sender->Wait(*h).code());
    if (::write(out, &code, sizeof(code)) != sizeof(code)) ::_exit(5);
    while (true) ::pause();
  });
  DoneLatch done;
  ASSERT_TRUE(r->t->ExpectTransfer(40, *r->pages, {10, 11}, In(kLong), done.Callback()).ok());
  const int go = 1, thaw = 2;
  ASSERT_EQ(::write(child.to_child, &go, sizeof(go)), ssize_t(sizeof(go)));
  ASSERT_TRUE(Eventually([&] { return r->t->stats().layers_received == 1; }));
  ASSERT_EQ(::kill(child.pid, SIGSTOP), 0);
  ASSERT_TRUE(r->t->Cancel(40).ok());
  auto got = done.Get();  // after io_timeout without the sender's confirmation
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kCancelled) << got->ToString();
  EXPECT_EQ(r->t->stats().fencing, 0);
  // The pages are the owner's again: it clears them for the next request.
  std::vector<std::span<std::byte>> later;
  for (int32_t l = 1; l < layout.num_layers; ++l) {
    for (int32_t b : {10, 11}) {
      auto p = r->pages->Page(l, b);
      std::fill(p.begin(), p.end(), std::byte{0});
      later.push_back(p);
    }
  }
  ASSERT_EQ(::write(child.to_child, &thaw, sizeof(thaw)), ssize_t(sizeof(thaw)));
  ASSERT_EQ(::kill(child.pid, SIGCONT), 0);
  const int code = testing_kv::ReadInt(child.from_child, static_cast<int>(kGuard.count()));
  EXPECT_NE(code, static_cast<int>(StatusCode::kOk));
  EXPECT_NE(code, -1) << "the thawed sender never finished";
  for (auto p : later) EXPECT_TRUE(testing_kv::AllZero(p)) << "a copy landed after the release";
}

#endif  // TANDEM_TEST_CUDA_IPC

}  // namespace
}  // namespace tandem
