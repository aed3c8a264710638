// The flags of `psctl optimizer set RULE` and `psctl schedule set KIND`,
// read from the protobuf descriptors of ps.v1.OptimizerConfig and
// ps.v1.LearningRateSchedule.
//
// A rule is a member of OptimizerConfig's oneof `rule`, named as the field
// is ("adam"); each field of its message is a flag of the same name
// (Adam.beta1 is --beta1). Schedule kinds are the members of
// LearningRateSchedule's oneof `kind`, and "none". A new rule, kind or field
// in the proto is thus a new choice or flag here, refused for the other
// rules, with no edit; a line in the notes of optimizer_flags.cc adds its
// help words and the value the server uses when it is not given.
//
// Thread safety: every function is thread-safe.
#ifndef PS_CLIENT_PSCTL_OPTIMIZER_FLAGS_H_
#define PS_CLIENT_PSCTL_OPTIMIZER_FLAGS_H_

#include <google/protobuf/descriptor.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/psctl/flags.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps::psctl {

// One flag that sets one field.
struct FieldFlag {
  FlagSpec spec;  // name, type and help; no default value
  const google::protobuf::FieldDescriptor* field = nullptr;
  // The value the server (or, for schedules, psctl) uses when the flag is
  // not given, as help shows it ("0.9"); empty when not known.
  std::string default_text;
  // Schedules: the flag must be given.
  bool required = false;
  // Schedules: the value psctl sends when the flag is not given; empty = the
  // field is left unset.
  std::string fill;
};

// A rule, or a schedule kind.
struct Choice {
  std::string name;
  // The oneof member; nullptr for the schedule kind "none".
  const google::protobuf::FieldDescriptor* field = nullptr;
  // The fields of its message, in field order.
  std::vector<FieldFlag> flags;
};

// The members of `oneof` of `message` that are messages, each a choice
// whose flags are its message's fields; those of no type a flag can hold
// (messages, repeated fields) are left out. Rules() and ScheduleKinds() are
// this over the ps.v1 descriptors.
std::vector<Choice> ChoicesOf(const google::protobuf::Descriptor* message,
                              const std::string& oneof);

// The rules, in the order of the oneof.
const std::vector<Choice>& Rules();
// The flags every rule takes: --lr, --weight_decay, --clip_norm.
const std::vector<FieldFlag>& CommonRuleFlags();
// The schedule kinds, in the order of the oneof, then "none".
const std::vector<Choice>& ScheduleKinds();
// The flags every kind takes: --warmup_steps.
const std::vector<FieldFlag>& CommonScheduleFlags();

// The choice named `name` in `choices`, or nullptr.
const Choice* FindChoice(const std::vector<Choice>& choices,
                         const std::string& name);
// The choices' names, in order.
std::vector<std::string> ChoiceNames(const std::vector<Choice>& choices);

// The flags `optimizer set RULE` takes for RULE (the common ones first) and
// `schedule set KIND` for KIND; empty for an unknown one.
std::vector<std::string> RuleFlagNames(const std::string& rule);
std::vector<std::string> ScheduleFlagNames(const std::string& kind);

// Every flag of every rule and kind, one spec per name, its help saying
// which rules take it and their defaults.
std::vector<FlagSpec> OptimizerFlagSpecs();

// The config `optimizer set RULE` sends (no schedule): the rule with the
// values given; those not given are left unset, so the server's defaults
// apply. INVALID_ARGUMENT for an unknown rule or a bad value.
absl::StatusOr<v1::OptimizerConfig> BuildRuleConfig(const std::string& rule,
                                                    const FlagValues& values);

// The schedule `schedule set KIND` sends. INVALID_ARGUMENT for an unknown
// kind, a missing required flag ("schedule cosine needs --t_max") or a bad
// value.
absl::StatusOr<v1::LearningRateSchedule> BuildSchedule(
    const std::string& kind, const FlagValues& values);

// The rule's name in a config ("sgd", ...), "none" when it names none.
std::string RuleOf(const v1::OptimizerConfig& config);

// For `psctl help`: each rule (each kind) and its flags with their defaults,
// one line each, wrapped to fit 80 columns.
std::string RuleFlagsHelp();
std::string ScheduleFlagsHelp();

}  // namespace ps::psctl

#endif  // PS_CLIENT_PSCTL_OPTIMIZER_FLAGS_H_
