#include "server/optimizer/adagrad.h"

namespace ps::optimizer {

void AdagradRule::Apply(FlatArray var, FlatArray sum, float clr, float eps,
                        const GradientTransform& transform,
                        ConstFlatArray grad) {
  alignas(64) float scratch[kChunk];
  ForEachChunk(var.size(), [&](Eigen::Index offset, Eigen::Index length) {
    TransformGradient(transform, grad, var, offset, length, scratch);
    Eigen::Map<const Eigen::ArrayXf> g(scratch, length);
    auto p = var.segment(offset, length);
    auto s = sum.segment(offset, length);
    s += g * g;
    p += (-clr) * g / (s.sqrt() + eps);
  });
}

}  // namespace ps::optimizer
