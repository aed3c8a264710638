#include "client/psctl/optimizer_flags.h"

#include <gmock/gmock.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "absl/strings/str_split.h"
#include "client/psctl/command_table.h"

namespace ps::psctl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;

FlagValues Values(const std::map<std::string, std::string>& given) {
  FlagValues values(&AllFlags());
  for (const auto& [name, value] : given) values.Set(name, value);
  return values;
}

TEST(OptimizerFlagsTest, EveryRuleOfTheProtoIsAChoice) {
  const google::protobuf::OneofDescriptor* rule =
      v1::OptimizerConfig::descriptor()->FindOneofByName("rule");
  ASSERT_NE(rule, nullptr);
  ASSERT_EQ(Rules().size(), static_cast<size_t>(rule->field_count()));
  for (int i = 0; i < rule->field_count(); ++i) {
    const Choice& choice = Rules()[i];
    EXPECT_EQ(choice.name, rule->field(i)->name());
    // Every field of the rule's message is one of its flags.
    const Descriptor* message = rule->field(i)->message_type();
    ASSERT_EQ(choice.flags.size(), static_cast<size_t>(message->field_count()))
        << choice.name;
    for (int f = 0; f < message->field_count(); ++f) {
      EXPECT_EQ(choice.flags[f].spec.name, message->field(f)->name());
      EXPECT_EQ(choice.flags[f].field, message->field(f));
    }
  }
  EXPECT_THAT(ChoiceNames(Rules()), ElementsAre("sgd", "momentum", "adagrad",
                                                "rmsprop", "adam", "eve"));
  EXPECT_THAT(ChoiceNames(ScheduleKinds()),
              ElementsAre("step", "exponential", "cosine", "none"));
}

// A rule added to the proto (its message and a member of the oneof) is a
// choice with its fields as flags, with no edit here.
TEST(OptimizerFlagsTest, ANewRuleInTheProtoIsANewChoice) {
  google::protobuf::FileDescriptorProto file;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(
      R"pb(
        name: "future.proto"
        package: "future"
        message_type { name: "Sgd" }
        message_type {
          name: "Lion"
          field {
            name: "beta1"
            number: 1
            type: TYPE_DOUBLE
            label: LABEL_OPTIONAL
          }
          field {
            name: "beta2"
            number: 2
            type: TYPE_DOUBLE
            label: LABEL_OPTIONAL
          }
          field {
            name: "use_sign"
            number: 3
            type: TYPE_BOOL
            label: LABEL_OPTIONAL
          }
          field {
            name: "warmup"
            number: 4
            type: TYPE_UINT64
            label: LABEL_OPTIONAL
          }
          field {
            name: "sub"
            number: 5
            type: TYPE_MESSAGE
            type_name: ".future.Sgd"
            label: LABEL_OPTIONAL
          }
        }
        message_type {
          name: "Config"
          field {
            name: "sgd"
            number: 1
            type: TYPE_MESSAGE
            type_name: ".future.Sgd"
            label: LABEL_OPTIONAL
            oneof_index: 0
          }
          field {
            name: "lion"
            number: 7
            type: TYPE_MESSAGE
            type_name: ".future.Lion"
            label: LABEL_OPTIONAL
            oneof_index: 0
          }
          oneof_decl { name: "rule" }
        }
      )pb",
      &file));
  google::protobuf::DescriptorPool pool;
  ASSERT_NE(pool.BuildFile(file), nullptr);
  const std::vector<Choice> choices =
      ChoicesOf(pool.FindMessageTypeByName("future.Config"), "rule");
  ASSERT_EQ(choices.size(), 2u);
  EXPECT_EQ(choices[0].name, "sgd");
  EXPECT_THAT(choices[0].flags, IsEmpty());
  const Choice& lion = choices[1];
  EXPECT_EQ(lion.name, "lion");
  std::vector<std::string> names;
  std::vector<FlagType> types;
  for (const FieldFlag& flag : lion.flags) {
    names.push_back(flag.spec.name);
    types.push_back(flag.spec.type);
    EXPECT_EQ(flag.spec.help, "lion." + flag.spec.name);
  }
  // A message field has no flag.
  EXPECT_THAT(names, ElementsAre("beta1", "beta2", "use_sign", "warmup"));
  EXPECT_THAT(types, ElementsAre(FlagType::kDouble, FlagType::kDouble,
                                 FlagType::kBool, FlagType::kUint64));
}

TEST(OptimizerFlagsTest, RuleFlagsAreTheRulesFields) {
  EXPECT_THAT(RuleFlagNames("sgd"),
              ElementsAre("lr", "weight_decay", "clip_norm"));
  EXPECT_THAT(RuleFlagNames("adam"),
              ElementsAre("lr", "weight_decay", "clip_norm", "beta1", "beta2",
                          "eps", "amsgrad", "decoupled_weight_decay"));
  EXPECT_THAT(RuleFlagNames("momentum"),
              ElementsAre("lr", "weight_decay", "clip_norm", "momentum",
                          "dampening", "nesterov"));
  EXPECT_THAT(RuleFlagNames("adamax"), IsEmpty());
  EXPECT_THAT(ScheduleFlagNames("cosine"),
              ElementsAre("warmup_steps", "t_max", "eta_min"));
  EXPECT_THAT(ScheduleFlagNames("none"), ElementsAre("warmup_steps"));
  EXPECT_THAT(ScheduleFlagNames("linear"), IsEmpty());
}

TEST(OptimizerFlagsTest, OneTypePerFlagNameAndNoClashWithOtherFlags) {
  std::map<std::string, FlagType> types;
  auto check = [&](const FieldFlag& flag) {
    auto [it, added] = types.emplace(flag.spec.name, flag.spec.type);
    EXPECT_EQ(it->second, flag.spec.type) << flag.spec.name;
  };
  for (const FieldFlag& flag : CommonRuleFlags()) check(flag);
  for (const FieldFlag& flag : CommonScheduleFlags()) check(flag);
  for (const auto* choices : {&Rules(), &ScheduleKinds()}) {
    for (const Choice& choice : *choices) {
      for (const FieldFlag& flag : choice.flags) check(flag);
    }
  }
  // None is also a global or command flag of another meaning.
  for (const char* name :
       {"servers", "token_file", "tls_ca_file", "timeout_s", "json", "var",
        "reset_state", "watch", "interval_s", "count"}) {
    EXPECT_FALSE(types.contains(name)) << name;
  }
}

TEST(OptimizerFlagsTest, EveryFlagHasHelpAndEveryNoteAField) {
  for (const FlagSpec& spec : OptimizerFlagSpecs()) {
    EXPECT_FALSE(spec.help.empty()) << spec.name;
    EXPECT_FALSE(spec.default_text.empty()) << spec.name;
  }
  // The known fields have their words, not just their names.
  const FlagSpec& beta1 = AllFlags().at("beta1");
  EXPECT_EQ(beta1.help, "optimizer set adam, eve: first-moment decay");
  EXPECT_EQ(beta1.default_text, "unset (the server's: 0.9)");
  EXPECT_THAT(AllFlags().at("eps").default_text,
              HasSubstr("adagrad 1e-10, rmsprop 1e-8, adam 1e-8, eve 1e-8"));
  EXPECT_THAT(AllFlags().at("gamma").default_text,
              HasSubstr("step 0.1, exponential required"));
  for (const auto* choices : {&Rules(), &ScheduleKinds()}) {
    for (const Choice& choice : *choices) {
      for (const FieldFlag& flag : choice.flags) {
        // A field without a note would show its own name as its help.
        EXPECT_NE(flag.spec.help, choice.name + "." + flag.spec.name);
      }
    }
  }
}

TEST(BuildRuleConfigTest, SetsOnlyTheFlagsGiven) {
  absl::StatusOr<v1::OptimizerConfig> config =
      BuildRuleConfig("adam", Values({{"lr", "0.01"},
                                      {"beta1", "0.8"},
                                      {"amsgrad", "true"},
                                      {"clip_norm", "5"}}));
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->has_adam());
  EXPECT_EQ(config->adam().beta1(), 0.8);
  EXPECT_FALSE(config->adam().has_beta2());
  EXPECT_FALSE(config->adam().has_eps());
  EXPECT_TRUE(config->adam().amsgrad());
  EXPECT_FALSE(config->adam().decoupled_weight_decay());
  EXPECT_EQ(config->learning_rate(), 0.01);
  EXPECT_FALSE(config->has_weight_decay());
  EXPECT_EQ(config->clip_norm(), 5);
  EXPECT_FALSE(config->has_schedule());

  config = BuildRuleConfig("sgd", Values({}));
  ASSERT_TRUE(config.ok());
  EXPECT_TRUE(config->has_sgd());
  EXPECT_FALSE(config->has_learning_rate());

  // A flag of the same name sets the chosen rule's field.
  config = BuildRuleConfig(
      "rmsprop",
      Values({{"momentum", "0.3"}, {"eps", "1e-6"}, {"centered", "true"}}));
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->rmsprop().momentum(), 0.3);
  EXPECT_EQ(config->rmsprop().eps(), 1e-6);
  EXPECT_TRUE(config->rmsprop().centered());
  config = BuildRuleConfig("eve", Values({{"big_k", "20"}, {"k", "0.2"}}));
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->eve().big_k(), 20);
  EXPECT_EQ(config->eve().k(), 0.2);
}

TEST(BuildRuleConfigTest, RefusesAnUnknownRule) {
  const absl::Status status = BuildRuleConfig("adamax", Values({})).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("unknown rule 'adamax'; choose one of sgd, momentum, "
                        "adagrad, rmsprop, adam, eve"));
}

TEST(BuildScheduleTest, KindsRequiredFlagsAndFills) {
  absl::StatusOr<v1::LearningRateSchedule> schedule =
      BuildSchedule("step", Values({{"step_size", "10"}}));
  ASSERT_TRUE(schedule.ok()) << schedule.status();
  EXPECT_EQ(schedule->step().step_size(), 10u);
  EXPECT_EQ(schedule->step().gamma(), 0.1);  // torch's StepLR default
  EXPECT_EQ(schedule->warmup_steps(), 0u);

  schedule = BuildSchedule("cosine",
                           Values({{"t_max", "100"}, {"warmup_steps", "5"}}));
  ASSERT_TRUE(schedule.ok());
  EXPECT_EQ(schedule->cosine().t_max(), 100u);
  EXPECT_EQ(schedule->cosine().eta_min(), 0);
  EXPECT_EQ(schedule->warmup_steps(), 5u);

  schedule = BuildSchedule("none", Values({{"warmup_steps", "3"}}));
  ASSERT_TRUE(schedule.ok());
  EXPECT_EQ(schedule->kind_case(), v1::LearningRateSchedule::KIND_NOT_SET);
  EXPECT_EQ(schedule->warmup_steps(), 3u);

  for (const auto& [kind, message] :
       std::vector<std::pair<std::string, std::string>>{
           {"step", "schedule step needs --step_size"},
           {"exponential", "schedule exponential needs --gamma"},
           {"cosine", "schedule cosine needs --t_max"},
           {"linear",
            "unknown schedule 'linear'; choose one of step, "
            "exponential, cosine, none"}}) {
    EXPECT_THAT(BuildSchedule(kind, Values({})).status().message(),
                HasSubstr(message));
  }
}

TEST(RuleOfTest, NamesTheRule) {
  v1::OptimizerConfig config;
  EXPECT_EQ(RuleOf(config), "none");
  config.mutable_eve();
  EXPECT_EQ(RuleOf(config), "eve");
  config.mutable_momentum();
  EXPECT_EQ(RuleOf(config), "momentum");
}

TEST(RuleFlagsHelpTest, EachRuleOnItsLinesWithDefaults) {
  const std::string help = RuleFlagsHelp();
  EXPECT_THAT(help, HasSubstr("  sgd       (none)\n"));
  EXPECT_THAT(help, HasSubstr("  momentum  --momentum=X (0.9)  --dampening=X "
                              "(0)  --nesterov\n"));
  EXPECT_THAT(help, HasSubstr("--decoupled_weight_decay"));
  EXPECT_THAT(help, HasSubstr("--big_k=X (10)"));
  for (absl::string_view line : absl::StrSplit(help, '\n')) {
    EXPECT_LE(line.size(), 79u) << line;
  }
  EXPECT_THAT(
      ScheduleFlagsHelp(),
      HasSubstr("  cosine       --t_max=N (required)  --eta_min=X (0)"));
}

}  // namespace
}  // namespace ps::psctl
