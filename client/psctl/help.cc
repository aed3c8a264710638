#include "client/psctl/help.h"

#include <map>

namespace ps::psctl {

std::string GeneralHelp() {
  return R"(psctl: look at a parameter server cluster and change its optimizer live.

Usage: psctl [--servers=HOST:PORT,...] [--token_file=F] [--tls_ca_file=F]
             [--timeout_s=S] [--json] COMMAND [ARGS] [FLAGS]

Commands:
  info                    each shard's cluster settings and default optimizer
  vars                    the variables: shape, blocks, steps, optimizer
  optimizer get           the optimizer in force (--var=V for one variable)
  optimizer set RULE      switch to RULE (sgd, momentum, adagrad, rmsprop,
                          adam, eve) with the given hyper-parameters
  lr set VALUE            change only the learning rate
  schedule set KIND       change only the learning-rate schedule (step,
                          exponential, cosine, none)
  stats                   counters, latencies and per-variable steps and
                          learning rates (--watch to repeat)
  checkpoint              ask every shard to write a checkpoint
  health                  grpc.health.v1 Check on every shard
  help [COMMAND]          this text, or a command's help

--servers lists every shard of one cluster once, in any order. Before any
command but health and help sends anything else, psctl asks each server which
shard it is (GetClusterInfo) and puts them in shard order; it refuses a list
that is not the shards 0..S-1 of one cluster (another count, a shard twice, or
servers that disagree on the number of shards, block size, consistency,
workers or quorum). Every command calls all shards at once and shows each
shard's answer. A change is validated here first, then checked by every shard
without being made (its variables, its memory limit), and made only when all
accept.

Global flags:
  --servers=HOST:PORT,...  the shards, each once, in any order (default
                           127.0.0.1:50051)
  --token_file=F           send the first token in F as
                           'authorization: Bearer <token>'
  --tls_ca_file=F          connect with TLS, trusting the PEM root CA in F
  --timeout_s=S            deadline of each call (default 10)
  --json                   print JSON for scripts instead of tables

Exit status: 0 when every shard answered OK; 1 when a shard refused, failed
or did not answer, or --servers is not one whole cluster (the shards are
named on stderr); 2 for bad usage (an unknown command, rule or flag, a bad
value or address, or a config that fails validation; nothing is sent).

'psctl help COMMAND' or 'psctl COMMAND --help' shows a command's flags.
)";
}

std::string CommandHelp(const std::string& command) {
  static const auto* texts = new std::map<std::string, std::string>{
      {"info", R"(Usage: psctl info

Shows what each server says it is (its shard index, the number of shards and
block size it was started with, its consistency mode) with its config version
and default optimizer, in shard order. Exits 1 if a shard does not answer, or
if the servers are not the shards of one cluster, each listed once.
)"},
      {"vars", R"(Usage: psctl vars

Lists every variable: shape, size, blocks (over all shards), the lowest and
highest block step, the rule and config in force and whether the variable
has its own optimizer (an override) or follows the default.
)"},
      {"optimizer get", R"(Usage: psctl optimizer get [--var=V]

Shows the optimizer config in force on every shard, with each shard's config
version: the default optimizer, or with --var the one variable V follows.
)"},
      {"optimizer set",
       R"(Usage: psctl optimizer set RULE [--var=V] [--reset_state] [HYPER-PARAMETERS]

Switches to RULE with the given hyper-parameters; those not given take the
server's defaults (PyTorch's). The learning-rate schedule in force is kept
(change it with 'schedule set'). Without --var the default optimizer changes,
and with it every variable that has no optimizer of its own; with --var only
variable V (which then has its own).

State: a change of hyper-parameters keeps the optimizer state. A change of
rule keeps the state whose meaning carries over (e.g. Adam's first moment
becomes Momentum's buffer) and the step count; the rest starts at zero.
--reset_state starts from fresh state at step 1.

Flags for every rule:
  --lr=X  --weight_decay=X  --clip_norm=X  --var=V  --reset_state
Flags of each rule (any other is refused):
  sgd       (none)
  momentum  --momentum=X (0.9)  --dampening=X (0)  --nesterov
  adagrad   --initial_accumulator_value=X (0)  --eps=X (1e-10)  --lr_decay=X (0)
  rmsprop   --alpha=X (0.99)  --eps=X (1e-8)  --momentum=X (0)  --centered
  adam      --beta1=X (0.9)  --beta2=X (0.999)  --eps=X (1e-8)  --amsgrad
            --decoupled_weight_decay (AdamW)
  eve       --beta1=X (0.9)  --beta2=X (0.999)  --beta3=X (0.999)  --k=X (0.1)
            --big_k=X (10)  --eps=X (1e-8)  --loss_floor=X (0)
Default learning rate: 1e-3 for adam and eve, 1e-2 for the others.

Example: psctl optimizer set adam --lr=0.01 --beta1=0.8 --var=embedding
)"},
      {"lr set", R"(Usage: psctl lr set VALUE [--var=V]

Reads the optimizer in force on each shard and changes only its learning rate
(the base rate, before the schedule); the rule, its state and every other
setting are kept.
)"},
      {"schedule set", R"(Usage: psctl schedule set KIND [FLAGS] [--var=V]

Reads the optimizer in force on each shard and changes only its learning-rate
schedule; everything else is kept. Kinds and their flags:
  step         --step_size=N (required)  --gamma=X (0.1): rate x gamma^floor(t / N)
  exponential  --gamma=X (required): rate x gamma^t
  cosine       --t_max=N (required)  --eta_min=X (0): cosine annealing
  none         a constant rate
Every kind takes --warmup_steps=N: rate x min(1, t / N).
)"},
      {"stats", R"(Usage: psctl stats [--watch [--interval_s=S] [--count=N]]

Shows each shard's pushes, pulls, block updates, bytes in and out, refusals by
code, update latency percentiles, uptime and config version, then per variable
and shard its highest step, rule and learning rate after the schedule.
--watch repeats every --interval_s seconds (default 2), --count times (0, the
default, until interrupted); with --json each round is one line of JSON.
)"},
      {"checkpoint", R"(Usage: psctl checkpoint

Asks every shard to write a checkpoint and shows where and how big. A shard
started without a checkpoint folder refuses (FAILED_PRECONDITION).
)"},
      {"health", R"(Usage: psctl health

Runs the standard grpc.health.v1 Check on every address of --servers (it needs
no token, and --servers may name any shards, one alone included: the servers
are not checked to be one whole cluster). Exits 1 unless every one answers
SERVING.
)"},
      {"help", R"(Usage: psctl help [COMMAND]

Shows the overview, or the help of COMMAND (e.g. 'psctl help optimizer set').
)"},
  };
  if (command == "optimizer") {
    return texts->at("optimizer get") + "\n" + texts->at("optimizer set");
  }
  if (command == "lr") return texts->at("lr set");
  if (command == "schedule") return texts->at("schedule set");
  auto it = texts->find(command);
  return it == texts->end() ? "" : it->second;
}

}  // namespace ps::psctl
