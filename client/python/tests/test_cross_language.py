"""A Python and a C++ worker (ps::Client) train the same variables and see each
other's updates: both partition the same way and speak the same wire format.

The C++ side is tests/cross_language_worker.cc, found at
$PSCLIENT_CROSS_WORKER or <build>/client/python/psclient_cross_language_worker.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import unittest

import numpy as np

from tests import helpers  # noqa: F401  (logging setup)

from psclient import Client, LocalCluster
from psclient._stubs import build_dir


def worker_binary() -> pathlib.Path:
    env = os.environ.get("PSCLIENT_CROSS_WORKER")
    return pathlib.Path(env) if env else (
        build_dir() / "client" / "python" / "psclient_cross_language_worker")


@unittest.skipUnless(worker_binary().is_file(),
                     f"the C++ worker is not built ({worker_binary()})")
class CrossLanguageTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        # 3 shards, 3-value blocks: every variable spans every shard.
        cls.cluster = LocalCluster(3, block_size=3,
                                   optimizer="sgd {} learning_rate: 1").start()
        cls.client = Client(cls.cluster.addresses)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        assert cls.cluster.stop() == [0, 0, 0]

    def cpp(self, *args: str) -> str:
        done = subprocess.run([str(worker_binary()), self.cluster.servers, *args],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout.strip()

    def cpp_values(self, *args: str) -> np.ndarray:
        return np.array([float(v) for v in self.cpp(*args).split()], dtype=np.float32)

    def test_python_creates_and_both_train(self):
        initial = (np.arange(20, dtype=np.float32) * 0.25 - 2).reshape(4, 5)
        self.assertTrue(self.client.create_variable("shared/w", initial=initial))
        # C++ creating it alike is fine; with other values only when it asks
        # to reuse Python's.
        self.assertEqual(self.cpp("create", "shared/w", "4x5", "-2", "0.25"), "existed")
        failed = subprocess.run([str(worker_binary()), self.cluster.servers, "create",
                                 "shared/w", "4x5", "99", "0"],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(failed.returncode, 1)
        self.assertIn("ALREADY_EXISTS", failed.stderr)
        self.assertIn("shared/w", failed.stderr)
        self.assertEqual(self.cpp("create", "shared/w", "4x5", "99", "0", "1"), "existed")
        np.testing.assert_array_equal(self.cpp_values("pull", "shared/w", "4x5"),
                                      initial.reshape(-1))
        # C++ trains; Python sees the update.
        after_cpp = self.cpp_values("pushpull", "shared/w", "4x5", "0.5")
        np.testing.assert_array_equal(after_cpp, initial.reshape(-1) - 0.5)
        np.testing.assert_array_equal(self.client.pull("shared/w"), initial - 0.5)
        # Python trains; C++ sees the update.
        after_py = self.client.push_pull({"shared/w": np.full((4, 5), 0.125, np.float32)})["shared/w"]
        np.testing.assert_array_equal(after_py, initial - 0.625)
        np.testing.assert_array_equal(self.cpp_values("pull", "shared/w", "4x5"),
                                      initial.reshape(-1) - 0.625)
        _, versions = self.client.pull("shared/w", return_versions=True)
        np.testing.assert_array_equal(versions, np.full(7, 2))

    def test_cpp_creates_python_reads(self):
        for name in ("cpp/v", "layer1.weight", "café"):
            with self.subTest(name=name):
                self.assertEqual(self.cpp("create", name, "2x7", "1.5", "-0.5"), "created")
                # Python attaches to it (a shape alone would mean zeros).
                self.assertFalse(self.client.create_variable(name, shape=[2, 7],
                                                             on_exists="reuse"))
                expected = (1.5 - 0.5 * np.arange(14, dtype=np.float64)).astype(np.float32)
                np.testing.assert_array_equal(self.client.pull(name),
                                              expected.reshape(2, 7))


if __name__ == "__main__":
    unittest.main()
