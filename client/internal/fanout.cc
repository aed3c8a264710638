#include "client/internal/fanout.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ps::client_internal {

Fanout::Fanout(ClientCore* core, size_t requests, Client::DoneCallback done)
    : core_(core), pending_(requests), done_(std::move(done)) {
  core_->CallStarted();
}

void Fanout::Finish(size_t shard, absl::Status status) {
  std::vector<std::pair<size_t, absl::Status>> errors;
  {
    absl::MutexLock lock(&mu_);
    if (!status.ok()) errors_.emplace(shard, std::move(status));
    if (--pending_ > 0) return;
    errors.assign(errors_.begin(), errors_.end());
  }
  // The last request has ended; nothing else touches this object.
  absl::Status result;
  if (!errors.empty()) {
    std::sort(errors.begin(), errors.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<std::string> lines;
    for (const auto& [s, error] : errors) {
      lines.push_back(absl::StrCat(core_->shards[s]->Name(), ": ",
                                   absl::StatusCodeToString(error.code()), ": ",
                                   error.message()));
    }
    result =
        absl::Status(errors.front().second.code(), absl::StrJoin(lines, "; "));
  }
  ClientCore* core = core_;
  done_(std::move(result));
  delete this;
  core->CallEnded();
}

std::pair<Client::DoneCallback, std::future<absl::Status>> MakePromise() {
  std::promise<absl::Status> promise;
  std::future<absl::Status> future = promise.get_future();
  return {[promise = std::move(promise)](absl::Status status) mutable {
            promise.set_value(std::move(status));
          },
          std::move(future)};
}

}  // namespace ps::client_internal
