// `tandem bench`: a load generator against a router over gRPC, any OpenAI-compatible HTTP
// server, or the single-process engine, at fixed concurrencies or Poisson request rates. Prints
// throughput, TTFT, TPOT, inter-token and end-to-end latency (mean, p50, p90, p99) and goodput
// per run; --json writes them with per-request figures for bench/plot_serving.py.
// --conversations runs a multi-turn chat workload instead (bench/multi_turn.h): TTFT per turn
// and, with --metrics, the prefill workers' computed / cached tokens and KV shipped per turn.
#pragma once

#include <CLI/CLI.hpp>

namespace tandem {

// Registers the subcommand on `app`; its callback runs the benchmark and sets `*exit_code`
// (0, 1 for a setup error, 2 when requests failed).
void AddBenchCommand(CLI::App& app, int* exit_code);

}  // namespace tandem
