// Turns psctl's command-line values into OptimizerConfig changes.
//
// Which flag belongs to which rule or schedule is decided here, so that a
// flag that the rule does not use is refused instead of silently ignored.
#ifndef PS_CLIENT_PSCTL_CONFIG_BUILDER_H_
#define PS_CLIENT_PSCTL_CONFIG_BUILDER_H_

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps::psctl {

// The hyper-parameters given on the command line; unset = not given.
struct RuleValues {
  std::optional<double> lr;
  std::optional<double> weight_decay;
  std::optional<double> clip_norm;
  std::optional<double> momentum;
  std::optional<double> dampening;
  bool nesterov = false;
  std::optional<double> initial_accumulator_value;
  std::optional<double> eps;
  std::optional<double> lr_decay;
  std::optional<double> alpha;
  bool centered = false;
  std::optional<double> beta1;
  std::optional<double> beta2;
  bool amsgrad = false;
  bool decoupled_weight_decay = false;
  std::optional<double> beta3;
  std::optional<double> k;
  std::optional<double> big_k;
  std::optional<double> loss_floor;
};

// The schedule values given on the command line; unset = not given.
struct ScheduleValues {
  std::optional<uint64_t> step_size;
  std::optional<double> gamma;
  std::optional<uint64_t> t_max;
  std::optional<double> eta_min;
  std::optional<uint64_t> warmup_steps;
};

// sgd, momentum, adagrad, rmsprop, adam, eve.
const std::vector<std::string>& RuleNames();

// The flags (without "--") that `optimizer set RULE` accepts besides the
// global ones: the shared lr, weight_decay, clip_norm, var, reset_state, then
// the rule's own. Empty for an unknown rule.
std::vector<std::string> RuleFlags(const std::string& rule);

// Every hyper-parameter flag of every rule (the union of RuleFlags).
std::set<std::string> AllRuleFlags();

// The flags `schedule set KIND` accepts (besides the global ones and var).
// Empty for an unknown kind.
std::vector<std::string> ScheduleFlags(const std::string& kind);

// Every schedule flag.
std::set<std::string> AllScheduleFlags();

// The config `optimizer set RULE` sends (schedule left empty): the rule
// with the given values; unset ones take the server's defaults.
// INVALID_ARGUMENT for an unknown rule.
absl::StatusOr<v1::OptimizerConfig> BuildRuleConfig(const std::string& rule,
                                                    const RuleValues& values);

// The schedule `schedule set KIND` sends. INVALID_ARGUMENT for an unknown
// kind or a missing required value (step: --step_size; exponential:
// --gamma; cosine: --t_max). Step's gamma defaults to torch's 0.1.
absl::StatusOr<v1::LearningRateSchedule> BuildSchedule(
    const std::string& kind, const ScheduleValues& values);

// The rule's name in a config ("sgd", ...; "none" when unset).
std::string RuleOf(const v1::OptimizerConfig& config);

}  // namespace ps::psctl

#endif  // PS_CLIENT_PSCTL_CONFIG_BUILDER_H_
