// `tandem serve`: router + prefill + decode workers on localhost, each a child process.
#pragma once

#include <CLI/CLI.hpp>

namespace tandem {

// Registers the subcommand on `app`; its callback runs until Ctrl-C / SIGTERM or a child's death
// and sets `*exit_code`.
void AddServeCommand(CLI::App& app, int* exit_code);

}  // namespace tandem
