#include "client/psctl/config_builder.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ps::psctl {
namespace {

const std::vector<std::string>& SharedRuleFlags() {
  static const auto* flags = new std::vector<std::string>{
      "lr", "weight_decay", "clip_norm", "var", "reset_state"};
  return *flags;
}

const std::map<std::string, std::vector<std::string>>& OwnRuleFlags() {
  static const auto* flags =
      new std::map<std::string, std::vector<std::string>>{
          {"sgd", {}},
          {"momentum", {"momentum", "dampening", "nesterov"}},
          {"adagrad", {"initial_accumulator_value", "eps", "lr_decay"}},
          {"rmsprop", {"alpha", "eps", "momentum", "centered"}},
          {"adam",
           {"beta1", "beta2", "eps", "amsgrad", "decoupled_weight_decay"}},
          {"eve",
           {"beta1", "beta2", "beta3", "k", "big_k", "eps", "loss_floor"}},
      };
  return *flags;
}

const std::map<std::string, std::vector<std::string>>& OwnScheduleFlags() {
  static const auto* flags =
      new std::map<std::string, std::vector<std::string>>{
          {"none", {"warmup_steps"}},
          {"step", {"step_size", "gamma", "warmup_steps"}},
          {"exponential", {"gamma", "warmup_steps"}},
          {"cosine", {"t_max", "eta_min", "warmup_steps"}},
      };
  return *flags;
}

template <typename Message>
void SetIf(const std::optional<double>& value, void (Message::*setter)(double),
           Message* message) {
  if (value.has_value()) (message->*setter)(*value);
}

}  // namespace

const std::vector<std::string>& RuleNames() {
  static const auto* names = new std::vector<std::string>{
      "sgd", "momentum", "adagrad", "rmsprop", "adam", "eve"};
  return *names;
}

std::vector<std::string> RuleFlags(const std::string& rule) {
  auto it = OwnRuleFlags().find(rule);
  if (it == OwnRuleFlags().end()) return {};
  std::vector<std::string> flags = SharedRuleFlags();
  flags.insert(flags.end(), it->second.begin(), it->second.end());
  return flags;
}

std::set<std::string> AllRuleFlags() {
  std::set<std::string> all(SharedRuleFlags().begin(), SharedRuleFlags().end());
  for (const auto& [rule, flags] : OwnRuleFlags()) {
    all.insert(flags.begin(), flags.end());
  }
  all.erase("var");
  return all;
}

std::vector<std::string> ScheduleFlags(const std::string& kind) {
  auto it = OwnScheduleFlags().find(kind);
  if (it == OwnScheduleFlags().end()) return {};
  std::vector<std::string> flags = it->second;
  flags.push_back("var");
  return flags;
}

std::set<std::string> AllScheduleFlags() {
  std::set<std::string> all;
  for (const auto& [kind, flags] : OwnScheduleFlags()) {
    all.insert(flags.begin(), flags.end());
  }
  return all;
}

absl::StatusOr<v1::OptimizerConfig> BuildRuleConfig(const std::string& rule,
                                                    const RuleValues& values) {
  v1::OptimizerConfig config;
  if (rule == "sgd") {
    config.mutable_sgd();
  } else if (rule == "momentum") {
    v1::Momentum* m = config.mutable_momentum();
    SetIf(values.momentum, &v1::Momentum::set_momentum, m);
    SetIf(values.dampening, &v1::Momentum::set_dampening, m);
    m->set_nesterov(values.nesterov);
  } else if (rule == "adagrad") {
    v1::Adagrad* a = config.mutable_adagrad();
    SetIf(values.initial_accumulator_value,
          &v1::Adagrad::set_initial_accumulator_value, a);
    SetIf(values.eps, &v1::Adagrad::set_eps, a);
    SetIf(values.lr_decay, &v1::Adagrad::set_lr_decay, a);
  } else if (rule == "rmsprop") {
    v1::RMSProp* r = config.mutable_rmsprop();
    SetIf(values.alpha, &v1::RMSProp::set_alpha, r);
    SetIf(values.eps, &v1::RMSProp::set_eps, r);
    SetIf(values.momentum, &v1::RMSProp::set_momentum, r);
    r->set_centered(values.centered);
  } else if (rule == "adam") {
    v1::Adam* a = config.mutable_adam();
    SetIf(values.beta1, &v1::Adam::set_beta1, a);
    SetIf(values.beta2, &v1::Adam::set_beta2, a);
    SetIf(values.eps, &v1::Adam::set_eps, a);
    a->set_amsgrad(values.amsgrad);
    a->set_decoupled_weight_decay(values.decoupled_weight_decay);
  } else if (rule == "eve") {
    v1::Eve* e = config.mutable_eve();
    SetIf(values.beta1, &v1::Eve::set_beta1, e);
    SetIf(values.beta2, &v1::Eve::set_beta2, e);
    SetIf(values.beta3, &v1::Eve::set_beta3, e);
    SetIf(values.k, &v1::Eve::set_k, e);
    SetIf(values.big_k, &v1::Eve::set_big_k, e);
    SetIf(values.eps, &v1::Eve::set_eps, e);
    SetIf(values.loss_floor, &v1::Eve::set_loss_floor, e);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown rule '", rule, "'; choose one of ",
                     absl::StrJoin(RuleNames(), ", ")));
  }
  if (values.lr) config.set_learning_rate(*values.lr);
  if (values.weight_decay) config.set_weight_decay(*values.weight_decay);
  if (values.clip_norm) config.set_clip_norm(*values.clip_norm);
  return config;
}

absl::StatusOr<v1::LearningRateSchedule> BuildSchedule(
    const std::string& kind, const ScheduleValues& values) {
  v1::LearningRateSchedule schedule;
  if (kind == "step") {
    if (!values.step_size) {
      return absl::InvalidArgumentError("schedule step needs --step_size");
    }
    schedule.mutable_step()->set_step_size(*values.step_size);
    schedule.mutable_step()->set_gamma(values.gamma.value_or(0.1));
  } else if (kind == "exponential") {
    if (!values.gamma) {
      return absl::InvalidArgumentError("schedule exponential needs --gamma");
    }
    schedule.mutable_exponential()->set_gamma(*values.gamma);
  } else if (kind == "cosine") {
    if (!values.t_max) {
      return absl::InvalidArgumentError("schedule cosine needs --t_max");
    }
    schedule.mutable_cosine()->set_t_max(*values.t_max);
    schedule.mutable_cosine()->set_eta_min(values.eta_min.value_or(0.0));
  } else if (kind != "none") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown schedule '", kind,
                     "'; choose one of step, exponential, cosine, none"));
  }
  schedule.set_warmup_steps(values.warmup_steps.value_or(0));
  return schedule;
}

std::string RuleOf(const v1::OptimizerConfig& config) {
  switch (config.rule_case()) {
    case v1::OptimizerConfig::kSgd:
      return "sgd";
    case v1::OptimizerConfig::kMomentum:
      return "momentum";
    case v1::OptimizerConfig::kAdagrad:
      return "adagrad";
    case v1::OptimizerConfig::kRmsprop:
      return "rmsprop";
    case v1::OptimizerConfig::kAdam:
      return "adam";
    case v1::OptimizerConfig::kEve:
      return "eve";
    case v1::OptimizerConfig::RULE_NOT_SET:
      break;
  }
  return "none";
}

}  // namespace ps::psctl
