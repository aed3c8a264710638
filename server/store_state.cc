// VariableStore's optimizer-state side: a variable's blocks with their
// slots, read and written whole (ReadState, WriteState), for a torch
// optimizer's state_dict() and load_state_dict().
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/rule_catalog.h"
#include "common/status.h"
#include "common/wire.h"
#include "server/locked_set.h"
#include "server/store_impl.h"

namespace ps {
namespace {

constexpr uint64_t kDefaultStateBytes = uint64_t{4} << 20;

// A slot of BlockState and of the block's state, by kSlotBits' order.
struct SlotField {
  const char* name;
  std::vector<float> optimizer::BlockOptimizerState::*held;
  const std::string& (v1::BlockState::*get)() const;
  std::string* (v1::BlockState::*mutable_field)();
};

const std::array<SlotField, 4>& SlotFields() {
  static const std::array<SlotField, 4> fields = {{
      {"momentum", &optimizer::BlockOptimizerState::momentum,
       &v1::BlockState::momentum, &v1::BlockState::mutable_momentum},
      {"square_avg", &optimizer::BlockOptimizerState::square_avg,
       &v1::BlockState::square_avg, &v1::BlockState::mutable_square_avg},
      {"grad_avg", &optimizer::BlockOptimizerState::grad_avg,
       &v1::BlockState::grad_avg, &v1::BlockState::mutable_grad_avg},
      {"max_square_avg", &optimizer::BlockOptimizerState::max_square_avg,
       &v1::BlockState::max_square_avg,
       &v1::BlockState::mutable_max_square_avg},
  }};
  return fields;
}

void PutFloats(const std::vector<float>& values, std::string* out) {
  out->assign(reinterpret_cast<const char*>(values.data()),
              values.size() * sizeof(float));
}

std::vector<float> GetFloats(const std::string& bytes) {
  std::vector<float> values(bytes.size() / sizeof(float));
  if (!values.empty()) std::memcpy(values.data(), bytes.data(), bytes.size());
  return values;
}

}  // namespace

absl::Status VariableStore::ReadState(const v1::ReadStateRequest& request,
                                      v1::ReadStateResponse* response) const {
  const std::string& name = request.variable();
  if (name.empty()) {
    return absl::InvalidArgumentError("ReadState needs a variable name");
  }
  auto variable = Find(name);
  if (variable == nullptr) {
    if (FindTable(name) != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", name,
          "' is a sparse table: read its rows with PullRows; its optimizer "
          "state is in checkpoints"));
    }
    return absl::NotFoundError(absl::StrCat("no variable named '", name, "'"));
  }
  // A page stays within what an answer may hold (a larger max_bytes is
  // cut to it: pages then come smaller), whatever the caller asks for.
  uint64_t max_bytes =
      request.max_bytes() == 0 ? kDefaultStateBytes : request.max_bytes();
  if (options_.max_answer_bytes != 0) {
    max_bytes = std::min(max_bytes, options_.max_answer_bytes / 2);
  }
  *response->mutable_optimizer() = rules_.ConfigOf(name);
  uint64_t bytes = 0;
  for (const Block* block : variable->SortedBlocks()) {
    if (block->index < request.first_block()) continue;
    if (bytes >= max_bytes) {
      response->set_more(true);
      response->set_next_block(block->index);
      break;
    }
    v1::BlockState* out = response->add_blocks();
    out->set_variable(name);
    out->set_offset(block->range.offset);
    out->set_length(block->range.length);
    out->set_size(variable->size());
    absl::ReaderMutexLock lock(&block->mu);
    if (block->deleted) {
      return absl::NotFoundError(
          absl::StrCat("variable '", name, "' was deleted while read"));
    }
    const optimizer::BlockOptimizerState& state = block->state;
    out->set_step(state.step);
    PutFloats(block->values, out->mutable_values());
    for (const SlotField& slot : SlotFields()) {
      PutFloats(state.*slot.held, (out->*slot.mutable_field)());
    }
    out->set_eve_d(state.eve.d);
    out->set_eve_f_hat(state.eve.f_hat);
    out->set_eve_started(state.eve.started);
    bytes += out->ByteSizeLong();
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> VariableStore::WriteState(
    const v1::WriteStateRequest& request) {
  // Check every block before changing any.
  struct Target {
    std::shared_ptr<DenseVariable> variable;
    Block* block;
    const v1::BlockState* state;
  };
  std::vector<Target> targets;
  absl::flat_hash_set<const Block*> seen;
  absl::ReaderMutexLock structure_lock(&structure_mu_);
  for (const v1::BlockState& given : request.blocks()) {
    const std::string& name = given.variable();
    auto variable = Find(name);
    if (variable == nullptr) {
      return FindTable(name) != nullptr
                 ? absl::InvalidArgumentError(absl::StrCat(
                       "'", name,
                       "' is a sparse table; WriteState sets variables"))
                 : absl::NotFoundError(
                       absl::StrCat("no variable named '", name, "'"));
    }
    if (given.size() != variable->size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the state of '", name, "' is for ", given.size(),
                       " values; the variable has ", variable->size()));
    }
    const uint64_t k = given.offset() / options_.block_size;
    const std::string what =
        absl::StrCat("block at offset ", given.offset(), " of '", name, "'");
    if (given.offset() >= variable->size() ||
        plan_.BlockRange(variable->size(), k).offset != given.offset() ||
        plan_.BlockRange(variable->size(), k).length != given.length()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " with length ", given.length(),
          " is not a block of it (blocks of ", options_.block_size,
          " values from offset 0; the variable has ", variable->size(), ")"));
    }
    Block* block = variable->block(k);
    if (block == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, " belongs to shard ", plan_.ShardOf(name, k),
                       ", not shard ", options_.shard_index));
    }
    if (!seen.insert(block).second) {
      return absl::InvalidArgumentError(absl::StrCat(what, " is given twice"));
    }
    const size_t bytes = given.length() * sizeof(float);
    if (given.values().size() != bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has ", given.values().size(),
                       " bytes of values; expected ", bytes));
    }
    if (!AllFinite(GetFloats(given.values()))) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has values that are not finite"));
    }
    const auto entry = rules_.For(name);
    const optimizer::StateSlots allowed =
        optimizer::SlotsOf(entry->settings.rule) | memory_.SlotsOf(name);
    for (size_t i = 0; i < SlotFields().size(); ++i) {
      const SlotField& slot = SlotFields()[i];
      const std::string& data = (given.*slot.get)();
      if (data.empty()) continue;
      if ((allowed & optimizer::kSlotBits[i]) == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, " has slot ", slot.name, ", which ",
            std::string(optimizer::RuleName(entry->settings.rule)),
            " does not hold (docs/optimizers.md): set that optimizer first, "
            "or leave the slot out"));
      }
      if (data.size() != bytes || !AllFinite(GetFloats(data))) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, " has slot ", slot.name, " of ", data.size(),
            " bytes; expected ", bytes, " of finite float32 values"));
      }
    }
    if (!std::isfinite(given.eve_d()) || !std::isfinite(given.eve_f_hat())) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has an Eve feedback that is not finite"));
    }
    targets.push_back({std::move(variable), block, &given});
  }

  if (request.validate_only()) return 0;
  std::vector<absl::Mutex*> locks;
  for (const Target& target : targets) locks.push_back(&target.block->mu);
  LockedSet locked(std::move(locks));
  for (const Target& target : targets) {
    target.block->mu.AssertHeld();  // by `locked`
    if (target.block->deleted) {
      return absl::NotFoundError(
          absl::StrCat("variable '", target.variable->name(),
                       "' was deleted while its state was on its way"));
    }
  }
  for (const Target& target : targets) {
    Block& block = *target.block;
    block.mu.AssertHeld();
    const v1::BlockState& given = *target.state;
    block.values = GetFloats(given.values());
    optimizer::BlockOptimizerState& state = block.state;
    state.step = given.step();
    for (const SlotField& slot : SlotFields()) {
      state.*slot.held = GetFloats((given.*slot.get)());
    }
    state.eve.d = given.eve_d();
    state.eve.f_hat = given.eve_f_hat();
    state.eve.started = given.eve_started();
    // Set again with finite values, it takes pushes again.
    block.diverged = false;
    block.diverged_at = 0;
  }
  return targets.size();
}

}  // namespace ps
