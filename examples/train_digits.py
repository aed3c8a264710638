#!/usr/bin/python3
"""Trains a digits classifier on a 2-shard parameter server with 2 workers.

For each update rule (sgd, momentum, adagrad, rmsprop, adam, eve), or only the
one named with --rule, this program:

1. starts a fresh 2-shard cluster of ps_server processes on loopback in sync
   mode (each step averages the two workers' gradients and losses);
2. has two Python worker processes, each holding half of the training data,
   train a small MLP on sklearn's digits through psclient.torch.RemoteOptimizer;
3. shows progress (step, loss, accuracy) as it goes;
4. stops the cluster with SIGTERM and waits for the shards to exit.

Part way through the first run it changes the learning rate of the running
cluster with `psctl lr set`, to show live reconfiguration. At the end it prints
a table (rule, final loss, test accuracy, time) and saves a PNG plot of every
rule's loss curve under out/.

Run it with Debian's /usr/bin/python3 after building (scripts/run_main.sh
does both). --help lists the options.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pathlib
import queue
import random
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Dict, List, Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "client" / "python"))

# rule -> the cluster's default optimizer (protobuf text format). The
# variables follow the default, so `psctl lr set` changes them.
RULES: Dict[str, str] = {
    "sgd": "sgd {} learning_rate: 0.2",
    "momentum": "momentum { momentum: 0.9 } learning_rate: 0.03",
    "adagrad": "adagrad {} learning_rate: 0.05",
    "rmsprop": "rmsprop {} learning_rate: 0.002",
    "adam": "adam {} learning_rate: 0.003",
    "eve": "eve {} learning_rate: 0.003",
}

HIDDEN = 64
TEST_FRACTION = 0.25
SEED = 0


# ------------------------------------------------------------------ workers

def load_data(num_workers: int, worker: int):
    """This worker's half of the training set, and the test set (tensors)."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y)
    return (torch.from_numpy(x_train[worker::num_workers]),
            torch.from_numpy(y_train[worker::num_workers]),
            torch.from_numpy(x_test), torch.from_numpy(y_test))


def make_model():
    import torch
    torch.manual_seed(SEED)  # every worker starts from the same values
    return torch.nn.Sequential(
        torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10))


def worker_main(worker: int, num_workers: int, build_dir: str,
                jobs: "mp.Queue", reports: "mp.Queue") -> None:
    """A worker process: trains one rule per job until it gets None."""
    os.environ["PS_BUILD_DIR"] = build_dir
    try:
        import torch
        import torch.nn.functional as F

        from psclient import Client, tune_malloc
        from psclient.torch import RemoteOptimizer

        torch.set_num_threads(1)
        tune_malloc()  # keep the buffers of every call for reuse
        x, y, x_test, y_test = load_data(num_workers, worker)
        reports.put(("ready", worker))
        while True:
            job = jobs.get()
            if job is None:
                return
            rule, servers, steps, batch_size, jitter_s = job
            jitter = random.Random(SEED + worker)
            model = make_model()
            generator = torch.Generator().manual_seed(SEED + worker)
            with Client(servers, timeout=120) as client:
                optimizer = RemoteOptimizer(model.named_parameters(), client)
                order = torch.randperm(len(x), generator=generator)
                cursor = 0
                for step in range(steps):
                    if cursor + batch_size > len(order):
                        order = torch.randperm(len(x), generator=generator)
                        cursor = 0
                    idx = order[cursor:cursor + batch_size]
                    cursor += batch_size
                    optimizer.zero_grad()
                    if jitter_s > 0:  # --jitter_ms: uneven step times
                        time.sleep(jitter.uniform(0, jitter_s))
                    logits = model(x[idx])
                    loss = F.cross_entropy(logits, y[idx])
                    loss.backward()
                    optimizer.step(loss)  # Eve uses the loss
                    acc = (logits.argmax(1) == y[idx]).float().mean().item()
                    test_acc = None
                    if worker == 0 and (step % 20 == 19 or step == steps - 1):
                        with torch.no_grad():
                            test_acc = (model(x_test).argmax(1) == y_test).float().mean().item()
                    reports.put(("step", worker, rule, step, loss.item(), acc, test_acc))
                with torch.no_grad():
                    train_loss = F.cross_entropy(model(x), y).item()
                    test_logits = model(x_test)
                    test_loss = F.cross_entropy(test_logits, y_test).item()
                    test_acc = (test_logits.argmax(1) == y_test).float().mean().item()
            reports.put(("done", worker, rule, train_loss, test_loss, test_acc))
    except BaseException:  # report anything, then exit
        reports.put(("error", worker, traceback.format_exc()))


# ------------------------------------------------------------------- parent

@dataclass
class RunResult:
    rule: str
    losses: List[float] = field(default_factory=list)  # mean over workers, per step
    final_loss: float = float("nan")  # full training set, end of run
    test_loss: float = float("nan")
    test_acc: float = float("nan")
    seconds: float = 0.0
    lr_change: Optional[tuple] = None  # (step, old rate, new rate)


class Progress:
    """One line per run: a bar on a terminal, a line every 10% otherwise."""

    def __init__(self, rule: str, steps: int):
        self.rule = rule
        self.steps = steps
        self.tty = sys.stdout.isatty()
        self.next_print = 0

    def update(self, step: int, loss: float, acc: float, test_acc: Optional[float],
               elapsed: float) -> None:
        done = step + 1
        test = f"test acc {test_acc:5.3f}" if test_acc is not None else "test acc  -   "
        text = (f"step {done:4d}/{self.steps}  loss {loss:6.4f}  "
                f"train acc {acc:5.3f}  {test}  {elapsed:5.1f}s")
        if self.tty:
            width = 24
            filled = int(width * done / self.steps)
            bar = "#" * filled + "." * (width - filled)
            sys.stdout.write(f"\r  {self.rule:9s}[{bar}] {text}")
            if done == self.steps:
                sys.stdout.write("\n")
            sys.stdout.flush()
        elif done >= self.next_print or done == self.steps:
            print(f"  {self.rule:9s}{text}", flush=True)
            self.next_print = done + max(1, self.steps // 10)

    def note(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\n")
        print(f"  {self.rule:9s}>> {text}", flush=True)


def shard_state(servers: List[str]) -> List[tuple]:
    """Per shard: (highest block step, learning rate in force) from GetStats."""
    import grpc

    from psclient import ps_pb2, ps_pb2_grpc
    states = []
    for address in servers:
        with grpc.insecure_channel(address) as channel:
            stub = ps_pb2_grpc.AdminServiceStub(channel)
            stats = stub.GetStats(ps_pb2.GetStatsRequest(), timeout=10)
            config = stub.GetOptimizer(ps_pb2.GetOptimizerRequest(), timeout=10)
            step = max((v.step for v in stats.variables), default=0)
            states.append((step, config.learning_rate))
    return states


def change_rate(servers: List[str], rate: float, psctl: Optional[pathlib.Path]) -> str:
    """Sets the learning rate of the running cluster; returns what was done."""
    if psctl is not None:
        command = [str(psctl), f"--servers={','.join(servers)}", "lr", "set", f"{rate:g}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"psctl failed ({done.returncode}): {done.stderr.strip()}")
        answer = "\n".join("             " + line
                            for line in done.stdout.rstrip().splitlines())
        return " ".join(["psctl", *command[1:]]) + "\n" + answer
    # psctl is not built: the same call it makes, from Python.
    import grpc

    from psclient import ps_pb2, ps_pb2_grpc
    for address in servers:
        with grpc.insecure_channel(address) as channel:
            stub = ps_pb2_grpc.AdminServiceStub(channel)
            config = stub.GetOptimizer(ps_pb2.GetOptimizerRequest(), timeout=10)
            config.learning_rate = rate
            config.ClearField("config_version")
            stub.SetOptimizer(ps_pb2.SetOptimizerRequest(config=config), timeout=10)
    return (f"AdminService.SetOptimizer(learning_rate={rate!r}) from Python "
            "(psctl is not built)")


def run_rule(rule: str, args, workers, jobs, reports, psctl, change_lr: bool) -> RunResult:
    from psclient import LocalCluster

    result = RunResult(rule)
    extra = [f"--staleness={args.staleness}"] if args.consistency == "ssp" else []
    cluster = LocalCluster(2, block_size=args.block_size,
                           consistency=args.consistency,
                           num_workers=args.workers, optimizer=RULES[rule],
                           extra_args=extra)
    cluster.start()
    try:
        mode = (f"ssp, staleness {args.staleness}" if args.consistency == "ssp"
                else args.consistency)
        print(f"\n== {rule}: {RULES[rule]}   (shards {cluster.servers}, {mode}, "
              f"{args.workers} workers)", flush=True)
        progress = Progress(rule, args.steps)
        start = time.monotonic()
        for q in jobs:
            q.put((rule, cluster.addresses, args.steps, args.batch_size,
                   args.jitter_ms / 1000))
        step_losses: Dict[int, List[float]] = {}
        step_accs: Dict[int, List[float]] = {}
        test_acc: Optional[float] = None
        done: Dict[int, tuple] = {}
        change_at = int(args.steps * args.lr_change_at) if change_lr else -1
        while len(done) < args.workers:
            try:
                message = reports.get(timeout=5)
            except queue.Empty:
                dead = [i for i, p in enumerate(workers) if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"worker(s) {dead} exited unexpectedly")
                if time.monotonic() - start > args.run_timeout:
                    raise RuntimeError(f"{rule} did not finish in {args.run_timeout}s")
                continue
            kind = message[0]
            if kind == "error":
                raise RuntimeError(f"worker {message[1]} failed:\n{message[2]}")
            if kind == "done":
                done[message[1]] = message[3:]
                continue
            _, worker, _, step, loss, acc, t_acc = message
            step_losses.setdefault(step, []).append(loss)
            step_accs.setdefault(step, []).append(acc)
            if t_acc is not None:
                test_acc = t_acc
            if len(step_losses[step]) < args.workers:
                continue
            mean_loss = sum(step_losses[step]) / args.workers
            result.losses.append(mean_loss)
            recent = [a for s in range(max(0, step - 19), step + 1) for a in step_accs[s]]
            progress.update(step, sum(result.losses[-20:]) / len(result.losses[-20:]),
                            sum(recent) / len(recent), test_acc, time.monotonic() - start)
            if step + 1 == change_at:
                old = shard_state(cluster.addresses)[0][1]
                new = float(f"{old * args.lr_factor:.6g}")
                how = change_rate(cluster.addresses, new, psctl)
                now = shard_state(cluster.addresses)
                at = min(s for s, _ in now)
                result.lr_change = (at, old, new)
                progress.note(how)
                progress.note(f"learning rate {old:g} -> "
                              + ", ".join(f"{r:g}" for _, r in now)
                              + f" on the shards, from about step {at} "
                              "(the workers kept training)")
        result.seconds = time.monotonic() - start
        train_losses = [d[0] for d in done.values()]
        result.final_loss = sum(train_losses) / len(train_losses)
        result.test_loss = done[0][1]
        result.test_acc = done[0][2]
    finally:
        codes = cluster.stop()
    if any(c != 0 for c in codes):
        raise RuntimeError(f"shards of the {rule} run exited with {codes}")
    print(f"  {rule:9s}cluster stopped (SIGTERM; shards exited 0)", flush=True)
    return result


def plot(results: List[RunResult], path: pathlib.Path, steps: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for r in results:
        raw = r.losses
        smooth, ema = [], None
        for v in raw:
            ema = v if ema is None else 0.9 * ema + 0.1 * v
            smooth.append(ema)
        line, = ax.plot(range(1, len(smooth) + 1), smooth,
                        label=f"{r.rule} (test acc {r.test_acc:.3f})")
        ax.plot(range(1, len(raw) + 1), raw, color=line.get_color(), alpha=0.15,
                linewidth=0.8)
        if r.lr_change:
            step, old, new = r.lr_change
            ax.axvline(step, color=line.get_color(), linestyle="--", linewidth=1)
            ax.annotate(f"{r.rule}: lr {old:g} -> {new:g}\n(psctl lr set)",
                        xy=(step, ax.get_ylim()[1]), xytext=(4, -28),
                        textcoords="offset points", fontsize=8,
                        color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlim(1, steps)
    ax.set_xlabel("step (sync: both workers' gradients averaged)")
    ax.set_ylabel("training loss (cross-entropy, EMA 0.9; raw faint)")
    ax.set_title("Digits MLP on a 2-shard parameter server, 2 workers, sync")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def table(results: List[RunResult]) -> str:
    lines = [f"{'rule':10s} {'final loss':>10s} {'test loss':>10s} "
             f"{'test acc':>9s} {'time (s)':>9s} {'steps/s':>8s}",
             "-" * 61]
    for r in results:
        steps = len(r.losses)
        rate = steps / r.seconds if r.seconds > 0 else float("nan")
        lines.append(f"{r.rule:10s} {r.final_loss:10.4f} {r.test_loss:10.4f} "
                     f"{r.test_acc:9.3f} {r.seconds:9.2f} {rate:8.1f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rule", choices=list(RULES) + ["all"], default="all",
                        help="train with this rule only")
    parser.add_argument("--steps", type=int, default=500, help="steps per rule")
    parser.add_argument("--batch_size", type=int, default=32,
                        help="examples per worker per step")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--block_size", type=int, default=1024,
                        help="values per block (small, so that every layer "
                             "spans both shards)")
    parser.add_argument("--lr_change_at", type=float, default=0.5,
                        help="fraction of the first run after which the "
                             "learning rate is changed live")
    parser.add_argument("--lr_factor", type=float, default=0.2,
                        help="the live change multiplies the rate by this")
    parser.add_argument("--build_dir", default=os.environ.get("PS_BUILD_DIR",
                                                              str(REPO / "build")),
                        help="build tree with server/ps_server, python/ stubs "
                             "and client/psctl/psctl")
    parser.add_argument("--out", default=str(REPO / "out"),
                        help="directory for the plot")
    parser.add_argument("--consistency", choices=["sync", "async", "ssp"],
                        default="sync", help="the cluster's consistency mode")
    parser.add_argument("--staleness", type=int, default=2,
                        help="ssp: steps a worker may run ahead of the slowest")
    parser.add_argument("--jitter_ms", type=float, default=0,
                        help="every worker sleeps a random 0..jitter_ms "
                             "each step (uneven step times)")
    parser.add_argument("--run_timeout", type=float, default=240,
                        help="seconds before a run is declared stuck")
    args = parser.parse_args()
    if args.steps < 1 or args.workers < 1:
        parser.error("--steps and --workers must be positive")

    build_dir = pathlib.Path(args.build_dir).resolve()
    os.environ["PS_BUILD_DIR"] = str(build_dir)
    from psclient import find_server_binary
    find_server_binary()  # fail early with a clear message
    psctl: Optional[pathlib.Path] = build_dir / "client" / "psctl" / "psctl"
    if not psctl.is_file():
        psctl = None
        print(f"note: {build_dir}/client/psctl/psctl is not built; the live "
              "learning-rate change calls AdminService.SetOptimizer from Python "
              "instead", flush=True)

    rules = list(RULES) if args.rule == "all" else [args.rule]
    started = time.monotonic()
    print(f"Digits ({HIDDEN}-unit MLP), {args.steps} steps per rule, "
          f"{args.workers} workers x {args.batch_size} examples per step; "
          f"rules: {', '.join(rules)}", flush=True)

    context = mp.get_context("spawn")  # gRPC and torch do not survive fork
    reports = context.Queue()
    jobs = [context.Queue() for _ in range(args.workers)]
    workers = [context.Process(target=worker_main,
                               args=(i, args.workers, str(build_dir), jobs[i], reports),
                               daemon=True)
               for i in range(args.workers)]
    for w in workers:
        w.start()
    results: List[RunResult] = []
    try:
        ready = 0
        while ready < args.workers:
            message = reports.get(timeout=120)
            if message[0] == "error":
                raise RuntimeError(f"worker {message[1]} failed:\n{message[2]}")
            ready += 1
        for i, rule in enumerate(rules):
            results.append(run_rule(rule, args, workers, jobs, reports, psctl,
                                    change_lr=(i == 0)))
    finally:
        for q in jobs:
            q.put(None)
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
                w.join()

    out = pathlib.Path(args.out)
    png = out / ("digits_loss_curves.png" if args.rule == "all"
                 else f"digits_loss_{args.rule}.png")
    plot(results, png, args.steps)
    print("\n" + table(results))
    change = next((r for r in results if r.lr_change), None)
    if change:
        step, old, new = change.lr_change
        print(f"\n({change.rule}: learning rate changed live from {old:g} to {new:g} "
              f"after step {step})")
    print(f"\nLoss curves: {png.resolve()}")
    print(f"Total time: {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
