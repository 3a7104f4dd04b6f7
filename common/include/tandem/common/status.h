// Status and StatusOr: error values passed across module boundaries instead of exceptions.
// Codes mirror gRPC's so the service edge maps them one to one.
//
// Thread safety: values; a const Status may be read from many threads.
#pragma once

#include <cassert>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace tandem {

enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

std::string_view StatusCodeName(StatusCode code);

// Who an error belongs to when the failing call depended on a third party: kPeer marks a
// failure of the peer the request named rather than of the server that answered (a prefill
// worker whose KV receiver died or refused the pages), so a caller that retries elsewhere
// avoids the peer, not the server.
enum class ErrorOrigin : int { kServer = 0, kPeer = 1 };

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: message", or "OK".
  std::string ToString() const;

  // The request field an error is about, as a path of tandem.v1 names ("sampling.top_p",
  // "stopping.max_tokens"); empty when none. It travels with the status across gRPC (the
  // status details, tandem.v1.ErrorDetail), so an edge maps it without reading the message.
  const std::string& field() const { return field_; }
  ErrorOrigin origin() const { return origin_; }
  Status& WithField(std::string path) & {
    field_ = std::move(path);
    return *this;
  }
  Status&& WithField(std::string path) && { return std::move(WithField(std::move(path))); }
  Status& WithOrigin(ErrorOrigin origin) & {
    origin_ = origin;
    return *this;
  }
  Status&& WithOrigin(ErrorOrigin origin) && { return std::move(WithOrigin(origin)); }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
  std::string field_;
  ErrorOrigin origin_ = ErrorOrigin::kServer;
};

// Helpers that format their message with fmt: InvalidArgument("bad {}", x).
#define TANDEM_STATUS_HELPER(Name, Code)                                          \
  template <typename... Args>                                                     \
  Status Name(fmt::format_string<Args...> f, Args&&... args) {                    \
    return Status(StatusCode::Code, fmt::format(f, std::forward<Args>(args)...)); \
  }
TANDEM_STATUS_HELPER(InvalidArgumentError, kInvalidArgument)
TANDEM_STATUS_HELPER(NotFoundError, kNotFound)
TANDEM_STATUS_HELPER(FailedPreconditionError, kFailedPrecondition)
TANDEM_STATUS_HELPER(ResourceExhaustedError, kResourceExhausted)
TANDEM_STATUS_HELPER(UnimplementedError, kUnimplemented)
TANDEM_STATUS_HELPER(InternalError, kInternal)
TANDEM_STATUS_HELPER(DataLossError, kDataLoss)
TANDEM_STATUS_HELPER(UnavailableError, kUnavailable)
TANDEM_STATUS_HELPER(OutOfRangeError, kOutOfRange)
TANDEM_STATUS_HELPER(CancelledError, kCancelled)
TANDEM_STATUS_HELPER(DeadlineExceededError, kDeadlineExceeded)
TANDEM_STATUS_HELPER(UnauthenticatedError, kUnauthenticated)
#undef TANDEM_STATUS_HELPER

// Holds either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    assert(!std::get<Status>(v_).ok() && "StatusOr built from an OK status");
  }
  StatusOr(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<Status, T> v_;
};

}  // namespace tandem

#define TANDEM_CONCAT_INNER(a, b) a##b
#define TANDEM_CONCAT(a, b) TANDEM_CONCAT_INNER(a, b)

#define TANDEM_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::tandem::Status _tandem_status = (expr);        \
    if (!_tandem_status.ok()) return _tandem_status; \
  } while (0)

#define TANDEM_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()

// TANDEM_ASSIGN_OR_RETURN(auto x, MakeX());
#define TANDEM_ASSIGN_OR_RETURN(lhs, expr) \
  TANDEM_ASSIGN_OR_RETURN_IMPL(TANDEM_CONCAT(_tandem_or_, __LINE__), lhs, expr)
