"""examples/train_text.py, the main job's text part, without apt lists: its
package parsing and hashing, its remote embedding bag against torch's, and a
whole run (2 shards, 2 async workers, and the local torch run) on a generated
package list in `apt-cache dumpavail` format."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch
import torch.nn.functional as F

from psclient import Client, LocalCluster, ps_pb2

from tests import helpers  # noqa: F401  (logging, one torch thread)

REPO = pathlib.Path(__file__).resolve().parents[3]
SCRIPT = REPO / "examples" / "train_text.py"

_spec = importlib.util.spec_from_file_location("train_text", SCRIPT)
train_text = importlib.util.module_from_spec(_spec)
sys.modules["train_text"] = train_text
_spec.loader.exec_module(train_text)

# Section -> (name patterns, words typical of it).
SECTIONS = {
    "games": (["{w}-game", "{w}{w2}", "x{w}"],
              "arcade puzzle strategy shooter multiplayer level board card "
              "racing adventure dungeon chess".split()),
    "libs": (["lib{w}{n}", "lib{w}-{w2}{n}"],
             "shared library runtime routines bindings codec parsing "
             "compression engine protocol".split()),
    "python": (["python3-{w}", "python3-{w}-{w2}"],
               "python module django pytest async wrapper api client "
               "interface helpers typing".split()),
    "doc": (["{w}-doc", "{w}-{w2}-doc"],
            "documentation manual reference examples html guide tutorial "
            "handbook pages".split()),
}
COMMON = "tool for the and with of a simple fast small support data files".split()


def generated_package_list(count: int, seed: int = 1) -> str:
    """A dumpavail-format list: `count` packages of 4 sections, plus 5
    without a Section, 5 without a Description, 3 in a rare section and
    one listed twice."""
    rng = random.Random(seed)
    stanzas = []
    names = set()
    sections = list(SECTIONS)
    for i in range(count):
        section = sections[i % len(sections)]
        patterns, words = SECTIONS[section]
        if rng.random() < 0.15:  # noise: another section's name and words
            patterns, words = SECTIONS[rng.choice(sections)]
        while True:
            stem = rng.choice(COMMON) + rng.choice(COMMON)[:3] + str(rng.randrange(1000))
            pattern = rng.choice(patterns) if rng.random() < 0.4 else "{w}"
            name = pattern.format(w=stem, w2=rng.choice(words), n=rng.randrange(10))
            if name not in names:
                break
        names.add(name)
        description = " ".join(rng.choice(words if rng.random() < 0.2 else COMMON)
                               for _ in range(rng.randrange(3, 9)))
        area = "contrib/" if i % 7 == 0 else ""
        stanzas.append(f"Package: {name}\nVersion: 1.0-{i}\nArchitecture: all\n"
                       f"Description: {description.capitalize()}\n"
                       f" A long description line that is not used.\n"
                       f" .\n more of it\nSection: {area}{section}\nPriority: optional\n")
    for i in range(5):
        stanzas.append(f"Package: nosection{i}\nVersion: 1\nDescription: no section\n")
    for i in range(5):
        stanzas.append(f"Package: python3-nodescription{i}\nVersion: 1\nSection: python\n")
    for i in range(3):
        stanzas.append(f"Package: rare{i}\nSection: non-free/zope\nDescription: rare\n")
    stanzas.append(stanzas[0])  # a second version of a package
    return "\n".join(stanzas)


class ParsingTest(unittest.TestCase):
    def test_stanzas_sections_and_missing_fields(self):
        text = generated_package_list(40)
        packages, no_section = train_text.parse_packages(text)
        self.assertEqual(no_section, 5)
        self.assertEqual(len(packages), 40 + 5 + 3)  # the repeat counts once
        by_name = {name: (section, description) for name, section, description in packages}
        self.assertEqual(by_name["python3-nodescription0"], ("python", ""))
        self.assertEqual(by_name["rare1"][0], "zope")  # area prefix dropped
        self.assertNotIn("nosection0", by_name)
        first = next(iter(sorted(by_name)))
        self.assertNotIn("long description", by_name[first][1])

        corpus = train_text.build_corpus(text, min_section=4)
        self.assertEqual(corpus.merged, ["zope"])
        self.assertEqual(corpus.sections, sorted(SECTIONS) + ["other"])
        self.assertEqual(len(corpus.train) + len(corpus.test), 48)
        for data in (corpus.train, corpus.test):
            for name in data.names:
                self.assertEqual(train_text.in_test_set(name), data is corpus.test)

    def test_tokens_and_stable_ids(self):
        self.assertEqual(train_text.tokens("python3-numpy", "Fast arrays"),
                         ["n:python3", "n:numpy", "w:fast", "w:arrays",
                          "b:python3 numpy", "b:fast arrays"])
        # BLAKE2b-64 of the token's UTF-8, little-endian: fixed on every
        # machine and in every process (Python's hash() is salted).
        self.assertEqual(train_text.stable_hash("w:fast"), int.from_bytes(
            __import__("hashlib").blake2b(b"w:fast", digest_size=8).digest(), "little"))
        ids = train_text.feature_ids("python3-numpy", "Fast arrays")
        self.assertTrue(all(0 <= i < 2**24 for i in ids))
        code = ("import sys; sys.path.insert(0, %r); import train_text as t; "
                "print(t.feature_ids('python3-numpy', 'Fast arrays'))"
                % str(SCRIPT.parent))
        again = subprocess.run([sys.executable, "-c", code], capture_output=True,
                               text=True, check=True, env={**os.environ,
                                                           "PYTHONHASHSEED": "123"})
        self.assertEqual(json.loads(again.stdout), ids)

    def test_empty_package_lists_are_fetched_or_named(self):
        # apt-cache answers nothing (no `apt-get update` yet), and apt-get
        # update fails: the program tries it, then says what to run.
        with tempfile.TemporaryDirectory() as tmp:
            tools = pathlib.Path(tmp)
            log = tools / "apt-get.log"
            scripts = {"apt-cache": "exit 0",
                       "apt-get": f'echo "$@" >> {log}; exit 100',
                       "sudo": 'shift; exec "$@"'}  # sudo -n COMMAND...
            for name, body in scripts.items():
                (tools / name).write_text(f"#!/bin/sh\n{body}\n")
                (tools / name).chmod(0o755)
            env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
            done = subprocess.run([sys.executable, str(SCRIPT)], env=env,
                                  capture_output=True, text=True, timeout=120)
            self.assertEqual(log.read_text().split(), ["update", "-qq"])
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("The package lists are empty; running:", done.stdout)
        self.assertIn("sudo apt-get update", done.stderr)

        with tempfile.NamedTemporaryFile("w", suffix=".txt") as empty:
            done = subprocess.run([sys.executable, str(SCRIPT), f"--data={empty.name}"],
                                  capture_output=True, text=True, timeout=120)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("holds no packages", done.stderr)


class TableEmbeddingBagTest(unittest.TestCase):
    """The remote bag trains exactly as nn.EmbeddingBag(sparse) + Adagrad."""

    def test_follows_torch(self):
        dim, vocab, lr = 4, 40, 0.3
        with LocalCluster(2) as cluster, Client(cluster.addresses) as client:
            bag = train_text.TableEmbeddingBag(
                "bag", dim, client, mode="mean",
                optimizer=f"adagrad {{}} learning_rate: {lr}",
                init=ps_pb2.RowInit(normal=ps_pb2.Normal(stddev=0.5), seed=3))
            ids_all = np.arange(vocab) * 1000003  # sparse, far apart ids
            local = torch.nn.EmbeddingBag(vocab, dim, mode="mean", sparse=True)
            with torch.no_grad():
                local.weight.copy_(torch.from_numpy(client.pull_rows("bag", ids_all, dim)))
            optimizer = torch.optim.Adagrad(local.parameters(), lr=lr)
            target = torch.randn(3, dim, generator=torch.Generator().manual_seed(0))
            rng = np.random.default_rng(0)
            for _ in range(6):
                index = torch.from_numpy(rng.integers(0, vocab, size=9))
                index[1] = index[0]  # a repeat within a bag
                offsets = torch.tensor([0, 2, 5])
                remote_out = bag(torch.from_numpy(ids_all)[index], offsets)
                optimizer.zero_grad()
                local_out = local(index, offsets)
                torch.testing.assert_close(remote_out, local_out)
                F.mse_loss(remote_out, target).backward()  # pushes the rows
                F.mse_loss(local_out, target).backward()
                optimizer.step()
            np.testing.assert_allclose(client.pull_rows("bag", ids_all, dim),
                                       local.weight.detach().numpy(),
                                       rtol=1e-5, atol=1e-6)
            self.assertGreater(bag.rows_pushed, 0)


class TrainTextRunTest(unittest.TestCase):
    """A whole run of the text part on a generated list of 1,500 packages."""

    def test_run_beats_chance_and_remote_matches_local(self):
        with tempfile.TemporaryDirectory() as tmp:
            data = pathlib.Path(tmp) / "packages.txt"
            data.write_text(generated_package_list(1500))
            figures_file = pathlib.Path(tmp) / "figures.json"
            done = subprocess.run(
                [sys.executable, str(SCRIPT), f"--data={data}", "--epochs=2",
                 "--batch_size=16", "--workers=2", "--evals=2", "--min_section=4",
                 f"--out={tmp}", f"--json={figures_file}", "--run_timeout=120"],
                capture_output=True, text=True, timeout=240)
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
            figures = json.loads(figures_file.read_text())
            self.assertTrue((pathlib.Path(tmp) / "text_training_curves.png").is_file())
        self.assertIn("Rows created on the shards", done.stdout)
        self.assertEqual(figures["sections"], 5)  # 4 + "other"
        self.assertEqual(figures["no_section"], 5)
        chance = max(figures["chance"], 1 / figures["sections"])
        for run in ("remote", "local"):
            self.assertGreater(figures[f"{run}_test_acc"], chance + 0.25, figures)
        self.assertLessEqual(abs(figures["remote_test_acc"] - figures["local_test_acc"]),
                             0.06, figures)
        # Rows exist for exactly the ids the workers pushed: every distinct
        # training id, none of the test set's own.
        self.assertEqual(figures["rows_created"], figures["distinct_train_ids"])
        self.assertEqual(figures["rows"], figures["rows_created"])
        self.assertEqual(len(figures["rows_per_shard"]), 2)
        self.assertTrue(all(n > 0 for n in figures["rows_per_shard"]))
        # Each step moves its unique rows, a sliver of the dense table.
        self.assertGreater(figures["unique_ids_per_step"], 0)
        self.assertLessEqual(figures["unique_ids_per_step"], 16 * 40)
        self.assertEqual(figures["dense_bytes_per_step_each_way"], 2**24 * 32 * 4)
        self.assertLess(figures["sparse_bytes_per_step_each_way"] * 1000,
                        figures["dense_bytes_per_step_each_way"])


if __name__ == "__main__":
    unittest.main()
