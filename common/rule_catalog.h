// Everything the project knows of each update rule besides its kernel, one
// descriptor per rule: its name, its message in OptimizerConfig (resolved
// into its settings, validated, with torch's defaults), the optimizer slots
// it allocates, and what each slot means, which decides what a live switch
// to another rule keeps (docs/optimizers.md). The store, the config code,
// psctl's help and the benchmarks all read the table, so a new rule is its
// kernel (server/optimizer/), its settings struct in the RuleParams variant
// (common/optimizer_settings.h), its proto message, and its row here.
//
// Thread safety: the table is immutable.
#ifndef PS_COMMON_RULE_CATALOG_H_
#define PS_COMMON_RULE_CATALOG_H_

#include <array>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/optimizer_settings.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps::optimizer {

// What a slot's values are. A switch keeps a slot only between two rules
// that mean the same by it.
enum class SlotMeaning {
  kUnused,          // the rule does not use the slot
  kGradientMean,    // a running mean of g: Momentum's buffer, Adam's m
  kScaledGradient,  // RMSProp's momentum buffer: a running mean of g / d
  kSquareMean,      // a running mean of g^2: RMSProp's and Adam's v
  kSquareSum,       // Adagrad's sum of g^2
  kOwn,             // meaningful to its rule alone (AMSGrad's max of v,
                    // centered RMSProp's mean of g)
};

// The slots in the order of their bits (kMomentumSlot, kSquareAvgSlot,
// kGradAvgSlot, kMaxSquareAvgSlot).
inline constexpr std::array<StateSlots, 4> kSlotBits = {
    kMomentumSlot, kSquareAvgSlot, kGradAvgSlot, kMaxSquareAvgSlot};

struct RuleDescriptor {
  // As psctl, GetStats and the logs say it.
  std::string_view name;
  // The case of OptimizerConfig's oneof `rule` that selects it.
  v1::OptimizerConfig::RuleCase config_case;
  // The learning rate when the config sets none (torch's default).
  double default_learning_rate;
  // The rule's settings from its message in `config`, validated, unset
  // fields taking torch's defaults; INVALID_ARGUMENT naming the field.
  absl::StatusOr<RuleParams> (*resolve)(const v1::OptimizerConfig& config);
  // The slots an update allocates under `params` (each as many values as
  // the block): what a block under the rule holds once updated.
  StateSlots (*slots)(const RuleParams& params);
  // What each slot means, by kSlotBits' order.
  std::array<SlotMeaning, 4> meanings;
};

// Every rule, in the order of the RuleParams variant.
std::span<const RuleDescriptor> Rules();

// The descriptor of `rule`'s rule.
const RuleDescriptor& DescriptorOf(const RuleParams& rule);

// The descriptor of the rule a config names, or null for none.
const RuleDescriptor* DescriptorFor(v1::OptimizerConfig::RuleCase config_case);

// Shorthands: DescriptorOf(rule).name and .slots(rule).
std::string_view RuleName(const RuleParams& rule);
StateSlots SlotsOf(const RuleParams& rule);

}  // namespace ps::optimizer

#endif  // PS_COMMON_RULE_CATALOG_H_
