// GPU sampler against the CPU sampler (tandem::Sample) on fp32 logits, and argmax for greedy.
#include <random>

#include "gpu_test_util.h"
#include "tandem/engine/sampling.h"
#include "tandem/kernels/cuda/argmax.h"
#include "tandem/kernels/cuda/sampling.h"

namespace tandem::cuda::testing {
namespace {

class SamplingTest : public GpuTest {};

TEST_F(SamplingTest, PhiloxMatchesCpu) {
  std::vector<uint64_t> counters = {
      0, 1, 2, 17, 4096, 0xffffffffull, 0x100000000ull, 0x123456789abcdefull};
  for (uint64_t seed : {0ull, 1ull, 42ull, 0xdeadbeefcafef00dull}) {
    for (uint32_t lane : {0u, 3u}) {
      DeviceBuffer<uint64_t> d_counters(counters);
      DeviceBuffer<float> d_out(counters.size());
      ASSERT_EQ(LaunchPhiloxUniform(seed, d_counters.get(), lane,
                                    static_cast<int64_t>(counters.size()), d_out.get(), nullptr),
                cudaSuccess);
      const std::vector<float> got = d_out.Download();
      for (size_t i = 0; i < counters.size(); ++i) {
        EXPECT_EQ(got[i], PhiloxUniform(seed, counters[i], lane))
            << "seed " << seed << " counter " << counters[i] << " lane " << lane;
      }
    }
  }
}

struct Row {
  SamplingParams params;
  std::vector<int32_t> prompt, generated;
  int64_t position;
};

// Samples `rows` on the GPU; returns tokens and log-probabilities.
void RunGpu(const std::vector<float>& logits, int64_t vocab, const std::vector<Row>& rows,
            std::vector<int32_t>* tokens, std::vector<float>* logprobs) {
  std::vector<SampleRowParams> rp;
  std::vector<int32_t> history, prompt_lens;
  std::vector<int64_t> offsets = {0};
  for (const Row& r : rows) {
    SampleRowParams g;
    g.temperature = r.params.temperature;
    g.top_k = r.params.top_k;
    g.top_p = r.params.top_p;
    g.min_p = r.params.min_p;
    g.repetition_penalty = r.params.repetition_penalty;
    g.presence_penalty = r.params.presence_penalty;
    g.frequency_penalty = r.params.frequency_penalty;
    g.seed = r.params.seed;
    g.position = r.position;
    rp.push_back(g);
    history.insert(history.end(), r.prompt.begin(), r.prompt.end());
    history.insert(history.end(), r.generated.begin(), r.generated.end());
    prompt_lens.push_back(static_cast<int32_t>(r.prompt.size()));
    offsets.push_back(static_cast<int64_t>(history.size()));
  }
  history.push_back(0);  // never empty
  const int64_t n = static_cast<int64_t>(rows.size());
  DeviceBuffer<float> d_logits(logits), d_logprobs(n);
  DeviceBuffer<SampleRowParams> d_rp(rp);
  DeviceBuffer<int32_t> d_history(history), d_prompt_lens(prompt_lens), d_tokens(n);
  DeviceBuffer<int64_t> d_offsets(offsets);
  size_t ws_bytes = 0;
  ASSERT_EQ(SampleWorkspaceBytes(n, vocab, &ws_bytes), cudaSuccess);
  DeviceBuffer<char> d_ws(ws_bytes);
  SampleParams p;
  p.logits = d_logits.get();
  p.row_params = d_rp.get();
  p.history = d_history.get();
  p.history_offsets = d_offsets.get();
  p.prompt_lens = d_prompt_lens.get();
  p.out_tokens = d_tokens.get();
  p.out_logprobs = d_logprobs.get();
  p.rows = n;
  p.vocab = vocab;
  p.workspace = d_ws.get();
  p.workspace_bytes = ws_bytes;
  ASSERT_EQ(LaunchSample(p, nullptr), cudaSuccess);
  *tokens = d_tokens.Download();
  *logprobs = d_logprobs.Download();
}

std::vector<float> RandomLogits(int64_t rows, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> l(rows * vocab);
  for (float& x : l) x = dist(rng);
  return l;
}

TEST_F(SamplingTest, GreedyEqualsArgmax) {
  const int64_t vocab = 50257, n = 6;
  std::vector<float> logits = RandomLogits(n, vocab, 1);
  logits[2 * vocab + 10] = logits[2 * vocab + 20] = 1e4f;  // tie: lowest id wins
  std::vector<Row> rows(n);
  for (auto& r : rows) r.params.temperature = 0.0f, r.position = 5;
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  RunGpu(logits, vocab, rows, &tokens, &logprobs);
  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<int32_t> d_arg(n);
  ASSERT_EQ(LaunchArgmax(ArgmaxParams<float>{d_logits.get(), d_arg.get(), n, vocab}, nullptr),
            cudaSuccess);
  const std::vector<int32_t> arg = d_arg.Download();
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(tokens[i], arg[i]) << "row " << i;
  EXPECT_EQ(tokens[2], 10);
}

TEST_F(SamplingTest, SeededMatchesCpuSampler) {
  for (int64_t vocab : {37, 1002, 32000}) {
    std::vector<Row> rows;
    auto add = [&](auto set) {
      for (int pos = 0; pos < 6; ++pos) {
        Row r;
        r.params.seed = 1234 + rows.size();
        r.position = 3 + pos * 17;
        r.prompt = {1, 5, 5, 9, static_cast<int32_t>(vocab - 1), -3};
        r.generated = {5, 7, 7, 7, 2};
        set(r.params);
        rows.push_back(r);
      }
    };
    add([](SamplingParams&) {});  // plain softmax
    add([](SamplingParams& s) { s.temperature = 0.7f; });
    add([](SamplingParams& s) { s.temperature = 1.3f, s.top_k = 20; });
    add([](SamplingParams& s) { s.top_p = 0.9f; });
    add([](SamplingParams& s) { s.min_p = 0.05f; });
    add([](SamplingParams& s) { s.top_k = 50, s.top_p = 0.8f, s.min_p = 0.02f; });
    add([](SamplingParams& s) { s.repetition_penalty = 1.3f; });
    add([](SamplingParams& s) {
      s.presence_penalty = 0.5f, s.frequency_penalty = 0.25f, s.temperature = 0.9f;
    });
    add([](SamplingParams& s) { s.temperature = 0.0f, s.repetition_penalty = 1.1f; });
    const int64_t n = static_cast<int64_t>(rows.size());
    const std::vector<float> logits = RandomLogits(n, vocab, 7 + vocab);
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
    RunGpu(logits, vocab, rows, &tokens, &logprobs);
    ASSERT_EQ(tokens.size(), rows.size());
    for (int64_t i = 0; i < n; ++i) {
      const SampleResult cpu =
          Sample(std::span<const float>(logits.data() + i * vocab, vocab), rows[i].params,
                 rows[i].prompt, rows[i].generated, rows[i].position);
      EXPECT_EQ(tokens[i], cpu.token) << "vocab " << vocab << " row " << i;
      EXPECT_EQ(logprobs[i], cpu.logprob) << "vocab " << vocab << " row " << i;
    }
  }
}

}  // namespace
}  // namespace tandem::cuda::testing
