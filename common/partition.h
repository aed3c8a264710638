// The partitioning rules of DESIGN.md, the same in every client and server.
//
// A variable's flat values are cut into blocks of block_size values (the last
// may be shorter); block k of variable v lives on shard
//   (fnv1a64(utf8(v)) mod S + k) mod S.
// A sparse table's row `id` lives on shard row_shard(table, id) (RowShard).
#ifndef PS_COMMON_PARTITION_H_
#define PS_COMMON_PARTITION_H_

#include <cstdint>
#include <string_view>

namespace ps {

// 64-bit FNV-1a: offset basis 0xcbf29ce484222325, prime 0x100000001b3.
uint64_t Fnv1a64(std::string_view bytes);

// splitmix64's output function (DESIGN.md, "Sparse tables"):
//   z = x + 0x9e3779b97f4a7c15; z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
//   z = (z ^ (z >> 27)) * 0x94d049bb133111eb; return z ^ (z >> 31).
constexpr uint64_t Mix64(uint64_t x) {
  uint64_t z = x + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The shard that owns row `id` of a table whose name hashes to
// `table_hash` (Fnv1a64 of its UTF-8 name):
//   row_shard(t, id) = mix64(id XOR fnv1a64(utf8(t))) mod S.
inline uint32_t RowShard(uint64_t table_hash, uint64_t id,
                         uint32_t num_shards) {
  return static_cast<uint32_t>(Mix64(id ^ table_hash) % num_shards);
}

// A contiguous range of flat values.
struct FlatRange {
  uint64_t offset = 0;
  uint64_t length = 0;
  friend bool operator==(const FlatRange&, const FlatRange&) = default;
};

// The servers' default block size (--block_size): 16,384 values (64 KiB of
// float32). A tensor smaller than a block sits whole on one shard, so the
// block size bounds how unevenly a model's small tensors load the shards:
// at 262,144 values a small CNN whose largest tensor is 200,704 values sent
// over 99% of its bytes to one of two shards; at 16,384 it sends 54% (the
// figures for several models are in bench/README.md, "Shard balance").
// Smaller blocks cost a record (and per worker an exactly-once record) per
// block, and more, smaller updates per call.
inline constexpr uint64_t kDefaultBlockSize = 16384;

// Where each block of a variable lives. Cheap to copy; thread-compatible.
class PartitionPlan {
 public:
  // REQUIRES: num_shards > 0, block_size > 0.
  PartitionPlan(uint32_t num_shards, uint64_t block_size)
      : num_shards_(num_shards), block_size_(block_size) {}

  uint32_t num_shards() const { return num_shards_; }
  uint64_t block_size() const { return block_size_; }

  // Blocks in a variable of `size` values: ceil(size / block_size).
  uint64_t NumBlocks(uint64_t size) const {
    return (size + block_size_ - 1) / block_size_;
  }

  // The values of block k of a variable of `size` values.
  // REQUIRES: k < NumBlocks(size).
  FlatRange BlockRange(uint64_t size, uint64_t k) const;

  // The block that holds flat index `offset`.
  uint64_t BlockOf(uint64_t offset) const { return offset / block_size_; }

  // The shard that owns block k of `variable`.
  uint32_t ShardOf(std::string_view variable, uint64_t k) const;

 private:
  uint32_t num_shards_;
  uint64_t block_size_;
};

}  // namespace ps

#endif  // PS_COMMON_PARTITION_H_
