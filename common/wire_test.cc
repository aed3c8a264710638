// Slice.data encodings: float32, bfloat16 and float16, little-endian.

#include "common/wire.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/partition.h"

namespace ps {
namespace {

using ::testing::HasSubstr;

// The 16-bit patterns of an encoded string.
std::vector<uint16_t> Bits16(const std::string& data) {
  std::vector<uint16_t> out(data.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] =
        static_cast<uint16_t>(static_cast<unsigned char>(data[2 * i]) |
                              static_cast<unsigned char>(data[2 * i + 1]) << 8);
  }
  return out;
}

std::vector<float> Decode(v1::DType dtype, const std::string& data, size_t n) {
  std::vector<float> out(n);
  const absl::Status status = DecodeValues(dtype, data, out);
  EXPECT_TRUE(status.ok()) << status;
  return out;
}

// Runs `check` at every level of vector instructions this CPU runs
// (wire_internal::Simd): each must give the same bytes and answers.
template <typename Check>
void AtEverySimdLevel(Check check) {
  using wire_internal::Simd;
  for (Simd simd : {Simd::kPortable, Simd::kAvx2, Simd::kAvx512}) {
    if (simd > wire_internal::BestSimd()) break;
    SCOPED_TRACE(simd == Simd::kPortable ? "portable"
                 : simd == Simd::kAvx2   ? "AVX2"
                                         : "AVX-512");
    wire_internal::SetSimdForTesting(simd);
    check();
  }
  wire_internal::SetSimdForTesting(Simd::kAvx512);
}

TEST(WireTest, InitialValuesChecksumIsFnv1a64OfTheBytes) {
  // fnv1a64 of no bytes is the offset basis.
  EXPECT_EQ(InitialValuesChecksum({}), 0xcbf29ce484222325ULL);
  const std::vector<float> values = {1.5f, -2.0f, 0.0f};
  std::string bytes(values.size() * sizeof(float), '\0');
  std::memcpy(bytes.data(), values.data(), bytes.size());
  EXPECT_EQ(InitialValuesChecksum(values), Fnv1a64(bytes));
  // Zeros without the values, for any count.
  for (uint64_t n : {0u, 1u, 2u, 3u, 7u, 1000u, 65537u}) {
    EXPECT_EQ(ZerosChecksum(n),
              InitialValuesChecksum(std::vector<float>(n, 0.0f)))
        << n;
  }
  EXPECT_NE(ZerosChecksum(4), InitialValuesChecksum(values));
}

TEST(WireTest, BytesPerValue) {
  EXPECT_EQ(BytesPerValue(v1::FLOAT32), 4u);
  EXPECT_EQ(BytesPerValue(v1::BFLOAT16), 2u);
  EXPECT_EQ(BytesPerValue(v1::FLOAT16), 2u);
}

TEST(WireTest, Float32RoundTripsEveryBitPattern) {
  const std::vector<float> values = {0.0f,
                                     -0.0f,
                                     1.0f,
                                     -3.25f,
                                     1e-45f,  // denormal
                                     std::numeric_limits<float>::max(),
                                     std::numeric_limits<float>::infinity(),
                                     0.1f};
  std::string data;
  EncodeValues(v1::FLOAT32, values, &data);
  ASSERT_EQ(data.size(), 4 * values.size());
  // Little-endian: 1.0f is 00 00 80 3f.
  EXPECT_EQ(data.substr(8, 4), std::string("\x00\x00\x80\x3f", 4));
  const std::vector<float> back = Decode(v1::FLOAT32, data, values.size());
  EXPECT_EQ(std::memcmp(back.data(), values.data(), 4 * values.size()), 0);

  const std::vector<float> nan = {std::nanf("")};
  EncodeValues(v1::FLOAT32, nan, &data);
  EXPECT_TRUE(std::isnan(Decode(v1::FLOAT32, data, 1)[0]));
}

TEST(WireTest, BFloat16KnownPatternsAndRoundTrip) {
  // Values with 8 significant bits survive exactly.
  const std::vector<float> values = {1.0f,       -2.0f, 0.5f, 3.0f,
                                     1.0078125f, -0.0f, 0.0f};
  std::string data;
  EncodeValues(v1::BFLOAT16, values, &data);
  ASSERT_EQ(data.size(), 2 * values.size());
  EXPECT_EQ(data.substr(0, 2), std::string("\x80\x3f", 2));  // LE 0x3f80
  EXPECT_THAT(Bits16(data),
              ::testing::ElementsAre(0x3f80, 0xc000, 0x3f00, 0x4040, 0x3f81,
                                     0x8000, 0x0000));
  EXPECT_EQ(Decode(v1::BFLOAT16, data, values.size()), values);
}

TEST(WireTest, BFloat16RoundsToNearestEven) {
  AtEverySimdLevel([&] {
    const std::vector<float> values = {
        1.0f + 0x1p-8f,             // halfway, even below: 1
        1.0f + 0x1p-7f + 0x1p-8f,   // halfway, even above: 1 + 2^-6
        1.0f + 0x1p-8f + 0x1p-20f,  // above halfway: up
        3.14159265f,
    };
    std::string data;
    EncodeValues(v1::BFLOAT16, values, &data);
    EXPECT_THAT(Bits16(data),
                ::testing::ElementsAre(0x3f80, 0x3f82, 0x3f81, 0x4049));
    const std::vector<float> back = Decode(v1::BFLOAT16, data, values.size());
    EXPECT_EQ(back[0], 1.0f);
    EXPECT_EQ(back[1], 1.015625f);
    EXPECT_EQ(back[3], 3.140625f);
  });
}

TEST(WireTest, Float16KnownPatternsAndRoundTrip) {
  const std::vector<float> values = {
      1.0f,           -2.0f, 0.5f, 65504.0f, 0x1p-24f /* smallest denormal */,
      0.333251953125f /* 0x3555 */};
  std::string data;
  EncodeValues(v1::FLOAT16, values, &data);
  EXPECT_EQ(data.substr(0, 2), std::string("\x00\x3c", 2));  // LE 0x3c00
  EXPECT_THAT(Bits16(data), ::testing::ElementsAre(0x3c00, 0xc000, 0x3800,
                                                   0x7bff, 0x0001, 0x3555));
  EXPECT_EQ(Decode(v1::FLOAT16, data, values.size()), values);
}

TEST(WireTest, Float16RoundsAndOverflowsToInfinity) {
  AtEverySimdLevel([&] {
    const std::vector<float> values = {1.0f + 0x1p-11f,  // halfway: 1
                                       0.1f, 70000.0f, -1e9f};
    std::string data;
    EncodeValues(v1::FLOAT16, values, &data);
    EXPECT_THAT(Bits16(data),
                ::testing::ElementsAre(0x3c00, 0x2e66, 0x7c00, 0xfc00));
    const std::vector<float> back = Decode(v1::FLOAT16, data, values.size());
    EXPECT_NEAR(back[1], 0.1f, 0.1f * 0x1p-11f);
    EXPECT_TRUE(std::isinf(back[2]));
  });
}

TEST(WireTest, EmptyRoundTrip) {
  for (v1::DType dtype : {v1::FLOAT32, v1::BFLOAT16, v1::FLOAT16}) {
    std::string data = "stale";
    EncodeValues(dtype, {}, &data);
    EXPECT_EQ(data, "");
    EXPECT_TRUE(DecodeValues(dtype, "", {}).ok());
    // No values and nowhere to write them (UBSan checks memcpy's pointers).
    EncodeValuesTo(dtype, {}, nullptr);
  }
}

TEST(WireTest, DecodeRefusesAWrongLength) {
  std::vector<float> out(3);
  struct Case {
    v1::DType dtype;
    size_t bytes;
  };
  for (const Case& c :
       {Case{v1::FLOAT32, 11}, Case{v1::FLOAT32, 13}, Case{v1::FLOAT32, 6},
        Case{v1::BFLOAT16, 12}, Case{v1::BFLOAT16, 5}, Case{v1::FLOAT16, 7},
        Case{v1::FLOAT16, 0}}) {
    const absl::Status status =
        DecodeValues(c.dtype, std::string(c.bytes, '\0'), out);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument)
        << v1::DType_Name(c.dtype) << " " << c.bytes;
    EXPECT_THAT(status.message(), HasSubstr(std::to_string(c.bytes)));
    EXPECT_THAT(status.message(), HasSubstr(v1::DType_Name(c.dtype)));
  }
  EXPECT_TRUE(DecodeValues(v1::FLOAT32, std::string(12, '\0'), out).ok());
  EXPECT_TRUE(DecodeValues(v1::FLOAT16, std::string(6, '\0'), out).ok());
}

TEST(WireTest, DecodeRefusesAnUnknownDtype) {
  std::vector<float> out(2);
  const absl::Status status =
      DecodeValues(static_cast<v1::DType>(7), std::string(8, '\0'), out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("dtype"));
}

TEST(WireTest, EncodeFallsBackToFloat32ForAnUnknownDtype) {
  const std::vector<float> values = {1.5f, -2.0f};
  std::string data;
  EncodeValues(static_cast<v1::DType>(7), values, &data);
  ASSERT_EQ(data.size(), 8u);
  EXPECT_EQ(Decode(v1::FLOAT32, data, 2), values);
}

// EncodeValuesTo writes exactly the bytes EncodeValues makes, and no more.
TEST(WireTest, EncodeValuesToWritesWhatEncodeValuesMakes) {
  AtEverySimdLevel([&] {
    std::vector<float> values;
    for (int i = 0; i < 1000; ++i) values.push_back(std::sin(i * 0.7f) * 1e3f);
    values[5] = std::numeric_limits<float>::infinity();
    values[77] = std::nanf("");
    values[600] = 65520.0f;  // overflows float16
    for (v1::DType dtype :
         {v1::FLOAT32, v1::BFLOAT16, v1::FLOAT16, static_cast<v1::DType>(99)}) {
      std::string want;
      EncodeValues(dtype, values, &want);
      std::string got(want.size() + 8, '\x5a');
      EncodeValuesTo(dtype, values, got.data());
      EXPECT_EQ(got.substr(0, want.size()), want) << dtype;
      EXPECT_EQ(got.substr(want.size()), std::string(8, '\x5a')) << dtype;
    }
  });
}

TEST(WireTest, WidenHalfAndAllFiniteHalfAgreeWithDecodeValues) {
  AtEverySimdLevel([&] {
    std::vector<float> values;
    for (int i = 0; i < 300; ++i) values.push_back(std::sin(i * 0.3f) * 100.0f);
    for (v1::DType dtype : {v1::BFLOAT16, v1::FLOAT16}) {
      std::string data;
      EncodeValues(dtype, values, &data);
      std::vector<float> want(values.size()), got(values.size());
      ASSERT_TRUE(DecodeValues(dtype, data, want).ok());
      WidenHalf(dtype, data.data(), got);
      EXPECT_EQ(got, want);
      EXPECT_TRUE(AllFiniteHalf(dtype, data));
      for (float bad :
           {std::numeric_limits<float>::infinity(),
            -std::numeric_limits<float>::infinity(), std::nanf("")}) {
        for (size_t i : {size_t{0}, size_t{17}, values.size() - 1}) {
          std::vector<float> with_bad = values;
          with_bad[i] = bad;
          std::string encoded;
          EncodeValues(dtype, with_bad, &encoded);
          EXPECT_FALSE(AllFiniteHalf(dtype, encoded)) << bad << " at " << i;
        }
      }
    }
    // 65520 is finite as float32 but overflows float16 to infinity.
    std::string big;
    EncodeValues(v1::FLOAT16, std::vector<float>{65520.0f}, &big);
    EXPECT_FALSE(AllFiniteHalf(v1::FLOAT16, big));
    EncodeValues(v1::BFLOAT16, std::vector<float>{65520.0f}, &big);
    EXPECT_TRUE(AllFiniteHalf(v1::BFLOAT16, big));
  });
}

TEST(WireTest, AllFinite) {
  AtEverySimdLevel([&] {
    EXPECT_TRUE(AllFinite({}));
    const std::vector<float> ok = {0.0f, -1e38f, 1e-45f};
    EXPECT_TRUE(AllFinite(ok));
    // Every position of lengths that end in each part of the SIMD loops
    // (64-value steps, 16-value steps, the scalar tail).
    for (float bad : {std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity(), std::nanf(""),
                      -std::nanf("")}) {
      for (size_t n : {1, 37, 64, 100, 143}) {
        std::vector<float> values(n, 1.0f);
        EXPECT_TRUE(AllFinite(values));
        for (size_t i = 0; i < n; ++i) {
          values[i] = bad;
          EXPECT_FALSE(AllFinite(values)) << bad << " at " << i << " of " << n;
          values[i] = 1.0f;
        }
      }
    }
  });
}

}  // namespace
// The vectorized conversions give Eigen's numbers (round to nearest even,
// overflow to infinity, subnormals, NaN) on a sweep of float32 bit patterns,
// and decode every 16-bit pattern as Eigen does.
TEST(WireTest, HalfEncodingsMatchEigenOnASweep) {
  AtEverySimdLevel([&] {
    std::vector<float> values;
    for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += 65521) {
      values.push_back(std::bit_cast<float>(static_cast<uint32_t>(bits)));
    }
    std::string bf16, fp16;
    EncodeValues(v1::BFLOAT16, values, &bf16);
    EncodeValues(v1::FLOAT16, values, &fp16);
    const std::vector<uint16_t> bf16_bits = Bits16(bf16);
    const std::vector<uint16_t> fp16_bits = Bits16(fp16);
    for (size_t i = 0; i < values.size(); ++i) {
      ASSERT_EQ(bf16_bits[i], Eigen::numext::bit_cast<uint16_t>(
                                  static_cast<Eigen::bfloat16>(values[i])))
          << values[i];
      ASSERT_EQ(fp16_bits[i], Eigen::numext::bit_cast<uint16_t>(
                                  static_cast<Eigen::half>(values[i])))
          << values[i];
    }
    std::string every(2 * 65536, '\0');
    for (uint32_t b = 0; b < 65536; ++b) {
      every[2 * b] = static_cast<char>(b & 0xff);
      every[2 * b + 1] = static_cast<char>(b >> 8);
    }
    const std::vector<float> from_bf16 = Decode(v1::BFLOAT16, every, 65536);
    const std::vector<float> from_fp16 = Decode(v1::FLOAT16, every, 65536);
    for (uint32_t b = 0; b < 65536; ++b) {
      const uint16_t bits = static_cast<uint16_t>(b);
      const float bf =
          static_cast<float>(Eigen::numext::bit_cast<Eigen::bfloat16>(bits));
      const float hf =
          static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits));
      ASSERT_EQ(std::bit_cast<uint32_t>(from_bf16[b]),
                std::bit_cast<uint32_t>(bf))
          << b;
      if (std::isnan(hf)) {
        ASSERT_TRUE(std::isnan(from_fp16[b])) << b;
      } else {
        ASSERT_EQ(std::bit_cast<uint32_t>(from_fp16[b]),
                  std::bit_cast<uint32_t>(hf))
            << b;
      }
    }
  });
}

}  // namespace ps
