// The life of a server process after its flags are parsed, the same for tandem-router,
// tandem-prefill and tandem-decode: SIGTERM / SIGINT are taken synchronously by the main thread,
// then the server drains within its budget (--drain-ms, AddDrainFlag) and the process exits.
//
// Thread safety: call once, from main(), before any thread is started.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string_view>

#include <CLI/CLI.hpp>

#include "tandem/common/status.h"

namespace tandem {

// Adds --drain-ms (default 30000) to `app`: the longest drain on SIGTERM / SIGINT.
inline void AddDrainFlag(CLI::App& app, int64_t* drain_ms) {
  app.add_option("--drain-ms", *drain_ms,
                 "Longest drain on SIGTERM / SIGINT in milliseconds; work still in flight then "
                 "ends with UNAVAILABLE")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
}

// Blocks SIGTERM and SIGINT in the calling thread, so every thread `start` creates inherits the
// mask and only this thread takes them; runs `start` (start the server, print its addresses);
// waits for one of the signals; runs `drain(drain_budget)`, which drains and stops the server
// within the budget plus a few seconds (each server's Drain: health NOT_SERVING, new work
// UNAVAILABLE, in-flight work finishes within the budget, the rest is cut). Returns the process
// exit code: 1 when `start` failed (its status logged under `name`), else 0.
int RunServerUntilSignal(std::string_view name, std::chrono::milliseconds drain_budget,
                         const std::function<Status()>& start,
                         const std::function<void(std::chrono::milliseconds)>& drain);

}  // namespace tandem
