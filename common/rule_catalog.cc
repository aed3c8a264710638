#include "common/rule_catalog.h"

#include <variant>

#include "absl/strings/str_cat.h"
#include "common/config_checks.h"
#include "common/status.h"

namespace ps::optimizer {
namespace {

using config_checks::kFloatMax;
using config_checks::RequireAtLeast;
using config_checks::RequireBetween;
using config_checks::RequireFraction;
using config_checks::RequirePositive;

constexpr SlotMeaning kUnused = SlotMeaning::kUnused;

// ---- SGD: no state.

absl::StatusOr<RuleParams> ResolveSgd(const v1::OptimizerConfig&) {
  return SgdParams{};
}
StateSlots SgdSlots(const RuleParams&) { return 0; }

// ---- Momentum: buffer b.

absl::StatusOr<RuleParams> ResolveMomentum(const v1::OptimizerConfig& config) {
  const v1::Momentum& m = config.momentum();
  MomentumParams p;
  if (m.has_momentum()) p.momentum = m.momentum();
  if (m.has_dampening()) p.dampening = m.dampening();
  p.nesterov = m.nesterov();
  PS_RETURN_IF_ERROR(
      RequireBetween("momentum.momentum", p.momentum, 0, 1,
                     " (above 1 the buffer grows without bound)"));
  PS_RETURN_IF_ERROR(RequireBetween("momentum.dampening", p.dampening, 0, 1));
  if (p.nesterov && (p.momentum <= 0 || p.dampening != 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("momentum.nesterov needs momentum.momentum > 0 and "
                     "momentum.dampening = 0; got momentum ",
                     p.momentum, ", dampening ", p.dampening));
  }
  return p;
}
StateSlots MomentumSlots(const RuleParams&) { return kMomentumSlot; }

// ---- Adagrad: sum s of g^2.

absl::StatusOr<RuleParams> ResolveAdagrad(const v1::OptimizerConfig& config) {
  const v1::Adagrad& a = config.adagrad();
  AdagradParams p;
  if (a.has_initial_accumulator_value()) {
    p.initial_accumulator_value = a.initial_accumulator_value();
  }
  if (a.has_eps()) p.eps = a.eps();
  if (a.has_lr_decay()) p.lr_decay = a.lr_decay();
  PS_RETURN_IF_ERROR(RequireAtLeast("adagrad.initial_accumulator_value",
                                    p.initial_accumulator_value, 0));
  PS_RETURN_IF_ERROR(RequirePositive("adagrad.eps", p.eps));
  PS_RETURN_IF_ERROR(RequireAtLeast("adagrad.lr_decay", p.lr_decay, 0));
  return p;
}
StateSlots AdagradSlots(const RuleParams&) { return kSquareAvgSlot; }

// ---- RMSProp: v, centered's mean a, momentum's buffer.

absl::StatusOr<RuleParams> ResolveRmsProp(const v1::OptimizerConfig& config) {
  const v1::RMSProp& r = config.rmsprop();
  RmsPropParams p;
  if (r.has_alpha()) p.alpha = r.alpha();
  if (r.has_eps()) p.eps = r.eps();
  if (r.has_momentum()) p.momentum = r.momentum();
  p.centered = r.centered();
  PS_RETURN_IF_ERROR(RequireFraction("rmsprop.alpha", p.alpha));
  PS_RETURN_IF_ERROR(RequirePositive("rmsprop.eps", p.eps));
  PS_RETURN_IF_ERROR(
      RequireBetween("rmsprop.momentum", p.momentum, 0, 1,
                     " (above 1 the buffer grows without bound)"));
  return p;
}
StateSlots RmsPropSlots(const RuleParams& rule) {
  const auto& p = std::get<RmsPropParams>(rule);
  return kSquareAvgSlot | (p.centered ? kGradAvgSlot : 0) |
         (p.momentum > 0 ? kMomentumSlot : 0);
}

// ---- Adam, AMSGrad, AdamW: m, v, AMSGrad's max of v.

absl::StatusOr<RuleParams> ResolveAdam(const v1::OptimizerConfig& config) {
  const v1::Adam& a = config.adam();
  AdamParams p;
  if (a.has_beta1()) p.beta1 = a.beta1();
  if (a.has_beta2()) p.beta2 = a.beta2();
  if (a.has_eps()) p.eps = a.eps();
  p.amsgrad = a.amsgrad();
  p.decoupled_weight_decay = a.decoupled_weight_decay();
  PS_RETURN_IF_ERROR(RequireFraction("adam.beta1", p.beta1));
  PS_RETURN_IF_ERROR(RequireFraction("adam.beta2", p.beta2));
  PS_RETURN_IF_ERROR(RequirePositive("adam.eps", p.eps));
  return p;
}
StateSlots AdamSlots(const RuleParams& rule) {
  return kMomentumSlot | kSquareAvgSlot |
         (std::get<AdamParams>(rule).amsgrad ? kMaxSquareAvgSlot : 0);
}

// ---- Eve: Adam's m and v, and per block its feedback d and f-hat.

absl::StatusOr<RuleParams> ResolveEve(const v1::OptimizerConfig& config) {
  const v1::Eve& e = config.eve();
  EveParams p;
  if (e.has_beta1()) p.beta1 = e.beta1();
  if (e.has_beta2()) p.beta2 = e.beta2();
  if (e.has_beta3()) p.beta3 = e.beta3();
  if (e.has_k()) p.k = e.k();
  if (e.has_big_k()) p.big_k = e.big_k();
  if (e.has_eps()) p.eps = e.eps();
  if (e.has_loss_floor()) p.loss_floor = e.loss_floor();
  PS_RETURN_IF_ERROR(RequireFraction("eve.beta1", p.beta1));
  PS_RETURN_IF_ERROR(RequireFraction("eve.beta2", p.beta2));
  PS_RETURN_IF_ERROR(RequireFraction("eve.beta3", p.beta3));
  PS_RETURN_IF_ERROR(RequireAtLeast("eve.k", p.k, 0));
  PS_RETURN_IF_ERROR(RequirePositive("eve.big_k", p.big_k));
  if (!(p.k < p.big_k)) {
    return absl::InvalidArgumentError(
        absl::StrCat("eve.k = ", p.k, " must be below eve.big_k = ", p.big_k));
  }
  PS_RETURN_IF_ERROR(RequirePositive("eve.eps", p.eps));
  PS_RETURN_IF_ERROR(
      RequireBetween("eve.loss_floor", p.loss_floor, -kFloatMax, kFloatMax));
  return p;
}
StateSlots EveSlots(const RuleParams&) {
  return kMomentumSlot | kSquareAvgSlot;
}

// In the order of the RuleParams variant. Meanings by slot: momentum,
// square_avg, grad_avg, max_square_avg.
constexpr RuleDescriptor kRules[] = {
    {"sgd",
     v1::OptimizerConfig::kSgd,
     1e-2,
     ResolveSgd,
     SgdSlots,
     {kUnused, kUnused, kUnused, kUnused}},
    {"momentum",
     v1::OptimizerConfig::kMomentum,
     1e-2,
     ResolveMomentum,
     MomentumSlots,
     {SlotMeaning::kGradientMean, kUnused, kUnused, kUnused}},
    {"adagrad",
     v1::OptimizerConfig::kAdagrad,
     1e-2,
     ResolveAdagrad,
     AdagradSlots,
     {kUnused, SlotMeaning::kSquareSum, kUnused, kUnused}},
    {"rmsprop",
     v1::OptimizerConfig::kRmsprop,
     1e-2,
     ResolveRmsProp,
     RmsPropSlots,
     {SlotMeaning::kScaledGradient, SlotMeaning::kSquareMean, SlotMeaning::kOwn,
      kUnused}},
    {"adam",
     v1::OptimizerConfig::kAdam,
     1e-3,
     ResolveAdam,
     AdamSlots,
     {SlotMeaning::kGradientMean, SlotMeaning::kSquareMean, kUnused,
      SlotMeaning::kOwn}},
    {"eve",
     v1::OptimizerConfig::kEve,
     1e-3,
     ResolveEve,
     EveSlots,
     {SlotMeaning::kGradientMean, SlotMeaning::kSquareMean, kUnused, kUnused}},
};
static_assert(std::size(kRules) == std::variant_size_v<RuleParams>,
              "one descriptor per rule of RuleParams");

}  // namespace

std::span<const RuleDescriptor> Rules() { return kRules; }

const RuleDescriptor& DescriptorOf(const RuleParams& rule) {
  return kRules[rule.index()];
}

const RuleDescriptor* DescriptorFor(v1::OptimizerConfig::RuleCase config_case) {
  for (const RuleDescriptor& rule : kRules) {
    if (rule.config_case == config_case) return &rule;
  }
  return nullptr;
}

std::string_view RuleName(const RuleParams& rule) {
  return DescriptorOf(rule).name;
}

StateSlots SlotsOf(const RuleParams& rule) {
  return DescriptorOf(rule).slots(rule);
}

}  // namespace ps::optimizer
