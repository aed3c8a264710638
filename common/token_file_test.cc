#include "common/token_file.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

TEST(ParseTokenLinesTest, SkipsBlankAndCommentLinesAndKeepsLineNumbers) {
  const std::vector<TokenLine> tokens = ParseTokenLines(
      "# the training job\n"
      "\n"
      "  s3cret   trainer\tworkers=trainer-*  \r\n"
      "   # indented comment\n"
      "\t \n"
      "plain\n"
      "last-without-newline");
  ASSERT_EQ(tokens.size(), 3u);
  EXPECT_EQ(tokens[0].line_number, 3);
  EXPECT_EQ(tokens[0].secret, "s3cret");
  EXPECT_THAT(tokens[0].words, ElementsAre("trainer", "workers=trainer-*"));
  EXPECT_EQ(tokens[1].line_number, 6);
  EXPECT_EQ(tokens[1].secret, "plain");
  EXPECT_THAT(tokens[1].words, IsEmpty());
  EXPECT_EQ(tokens[2].line_number, 7);
  EXPECT_EQ(tokens[2].secret, "last-without-newline");
}

TEST(ParseTokenLinesTest, AHashInsideALineIsPartOfIt) {
  const std::vector<TokenLine> tokens = ParseTokenLines("a#b c#d\n");
  ASSERT_EQ(tokens.size(), 1u);
  EXPECT_EQ(tokens[0].secret, "a#b");
  EXPECT_THAT(tokens[0].words, ElementsAre("c#d"));
}

TEST(ParseTokenLinesTest, NothingButCommentsHoldsNoToken) {
  EXPECT_THAT(ParseTokenLines(""), IsEmpty());
  EXPECT_THAT(ParseTokenLines("# only\n\n  \n"), IsEmpty());
}

class ReadTokenFileTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& contents) {
    char pattern[] = "/tmp/token_file_test.XXXXXX";
    const int fd = ::mkstemp(pattern);
    EXPECT_GE(fd, 0);
    ::close(fd);
    paths_.push_back(pattern);
    std::ofstream(pattern) << contents;
    return pattern;
  }
  void TearDown() override {
    for (const std::string& path : paths_) std::remove(path.c_str());
  }

  std::vector<std::string> paths_;
};

TEST_F(ReadTokenFileTest, ReadsTheTokens) {
  absl::StatusOr<std::vector<TokenLine>> tokens =
      ReadTokenFile(Write("# admin\nroot-token ops\nsecond\n"));
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 2u);
  EXPECT_EQ((*tokens)[0].secret, "root-token");
  EXPECT_THAT((*tokens)[0].words, ElementsAre("ops"));
  EXPECT_EQ((*tokens)[1].secret, "second");
}

TEST_F(ReadTokenFileTest, AFileOfCommentsHoldsNoToken) {
  const std::string path = Write("# nothing here\n\n");
  absl::StatusOr<std::vector<TokenLine>> tokens = ReadTokenFile(path);
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tokens.status().message(),
            "token file " + path + " holds no token");
}

TEST_F(ReadTokenFileTest, AMissingFileCannotBeRead) {
  absl::StatusOr<std::vector<TokenLine>> tokens =
      ReadTokenFile("/nonexistent/tokens");
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tokens.status().message(),
              HasSubstr("cannot read token file /nonexistent/tokens"));
}

}  // namespace
}  // namespace ps
