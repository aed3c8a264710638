// Private to ps::Client (see client/internal/core.h).
//
// A call on a sparse table's rows cut into per-shard requests: repeated ids
// coalesced (their gradients summed, as torch's coalesce does), each unique
// id routed to its owner (row_shard), and each shard's ids cut into parts
// that fit the message limits. No I/O; thread-compatible.
#ifndef PS_CLIENT_INTERNAL_ROWS_H_
#define PS_CLIENT_INTERNAL_ROWS_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/internal/request_split.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps::client_internal {

// The unique ids of a call, in order of first appearance, and for each id
// the caller passed, the index of its unique id.
struct CoalescedIds {
  std::vector<uint64_t> unique;
  std::vector<size_t> position;  // ids.size(): position[i] into unique
};
CoalescedIds Coalesce(std::span<const uint64_t> ids);

// One table's rows in a push: gradients for `ids` (repeats allowed, summed
// before they are sent), and where the rows after the push go.
struct RowPushItem {
  std::string table;
  uint32_t dim = 0;
  std::span<const uint64_t> ids;
  std::span<const float> grads;  // ids.size() x dim
  std::span<float> rows_after;   // ids.size() x dim; empty: not wanted
};

// Sums `grads` (ids.size() x dim) into one row per unique id.
std::vector<float> SumRows(const CoalescedIds& ids,
                           std::span<const float> grads, uint32_t dim);

// A shard's part of a rows call: its request, and the unique-id index of
// each id in its one RowSlice.
template <typename Request>
struct RowPart {
  Request request;
  std::vector<size_t> rows;
};
template <typename Request>
using ShardRowParts = std::vector<std::vector<RowPart<Request>>>;

// Each unique id's row gradient (from `sums`, unique.size() x dim) to its
// owner, encoded as `dtype`, `header` copied into every request; parts hold
// at most as many ids as fit in limits.part_bytes (request and, when
// `answered`, answer). With `every_shard`, a shard without ids still gets
// one request with an empty slice (sync mode: every worker pushes every
// step of the table). INVALID_ARGUMENT when one row alone would exceed
// limits.max_message_bytes.
absl::StatusOr<ShardRowParts<v1::PushRequest>> SplitPushRows(
    uint32_t num_shards, const std::string& table, uint32_t dim,
    const CoalescedIds& ids, std::span<const float> sums,
    const v1::PushRequest& header, v1::DType dtype, bool answered,
    bool every_shard, const SplitLimits& limits);

// Each unique id asked of its owner, answers in `dtype`.
absl::StatusOr<ShardRowParts<v1::PullRequest>> SplitPullRows(
    uint32_t num_shards, const std::string& table, uint32_t dim,
    const CoalescedIds& ids, v1::DType dtype, const SplitLimits& limits);

// Checks that `answer` is the RowSlice asked for by `asked` (same table and
// ids, in order, `dim` values each in `dtype`) and writes each row to every
// position of the caller's output that asked for it: out[i * dim ...] for
// each i with ids.position[i] == rows[k]. INTERNAL when it does not match.
absl::Status DecodeRows(const v1::RowSlice& asked, std::span<const size_t> rows,
                        uint32_t dim, v1::DType dtype,
                        const v1::RowSlice& answer,
                        const std::vector<std::vector<size_t>>& callers,
                        std::span<float> out);

// For each unique id, the caller's positions that asked for it.
std::vector<std::vector<size_t>> CallersOf(const CoalescedIds& ids);

}  // namespace ps::client_internal

#endif  // PS_CLIENT_INTERNAL_ROWS_H_
