#include "common/row_init.h"

#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"
#include "common/partition.h"

namespace ps {
namespace {

constexpr double kTwoToMinus53 = 1.0 / 9007199254740992.0;

double Unit(uint64_t r) { return static_cast<double>(r >> 11) * kTwoToMinus53; }

}  // namespace

absl::Status ValidateRowInit(const v1::RowInit& init) {
  switch (init.kind_case()) {
    case v1::RowInit::kUniform: {
      const double low = init.uniform().low(), high = init.uniform().high();
      if (!std::isfinite(low) || !std::isfinite(high) || !(low < high)) {
        return absl::InvalidArgumentError(
            absl::StrCat("init.uniform needs finite low < high; got low ", low,
                         ", high ", high));
      }
      return absl::OkStatus();
    }
    case v1::RowInit::kNormal: {
      const double mean = init.normal().mean(), sd = init.normal().stddev();
      if (!std::isfinite(mean) || !std::isfinite(sd) || sd < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "init.normal needs a finite mean and a finite stddev >= 0; got "
            "mean ",
            mean, ", stddev ", sd));
      }
      return absl::OkStatus();
    }
    default:
      return absl::OkStatus();  // zeros, or unset (zeros)
  }
}

void InitialRow(const v1::RowInit& init, uint64_t table_hash, uint64_t id,
                std::span<float> out) {
  const uint64_t base = Mix64(Mix64(id ^ table_hash) ^ init.seed());
  auto r = [base](uint64_t j) { return Mix64(base + j); };
  switch (init.kind_case()) {
    case v1::RowInit::kUniform: {
      const double low = init.uniform().low();
      const double width = init.uniform().high() - low;
      for (size_t j = 0; j < out.size(); ++j) {
        out[j] = static_cast<float>(low + width * Unit(r(j)));
      }
      return;
    }
    case v1::RowInit::kNormal: {
      const double mean = init.normal().mean();
      const double sd = init.normal().stddev();
      for (size_t j = 0; j < out.size(); j += 2) {
        const double a = static_cast<double>((r(j) >> 11) + 1) * kTwoToMinus53;
        const double b = Unit(r(j + 1));
        const double radius = std::sqrt(-2.0 * std::log(a));
        const double angle = 2.0 * std::numbers::pi * b;
        out[j] = static_cast<float>(mean + sd * radius * std::cos(angle));
        if (j + 1 < out.size()) {
          out[j + 1] = static_cast<float>(mean + sd * radius * std::sin(angle));
        }
      }
      return;
    }
    default:
      for (float& value : out) value = 0.0f;
  }
}

}  // namespace ps
