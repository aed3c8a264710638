#include "common/slice_buffers.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <utility>

#include "common/wire.h"

namespace ps {

ScatteredBytes::ScatteredBytes(std::string_view bytes) { Append(bytes); }

void ScatteredBytes::Append(std::string_view piece) {
  if (piece.empty()) return;
  pieces_.push_back(piece);
  starts_.push_back(size_);
  size_ += piece.size();
}

size_t ScatteredBytes::PieceAt(size_t offset) const {
  // The last piece that starts at or before `offset`.
  auto it = std::upper_bound(starts_.begin(), starts_.end(), offset);
  return static_cast<size_t>(it - starts_.begin()) - 1;
}

const char* ScatteredBytes::Contiguous(size_t offset, size_t size) const {
  if (size == 0) return pieces_.empty() ? nullptr : pieces_[0].data();
  const size_t i = PieceAt(offset);
  const size_t within = offset - starts_[i];
  if (within + size > pieces_[i].size()) return nullptr;
  return pieces_[i].data() + within;
}

void ScatteredBytes::CopyTo(size_t offset, std::span<char> out) const {
  if (out.empty()) return;
  size_t i = PieceAt(offset);
  size_t within = offset - starts_[i];
  size_t done = 0;
  while (done < out.size()) {
    const size_t n = std::min(pieces_[i].size() - within, out.size() - done);
    std::memcpy(out.data() + done, pieces_[i].data() + within, n);
    done += n;
    ++i;
    within = 0;
  }
}

std::string ScatteredBytes::ToString() const {
  std::string out;
  out.reserve(size_);
  for (std::string_view piece : pieces_) out.append(piece);
  return out;
}

absl::Status DecodeValues(v1::DType dtype, const ScatteredBytes& data,
                          std::span<float> out) {
  if (data.pieces().size() <= 1) {
    return DecodeValues(
        dtype, data.empty() ? std::string_view() : data.pieces()[0], out);
  }
  if (absl::Status status = CheckEncodedSize(dtype, data.size(), out.size());
      !status.ok()) {
    return status;
  }
  if (dtype == v1::FLOAT32) {
    data.CopyTo(0, std::span<char>(reinterpret_cast<char*>(out.data()),
                                   out.size_bytes()));
    return absl::OkStatus();
  }
  // 16-bit values are widened a chunk at a time, in place where the chunk
  // lies in one piece, else from a copy in a small buffer.
  constexpr size_t kChunk = 4096;
  alignas(64) char buffer[2 * kChunk];
  for (size_t done = 0; done < out.size();) {
    const size_t n = std::min(out.size() - done, kChunk);
    const char* half = data.Contiguous(2 * done, 2 * n);
    if (half == nullptr) {
      data.CopyTo(2 * done, std::span<char>(buffer, 2 * n));
      half = buffer;
    }
    WidenHalf(dtype, half, out.subspan(done, n));
    done += n;
  }
  return absl::OkStatus();
}

void ReceivedSlices::Clear() {
  message.Clear();
  data.clear();
  slices.clear();
  owned.clear();
}

namespace {

// Protobuf's wire types.
enum WireType : uint32_t {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kFixed32 = 5,
};

constexpr uint32_t kValuesField = 1;  // PullResponse.values
constexpr uint32_t kDataField = 5;    // Slice.data

size_t VarintSize(uint64_t value) {
  size_t size = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++size;
  }
  return size;
}

void AppendVarint(uint64_t value, std::string& out) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>(value | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

// A cursor over the pieces of a message, with a limit (the end of the
// message being read).
class Reader {
 public:
  explicit Reader(std::span<const std::string_view> pieces) : pieces_(pieces) {
    for (std::string_view piece : pieces) limit_ += piece.size();
    SkipEmptyPieces();
  }

  bool AtLimit() const { return position_ == limit_; }

  // Limits reading to the next `size` bytes; returns the previous limit, or
  // nullopt when fewer bytes are left.
  std::optional<size_t> PushLimit(size_t size) {
    if (size > limit_ - position_) return std::nullopt;
    const size_t previous = limit_;
    limit_ = position_ + size;
    return previous;
  }
  void PopLimit(size_t previous) { limit_ = previous; }

  // Reads a varint of at most `max_bytes` bytes.
  bool ReadVarint(uint64_t* value, int max_bytes = 10) {
    uint64_t result = 0;
    for (int i = 0; i < max_bytes; ++i) {
      uint8_t byte;
      if (!ReadByte(&byte)) return false;
      // The tenth byte may only hold the top bit.
      if (i == 9 && byte > 1) return false;
      result |= static_cast<uint64_t>(byte & 0x7f) << (7 * i);
      if ((byte & 0x80) == 0) {
        *value = result;
        return true;
      }
    }
    return false;
  }

  // A tag or a length as protobuf reads them: at most 5 bytes, a tag within
  // 32 bits, a length within 31. Anything else the scan leaves to protobuf.
  bool ReadTag(uint64_t* tag) {
    return ReadVarint(tag, 5) && *tag <= std::numeric_limits<uint32_t>::max();
  }
  bool ReadLength(uint64_t* size) {
    return ReadVarint(size, 5) &&
           *size <= static_cast<uint64_t>(std::numeric_limits<int32_t>::max());
  }

  // Hands the next `size` bytes to `out` as they lie in the pieces.
  bool Read(size_t size, ScatteredBytes* out) {
    return Take(size, [out](std::string_view run) { out->Append(run); });
  }

  // Appends the next `size` bytes to `out`.
  bool CopyTo(size_t size, std::string& out) {
    return Take(size, [&out](std::string_view run) { out.append(run); });
  }

 private:
  // Passes the next `size` bytes to `take`, one run per piece they span.
  template <typename Consumer>
  bool Take(size_t size, Consumer take) {
    if (size > limit_ - position_) return false;
    while (size > 0) {
      std::string_view rest = pieces_[piece_].substr(within_);
      const size_t n = std::min(size, rest.size());
      take(rest.substr(0, n));
      Advance(n);
      size -= n;
    }
    return true;
  }

  bool ReadByte(uint8_t* byte) {
    if (position_ == limit_) return false;
    *byte = static_cast<uint8_t>(pieces_[piece_][within_]);
    Advance(1);
    return true;
  }

  void Advance(size_t n) {
    position_ += n;
    within_ += n;
    SkipEmptyPieces();
  }

  // Moves past finished (and empty) pieces.
  void SkipEmptyPieces() {
    while (piece_ < pieces_.size() && within_ == pieces_[piece_].size()) {
      ++piece_;
      within_ = 0;
    }
  }

  std::span<const std::string_view> pieces_;
  size_t piece_ = 0;   // the piece holding the next byte
  size_t within_ = 0;  // the next byte's offset in it
  size_t position_ = 0;
  size_t limit_ = 0;
};

// Copies one field whose tag has been read, re-encoded (the same meaning
// for protobuf), into `out`. False for a group or a field cut short.
bool CopyField(uint64_t tag, Reader& reader, std::string& out) {
  AppendVarint(tag, out);
  switch (tag & 7) {
    case kVarint: {
      uint64_t value;
      if (!reader.ReadVarint(&value)) return false;
      AppendVarint(value, out);
      return true;
    }
    case kFixed64:
      return reader.CopyTo(8, out);
    case kFixed32:
      return reader.CopyTo(4, out);
    case kLengthDelimited: {
      uint64_t size;
      if (!reader.ReadLength(&size)) return false;
      AppendVarint(size, out);
      return reader.CopyTo(size, out);
    }
    default:  // groups (deprecated), or not a wire type
      return false;
  }
}

// Reads a Slice of `size` bytes: every field but `data` is copied into
// `slice`, the last `data` is left in place in *data.
bool ReadSlice(uint64_t size, Reader& reader, std::string& slice,
               ScatteredBytes* data) {
  std::optional<size_t> outer = reader.PushLimit(size);
  if (!outer) return false;
  while (!reader.AtLimit()) {
    uint64_t tag;
    if (!reader.ReadTag(&tag)) return false;
    if (tag == ((kDataField << 3) | kLengthDelimited)) {
      uint64_t data_size;
      if (!reader.ReadLength(&data_size)) return false;
      *data = ScatteredBytes();  // the last one wins, as in protobuf
      if (!reader.Read(data_size, data)) return false;
    } else if (!CopyField(tag, reader, slice)) {
      return false;
    }
  }
  reader.PopLimit(*outer);
  return true;
}

// The scan of ReadPullResponse; false where it leaves the parse to
// protobuf.
bool ScanPullResponse(std::span<const std::string_view> pieces,
                      ReceivedSlices* out) {
  Reader reader(pieces);
  std::string rest;  // the message without the slices' data
  std::string slice;
  while (!reader.AtLimit()) {
    uint64_t tag;
    if (!reader.ReadTag(&tag)) return false;
    if (tag != ((kValuesField << 3) | kLengthDelimited)) {
      if (!CopyField(tag, reader, rest)) return false;
      continue;
    }
    uint64_t size;
    if (!reader.ReadLength(&size)) return false;
    slice.clear();
    ScatteredBytes data;
    if (!ReadSlice(size, reader, slice, &data)) return false;
    AppendVarint(tag, rest);
    AppendVarint(slice.size(), rest);
    rest.append(slice);
    out->data.push_back(std::move(data));
  }
  // Protobuf checks everything else (wire types, UTF-8, field numbers).
  return out->message.ParseFromString(rest) &&
         static_cast<size_t>(out->message.values_size()) == out->data.size();
}

}  // namespace

bool ReadPullResponse(std::span<const std::string_view> pieces,
                      ReceivedSlices* out) {
  out->message.Clear();
  out->data.clear();
  out->owned.clear();
  if (ScanPullResponse(pieces, out)) return true;
  // Not what the scan reads: protobuf parses a copy of the whole message
  // and decides (a group or an unusual encoding parses; a broken message
  // does not).
  out->message.Clear();
  out->data.clear();
  ScatteredBytes whole;
  for (std::string_view piece : pieces) whole.Append(piece);
  if (!out->message.ParseFromString(whole.ToString())) return false;
  out->owned.reserve(out->message.values_size());
  for (v1::Slice& slice : *out->message.mutable_values()) {
    out->owned.push_back(std::move(*slice.mutable_data()));
    slice.clear_data();
  }
  for (const std::string& bytes : out->owned) out->data.emplace_back(bytes);
  return true;
}

bool ReadPullResponse(const grpc::ByteBuffer& buffer, ReceivedSlices* out) {
  out->slices.clear();
  if (!buffer.Dump(&out->slices).ok()) return false;
  std::vector<std::string_view> pieces;
  pieces.reserve(out->slices.size());
  for (const grpc::Slice& slice : out->slices) {
    pieces.emplace_back(reinterpret_cast<const char*>(slice.begin()),
                        slice.size());
  }
  return ReadPullResponse(pieces, out);
}

namespace {

// Appends each message of `slices`, a repeated field numbered `field`, to
// `out`: its header (everything but its bytes field numbered `data_field`)
// copied, its data string moved into a grpc::Slice of its own. Returns the
// bytes appended. (The data goes after the other fields, which protobuf
// reads as the same message.)
template <typename Message>
size_t AppendSlices(google::protobuf::RepeatedPtrField<Message>& slices,
                    uint32_t field, uint32_t data_field, std::string& header,
                    std::vector<grpc::Slice>& out) {
  const char field_tag = static_cast<char>((field << 3) | kLengthDelimited);
  const char data_tag = static_cast<char>((data_field << 3) | kLengthDelimited);
  size_t total = 0;
  for (Message& slice : slices) {
    // Null when the data was never set.
    std::unique_ptr<std::string> data(slice.release_data());
    const size_t data_size = data == nullptr ? 0 : data->size();
    const size_t rest = slice.ByteSizeLong();  // without data
    const size_t data_bytes =
        data_size == 0 ? 0 : 1 + VarintSize(data_size) + data_size;
    header.push_back(field_tag);
    AppendVarint(rest + data_bytes, header);
    slice.AppendToString(&header);
    if (data_size == 0) continue;
    header.push_back(data_tag);
    AppendVarint(data_size, header);
    total += header.size() + data_size;
    out.emplace_back(header.data(), header.size());
    header.clear();
    std::string* owned = data.release();
    out.emplace_back(
        owned->data(), data_size,
        [](void* string) { delete static_cast<std::string*>(string); }, owned);
  }
  return total;
}

size_t Finish(std::string& header, std::vector<grpc::Slice>& slices,
              size_t total, grpc::ByteBuffer* out) {
  if (!header.empty()) {
    total += header.size();
    slices.emplace_back(header.data(), header.size());
  }
  grpc::ByteBuffer buffer(slices.data(), slices.size());
  out->Swap(&buffer);
  return total;
}

}  // namespace

size_t ToByteBuffer(v1::PullResponse& message, grpc::ByteBuffer* out) {
  std::string header;
  std::vector<grpc::Slice> slices;
  size_t total = AppendSlices(*message.mutable_values(), kValuesField,
                              kDataField, header, slices);
  // Table rows follow, their data moved as the slices' is.
  constexpr uint32_t kRowsField = 2;     // PullResponse.rows
  constexpr uint32_t kRowDataField = 4;  // RowSlice.data
  total += AppendSlices(*message.mutable_rows(), kRowsField, kRowDataField,
                        header, slices);
  return Finish(header, slices, total, out);
}

size_t ToByteBuffer(v1::PushRequest& message, grpc::ByteBuffer* out) {
  constexpr uint32_t kGradientsField = 5;  // PushRequest.gradients
  constexpr uint32_t kRowsField = 7;       // PushRequest.rows
  constexpr uint32_t kRowDataField = 4;    // RowSlice.data
  google::protobuf::RepeatedPtrField<v1::Slice> gradients;
  google::protobuf::RepeatedPtrField<v1::RowSlice> rows;
  gradients.Swap(message.mutable_gradients());
  rows.Swap(message.mutable_rows());
  std::string header = message.SerializeAsString();  // the other fields
  std::vector<grpc::Slice> slices;
  size_t total =
      AppendSlices(gradients, kGradientsField, kDataField, header, slices);
  total += AppendSlices(rows, kRowsField, kRowDataField, header, slices);
  gradients.Swap(message.mutable_gradients());  // back, without their data
  rows.Swap(message.mutable_rows());
  return Finish(header, slices, total, out);
}

}  // namespace ps
