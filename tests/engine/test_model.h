// Test helpers: write safetensors files and small random-weight checkpoints.
#pragma once

#include <unistd.h>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tandem::testing {

struct RawTensor {
  std::string dtype = "F32";  // F32, F16, BF16 or anything else for error tests
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

inline RawTensor F32Tensor(std::vector<int64_t> shape, const std::vector<float>& values) {
  RawTensor t;
  t.shape = std::move(shape);
  t.bytes.resize(values.size() * 4);
  std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

// Writes a safetensors file. `truncate_by` bytes are cut off the end (for error tests).
inline void WriteSafetensors(const std::filesystem::path& file,
                             const std::map<std::string, RawTensor>& tensors,
                             size_t truncate_by = 0) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    header[name] = {{"dtype", t.dtype},
                    {"shape", t.shape},
                    {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string h = header.dump();
  while (h.size() % 8) h += ' ';
  std::string out(8, '\0');
  uint64_t len = h.size();
  std::memcpy(out.data(), &len, 8);
  out += h;
  for (const auto& [name, t] : tensors) out.append(t.bytes.begin(), t.bytes.end());
  out.resize(out.size() - truncate_by);
  std::ofstream(file, std::ios::binary) << out;
}

struct TinyModelSpec {
  std::string arch = "LlamaForCausalLM";
  int hidden = 48, intermediate = 80, layers = 2, heads = 6, kv_heads = 2, vocab = 97;
  int sliding_window = 0;  // Mistral
  bool tied = false;
  bool qkv_bias = false;     // Qwen2
  bool llama3_rope = false;  // rope_scaling {rope_type: llama3} (Llama 3.x)
  uint32_t seed = 7;
};

// Writes config.json + model.safetensors of a random-weight model into `dir`.
inline void WriteTinyModel(const std::filesystem::path& dir, const TinyModelSpec& s) {
  std::filesystem::create_directories(dir);
  std::mt19937 rng(s.seed);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  auto rnd = [&](std::vector<int64_t> shape, float mean = 0.0f) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> v(n);
    for (auto& x : v) x = mean + nd(rng);
    return F32Tensor(shape, v);
  };
  const int hd = s.hidden / s.heads, q = s.heads * hd, kv = s.kv_heads * hd;
  std::map<std::string, RawTensor> t;
  t["model.embed_tokens.weight"] = rnd({s.vocab, s.hidden});
  t["model.norm.weight"] = rnd({s.hidden}, 1.0f);
  if (!s.tied) t["lm_head.weight"] = rnd({s.vocab, s.hidden});
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t[p + "input_layernorm.weight"] = rnd({s.hidden}, 1.0f);
    t[p + "post_attention_layernorm.weight"] = rnd({s.hidden}, 1.0f);
    t[p + "self_attn.q_proj.weight"] = rnd({q, s.hidden});
    t[p + "self_attn.k_proj.weight"] = rnd({kv, s.hidden});
    t[p + "self_attn.v_proj.weight"] = rnd({kv, s.hidden});
    t[p + "self_attn.o_proj.weight"] = rnd({s.hidden, q});
    if (s.qkv_bias) {
      t[p + "self_attn.q_proj.bias"] = rnd({q});
      t[p + "self_attn.k_proj.bias"] = rnd({kv});
      t[p + "self_attn.v_proj.bias"] = rnd({kv});
    }
    t[p + "mlp.gate_proj.weight"] = rnd({s.intermediate, s.hidden});
    t[p + "mlp.up_proj.weight"] = rnd({s.intermediate, s.hidden});
    t[p + "mlp.down_proj.weight"] = rnd({s.hidden, s.intermediate});
  }
  WriteSafetensors(dir / "model.safetensors", t);
  nlohmann::json c = {{"architectures", {s.arch}},
                      {"hidden_size", s.hidden},
                      {"intermediate_size", s.intermediate},
                      {"num_hidden_layers", s.layers},
                      {"num_attention_heads", s.heads},
                      {"num_key_value_heads", s.kv_heads},
                      {"vocab_size", s.vocab},
                      {"max_position_embeddings", 4096},
                      {"rms_norm_eps", 1e-5},
                      {"rope_theta", 10000.0},
                      {"tie_word_embeddings", s.tied},
                      {"torch_dtype", "float32"},
                      {"hidden_act", "silu"},
                      {"eos_token_id", 1},
                      {"bos_token_id", 0}};
  if (s.sliding_window > 0) c["sliding_window"] = s.sliding_window;
  if (s.llama3_rope) {
    c["rope_theta"] = 500000.0;
    c["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", 8.0},
                         {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 64}};
  }
  std::ofstream(dir / "config.json") << c.dump(2);
}

inline std::filesystem::path TempDir(const std::string& name) {
  auto d = std::filesystem::temp_directory_path() /
           ("tandem_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

}  // namespace tandem::testing
