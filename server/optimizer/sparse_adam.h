// torch.optim.SparseAdam on the rows of a sparse table, in place.
//
// Per value, in float32 and in torch's order of operations (1.13,
// torch/optim/_functional.py, sparse_adam):
//   u_m = (g - m) (1 - b1); m += u_m; u_v = (g^2 - v) (1 - b2); v += u_v;
//   p += -(lr sqrt(bc2) / bc1) ((u_m + m_old) / (sqrt(u_v + v_old) + eps)).
// A row of each array is `n` contiguous floats, so the update runs on the
// table's own memory: nothing is gathered or scattered.
//
// Thread safety: none; the caller holds the turn of the rows' stripe
// (SparseTable::Run).
#ifndef PS_SERVER_OPTIMIZER_SPARSE_ADAM_H_
#define PS_SERVER_OPTIMIZER_SPARSE_ADAM_H_

#include <cstddef>
#include <cstdint>

#include "common/optimizer_settings.h"
#include "server/optimizer/simd.h"

namespace ps::optimizer {

class SparseAdamStep {
 public:
  // Whether `settings` are SparseAdam's numbers: plain Adam without weight
  // decay, clipping, AMSGrad or decoupled decay.
  static bool Applies(const OptimizerSettings& settings);

  // The step for t = state_step + 1.
  // REQUIRES: Applies(settings); SimdSupported(simd).
  SparseAdamStep(const OptimizerSettings& settings, uint64_t state_step,
                 Simd simd = BestSimd());

  // Updates one row: `n` values, their m and v, with its gradient. Returns
  // whether the values stayed finite. Every Simd gives the same bits.
  // REQUIRES: the four arrays do not overlap.
  bool Row(float* values, float* m, float* v, const float* grad,
           size_t n) const;

 private:
  float neg_step_;
  float one_minus_beta1_;
  float one_minus_beta2_;
  float eps_;
  Simd simd_;
};

}  // namespace ps::optimizer

#endif  // PS_SERVER_OPTIMIZER_SPARSE_ADAM_H_
