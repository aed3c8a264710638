#include "server/optimizer/update.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

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

  // Runs apply(offset, length) over the block: at once, or with a sink,
  // chunk by chunk (whole kernel chunks, so every value takes the same code
  // path as at once), handing each chunk's new values to the sink.
  template <typename Apply>
  void Run(Apply apply) {
    const Eigen::Index n = var.size();
    if (!sink.has_value()) {
      apply(0, n);
      return;
    }
    static_assert(kSinkChunk % kChunk == 0);
    const auto chunk = static_cast<Eigen::Index>(kSinkChunk);
    for (Eigen::Index offset = 0; offset < n; offset += chunk) {
      const Eigen::Index length = std::min(chunk, n - offset);
      apply(offset, length);
      (*sink)(static_cast<size_t>(offset),
              std::span<const float>(var.data() + offset,
                                     static_cast<size_t>(length)));
    }
  }

  void operator()(const SgdParams&) {
    Run([&](Eigen::Index o, Eigen::Index n) {
      SgdRule::Apply(Part(var, o, n), static_cast<float>(lr), transform,
                     Part(grad, o, n));
    });
  }

  void operator()(const MomentumParams& p) {
    const bool first = EnsureSlot(state.momentum, var.size());
    Run([&](Eigen::Index o, Eigen::Index n) {
      MomentumRule::Apply(Part(var, o, n), Part(Map(state.momentum), o, n),
                          first, static_cast<float>(lr),
                          static_cast<float>(p.momentum), p.dampening,
                          p.nesterov, transform, Part(grad, o, n));
    });
  }

  void operator()(const AdagradParams& p) {
    EnsureSlot(state.square_avg, var.size(),
               static_cast<float>(p.initial_accumulator_value));
    const double clr =
        lr / (1.0 + static_cast<double>(state.step - 1) * p.lr_decay);
    Run([&](Eigen::Index o, Eigen::Index n) {
      AdagradRule::Apply(Part(var, o, n), Part(Map(state.square_avg), o, n),
                         static_cast<float>(clr), static_cast<float>(p.eps),
                         transform, Part(grad, o, n));
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
    Run([&](Eigen::Index o, Eigen::Index n) {
      RmsPropRule::Apply(
          Part(var, o, n), Part(Map(state.square_avg), o, n),
          Part(grad_avg, o, n), Part(buffer, o, n), static_cast<float>(lr),
          p.alpha, static_cast<float>(p.eps), static_cast<float>(p.momentum),
          transform, Part(grad, o, n));
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
    Run([&](Eigen::Index o, Eigen::Index n) {
      AdamRule::Apply(Part(var, o, n), Part(Map(state.momentum), o, n),
                      Part(Map(state.square_avg), o, n),
                      Part(max_square_avg, o, n), step, transform,
                      Part(grad, o, n));
    });
  }
};

}  // namespace

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

float ClipFactor(std::span<const float> grad, double clip_norm) {
  double sum = 0.0;
  for (float g : grad) sum += static_cast<double>(g) * g;
  const float norm = static_cast<float>(std::sqrt(sum));
  const float factor = static_cast<float>(clip_norm) / (norm + 1e-6f);
  return factor < 1.0f ? factor : 1.0f;
}

void ApplyUpdate(const OptimizerSettings& settings, BlockOptimizerState& state,
                 std::span<float> values, std::span<const float> grad,
                 std::optional<double> loss,
                 std::optional<UpdatedValuesSink> sink) {
  ++state.step;
  GradientTransform transform;
  if (settings.clip_norm.has_value()) {
    transform.scale = ClipFactor(grad, *settings.clip_norm);
  }
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
  };
  std::visit(step, settings.rule);
}

}  // namespace ps::optimizer
