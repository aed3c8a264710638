// /metrics, scraped over HTTP and parsed as Prometheus text.
#include <gtest/gtest.h>
#include <httplib.h>

#include <map>
#include <optional>
#include <sstream>

#include "absl/strings/numbers.h"
#include "tests/admin/admin_test_util.h"

namespace ps::testing {
namespace {

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses the exposition format: `name{k="v",...} value` lines; '#' lines
// are comments. Fails the test on a line it cannot read.
std::vector<Sample> ParsePrometheus(const std::string& text) {
  std::vector<Sample> samples;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    Sample sample;
    size_t i = line.find_first_of("{ ");
    sample.name = line.substr(0, i);
    if (i != std::string::npos && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find('=', i);
        if (eq == std::string::npos || eq + 1 >= line.size() ||
            line[eq + 1] != '"') {
          ADD_FAILURE() << "bad labels: " << line;
          return samples;
        }
        const std::string key = line.substr(i, eq - i);
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) ++j;
          value += line[j];
        }
        sample.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // '}'
    }
    while (i < line.size() && line[i] == ' ') ++i;
    if (!absl::SimpleAtod(line.substr(i), &sample.value)) {
      ADD_FAILURE() << "bad value: " << line;
      continue;
    }
    samples.push_back(std::move(sample));
  }
  return samples;
}

std::optional<Sample> Find(
    const std::vector<Sample>& samples, const std::string& name,
    const std::map<std::string, std::string>& labels = {}) {
  for (const Sample& s : samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) match = false;
    }
    if (match) return s;
  }
  return std::nullopt;
}

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.block_size = 8;
    options.metrics_port = 0;
    options.default_optimizer = Config(
        "sgd {} learning_rate: 0.1 schedule { step { step_size: 2 gamma: 0.5 "
        "} }");
    shards_ = StartShards(2, options);
    ASSERT_EQ(shards_.size(), 2u);
    for (const auto& shard : shards_) ASSERT_GT(shard->metrics_port(), 0);
    auto worker = RawWorker::Connect(ServerAddresses(shards_));
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
  }

  std::vector<Sample> Scrape(int shard) {
    httplib::Client http("127.0.0.1", shards_[shard]->metrics_port());
    http.set_connection_timeout(5);
    http.set_read_timeout(5);
    auto response = http.Get("/metrics");
    if (!response) {
      ADD_FAILURE() << "no answer from /metrics of shard " << shard;
      return {};
    }
    EXPECT_EQ(response->status, 200);
    EXPECT_NE(response->get_header_value("Content-Type").find("text/plain"),
              std::string::npos);
    return ParsePrometheus(response->body);
  }

  v1::Stats GetStats(int shard) {
    v1::Stats stats;
    EXPECT_TRUE(
        worker_->admin(shard)
            .GetStats(MakeContext().get(), v1::GetStatsRequest(), &stats)
            .ok());
    return stats;
  }

  std::vector<std::unique_ptr<ParameterServer>> shards_;
  std::unique_ptr<RawWorker> worker_;
};

TEST_F(MetricsTest, CountersRiseAndPerVariableLinesMatchGetStats) {
  const std::vector<Sample> before = Scrape(0);
  ASSERT_TRUE(Find(before, "ps_pushes_total", {{"shard", "0"}}));
  EXPECT_EQ(Find(before, "ps_pushes_total")->value, 0);
  EXPECT_EQ(Find(before, "ps_config_version")->value, 1);
  ASSERT_TRUE(Find(before, "ps_uptime_seconds"));

  ASSERT_TRUE(worker_->Create("w", std::vector<float>(37, 1.0f)).ok());
  ASSERT_TRUE(worker_->Create("b", std::vector<float>(3, 0.0f)).ok());
  constexpr int kSteps = 5;
  for (int t = 0; t < kSteps; ++t) {
    ASSERT_TRUE(worker_->Push("w", std::vector<float>(37, 0.5f)).ok());
    std::vector<float> values;
    ASSERT_TRUE(worker_->Pull("w", 37, &values).ok());
  }
  // A refusal, counted by code.
  {
    v1::PushRequest request;
    request.set_worker_id("bad");
    request.set_seq(1);
    request.set_epoch(1);  // a session the shard takes from the push
    v1::Slice* slice = request.add_gradients();
    slice->set_variable("missing");
    slice->set_length(1);
    slice->set_data(std::string(4, '\0'));
    v1::PushResponse response;
    EXPECT_EQ(worker_->parameters(0)
                  .Push(MakeContext().get(), request, &response)
                  .error_code(),
              grpc::StatusCode::NOT_FOUND);
  }

  for (int s = 0; s < 2; ++s) {
    const std::vector<Sample> samples = Scrape(s);
    const v1::Stats stats = GetStats(s);
    const std::map<std::string, std::string> shard = {
        {"shard", std::to_string(s)}};
    // The shard owns blocks of "w", so every push reached it.
    EXPECT_EQ(Find(samples, "ps_pushes_total", shard)->value, kSteps);
    EXPECT_EQ(Find(samples, "ps_pulls_total", shard)->value, kSteps);
    EXPECT_EQ(Find(samples, "ps_pushes_total")->value, stats.pushes());
    EXPECT_EQ(Find(samples, "ps_updates_total")->value, stats.updates());
    EXPECT_GT(Find(samples, "ps_updates_total")->value, 0);
    EXPECT_GT(Find(samples, "ps_bytes_in_total")->value, 0);
    EXPECT_GT(Find(samples, "ps_bytes_out_total")->value, 0);
    EXPECT_GT(
        Find(samples, "ps_update_latency_microseconds", {{"quantile", "0.5"}})
            ->value,
        0);
    ASSERT_TRUE(Find(samples, "ps_update_latency_microseconds",
                     {{"quantile", "0.99"}}));

    // Per variable: step and the scheduled rate, as GetStats has them.
    ASSERT_EQ(stats.variables_size(), 2);
    for (const v1::VariableStats& v : stats.variables()) {
      auto step = Find(samples, "ps_variable_step", {{"variable", v.name()}});
      auto rate =
          Find(samples, "ps_variable_learning_rate", {{"variable", v.name()}});
      ASSERT_TRUE(step) << v.name();
      ASSERT_TRUE(rate) << v.name();
      EXPECT_EQ(step->value, v.step());
      EXPECT_DOUBLE_EQ(rate->value, v.learning_rate());
      EXPECT_EQ(rate->labels.at("rule"), "sgd");
    }
    auto w_step = Find(samples, "ps_variable_step", {{"variable", "w"}});
    EXPECT_EQ(w_step->value, kSteps);
    // Step decay by 0.5 every 2 steps: at t = 5 the rate is 0.1 * 0.5^2.
    EXPECT_DOUBLE_EQ(
        Find(samples, "ps_variable_learning_rate", {{"variable", "w"}})->value,
        0.025);
    EXPECT_EQ(Find(samples, "ps_variable_step", {{"variable", "b"}})->value, 0);
    // SGD keeps no state: the values alone, of this shard's blocks.
    EXPECT_GT(stats.state_bytes(), 0u);
    EXPECT_EQ(stats.state_bytes() % sizeof(float), 0u);
    EXPECT_EQ(Find(samples, "ps_state_bytes", shard)->value,
              stats.state_bytes());
    EXPECT_EQ(Find(samples, "ps_memory_limit_bytes", shard)->value, 0);
  }
  EXPECT_EQ(GetStats(0).state_bytes() + GetStats(1).state_bytes(),
            (37 + 3) * sizeof(float));
  const std::vector<Sample> refused = Scrape(0);
  auto not_found = Find(refused, "ps_refusals_total", {{"code", "NOT_FOUND"}});
  ASSERT_TRUE(not_found);
  EXPECT_EQ(not_found->value, 1);

  // A config change shows in the version gauge.
  for (const grpc::Status& status : SetOptimizerOnAll(
           *worker_, "", Config("adam {} learning_rate: 0.01"), false)) {
    ASSERT_TRUE(status.ok());
  }
  EXPECT_EQ(GetStats(0).state_bytes() + GetStats(1).state_bytes(),
            3 * (37 + 3) * sizeof(float));
  for (int s = 0; s < 2; ++s) {
    const std::vector<Sample> samples = Scrape(s);
    EXPECT_EQ(Find(samples, "ps_config_version")->value, 2);
    // Adam's two moments count as soon as the rule changes.
    EXPECT_EQ(Find(samples, "ps_state_bytes")->value,
              GetStats(s).state_bytes());
    auto rate = Find(samples, "ps_variable_learning_rate", {{"variable", "w"}});
    EXPECT_EQ(rate->labels.at("rule"), "adam");
    EXPECT_DOUBLE_EQ(rate->value, 0.01);
  }
}

TEST(MetricsOffTest, NoPortWhenOff) {
  ServerOptions options;
  options.metrics_port = -1;
  auto shards = StartShards(1, options);
  ASSERT_EQ(shards.size(), 1u);
  EXPECT_EQ(shards[0]->metrics_port(), -1);
}

}  // namespace
}  // namespace ps::testing
