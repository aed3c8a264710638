// Client::ReadState and WriteState: a variable's blocks with their
// optimizer state, read from and written to the shards that own them.
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/internal/core.h"
#include "client/internal/fanout.h"
#include "client/internal/shard_call.h"
#include "client/internal/transport.h"
#include "common/status.h"
#include "common/wire.h"

namespace ps {
namespace {

using client_internal::ClientCore;
using client_internal::Fanout;
using client_internal::MakePromise;
using client_internal::ShardCall;

// One call to one shard, waited for (retried as every shard call is).
template <typename Request, typename Response, typename Call>
absl::StatusOr<Response> CallShard(ClientCore* core, size_t shard,
                                   Request request, Call call) {
  Response answer;
  auto [done, future] = MakePromise();
  auto* fanout = new Fanout(core, 1, std::move(done));
  ShardCall<Request, Response>::Start(
      core, shard, std::move(request), call,
      [fanout, &answer](const grpc::Status& status, const Request&,
                        Response& response) {
        if (status.ok()) answer = std::move(response);
        fanout->Finish(0, FromGrpcStatus(status));
      });
  PS_RETURN_IF_ERROR(future.get());
  return answer;
}

// BlockState's slot fields by VariableState::kSlotNames' order.
const std::string& SlotBytes(const v1::BlockState& block, size_t i) {
  switch (i) {
    case 0:
      return block.momentum();
    case 1:
      return block.square_avg();
    case 2:
      return block.grad_avg();
    default:
      return block.max_square_avg();
  }
}

std::string* MutableSlotBytes(v1::BlockState& block, size_t i) {
  switch (i) {
    case 0:
      return block.mutable_momentum();
    case 1:
      return block.mutable_square_avg();
    case 2:
      return block.mutable_grad_avg();
    default:
      return block.mutable_max_square_avg();
  }
}

void PutFloats(std::span<const float> values, std::string* out) {
  out->assign(reinterpret_cast<const char*>(values.data()),
              values.size() * sizeof(float));
}

}  // namespace

absl::StatusOr<VariableState> Client::ReadState(std::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError("variable name is empty");
  std::vector<v1::BlockState> blocks;
  v1::OptimizerConfig optimizer;
  for (size_t s = 0; s < core_->shards.size(); ++s) {
    v1::ReadStateRequest request;
    request.set_variable(std::string(name));
    request.set_max_bytes(core_->options.part_bytes);
    while (true) {
      PS_ASSIGN_OR_RETURN(
          v1::ReadStateResponse answer,
          (CallShard<v1::ReadStateRequest, v1::ReadStateResponse>(
              core_.get(), s, request, &client_internal::CallReadState)));
      if (s == 0) optimizer = answer.optimizer();
      for (v1::BlockState& block : *answer.mutable_blocks()) {
        blocks.push_back(std::move(block));
      }
      if (!answer.more()) break;
      if (answer.next_block() <= request.first_block()) {
        return absl::InternalError(
            absl::StrCat("shard ", s, " answered ReadState of '",
                         std::string(name), "' with no progress"));
      }
      request.set_first_block(answer.next_block());
    }
  }
  std::sort(blocks.begin(), blocks.end(),
            [](const v1::BlockState& a, const v1::BlockState& b) {
              return a.offset() < b.offset();
            });
  VariableState state;
  state.optimizer = std::move(optimizer);
  uint64_t size = 0;
  for (const v1::BlockState& block : blocks) {
    const size_t bytes = block.length() * sizeof(float);
    if (block.offset() != size || block.values().size() != bytes) {
      return absl::DataLossError(absl::StrCat(
          "the shards' blocks of '", std::string(name),
          "' do not cover it once: a block at offset ", block.offset(),
          " of length ", block.length(), " follows ", size, " values"));
    }
    size += block.length();
  }
  state.values.resize(size);
  for (const v1::BlockState& block : blocks) {
    VariableState::Block& out = state.blocks.emplace_back();
    out.offset = block.offset();
    out.length = block.length();
    out.step = block.step();
    out.eve_d = block.eve_d();
    out.eve_f_hat = block.eve_f_hat();
    out.eve_started = block.eve_started();
    const size_t bytes = block.length() * sizeof(float);
    std::memcpy(state.values.data() + block.offset(), block.values().data(),
                bytes);
    for (size_t i = 0; i < VariableState::kSlotNames.size(); ++i) {
      const std::string& data = SlotBytes(block, i);
      if (data.empty()) continue;
      if (data.size() != bytes) {
        return absl::DataLossError(
            absl::StrCat("a block of '", std::string(name), "' holds slot ",
                         std::string(VariableState::kSlotNames[i]), " of ",
                         data.size(), " bytes; expected ", bytes));
      }
      out.held |= 1u << i;
      std::vector<float>& slot =
          state.slots[std::string(VariableState::kSlotNames[i])];
      slot.resize(size);
      std::memcpy(slot.data() + block.offset(), data.data(), bytes);
    }
  }
  return state;
}

absl::Status Client::WriteState(std::string_view name,
                                const VariableState& state) {
  if (name.empty()) return absl::InvalidArgumentError("variable name is empty");
  const std::string variable(name);
  const uint64_t size = state.values.size();
  const uint64_t num_blocks = size == 0 ? 0 : plan().NumBlocks(size);
  if (state.blocks.size() != num_blocks) {
    return absl::InvalidArgumentError(
        absl::StrCat("the state of '", variable, "' has ", state.blocks.size(),
                     " blocks; its ", size, " values make ", num_blocks,
                     " blocks of block_size ", plan().block_size()));
  }
  for (const auto& [slot, values] : state.slots) {
    if (std::find(VariableState::kSlotNames.begin(),
                  VariableState::kSlotNames.end(),
                  slot) == VariableState::kSlotNames.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown slot '", slot, "' in the state of '", variable,
                       "'; slots are momentum, square_avg, grad_avg and "
                       "max_square_avg"));
    }
    if (values.size() != size) {
      return absl::InvalidArgumentError(
          absl::StrCat("slot ", slot, " of '", variable, "' has ",
                       values.size(), " values; the variable has ", size));
    }
  }
  // Each shard's blocks, in requests of about part_bytes.
  std::vector<std::vector<v1::WriteStateRequest>> requests(
      core_->shards.size());
  std::vector<size_t> request_bytes(core_->shards.size(), 0);
  for (uint64_t k = 0; k < num_blocks; ++k) {
    const VariableState::Block& given = state.blocks[k];
    const FlatRange range = plan().BlockRange(size, k);
    if (given.offset != range.offset || given.length != range.length) {
      return absl::InvalidArgumentError(absl::StrCat(
          "block ", k, " of the state of '", variable, "' covers [",
          given.offset, ", ", given.offset + given.length, "); the variable's ",
          "block ", k, " is [", range.offset, ", ", range.offset + range.length,
          ")"));
    }
    if (given.held >> VariableState::kSlotNames.size() != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("block ", k, " of the state of '", variable,
                       "' holds unknown slots ", given.held));
    }
    v1::BlockState block;
    block.set_variable(variable);
    block.set_offset(range.offset);
    block.set_length(range.length);
    block.set_size(size);
    block.set_step(given.step);
    block.set_eve_d(given.eve_d);
    block.set_eve_f_hat(given.eve_f_hat);
    block.set_eve_started(given.eve_started);
    PutFloats(std::span(state.values).subspan(range.offset, range.length),
              block.mutable_values());
    for (size_t i = 0; i < VariableState::kSlotNames.size(); ++i) {
      if ((given.held & (1u << i)) == 0) continue;
      auto slot = state.slots.find(VariableState::kSlotNames[i]);
      if (slot == state.slots.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "block ", k, " of the state of '", variable, "' holds slot ",
            std::string(VariableState::kSlotNames[i]),
            ", which the state lacks"));
      }
      PutFloats(std::span(slot->second).subspan(range.offset, range.length),
                MutableSlotBytes(block, i));
    }
    const uint32_t shard = plan().ShardOf(variable, k);
    std::vector<v1::WriteStateRequest>& parts = requests[shard];
    if (parts.empty() || request_bytes[shard] + block.ByteSizeLong() >
                             core_->options.part_bytes) {
      parts.emplace_back();
      request_bytes[shard] = 0;
    }
    request_bytes[shard] += block.ByteSizeLong();
    *parts.back().add_blocks() = std::move(block);
  }
  // Every shard checks its blocks before any shard writes.
  for (size_t s = 0; s < requests.size(); ++s) {
    for (v1::WriteStateRequest& request : requests[s]) {
      request.set_validate_only(true);
      PS_RETURN_IF_ERROR(
          (CallShard<v1::WriteStateRequest, v1::WriteStateResponse>(
               core_.get(), s, request, &client_internal::CallWriteState))
              .status());
      request.set_validate_only(false);
    }
  }
  for (size_t s = 0; s < requests.size(); ++s) {
    for (v1::WriteStateRequest& request : requests[s]) {
      PS_RETURN_IF_ERROR(
          (CallShard<v1::WriteStateRequest, v1::WriteStateResponse>(
               core_.get(), s, std::move(request),
               &client_internal::CallWriteState))
              .status());
    }
  }
  return absl::OkStatus();
}

}  // namespace ps
