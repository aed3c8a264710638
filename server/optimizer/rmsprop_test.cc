// Hand-computed first steps of RMSProp: plain, centered, with momentum.
//
// Throughout: p0 = (1, -2, 0.5), g1 = (0.5, 1, -2), g2 = (1, -1, 0),
// lr = 0.01 and alpha = 0.9 unless a test says otherwise.

#include "server/optimizer/rmsprop.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "server/optimizer/settings.h"
#include "server/optimizer/update.h"

namespace ps::optimizer {
namespace {

using ::testing::IsEmpty;
using ::testing::Pointwise;
using ::testing::SizeIs;

const std::vector<float> kInitial = {1.0f, -2.0f, 0.5f};
const std::vector<std::vector<float>> kGrads = {{0.5f, 1.0f, -2.0f},
                                                {1.0f, -1.0f, 0.0f}};

// |actual - expected| <= 1e-6 * max(1, |expected|): a few float32 roundings.
MATCHER(FloatNearDouble, "") {
  const double actual = std::get<0>(arg);
  const double expected = std::get<1>(arg);
  *result_listener << "differs by " << actual - expected;
  return std::abs(actual - expected) <=
         1e-6 * std::max(1.0, std::abs(expected));
}

std::vector<std::vector<float>> RunSteps(
    RmsPropParams params, double lr, int steps,
    BlockOptimizerState* state_out = nullptr) {
  OptimizerSettings settings;
  settings.rule = params;
  settings.learning_rate = lr;
  std::vector<float> values = kInitial;
  BlockOptimizerState state;
  std::vector<std::vector<float>> out;
  for (int t = 0; t < steps; ++t) {
    ApplyUpdate(settings, state, values, kGrads[t], std::nullopt);
    out.push_back(values);
  }
  if (state_out != nullptr) *state_out = state;
  return out;
}

TEST(RmsPropTest, Plain) {
  BlockOptimizerState state;
  const auto steps = RunSteps(RmsPropParams{.alpha = 0.9}, 0.01, 2, &state);
  // v1 = 0.1 g1^2, d1 = sqrt(0.1) |g1|: p1 = p0 - 0.01 sign(g1) / sqrt(0.1).
  EXPECT_THAT(steps[0],
              Pointwise(FloatNearDouble(),
                        std::vector{0.968377225398316, -2.031622775601684,
                                    0.5316227761016838}));
  // v2 = 0.9 v1 + 0.1 g2^2 = (0.1225, 0.19, 0.36).
  EXPECT_THAT(steps[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.939805797643214, -2.0086812027409433,
                                    0.5316227761016838}));
  EXPECT_THAT(state.square_avg,
              Pointwise(FloatNearDouble(), std::vector{0.1225, 0.19, 0.36}));
  EXPECT_THAT(state.grad_avg, IsEmpty());
  EXPECT_THAT(state.momentum, IsEmpty());
}

TEST(RmsPropTest, EpsIsAddedToTheRoot) {
  // alpha = 0.5, eps = 0.25: d = sqrt(0.5) |g1| + 0.25.
  const auto steps =
      RunSteps(RmsPropParams{.alpha = 0.5, .eps = 0.25}, 0.01, 1);
  EXPECT_THAT(steps[0],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9917157287525381, -2.01044815499855,
                                    0.5120176883857868}));
}

TEST(RmsPropTest, CenteredSubtractsTheSquaredMean) {
  BlockOptimizerState state;
  const auto steps =
      RunSteps(RmsPropParams{.alpha = 0.9, .centered = true}, 0.01, 2, &state);
  // a1 = 0.1 g1, v1 - a1^2 = 0.09 g1^2, d1 = 0.3 |g1|.
  EXPECT_THAT(steps[0],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9666666688888887, -2.0333333322222225,
                                    0.5333333327777778}));
  // a2 = 0.9 a1 + 0.1 g2 = (0.145, -0.01, -0.18).
  EXPECT_THAT(steps[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9352745625844857, -2.0103857197214317,
                                    0.5333333327777778}));
  EXPECT_THAT(state.grad_avg,
              Pointwise(FloatNearDouble(), std::vector{0.145, -0.01, -0.18}));
}

TEST(RmsPropTest, MomentumAccumulatesTheNormalizedGradient) {
  BlockOptimizerState state;
  const auto steps =
      RunSteps(RmsPropParams{.alpha = 0.9, .momentum = 0.5}, 0.01, 2, &state);
  // b1 = g1 / d1: the same first step as plain RMSProp.
  EXPECT_THAT(steps[0],
              Pointwise(FloatNearDouble(),
                        std::vector{0.968377225398316, -2.031622775601684,
                                    0.5316227761016838}));
  // b2 = 0.5 b1 + g2 / d2; the third value keeps moving with g2 = 0.
  EXPECT_THAT(steps[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9239944103423721, -2.024492590541785,
                                    0.5474341641525258}));
  EXPECT_THAT(state.momentum, SizeIs(3));
}

TEST(RmsPropTest, CenteredWithMomentum) {
  const auto steps = RunSteps(
      RmsPropParams{.alpha = 0.9, .momentum = 0.5, .centered = true}, 0.01, 2);
  EXPECT_THAT(steps[0],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9666666688888887, -2.0333333322222225,
                                    0.5333333327777778}));
  EXPECT_THAT(steps[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9186078970289301, -2.0270523858325427,
                                    0.5499999991666668}));
}

TEST(RmsPropTest, DefaultAlphaIsRoundedOnceLikeTorch) {
  // alpha = 0.99: v1 = (1 - 0.99) g^2 with 1 - 0.99 rounded from double to
  // float32 (0.0099999998), not 1.0f - 0.99f (0.0099999905).
  BlockOptimizerState state;
  OptimizerSettings settings;
  settings.rule = RmsPropParams{};
  settings.learning_rate = 0.01;
  std::vector<float> values = {0.0f};
  const std::vector<float> grad = {1.0f};
  ApplyUpdate(settings, state, values, grad, std::nullopt);
  EXPECT_EQ(state.square_avg[0], static_cast<float>(1.0 - 0.99));
}

TEST(RmsPropTest, CenteredWithZeroVarianceDividesByEps) {
  // alpha = 0 makes v = g^2 and a = g, so v - a^2 = 0 and d = eps.
  std::vector<float> values = {1.0f};
  std::vector<float> v = {0.0f}, a = {0.0f};
  const std::vector<float> grad = {0.1f};
  RmsPropRule::Apply(FlatArray(values.data(), 1), FlatArray(v.data(), 1),
                     FlatArray(a.data(), 1), std::nullopt, 0.01f, 0.0, 1e-3f,
                     0.0f, GradientTransform{}, ConstFlatArray(grad.data(), 1));
  // d = sqrt(max(0, 0.1^2 - 0.1^2)) + 1e-3, p -= 0.01 * 0.1 / 1e-3.
  EXPECT_FALSE(std::isnan(values[0]));
  EXPECT_NEAR(values[0], 0.0, 1e-5);
}

}  // namespace
}  // namespace ps::optimizer
