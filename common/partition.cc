#include "common/partition.h"

#include <algorithm>

namespace ps {

uint64_t Fnv1a64(std::string_view bytes) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : bytes) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

FlatRange PartitionPlan::BlockRange(uint64_t size, uint64_t k) const {
  const uint64_t offset = k * block_size_;
  return FlatRange{offset, std::min(block_size_, size - offset)};
}

uint32_t PartitionPlan::ShardOf(std::string_view variable, uint64_t k) const {
  const uint64_t base = Fnv1a64(variable) % num_shards_;
  return static_cast<uint32_t>((base + k % num_shards_) % num_shards_);
}

}  // namespace ps
