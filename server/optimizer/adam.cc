#include "server/optimizer/adam.h"

#include <cmath>

namespace ps::optimizer {

AdamStep MakeAdamStep(double lr, double beta1, double beta2, double eps,
                      uint64_t t) {
  const double td = static_cast<double>(t);
  AdamStep step;
  step.beta1 = static_cast<float>(beta1);
  step.beta2 = static_cast<float>(beta2);
  step.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  step.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  step.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, td)));
  step.bias_correction2_sqrt =
      static_cast<float>(std::sqrt(1.0 - std::pow(beta2, td)));
  step.eps = static_cast<float>(eps);
  return step;
}

void AdamRule::Apply(FlatArray var, FlatArray m, FlatArray v,
                     std::optional<FlatArray> max_square_avg,
                     const AdamStep& step, const GradientTransform& transform,
                     ConstFlatArray grad) {
  alignas(64) float scratch[kChunk];
  ForEachChunk(var.size(), [&](Eigen::Index offset, Eigen::Index length) {
    auto p = var.segment(offset, length);
    if (step.decay_factor != 1.0f) p *= step.decay_factor;
    TransformGradient(transform, grad, var, offset, length, scratch);
    Eigen::Map<const Eigen::ArrayXf> g(scratch, length);
    auto mc = m.segment(offset, length);
    auto vc = v.segment(offset, length);
    mc = mc * step.beta1 + step.one_minus_beta1 * g;
    vc = vc * step.beta2 + step.one_minus_beta2 * g * g;
    // Eve's feedback multiplies sqrt(v_hat); for Adam it is 1, which is exact.
    if (max_square_avg) {
      auto w = max_square_avg->segment(offset, length);
      w = w.max(vc);
      p += (-step.step_size) * mc /
           (step.feedback * (w.sqrt() / step.bias_correction2_sqrt) +
            step.eps);
    } else {
      p += (-step.step_size) * mc /
           (step.feedback * (vc.sqrt() / step.bias_correction2_sqrt) +
            step.eps);
    }
  });
}

}  // namespace ps::optimizer
