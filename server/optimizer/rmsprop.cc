#include "server/optimizer/rmsprop.h"

namespace ps::optimizer {

void RmsPropRule::Apply(FlatArray var, FlatArray square_avg,
                        std::optional<FlatArray> grad_avg,
                        std::optional<FlatArray> momentum_buffer, float lr,
                        double alpha_in, float eps, float momentum,
                        const GradientTransform& transform,
                        ConstFlatArray grad) {
  // 1 - alpha is rounded once from double, as torch does; 1.0f - 0.99f is
  // 1e-6 (relative) away from float(0.01).
  const float alpha = static_cast<float>(alpha_in);
  const float one_minus_alpha = static_cast<float>(1.0 - alpha_in);
  alignas(64) float scratch[kChunk];
  alignas(64) float denom_scratch[kChunk];
  ForEachChunk(var.size(), [&](Eigen::Index offset, Eigen::Index length) {
    TransformGradient(transform, grad, var, offset, length, scratch);
    Eigen::Map<const Eigen::ArrayXf> g(scratch, length);
    Eigen::Map<Eigen::ArrayXf> d(denom_scratch, length);
    auto p = var.segment(offset, length);
    auto v = square_avg.segment(offset, length);
    v = v * alpha + one_minus_alpha * g * g;
    if (grad_avg) {
      auto a = grad_avg->segment(offset, length);
      a = a * alpha + one_minus_alpha * g;
      d = (v - a * a).max(0.0f).sqrt() + eps;
    } else {
      d = v.sqrt() + eps;
    }
    if (momentum_buffer) {
      auto b = momentum_buffer->segment(offset, length);
      b = b * momentum + g / d;
      p += (-lr) * b;
    } else {
      p += (-lr) * g / d;
    }
  });
}

}  // namespace ps::optimizer
