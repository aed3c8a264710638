// Eve's objective feedback (Koushik & Hayashi, arXiv:1611.01505v2, Alg. 1).
//
// Eve is Adam whose denominator is scaled by a feedback term d that grows
// when the objective moves a lot between steps. This header holds only the
// scalar part; the per-value part is AdamRule with AdamStep::feedback = d.
//
// Symbols: f = the reported loss minus loss_floor (f - f* in the paper),
// f_hat = the smoothed objective, d = the feedback, k and K = the clip
// thresholds, beta3 = the feedback's smoothing.
//
// Thread safety: none; the caller holds the block's lock.
#ifndef PS_SERVER_OPTIMIZER_EVE_H_
#define PS_SERVER_OPTIMIZER_EVE_H_

namespace ps::optimizer {

struct EveFeedbackState {
  double d = 1.0;
  double f_hat = 0.0;
  bool started = false;  // false until the first step has set f_hat
};

struct EveFeedback {
  // t = 1 (not started): f_hat = f, d = 1. Later: with delta, Delta =
  // (k + 1, K + 1) if f >= f_hat else (1 / (K + 1), 1 / (k + 1)),
  // c = min(max(delta, f / f_hat), Delta), f_hat' = c f_hat,
  // r = |f_hat' - f_hat| / min(f_hat', f_hat), d = beta3 d + (1 - beta3) r,
  // f_hat = f_hat'.
  // REQUIRES: f finite, f >= 0, and f > 0 when not started.
  static void Update(EveFeedbackState& state, double f, double beta3, double k,
                     double big_k);
};

}  // namespace ps::optimizer

#endif  // PS_SERVER_OPTIMIZER_EVE_H_
