#include "server/optimizer/eve.h"

#include <algorithm>
#include <cmath>

namespace ps::optimizer {

void EveFeedback::Update(EveFeedbackState& state, double f, double beta3,
                         double k, double big_k) {
  if (!state.started) {
    state.f_hat = f;
    state.d = 1.0;
    state.started = true;
    return;
  }
  double delta, big_delta;
  if (f >= state.f_hat) {
    delta = k + 1.0;
    big_delta = big_k + 1.0;
  } else {
    delta = 1.0 / (big_k + 1.0);
    big_delta = 1.0 / (k + 1.0);
  }
  const double c = std::min(std::max(delta, f / state.f_hat), big_delta);
  const double f_hat_new = c * state.f_hat;
  const double r =
      std::abs(f_hat_new - state.f_hat) / std::min(f_hat_new, state.f_hat);
  state.d = beta3 * state.d + (1.0 - beta3) * r;
  state.f_hat = f_hat_new;
}

}  // namespace ps::optimizer
