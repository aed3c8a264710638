#include "common/file_util.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

class ReadSmallFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/file_util_test.XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  std::string Write(const std::string& name, const std::string& contents) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }

  std::string dir_;
};

TEST_F(ReadSmallFileTest, ReadsEveryByte) {
  const std::string contents("-----BEGIN\r\n\0binary\xff\n", 20);
  absl::StatusOr<std::string> read =
      ReadSmallFile(Write("ca.pem", contents), "TLS CA file");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, contents);
}

TEST_F(ReadSmallFileTest, ReadsAFileLargerThanOneRead) {
  std::string contents(200000, 'x');
  for (size_t i = 0; i < contents.size(); i += 7) contents[i] = 'a' + i % 26;
  absl::StatusOr<std::string> read = ReadSmallFile(Write("big", contents), "f");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, contents);
}

TEST_F(ReadSmallFileTest, AMissingFileNamesWhatAndWhy) {
  const std::string path = dir_ + "/missing.pem";
  absl::StatusOr<std::string> read = ReadSmallFile(path, "--tls_cert_file");
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(read.status().message(),
              AllOf(HasSubstr("cannot read --tls_cert_file " + path),
                    HasSubstr("No such file")));
}

TEST_F(ReadSmallFileTest, ADirectoryCannotBeRead) {
  absl::StatusOr<std::string> read = ReadSmallFile(dir_, "token file");
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(read.status().message(),
              HasSubstr("cannot read token file " + dir_));
}

TEST_F(ReadSmallFileTest, AnEmptyFileIsRefused) {
  const std::string path = Write("empty", "");
  absl::StatusOr<std::string> read = ReadSmallFile(path, "TLS CA file");
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(read.status().message(),
              HasSubstr("TLS CA file " + path + " is empty"));
}

TEST_F(ReadSmallFileTest, AFileAboveTheLimitIsRefused) {
  const std::string at_limit =
      Write("at_limit", std::string(kMaxSmallFileBytes, 'x'));
  absl::StatusOr<std::string> read = ReadSmallFile(at_limit, "f");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->size(), kMaxSmallFileBytes);

  const std::string above =
      Write("above", std::string(kMaxSmallFileBytes + 1, 'x'));
  read = ReadSmallFile(above, "f");
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(read.status().message(), HasSubstr("larger than 16 MiB"));
}

TEST_F(ReadSmallFileTest, ADeviceThatNeverEndsIsRefused) {
  absl::StatusOr<std::string> read = ReadSmallFile("/dev/zero", "f");
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(read.status().message(), HasSubstr("larger than"));
}

}  // namespace
}  // namespace ps
