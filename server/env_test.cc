#include "server/env.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace ps {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

class PosixEnvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "env_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes `contents` to `path` through the Env, syncing and closing it.
  void Write(const std::string& path, const std::string& contents) {
    absl::StatusOr<std::unique_ptr<WritableFile>> file =
        env_->NewWritableFile(path);
    ASSERT_TRUE(file.ok()) << file.status();
    ASSERT_TRUE((*file)->Append(contents).ok());
    ASSERT_TRUE((*file)->Sync().ok());
    ASSERT_TRUE((*file)->Close().ok());
  }

  Env* const env_ = Env::Default();
  std::string dir_;
};

TEST_F(PosixEnvTest, DefaultIsOneEnv) { EXPECT_EQ(Env::Default(), env_); }

TEST_F(PosixEnvTest, WritesAndReadsBack) {
  absl::StatusOr<std::unique_ptr<WritableFile>> file =
      env_->NewWritableFile(Path("f"));
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE((*file)->Append("hello, ").ok());
  ASSERT_TRUE((*file)->Append("").ok());
  ASSERT_TRUE((*file)->Append(std::string("wor\0ld", 6)).ok());
  ASSERT_TRUE((*file)->Sync().ok());
  ASSERT_TRUE((*file)->Close().ok());
  // Closing again does nothing.
  EXPECT_TRUE((*file)->Close().ok());

  absl::StatusOr<std::string> contents = ReadWholeFile(env_, Path("f"));
  ASSERT_TRUE(contents.ok()) << contents.status();
  EXPECT_EQ(*contents, std::string("hello, wor\0ld", 13));
}

TEST_F(PosixEnvTest, ReadsFilesLargerThanOneBuffer) {
  std::string big(200'000 + 17, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31);
  Write(Path("big"), big);
  absl::StatusOr<std::string> contents = ReadWholeFile(env_, Path("big"));
  ASSERT_TRUE(contents.ok()) << contents.status();
  EXPECT_TRUE(*contents == big);
}

TEST_F(PosixEnvTest, SequentialReadsInPiecesThenEnd) {
  Write(Path("f"), "abcdefg");
  absl::StatusOr<std::unique_ptr<SequentialFile>> file =
      env_->NewSequentialFile(Path("f"));
  ASSERT_TRUE(file.ok()) << file.status();
  char buffer[4];
  absl::StatusOr<size_t> n = (*file)->Read(buffer, sizeof(buffer));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(std::string(buffer, *n), "abcd");
  n = (*file)->Read(buffer, sizeof(buffer));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(std::string(buffer, *n), "efg");
  n = (*file)->Read(buffer, sizeof(buffer));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
}

TEST_F(PosixEnvTest, NewWritableFileTruncates) {
  Write(Path("f"), "a long first version");
  Write(Path("f"), "short");
  EXPECT_EQ(*ReadWholeFile(env_, Path("f")), "short");
}

TEST_F(PosixEnvTest, AFileUnclosedIsClosedByItsDestructor) {
  {
    absl::StatusOr<std::unique_ptr<WritableFile>> file =
        env_->NewWritableFile(Path("f"));
    ASSERT_TRUE(file.ok());
    ASSERT_TRUE((*file)->Append("kept").ok());
  }
  EXPECT_EQ(*ReadWholeFile(env_, Path("f")), "kept");
}

TEST_F(PosixEnvTest, MissingFilesAndFoldersAreNotFound) {
  absl::StatusOr<std::string> read = ReadWholeFile(env_, Path("missing"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(read.status().message(), HasSubstr(Path("missing")));

  EXPECT_EQ(env_->NewWritableFile(Path("no/such/folder")).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(env_->ListDir(Path("missing")).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(env_->SyncDir(Path("missing")).code(), absl::StatusCode::kNotFound);
  absl::Status rename = env_->Rename(Path("missing"), Path("to"));
  EXPECT_EQ(rename.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(rename.message(), HasSubstr(Path("missing")));
  EXPECT_THAT(rename.message(), HasSubstr(Path("to")));
}

TEST_F(PosixEnvTest, CreateDirsMakesParentsAndTakesExistingFolders) {
  ASSERT_TRUE(env_->CreateDirs(Path("a/b/c")).ok());
  EXPECT_TRUE(std::filesystem::is_directory(Path("a/b/c")));
  EXPECT_TRUE(env_->CreateDirs(Path("a/b/c")).ok());
  EXPECT_TRUE(env_->CreateDirs(Path("a")).ok());
}

TEST_F(PosixEnvTest, CreateDirsRefusesAFile) {
  Write(Path("file"), "x");
  // The code depends on the C++ library: libstdc++ reports ENOTDIR
  // (INTERNAL) before CreateDirs' own check could say FAILED_PRECONDITION.
  absl::Status status = env_->CreateDirs(Path("file"));
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr(Path("file")));
  // A file in the way of a parent.
  EXPECT_FALSE(env_->CreateDirs(Path("file/sub")).ok());
  EXPECT_EQ(*ReadWholeFile(env_, Path("file")), "x");
}

TEST_F(PosixEnvTest, ListDirNamesTheEntries) {
  absl::StatusOr<std::vector<std::string>> empty = env_->ListDir(dir_);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_THAT(*empty, IsEmpty());

  Write(Path("one"), "1");
  Write(Path(".hidden"), "2");
  ASSERT_TRUE(env_->CreateDirs(Path("sub/deeper")).ok());
  absl::StatusOr<std::vector<std::string>> names = env_->ListDir(dir_);
  ASSERT_TRUE(names.ok()) << names.status();
  EXPECT_THAT(*names, UnorderedElementsAre("one", ".hidden", "sub"));
}

TEST_F(PosixEnvTest, ListDirOfAFileFails) {
  Write(Path("file"), "x");
  absl::StatusOr<std::vector<std::string>> names = env_->ListDir(Path("file"));
  EXPECT_FALSE(names.ok());
  EXPECT_EQ(names.status().code(), absl::StatusCode::kInternal);  // ENOTDIR
}

TEST_F(PosixEnvTest, RenameReplacesAFileAndAnEmptyFolder) {
  Write(Path("new"), "new");
  Write(Path("old"), "old");
  ASSERT_TRUE(env_->Rename(Path("new"), Path("old")).ok());
  EXPECT_EQ(*ReadWholeFile(env_, Path("old")), "new");
  EXPECT_FALSE(std::filesystem::exists(Path("new")));

  ASSERT_TRUE(env_->CreateDirs(Path("tmp")).ok());
  Write(Path("tmp/data"), "d");
  ASSERT_TRUE(env_->CreateDirs(Path("final")).ok());
  ASSERT_TRUE(env_->Rename(Path("tmp"), Path("final")).ok());
  EXPECT_EQ(*ReadWholeFile(env_, Path("final/data")), "d");

  // Not a folder that holds something.
  ASSERT_TRUE(env_->CreateDirs(Path("tmp2")).ok());
  EXPECT_FALSE(env_->Rename(Path("tmp2"), Path("final")).ok());
  EXPECT_EQ(*ReadWholeFile(env_, Path("final/data")), "d");
}

TEST_F(PosixEnvTest, RemoveAllRemovesFoldersAndTakesMissingPaths) {
  ASSERT_TRUE(env_->CreateDirs(Path("a/b")).ok());
  Write(Path("a/b/f"), "x");
  Write(Path("a/g"), "y");
  Write(Path("single"), "z");
  ASSERT_TRUE(env_->RemoveAll(Path("a")).ok());
  ASSERT_TRUE(env_->RemoveAll(Path("single")).ok());
  EXPECT_FALSE(std::filesystem::exists(Path("a")));
  EXPECT_FALSE(std::filesystem::exists(Path("single")));
  EXPECT_TRUE(env_->RemoveAll(Path("a")).ok());
  EXPECT_TRUE(env_->RemoveAll(Path("never/was")).ok());
}

TEST_F(PosixEnvTest, SyncDirSyncsAFolder) {
  EXPECT_TRUE(env_->SyncDir(dir_).ok());
  Write(Path("file"), "x");
  // A file is not a folder (O_DIRECTORY).
  EXPECT_EQ(env_->SyncDir(Path("file")).code(), absl::StatusCode::kInternal);
}

TEST_F(PosixEnvTest, WritingAFolderIsRefused) {
  absl::StatusOr<std::unique_ptr<WritableFile>> file =
      env_->NewWritableFile(dir_);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInternal);  // EISDIR
  EXPECT_THAT(file.status().message(), HasSubstr("cannot create"));
}

// /dev/full takes the open and fails every write with ENOSPC: a full disk.
TEST_F(PosixEnvTest, AFullDiskIsResourceExhausted) {
  if (::access("/dev/full", W_OK) != 0) {
    GTEST_SKIP() << "no writable /dev/full here";
  }
  absl::StatusOr<std::unique_ptr<WritableFile>> file =
      env_->NewWritableFile("/dev/full");
  ASSERT_TRUE(file.ok()) << file.status();
  absl::Status status = (*file)->Append("data");
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr("cannot write /dev/full"));
  EXPECT_THAT(status.message(), HasSubstr(std::strerror(ENOSPC)));
}

TEST(ErrnoStatusTest, MapsEachErrorToItsCode) {
  const struct {
    int error;
    absl::StatusCode code;
  } cases[] = {
      {ENOENT, absl::StatusCode::kNotFound},
      {ENOSPC, absl::StatusCode::kResourceExhausted},
      {EDQUOT, absl::StatusCode::kResourceExhausted},
      {EACCES, absl::StatusCode::kPermissionDenied},
      {EPERM, absl::StatusCode::kPermissionDenied},
      {EROFS, absl::StatusCode::kPermissionDenied},
      {EIO, absl::StatusCode::kInternal},
      {ENOTDIR, absl::StatusCode::kInternal},
      {EEXIST, absl::StatusCode::kInternal},
  };
  for (const auto& c : cases) {
    absl::Status status = ErrnoStatus("cannot do", "/some/path", c.error);
    EXPECT_EQ(status.code(), c.code) << std::strerror(c.error);
    EXPECT_EQ(status.message(),
              std::string("cannot do /some/path: ") + std::strerror(c.error));
  }
}

}  // namespace
}  // namespace ps
