// Optimizer configs: every refusal names its field, defaults follow
// torch.optim 1.13, and the text form parses and prints.

#include "common/optimizer_config.h"

#include <gmock/gmock.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <string>
#include <variant>

namespace ps {
namespace {

using optimizer::AdagradParams;
using optimizer::AdamParams;
using optimizer::EveParams;
using optimizer::MomentumParams;
using optimizer::RmsPropParams;
using optimizer::Schedule;
using optimizer::SgdParams;
using ::testing::HasSubstr;

// Parses text without validating it.
v1::OptimizerConfig Config(const std::string& text) {
  v1::OptimizerConfig config;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &config))
      << text;
  return config;
}

optimizer::OptimizerSettings Resolve(const std::string& text) {
  const auto settings = ResolveOptimizerConfig(Config(text));
  EXPECT_TRUE(settings.ok()) << text << ": " << settings.status();
  return settings.ok() ? *settings : optimizer::OptimizerSettings{};
}

struct Refusal {
  const char* config;
  const char* field;  // the message must name it
};

class RefusalTest : public ::testing::TestWithParam<Refusal> {};

TEST_P(RefusalTest, IsInvalidArgumentNamingTheField) {
  const Refusal& refusal = GetParam();
  const v1::OptimizerConfig config = Config(refusal.config);
  const auto resolved = ResolveOptimizerConfig(config);
  ASSERT_FALSE(resolved.ok()) << refusal.config;
  EXPECT_EQ(resolved.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(resolved.status().message(), HasSubstr(refusal.field));

  EXPECT_EQ(ValidateOptimizerConfig(config), resolved.status());
  const auto parsed = ParseOptimizerConfig(refusal.config);
  EXPECT_EQ(parsed.status(), resolved.status());
}

INSTANTIATE_TEST_SUITE_P(
    Issue2, RefusalTest,
    ::testing::Values(
        // No rule.
        Refusal{"", "names no rule"},
        Refusal{"learning_rate: 0.1", "names no rule"},
        // lr < 0, and NaN anywhere.
        Refusal{"sgd {} learning_rate: -0.001", "learning_rate"},
        Refusal{"adam {} learning_rate: nan", "learning_rate"},
        Refusal{"sgd {} weight_decay: -1", "weight_decay"},
        // Betas and alpha outside [0, 1).
        Refusal{"adam { beta1: 1 }", "adam.beta1"},
        Refusal{"adam { beta1: -0.1 }", "adam.beta1"},
        Refusal{"adam { beta2: 1.5 }", "adam.beta2"},
        Refusal{"adam { beta2: nan }", "adam.beta2"},
        Refusal{"eve { beta1: 1 }", "eve.beta1"},
        Refusal{"eve { beta2: -0.5 }", "eve.beta2"},
        Refusal{"eve { beta3: 1 }", "eve.beta3"},
        Refusal{"rmsprop { alpha: 1 }", "rmsprop.alpha"},
        Refusal{"rmsprop { alpha: -0.01 }", "rmsprop.alpha"},
        // eps <= 0.
        Refusal{"adagrad { eps: 0 }", "adagrad.eps"},
        Refusal{"rmsprop { eps: -1e-8 }", "rmsprop.eps"},
        Refusal{"adam { eps: 0 }", "adam.eps"},
        Refusal{"eve { eps: -1 }", "eve.eps"},
        Refusal{"adam { eps: inf }", "adam.eps"},
        // momentum < 0.
        Refusal{"momentum { momentum: -0.1 }", "momentum.momentum"},
        Refusal{"rmsprop { momentum: -0.5 }", "rmsprop.momentum"},
        // Dampening outside [0, 1].
        Refusal{"momentum { dampening: -0.1 }", "momentum.dampening"},
        Refusal{"momentum { dampening: 1.01 }", "momentum.dampening"},
        // Nesterov without momentum, or with dampening.
        Refusal{"momentum { momentum: 0 nesterov: true }", "nesterov"},
        Refusal{"momentum { dampening: 0.5 nesterov: true }", "nesterov"},
        // Adagrad's other fields.
        Refusal{"adagrad { initial_accumulator_value: -1 }",
                "adagrad.initial_accumulator_value"},
        Refusal{"adagrad { lr_decay: -0.1 }", "adagrad.lr_decay"},
        // clip_norm <= 0.
        Refusal{"sgd {} clip_norm: 0", "clip_norm"},
        Refusal{"adam {} clip_norm: -1", "clip_norm"},
        // Schedules: gamma <= 0, step_size or t_max of 0.
        Refusal{"sgd {} schedule { step { step_size: 5 gamma: 0 } }",
                "schedule.step.gamma"},
        Refusal{"sgd {} schedule { step { step_size: 5 } }",
                "schedule.step.gamma"},
        Refusal{"sgd {} schedule { step { step_size: 0 gamma: 0.5 } }",
                "schedule.step.step_size"},
        Refusal{"sgd {} schedule { exponential { gamma: -0.9 } }",
                "schedule.exponential.gamma"},
        Refusal{"sgd {} schedule { exponential { } }",
                "schedule.exponential.gamma"},
        Refusal{"sgd {} schedule { cosine { t_max: 0 } }",
                "schedule.cosine.t_max"},
        Refusal{"sgd {} schedule { cosine { t_max: 10 eta_min: -1 } }",
                "schedule.cosine.eta_min"},
        // k >= K, and Eve's other fields.
        Refusal{"eve { k: 10 big_k: 10 }", "eve.k"},
        Refusal{"eve { k: 12 }", "eve.big_k"},
        Refusal{"eve { k: -0.1 }", "eve.k"},
        Refusal{"eve { big_k: 0 }", "eve.big_k"},
        Refusal{"eve { loss_floor: inf }", "eve.loss_floor"}));

// Values that pass in double precision but not once the kernels take them
// as float32: they would turn values into Inf or NaN.
INSTANTIATE_TEST_SUITE_P(
    Float32Range, RefusalTest,
    ::testing::Values(
        Refusal{"sgd {} learning_rate: 1e39", "learning_rate"},
        Refusal{"adam { eps: 1e-50 }", "adam.eps"},
        Refusal{"adam { eps: 1e-39 }", "float32's normal range"},
        Refusal{"adagrad { eps: 1e-45 }", "adagrad.eps"},
        Refusal{"rmsprop { eps: 1e-40 }", "rmsprop.eps"},
        Refusal{"eve { eps: 1e-300 }", "eve.eps"},
        Refusal{"sgd {} weight_decay: 1e300", "weight_decay"},
        Refusal{"sgd {} clip_norm: 1e-40", "clip_norm"},
        Refusal{"adagrad { initial_accumulator_value: 1e39 }",
                "adagrad.initial_accumulator_value"},
        Refusal{"eve { loss_floor: -1e39 }", "eve.loss_floor"},
        Refusal{"eve { big_k: 1e40 }", "eve.big_k"},
        // Rates that grow without bound, and buffers that do.
        Refusal{"sgd {} schedule { step { step_size: 1 gamma: 2 } }",
                "schedule.step.gamma"},
        Refusal{"sgd {} schedule { exponential { gamma: 1.01 } }",
                "schedule.exponential.gamma"},
        Refusal{"momentum { momentum: 1.5 }", "momentum.momentum"},
        Refusal{"rmsprop { momentum: 2 }", "rmsprop.momentum"},
        // AdamW multiplies values by 1 - lr * weight_decay each step.
        Refusal{"adam { decoupled_weight_decay: true } learning_rate: 10 "
                "weight_decay: 0.1",
                "learning_rate x weight_decay < 1"}));

TEST(OptimizerConfigTest, AcceptsTheEdgesOfEachRange) {
  for (const char* text : {
           "sgd {} learning_rate: 0",
           "momentum { momentum: 0 }",
           "momentum { dampening: 1 }",
           "momentum { momentum: 0.5 nesterov: true }",
           "adam { beta1: 0 beta2: 0 }",
           "adam { beta1: 0.999999 }",
           "rmsprop { alpha: 0 }",
           "eve { k: 0 big_k: 0.5 beta3: 0 loss_floor: -100 }",
           "adagrad { initial_accumulator_value: 0 lr_decay: 0 }",
           "sgd {} clip_norm: 1e-9",
           "sgd {} schedule { step { step_size: 1 gamma: 1 } }",
           "sgd {} schedule { exponential { gamma: 1 } }",
           "momentum { momentum: 1 }",
           "rmsprop { momentum: 1 }",
           "sgd {} learning_rate: 3e38 weight_decay: 3e38",
           "adam { eps: 1.2e-38 }",
           "adam { decoupled_weight_decay: true } learning_rate: 1 "
           "weight_decay: 0.999",
           "adam {} learning_rate: 10 weight_decay: 0.1",
           "sgd {} schedule { cosine { t_max: 1 eta_min: 0 } }",
           "sgd {} schedule { warmup_steps: 0 }",
       }) {
    EXPECT_TRUE(ResolveOptimizerConfig(Config(text)).ok()) << text;
  }
}

TEST(OptimizerConfigTest, KKeepsItsDefaultBigK) {
  // "eve { k: 12 }" is refused above for K = 10; k = 9.99 is fine.
  const auto settings = Resolve("eve { k: 9.99 }");
  EXPECT_EQ(std::get<EveParams>(settings.rule).big_k, 10.0);
}

TEST(OptimizerConfigTest, DefaultLearningRates) {
  EXPECT_EQ(Resolve("sgd {}").learning_rate, 1e-2);
  EXPECT_EQ(Resolve("momentum {}").learning_rate, 1e-2);
  EXPECT_EQ(Resolve("adagrad {}").learning_rate, 1e-2);
  EXPECT_EQ(Resolve("rmsprop {}").learning_rate, 1e-2);
  EXPECT_EQ(Resolve("adam {}").learning_rate, 1e-3);
  EXPECT_EQ(Resolve("eve {}").learning_rate, 1e-3);
  EXPECT_EQ(Resolve("adam {} learning_rate: 0.5").learning_rate, 0.5);
}

TEST(OptimizerConfigTest, DefaultsOfEveryRule) {
  const auto momentum = std::get<MomentumParams>(Resolve("momentum {}").rule);
  EXPECT_EQ(momentum.momentum, 0.9);  // not torch's 0
  EXPECT_EQ(momentum.dampening, 0.0);
  EXPECT_FALSE(momentum.nesterov);

  const auto adagrad = std::get<AdagradParams>(Resolve("adagrad {}").rule);
  EXPECT_EQ(adagrad.initial_accumulator_value, 0.0);
  EXPECT_EQ(adagrad.eps, 1e-10);
  EXPECT_EQ(adagrad.lr_decay, 0.0);

  const auto rmsprop = std::get<RmsPropParams>(Resolve("rmsprop {}").rule);
  EXPECT_EQ(rmsprop.alpha, 0.99);
  EXPECT_EQ(rmsprop.eps, 1e-8);
  EXPECT_EQ(rmsprop.momentum, 0.0);
  EXPECT_FALSE(rmsprop.centered);

  const auto adam = std::get<AdamParams>(Resolve("adam {}").rule);
  EXPECT_EQ(adam.beta1, 0.9);
  EXPECT_EQ(adam.beta2, 0.999);
  EXPECT_EQ(adam.eps, 1e-8);
  EXPECT_FALSE(adam.amsgrad);
  EXPECT_FALSE(adam.decoupled_weight_decay);

  const auto eve = std::get<EveParams>(Resolve("eve {}").rule);
  EXPECT_EQ(eve.beta1, 0.9);
  EXPECT_EQ(eve.beta2, 0.999);
  EXPECT_EQ(eve.beta3, 0.999);
  EXPECT_EQ(eve.k, 0.1);
  EXPECT_EQ(eve.big_k, 10.0);
  EXPECT_EQ(eve.eps, 1e-8);
  EXPECT_EQ(eve.loss_floor, 0.0);

  const auto sgd = Resolve("sgd {}");
  EXPECT_TRUE(std::holds_alternative<SgdParams>(sgd.rule));
  EXPECT_EQ(sgd.weight_decay, 0.0);
  EXPECT_FALSE(sgd.clip_norm.has_value());
  EXPECT_EQ(sgd.schedule.kind, Schedule::Kind::kConstant);
  EXPECT_EQ(sgd.schedule.warmup_steps, 0u);
}

TEST(OptimizerConfigTest, SetFieldsAreKept) {
  const auto m = std::get<MomentumParams>(
      Resolve("momentum { momentum: 0.5 dampening: 0.25 }").rule);
  EXPECT_EQ(m.momentum, 0.5);
  EXPECT_EQ(m.dampening, 0.25);
  EXPECT_TRUE(
      std::get<MomentumParams>(Resolve("momentum { nesterov: true }").rule)
          .nesterov);
  const auto a = std::get<AdagradParams>(
      Resolve("adagrad { initial_accumulator_value: 0.1 eps: 1e-6 "
              "lr_decay: 0.01 }")
          .rule);
  EXPECT_EQ(a.initial_accumulator_value, 0.1);
  EXPECT_EQ(a.eps, 1e-6);
  EXPECT_EQ(a.lr_decay, 0.01);
  const auto r = std::get<RmsPropParams>(
      Resolve("rmsprop { alpha: 0.9 eps: 1e-3 momentum: 0.5 centered: true }")
          .rule);
  EXPECT_EQ(r.alpha, 0.9);
  EXPECT_EQ(r.eps, 1e-3);
  EXPECT_EQ(r.momentum, 0.5);
  EXPECT_TRUE(r.centered);
  const auto adam = std::get<AdamParams>(
      Resolve("adam { beta1: 0.8 beta2: 0.99 eps: 1e-6 amsgrad: true "
              "decoupled_weight_decay: true }")
          .rule);
  EXPECT_EQ(adam.beta1, 0.8);
  EXPECT_EQ(adam.beta2, 0.99);
  EXPECT_EQ(adam.eps, 1e-6);
  EXPECT_TRUE(adam.amsgrad);
  EXPECT_TRUE(adam.decoupled_weight_decay);
  const auto eve = std::get<EveParams>(
      Resolve("eve { beta1: 0.8 beta2: 0.99 beta3: 0.9 k: 0.2 big_k: 5 "
              "eps: 1e-6 loss_floor: -1.5 }")
          .rule);
  EXPECT_EQ(eve.beta1, 0.8);
  EXPECT_EQ(eve.beta2, 0.99);
  EXPECT_EQ(eve.beta3, 0.9);
  EXPECT_EQ(eve.k, 0.2);
  EXPECT_EQ(eve.big_k, 5.0);
  EXPECT_EQ(eve.eps, 1e-6);
  EXPECT_EQ(eve.loss_floor, -1.5);

  const auto s = Resolve(
      "adam {} weight_decay: 0.01 clip_norm: 2.5 "
      "schedule { step { step_size: 7 gamma: 0.5 } warmup_steps: 100 }");
  EXPECT_EQ(s.weight_decay, 0.01);
  ASSERT_TRUE(s.clip_norm.has_value());
  EXPECT_EQ(*s.clip_norm, 2.5);
  EXPECT_EQ(s.schedule.kind, Schedule::Kind::kStep);
  EXPECT_EQ(s.schedule.step_size, 7u);
  EXPECT_EQ(s.schedule.gamma, 0.5);
  EXPECT_EQ(s.schedule.warmup_steps, 100u);

  const auto e = Resolve("sgd {} schedule { exponential { gamma: 0.95 } }");
  EXPECT_EQ(e.schedule.kind, Schedule::Kind::kExponential);
  EXPECT_EQ(e.schedule.gamma, 0.95);
  const auto c =
      Resolve("sgd {} schedule { cosine { t_max: 50 eta_min: 1e-5 } }");
  EXPECT_EQ(c.schedule.kind, Schedule::Kind::kCosine);
  EXPECT_EQ(c.schedule.t_max, 50u);
  EXPECT_EQ(c.schedule.eta_min, 1e-5);
}

TEST(OptimizerConfigTest, ParsesTextFormat) {
  const auto config =
      ParseOptimizerConfig("adam { beta1: 0.8 } learning_rate: 0.01");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->has_adam());
  EXPECT_EQ(config->adam().beta1(), 0.8);
  EXPECT_FALSE(config->adam().has_beta2());  // unset stays unset
  EXPECT_EQ(config->learning_rate(), 0.01);
}

TEST(OptimizerConfigTest, RefusesTextThatDoesNotParse) {
  for (const char* text :
       {"adam {", "adam { beta9: 1 }", "not a config", "learning_rate: fast"}) {
    const auto config = ParseOptimizerConfig(text);
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument)
        << text;
    EXPECT_THAT(config.status().message(), HasSubstr("cannot parse")) << text;
  }
}

TEST(OptimizerConfigTest, TextRoundTrips) {
  for (const char* text : {
           "sgd {}",
           "momentum { momentum: 0.5 nesterov: true } learning_rate: 0.1",
           "rmsprop { centered: true } weight_decay: 0.01 clip_norm: 1",
           "eve { k: 0.2 loss_floor: -1 } schedule { cosine { t_max: 10 "
           "eta_min: 0.001 } warmup_steps: 5 }",
       }) {
    const v1::OptimizerConfig config = Config(text);
    const std::string printed = OptimizerConfigToText(config);
    EXPECT_EQ(printed.find('\n'), std::string::npos) << printed;
    EXPECT_NE(printed.back(), ' ') << printed;
    const auto back = ParseOptimizerConfig(printed);
    ASSERT_TRUE(back.ok()) << printed << ": " << back.status();
    EXPECT_TRUE(
        google::protobuf::util::MessageDifferencer::Equals(config, *back))
        << printed;
  }
}

}  // namespace
}  // namespace ps
