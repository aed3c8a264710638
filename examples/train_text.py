#!/usr/bin/python3
"""Trains a fastText-style classifier of Debian packages on a remote embedding table.

The task: predict a package's section (libs, python, games, ...) from its name
and short description, as `apt-cache dumpavail` lists them (about 64,000
packages). This program:

1. reads the package list (`apt-cache dumpavail`, or --data=FILE in that
   format), turns each package into hashed ids of its words and word bigrams,
   and puts one package in ten (chosen by a hash of its name) in a held-out
   test set;
2. trains the model locally with torch: an nn.EmbeddingBag (mean, sparse
   gradients) of 2^24 possible ids x 32 under torch.optim.Adagrad, then a
   Linear layer to the sections under Adagrad;
3. trains the same model on a 2-shard cluster of ps_server processes in async
   mode, with 2 (up to 4) worker processes, each on its share of the training
   set: the embedding is a sparse table whose rows are created on the shards
   when first pushed and updated there by Adagrad; each step pulls only the
   rows of the batch's unique ids and pushes only their gradients; the Linear
   layer goes through psclient.torch.RemoteOptimizer (Adagrad on the shards);
4. prints the test accuracy of both, the rows the shards created (GetStats),
   the bytes each step moved against a dense 2^24 x 32 table, and saves a plot
   of the training curves under out/.

Features: the text is lower-cased and cut into runs of [a-z0-9]; the name's
parts become tokens "n:<part>", the description's words "w:<word>", and each
two neighbouring tokens a bigram "b:<a> <b>" (within the name, and within the
description). A token's id is the first 8 bytes of its BLAKE2b digest
(hashlib.blake2b, digest_size=8, of its UTF-8 bytes) read little-endian,
modulo 2^24: stable across runs and machines, unlike Python's salted hash().
A package is in the test set when the same hash of "split:<name>" is 0
modulo 10. Packages without a Section are left out (counted); one without a
Description is classified by its name alone. Sections with fewer than
--min_section packages are merged into "other".

The embedding rows start at zero and the Linear layer from torch's default
initialization (seeded), so both runs start from the same model. The local
table holds only the rows of ids that occur in the data, renumbered: with rows
that start at zero and sparse Adagrad, that trains exactly as the 2^24-row
table would (untouched rows never change).

Run it with Debian's /usr/bin/python3 after building (scripts/run_main.sh
does both). --help lists the options.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import pathlib
import queue
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import numpy as np
    import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "client" / "python"))

HASH_BITS = 24
NUM_IDS = 1 << HASH_BITS  # possible ids: rows of the (virtual) embedding table
DIM = 32
TEST_BUCKETS = 10  # one package in ten is held out
SEED = 0
TABLE = "text/embedding"
PREFIX = "text/"  # of the Linear layer's variables

_WORD = re.compile(r"[a-z0-9]+")


# --------------------------------------------------------------------- data

def stable_hash(text: str) -> int:
    """64 bits of BLAKE2b of the UTF-8 text, little-endian (stable everywhere)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def tokens(name: str, description: str) -> List[str]:
    """The name's parts and the description's words, with their bigrams."""
    name_parts = ["n:" + w for w in _WORD.findall(name.lower())]
    words = ["w:" + w for w in _WORD.findall(description.lower())]
    out = name_parts + words
    for seq in (name_parts, words):
        out += [f"b:{a[2:]} {b[2:]}" for a, b in zip(seq, seq[1:])]
    return out


def feature_ids(name: str, description: str) -> List[int]:
    """The hashed ids (0 <= id < 2^24) of a package's tokens."""
    return [stable_hash(t) % NUM_IDS for t in tokens(name, description)]


def in_test_set(name: str) -> bool:
    return stable_hash("split:" + name) % TEST_BUCKETS == 0


def parse_packages(text: str) -> Tuple[List[Tuple[str, str, str]], int]:
    """(name, section, short description) of every stanza with a Package and
    a Section, and the count of stanzas left out for want of a Section.

    The area prefix of a section goes ("contrib/games" is "games"); a missing
    Description is an empty one. A package listed twice counts once.
    """
    packages: Dict[str, Tuple[str, str, str]] = {}
    no_section = 0
    for stanza in re.split(r"\n\s*\n", text):
        fields: Dict[str, str] = {}
        for line in stanza.splitlines():
            if not line or line[0] in " \t":
                continue  # a continuation line (long description, tags)
            key, sep, value = line.partition(":")
            if sep and key not in fields:
                fields[key] = value.strip()
        name = fields.get("Package", "")
        if not name:
            continue
        section = fields.get("Section", "").rsplit("/", 1)[-1]
        if not section:
            no_section += 1
            continue
        packages.setdefault(name, (name, section, fields.get("Description", "")))
    return list(packages.values()), no_section


def read_package_list(path: Optional[str]) -> str:
    """The text of --data, or of `apt-cache dumpavail` (empty if it gives none)."""
    if path:
        return pathlib.Path(path).read_text(encoding="utf-8", errors="replace")
    if shutil.which("apt-cache") is None:
        raise SystemExit("apt-cache is not installed: this needs a Debian machine, "
                         "or --data=FILE in the format of `apt-cache dumpavail`")
    done = subprocess.run(["apt-cache", "dumpavail"], capture_output=True,
                          timeout=120)
    return done.stdout.decode("utf-8", "replace")


def fetch_package_lists() -> bool:
    """Runs `apt-get update` as scripts/install_deps.sh does (through sudo when
    not root, where sudo works without a password); True if it ran."""
    command = ["apt-get", "update", "-qq"]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return False
        command = ["sudo", "-n"] + command
    print("The package lists are empty; running: " + " ".join(command), flush=True)
    return subprocess.run(command).returncode == 0


@dataclass
class Dataset:
    """Packages as bags of ids (CSR: ids[starts[i]:starts[i+1]]) and labels."""
    ids: np.ndarray      # int64, every package's ids one after another
    starts: np.ndarray   # int64, len n + 1
    labels: np.ndarray   # int64, len n
    names: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int]) -> "Dataset":
        import numpy as np
        index = np.asarray(index, dtype=np.int64)
        lengths = self.starts[index + 1] - self.starts[index]
        starts = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        ids = (np.concatenate([self.ids[self.starts[i]:self.starts[i + 1]] for i in index])
               if len(index) else np.zeros(0, dtype=np.int64))
        return Dataset(ids.astype(np.int64), starts, self.labels[index],
                       [self.names[i] for i in index] if self.names else [])

    def batch(self, index: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input, offsets, labels) of these packages, as F.embedding_bag takes them."""
        import numpy as np
        import torch
        lengths = self.starts[index + 1] - self.starts[index]
        offsets = np.zeros(len(index), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        ids = np.concatenate([self.ids[self.starts[i]:self.starts[i + 1]] for i in index])
        return (torch.from_numpy(ids), torch.from_numpy(offsets),
                torch.from_numpy(self.labels[index]))


@dataclass
class Corpus:
    train: Dataset
    test: Dataset
    sections: List[str]        # label -> section name
    merged: List[str]          # sections merged into "other"
    no_section: int            # packages left out: no Section


def build_corpus(text: str, min_section: int) -> Corpus:
    import numpy as np
    packages, no_section = parse_packages(text)
    counts = Counter(section for _, section, _ in packages)
    merged = sorted(s for s, c in counts.items() if c < min_section)
    kept = sorted(s for s, c in counts.items() if c >= min_section)
    sections = kept + (["other"] if merged else [])
    label_of = {s: i for i, s in enumerate(kept)}
    other = len(kept)
    parts = {True: ([], [], [], []), False: ([], [], [], [])}  # ids, lengths, labels, names
    for name, section, description in sorted(packages):
        ids, lengths, labels, names = parts[in_test_set(name)]
        bag = feature_ids(name, description)
        ids.extend(bag)
        lengths.append(len(bag))
        labels.append(label_of.get(section, other))
        names.append(name)

    def dataset(test: bool) -> Dataset:
        ids, lengths, labels, names = parts[test]
        starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(np.asarray(lengths, dtype=np.int64), out=starts[1:])
        return Dataset(np.asarray(ids, dtype=np.int64), starts,
                       np.asarray(labels, dtype=np.int64), names)

    return Corpus(dataset(False), dataset(True), sections, merged, no_section)


# -------------------------------------------------------------------- model

class TableEmbeddingBag:
    """An EmbeddingBag whose rows live in a sparse table on the shards.

    The one place that knows the embedding is remote; it stands in for
    psclient.torch.RemoteEmbeddingBag (same arguments) until that lands.
    forward(input, offsets) pulls the rows of the batch's unique ids only,
    holds them in a leaf tensor and runs F.embedding_bag over it; when
    backward reaches that leaf, a hook pushes its gradient rows (repeats
    already summed) to the table, whose Adagrad updates them on the shards
    and creates the rows pushed for the first time.
    """

    def __init__(self, table: str, dim: int, client, mode: str = "mean",
                 optimizer=None, init=None, on_exists: str = "error"):
        self.table, self.dim, self.client, self.mode = table, dim, client, mode
        client.create_table(table, dim, init=init, optimizer=optimizer,
                            on_exists=on_exists)
        self.training = True
        self.rows_pulled = 0  # counters for the bytes-per-step figures
        self.rows_pushed = 0

    def train(self, mode: bool = True) -> "TableEmbeddingBag":
        self.training = mode
        return self

    def eval(self) -> "TableEmbeddingBag":
        return self.train(False)

    def __call__(self, input, offsets):
        return self.forward(input, offsets)

    def forward(self, input, offsets):
        import torch
        import torch.nn.functional as F
        ids, inverse = torch.unique(input, return_inverse=True)
        rows = torch.from_numpy(self.client.pull_rows(self.table, ids, self.dim))
        self.rows_pulled += len(ids)
        if self.training and torch.is_grad_enabled():
            rows.requires_grad_(True)
            rows.register_hook(lambda grad: self._push(ids, grad))
        return F.embedding_bag(inverse, rows, offsets, mode=self.mode)

    def _push(self, ids, grad) -> None:
        self.client.push_rows(self.table, ids, grad.contiguous())
        self.rows_pushed += len(ids)


class TextClassifier:
    """embedding bag (mean) -> Linear(dim, sections): fastText's model."""

    def __init__(self, bag, num_classes: int):
        import torch
        torch.manual_seed(SEED)  # every run starts from the same Linear layer
        self.bag = bag
        self.fc = torch.nn.Linear(DIM, num_classes)

    def __call__(self, input, offsets):
        return self.fc(self.bag(input, offsets))


def accuracy(model: TextClassifier, data: Dataset, batch_size: int = 2048) -> float:
    import numpy as np
    import torch
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            index = np.arange(start, min(start + batch_size, len(data)))
            x, offsets, y = data.batch(index)
            correct += int((model(x, offsets).argmax(1) == y).sum())
    return correct / max(len(data), 1)


def epoch_orders(n: int, epochs: int, seed: int):
    """A fresh random order of range(n) per epoch."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        yield torch.randperm(n, generator=generator).numpy()


def eval_points(total_examples: int, count: int) -> List[int]:
    """Examples seen (all workers together) after which the test set is scored."""
    return [round(total_examples * (k + 1) / count) for k in range(count)]


# -------------------------------------------------------------------- local

@dataclass
class RunResult:
    name: str
    curve: List[Tuple[int, float]] = field(default_factory=list)  # (examples, loss)
    test_curve: List[Tuple[int, float]] = field(default_factory=list)
    test_acc: float = float("nan")
    train_acc: float = float("nan")
    seconds: float = 0.0
    steps: int = 0
    unique_ids: List[int] = field(default_factory=list)  # per step


def train_local(corpus: Corpus, args) -> RunResult:
    """The same model in one process: torch's sparse EmbeddingBag and Adagrad."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    result = RunResult("local (torch)")
    start = time.monotonic()
    # Renumber the ids that occur: rows start at zero and sparse Adagrad
    # changes only rows with a gradient, so this is the 2^24-row table.
    vocab, inverse = np.unique(np.concatenate([corpus.train.ids, corpus.test.ids]),
                               return_inverse=True)
    train = Dataset(inverse[:len(corpus.train.ids)].astype(np.int64),
                    corpus.train.starts, corpus.train.labels)
    test = Dataset(inverse[len(corpus.train.ids):].astype(np.int64),
                   corpus.test.starts, corpus.test.labels)
    bag = torch.nn.EmbeddingBag(len(vocab), DIM, mode="mean", sparse=True)
    torch.nn.init.zeros_(bag.weight)
    model = TextClassifier(bag, len(corpus.sections))
    bag_opt = torch.optim.Adagrad(bag.parameters(), lr=args.lr_embedding)
    fc_opt = torch.optim.Adagrad(model.fc.parameters(), lr=args.lr_linear)
    total = len(train) * args.epochs
    points = eval_points(total, args.evals)
    seen = 0
    batch = args.batch_size
    for order in epoch_orders(len(train), args.epochs, SEED):
        for k in range(0, len(order), batch):
            index = order[k:k + batch]
            x, offsets, y = train.batch(index)
            bag_opt.zero_grad()
            fc_opt.zero_grad()
            loss = F.cross_entropy(model(x, offsets), y)
            loss.backward()
            bag_opt.step()
            fc_opt.step()
            seen += len(index)
            result.steps += 1
            result.curve.append((seen, loss.item()))
            while points and seen >= points[0]:
                result.test_curve.append((points.pop(0), accuracy(model, test)))
    result.seconds = time.monotonic() - start
    result.test_acc = accuracy(model, test)
    result.train_acc = accuracy(model, train)
    return result


# ------------------------------------------------------------------- remote

def worker_main(worker: int, num_workers: int, build_dir: str, servers: List[str],
                config: dict, train: Dataset, test: Optional[Dataset],
                reports: "mp.Queue") -> None:
    """A worker process: trains on its share of the training set."""
    os.environ["PS_BUILD_DIR"] = build_dir
    try:
        import torch
        import torch.nn.functional as F

        from psclient import Client, ps_pb2, tune_malloc
        from psclient.torch import RemoteOptimizer

        torch.set_num_threads(1)
        tune_malloc()
        with Client(servers, timeout=120, worker_id=f"text-{worker}") as client:
            bag = TableEmbeddingBag(
                TABLE, DIM, client, mode="mean",
                optimizer=f"adagrad {{}} learning_rate: {config['lr_embedding']}",
                init=ps_pb2.RowInit(zeros=ps_pb2.Zeros()))
            model = TextClassifier(bag, config["num_classes"])
            optimizer = RemoteOptimizer(
                model.fc.named_parameters(), client, prefix=PREFIX,
                optimizer=f"adagrad {{}} learning_rate: {config['lr_linear']}")
            reports.put(("ready", worker))
            batch = config["batch_size"]
            # Worker 0 scores the test set when the cluster as a whole has
            # seen about as many examples as the local run at its points.
            points = eval_points(len(train) * num_workers * config["epochs"],
                                 config["evals"]) if test is not None else []
            seen = 0
            for order in epoch_orders(len(train), config["epochs"], SEED + 1 + worker):
                for k in range(0, len(order), batch):
                    index = order[k:k + batch]
                    x, offsets, y = train.batch(index)
                    optimizer.zero_grad()
                    pulled = bag.rows_pulled
                    loss = F.cross_entropy(model(x, offsets), y)
                    loss.backward()  # the bag's hook pushes its row gradients
                    optimizer.step()  # the Linear layer's, through PushPull
                    seen += len(index)
                    test_acc = None
                    while points and seen * num_workers >= points[0]:
                        bag.eval()
                        test_acc = (points.pop(0), accuracy(model, test))
                        bag.train()
                    reports.put(("step", worker, len(index), loss.item(),
                                 bag.rows_pulled - pulled, test_acc))
            reports.put(("done", worker, bag.rows_pulled, bag.rows_pushed))
    except BaseException:  # report anything, then exit
        reports.put(("error", worker, traceback.format_exc()))


def shard_stats(servers: Sequence[str]) -> dict:
    """Summed over the shards: the table's rows and rows_created, bytes in/out."""
    import grpc

    from psclient import ps_pb2, ps_pb2_grpc
    total = {"rows": 0, "rows_created": 0, "bytes_in": 0, "bytes_out": 0,
             "table_step": 0, "rows_per_shard": []}
    for address in servers:
        with grpc.insecure_channel(address) as channel:
            stub = ps_pb2_grpc.AdminServiceStub(channel)
            stats = stub.GetStats(ps_pb2.GetStatsRequest(), timeout=10)
        total["bytes_in"] += stats.bytes_in
        total["bytes_out"] += stats.bytes_out
        for v in stats.variables:
            if v.name == TABLE and v.HasField("table"):
                total["rows"] += v.table.rows
                total["rows_created"] += v.table.rows_created
                total["table_step"] = max(total["table_step"], v.table.step)
                total["rows_per_shard"].append(v.table.rows)
    return total


def train_remote(corpus: Corpus, args, build_dir: pathlib.Path) -> Tuple[RunResult, dict]:
    """The model on a 2-shard async cluster with args.workers worker processes."""
    from psclient import Client, LocalCluster, ps_pb2

    result = RunResult(f"remote ({args.shards} shards, {args.workers} workers, async)")
    config = {"lr_embedding": args.lr_embedding, "lr_linear": args.lr_linear,
              "num_classes": len(corpus.sections), "batch_size": args.batch_size,
              "epochs": args.epochs, "evals": args.evals}
    cluster = LocalCluster(args.shards, consistency="async",
                           optimizer=f"adagrad {{}} learning_rate: {args.lr_linear}")
    cluster.start()
    context = mp.get_context("spawn")  # gRPC and torch do not survive fork
    reports = context.Queue()
    workers = []
    try:
        print(f"  shards {cluster.servers} (async)", flush=True)
        for w in range(args.workers):
            share = corpus.train.subset(range(w, len(corpus.train), args.workers))
            workers.append(context.Process(
                target=worker_main,
                args=(w, args.workers, str(build_dir), cluster.addresses, config,
                      share, corpus.test if w == 0 else None, reports),
                daemon=True))
        for p in workers:
            p.start()
        ready, done, seen, start = 0, {}, 0, None
        deadline = time.monotonic() + args.run_timeout
        progress = Progress(len(corpus.train) * args.epochs)
        while len(done) < args.workers:
            try:
                message = reports.get(timeout=5)
            except queue.Empty:
                dead = [i for i, p in enumerate(workers) if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"worker(s) {dead} exited unexpectedly")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"training did not finish in {args.run_timeout}s")
                continue
            kind = message[0]
            if kind == "error":
                raise RuntimeError(f"worker {message[1]} failed:\n{message[2]}")
            if kind == "ready":
                ready += 1
                if start is None:  # workers train from their own "ready"
                    start = time.monotonic()
                continue
            if kind == "done":
                done[message[1]] = message[2:]
                continue
            _, worker, size, loss, unique, test_acc = message
            seen += size
            result.steps += 1
            result.curve.append((seen, loss))
            result.unique_ids.append(unique)
            if test_acc is not None:
                result.test_curve.append(test_acc)
            progress.update(seen, loss, test_acc[1] if test_acc else None,
                            time.monotonic() - (start or time.monotonic()))
        result.seconds = time.monotonic() - (start or time.monotonic())
        for p in workers:
            p.join(timeout=30)
        stats = shard_stats(cluster.addresses)
        # The final model, as the shards hold it, scored here.
        with Client(cluster.addresses, timeout=120, worker_id="text-eval") as client:
            bag = TableEmbeddingBag(TABLE, DIM, client, mode="mean",
                                    init=ps_pb2.RowInit(zeros=ps_pb2.Zeros()),
                                    on_exists="reuse")  # the trained table
            model = TextClassifier(bag, len(corpus.sections))
            import torch
            for name, p in model.fc.named_parameters():
                client.register_variable(PREFIX + name, tuple(p.shape))
                with torch.no_grad():
                    p.copy_(torch.from_numpy(client.pull(PREFIX + name)))
            bag.eval()
            result.test_acc = accuracy(model, corpus.test)
            result.train_acc = accuracy(model, corpus.train)
        stats["rows_pulled"] = sum(d[0] for d in done.values())  # test scoring too
        stats["rows_pushed"] = sum(d[1] for d in done.values())
    finally:
        for p in workers:
            if p.is_alive():
                p.terminate()
                p.join()
        codes = cluster.stop()
    if any(c != 0 for c in codes):
        raise RuntimeError(f"shards exited with {codes}")
    return result, stats


class Progress:
    """A bar on a terminal, a line every 10% otherwise."""

    def __init__(self, total: int):
        self.total = total
        self.tty = sys.stdout.isatty()
        self.next_print = 0
        self.loss = None
        self.test = None

    def update(self, seen: int, loss: float, test_acc: Optional[float],
               elapsed: float) -> None:
        self.loss = loss if self.loss is None else 0.98 * self.loss + 0.02 * loss
        if test_acc is not None:
            self.test = test_acc
        test = f"test acc {self.test:5.3f}" if self.test is not None else "test acc   -  "
        text = (f"{seen:7d}/{self.total} examples  loss {self.loss:6.4f}  "
                f"{test}  {elapsed:5.1f}s")
        if self.tty:
            sys.stdout.write(f"\r  {text}")
            if seen >= self.total:
                sys.stdout.write("\n")
            sys.stdout.flush()
        elif seen >= self.next_print or seen >= self.total:
            print(f"  {text}", flush=True)
            self.next_print = seen + max(1, self.total // 10)


# --------------------------------------------------------------------- main

def plot(results: List[RunResult], path: pathlib.Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    for r in results:
        xs = [x for x, _ in r.curve]
        smooth, ema = [], None
        for _, v in r.curve:
            ema = v if ema is None else 0.98 * ema + 0.02 * v
            smooth.append(ema)
        line, = ax.plot(xs, smooth, label=f"{r.name}")
        ax.plot(xs, [v for _, v in r.curve], color=line.get_color(), alpha=0.12,
                linewidth=0.6)
        ax_acc.plot([x for x, _ in r.test_curve], [a for _, a in r.test_curve],
                    marker="o", color=line.get_color(),
                    label=f"{r.name}: final {r.test_acc:.3f}")
    ax.set_xlabel("training examples seen (all workers)")
    ax.set_ylabel("training loss (cross-entropy, EMA 0.98; raw faint)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax_acc.set_xlabel("training examples seen (all workers)")
    ax_acc.set_ylabel("held-out test accuracy")
    ax_acc.set_title("Test accuracy (10% of packages, by name hash)")
    ax_acc.grid(True, alpha=0.3)
    ax_acc.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=None,
                        help="a package list in `apt-cache dumpavail` format "
                             "(default: run apt-cache dumpavail)")
    parser.add_argument("--epochs", type=int, default=2,
                        help="passes over the training set (both runs)")
    parser.add_argument("--batch_size", type=int, default=64,
                        help="packages per worker per step (local: per step)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes of the remote run (1-4)")
    parser.add_argument("--shards", type=int, default=2, help="ps_server shards")
    parser.add_argument("--lr_embedding", type=float, default=0.2,
                        help="Adagrad learning rate of the embedding rows")
    parser.add_argument("--lr_linear", type=float, default=0.05,
                        help="Adagrad learning rate of the Linear layer")
    parser.add_argument("--min_section", type=int, default=100,
                        help="sections with fewer packages are merged into 'other'")
    parser.add_argument("--evals", type=int, default=4,
                        help="times each run scores the test set while training")
    parser.add_argument("--skip_local", action="store_true",
                        help="train on the cluster only")
    parser.add_argument("--build_dir", default=os.environ.get("PS_BUILD_DIR",
                                                              str(REPO / "build")),
                        help="build tree with server/ps_server and python/ stubs")
    parser.add_argument("--out", default=str(REPO / "out"),
                        help="directory for the plot")
    parser.add_argument("--json", default=None,
                        help="also write the figures to this JSON file")
    parser.add_argument("--run_timeout", type=float, default=240,
                        help="seconds before the remote run is declared stuck")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.evals < 1:
        parser.error("--epochs, --batch_size and --evals must be positive")
    if not 1 <= args.workers <= 4:
        parser.error("--workers must be 1 to 4")

    build_dir = pathlib.Path(args.build_dir).resolve()
    os.environ["PS_BUILD_DIR"] = str(build_dir)
    from psclient import find_server_binary
    find_server_binary()  # fail early with a clear message
    import torch
    torch.set_num_threads(1)

    started = time.monotonic()
    text = read_package_list(args.data)
    if not text.strip() and args.data is None:
        if fetch_package_lists():
            text = read_package_list(None)
    if not text.strip() and args.data is not None:
        raise SystemExit(f"{args.data} holds no packages")
    if not text.strip():
        raise SystemExit(
            "No package lists: `apt-cache dumpavail` printed nothing. Fetch them "
            "with\n    sudo apt-get update\n(as root: apt-get update), then run "
            "this again; or pass --data=FILE in `apt-cache dumpavail` format.")
    corpus = build_corpus(text, args.min_section)
    if len(corpus.train) == 0 or len(corpus.test) == 0:
        raise SystemExit("too few packages for a training and a test set")
    train_ids = int(len(corpus.train.ids))
    distinct = len(set(corpus.train.ids.tolist()))
    chance = Counter(corpus.test.labels.tolist()).most_common(1)[0][1] / len(corpus.test)
    print(f"Packages: {len(corpus.train)} train, {len(corpus.test)} test (1 in "
          f"{TEST_BUCKETS} by name hash), {len(corpus.sections)} sections"
          + (f" ({len(corpus.merged)} with < {args.min_section} packages merged "
             f"into 'other')" if corpus.merged else "")
          + (f"; {corpus.no_section} without a Section left out"
             if corpus.no_section else ""), flush=True)
    print(f"Features: {train_ids / len(corpus.train):.1f} ids per package, "
          f"{distinct} distinct ids in the training set of 2^{HASH_BITS} possible; "
          f"model: EmbeddingBag 2^{HASH_BITS} x {DIM} (mean) + Linear "
          f"{DIM} x {len(corpus.sections)}; data read in "
          f"{time.monotonic() - started:.1f}s", flush=True)

    results: List[RunResult] = []
    if not args.skip_local:
        print(f"\n== local: torch, sparse EmbeddingBag + Adagrad, {args.epochs} "
              f"epochs x batch {args.batch_size}", flush=True)
        local = train_local(corpus, args)
        results.append(local)
        print(f"  {local.steps} steps in {local.seconds:.1f}s; test acc "
              f"{local.test_acc:.4f}", flush=True)
    print(f"\n== remote: {args.shards} shards, {args.workers} workers (async), "
          f"{args.epochs} epochs x batch {args.batch_size} per worker", flush=True)
    remote, stats = train_remote(corpus, args, build_dir)
    results.insert(0, remote)
    print(f"  {remote.steps} worker steps in {remote.seconds:.1f}s; test acc "
          f"{remote.test_acc:.4f}", flush=True)

    # Bytes per worker step: the rows of the batch's unique ids each way
    # (values and their 8-byte ids), against a dense table sent whole.
    steps = max(remote.steps, 1)
    unique = sum(remote.unique_ids) / steps  # training steps only, not test scoring
    row_bytes = DIM * 4
    sparse_each_way = unique * (row_bytes + 8)
    dense_each_way = NUM_IDS * row_bytes
    measured = (stats["bytes_in"] + stats["bytes_out"]) / steps
    figures = {
        "train_packages": len(corpus.train), "test_packages": len(corpus.test),
        "sections": len(corpus.sections), "merged_sections": corpus.merged,
        "no_section": corpus.no_section, "chance": chance,
        "remote_test_acc": remote.test_acc, "remote_train_acc": remote.train_acc,
        "local_test_acc": results[-1].test_acc if not args.skip_local else None,
        "local_train_acc": results[-1].train_acc if not args.skip_local else None,
        "rows_created": stats["rows_created"], "rows": stats["rows"],
        "rows_per_shard": stats["rows_per_shard"],
        "distinct_train_ids": distinct, "worker_steps": remote.steps,
        "unique_ids_per_step": unique, "rows_pushed": stats["rows_pushed"],
        "sparse_bytes_per_step_each_way": sparse_each_way,
        "dense_bytes_per_step_each_way": dense_each_way,
        "measured_shard_bytes_per_step": measured,
        "remote_seconds": remote.seconds,
        "local_seconds": results[-1].seconds if not args.skip_local else None,
    }

    out = pathlib.Path(args.out)
    png = out / "text_training_curves.png"
    plot(results, png, f"Package sections: fastText-style, 2^{HASH_BITS} x {DIM} "
         "hashed embedding")
    print("\n" + f"{'run':38s} {'test acc':>8s} {'train acc':>9s} {'time (s)':>8s}")
    print("-" * 66)
    for r in results:
        print(f"{r.name:38s} {r.test_acc:8.4f} {r.train_acc:9.4f} {r.seconds:8.1f}")
    print(f"(chance, the most common section: {chance:.4f})")
    print(f"\nRows created on the shards: {stats['rows_created']} "
          f"({' + '.join(str(n) for n in stats['rows_per_shard'])} held); "
          f"{distinct} distinct ids in the training set; "
          f"{NUM_IDS} possible")
    print(f"Per worker step (batch {args.batch_size}): {unique:.0f} unique ids, "
          f"{human_bytes(sparse_each_way)} each way (rows + ids) against "
          f"{human_bytes(dense_each_way)} for the dense table: "
          f"{dense_each_way / max(sparse_each_way, 1):,.0f}x less. Measured at "
          f"the shards (all calls, both ways, Linear layer and test pulls "
          f"included): {human_bytes(measured)} per step")
    print(f"\nTraining curves: {png.resolve()}")
    print(f"Total time: {time.monotonic() - started:.1f}s")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
