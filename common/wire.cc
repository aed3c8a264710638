#include "common/wire.h"

#include <Eigen/Core>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ps {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the wire format is little-endian; add byte swapping here");

template <typename Half>
void DecodeHalf(std::string_view data, std::span<float> out) {
  for (size_t i = 0; i < out.size(); ++i) {
    uint16_t bits;
    std::memcpy(&bits, data.data() + 2 * i, 2);
    out[i] = static_cast<float>(Eigen::numext::bit_cast<Half>(bits));
  }
}

template <typename Half>
void EncodeHalf(std::span<const float> values, char* out) {
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t bits =
        Eigen::numext::bit_cast<uint16_t>(static_cast<Half>(values[i]));
    std::memcpy(out + 2 * i, &bits, 2);
  }
}

}  // namespace

size_t BytesPerValue(v1::DType dtype) { return dtype == v1::FLOAT32 ? 4 : 2; }

absl::Status DecodeValues(v1::DType dtype, std::string_view data,
                          std::span<float> out) {
  if (!v1::DType_IsValid(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown dtype ", static_cast<int>(dtype),
                     "; use FLOAT32, BFLOAT16 or FLOAT16"));
  }
  const size_t width = BytesPerValue(dtype);
  if (data.size() != out.size() * width) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data holds ", data.size(), " bytes but length ", out.size(), " of ",
        v1::DType_Name(dtype), " needs ", out.size() * width));
  }
  switch (dtype) {
    case v1::BFLOAT16:
      DecodeHalf<Eigen::bfloat16>(data, out);
      break;
    case v1::FLOAT16:
      DecodeHalf<Eigen::half>(data, out);
      break;
    default:
      std::memcpy(out.data(), data.data(), data.size());
      break;
  }
  return absl::OkStatus();
}

void EncodeValues(v1::DType dtype, std::span<const float> values,
                  std::string* out) {
  if (dtype != v1::BFLOAT16 && dtype != v1::FLOAT16) dtype = v1::FLOAT32;
  out->resize(values.size() * BytesPerValue(dtype));
  switch (dtype) {
    case v1::BFLOAT16:
      EncodeHalf<Eigen::bfloat16>(values, out->data());
      break;
    case v1::FLOAT16:
      EncodeHalf<Eigen::half>(values, out->data());
      break;
    default:
      std::memcpy(out->data(), values.data(), values.size() * sizeof(float));
      break;
  }
}

bool AllFinite(std::span<const float> values) {
  return Eigen::Map<const Eigen::ArrayXf>(
             values.data(), static_cast<Eigen::Index>(values.size()))
      .isFinite()
      .all();
}

}  // namespace ps
