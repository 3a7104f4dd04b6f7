// Splits "scheme://host:port/path" into the origin httplib::Client takes and the path.
#pragma once

#include <string>
#include <utility>

namespace tandem::planner {

// {"http://host:port", "/path"}; the path is "" when the URL has none. No validation beyond
// that: httplib refuses an origin it cannot use.
inline std::pair<std::string, std::string> SplitUrl(const std::string& url) {
  const size_t scheme = url.find("://");
  const size_t from = scheme == std::string::npos ? 0 : scheme + 3;
  const size_t slash = url.find('/', from);
  if (slash == std::string::npos) return {url, ""};
  std::string path = url.substr(slash);
  while (!path.empty() && path.back() == '/') path.pop_back();
  return {url.substr(0, slash), path};
}

}  // namespace tandem::planner
