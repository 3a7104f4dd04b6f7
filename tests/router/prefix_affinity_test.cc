// PrefixAffinity: the deepest recorded full-block prefix wins, partial blocks never match, a
// later record moves a prefix to another worker, and the key count stays bounded (LRU).
#include "tandem/router/prefix_affinity.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

namespace tandem {
namespace {

std::vector<int32_t> Tokens(int n, int32_t first = 1) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), first);
  return t;
}

TEST(PrefixAffinityTest, TheDeepestRecordedPrefixWins) {
  PrefixAffinity a(4);
  const auto system = Tokens(8);  // two blocks shared by every chat
  auto chat1 = system, chat2 = system;
  for (int32_t t : Tokens(8, 100)) chat1.push_back(t);
  for (int32_t t : Tokens(8, 200)) chat2.push_back(t);
  a.Record(chat1, "d1");
  a.Record(chat2, "d2");
  // Chat 1's next turn: its whole first turn (4 blocks) is d1's.
  auto next1 = chat1;
  for (int32_t t : Tokens(5, 300)) next1.push_back(t);
  auto m = a.Lookup(next1);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->worker_id, "d1");
  EXPECT_EQ(m->matched_tokens, 16);
  // A new chat shares only the system blocks: the last worker that recorded them.
  auto fresh = system;
  for (int32_t t : Tokens(8, 400)) fresh.push_back(t);
  m = a.Lookup(fresh);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->worker_id, "d2");
  EXPECT_EQ(m->matched_tokens, 8);
  // Nothing in common, or less than one block: no match.
  EXPECT_FALSE(a.Lookup(Tokens(16, 1000)).has_value());
  EXPECT_FALSE(a.Lookup(Tokens(3)).has_value());
}

TEST(PrefixAffinityTest, ALaterRecordMovesThePrefixAndTheKeysStayBounded) {
  PrefixAffinity a(4, 6);
  a.Record(Tokens(16), "d1");  // 4 keys
  a.Record(Tokens(16), "d2");
  EXPECT_EQ(a.size(), 4u);
  a.Record(Tokens(12, 500), "d3");  // 3 more keys: one of the first prefix's goes (the deepest)
  EXPECT_EQ(a.size(), 6u);
  EXPECT_EQ(a.Lookup(Tokens(12, 500))->worker_id, "d3");
  auto m = a.Lookup(Tokens(16));
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->worker_id, "d2");     // the later record moved it
  EXPECT_EQ(m->matched_tokens, 12);  // its shallow blocks outlive the deep one
}

}  // namespace
}  // namespace tandem
