// One logging macro family (spdlog underneath, fmt-checked formats). Logs go to stderr so that
// stdout stays free for program output (e.g. `tandem generate` prints only generated text).
// Lines about a request carry its id: TLOG_INFO("req={} admitted", id).
#pragma once

#include <spdlog/spdlog.h>

namespace tandem {
// Sets the process-wide level from "trace|debug|info|warn|error|off". Unknown names keep "info".
void SetLogLevel(const std::string& level);
// Returns the logger every macro writes to (stderr, created on first use).
spdlog::logger& Logger();
}  // namespace tandem

#define TLOG_DEBUG(...) ::tandem::Logger().debug(__VA_ARGS__)
#define TLOG_INFO(...) ::tandem::Logger().info(__VA_ARGS__)
#define TLOG_WARN(...) ::tandem::Logger().warn(__VA_ARGS__)
#define TLOG_ERROR(...) ::tandem::Logger().error(__VA_ARGS__)
// Broken invariant: logs and aborts. Not for input errors (those are Status values).
#define TANDEM_CHECK(cond)                                                                 \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      ::tandem::Logger().critical("check failed at {}:{}: {}", __FILE__, __LINE__, #cond); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)
