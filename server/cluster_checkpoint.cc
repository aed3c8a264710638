#include "server/cluster_checkpoint.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace ps {
namespace {

// The status of a peer's call, naming the shard.
absl::Status PeerError(uint32_t shard, const char* what,
                       const grpc::Status& status) {
  return absl::Status(
      static_cast<absl::StatusCode>(status.error_code()),
      absl::StrCat("shard ", shard, " (", what, "): ", status.error_message()));
}

}  // namespace

Peers::Peers(uint32_t shard_index, PeerOptions options)
    : shard_index_(shard_index), options_(std::move(options)) {
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      grpc::InsecureChannelCredentials();
  if (!options_.tls_roots.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options_.tls_roots;
    credentials = grpc::SslCredentials(ssl);
  }
  for (size_t i = 0; i < options_.peers.size(); ++i) {
    if (i == shard_index_ || options_.peers[i].empty()) {
      stubs_.push_back(nullptr);
      continue;
    }
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    stubs_.push_back(v1::AdminService::NewStub(
        grpc::CreateCustomChannel(options_.peers[i], credentials, args)));
  }
}

v1::AdminService::Stub* Peers::admin(uint32_t i) const {
  return i < stubs_.size() ? stubs_[i].get() : nullptr;
}

std::unique_ptr<grpc::ClientContext> Peers::Context() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  if (!options_.admin_token.empty()) {
    context->AddMetadata("authorization",
                         absl::StrCat("Bearer ", options_.admin_token));
  }
  return context;
}

ClusterCheckpointer::ClusterCheckpointer(
    Checkpointer* local, Store* store, const Peers* peers, uint32_t shard_index,
    uint32_t num_shards, uint64_t block_size, absl::Duration hold)
    : local_(local),
      store_(store),
      peers_(peers),
      shard_index_(shard_index),
      num_shards_(num_shards),
      block_size_(block_size),
      hold_seconds_(absl::ToDoubleSeconds(hold)) {}

absl::StatusOr<v1::CheckpointResponse> ClusterCheckpointer::Make() {
  const absl::Time start = absl::Now();
  if (num_shards_ > 1 && peers_->size() != num_shards_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a checkpoint of ", num_shards_,
        " shards is made by shard 0, which needs every shard's address: "
        "start it with --peers=ADDRESS0,ADDRESS1,... (",
        num_shards_, " addresses, by shard index)"));
  }
  // The number: above every number any shard has used.
  PS_ASSIGN_OR_RETURN(v1::ListCheckpointsResponse own, local_->List());
  uint64_t highest = own.highest_number();
  for (uint32_t i = 0; i < num_shards_; ++i) {
    if (i == shard_index_) continue;
    v1::ListCheckpointsResponse listed;
    grpc::Status status = peers_->admin(i)->ListCheckpoints(
        peers_->Context().get(), v1::ListCheckpointsRequest(), &listed);
    if (!status.ok()) return PeerError(i, "listing checkpoints", status);
    highest = std::max(highest, listed.highest_number());
  }
  const uint64_t number = highest + 1;

  // Sync: one cut before the step K every shard is held at or below.
  std::optional<uint64_t> cut;
  if (sync()) {
    PS_ASSIGN_OR_RETURN(cut, HoldEveryShard());
  }

  // Every part at once, so that their cuts are close.
  std::vector<absl::StatusOr<v1::CheckpointPart>> parts(
      num_shards_, absl::UnknownError("not written"));
  std::vector<std::thread> threads;
  for (uint32_t i = 0; i < num_shards_; ++i) {
    if (i == shard_index_) continue;
    threads.emplace_back([this, i, number, cut, &parts] {
      v1::WriteCheckpointPartRequest request;
      request.set_number(number);
      if (cut.has_value()) {
        request.set_sync_cut(true);
        request.set_sync_step(*cut);
      }
      v1::CheckpointPart part;
      grpc::Status status = peers_->admin(i)->WriteCheckpointPart(
          peers_->Context().get(), request, &part);
      if (!status.ok()) {
        parts[i] = PeerError(i, "writing its part", status);
      } else if (part.number() != number || part.shard_index() != i ||
                 part.num_shards() != num_shards_) {
        parts[i] = absl::FailedPreconditionError(
            absl::StrCat("shard ", i, " answered part ", part.number(),
                         " as shard ", part.shard_index(), " of ",
                         part.num_shards(), "; is --peers in shard order?"));
      } else {
        parts[i] = std::move(part);
      }
    });
  }
  parts[shard_index_] = local_->WritePart(number, cut);
  for (std::thread& thread : threads) thread.join();
  if (cut.has_value()) {
    // A shard whose part failed before its cut still holds its steps.
    for (uint32_t i = 0; i < num_shards_; ++i) {
      if (!parts[i].ok()) {
        ReleaseEveryShard();
        break;
      }
    }
  }

  v1::CommitCheckpointRequest commit;
  commit.set_number(number);
  commit.set_block_size(block_size_);
  for (uint32_t i = 0; i < num_shards_; ++i) {
    if (!parts[i].ok()) {
      return absl::Status(
          parts[i].status().code(),
          absl::StrCat("checkpoint ", number,
                       " is incomplete: ", parts[i].status().message()));
    }
    *commit.add_parts() = *parts[i];
  }
  // The coordinator's manifest last: in a shared folder it is the one.
  for (uint32_t i = 0; i < num_shards_; ++i) {
    if (i == shard_index_) continue;
    v1::CommitCheckpointResponse committed;
    grpc::Status status = peers_->admin(i)->CommitCheckpoint(
        peers_->Context().get(), commit, &committed);
    if (!status.ok()) return PeerError(i, "recording the manifest", status);
  }
  PS_RETURN_IF_ERROR(local_->Commit(commit));

  v1::CheckpointResponse response;
  response.set_number(number);
  response.set_path(commit.parts(shard_index_).path());
  int64_t earliest = commit.parts(0).cut_unix_micros();
  int64_t latest = earliest;
  uint64_t bytes = 0;
  for (const v1::CheckpointPart& part : commit.parts()) {
    bytes += part.bytes();
    earliest = std::min(earliest, part.cut_unix_micros());
    latest = std::max(latest, part.cut_unix_micros());
  }
  response.set_bytes(bytes);
  *response.mutable_parts() = commit.parts();
  response.set_cut_spread_seconds(static_cast<double>(latest - earliest) / 1e6);
  response.set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  return response;
}

absl::StatusOr<uint64_t> ClusterCheckpointer::HoldEveryShard() {
  std::vector<absl::StatusOr<uint64_t>> held(num_shards_,
                                             absl::UnknownError("not held"));
  std::vector<std::thread> threads;
  for (uint32_t i = 0; i < num_shards_; ++i) {
    if (i == shard_index_) continue;
    threads.emplace_back([this, i, &held] {
      v1::HoldSyncStepsRequest request;
      request.set_hold_seconds(hold_seconds_);
      v1::HoldSyncStepsResponse answer;
      grpc::Status status = peers_->admin(i)->HoldSyncSteps(
          peers_->Context().get(), request, &answer);
      if (status.ok()) {
        held[i] = answer.sync_step();
      } else {
        held[i] = PeerError(i, "holding its sync steps", status);
      }
    });
  }
  held[shard_index_] = store_->HoldSteps(absl::Seconds(hold_seconds_));
  for (std::thread& thread : threads) thread.join();
  uint64_t cut = 0;
  for (uint32_t i = 0; i < num_shards_; ++i) {
    if (!held[i].ok()) {
      ReleaseEveryShard();
      return held[i].status();
    }
    cut = std::max(cut, *held[i]);
  }
  return cut;
}

void ClusterCheckpointer::ReleaseEveryShard() {
  for (uint32_t i = 0; i < num_shards_; ++i) {
    if (i == shard_index_) {
      store_->ReleaseSteps();
      continue;
    }
    v1::HoldSyncStepsRequest request;
    request.set_release(true);
    v1::HoldSyncStepsResponse answer;
    auto context = peers_->Context();
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::seconds(5));
    // Best effort: a hold not released here runs out by itself.
    peers_->admin(i)->HoldSyncSteps(context.get(), request, &answer);
  }
}

}  // namespace ps
