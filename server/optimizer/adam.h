// Adam, AMSGrad and AdamW; also the moment update that Eve shares.
//
// Symbols: p = var, g = grad (after clipping and, unless decoupled, L2
// decay), m = first moment, v = second moment, w = running max of v
// (AMSGrad), bc1 = 1 - beta1^t, bc2 = 1 - beta2^t, d = Eve's feedback
// (1 for Adam). The step is
//   p -= (lr_t / bc1) * m / (d * sqrt(v) / sqrt(bc2) + eps).
// Numbers follow torch.optim.Adam / AdamW (1.13, single-tensor path).
//
// Thread safety: none; the caller holds the block's lock.
#ifndef PS_SERVER_OPTIMIZER_ADAM_H_
#define PS_SERVER_OPTIMIZER_ADAM_H_

#include <optional>

#include "server/optimizer/kernel_util.h"
#include "server/optimizer/simd.h"

namespace ps::optimizer {

// Per-call scalars, computed once per block update.
struct AdamStep {
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float one_minus_beta1 = 0.1f;        // 1 - beta1, rounded once from double
  float one_minus_beta2 = 0.001f;      // 1 - beta2
  float step_size = 0.0f;              // lr_t / bc1
  float bias_correction2_sqrt = 1.0f;  // sqrt(bc2)
  float eps = 1e-8f;
  float feedback = 1.0f;      // Eve's d; 1 for Adam
  float decay_factor = 1.0f;  // AdamW: 1 - lr_t * weight_decay; else 1
};

// Builds the per-call scalars for step t (1-based).
AdamStep MakeAdamStep(double lr, double beta1, double beta2, double eps,
                      uint64_t t);

// m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
// AMSGrad: w = max(w, v) and w replaces v in the step.
struct AdamRule {
  // REQUIRES: every array has var's size; max_square_avg is set iff AMSGrad;
  // SimdSupported(simd).
  static void Apply(FlatArray var, FlatArray m, FlatArray v,
                    std::optional<FlatArray> max_square_avg,
                    const AdamStep& step, const GradientTransform& transform,
                    ConstFlatArray grad, Simd simd = BestSimd());
};

}  // namespace ps::optimizer

#endif  // PS_SERVER_OPTIMIZER_ADAM_H_
