#include "common/optimizer_config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace ps {
namespace {

using optimizer::OptimizerSettings;

// Each check is written so that NaN fails it.
//
// The kernels compute in float32: a hyper-parameter must survive the
// conversion, finite and, where it must be positive, a normal float (a
// smaller one rounds to zero or loses its precision, and an eps of 1e-50
// would divide by zero).
constexpr double kFloatMax = std::numeric_limits<float>::max();
constexpr double kFloatMin = std::numeric_limits<float>::min();

absl::Status RequireAtLeast(absl::string_view field, double value, double low) {
  if (value >= low && value <= kFloatMax) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " = ", value, " must be a number >= ", low,
                   " and at most float32's largest, ", kFloatMax));
}

absl::Status RequirePositive(absl::string_view field, double value) {
  if (value >= kFloatMin && value <= kFloatMax) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " = ", value,
                   " must be a number > 0 within float32's normal range [",
                   kFloatMin, ", ", kFloatMax, "]"));
}

// [lo, hi] with both ends in.
absl::Status RequireBetween(absl::string_view field, double value, double lo,
                            double hi, absl::string_view why = "") {
  if (value >= lo && value <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      field, " = ", value, " must be in [", lo, ", ", hi, "]", why));
}

// [0, 1): betas, alpha and smoothing factors.
absl::Status RequireFraction(absl::string_view field, double value) {
  if (value >= 0 && value < 1) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " = ", value, " must be in [0, 1)"));
}

absl::StatusOr<optimizer::RuleParams> ResolveRule(
    const v1::OptimizerConfig& config) {
  switch (config.rule_case()) {
    case v1::OptimizerConfig::kSgd:
      return optimizer::SgdParams{};
    case v1::OptimizerConfig::kMomentum: {
      const v1::Momentum& m = config.momentum();
      optimizer::MomentumParams p;
      if (m.has_momentum()) p.momentum = m.momentum();
      if (m.has_dampening()) p.dampening = m.dampening();
      p.nesterov = m.nesterov();
      PS_RETURN_IF_ERROR(
          RequireBetween("momentum.momentum", p.momentum, 0, 1,
                         " (above 1 the buffer grows without bound)"));
      PS_RETURN_IF_ERROR(
          RequireBetween("momentum.dampening", p.dampening, 0, 1));
      if (p.nesterov && (p.momentum <= 0 || p.dampening != 0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("momentum.nesterov needs momentum.momentum > 0 and "
                         "momentum.dampening = 0; got momentum ",
                         p.momentum, ", dampening ", p.dampening));
      }
      return p;
    }
    case v1::OptimizerConfig::kAdagrad: {
      const v1::Adagrad& a = config.adagrad();
      optimizer::AdagradParams p;
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
    case v1::OptimizerConfig::kRmsprop: {
      const v1::RMSProp& r = config.rmsprop();
      optimizer::RmsPropParams p;
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
    case v1::OptimizerConfig::kAdam: {
      const v1::Adam& a = config.adam();
      optimizer::AdamParams p;
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
    case v1::OptimizerConfig::kEve: {
      const v1::Eve& e = config.eve();
      optimizer::EveParams p;
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
        return absl::InvalidArgumentError(absl::StrCat(
            "eve.k = ", p.k, " must be below eve.big_k = ", p.big_k));
      }
      PS_RETURN_IF_ERROR(RequirePositive("eve.eps", p.eps));
      PS_RETURN_IF_ERROR(RequireBetween("eve.loss_floor", p.loss_floor,
                                        -kFloatMax, kFloatMax));
      return p;
    }
    case v1::OptimizerConfig::RULE_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(
      "the optimizer config names no rule: set one of sgd, momentum, adagrad, "
      "rmsprop, adam, eve");
}

// A schedule's factor: (0, 1]. A growing rate would overflow float32 after
// enough steps; warm-up is what warmup_steps is for.
absl::Status RequireDecay(absl::string_view field, double gamma) {
  if (gamma > 0 && gamma <= 1) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      field, " = ", gamma,
      " must be in (0, 1]: a schedule lowers the rate (a factor above 1 "
      "would grow it past float32's range; use warmup_steps to ramp up)"));
}

absl::StatusOr<optimizer::Schedule> ResolveSchedule(
    const v1::LearningRateSchedule& s) {
  optimizer::Schedule schedule;
  schedule.warmup_steps = s.warmup_steps();
  switch (s.kind_case()) {
    case v1::LearningRateSchedule::kStep:
      schedule.kind = optimizer::Schedule::Kind::kStep;
      schedule.step_size = s.step().step_size();
      schedule.gamma = s.step().gamma();
      if (schedule.step_size == 0) {
        return absl::InvalidArgumentError(
            "schedule.step.step_size must be > 0");
      }
      PS_RETURN_IF_ERROR(RequireDecay("schedule.step.gamma", schedule.gamma));
      break;
    case v1::LearningRateSchedule::kExponential:
      schedule.kind = optimizer::Schedule::Kind::kExponential;
      schedule.gamma = s.exponential().gamma();
      PS_RETURN_IF_ERROR(
          RequireDecay("schedule.exponential.gamma", schedule.gamma));
      break;
    case v1::LearningRateSchedule::kCosine:
      schedule.kind = optimizer::Schedule::Kind::kCosine;
      schedule.t_max = s.cosine().t_max();
      schedule.eta_min = s.cosine().eta_min();
      if (schedule.t_max == 0) {
        return absl::InvalidArgumentError("schedule.cosine.t_max must be > 0");
      }
      PS_RETURN_IF_ERROR(
          RequireAtLeast("schedule.cosine.eta_min", schedule.eta_min, 0));
      break;
    case v1::LearningRateSchedule::KIND_NOT_SET:
      break;
  }
  return schedule;
}

}  // namespace

absl::StatusOr<OptimizerSettings> ResolveOptimizerConfig(
    const v1::OptimizerConfig& config) {
  OptimizerSettings settings;
  PS_ASSIGN_OR_RETURN(settings.rule, ResolveRule(config));
  const bool adam_like = config.has_adam() || config.has_eve();
  settings.learning_rate = config.has_learning_rate()
                               ? config.learning_rate()
                               : (adam_like ? 1e-3 : 1e-2);
  PS_RETURN_IF_ERROR(
      RequireAtLeast("learning_rate", settings.learning_rate, 0));
  settings.weight_decay = config.weight_decay();
  PS_RETURN_IF_ERROR(RequireAtLeast("weight_decay", settings.weight_decay, 0));
  if (config.has_clip_norm()) {
    PS_RETURN_IF_ERROR(RequirePositive("clip_norm", config.clip_norm()));
    settings.clip_norm = config.clip_norm();
  }
  PS_ASSIGN_OR_RETURN(settings.schedule, ResolveSchedule(config.schedule()));
  if (const auto* adam = std::get_if<optimizer::AdamParams>(&settings.rule);
      adam != nullptr && adam->decoupled_weight_decay &&
      !(settings.learning_rate * settings.weight_decay < 1)) {
    // Values are multiplied by 1 - lr * weight_decay each step.
    return absl::InvalidArgumentError(absl::StrCat(
        "AdamW needs learning_rate x weight_decay < 1 (each step multiplies "
        "the values by 1 - their product); got ",
        settings.learning_rate, " x ", settings.weight_decay));
  }
  return settings;
}

absl::Status ValidateOptimizerConfig(const v1::OptimizerConfig& config) {
  return ResolveOptimizerConfig(config).status();
}

absl::StatusOr<v1::OptimizerConfig> ParseOptimizerConfig(
    absl::string_view text) {
  // Collects the parser's complaint for the message instead of logging it.
  class Collector final : public google::protobuf::io::ErrorCollector {
   public:
    void AddError(int line, int column, const std::string& message) override {
      if (error.empty()) {
        error = absl::StrCat("line ", line + 1, " column ", column + 1, ": ",
                             message);
      }
    }
    std::string error;
  };
  Collector collector;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&collector);
  v1::OptimizerConfig config;
  if (!parser.ParseFromString(std::string(text), &config)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot parse optimizer config '", text, "' (", collector.error,
        "); write protobuf text, e.g. 'adam { beta1: 0.9 } learning_rate: "
        "0.001'"));
  }
  PS_RETURN_IF_ERROR(ValidateOptimizerConfig(config));
  return config;
}

std::string OptimizerConfigToText(const v1::OptimizerConfig& config) {
  google::protobuf::TextFormat::Printer printer;
  printer.SetSingleLineMode(true);
  std::string text;
  printer.PrintToString(config, &text);
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

}  // namespace ps
