// A C++ worker for the cross-language test (test_cross_language.py): one
// ps::Client verb per run, with the values it sees printed on stdout.
//
// Usage: cross_language_worker SERVERS COMMAND NAME SHAPE [ARGS]
//   SERVERS  host:port,host:port,...
//   SHAPE    dimensions joined by 'x', e.g. 4x5
//   create NAME SHAPE START STEP [ON_EXISTS]
//                                  create with values START + STEP * k
//                                  (ON_EXISTS: 0 error, 1 reuse, 2 reset);
//                                  prints "created" or "existed"
//   pull NAME SHAPE                prints every value
//   pushpull NAME SHAPE GRAD       pushes GRAD for every value, prints the
//                                  values after the update
// Values are printed on one line, separated by spaces, with full precision.
// Exits 1 with the client's error on stderr when a call fails.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "client/client.h"

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "cross_language_worker: %s\n", message.c_str());
  return 1;
}

void PrintValues(const std::vector<float>& values) {
  for (size_t i = 0; i < values.size(); ++i) {
    std::printf(i == 0 ? "%.9g" : " %.9g", values[i]);
  }
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) return Fail("usage: SERVERS COMMAND NAME SHAPE [ARGS]");
  const std::string command = argv[2];
  const std::string name = argv[3];
  std::vector<uint64_t> shape;
  uint64_t size = 1;
  for (absl::string_view dim : absl::StrSplit(argv[4], 'x')) {
    uint64_t d = 0;
    if (!absl::SimpleAtoi(dim, &d)) return Fail("bad shape");
    shape.push_back(d);
    size *= d;
  }
  std::vector<double> numbers;
  for (int i = 5; i < argc; ++i) {
    double x = 0;
    if (!absl::SimpleAtod(argv[i], &x)) return Fail("bad number");
    numbers.push_back(x);
  }

  ps::ClientOptions options;
  options.addresses = absl::StrSplit(argv[1], ',');
  absl::StatusOr<std::unique_ptr<ps::Client>> client =
      ps::Client::Connect(options);
  if (!client.ok()) return Fail(client.status().ToString());

  std::vector<float> values(size);
  if (command == "create" && (numbers.size() == 2 || numbers.size() == 3)) {
    for (uint64_t k = 0; k < size; ++k) {
      values[k] = static_cast<float>(numbers[0] + numbers[1] * k);
    }
    const auto on_exists = static_cast<ps::v1::OnExists>(
        numbers.size() == 3 ? static_cast<int>(numbers[2]) : 0);
    absl::StatusOr<bool> created =
        (*client)->CreateVariable(name, shape, values, std::nullopt, on_exists);
    if (!created.ok()) return Fail(created.status().ToString());
    std::printf("%s\n", *created ? "created" : "existed");
  } else if (command == "pull" && numbers.empty()) {
    absl::Status status = (*client)->Pull(name, values);
    if (!status.ok()) return Fail(status.ToString());
    PrintValues(values);
  } else if (command == "pushpull" && numbers.size() == 1) {
    std::vector<float> gradient(size, static_cast<float>(numbers[0]));
    absl::Status status = (*client)->PushPull(name, gradient, values);
    if (!status.ok()) return Fail(status.ToString());
    PrintValues(values);
  } else {
    return Fail("unknown command or wrong arguments: " + command);
  }
  return 0;
}
