// A sparse table's initial rows (DESIGN.md, "Sparse tables"): the value a
// row starts from is a function of (table, seed, id) alone, so it is the
// same on any shard, at any time, after eviction and after re-sharding.
//
// The generator (docs/tables.md; vectors in tests/data/row_init_vectors.txt):
//   base = mix64(mix64(id XOR fnv1a64(utf8(table))) XOR seed)
//   r_j  = mix64(base + j)                         (j = 0, 1, ...; mod 2^64)
//   zeros:   0
//   uniform: low + (high - low) * u_j,  u_j = (r_j >> 11) * 2^-53 in [0, 1)
//   normal:  Box-Muller on pairs: for k = 0, 1, ...
//              a = ((r_2k >> 11) + 1) * 2^-53 in (0, 1],
//              b = (r_2k+1 >> 11) * 2^-53,
//              value_2k   = mean + stddev * sqrt(-2 ln a) * cos(2 pi b),
//              value_2k+1 = mean + stddev * sqrt(-2 ln a) * sin(2 pi b)
//            (the last value of an odd dim uses the cosine alone)
// Each value is computed in double and rounded once to float32.
//
// Thread safety: pure functions.
#ifndef PS_COMMON_ROW_INIT_H_
#define PS_COMMON_ROW_INIT_H_

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps {

// INVALID_ARGUMENT, naming the field, unless the bounds and moments are
// finite, low < high and stddev >= 0.
absl::Status ValidateRowInit(const v1::RowInit& init);

// Writes row `id`'s initial values (out.size() = the table's dim) for a
// table whose name hashes to `table_hash` (Fnv1a64).
// REQUIRES: ValidateRowInit(init) is OK.
void InitialRow(const v1::RowInit& init, uint64_t table_hash, uint64_t id,
                std::span<float> out);

}  // namespace ps

#endif  // PS_COMMON_ROW_INIT_H_
