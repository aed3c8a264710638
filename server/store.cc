#include "server/store.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/optimizer_config.h"
#include "common/status.h"
#include "common/wire.h"
#include "spdlog/spdlog.h"

namespace ps {
namespace {

// The largest variable accepted, in values (about 1 TiB of float32).
constexpr uint64_t kMaxVariableSize = uint64_t{1} << 38;

std::string ShapeString(const std::vector<uint64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status ShapeConflict(const std::string& name,
                           const std::vector<uint64_t>& existing,
                           const std::vector<uint64_t>& wanted) {
  return absl::AlreadyExistsError(absl::StrCat(
      "variable '", name, "' exists with shape ", ShapeString(existing),
      "; cannot create it with shape ", ShapeString(wanted)));
}

absl::StatusOr<uint64_t> CheckShape(const std::string& name,
                                    const std::vector<uint64_t>& shape) {
  uint64_t size = 1;
  for (uint64_t dim : shape) {
    if (dim == 0 || dim > kMaxVariableSize) {
      return absl::InvalidArgumentError(absl::StrCat(
          "variable '", name, "' has dimension ", static_cast<int64_t>(dim),
          " in shape ", ShapeString(shape),
          "; every dimension must be between 1 and ", kMaxVariableSize));
    }
    if (size > kMaxVariableSize / dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("variable '", name, "' of shape ", ShapeString(shape),
                       " has more than ", kMaxVariableSize, " values"));
    }
    size *= dim;
  }
  return size;
}

// The index of the first value that is NaN or infinite, if any.
std::optional<size_t> FirstNonFinite(std::span<const float> values) {
  if (AllFinite(values)) return std::nullopt;
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) return i;
  }
  return std::nullopt;
}

absl::Status DecodeFinite(const v1::Slice& slice, absl::string_view what,
                          std::vector<float>& out) {
  out.resize(slice.length());
  if (absl::Status status = DecodeValues(slice.dtype(), slice.data(), out);
      !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " for '", slice.variable(), "' at offset ",
                     slice.offset(), ": ", status.message()));
  }
  if (auto bad = FirstNonFinite(out)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " for '", slice.variable(), "' holds ", out[*bad],
                     " at flat index ", slice.offset() + *bad,
                     "; every value must be finite"));
  }
  return absl::OkStatus();
}

// Points part.gradient at the slice's values: in place when they are
// float32 and aligned for float, else widened into part.decoded; or, with
// `widen_later`, points part.half at 16-bit values for the update to widen
// chunk by chunk. Checks that every value is finite.
absl::Status ViewGradient(const v1::Slice& slice, bool widen_later,
                          PreparedPush::Part& part) {
  const std::string& data = slice.data();
  const size_t length = slice.length();
  const bool half =
      slice.dtype() == v1::BFLOAT16 || slice.dtype() == v1::FLOAT16;
  if (widen_later && half && data.size() == length * 2 &&
      AllFiniteHalf(slice.dtype(), data)) {
    part.half = data;
    part.half_dtype = slice.dtype();
    return absl::OkStatus();
  }
  // Anything wrong is found, and described, on the widening path below.
  const bool in_place =
      slice.dtype() == v1::FLOAT32 && data.size() == length * sizeof(float) &&
      reinterpret_cast<uintptr_t>(data.data()) % alignof(float) == 0;
  absl::Status status;
  if (in_place) {
    part.gradient = std::span<const float>(
        reinterpret_cast<const float*>(data.data()), length);
  } else {
    // CheckRange bounded length by the block size.
    part.decoded.reset(new float[length]);
    std::span<float> out(part.decoded.get(), length);
    bool all_finite = false;
    status = DecodeValues(slice.dtype(), data, out, &all_finite);
    part.gradient = out;
    if (status.ok() && all_finite) return absl::OkStatus();
  }
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("gradient for '", slice.variable(), "' at offset ",
                     slice.offset(), ": ", status.message()));
  }
  if (auto bad = FirstNonFinite(part.gradient)) {
    return absl::InvalidArgumentError(
        absl::StrCat("gradient for '", slice.variable(), "' holds ",
                     part.gradient[*bad], " at flat index ",
                     slice.offset() + *bad, "; every value must be finite"));
  }
  return absl::OkStatus();
}

}  // namespace

LockedBlocks::LockedBlocks(std::vector<Block*> blocks)
    ABSL_NO_THREAD_SAFETY_ANALYSIS : blocks_(std::move(blocks)) {
  std::sort(blocks_.begin(), blocks_.end());
  blocks_.erase(std::unique(blocks_.begin(), blocks_.end()), blocks_.end());
  for (Block* block : blocks_) block->mu.Lock();
  held_ = true;
}

LockedBlocks::LockedBlocks(const PreparedPush& push)
    : LockedBlocks([&push] {
        std::vector<Block*> blocks;
        blocks.reserve(push.parts.size());
        for (const auto& part : push.parts) blocks.push_back(part.block);
        return blocks;
      }()) {}

void LockedBlocks::Unlock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (!held_) return;
  held_ = false;
  for (Block* block : blocks_) block->mu.Unlock();
}

PushCompletion::PushCompletion(size_t parts, bool with_values, v1::DType dtype,
                               DoneCallback on_done)
    : with_values_(with_values),
      dtype_(dtype),
      remaining_(parts + 1),
      on_done_(std::move(on_done)) {
  if (with_values_) {
    answer_.mutable_values()->Reserve(static_cast<int>(parts));
    for (size_t i = 0; i < parts; ++i) answer_.add_values();
  }
}

void PushCompletion::Fill(size_t part, const Variable& variable,
                          const Block& block) {
  if (!with_values_) return;
  FillWritten(part, variable, block);
  EncodeValues(dtype_, block.values,
               answer_.mutable_values(static_cast<int>(part))->mutable_data());
}

char* PushCompletion::WritableAnswer(size_t part, size_t values) {
  if (!with_values_) return nullptr;
  std::string* data =
      answer_.mutable_values(static_cast<int>(part))->mutable_data();
  if (data->size() != values * BytesPerValue(dtype_)) return nullptr;
  return data->data();
}

void PushCompletion::FillWritten(size_t part, const Variable& variable,
                                 const Block& block) {
  if (!with_values_) return;
  v1::Slice* slice = answer_.mutable_values(static_cast<int>(part));
  slice->set_variable(variable.name);
  slice->set_offset(block.range.offset);
  slice->set_length(block.range.length);
  slice->set_dtype(dtype_);
  slice->set_version(block.state.step);
}

void PushCompletion::ReuseBuffer(size_t part, std::string buffer) {
  if (!with_values_) return;
  *answer_.mutable_values(static_cast<int>(part))->mutable_data() =
      std::move(buffer);
}

void PushCompletion::PartDone(absl::Status status) {
  if (!status.ok()) {
    absl::MutexLock lock(&mu_);
    if (status_.ok()) status_ = std::move(status);
  }
  if (remaining_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  absl::Status final_status;
  {
    absl::MutexLock lock(&mu_);
    final_status = status_;
  }
  if (!final_status.ok()) answer_.Clear();
  on_done_(std::move(final_status), std::move(answer_));
}

VariableStore::VariableStore(const StoreOptions& options)
    : options_(options),
      plan_(options.num_shards, options.block_size),
      helpers_(options.update_threads - 1),
      sessions_(options.shard_index, options.max_workers) {
  auto entry = std::make_shared<OptimizerEntry>();
  entry->config = options.default_optimizer;
  entry->settings = *ResolveOptimizerConfig(options.default_optimizer);
  default_optimizer_ = std::move(entry);
}

std::shared_ptr<Variable> VariableStore::Find(const std::string& name) const {
  absl::ReaderMutexLock lock(&variables_mu_);
  auto it = variables_.find(name);
  return it == variables_.end() ? nullptr : it->second;
}

std::vector<std::string> VariableStore::VariableNames() const {
  absl::ReaderMutexLock lock(&variables_mu_);
  std::vector<std::string> names;
  names.reserve(variables_.size());
  for (const auto& [name, variable] : variables_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

std::shared_ptr<const OptimizerEntry> VariableStore::OptimizerFor(
    const std::string& variable) const {
  absl::ReaderMutexLock lock(&config_mu_);
  auto it = overrides_.find(variable);
  return it == overrides_.end() ? default_optimizer_ : it->second;
}

absl::StatusOr<Block*> VariableStore::CheckRange(const Variable& variable,
                                                 uint64_t offset,
                                                 uint64_t length,
                                                 bool whole_block) const {
  if (length == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "slice of '", variable.name, "' at offset ", offset, " has length 0"));
  }
  if (offset >= variable.size || length > variable.size - offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        "range [", offset, ", ", offset + length, ") lies outside variable '",
        variable.name, "' of ", variable.size, " values"));
  }
  const uint64_t k = plan_.BlockOf(offset);
  const FlatRange block_range = plan_.BlockRange(variable.size, k);
  if (whole_block) {
    if (offset != block_range.offset || length != block_range.length) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gradient slice [", offset, ", ", offset + length, ") of '",
          variable.name, "' is not a whole block; block ", k, " is [",
          block_range.offset, ", ", block_range.offset + block_range.length,
          ") with block_size ", plan_.block_size()));
    }
  } else if (offset + length > block_range.offset + block_range.length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "range [", offset, ", ", offset + length, ") of '", variable.name,
        "' crosses the end of block ", k, " at ",
        block_range.offset + block_range.length,
        "; split ranges at multiples of block_size ", plan_.block_size()));
  }
  const uint32_t owner = plan_.ShardOf(variable.name, k);
  if (owner != options_.shard_index) {
    return absl::FailedPreconditionError(
        absl::StrCat("block ", k, " of '", variable.name, "' belongs to shard ",
                     owner, ", not to this shard ", options_.shard_index,
                     " of ", options_.num_shards));
  }
  return variable.blocks.at(k).get();
}

uint64_t VariableStore::AnswerBytes(const std::string& variable,
                                    uint64_t length, v1::DType dtype) {
  // A slice's fields besides its data: tags, lengths, offset, length,
  // dtype and version take at most 40 bytes.
  constexpr uint64_t kSliceOverhead = 40;
  const uint64_t width = v1::DType_IsValid(dtype) ? BytesPerValue(dtype) : 4;
  // Lengths were checked against the variable (at most 2^38 values).
  return variable.size() + kSliceOverhead +
         std::min(length, kMaxVariableSize) * width;
}

absl::Status VariableStore::CheckAnswerSize(uint64_t bytes, int slices) const {
  const uint64_t limit = options_.max_answer_bytes;
  if (limit == 0 || bytes <= limit) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the answer to these ", slices, " slices would hold ", bytes,
      " bytes, more than the largest message of ", limit,
      " bytes (ps_server --max_message_mb); ask for fewer values per call"));
}

absl::Status VariableStore::CheckDisjoint(
    const google::protobuf::RepeatedPtrField<v1::Slice>& slices,
    absl::string_view what) {
  // Ranges of one variable, sorted; neighbours must not meet.
  std::vector<std::tuple<absl::string_view, uint64_t, uint64_t>> ranges;
  ranges.reserve(slices.size());
  for (const v1::Slice& slice : slices) {
    ranges.emplace_back(slice.variable(), slice.offset(),
                        slice.offset() + slice.length());
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    const auto& [name, begin, end] = ranges[i];
    const auto& [previous, previous_begin, previous_end] = ranges[i - 1];
    if (name == previous && begin < previous_end) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the ", what, " names values [", begin, ", ", end, ") of '",
          std::string(name), "' more than once (they overlap [", previous_begin,
          ", ", previous_end, ")); ask for each value once per call"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> VariableStore::CreateVariable(
    const v1::CreateVariableRequest& request) {
  const std::string& name = request.name();
  if (name.empty()) {
    return absl::InvalidArgumentError("a variable needs a non-empty name");
  }
  std::vector<uint64_t> shape(request.shape().begin(), request.shape().end());
  PS_ASSIGN_OR_RETURN(const uint64_t size, CheckShape(name, shape));

  std::shared_ptr<const OptimizerEntry> override_entry;
  if (request.has_optimizer()) {
    auto settings = ResolveOptimizerConfig(request.optimizer());
    if (!settings.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer of '", name, "': ", settings.status().message()));
    }
    override_entry = std::make_shared<OptimizerEntry>(
        OptimizerEntry{request.optimizer(), *std::move(settings)});
  }

  absl::MutexLock memory_lock(&memory_mu_);
  if (auto existing = Find(name)) {
    if (existing->shape != shape) {
      return ShapeConflict(name, existing->shape, shape);
    }
    return false;
  }

  // This shard's blocks, and what they and their optimizer state will hold
  // (counting stops once that is over the limit).
  std::shared_ptr<const OptimizerEntry> entry = override_entry;
  if (entry == nullptr) {
    absl::ReaderMutexLock config_lock(&config_mu_);
    entry = default_optimizer_;
  }
  MemoryCharge charge{.slots = optimizer::SlotsOf(entry->settings.rule)};
  std::vector<uint64_t> local_blocks;
  const uint64_t num_blocks = plan_.NumBlocks(size);
  const uint64_t limit = options_.memory_limit_bytes;
  for (uint64_t k = 0; k < num_blocks; ++k) {
    if (plan_.ShardOf(name, k) != options_.shard_index) continue;
    local_blocks.push_back(k);
    charge.values += plan_.BlockRange(size, k).length;
    ++charge.blocks;
    if (limit != 0 &&
        BytesOf(charge) + charge.blocks * kBlockBookkeepingBytes > limit) {
      break;
    }
  }
  PS_RETURN_IF_ERROR(CheckMemory(
      BytesOf(charge) + charge.blocks * kBlockBookkeepingBytes,
      absl::StrCat("variable '", name, "' (", size, " values, ",
                   std::string(optimizer::RuleName(entry->settings.rule)),
                   ")")));

  auto variable = std::make_shared<Variable>();
  variable->name = name;
  variable->shape = shape;
  variable->size = size;
  try {
    for (uint64_t k : local_blocks) {
      auto block = std::make_unique<Block>(k, plan_.BlockRange(size, k));
      absl::MutexLock lock(&block->mu);
      block->values.assign(block->range.length, 0.0f);
      variable->blocks.emplace(k, std::move(block));
    }
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("not enough memory on shard ", options_.shard_index,
                     " for '", name, "' of ", size, " values"));
  }

  absl::flat_hash_set<uint64_t> initialized;
  std::vector<float> decoded;
  for (const v1::Slice& slice : request.initial_values()) {
    if (!slice.variable().empty() && slice.variable() != name) {
      return absl::InvalidArgumentError(
          absl::StrCat("initial values name variable '", slice.variable(),
                       "' in a request to create '", name, "'"));
    }
    PS_ASSIGN_OR_RETURN(Block * block, CheckRange(*variable, slice.offset(),
                                                  slice.length(), true));
    if (!initialized.insert(block->index).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("initial values give block ", block->index, " of '",
                       name, "' twice"));
    }
    v1::Slice named = slice;
    named.set_variable(name);
    PS_RETURN_IF_ERROR(DecodeFinite(named, "initial values", decoded));
    absl::MutexLock lock(&block->mu);
    block->values = decoded;
  }

  absl::MutexLock lock(&variables_mu_);
  auto [it, inserted] = variables_.emplace(name, variable);
  if (!inserted) {
    // Another worker created it meanwhile: the first one wins.
    if (it->second->shape != shape) {
      return ShapeConflict(name, it->second->shape, shape);
    }
    return false;
  }
  if (override_entry) {
    absl::MutexLock config_lock(&config_mu_);
    overrides_[name] = std::move(override_entry);
  }
  charges_[name] = charge;
  charged_bytes_ += BytesOf(charge);
  bookkeeping_bytes_ += charge.blocks * kBlockBookkeepingBytes;
  return true;
}

// Each array of a block is one malloc allocation with a 16-byte header.
const uint64_t VariableStore::kBlockBookkeepingBytes =
    sizeof(Block) + sizeof(std::pair<uint64_t, std::unique_ptr<Block>>) +
    16 * 7;

uint64_t VariableStore::BookkeepingBytes() const {
  return bookkeeping_bytes_.load(std::memory_order_relaxed) +
         sessions_.size() * kSessionBytes;
}

uint64_t VariableStore::BytesOf(const MemoryCharge& charge) const {
  const uint64_t arrays =
      1 + std::popcount(charge.slots) + (options_.sync ? 1 : 0);
  return charge.values * arrays * sizeof(float);
}

absl::Status VariableStore::CheckMemory(uint64_t more,
                                        absl::string_view what) const {
  const uint64_t limit = options_.memory_limit_bytes;
  const uint64_t charged = charged_bytes_ + BookkeepingBytes();
  if (limit == 0 || (charged <= limit && more <= limit - charged)) {
    return absl::OkStatus();
  }
  auto mib = [](uint64_t bytes) {
    if (bytes < (1 << 20)) return absl::StrCat(bytes, " bytes");
    return absl::StrFormat("%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  };
  return absl::ResourceExhaustedError(absl::StrCat(
      what, " needs ", mib(more),
      " more for values, optimizer state and bookkeeping on ", "shard ",
      options_.shard_index, ", which holds ", mib(charged), " of its limit of ",
      mib(limit),
      "; add shards, choose a rule with less state, or raise ps_server's "
      "--memory_limit_mb"));
}

uint64_t VariableStore::StateBytes() const { return charged_bytes_; }

absl::Status VariableStore::Pull(const v1::PullRequest& request,
                                 v1::PullResponse* response) const {
  if (!v1::DType_IsValid(request.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown dtype ", static_cast<int>(request.dtype()),
                     "; use FLOAT32, BFLOAT16 or FLOAT16"));
  }
  std::vector<std::pair<std::shared_ptr<Variable>, Block*>> targets;
  targets.reserve(request.slices_size());
  uint64_t answer_bytes = 0;
  for (const v1::Slice& slice : request.slices()) {
    auto variable = Find(slice.variable());
    if (variable == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("no variable named '", slice.variable(), "'"));
    }
    PS_ASSIGN_OR_RETURN(Block * block, CheckRange(*variable, slice.offset(),
                                                  slice.length(), false));
    targets.emplace_back(std::move(variable), block);
    answer_bytes +=
        AnswerBytes(slice.variable(), slice.length(), request.dtype());
  }
  PS_RETURN_IF_ERROR(CheckDisjoint(request.slices(), "pull"));
  PS_RETURN_IF_ERROR(CheckAnswerSize(answer_bytes, request.slices_size()));
  response->mutable_values()->Reserve(request.slices_size());
  for (int i = 0; i < request.slices_size(); ++i) {
    const v1::Slice& asked = request.slices(i);
    Block* block = targets[i].second;
    v1::Slice* slice = response->add_values();
    slice->set_variable(asked.variable());
    slice->set_offset(asked.offset());
    slice->set_length(asked.length());
    slice->set_dtype(request.dtype());
    absl::ReaderMutexLock lock(&block->mu);
    slice->set_version(block->state.step);
    EncodeValues(
        request.dtype(),
        std::span<const float>(block->values)
            .subspan(asked.offset() - block->range.offset, asked.length()),
        slice->mutable_data());
  }
  return absl::OkStatus();
}

absl::StatusOr<PreparedPush> VariableStore::PreparePush(
    const v1::PushRequest& request, bool answered) {
  if (!v1::DType_IsValid(request.pull_dtype())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown pull_dtype ", static_cast<int>(request.pull_dtype()),
        "; use FLOAT32, BFLOAT16 or FLOAT16"));
  }
  if (options_.sync && request.worker_id().empty()) {
    return absl::InvalidArgumentError(
        "sync mode averages pushes per worker: set PushRequest.worker_id");
  }
  if (request.has_loss() && !std::isfinite(request.loss())) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss ", request.loss(), " is not finite"));
  }
  PreparedPush push;
  push.worker_id = request.worker_id();
  push.epoch = request.epoch();
  push.seq = request.seq();
  push.step = request.step();
  if (request.has_loss()) push.loss = request.loss();
  push.parts.reserve(request.gradients_size());
  absl::flat_hash_set<const Block*> seen;
  uint64_t answer_bytes = 0;
  for (const v1::Slice& slice : request.gradients()) {
    PreparedPush::Part part;
    part.variable = Find(slice.variable());
    if (part.variable == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("no variable named '", slice.variable(),
                       "'; create it before pushing to it"));
    }
    PS_ASSIGN_OR_RETURN(part.block, CheckRange(*part.variable, slice.offset(),
                                               slice.length(), true));
    if (!seen.insert(part.block).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("the push holds block ", part.block->index, " of '",
                       slice.variable(), "' twice"));
    }
    // Sync mode sums the widened gradients, so it widens them here.
    PS_RETURN_IF_ERROR(ViewGradient(slice, !options_.sync, part));
    if (options_.sync) {
      // Each worker's loss must suit the rule on its own (their mean is what
      // the step uses); async pushes are checked where they are applied.
      auto entry = OptimizerFor(slice.variable());
      absl::ReaderMutexLock lock(&part.block->mu);
      absl::Status check =
          optimizer::CheckUpdate(entry->settings, part.block->state, push.loss);
      if (!check.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "push to '", slice.variable(), "': ", check.message()));
      }
    }
    answer_bytes +=
        AnswerBytes(slice.variable(), slice.length(), request.pull_dtype());
    push.parts.push_back(std::move(part));
  }
  if (answered) {
    PS_RETURN_IF_ERROR(CheckAnswerSize(answer_bytes, request.gradients_size()));
  }
  if (!push.worker_id.empty() && push.seq != 0) {
    PS_RETURN_IF_ERROR(sessions_.Admit(
        push.worker_id, push.epoch, push.seq,
        static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()))));
  }
  return push;
}

absl::StatusOr<VariableStore::Session> VariableStore::OpenSession(
    const std::string& worker, uint64_t epoch) {
  Session session;
  PS_ASSIGN_OR_RETURN(
      session.epoch,
      sessions_.Open(worker, epoch,
                     static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()))));
  session.sync_step = sync_step_.load();
  return session;
}

namespace {

bool ExactlyOnce(const PreparedPush& push) {
  return !push.worker_id.empty() && push.seq != 0;
}

// True when the push asks for exactly-once and `block` already applied it.
bool AlreadyApplied(const PreparedPush& push, const Block& block)
    ABSL_SHARED_LOCKS_REQUIRED(block.mu) {
  if (!ExactlyOnce(push)) return false;
  auto it = block.applied.find(push.worker_id);
  return it != block.applied.end() && it->second.epoch == push.epoch &&
         it->second.seqs.Seen(push.seq);
}

// FAILED_PRECONDITION when a push of a newer session of the worker reached
// the block first (the session was reopened while this push was on its way).
absl::Status CheckNotFenced(const PreparedPush& push, const Variable& variable,
                            const Block& block)
    ABSL_SHARED_LOCKS_REQUIRED(block.mu) {
  if (!ExactlyOnce(push)) return absl::OkStatus();
  auto it = block.applied.find(push.worker_id);
  if (it == block.applied.end() || it->second.epoch <= push.epoch) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(
      absl::StrCat("fenced: block ", block.index, " of '", variable.name,
                   "' took pushes of a newer session of worker '",
                   push.worker_id, "' (epoch ", it->second.epoch, " > ",
                   push.epoch, "); this push is not applied"));
}

// Records the push as applied to the block. Returns true when that made a
// new exactly-once record (the worker's first push to the block).
bool MarkApplied(const PreparedPush& push, Block& block)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(block.mu) {
  if (!ExactlyOnce(push)) return false;
  auto [it, inserted] = block.applied.try_emplace(push.worker_id);
  Block::AppliedSeqs& applied = it->second;
  if (applied.epoch != push.epoch) applied = {push.epoch, SeqWindow()};
  applied.seqs.Mark(push.seq);
  return inserted;
}

// FAILED_PRECONDITION when the block's values are no longer finite.
absl::Status CheckBlockUpdatable(const Variable& variable, const Block& block)
    ABSL_SHARED_LOCKS_REQUIRED(block.mu) {
  if (!block.diverged) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "block ", block.index, " of '", variable.name,
      "' holds values that are not finite since its update at step ",
      block.diverged_at,
      " (the training diverged: lower the learning rate); it takes no more "
      "pushes until it is restored from a checkpoint or set again"));
}

// Records that an update left values that are not finite in the block.
void MarkDiverged(const Variable& variable, Block& block)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(block.mu) {
  if (block.diverged) return;
  block.diverged = true;
  block.diverged_at = block.state.step;
  spdlog::error(
      "block {} of '{}': its update at step {} left values that are not "
      "finite; the block takes no more pushes",
      block.index, variable.name, block.state.step);
}

}  // namespace

void VariableStore::ApplyPush(PreparedPush push,
                              std::shared_ptr<PushCompletion> completion) {
  if (options_.sync) {
    ApplySync(push, completion);
  } else {
    ApplyAsync(push, completion);
  }
  completion->PartDone();  // the launcher's share: every part is handed out
}

void VariableStore::ApplyAsync(
    PreparedPush& push, const std::shared_ptr<PushCompletion>& completion)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {
  LockedBlocks locked(push);
  // Check every part before changing any, under the locks: an optimizer
  // change cannot land between two of them, so a push is all or nothing.
  const size_t n = push.parts.size();
  std::vector<bool> duplicate(n);
  std::vector<std::shared_ptr<const OptimizerEntry>> entries(n);
  absl::Status refusal;
  for (size_t i = 0; i < n && refusal.ok(); ++i) {
    const PreparedPush::Part& part = push.parts[i];
    duplicate[i] = AlreadyApplied(push, *part.block);
    if (duplicate[i]) continue;
    refusal = CheckNotFenced(push, *part.variable, *part.block);
    if (!refusal.ok()) break;
    refusal = CheckBlockUpdatable(*part.variable, *part.block);
    if (!refusal.ok()) break;
    entries[i] = OptimizerFor(part.variable->name);
    absl::Status check = optimizer::CheckUpdate(entries[i]->settings,
                                                part.block->state, push.loss);
    if (!check.ok()) {
      refusal = absl::InvalidArgumentError(absl::StrCat(
          "push to '", part.variable->name, "': ", check.message()));
    }
  }
  std::vector<absl::Status> statuses(n);
  if (!refusal.ok()) {
    statuses[0] = std::move(refusal);
  } else {
    for (size_t i = 0; i < n; ++i) {
      PreparedPush::Part& part = push.parts[i];
      Block& block = *part.block;
      if (duplicate[i]) {
        completion->Fill(i, *part.variable, block);
        continue;
      }
      // The answer is encoded chunk by chunk as the update writes the values
      // (often over the gradient just consumed), not in a second pass over
      // the block; each chunk is checked for values that are not finite
      // while it is in cache.
      char* answer = completion->WritableAnswer(i, block.values.size());
      const v1::DType dtype = completion->dtype();
      const size_t width = BytesPerValue(dtype);
      std::atomic<bool> finite = true;  // chunks may come from helpers
      auto sink = [&](size_t offset, std::span<const float> values) {
        if (!AllFinite(values)) finite.store(false, std::memory_order_relaxed);
        if (answer != nullptr) {
          EncodeValuesTo(dtype, values, answer + offset * width);
        }
      };
      const absl::Time start = absl::Now();
      const optimizer::OptimizerSettings& settings = entries[i]->settings;
      if (part.half.empty()) {
        optimizer::ApplyUpdate(settings, block.state, block.values,
                               part.gradient, push.loss, sink, &helpers_);
      } else {
        optimizer::ApplyUpdate(
            settings, block.state, block.values,
            [&](size_t offset, std::span<float> out) {
              WidenHalf(part.half_dtype, part.half.data() + 2 * offset, out);
            },
            push.loss, sink, &helpers_);
      }
      stats_.RecordUpdate(absl::Now() - start);
      if (MarkApplied(push, block)) {
        bookkeeping_bytes_ += kAppliedRecordBytes;
      }
      if (!finite.load()) MarkDiverged(*part.variable, block);
      if (answer != nullptr) {
        completion->FillWritten(i, *part.variable, block);
      } else {
        completion->Fill(i, *part.variable, block);
      }
    }
  }
  locked.Unlock();
  for (absl::Status& status : statuses) completion->PartDone(std::move(status));
}

void VariableStore::ApplySync(PreparedPush& push,
                              const std::shared_ptr<PushCompletion>& completion)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {
  // Lock every block of the push and check all of them before changing any.
  LockedBlocks locked(push);

  // A repeated (worker_id, seq) is acknowledged again, never refused.
  std::vector<bool> duplicate(push.parts.size());
  for (size_t i = 0; i < push.parts.size(); ++i) {
    duplicate[i] = AlreadyApplied(push, *push.parts[i].block);
  }

  // Parts whose answer is ready now, reported once the locks are released.
  std::vector<std::pair<std::shared_ptr<PushCompletion>, absl::Status>> ready;
  absl::Status refusal;
  absl::Status ahead;  // the first part ahead of its block's step
  for (size_t i = 0; i < push.parts.size(); ++i) {
    PreparedPush::Part& part = push.parts[i];
    Block& block = *part.block;
    SyncSlot& sync = block.sync;
    if (duplicate[i]) continue;
    refusal = CheckNotFenced(push, *part.variable, block);
    if (!refusal.ok()) break;
    refusal = CheckBlockUpdatable(*part.variable, block);
    if (!refusal.ok()) break;
    // A block that has not started takes the pushes' step, up to the
    // shard's: the first push does not decide it beyond that.
    const uint64_t shard_step = sync_step_.load();
    if (!sync.started && push.step <= shard_step) continue;
    const uint64_t current = sync.started ? sync.next_step : shard_step;
    if (push.step < current) {
      refusal = absl::AbortedError(absl::StrCat(
          "step ", push.step, " of '", part.variable->name, "' block ",
          block.index, " was already applied; the current step is ", current));
      break;
    }
    if (push.step > current) {
      if (VoteAhead(push, *part.variable, block, ready)) continue;
      if (ahead.ok()) {
        ahead = absl::UnavailableError(absl::StrCat(
            "step ", push.step, " is ahead of step ", current, " of '",
            part.variable->name, "' block ", block.index, " on shard ",
            options_.shard_index,
            ": it moves on when a quorum of workers is ahead too (the shard "
            "restarted from an older checkpoint, or this worker's step is "
            "wrong); retry"));
      }
      continue;
    }
    if (sync.workers.contains(push.worker_id)) {
      refusal = absl::AlreadyExistsError(
          absl::StrCat("worker '", push.worker_id, "' already pushed step ",
                       push.step, " of '", part.variable->name, "'"));
      break;
    }
  }
  if (refusal.ok()) refusal = std::move(ahead);

  if (!refusal.ok()) {
    for (size_t i = 0; i < push.parts.size(); ++i) {
      ready.emplace_back(completion, i == 0 ? refusal : absl::OkStatus());
    }
  } else {
    for (size_t i = 0; i < push.parts.size(); ++i) {
      PreparedPush::Part& part = push.parts[i];
      Block& block = *part.block;
      SyncSlot& sync = block.sync;
      if (duplicate[i]) {
        // Acknowledge again: wait for the step if it is still collecting.
        if (sync.started && push.step == sync.next_step &&
            sync.workers.contains(push.worker_id)) {
          sync.waiters.emplace_back(completion, i);
        } else {
          completion->Fill(i, *part.variable, block);
          ready.emplace_back(completion, absl::OkStatus());
        }
        continue;
      }
      if (!sync.started) {
        sync.started = true;
        sync.next_step = push.step;
      }
      if (sync.sum.empty()) {
        sync.sum.assign(part.gradient.begin(), part.gradient.end());
      } else {
        for (size_t j = 0; j < sync.sum.size(); ++j) {
          sync.sum[j] += part.gradient[j];
        }
      }
      sync.workers.insert(push.worker_id);
      if (MarkApplied(push, block)) {
        bookkeeping_bytes_ += kAppliedRecordBytes;
      }
      if (push.loss) {
        sync.loss_sum += *push.loss;
        ++sync.losses;
      }
      sync.waiters.emplace_back(completion, i);
      if (sync.workers.size() < options_.quorum) continue;

      // The quorum is in: apply the mean once and answer every waiter.
      const float count = static_cast<float>(sync.workers.size());
      for (float& g : sync.sum) g /= count;
      std::optional<double> loss;
      if (sync.losses > 0) loss = sync.loss_sum / sync.losses;
      auto entry = OptimizerFor(part.variable->name);
      absl::Status status =
          optimizer::CheckUpdate(entry->settings, block.state, loss);
      if (status.ok()) {
        std::atomic<bool> finite = true;  // chunks may come from helpers
        auto check = [&](size_t, std::span<const float> values) {
          if (!AllFinite(values)) {
            finite.store(false, std::memory_order_relaxed);
          }
        };
        const absl::Time start = absl::Now();
        optimizer::ApplyUpdate(entry->settings, block.state, block.values,
                               sync.sum, loss, check, &helpers_);
        stats_.RecordUpdate(absl::Now() - start);
        if (!finite.load()) MarkDiverged(*part.variable, block);
      }
      for (auto& [waiter, index] : sync.waiters) {
        waiter->Fill(index, *part.variable, block);
        ready.emplace_back(std::move(waiter), status);
      }
      sync.waiters.clear();
      sync.sum.clear();
      sync.workers.clear();
      sync.loss_sum = 0;
      sync.losses = 0;
      ++sync.next_step;
      RaiseSyncStep(sync.next_step);
    }
  }
  locked.Unlock();
  for (auto& [waiter, status] : ready) waiter->PartDone(std::move(status));
}

void VariableStore::RaiseSyncStep(uint64_t step) {
  uint64_t seen = sync_step_.load();
  while (seen < step && !sync_step_.compare_exchange_weak(seen, step)) {
  }
}

bool VariableStore::VoteAhead(const PreparedPush& push,
                              const Variable& variable, Block& block,
                              ReadyParts& ready) {
  SyncSlot& sync = block.sync;
  // Bounded: a worker has one vote, and worker ids are bounded by sessions
  // (stale votes of workers that went away are dropped with the table).
  if (sync.ahead.size() >= 4 * std::max<uint64_t>(options_.num_workers, 1) &&
      !sync.ahead.contains(push.worker_id)) {
    sync.ahead.clear();
  }
  sync.ahead[push.worker_id] = push.step;
  const uint64_t current = sync.started ? sync.next_step : sync_step_.load();
  // The step being collected is abandoned only when everyone who pushed it
  // has moved on, and a quorum of workers is ahead.
  for (const std::string& worker : sync.workers) {
    auto it = sync.ahead.find(worker);
    if (it == sync.ahead.end() || it->second <= current) return false;
  }
  uint32_t voters = 0;
  uint64_t target = UINT64_MAX;
  for (const auto& [worker, step] : sync.ahead) {
    if (step <= current) continue;
    ++voters;
    target = std::min(target, step);
  }
  if (voters < options_.quorum) return false;
  spdlog::warn(
      "'{}' block {} on shard {} moves from step {} to step {}, where {} "
      "workers are: the steps between are not applied to it (it was "
      "restored from an older checkpoint, or its workers skipped them)",
      variable.name, block.index, options_.shard_index, current, target,
      voters);
  for (auto& [waiter, index] : sync.waiters) {
    ready.emplace_back(
        std::move(waiter),
        absl::AbortedError(absl::StrCat(
            "step ", current, " of '", variable.name, "' block ", block.index,
            " was abandoned: its workers moved on to step ", target)));
  }
  sync.waiters.clear();
  sync.started = true;
  sync.next_step = target;
  sync.sum.clear();
  sync.workers.clear();
  sync.loss_sum = 0;
  sync.losses = 0;
  sync.ahead.clear();
  RaiseSyncStep(target);
  return push.step == target;
}

}  // namespace ps
