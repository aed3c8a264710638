// row_shard and the initial rows against the vectors of an independent
// implementation (tests/golden/gen_table_vectors.py).
#include "common/row_init.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/partition.h"

#ifndef PS_TABLE_VECTORS
#error "PS_TABLE_VECTORS must name tests/data/table_vectors.txt"
#endif

namespace ps {
namespace {

std::vector<std::string> Lines(const std::string& kind) {
  std::vector<std::string> out;
  std::ifstream in(PS_TABLE_VECTORS);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(kind + " ", 0) == 0) out.push_back(line);
  }
  return out;
}

TEST(RowShardTest, MatchesTheSharedVectors) {
  const auto lines = Lines("shard");
  ASSERT_GE(lines.size(), 100u) << PS_TABLE_VECTORS;
  for (const std::string& line : lines) {
    std::istringstream in(line);
    std::string word, table;
    uint64_t id = 0;
    uint32_t shards = 0, shard = 0;
    in >> word >> table >> id >> shards >> shard;
    EXPECT_EQ(RowShard(Fnv1a64(table), id, shards), shard) << line;
  }
}

TEST(RowShardTest, Mix64IsSplitmix64) {
  // splitmix64 seeded with 0 yields mix64(0) first.
  EXPECT_EQ(Mix64(0), 0xe220a8397b1dcdafULL);
}

TEST(InitialRowTest, MatchesTheSharedVectors) {
  const auto lines = Lines("init");
  ASSERT_GE(lines.size(), 100u);
  for (const std::string& line : lines) {
    std::istringstream in(line);
    std::string word, table, kind;
    uint64_t seed = 0, id = 0;
    double p1 = 0, p2 = 0;
    size_t dim = 0;
    in >> word >> table >> seed >> id >> kind >> p1 >> p2 >> dim;
    v1::RowInit init;
    init.set_seed(seed);
    if (kind == "uniform") {
      init.mutable_uniform()->set_low(p1);
      init.mutable_uniform()->set_high(p2);
    } else if (kind == "normal") {
      init.mutable_normal()->set_mean(p1);
      init.mutable_normal()->set_stddev(p2);
    } else {
      init.mutable_zeros();
    }
    ASSERT_TRUE(ValidateRowInit(init).ok()) << line;
    std::vector<float> row(dim, -1.0f);
    InitialRow(init, Fnv1a64(table), id, row);
    for (size_t j = 0; j < dim; ++j) {
      std::string hex;
      in >> hex;
      EXPECT_EQ(std::bit_cast<uint32_t>(row[j]), std::stoul(hex, nullptr, 16))
          << line << " value " << j;
    }
  }
}

TEST(InitialRowTest, DependsOnTableSeedAndId) {
  v1::RowInit init;
  init.mutable_normal()->set_stddev(1);
  std::vector<float> a(8), b(8), c(8), d(8);
  InitialRow(init, Fnv1a64("t"), 5, a);
  InitialRow(init, Fnv1a64("u"), 5, b);
  InitialRow(init, Fnv1a64("t"), 6, c);
  init.set_seed(1);
  InitialRow(init, Fnv1a64("t"), 5, d);
  EXPECT_NE(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a, d);
}

TEST(InitialRowTest, RefusesBadParameters) {
  v1::RowInit init;
  init.mutable_uniform()->set_low(1);
  init.mutable_uniform()->set_high(1);
  EXPECT_EQ(ValidateRowInit(init).code(), absl::StatusCode::kInvalidArgument);
  init.mutable_normal()->set_stddev(-1);
  EXPECT_THAT(ValidateRowInit(init).message(), testing::HasSubstr("stddev"));
  init.mutable_normal()->set_stddev(std::numeric_limits<double>::infinity());
  EXPECT_FALSE(ValidateRowInit(init).ok());
}

}  // namespace
}  // namespace ps
