#include "client/psctl/commands.h"

#include <fnmatch.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/psctl/optimizer_flags.h"
#include "client/psctl/table.h"
#include "common/optimizer_config.h"

namespace ps::psctl {
namespace {

using nlohmann::json;

template <typename Response>
struct Answer {
  grpc::Status status;
  Response response;
};

// Calls every shard at once: call(shard, context, response) -> status.
template <typename Response, typename Call>
std::vector<Answer<Response>> CallAll(const ShardSet& shards, Call call) {
  return shards.ForEach<Answer<Response>>([&](const Shard& shard) {
    Answer<Response> answer;
    auto context = shards.NewContext();
    answer.status = call(shard, context.get(), &answer.response);
    return answer;
  });
}

std::string ShardName(const Shard& shard) {
  return absl::StrCat(shard.index, " (", shard.address, ")");
}

// One line on stderr naming the shards whose call failed; the exit status.
template <typename Response>
int ReportFailures(const ShardSet& shards,
                   const std::vector<Answer<Response>>& answers,
                   const std::string& what, const Output& output) {
  std::vector<std::string> failed;
  for (int i = 0; i < shards.size(); ++i) {
    if (!answers[i].status.ok()) {
      failed.push_back(absl::StrCat(ShardName(shards.shard(i)), ": ",
                                    DescribeStatus(answers[i].status)));
    }
  }
  if (failed.empty()) return kExitOk;
  *output.err << "psctl: " << what << " failed on " << failed.size() << " of "
              << shards.size() << " shards: " << absl::StrJoin(failed, "; ")
              << "\n";
  return kExitShardFailed;
}

std::vector<int> FailedShards(const std::vector<grpc::Status>& statuses) {
  std::vector<int> failed;
  for (size_t i = 0; i < statuses.size(); ++i) {
    if (!statuses[i].ok()) failed.push_back(static_cast<int>(i));
  }
  return failed;
}

template <typename Response>
std::vector<grpc::Status> Statuses(
    const std::vector<Answer<Response>>& answers) {
  std::vector<grpc::Status> statuses;
  for (const auto& a : answers) statuses.push_back(a.status);
  return statuses;
}

json ShardJson(const Shard& shard, const grpc::Status& status) {
  json j;
  j["shard"] = shard.index;
  j["address"] = shard.address;
  j["ok"] = status.ok();
  j["code"] = CodeName(status.error_code());
  if (!status.ok()) j["message"] = status.error_message();
  return j;
}

// The config as proto3 JSON (field names as in the .proto), without
// config_version, which psctl reports on its own.
json ConfigJson(v1::OptimizerConfig config) {
  config.clear_config_version();
  std::string text;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(config, &text, options)
           .ok()) {
    return json::object();
  }
  return json::parse(text, nullptr, /*allow_exceptions=*/false);
}

std::string ConfigText(v1::OptimizerConfig config) {
  config.clear_config_version();
  return OptimizerConfigToText(config);
}

void PrintJson(const Output& output, const json& j) {
  *output.out << j.dump(2) << "\n";
}

std::string Number(double value) { return absl::StrFormat("%.6g", value); }

std::string Mib(uint64_t bytes) {
  return absl::StrFormat("%.1f", static_cast<double>(bytes) / (1 << 20));
}

std::string Shape(const v1::VariableInfo& info) {
  return absl::StrCat("[", absl::StrJoin(info.shape(), ","), "]");
}

std::string ErrorCell(const grpc::Status& status) {
  return DescribeStatus(status);
}

// Whether --var holds a glob (fnmatch(3) without flags: '*' and '?' match
// any character, '/' and '.' included; [...] a set).
bool IsGlob(const std::string& pattern) {
  return pattern.find_first_of("*?[") != std::string::npos;
}

bool Matches(const std::string& pattern, const std::string& name) {
  return fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

// The names, in order, of the variables and sparse tables on any shard
// that `pattern` matches, into *names. A shard that does not answer, or a
// pattern that matches nothing, is said on stderr (nothing is changed) and
// returns its exit status.
int MatchNames(const ShardSet& shards, const std::string& pattern,
               const std::string& command, const Output& output,
               std::vector<std::string>* names) {
  auto lists = CallAll<v1::ListVariablesResponse>(
      shards,
      [](const Shard& s, grpc::ClientContext* c, v1::ListVariablesResponse* r) {
        return s.admin->ListVariables(c, v1::ListVariablesRequest(), r);
      });
  if (const int status = ReportFailures(
          shards, lists,
          absl::StrCat(command,
                       ": listing the variables (nothing was changed)"),
          output);
      status != kExitOk) {
    return status;
  }
  std::set<std::string> matched;
  for (const auto& list : lists) {
    for (const v1::VariableInfo& info : list.response.variables()) {
      if (Matches(pattern, info.name())) matched.insert(info.name());
    }
  }
  if (matched.empty()) {
    *output.err << "psctl: " << command << ": --var '" << pattern
                << "' matches no variable or table (psctl vars lists them; "
                   "nothing was changed)\n";
    return kExitUsage;
  }
  names->assign(matched.begin(), matched.end());
  return kExitOk;
}

// "--servers: not one cluster: ..." with what to do about it.
std::string LayoutProblem(const absl::Status& problem) {
  return absl::StrCat("--servers: ", problem.message(),
                      "; list every shard of one cluster once, in any order");
}

}  // namespace

int RunInfo(const ShardSet& shards, const Output& output) {
  std::vector<Answer<v1::ClusterInfo>> infos;
  if (shards.layout_read()) {
    for (const ClusterInfoAnswer& answer : shards.cluster_infos()) {
      infos.push_back({answer.status, answer.info});
    }
  } else {
    infos = CallAll<v1::ClusterInfo>(
        shards, [](const Shard& s, grpc::ClientContext* c, v1::ClusterInfo* r) {
          return s.parameters->GetClusterInfo(c, v1::GetClusterInfoRequest(),
                                              r);
        });
  }
  auto configs = CallAll<v1::OptimizerConfig>(
      shards,
      [](const Shard& s, grpc::ClientContext* c, v1::OptimizerConfig* r) {
        return s.admin->GetOptimizer(c, v1::GetOptimizerRequest(), r);
      });

  std::vector<std::string> problems;
  if (!shards.layout_problem().ok()) {
    problems.push_back(LayoutProblem(shards.layout_problem()));
  }

  if (output.json) {
    json j;
    j["shards"] = json::array();
    for (int i = 0; i < shards.size(); ++i) {
      const grpc::Status& status =
          infos[i].status.ok() ? configs[i].status : infos[i].status;
      json s = ShardJson(shards.shard(i), status);
      if (infos[i].status.ok()) {
        const v1::ClusterInfo& info = infos[i].response;
        s["shard_index"] = info.shard_index();
        s["num_shards"] = info.num_shards();
        s["block_size"] = info.block_size();
        s["consistency"] = info.consistency();
        s["num_workers"] = info.num_workers();
        s["quorum"] = info.quorum();
      }
      if (configs[i].status.ok()) {
        s["config_version"] = configs[i].response.config_version();
        s["default_optimizer"] = ConfigJson(configs[i].response);
      }
      j["shards"].push_back(s);
    }
    j["problems"] = problems;
    std::vector<grpc::Status> statuses;
    for (int i = 0; i < shards.size(); ++i) {
      statuses.push_back(infos[i].status.ok() ? configs[i].status
                                              : infos[i].status);
    }
    j["failed_shards"] = FailedShards(statuses);
    j["ok"] = problems.empty() && FailedShards(statuses).empty();
    PrintJson(output, j);
  } else {
    Table table({"SHARD", "ADDRESS", "INDEX", "SHARDS", "BLOCK SIZE",
                 "CONSISTENCY", "WORKERS", "QUORUM", "CONFIG VERSION",
                 "DEFAULT OPTIMIZER"});
    for (int i = 0; i < shards.size(); ++i) {
      const Shard& shard = shards.shard(i);
      if (!infos[i].status.ok()) {
        table.AddRow({absl::StrCat(i), shard.address, "-", "-", "-", "-", "-",
                      "-", "-", ErrorCell(infos[i].status)});
        continue;
      }
      const v1::ClusterInfo& info = infos[i].response;
      const bool sync = info.consistency() == "sync";
      table.AddRow(
          {absl::StrCat(i), shard.address, absl::StrCat(info.shard_index()),
           absl::StrCat(info.num_shards()), absl::StrCat(info.block_size()),
           info.consistency(), sync ? absl::StrCat(info.num_workers()) : "-",
           sync ? absl::StrCat(info.quorum()) : "-",
           configs[i].status.ok()
               ? absl::StrCat(configs[i].response.config_version())
               : "-",
           configs[i].status.ok() ? ConfigText(configs[i].response)
                                  : ErrorCell(configs[i].status)});
    }
    table.Print(*output.out);
  }
  int status = ReportFailures(shards, infos, "info", output);
  if (status == kExitOk) {
    status = ReportFailures(shards, configs, "info (GetOptimizer)", output);
  }
  for (const std::string& problem : problems) {
    *output.err << "psctl: " << problem << "\n";
  }
  if (!problems.empty()) status = kExitShardFailed;
  return status;
}

int RunVars(const ShardSet& shards, const std::string& pattern,
            const Output& output) {
  auto lists = CallAll<v1::ListVariablesResponse>(
      shards,
      [](const Shard& s, grpc::ClientContext* c, v1::ListVariablesResponse* r) {
        return s.admin->ListVariables(c, v1::ListVariablesRequest(), r);
      });

  // Merged per variable, in name order.
  struct Merged {
    const v1::VariableInfo* first = nullptr;
    uint64_t blocks = 0;
    uint64_t min_step = UINT64_MAX;
    uint64_t max_step = 0;
    bool optimizers_differ = false;
    std::vector<std::pair<int, const v1::VariableInfo*>> per_shard;
  };
  std::map<std::string, Merged> merged;
  // Sparse tables, summed over the shards (each holds its rows).
  struct MergedTable {
    const v1::VariableInfo* first = nullptr;
    v1::TableInfo sum;
    uint64_t min_step = UINT64_MAX;
    uint64_t max_step = 0;
  };
  std::map<std::string, MergedTable> tables;
  for (int i = 0; i < shards.size(); ++i) {
    if (!lists[i].status.ok()) continue;
    for (const v1::VariableInfo& info : lists[i].response.variables()) {
      if (!pattern.empty() && !Matches(pattern, info.name())) continue;
      if (info.has_table()) {
        MergedTable& t = tables[info.name()];
        if (t.first == nullptr) t.first = &info;
        const v1::TableInfo& part = info.table();
        t.sum.set_rows(t.sum.rows() + part.rows());
        t.sum.set_rows_created(t.sum.rows_created() + part.rows_created());
        t.sum.set_rows_evicted(t.sum.rows_evicted() + part.rows_evicted());
        t.sum.set_pending_ids(t.sum.pending_ids() + part.pending_ids());
        t.sum.set_bytes(t.sum.bytes() + part.bytes());
        t.min_step = std::min(t.min_step, part.step());
        t.max_step = std::max(t.max_step, part.step());
        continue;
      }
      Merged& m = merged[info.name()];
      if (m.first == nullptr) {
        m.first = &info;
      } else if (info.optimizer().SerializeAsString() !=
                     m.first->optimizer().SerializeAsString() ||
                 info.optimizer_override() != m.first->optimizer_override()) {
        m.optimizers_differ = true;
      }
      m.blocks += info.blocks_size();
      for (uint64_t v : info.versions()) {
        m.min_step = std::min(m.min_step, v);
        m.max_step = std::max(m.max_step, v);
      }
      m.per_shard.emplace_back(i, &info);
    }
  }
  for (auto& [name, m] : merged) {
    if (m.min_step == UINT64_MAX) m.min_step = 0;
  }
  if (!pattern.empty() && merged.empty() && tables.empty() &&
      FailedShards(Statuses(lists)).empty()) {
    *output.err << "psctl: vars: --var '" << pattern
                << "' matches no variable or table\n";
    return kExitUsage;
  }

  if (output.json) {
    json j;
    j["variables"] = json::array();
    for (const auto& [name, m] : merged) {
      json v;
      v["name"] = name;
      v["shape"] = std::vector<uint64_t>(m.first->shape().begin(),
                                         m.first->shape().end());
      v["size"] = m.first->size();
      v["blocks"] = m.blocks;
      v["min_step"] = m.min_step;
      v["max_step"] = m.max_step;
      v["optimizers_differ"] = m.optimizers_differ;
      v["rule"] = RuleOf(m.first->optimizer());
      v["optimizer_override"] = m.first->optimizer_override();
      v["optimizer"] = ConfigJson(m.first->optimizer());
      v["shards"] = json::array();
      for (const auto& [i, info] : m.per_shard) {
        json s;
        s["shard"] = i;
        s["blocks"] =
            std::vector<uint64_t>(info->blocks().begin(), info->blocks().end());
        s["versions"] = std::vector<uint64_t>(info->versions().begin(),
                                              info->versions().end());
        s["rule"] = RuleOf(info->optimizer());
        s["optimizer_override"] = info->optimizer_override();
        s["optimizer"] = ConfigJson(info->optimizer());
        v["shards"].push_back(s);
      }
      j["variables"].push_back(v);
    }
    j["tables"] = json::array();
    for (const auto& [name, t] : tables) {
      const v1::TableInfo& info = t.first->table();
      json v;
      v["name"] = name;
      v["dim"] = info.dim();
      v["rows"] = t.sum.rows();
      v["rows_created"] = t.sum.rows_created();
      v["rows_evicted"] = t.sum.rows_evicted();
      v["pending_ids"] = t.sum.pending_ids();
      v["bytes"] = t.sum.bytes();
      v["min_step"] = t.min_step == UINT64_MAX ? 0 : t.min_step;
      v["max_step"] = t.max_step;
      v["max_rows_per_shard"] = info.policy().max_rows();
      v["evict_after_steps"] = info.policy().evict_after_steps();
      v["min_count"] = info.policy().min_count();
      v["rule"] = RuleOf(t.first->optimizer());
      v["optimizer_override"] = t.first->optimizer_override();
      v["optimizer"] = ConfigJson(t.first->optimizer());
      j["tables"].push_back(v);
    }
    j["shards"] = json::array();
    for (int i = 0; i < shards.size(); ++i) {
      json s = ShardJson(shards.shard(i), lists[i].status);
      if (lists[i].status.ok()) {
        s["config_version"] = lists[i].response.config_version();
      }
      j["shards"].push_back(s);
    }
    j["failed_shards"] = FailedShards(Statuses(lists));
    j["ok"] = FailedShards(Statuses(lists)).empty();
    PrintJson(output, j);
  } else {
    Table table({"VARIABLE", "SHAPE", "SIZE", "BLOCKS", "STEP", "RULE",
                 "OVERRIDE", "OPTIMIZER"});
    for (const auto& [name, m] : merged) {
      const std::string steps =
          m.min_step == m.max_step ? absl::StrCat(m.min_step)
                                   : absl::StrCat(m.min_step, "..", m.max_step);
      table.AddRow({name, Shape(*m.first), absl::StrCat(m.first->size()),
                    absl::StrCat(m.blocks), steps,
                    m.optimizers_differ ? "differs by shard"
                                        : RuleOf(m.first->optimizer()),
                    m.first->optimizer_override() ? "yes" : "no",
                    m.optimizers_differ ? "differs by shard (see --json)"
                                        : ConfigText(m.first->optimizer())});
    }
    table.Print(*output.out);
    if (!tables.empty()) {
      Table rows({"TABLE", "DIM", "ROWS", "CREATED", "EVICTED", "PENDING",
                  "BYTES", "STEP", "RULE", "OPTIMIZER"});
      for (const auto& [name, t] : tables) {
        const uint64_t low = t.min_step == UINT64_MAX ? 0 : t.min_step;
        rows.AddRow(
            {name, absl::StrCat(t.first->table().dim()),
             absl::StrCat(t.sum.rows()), absl::StrCat(t.sum.rows_created()),
             absl::StrCat(t.sum.rows_evicted()),
             absl::StrCat(t.sum.pending_ids()), absl::StrCat(t.sum.bytes()),
             low == t.max_step ? absl::StrCat(low)
                               : absl::StrCat(low, "..", t.max_step),
             RuleOf(t.first->optimizer()), ConfigText(t.first->optimizer())});
      }
      *output.out << "\n";
      rows.Print(*output.out);
    }
  }
  return ReportFailures(shards, lists, "vars", output);
}

namespace {

// The optimizer of `variable` on every shard: printed, or with --json added
// to *collected when that is not null (a glob's many variables).
int OptimizerGetOne(const ShardSet& shards, const std::string& variable,
                    const Output& output, json* collected) {
  v1::GetOptimizerRequest request;
  request.set_variable(variable);
  auto configs = CallAll<v1::OptimizerConfig>(
      shards,
      [&](const Shard& s, grpc::ClientContext* c, v1::OptimizerConfig* r) {
        return s.admin->GetOptimizer(c, request, r);
      });
  bool consistent = true;
  const v1::OptimizerConfig* first = nullptr;
  for (const auto& answer : configs) {
    if (!answer.status.ok()) continue;
    v1::OptimizerConfig a = answer.response;
    a.clear_config_version();
    if (first == nullptr) {
      first = &answer.response;
    } else {
      v1::OptimizerConfig b = *first;
      b.clear_config_version();
      if (a.SerializeAsString() != b.SerializeAsString()) consistent = false;
    }
  }
  if (output.json) {
    json j;
    j["variable"] = variable;
    j["consistent"] = consistent;
    j["shards"] = json::array();
    for (int i = 0; i < shards.size(); ++i) {
      json s = ShardJson(shards.shard(i), configs[i].status);
      if (configs[i].status.ok()) {
        s["config_version"] = configs[i].response.config_version();
        s["rule"] = RuleOf(configs[i].response);
        s["config"] = ConfigJson(configs[i].response);
      }
      j["shards"].push_back(s);
    }
    j["failed_shards"] = FailedShards(Statuses(configs));
    j["ok"] = FailedShards(Statuses(configs)).empty();
    if (collected != nullptr) {
      collected->push_back(j);
    } else {
      PrintJson(output, j);
    }
  } else {
    if (collected != nullptr) *output.out << "variable '" << variable << "':\n";
    Table table({"SHARD", "ADDRESS", "CONFIG VERSION", "RULE", "CONFIG"});
    for (int i = 0; i < shards.size(); ++i) {
      const auto& answer = configs[i];
      if (!answer.status.ok()) {
        table.AddRow({absl::StrCat(i), shards.shard(i).address, "-", "-",
                      ErrorCell(answer.status)});
      } else {
        table.AddRow({absl::StrCat(i), shards.shard(i).address,
                      absl::StrCat(answer.response.config_version()),
                      RuleOf(answer.response), ConfigText(answer.response)});
      }
    }
    table.Print(*output.out);
    if (!consistent) {
      *output.out << "note: the shards disagree on this optimizer\n";
    }
  }
  return ReportFailures(
      shards, configs,
      absl::StrCat("optimizer get",
                   variable.empty() ? std::string() : " --var=" + variable),
      output);
}

}  // namespace

int RunOptimizerGet(const ShardSet& shards, const std::string& variable,
                    const Output& output) {
  if (!IsGlob(variable)) {
    return OptimizerGetOne(shards, variable, output, nullptr);
  }
  std::vector<std::string> names;
  const int matched =
      MatchNames(shards, variable, "optimizer get", output, &names);
  if (matched != kExitOk) return matched;
  json all = json::array();
  int status = kExitOk;
  for (size_t v = 0; v < names.size(); ++v) {
    if (v > 0 && !output.json) *output.out << "\n";
    const int one = OptimizerGetOne(shards, names[v], output, &all);
    if (status == kExitOk) status = one;
  }
  if (output.json) {
    json j;
    j["variable"] = variable;
    j["variables"] = all;
    bool ok = true;
    for (const json& one : all) ok = ok && one["ok"].get<bool>();
    j["ok"] = ok;
    PrintJson(output, j);
  }
  return status;
}

// Reports a config change that some shard refused before any shard changed:
// the error line, and with --json the shards' answers (sent: false).
template <typename Response>
int ReportNotSent(const ShardSet& shards, const ConfigChangeRequest& request,
                  const std::vector<Answer<Response>>& answers,
                  const std::string& stage, const Output& output) {
  const int status = ReportFailures(
      shards, answers,
      absl::StrCat(request.command, ": ", stage, " (nothing was changed)"),
      output);
  if (status != kExitOk && output.json) {
    json j;
    j["command"] = request.command;
    j["variable"] = request.variable;
    j["sent"] = false;
    j["shards"] = json::array();
    for (int i = 0; i < shards.size(); ++i) {
      j["shards"].push_back(ShardJson(shards.shard(i), answers[i].status));
    }
    j["failed_shards"] = FailedShards(Statuses(answers));
    j["ok"] = false;
    PrintJson(output, j);
  }
  return status;
}

int RunConfigChange(const ShardSet& shards, const ConfigChangeRequest& request,
                    const Output& output) {
  // The variables it changes: one (or the default), or those --var matches.
  const bool glob = IsGlob(request.variable);
  std::vector<std::string> variables = {request.variable};
  if (glob) {
    const int status = MatchNames(shards, request.variable, request.command,
                                  output, &variables);
    if (status != kExitOk) return status;
  }
  const auto target = [&](const std::string& variable) {
    return variable.empty() ? std::string("the default optimizer")
                            : absl::StrCat("variable '", variable, "'");
  };
  const size_t n = variables.size();

  // 1. Every shard's current config of each; nothing is sent unless all
  //    answer.
  std::vector<std::vector<v1::OptimizerConfig>> configs(n);
  for (size_t v = 0; v < n; ++v) {
    v1::GetOptimizerRequest get;
    get.set_variable(variables[v]);
    auto current = CallAll<v1::OptimizerConfig>(
        shards,
        [&](const Shard& s, grpc::ClientContext* c, v1::OptimizerConfig* r) {
          return s.admin->GetOptimizer(c, get, r);
        });
    if (ReportNotSent(shards, request, current,
                      absl::StrCat("reading the optimizer in force",
                                   glob ? " of '" + variables[v] + "'" : ""),
                      output) != kExitOk) {
      return kExitShardFailed;
    }
    // 2. The new configs, validated before anything is sent.
    for (int i = 0; i < shards.size(); ++i) {
      v1::OptimizerConfig now = current[i].response;
      now.clear_config_version();
      absl::StatusOr<v1::OptimizerConfig> next = request.change(now);
      if (next.ok()) {
        next->clear_config_version();
        if (absl::Status valid = ValidateOptimizerConfig(*next); !valid.ok()) {
          next = valid;
        }
      }
      if (!next.ok()) {
        *output.err << "psctl: " << request.command << ": invalid config for "
                    << target(variables[v]) << ": "
                    << std::string(next.status().message())
                    << " (nothing was sent)\n";
        return kExitUsage;
      }
      configs[v].push_back(*std::move(next));
    }
  }

  // 3. Every shard checks each change (its variables, its memory limit)
  //    without making it; 4. if all accept, every shard makes them at once.
  //    A shard that refuses in 3 thus leaves every shard as it was.
  auto set_all = [&](size_t v, bool validate_only) {
    return shards.ForEach<Answer<v1::SetOptimizerResponse>>(
        [&](const Shard& shard) {
          v1::SetOptimizerRequest set;
          set.set_variable(variables[v]);
          *set.mutable_config() = configs[v][shard.index];
          set.set_reset_state(request.reset_state);
          set.set_validate_only(validate_only);
          Answer<v1::SetOptimizerResponse> answer;
          auto context = shards.NewContext();
          answer.status =
              shard.admin->SetOptimizer(context.get(), set, &answer.response);
          return answer;
        });
  };
  for (size_t v = 0; v < n; ++v) {
    if (ReportNotSent(shards, request, set_all(v, /*validate_only=*/true),
                      absl::StrCat("checking the change",
                                   glob ? " of '" + variables[v] + "'" : "",
                                   " on every shard"),
                      output) != kExitOk) {
      return kExitShardFailed;
    }
  }
  std::vector<std::vector<Answer<v1::SetOptimizerResponse>>> answers;
  for (size_t v = 0; v < n; ++v) {
    answers.push_back(set_all(v, /*validate_only=*/false));
  }

  // A change of the default: the variables that kept their own.
  uint64_t kept = 0;
  if (request.variable.empty()) {
    for (const auto& answer : answers[0]) {
      if (answer.status.ok()) {
        kept = std::max(kept, answer.response.kept_overrides());
      }
    }
  }
  std::vector<grpc::Status> statuses;
  for (const auto& per_variable : answers) {
    for (const auto& answer : per_variable) statuses.push_back(answer.status);
  }
  const bool all_ok = FailedShards(statuses).empty();

  auto shard_json = [&](size_t v, int i) {
    const auto& answer = answers[v][i];
    json s = ShardJson(shards.shard(i), answer.status);
    s["config"] = ConfigJson(configs[v][i]);
    if (answer.status.ok()) {
      s["previous_config_version"] = answer.response.previous_config_version();
      s["config_version"] = answer.response.config_version();
    }
    return s;
  };
  if (output.json) {
    json j;
    j["command"] = request.command;
    j["variable"] = request.variable;
    j["reset_state"] = request.reset_state;
    j["sent"] = true;
    if (glob) {
      j["variables"] = variables;
      j["changes"] = json::array();
      for (size_t v = 0; v < n; ++v) {
        json change;
        change["variable"] = variables[v];
        change["shards"] = json::array();
        for (int i = 0; i < shards.size(); ++i) {
          change["shards"].push_back(shard_json(v, i));
        }
        j["changes"].push_back(change);
      }
    } else {
      j["shards"] = json::array();
      for (int i = 0; i < shards.size(); ++i) {
        j["shards"].push_back(shard_json(0, i));
      }
      j["failed_shards"] = FailedShards(Statuses(answers[0]));
    }
    if (request.variable.empty()) j["kept_overrides"] = kept;
    j["ok"] = all_ok;
    PrintJson(output, j);
  } else {
    *output.out << request.command << " on "
                << (glob ? absl::StrCat(n, " variables matching '",
                                        request.variable, "'")
                         : target(request.variable))
                << (request.reset_state ? ", with fresh optimizer state" : "")
                << ":\n";
    std::vector<std::string> header = {"SHARD", "ADDRESS", "ANSWER",
                                       "CONFIG VERSION", "CONFIG"};
    if (glob) header.insert(header.begin(), "VARIABLE");
    Table table(header);
    for (size_t v = 0; v < n; ++v) {
      for (int i = 0; i < shards.size(); ++i) {
        const auto& answer = answers[v][i];
        std::vector<std::string> row = {
            absl::StrCat(i), shards.shard(i).address, ErrorCell(answer.status),
            answer.status.ok()
                ? absl::StrCat(answer.response.previous_config_version(),
                               " -> ", answer.response.config_version())
                : "-",
            ConfigText(configs[v][i])};
        if (glob) row.insert(row.begin(), variables[v]);
        table.AddRow(row);
      }
    }
    table.Print(*output.out);
    if (kept > 0) {
      *output.out << "note: " << kept
                  << (kept == 1 ? " variable keeps its own optimizer"
                                : " variables keep their own optimizer")
                  << " (an override) and did not change; to change every "
                     "variable, run the command again with --var '*' "
                     "(psctl vars shows which have an override)\n";
    }
  }
  int status = kExitOk;
  for (size_t v = 0; v < n && status == kExitOk; ++v) {
    status = ReportFailures(
        shards, answers[v],
        glob ? absl::StrCat(request.command, " --var=", variables[v])
             : request.command,
        output);
  }
  return status;
}

int RunDelete(const ShardSet& shards, const std::string& pattern,
              const Output& output) {
  const std::string command = "vars delete";
  std::vector<std::string> variables;
  const int matched = MatchNames(shards, pattern, command, output, &variables);
  if (matched != kExitOk) return matched;
  std::vector<std::vector<Answer<v1::DeleteVariableResponse>>> answers;
  for (const std::string& name : variables) {
    v1::DeleteVariableRequest request;
    request.set_name(name);
    answers.push_back(CallAll<v1::DeleteVariableResponse>(
        shards, [&](const Shard& s, grpc::ClientContext* c,
                    v1::DeleteVariableResponse* r) {
          return s.parameters->DeleteVariable(c, request, r);
        }));
  }
  std::vector<grpc::Status> statuses;
  for (const auto& per_variable : answers) {
    for (const auto& answer : per_variable) statuses.push_back(answer.status);
  }
  if (output.json) {
    json j;
    j["command"] = command;
    j["variable"] = pattern;
    j["variables"] = json::array();
    for (size_t v = 0; v < variables.size(); ++v) {
      json d;
      d["variable"] = variables[v];
      d["shards"] = json::array();
      for (int i = 0; i < shards.size(); ++i) {
        json s = ShardJson(shards.shard(i), answers[v][i].status);
        if (answers[v][i].status.ok()) {
          s["deleted"] = answers[v][i].response.deleted();
        }
        d["shards"].push_back(s);
      }
      j["variables"].push_back(d);
    }
    j["ok"] = FailedShards(statuses).empty();
    PrintJson(output, j);
  } else {
    *output.out << command << ": " << variables.size()
                << (variables.size() == 1 ? " variable or table"
                                          : " variables and tables")
                << " matching '" << pattern << "':\n";
    Table table({"VARIABLE", "SHARD", "ADDRESS", "ANSWER", "DELETED"});
    for (size_t v = 0; v < variables.size(); ++v) {
      for (int i = 0; i < shards.size(); ++i) {
        const auto& answer = answers[v][i];
        table.AddRow({variables[v], absl::StrCat(i), shards.shard(i).address,
                      ErrorCell(answer.status),
                      answer.status.ok()
                          ? (answer.response.deleted() ? "yes" : "no (absent)")
                          : "-"});
      }
    }
    table.Print(*output.out);
  }
  int status = kExitOk;
  for (size_t v = 0; v < variables.size() && status == kExitOk; ++v) {
    status =
        ReportFailures(shards, answers[v],
                       absl::StrCat(command, " --var=", variables[v]), output);
  }
  return status;
}

namespace {

// One line per shard of a sync or ssp job: its members and, when pushes
// wait, the members they wait for (those that are not waiting themselves,
// slowest first): a stalled job names its culprit.
std::string StallSummary(int shard, const v1::Stats& st) {
  std::string line = absl::StrCat("shard ", shard, " (", st.consistency());
  if (st.consistency() == "sync")
    absl::StrAppend(&line, ", step ", st.sync_step());
  absl::StrAppend(&line, "): ", st.members(), " members, ", st.lease_drops(),
                  " dropped by lease");
  if (st.waiting_pushes() == 0) return line;
  double longest = 0;
  std::vector<const v1::WorkerStats*> holding;
  for (const v1::WorkerStats& w : st.workers()) {
    longest = std::max(longest, w.waiting_s());
    if (w.state() == "member" && w.waiting() == 0) holding.push_back(&w);
  }
  std::sort(holding.begin(), holding.end(), [](const auto* a, const auto* b) {
    return a->steps_behind() > b->steps_behind();
  });
  absl::StrAppend(&line, "; ", st.waiting_pushes(), " calls waiting (longest ",
                  absl::StrFormat("%.1f", longest), " s)");
  if (holding.empty()) return line;
  std::vector<std::string> names;
  for (const v1::WorkerStats* w : holding) {
    names.push_back(absl::StrCat(
        w->worker_id(), " (step ", w->pushed() ? absl::StrCat(w->step()) : "-",
        ", seen ", absl::StrFormat("%.1f", w->last_seen_age_s()), " s ago)"));
  }
  absl::StrAppend(&line, " for: ", absl::StrJoin(names, ", "));
  return line;
}

int StatsRound(const ShardSet& shards, const StatsOptions& options,
               const Output& output) {
  auto stats = CallAll<v1::Stats>(
      shards, [](const Shard& s, grpc::ClientContext* c, v1::Stats* r) {
        return s.admin->GetStats(c, v1::GetStatsRequest(), r);
      });
  const std::time_t now = std::time(nullptr);
  if (output.json) {
    json j;
    j["time"] = static_cast<int64_t>(now);
    j["shards"] = json::array();
    for (int i = 0; i < shards.size(); ++i) {
      json s = ShardJson(shards.shard(i), stats[i].status);
      if (stats[i].status.ok()) {
        const v1::Stats& st = stats[i].response;
        s["shard_index"] = st.shard_index();
        s["pushes"] = st.pushes();
        s["pulls"] = st.pulls();
        s["updates"] = st.updates();
        s["bytes_in"] = st.bytes_in();
        s["bytes_out"] = st.bytes_out();
        json refusals = json::object();
        for (const auto& [code, count] : st.refusals()) refusals[code] = count;
        s["refusals"] = refusals;
        s["update_latency_p50_us"] = st.update_latency_p50_us();
        s["update_latency_p90_us"] = st.update_latency_p90_us();
        s["update_latency_p99_us"] = st.update_latency_p99_us();
        s["uptime_s"] = st.uptime_s();
        s["config_version"] = st.config_version();
        s["restored_checkpoint"] = st.restored_checkpoint();
        s["rolled_back"] = st.rolled_back();
        s["state_bytes"] = st.state_bytes();
        s["memory_limit_bytes"] = st.memory_limit_bytes();
        s["variables"] = json::array();
        for (const v1::VariableStats& v : st.variables()) {
          s["variables"].push_back({{"name", v.name()},
                                    {"step", v.step()},
                                    {"learning_rate", v.learning_rate()},
                                    {"rule", v.rule()}});
        }
        s["consistency"] = st.consistency();
        s["sync_step"] = st.sync_step();
        s["members"] = st.members();
        s["lease_drops"] = st.lease_drops();
        s["waiting_pushes"] = st.waiting_pushes();
        s["workers"] = json::array();
        for (const v1::WorkerStats& w : st.workers()) {
          json worker = {{"worker_id", w.worker_id()},
                         {"state", w.state()},
                         {"step", w.step()},
                         {"pushed", w.pushed()},
                         {"steps_behind", w.steps_behind()},
                         {"last_push_age_s", w.last_push_age_s()},
                         {"last_seen_age_s", w.last_seen_age_s()},
                         {"waiting", w.waiting()},
                         {"waiting_s", w.waiting_s()},
                         {"pushes", w.pushes()}};
          if (w.has_loss()) worker["loss"] = w.loss();
          s["workers"].push_back(worker);
        }
      }
      j["shards"].push_back(s);
    }
    j["failed_shards"] = FailedShards(Statuses(stats));
    j["ok"] = FailedShards(Statuses(stats)).empty();
    if (options.watch) {
      *output.out << j.dump() << "\n";  // one line per round
    } else {
      PrintJson(output, j);
    }
  } else {
    if (options.watch) {
      char stamp[32];
      std::strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S",
                    std::localtime(&now));
      *output.out << "== " << stamp << " ==\n";
    }
    Table table({"SHARD", "ADDRESS", "PUSHES", "PULLS", "UPDATES", "BYTES IN",
                 "BYTES OUT", "REFUSALS", "P50 US", "P90 US", "P99 US",
                 "UPTIME S", "CONFIG VERSION", "RESTORED",
                 "STATE MIB / LIMIT"});
    Table variables({"VARIABLE", "SHARD", "STEP", "RULE", "LEARNING RATE"});
    Table workers({"WORKER", "SHARD", "STATE", "STEP", "BEHIND", "LAST PUSH S",
                   "SEEN S", "WAITING", "LOSS", "PUSHES"});
    std::vector<std::string> summaries;
    for (int i = 0; i < shards.size(); ++i) {
      const std::string address = shards.shard(i).address;
      if (!stats[i].status.ok()) {
        table.AddRow({absl::StrCat(i), address, "-", "-", "-", "-", "-", "-",
                      "-", "-", "-", "-", "-", "-",
                      ErrorCell(stats[i].status)});
        continue;
      }
      const v1::Stats& st = stats[i].response;
      std::vector<std::string> refusals;
      for (const auto& [code, count] : st.refusals()) {
        refusals.push_back(absl::StrCat(code, "=", count));
      }
      std::sort(refusals.begin(), refusals.end());
      table.AddRow(
          {absl::StrCat(i), address, absl::StrCat(st.pushes()),
           absl::StrCat(st.pulls()), absl::StrCat(st.updates()),
           absl::StrCat(st.bytes_in()), absl::StrCat(st.bytes_out()),
           refusals.empty() ? "0" : absl::StrJoin(refusals, ","),
           Number(st.update_latency_p50_us()),
           Number(st.update_latency_p90_us()),
           Number(st.update_latency_p99_us()),
           absl::StrFormat("%.1f", st.uptime_s()),
           absl::StrCat(st.config_version()),
           st.restored_checkpoint() == 0
               ? "-"
               : absl::StrCat(st.restored_checkpoint(),
                              st.rolled_back() != 0 ? " (ROLLED BACK)" : ""),
           absl::StrCat(Mib(st.state_bytes()), " / ",
                        st.memory_limit_bytes() == 0
                            ? "none"
                            : Mib(st.memory_limit_bytes()))});
      for (const v1::VariableStats& v : st.variables()) {
        variables.AddRow({v.name(), absl::StrCat(i), absl::StrCat(v.step()),
                          v.rule(), Number(v.learning_rate())});
      }
      for (const v1::WorkerStats& w : st.workers()) {
        workers.AddRow(
            {w.worker_id(), absl::StrCat(i), w.state(),
             w.pushed() ? absl::StrCat(w.step()) : "-",
             w.state() == "member" ? absl::StrCat(w.steps_behind()) : "-",
             w.last_push_age_s() < 0
                 ? "-"
                 : absl::StrFormat("%.1f", w.last_push_age_s()),
             absl::StrFormat("%.1f", w.last_seen_age_s()),
             w.waiting() == 0
                 ? "-"
                 : absl::StrFormat("%d for %.1fs", w.waiting(), w.waiting_s()),
             w.has_loss() ? Number(w.loss()) : "-", absl::StrCat(w.pushes())});
      }
      if (!st.consistency().empty() && st.consistency() != "async") {
        summaries.push_back(StallSummary(i, st));
      }
    }
    table.Print(*output.out);
    *output.out << "\n";
    variables.Print(*output.out);
    if (!summaries.empty()) {
      *output.out << "\n";
      workers.Print(*output.out);
      *output.out << "\n";
      for (const std::string& line : summaries) *output.out << line << "\n";
    }
  }
  output.out->flush();
  return ReportFailures(shards, stats, "stats", output);
}

}  // namespace

int RunStats(const ShardSet& shards, const StatsOptions& options,
             const Output& output) {
  int status = kExitOk;
  for (int round = 0;; ++round) {
    if (round > 0) {
      std::this_thread::sleep_for(
          std::chrono::duration<double>(options.interval_s));
      if (!output.json) *output.out << "\n";
    }
    if (StatsRound(shards, options, output) != kExitOk) {
      status = kExitShardFailed;
    }
    if (!options.watch) break;
    if (options.count > 0 && round + 1 >= options.count) break;
  }
  return status;
}

namespace {

// A cluster checkpoint's parts, one row each, and their JSON.
void PrintParts(const v1::CheckpointResponse& checkpoint, Table& table) {
  for (const v1::CheckpointPart& part : checkpoint.parts()) {
    table.AddRow({absl::StrCat(checkpoint.number()),
                  absl::StrCat(part.shard_index(), "/", part.num_shards()),
                  absl::StrCat(part.bytes()),
                  absl::StrFormat("%.3f", part.seconds()),
                  absl::StrCat(part.sync_step()),
                  part.sync_cut() ? "yes" : "no", part.path()});
  }
}

json CheckpointJson(const v1::CheckpointResponse& checkpoint) {
  json j;
  j["number"] = checkpoint.number();
  j["bytes"] = checkpoint.bytes();
  j["seconds"] = checkpoint.seconds();
  j["cut_spread_seconds"] = checkpoint.cut_spread_seconds();
  j["parts"] = json::array();
  for (const v1::CheckpointPart& part : checkpoint.parts()) {
    json p;
    p["shard"] = part.shard_index();
    p["num_shards"] = part.num_shards();
    p["path"] = part.path();
    p["bytes"] = part.bytes();
    p["seconds"] = part.seconds();
    p["sync_step"] = part.sync_step();
    p["sync_cut"] = part.sync_cut();
    j["parts"].push_back(p);
  }
  return j;
}

// One call to shard 0, the coordinator of cluster checkpoints.
template <typename Response, typename Call>
Answer<Response> CallCoordinator(const ShardSet& shards, Call call) {
  Answer<Response> answer;
  auto context = shards.NewContext();
  answer.status = call(shards.shard(0), context.get(), &answer.response);
  return answer;
}

int ReportCoordinator(const ShardSet& shards, const grpc::Status& status,
                      const std::string& what, const Output& output) {
  if (status.ok()) return kExitOk;
  if (output.json) {
    json j;
    j["shards"] = json::array({ShardJson(shards.shard(0), status)});
    j["ok"] = false;
    PrintJson(output, j);
  }
  *output.err << "psctl " << what << ": shard " << ShardName(shards.shard(0))
              << ": " << DescribeStatus(status) << "\n";
  return kExitShardFailed;
}

}  // namespace

int RunCheckpoint(const ShardSet& shards, const Output& output) {
  auto answer = CallCoordinator<v1::CheckpointResponse>(
      shards,
      [](const Shard& s, grpc::ClientContext* c, v1::CheckpointResponse* r) {
        return s.admin->Checkpoint(c, v1::CheckpointRequest(), r);
      });
  if (!answer.status.ok()) {
    return ReportCoordinator(shards, answer.status, "checkpoint", output);
  }
  const v1::CheckpointResponse& checkpoint = answer.response;
  if (output.json) {
    json j = CheckpointJson(checkpoint);
    j["ok"] = true;
    PrintJson(output, j);
  } else {
    *output.out << absl::StrFormat(
        "checkpoint %d: %d parts, %d bytes, %.3f s, parts cut within %.3f s\n",
        checkpoint.number(), checkpoint.parts_size(), checkpoint.bytes(),
        checkpoint.seconds(), checkpoint.cut_spread_seconds());
    Table table({"CHECKPOINT", "PART", "BYTES", "SECONDS", "SYNC_STEP",
                 "SYNC_CUT", "PATH"});
    PrintParts(checkpoint, table);
    table.Print(*output.out);
  }
  output.out->flush();
  return kExitOk;
}

int RunCheckpoints(const ShardSet& shards, const Output& output) {
  auto answer = CallCoordinator<v1::ListCheckpointsResponse>(
      shards, [](const Shard& s, grpc::ClientContext* c,
                 v1::ListCheckpointsResponse* r) {
        return s.admin->ListCheckpoints(c, v1::ListCheckpointsRequest(), r);
      });
  if (!answer.status.ok()) {
    return ReportCoordinator(shards, answer.status, "checkpoints", output);
  }
  if (output.json) {
    json j;
    j["checkpoints"] = json::array();
    for (const auto& checkpoint : answer.response.checkpoints()) {
      j["checkpoints"].push_back(CheckpointJson(checkpoint));
    }
    j["ok"] = true;
    PrintJson(output, j);
  } else {
    Table table({"CHECKPOINT", "PART", "BYTES", "SECONDS", "SYNC_STEP",
                 "SYNC_CUT", "PATH"});
    for (const auto& checkpoint : answer.response.checkpoints()) {
      PrintParts(checkpoint, table);
    }
    table.Print(*output.out);
  }
  output.out->flush();
  return kExitOk;
}

int RunHealth(const ShardSet& shards, const Output& output) {
  using grpc::health::v1::HealthCheckRequest;
  using grpc::health::v1::HealthCheckResponse;
  auto answers = CallAll<HealthCheckResponse>(
      shards,
      [](const Shard& s, grpc::ClientContext* c, HealthCheckResponse* r) {
        return s.health->Check(c, HealthCheckRequest(), r);
      });
  std::vector<std::string> unhealthy;
  std::vector<int> failed;
  auto status_name = [](const Answer<HealthCheckResponse>& a) -> std::string {
    if (!a.status.ok()) return "-";
    return HealthCheckResponse::ServingStatus_Name(a.response.status());
  };
  for (int i = 0; i < shards.size(); ++i) {
    const auto& a = answers[i];
    if (!a.status.ok() || a.response.status() != HealthCheckResponse::SERVING) {
      failed.push_back(i);
      unhealthy.push_back(absl::StrCat(
          ShardName(shards.shard(i)), ": ",
          a.status.ok() ? status_name(a) : DescribeStatus(a.status)));
    }
  }
  if (output.json) {
    json j;
    j["shards"] = json::array();
    for (int i = 0; i < shards.size(); ++i) {
      json s = ShardJson(shards.shard(i), answers[i].status);
      s["status"] = status_name(answers[i]);
      j["shards"].push_back(s);
    }
    j["failed_shards"] = failed;
    j["ok"] = failed.empty();
    PrintJson(output, j);
  } else {
    Table table({"SHARD", "ADDRESS", "STATUS"});
    for (int i = 0; i < shards.size(); ++i) {
      table.AddRow({absl::StrCat(i), shards.shard(i).address,
                    answers[i].status.ok() ? status_name(answers[i])
                                           : ErrorCell(answers[i].status)});
    }
    table.Print(*output.out);
  }
  if (unhealthy.empty()) return kExitOk;
  *output.err << "psctl: health: " << unhealthy.size() << " of "
              << shards.size()
              << " shards not serving: " << absl::StrJoin(unhealthy, "; ")
              << "\n";
  return kExitShardFailed;
}

int RefuseLayout(const ShardSet& shards, const std::string& command,
                 bool change, const Output& output) {
  const std::vector<ClusterInfoAnswer>& infos = shards.cluster_infos();
  std::string problem;
  if (!shards.layout_problem().ok()) {
    problem = LayoutProblem(shards.layout_problem());
  } else {
    std::vector<std::string> failed;
    for (int i : shards.Unverified()) {
      failed.push_back(absl::StrCat(ShardName(shards.shard(i)), ": ",
                                    DescribeStatus(infos[i].status)));
    }
    problem = absl::StrCat(
        "cannot check that --servers is one whole cluster: GetClusterInfo "
        "failed on ",
        failed.size(), " of ", shards.size(),
        " shards: ", absl::StrJoin(failed, "; "));
  }
  *output.err << "psctl: " << command << ": " << problem
              << (change ? " (nothing was changed)" : "") << "\n";
  if (output.json) {
    json j;
    j["command"] = command;
    if (change) j["sent"] = false;
    j["problems"] = std::vector<std::string>{problem};
    j["shards"] = json::array();
    std::vector<grpc::Status> statuses;
    for (int i = 0; i < shards.size(); ++i) {
      json s = ShardJson(shards.shard(i), infos[i].status);
      if (infos[i].status.ok()) {
        s["shard_index"] = infos[i].info.shard_index();
        s["num_shards"] = infos[i].info.num_shards();
        s["block_size"] = infos[i].info.block_size();
        s["consistency"] = infos[i].info.consistency();
        s["num_workers"] = infos[i].info.num_workers();
        s["quorum"] = infos[i].info.quorum();
      }
      j["shards"].push_back(s);
      statuses.push_back(infos[i].status);
    }
    j["failed_shards"] = FailedShards(statuses);
    j["ok"] = false;
    PrintJson(output, j);
  }
  return kExitShardFailed;
}

int ReportUnverified(const ShardSet& shards, const std::string& command,
                     const Output& output) {
  const std::vector<int> silent = shards.Unverified();
  if (silent.empty()) return kExitOk;
  std::vector<std::string> named;
  for (int i : silent) {
    named.push_back(
        absl::StrCat(ShardName(shards.shard(i)), ": ",
                     DescribeStatus(shards.cluster_infos()[i].status)));
  }
  *output.err << "psctl: " << command
              << ": cannot check that --servers is one whole cluster: "
                 "GetClusterInfo failed on "
              << silent.size() << " of " << shards.size()
              << " shards: " << absl::StrJoin(named, "; ") << "\n";
  return kExitShardFailed;
}

}  // namespace ps::psctl
