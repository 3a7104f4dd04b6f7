#include "tandem/planner/exposition.h"

#include <cmath>
#include <cstdlib>
#include <limits>

namespace tandem::planner {
namespace {

bool NameChar(char c, bool first) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
         (!first && c >= '0' && c <= '9');
}

std::optional<double> ParseNumber(std::string_view s) {
  if (s == "+Inf" || s == "Inf") return std::numeric_limits<double>::infinity();
  if (s == "-Inf") return -std::numeric_limits<double>::infinity();
  if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
  const std::string str(s);
  char* end = nullptr;
  const double v = std::strtod(str.c_str(), &end);
  if (str.empty() || *end != '\0') return std::nullopt;
  return v;
}

// Parses one sample line; false when malformed.
bool ParseLine(std::string_view line, ExposedSample& out) {
  size_t i = 0;
  while (i < line.size() && NameChar(line[i], i == 0)) ++i;
  if (i == 0) return false;
  out.name = std::string(line.substr(0, i));
  if (i < line.size() && line[i] == '{') {
    ++i;
    while (true) {
      while (i < line.size() && (line[i] == ' ' || line[i] == ',')) ++i;
      if (i < line.size() && line[i] == '}') {
        ++i;
        break;
      }
      const size_t k0 = i;
      while (i < line.size() && NameChar(line[i], i == k0)) ++i;
      if (i == k0 || i + 1 >= line.size() || line[i] != '=' || line[i + 1] != '"') return false;
      std::string key(line.substr(k0, i - k0)), value;
      i += 2;
      while (i < line.size() && line[i] != '"') {
        if (line[i] == '\\' && i + 1 < line.size()) {
          ++i;
          value += line[i] == 'n' ? '\n' : line[i];
        } else {
          value += line[i];
        }
        ++i;
      }
      if (i >= line.size()) return false;
      ++i;  // closing quote
      out.labels[key] = value;
    }
  }
  while (i < line.size() && line[i] == ' ') ++i;
  size_t end = line.find(' ', i);  // an optional timestamp follows
  auto v = ParseNumber(line.substr(i, end == std::string_view::npos ? end : end - i));
  if (!v) return false;
  out.value = *v;
  return true;
}

}  // namespace

StatusOr<std::vector<ExposedSample>> ParseExposition(std::string_view text) {
  std::vector<ExposedSample> out;
  int line_no = 0;
  while (!text.empty()) {
    ++line_no;
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
    if (line.empty() || line[0] == '#') continue;
    ExposedSample s;
    if (!ParseLine(line, s)) {
      return DataLossError("metrics line {}: not a sample: {}", line_no,
                           std::string(line.substr(0, 120)));
    }
    out.push_back(std::move(s));
  }
  return out;
}

std::optional<double> SumSamples(const std::vector<ExposedSample>& samples, std::string_view name,
                                 const std::map<std::string, std::string>& match) {
  std::optional<double> sum;
  for (const auto& s : samples) {
    if (s.name != name) continue;
    bool ok = true;
    for (const auto& [k, v] : match) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) ok = false;
    }
    if (ok) sum = sum.value_or(0) + s.value;
  }
  return sum;
}

std::optional<double> AttainmentFromBuckets(const std::map<double, double>& buckets, double slo) {
  auto total = buckets.find(std::numeric_limits<double>::infinity());
  if (total == buckets.end() || !(total->second > 0)) return std::nullopt;
  double within = 0;
  for (const auto& [le, count] : buckets) {
    // Bucket bounds print as decimals: allow their rounding.
    if (le <= slo * (1 + 1e-9)) within = count;
  }
  return within / total->second;
}

}  // namespace tandem::planner
