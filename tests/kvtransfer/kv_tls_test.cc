// TLS on the KV transfer's TCP connections (kv_tls.h), with certificates made at test time by
// tests/rpc/make_test_certs.sh: pages arrive exactly over mTLS (tcp and nccl's control
// connection), and a plaintext sender, a receiver the CA did not sign, or a sender without a
// client certificate move no byte and leave the reservation to a sender that can.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>

#include "../rpc/test_certs.h"
#include "tandem/kvtransfer/kv_tls.h"
#include "tandem/kvtransfer/nccl_api.h"
#include "tandem/kvtransfer/transceiver.h"
#include "test_util.h"

namespace tandem {
namespace {

using namespace std::chrono_literals;
using testing_kv::DoneLatch;
using testing_kv::In;
using testing_kv::kLong;

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class KvTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(certs_.ok()) << certs_.command();
    layout_ = testing_kv::SmallLayout();
  }
  std::shared_ptr<const KvTls> Tls(const std::string& cert, const std::string& ca) {
    KvTlsPem pem;
    if (!cert.empty()) {
      pem.cert = Read(certs_.Path(cert + ".pem"));
      pem.key = Read(certs_.Path(cert + ".key"));
    }
    if (!ca.empty()) pem.ca = Read(certs_.Path(ca + ".pem"));
    auto tls = KvTls::Create(pem);
    EXPECT_TRUE(tls.ok()) << tls.status().ToString();
    return tls.ok() ? *tls : nullptr;
  }
  std::unique_ptr<Transceiver> Make(bool listen, std::shared_ptr<const KvTls> tls,
                                    const NcclApi* nccl = nullptr) {
    TransceiverOptions o;
    o.layout = layout_;
    o.listen = listen;
    o.tls = std::move(tls);
    o.nccl = nccl;
    auto t = Transceiver::Create(o);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return t.ok() ? std::move(t).value() : nullptr;
  }
  // Sends request `id` (3 pages) from `sender` to `endpoint`; the sender's final status.
  Status Send(Transceiver& sender, Transceiver& receiver, const std::string& endpoint, uint64_t id,
              const HostPageBuffer& src) {
    auto h = sender.StartSend({id, endpoint, {7, 2, 9}, receiver.fingerprint(), In(kLong), 77}, src,
                              {0, 1, 2});
    if (!h.ok()) return h.status();
    for (int32_t l = 0; l < layout_.num_layers; ++l) (void)sender.SendLayer(*h, l);
    return sender.Wait(*h);
  }

  testing_tls::TestCerts certs_{"tandem-kv-tls"};
  KvPageLayout layout_;
};

TEST_F(KvTlsTest, PagesArriveExactlyOverMutualTls) {
  for (const char* transport : {"tcp", "nccl"}) {
    SCOPED_TRACE(transport);
    const NcclApi* nccl = std::string(transport) == "nccl" ? &FakeNcclApi() : nullptr;
    auto receiver = Make(true, Tls("server", "ca"), nccl);
    auto sender = Make(false, Tls("client", "ca"), nccl);
    ASSERT_TRUE(receiver && sender);
    HostPageBuffer src(layout_, 8), dst(layout_, 16);
    testing_kv::FillRandom(src, 3);
    DoneLatch done;
    ASSERT_TRUE(receiver->ExpectTransfer(1, dst, {7, 2, 9}, In(kLong), done.Callback(), 77).ok());
    const std::string endpoint = nccl ? receiver->nccl_endpoint() : receiver->endpoint();
    EXPECT_TRUE(Send(*sender, *receiver, endpoint, 1, src).ok());
    auto got = done.Get();
    ASSERT_TRUE(got.has_value() && got->ok()) << (got ? got->ToString() : "no completion");
    testing_kv::ExpectSamePages(src, {0, 1, 2}, dst, {7, 2, 9}, layout_.num_layers);
  }
}

// Each refused sender leaves the pages untouched and the reservation to the right sender.
TEST_F(KvTlsTest, SendersTheReceiverCannotTrustMoveNothing) {
  auto receiver = Make(true, Tls("server", "ca"));
  ASSERT_NE(receiver, nullptr);
  HostPageBuffer src(layout_, 8), dst(layout_, 16);
  testing_kv::FillRandom(src, 4);
  DoneLatch done;
  ASSERT_TRUE(receiver->ExpectTransfer(2, dst, {7, 2, 9}, In(kLong), done.Callback(), 77).ok());
  struct Case {
    const char* what;
    std::shared_ptr<const KvTls> tls;
  };
  const Case cases[] = {
      {"plaintext", nullptr},
      {"no client certificate", Tls("", "ca")},
      {"a client certificate of another CA", Tls("other_server", "ca")},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto sender = Make(false, c.tls);
    ASSERT_NE(sender, nullptr);
    Status s = Send(*sender, *receiver, receiver->endpoint(), 2, src);
    EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
    EXPECT_TRUE(testing_kv::AllZero(dst.bytes()));
    EXPECT_FALSE(done.Get(0ms).has_value());
  }
  auto good = Make(false, Tls("client", "ca"));
  ASSERT_NE(good, nullptr);
  EXPECT_TRUE(Send(*good, *receiver, receiver->endpoint(), 2, src).ok());
  auto got = done.Get();
  ASSERT_TRUE(got.has_value() && got->ok());
  testing_kv::ExpectSamePages(src, {0, 1, 2}, dst, {7, 2, 9}, layout_.num_layers);
}

TEST_F(KvTlsTest, AReceiverTheCaDidNotSignIsRefusedBeforeAnyByte) {
  auto receiver = Make(true, Tls("other_server", "other_ca"));
  auto sender = Make(false, Tls("client", "ca"));
  ASSERT_TRUE(receiver && sender);
  HostPageBuffer src(layout_, 8), dst(layout_, 16);
  testing_kv::FillRandom(src, 5);
  DoneLatch done;
  ASSERT_TRUE(receiver->ExpectTransfer(3, dst, {7, 2, 9}, In(kLong), done.Callback(), 77).ok());
  Status s = Send(*sender, *receiver, receiver->endpoint(), 3, src);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_NE(s.message().find("certificate verify failed"), std::string::npos) << s.ToString();
  EXPECT_TRUE(testing_kv::AllZero(dst.bytes()));
  EXPECT_FALSE(done.Get(0ms).has_value());
}

TEST_F(KvTlsTest, BadMaterialIsNamed) {
  KvTlsPem cert_only{Read(certs_.Path("server.pem")), "", ""};
  EXPECT_EQ(KvTls::Create(cert_only).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(KvTls::Create({}).status().code(), StatusCode::kInvalidArgument);
  KvTlsPem garbage{"", "", "not a certificate"};
  auto s = KvTls::Create(garbage).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("CA bundle"), std::string::npos) << s.ToString();
  KvTlsPem mismatch{Read(certs_.Path("server.pem")), Read(certs_.Path("client.key")), ""};
  s = KvTls::Create(mismatch).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("does not match"), std::string::npos) << s.ToString();
}

}  // namespace
}  // namespace tandem
