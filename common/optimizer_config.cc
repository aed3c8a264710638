#include "common/optimizer_config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <cmath>
#include <limits>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/config_checks.h"
#include "common/rule_catalog.h"
#include "common/status.h"

namespace ps {
namespace {

using optimizer::OptimizerSettings;

using config_checks::RequireAtLeast;
using config_checks::RequirePositive;

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
  const optimizer::RuleDescriptor* rule =
      optimizer::DescriptorFor(config.rule_case());
  if (rule == nullptr) {
    std::vector<std::string> names;
    for (const auto& known : optimizer::Rules()) {
      names.emplace_back(known.name);
    }
    return absl::InvalidArgumentError(
        absl::StrCat("the optimizer config names no rule: set one of ",
                     absl::StrJoin(names, ", ")));
  }
  PS_ASSIGN_OR_RETURN(settings.rule, rule->resolve(config));
  settings.learning_rate = config.has_learning_rate()
                               ? config.learning_rate()
                               : rule->default_learning_rate;
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
