// Checkpoint and config loading, including every error a user can meet.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "tandem/engine/checkpoint.h"
#include "tandem/engine/engine.h"
#include "tandem/engine/weights.h"
#include "test_model.h"

namespace tandem {
namespace {

using testing::RawTensor;
using testing::TempDir;
using testing::TinyModelSpec;
using testing::WriteSafetensors;
using testing::WriteTinyModel;

TEST(LoaderTest, LoadsTinyModels) {
  for (std::string arch : {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}) {
    auto dir = TempDir("load_" + arch);
    TinyModelSpec s;
    s.arch = arch;
    s.qkv_bias = arch == "Qwen2ForCausalLM";
    s.sliding_window = arch == "MistralForCausalLM" ? 8 : 0;
    WriteTinyModel(dir, s);
    auto e = Engine::Load(dir, EngineOptions{});
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    EXPECT_EQ((*e)->config().num_kv_heads, 2);
    EXPECT_EQ((*e)->config().sliding_window, s.sliding_window);
    EXPECT_EQ((*e)->tokenizer(), nullptr);
  }
}

TEST(LoaderTest, MissingTensorNamesIt) {
  auto dir = TempDir("missing");
  WriteTinyModel(dir, TinyModelSpec{});
  auto ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok());
  std::map<std::string, RawTensor> kept;
  for (const auto& [name, t] : (*ck)->tensors()) {
    if (name == "model.layers.1.mlp.up_proj.weight") continue;
    RawTensor r;
    r.shape = t.shape;
    r.bytes.assign(static_cast<const uint8_t*>(t.data),
                   static_cast<const uint8_t*>(t.data) + t.num_bytes);
    kept[name] = r;
  }
  ck->reset();
  WriteSafetensors(dir / "model.safetensors", kept);
  auto e = Engine::Load(dir, EngineOptions{});
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kNotFound);
  EXPECT_NE(e.status().message().find("model.layers.1.mlp.up_proj.weight"), std::string::npos)
      << e.status().message();
}

TEST(LoaderTest, WrongShapeNamesTensorAndShapes) {
  auto dir = TempDir("shape");
  TinyModelSpec s;
  WriteTinyModel(dir, s);
  // Claim one more layer's worth of hidden size in the config: every weight is now wrong.
  std::ifstream in(dir / "config.json");
  auto c = nlohmann::json::parse(in);
  c["intermediate_size"] = 81;
  std::ofstream(dir / "config.json") << c.dump();
  auto e = Engine::Load(dir, EngineOptions{});
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(
      e.status().message().find("mlp.gate_proj.weight\" has shape [80, 48], expected [81, 48]"),
      std::string::npos)
      << e.status().message();
  EXPECT_NE(e.status().message().find("model.safetensors"), std::string::npos);
}

TEST(LoaderTest, UnknownArchitectureAndDtype) {
  auto dir = TempDir("arch");
  TinyModelSpec s;
  s.arch = "GPT2LMHeadModel";
  WriteTinyModel(dir, s);
  auto e = Engine::Load(dir, EngineOptions{});
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("unknown architecture \"GPT2LMHeadModel\""),
            std::string::npos);
  EXPECT_NE(e.status().message().find("config.json"), std::string::npos);

  auto dir2 = TempDir("dtype");
  std::map<std::string, RawTensor> t;
  t["x"].dtype = "I8";
  t["x"].shape = {2};
  t["x"].bytes = {1, 2};
  WriteSafetensors(dir2 / "model.safetensors", t);
  auto ck = Checkpoint::Open(dir2);
  ASSERT_FALSE(ck.ok());
  EXPECT_NE(ck.status().message().find("tensor \"x\" has unsupported dtype I8"), std::string::npos)
      << ck.status().message();
}

TEST(LoaderTest, TruncatedFileNamesFileAndTensor) {
  auto dir = TempDir("trunc");
  std::map<std::string, RawTensor> t;
  t["a"] = testing::F32Tensor({4}, {1, 2, 3, 4});
  t["b"] = testing::F32Tensor({2}, {5, 6});
  WriteSafetensors(dir / "model.safetensors", t, /*truncate_by=*/3);
  auto ck = Checkpoint::Open(dir);
  ASSERT_FALSE(ck.ok());
  EXPECT_EQ(ck.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(ck.status().message().find("truncated: tensor \"b\""), std::string::npos)
      << ck.status().message();
  EXPECT_NE(ck.status().message().find("model.safetensors"), std::string::npos);
  // A file shorter than its header.
  std::ofstream(dir / "model.safetensors", std::ios::binary)
      << std::string("\x40\0\0\0\0\0\0\0{", 9);
  ck = Checkpoint::Open(dir);
  ASSERT_FALSE(ck.ok());
  EXPECT_NE(ck.status().message().find("truncated"), std::string::npos);
  std::filesystem::remove(dir / "model.safetensors");
  ck = Checkpoint::Open(dir);
  EXPECT_EQ(ck.status().code(), StatusCode::kNotFound);
}

TEST(LoaderTest, ShardedIndexAndHalfPrecision) {
  auto dir = TempDir("sharded");
  RawTensor h;  // float16 1.0, -2.0, 65504, smallest subnormal
  h.dtype = "F16";
  h.shape = {4};
  h.bytes = {0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00};
  RawTensor b;  // bfloat16 1.0, -3.0
  b.dtype = "BF16";
  b.shape = {2};
  b.bytes = {0x80, 0x3f, 0x40, 0xc0};
  WriteSafetensors(dir / "model-00001-of-00002.safetensors", {{"h", h}});
  WriteSafetensors(dir / "model-00002-of-00002.safetensors", {{"b", b}});
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map": {"h": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}})";
  auto ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  float hv[4], bv[2];
  Checkpoint::ToFloat32(*(*ck)->Get("h").value(), hv);
  Checkpoint::ToFloat32(*(*ck)->Get("b").value(), bv);
  EXPECT_EQ(hv[0], 1.0f);
  EXPECT_EQ(hv[1], -2.0f);
  EXPECT_EQ(hv[2], 65504.0f);
  EXPECT_EQ(hv[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(bv[0], 1.0f);
  EXPECT_EQ(bv[1], -3.0f);
  // An index naming a shard that is absent.
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map": {"h": "model-00003-of-00002.safetensors"}})";
  ck = Checkpoint::Open(dir);
  ASSERT_FALSE(ck.ok());
  EXPECT_NE(ck.status().message().find("model-00003-of-00002.safetensors"), std::string::npos);
}

TEST(LoaderTest, ConfigErrorsNameTheKey) {
  auto dir = TempDir("cfg");
  std::ofstream(dir / "config.json")
      << R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 8})";
  auto c = LoadModelConfig(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("missing key \"intermediate_size\""), std::string::npos);
  std::ofstream(dir / "config.json") << R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 8,
    "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 8,
    "rope_scaling": {"rope_type": "yarn", "factor": 2}})";
  c = LoadModelConfig(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("rope_scaling type \"yarn\""), std::string::npos);
  std::ofstream(dir / "config.json") << "{not json";
  EXPECT_EQ(LoadModelConfig(dir).status().code(), StatusCode::kInvalidArgument);
}

// Found by fuzz_safetensors: shape and data_offsets were read with get<>, whose conversion of a
// number too large for the type (JSON gives a double) is undefined; negative dimensions passed
// (two of them multiply to a positive count) and a huge shape overflowed the element count.
// Each is now DATA_LOSS naming the tensor.
TEST(LoaderTest, SafetensorsHeaderNumbersAreChecked) {
  auto file = [](const std::string& entry) {
    const std::string header = R"({"t": )" + entry + "}";
    std::string f(8, '\0');
    const uint64_t n = header.size();
    std::memcpy(f.data(), &n, 8);
    return f + header + std::string(16, '\0');
  };
  const char* bad[] = {
      R"({"dtype": "F32", "shape": [2], "data_offsets": [1844674407370955161516, 8]})",
      R"({"dtype": "F32", "shape": [-1, -1], "data_offsets": [0, 4]})",
      R"({"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]})",
      R"({"dtype": "F32", "shape": [4294967296, 4294967297], "data_offsets": [0, 4]})",
      R"({"dtype": "F32", "shape": [1e30], "data_offsets": [0, 4]})",
      R"({"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]})",
  };
  for (const char* entry : bad) {
    const std::string f = file(entry);
    auto t = ParseSafetensors(reinterpret_cast<const uint8_t*>(f.data()), f.size(), "x.st");
    EXPECT_EQ(t.status().code(), StatusCode::kDataLoss) << entry;
    EXPECT_NE(t.status().message().find("tensor \"t\""), std::string::npos) << t.status().message();
  }
  const std::string ok = file(R"({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]})");
  auto t = ParseSafetensors(reinterpret_cast<const uint8_t*>(ok.data()), ok.size(), "x.st");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->at("t").shape, (std::vector<int64_t>{2, 2}));
}

}  // namespace
}  // namespace tandem
