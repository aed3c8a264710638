"""PushPull throughput of psclient (the Python client) against one ps_server,
with the process's allocator as glibc leaves it and after psclient.tune_malloc.

Each setting runs in a fresh interpreter (tune_malloc changes the whole
process), against a fresh single-shard cluster (Adam), and prints GB/s of
payload (request + answer values), the median of --runs runs of --seconds.

    PS_BUILD_DIR=build /usr/bin/python3 bench/psclient_bench.py
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def measure(sizes_mib, runs: int, seconds: float, tuned: bool) -> None:
    """One setting, in this process: prints one line per size."""
    sys.path.insert(0, str(REPO / "client" / "python"))
    import numpy as np

    import psclient

    if tuned and not psclient.tune_malloc():
        raise SystemExit("psclient.tune_malloc: no mallopt in this C library")
    with psclient.LocalCluster(num_shards=1, optimizer="adam {}") as cluster:
        with psclient.Client(cluster.addresses,
                             max_message_bytes=64 << 20) as client:
            for mib in sizes_mib:
                values = mib * (1 << 20) // 4
                name = f"w{mib}"
                client.create_variable(name, [values])
                gradient = {name: np.full(values, 1e-3, dtype=np.float32)}
                client.push_pull(gradient)  # warm-up
                rates = []
                for _ in range(runs):
                    calls = 0
                    start = time.perf_counter()
                    while time.perf_counter() - start < seconds:
                        client.push_pull(gradient)
                        calls += 1
                    elapsed = time.perf_counter() - start
                    rates.append(2 * 4 * values * calls / elapsed / 1e9)
                print(f"| {mib} MiB | {'tune_malloc' if tuned else 'glibc defaults'}"
                      f" | {statistics.median(rates):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes_mib", default="1,4,40",
                        help="variable sizes in MiB of float32, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--setting", choices=["plain", "tuned"],
                        help="internal: measure one setting in this process")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_mib.split(",") if s]
    if args.setting:
        measure(sizes, args.runs, args.seconds, args.setting == "tuned")
        return
    print("| size | allocator | psclient PushPull GB/s |")
    print("|---|---|---|")
    for setting in ("plain", "tuned"):
        subprocess.run([sys.executable, __file__, "--setting", setting,
                        "--sizes_mib", args.sizes_mib, "--runs", str(args.runs),
                        "--seconds", str(args.seconds)], check=True)


if __name__ == "__main__":
    main()
