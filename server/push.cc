#include "server/push.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/wire.h"

namespace ps {
namespace {

// The largest variable accepted, in values (about 1 TiB of float32).
constexpr uint64_t kMaxValues = uint64_t{1} << 38;

}  // namespace

std::optional<size_t> FirstNonFinite(std::span<const float> values) {
  if (AllFinite(values)) return std::nullopt;
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) return i;
  }
  return std::nullopt;
}

absl::Status ViewValues(v1::DType dtype, const std::string& data, size_t values,
                        std::unique_ptr<float[]>& decoded,
                        std::span<const float>& view, bool& all_finite) {
  if (dtype == v1::FLOAT32 && data.size() == values * sizeof(float) &&
      reinterpret_cast<uintptr_t>(data.data()) % alignof(float) == 0) {
    view = std::span<const float>(reinterpret_cast<const float*>(data.data()),
                                  values);
    all_finite = AllFinite(view);
    return absl::OkStatus();
  }
  decoded.reset(new float[values]);
  std::span<float> out(decoded.get(), values);
  view = out;
  all_finite = false;
  return DecodeValues(dtype, data, out, &all_finite);
}

absl::Status DecodeFinite(const v1::Slice& slice, absl::string_view what,
                          std::vector<float>& out) {
  out.resize(slice.length());
  if (absl::Status status = DecodeValues(slice.dtype(), slice.data(), out);
      !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " for '", slice.variable(), "' at offset ",
                     slice.offset(), ": ", status.message()));
  }
  if (auto bad = FirstNonFinite(out)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " for '", slice.variable(), "' holds ", out[*bad],
                     " at flat index ", slice.offset() + *bad,
                     "; every value must be finite"));
  }
  return absl::OkStatus();
}

void LendRequestBuffers(v1::PushRequest& request, PreparedPush& push,
                        PushCompletion& completion) {
  for (int i = 0; i < request.gradients_size(); ++i) {
    std::string* data = request.mutable_gradients(i)->mutable_data();
    // A short string lives inside the object, and a gradient read in place
    // would then point at moved-from storage.
    if (data->size() <= sizeof(std::string)) continue;
    completion.ReuseBuffer(static_cast<size_t>(i), std::move(*data));
  }
  // PreparePush keeps one part per RowSlice, in order.
  for (int j = 0; j < request.rows_size(); ++j) {
    std::string* data = request.mutable_rows(j)->mutable_data();
    if (data->size() <= sizeof(std::string)) continue;
    push.rows[static_cast<size_t>(j)].buffer = std::move(*data);
  }
}

absl::Status ViewGradient(const v1::Slice& slice, bool widen_later,
                          PreparedPush::Gradient& part) {
  const std::string& data = slice.data();
  const size_t length = slice.length();
  const bool half =
      slice.dtype() == v1::BFLOAT16 || slice.dtype() == v1::FLOAT16;
  if (widen_later && half && data.size() == length * 2 &&
      AllFiniteHalf(slice.dtype(), data)) {
    part.half = data;
    part.half_dtype = slice.dtype();
    return absl::OkStatus();
  }
  // Anything wrong is found, and described, on the widening path.
  bool all_finite = false;
  if (absl::Status status = ViewValues(slice.dtype(), data, length,
                                       part.decoded, part.gradient, all_finite);
      !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("gradient for '", slice.variable(), "' at offset ",
                     slice.offset(), ": ", status.message()));
  }
  if (all_finite) return absl::OkStatus();
  if (auto bad = FirstNonFinite(part.gradient)) {
    return absl::InvalidArgumentError(
        absl::StrCat("gradient for '", slice.variable(), "' holds ",
                     part.gradient[*bad], " at flat index ",
                     slice.offset() + *bad, "; every value must be finite"));
  }
  return absl::OkStatus();
}

uint64_t AnswerBytes(const std::string& name, uint64_t length,
                     v1::DType dtype) {
  // A slice's fields besides its data: tags, lengths, offset, length,
  // dtype and version take at most 40 bytes.
  constexpr uint64_t kSliceOverhead = 40;
  const uint64_t width = v1::DType_IsValid(dtype) ? BytesPerValue(dtype) : 4;
  return name.size() + kSliceOverhead + std::min(length, kMaxValues) * width;
}

absl::Status CheckAnswerSize(uint64_t bytes, int slices, uint64_t limit) {
  if (limit == 0 || bytes <= limit) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the answer to these ", slices, " slices would hold ", bytes,
      " bytes, more than the largest message of ", limit,
      " bytes (ps_server --max_message_mb); ask for fewer values per call"));
}

absl::Status CheckDisjoint(
    const google::protobuf::RepeatedPtrField<v1::Slice>& slices,
    absl::string_view what) {
  // Ranges of one variable, sorted; neighbours must not meet.
  std::vector<std::tuple<absl::string_view, uint64_t, uint64_t>> ranges;
  ranges.reserve(slices.size());
  for (const v1::Slice& slice : slices) {
    ranges.emplace_back(slice.variable(), slice.offset(),
                        slice.offset() + slice.length());
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    const auto& [name, begin, end] = ranges[i];
    const auto& [previous, previous_begin, previous_end] = ranges[i - 1];
    if (name == previous && begin < previous_end) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the ", what, " names values [", begin, ", ", end, ") of '",
          std::string(name), "' more than once (they overlap [", previous_begin,
          ", ", previous_end, ")); ask for each value once per call"));
    }
  }
  return absl::OkStatus();
}

PushCompletion::PushCompletion(size_t parts, bool with_values, v1::DType dtype,
                               DoneCallback on_done)
    : with_values_(with_values),
      dtype_(dtype),
      remaining_(parts + 1),
      on_done_(std::move(on_done)) {
  if (with_values_) {
    headers_.resize(parts);
    data_.resize(parts);
  }
}

void PushCompletion::Fill(size_t part, const std::string& name, uint64_t offset,
                          std::span<const float> values, uint64_t version) {
  if (!with_values_) return;
  FillWritten(part, name, offset, values.size(), version);
  EncodeValues(dtype_, values, &data_[part]);
}

char* PushCompletion::WritableAnswer(size_t part, size_t values) {
  if (!with_values_) return nullptr;
  std::string& data = data_[part];
  if (data.size() != values * BytesPerValue(dtype_)) return nullptr;
  return data.data();
}

void PushCompletion::FillWritten(size_t part, const std::string& name,
                                 uint64_t offset, uint64_t length,
                                 uint64_t version) {
  if (!with_values_) return;
  headers_[part] = Header{name, offset, length, version};
}

void PushCompletion::ReuseBuffer(size_t part, std::string buffer) {
  if (!with_values_) return;
  data_[part] = std::move(buffer);
}

void PushCompletion::ExpectRows(size_t row_parts) {
  remaining_.fetch_add(row_parts, std::memory_order_relaxed);
  if (with_values_) rows_.resize(row_parts);
}

void PushCompletion::FillRows(size_t part, const std::string& table,
                              std::span<const uint64_t> ids,
                              std::span<const float> rows) {
  if (!with_values_) return;
  v1::RowSlice& slice = rows_[part];
  slice.set_table(table);
  slice.mutable_ids()->Assign(ids.begin(), ids.end());
  slice.set_dtype(dtype_);
  EncodeValues(dtype_, rows, slice.mutable_data());
}

void PushCompletion::FillEncodedRows(size_t part, const std::string& table,
                                     std::span<const uint64_t> ids,
                                     std::string data) {
  if (!with_values_) return;
  v1::RowSlice& slice = rows_[part];
  slice.set_table(table);
  slice.mutable_ids()->Assign(ids.begin(), ids.end());
  slice.set_dtype(dtype_);
  *slice.mutable_data() = std::move(data);
}

void PushCompletion::PartDone(absl::Status status) {
  if (!status.ok()) {
    absl::MutexLock lock(&mu_);
    if (status_.ok()) status_ = std::move(status);
  }
  if (remaining_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  absl::Status final_status;
  {
    absl::MutexLock lock(&mu_);
    final_status = status_;
  }
  v1::PullResponse answer;
  if (final_status.ok() && with_values_) {
    answer.mutable_values()->Reserve(static_cast<int>(headers_.size()));
    for (size_t i = 0; i < headers_.size(); ++i) {
      v1::Slice* slice = answer.add_values();
      slice->set_variable(std::move(headers_[i].name));
      slice->set_offset(headers_[i].offset);
      slice->set_length(headers_[i].length);
      slice->set_dtype(dtype_);
      slice->set_version(headers_[i].version);
      *slice->mutable_data() = std::move(data_[i]);
    }
    for (v1::RowSlice& rows : rows_) *answer.add_rows() = std::move(rows);
  }
  on_done_(std::move(final_status), std::move(answer));
}

}  // namespace ps
