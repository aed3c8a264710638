// Fuzzes the slice codecs: decoding values of each dtype from one string
// and from scattered pieces, the finite checks, and the client's parse of a
// PullResponse as it arrives in pieces (which must agree with protobuf's own
// parse of the same bytes).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/slice_buffers.h"
#include "common/wire.h"
#include "google/protobuf/stubs/logging.h"
#include "proto/ps/v1/ps.pb.h"

namespace {
// Protobuf logs each malformed string field it parses; the fuzzer makes
// millions.
[[maybe_unused]] const bool kQuiet =
    (google::protobuf::SetLogHandler(nullptr), true);
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const auto dtype = static_cast<ps::v1::DType>(data[0] % 4);  // 3: unknown
  const size_t cut = data[1];
  const std::string_view bytes(reinterpret_cast<const char*>(data + 2),
                               size - 2);

  // Values of every count around what the bytes hold.
  for (size_t n : {bytes.size() / 4, bytes.size() / 2, bytes.size() / 2 + 1}) {
    std::vector<float> out(n);
    bool finite = false;
    if (ps::DecodeValues(dtype, bytes, out, &finite).ok()) {
      if (finite != ps::AllFinite(out)) std::abort();
    }
    std::vector<float> again(n);
    ps::ScatteredBytes pieces;
    pieces.Append(bytes.substr(0, std::min(cut, bytes.size())));
    pieces.Append(bytes.substr(std::min(cut, bytes.size())));
    const bool one = ps::DecodeValues(dtype, bytes, out).ok();
    const bool scattered = ps::DecodeValues(dtype, pieces, again).ok();
    if (one != scattered) std::abort();
    if (one && n > 0 &&
        std::memcmp(out.data(), again.data(), n * sizeof(float)) != 0) {
      std::abort();
    }
  }
  if (dtype == ps::v1::BFLOAT16 || dtype == ps::v1::FLOAT16) {
    (void)ps::AllFiniteHalf(dtype, bytes.substr(0, bytes.size() & ~size_t{1}));
  }

  // The answer parse, split at `cut`, against protobuf's.
  const std::string_view parts[] = {
      bytes.substr(0, std::min(cut, bytes.size())),
      bytes.substr(std::min(cut, bytes.size()))};
  ps::ReceivedSlices received;
  const bool ours = ps::ReadPullResponse(std::span(parts), &received);
  ps::v1::PullResponse theirs;
  const bool protobuf =
      theirs.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
  if (ours != protobuf) std::abort();
  if (ours) {
    if (received.message.values_size() != theirs.values_size()) std::abort();
    for (int i = 0; i < theirs.values_size(); ++i) {
      if (received.data[i].ToString() != theirs.values(i).data()) {
        std::abort();
      }
    }
  }
  return 0;
}
