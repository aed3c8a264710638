#include "client/internal/request_split.h"

#include <algorithm>
#include <limits>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/wire.h"
#include "google/protobuf/io/coded_stream.h"

namespace ps::client_internal {
namespace {

// The tag and length of one repeated message field, at their widest.
constexpr size_t kFieldOverhead = 16;

}  // namespace
namespace {

using google::protobuf::io::CodedOutputStream;

// Bytes a sub-message of `size` bytes takes in a repeated field numbered
// below 16: tag, length, body.
size_t EntrySize(size_t size) {
  return 1 + CodedOutputStream::VarintSize64(size) + size;
}

// At least the bytes one answered slice of `name_bytes` and `data_bytes`
// takes in a PullResponse: every integer field counted at its widest.
size_t AnswerEntryBound(size_t name_bytes, size_t data_bytes) {
  const size_t body =
      (1 + CodedOutputStream::VarintSize64(name_bytes) +
       name_bytes) +  // variable
      11 +
      11 + 2 +  // offset, length, dtype
      (1 + CodedOutputStream::VarintSize64(data_bytes) + data_bytes) +  // data
      11;  // version
  return EntrySize(body);
}

// The exact size of `slice` once `data_bytes` of data are added to it.
size_t SliceSizeWithData(const v1::Slice& slice, size_t data_bytes) {
  size_t size = slice.ByteSizeLong();
  if (data_bytes > 0) {
    size += 1 + CodedOutputStream::VarintSize64(data_bytes) + data_bytes;
  }
  return size;
}

std::string DescribeSlice(const v1::Slice& slice) {
  return absl::StrCat(slice.variable(), "[", slice.offset(), ", ",
                      slice.offset() + slice.length(), ")");
}

}  // namespace

absl::StatusOr<uint64_t> NumValues(const std::vector<uint64_t>& shape) {
  uint64_t size = 1;
  for (uint64_t dim : shape) {
    if (dim != 0 && size > std::numeric_limits<uint64_t>::max() / dim) {
      return absl::InvalidArgumentError(
          "shape has more values than fit in 64 bits");
    }
    size *= dim;
  }
  return size;
}

absl::StatusOr<ShardParts<v1::PushRequest>> SplitPush(
    const PartitionPlan& plan, std::span<const PushItem> items,
    const v1::PushRequest& header, v1::DType dtype, bool answered,
    const SplitLimits& limits) {
  const size_t max_message_bytes = limits.max_message_bytes;
  const size_t pack_bytes = std::min(limits.part_bytes, max_message_bytes);
  v1::PushRequest base = header;
  base.clear_gradients();
  base.set_seq(std::numeric_limits<uint64_t>::max());
  const size_t base_bytes = base.ByteSizeLong();
  base.set_seq(0);
  const size_t width = BytesPerValue(dtype);
  const size_t answer_width = BytesPerValue(header.pull_dtype());

  ShardParts<v1::PushRequest> parts(plan.num_shards());
  // Request and answer bytes of the last part of each shard.
  std::vector<size_t> request_bytes(plan.num_shards());
  std::vector<size_t> answer_bytes(plan.num_shards());

  for (size_t i = 0; i < items.size(); ++i) {
    const PushItem& item = items[i];
    const uint64_t size = item.gradient.size();
    for (uint64_t k = 0; k < plan.NumBlocks(size); ++k) {
      const FlatRange range = plan.BlockRange(size, k);
      const uint32_t shard = plan.ShardOf(item.variable, k);
      v1::Slice slice;
      slice.set_variable(item.variable);
      slice.set_offset(range.offset);
      slice.set_length(range.length);
      slice.set_dtype(dtype);
      const size_t entry =
          EntrySize(SliceSizeWithData(slice, range.length * width));
      const size_t answer_entry =
          answered ? AnswerEntryBound(item.variable.size(),
                                      range.length * answer_width)
                   : 0;
      if (base_bytes + entry > max_message_bytes ||
          answer_entry > max_message_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            "block ", k, " of ", item.variable, " (", range.length,
            " values) does not fit in one message of max_message_bytes = ",
            max_message_bytes,
            "; raise ClientOptions::max_message_bytes, push as BFLOAT16 or "
            "FLOAT16, or run the servers with a smaller --block_size"));
      }
      std::vector<Part<v1::PushRequest>>& list = parts[shard];
      if (list.empty() || request_bytes[shard] + entry > pack_bytes ||
          answer_bytes[shard] + answer_entry > pack_bytes) {
        list.push_back(Part<v1::PushRequest>{base, {}});
        request_bytes[shard] = base_bytes;
        answer_bytes[shard] = 0;
      }
      Part<v1::PushRequest>& part = list.back();
      v1::Slice* added = part.request.add_gradients();
      *added = std::move(slice);
      EncodeValues(dtype, item.gradient.subspan(range.offset, range.length),
                   added->mutable_data());
      part.items.push_back(i);
      request_bytes[shard] += entry;
      answer_bytes[shard] += answer_entry;
    }
  }
  return parts;
}

absl::StatusOr<ShardParts<v1::PullRequest>> SplitPull(
    const PartitionPlan& plan, std::span<const PullItem> items, v1::DType dtype,
    const SplitLimits& limits) {
  const size_t max_message_bytes = limits.max_message_bytes;
  const size_t pack_bytes = std::min(limits.part_bytes, max_message_bytes);
  const size_t width = BytesPerValue(dtype);
  ShardParts<v1::PullRequest> parts(plan.num_shards());
  std::vector<size_t> answer_bytes(plan.num_shards());

  for (size_t i = 0; i < items.size(); ++i) {
    const PullItem& item = items[i];
    const size_t name_bytes = item.variable.size();
    auto bound = [&](uint64_t values) {
      return AnswerEntryBound(name_bytes, values * width);
    };
    // The most values whose answer fits in `budget` bytes.
    auto max_fit = [&](size_t budget) -> uint64_t {
      const size_t fixed = bound(0) + 15;  // + data and entry length growth
      return budget > fixed ? (budget - fixed) / width : 0;
    };
    for (uint64_t k = 0; k < plan.NumBlocks(item.size); ++k) {
      const FlatRange range = plan.BlockRange(item.size, k);
      const uint32_t shard = plan.ShardOf(item.variable, k);
      std::vector<Part<v1::PullRequest>>& list = parts[shard];
      auto new_part = [&] {
        Part<v1::PullRequest> part;
        part.request.set_dtype(dtype);
        list.push_back(std::move(part));
        answer_bytes[shard] = 0;
      };
      uint64_t offset = range.offset;
      uint64_t left = range.length;
      while (left > 0) {
        uint64_t take = left;
        if (list.empty() || answer_bytes[shard] + bound(left) > pack_bytes) {
          if (bound(left) <= max_message_bytes) {
            new_part();
          } else {
            // The rest of the block does not fit in one answer: cut it into
            // parts of its own, each as large as a message may be.
            if (list.empty() || answer_bytes[shard] > 0) new_part();
            take = std::min<uint64_t>(
                left, max_fit(max_message_bytes - answer_bytes[shard]));
            if (take == 0) {
              return absl::InvalidArgumentError(
                  absl::StrCat("max_message_bytes = ", max_message_bytes,
                               " cannot hold one value of ", item.variable,
                               "; raise ClientOptions::max_message_bytes"));
            }
          }
        }
        Part<v1::PullRequest>& part = list.back();
        v1::Slice* slice = part.request.add_slices();
        slice->set_variable(item.variable);
        slice->set_offset(offset);
        slice->set_length(take);
        slice->set_dtype(dtype);
        part.items.push_back(i);
        answer_bytes[shard] += bound(take);
        offset += take;
        left -= take;
      }
    }
  }
  return parts;
}

absl::StatusOr<std::vector<std::vector<v1::CreateVariableRequest>>> SplitCreate(
    const PartitionPlan& plan, const std::string& name,
    const std::vector<uint64_t>& shape, std::span<const float> initial_values,
    const std::optional<v1::OptimizerConfig>& optimizer,
    size_t max_message_bytes) {
  absl::StatusOr<uint64_t> size = NumValues(shape);
  if (!size.ok()) return size.status();
  if (!initial_values.empty() && initial_values.size() != *size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "initial values of ", name, " hold ", initial_values.size(),
        " values but its shape has ", *size));
  }
  v1::CreateVariableRequest first;
  first.set_name(name);
  for (uint64_t dim : shape) first.add_shape(dim);
  if (optimizer.has_value()) *first.mutable_optimizer() = *optimizer;
  v1::CreateVariableRequest next = first;
  next.set_continued(true);
  std::vector<std::vector<v1::CreateVariableRequest>> requests(
      plan.num_shards(), std::vector<v1::CreateVariableRequest>{first});
  if (!initial_values.empty()) {
    for (uint64_t k = 0; k < plan.NumBlocks(*size); ++k) {
      const FlatRange range = plan.BlockRange(*size, k);
      v1::Slice slice;
      slice.set_variable(name);
      slice.set_offset(range.offset);
      slice.set_length(range.length);
      slice.set_dtype(v1::FLOAT32);
      EncodeValues(v1::FLOAT32,
                   initial_values.subspan(range.offset, range.length),
                   slice.mutable_data());
      const uint32_t s = plan.ShardOf(name, k);
      const size_t cost = slice.ByteSizeLong() + kFieldOverhead;
      if (next.ByteSizeLong() + cost > max_message_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            "block ", k, " of ", name, " needs ", cost,
            " bytes of initial values, more than max_message_bytes = ",
            max_message_bytes,
            "; raise ClientOptions::max_message_bytes (up to the servers' "
            "--max_message_mb)"));
      }
      if (requests[s].back().ByteSizeLong() + cost > max_message_bytes) {
        requests[s].push_back(next);
      }
      *requests[s].back().add_initial_values() = std::move(slice);
    }
  }
  return requests;
}

absl::Status DecodeAnswer(
    const google::protobuf::RepeatedPtrField<v1::Slice>& asked,
    std::span<const size_t> items, v1::DType dtype,
    const google::protobuf::RepeatedPtrField<v1::Slice>& answer,
    std::span<const ScatteredBytes> data,
    std::span<const std::span<float>> outputs,
    std::span<const std::span<uint64_t>> versions, uint64_t block_size) {
  if (!data.empty() && data.size() != static_cast<size_t>(answer.size())) {
    return absl::InternalError(absl::StrCat(
        "answer holds ", answer.size(), " slices but ", data.size(), " data"));
  }
  if (answer.size() != asked.size()) {
    return absl::InternalError(absl::StrCat("answer holds ", answer.size(),
                                            " slices for ", asked.size(),
                                            " asked"));
  }
  // Answers normally come in the order asked; otherwise look them up.
  absl::flat_hash_map<std::pair<std::string_view, uint64_t>, int> index;
  std::vector<bool> seen(asked.size());
  for (int j = 0; j < answer.size(); ++j) {
    const v1::Slice& got = answer[j];
    int i = j;
    if (asked[i].variable() != got.variable() ||
        asked[i].offset() != got.offset()) {
      if (index.empty()) {
        for (int a = 0; a < asked.size(); ++a) {
          index[{asked[a].variable(), asked[a].offset()}] = a;
        }
      }
      auto it = index.find({got.variable(), got.offset()});
      if (it == index.end()) {
        return absl::InternalError(absl::StrCat("answer holds slice ",
                                                DescribeSlice(got),
                                                ", which was not asked"));
      }
      i = it->second;
    }
    const v1::Slice& want = asked[i];
    if (seen[i]) {
      return absl::InternalError(
          absl::StrCat("answer holds slice ", DescribeSlice(got), " twice"));
    }
    seen[i] = true;
    if (got.length() != want.length()) {
      return absl::InternalError(absl::StrCat("answer holds slice ",
                                              DescribeSlice(got), " for ",
                                              DescribeSlice(want)));
    }
    if (got.dtype() != dtype) {
      return absl::InternalError(absl::StrCat(
          "answer holds slice ", DescribeSlice(got), " as ",
          v1::DType_Name(got.dtype()), ", asked as ", v1::DType_Name(dtype)));
    }
    std::span<float> out = outputs[items[i]];
    if (want.offset() > out.size() ||
        want.length() > out.size() - want.offset()) {
      return absl::InternalError(absl::StrCat("slice ", DescribeSlice(want),
                                              " lies outside the output"));
    }
    std::span<float> into = out.subspan(want.offset(), want.length());
    absl::Status decoded =
        data.empty() ? DecodeValues(dtype, got.data(), into)
                     : DecodeValues(dtype, data[static_cast<size_t>(j)], into);
    if (!decoded.ok()) {
      return absl::InternalError(absl::StrCat(
          "answer slice ", DescribeSlice(got), ": ", decoded.message()));
    }
    if (!versions.empty() && block_size > 0 && !versions[items[i]].empty()) {
      const uint64_t block = want.offset() / block_size;
      std::span<uint64_t> into_versions = versions[items[i]];
      if (block >= into_versions.size()) {
        return absl::InternalError(absl::StrCat("slice ", DescribeSlice(want),
                                                " lies outside the versions"));
      }
      into_versions[block] = got.version();
    }
  }
  return absl::OkStatus();
}

}  // namespace ps::client_internal
