// tandem-probe: scores forced continuations with the engine, for parity tests against a
// reference implementation (Hugging Face transformers).
//
//   tandem-probe --model DIR|FILE.gguf --input IN.json --output OUT.json [--chunk N] [--batch-mode
//   joint|alone]
//
// IN.json:  {"prompts": [[ids...], ...], "forced": [[ids...], ...]}
// For each prompt: prefill it (in chunks of --chunk tokens), then for every forced token record
// the argmax of the logits at the last position and feed the forced token (teacher forcing).
// OUT.json: {"results": [{"argmax": [...], "first_logits": [...], "last_logits": [...]}, ...]}
// "joint" runs all prompts in the same batches; "alone" runs them one at a time. Floats are
// written with 9 significant digits, so they round-trip exactly to float32.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "tandem/common/logging.h"
#include "tandem/engine/engine.h"
#include "tandem/engine/weights_flag.h"

namespace tandem {
namespace {

struct Item {
  std::vector<int32_t> prompt, forced, argmax, blocks;
  std::vector<float> first_logits, last_logits;
  int64_t computed = 0;
  size_t step = 0;
};

int32_t Argmax(const float* x, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return best;
}

// Runs `items` together to completion.
Status RunBatch(Engine& engine, std::vector<Item*> items, int64_t chunk) {
  KvCache& cache = engine.kv_cache();
  const int32_t vocab = engine.config().vocab_size;
  for (Item* it : items) {
    TANDEM_ASSIGN_OR_RETURN(
        it->blocks,
        cache.allocator().Allocate(cache.BlocksFor(it->prompt.size() + it->forced.size())));
  }
  std::vector<int32_t> seq_tokens;
  while (true) {
    std::vector<ForwardChunk> chunks;
    std::vector<Item*> owners;
    std::vector<std::vector<int32_t>> inputs(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      Item* it = items[i];
      const int64_t plen = static_cast<int64_t>(it->prompt.size());
      if (it->step >= it->forced.size()) continue;
      ForwardChunk ch;
      if (it->computed < plen) {
        const int64_t n = chunk > 0 ? std::min(chunk, plen - it->computed) : plen - it->computed;
        inputs[i].assign(it->prompt.begin() + it->computed, it->prompt.begin() + it->computed + n);
        ch.want_logits = it->computed + n == plen;
      } else {
        inputs[i] = {it->forced[it->step - 1]};
        ch.want_logits = true;
      }
      ch.tokens = inputs[i];
      ch.start_pos = it->computed;
      ch.block_table = it->blocks;
      chunks.push_back(ch);
      owners.push_back(it);
    }
    if (chunks.empty()) break;
    std::vector<float> logits;
    TANDEM_RETURN_IF_ERROR(engine.runner().Forward(chunks, cache, &logits));
    size_t row = 0;
    for (size_t c = 0; c < chunks.size(); ++c) {
      Item* it = owners[c];
      it->computed += static_cast<int64_t>(chunks[c].tokens.size());
      if (!chunks[c].want_logits) continue;
      const float* l = logits.data() + row++ * vocab;
      if (it->step == 0) it->first_logits.assign(l, l + vocab);
      it->last_logits.assign(l, l + vocab);
      it->argmax.push_back(Argmax(l, vocab));
      ++it->step;
    }
  }
  for (Item* it : items) cache.allocator().Release(it->blocks);
  return Status::Ok();
}

nlohmann::json FloatArray(const std::vector<float>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (float f : v) a.push_back(nlohmann::json::parse(fmt::format("{:.9g}", f)));
  return a;
}

int Main(int argc, char** argv) {
  CLI::App app{"Scores forced continuations with the Tandem engine"};
  std::string model, input, output, mode = "joint";
  int64_t chunk = 0;
  app.add_option("--model", model, "checkpoint folder or .gguf file")->required();
  app.add_option("--input", input, "input JSON")->required();
  app.add_option("--output", output, "output JSON")->required();
  app.add_option("--chunk", chunk, "prefill chunk size (0 = whole prompt)");
  app.add_option("--batch-mode", mode, "joint or alone")->check(CLI::IsMember({"joint", "alone"}));
  std::string weights = "auto";
  AddWeightsFlag(app, &weights);
  DeviceFlags device;
  AddDeviceFlags(app, &device);
  CLI11_PARSE(app, argc, argv);

  EngineOptions opts;
  opts.kv_cache_bytes = int64_t{1} << 30;
  opts.weights = WeightsFromFlag(weights);
  ApplyDeviceFlags(device, &opts);
  auto engine = Engine::Load(model, opts);
  if (!engine.ok()) {
    TLOG_ERROR("{}", engine.status().ToString());
    return 1;
  }
  nlohmann::json in;
  try {
    std::ifstream f(input);
    in = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    TLOG_ERROR("{}: {}", input, e.what());
    return 1;
  }
  std::vector<Item> items(in.at("prompts").size());
  for (size_t i = 0; i < items.size(); ++i) {
    items[i].prompt = in["prompts"][i].get<std::vector<int32_t>>();
    items[i].forced = in["forced"][i].get<std::vector<int32_t>>();
  }
  Status st;
  if (mode == "joint") {
    std::vector<Item*> all;
    for (auto& it : items) all.push_back(&it);
    st = RunBatch(**engine, all, chunk);
  } else {
    for (auto& it : items) {
      st = RunBatch(**engine, {&it}, chunk);
      if (!st.ok()) break;
    }
  }
  if (!st.ok()) {
    TLOG_ERROR("{}", st.ToString());
    return 1;
  }
  nlohmann::json out;
  out["results"] = nlohmann::json::array();
  for (const auto& it : items) {
    out["results"].push_back({{"argmax", it.argmax},
                              {"first_logits", FloatArray(it.first_logits)},
                              {"last_logits", FloatArray(it.last_logits)}});
  }
  std::ofstream(output) << out.dump();
  return 0;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) { return tandem::Main(argc, argv); }
