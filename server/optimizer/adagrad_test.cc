// Hand-computed first steps of Adagrad.
//
// Throughout: p0 = (1, -2, 0.5), g1 = (0.5, 1, -2), g2 = (1, -1, 0),
// g3 = (-0.5, 2, 1).

#include "server/optimizer/adagrad.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/optimizer_settings.h"
#include "server/optimizer/test_util.h"
#include "server/optimizer/update.h"

namespace ps::optimizer {
namespace {

using ::testing::Each;
using ::testing::Pointwise;

TEST(AdagradTest, DefaultsDivideByTheRootOfTheSumOfSquares) {
  const Trajectory run = RunSteps(Settings(AdagradParams{}, 0.1), 2);
  // s1 = g1^2, so p1 = p0 - 0.1 g1 / |g1| (eps = 1e-10 is below rounding).
  EXPECT_THAT(run.values[0],
              Pointwise(FloatNearDouble(), std::vector{0.9, -2.1, 0.6}));
  // s2 = (1.25, 2, 4): p2 = p1 - 0.1 g2 / sqrt(s2).
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9 - 0.1 / std::sqrt(1.25),
                                    -2.1 + 0.1 / std::sqrt(2.0), 0.6}));
  EXPECT_THAT(run.state.square_avg,
              Pointwise(FloatNearDouble(), std::vector{1.25, 2.0, 4.0}));
}

TEST(AdagradTest, InitialAccumulatorEpsAndLrDecay) {
  const AdagradParams params{
      .initial_accumulator_value = 0.5, .eps = 0.1, .lr_decay = 0.5};
  const Trajectory run = RunSteps(Settings(params, 0.1), 3);
  // t = 1: s = 0.5 + g1^2 = (0.75, 1.5, 4.5), clr = 0.1.
  EXPECT_THAT(run.values[0],
              Pointwise(FloatNearDouble(),
                        std::vector{1 - 0.05 / (std::sqrt(0.75) + .1),
                                    -2 - 0.1 / (std::sqrt(1.5) + .1),
                                    0.5 + 0.2 / (std::sqrt(4.5) + .1)}));
  // t = 2: s = (1.75, 2.5, 4.5), clr = 0.1 / (1 + 0.5).
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9013880533792797, -2.0358305748779846,
                                    0.590036540915797}));
  // t = 3: s = (2, 6.5, 5.5), clr = 0.1 / (1 + 2 * 0.5) = 0.05.
  EXPECT_THAT(run.values[2],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9178982740121076, -2.073573406261596,
                                    0.5695883817180583}));
}

TEST(AdagradTest, LrDecayAppliesOnTopOfTheSchedule) {
  OptimizerSettings settings = Settings(AdagradParams{.lr_decay = 0.5}, 0.1);
  settings.schedule.kind = Schedule::Kind::kExponential;
  settings.schedule.gamma = 0.5;
  const Trajectory run = RunSteps(settings, 2);
  EXPECT_THAT(run.values[0],
              Pointwise(FloatNearDouble(), std::vector{0.9, -2.1, 0.6}));
  // t = 2: clr = (0.1 * 0.5) / (1 + 0.5).
  const double clr = 0.05 / 1.5;
  EXPECT_THAT(run.values[1],
              Pointwise(FloatNearDouble(),
                        std::vector{0.9 - clr / std::sqrt(1.25),
                                    -2.1 + clr / std::sqrt(2.0), 0.6}));
}

TEST(AdagradTest, ZeroGradientWithZeroSumStaysPut) {
  // 0 / (sqrt(0) + eps) = 0: no NaN from the empty accumulator.
  OptimizerSettings settings = Settings(AdagradParams{}, 0.1);
  std::vector<float> values = kInitial;
  BlockOptimizerState state;
  const std::vector<float> zero(3, 0.0f);
  ApplyUpdate(settings, state, values, zero, std::nullopt);
  EXPECT_EQ(values, kInitial);
  EXPECT_THAT(state.square_avg, Each(0.0f));
}

TEST(AdagradTest, KernelTakesTheDecayedRate) {
  std::vector<float> values = {1.0f};
  std::vector<float> sum = {3.0f};
  const std::vector<float> grad = {1.0f};
  // s = 4, p -= 0.5 * 1 / (2 + 0) .
  AdagradRule::Apply(FlatArray(values.data(), 1), FlatArray(sum.data(), 1),
                     0.5f, 0.0f, GradientTransform{},
                     ConstFlatArray(grad.data(), 1));
  EXPECT_EQ(sum[0], 4.0f);
  EXPECT_EQ(values[0], 0.75f);
}

// The AVX loop gives the baseline's numbers bit for bit, with and without
// clipping and L2 decay.
TEST(AdagradSimdTest, EveryInstructionSetGivesTheBaselinesBits) {
  ExpectEverySimdGivesTheBaselinesBits(
      3, 4, [](Simd simd, float* base, Eigen::Index n, int options) {
        GradientTransform transform;
        if (options & 1) transform.scale = 0.7f;
        if (options & 2) transform.weight_decay = 0.01f;
        FlatArray var(base, n), sum(base + n, n);
        ConstFlatArray grad(base + 2 * n, n);
        for (int t = 0; t < 3; ++t) {
          AdagradRule::Apply(var, sum, 0.01f, 1e-10f, transform, grad, simd);
        }
      });
}

}  // namespace
}  // namespace ps::optimizer
