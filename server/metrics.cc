#include "server/metrics.h"

#include <httplib.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace ps {
namespace {

// Escapes a label value as the exposition format asks.
std::string Label(absl::string_view value) {
  return absl::StrReplaceAll(value,
                             {{"\\", "\\\\"}, {"\"", "\\\""}, {"\n", "\\n"}});
}

void Metric(std::string& out, absl::string_view name, absl::string_view type,
            absl::string_view help) {
  absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ",
                  type, "\n");
}

class HttpMetricsServer final : public MetricsServer {
 public:
  explicit HttpMetricsServer(MetricsServer::StatsFn stats) {
    http_.Get("/metrics",
              [stats](const httplib::Request&, httplib::Response& response) {
                response.set_content(FormatPrometheus(stats()),
                                     "text/plain; version=0.0.4");
              });
  }
  ~HttpMetricsServer() override { Stop(); }

  absl::Status Listen(const std::string& host, int port) {
    port_ = port == 0 ? http_.bind_to_any_port(host)
                      : (http_.bind_to_port(host, port) ? port : -1);
    if (port_ <= 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve /metrics on ", host, ":", port));
    }
    thread_ = std::thread([this] { http_.listen_after_bind(); });
    return absl::OkStatus();
  }

  int port() const override { return port_; }

  void Stop() override {
    http_.stop();
    if (thread_.joinable()) thread_.join();
  }

 private:
  httplib::Server http_;
  std::thread thread_;
  int port_ = -1;
};

}  // namespace

std::string FormatPrometheus(const v1::Stats& stats) {
  const std::string shard = absl::StrCat("shard=\"", stats.shard_index(), "\"");
  std::string out;
  // One sample of a shard-wide metric of `type` (counter or gauge).
  auto shard_metric = [&](absl::string_view name, absl::string_view type,
                          absl::string_view help, const absl::AlphaNum& value) {
    Metric(out, name, type, help);
    absl::StrAppend(&out, name, "{", shard, "} ", value, "\n");
  };
  auto counter = [&](absl::string_view name, absl::string_view help,
                     uint64_t value) {
    shard_metric(name, "counter", help, value);
  };
  counter("ps_pushes_total", "Pushes applied or acknowledged.", stats.pushes());
  counter("ps_pulls_total", "Pulls answered.", stats.pulls());
  counter("ps_bytes_in_total", "Request bytes of answered calls.",
          stats.bytes_in());
  counter("ps_bytes_out_total", "Answer bytes of answered calls.",
          stats.bytes_out());
  counter("ps_updates_total", "Block updates applied.", stats.updates());
  counter("ps_checkpoints_total", "Checkpoints written.", stats.checkpoints());
  counter("ps_checkpoint_failures_total",
          "Checkpoints that failed (health is NOT_SERVING until one succeeds).",
          stats.checkpoint_failures());

  const v1::UpdateHelperStats& helpers = stats.update_helpers();
  shard_metric("ps_update_helper_threads", "gauge",
               "Threads that help run one large block's update.",
               helpers.threads());
  counter("ps_update_split_total",
          "Block updates cut into tasks for the helper threads.",
          helpers.split_updates());
  counter("ps_update_split_tasks_total", "The tasks of those updates.",
          helpers.tasks());
  counter("ps_update_helper_tasks_total",
          "Of those tasks, the ones a helper ran.", helpers.helper_tasks());
  counter("ps_update_helped_total",
          "Split block updates a helper thread ran a task of.",
          helpers.helped_updates());
  shard_metric("ps_update_helper_wait_seconds_total", "counter",
               "Time split updates waited, after running out of tasks to "
               "claim, for helpers still running one.",
               helpers.wait_seconds());

  Metric(out, "ps_refusals_total", "counter", "Calls refused, by gRPC code.");
  for (const auto& [code, count] : stats.refusals()) {
    absl::StrAppend(&out, "ps_refusals_total{", shard, ",code=\"", Label(code),
                    "\"} ", count, "\n");
  }

  Metric(out, "ps_update_latency_microseconds", "summary",
         "Time of one block update.");
  for (const auto& [q, value] :
       {std::pair{"0.5", stats.update_latency_p50_us()},
        {"0.9", stats.update_latency_p90_us()},
        {"0.99", stats.update_latency_p99_us()}}) {
    absl::StrAppend(&out, "ps_update_latency_microseconds{", shard,
                    ",quantile=\"", q, "\"} ", value, "\n");
  }

  shard_metric("ps_uptime_seconds", "gauge", "Seconds since the shard started.",
               stats.uptime_s());
  shard_metric("ps_restored_checkpoint", "gauge",
               "The cluster checkpoint loaded at start-up; 0 = none.",
               stats.restored_checkpoint());
  shard_metric("ps_rolled_back", "gauge",
               "1 when the shard went back to ps_restored_checkpoint while "
               "its peers kept newer state: its part of the model is older.",
               stats.rolled_back());
  shard_metric("ps_state_bytes", "gauge",
               "Bytes of values and optimizer state the variables may hold.",
               stats.state_bytes());
  shard_metric("ps_bookkeeping_bytes", "gauge",
               "Bytes of block and worker records, counted against the "
               "limit with ps_state_bytes.",
               stats.bookkeeping_bytes());
  shard_metric("ps_inflight_bytes", "gauge",
               "Bytes of messages held for calls in flight.",
               stats.inflight_bytes());
  shard_metric("ps_memory_limit_bytes", "gauge",
               "The shard's limit on ps_state_bytes; 0 = none.",
               stats.memory_limit_bytes());
  shard_metric("ps_diverged_blocks", "gauge",
               "Blocks whose values an update left not finite; they take no "
               "more pushes.",
               stats.diverged_blocks());
  shard_metric("ps_config_version", "gauge",
               "Optimizer config version; one more per change.",
               stats.config_version());

  Metric(out, "ps_variable_step", "gauge",
         "Highest step among the shard's blocks of a variable.");
  for (const auto& v : stats.variables()) {
    absl::StrAppend(&out, "ps_variable_step{", shard, ",variable=\"",
                    Label(v.name()), "\"} ", v.step(), "\n");
  }
  Metric(out, "ps_variable_learning_rate", "gauge",
         "Learning rate in force, after the schedule.");
  for (const auto& v : stats.variables()) {
    absl::StrAppend(&out, "ps_variable_learning_rate{", shard, ",variable=\"",
                    Label(v.name()), "\",rule=\"", v.rule(), "\"} ",
                    v.learning_rate(), "\n");
  }

  // Sparse tables: one sample per table, labelled with it.
  struct TableFamily {
    const char* name;
    const char* type;
    const char* help;
    uint64_t (v1::TableInfo::*value)() const;
  };
  for (const TableFamily& family : {
           TableFamily{"ps_table_rows", "gauge",
                       "Rows of a table the shard holds.",
                       &v1::TableInfo::rows},
           TableFamily{"ps_table_rows_created_total", "counter",
                       "Rows of a table created (admitted, or again after "
                       "eviction) since start.",
                       &v1::TableInfo::rows_created},
           TableFamily{"ps_table_rows_evicted_total", "counter",
                       "Rows of a table evicted since start.",
                       &v1::TableInfo::rows_evicted},
           TableFamily{"ps_table_pending_ids", "gauge",
                       "Ids counted toward a table's min_count, without a row.",
                       &v1::TableInfo::pending_ids},
           TableFamily{"ps_table_bytes", "gauge",
                       "Bytes a table's rows, slots and bookkeeping hold.",
                       &v1::TableInfo::bytes},
       }) {
    Metric(out, family.name, family.type, family.help);
    for (const auto& v : stats.variables()) {
      if (!v.has_table()) continue;
      absl::StrAppend(&out, family.name, "{", shard, ",table=\"",
                      Label(v.name()), "\"} ", (v.table().*family.value)(),
                      "\n");
    }
  }

  // Membership (sync and ssp): who takes part, and who waits for whom.
  shard_metric("ps_members", "gauge", "Workers that take part in steps now.",
               stats.members());
  counter("ps_lease_drops_total",
          "Members dropped because they neither pushed nor heartbeat for a "
          "lease timeout.",
          stats.lease_drops());
  shard_metric("ps_waiting_pushes", "gauge",
               "Calls waiting for a sync step or a staleness bound.",
               stats.waiting_pushes());
  shard_metric("ps_sync_step", "gauge",
               "Sync: the highest step a block of the shard collects.",
               stats.sync_step());
  // One family per per-worker figure, each sample labelled with the worker.
  auto per_worker = [&](absl::string_view name, absl::string_view help,
                        auto value) {
    Metric(out, name, "gauge", help);
    for (const v1::WorkerStats& w : stats.workers()) {
      if (w.state() != "member") continue;
      absl::StrAppend(&out, name, "{", shard, ",worker=\"",
                      Label(w.worker_id()), "\"} ", value(w), "\n");
    }
  };
  per_worker("ps_worker_step", "Highest step a member pushed.",
             [](const v1::WorkerStats& w) { return w.step(); });
  per_worker("ps_worker_steps_behind",
             "How many steps a member is behind the fastest one.",
             [](const v1::WorkerStats& w) { return w.steps_behind(); });
  per_worker("ps_worker_last_push_age_seconds",
             "Seconds since a member's last push; -1 before any.",
             [](const v1::WorkerStats& w) { return w.last_push_age_s(); });
  per_worker("ps_worker_waiting", "A member's calls waiting now.",
             [](const v1::WorkerStats& w) { return w.waiting(); });
  per_worker("ps_worker_waiting_seconds",
             "How long a member's oldest waiting call has waited.",
             [](const v1::WorkerStats& w) { return w.waiting_s(); });
  Metric(out, "ps_worker_loss", "gauge",
         "The loss a member's last push reported.");
  for (const v1::WorkerStats& w : stats.workers()) {
    if (w.state() != "member" || !w.has_loss()) continue;
    absl::StrAppend(&out, "ps_worker_loss{", shard, ",worker=\"",
                    Label(w.worker_id()), "\"} ", w.loss(), "\n");
  }
  return out;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    StatsFn stats, const std::string& host, int port) {
  auto server = std::make_unique<HttpMetricsServer>(std::move(stats));
  if (absl::Status status = server->Listen(host, port); !status.ok()) {
    return status;
  }
  return server;
}

}  // namespace ps
