// /metrics: the shard's stats in Prometheus text format, over plain HTTP.
//
// Thread safety: Start and Stop from one thread; serving runs on its own.
#ifndef PS_SERVER_METRICS_H_
#define PS_SERVER_METRICS_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps {

// The stats in Prometheus text exposition format (version 0.0.4).
std::string FormatPrometheus(const v1::Stats& stats);

class MetricsServer {
 public:
  // The shard's stats, as GetStats answers them.
  using StatsFn = std::function<v1::Stats()>;

  // Serves GET /metrics on host:port (0 picks a free port) from `stats`,
  // called on each request.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      StatsFn stats, const std::string& host, int port);

  virtual ~MetricsServer() = default;
  virtual int port() const = 0;
  // Stops serving; also done by the destructor.
  virtual void Stop() = 0;
};

}  // namespace ps

#endif  // PS_SERVER_METRICS_H_
