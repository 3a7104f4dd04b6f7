// TLS credentials (tandem/rpc/tls_credentials.h) on a real gRPC server on loopback, with
// certificates made at test time by make_test_certs.sh: a TLS client trusting the right CA gets
// through; a plaintext client, a client trusting another CA, and (on an internal port with a CA)
// a client without a certificate or with one from another CA are refused in the handshake; on a
// port that only asks for client certificates, a service guarded by
// RequireVerifiedPeerCertificate refuses callers without one. LoadTls names the bad flag or file.
#include "tandem/rpc/tls_credentials.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "tandem/rpc/grpc_status.h"
#include "tandem/v1/internal.grpc.pb.h"
#include "test_certs.h"

namespace tandem {
namespace {

// Register answers what RequireVerifiedPeerCertificate says of the caller.
class GuardedRegistry final : public v1::Registry::CallbackService {
 public:
  explicit GuardedRegistry(TlsConfig tls) : tls_(std::move(tls)) {}
  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* ctx, const v1::RegisterRequest*,
                                     v1::RegisterResponse*) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(ToGrpcStatus(RequireVerifiedPeerCertificate(ctx, tls_, "test.Registry")));
    return reactor;
  }

 private:
  const TlsConfig tls_;
};

class TlsCredentialsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    certs_ = new testing_tls::TestCerts("tandem-tls-test");
    ASSERT_TRUE(certs_->ok()) << certs_->command();
  }
  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  static std::string Path(const std::string& name) { return certs_->Path(name); }

  // Loads files from the test directory ("" = not given).
  static TlsConfig Load(const std::string& cert, const std::string& key, const std::string& ca) {
    TlsFiles files;
    if (!cert.empty()) files.cert = Path(cert);
    if (!key.empty()) files.key = Path(key);
    if (!ca.empty()) files.ca = Path(ca);
    StatusOr<TlsConfig> tls = LoadTls(files);
    EXPECT_TRUE(tls.ok()) << tls.status().ToString();
    return tls.ok() ? *tls : TlsConfig{};
  }

  void Serve(const TlsConfig& tls, TlsPeers peers) {
    service_ = std::make_unique<GuardedRegistry>(tls);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", MakeServerCredentials(tls, peers), &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port_, 0);
  }

  // One Register call through a channel made from `tls` (a client's view).
  grpc::Status Call(const TlsConfig& tls) {
    auto stub = v1::Registry::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), MakeChannelCredentials(tls)));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));  // hang guard
    v1::RegisterRequest req;
    v1::RegisterResponse resp;
    return stub->Register(&ctx, req, &resp);
  }

  static inline testing_tls::TestCerts* certs_ = nullptr;
  std::unique_ptr<GuardedRegistry> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(TlsCredentialsTest, TlsClientTrustingTheCaGetsThrough) {
  Serve(Load("server.pem", "server.key", ""), TlsPeers::kRequireClientCert);
  grpc::Status st = Call(Load("", "", "ca.pem"));
  EXPECT_TRUE(st.ok()) << st.error_message();
}

TEST_F(TlsCredentialsTest, PlaintextClientIsRefused) {
  Serve(Load("server.pem", "server.key", ""), TlsPeers::kRequireClientCert);
  grpc::Status st = Call(TlsConfig{});
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
}

TEST_F(TlsCredentialsTest, ClientTrustingAnotherCaIsRefused) {
  Serve(Load("server.pem", "server.key", ""), TlsPeers::kRequireClientCert);
  grpc::Status st = Call(Load("", "", "other_ca.pem"));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
}

TEST_F(TlsCredentialsTest, InternalPortWithCaRequiresAClientCertificateFromIt) {
  Serve(Load("server.pem", "server.key", "ca.pem"), TlsPeers::kRequireClientCert);
  grpc::Status none = Call(Load("", "", "ca.pem"));
  EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAVAILABLE) << none.error_message();
  TlsConfig foreign = Load("other_server.pem", "other_server.key", "ca.pem");
  grpc::Status other = Call(foreign);
  EXPECT_EQ(other.error_code(), grpc::StatusCode::UNAVAILABLE) << other.error_message();
  grpc::Status mtls = Call(Load("client.pem", "client.key", "ca.pem"));
  EXPECT_TRUE(mtls.ok()) << mtls.error_message();
}

TEST_F(TlsCredentialsTest, PublicPortLetsClientsInAndTheGuardedServiceWantsACertificate) {
  Serve(Load("server.pem", "server.key", "ca.pem"), TlsPeers::kOptionalClientCert);
  grpc::Status none = Call(Load("", "", "ca.pem"));
  EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED) << none.error_message();
  EXPECT_NE(none.error_message().find("client certificate"), std::string::npos);
  grpc::Status mtls = Call(Load("client.pem", "client.key", "ca.pem"));
  EXPECT_TRUE(mtls.ok()) << mtls.error_message();
}

TEST_F(TlsCredentialsTest, WithoutTlsEverythingIsPlaintext) {
  Serve(TlsConfig{}, TlsPeers::kRequireClientCert);
  grpc::Status st = Call(TlsConfig{});
  EXPECT_TRUE(st.ok()) << st.error_message();
}

TEST_F(TlsCredentialsTest, LoadTlsNamesTheBadFlagOrFile) {
  TlsFiles cert_only;
  cert_only.cert = Path("server.pem");
  StatusOr<TlsConfig> a = LoadTls(cert_only);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(a.status().message().find("--tls-cert needs --tls-key"), std::string::npos);

  TlsFiles key_only;
  key_only.key = Path("server.key");
  StatusOr<TlsConfig> b = LoadTls(key_only);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("--tls-key needs --tls-cert"), std::string::npos);

  TlsFiles missing;
  missing.ca = Path("no-such.pem");
  StatusOr<TlsConfig> c = LoadTls(missing);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("--tls-ca " + Path("no-such.pem")), std::string::npos);

  const std::string junk = Path("junk.pem");
  std::ofstream(junk) << "not a certificate\n";
  TlsFiles not_pem;
  not_pem.cert = junk;
  not_pem.key = Path("server.key");
  StatusOr<TlsConfig> d = LoadTls(not_pem);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("--tls-cert " + junk + ": not a PEM file"),
            std::string::npos);

  TlsFiles key_is_cert;
  key_is_cert.cert = Path("server.pem");
  key_is_cert.key = Path("server.pem");
  StatusOr<TlsConfig> e = LoadTls(key_is_cert);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("holds no PEM private key"), std::string::npos);
}

}  // namespace
}  // namespace tandem
