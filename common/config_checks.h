// Range checks of optimizer hyper-parameters, shared by the config's
// resolution (common/optimizer_config.cc) and each rule's
// (common/rule_catalog.cc). Each returns INVALID_ARGUMENT naming the field.
//
// Each check is written so that NaN fails it. The kernels compute in
// float32: a hyper-parameter must survive the conversion, finite and, where
// it must be positive, a normal float (a smaller one rounds to zero or
// loses its precision, and an eps of 1e-50 would divide by zero).
#ifndef PS_COMMON_CONFIG_CHECKS_H_
#define PS_COMMON_CONFIG_CHECKS_H_

#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace ps::config_checks {

inline constexpr double kFloatMax = std::numeric_limits<float>::max();
inline constexpr double kFloatMin = std::numeric_limits<float>::min();

// [low, float32's largest].
inline absl::Status RequireAtLeast(absl::string_view field, double value,
                                   double low) {
  if (value >= low && value <= kFloatMax) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " = ", value, " must be a number >= ", low,
                   " and at most float32's largest, ", kFloatMax));
}

// A normal float32 above 0.
inline absl::Status RequirePositive(absl::string_view field, double value) {
  if (value >= kFloatMin && value <= kFloatMax) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " = ", value,
                   " must be a number > 0 within float32's normal range [",
                   kFloatMin, ", ", kFloatMax, "]"));
}

// [lo, hi] with both ends in; `why` is appended to the message.
inline absl::Status RequireBetween(absl::string_view field, double value,
                                   double lo, double hi,
                                   absl::string_view why = "") {
  if (value >= lo && value <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      field, " = ", value, " must be in [", lo, ", ", hi, "]", why));
}

// [0, 1): betas, alpha and smoothing factors.
inline absl::Status RequireFraction(absl::string_view field, double value) {
  if (value >= 0 && value < 1) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " = ", value, " must be in [0, 1)"));
}

}  // namespace ps::config_checks

#endif  // PS_COMMON_CONFIG_CHECKS_H_
