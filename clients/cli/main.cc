// The `tandem` command line.
#include <CLI/CLI.hpp>

#include "bench_command.h"
#include "generate_command.h"
#include "serve_command.h"

int main(int argc, char** argv) {
  CLI::App app{"Tandem: disaggregated LLM serving"};
  app.require_subcommand(1);
  int exit_code = 0;
  tandem::AddGenerateCommand(app, &exit_code);
  tandem::AddServeCommand(app, &exit_code);
  tandem::AddBenchCommand(app, &exit_code);
  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
