// Hand-computed first steps of SGD and Momentum (plain, dampened, Nesterov).
//
// Throughout: p0 = (1, -2, 0.5), g1 = (0.5, 1, -2), g2 = (1, -1, 0),
// g3 = (-0.5, 2, 1).

#include "server/optimizer/sgd.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

#include "common/optimizer_settings.h"
#include "server/optimizer/test_util.h"

namespace ps::optimizer {
namespace {

using ::testing::ElementsAre;
using ::testing::Pointwise;

TEST(SgdTest, FirstStepsAreValueMinusRateTimesGradient) {
  const Trajectory run = RunSteps(Settings(SgdParams{}, 0.1), 2);
  // p1 = p0 - 0.1 g1; p2 = p1 - 0.1 g2.
  EXPECT_THAT(run.values[0],
              Pointwise(FloatNearDouble(), std::vector{0.95, -2.1, 0.7}));
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(), std::vector{0.85, -2.0, 0.7}));
}

TEST(SgdTest, ZeroRateChangesNothing) {
  EXPECT_EQ(RunSteps(Settings(SgdParams{}, 0.0), 1).values[0], kInitial);
}

TEST(SgdTest, KernelUsesTheGivenRateAndTransform) {
  std::vector<float> values = kInitial;
  const std::vector<float> grad = kGrads[0];
  // g' = 0.5 g + 0.25 p = (0.5, 0, -0.875); p -= 2 g'.
  SgdRule::Apply(FlatArray(values.data(), 3), 2.0f,
                 GradientTransform{.scale = 0.5f, .weight_decay = 0.25f},
                 ConstFlatArray(grad.data(), 3));
  EXPECT_THAT(values, ElementsAre(0.0f, -2.0f, 2.25f));
}

TEST(MomentumTest, HeavyBallStartsTheBufferAtTheGradient) {
  const Trajectory run =
      RunSteps(Settings(MomentumParams{.momentum = 0.9}, 0.1), 3);
  // b1 = g1 (no dampening at t = 1): p1 = p0 - 0.1 g1.
  EXPECT_THAT(run.values[0],
              Pointwise(FloatNearDouble(), std::vector{0.95, -2.1, 0.7}));
  // b2 = 0.9 g1 + g2 = (1.45, -0.1, -1.8).
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(), std::vector{0.805, -2.09, 0.88}));
  // b3 = 0.9 b2 + g3 = (0.805, 1.91, -0.62).
  EXPECT_THAT(run.values[2],
              Pointwise(FloatNearDouble(), std::vector{0.7245, -2.281, 0.942}));
}

TEST(MomentumTest, DampeningScalesOnlyLaterGradients) {
  const Trajectory half = RunSteps(
      Settings(MomentumParams{.momentum = 0.9, .dampening = 0.5}, 0.1), 2);
  EXPECT_THAT(half.values[0],
              Pointwise(FloatNearDouble(), std::vector{0.95, -2.1, 0.7}));
  // b2 = 0.9 g1 + 0.5 g2 = (0.95, 0.4, -1.8).
  EXPECT_THAT(half.values[1],
              Pointwise(FloatNearDouble(), std::vector{0.855, -2.14, 0.88}));

  // The EMA form, tau = 0.9: b2 = 0.9 g1 + 0.1 g2 = (0.55, 0.8, -1.8),
  // b3 = 0.9 b2 + 0.1 g3 = (0.445, 0.92, -1.52).
  const Trajectory ema = RunSteps(
      Settings(MomentumParams{.momentum = 0.9, .dampening = 0.9}, 0.1), 3);
  EXPECT_THAT(ema.values[0],
              Pointwise(FloatNearDouble(), std::vector{0.95, -2.1, 0.7}));
  EXPECT_THAT(ema.values[1],
              Pointwise(FloatNearDouble(), std::vector{0.895, -2.18, 0.88}));
  EXPECT_THAT(ema.values[2],
              Pointwise(FloatNearDouble(), std::vector{0.8505, -2.272, 1.032}));
}

TEST(MomentumTest, NesterovLooksAhead) {
  const Trajectory run = RunSteps(
      Settings(MomentumParams{.momentum = 0.9, .nesterov = true}, 0.1), 2);
  // b1 = g1, u1 = g1 + 0.9 b1 = 1.9 g1.
  EXPECT_THAT(run.values[0],
              Pointwise(FloatNearDouble(), std::vector{0.905, -2.19, 0.88}));
  // b2 = (1.45, -0.1, -1.8), u2 = g2 + 0.9 b2 = (2.305, -1.09, -1.62).
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(), std::vector{0.6745, -2.081, 1.042}));
}

TEST(MomentumTest, ZeroMomentumIsPlainSgd) {
  EXPECT_EQ(RunSteps(Settings(MomentumParams{.momentum = 0.0}, 0.1), 3).values,
            RunSteps(Settings(SgdParams{}, 0.1), 3).values);
}

TEST(MomentumTest, KernelFirstStepOverwritesTheBuffer) {
  std::vector<float> values = kInitial;
  std::vector<float> buffer = {7.0f, 7.0f, 7.0f};  // stale: must be ignored
  MomentumRule::Apply(FlatArray(values.data(), 3), FlatArray(buffer.data(), 3),
                      /*first_step=*/true, 0.1f, 0.9f, 0.5, false,
                      GradientTransform{}, ConstFlatArray(kGrads[0].data(), 3));
  EXPECT_EQ(buffer, kGrads[0]);
  EXPECT_THAT(values,
              Pointwise(FloatNearDouble(), std::vector{0.95, -2.1, 0.7}));
}

}  // namespace
}  // namespace ps::optimizer
