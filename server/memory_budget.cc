#include "server/memory_budget.h"

#include <bit>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ps {

uint64_t MemoryBudget::ArrayBytes(EntryShape shape,
                                  optimizer::StateSlots slots) const {
  const uint64_t arrays = 1 + std::popcount(slots) + (sync_ ? 1 : 0);
  return shape.values * arrays * sizeof(float);
}

uint64_t MemoryBudget::BookkeepingBytes() const {
  const int64_t records = applied_records_.load(std::memory_order_relaxed);
  return block_bytes_.load(std::memory_order_relaxed) +
         static_cast<uint64_t>(std::max<int64_t>(records, 0)) *
             kAppliedRecordBytes +
         sessions_.load(std::memory_order_relaxed) * kSessionBytes;
}

absl::Status MemoryBudget::Check(uint64_t more, absl::string_view what,
                                 uint32_t shard_index) const {
  const uint64_t limit = limit_bytes_;
  const uint64_t charged = StateBytes() + BookkeepingBytes();
  if (limit == 0 || (charged <= limit && more <= limit - charged)) {
    return absl::OkStatus();
  }
  auto mib = [](uint64_t bytes) {
    if (bytes < (1 << 20)) return absl::StrCat(bytes, " bytes");
    return absl::StrFormat("%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  };
  return absl::ResourceExhaustedError(absl::StrCat(
      what, " needs ", mib(more),
      " more for values, optimizer state and bookkeeping on shard ",
      shard_index, ", which holds ", mib(charged), " of its limit of ",
      mib(limit),
      "; add shards, choose a rule with less state, or raise ps_server's "
      "--memory_limit_mb"));
}

absl::Status MemoryBudget::ReserveTableBytes(uint64_t bytes,
                                             absl::string_view what,
                                             uint32_t shard_index) {
  absl::MutexLock lock(&table_mu_);
  if (absl::Status fits = Check(bytes, what, shard_index); !fits.ok()) {
    return fits;
  }
  state_bytes_.fetch_add(bytes, std::memory_order_relaxed);
  return absl::OkStatus();
}

void MemoryBudget::Charge(const std::string& name, EntryShape shape,
                          optimizer::StateSlots slots) {
  absl::MutexLock lock(&mu_);
  auto it = charges_.find(name);
  if (it != charges_.end()) {
    state_bytes_ -= ArrayBytes(it->second.shape, it->second.slots);
    block_bytes_ -= BlockBytes(it->second.shape);
  }
  charges_[name] = Charged{shape, slots};
  state_bytes_ += ArrayBytes(shape, slots);
  block_bytes_ += BlockBytes(shape);
}

void MemoryBudget::Drop(const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto it = charges_.find(name);
  if (it == charges_.end()) return;
  state_bytes_ -= ArrayBytes(it->second.shape, it->second.slots);
  block_bytes_ -= BlockBytes(it->second.shape);
  charges_.erase(it);
}

optimizer::StateSlots MemoryBudget::SlotsOf(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = charges_.find(name);
  return it == charges_.end() ? 0 : it->second.slots;
}

EntryShape MemoryBudget::ShapeOf(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = charges_.find(name);
  return it == charges_.end() ? EntryShape() : it->second.shape;
}

}  // namespace ps
