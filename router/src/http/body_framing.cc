#include "body_framing.h"

#include <algorithm>
#include <optional>

namespace tandem::http {
namespace {

// cpp-httplib's bound on one header line or the request line (CPPHTTPLIB_HEADER_MAX_LENGTH,
// CPPHTTPLIB_REQUEST_URI_MAX_LENGTH); longer ones are refused before any body is read. Also the
// bound on one chunk-size or trailer line here.
constexpr size_t kMaxLine = 8192;

// Content-Length values past this read as "more than any bound" (UINT64_MAX).
constexpr uint64_t kMaxLength = uint64_t{1000000000000000000};

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool IEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

// cpp-httplib trims spaces and tabs around a header's value.
std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Calls fn(name, line_begin, line_end) for each header line of `head` (the request line and
// the blank line skipped); false when a line is one cpp-httplib reads differently (a bare LF,
// no colon, over kMaxLine).
template <typename Fn>
bool ForEachHeader(std::string_view head, Fn fn) {
  size_t pos = head.find("\r\n");
  if (pos == std::string_view::npos || pos + 2 > kMaxLine) return false;
  if (head.substr(0, pos).find('\n') != std::string_view::npos) return false;
  pos += 2;
  while (pos < head.size()) {
    const size_t eol = head.find("\r\n", pos);
    if (eol == std::string_view::npos) return false;
    const std::string_view line = head.substr(pos, eol - pos);
    if (line.empty()) return true;
    if (line.size() + 2 > kMaxLine || line.find('\n') != std::string_view::npos) return false;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) return false;
    fn(line.substr(0, colon), Trim(line.substr(colon + 1)), pos, eol + 2);
    pos = eol + 2;
  }
  return false;
}

}  // namespace

RequestHead ParseRequestHead(std::string_view head, uint64_t max_body_bytes) {
  const RequestHead dispatch{BodyKind::kDispatch, 0, false};
  std::optional<std::string_view> te, cl, expect;
  bool encoded = false;
  bool content_encoding = false;
  const bool ok =
      ForEachHeader(head, [&](std::string_view name, std::string_view value, size_t, size_t) {
        if (value.empty()) return;  // cpp-httplib keeps no empty header
        auto first = [&](std::optional<std::string_view>* slot) {
          if (slot->has_value()) return;
          *slot = value;
          // cpp-httplib URL-decodes header values: one with '%' may read otherwise there.
          if (value.find('%') != std::string_view::npos) encoded = true;
        };
        if (IEquals(name, "Transfer-Encoding")) first(&te);
        if (IEquals(name, "Content-Length")) first(&cl);
        if (IEquals(name, "Expect")) first(&expect);
        if (IEquals(name, "Content-Encoding")) content_encoding = true;
      });
  if (!ok || encoded) return dispatch;
  RequestHead h;
  h.expect_continue = expect.has_value() && *expect == "100-continue";
  const std::string_view method = head.substr(0, head.find(' '));
  const std::string_view line = head.substr(0, head.find("\r\n"));
  std::string_view target = line.substr(std::min(line.size(), method.size() + 1));
  target = target.substr(0, std::min(target.find(' '), target.find('?')));
  h.method = std::string(method);
  h.path = std::string(target);
  h.content_length = cl.has_value();
  h.transfer_encoding = te.has_value();
  h.content_encoding = content_encoding;
  if (method != "POST" && method != "PUT" && method != "PATCH" && method != "DELETE" &&
      method != "PRI") {
    return h;  // cpp-httplib reads no body for these
  }
  if (te.has_value()) {
    if (!IEquals(*te, "chunked")) return dispatch;
    h.body = BodyKind::kChunked;
    return h;
  }
  if (!cl.has_value()) return dispatch;  // unframed
  uint64_t n = 0;
  for (char c : *cl) {
    if (c < '0' || c > '9') return dispatch;
    // Past 10^18 the number only grows: saturate (it is over any bound).
    n = n > kMaxLength ? UINT64_MAX : n * 10 + static_cast<uint64_t>(c - '0');
  }
  if (n > max_body_bytes) {
    h.body = BodyKind::kDispatch;
    h.length = n;
    h.too_large = true;
    return h;
  }
  h.body = n == 0 ? BodyKind::kNone : BodyKind::kLength;
  h.length = n;
  return h;
}

size_t RemoveExpectHeaders(std::string* buf, size_t head_end) {
  std::string head = buf->substr(0, head_end);
  std::string kept;
  size_t from = 0;
  ForEachHeader(head, [&](std::string_view name, std::string_view, size_t begin, size_t end) {
    if (!IEquals(name, "Expect")) return;
    kept.append(head, from, begin - from);
    from = end;
  });
  if (from == 0) return 0;
  kept.append(head, from, std::string::npos);
  const size_t removed = head_end - kept.size();
  buf->replace(0, head_end, kept);
  return removed;
}

ChunkedBodyScanner::Result ChunkedBodyScanner::Scan(std::string_view body) {
  for (;;) {
    switch (state_) {
      case State::kDone:
        return Result::kComplete;
      case State::kFailed:
        return Result::kDispatch;
      case State::kTrailer: {
        // cpp-httplib 0.11 takes no trailer: the line after the last chunk is empty, or the
        // body is refused (400).
        const std::string_view rest = body.substr(pos_, 2);
        if (rest != std::string_view("\r\n").substr(0, rest.size())) break;
        if (rest.size() < 2) return Result::kNeedMore;
        pos_ += 2;
        state_ = State::kDone;
        continue;
      }
      case State::kSize: {
        const size_t nl = body.find('\n', pos_);
        if (nl == std::string_view::npos) {
          if (body.size() - pos_ > kMaxLine) break;  // fails below
          return Result::kNeedMore;
        }
        const std::string_view line = body.substr(pos_, nl + 1 - pos_);
        if (line.size() > kMaxLine) break;
        pos_ = nl + 1;
        // strtoul(line, 16) as cpp-httplib reads it; anything it might read otherwise (a sign,
        // spaces, a 0x prefix, 16 digits or more) fails.
        uint64_t n = 0;
        size_t i = 0;
        for (; i < line.size() && HexValue(line[i]) >= 0; ++i) {
          if (i >= 15) break;
          n = n * 16 + static_cast<uint64_t>(HexValue(line[i]));
        }
        if (i == 0 || i >= 15 || line[i] == 'x' || line[i] == 'X') break;
        if (n == 0) {
          state_ = State::kTrailer;
          continue;
        }
        if (n > max_ - total_) break;
        total_ += n;
        left_ = n;
        state_ = State::kData;
        continue;
      }
      case State::kData: {
        const uint64_t take = std::min<uint64_t>(left_, body.size() - pos_);
        pos_ += static_cast<size_t>(take);
        left_ -= take;
        if (left_ > 0) return Result::kNeedMore;
        state_ = State::kDataEnd;
        continue;
      }
      case State::kDataEnd: {
        const std::string_view rest = body.substr(pos_, 2);
        if (rest != std::string_view("\r\n").substr(0, rest.size())) break;
        if (rest.size() < 2) return Result::kNeedMore;
        pos_ += 2;
        state_ = State::kSize;
        continue;
      }
    }
    state_ = State::kFailed;  // reached by `break` only
  }
}

}  // namespace tandem::http
