#include "server/optimizer/update.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/optimizer/adagrad.h"
#include "server/optimizer/adam.h"
#include "server/optimizer/rmsprop.h"
#include "server/optimizer/sgd.h"

namespace ps::optimizer {
namespace {

// Sizes a slot to n values of `initial` unless it already holds n values.
// Returns true when the slot was (re)initialized.
bool EnsureSlot(std::vector<float>& slot, size_t n, float initial = 0.0f) {
  if (slot.size() == n) return false;
  slot.assign(n, initial);
  return true;
}

FlatArray Map(std::vector<float>& v) {
  return FlatArray(v.data(), static_cast<Eigen::Index>(v.size()));
}

// Values [offset, offset + length) of an array, as the kernels take them.
FlatArray Part(FlatArray a, Eigen::Index offset, Eigen::Index length) {
  return FlatArray(a.data() + offset, length);
}
ConstFlatArray Part(ConstFlatArray a, Eigen::Index offset,
                    Eigen::Index length) {
  return ConstFlatArray(a.data() + offset, length);
}
std::optional<FlatArray> Part(const std::optional<FlatArray>& a,
                              Eigen::Index offset, Eigen::Index length) {
  if (!a.has_value()) return std::nullopt;
  return Part(*a, offset, length);
}

// Applies one rule; the visitor's overloads mirror the RuleParams variant.
struct RuleStep {
  BlockOptimizerState& state;
  FlatArray var;
  ConstFlatArray grad;
  double lr;  // after the schedule
  double weight_decay;
  GradientTransform transform;
  std::optional<double> loss;
  std::optional<UpdatedValuesSink> sink;
  std::optional<GradientWidener> widen;  // set: `grad` is unused
  HelperThreads* helpers;                // may be null

  // Runs apply(offset, length, gradient of the chunk) over the block: at
  // once, or, with a sink, a widener or helpers, chunk by chunk (whole
  // kernel chunks, so every value takes the same code path as at once),
  // widening each chunk's gradient first and handing its new values to the
  // sink after. With helpers, a large block's ranges of kParallelValues run
  // as their tasks.
  template <typename Apply>
  void Run(Apply apply) {
    const Eigen::Index n = var.size();
    const auto range = static_cast<Eigen::Index>(kParallelValues);
    const bool parallel = helpers != nullptr && helpers->helpers() > 0 &&
                          n >= static_cast<Eigen::Index>(kParallelMinValues);
    if (!sink.has_value() && !widen.has_value() && !parallel) {
      apply(0, n, grad);
      return;
    }
    if (!parallel) {
      RunChunks(apply, 0, n);
      return;
    }
    const auto ranges = static_cast<size_t>((n + range - 1) / range);
    helpers->Run(ranges, [&](size_t i) {
      const auto begin = static_cast<Eigen::Index>(i) * range;
      RunChunks(apply, begin, std::min(n, begin + range));
    });
  }

  // Run's chunk loop over [begin, end), which starts at a chunk boundary.
  template <typename Apply>
  void RunChunks(Apply& apply, Eigen::Index begin, Eigen::Index end) {
    static_assert(kSinkChunk % kChunk == 0);
    static_assert(kParallelValues % kSinkChunk == 0);
    const auto chunk = static_cast<Eigen::Index>(kSinkChunk);
    alignas(64) float widened[kSinkChunk];
    for (Eigen::Index offset = begin; offset < end; offset += chunk) {
      const Eigen::Index length = std::min(chunk, end - offset);
      if (widen.has_value()) {
        (*widen)(static_cast<size_t>(offset),
                 std::span<float>(widened, static_cast<size_t>(length)));
        apply(offset, length, ConstFlatArray(widened, length));
      } else {
        apply(offset, length, Part(grad, offset, length));
      }
      if (sink.has_value()) {
        (*sink)(static_cast<size_t>(offset),
                std::span<const float>(var.data() + offset,
                                       static_cast<size_t>(length)));
      }
    }
  }

  void operator()(const SgdParams&) {
    Run([&](Eigen::Index o, Eigen::Index n, ConstFlatArray g) {
      SgdRule::Apply(Part(var, o, n), static_cast<float>(lr), transform, g);
    });
  }

  void operator()(const MomentumParams& p) {
    const bool first = EnsureSlot(state.momentum, var.size());
    Run([&](Eigen::Index o, Eigen::Index n, ConstFlatArray g) {
      MomentumRule::Apply(Part(var, o, n), Part(Map(state.momentum), o, n),
                          first, static_cast<float>(lr),
                          static_cast<float>(p.momentum), p.dampening,
                          p.nesterov, transform, g);
    });
  }

  void operator()(const AdagradParams& p) {
    EnsureSlot(state.square_avg, var.size(),
               static_cast<float>(p.initial_accumulator_value));
    const double clr =
        lr / (1.0 + static_cast<double>(state.step - 1) * p.lr_decay);
    Run([&](Eigen::Index o, Eigen::Index n, ConstFlatArray g) {
      AdagradRule::Apply(Part(var, o, n), Part(Map(state.square_avg), o, n),
                         static_cast<float>(clr), static_cast<float>(p.eps),
                         transform, g);
    });
  }

  void operator()(const RmsPropParams& p) {
    EnsureSlot(state.square_avg, var.size());
    std::optional<FlatArray> grad_avg, buffer;
    if (p.centered) {
      EnsureSlot(state.grad_avg, var.size());
      grad_avg = Map(state.grad_avg);
    }
    if (p.momentum > 0) {
      EnsureSlot(state.momentum, var.size());
      buffer = Map(state.momentum);
    }
    Run([&](Eigen::Index o, Eigen::Index n, ConstFlatArray g) {
      RmsPropRule::Apply(Part(var, o, n), Part(Map(state.square_avg), o, n),
                         Part(grad_avg, o, n), Part(buffer, o, n),
                         static_cast<float>(lr), p.alpha,
                         static_cast<float>(p.eps),
                         static_cast<float>(p.momentum), transform, g);
    });
  }

  void operator()(const AdamParams& p) {
    AdamStep step = MakeAdamStep(lr, p.beta1, p.beta2, p.eps, state.step);
    if (p.decoupled_weight_decay) {
      step.decay_factor = static_cast<float>(1.0 - lr * weight_decay);
      transform.weight_decay = 0.0f;
    }
    RunAdam(step, p.amsgrad);
  }

  void operator()(const EveParams& p) {
    EveFeedback::Update(state.eve, *loss - p.loss_floor, p.beta3, p.k, p.big_k);
    AdamStep step = MakeAdamStep(lr, p.beta1, p.beta2, p.eps, state.step);
    step.feedback = static_cast<float>(state.eve.d);
    RunAdam(step, /*amsgrad=*/false);
  }

  void RunAdam(const AdamStep& step, bool amsgrad) {
    EnsureSlot(state.momentum, var.size());
    EnsureSlot(state.square_avg, var.size());
    std::optional<FlatArray> max_square_avg;
    if (amsgrad) {
      EnsureSlot(state.max_square_avg, var.size());
      max_square_avg = Map(state.max_square_avg);
    }
    Run([&](Eigen::Index o, Eigen::Index n, ConstFlatArray g) {
      AdamRule::Apply(Part(var, o, n), Part(Map(state.momentum), o, n),
                      Part(Map(state.square_avg), o, n),
                      Part(max_square_avg, o, n), step, transform, g);
    });
  }
};

// The slots of BlockOptimizerState with their bits.
struct SlotRef {
  StateSlots bit;
  std::vector<float> BlockOptimizerState::*slot;
};
constexpr SlotRef kSlots[] = {
    {kMomentumSlot, &BlockOptimizerState::momentum},
    {kSquareAvgSlot, &BlockOptimizerState::square_avg},
    {kGradAvgSlot, &BlockOptimizerState::grad_avg},
    {kMaxSquareAvgSlot, &BlockOptimizerState::max_square_avg},
};

}  // namespace

StateSlots HeldSlots(const BlockOptimizerState& state) {
  StateSlots held = 0;
  for (const SlotRef& ref : kSlots) {
    if (!(state.*ref.slot).empty()) held |= ref.bit;
  }
  return held;
}

void ReleaseSlots(StateSlots keep, BlockOptimizerState& state) {
  for (const SlotRef& ref : kSlots) {
    if (!(keep & ref.bit)) std::vector<float>().swap(state.*ref.slot);
  }
}

absl::Status CheckUpdate(const OptimizerSettings& settings,
                         const BlockOptimizerState& state,
                         std::optional<double> loss) {
  const auto* eve = std::get_if<EveParams>(&settings.rule);
  if (eve == nullptr) return absl::OkStatus();
  if (!loss.has_value()) {
    return absl::InvalidArgumentError(
        "the Eve optimizer needs the loss: set PushRequest.loss");
  }
  if (!std::isfinite(*loss)) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss ", *loss, " is not finite"));
  }
  if (*loss < eve->loss_floor) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss ", *loss, " is below Eve's loss_floor ",
                     eve->loss_floor, "; lower eve.loss_floor"));
  }
  if (!state.eve.started && *loss == eve->loss_floor) {
    return absl::InvalidArgumentError(
        absl::StrCat("the first loss Eve sees must be above loss_floor ",
                     eve->loss_floor, " (Eve divides by it); got ", *loss));
  }
  return absl::OkStatus();
}

namespace {

// Adds the squares of `grad` to *sum, in order, in double.
void AddSquares(std::span<const float> grad, double* sum) {
  for (float g : grad) *sum += static_cast<double>(g) * g;
}

float ClipFactorOf(double sum_of_squares, double clip_norm) {
  const float norm = static_cast<float>(std::sqrt(sum_of_squares));
  const float factor = static_cast<float>(clip_norm) / (norm + 1e-6f);
  return factor < 1.0f ? factor : 1.0f;
}

void Update(const OptimizerSettings& settings, BlockOptimizerState& state,
            std::span<float> values, float clip_factor,
            std::span<const float> grad, std::optional<GradientWidener> widen,
            std::optional<double> loss, std::optional<UpdatedValuesSink> sink,
            HelperThreads* helpers) {
  GradientTransform transform;
  transform.scale = clip_factor;
  transform.weight_decay = static_cast<float>(settings.weight_decay);
  RuleStep step{
      .state = state,
      .var = FlatArray(values.data(), static_cast<Eigen::Index>(values.size())),
      .grad =
          ConstFlatArray(grad.data(), static_cast<Eigen::Index>(grad.size())),
      .lr = ScheduledLearningRate(settings.learning_rate, settings.schedule,
                                  state.step),
      .weight_decay = settings.weight_decay,
      .transform = transform,
      .loss = loss,
      .sink = sink,
      .widen = widen,
      .helpers = helpers,
  };
  std::visit(step, settings.rule);
}

}  // namespace

float ClipFactor(std::span<const float> grad, double clip_norm) {
  double sum = 0.0;
  AddSquares(grad, &sum);
  return ClipFactorOf(sum, clip_norm);
}

void ApplyUpdate(const OptimizerSettings& settings, BlockOptimizerState& state,
                 std::span<float> values, std::span<const float> grad,
                 std::optional<double> loss,
                 std::optional<UpdatedValuesSink> sink,
                 HelperThreads* helpers) {
  ++state.step;
  const float clip_factor = settings.clip_norm.has_value()
                                ? ClipFactor(grad, *settings.clip_norm)
                                : 1.0f;
  Update(settings, state, values, clip_factor, grad, std::nullopt, loss, sink,
         helpers);
}

void ApplyUpdate(const OptimizerSettings& settings, BlockOptimizerState& state,
                 std::span<float> values, GradientWidener widen,
                 std::optional<double> loss,
                 std::optional<UpdatedValuesSink> sink,
                 HelperThreads* helpers) {
  ++state.step;
  float clip_factor = 1.0f;
  if (settings.clip_norm.has_value()) {
    // The same sum, in the same order, as ClipFactor over the whole block.
    double sum = 0.0;
    alignas(64) float chunk[kSinkChunk];
    for (size_t offset = 0; offset < values.size(); offset += kSinkChunk) {
      const std::span<float> out(chunk,
                                 std::min(kSinkChunk, values.size() - offset));
      widen(offset, out);
      AddSquares(out, &sum);
    }
    clip_factor = ClipFactorOf(sum, *settings.clip_norm);
  }
  Update(settings, state, values, clip_factor, {}, widen, loss, sink, helpers);
}

}  // namespace ps::optimizer
