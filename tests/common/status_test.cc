#include "tandem/common/status.h"

#include <gtest/gtest.h>

namespace tandem {
namespace {

StatusOr<int> Half(int x) {
  if (x % 2) return InvalidArgumentError("x must be even, got {}", x);
  return x / 2;
}

Status UseHalf(int x, int* out) {
  TANDEM_ASSIGN_OR_RETURN(*out, Half(x));
  return Status::Ok();
}

TEST(StatusTest, CarriesCodeAndMessage) {
  Status s = InvalidArgumentError("top_p must be in (0, 1], got {}", 1.5);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.ToString(), "INVALID_ARGUMENT: top_p must be in (0, 1], got 1.5");
  EXPECT_EQ(Status().ToString(), "OK");
}

TEST(StatusTest, AssignOrReturnPropagates) {
  int out = -1;
  EXPECT_TRUE(UseHalf(4, &out).ok());
  EXPECT_EQ(out, 2);
  Status s = UseHalf(3, &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "x must be even, got 3");
}

}  // namespace
}  // namespace tandem
