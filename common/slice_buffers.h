// Messages that carry v1::Slice data, to and from gRPC's byte buffers
// without copying the data.
//
// A PushRequest or a PullResponse is mostly the `data` of its slices. gRPC's
// protobuf serialization copies a message into a buffer of its own, and its
// parse copies every `data` out of the received bytes into a string. The
// functions here send each `data` string as it is (the buffer takes it over)
// and read a received PullResponse leaving each `data` where it arrived, so
// that it is copied once: decoded into the caller's floats.
#ifndef PS_COMMON_SLICE_BUFFERS_H_
#define PS_COMMON_SLICE_BUFFERS_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps {

// A run of bytes held in pieces, in order; it does not own them.
class ScatteredBytes {
 public:
  ScatteredBytes() = default;
  // One piece.
  explicit ScatteredBytes(std::string_view bytes);

  // Appends a piece (an empty one is dropped).
  void Append(std::string_view piece);

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const std::vector<std::string_view>& pieces() const { return pieces_; }

  // The bytes [offset, offset + size) when one piece holds them all; else
  // null.
  // REQUIRES: 0 < size; offset + size <= this->size().
  const char* Contiguous(size_t offset, size_t size) const;

  // Copies bytes [offset, offset + out.size()) into `out`.
  // REQUIRES: offset + out.size() <= size().
  void CopyTo(size_t offset, std::span<char> out) const;

  // All the bytes in one string.
  std::string ToString() const;

 private:
  // The piece that holds byte `offset`.
  size_t PieceAt(size_t offset) const;

  std::vector<std::string_view> pieces_;
  std::vector<size_t> starts_;  // offset of each piece's first byte
  size_t size_ = 0;
};

// Decodes out.size() values of `dtype` from `data`, as DecodeValues in
// common/wire.h does from one string (the same checks and errors).
absl::Status DecodeValues(v1::DType dtype, const ScatteredBytes& data,
                          std::span<float> out);

// A PullResponse as ReadPullResponse leaves it: data[i] holds the bytes of
// message.values(i).data, which `message` holds empty. Moving it keeps
// `data` valid; copying does not.
struct ReceivedSlices {
  v1::PullResponse message;
  std::vector<ScatteredBytes> data;
  // What `data` points into: the received slices, or copies (see
  // ReadPullResponse).
  std::vector<grpc::Slice> slices;
  std::vector<std::string> owned;

  void Clear();
};

// Parses the serialized PullResponse held by `pieces` (in order) into *out.
// The result is what protobuf's parse of the concatenated pieces gives (the
// same fields, the same refusals); only where the data lie differs. What
// the scan does not read itself (a group, an unusual encoding, a malformed
// field) it leaves to protobuf's parse of a copy of the whole message,
// which then decides. False when the bytes are not a PullResponse.
// REQUIRES: the pieces outlive every use of out->data.
bool ReadPullResponse(std::span<const std::string_view> pieces,
                      ReceivedSlices* out);

// The same from a received buffer, whose slices *out keeps.
bool ReadPullResponse(const grpc::ByteBuffer& buffer, ReceivedSlices* out);

// Serializes `message` into *out, which takes over the data string of each
// slice and row slice instead of copying it (only the small headers are
// copied); `message` keeps every field but those data. Returns the bytes
// serialized.
size_t ToByteBuffer(v1::PullResponse& message, grpc::ByteBuffer* out);
size_t ToByteBuffer(v1::PushRequest& message, grpc::ByteBuffer* out);

}  // namespace ps

#endif  // PS_COMMON_SLICE_BUFFERS_H_
