"""psclient (the binding of ps::Client) against ps::Client itself, from one
run on one machine.

1. PushPull throughput: for each size, one fresh single-shard ps_server
   (Adam); bench/ps_load (C++, one worker thread) and psclient from this
   interpreter (one thread, answers written into a preallocated array) take
   turns against it, one run each in turn, so that a change in the
   machine's load falls on both. GB/s counts request + answer values;
   calls/s is for one caller. Medians of --runs runs of --seconds each.
2. The remote optimizer: steps/s of a 38k-parameter digits CNN trained
   by psclient.torch.RemoteOptimizer (Adam on 2 shards, 1 worker) against
   the same model with a local torch.optim.Adam, runs taking turns too.

    /usr/bin/python3 bench/psclient_load.py --build_dir build

Prints markdown tables (bench/README.md keeps a copy).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Tuple

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "client" / "python"))


def parse_size(text: str) -> int:
    units = {"KiB": 1 << 10, "MiB": 1 << 20}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(text[:-len(unit)]) * factor
    return int(text)


def cpp_rates(ps_load: pathlib.Path, address: str, size: str,
              seconds: float) -> Tuple[float, float]:
    """(GB/s, calls/s) of one run of bench/ps_load against `address`."""
    done = subprocess.run(
        [str(ps_load), f"--servers={address}", "--op=pushpull",
         f"--value_bytes={size}", "--echo=false", "--markdown_row",
         "--runs=1", f"--seconds={seconds}", "--warmup_seconds=0.5"],
        capture_output=True, text=True, check=True, timeout=600)
    row = [c.strip() for c in done.stdout.strip().splitlines()[-1].strip("|").split("|")]
    # | op | size | dtype | W | ours GB/s | echo GB/s | ratio | ours calls/s | ...
    # (GB/s again from calls/s: the row rounds it to 2 decimals.)
    calls_per_s = float(row[7])
    return 2 * parse_size(size) * calls_per_s / 1e9, calls_per_s


def python_rates(client, size_bytes: int, seconds: float) -> Tuple[float, float]:
    """(GB/s, calls/s) of one run of psclient PushPull from this thread,
    after 0.5 s of warm-up (as ps_load's)."""
    import numpy as np

    values = size_bytes // 4
    name = f"py{size_bytes}"  # created by main()
    gradient = {name: np.full(values, 1e-3, dtype=np.float32)}
    out = {name: np.empty(values, dtype=np.float32)}
    warm_until = time.perf_counter() + 0.5
    while time.perf_counter() < warm_until:
        client.push_pull(gradient, out=out)
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        client.push_pull(gradient, out=out)
        calls += 1
    elapsed = time.perf_counter() - start
    return 2 * 4 * values * calls / elapsed / 1e9, calls / elapsed


def digits_cnn():
    import torch
    torch.manual_seed(0)
    # 160 + 4,640 + 32,784 + 170 = 37,754 parameters.
    return torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 8, 8)),
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 16), torch.nn.ReLU(),
        torch.nn.Linear(16, 10))


def steps_per_second(model, step_fn, x, y, steps: int) -> float:
    """Steps/s of one run of `steps` training steps (batch 32)."""
    import torch.nn.functional as F

    start = time.perf_counter()
    for i in range(steps):
        lo = (i * 32) % (len(x) - 32)
        step_fn(F.cross_entropy(model(x[lo:lo + 32]), y[lo:lo + 32]))
    return steps / (time.perf_counter() - start)


def optimizer_rates(server: pathlib.Path, steps: int,
                    runs: int) -> Tuple[int, float, float]:
    """(parameters, remote steps/s, local steps/s): medians, the local and
    the remote run taking turns after 20 warm-up steps each."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    import psclient
    from psclient.torch import RemoteOptimizer

    torch.set_num_threads(1)
    digits = load_digits()
    x = torch.from_numpy((digits.data / 16.0).astype(np.float32))
    y = torch.from_numpy(digits.target.astype(np.int64))

    local_model = digits_cnn()
    params = sum(p.numel() for p in local_model.parameters())
    adam = torch.optim.Adam(local_model.parameters(), lr=1e-3)

    def local_step(loss):
        adam.zero_grad()
        loss.backward()
        adam.step()

    remote_model = digits_cnn()
    with psclient.LocalCluster(2, block_size=4096, binary=str(server),
                               optimizer="adam {} learning_rate: 0.001") as cluster, \
            psclient.Client(cluster.addresses) as client:
        remote = RemoteOptimizer(remote_model.named_parameters(), client)

        def remote_step(loss):
            remote.zero_grad()
            loss.backward()
            remote.step(loss)

        steps_per_second(local_model, local_step, x, y, 20)  # warm-up
        steps_per_second(remote_model, remote_step, x, y, 20)
        local, remote_rates = [], []
        for _ in range(runs):
            local.append(steps_per_second(local_model, local_step, x, y, steps))
            remote_rates.append(steps_per_second(remote_model, remote_step, x, y, steps))
    return params, statistics.median(remote_rates), statistics.median(local)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build_dir", default=str(REPO / "build"),
                        help="build tree with server/ps_server, bench/ps_load "
                             "and python/psclient/_core*.so")
    parser.add_argument("--sizes", default="4KiB,1MiB,4MiB,40MiB",
                        help="PushPull sizes (float32 values), comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=200,
                        help="optimizer steps per run")
    args = parser.parse_args()

    build = pathlib.Path(args.build_dir).resolve()
    # Where psclient finds its binding (psclient/_stubs.py).
    sys.path.insert(1, str(build / "python"))
    import psclient

    psclient.tune_malloc()  # as ps_load does for itself
    server = build / "server" / "ps_server"
    ps_load = build / "bench" / "ps_load"
    print("| size | C++ ps::Client GB/s | psclient GB/s | ratio | "
          "C++ calls/s | psclient calls/s |")
    print("|---|---|---|---|---|---|")
    for size in [s for s in args.sizes.split(",") if s]:
        size_bytes = parse_size(size)
        with psclient.LocalCluster(1, optimizer="adam {}", binary=str(server),
                                   extra_args=["--max_message_mb=64"]) as cluster, \
                psclient.Client(cluster.addresses, max_message_bytes=64 << 20) as client:
            client.create_variable(f"py{size_bytes}", [size_bytes // 4])
            cpp, py = [], []
            for _ in range(args.runs):
                cpp.append(cpp_rates(ps_load, cluster.addresses[0], size, args.seconds))
                py.append(python_rates(client, size_bytes, args.seconds))
            cpp_gbps, cpp_calls = (statistics.median(r[i] for r in cpp) for i in (0, 1))
            py_gbps, py_calls = (statistics.median(r[i] for r in py) for i in (0, 1))
        print(f"| {size} | {cpp_gbps:.3f} | {py_gbps:.3f} | {py_calls / cpp_calls:.2f} "
              f"| {cpp_calls:.0f} | {py_calls:.0f} |", flush=True)

    params, remote, local = optimizer_rates(server, args.steps, args.runs)
    print()
    print("| model | remote Adam (2 shards, 1 worker) steps/s | local "
          "torch.optim.Adam steps/s | ratio |")
    print("|---|---|---|---|")
    print(f"| digits CNN, {params} parameters, batch 32 | {remote:.0f} | "
          f"{local:.0f} | {remote / local:.2f} |")


if __name__ == "__main__":
    main()
