"""Partitioning: fnv1a64 against the shared vector table, and the block plan."""

from __future__ import annotations

import pathlib
import unittest

from psclient import PartitionPlan, fnv1a64
from psclient._stubs import repo_root

VECTORS = repo_root() / "tests" / "data" / "fnv1a64_vectors.txt"


def read_vectors(path: pathlib.Path):
    """(expected hash, string) per line of `<hex> <string>`; the string may be
    empty or hold spaces, so only the first space separates."""
    vectors = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        hex_part, _, text = line.partition(" ")
        vectors.append((int(hex_part, 16), text))
    return vectors


class Fnv1a64Test(unittest.TestCase):

    def test_published_vectors(self):
        # From the FNV reference test suite.
        self.assertEqual(fnv1a64(""), 0xCBF29CE484222325)
        self.assertEqual(fnv1a64("a"), 0xAF63DC4C8601EC8C)
        self.assertEqual(fnv1a64("foobar"), 0x85944171F73967E8)

    def test_bytes_and_str_agree(self):
        self.assertEqual(fnv1a64("héllo"), fnv1a64("héllo".encode("utf-8")))

    def test_shared_vector_file(self):
        if not VECTORS.is_file():
            self.skipTest(f"{VECTORS} is missing")
        vectors = read_vectors(VECTORS)
        self.assertGreater(len(vectors), 0)
        for expected, text in vectors:
            with self.subTest(text=text):
                self.assertEqual(fnv1a64(text), expected, f"{text!r}")


class PartitionPlanTest(unittest.TestCase):

    def test_blocks_cover_the_variable_in_order(self):
        plan = PartitionPlan(num_shards=3, block_size=10)
        blocks = list(plan.blocks("layer1/w", 35))
        self.assertEqual([(k, o, n) for _, k, o, n in blocks],
                         [(0, 0, 10), (1, 10, 10), (2, 20, 10), (3, 30, 5)])
        self.assertEqual(plan.num_blocks(35), 4)
        self.assertEqual(plan.num_blocks(30), 3)
        self.assertEqual(plan.block_range(35, 3), (30, 5))

    def test_shard_rule(self):
        plan = PartitionPlan(num_shards=3, block_size=4)
        base = fnv1a64("w") % 3
        for k in range(7):
            self.assertEqual(plan.shard_of("w", k), (base + k) % 3)
        self.assertEqual([s for s, *_ in plan.blocks("w", 28)],
                         [plan.shard_of("w", k) for k in range(7)])

    def test_one_shard_owns_everything(self):
        plan = PartitionPlan(num_shards=1, block_size=2)
        self.assertEqual({s for s, *_ in plan.blocks("anything", 9)}, {0})

    def test_rejects_empty_cluster(self):
        with self.assertRaises(ValueError):
            PartitionPlan(num_shards=0, block_size=1)
        with self.assertRaises(ValueError):
            PartitionPlan(num_shards=1, block_size=0)


if __name__ == "__main__":
    unittest.main()
