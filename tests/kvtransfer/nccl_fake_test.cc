// The loopback NCCL (FakeNcclApi) keeps the promises the nccl data plane relies on
// (nccl_api.h): non-blocking join, in-order matching, a size mismatch and a vanished peer
// surface as the communicator's async error, and an abort ends whatever is queued.
#include <gtest/gtest.h>

#include <sys/un.h>

#include <array>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "tandem/kvtransfer/nccl_api.h"
#include "test_util.h"

namespace tandem {
namespace {

using testing_kv::Eventually;

const NcclApi& api = FakeNcclApi();

struct Rank {
  NcclApi::Comm comm = nullptr;
  NcclApi::Stream stream = nullptr;
  ~Rank() {
    if (comm) api.comm_abort(comm);
    if (stream) api.stream_destroy(stream);
  }
  int AsyncError() const {
    int e = -1;
    EXPECT_EQ(api.comm_get_async_error(comm, &e), kNcclSuccess);
    return e;
  }
};

// Two joined ranks of one communicator.
void Join(Rank* a, Rank* b) {
  NcclUniqueId id;
  ASSERT_EQ(api.get_unique_id(&id), kNcclSuccess);
  ASSERT_EQ(api.stream_create(&a->stream), kNcclSuccess);
  ASSERT_EQ(api.stream_create(&b->stream), kNcclSuccess);
  EXPECT_EQ(api.comm_init_rank(&a->comm, 2, id, 0), kNcclInProgress);
  EXPECT_EQ(api.comm_init_rank(&b->comm, 2, id, 1), kNcclInProgress);
  ASSERT_TRUE(Eventually(
      [&] { return a->AsyncError() == kNcclSuccess && b->AsyncError() == kNcclSuccess; }));
}

TEST(FakeNcclTest, GroupedSendsMatchReceivesInIssueOrder) {
  Rank a, b;
  Join(&a, &b);
  std::array<std::vector<uint8_t>, 3> out, in;
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].resize(1000 + 100 * i);
    std::iota(out[i].begin(), out[i].end(), static_cast<uint8_t>(i * 7));
    in[i].assign(out[i].size(), 0);
  }
  ASSERT_EQ(api.group_start(), kNcclSuccess);
  for (auto& v : in) ASSERT_EQ(api.recv(v.data(), v.size(), 0, b.comm, b.stream), kNcclSuccess);
  ASSERT_EQ(api.group_end(), kNcclSuccess);
  ASSERT_EQ(api.group_start(), kNcclSuccess);
  for (auto& v : out) ASSERT_EQ(api.send(v.data(), v.size(), 1, a.comm, a.stream), kNcclSuccess);
  ASSERT_EQ(api.group_end(), kNcclSuccess);
  ASSERT_TRUE(Eventually([&] {
    return api.stream_query(a.stream) == kNcclSuccess && api.stream_query(b.stream) == kNcclSuccess;
  }));
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(in[i], out[i]) << "message " << i;
  EXPECT_EQ(a.AsyncError(), kNcclSuccess);
}

TEST(FakeNcclTest, AReceiveOfAnotherSizeFailsTheCommunicator) {
  Rank a, b;
  Join(&a, &b);
  std::vector<uint8_t> out(100, 1), in(50, 0);
  ASSERT_EQ(api.send(out.data(), out.size(), 1, a.comm, a.stream), kNcclSuccess);
  ASSERT_EQ(api.recv(in.data(), in.size(), 0, b.comm, b.stream), kNcclSuccess);
  ASSERT_TRUE(Eventually([&] { return b.AsyncError() == kNcclInvalidUsage; }));
  EXPECT_EQ(api.stream_query(b.stream), kNcclSuccess);  // the receive ended (failed)
  EXPECT_EQ(in, std::vector<uint8_t>(50, 0));
  // Later operations are refused with the error.
  EXPECT_EQ(api.recv(in.data(), in.size(), 0, b.comm, b.stream), kNcclInvalidUsage);
}

TEST(FakeNcclTest, APeerThatIsGoneEndsQueuedReceivesWithARemoteError) {
  Rank a, b;
  Join(&a, &b);
  std::vector<uint8_t> in(64, 0);
  ASSERT_EQ(api.recv(in.data(), in.size(), 0, b.comm, b.stream), kNcclSuccess);
  EXPECT_EQ(api.stream_query(b.stream), kNcclInProgress);
  api.comm_abort(a.comm);
  a.comm = nullptr;
  ASSERT_TRUE(Eventually([&] { return b.AsyncError() == kNcclRemoteError; }));
  EXPECT_EQ(api.stream_query(b.stream), kNcclSuccess);
  EXPECT_EQ(in, std::vector<uint8_t>(64, 0));
}

TEST(FakeNcclTest, AbortEndsAJoinThatNoPeerCompletes) {
  const int threads = testing_kv::CountThreads(), fds = testing_kv::CountFds();
  {
    Rank a;
    NcclUniqueId id;
    ASSERT_EQ(api.get_unique_id(&id), kNcclSuccess);
    ASSERT_EQ(api.comm_init_rank(&a.comm, 2, id, 0), kNcclInProgress);
    EXPECT_EQ(a.AsyncError(), kNcclInProgress);
  }  // aborted here, promptly, though nobody joined
  EXPECT_TRUE(Eventually([&] { return testing_kv::CountThreads() == threads; }));
  EXPECT_EQ(testing_kv::CountFds(), fds);
}

TEST(FakeNcclTest, AnIdThatIsNotTheFakesIsRefused) {
  NcclUniqueId id;  // all zero: not one GetUniqueId made
  NcclApi::Comm comm = nullptr;
  EXPECT_EQ(api.comm_init_rank(&comm, 2, id, 1), kNcclInvalidArgument);
  EXPECT_EQ(comm, nullptr);
}

// fuzz_kv_receiver found it: a name of 108 to 119 bytes (the id has room for 119) passed the
// checks, and rank 1's Connect() copied it past the end of sockaddr_un::sun_path (a stack
// overflow in the receiver, from a kNcclInit carrying a valid token).
TEST(FakeNcclTest, ANameLongerThanASocketAddressIsRefused) {
  for (size_t len : {sizeof(sockaddr_un::sun_path), sizeof(NcclUniqueId::bytes) - 8 - 1}) {
    SCOPED_TRACE(len);
    NcclUniqueId id;
    std::memcpy(id.bytes, "TFNCCL1", 8);  // the fake's magic, NUL included
    std::memset(id.bytes + 8, 'n', len);
    NcclApi::Comm comm = nullptr;
    EXPECT_EQ(api.comm_init_rank(&comm, 2, id, 1), kNcclInvalidArgument);
    EXPECT_EQ(comm, nullptr);
  }
  // The longest name that fits is still a name (nobody listens on it: the join fails later).
  NcclUniqueId id;
  std::memcpy(id.bytes, "TFNCCL1", 8);
  std::memset(id.bytes + 8, 'n', sizeof(sockaddr_un::sun_path) - 1);
  Rank r;
  EXPECT_EQ(api.comm_init_rank(&r.comm, 2, id, 1), kNcclInProgress);
}

}  // namespace
}  // namespace tandem
