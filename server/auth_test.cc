#include "server/auth.h"

#include <gmock/gmock.h>
#include <grpcpp/server_context.h>
#include <grpcpp/test/server_context_test_spouse.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <utility>

#include "absl/status/status.h"

namespace ps {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// A folder of token files, removed at the end.
class TokenFiles {
 public:
  TokenFiles() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "auth_test.XXXXXX").string();
    dir_ = ::mkdtemp(pattern.data());
  }
  ~TokenFiles() { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& contents) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << contents;
    return path;
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

 private:
  std::string dir_;
};

// A server context whose client sent `metadata` (key, value) pairs.
class Call {
 public:
  Call() : spouse_(&context_) {}
  explicit Call(
      std::initializer_list<std::pair<std::string, std::string>> metadata)
      : spouse_(&context_) {
    for (const auto& [key, value] : metadata) {
      spouse_.AddClientMetadata(key, value);
    }
  }
  static Call Bearer(const std::string& token) {
    return Call({{"authorization", "Bearer " + token}});
  }
  const grpc::ServerContextBase& context() const { return context_; }

 private:
  grpc::ServerContext context_;
  grpc::testing::ServerContextTestSpouse spouse_;
};

absl::StatusCode CodeOf(const absl::StatusOr<Caller>& caller) {
  return caller.status().code();
}

TEST(AuthenticatorTest, WithoutTokensEveryoneIsAnonymous) {
  Authenticator auth;
  EXPECT_FALSE(auth.enabled());
  Call none;
  absl::StatusOr<Caller> caller = auth.Check(none.context(), Role::kAdmin);
  ASSERT_TRUE(caller.ok()) << caller.status();
  EXPECT_EQ(caller->label, "anonymous");
  EXPECT_THAT(caller->workers, IsEmpty());

  absl::StatusOr<Authenticator> loaded = Authenticator::Load("", "");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_FALSE(loaded->enabled());
  EXPECT_TRUE(loaded->Check(Call::Bearer("x").context(), Role::kAdmin).ok());
}

TEST(AuthenticatorTest, ReadsLabelsAndSkipsCommentsAndBlankLines) {
  TokenFiles files;
  const std::string workers = files.Write("workers",
                                          "# the trainers\n"
                                          "\n"
                                          "   \t\n"
                                          "  s3cret   alice  the\ttrainer \n"
                                          "bare\n"
                                          "#commented-out alice\n");
  absl::StatusOr<Authenticator> auth = Authenticator::Load(workers, "");
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE(auth->enabled());

  absl::StatusOr<Caller> alice =
      auth->Check(Call::Bearer("s3cret").context(), Role::kWorker);
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_EQ(alice->label, "alice the trainer");
  EXPECT_THAT(alice->workers, IsEmpty());

  // Without a label, the token is named by its line.
  absl::StatusOr<Caller> bare =
      auth->Check(Call::Bearer("bare").context(), Role::kWorker);
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->label, "worker token on line 5");

  // A comment is not a token, nor is a label.
  EXPECT_EQ(CodeOf(auth->Check(Call::Bearer("#commented-out").context(),
                               Role::kWorker)),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(CodeOf(auth->Check(Call::Bearer("alice").context(), Role::kWorker)),
            absl::StatusCode::kUnauthenticated);
}

TEST(AuthenticatorTest, WorkerTokensMayNotAdminister) {
  TokenFiles files;
  absl::StatusOr<Authenticator> auth =
      Authenticator::Load(files.Write("workers", "w-token trainer\n"),
                          files.Write("admins", "a-token\n"));
  ASSERT_TRUE(auth.ok()) << auth.status();

  EXPECT_TRUE(
      auth->Check(Call::Bearer("w-token").context(), Role::kWorker).ok());
  absl::StatusOr<Caller> denied =
      auth->Check(Call::Bearer("w-token").context(), Role::kAdmin);
  EXPECT_EQ(CodeOf(denied), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(denied.status().message(),
              HasSubstr("'trainer' is a worker token"));

  for (Role role : {Role::kWorker, Role::kAdmin}) {
    absl::StatusOr<Caller> admin =
        auth->Check(Call::Bearer("a-token").context(), role);
    ASSERT_TRUE(admin.ok()) << admin.status();
    EXPECT_EQ(admin->label, "admin token on line 1");
  }
}

TEST(AuthenticatorTest, ATokenInBothFilesIsAnAdminToken) {
  TokenFiles files;
  absl::StatusOr<Authenticator> auth =
      Authenticator::Load(files.Write("workers", "shared as-worker\n"),
                          files.Write("admins", "shared as-admin\n"));
  ASSERT_TRUE(auth.ok()) << auth.status();
  absl::StatusOr<Caller> caller =
      auth->Check(Call::Bearer("shared").context(), Role::kAdmin);
  ASSERT_TRUE(caller.ok()) << caller.status();
  EXPECT_EQ(caller->label, "as-admin");
}

TEST(AuthenticatorTest, OnlyAdminTokens) {
  TokenFiles files;
  absl::StatusOr<Authenticator> auth =
      Authenticator::Load("", files.Write("admins", "a-token\n"));
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE(auth->enabled());
  EXPECT_TRUE(
      auth->Check(Call::Bearer("a-token").context(), Role::kWorker).ok());
  EXPECT_EQ(CodeOf(auth->Check(Call().context(), Role::kWorker)),
            absl::StatusCode::kUnauthenticated);
}

TEST(AuthenticatorTest, RefusesMissingUnknownAndMalformedMetadata) {
  TokenFiles files;
  absl::StatusOr<Authenticator> auth =
      Authenticator::Load(files.Write("workers", "s3cret\n"), "");
  ASSERT_TRUE(auth.ok()) << auth.status();

  absl::StatusOr<Caller> none = auth->Check(Call().context(), Role::kWorker);
  EXPECT_EQ(CodeOf(none), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(none.status().message(), HasSubstr("no token"));

  absl::StatusOr<Caller> other_key = auth->Check(
      Call({{"x-token", "Bearer s3cret"}}).context(), Role::kWorker);
  EXPECT_EQ(CodeOf(other_key), absl::StatusCode::kUnauthenticated);

  for (const std::string value :
       {"s3cret", "bearer s3cret", "Basic s3cret", "Bearer", "Bearers3cret"}) {
    absl::StatusOr<Caller> malformed =
        auth->Check(Call({{"authorization", value}}).context(), Role::kWorker);
    EXPECT_EQ(CodeOf(malformed), absl::StatusCode::kUnauthenticated) << value;
    EXPECT_THAT(malformed.status().message(), HasSubstr("Bearer <token>"))
        << value;
  }

  // Near misses: a prefix, an extension, another case, padding, empty.
  for (const std::string token :
       {"s3cre", "s3cret2", "S3CRET", " s3cret", "s3cret ", ""}) {
    absl::StatusOr<Caller> unknown =
        auth->Check(Call::Bearer(token).context(), Role::kWorker);
    EXPECT_EQ(CodeOf(unknown), absl::StatusCode::kUnauthenticated)
        << "'" << token << "'";
    EXPECT_THAT(unknown.status().message(), HasSubstr("unknown token"));
  }
}

TEST(AuthenticatorTest, TokensMayHoldAnyBytesButWhitespace) {
  TokenFiles files;
  const std::string token = "a:b/c=d+e#~";
  absl::StatusOr<Authenticator> auth =
      Authenticator::Load(files.Write("workers", token + " odd\n"), "");
  ASSERT_TRUE(auth.ok()) << auth.status();
  absl::StatusOr<Caller> caller =
      auth->Check(Call::Bearer(token).context(), Role::kWorker);
  ASSERT_TRUE(caller.ok()) << caller.status();
  EXPECT_EQ(caller->label, "odd");
}

TEST(AuthenticatorTest, RefusesMissingAndEmptyFiles) {
  TokenFiles files;
  absl::StatusOr<Authenticator> missing =
      Authenticator::Load(files.Path("nope"), "");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.status().message(), HasSubstr(files.Path("nope")));

  absl::StatusOr<Authenticator> admin_missing =
      Authenticator::Load(files.Write("workers", "t\n"), files.Path("nope"));
  EXPECT_EQ(admin_missing.status().code(), absl::StatusCode::kInvalidArgument);

  for (const std::string contents : {"", "\n\n", "# only a comment\n"}) {
    absl::StatusOr<Authenticator> empty =
        Authenticator::Load(files.Write("empty", contents), "");
    EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument)
        << contents;
    EXPECT_THAT(empty.status().message(), contents.empty()
                                              ? HasSubstr("is empty")
                                              : HasSubstr("holds no token"));
  }
}

TEST(AuthenticatorTest, WorkersPatternsLimitTheWorkerIds) {
  TokenFiles files;
  absl::StatusOr<Authenticator> auth = Authenticator::Load(
      files.Write("workers",
                  "bound trainer workers=trainer-*,eval-?,exact b\n"
                  "free\n"),
      "");
  ASSERT_TRUE(auth.ok()) << auth.status();
  absl::StatusOr<Caller> bound =
      auth->Check(Call::Bearer("bound").context(), Role::kWorker);
  ASSERT_TRUE(bound.ok()) << bound.status();
  // The workers= word is not part of the label.
  EXPECT_EQ(bound->label, "trainer b");
  EXPECT_THAT(bound->workers, ElementsAre("trainer-*", "eval-?", "exact"));

  for (const std::string id :
       {"trainer-", "trainer-0", "trainer-a/b", "eval-1", "exact"}) {
    EXPECT_TRUE(bound->CheckWorker(id).ok()) << id;
  }
  for (const std::string id :
       {"trainer", "xtrainer-1", "eval-", "eval-12", "exact2", "Exact", ""}) {
    absl::Status status = bound->CheckWorker(id);
    EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << id;
    EXPECT_THAT(status.message(),
                HasSubstr("may push as workers trainer-*, eval-?, exact, not "
                          "as '" +
                          id + "'"));
  }

  absl::StatusOr<Caller> free =
      auth->Check(Call::Bearer("free").context(), Role::kWorker);
  ASSERT_TRUE(free.ok()) << free.status();
  EXPECT_THAT(free->workers, IsEmpty());
  EXPECT_TRUE(free->CheckWorker("anyone").ok());
}

TEST(AuthenticatorTest, WorkersPatternsFromSeveralWordsAddUp) {
  TokenFiles files;
  absl::StatusOr<Authenticator> auth = Authenticator::Load(
      files.Write("workers", "t workers=a workers=b,,c\n"), "");
  ASSERT_TRUE(auth.ok()) << auth.status();
  absl::StatusOr<Caller> caller =
      auth->Check(Call::Bearer("t").context(), Role::kWorker);
  ASSERT_TRUE(caller.ok()) << caller.status();
  EXPECT_THAT(caller->workers, ElementsAre("a", "b", "c"));
  EXPECT_EQ(caller->label, "worker token on line 1");
}

TEST(AuthenticatorTest, RefusesAnEmptyWorkersPattern) {
  TokenFiles files;
  for (const std::string line : {"t workers=", "t label workers=,"}) {
    absl::StatusOr<Authenticator> auth =
        Authenticator::Load(files.Write("workers", "ok\n" + line + "\n"), "");
    EXPECT_EQ(auth.status().code(), absl::StatusCode::kInvalidArgument) << line;
    EXPECT_THAT(auth.status().message(),
                HasSubstr("line 2: workers= names no worker id pattern"))
        << line;
  }
}

TEST(AuthenticatorTest, EveryTokenOfManyIsRecognized) {
  TokenFiles files;
  std::string contents;
  for (int i = 0; i < 20; ++i) {
    contents +=
        "token-" + std::to_string(i) + " label-" + std::to_string(i) + "\n";
  }
  absl::StatusOr<Authenticator> auth =
      Authenticator::Load(files.Write("workers", contents), "");
  ASSERT_TRUE(auth.ok()) << auth.status();
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<Caller> caller = auth->Check(
        Call::Bearer("token-" + std::to_string(i)).context(), Role::kWorker);
    ASSERT_TRUE(caller.ok()) << caller.status();
    EXPECT_EQ(caller->label, "label-" + std::to_string(i));
  }
}

}  // namespace
}  // namespace ps
