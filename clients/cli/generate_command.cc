#include "generate_command.h"

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "tandem/client/client.h"
#include "tandem/common/logging.h"
#include "tandem/engine/chat_template.h"
#include "tandem/engine/engine.h"
#include "tandem/engine/weights_flag.h"
#include "tandem/rpc/tls_credentials.h"

namespace tandem {
namespace {

struct GenerateFlags {
  std::string model = "models/SmolLM2-135M-Instruct";
  std::string prompt;
  bool chat = false;
  std::string system;
  // Sampling and stopping, as a router request takes them (its seed is always `seed`).
  GenerateParams params;
  uint64_t seed = 0;
  int32_t threads = 0;
  std::string weights = "auto";
  DeviceFlags device;
  std::string log_level = "warn";
  // Stream from a running router instead of loading the model here.
  std::string server;
  std::string api_key;
  std::string tls_ca;
  double timeout_s = 600;
};

// `--server`: the same request through a router; the text streams as chunks arrive.
int RunRemote(const GenerateFlags& f) {
  ClientOptions o;
  o.address = f.server;
  o.api_key = f.api_key;
  if (!f.tls_ca.empty()) {
    TlsFiles files;
    files.ca = f.tls_ca;
    auto tls = LoadTls(files);
    if (!tls.ok()) {
      std::fprintf(stderr, "error: %s\n", tls.status().message().c_str());
      return 1;
    }
    o.tls_ca_pem = tls->ca_pem;
  }
  o.timeout = std::chrono::milliseconds(static_cast<int64_t>(f.timeout_s * 1000));
  auto client = Client::Connect(o);
  if (!client.ok()) {
    std::fprintf(stderr, "error: %s\n", client.status().ToString().c_str());
    return 1;
  }
  GenerateParams p = f.params;
  p.seed = f.seed;  // always sent: the same flags give the same tokens as the local engine
  const v1::GenerateRequest req =
      f.chat ? ChatRequest(f.system, f.prompt, p) : TextRequest(f.prompt, p);
  auto final = (*client)->Generate(req, [](const v1::GenerateChunk& c) {
    std::fwrite(c.text().data(), 1, c.text().size(), stdout);
    std::fflush(stdout);
    return true;
  });
  if (!final.ok()) {
    std::fputc('\n', stdout);
    std::fprintf(stderr, "error: %s\n", final.status().ToString().c_str());
    return 1;
  }
  std::fputc('\n', stdout);
  return 0;
}

int RunGenerate(const GenerateFlags& f) {
  SetLogLevel(f.log_level);
  if (!f.server.empty()) return RunRemote(f);
  EngineOptions eo;
  eo.num_threads = f.threads;
  eo.weights = WeightsFromFlag(f.weights);
  ApplyDeviceFlags(f.device, &eo);
  auto engine = Engine::Load(f.model, eo);
  if (!engine.ok()) {
    std::fprintf(stderr, "error: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  const Tokenizer* tok = (*engine)->tokenizer();
  if (tok == nullptr) {
    std::fprintf(stderr, "error: %s has no tokenizer.json or tokenizer.model\n", f.model.c_str());
    return 1;
  }
  std::string text = f.prompt;
  if (f.chat) {
    auto format = DetectChatFormat(f.model);
    if (!format.ok()) {
      std::fprintf(stderr, "error: %s\n", format.status().ToString().c_str());
      return 1;
    }
    std::vector<ChatMessage> messages;
    if (!f.system.empty()) messages.push_back({"system", f.system});
    messages.push_back({"user", f.prompt});
    auto rendered = ApplyChatTemplate(*format, messages, /*add_generation_prompt=*/true);
    if (!rendered.ok()) {
      std::fprintf(stderr, "error: %s\n", rendered.status().ToString().c_str());
      return 1;
    }
    text = *rendered;
  }
  auto ids = tok->Encode(text, /*add_special_tokens=*/true);
  if (!ids.ok()) {
    std::fprintf(stderr, "error: %s\n", ids.status().ToString().c_str());
    return 1;
  }
  GenerationRequest req;
  req.prompt = std::move(ids).value();
  const GenerateParams& p = f.params;
  req.max_tokens = p.max_tokens;
  req.sampling.temperature = p.temperature;
  req.sampling.top_k = p.top_k;
  req.sampling.top_p = p.top_p;
  req.sampling.min_p = p.min_p;
  req.sampling.repetition_penalty = p.repetition_penalty;
  req.sampling.seed = f.seed;
  req.stop_strings = p.stop;
  req.ignore_eos = p.ignore_eos;
  Generator gen(**engine, GeneratorOptions{});
  auto handle = gen.Add(std::move(req));
  if (!handle.ok()) {
    std::fprintf(stderr, "error: %s\n", handle.status().ToString().c_str());
    return 1;
  }
  std::vector<TokenEvent> events;
  while (gen.HasWork()) {
    events.clear();
    Status st = gen.Step(&events);
    if (!st.ok()) {
      std::fprintf(stderr, "error: %s\n", st.ToString().c_str());
      return 1;
    }
    for (const auto& ev : events) {
      std::fwrite(ev.text.data(), 1, ev.text.size(), stdout);
      std::fflush(stdout);
    }
  }
  std::fputc('\n', stdout);
  return 0;
}

}  // namespace

void AddGenerateCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<GenerateFlags>();
  CLI::App* cmd = app.add_subcommand(
      "generate", "Generate text with the engine in this process, or through a router (--server)");
  cmd->add_option("prompt", flags->prompt, "The prompt")->required();
  cmd->add_option("--model", flags->model, "Checkpoint folder or .gguf file")
      ->capture_default_str();
  cmd->add_flag("--chat", flags->chat, "Wrap the prompt in the model's chat template");
  cmd->add_option("--system", flags->system, "System message (with --chat)");
  cmd->add_option("--max-tokens", flags->params.max_tokens, "Tokens to generate at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--temperature", flags->params.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", flags->params.top_k, "0 = off")->capture_default_str();
  cmd->add_option("--top-p", flags->params.top_p, "1 = off")->capture_default_str();
  cmd->add_option("--min-p", flags->params.min_p, "0 = off")->capture_default_str();
  cmd->add_option("--repetition-penalty", flags->params.repetition_penalty, "1 = off")
      ->capture_default_str();
  cmd->add_option("--seed", flags->seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--stop", flags->params.stop, "Stop string (repeatable)");
  cmd->add_flag("--ignore-eos", flags->params.ignore_eos,
                "Keep generating past the end-of-sequence token (exactly --max-tokens tokens)");
  cmd->add_option("--threads", flags->threads, "Compute threads (0 = all cores)");
  AddWeightsFlag(*cmd, &flags->weights);
  AddDeviceFlags(*cmd, &flags->device);
  cmd->add_option("--log-level", flags->log_level, "Log level on stderr")->capture_default_str();
  cmd->add_option("--server", flags->server,
                  "Router gRPC address HOST:PORT: generate there instead of in this process");
  cmd->add_option("--api-key", flags->api_key, "API key for --server (or $TANDEM_API_KEY)")
      ->envname("TANDEM_API_KEY");
  cmd->add_option("--tls-ca", flags->tls_ca,
                  "PEM CA file: reach --server over TLS, verifying the router against it");
  cmd->add_option("--timeout-s", flags->timeout_s, "Deadline of a --server request")
      ->capture_default_str();
  cmd->callback([flags, exit_code] { *exit_code = RunGenerate(*flags); });
}

}  // namespace tandem
