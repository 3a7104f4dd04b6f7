#include "tandem/worker/proto_convert.h"

#include "tandem/common/dtype.h"

namespace tandem {

void ToProto(const KvPageLayout& layout, v1::KvLayoutInfo* out) {
  out->set_model_hash(layout.model_hash);
  out->set_dtype(std::string(DTypeName(layout.dtype)));
  out->set_num_layers(layout.num_layers);
  out->set_num_kv_heads(layout.num_kv_heads);
  out->set_head_dim(layout.head_dim);
  out->set_page_size(layout.page_size);
  out->set_layout_version(layout.layout_version);
  out->set_fingerprint(layout.Fingerprint());
}

StatusOr<KvPageLayout> FromProto(const v1::KvLayoutInfo& info) {
  StatusOr<DType> dtype = ParseDType(info.dtype());
  if (!dtype.ok()) return InvalidArgumentError("layout.dtype: {}", dtype.status().message());
  KvPageLayout l;
  l.model_hash = info.model_hash();
  l.dtype = *dtype;
  l.num_layers = info.num_layers();
  l.num_kv_heads = info.num_kv_heads();
  l.head_dim = info.head_dim();
  l.page_size = info.page_size();
  l.layout_version = info.layout_version();
  return l;
}

void FromProto(const v1::StoppingCriteria& stopping, GenerationRequest* out) {
  out->max_tokens = stopping.max_tokens();
  out->stop_strings.assign(stopping.stop().begin(), stopping.stop().end());
  out->stop_token_ids.assign(stopping.stop_token_ids().begin(), stopping.stop_token_ids().end());
  out->ignore_eos = stopping.ignore_eos();
}

void ToProto(const SampleResult& sample, v1::TokenLogprobs* out) {
  out->set_logprob(sample.logprob);
  for (const TokenLogprob& t : sample.top_logprobs) {
    v1::TokenLogprob* e = out->add_top();
    e->set_token_id(t.token);
    e->set_logprob(t.logprob);
  }
}

}  // namespace tandem
