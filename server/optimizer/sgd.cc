#include "server/optimizer/sgd.h"

namespace ps::optimizer {

void SgdRule::Apply(FlatArray var, float lr, const GradientTransform& transform,
                    ConstFlatArray grad) {
  alignas(64) float scratch[kChunk];
  ForEachChunk(var.size(), [&](Eigen::Index offset, Eigen::Index length) {
    TransformGradient(transform, grad, var, offset, length, scratch);
    Eigen::Map<const Eigen::ArrayXf> g(scratch, length);
    auto p = var.segment(offset, length);
    p += (-lr) * g;
  });
}

void MomentumRule::Apply(FlatArray var, FlatArray buffer, bool first_step,
                         float lr, float momentum, double dampening,
                         bool nesterov, const GradientTransform& transform,
                         ConstFlatArray grad) {
  // 1 - tau, rounded once from double as torch does (1.0f - 0.9f is 2e-7
  // relative away from float(0.1)).
  const float keep = static_cast<float>(1.0 - dampening);
  alignas(64) float scratch[kChunk];
  ForEachChunk(var.size(), [&](Eigen::Index offset, Eigen::Index length) {
    TransformGradient(transform, grad, var, offset, length, scratch);
    Eigen::Map<const Eigen::ArrayXf> g(scratch, length);
    auto p = var.segment(offset, length);
    auto b = buffer.segment(offset, length);
    if (first_step) {
      b = g;
    } else {
      b = b * momentum + keep * g;
    }
    if (nesterov) {
      p += (-lr) * (g + momentum * b);
    } else {
      p += (-lr) * b;
    }
  });
}

}  // namespace ps::optimizer
