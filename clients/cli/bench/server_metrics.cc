#include "server_metrics.h"

#include <cstdlib>
#include <sstream>

#include <httplib.h>

namespace tandem::bench {
namespace {

// "name{labels} value [timestamp]" → name, labels, value; false for comments and blank lines.
bool ParseSample(const std::string& line, std::string* name, std::string* labels, double* value) {
  if (line.empty() || line[0] == '#') return false;
  const size_t brace = line.find('{');
  const size_t space = line.find(' ');
  if (space == std::string::npos) return false;
  size_t value_at;
  if (brace != std::string::npos && brace < space) {
    const size_t close = line.find('}', brace);
    if (close == std::string::npos) return false;
    *name = line.substr(0, brace);
    *labels = line.substr(brace + 1, close - brace - 1);
    value_at = close + 1;
  } else {
    *name = line.substr(0, space);
    labels->clear();
    value_at = space;
  }
  char* end = nullptr;
  const std::string rest = line.substr(value_at);
  *value = std::strtod(rest.c_str(), &end);
  return end != rest.c_str();
}

}  // namespace

PrefillFigures PrefillFigures::operator-(const PrefillFigures& b) const {
  PrefillFigures d;
  d.prompt_tokens = prompt_tokens - b.prompt_tokens;
  d.hit_tokens = hit_tokens - b.hit_tokens;
  d.pages_sent = pages_sent - b.pages_sent;
  d.pages_not_sent = pages_not_sent - b.pages_not_sent;
  d.bytes_sent = bytes_sent - b.bytes_sent;
  return d;
}

nlohmann::json PrefillFigures::ToJson() const {
  return {{"prompt_tokens", prompt_tokens},      {"computed_tokens", computed_tokens()},
          {"prefix_hit_tokens", hit_tokens},     {"kv_pages_sent", pages_sent},
          {"kv_pages_not_sent", pages_not_sent}, {"kv_bytes_sent", bytes_sent}};
}

PrefillFigures ParsePrefillFigures(const std::string& exposition) {
  PrefillFigures f;
  std::istringstream in(exposition);
  std::string line, name, labels;
  double value = 0;
  while (std::getline(in, line)) {
    if (!ParseSample(line, &name, &labels, &value)) continue;
    if (labels.find("role=\"prefill\"") == std::string::npos) continue;
    if (name == "tandem_prompt_tokens_total") f.prompt_tokens += value;
    if (name == "tandem_prefix_cache_hit_tokens_total") f.hit_tokens += value;
    if (name == "tandem_kv_pages_sent_total") f.pages_sent += value;
    if (name == "tandem_kv_pages_not_sent_total") f.pages_not_sent += value;
    if (name == "tandem_kv_transfer_bytes_sum") f.bytes_sent += value;
  }
  return f;
}

StatusOr<PrefillFigures> ScrapePrefillFigures(const std::vector<std::string>& urls) {
  PrefillFigures sum;
  for (const std::string& url : urls) {
    std::string rest = url;
    if (rest.rfind("http://", 0) == 0) rest = rest.substr(7);
    const size_t slash = rest.find('/');
    const std::string host_port = rest.substr(0, slash);
    const std::string path = slash == std::string::npos ? "/metrics" : rest.substr(slash);
    const size_t colon = host_port.rfind(':');
    if (colon == std::string::npos) return InvalidArgumentError("--metrics '{}': no port", url);
    const int port = std::atoi(host_port.substr(colon + 1).c_str());
    if (port <= 0 || port >= 65536) return InvalidArgumentError("--metrics '{}': bad port", url);
    httplib::Client c(host_port.substr(0, colon), port);
    c.set_read_timeout(30, 0);
    auto res = c.Get(path);
    if (!res) return UnavailableError("GET {}: {}", url, httplib::to_string(res.error()));
    if (res->status != 200) return UnavailableError("GET {} answered {}", url, res->status);
    const PrefillFigures f = ParsePrefillFigures(res->body);
    sum.prompt_tokens += f.prompt_tokens;
    sum.hit_tokens += f.hit_tokens;
    sum.pages_sent += f.pages_sent;
    sum.pages_not_sent += f.pages_not_sent;
    sum.bytes_sent += f.bytes_sent;
  }
  return sum;
}

}  // namespace tandem::bench
