#include "client/psctl/optimizer_flags.h"

#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ps::psctl {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// What the descriptors do not say: a few words on each field and the value
// used when it is not given (the server's, as torch.optim 1.13 has them;
// DESIGN.md). Keyed by "choice.field", or by the field's name for the
// fields every choice takes. A field without a note still gets its flag.
struct Note {
  const char* help;
  const char* default_text = "";
  bool required = false;
  const char* fill = "";
};

const std::map<std::string, Note>& Notes() {
  static const auto* notes = new std::map<std::string, Note>{
      // Every rule.
      {"learning_rate",
       {"the learning rate", "1e-3 for adam and eve, 1e-2 for the others"}},
      {"weight_decay",
       {"L2 weight decay; decoupled with --decoupled_weight_decay", "0"}},
      {"clip_norm", {"clip each block's gradient to this L2 norm", "none"}},
      // Each rule.
      {"momentum.momentum", {"momentum factor", "0.9"}},
      {"momentum.dampening", {"dampening", "0"}},
      {"momentum.nesterov", {"Nesterov momentum"}},
      {"adagrad.initial_accumulator_value", {"initial sum of squares", "0"}},
      {"adagrad.eps", {"epsilon", "1e-10"}},
      {"adagrad.lr_decay", {"learning-rate decay", "0"}},
      {"rmsprop.alpha", {"smoothing constant", "0.99"}},
      {"rmsprop.eps", {"epsilon", "1e-8"}},
      {"rmsprop.momentum", {"momentum factor", "0"}},
      {"rmsprop.centered", {"centered RMSProp"}},
      {"adam.beta1", {"first-moment decay", "0.9"}},
      {"adam.beta2", {"second-moment decay", "0.999"}},
      {"adam.eps", {"epsilon", "1e-8"}},
      {"adam.amsgrad", {"AMSGrad"}},
      {"adam.decoupled_weight_decay", {"decoupled weight decay (AdamW)"}},
      {"eve.beta1", {"first-moment decay", "0.9"}},
      {"eve.beta2", {"second-moment decay", "0.999"}},
      {"eve.beta3", {"feedback smoothing", "0.999"}},
      {"eve.k", {"lower clip threshold k", "0.1"}},
      {"eve.big_k", {"upper clip threshold K", "10"}},
      {"eve.eps", {"epsilon", "1e-8"}},
      {"eve.loss_floor", {"the objective's known minimum f*", "0"}},
      // Schedules.
      {"warmup_steps", {"linear warm-up over N steps (0: none)", "0"}},
      {"step.step_size", {"decay every N steps", "", /*required=*/true}},
      {"step.gamma", {"decay factor", "0.1", false, "0.1"}},
      {"exponential.gamma", {"decay factor", "", /*required=*/true}},
      {"cosine.t_max", {"half period in steps", "", /*required=*/true}},
      {"cosine.eta_min", {"the lowest rate", "0"}},
  };
  return *notes;
}

// The flag type of a field; false when no flag can set it.
bool FlagTypeOf(const FieldDescriptor* field, FlagType* type) {
  if (field->is_repeated()) return false;
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT:
      *type = FlagType::kDouble;
      return true;
    case FieldDescriptor::CPPTYPE_BOOL:
      *type = FlagType::kBool;
      return true;
    case FieldDescriptor::CPPTYPE_UINT32:
    case FieldDescriptor::CPPTYPE_UINT64:
      *type = FlagType::kUint64;
      return true;
    case FieldDescriptor::CPPTYPE_INT32:
    case FieldDescriptor::CPPTYPE_INT64:
      *type = FlagType::kInt;
      return true;
    case FieldDescriptor::CPPTYPE_STRING:
    case FieldDescriptor::CPPTYPE_ENUM:
      *type = FlagType::kString;
      return true;
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return false;
  }
  return false;
}

// The flag of `field`, named `flag_name`, with the note at `key`.
std::optional<FieldFlag> MakeFlag(const FieldDescriptor* field,
                                  const std::string& flag_name,
                                  const std::string& key) {
  FieldFlag flag;
  flag.field = field;
  flag.spec.name = flag_name;
  if (!FlagTypeOf(field, &flag.spec.type)) return std::nullopt;
  auto note = Notes().find(key);
  if (note != Notes().end()) {
    flag.spec.help = note->second.help;
    flag.default_text = note->second.default_text;
    flag.required = note->second.required;
    flag.fill = note->second.fill;
  } else {
    flag.spec.help = key;
  }
  if (field->cpp_type() == FieldDescriptor::CPPTYPE_ENUM) {
    std::vector<std::string> names;
    for (int i = 0; i < field->enum_type()->value_count(); ++i) {
      names.push_back(field->enum_type()->value(i)->name());
    }
    absl::StrAppend(&flag.spec.help, " (", absl::StrJoin(names, ", "), ")");
  }
  return flag;
}

// The fields of `message` named in `fields` (field name, flag name).
std::vector<FieldFlag> CommonFlagsOf(
    const Descriptor* message,
    const std::vector<std::pair<std::string, std::string>>& fields) {
  std::vector<FieldFlag> flags;
  for (const auto& [field_name, flag_name] : fields) {
    const FieldDescriptor* field = message->FindFieldByName(field_name);
    if (field == nullptr) continue;
    std::optional<FieldFlag> flag = MakeFlag(field, flag_name, field_name);
    if (flag.has_value()) flags.push_back(*std::move(flag));
  }
  return flags;
}

absl::Status BadValue(const FieldFlag& flag, const std::string& text,
                      const std::string& expected) {
  return absl::InvalidArgumentError(absl::StrCat(
      "bad value for --", flag.spec.name, ": '", text, "' is not ", expected));
}

// Sets flag.field of `message` from the flag's text.
absl::Status SetField(const FieldFlag& flag, const std::string& text,
                      Message* message) {
  const Reflection* reflection = message->GetReflection();
  const FieldDescriptor* field = flag.field;
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT: {
      double value = 0;
      if (!absl::SimpleAtod(text, &value)) {
        return BadValue(flag, text, "a number");
      }
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE) {
        reflection->SetDouble(message, field, value);
      } else {
        reflection->SetFloat(message, field, static_cast<float>(value));
      }
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      bool value = false;
      if (!absl::SimpleAtob(text, &value)) {
        return BadValue(flag, text, "true or false");
      }
      reflection->SetBool(message, field, value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      uint32_t value = 0;
      if (!absl::SimpleAtoi(text, &value)) {
        return BadValue(flag, text, "a whole number in [0, 2^32)");
      }
      reflection->SetUInt32(message, field, value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t value = 0;
      if (!absl::SimpleAtoi(text, &value)) {
        return BadValue(flag, text, "a whole number >= 0");
      }
      reflection->SetUInt64(message, field, value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_INT32: {
      int32_t value = 0;
      if (!absl::SimpleAtoi(text, &value)) {
        return BadValue(flag, text, "a 32-bit whole number");
      }
      reflection->SetInt32(message, field, value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      int64_t value = 0;
      if (!absl::SimpleAtoi(text, &value)) {
        return BadValue(flag, text, "a whole number");
      }
      reflection->SetInt64(message, field, value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_STRING:
      reflection->SetString(message, field, text);
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_ENUM: {
      const auto* value = field->enum_type()->FindValueByName(text);
      if (value == nullptr) return BadValue(flag, text, "one of its names");
      reflection->SetEnum(message, field, value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--", flag.spec.name, " cannot be set from the command line"));
}

// Sets every flag of `flags` that has a value (or a fill) on `message`.
// `required_by`: the message of a missing required flag.
absl::Status SetFields(const std::vector<FieldFlag>& flags,
                       const FlagValues& values, const std::string& required_by,
                       Message* message) {
  for (const FieldFlag& flag : flags) {
    std::optional<std::string> text = values.Text(flag.spec.name);
    if (!text.has_value() && flag.required) {
      return absl::InvalidArgumentError(
          absl::StrCat(required_by, " needs --", flag.spec.name));
    }
    if (!text.has_value() && !flag.fill.empty()) text = flag.fill;
    if (text.has_value()) {
      if (absl::Status set = SetField(flag, *text, message); !set.ok()) {
        return set;
      }
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> FlagNames(const std::vector<FieldFlag>& common,
                                   const Choice* choice) {
  std::vector<std::string> names;
  if (choice == nullptr) return names;
  for (const FieldFlag& flag : common) names.push_back(flag.spec.name);
  for (const FieldFlag& flag : choice->flags) names.push_back(flag.spec.name);
  return names;
}

// "  adam      --beta1=X (0.9)  ..." for each choice, wrapped.
std::string ChoicesHelp(const std::vector<Choice>& choices) {
  size_t width = 0;
  for (const Choice& choice : choices) {
    width = std::max(width, choice.name.size());
  }
  const std::string indent(2 + width + 2, ' ');
  std::string text;
  for (const Choice& choice : choices) {
    std::vector<std::string> items;
    for (const FieldFlag& flag : choice.flags) {
      std::string item = FlagUsage(flag.spec);
      if (flag.required) {
        absl::StrAppend(&item, " (required)");
      } else if (!flag.default_text.empty()) {
        absl::StrAppend(&item, " (", flag.default_text, ")");
      }
      items.push_back(item);
    }
    if (items.empty()) items.push_back("(none)");
    std::string line = absl::StrCat(
        "  ", choice.name, std::string(width - choice.name.size(), ' '), "  ",
        items[0]);
    for (size_t i = 1; i < items.size(); ++i) {
      if (line.size() + 2 + items[i].size() > 79) {
        absl::StrAppend(&text, line, "\n");
        line = indent + items[i];
      } else {
        absl::StrAppend(&line, "  ", items[i]);
      }
    }
    absl::StrAppend(&text, line, "\n");
  }
  return text;
}

// Adds one spec per flag name of `command` (its common flags and its
// choices' flags) to `merged`: the help names the choices that take the flag,
// and the default says what applies when it is not given.
void MergeSpecs(const std::string& command,
                const std::vector<FieldFlag>& common,
                const std::vector<Choice>& choices, bool server_defaults,
                std::map<std::string, FlagSpec>* merged) {
  struct Use {
    std::string choice;
    const FieldFlag* flag;
  };
  std::map<std::string, std::vector<Use>> uses;
  std::vector<std::string> order;
  auto add = [&](const std::string& choice, const FieldFlag& flag) {
    if (!uses.contains(flag.spec.name)) order.push_back(flag.spec.name);
    uses[flag.spec.name].push_back({choice, &flag});
  };
  for (const FieldFlag& flag : common) add("", flag);
  for (const Choice& choice : choices) {
    for (const FieldFlag& flag : choice.flags) add(choice.name, flag);
  }
  for (const std::string& name : order) {
    const std::vector<Use>& list = uses[name];
    FlagSpec spec = list[0].flag->spec;
    bool same_help = true;
    bool same_default = true;
    std::vector<std::string> choice_names;
    std::vector<std::string> helps;
    std::vector<std::string> defaults;
    for (const Use& use : list) {
      same_help &= use.flag->spec.help == list[0].flag->spec.help;
      same_default &= use.flag->default_text == list[0].flag->default_text &&
                      use.flag->required == list[0].flag->required;
      if (!use.choice.empty()) choice_names.push_back(use.choice);
      helps.push_back(absl::StrCat(use.choice, ": ", use.flag->spec.help));
      const std::string shown = use.flag->required ? "required"
                                : use.flag->default_text.empty()
                                    ? "its default"
                                    : use.flag->default_text;
      defaults.push_back(absl::StrCat(use.choice, " ", shown));
    }
    const std::string who =
        choice_names.empty()
            ? command
            : absl::StrCat(command, " ", absl::StrJoin(choice_names, ", "));
    spec.help = same_help ? absl::StrCat(who, ": ", list[0].flag->spec.help)
                          : absl::StrCat(who, ": ", absl::StrJoin(helps, "; "));
    const FieldFlag& first = *list[0].flag;
    if (spec.type == FlagType::kBool) {
      spec.default_text = "false";
    } else if (same_default && !first.required && first.default_text.empty()) {
      spec.default_text =
          server_defaults ? "unset (the server's default)" : "unset";
    } else {
      const std::string values =
          same_default ? (first.required ? "required" : first.default_text)
                       : absl::StrJoin(defaults, ", ");
      spec.default_text =
          server_defaults ? absl::StrCat("unset (the server's: ", values, ")")
                          : absl::StrCat("unset (", values, ")");
    }
    (*merged)[name] = spec;
  }
}

}  // namespace

std::vector<Choice> ChoicesOf(const Descriptor* message,
                              const std::string& oneof) {
  std::vector<Choice> choices;
  const google::protobuf::OneofDescriptor* members =
      message->FindOneofByName(oneof);
  if (members == nullptr) return choices;
  for (int i = 0; i < members->field_count(); ++i) {
    const FieldDescriptor* member = members->field(i);
    if (member->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    Choice choice;
    choice.name = member->name();
    choice.field = member;
    const Descriptor* fields = member->message_type();
    for (int f = 0; f < fields->field_count(); ++f) {
      const FieldDescriptor* field = fields->field(f);
      std::optional<FieldFlag> flag = MakeFlag(
          field, field->name(), absl::StrCat(choice.name, ".", field->name()));
      if (flag.has_value()) choice.flags.push_back(*std::move(flag));
    }
    choices.push_back(std::move(choice));
  }
  return choices;
}

const std::vector<Choice>& Rules() {
  static const auto* rules = new std::vector<Choice>(
      ChoicesOf(v1::OptimizerConfig::descriptor(), "rule"));
  return *rules;
}

const std::vector<FieldFlag>& CommonRuleFlags() {
  static const auto* flags = new std::vector<FieldFlag>(CommonFlagsOf(
      v1::OptimizerConfig::descriptor(), {{"learning_rate", "lr"},
                                          {"weight_decay", "weight_decay"},
                                          {"clip_norm", "clip_norm"}}));
  return *flags;
}

const std::vector<Choice>& ScheduleKinds() {
  static const auto* kinds = [] {
    auto* kinds = new std::vector<Choice>(
        ChoicesOf(v1::LearningRateSchedule::descriptor(), "kind"));
    kinds->push_back(Choice{.name = "none", .field = nullptr, .flags = {}});
    return kinds;
  }();
  return *kinds;
}

const std::vector<FieldFlag>& CommonScheduleFlags() {
  static const auto* flags = new std::vector<FieldFlag>(
      CommonFlagsOf(v1::LearningRateSchedule::descriptor(),
                    {{"warmup_steps", "warmup_steps"}}));
  return *flags;
}

const Choice* FindChoice(const std::vector<Choice>& choices,
                         const std::string& name) {
  for (const Choice& choice : choices) {
    if (choice.name == name) return &choice;
  }
  return nullptr;
}

std::vector<std::string> ChoiceNames(const std::vector<Choice>& choices) {
  std::vector<std::string> names;
  for (const Choice& choice : choices) names.push_back(choice.name);
  return names;
}

std::vector<std::string> RuleFlagNames(const std::string& rule) {
  return FlagNames(CommonRuleFlags(), FindChoice(Rules(), rule));
}

std::vector<std::string> ScheduleFlagNames(const std::string& kind) {
  return FlagNames(CommonScheduleFlags(), FindChoice(ScheduleKinds(), kind));
}

std::vector<FlagSpec> OptimizerFlagSpecs() {
  std::map<std::string, FlagSpec> merged;
  MergeSpecs("optimizer set", CommonRuleFlags(), Rules(),
             /*server_defaults=*/true, &merged);
  std::map<std::string, FlagSpec> schedule;
  MergeSpecs("schedule set", CommonScheduleFlags(), ScheduleKinds(),
             /*server_defaults=*/false, &schedule);
  merged.insert(schedule.begin(), schedule.end());
  std::vector<FlagSpec> specs;
  for (auto& [name, spec] : merged) specs.push_back(std::move(spec));
  return specs;
}

absl::StatusOr<v1::OptimizerConfig> BuildRuleConfig(const std::string& rule,
                                                    const FlagValues& values) {
  const Choice* choice = FindChoice(Rules(), rule);
  if (choice == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown rule '", rule, "'; choose one of ",
                     absl::StrJoin(ChoiceNames(Rules()), ", ")));
  }
  v1::OptimizerConfig config;
  Message* message =
      config.GetReflection()->MutableMessage(&config, choice->field);
  if (absl::Status set =
          SetFields(choice->flags, values, "optimizer set " + rule, message);
      !set.ok()) {
    return set;
  }
  if (absl::Status set = SetFields(CommonRuleFlags(), values,
                                   "optimizer set " + rule, &config);
      !set.ok()) {
    return set;
  }
  return config;
}

absl::StatusOr<v1::LearningRateSchedule> BuildSchedule(
    const std::string& kind, const FlagValues& values) {
  const Choice* choice = FindChoice(ScheduleKinds(), kind);
  if (choice == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown schedule '", kind, "'; choose one of ",
                     absl::StrJoin(ChoiceNames(ScheduleKinds()), ", ")));
  }
  v1::LearningRateSchedule schedule;
  const std::string required_by = "schedule " + kind;
  if (choice->field != nullptr) {
    Message* message =
        schedule.GetReflection()->MutableMessage(&schedule, choice->field);
    if (absl::Status set =
            SetFields(choice->flags, values, required_by, message);
        !set.ok()) {
      return set;
    }
  }
  if (absl::Status set =
          SetFields(CommonScheduleFlags(), values, required_by, &schedule);
      !set.ok()) {
    return set;
  }
  return schedule;
}

std::string RuleOf(const v1::OptimizerConfig& config) {
  const google::protobuf::OneofDescriptor* oneof =
      v1::OptimizerConfig::descriptor()->FindOneofByName("rule");
  const FieldDescriptor* set =
      oneof == nullptr
          ? nullptr
          : config.GetReflection()->GetOneofFieldDescriptor(config, oneof);
  return set == nullptr ? "none" : set->name();
}

std::string RuleFlagsHelp() { return ChoicesHelp(Rules()); }

std::string ScheduleFlagsHelp() { return ChoicesHelp(ScheduleKinds()); }

}  // namespace ps::psctl
