// The prefill <-> decode contract written once (tandem_worker): layout, transfer id, sampling
// and logprob conversions that both workers use.
#include "tandem/worker/proto_convert.h"

#include <gtest/gtest.h>

#include "tandem/common/hash.h"
#include "tandem/worker/kv_pages.h"

namespace tandem {
namespace {

KvPageLayout SomeLayout() {
  KvGeometry g;
  g.num_layers = 30;
  g.num_kv_heads = 3;
  g.head_dim = 64;
  g.page_size = 16;
  g.dtype = DType::kBF16;
  return MakeKvPageLayout(g, 0x1234'5678'9abc'def0ULL);
}

TEST(ProtoConvertTest, LayoutToProtoSetsEveryFieldAndRoundTrips) {
  const KvPageLayout l = SomeLayout();
  v1::KvLayoutInfo info;
  ToProto(l, &info);
  EXPECT_EQ(info.model_hash(), l.model_hash);
  EXPECT_EQ(info.dtype(), "bf16");
  EXPECT_EQ(info.num_layers(), 30);
  EXPECT_EQ(info.num_kv_heads(), 3);
  EXPECT_EQ(info.head_dim(), 64);
  EXPECT_EQ(info.page_size(), 16);
  EXPECT_EQ(info.layout_version(), KvPageLayout::kCurrentLayoutVersion);
  EXPECT_EQ(info.fingerprint(), l.Fingerprint());
  auto back = FromProto(info);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, l);
}

TEST(ProtoConvertTest, LayoutFromProtoTakesLongDtypeNamesAndNamesABadOne) {
  v1::KvLayoutInfo info;
  ToProto(SomeLayout(), &info);
  info.set_dtype("bfloat16");  // as decode workers before tandem_worker wrote it
  auto l = FromProto(info);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->dtype, DType::kBF16);
  info.set_dtype("int3");
  l = FromProto(info);
  EXPECT_EQ(l.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(l.status().message().find("layout.dtype"), std::string::npos);
}

TEST(ProtoConvertTest, TransferIdIsHash64OfTheRequestId) {
  EXPECT_EQ(TransferId("req-1"), Hash64("req-1"));
  EXPECT_NE(TransferId("req-1"), TransferId("req-2"));
}

// The rule both workers keep (they once disagreed: decode reported alternatives whenever
// top_logprobs > 0, prefill only with logprobs). OpenAI's: alternatives only with logprobs.
TEST(ProtoConvertTest, TopLogprobsCountOnlyWithLogprobs) {
  v1::SamplingParameters p;
  auto without = SamplingForRequest(p, /*logprobs=*/false, /*top_logprobs=*/3);
  ASSERT_TRUE(without.ok());
  EXPECT_EQ(without->top_logprobs, 0);
  auto with = SamplingForRequest(p, /*logprobs=*/true, /*top_logprobs=*/3);
  ASSERT_TRUE(with.ok());
  EXPECT_EQ(with->top_logprobs, 3);
  for (bool logprobs : {false, true}) {
    auto bad = SamplingForRequest(p, logprobs, 21);
    EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(bad.status().message().find("top_logprobs"), std::string::npos);
  }
}

TEST(ProtoConvertTest, SamplingUnsetMeansOffAndErrorsNameTheField) {
  v1::SamplingParameters p;
  p.set_temperature(0.7f);
  p.set_top_k(20);
  p.set_min_p(0.05f);
  p.set_presence_penalty(0.5f);
  p.set_frequency_penalty(-0.5f);
  p.set_seed(99);
  auto s = SamplingForRequest(p, false, 0);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->temperature, 0.7f);
  EXPECT_EQ(s->top_k, 20);
  EXPECT_EQ(s->top_p, 1.0f);  // 0 (unset) = off
  EXPECT_EQ(s->min_p, 0.05f);
  EXPECT_EQ(s->repetition_penalty, 1.0f);  // 0 (unset) = off
  EXPECT_EQ(s->presence_penalty, 0.5f);
  EXPECT_EQ(s->frequency_penalty, -0.5f);
  EXPECT_EQ(s->seed, 99u);
  p.set_top_p(1.5f);
  auto bad = SamplingForRequest(p, false, 0);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("sampling.top_p"), std::string::npos);
}

TEST(ProtoConvertTest, StoppingAndLogprobs) {
  v1::StoppingCriteria st;
  st.set_max_tokens(7);
  st.add_stop("\n\n");
  st.add_stop_token_ids(42);
  st.set_ignore_eos(true);
  GenerationRequest g;
  FromProto(st, &g);
  EXPECT_EQ(g.max_tokens, 7);
  EXPECT_EQ(g.stop_strings, std::vector<std::string>{"\n\n"});
  EXPECT_EQ(g.stop_token_ids, std::vector<int32_t>{42});
  EXPECT_TRUE(g.ignore_eos);

  SampleResult r;
  r.token = 5;
  r.logprob = -0.25f;
  r.top_logprobs = {{5, -0.25f}, {9, -1.5f}};
  v1::TokenLogprobs lp;
  ToProto(r, &lp);
  EXPECT_EQ(lp.logprob(), -0.25f);
  ASSERT_EQ(lp.top_size(), 2);
  EXPECT_EQ(lp.top(1).token_id(), 9);
  EXPECT_EQ(lp.top(1).logprob(), -1.5f);
}

}  // namespace
}  // namespace tandem
