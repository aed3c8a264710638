// Encodings of Slice.data: little-endian float32, bfloat16 or float16.
//
// The server keeps float32; bfloat16 and float16 are rounded to nearest
// even on encode and widened exactly on decode.
#ifndef PS_COMMON_WIRE_H_
#define PS_COMMON_WIRE_H_

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps {

// 4 for FLOAT32, 2 for BFLOAT16 and FLOAT16.
size_t BytesPerValue(v1::DType dtype);

// OK when `dtype` is known and `bytes` bytes hold exactly `values` values
// of it; else INVALID_ARGUMENT saying what is wrong.
absl::Status CheckEncodedSize(v1::DType dtype, size_t bytes, size_t values);

// Decodes out.size() values of `dtype` from `data`.
// INVALID_ARGUMENT if data does not hold exactly that many whole values or
// the dtype is unknown; `out` is then unspecified.
absl::Status DecodeValues(v1::DType dtype, std::string_view data,
                          std::span<float> out);

// The same, and sets *all_finite to whether no decoded value is NaN or
// infinite (checked while decoding).
absl::Status DecodeValues(v1::DType dtype, std::string_view data,
                          std::span<float> out, bool* all_finite);

// Replaces *out with `values` encoded as `dtype` (FLOAT32 for an unknown one).
void EncodeValues(v1::DType dtype, std::span<const float> values,
                  std::string* out);

// Writes `values` encoded as `dtype` (FLOAT32 for an unknown one) to
// out[0, values.size() * BytesPerValue(dtype)).
void EncodeValuesTo(v1::DType dtype, std::span<const float> values, char* out);

// Widens out.size() 16-bit values from `data` into `out`, as DecodeValues
// does, without its checks.
// REQUIRES: dtype is BFLOAT16 or FLOAT16; data holds 2 * out.size() bytes.
void WidenHalf(v1::DType dtype, const char* data, std::span<float> out);

// True when no 16-bit value (BFLOAT16 or FLOAT16) in `data` is NaN or
// infinite, read from the encoded bits without widening them.
// REQUIRES: dtype is BFLOAT16 or FLOAT16.
bool AllFiniteHalf(v1::DType dtype, std::string_view data);

// True when no value is NaN or infinite.
bool AllFinite(std::span<const float> values);

// The checksum of a variable's initial values that CreateVariableRequest
// carries (initial_values_checksum): fnv1a64 of their float32
// little-endian bytes, in flat order.
uint64_t InitialValuesChecksum(std::span<const float> values);
// InitialValuesChecksum of `count` zeros (+0.0f), without the values:
// fnv1a64 of 4 x count zero bytes is basis x prime^(4 count) mod 2^64.
uint64_t ZerosChecksum(uint64_t count);

namespace wire_internal {

// The vector instructions the conversions and checks above run on. Every
// level gives the same bytes and answers; wider ones are faster.
enum class Simd { kPortable, kAvx2, kAvx512 };

// The widest level this CPU runs (kPortable off x86-64).
Simd BestSimd();
// Limits the level in use to `simd` (kAvx512: no limit), so that tests can
// check every level the CPU runs against the others.
void SetSimdForTesting(Simd simd);

}  // namespace wire_internal

}  // namespace ps

#endif  // PS_COMMON_WIRE_H_
