// psclient._core: ps::Client for Python. A thin layer that converts types;
// the friendly API is plain Python on top (psclient/client.py).
//
// - Every call that talks to the shards releases the GIL for its whole run.
// - Gradients and outputs are float32, C-contiguous buffers (numpy arrays;
//   psclient hands torch tensors over as numpy views), read and written in
//   place: no copy on this side.
// - A refusal raises StatusError(code, message), code being the gRPC (and
//   absl) status code number.
// - Async calls return a Pending, which holds the buffers of the call until
//   it has ended (its destructor waits for that), so a dropped handle never
//   leaves the client writing into freed memory.
//
// A new verb of ps::Client is one more method below, in the same pattern.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "common/partition.h"

namespace py = pybind11;

namespace ps {
namespace {

// A non-OK absl::Status on its way to Python (see the translator below).
struct StatusException {
  absl::Status status;
};

[[noreturn]] void Throw(absl::Status status) {
  throw StatusException{std::move(status)};
}

void ThrowIfError(absl::Status status) {
  if (!status.ok()) Throw(std::move(status));
}

// The float32 buffer behind `object`, checked: format, item size and
// C-contiguity. TypeError or ValueError (via pybind11) naming `what`.
py::buffer_info FloatBuffer(const py::handle& object, bool writable,
                            const std::string& what) {
  if (!PyObject_CheckBuffer(object.ptr())) {
    throw py::type_error(what + ": expected a float32 numpy array, got " +
                         std::string(py::str(py::type::of(object))));
  }
  py::buffer_info info = py::reinterpret_borrow<py::buffer>(object).request();
  if (info.format != py::format_descriptor<float>::format() ||
      info.itemsize != sizeof(float)) {
    throw py::type_error(what + ": expected float32 values, got format '" +
                         info.format + "'");
  }
  if (writable && info.readonly) {
    throw py::value_error(what + ": the array is read-only");
  }
  py::ssize_t expected = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] > 1 && info.strides[d] != expected) {
      throw py::value_error(what +
                            ": the array is not C-contiguous; pass "
                            "numpy.ascontiguousarray(...)");
    }
    expected *= info.shape[d];
  }
  return info;
}

// The uint64 buffer for block versions (may be None: not wanted).
py::buffer_info VersionBuffer(const py::handle& object,
                              const std::string& what) {
  py::buffer_info info = py::reinterpret_borrow<py::buffer>(object).request();
  if (info.itemsize != sizeof(uint64_t) || info.ndim != 1 ||
      (info.shape[0] > 1 && info.strides[0] != sizeof(uint64_t)) ||
      info.readonly ||
      (info.format != py::format_descriptor<uint64_t>::format() &&
       info.format != py::format_descriptor<int64_t>::format() &&
       info.format != "L" && info.format != "l")) {
    throw py::type_error(what +
                         ": versions must be a writable, contiguous "
                         "one-dimensional int64 or uint64 array");
  }
  return info;
}

std::span<const float> ConstSpan(const py::buffer_info& info) {
  return {static_cast<const float*>(info.ptr), static_cast<size_t>(info.size)};
}

std::span<float> Span(const py::buffer_info& info) {
  return {static_cast<float*>(info.ptr), static_cast<size_t>(info.size)};
}

std::span<uint64_t> VersionSpan(const std::optional<py::buffer_info>& info) {
  if (!info.has_value()) return {};
  return {static_cast<uint64_t*>(info->ptr), static_cast<size_t>(info->size)};
}

// A one-dimensional, contiguous array of 64-bit ids (uint64 or int64, as
// torch's indices are), read in place.
py::buffer_info IdBuffer(const py::handle& object, const std::string& what) {
  if (!PyObject_CheckBuffer(object.ptr())) {
    throw py::type_error(what + ": expected a uint64 or int64 array, got " +
                         std::string(py::str(py::type::of(object))));
  }
  py::buffer_info info = py::reinterpret_borrow<py::buffer>(object).request();
  if (info.itemsize != sizeof(uint64_t) || info.ndim != 1 ||
      (info.shape[0] > 1 && info.strides[0] != sizeof(uint64_t)) ||
      (info.format != py::format_descriptor<uint64_t>::format() &&
       info.format != py::format_descriptor<int64_t>::format() &&
       info.format != "L" && info.format != "l")) {
    throw py::type_error(what +
                         ": ids must be a contiguous one-dimensional int64 "
                         "or uint64 array");
  }
  return info;
}

std::span<const uint64_t> IdSpan(const py::buffer_info& info) {
  return {static_cast<const uint64_t*>(info.ptr),
          static_cast<size_t>(info.size)};
}

v1::DType ToDType(int dtype) {
  if (!v1::DType_IsValid(dtype)) {
    throw py::value_error("unknown dtype " + std::to_string(dtype));
  }
  return static_cast<v1::DType>(dtype);
}

PushOptions MakePushOptions(std::optional<uint64_t> step,
                            std::optional<double> loss, int dtype,
                            int pull_dtype) {
  PushOptions options;
  options.step = step;
  options.loss = loss;
  options.dtype = ToDType(dtype);
  options.pull_dtype = ToDType(pull_dtype);
  return options;
}

// The outcome of an async call, set once by its callback (on a gRPC thread,
// without the GIL).
class CallState {
 public:
  void Finish(absl::Status status) {
    absl::MutexLock lock(&mu_);
    status_ = std::move(status);
    done_ = true;
  }
  bool done() {
    absl::MutexLock lock(&mu_);
    return done_;
  }
  // Waits up to `timeout` (forever when nullopt); the status once done.
  std::optional<absl::Status> Wait(std::optional<absl::Duration> timeout) {
    absl::MutexLock lock(&mu_);
    const absl::Condition is_done(&done_);
    if (timeout.has_value()) {
      if (!mu_.AwaitWithTimeout(is_done, *timeout)) return std::nullopt;
    } else {
      mu_.Await(is_done);
    }
    return status_;
  }

 private:
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

// What Python holds of an async call: its state and its buffers.
class Pending {
 public:
  Pending(std::shared_ptr<CallState> state, py::object keep)
      : state_(std::move(state)), keep_(std::move(keep)) {}
  Pending(const Pending&) = delete;
  Pending& operator=(const Pending&) = delete;
  ~Pending() {
    py::gil_scoped_release release;
    state_->Wait(std::nullopt);
  }

  bool done() { return state_->done(); }

  // True when the call has ended (raising its error if it failed), false
  // when `timeout` seconds passed first. None: wait as long as it takes.
  bool Wait(std::optional<double> timeout) {
    std::optional<absl::Status> status;
    {
      py::gil_scoped_release release;
      std::optional<absl::Duration> wait;
      if (timeout.has_value()) wait = absl::Seconds(std::max(0.0, *timeout));
      status = state_->Wait(wait);
    }
    if (!status.has_value()) return false;
    ThrowIfError(*status);
    return true;
  }

 private:
  std::shared_ptr<CallState> state_;
  py::object keep_;
};

// The arguments of one multi-variable call, converted, with the buffers
// that back its spans.
struct Batch {
  std::vector<std::string> names;
  std::vector<py::buffer_info> gradients;
  std::vector<py::buffer_info> outputs;
  std::vector<std::optional<py::buffer_info>> versions;

  std::vector<NamedGradient> Gradients() const {
    std::vector<NamedGradient> out;
    for (size_t i = 0; i < names.size(); ++i) {
      out.push_back({names[i], ConstSpan(gradients[i])});
    }
    return out;
  }
  std::vector<NamedValues> Values() const {
    std::vector<NamedValues> out;
    for (size_t i = 0; i < names.size(); ++i) {
      out.push_back({names[i], Span(outputs[i]), VersionSpan(versions[i])});
    }
    return out;
  }
  std::vector<NamedUpdate> Updates() const {
    std::vector<NamedUpdate> out;
    for (size_t i = 0; i < names.size(); ++i) {
      out.push_back({names[i], ConstSpan(gradients[i]), Span(outputs[i]),
                     VersionSpan(versions[i])});
    }
    return out;
  }
};

// Converts the lists of a call (each empty or as long as `names`).
Batch MakeBatch(std::vector<std::string> names, const py::list& gradients,
                const py::list& outputs, const py::object& versions) {
  Batch batch;
  const size_t n = names.size();
  auto check_length = [n](size_t got, const char* what) {
    if (got != 0 && got != n) {
      throw py::value_error(std::string(what) + " holds " +
                            std::to_string(got) + " entries for " +
                            std::to_string(n) + " names");
    }
  };
  check_length(gradients.size(), "gradients");
  check_length(outputs.size(), "outputs");
  for (size_t i = 0; i < gradients.size(); ++i) {
    batch.gradients.push_back(
        FloatBuffer(gradients[i], false, "gradient of '" + names[i] + "'"));
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    batch.outputs.push_back(
        FloatBuffer(outputs[i], true, "output of '" + names[i] + "'"));
  }
  batch.versions.resize(n);
  if (!versions.is_none()) {
    py::list list = versions;
    check_length(list.size(), "versions");
    for (size_t i = 0; i < list.size(); ++i) {
      if (!list[i].is_none()) {
        batch.versions[i] =
            VersionBuffer(list[i], "versions of '" + names[i] + "'");
      }
    }
  }
  batch.names = std::move(names);
  return batch;
}

// The table rows of a combined call, converted: per table its ids, row
// gradients and (for a PushPull) the array the rows after it go into.
struct RowBatch {
  std::vector<std::string> tables;
  std::vector<py::buffer_info> ids;
  std::vector<py::buffer_info> grads;
  std::vector<py::buffer_info> outputs;

  std::vector<RowGradients> Rows() const {
    std::vector<RowGradients> out;
    for (size_t i = 0; i < tables.size(); ++i) {
      out.push_back({tables[i], IdSpan(ids[i]), ConstSpan(grads[i]),
                     outputs.empty() ? std::span<float>() : Span(outputs[i])});
    }
    return out;
  }
};

// Converts the row lists of a call: `ids` and `grads` as long as `tables`,
// `outputs` empty (a push) or as long too.
RowBatch MakeRowBatch(std::vector<std::string> tables, const py::list& ids,
                      const py::list& grads, const py::list& outputs) {
  const size_t n = tables.size();
  if (ids.size() != n || grads.size() != n ||
      (outputs.size() != 0 && outputs.size() != n)) {
    throw py::value_error("row lists hold " + std::to_string(ids.size()) +
                          " ids, " + std::to_string(grads.size()) +
                          " gradients and " + std::to_string(outputs.size()) +
                          " outputs for " + std::to_string(n) + " tables");
  }
  RowBatch batch;
  for (size_t i = 0; i < n; ++i) {
    batch.ids.push_back(IdBuffer(ids[i], "ids of '" + tables[i] + "'"));
    batch.grads.push_back(
        FloatBuffer(grads[i], false, "row gradients of '" + tables[i] + "'"));
    if (outputs.size() != 0) {
      batch.outputs.push_back(
          FloatBuffer(outputs[i], true, "rows of '" + tables[i] + "'"));
    }
  }
  batch.tables = std::move(tables);
  return batch;
}

// The Python-side owner of a ps::Client. close() (or the destructor) waits
// for every call in flight.
class PyClient {
 public:
  explicit PyClient(std::unique_ptr<Client> client)
      : client_(std::move(client)) {}

  // The client; calls hold it while they run, so close() from another
  // thread never frees it under them.
  std::shared_ptr<Client> get() {
    if (client_ == nullptr) throw py::value_error("the client is closed");
    return client_;
  }

  void Close() {
    std::shared_ptr<Client> client = std::move(client_);
    py::gil_scoped_release release;
    client.reset();
  }

  bool CreateVariable(const std::string& name,
                      const std::vector<uint64_t>& shape,
                      const py::object& initial, const py::object& optimizer,
                      int on_exists) {
    if (!v1::OnExists_IsValid(on_exists)) {
      throw py::value_error(
          "on_exists must be 0 (error), 1 (reuse) or 2 "
          "(reset)");
    }
    std::optional<py::buffer_info> values;
    if (!initial.is_none()) {
      values = FloatBuffer(initial, false, "initial values of '" + name + "'");
    }
    std::optional<v1::OptimizerConfig> config;
    if (!optimizer.is_none()) {
      config.emplace();
      if (!config->ParseFromString(py::bytes(optimizer))) {
        throw py::value_error("optimizer is not a serialized OptimizerConfig");
      }
    }
    std::shared_ptr<Client> client = get();
    absl::StatusOr<bool> created;
    {
      py::gil_scoped_release release;
      created = client->CreateVariable(
          name, shape,
          values.has_value() ? ConstSpan(*values) : std::span<const float>(),
          config, static_cast<v1::OnExists>(on_exists));
    }
    if (!created.ok()) Throw(created.status());
    return *created;
  }

  void DeleteVariable(const std::string& name) {
    std::shared_ptr<Client> client = get();
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = client->DeleteVariable(name);
    }
    if (!status.ok()) Throw(status);
  }

  // ---- a variable's optimizer state: (values, {slot: values}, [block
  // tuples (offset, length, step, held, eve_d, eve_f_hat, eve_started)],
  // serialized OptimizerConfig); values as float32 bytes.
  py::tuple ReadState(const std::string& name) {
    std::shared_ptr<Client> client = get();
    absl::StatusOr<VariableState> state;
    {
      py::gil_scoped_release release;
      state = client->ReadState(name);
    }
    if (!state.ok()) Throw(state.status());
    // Float32 bytes, which psclient wraps in numpy arrays.
    auto to_array = [](const std::vector<float>& values) {
      return py::bytes(reinterpret_cast<const char*>(values.data()),
                       values.size() * sizeof(float));
    };
    py::dict slots;
    for (const auto& [slot, values] : state->slots) {
      slots[py::str(slot)] = to_array(values);
    }
    py::list blocks;
    for (const VariableState::Block& block : state->blocks) {
      blocks.append(py::make_tuple(block.offset, block.length, block.step,
                                   block.held, block.eve_d, block.eve_f_hat,
                                   block.eve_started));
    }
    return py::make_tuple(to_array(state->values), slots, blocks,
                          py::bytes(state->optimizer.SerializeAsString()));
  }

  void WriteState(const std::string& name, const py::handle& values,
                  const py::dict& slots, const py::list& blocks) {
    std::shared_ptr<Client> client = get();
    VariableState state;
    auto from_array = [](const py::handle& array, const std::string& what) {
      py::buffer_info info = FloatBuffer(array, false, what);
      std::span<const float> span = ConstSpan(info);
      return std::vector<float>(span.begin(), span.end());
    };
    state.values = from_array(values, "values");
    for (const auto& [slot, array] : slots) {
      const std::string slot_name = py::str(slot);
      state.slots[slot_name] = from_array(array, "slot " + slot_name);
    }
    for (const py::handle& item : blocks) {
      auto block = item.cast<std::tuple<uint64_t, uint64_t, uint64_t, uint32_t,
                                        double, double, bool>>();
      state.blocks.push_back({std::get<0>(block), std::get<1>(block),
                              std::get<2>(block), std::get<3>(block),
                              std::get<4>(block), std::get<5>(block),
                              std::get<6>(block)});
    }
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = client->WriteState(name, state);
    }
    if (!status.ok()) Throw(status);
  }

  // ---- sparse tables; init, policy and optimizer are serialized
  // RowInit, TablePolicy and OptimizerConfig messages (or None).
  bool CreateTable(const std::string& name, uint32_t dim,
                   const py::object& init, const py::object& policy,
                   const py::object& optimizer, int on_exists) {
    if (!v1::OnExists_IsValid(on_exists)) {
      throw py::value_error(
          "on_exists must be 0 (error), 1 (reuse) or 2 "
          "(reset)");
    }
    TableOptions options;
    options.on_exists = static_cast<v1::OnExists>(on_exists);
    auto parse = [](const py::object& bytes, google::protobuf::Message& out,
                    const char* what) {
      if (bytes.is_none()) return;
      if (!out.ParseFromString(py::bytes(bytes))) {
        throw py::value_error(std::string(what) + " is not a serialized " +
                              out.GetTypeName());
      }
    };
    parse(init, options.init, "init");
    parse(policy, options.policy, "policy");
    if (!optimizer.is_none()) {
      options.optimizer.emplace();
      parse(optimizer, *options.optimizer, "optimizer");
    }
    std::shared_ptr<Client> client = get();
    absl::StatusOr<bool> created;
    {
      py::gil_scoped_release release;
      created = client->CreateTable(name, dim, options);
    }
    if (!created.ok()) Throw(created.status());
    return *created;
  }

  void PullRows(const std::string& table, const py::object& ids,
                const py::object& out, int dtype) {
    const py::buffer_info id_info = IdBuffer(ids, "ids of '" + table + "'");
    const py::buffer_info out_info =
        FloatBuffer(out, true, "rows of '" + table + "'");
    PullOptions options;
    options.dtype = ToDType(dtype);
    std::shared_ptr<Client> client = get();
    absl::Status status;
    {
      py::gil_scoped_release release;
      status =
          client->PullRows(table, IdSpan(id_info), Span(out_info), options);
    }
    ThrowIfError(std::move(status));
  }

  void Push(std::vector<std::string> names, const py::list& gradients,
            std::optional<uint64_t> step, std::optional<double> loss,
            int dtype) {
    Batch batch =
        MakeBatch(std::move(names), gradients, py::list(), py::none());
    const PushOptions options = MakePushOptions(step, loss, dtype, 0);
    const std::vector<NamedGradient> items = batch.Gradients();
    std::shared_ptr<Client> client = get();
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = client->Push(items, options);
    }
    ThrowIfError(std::move(status));
  }

  void Pull(std::vector<std::string> names, const py::list& outputs,
            const py::object& versions, int dtype) {
    Batch batch = MakeBatch(std::move(names), py::list(), outputs, versions);
    PullOptions options;
    options.dtype = ToDType(dtype);
    const std::vector<NamedValues> items = batch.Values();
    std::shared_ptr<Client> client = get();
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = client->Pull(items, options);
    }
    ThrowIfError(std::move(status));
  }

  void PushPull(std::vector<std::string> names, const py::list& gradients,
                const py::list& outputs, const py::object& versions,
                std::optional<uint64_t> step, std::optional<double> loss,
                int dtype, int pull_dtype) {
    Batch batch = MakeBatch(std::move(names), gradients, outputs, versions);
    const PushOptions options = MakePushOptions(step, loss, dtype, pull_dtype);
    const std::vector<NamedUpdate> items = batch.Updates();
    std::shared_ptr<Client> client = get();
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = client->PushPull(items, options);
    }
    ThrowIfError(std::move(status));
  }

  // Dense variables and table rows in one request per shard. A push when
  // both `outputs` and `row_outputs` are empty; else a PushPull that writes
  // the values and the rows after the update into them.
  void PushMixed(std::vector<std::string> names, const py::list& gradients,
                 const py::list& outputs, std::vector<std::string> tables,
                 const py::list& ids, const py::list& grads,
                 const py::list& row_outputs, std::optional<uint64_t> step,
                 std::optional<double> loss, int dtype, int pull_dtype) {
    Batch batch = MakeBatch(std::move(names), gradients, outputs, py::none());
    RowBatch rows = MakeRowBatch(std::move(tables), ids, grads, row_outputs);
    const bool pull = outputs.size() != 0 || row_outputs.size() != 0;
    const PushOptions options = MakePushOptions(step, loss, dtype, pull_dtype);
    const std::vector<RowGradients> row_items = rows.Rows();
    std::shared_ptr<Client> client = get();
    absl::Status status;
    if (pull) {
      const std::vector<NamedUpdate> items = batch.Updates();
      py::gil_scoped_release release;
      status = client->PushPull(items, row_items, options);
    } else {
      const std::vector<NamedGradient> items = batch.Gradients();
      py::gil_scoped_release release;
      status = client->Push(items, row_items, options);
    }
    ThrowIfError(std::move(status));
  }

  std::unique_ptr<Pending> PushMixedAsync(
      std::vector<std::string> names, const py::list& gradients,
      const py::list& outputs, std::vector<std::string> tables,
      const py::list& ids, const py::list& grads, const py::list& row_outputs,
      std::optional<uint64_t> step, std::optional<double> loss, int dtype,
      int pull_dtype) {
    Batch batch = MakeBatch(std::move(names), gradients, outputs, py::none());
    RowBatch rows = MakeRowBatch(std::move(tables), ids, grads, row_outputs);
    const bool pull = outputs.size() != 0 || row_outputs.size() != 0;
    const PushOptions options = MakePushOptions(step, loss, dtype, pull_dtype);
    const std::vector<RowGradients> row_items = rows.Rows();
    py::object keep =
        py::make_tuple(gradients, outputs, ids, grads, row_outputs);
    if (pull) {
      const std::vector<NamedUpdate> items = batch.Updates();
      return Start(keep, [&](Client& client, Client::DoneCallback done) {
        client.PushPullAsync(items, row_items, options, std::move(done));
      });
    }
    const std::vector<NamedGradient> items = batch.Gradients();
    return Start(keep, [&](Client& client, Client::DoneCallback done) {
      client.PushAsync(items, row_items, options, std::move(done));
    });
  }

  std::unique_ptr<Pending> PushAsync(std::vector<std::string> names,
                                     const py::list& gradients,
                                     std::optional<uint64_t> step,
                                     std::optional<double> loss, int dtype) {
    Batch batch =
        MakeBatch(std::move(names), gradients, py::list(), py::none());
    const PushOptions options = MakePushOptions(step, loss, dtype, 0);
    const std::vector<NamedGradient> items = batch.Gradients();
    return Start(py::make_tuple(gradients),
                 [&](Client& client, Client::DoneCallback done) {
                   client.PushAsync(items, options, std::move(done));
                 });
  }

  std::unique_ptr<Pending> PullAsync(std::vector<std::string> names,
                                     const py::list& outputs,
                                     const py::object& versions, int dtype) {
    Batch batch = MakeBatch(std::move(names), py::list(), outputs, versions);
    PullOptions options;
    options.dtype = ToDType(dtype);
    const std::vector<NamedValues> items = batch.Values();
    return Start(py::make_tuple(outputs, versions),
                 [&](Client& client, Client::DoneCallback done) {
                   client.PullAsync(items, options, std::move(done));
                 });
  }

  std::unique_ptr<Pending> PushPullAsync(std::vector<std::string> names,
                                         const py::list& gradients,
                                         const py::list& outputs,
                                         const py::object& versions,
                                         std::optional<uint64_t> step,
                                         std::optional<double> loss, int dtype,
                                         int pull_dtype) {
    Batch batch = MakeBatch(std::move(names), gradients, outputs, versions);
    const PushOptions options = MakePushOptions(step, loss, dtype, pull_dtype);
    const std::vector<NamedUpdate> items = batch.Updates();
    return Start(py::make_tuple(gradients, outputs, versions),
                 [&](Client& client, Client::DoneCallback done) {
                   client.PushPullAsync(items, options, std::move(done));
                 });
  }

 private:
  // Starts an async call with a callback that completes a CallState; the
  // returned Pending keeps `keep` (the call's buffers) alive.
  template <typename StartFn>
  std::unique_ptr<Pending> Start(py::object keep, StartFn start) {
    std::shared_ptr<Client> client = get();
    auto state = std::make_shared<CallState>();
    {
      py::gil_scoped_release release;
      start(*client,
            [state](absl::Status status) { state->Finish(std::move(status)); });
    }
    return std::make_unique<Pending>(std::move(state), std::move(keep));
  }

  std::shared_ptr<Client> client_;
};

std::unique_ptr<PyClient> Connect(std::vector<std::string> addresses,
                                  std::string token, std::string tls_ca_file,
                                  std::string tls_server_name,
                                  std::string worker_id, double call_timeout,
                                  double retry_deadline, int max_attempts,
                                  double initial_backoff, double max_backoff,
                                  double backoff_multiplier, double jitter,
                                  size_t max_message_bytes, size_t part_bytes,
                                  int parts_in_flight, int channels_per_shard) {
  ClientOptions options;
  options.addresses = std::move(addresses);
  options.token = std::move(token);
  options.tls_ca_file = std::move(tls_ca_file);
  options.tls_server_name = std::move(tls_server_name);
  options.worker_id = std::move(worker_id);
  options.call_timeout = absl::Seconds(call_timeout);
  options.retry.deadline = absl::Seconds(retry_deadline);
  options.retry.max_attempts = max_attempts;
  options.retry.initial_backoff = absl::Seconds(initial_backoff);
  options.retry.max_backoff = absl::Seconds(max_backoff);
  options.retry.backoff_multiplier = backoff_multiplier;
  options.retry.jitter = jitter;
  options.max_message_bytes = max_message_bytes;
  options.part_bytes = part_bytes;
  options.parts_in_flight = parts_in_flight;
  options.channels_per_shard = channels_per_shard;
  absl::StatusOr<std::unique_ptr<Client>> client;
  {
    py::gil_scoped_release release;
    client = Client::Connect(options);
  }
  if (!client.ok()) Throw(client.status());
  return std::make_unique<PyClient>(*std::move(client));
}

PartitionPlan MakePlan(int64_t num_shards, int64_t block_size) {
  if (num_shards <= 0 || block_size <= 0 || num_shards > UINT32_MAX) {
    throw py::value_error("num_shards (" + std::to_string(num_shards) +
                          ") and block_size (" + std::to_string(block_size) +
                          ") must be positive");
  }
  return PartitionPlan(static_cast<uint32_t>(num_shards),
                       static_cast<uint64_t>(block_size));
}

}  // namespace
}  // namespace ps

PYBIND11_MODULE(_core, m) {
  using ps::Pending;
  using ps::PyClient;
  m.doc() = "ps::Client, the C++ client of the parameter server";

  static py::exception<ps::StatusException> status_error(m, "StatusError");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ps::StatusException& e) {
      py::object args = py::make_tuple(static_cast<int>(e.status.code()),
                                       std::string(e.status.message()));
      PyErr_SetObject(status_error.ptr(), args.ptr());
    }
  });

  m.def(
      "fnv1a64",
      [](const py::bytes& data) {
        return ps::Fnv1a64(static_cast<std::string_view>(data));
      },
      "64-bit FNV-1a of the bytes");

  py::class_<ps::PartitionPlan>(m, "PartitionPlan")
      .def(py::init(&ps::MakePlan), py::arg("num_shards"),
           py::arg("block_size"))
      .def_property_readonly("num_shards", &ps::PartitionPlan::num_shards)
      .def_property_readonly("block_size", &ps::PartitionPlan::block_size)
      .def("num_blocks", &ps::PartitionPlan::NumBlocks, py::arg("size"))
      .def(
          "shard_of",
          [](const ps::PartitionPlan& plan, const std::string& variable,
             uint64_t k) { return plan.ShardOf(variable, k); },
          py::arg("variable"), py::arg("k"));

  py::class_<Pending>(m, "Pending")
      .def("done", &Pending::done)
      .def("wait", &Pending::Wait, py::arg("timeout") = py::none());

  py::class_<PyClient>(m, "Client")
      .def_static("connect", &ps::Connect, py::arg("addresses"),
                  py::arg("token"), py::arg("tls_ca_file"),
                  py::arg("tls_server_name"), py::arg("worker_id"),
                  py::arg("call_timeout"), py::arg("retry_deadline"),
                  py::arg("max_attempts"), py::arg("initial_backoff"),
                  py::arg("max_backoff"), py::arg("backoff_multiplier"),
                  py::arg("jitter"), py::arg("max_message_bytes"),
                  py::arg("part_bytes"), py::arg("parts_in_flight"),
                  py::arg("channels_per_shard"))
      .def("close", &PyClient::Close)
      .def_property_readonly("worker_id",
                             [](PyClient& c) { return c.get()->worker_id(); })
      .def_property_readonly(
          "session_epoch", [](PyClient& c) { return c.get()->session_epoch(); })
      .def_property_readonly("sync_step",
                             [](PyClient& c) { return c.get()->sync_step(); })
      .def_property_readonly("rollbacks",
                             [](PyClient& c) { return c.get()->rollbacks(); })
      .def_property_readonly("resume_step",
                             [](PyClient& c) { return c.get()->resume_step(); })
      .def(
          "resume_after_rollback",
          [](PyClient& c, int code, const std::string& message,
             uint64_t epoch) {
            const absl::Status status(static_cast<absl::StatusCode>(code),
                                      message);
            std::shared_ptr<ps::Client> client = c.get();
            absl::StatusOr<bool> resumed;
            {
              py::gil_scoped_release release;
              resumed = client->ResumeAfterRollBack(status, epoch);
            }
            if (!resumed.ok()) ps::Throw(resumed.status());
            return *resumed;
          },
          py::arg("code"), py::arg("message"), py::arg("epoch"))
      .def_property_readonly(
          "addresses", [](PyClient& c) { return c.get()->shard_addresses(); })
      .def_property_readonly(
          "cluster_info",
          [](PyClient& c) {
            return py::bytes(c.get()->cluster_info().SerializeAsString());
          })
      .def("create_variable", &PyClient::CreateVariable, py::arg("name"),
           py::arg("shape"), py::arg("initial"), py::arg("optimizer"),
           py::arg("on_exists") = 0)
      .def("delete_variable", &PyClient::DeleteVariable, py::arg("name"))
      .def("read_state", &PyClient::ReadState, py::arg("name"))
      .def("write_state", &PyClient::WriteState, py::arg("name"),
           py::arg("values"), py::arg("slots"), py::arg("blocks"))
      .def("create_table", &PyClient::CreateTable, py::arg("name"),
           py::arg("dim"), py::arg("init") = py::none(),
           py::arg("policy") = py::none(), py::arg("optimizer") = py::none(),
           py::arg("on_exists") = 0)
      .def("pull_rows", &PyClient::PullRows, py::arg("table"), py::arg("ids"),
           py::arg("out"), py::arg("dtype") = 0)
      .def("push", &PyClient::Push, py::arg("names"), py::arg("gradients"),
           py::arg("step"), py::arg("loss"), py::arg("dtype"))
      .def("pull", &PyClient::Pull, py::arg("names"), py::arg("outputs"),
           py::arg("versions"), py::arg("dtype"))
      .def("push_pull", &PyClient::PushPull, py::arg("names"),
           py::arg("gradients"), py::arg("outputs"), py::arg("versions"),
           py::arg("step"), py::arg("loss"), py::arg("dtype"),
           py::arg("pull_dtype"))
      .def("push_mixed", &PyClient::PushMixed, py::arg("names"),
           py::arg("gradients"), py::arg("outputs"), py::arg("tables"),
           py::arg("ids"), py::arg("grads"), py::arg("row_outputs"),
           py::arg("step"), py::arg("loss"), py::arg("dtype"),
           py::arg("pull_dtype"))
      .def("push_mixed_async", &PyClient::PushMixedAsync, py::arg("names"),
           py::arg("gradients"), py::arg("outputs"), py::arg("tables"),
           py::arg("ids"), py::arg("grads"), py::arg("row_outputs"),
           py::arg("step"), py::arg("loss"), py::arg("dtype"),
           py::arg("pull_dtype"))
      .def("push_async", &PyClient::PushAsync, py::arg("names"),
           py::arg("gradients"), py::arg("step"), py::arg("loss"),
           py::arg("dtype"))
      .def("pull_async", &PyClient::PullAsync, py::arg("names"),
           py::arg("outputs"), py::arg("versions"), py::arg("dtype"))
      .def("push_pull_async", &PyClient::PushPullAsync, py::arg("names"),
           py::arg("gradients"), py::arg("outputs"), py::arg("versions"),
           py::arg("step"), py::arg("loss"), py::arg("dtype"),
           py::arg("pull_dtype"));
}
