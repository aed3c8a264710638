// Hand-computed first steps of RMSProp: plain, centered, with momentum.
//
// Throughout: p0 = (1, -2, 0.5), g1 = (0.5, 1, -2), g2 = (1, -1, 0),
// lr = 0.01 and alpha = 0.9 unless a test says otherwise.

#include "server/optimizer/rmsprop.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/optimizer_settings.h"
#include "server/optimizer/test_util.h"
#include "server/optimizer/update.h"

namespace ps::optimizer {
namespace {

using ::testing::IsEmpty;
using ::testing::Pointwise;
using ::testing::SizeIs;

// p1 with alpha = 0.9 and lr = 0.01, plain and centered; momentum does not
// change the first step.
const std::vector<double> kPlainFirstStep = {
    0.968377225398316, -2.031622775601684, 0.5316227761016838};
const std::vector<double> kCenteredFirstStep = {
    0.9666666688888887, -2.0333333322222225, 0.5333333327777778};

TEST(RmsPropTest, Plain) {
  const Trajectory run =
      RunSteps(Settings(RmsPropParams{.alpha = 0.9}, 0.01), 2);
  // v1 = 0.1 g1^2, d1 = sqrt(0.1) |g1|: p1 = p0 - 0.01 sign(g1) / sqrt(0.1).
  EXPECT_THAT(run.values[0], Pointwise(FloatNearDouble(), kPlainFirstStep));
  // v2 = 0.9 v1 + 0.1 g2^2 = (0.1225, 0.19, 0.36).
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.939805797643214, -2.0086812027409433,
                                    0.5316227761016838}));
  EXPECT_THAT(run.state.square_avg,
              Pointwise(FloatNearDouble(), std::vector{0.1225, 0.19, 0.36}));
  EXPECT_THAT(run.state.grad_avg, IsEmpty());
  EXPECT_THAT(run.state.momentum, IsEmpty());
}

TEST(RmsPropTest, EpsIsAddedToTheRoot) {
  // alpha = 0.5, eps = 0.25: d = sqrt(0.5) |g1| + 0.25.
  const Trajectory run =
      RunSteps(Settings(RmsPropParams{.alpha = 0.5, .eps = 0.25}, 0.01), 1);
  EXPECT_THAT(run.values[0],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9917157287525381, -2.01044815499855,
                                    0.5120176883857868}));
}

TEST(RmsPropTest, CenteredSubtractsTheSquaredMean) {
  const Trajectory run = RunSteps(
      Settings(RmsPropParams{.alpha = 0.9, .centered = true}, 0.01), 2);
  // a1 = 0.1 g1, v1 - a1^2 = 0.09 g1^2, d1 = 0.3 |g1|.
  EXPECT_THAT(run.values[0], Pointwise(FloatNearDouble(), kCenteredFirstStep));
  // a2 = 0.9 a1 + 0.1 g2 = (0.145, -0.01, -0.18).
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9352745625844857, -2.0103857197214317,
                                    0.5333333327777778}));
  EXPECT_THAT(run.state.grad_avg,
              Pointwise(FloatNearDouble(), std::vector{0.145, -0.01, -0.18}));
}

TEST(RmsPropTest, MomentumAccumulatesTheNormalizedGradient) {
  const Trajectory run =
      RunSteps(Settings(RmsPropParams{.alpha = 0.9, .momentum = 0.5}, 0.01), 2);
  // b1 = g1 / d1: the same first step as plain RMSProp.
  EXPECT_THAT(run.values[0], Pointwise(FloatNearDouble(), kPlainFirstStep));
  // b2 = 0.5 b1 + g2 / d2; the third value keeps moving with g2 = 0.
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9239944103423721, -2.024492590541785,
                                    0.5474341641525258}));
  EXPECT_THAT(run.state.momentum, SizeIs(3));
}

TEST(RmsPropTest, CenteredWithMomentum) {
  const Trajectory run = RunSteps(
      Settings(RmsPropParams{.alpha = 0.9, .momentum = 0.5, .centered = true},
               0.01),
      2);
  EXPECT_THAT(run.values[0], Pointwise(FloatNearDouble(), kCenteredFirstStep));
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9186078970289301, -2.0270523858325427,
                                    0.5499999991666668}));
}

TEST(RmsPropTest, DefaultAlphaIsRoundedOnceLikeTorch) {
  // alpha = 0.99: v1 = (1 - 0.99) g^2 with 1 - 0.99 rounded from double to
  // float32 (0.0099999998), not 1.0f - 0.99f (0.0099999905).
  BlockOptimizerState state;
  const OptimizerSettings settings = Settings(RmsPropParams{}, 0.01);
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

// The AVX loop gives the baseline's numbers bit for bit: plain, centered,
// with momentum, with clipping and L2 decay, and their combinations.
TEST(RmsPropSimdTest, EveryInstructionSetGivesTheBaselinesBits) {
  ExpectEverySimdGivesTheBaselinesBits(
      5, 16, [](Simd simd, float* base, Eigen::Index n, int options) {
        const bool centered = options & 1;
        const bool momentum = options & 2;
        GradientTransform transform;
        if (options & 4) transform.scale = 0.7f;
        if (options & 8) transform.weight_decay = 0.01f;
        FlatArray var(base, n), v(base + n, n), a(base + 2 * n, n);
        FlatArray b(base + 3 * n, n);
        ConstFlatArray grad(base + 4 * n, n);
        for (int t = 0; t < 3; ++t) {
          RmsPropRule::Apply(var, v, centered ? std::optional(a) : std::nullopt,
                             momentum ? std::optional(b) : std::nullopt, 0.01f,
                             0.99, 1e-8f, momentum ? 0.9f : 0.0f, transform,
                             grad, simd);
        }
      });
}

}  // namespace
}  // namespace ps::optimizer
