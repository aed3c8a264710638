// Adagrad.
//
// Symbols: p = var, g = grad (after clipping and L2 decay), s = sum of
// squared gradients, clr = lr_t / (1 + (t - 1) * lr_decay).
// Numbers follow torch.optim.Adagrad (1.13, single-tensor path).
//
// Thread safety: none; the caller holds the block's lock.
#ifndef PS_SERVER_OPTIMIZER_ADAGRAD_H_
#define PS_SERVER_OPTIMIZER_ADAGRAD_H_

#include "server/optimizer/kernel_util.h"
#include "server/optimizer/simd.h"

namespace ps::optimizer {

// s += g^2; p -= clr * g / (sqrt(s) + eps).
struct AdagradRule {
  // REQUIRES: var, sum and grad have the same size; SimdSupported(simd).
  static void Apply(FlatArray var, FlatArray sum, float clr, float eps,
                    const GradientTransform& transform, ConstFlatArray grad,
                    Simd simd = BestSimd());
};

}  // namespace ps::optimizer

#endif  // PS_SERVER_OPTIMIZER_ADAGRAD_H_
