// An Env in front of the real disk that fails chosen operations, for tests
// of what the checkpoint code does when the disk is full (ENOSPC), an fsync
// fails (EIO), a rename fails or a write is cut short. Header-only.
//
// Thread safety: every method may be called concurrently.
#ifndef PS_TESTS_SERVER_FAULT_ENV_H_
#define PS_TESTS_SERVER_FAULT_ENV_H_

#include <cerrno>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "server/env.h"

namespace ps::testutil {

class FaultEnv final : public Env {
 public:
  // The operations that can be made to fail.
  enum class Op {
    kCreate,   // NewWritableFile
    kAppend,   // WritableFile::Append
    kSync,     // WritableFile::Sync
    kClose,    // WritableFile::Close
    kRename,   // Rename
    kSyncDir,  // SyncDir
    kMkdir,    // CreateDirs
  };
  static constexpr int kNumOps = 7;

  // How an injected failure looks.
  struct Fault {
    int error = EIO;  // errno the failure reports
    // kAppend: write the first half of the data to the disk, then fail
    // (a write cut short by a full disk).
    bool short_write = false;
  };

  FaultEnv() : base_(Env::Default()) {}

  // Fails the operation with index `index` (counting every operation of any
  // kind whose path contains `path_part`, from 0 after this call), and, with
  // `sticky`, every one after it too.
  void FailAt(int index, Fault fault, bool sticky = false,
              std::string path_part = "") {
    absl::MutexLock lock(&mu_);
    seen_ = 0;
    failures_ = 0;
    fail_at_ = index;
    fault_ = fault;
    sticky_ = sticky;
    path_part_ = std::move(path_part);
  }
  // Fails every operation of kind `op` from now on.
  void FailAll(Op op, Fault fault) {
    absl::MutexLock lock(&mu_);
    fail_all_[static_cast<int>(op)] = true;
    fault_ = fault;
  }
  // Lets everything through again.
  void Heal() {
    absl::MutexLock lock(&mu_);
    fail_at_ = -1;
    sticky_ = false;
    for (bool& op : fail_all_) op = false;
  }
  // Operations counted, and failures injected, since the last FailAt (or
  // construction).
  int seen() const {
    absl::MutexLock lock(&mu_);
    return seen_;
  }
  int failures() const {
    absl::MutexLock lock(&mu_);
    return failures_;
  }

  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(
      const std::string& path) override {
    if (auto fault = Check(Op::kCreate, path)) return Failure(*fault, path);
    auto file = base_->NewWritableFile(path);
    if (!file.ok()) return file.status();
    return std::unique_ptr<WritableFile>(
        new File(this, path, *std::move(file)));
  }
  absl::StatusOr<std::unique_ptr<SequentialFile>> NewSequentialFile(
      const std::string& path) override {
    return base_->NewSequentialFile(path);
  }
  absl::Status CreateDirs(const std::string& path) override {
    if (auto fault = Check(Op::kMkdir, path)) return Failure(*fault, path);
    return base_->CreateDirs(path);
  }
  absl::StatusOr<std::vector<std::string>> ListDir(
      const std::string& path) override {
    return base_->ListDir(path);
  }
  absl::Status RemoveAll(const std::string& path) override {
    return base_->RemoveAll(path);
  }
  absl::Status Rename(const std::string& from, const std::string& to) override {
    if (auto fault = Check(Op::kRename, to)) return Failure(*fault, to);
    return base_->Rename(from, to);
  }
  absl::Status SyncDir(const std::string& path) override {
    if (auto fault = Check(Op::kSyncDir, path)) return Failure(*fault, path);
    return base_->SyncDir(path);
  }

 private:
  class File final : public WritableFile {
   public:
    File(FaultEnv* env, std::string path, std::unique_ptr<WritableFile> base)
        : env_(env), path_(std::move(path)), base_(std::move(base)) {}
    absl::Status Append(absl::string_view data) override {
      if (auto fault = env_->Check(Op::kAppend, path_)) {
        if (fault->short_write) {
          base_->Append(data.substr(0, data.size() / 2)).IgnoreError();
        }
        return Failure(*fault, path_);
      }
      return base_->Append(data);
    }
    absl::Status Sync() override {
      if (auto fault = env_->Check(Op::kSync, path_)) {
        return Failure(*fault, path_);
      }
      return base_->Sync();
    }
    absl::Status Close() override {
      if (auto fault = env_->Check(Op::kClose, path_)) {
        base_->Close().IgnoreError();
        return Failure(*fault, path_);
      }
      return base_->Close();
    }

   private:
    FaultEnv* const env_;
    const std::string path_;
    const std::unique_ptr<WritableFile> base_;
  };

  static absl::Status Failure(const Fault& fault, const std::string& path) {
    return ErrnoStatus("injected failure on", path, fault.error);
  }

  // The fault to inject for this operation, if any.
  std::optional<Fault> Check(Op op, const std::string& path) {
    absl::MutexLock lock(&mu_);
    if (fail_all_[static_cast<int>(op)]) {
      ++failures_;
      return fault_;
    }
    if (!absl::StrContains(path, path_part_)) return std::nullopt;
    const int index = seen_++;
    if (fail_at_ >= 0 && (index == fail_at_ || (sticky_ && index > fail_at_))) {
      ++failures_;
      return fault_;
    }
    return std::nullopt;
  }

  Env* const base_;
  mutable absl::Mutex mu_;
  int seen_ ABSL_GUARDED_BY(mu_) = 0;
  int fail_at_ ABSL_GUARDED_BY(mu_) = -1;
  bool sticky_ ABSL_GUARDED_BY(mu_) = false;
  bool fail_all_[kNumOps] ABSL_GUARDED_BY(mu_) = {};
  std::string path_part_ ABSL_GUARDED_BY(mu_);
  Fault fault_ ABSL_GUARDED_BY(mu_);
  int failures_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ps::testutil

#endif  // PS_TESTS_SERVER_FAULT_ENV_H_
