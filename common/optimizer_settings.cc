#include "common/optimizer_settings.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace ps::optimizer {

double ScheduledLearningRate(double base_rate, const Schedule& schedule,
                             uint64_t t) {
  // e = t - 1 is torch's last_epoch after t - 1 scheduler steps.
  const double e = t == 0 ? 0.0 : static_cast<double>(t - 1);
  double rate = base_rate;
  switch (schedule.kind) {
    case Schedule::Kind::kConstant:
      break;
    case Schedule::Kind::kStep:
      rate = base_rate *
             std::pow(schedule.gamma, static_cast<double>((t == 0 ? 0 : t - 1) /
                                                          schedule.step_size));
      break;
    case Schedule::Kind::kExponential:
      rate = base_rate * std::pow(schedule.gamma, e);
      break;
    case Schedule::Kind::kCosine:
      rate = schedule.eta_min +
             (base_rate - schedule.eta_min) *
                 (1.0 + std::cos(std::numbers::pi * e /
                                 static_cast<double>(schedule.t_max))) /
                 2.0;
      break;
  }
  if (schedule.warmup_steps > 0) {
    rate *= std::min(1.0, static_cast<double>(t) /
                              static_cast<double>(schedule.warmup_steps));
  }
  return rate;
}

}  // namespace ps::optimizer
