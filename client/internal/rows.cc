#include "client/internal/rows.h"

#include <algorithm>
#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/partition.h"
#include "common/wire.h"

namespace ps::client_internal {
namespace {

// Ids per part: what fits in `bytes` at `per_id` bytes each, at least one.
size_t IdsPerPart(size_t bytes, size_t per_id) {
  return std::max<size_t>(1, bytes / std::max<size_t>(per_id, 1));
}

// The unique ids of each shard, by unique index.
std::vector<std::vector<size_t>> ByShard(uint32_t num_shards,
                                         const std::string& table,
                                         const CoalescedIds& ids) {
  const uint64_t hash = Fnv1a64(table);
  std::vector<std::vector<size_t>> shards(num_shards);
  for (size_t u = 0; u < ids.unique.size(); ++u) {
    shards[RowShard(hash, ids.unique[u], num_shards)].push_back(u);
  }
  return shards;
}

}  // namespace

CoalescedIds Coalesce(std::span<const uint64_t> ids) {
  CoalescedIds out;
  out.position.reserve(ids.size());
  absl::flat_hash_map<uint64_t, size_t> seen;
  seen.reserve(ids.size());
  for (uint64_t id : ids) {
    auto [it, inserted] = seen.try_emplace(id, out.unique.size());
    if (inserted) out.unique.push_back(id);
    out.position.push_back(it->second);
  }
  return out;
}

std::vector<float> SumRows(const CoalescedIds& ids,
                           std::span<const float> grads, uint32_t dim) {
  std::vector<float> sums(ids.unique.size() * size_t{dim}, 0.0f);
  for (size_t i = 0; i < ids.position.size(); ++i) {
    float* sum = &sums[ids.position[i] * dim];
    const float* grad = &grads[i * dim];
    for (uint32_t j = 0; j < dim; ++j) sum[j] += grad[j];
  }
  return sums;
}

std::vector<std::vector<size_t>> CallersOf(const CoalescedIds& ids) {
  std::vector<std::vector<size_t>> callers(ids.unique.size());
  for (size_t i = 0; i < ids.position.size(); ++i) {
    callers[ids.position[i]].push_back(i);
  }
  return callers;
}

absl::StatusOr<ShardRowParts<v1::PushRequest>> SplitPushRows(
    uint32_t num_shards, const std::string& table, uint32_t dim,
    const CoalescedIds& ids, std::span<const float> sums,
    const v1::PushRequest& header, v1::DType dtype, bool answered,
    bool every_shard, const SplitLimits& limits) {
  const size_t width = BytesPerValue(dtype);
  const size_t answer_width = answered ? BytesPerValue(header.pull_dtype()) : 0;
  const size_t per_id =
      sizeof(uint64_t) + size_t{dim} * std::max(width, answer_width);
  const size_t overhead = header.ByteSizeLong() + table.size() + 64;
  if (overhead + per_id > limits.max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "one row of table '", table, "' (dim ", dim,
        ") does not fit in a message of ", limits.max_message_bytes, " bytes"));
  }
  const size_t budget =
      limits.part_bytes > overhead ? limits.part_bytes - overhead : per_id;
  const size_t per_part = IdsPerPart(budget, per_id);
  ShardRowParts<v1::PushRequest> parts(num_shards);
  const std::vector<std::vector<size_t>> shards =
      ByShard(num_shards, table, ids);
  std::vector<float> values;
  for (uint32_t s = 0; s < num_shards; ++s) {
    const std::vector<size_t>& mine = shards[s];
    if (mine.empty() && !every_shard) continue;
    size_t begin = 0;
    do {
      const size_t end = std::min(mine.size(), begin + per_part);
      RowPart<v1::PushRequest> part;
      part.request = header;
      v1::RowSlice* slice = part.request.add_rows();
      slice->set_table(table);
      slice->set_dtype(dtype);
      values.resize((end - begin) * size_t{dim});
      for (size_t k = begin; k < end; ++k) {
        const size_t u = mine[k];
        slice->add_ids(ids.unique[u]);
        std::memcpy(&values[(k - begin) * dim], &sums[u * dim],
                    dim * sizeof(float));
        part.rows.push_back(u);
      }
      EncodeValues(dtype, values, slice->mutable_data());
      parts[s].push_back(std::move(part));
      begin = end;
    } while (begin < mine.size());
  }
  return parts;
}

absl::StatusOr<ShardRowParts<v1::PullRequest>> SplitPullRows(
    uint32_t num_shards, const std::string& table, uint32_t dim,
    const CoalescedIds& ids, v1::DType dtype, const SplitLimits& limits) {
  const size_t per_id = sizeof(uint64_t) + size_t{dim} * BytesPerValue(dtype);
  const size_t overhead = table.size() + 64;
  if (overhead + per_id > limits.max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "one row of table '", table, "' (dim ", dim,
        ") does not fit in a message of ", limits.max_message_bytes, " bytes"));
  }
  const size_t per_part = IdsPerPart(
      limits.part_bytes > overhead ? limits.part_bytes - overhead : per_id,
      per_id);
  ShardRowParts<v1::PullRequest> parts(num_shards);
  const std::vector<std::vector<size_t>> shards =
      ByShard(num_shards, table, ids);
  for (uint32_t s = 0; s < num_shards; ++s) {
    const std::vector<size_t>& mine = shards[s];
    for (size_t begin = 0; begin < mine.size(); begin += per_part) {
      const size_t end = std::min(mine.size(), begin + per_part);
      RowPart<v1::PullRequest> part;
      part.request.set_dtype(dtype);
      v1::RowSlice* slice = part.request.add_rows();
      slice->set_table(table);
      for (size_t k = begin; k < end; ++k) {
        slice->add_ids(ids.unique[mine[k]]);
        part.rows.push_back(mine[k]);
      }
      parts[s].push_back(std::move(part));
    }
  }
  return parts;
}

absl::Status DecodeRows(const v1::RowSlice& asked, std::span<const size_t> rows,
                        uint32_t dim, v1::DType dtype,
                        const v1::RowSlice& answer,
                        const std::vector<std::vector<size_t>>& callers,
                        std::span<float> out) {
  if (answer.table() != asked.table() ||
      answer.ids_size() != asked.ids_size() ||
      !std::equal(asked.ids().begin(), asked.ids().end(),
                  answer.ids().begin())) {
    return absl::InternalError(
        absl::StrCat("the shard's answer does not hold the rows of table '",
                     asked.table(), "' asked for"));
  }
  std::vector<float> values(asked.ids_size() * size_t{dim});
  if (absl::Status decoded = DecodeValues(dtype, answer.data(), values);
      !decoded.ok()) {
    return absl::InternalError(absl::StrCat("rows of table '", asked.table(),
                                            "': ", decoded.message()));
  }
  for (size_t k = 0; k < rows.size(); ++k) {
    for (size_t i : callers[rows[k]]) {
      std::memcpy(&out[i * dim], &values[k * dim], dim * sizeof(float));
    }
  }
  return absl::OkStatus();
}

}  // namespace ps::client_internal
