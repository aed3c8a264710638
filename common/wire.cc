#include "common/wire.h"

#include <Eigen/Core>
#include <bit>
#include <cmath>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "absl/strings/str_cat.h"

namespace ps {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the wire format is little-endian; add byte swapping here");

template <typename Half>
void DecodeHalf(const char* in, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint16_t bits;
    std::memcpy(&bits, in + 2 * i, 2);
    out[i] = static_cast<float>(Eigen::numext::bit_cast<Half>(bits));
  }
}

template <typename Half>
void EncodeHalf(const float* values, char* out, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const uint16_t bits =
        Eigen::numext::bit_cast<uint16_t>(static_cast<Half>(values[i]));
    std::memcpy(out + 2 * i, &bits, 2);
  }
}

// bfloat16 is the top half of a float32: the same numbers as Eigen's
// conversions, in branch-free loops that the compiler vectorizes.
void DecodeBFloat16(const char* in, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint16_t bits;
    std::memcpy(&bits, in + 2 * i, 2);
    out[i] = std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
  }
}

void EncodeBFloat16(const float* values, char* out, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const uint32_t bits = std::bit_cast<uint32_t>(values[i]);
    // Round to nearest even; a NaN becomes the quiet NaN of its sign.
    const uint32_t rounded = (bits + 0x7fff + ((bits >> 16) & 1)) >> 16;
    const uint32_t nan = ((bits >> 16) & 0x8000) | 0x7fc0;
    const uint16_t half =
        static_cast<uint16_t>((bits & 0x7fffffff) > 0x7f800000 ? nan : rounded);
    std::memcpy(out + 2 * i, &half, 2);
  }
}

// float16 through the F16C instructions when the CPU has them (x86 since
// 2012): they round to nearest even as Eigen's software conversion does.
// Chunks holding a NaN take Eigen's path, which keeps its NaN encoding.
#if defined(__x86_64__)
bool HasF16c() {
  static const bool has = __builtin_cpu_supports("f16c");
  return has;
}

__attribute__((target("avx,f16c"))) void DecodeFloat16(const char* in,
                                                       float* out, size_t n) {
  if (!HasF16c()) return DecodeHalf<Eigen::half>(in, out, n);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i half =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(half));
  }
  DecodeHalf<Eigen::half>(in + 2 * i, out + i, n - i);
}

__attribute__((target("avx,f16c"))) void EncodeFloat16(const float* values,
                                                       char* out, size_t n) {
  if (!HasF16c()) return EncodeHalf<Eigen::half>(values, out, n);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(values + i);
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0) {
      EncodeHalf<Eigen::half>(values + i, out + 2 * i, 8);
      continue;
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  EncodeHalf<Eigen::half>(values + i, out + 2 * i, n - i);
}
#else
void DecodeFloat16(const char* in, float* out, size_t n) {
  DecodeHalf<Eigen::half>(in, out, n);
}
void EncodeFloat16(const float* values, char* out, size_t n) {
  EncodeHalf<Eigen::half>(values, out, n);
}
#endif

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
      DecodeBFloat16(data.data(), out.data(), out.size());
      break;
    case v1::FLOAT16:
      DecodeFloat16(data.data(), out.data(), out.size());
      break;
    default:
      std::memcpy(out.data(), data.data(), data.size());
      break;
  }
  return absl::OkStatus();
}

void EncodeValues(v1::DType dtype, std::span<const float> values,
                  std::string* out) {
  if (dtype != v1::BFLOAT16 && dtype != v1::FLOAT16) {
    // One pass over the bytes (resize would zero them first).
    out->assign(reinterpret_cast<const char*>(values.data()),
                values.size() * sizeof(float));
    return;
  }
  out->resize(values.size() * BytesPerValue(dtype));
  switch (dtype) {
    case v1::BFLOAT16:
      EncodeBFloat16(values.data(), out->data(), values.size());
      break;
    case v1::FLOAT16:
      EncodeFloat16(values.data(), out->data(), values.size());
      break;
    default:
      break;
  }
}

bool AllFinite(std::span<const float> values) {
  // A value is NaN or infinite when its exponent bits are all ones. One
  // branch-free pass that the compiler vectorizes (Eigen's
  // isFinite().all() runs a scalar loop).
  constexpr uint32_t kExponent = 0x7f800000;
  uint32_t bad = 0;
  for (const float value : values) {
    bad |= static_cast<uint32_t>((std::bit_cast<uint32_t>(value) & kExponent) ==
                                 kExponent);
  }
  return bad == 0;
}

}  // namespace ps
