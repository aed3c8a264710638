#include "client/psctl/flags.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ps::psctl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const FlagSet& TestFlags() {
  static const auto* flags = new FlagSet{
      {"servers",
       {.name = "servers",
        .type = FlagType::kString,
        .default_value = "127.0.0.1:50051"}},
      {"json", {.name = "json", .type = FlagType::kBool}},
      {"lr", {.name = "lr", .type = FlagType::kDouble}},
      {"steps", {.name = "steps", .type = FlagType::kUint64}},
      {"count",
       {.name = "count", .type = FlagType::kInt, .default_value = "3"}},
  };
  return *flags;
}

absl::StatusOr<CommandLine> Read(const std::vector<std::string>& args) {
  return ReadCommandLine(args, &TestFlags());
}

TEST(ReadCommandLineTest, SplitsWordsAndFlags) {
  absl::StatusOr<CommandLine> line =
      Read({"--servers=a:1", "lr", "-json", "set", "--lr", "0.5", "-1",
            "--steps=7", "--", "--json"});
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_THAT(line->words, ElementsAre("lr", "set", "-1", "--json"));
  EXPECT_EQ(line->flags.String("servers"), "a:1");
  EXPECT_TRUE(line->flags.Bool("json"));
  EXPECT_EQ(line->flags.OptionalDouble("lr"), 0.5);
  EXPECT_EQ(line->flags.OptionalUint64("steps"), 7u);
  EXPECT_THAT(line->flags.GivenNames(),
              ElementsAre("json", "lr", "servers", "steps"));
  EXPECT_FALSE(line->help);
}

TEST(ReadCommandLineTest, DefaultsAndUnsetValues) {
  absl::StatusOr<CommandLine> line = Read({"info", "--lr="});
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(line->flags.String("servers"), "127.0.0.1:50051");
  EXPECT_EQ(line->flags.Int("count"), 3);
  EXPECT_FALSE(line->flags.Bool("json"));
  EXPECT_EQ(line->flags.OptionalDouble("lr"), std::nullopt);
  EXPECT_TRUE(line->flags.Given("lr"));
  EXPECT_EQ(line->flags.OptionalUint64("steps"), std::nullopt);
  // Given empty: no value, not the default.
  line = Read({"--servers="});
  ASSERT_TRUE(line.ok());
  EXPECT_EQ(line->flags.String("servers"), "");
}

TEST(ReadCommandLineTest, BoolForms) {
  for (const auto& [arg, value] :
       std::vector<std::pair<std::string, bool>>{{"--json", true},
                                                 {"--json=true", true},
                                                 {"--json=yes", true},
                                                 {"--json=0", false},
                                                 {"--nojson", false}}) {
    absl::StatusOr<CommandLine> line = Read({"--json", arg});
    ASSERT_TRUE(line.ok()) << arg;
    EXPECT_EQ(line->flags.Bool("json"), value) << arg;
  }
  // A bool flag takes no separate value: "false" is a word.
  absl::StatusOr<CommandLine> line = Read({"--json", "false"});
  ASSERT_TRUE(line.ok());
  EXPECT_TRUE(line->flags.Bool("json"));
  EXPECT_THAT(line->words, ElementsAre("false"));
}

TEST(ReadCommandLineTest, Help) {
  for (const char* flag : {"--help", "-h", "--helpshort", "-helpfull"}) {
    absl::StatusOr<CommandLine> line = Read({"lr", flag});
    ASSERT_TRUE(line.ok());
    EXPECT_TRUE(line->help) << flag;
    EXPECT_THAT(line->words, ElementsAre("lr"));
  }
}

TEST(ReadCommandLineTest, RefusesUnknownFlagsAndBadValues) {
  for (const auto& [args, message] :
       std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--bogus"}, "unknown flag --bogus"},
           {{"--nobogus"}, "unknown flag --nobogus"},
           {{"--nolr"}, "unknown flag --nolr"},
           {{"--lr"}, "flag --lr needs a value"},
           {{"--lr=fast"}, "bad value for --lr: 'fast' is not a number"},
           {{"--steps=-1"}, "bad value for --steps"},
           {{"--steps=1.5"}, "bad value for --steps"},
           {{"--count=x"}, "bad value for --count"},
           {{"--json=maybe"}, "bad value for --json"}}) {
    absl::StatusOr<CommandLine> line = Read(args);
    ASSERT_FALSE(line.ok()) << args[0];
    EXPECT_EQ(line.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(line.status().message(), HasSubstr(message));
  }
}

TEST(FlagUsageTest, ShowsTheValue) {
  EXPECT_EQ(FlagUsage({.name = "lr", .type = FlagType::kDouble}), "--lr=X");
  EXPECT_EQ(FlagUsage({.name = "n", .type = FlagType::kUint64}), "--n=N");
  EXPECT_EQ(FlagUsage({.name = "json", .type = FlagType::kBool}), "--json");
}

}  // namespace
}  // namespace ps::psctl
