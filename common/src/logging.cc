#include "tandem/common/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace tandem {

spdlog::logger& Logger() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_color_mt("tandem");
    l->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ %v");
    l->set_level(spdlog::level::info);
    return l;
  }();
  return *logger;
}

void SetLogLevel(const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  Logger().set_level(lvl == spdlog::level::off && level != "off" ? spdlog::level::info : lvl);
}

}  // namespace tandem
