// A push on its way through a shard, in the order it goes: its request
// decoded and checked (PreparedPush), its blocks applied under their locks
// (the store), and its answer assembled once every block is done
// (PushCompletion). Also the checks every request's slices pass before any
// answer is built.
//
// Thread safety: a PreparedPush is used by one thread; PushCompletion as
// stated on it.
#ifndef PS_SERVER_PUSH_H_
#define PS_SERVER_PUSH_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "proto/ps/v1/ps.pb.h"
#include "server/dense_variable.h"
#include "server/rule_table.h"
#include "server/table.h"

namespace ps {

class PushCompletion;

// A push that passed every check. A float32 gradient is read in place from
// the request's bytes, and so (in async mode) is a 16-bit one, widened chunk
// by chunk during the update, so the request must outlive its application.
// In sync mode 16-bit gradients are widened into `decoded` at once.
struct PreparedPush {
  // One block's gradient.
  struct Gradient {
    std::shared_ptr<DenseVariable> variable;
    Block* block = nullptr;
    std::span<const float> gradient;  // the request's bytes, or `decoded`
    std::unique_ptr<float[]> decoded;
    // Set instead of `gradient`: 16-bit values in the request's bytes.
    std::string_view half;
    v1::DType half_dtype = v1::FLOAT32;
  };
  std::string worker_id;
  uint64_t epoch = 0;
  uint64_t seq = 0;
  uint64_t step = 0;
  std::optional<double> loss;
  std::vector<Gradient> gradients;
  // One table's rows (a RowSlice), decoded to float32 and checked: unique
  // ids of this shard, finite values.
  struct Rows {
    std::shared_ptr<SparseTable> table;
    std::vector<uint64_t> ids;
    // ids.size() x dim: the request's bytes when they are float32 (and
    // aligned for float), else `decoded` (ViewValues).
    std::span<const float> gradients;
    std::unique_ptr<float[]> decoded;
    // The request's data string, moved here (a heap-allocated string keeps
    // its bytes in place, so gradients read in place stay valid) for a
    // float32 PushPull to write its answer into (see ApplyRowsAsync).
    std::string buffer;
    // The ids whose rows a PushPull answers: `ids`, or none when the slice
    // is unanswered.
    std::span<const uint64_t> answered() const {
      return unanswered ? std::span<const uint64_t>() : ids;
    }
    bool unanswered = false;
    // What the push does to the table, as found under the push's locks
    // (VariableStore::CheckRowsAsync) for the booking under the same hold.
    SparseTable::Plan plan;
    // The update booked under the push's locks and run after them
    // (VariableStore::ApplyRowsAsync, RunRowsAsync), with the rule it was
    // checked and booked with (null for a part already applied), and where
    // the rows after it go: `after`, which is `buffer`'s bytes (in_buffer)
    // or `answer`.
    SparseTable::Update update;
    std::shared_ptr<const OptimizerEntry> rule;
    std::span<float> after;
    bool in_buffer = false;
    std::vector<float> answer;
  };
  std::vector<Rows> rows;
  // The store's roll-backs when it was admitted: a push admitted before a
  // roll-back is refused where it would apply after it.
  uint64_t rollbacks = 0;

  // Whether it asks for exactly-once (a worker id and a seq).
  bool exactly_once() const { return !worker_id.empty() && seq != 0; }
};

// Hands a PushPull's request bytes to its answer, so that the answer needs
// no fresh memory: each gradient slice's data to `completion`
// (ReuseBuffer), each RowSlice's data to its part of `push` (Rows::buffer).
// Gradients read in place stay valid: only heap-allocated strings are
// moved, and they keep their bytes where they are.
// REQUIRES: `push` was prepared from `request`, with answers.
void LendRequestBuffers(v1::PushRequest& request, PreparedPush& push,
                        PushCompletion& completion);

// The index of the first value that is NaN or infinite, if any.
std::optional<size_t> FirstNonFinite(std::span<const float> values);

// Points `view` at `values` values of `data`, encoded in `dtype`, as
// float32: in place when they are float32 (exactly that many, aligned for
// float), else decoded into `decoded`. `all_finite` tells whether every
// one is finite. The decode's error when the bytes do not hold them.
absl::Status ViewValues(v1::DType dtype, const std::string& data, size_t values,
                        std::unique_ptr<float[]>& decoded,
                        std::span<const float>& view, bool& all_finite);

// Points part.gradient at the slice's values: in place when they are
// float32 and aligned for float, else widened into part.decoded; or, with
// `widen_later`, points part.half at 16-bit values for the update to widen
// chunk by chunk. INVALID_ARGUMENT, naming the value, when the data do not
// hold the slice's values or one is not finite.
// REQUIRES: slice.length() was checked against the block.
absl::Status ViewGradient(const v1::Slice& slice, bool widen_later,
                          PreparedPush::Gradient& part);

// Decodes a slice's values into `out`, checking each is finite (initial
// values); INVALID_ARGUMENT naming `what` and the value otherwise.
absl::Status DecodeFinite(const v1::Slice& slice, absl::string_view what,
                          std::vector<float>& out);

// The bytes a slice of `length` values of `name` takes in an answer in
// `dtype`, an upper bound.
uint64_t AnswerBytes(const std::string& name, uint64_t length, v1::DType dtype);
// RESOURCE_EXHAUSTED, before any answer is built, when one of `bytes` for
// `slices` slices would exceed `limit` (0 = none).
absl::Status CheckAnswerSize(uint64_t bytes, int slices, uint64_t limit);
// INVALID_ARGUMENT when two of the slices name a value in common.
absl::Status CheckDisjoint(
    const google::protobuf::RepeatedPtrField<v1::Slice>& slices,
    absl::string_view what);

// Collects a push's answer part by part and reports once, when every part
// has been applied (or when one failed). The answer holds one slice per
// part, in request order, with the values after the push. Parts record
// their values (encoded, under the part's lock) and where they came from;
// the answer's messages are built at the end, with no lock held.
//
// Thread safety: Fill and PartDone may be called from any thread, for
// different parts concurrently.
class PushCompletion {
 public:
  using DoneCallback =
      absl::AnyInvocable<void(absl::Status, v1::PullResponse answer)>;

  // `with_values`: fill the answer (PushPull); otherwise it stays empty.
  PushCompletion(size_t parts, bool with_values, v1::DType dtype,
                 DoneCallback on_done);

  // Records part `part`: `values` (encoded now) of `name` from flat index
  // `offset`, at `version`.
  // REQUIRES: the lock guarding `values` is held.
  void Fill(size_t part, const std::string& name, uint64_t offset,
            std::span<const float> values, uint64_t version);

  // The encoding of the answer's values.
  v1::DType dtype() const { return dtype_; }
  // Whether the answer carries values (PushPull): else Fill and FillRows
  // record nothing, and there is nothing to read for them.
  bool with_values() const { return with_values_; }

  // Where the update of part `part` can write the answer as it goes (see
  // optimizer::UpdatedValuesSink): the buffer handed over by ReuseBuffer,
  // when it holds exactly `values` values in the answer's dtype; else null.
  // The caller then calls FillWritten instead of Fill.
  char* WritableAnswer(size_t part, size_t values);

  // Fill for a part whose values the update wrote into WritableAnswer(part).
  void FillWritten(size_t part, const std::string& name, uint64_t offset,
                   uint64_t length, uint64_t version);

  // Hands part `part` of the answer a buffer to encode into, so that the
  // answer needs no fresh memory: PushPull gives the request's gradient
  // bytes, which Fill(part) overwrites only once that part's gradient has
  // been applied. A heap-allocated string keeps its bytes where they are when
  // moved, so a gradient read in place stays valid.
  // REQUIRES: called before any Fill or PartDone.
  void ReuseBuffer(size_t part, std::string buffer);

  // Adds `row_parts` parts for a push's tables (RowSlices), answered in
  // request order after the dense slices.
  // REQUIRES: called before any Fill, FillRows or PartDone.
  void ExpectRows(size_t row_parts);

  // Records row part `part`'s answer: `rows` (dim values each) of `ids`.
  void FillRows(size_t part, const std::string& table,
                std::span<const uint64_t> ids, std::span<const float> rows);
  // The same with the rows already encoded in the answer's dtype.
  void FillEncodedRows(size_t part, const std::string& table,
                       std::span<const uint64_t> ids, std::string data);

  // Marks a part done (or failed). The last call runs on_done; call it with
  // no block lock held.
  void PartDone(absl::Status status = absl::OkStatus());

 private:
  // Where one part's answer came from; its data are in data_.
  struct Header {
    std::string name;
    uint64_t offset = 0;
    uint64_t length = 0;
    uint64_t version = 0;
  };

  const bool with_values_;
  const v1::DType dtype_;
  std::atomic<size_t> remaining_;
  absl::Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  // Written by distinct threads, each its own part.
  std::vector<Header> headers_;
  std::vector<std::string> data_;
  std::vector<v1::RowSlice> rows_;
  DoneCallback on_done_;
};

}  // namespace ps

#endif  // PS_SERVER_PUSH_H_
