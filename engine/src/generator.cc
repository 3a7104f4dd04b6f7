#include <algorithm>

#include "tandem/common/logging.h"
#include "tandem/engine/batch_planner.h"
#include "tandem/engine/engine.h"
#include "tandem/engine/text_stream.h"

namespace tandem {

struct Generator::Sequence {
  int64_t handle = 0;
  GenerationRequest req;
  std::vector<int32_t> tokens;  // prompt, then generated
  // Blocks for the tokens whose K/V are computed or being computed, in position order; one
  // more is taken when a decode row needs it (on-demand pages).
  std::vector<int32_t> blocks;
  int64_t num_computed = 0;  // tokens whose K/V are in the cache
  // Tokens to prefill before decode rows start: the prompt, or after a preemption every token
  // known then (the last prefill chunk's logits give the next token, as a decode row would).
  int64_t prefill_len = 0;
  // Add: the prompt goes through the engine's prefix cache (matched at admission, its full
  // blocks inserted as they complete). Prompt tokens offered to the cache so far.
  bool use_prefix_cache = false;
  int64_t num_offered = 0;
  int32_t num_generated = 0;
  std::unique_ptr<TextStream> text;  // finish rules, detokenization, stop strings
  // AddPrefilled: blocks already hold the prompt's K/V, and this token (sampled elsewhere)
  // is emitted by the next Step; -1 otherwise.
  int32_t first_token = -1;
  // AddPrefilled with options.cache_prefilled: the leading tokens whose K/V arrived complete,
  // cached (full blocks) when the sequence releases its blocks; 0 = none. With
  // options.cache_decoded, every token whose K/V is computed (num_computed) instead.
  int64_t cache_on_release = 0;
  bool cache_decoded = false;
  // Preempted: its blocks went back and it waits to recompute its K/V (prefill_len tokens).
  bool preempted = false;

  int64_t prompt_len() const { return static_cast<int64_t>(req.prompt.size()); }
  std::span<const int32_t> generated() const {
    return std::span<const int32_t>(tokens).subspan(req.prompt.size());
  }
};

Generator::Generator(Engine& engine, const GeneratorOptions& options)
    : engine_(engine), options_(options) {}

int32_t Generator::num_preempted_waiting() const {
  return static_cast<int32_t>(
      std::count_if(waiting_.begin(), waiting_.end(), [](const auto& s) { return s->preempted; }));
}

std::unique_ptr<TextStream> Generator::MakeTextStream(const GenerationRequest& req) const {
  TextStreamOptions o;
  o.max_tokens = req.max_tokens - static_cast<int32_t>(req.generated.size());
  o.eos_ids = engine_.eos_ids();
  o.ignore_eos = req.ignore_eos;
  o.stop_token_ids = req.stop_token_ids;
  o.stop_strings = req.stop_strings;
  return std::make_unique<TextStream>(engine_.tokenizer(), std::move(o));
}

Generator::~Generator() {
  for (auto& s : running_) ReleaseBlocks(*s);
  for (auto& s : waiting_) ReleaseBlocks(*s);
}

void Generator::ReleaseBlocks(Sequence& s) {
  if (s.blocks.empty()) return;
  if (PrefixCache* pc = engine_.prefix_cache()) {
    // Never past the computed K/V: a sequence preempted or cancelled while it recomputes holds
    // blocks not written yet.
    const int64_t cacheable =
        std::min(s.num_computed, s.cache_decoded ? std::max(s.cache_on_release, s.num_computed)
                                                 : s.cache_on_release);
    if (cacheable > 0) pc->Insert(s.tokens, s.blocks, cacheable);
    pc->Release(s.blocks);  // stamps cached blocks for LRU; same references otherwise
  } else {
    engine_.kv_cache().allocator().Release(s.blocks);
  }
  s.blocks.clear();
}

void Generator::OfferToPrefixCache(Sequence& s) {
  PrefixCache* pc = engine_.prefix_cache();
  if (pc == nullptr || !s.use_prefix_cache) return;
  const int64_t done = std::min(s.num_computed, s.prompt_len());
  const int64_t page = pc->page_size();
  if (done / page <= s.num_offered / page) return;
  pc->Insert(s.req.prompt, s.blocks, done);
  s.num_offered = done;
}

Status Generator::Validate(const GenerationRequest& req) const {
  const ModelConfig& c = engine_.config();
  if (req.prompt.empty()) return InvalidArgumentError("prompt must not be empty");
  if (req.max_tokens < 1) {
    return InvalidArgumentError("max_tokens must be >= 1, got {}", req.max_tokens);
  }
  for (int32_t id : req.prompt) {
    if (id < 0 || id >= c.vocab_size) {
      return InvalidArgumentError("prompt token id {} is outside the vocabulary [0, {})", id,
                                  c.vocab_size);
    }
  }
  if (static_cast<int64_t>(req.generated.size()) >= req.max_tokens) {
    return InvalidArgumentError("generated: {} tokens, but max_tokens is {}", req.generated.size(),
                                req.max_tokens);
  }
  for (int32_t id : req.generated) {
    if (id < 0 || id >= c.vocab_size) {
      return InvalidArgumentError("generated token id {} is outside the vocabulary [0, {})", id,
                                  c.vocab_size);
    }
  }
  const int64_t total = static_cast<int64_t>(req.prompt.size()) + req.max_tokens;
  if (c.max_position_embeddings > 0 && total > c.max_position_embeddings) {
    return InvalidArgumentError(
        "prompt ({} tokens) + max_tokens ({}) exceeds the model context of {} tokens",
        req.prompt.size(), req.max_tokens, c.max_position_embeddings);
  }
  TANDEM_RETURN_IF_ERROR(req.sampling.Validate());
  if (!req.stop_strings.empty() && engine_.tokenizer() == nullptr) {
    return InvalidArgumentError("stop strings need a tokenizer, and the model has none");
  }
  for (const auto& s : req.stop_strings) {
    if (s.empty()) return InvalidArgumentError("stop strings must not be empty");
  }
  const KvCache& cache = engine_.kv_cache();
  if (cache.BlocksFor(total) > cache.allocator().num_blocks()) {
    return ResourceExhaustedError("request needs {} KV blocks; the cache has {}",
                                  cache.BlocksFor(total), cache.allocator().num_blocks());
  }
  return Status::Ok();
}

StatusOr<int64_t> Generator::Add(GenerationRequest req) {
  TANDEM_RETURN_IF_ERROR(Validate(req));
  if (!req.generated.empty()) {
    return InvalidArgumentError("generated: only a prefilled request (AddPrefilled) takes them");
  }
  auto s = std::make_unique<Sequence>();
  s->handle = next_handle_++;
  s->tokens = req.prompt;
  s->prefill_len = static_cast<int64_t>(s->tokens.size());
  s->req = std::move(req);
  s->text = MakeTextStream(s->req);
  s->use_prefix_cache = engine_.prefix_cache() != nullptr;
  waiting_.push_back(std::move(s));
  return waiting_.back()->handle;
}

StatusOr<int64_t> Generator::AddPrefilled(GenerationRequest req, std::vector<int32_t> blocks,
                                          int32_t first_token) {
  TANDEM_RETURN_IF_ERROR(Validate(req));
  const ModelConfig& c = engine_.config();
  if (first_token < 0 || first_token >= c.vocab_size) {
    return InvalidArgumentError("first_token {} is outside the vocabulary [0, {})", first_token,
                                c.vocab_size);
  }
  const KvCache& cache = engine_.kv_cache();
  const int32_t need =
      cache.BlocksFor(static_cast<int64_t>(req.prompt.size() + req.generated.size()));
  if (static_cast<int32_t>(blocks.size()) < need) {
    return InvalidArgumentError("blocks: {} given, the prompt's K/V need {}", blocks.size(), need);
  }
  for (int32_t b : blocks) {
    if (b < 0 || b >= cache.allocator().num_blocks()) {
      return InvalidArgumentError("blocks: block id {} is outside [0, {})", b,
                                  cache.allocator().num_blocks());
    }
  }
  auto s = std::make_unique<Sequence>();
  s->handle = next_handle_++;
  s->tokens = req.prompt;
  s->tokens.insert(s->tokens.end(), req.generated.begin(), req.generated.end());
  s->num_generated = static_cast<int32_t>(req.generated.size());
  s->req = std::move(req);
  s->blocks = std::move(blocks);
  s->num_computed = static_cast<int64_t>(s->tokens.size());
  s->prefill_len = s->num_computed;
  s->first_token = first_token;
  if (options_.cache_prefilled && engine_.prefix_cache() != nullptr) {
    s->cache_on_release = s->num_computed;
    s->cache_decoded = options_.cache_decoded;
  }
  s->text = MakeTextStream(s->req);
  waiting_.push_back(std::move(s));
  return waiting_.back()->handle;
}

void Generator::Cancel(int64_t handle) {
  auto wit = std::find_if(waiting_.begin(), waiting_.end(),
                          [&](const auto& s) { return s->handle == handle; });
  if (wit != waiting_.end()) {
    ReleaseBlocks(**wit);
    waiting_.erase(wit);
    cancelled_.push_back(handle);
    return;
  }
  auto rit = std::find_if(running_.begin(), running_.end(),
                          [&](const auto& s) { return s->handle == handle; });
  if (rit != running_.end()) {
    ReleaseBlocks(**rit);
    running_.erase(rit);
    cancelled_.push_back(handle);
  }
}

bool Generator::AllocateForPrefill(Sequence& s) {
  KvCache& cache = engine_.kv_cache();
  const int32_t need = cache.BlocksFor(s.prefill_len);
  if (PrefixCache* pc = engine_.prefix_cache()) {
    // The cached prefix stops before the last token to prefill: its logits are needed. A
    // preempted sequence finds the blocks it gave back while they are not evicted.
    auto alloc = pc->Allocate(std::span<const int32_t>(s.tokens).first(s.prefill_len), need,
                              s.prefill_len - 1);
    if (!alloc.ok()) return false;
    s.num_computed = int64_t{alloc->cached_blocks} * pc->page_size();
    s.num_offered = s.num_computed;
    s.blocks = std::move(alloc->blocks);
    return true;
  }
  auto blocks = cache.allocator().Allocate(need);
  if (!blocks.ok()) return false;
  s.num_computed = 0;
  s.blocks = std::move(blocks).value();
  return true;
}

bool Generator::AllocateOne(Sequence& s) {
  PrefixCache* pc = engine_.prefix_cache();
  auto block = pc != nullptr ? pc->AllocateFresh(1) : engine_.kv_cache().allocator().Allocate(1);
  if (!block.ok()) return false;
  s.blocks.push_back(block->front());
  return true;
}

int32_t Generator::YoungestRunning(int64_t younger_than) const {
  int32_t found = -1;
  for (size_t i = 0; i < running_.size(); ++i) {
    const Sequence& s = *running_[i];
    // A pending first token is emitted before any forward: such a sequence is never a victim.
    if (s.handle <= younger_than || s.first_token >= 0) continue;
    if (found < 0 || s.handle > running_[found]->handle) found = static_cast<int32_t>(i);
  }
  return found;
}

void Generator::Preempt(int32_t index) {
  std::unique_ptr<Sequence> sp = std::move(running_[index]);
  running_.erase(running_.begin() + index);
  ReleaseBlocks(*sp);  // caches what it may, so the recompute can find it
  sp->num_computed = 0;
  sp->prefill_len = static_cast<int64_t>(sp->tokens.size());
  sp->preempted = true;
  ++num_preemptions_;
  TLOG_DEBUG("preempted sequence {} at {} tokens", sp->handle, sp->tokens.size());
  // Waiting sequences stay in age (handle) order: the oldest is admitted first.
  auto pos = std::find_if(waiting_.begin(), waiting_.end(),
                          [&](const auto& w) { return w->handle > sp->handle; });
  waiting_.insert(pos, std::move(sp));
}

void Generator::Admit() {
  // In age order, FIFO for sequences that need pages (no skipping); prefilled requests hold
  // their pages already and are not held up behind one that waits for pages. A sequence that
  // needs pages takes them back from younger running ones (preempting them), so the oldest
  // always progresses.
  bool out_of_pages = false;
  for (size_t i = 0;
       i < waiting_.size() && static_cast<int32_t>(running_.size()) < options_.max_running;) {
    Sequence& s = *waiting_[i];
    if (s.blocks.empty()) {
      if (out_of_pages) {
        ++i;
        continue;
      }
      bool ok = AllocateForPrefill(s);
      while (!ok) {
        const int32_t victim = YoungestRunning(s.handle);
        if (victim < 0) break;
        Preempt(victim);  // goes back to waiting_ after s (it is younger)
        ok = AllocateForPrefill(s);
      }
      if (!ok) {
        out_of_pages = true;  // wait for running sequences to free pages
        ++i;
        continue;
      }
      s.preempted = false;
    }
    running_.push_back(std::move(waiting_[i]));
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

void Generator::GrowForDecode() {
  const KvCache& cache = engine_.kv_cache();
  auto needs_block = [&](const Sequence& s) {
    // A prefilling sequence got its prefill's blocks at admission.
    return s.num_computed >= s.prefill_len &&
           s.blocks.size() <
               static_cast<size_t>(cache.BlocksFor(static_cast<int64_t>(s.tokens.size())));
  };
  // Most steps nobody crosses a page boundary.
  std::vector<int64_t> order;
  for (const auto& sp : running_) {
    if (needs_block(*sp)) order.push_back(sp->handle);
  }
  std::sort(order.begin(), order.end());  // oldest first: they take pages first
  for (int64_t h : order) {
    auto it = std::find_if(running_.begin(), running_.end(),
                           [&](const auto& sp) { return sp->handle == h; });
    if (it == running_.end()) continue;  // preempted for an older one
    Sequence& s = **it;
    while (needs_block(s) && !AllocateOne(s)) {
      const int32_t victim = YoungestRunning(-1);  // s itself at the latest
      if (victim < 0) break;
      const bool self = running_[victim].get() == &s;
      Preempt(victim);
      if (self) break;
    }
  }
}

void Generator::AcceptToken(Sequence& s, TokenEvent& ev, std::vector<Sequence*>* done) {
  s.tokens.push_back(ev.token);
  ++s.num_generated;
  const TextStream::Finish f = s.text->Add(ev.token, &ev.text);
  const FinishReason reason = f == TextStream::Finish::kStop     ? FinishReason::kStop
                              : f == TextStream::Finish::kLength ? FinishReason::kLength
                                                                 : FinishReason::kNone;
  if (reason != FinishReason::kNone) {
    ReleaseBlocks(s);
    ev.finish = reason;
    done->push_back(&s);
  }
}

Status Generator::Step(std::vector<TokenEvent>* events) {
  for (int64_t h : cancelled_) {
    TokenEvent ev;
    ev.request = h;
    ev.finish = FinishReason::kCancelled;
    events->push_back(std::move(ev));
  }
  cancelled_.clear();
  Admit();
  if (running_.empty()) return Status::Ok();

  // First tokens of prefilled sequences: emitted before this step's forward, which then runs
  // their decode row unless the first token already finished them.
  std::vector<Sequence*> done;
  for (auto& sp : running_) {
    Sequence& s = *sp;
    if (s.first_token < 0) continue;
    TokenEvent ev;
    ev.request = s.handle;
    ev.token = s.first_token;
    ev.sample.token = s.first_token;
    s.first_token = -1;
    AcceptToken(s, ev, &done);
    events->push_back(std::move(ev));
  }
  auto is_done = [&](const Sequence* s) {
    return std::find(done.begin(), done.end(), s) != done.end();
  };
  if (!done.empty()) {
    std::erase_if(running_, [&](const auto& sp) { return is_done(sp.get()); });
    done.clear();
  }
  GrowForDecode();
  if (running_.empty()) return Status::Ok();

  // Decode rows first (one token each), then prefill chunks in admission order under the budget.
  std::vector<SequenceView> views;
  views.reserve(running_.size());
  for (auto& sp : running_) {
    views.push_back({sp->tokens, sp->num_computed, sp->prefill_len, sp->blocks});
  }
  PlannerOptions po;
  po.max_batch_tokens = options_.max_batch_tokens;
  po.max_chunk_tokens = options_.max_chunk_tokens;
  const StepPlan plan = PlanStep(views, po);
  std::vector<Sequence*> sampled;  // sequences whose chunk produces logits, in logits order
  for (int32_t i : plan.decode_seqs) sampled.push_back(running_[i].get());
  for (const StepPlan::PrefillPart& p : plan.prefill_parts) {
    if (p.last) sampled.push_back(running_[p.seq].get());
  }
  ModelRunner& runner = engine_.runner();
  TANDEM_RETURN_IF_ERROR(runner.Forward(plan.batch, engine_.kv_cache()));
  for (const StepPlan::PrefillPart& p : plan.prefill_parts) {
    running_[p.seq]->num_computed += p.count;
    OfferToPrefixCache(*running_[p.seq]);
  }

  std::vector<SampleRow> rows(sampled.size());
  for (size_t r = 0; r < sampled.size(); ++r) {
    const Sequence& s = *sampled[r];
    rows[r] = {&s.req.sampling, s.req.prompt, s.generated(), static_cast<int64_t>(s.tokens.size())};
  }
  std::vector<SampleResult> results;
  TANDEM_RETURN_IF_ERROR(runner.Sample(rows, &results));
  const size_t first_event = events->size();
  events->resize(first_event + sampled.size());
  for (size_t r = 0; r < sampled.size(); ++r) {
    TokenEvent& ev = (*events)[first_event + r];
    ev.request = sampled[r]->handle;
    ev.sample = std::move(results[r]);
    ev.token = ev.sample.token;
  }

  for (size_t r = 0; r < sampled.size(); ++r) {
    Sequence& s = *sampled[r];
    if (s.num_computed == static_cast<int64_t>(s.tokens.size()) - 1) ++s.num_computed;  // decode
    AcceptToken(s, (*events)[first_event + r], &done);
  }
  if (!done.empty()) {
    std::erase_if(running_, [&](const auto& sp) {
      return std::find(done.begin(), done.end(), sp.get()) != done.end();
    });
  }
  return Status::Ok();
}

}  // namespace tandem
