// Plain SGD and Momentum (heavy ball, dampened, Nesterov).
//
// Symbols: p = var, g = grad (after clipping and L2 decay), b = momentum
// buffer, mu = momentum, tau = dampening, lr = the scheduled rate lr_t.
// Numbers follow torch.optim.SGD (1.13, single-tensor path).
//
// Thread safety: none; the caller holds the block's lock.
#ifndef PS_SERVER_OPTIMIZER_SGD_H_
#define PS_SERVER_OPTIMIZER_SGD_H_

#include "server/optimizer/kernel_util.h"

namespace ps::optimizer {

// p -= lr * g.
struct SgdRule {
  // REQUIRES: var and grad have the same size.
  static void Apply(FlatArray var, float lr, const GradientTransform& transform,
                    ConstFlatArray grad);
};

// b = g at the first step, else b = mu * b + (1 - tau) * g;
// u = g + mu * b (Nesterov) or u = b; p -= lr * u.
struct MomentumRule {
  // REQUIRES: var, buffer and grad have the same size.
  // `first_step` is true when buffer holds no history yet (t = 1).
  static void Apply(FlatArray var, FlatArray buffer, bool first_step, float lr,
                    float momentum, double dampening, bool nesterov,
                    const GradientTransform& transform, ConstFlatArray grad);
};

}  // namespace ps::optimizer

#endif  // PS_SERVER_OPTIMIZER_SGD_H_
