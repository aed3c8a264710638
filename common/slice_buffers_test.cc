#include "common/slice_buffers.h"

#include <gmock/gmock.h>
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/wire.h"

namespace ps {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

// Hand encoding of protobuf's wire format, for bytes that a message cannot
// serialize (unknown fields, repeats, groups, broken messages).
std::string Varint(uint64_t value) {
  std::string out;
  while (value >= 0x80) {
    out.push_back(static_cast<char>(value | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
  return out;
}

std::string Tag(uint32_t field, uint32_t wire_type) {
  return Varint((uint64_t{field} << 3) | wire_type);
}

std::string VarintField(uint32_t field, uint64_t value) {
  return Tag(field, 0) + Varint(value);
}

std::string BytesField(uint32_t field, std::string_view bytes) {
  return Tag(field, 2) + Varint(bytes.size()) + std::string(bytes);
}

std::string Fixed32Field(uint32_t field, uint32_t value) {
  std::string out = Tag(field, 5);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(value >> 8 * i));
  return out;
}

std::string Fixed64Field(uint32_t field, uint64_t value) {
  std::string out = Tag(field, 1);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(value >> 8 * i));
  return out;
}

// `n` bytes that differ from one position to the next (every value 0..255).
std::string Bytes(size_t n, uint8_t seed) {
  std::string out(n, '\0');
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<char>(seed + 7 * i);
  return out;
}

// An answer like a shard sends: three values, one of them without data.
v1::PullResponse RealisticResponse() {
  v1::PullResponse response;
  v1::Slice* weights = response.add_values();
  weights->set_variable("dense/kernel");
  weights->set_offset(4096);
  weights->set_length(80);
  weights->set_dtype(v1::FLOAT32);
  weights->set_data(Bytes(320, 1));
  weights->set_version(17);
  v1::Slice* bias = response.add_values();
  bias->set_variable("dense/bias");
  bias->set_offset(0);
  bias->set_length(0);
  bias->set_dtype(v1::FLOAT16);
  bias->set_version(3);
  v1::Slice* embedding = response.add_values();
  embedding->set_variable("embedding");
  embedding->set_offset(1 << 20);
  embedding->set_length(100);
  embedding->set_dtype(v1::BFLOAT16);
  embedding->set_data(Bytes(200, 99));
  embedding->set_version(1);
  return response;
}

// `bytes` in pieces that end at `cuts` (offsets, kept within the bytes and
// ascending; a repeated cut makes an empty piece), then the rest.
std::vector<std::string_view> CutAt(std::string_view bytes,
                                    const std::vector<size_t>& cuts) {
  std::vector<std::string_view> pieces;
  size_t start = 0;
  for (size_t cut : cuts) {
    cut = std::clamp(cut, start, bytes.size());
    pieces.push_back(bytes.substr(start, cut - start));
    start = cut;
  }
  pieces.push_back(bytes.substr(start));
  return pieces;
}

// `bytes` in pieces whose sizes repeat `sizes` (which may hold zeros).
std::vector<std::string_view> CutInto(std::string_view bytes,
                                      const std::vector<size_t>& sizes) {
  std::vector<std::string_view> pieces;
  size_t start = 0;
  for (size_t i = 0; start < bytes.size(); ++i) {
    const size_t size = std::min(sizes[i % sizes.size()], bytes.size() - start);
    pieces.push_back(bytes.substr(start, size));
    start += size;
  }
  return pieces;
}

std::string Concatenated(std::span<const std::string_view> pieces) {
  std::string out;
  for (std::string_view piece : pieces) out.append(piece);
  return out;
}

// What ReadPullResponse read, with each value's data put back where
// protobuf's parse has it.
v1::PullResponse Reassembled(const ReceivedSlices& received) {
  v1::PullResponse response = received.message;
  for (int i = 0; i < response.values_size(); ++i) {
    response.mutable_values(i)->set_data(received.data[i].ToString());
  }
  return response;
}

bool Within(std::string_view piece, std::string_view buffer) {
  return piece.data() >= buffer.data() &&
         piece.data() + piece.size() <= buffer.data() + buffer.size();
}

// Expects ReadPullResponse of `pieces` to give what protobuf's parse of
// their concatenation gives, and returns what it read.
ReceivedSlices ExpectSameAsProtobuf(std::span<const std::string_view> pieces) {
  const std::string whole = Concatenated(pieces);
  v1::PullResponse expected;
  const bool expected_ok = expected.ParseFromString(whole);

  ReceivedSlices received;
  const bool ok = ReadPullResponse(pieces, &received);
  EXPECT_EQ(ok, expected_ok);
  if (!ok || !expected_ok) return received;

  EXPECT_EQ(received.data.size(), received.message.values_size());
  if (received.data.size() !=
      static_cast<size_t>(received.message.values_size())) {
    return received;
  }
  for (const v1::Slice& value : received.message.values()) {
    EXPECT_THAT(value.data(), IsEmpty());
  }
  const v1::PullResponse got = Reassembled(received);
  EXPECT_TRUE(MessageDifferencer::Equals(got, expected))
      << "got:\n"
      << got.DebugString() << "expected:\n"
      << expected.DebugString();
  // Unknown fields too, in order.
  EXPECT_EQ(got.SerializeAsString(), expected.SerializeAsString());
  return received;
}

// Expects the scan to have read the data where it lies in `input`.
void ExpectNotCopied(const ReceivedSlices& received, std::string_view input) {
  EXPECT_THAT(received.owned, IsEmpty());
  for (const ScatteredBytes& data : received.data) {
    for (std::string_view piece : data.pieces()) {
      EXPECT_TRUE(Within(piece, input));
    }
  }
}

// Checks `bytes` whole, at every cut in two, at some cuts in three and in
// many small pieces.
void ExpectSameAsProtobufInAnyPieces(const std::string& bytes,
                                     bool expect_not_copied) {
  std::vector<std::vector<std::string_view>> splits;
  splits.push_back({bytes});
  for (size_t cut = 0; cut <= bytes.size(); ++cut) {
    splits.push_back(CutAt(bytes, {cut}));
  }
  const size_t n = bytes.size();
  for (std::vector<size_t> cuts :
       std::vector<std::vector<size_t>>{{0, 0},
                                        {n, n},
                                        {1, 2},
                                        {n / 3, 2 * n / 3},
                                        {n / 2, n / 2},
                                        {5, n - 5},
                                        {n / 4, n / 4 + 1}}) {
    splits.push_back(CutAt(bytes, cuts));
  }
  splits.push_back(CutInto(bytes, {1}));
  splits.push_back(CutInto(bytes, {1, 0, 3, 0, 0, 7}));
  splits.push_back(CutInto(bytes, {2, 1, 16}));
  splits.push_back(CutInto(bytes, {64}));
  std::vector<std::string_view> with_empty_ends = CutInto(bytes, {5});
  with_empty_ends.insert(with_empty_ends.begin(), std::string_view());
  with_empty_ends.push_back(std::string_view());
  splits.push_back(with_empty_ends);

  for (const std::vector<std::string_view>& pieces : splits) {
    std::string sizes;
    for (std::string_view piece : pieces) {
      sizes += std::to_string(piece.size()) + " ";
    }
    SCOPED_TRACE("piece sizes: " + sizes);
    ReceivedSlices received = ExpectSameAsProtobuf(pieces);
    if (expect_not_copied) ExpectNotCopied(received, bytes);
  }
}

TEST(ReadPullResponseTest, MatchesProtobufAtEveryCut) {
  const v1::PullResponse response = RealisticResponse();
  const std::string bytes = response.SerializeAsString();

  ReceivedSlices received;
  const std::vector<std::string_view> pieces = CutAt(bytes, {bytes.size() / 2});
  ASSERT_TRUE(ReadPullResponse(pieces, &received));
  ASSERT_EQ(received.data.size(), 3);
  EXPECT_EQ(received.data[0].ToString(), response.values(0).data());
  EXPECT_TRUE(received.data[1].empty());
  EXPECT_EQ(received.data[2].ToString(), response.values(2).data());

  ExpectSameAsProtobufInAnyPieces(bytes, /*expect_not_copied=*/true);
}

TEST(ReadPullResponseTest, ReadsEmptyResponse) {
  ReceivedSlices received;
  EXPECT_TRUE(ReadPullResponse(std::span<const std::string_view>(), &received));
  EXPECT_TRUE(MessageDifferencer::Equals(received.message, v1::PullResponse()));
  EXPECT_THAT(received.data, IsEmpty());

  const std::vector<std::string_view> empty_pieces(3);
  EXPECT_TRUE(ReadPullResponse(empty_pieces, &received));
  EXPECT_THAT(received.data, IsEmpty());
}

TEST(ReadPullResponseTest, ReadsValuesWithoutAnyField) {
  // Empty slices: no data, no other field.
  const std::string bytes = BytesField(1, "") + BytesField(1, "") +
                            BytesField(1, BytesField(5, "ab"));
  ReceivedSlices received =
      ExpectSameAsProtobuf(std::vector<std::string_view>{bytes});
  ASSERT_EQ(received.data.size(), 3);
  EXPECT_TRUE(received.data[0].empty());
  EXPECT_TRUE(received.data[1].empty());
  EXPECT_EQ(received.data[2].ToString(), "ab");
  ExpectSameAsProtobufInAnyPieces(bytes, /*expect_not_copied=*/true);
}

TEST(ReadPullResponseTest, ClearsWhatOutHeld) {
  const std::string bytes = RealisticResponse().SerializeAsString();
  // A group makes the first read copy its data into `owned`.
  const std::string with_group = bytes + Tag(20, 3) + Tag(20, 4);
  ReceivedSlices received;
  ASSERT_TRUE(
      ReadPullResponse(std::vector<std::string_view>{with_group}, &received));
  ASSERT_EQ(received.owned.size(), 3);

  const std::vector<std::string_view> pieces = CutAt(bytes, {100});
  ASSERT_TRUE(ReadPullResponse(pieces, &received));
  ASSERT_EQ(received.data.size(), 3);
  EXPECT_TRUE(
      MessageDifferencer::Equals(Reassembled(received), RealisticResponse()));
  ExpectNotCopied(received, bytes);

  // And with the scan's result in it.
  ASSERT_TRUE(ReadPullResponse(pieces, &received));
  EXPECT_EQ(received.data.size(), 3);
  ExpectNotCopied(received, bytes);
}

TEST(ReadPullResponseTest, LastDataWins) {
  const std::string slice = BytesField(1, "w") + BytesField(5, "first") +
                            VarintField(3, 2) + BytesField(5, "second!");
  const std::string bytes = BytesField(20, "unknown") + BytesField(1, slice);

  ReceivedSlices received =
      ExpectSameAsProtobuf(std::vector<std::string_view>{bytes});
  ASSERT_EQ(received.data.size(), 1);
  EXPECT_EQ(received.data[0].ToString(), "second!");
  ExpectSameAsProtobufInAnyPieces(bytes, /*expect_not_copied=*/true);
}

TEST(ReadPullResponseTest, EmptyDataAfterDataWins) {
  const std::string slice = BytesField(5, "first") + BytesField(5, "");
  const std::string bytes = BytesField(1, slice);

  ReceivedSlices received =
      ExpectSameAsProtobuf(std::vector<std::string_view>{bytes});
  ASSERT_EQ(received.data.size(), 1);
  EXPECT_TRUE(received.data[0].empty());
}

TEST(ReadPullResponseTest, KeepsUnknownFieldsAsProtobufDoes) {
  const std::string unknown =
      VarintField(99, 300) + Fixed32Field(98, 0xdeadbeef) +
      Fixed64Field(97, 0x0123456789abcdef) + BytesField(96, "unknown bytes");
  const std::string slice = BytesField(1, "dense/kernel") + unknown +
                            BytesField(5, Bytes(40, 3)) + VarintField(3, 10) +
                            unknown;
  const std::string bytes = BytesField(20, "shard-1") + unknown +
                            VarintField(3, 5) + BytesField(1, slice) + unknown +
                            BytesField(1, BytesField(5, "x"));

  // The bytes do hold unknown fields, where protobuf keeps them.
  v1::PullResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  ASSERT_EQ(parsed.GetReflection()->GetUnknownFields(parsed).field_count(), 10);
  const v1::Slice& value = parsed.values(0);
  ASSERT_EQ(value.GetReflection()->GetUnknownFields(value).field_count(), 8);

  ExpectSameAsProtobufInAnyPieces(bytes, /*expect_not_copied=*/true);
}

TEST(ReadPullResponseTest, ReadsFieldsUnderAnotherWireTypeAsUnknown) {
  // Field 5 of a Slice as a varint is not `data`; field 1 of a PullResponse
  // as a varint or fixed32 is not `values`.
  const std::string slice = VarintField(5, 7) + BytesField(5, "data");
  const std::string bytes = BytesField(1, slice) + VarintField(1, 9) +
                            BytesField(1, VarintField(5, 7)) +
                            Fixed32Field(1, 12345);
  v1::PullResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  ASSERT_EQ(parsed.values_size(), 2);
  ExpectSameAsProtobufInAnyPieces(bytes, /*expect_not_copied=*/true);
}

TEST(ReadPullResponseTest, AcceptsNonUtf8InUnknownFields) {
  // Only a declared string field is checked for UTF-8.
  const std::string bad = std::string("\xff\xfe", 2);
  const std::string bytes =
      BytesField(20, bad) +
      BytesField(1, BytesField(7, bad) + BytesField(5, bad)) +
      BytesField(1, BytesField(1, "ok"));
  v1::PullResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  ExpectSameAsProtobufInAnyPieces(bytes, /*expect_not_copied=*/true);
}

TEST(ReadPullResponseTest, RefusesWhatProtobufRefusesWhenCutShort) {
  const std::string bytes = RealisticResponse().SerializeAsString();
  int refused = 0;
  for (size_t size = 0; size < bytes.size(); ++size) {
    SCOPED_TRACE("cut to " + std::to_string(size) + " bytes");
    const std::string prefix = bytes.substr(0, size);
    v1::PullResponse expected;
    if (!expected.ParseFromString(prefix)) ++refused;
    ExpectSameAsProtobuf(std::vector<std::string_view>{prefix});
    ExpectSameAsProtobuf(CutAt(prefix, {size / 2}));
  }
  // Most cuts fall inside a field.
  EXPECT_GT(refused, bytes.size() / 2);
}

// Single bytes changed all over a realistic answer: whatever protobuf makes
// of them (a refusal, another field, an unknown one), so does the read.
TEST(ReadPullResponseTest, MatchesProtobufOnMutatedBytes) {
  const std::string bytes = RealisticResponse().SerializeAsString();
  std::mt19937 random(12345);
  std::uniform_int_distribution<size_t> position(0, bytes.size() - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  int accepted = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string mutated = bytes;
    const int changes = 1 + trial % 3;
    for (int i = 0; i < changes; ++i) {
      mutated[position(random)] = static_cast<char>(byte(random));
    }
    SCOPED_TRACE("trial " + std::to_string(trial));
    v1::PullResponse parsed;
    if (parsed.ParseFromString(mutated)) ++accepted;
    ExpectSameAsProtobuf(std::vector<std::string_view>{mutated});
    ExpectSameAsProtobuf(CutAt(mutated, {position(random)}));
    ExpectSameAsProtobuf(CutInto(mutated, {1, 3, 0, 7}));
  }
  // Most changes land in data, which any bytes fill.
  EXPECT_GT(accepted, 1000);
}

// Bytes that protobuf refuses; ReadPullResponse must refuse them too.
struct Broken {
  std::string name;
  std::string bytes;
};

std::vector<Broken> BrokenResponses() {
  const std::string good_slice =
      BytesField(1, "v") + VarintField(2, 4) + BytesField(5, "abcd");
  std::string eleven_byte_varint = Tag(2, 0);
  eleven_byte_varint.append(10, '\xff');
  eleven_byte_varint.push_back('\x01');
  const std::string not_utf8 = BytesField(1, std::string("\xff\xfe", 2));
  return {
      {"values longer than the message",
       Tag(1, 2) + Varint(good_slice.size() + 1) + good_slice},
      {"data longer than its slice",
       BytesField(1, BytesField(1, "v") + Tag(5, 2) + Varint(10) + "abcd") +
           BytesField(20, "unknown-1")},
      {"data longer than the message",
       Tag(1, 2) + Varint(6) + Tag(5, 2) + Varint(100) + "abcd"},
      {"unknown bytes longer than the message", Tag(20, 2) + Varint(5) + "abc"},
      {"variable longer than its slice",
       BytesField(1, Tag(1, 2) + Varint(5) + "abc") + BytesField(1, "")},
      {"variable not UTF-8", BytesField(1, not_utf8 + BytesField(5, "ab"))},
      {"variable not UTF-8 after data",
       BytesField(1, BytesField(5, "ab") + not_utf8)},
      {"variable not UTF-8 in a later value",
       BytesField(1, good_slice) + BytesField(1, not_utf8)},
      {"11-byte varint", eleven_byte_varint},
      {"11-byte varint in a slice", BytesField(1, eleven_byte_varint)},
      {"field number 0 (varint)",
       VarintField(0, 1) + BytesField(1, good_slice)},
      {"field number 0 (bytes)", BytesField(0, "xy")},
      {"field number 0 in a slice",
       BytesField(1, VarintField(0, 1) + BytesField(5, "ab"))},
      {"wire type 6", Tag(7, 6) + VarintField(2, 1)},
      {"wire type 7 in a slice", BytesField(1, Tag(7, 7) + "abc")},
      {"end group without start", Tag(20, 4)},
      {"end group in a slice", BytesField(1, BytesField(5, "ab") + Tag(20, 4))},
      {"group never ended", Tag(20, 3) + VarintField(1, 5)},
      {"truncated fixed64", Tag(4, 1) + "1234567"},
      {"truncated fixed32 in a slice", BytesField(1, Tag(9, 5) + "12")},
      {"tag cut short", std::string("\x80", 1)},
      {"length cut short", Tag(1, 2) + std::string("\x80", 1)},
  };
}

TEST(ReadPullResponseTest, RefusesWhatProtobufRefuses) {
  for (const Broken& broken : BrokenResponses()) {
    SCOPED_TRACE(broken.name);
    v1::PullResponse parsed;
    ASSERT_FALSE(parsed.ParseFromString(broken.bytes));
    ExpectSameAsProtobufInAnyPieces(broken.bytes, /*expect_not_copied=*/false);
  }
}

TEST(ReadPullResponseTest, AcceptsUnusualEncodingsAsProtobufDoes) {
  // Protobuf reads a varint of ten bytes whose last byte holds more than the
  // top bit; the scan leaves it to protobuf.
  std::string ten_byte_varint = Tag(2, 0);
  ten_byte_varint.append(9, '\xff');
  ten_byte_varint.push_back('\x7f');
  // A varint with needless continuation bytes.
  const std::string padded_varint = Tag(2, 0) + std::string("\x85\x80\x00", 3);
  // Field 1 (values), bytes, as a tag in five bytes (the most protobuf
  // reads); field 5 (data) the same.
  const std::string padded_values_tag = std::string("\x8a\x80\x80\x80\x00", 5);
  const std::string padded_data_tag = std::string("\xaa\x80\x80\x80\x00", 5);
  // A length of 3 in five bytes.
  const std::string padded_length = std::string("\x83\x80\x80\x80\x00", 5);
  // A tag whose value, 2^32 + 10, protobuf cuts to 32 bits: field 1, bytes.
  const std::string wide_values_tag = std::string("\x8a\x80\x80\x80\x10", 5);
  for (const std::string& bytes : {
           ten_byte_varint + BytesField(1, BytesField(5, "abc")),
           BytesField(1, ten_byte_varint + BytesField(5, "abc")),
           padded_varint + BytesField(1, BytesField(5, "abc")),
           BytesField(1, padded_data_tag + Varint(3) + "abc"),
           padded_values_tag + Varint(5) + BytesField(5, "abc"),
           BytesField(1, Tag(5, 2) + padded_length + "abc"),
           Tag(1, 2) + std::string("\x85\x80\x80\x80\x00", 5) +
               BytesField(5, "abc"),
           Tag(20, 2) + padded_length + "abc",
           BytesField(1,
                      Tag(1, 2) + padded_length + "abc" + BytesField(5, "de")),
           wide_values_tag + Varint(5) + BytesField(5, "abc"),
       }) {
    v1::PullResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(bytes));
    ExpectSameAsProtobufInAnyPieces(bytes, /*expect_not_copied=*/false);
  }
}

// Protobuf refuses a tag or a length of more than five bytes; so does the
// scan (it must not read them as ten-byte varints and write them back
// short).
TEST(ReadPullResponseTest, RefusesTagsAndLengthsOverFiveBytes) {
  // Each varint pads with continuation bytes to six bytes.
  const std::string data_tag = std::string("\xaa\x80\x80\x80\x80\x00", 6);
  const std::string values_tag = std::string("\x8a\x80\x80\x80\x80\x00", 6);
  for (const std::string& bytes : {
           BytesField(1, data_tag + Varint(3) + "abc"),
           values_tag + Varint(5) + BytesField(5, "abc"),
           // Unknown field 2, bytes and varint.
           std::string("\x92\x80\x80\x80\x80\x00", 6) + Varint(2) + "ab",
           std::string("\x90\x80\x80\x80\x80\x00", 6) + Varint(2),
           BytesField(
               1,
               Tag(5, 2) + std::string("\x83\x80\x80\x80\x80\x00", 6) + "abc"),
           Tag(1, 2) + std::string("\x85\x80\x80\x80\x80\x00", 6) +
               BytesField(5, "abc"),
           Tag(2, 2) + std::string("\x82\x80\x80\x80\x80\x00", 6) + "ab",
           BytesField(1, Tag(1, 2) +
                             std::string("\x82\x80\x80\x80\x80\x00", 6) + "ab"),
       }) {
    v1::PullResponse parsed;
    ASSERT_FALSE(parsed.ParseFromString(bytes));
    ExpectSameAsProtobufInAnyPieces(bytes, /*expect_not_copied=*/false);
  }
}

// Protobuf keeps the low 32 bits of a five-byte tag, so it reads 2^32 + 42
// in a Slice as `data`. The scan leaves such a tag to protobuf's parse,
// which then holds the data.
TEST(ReadPullResponseTest, ReadsWideDataTagAsProtobufDoes) {
  const std::string wide_tag = std::string("\xaa\x80\x80\x80\x10", 5);
  for (const std::string& bytes : {
           BytesField(1, wide_tag + Varint(3) + "abc"),
           BytesField(1, BytesField(5, "first") + wide_tag + Varint(3) + "abc"),
       }) {
    v1::PullResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(bytes));
    ASSERT_EQ(parsed.values(0).data(), "abc");
    ExpectSameAsProtobufInAnyPieces(bytes, /*expect_not_copied=*/false);
  }
}

TEST(ReadPullResponseTest, LeavesGroupsToProtobuf) {
  const v1::PullResponse response = RealisticResponse();
  const std::string group = Tag(20, 3) + VarintField(1, 5) +
                            BytesField(2, "in a group") + Tag(21, 3) +
                            Fixed32Field(1, 7) + Tag(21, 4) + Tag(20, 4);
  for (const std::string& bytes : {
           response.SerializeAsString() + group,
           group + response.SerializeAsString(),
           BytesField(1, BytesField(1, "v") + group + BytesField(5, "data")) +
               response.SerializeAsString(),
       }) {
    v1::PullResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(bytes));
    ExpectSameAsProtobufInAnyPieces(bytes, /*expect_not_copied=*/false);

    // The values' data come from the copy that protobuf parsed.
    ReceivedSlices received;
    ASSERT_TRUE(
        ReadPullResponse(std::vector<std::string_view>{bytes}, &received));
    ASSERT_EQ(received.owned.size(), received.data.size());
    for (size_t i = 0; i < received.data.size(); ++i) {
      EXPECT_EQ(received.data[i].ToString(), received.owned[i]);
      for (std::string_view piece : received.data[i].pieces()) {
        EXPECT_TRUE(Within(piece, received.owned[i]));
      }
    }
  }
}

TEST(ReadPullResponseTest, MovedResultKeepsCopiedData) {
  // Short data sits inside its std::string; moving the result must not
  // leave `data` pointing at a moved-from string.
  const std::string bytes =
      BytesField(1, BytesField(5, "abc")) + Tag(20, 3) + Tag(20, 4);
  ReceivedSlices received;
  ASSERT_TRUE(
      ReadPullResponse(std::vector<std::string_view>{bytes}, &received));
  ASSERT_THAT(received.owned, ElementsAre("abc"));
  ReceivedSlices moved = std::move(received);
  received = ReceivedSlices();
  ASSERT_EQ(moved.data.size(), 1);
  EXPECT_EQ(moved.data[0].ToString(), "abc");
}

TEST(ReceivedSlicesTest, ClearEmptiesEverything) {
  const std::string bytes =
      RealisticResponse().SerializeAsString() + Tag(20, 3) + Tag(20, 4);
  grpc::Slice slice(bytes.data(), bytes.size());
  grpc::ByteBuffer buffer(&slice, 1);
  ReceivedSlices received;
  ASSERT_TRUE(ReadPullResponse(buffer, &received));
  ASSERT_FALSE(received.data.empty());
  ASSERT_FALSE(received.slices.empty());
  ASSERT_FALSE(received.owned.empty());
  received.Clear();
  EXPECT_TRUE(MessageDifferencer::Equals(received.message, v1::PullResponse()));
  EXPECT_THAT(received.data, IsEmpty());
  EXPECT_THAT(received.slices, IsEmpty());
  EXPECT_THAT(received.owned, IsEmpty());
}

// ReadPullResponse from a grpc::ByteBuffer.

// A buffer holding `bytes` in pieces of `sizes` (copied into its slices).
grpc::ByteBuffer BufferOf(std::string_view bytes,
                          const std::vector<size_t>& sizes) {
  std::vector<grpc::Slice> slices;
  for (std::string_view piece : CutInto(bytes, sizes)) {
    slices.emplace_back(piece.data(), piece.size());
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// Whether every piece of `data` lies in one of `slices`.
bool WithinSlices(const ScatteredBytes& data,
                  const std::vector<grpc::Slice>& slices) {
  for (std::string_view piece : data.pieces()) {
    bool found = false;
    for (const grpc::Slice& slice : slices) {
      if (Within(piece,
                 std::string_view(reinterpret_cast<const char*>(slice.begin()),
                                  slice.size()))) {
        found = true;
      }
    }
    if (!found) return false;
  }
  return true;
}

TEST(ReadPullResponseBufferTest, MatchesProtobufAndKeepsSlices) {
  v1::PullResponse response = RealisticResponse();
  // Large data, to have it span slices of every size below.
  response.mutable_values(2)->set_data(Bytes(20000, 5));
  const v1::PullResponse expected = response;
  for (const std::vector<size_t>& sizes : std::vector<std::vector<size_t>>{
           {1 << 20}, {7, 100, 1, 3000}, {1}, {5}, {64, 4096}}) {
    std::string bytes = response.SerializeAsString();
    ReceivedSlices received;
    {
      const grpc::ByteBuffer buffer = BufferOf(bytes, sizes);
      ASSERT_TRUE(ReadPullResponse(buffer, &received));
    }
    // Neither the buffer nor the bytes it was made of hold the data now.
    std::fill(bytes.begin(), bytes.end(), '\0');
    bytes.clear();
    bytes.shrink_to_fit();

    ASSERT_EQ(received.data.size(), 3);
    EXPECT_THAT(received.owned, IsEmpty());
    for (const v1::Slice& value : received.message.values()) {
      EXPECT_THAT(value.data(), IsEmpty());
    }
    for (const ScatteredBytes& data : received.data) {
      EXPECT_TRUE(WithinSlices(data, received.slices));
    }
    EXPECT_TRUE(MessageDifferencer::Equals(Reassembled(received), expected));

    // Moving the result keeps the data where they are.
    const ReceivedSlices moved = std::move(received);
    EXPECT_TRUE(MessageDifferencer::Equals(Reassembled(moved), expected));
  }
}

TEST(ReadPullResponseBufferTest, ReplacesSlicesItHeld) {
  const std::string first = RealisticResponse().SerializeAsString();
  const std::string second = BytesField(1, BytesField(5, "second"));
  ReceivedSlices received;
  ASSERT_TRUE(ReadPullResponse(BufferOf(first, {10}), &received));
  ASSERT_TRUE(ReadPullResponse(BufferOf(second, {second.size()}), &received));
  EXPECT_EQ(received.slices.size(), 1);
  ASSERT_EQ(received.data.size(), 1);
  EXPECT_EQ(received.data[0].ToString(), "second");
}

TEST(ReadPullResponseBufferTest, ReadsEmptyBuffer) {
  // What gRPC hands over for an empty message: a buffer of no slices.
  ReceivedSlices received;
  EXPECT_TRUE(ReadPullResponse(grpc::ByteBuffer(nullptr, 0), &received));
  EXPECT_TRUE(MessageDifferencer::Equals(received.message, v1::PullResponse()));
  EXPECT_THAT(received.data, IsEmpty());
}

TEST(ReadPullResponseBufferTest, RefusesWhatProtobufRefuses) {
  for (const Broken& broken : BrokenResponses()) {
    SCOPED_TRACE(broken.name);
    ReceivedSlices received;
    EXPECT_FALSE(ReadPullResponse(BufferOf(broken.bytes, {3}), &received));
  }
}

TEST(ReadPullResponseBufferTest, GroupFallsBackToOwnedCopy) {
  const std::string bytes = RealisticResponse().SerializeAsString() +
                            Tag(20, 3) + VarintField(1, 5) + Tag(20, 4);
  ReceivedSlices received;
  ASSERT_TRUE(ReadPullResponse(BufferOf(bytes, {2, 50}), &received));
  ASSERT_EQ(received.owned.size(), 3);
  for (size_t i = 0; i < received.data.size(); ++i) {
    for (std::string_view piece : received.data[i].pieces()) {
      EXPECT_TRUE(Within(piece, received.owned[i]));
    }
  }
  v1::PullResponse expected;
  ASSERT_TRUE(expected.ParseFromString(bytes));
  EXPECT_TRUE(MessageDifferencer::Equals(Reassembled(received), expected));
}

// ToByteBuffer.

// The bytes of `buffer`, and its slices.
std::string Dumped(const grpc::ByteBuffer& buffer,
                   std::vector<grpc::Slice>* slices) {
  EXPECT_TRUE(buffer.Dump(slices).ok());
  std::string out;
  for (const grpc::Slice& slice : *slices) {
    out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return out;
}

// Whether one of `slices` is exactly the `size` bytes at `data`.
bool HasSliceAt(const std::vector<grpc::Slice>& slices, const char* data,
                size_t size) {
  return std::any_of(
      slices.begin(), slices.end(), [&](const grpc::Slice& slice) {
        return reinterpret_cast<const char*>(slice.begin()) == data &&
               slice.size() == size;
      });
}

// Serializes `message` with ToByteBuffer into *buffer and checks that the
// bytes parse back to it, that the message keeps everything but the data
// of the repeated fields that `fields` return (slices or row slices), and
// that each data went into the buffer as it was, not copied.
template <typename Message, typename... Fields>
void ExpectFieldsSerializedWithoutCopies(Message& message,
                                         grpc::ByteBuffer* buffer,
                                         Fields... fields) {
  const Message original = message;
  std::vector<std::string_view> data;  // where each data lies now
  (
      [&] {
        for (const auto& slice : *fields(message)) data.push_back(slice.data());
      }(),
      ...);

  const size_t size = ToByteBuffer(message, buffer);
  std::vector<grpc::Slice> pieces;
  const std::string bytes = Dumped(*buffer, &pieces);
  EXPECT_EQ(size, bytes.size());
  EXPECT_EQ(size, buffer->Length());
  EXPECT_EQ(size, original.ByteSizeLong());

  Message parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  EXPECT_TRUE(MessageDifferencer::Equals(parsed, original))
      << parsed.ShortDebugString();

  Message without_data = original;
  (
      [&] {
        for (auto& slice : *fields(without_data)) slice.clear_data();
      }(),
      ...);
  EXPECT_TRUE(MessageDifferencer::Equals(message, without_data))
      << message.ShortDebugString();

  for (size_t i = 0; i < data.size(); ++i) {
    if (data[i].empty()) continue;
    EXPECT_TRUE(HasSliceAt(pieces, data[i].data(), data[i].size()))
        << "slice " << i;
  }
}

template <typename Message, typename Slices>
void ExpectSerializedWithoutCopies(Message& message, Slices slices,
                                   grpc::ByteBuffer* buffer) {
  ExpectFieldsSerializedWithoutCopies(message, buffer, slices);
}

// Row slices of a few kinds: with rows (about 64 KiB), with ids and no data,
// empty.
void AddRowSlices(google::protobuf::RepeatedPtrField<v1::RowSlice>* rows) {
  v1::RowSlice* large = rows->Add();
  large->set_table("items");
  for (uint64_t id = 0; id < 256; ++id) large->add_ids(id * 7919);
  large->set_dtype(v1::FLOAT32);
  large->set_data(Bytes(256 * 64 * 4, 5));
  v1::RowSlice* unanswered = rows->Add();
  unanswered->set_table("users");
  unanswered->add_ids(3);
  unanswered->set_unanswered(true);
  rows->Add();
  v1::RowSlice* small = rows->Add();
  small->set_table("tags");
  small->add_ids(1);
  small->set_dtype(v1::BFLOAT16);
  small->set_data(Bytes(16, 9));
}

// Slices of many kinds: with data (small, ~100 KiB, of every dtype),
// without data, without any field.
void AddSlices(google::protobuf::RepeatedPtrField<v1::Slice>* slices) {
  v1::Slice* large = slices->Add();
  large->set_variable("embedding");
  large->set_offset(1 << 20);
  large->set_length(25600);
  large->set_dtype(v1::FLOAT32);
  large->set_data(Bytes(100 * 1024, 11));
  large->set_version(12);
  v1::Slice* empty = slices->Add();
  empty->set_variable("dense/bias");
  empty->set_length(0);
  empty->set_dtype(v1::FLOAT16);
  empty->set_version(3);
  slices->Add();  // no field at all
  v1::Slice* small = slices->Add();
  small->set_variable("dense/kernel");
  small->set_offset(4096);
  small->set_length(4);
  small->set_dtype(v1::BFLOAT16);
  small->set_data(Bytes(8, 1));
  small->set_version(1);
  v1::Slice* data_only = slices->Add();
  data_only->set_data(Bytes(1000, 2));
  v1::Slice* empty_again = slices->Add();
  empty_again->set_variable("empty again");
  empty_again->set_data("");
}

TEST(ToByteBufferTest, PullResponseSerializesWithoutCopyingData) {
  v1::PullResponse response;
  AddSlices(response.mutable_values());
  const v1::PullResponse original = response;
  const char* large = response.values(0).data().data();
  grpc::ByteBuffer buffer;
  ExpectSerializedWithoutCopies(
      response, [](v1::PullResponse& m) { return m.mutable_values(); },
      &buffer);

  // And the buffer reads back with the data still there.
  ReceivedSlices received;
  ASSERT_TRUE(ReadPullResponse(buffer, &received));
  EXPECT_TRUE(MessageDifferencer::Equals(Reassembled(received), original));
  EXPECT_THAT(received.owned, IsEmpty());
  ASSERT_EQ(received.data.size(), original.values_size());
  ASSERT_EQ(received.data[0].pieces().size(), 1);
  EXPECT_EQ(received.data[0].pieces()[0].data(), large);
  EXPECT_EQ(received.data[0].size(), 100 * 1024);
}

TEST(ToByteBufferTest, BufferOutlivesMessage) {
  auto response = std::make_unique<v1::PullResponse>();
  AddSlices(response->mutable_values());
  const v1::PullResponse original = *response;
  grpc::ByteBuffer buffer;
  ToByteBuffer(*response, &buffer);
  response.reset();

  std::vector<grpc::Slice> slices;
  v1::PullResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(Dumped(buffer, &slices)));
  EXPECT_TRUE(MessageDifferencer::Equals(parsed, original));
}

TEST(ToByteBufferTest, ReplacesWhatTheBufferHeld) {
  const std::string old = "old bytes";
  grpc::Slice slice(old.data(), old.size());
  grpc::ByteBuffer buffer(&slice, 1);
  v1::PullResponse response = RealisticResponse();
  const v1::PullResponse original = response;
  EXPECT_EQ(ToByteBuffer(response, &buffer), original.ByteSizeLong());
  std::vector<grpc::Slice> slices;
  v1::PullResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(Dumped(buffer, &slices)));
  EXPECT_TRUE(MessageDifferencer::Equals(parsed, original));
}

TEST(ToByteBufferTest, EmptyPullResponse) {
  v1::PullResponse response;
  grpc::ByteBuffer buffer;
  EXPECT_EQ(ToByteBuffer(response, &buffer), 0);
  std::vector<grpc::Slice> slices;
  EXPECT_EQ(Dumped(buffer, &slices), "");
  ReceivedSlices received;
  EXPECT_TRUE(ReadPullResponse(buffer, &received));
  EXPECT_THAT(received.data, IsEmpty());
}

TEST(ToByteBufferTest, PullResponseWithoutData) {
  v1::PullResponse response;
  for (const char* name : {"a", "b/c", "d"}) {
    v1::Slice* value = response.add_values();
    value->set_variable(name);
    value->set_length(std::strlen(name));
  }
  const v1::PullResponse original = response;
  grpc::ByteBuffer buffer;
  ExpectSerializedWithoutCopies(
      response, [](v1::PullResponse& m) { return m.mutable_values(); },
      &buffer);
  EXPECT_TRUE(MessageDifferencer::Equals(response, original));
}

v1::PushRequest RealisticRequest() {
  v1::PushRequest request;
  request.set_worker_id("worker-3");
  request.set_seq(1234567);
  request.set_step(89);
  request.set_loss(0.4375);
  request.set_pull_dtype(v1::BFLOAT16);
  AddSlices(request.mutable_gradients());
  return request;
}

TEST(ToByteBufferTest, PushRequestSerializesWithoutCopyingData) {
  v1::PushRequest request = RealisticRequest();
  grpc::ByteBuffer buffer;
  ExpectSerializedWithoutCopies(
      request, [](v1::PushRequest& m) { return m.mutable_gradients(); },
      &buffer);
  // The request keeps its other fields.
  EXPECT_EQ(request.worker_id(), "worker-3");
  EXPECT_TRUE(request.has_loss());
}

TEST(ToByteBufferTest, RowsSerializeWithoutCopyingTheirData) {
  v1::PullResponse response;
  AddSlices(response.mutable_values());
  AddRowSlices(response.mutable_rows());
  grpc::ByteBuffer buffer;
  ExpectFieldsSerializedWithoutCopies(
      response, &buffer, [](v1::PullResponse& m) { return m.mutable_values(); },
      [](v1::PullResponse& m) { return m.mutable_rows(); });

  v1::PushRequest request = RealisticRequest();
  AddRowSlices(request.mutable_rows());
  ExpectFieldsSerializedWithoutCopies(
      request, &buffer,
      [](v1::PushRequest& m) { return m.mutable_gradients(); },
      [](v1::PushRequest& m) { return m.mutable_rows(); });
}

TEST(ToByteBufferTest, PushRequestWithoutGradients) {
  v1::PushRequest request = RealisticRequest();
  request.clear_gradients();
  const v1::PushRequest original = request;
  grpc::ByteBuffer buffer;
  ExpectSerializedWithoutCopies(
      request, [](v1::PushRequest& m) { return m.mutable_gradients(); },
      &buffer);
  std::vector<grpc::Slice> slices;
  EXPECT_EQ(Dumped(buffer, &slices), original.SerializeAsString());
  EXPECT_TRUE(MessageDifferencer::Equals(request, original));

  v1::PushRequest empty;
  EXPECT_EQ(ToByteBuffer(empty, &buffer), 0);
  EXPECT_EQ(Dumped(buffer, &slices), "");
}

// DecodeValues from scattered bytes.

// Values that every dtype has to carry: signs, zeros, subnormals (of
// float32 and of float16), the extremes, infinities, NaNs, and a ramp.
std::vector<float> TestValues(size_t n) {
  const std::vector<float> special = {
      0.0f,
      -0.0f,
      1.0f,
      -1.5f,
      3.14159265f,
      -2.71828f,
      1e-40f,   // float32 subnormal
      -1e-42f,  // float32 subnormal
      std::numeric_limits<float>::denorm_min(),
      std::numeric_limits<float>::min(),
      std::numeric_limits<float>::max(),
      -std::numeric_limits<float>::max(),
      5.9604645e-8f,  // 2^-24, the smallest float16 subnormal
      -3.0e-5f,       // float16 subnormal
      65504.0f,       // float16 max
      -65504.0f,
      std::numeric_limits<float>::infinity(),
      -std::numeric_limits<float>::infinity(),
      std::numeric_limits<float>::quiet_NaN(),
      -std::numeric_limits<float>::quiet_NaN(),
      std::bit_cast<float>(uint32_t{0x7fa00001}),  // signaling NaN, payload
      std::bit_cast<float>(uint32_t{0xffc12345}),  // negative NaN, payload
  };
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) {
    values[i] = i % 3 == 0 ? special[(i / 3) % special.size()]
                           : (static_cast<float>(i) - n / 2.0f) * 0.01234f;
  }
  return values;
}

ScatteredBytes ScatteredOf(const std::vector<std::string_view>& pieces) {
  ScatteredBytes bytes;
  for (std::string_view piece : pieces) bytes.Append(piece);
  return bytes;
}

std::string DTypeName(v1::DType dtype) {
  return v1::DType_Name(dtype).empty() ? std::to_string(dtype)
                                       : v1::DType_Name(dtype);
}

TEST(DecodeScatteredValuesTest, MatchesDecodeOfTheWholeString) {
  // More than one 4096-value chunk of 16-bit values, and not a multiple.
  constexpr size_t kValues = 10007;
  const std::vector<float> values = TestValues(kValues);
  for (v1::DType dtype : {v1::FLOAT32, v1::BFLOAT16, v1::FLOAT16}) {
    std::string encoded;
    EncodeValues(dtype, values, &encoded);
    ASSERT_EQ(encoded.size(), kValues * BytesPerValue(dtype));
    std::vector<float> expected(kValues, 123.0f);
    ASSERT_TRUE(DecodeValues(dtype, std::string_view(encoded), expected).ok());

    for (const std::vector<size_t>& sizes :
         std::vector<std::vector<size_t>>{{encoded.size()},
                                          {1},
                                          {3},
                                          {4097},
                                          {8192},
                                          {1, 3, 4097},
                                          {8193, 2, 8191}}) {
      SCOPED_TRACE(DTypeName(dtype) + ", pieces of " +
                   std::to_string(sizes[0]) + "...");
      const ScatteredBytes data = ScatteredOf(CutInto(encoded, sizes));
      ASSERT_EQ(data.size(), encoded.size());
      std::vector<float> got(kValues, -7.0f);
      const absl::Status status = DecodeValues(dtype, data, got);
      ASSERT_TRUE(status.ok()) << status;
      EXPECT_EQ(
          std::memcmp(got.data(), expected.data(), kValues * sizeof(float)), 0);
    }
  }
}

TEST(DecodeScatteredValuesTest, FewValues) {
  const std::vector<float> values = TestValues(5);
  for (v1::DType dtype : {v1::FLOAT32, v1::BFLOAT16, v1::FLOAT16}) {
    std::string encoded;
    EncodeValues(dtype, values, &encoded);
    std::vector<float> expected(values.size());
    ASSERT_TRUE(DecodeValues(dtype, std::string_view(encoded), expected).ok());
    for (size_t cut = 0; cut <= encoded.size(); ++cut) {
      SCOPED_TRACE(DTypeName(dtype) + ", cut at " + std::to_string(cut));
      const ScatteredBytes data = ScatteredOf(CutAt(encoded, {cut}));
      std::vector<float> got(values.size(), -7.0f);
      ASSERT_TRUE(DecodeValues(dtype, data, got).ok());
      EXPECT_EQ(std::memcmp(got.data(), expected.data(),
                            values.size() * sizeof(float)),
                0);
    }
  }
}

TEST(DecodeScatteredValuesTest, NothingToDecode) {
  for (v1::DType dtype : {v1::FLOAT32, v1::BFLOAT16, v1::FLOAT16}) {
    EXPECT_TRUE(DecodeValues(dtype, ScatteredBytes(), std::span<float>()).ok());
  }
}

TEST(DecodeScatteredValuesTest, ErrorsMatchDecodeOfTheWholeString) {
  const std::string bytes = Bytes(4 * 101 + 3, 17);
  for (v1::DType dtype :
       {v1::FLOAT32, v1::BFLOAT16, v1::FLOAT16, static_cast<v1::DType>(3),
        static_cast<v1::DType>(-1)}) {
    // Sizes that do not match the values asked for.
    for (size_t size : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{200},
                        size_t{203}, size_t{404}, size_t{407}}) {
      for (size_t values : {size_t{0}, size_t{1}, size_t{100}, size_t{101}}) {
        const std::string_view encoded =
            std::string_view(bytes).substr(0, size);
        std::vector<float> out(values);
        const absl::Status expected = DecodeValues(dtype, encoded, out);
        for (const std::vector<size_t>& sizes :
             std::vector<std::vector<size_t>>{{1}, {3}, {4097}, {2, 5}}) {
          SCOPED_TRACE(DTypeName(dtype) + ", " + std::to_string(size) +
                       " bytes, " + std::to_string(values) +
                       " values, pieces of " + std::to_string(sizes[0]));
          const ScatteredBytes data = ScatteredOf(CutInto(encoded, sizes));
          const absl::Status status = DecodeValues(dtype, data, out);
          EXPECT_EQ(status.code(), expected.code());
          EXPECT_EQ(status.message(), expected.message());
        }
      }
    }
  }
  // The string version does refuse these.
  std::vector<float> out(2);
  EXPECT_EQ(
      DecodeValues(v1::FLOAT32, std::string_view(bytes.data(), 7), out).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeValues(static_cast<v1::DType>(3),
                         std::string_view(bytes.data(), 8), out)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// ScatteredBytes.

TEST(ScatteredBytesTest, AppendDropsEmptyPieces) {
  ScatteredBytes bytes;
  EXPECT_TRUE(bytes.empty());
  bytes.Append("");
  bytes.Append("ab");
  bytes.Append("");
  bytes.Append("cde");
  bytes.Append(std::string_view());
  EXPECT_EQ(bytes.size(), 5);
  EXPECT_FALSE(bytes.empty());
  EXPECT_THAT(bytes.pieces(), ElementsAre("ab", "cde"));
  EXPECT_EQ(bytes.ToString(), "abcde");

  EXPECT_TRUE(ScatteredBytes("").pieces().empty());
  EXPECT_EQ(ScatteredBytes("xyz").ToString(), "xyz");
  EXPECT_EQ(ScatteredBytes().ToString(), "");
}

TEST(ScatteredBytesTest, ContiguousOnlyWithinOnePiece) {
  const std::string first = "abcd";
  const std::string second = "efg";
  ScatteredBytes bytes;
  bytes.Append(first);
  bytes.Append(second);

  EXPECT_EQ(bytes.Contiguous(0, 4), first.data());
  EXPECT_EQ(bytes.Contiguous(1, 2), first.data() + 1);
  EXPECT_EQ(bytes.Contiguous(3, 1), first.data() + 3);
  EXPECT_EQ(bytes.Contiguous(4, 3), second.data());
  EXPECT_EQ(bytes.Contiguous(6, 1), second.data() + 2);
  EXPECT_EQ(bytes.Contiguous(3, 2), nullptr);
  EXPECT_EQ(bytes.Contiguous(0, 5), nullptr);
  EXPECT_EQ(bytes.Contiguous(0, 7), nullptr);
}

TEST(ScatteredBytesTest, CopyToAnyRange) {
  const std::string whole = "abcdefghijklmnopq";
  ScatteredBytes bytes;
  for (std::string_view piece : CutInto(whole, {1, 3, 0, 2, 5})) {
    bytes.Append(piece);
  }
  ASSERT_EQ(bytes.pieces().size(), 7);  // 1 3 2 5 1 3 2
  ASSERT_EQ(bytes.size(), whole.size());
  EXPECT_EQ(bytes.ToString(), whole);

  for (size_t offset = 0; offset <= whole.size(); ++offset) {
    for (size_t size = 0; offset + size <= whole.size(); ++size) {
      std::string out(size, '?');
      bytes.CopyTo(offset, out);
      EXPECT_EQ(out, whole.substr(offset, size))
          << "offset " << offset << ", size " << size;
    }
  }
}

TEST(ScatteredBytesTest, ContiguousMatchesCopyTo) {
  const std::string whole = "abcdefghijklmnopq";
  ScatteredBytes bytes;
  for (std::string_view piece : CutInto(whole, {4, 1, 6})) bytes.Append(piece);

  for (size_t offset = 0; offset < whole.size(); ++offset) {
    for (size_t size = 1; offset + size <= whole.size(); ++size) {
      const char* contiguous = bytes.Contiguous(offset, size);
      if (contiguous == nullptr) continue;
      EXPECT_EQ(std::string_view(contiguous, size), whole.substr(offset, size))
          << "offset " << offset << ", size " << size;
    }
  }
}

}  // namespace
}  // namespace ps
