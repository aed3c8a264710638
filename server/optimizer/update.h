// One optimizer step on one block: the plumbing around the kernels.
//
// The store calls CheckUpdate, then ApplyUpdate, while it holds the block's
// lock. CheckUpdate is the only place here that produces error text; the
// kernels it dispatches to never fail.
#ifndef PS_SERVER_OPTIMIZER_UPDATE_H_
#define PS_SERVER_OPTIMIZER_UPDATE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "common/optimizer_settings.h"
#include "server/optimizer/eve.h"
#include "server/optimizer/helper_threads.h"

namespace ps::optimizer {

// The optimizer state of one block. Slots are allocated on the first update
// by a rule that needs them and keep their meaning across rules:
//   momentum       Momentum's buffer b; RMSProp's momentum buffer;
//                  Adam's and Eve's first moment m
//   square_avg     Adagrad's sum s; RMSProp's, Adam's and Eve's second
//                  moment v
//   grad_avg       centered RMSProp's mean gradient a
//   max_square_avg AMSGrad's running max w of v
struct BlockOptimizerState {
  uint64_t step = 0;  // t: the number of updates applied to the block
  std::vector<float> momentum;
  std::vector<float> square_avg;
  std::vector<float> grad_avg;
  std::vector<float> max_square_avg;
  EveFeedbackState eve;
};

// The slots that hold values.
StateSlots HeldSlots(const BlockOptimizerState& state);

// Frees the memory of every slot not in `keep`; a freed slot starts afresh
// when a rule needs it again.
void ReleaseSlots(StateSlots keep, BlockOptimizerState& state);

// Refuses an update that the rule cannot take, before anything changes:
// for Eve, a missing, non-finite or below-floor loss, or a first loss equal
// to the floor (INVALID_ARGUMENT).
absl::Status CheckUpdate(const OptimizerSettings& settings,
                         const BlockOptimizerState& state,
                         std::optional<double> loss);

// Receives the block's values after an update in consecutive chunks
// (offset into the block, the chunk's values), each as soon as the update
// has written it, while it is still in cache. With helper threads, ranges
// of chunks run on several threads at once: each chunk comes once, in order
// within its range.
using UpdatedValuesSink =
    absl::FunctionRef<void(size_t offset, std::span<const float> values)>;

// Writes gradient values [offset, offset + out.size()) of a block as
// float32 into `out`, e.g. widened from a 16-bit encoding. Called from
// several threads at once for different chunks when the update has helpers.
using GradientWidener =
    absl::FunctionRef<void(size_t offset, std::span<float> out)>;

// Values per chunk when an update runs chunk by chunk (the last may be
// shorter).
inline constexpr size_t kSinkChunk = 4096;

// With helper threads, a block of at least kParallelMinValues values (two
// ranges or more) is updated in ranges of kParallelValues (whole chunks), run
// at once: about 25 us of Adam each, well above the cost of handing one out.
inline constexpr size_t kParallelValues = 8 * kSinkChunk;
inline constexpr size_t kParallelMinValues = 2 * kParallelValues;

// Clips the gradient (per block), adds weight decay, runs the rule and
// advances state.step. With a sink, the rule runs chunk by chunk and each
// chunk of new values goes to the sink; the numbers are the same. The sink
// may overwrite the gradient of the chunks it has received (not later ones).
// With `helpers`, a large block's ranges of chunks run on the helpers that
// are free as well as on the calling thread; the numbers are the same.
// REQUIRES: CheckUpdate returned OK; values.size() == grad.size(); every
// gradient value is finite.
void ApplyUpdate(const OptimizerSettings& settings, BlockOptimizerState& state,
                 std::span<float> values, std::span<const float> grad,
                 std::optional<double> loss,
                 std::optional<UpdatedValuesSink> sink = std::nullopt,
                 HelperThreads* helpers = nullptr);

// The same with a gradient that `widen` produces chunk by chunk (into a
// buffer on the stack) instead of a float32 array: no block-sized copy of
// it is made. With clipping, the gradient is widened twice (once for its
// norm). The numbers are those of the form above on the widened gradient.
// REQUIRES: as above, for the widened values.
void ApplyUpdate(const OptimizerSettings& settings, BlockOptimizerState& state,
                 std::span<float> values, GradientWidener widen,
                 std::optional<double> loss,
                 std::optional<UpdatedValuesSink> sink = std::nullopt,
                 HelperThreads* helpers = nullptr);

// The factor torch's clip_grad_norm_ would scale this gradient by:
// min(1, clip_norm / (||g||_2 + 1e-6)), in float32 as torch computes it.
float ClipFactor(std::span<const float> grad, double clip_norm);

}  // namespace ps::optimizer

#endif  // PS_SERVER_OPTIMIZER_UPDATE_H_
