// Private to the client: cuts a call on whole variables into per-shard
// requests that follow the partitioning rule and the message-size limit, and
// checks that an answer matches what was asked. No I/O; thread-compatible.
#ifndef PS_CLIENT_INTERNAL_REQUEST_SPLIT_H_
#define PS_CLIENT_INTERNAL_REQUEST_SPLIT_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/partition.h"
#include "common/slice_buffers.h"
#include "google/protobuf/repeated_field.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps::client_internal {

// One variable of a push: all its values.
struct PushItem {
  std::string variable;
  std::span<const float> gradient;
};

// One variable of a pull: how many values it has.
struct PullItem {
  std::string variable;
  uint64_t size = 0;
};

// A request to one shard, and for each of its slices the call item (index
// into the items passed in) the slice belongs to.
template <typename Request>
struct Part {
  Request request;
  std::vector<size_t> items;
};

// parts[s] = the requests for shard s, in the order to send them.
template <typename Request>
using ShardParts = std::vector<std::vector<Part<Request>>>;

// How large the requests of a split call may be.
struct SplitLimits {
  // Blocks are packed into one request (and answer) up to this many bytes;
  // a block larger than this goes alone.
  size_t part_bytes = 0;
  // No request or answer may exceed this.
  size_t max_message_bytes = 0;
};

// Cuts each gradient into whole blocks, each sent to its owner encoded as
// `dtype`, packed so that no request (counting `header`, whose worker_id,
// step, loss and pull_dtype every part copies, with seq at its widest) and,
// when `answered` (PushPull), no answer exceeds limits.part_bytes unless it
// holds one block. INVALID_ARGUMENT when one block alone would exceed
// limits.max_message_bytes.
absl::StatusOr<ShardParts<v1::PushRequest>> SplitPush(
    const PartitionPlan& plan, std::span<const PushItem> items,
    const v1::PushRequest& header, v1::DType dtype, bool answered,
    const SplitLimits& limits);

// Cuts each variable into ranges inside one block, each asked of its owner,
// packed so that no answer (values as `dtype`) exceeds limits.part_bytes
// unless it holds one whole block. A block is cut only when it alone would
// not fit in one answer of limits.max_message_bytes.
absl::StatusOr<ShardParts<v1::PullRequest>> SplitPull(
    const PartitionPlan& plan, std::span<const PullItem> items, v1::DType dtype,
    const SplitLimits& limits);

// The CreateVariableRequests for each shard (requests[s], to send in order):
// the first creates the variable with as many of that shard's blocks of
// `initial_values` (float32) as fit in max_message_bytes, each later one
// (`continued`) carries more; one per shard when initial_values is empty.
// INVALID_ARGUMENT when initial_values has the wrong length or one block
// alone would exceed max_message_bytes.
absl::StatusOr<std::vector<std::vector<v1::CreateVariableRequest>>> SplitCreate(
    const PartitionPlan& plan, const std::string& name,
    const std::vector<uint64_t>& shape, std::span<const float> initial_values,
    const std::optional<v1::OptimizerConfig>& optimizer,
    size_t max_message_bytes);

// Checks that `answer` holds exactly one slice for each slice in `asked`
// (same variable, offset and length; dtype `dtype`), in any order, and
// decodes each into outputs[items[i]] at its offset, and its version into
// versions[items[i]][offset / block_size] when `versions` is given and that
// span is not empty. data[j] holds the
// bytes of answer[j].data (see ReadPullResponse); when `data` is empty they
// are read from `answer`.
// INTERNAL when the answer does not match or its data cannot be decoded.
absl::Status DecodeAnswer(
    const google::protobuf::RepeatedPtrField<v1::Slice>& asked,
    std::span<const size_t> items, v1::DType dtype,
    const google::protobuf::RepeatedPtrField<v1::Slice>& answer,
    std::span<const ScatteredBytes> data,
    std::span<const std::span<float>> outputs,
    std::span<const std::span<uint64_t>> versions = {},
    uint64_t block_size = 0);

// Number of values of a tensor with `shape` (1 for no dimensions), or
// INVALID_ARGUMENT when it overflows uint64.
absl::StatusOr<uint64_t> NumValues(const std::vector<uint64_t>& shape);

}  // namespace ps::client_internal

#endif  // PS_CLIENT_INTERNAL_REQUEST_SPLIT_H_
