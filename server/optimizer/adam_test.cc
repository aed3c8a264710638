// Hand-computed first steps of Adam, AMSGrad and AdamW, and the vector
// instruction sets against each other.
//
// Throughout: p0 = (1, -2, 0.5), g1 = (0.5, 1, -2), g2 = (1, -1, 0),
// g3 = (-0.5, 2, 1), lr = 0.1.

#include "server/optimizer/adam.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/optimizer_settings.h"
#include "server/optimizer/test_util.h"

namespace ps::optimizer {
namespace {

using ::testing::IsEmpty;
using ::testing::Pointwise;

TEST(AdamTest, DefaultsFirstThreeSteps) {
  const Trajectory run = RunSteps(Settings(AdamParams{}, 0.1), kGrads);
  // t = 1: m_hat = g1, v_hat = g1^2, so p1 = p0 - 0.1 sign(g1).
  EXPECT_THAT(run.values[0],
              Pointwise(FloatNearDouble(), std::vector{0.9, -2.1, 0.6}));
  // t = 2: m = 0.09 g1 + 0.1 g2 = (0.145, -0.01, -0.18), bc1 = 0.19;
  // v = 0.000999 g1^2 + 0.001 g2^2, bc2 = 0.001999.
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.8034818006385094, -2.0947368411578946,
                                    0.6670058244397327}));
  EXPECT_THAT(run.values[2],
              Pointwise(FloatNearDouble(),
                        std::vector{0.7614728708755779, -2.144561055200598,
                                    0.6847325441107139}));
  EXPECT_THAT(run.state.momentum,
              Pointwise(FloatNearDouble(), std::vector{0.0805, 0.191, -0.062}));
  EXPECT_THAT(run.state.max_square_avg, IsEmpty());
  EXPECT_EQ(run.state.step, 3u);
}

TEST(AdamTest, BetasAndEps) {
  // beta1 = 0.5, beta2 = 0.75, eps = 0.1: t = 1 gives
  // p1 = p0 - 0.1 g1 / (|g1| + 0.1).
  const Trajectory run = RunSteps(
      Settings(AdamParams{.beta1 = 0.5, .beta2 = 0.75, .eps = 0.1}, 0.1),
      kGrads);
  EXPECT_THAT(
      run.values[0],
      Pointwise(FloatNearDouble(),
                std::vector{1 - 0.05 / 0.6, -2 - 0.1 / 1.1, 0.5 + 0.2 / 2.1}));
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.8264551051044267, -2.0606060606060606,
                                    0.6425426573499236}));
}

// Gradients that shrink, so that v falls below its running max.
const std::vector<std::vector<float>> kShrinking = {
    {0.5f, 1.0f, -2.0f}, {0.01f, 0.02f, -0.01f}, {0.1f, 0.1f, 0.1f}};

TEST(AdamTest, AmsGradDividesByTheLargestSecondMoment) {
  const AdamParams adam{.beta1 = 0.5, .beta2 = 0.5};
  AdamParams amsgrad = adam;
  amsgrad.amsgrad = true;
  const Trajectory plain = RunSteps(Settings(adam, 0.1), kShrinking);
  const Trajectory max = RunSteps(Settings(amsgrad, 0.1), kShrinking);
  // t = 1: w = v, the same step.
  EXPECT_THAT(plain.values[0],
              Pointwise(FloatNearDouble(), std::vector{0.9, -2.1, 0.6}));
  EXPECT_THAT(max.values[0],
              Pointwise(FloatNearDouble(), std::vector{0.9, -2.1, 0.6}));
  EXPECT_THAT(plain.values[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.8399795794527521, -2.1600204225864164,
                                    0.6583109184284134}));
  EXPECT_THAT(plain.values[2],
              Pointwise(FloatNearDouble(),
                        std::vector{0.7754304957088848, -2.2133698569331695,
                                    0.6887733493012052}));
  // t = 2: v = 0.25 g1^2 + 0.5 g2^2 < w = 0.5 g1^2, so w is kept.
  EXPECT_THAT(max.values[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.8575421808317581, -2.1424578206882416,
                                    0.6412330765843502}));
  EXPECT_THAT(max.values[2],
              Pointwise(FloatNearDouble(),
                        std::vector{0.8227694502349092, -2.169671262384906,
                                    0.656540637639974}));
  EXPECT_THAT(max.state.max_square_avg,
              Pointwise(FloatNearDouble(), std::vector{0.125, 0.5, 2.0}));
}

TEST(AdamTest, WeightDecayIsAddedToTheGradient) {
  // g1' = g1 + 0.5 p0 = (1, 0, -1.75): the second value does not move.
  const Trajectory run = RunSteps(Settings(AdamParams{}, 0.1, 0.5), kGrads);
  EXPECT_THAT(run.values[0],
              Pointwise(FloatNearDouble(),
                        std::vector{0.900000001, -2.0, 0.5999999994285714}));
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.8007033132039982, -1.9255863181693544,
                                    0.6534621568518586}));
}

TEST(AdamTest, DecoupledWeightDecayShrinksTheValuesFirst) {
  // AdamW: p *= 1 - 0.1 * 0.5, then the Adam step on the raw gradient.
  const Trajectory run = RunSteps(
      Settings(AdamParams{.decoupled_weight_decay = true}, 0.1, 0.5), kGrads);
  EXPECT_THAT(run.values[0],
              Pointwise(FloatNearDouble(), std::vector{0.85, -2.0, 0.575}));
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.7109818005385093, -1.8947368412078947,
                                    0.6132558244647326}));
  // The moments saw the raw gradients: the same as Adam without decay.
  const Trajectory adam = RunSteps(Settings(AdamParams{}, 0.1), kGrads);
  EXPECT_EQ(run.state.momentum, adam.state.momentum);
  EXPECT_EQ(run.state.square_avg, adam.state.square_avg);
}

TEST(AdamTest, DecoupledWithoutWeightDecayIsAdam) {
  EXPECT_EQ(RunSteps(Settings(AdamParams{.decoupled_weight_decay = true}, 0.1),
                     kGrads)
                .values,
            RunSteps(Settings(AdamParams{}, 0.1), kGrads).values);
}

TEST(AdamTest, StepScalarsFollowTheBiasCorrections) {
  const AdamStep step = MakeAdamStep(0.1, 0.9, 0.999, 1e-8, 2);
  EXPECT_FLOAT_EQ(step.step_size, 0.1 / 0.19);
  EXPECT_FLOAT_EQ(step.bias_correction2_sqrt, std::sqrt(0.001999));
  EXPECT_EQ(step.one_minus_beta1, static_cast<float>(1.0 - 0.9));
  EXPECT_EQ(step.one_minus_beta2, static_cast<float>(1.0 - 0.999));
  EXPECT_EQ(step.feedback, 1.0f);
  EXPECT_EQ(step.decay_factor, 1.0f);
}

TEST(AdamSimdTest, TheDefaultIsSupported) {
  EXPECT_TRUE(SimdSupported(Simd::kBaseline));
  EXPECT_TRUE(SimdSupported(BestSimd()));
}

// Every instruction set gives the baseline's numbers bit for bit, for every
// option of the rule.
TEST(AdamSimdTest, EveryInstructionSetGivesTheBaselinesBits) {
  ExpectEverySimdGivesTheBaselinesBits(
      5, 32, [](Simd simd, float* base, Eigen::Index n, int options) {
        const bool amsgrad = options & 1;
        AdamStep step = MakeAdamStep(0.01, 0.9, 0.999, 1e-8, 1 + options % 3);
        if (options & 2) step.decay_factor = 0.999f;
        if (options & 4) step.feedback = 1.7f;
        GradientTransform transform;
        if (options & 8) transform.scale = 0.7f;
        if (options & 16) transform.weight_decay = 0.01f;
        FlatArray var(base, n), m(base + n, n), v(base + 2 * n, n);
        FlatArray w(base + 3 * n, n);
        ConstFlatArray grad(base + 4 * n, n);
        for (int t = 0; t < 3; ++t) {
          AdamRule::Apply(var, m, v, amsgrad ? std::optional(w) : std::nullopt,
                          step, transform, grad, simd);
        }
      });
}

}  // namespace
}  // namespace ps::optimizer
