// Eve (arXiv:1611.01505v2, Algorithm 1): the feedback d and f_hat through
// every clip branch, and hand-computed first steps.

#include "server/optimizer/eve.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/optimizer_settings.h"
#include "server/optimizer/test_util.h"
#include "server/optimizer/update.h"

namespace ps::optimizer {
namespace {

using ::testing::DoubleNear;
using ::testing::Pointwise;

struct FeedbackCase {
  const char* what;
  double f;
  double f_hat;  // after the update
  double d;      // after the update
};

TEST(EveFeedbackTest, EveryClipBranch) {
  // k = 0.1, K = 10, beta3 = 0.5 so that d moves visibly:
  // d' = 0.5 d + 0.5 r.
  const FeedbackCase cases[] = {
      {"t = 1 sets f_hat = f and d = 1", 2.0, 2.0, 1.0},
      {"f == f_hat counts as a rise: c = k + 1 = 1.1, r = 0.1", 2.0, 2.2, 0.55},
      {"rise within [k+1, K+1]: c = f/f_hat = 1.5, r = 0.5", 3.3, 3.3, 0.525},
      {"rise below k+1: c = 1.1, r = 0.1", 3.4, 3.63, 0.3125},
      {"rise above K+1: c = K + 1 = 11, r = 10", 100.0, 39.93, 5.15625},
      {"fall below 1/(K+1): c = 1/11, r = 10", 1.0, 3.63, 7.578125},
      {"fall above 1/(k+1): c = 1/1.1, r = 0.1", 3.5, 3.3, 3.8390625},
      {"fall within: c = 2/3.3, r = 0.65", 2.0, 2.0, 2.24453125},
      {"f = 0 (at the floor) after the start: c = 1/11, r = 10", 0.0, 2.0 / 11,
       6.122265625},
  };
  EveFeedbackState state;
  for (const FeedbackCase& c : cases) {
    EveFeedback::Update(state, c.f, /*beta3=*/0.5, /*k=*/0.1, /*big_k=*/10.0);
    EXPECT_TRUE(state.started) << c.what;
    EXPECT_THAT(state.f_hat, DoubleNear(c.f_hat, 1e-12)) << c.what;
    EXPECT_THAT(state.d, DoubleNear(c.d, 1e-12)) << c.what;
  }
}

TEST(EveFeedbackTest, DefaultBeta3MovesDSlowly) {
  EveFeedbackState state;
  EveFeedback::Update(state, 1.0, 0.999, 0.1, 10.0);
  EveFeedback::Update(state, 2.0, 0.999, 0.1, 10.0);  // c = 2, r = 1
  EXPECT_DOUBLE_EQ(state.f_hat, 2.0);
  EXPECT_DOUBLE_EQ(state.d, 0.999 + 0.001);
}

TEST(EveFeedbackTest, OtherThresholds) {
  // k = 0.2, K = 5: a rise of 1.1 is clipped up to 1.2, a fall to 0.1 up
  // to 1/6.
  EveFeedbackState state;
  EveFeedback::Update(state, 1.0, 0.0, 0.2, 5.0);
  EveFeedback::Update(state, 1.1, 0.0, 0.2, 5.0);
  EXPECT_DOUBLE_EQ(state.f_hat, 1.2);
  EXPECT_NEAR(state.d, 0.2, 1e-12);  // beta3 = 0: d = r
  EveFeedback::Update(state, 0.12, 0.0, 0.2, 5.0);
  EXPECT_DOUBLE_EQ(state.f_hat, 0.2);
  EXPECT_NEAR(state.d, 5.0, 1e-12);  // r = (1.2 - 0.2) / 0.2
}

// From here on: p0 = (1, -2, 0.5), g1 = (0.5, 1, -2), g2 = (1, -1, 0),
// g3 = (-0.5, 2, 1).

TEST(EveTest, FirstStepsDivideTheRootOfVHatByD) {
  const OptimizerSettings settings =
      Settings(EveParams{.beta3 = 0.5, .loss_floor = 1.0}, 0.1);
  // Losses 3, 4, 4.1: f = 2, 3, 3.1, so d = 1, 0.75, 0.425 (see above).
  const double losses[] = {3.0, 4.0, 4.1};
  const std::vector<std::vector<double>> expected = {
      // t = 1 is Adam's first step: p0 - 0.1 sign(g1).
      {0.9, -2.1, 0.6},
      // t = 2: Adam's m_hat and v_hat, p -= 0.1 m_hat / (0.75 sqrt(v_hat)).
      {0.7713090673938731, -2.0929824552339182, 0.6893410992090119},
      {0.6724645286664506, -2.210215898919017, 0.7310510274093703},
  };
  const double d[] = {1.0, 0.75, 0.425};
  std::vector<float> values = kInitial;
  BlockOptimizerState state;
  for (int t = 0; t < 3; ++t) {
    ASSERT_TRUE(CheckUpdate(settings, state, losses[t]).ok());
    ApplyUpdate(settings, state, values, kGrads[t], losses[t]);
    EXPECT_THAT(values, Pointwise(FloatNearDouble(), expected[t]))
        << "t = " << t + 1;
    EXPECT_NEAR(state.eve.d, d[t], 1e-12);
  }
  EXPECT_NEAR(state.eve.f_hat, 3.3, 1e-12);
}

TEST(EveTest, ConstantLossLengthensTheSteps) {
  // f = f_hat every step: c = k + 1 = 1.1 and r = 0.1, so d drifts from 1
  // down towards 0.1 and Eve's steps grow longer than Adam's.
  const OptimizerSettings eve = Settings(EveParams{}, 0.1);
  const OptimizerSettings adam = Settings(AdamParams{}, 0.1);
  std::vector<float> eve_values = kInitial, adam_values = kInitial;
  BlockOptimizerState eve_state, adam_state;
  ApplyUpdate(eve, eve_state, eve_values, kGrads[0], 1.0);
  ApplyUpdate(adam, adam_state, adam_values, kGrads[0], std::nullopt);
  EXPECT_EQ(eve_values, adam_values);  // d = 1 at t = 1
  const std::vector<float> after_first = eve_values;
  ApplyUpdate(eve, eve_state, eve_values, kGrads[1], 1.0);
  ApplyUpdate(adam, adam_state, adam_values, kGrads[1], std::nullopt);
  EXPECT_DOUBLE_EQ(eve_state.eve.d, 0.999 + 0.001 * 0.1);
  for (int i = 0; i < 3; ++i) {
    EXPECT_GT(std::abs(eve_values[i] - after_first[i]),
              std::abs(adam_values[i] - after_first[i]))
        << i;
  }
}

}  // namespace
}  // namespace ps::optimizer
