#include "common/rule_catalog.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <variant>

#include "common/optimizer_config.h"

namespace ps::optimizer {
namespace {

TEST(RuleCatalogTest, OneDescriptorPerRuleInTheVariantsOrder) {
  ASSERT_EQ(Rules().size(), std::variant_size_v<RuleParams>);
  EXPECT_EQ(RuleName(SgdParams{}), "sgd");
  EXPECT_EQ(RuleName(MomentumParams{}), "momentum");
  EXPECT_EQ(RuleName(AdagradParams{}), "adagrad");
  EXPECT_EQ(RuleName(RmsPropParams{}), "rmsprop");
  EXPECT_EQ(RuleName(AdamParams{}), "adam");
  EXPECT_EQ(RuleName(EveParams{}), "eve");
}

// Every rule of the contract's OptimizerConfig has a descriptor, found by
// its oneof case, that resolves its empty message into its own settings.
TEST(RuleCatalogTest, EveryRuleOfTheContractResolves) {
  const google::protobuf::OneofDescriptor* oneof =
      v1::OptimizerConfig::descriptor()->FindOneofByName("rule");
  ASSERT_NE(oneof, nullptr);
  ASSERT_EQ(static_cast<size_t>(oneof->field_count()), Rules().size());
  std::set<std::string_view> names;
  for (int i = 0; i < oneof->field_count(); ++i) {
    const auto config_case =
        static_cast<v1::OptimizerConfig::RuleCase>(oneof->field(i)->number());
    const RuleDescriptor* rule = DescriptorFor(config_case);
    ASSERT_NE(rule, nullptr) << oneof->field(i)->name();
    EXPECT_EQ(rule->name, oneof->field(i)->name());
    v1::OptimizerConfig config;
    config.GetReflection()->MutableMessage(&config, oneof->field(i));
    auto settings = ResolveOptimizerConfig(config);
    ASSERT_TRUE(settings.ok()) << settings.status();
    EXPECT_EQ(&DescriptorOf(settings->rule), rule);
    EXPECT_EQ(settings->learning_rate, rule->default_learning_rate);
    names.insert(rule->name);
  }
  EXPECT_EQ(names.size(), Rules().size());
  EXPECT_EQ(DescriptorFor(v1::OptimizerConfig::RULE_NOT_SET), nullptr);
}

// A rule's slots are only those it gives a meaning to.
TEST(RuleCatalogTest, SlotsHaveMeanings) {
  for (const RuleParams& rule :
       {RuleParams(SgdParams{}), RuleParams(MomentumParams{}),
        RuleParams(AdagradParams{}),
        RuleParams(RmsPropParams{.momentum = 0.9, .centered = true}),
        RuleParams(AdamParams{.amsgrad = true}), RuleParams(EveParams{})}) {
    const RuleDescriptor& descriptor = DescriptorOf(rule);
    for (size_t i = 0; i < kSlotBits.size(); ++i) {
      const bool allocated = (SlotsOf(rule) & kSlotBits[i]) != 0;
      EXPECT_EQ(allocated, descriptor.meanings[i] != SlotMeaning::kUnused)
          << descriptor.name << " slot " << i;
    }
  }
}

}  // namespace
}  // namespace ps::optimizer
