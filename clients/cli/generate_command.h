// `tandem generate`: runs the engine in this process and streams generated text to stdout.
#pragma once

#include <CLI/CLI.hpp>

namespace tandem {

// Registers the subcommand on `app`; its callback runs generation and sets `*exit_code`.
void AddGenerateCommand(CLI::App& app, int* exit_code);

}  // namespace tandem
