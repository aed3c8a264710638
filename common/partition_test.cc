// FNV-1a against the shared vector file, and the block/shard arithmetic.

#include "common/partition.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#ifndef PS_FNV_VECTORS
#error "PS_FNV_VECTORS must name tests/data/fnv1a64_vectors.txt"
#endif

namespace ps {
namespace {

using ::testing::SizeIs;

// (hash, string) pairs: `<hex> <string>` per line, no space = "".
std::vector<std::pair<uint64_t, std::string>> ReadVectors() {
  std::vector<std::pair<uint64_t, std::string>> out;
  std::ifstream in(PS_FNV_VECTORS);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.find(' ');
    const std::string hex = line.substr(0, space);
    const std::string text =
        space == std::string::npos ? "" : line.substr(space + 1);
    out.emplace_back(std::stoull(hex, nullptr, 16), text);
  }
  return out;
}

TEST(Fnv1a64Test, MatchesTheSharedVectors) {
  const auto vectors = ReadVectors();
  ASSERT_THAT(vectors, SizeIs(testing::Ge(15u))) << PS_FNV_VECTORS;
  bool saw_empty = false, saw_multibyte = false;
  for (const auto& [hash, text] : vectors) {
    EXPECT_EQ(Fnv1a64(text), hash) << "'" << text << "'";
    saw_empty |= text.empty();
    for (unsigned char c : text) saw_multibyte |= c >= 0x80;
  }
  EXPECT_TRUE(saw_empty);
  EXPECT_TRUE(saw_multibyte);
}

TEST(Fnv1a64Test, PublishedValues) {
  EXPECT_EQ(Fnv1a64(""), 0xcbf29ce484222325u);  // the offset basis
  EXPECT_EQ(Fnv1a64("a"), 0xaf63dc4c8601ec8cu);
  EXPECT_EQ(Fnv1a64("foobar"), 0x85944171f73967e8u);
}

TEST(Fnv1a64Test, HashesBytesNotCharacters) {
  // "café" in UTF-8 is 5 bytes; a NUL inside the view counts too.
  EXPECT_EQ(Fnv1a64("caf\xc3\xa9"), 0x48e8823acfa40d89u);
  EXPECT_NE(Fnv1a64(std::string_view("a\0b", 3)), Fnv1a64("ab"));
}

TEST(PartitionPlanTest, BlocksCoverTheVariableWithAShortLastBlock) {
  const PartitionPlan plan(3, 10);
  EXPECT_EQ(plan.num_shards(), 3u);
  EXPECT_EQ(plan.block_size(), 10u);
  EXPECT_EQ(plan.NumBlocks(0), 0u);
  EXPECT_EQ(plan.NumBlocks(1), 1u);
  EXPECT_EQ(plan.NumBlocks(10), 1u);
  EXPECT_EQ(plan.NumBlocks(11), 2u);
  EXPECT_EQ(plan.NumBlocks(25), 3u);
  EXPECT_EQ(plan.BlockRange(25, 0), (FlatRange{0, 10}));
  EXPECT_EQ(plan.BlockRange(25, 1), (FlatRange{10, 10}));
  EXPECT_EQ(plan.BlockRange(25, 2), (FlatRange{20, 5}));
  EXPECT_EQ(plan.BlockRange(30, 2), (FlatRange{20, 10}));
  EXPECT_EQ(plan.BlockOf(0), 0u);
  EXPECT_EQ(plan.BlockOf(9), 0u);
  EXPECT_EQ(plan.BlockOf(10), 1u);
  EXPECT_EQ(plan.BlockOf(24), 2u);
}

TEST(PartitionPlanTest, ShardOfFollowsTheDesignFormula) {
  // (fnv1a64(v) mod S + k) mod S, values computed independently.
  const PartitionPlan seven(7, 100);
  const uint32_t layer1[] = {6, 0, 1, 2, 3, 4, 5, 6, 0};
  for (uint64_t k = 0; k < 9; ++k) {
    EXPECT_EQ(seven.ShardOf("layer1.weight", k), layer1[k]) << k;
  }
  const PartitionPlan five(5, 100);
  EXPECT_EQ(five.ShardOf("caf\xc3\xa9", 0), 3u);
  EXPECT_EQ(five.ShardOf("caf\xc3\xa9", 1), 4u);
  EXPECT_EQ(five.ShardOf("caf\xc3\xa9", 2), 0u);
  EXPECT_EQ(five.ShardOf("embedding/table", 4), 2u);
  // A huge block index must not overflow the sum.
  EXPECT_EQ(
      five.ShardOf("embedding/table", std::numeric_limits<uint64_t>::max()),
      3u);
  const PartitionPlan three(3, 1);
  EXPECT_EQ(three.ShardOf("\xe6\x9d\x83\xe9\x87\x8d", 2), 2u);  // 权重
  const PartitionPlan four(4, 1);
  EXPECT_EQ(four.ShardOf("", 0), 1u);
  EXPECT_EQ(four.ShardOf("", 5), 2u);
}

TEST(PartitionPlanTest, EveryVectorPlacesConsecutiveBlocksRoundRobin) {
  for (uint32_t shards : {1u, 2u, 3u, 8u, 13u}) {
    const PartitionPlan plan(shards, 16);
    for (const auto& [hash, text] : ReadVectors()) {
      for (uint64_t k = 0; k < 2 * shards + 1; ++k) {
        EXPECT_EQ(plan.ShardOf(text, k), (hash % shards + k) % shards)
            << "'" << text << "' block " << k << " of " << shards;
      }
    }
  }
  EXPECT_EQ(PartitionPlan(1, 4).ShardOf("anything", 12345), 0u);
}

}  // namespace
}  // namespace ps
