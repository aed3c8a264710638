// Test helpers: the values and messages that tests of a shard send it, and
// the decoding of what it answers. Header-only, so that a test of the store
// alone can use them without the gRPC cluster helpers.
#ifndef PS_TESTS_SERVER_MESSAGES_H_
#define PS_TESTS_SERVER_MESSAGES_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/wire.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps::testutil {

// Little-endian float32 bytes of `values` (or `dtype`).
inline std::string Encode(const std::vector<float>& values,
                          v1::DType dtype = v1::FLOAT32) {
  std::string data;
  EncodeValues(dtype, values, &data);
  return data;
}

// The values of a slice; fails the test when they do not decode.
inline std::vector<float> Decode(const v1::Slice& slice) {
  std::vector<float> values(slice.length());
  absl::Status status = DecodeValues(slice.dtype(), slice.data(), values);
  EXPECT_TRUE(status.ok()) << status;
  return values;
}

// Values first, first + 1, ... (exact in every encoding used here).
inline std::vector<float> Iota(size_t n, float first = 1.0f) {
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) values[i] = first + static_cast<float>(i);
  return values;
}

// a - b, value by value. REQUIRES: a.size() == b.size().
inline std::vector<float> Minus(const std::vector<float>& a,
                                const std::vector<float>& b) {
  std::vector<float> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = a[i] - b[i];
  return out;
}

// A slice of `length` values of `variable` from `offset`, without data.
inline v1::Slice RangeSlice(const std::string& variable, uint64_t offset,
                            uint64_t length) {
  v1::Slice slice;
  slice.set_variable(variable);
  slice.set_offset(offset);
  slice.set_length(length);
  return slice;
}

// A slice of `variable` from `offset` that carries `values` as float32.
inline v1::Slice MakeSlice(const std::string& variable, uint64_t offset,
                           const std::vector<float>& values) {
  v1::Slice slice = RangeSlice(variable, offset, values.size());
  slice.set_data(Encode(values));
  return slice;
}

// A request to create `name` of `shape`, without initial values.
inline v1::CreateVariableRequest CreateRequest(const std::string& name,
                                               std::vector<uint64_t> shape) {
  v1::CreateVariableRequest request;
  request.set_name(name);
  for (uint64_t dim : shape) request.add_shape(dim);
  return request;
}

}  // namespace ps::testutil

#endif  // PS_TESTS_SERVER_MESSAGES_H_
