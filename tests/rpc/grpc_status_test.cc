// Status <-> grpc::Status: codes, messages, and the field path and origin carried in the details.
#include "tandem/rpc/grpc_status.h"

#include <gtest/gtest.h>

#include "tandem/v1/generate.pb.h"

namespace tandem {
namespace {

TEST(GrpcStatusTest, PlainErrorsHaveNoDetails) {
  const grpc::Status g = ToGrpcStatus(UnavailableError("worker {} gone", 3));
  EXPECT_EQ(g.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(g.error_message(), "worker 3 gone");
  EXPECT_TRUE(g.error_details().empty());
  const Status back = FromGrpcStatus(g);
  EXPECT_EQ(back.code(), StatusCode::kUnavailable);
  EXPECT_EQ(back.message(), "worker 3 gone");
  EXPECT_TRUE(back.field().empty());
  EXPECT_EQ(back.origin(), ErrorOrigin::kServer);
  EXPECT_TRUE(ToGrpcStatus(Status::Ok()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(GrpcStatusTest, FieldAndOriginSurviveTheRoundTrip) {
  const Status s = InvalidArgumentError("sampling.top_p must be in (0, 1], got 2")
                       .WithField("sampling.top_p")
                       .WithOrigin(ErrorOrigin::kPeer);
  const grpc::Status g = ToGrpcStatus(s);
  ASSERT_FALSE(g.error_details().empty());
  // google.rpc.Status's shape, with the detail packed as an Any.
  v1::RpcStatus rich;
  ASSERT_TRUE(rich.ParseFromString(g.error_details()));
  EXPECT_EQ(rich.code(), static_cast<int32_t>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_EQ(rich.message(), s.message());
  ASSERT_EQ(rich.details_size(), 1);
  EXPECT_EQ(rich.details(0).type_url(), "type.googleapis.com/tandem.v1.ErrorDetail");
  v1::ErrorDetail detail;
  ASSERT_TRUE(rich.details(0).UnpackTo(&detail));
  EXPECT_EQ(detail.field(), "sampling.top_p");
  EXPECT_EQ(detail.origin(), v1::ERROR_ORIGIN_PEER);
  const Status back = FromGrpcStatus(g);
  EXPECT_EQ(back.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(back.message(), s.message());
  EXPECT_EQ(back.field(), "sampling.top_p");
  EXPECT_EQ(back.origin(), ErrorOrigin::kPeer);
}

TEST(GrpcStatusTest, ForeignDetailsAreIgnored) {
  const grpc::Status g(grpc::StatusCode::INTERNAL, "boom", std::string("\xff\xff\xff", 3));
  const Status back = FromGrpcStatus(g);
  EXPECT_EQ(back.code(), StatusCode::kInternal);
  EXPECT_EQ(back.message(), "boom");
  EXPECT_TRUE(back.field().empty());
  EXPECT_EQ(back.origin(), ErrorOrigin::kServer);
}

}  // namespace
}  // namespace tandem
