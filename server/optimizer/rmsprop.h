// RMSProp: plain, centered, and with momentum.
//
// Symbols: p = var, g = grad (after clipping and L2 decay), v = square_avg,
// a = grad_avg (centered only), b = momentum buffer, alpha = smoothing,
// mu = momentum, d = the denominator sqrt(v - a^2) + eps or sqrt(v) + eps.
// Numbers follow torch.optim.RMSprop (1.13, single-tensor path), except that
// v - a^2 is clamped at 0 where rounding would make it negative (torch
// answers NaN there).
//
// Thread safety: none; the caller holds the block's lock.
#ifndef PS_SERVER_OPTIMIZER_RMSPROP_H_
#define PS_SERVER_OPTIMIZER_RMSPROP_H_

#include <optional>

#include "server/optimizer/kernel_util.h"
#include "server/optimizer/simd.h"

namespace ps::optimizer {

// v = alpha v + (1 - alpha) g^2; centered: a = alpha a + (1 - alpha) g;
// with momentum: b = mu b + g / d, p -= lr b; else p -= lr g / d.
struct RmsPropRule {
  // REQUIRES: every array has var's size; grad_avg is set iff centered;
  // momentum_buffer is set iff momentum > 0; SimdSupported(simd).
  static void Apply(FlatArray var, FlatArray square_avg,
                    std::optional<FlatArray> grad_avg,
                    std::optional<FlatArray> momentum_buffer, float lr,
                    double alpha, float eps, float momentum,
                    const GradientTransform& transform, ConstFlatArray grad,
                    Simd simd = BestSimd());
};

}  // namespace ps::optimizer

#endif  // PS_SERVER_OPTIMIZER_RMSPROP_H_
