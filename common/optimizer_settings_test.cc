// Learning-rate schedules and warm-up, as torch.optim.lr_scheduler computes
// them per step (t is the block's 1-based step).

#include "common/optimizer_settings.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

namespace ps::optimizer {
namespace {

Schedule Step(uint64_t step_size, double gamma) {
  return Schedule{
      .kind = Schedule::Kind::kStep, .step_size = step_size, .gamma = gamma};
}

Schedule Cosine(uint64_t t_max, double eta_min) {
  return Schedule{
      .kind = Schedule::Kind::kCosine, .t_max = t_max, .eta_min = eta_min};
}

TEST(ScheduleTest, ConstantKeepsTheBaseRate) {
  for (uint64_t t : {1, 2, 100, 1000000}) {
    EXPECT_EQ(ScheduledLearningRate(0.25, Schedule{}, t), 0.25) << t;
  }
}

TEST(ScheduleTest, StepDecaysEveryStepSizeSteps) {
  // gamma^floor((t - 1) / 3): StepLR(step_size=3) after t - 1 scheduler
  // steps.
  const Schedule s = Step(3, 0.5);
  EXPECT_EQ(ScheduledLearningRate(2.0, s, 1), 2.0);
  EXPECT_EQ(ScheduledLearningRate(2.0, s, 3), 2.0);
  EXPECT_EQ(ScheduledLearningRate(2.0, s, 4), 1.0);
  EXPECT_EQ(ScheduledLearningRate(2.0, s, 6), 1.0);
  EXPECT_EQ(ScheduledLearningRate(2.0, s, 7), 0.5);
  EXPECT_EQ(ScheduledLearningRate(2.0, s, 31), 2.0 / 1024);
  EXPECT_EQ(ScheduledLearningRate(2.0, Step(1, 0.5), 2), 1.0);
}

TEST(ScheduleTest, ExponentialDecaysEveryStep) {
  Schedule s{.kind = Schedule::Kind::kExponential, .gamma = 0.9};
  EXPECT_EQ(ScheduledLearningRate(1.0, s, 1), 1.0);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, s, 2), 0.9);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, s, 3), 0.81);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(0.1, s, 5), 0.1 * 0.6561);
}

TEST(ScheduleTest, CosineAnnealsToEtaMinAndBackPastTMax) {
  // eta_min + (lr - eta_min) (1 + cos(pi (t - 1) / t_max)) / 2 with
  // lr = 1, eta_min = 0.1, t_max = 10.
  const Schedule s = Cosine(10, 0.1);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, s, 1), 1.0);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, s, 6), 0.55);  // cos(pi/2) = 0
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, s, 11), 0.1);  // t - 1 = t_max
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, s, 3),
                   0.1 + 0.9 * (1 + std::cos(std::numbers::pi / 5)) / 2);
  // Past t_max the rate rises again, as CosineAnnealingLR's does.
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, s, 16), 0.55);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, s, 21), 1.0);
  EXPECT_GT(ScheduledLearningRate(1.0, s, 13),
            ScheduledLearningRate(1.0, s, 12));
}

TEST(ScheduleTest, CosineWithZeroEtaMin) {
  const Schedule s = Cosine(4, 0.0);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(0.5, s, 2),
                   0.5 * (1 + std::cos(std::numbers::pi / 4)) / 2);
  EXPECT_NEAR(ScheduledLearningRate(0.5, s, 5), 0.0, 1e-17);
}

TEST(ScheduleTest, WarmUpRampsLinearly) {
  Schedule s{.warmup_steps = 4};
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, s, 1), 0.25);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, s, 2), 0.5);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, s, 3), 0.75);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, s, 4), 1.0);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, s, 50), 1.0);
}

TEST(ScheduleTest, WarmUpMultipliesTheSchedule) {
  Schedule step = Step(2, 0.5);
  step.warmup_steps = 4;
  // t = 3: 0.5^1 * 3/4.
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, step, 3), 0.375);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, step, 5), 0.25);

  Schedule cosine = Cosine(10, 0.1);
  cosine.warmup_steps = 10;
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(1.0, cosine, 6), 0.55 * 0.6);
}

TEST(ParamsTest, DefaultsAreTorchs) {
  EXPECT_EQ(MomentumParams{}.momentum, 0.9);
  EXPECT_EQ(MomentumParams{}.dampening, 0.0);
  EXPECT_EQ(AdagradParams{}.eps, 1e-10);
  EXPECT_EQ(RmsPropParams{}.alpha, 0.99);
  EXPECT_EQ(RmsPropParams{}.eps, 1e-8);
  EXPECT_EQ(AdamParams{}.beta1, 0.9);
  EXPECT_EQ(AdamParams{}.beta2, 0.999);
  EXPECT_EQ(AdamParams{}.eps, 1e-8);
  EXPECT_EQ(EveParams{}.beta3, 0.999);
  EXPECT_EQ(EveParams{}.k, 0.1);
  EXPECT_EQ(EveParams{}.big_k, 10.0);
  EXPECT_EQ(EveParams{}.loss_floor, 0.0);
}

}  // namespace
}  // namespace ps::optimizer
