"""psclient.Client (the binding of ps::Client): the cluster check, retries
with exactly-once seqs, request splitting, wire encodings, arrays in and out
without copies, async forms, tokens and TLS, against fake and real shards."""

from __future__ import annotations

import concurrent.futures
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from typing import List

import grpc
import numpy as np
import torch

from tests.helpers import digits, make_mlp

from psclient import (Client, ClusterMismatchError, DType, LocalCluster, PsError,
                      RetryPolicy, StaleStepError, ps_pb2, ps_pb2_grpc)
from psclient import tune_malloc as psclient_tune_malloc
from psclient.torch import RemoteOptimizer

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


def encode(values: np.ndarray) -> bytes:
    """float32 values as the wire has them (what the fake shards answer)."""
    return np.asarray(values, "<f4").tobytes()


def decode(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<f4").copy()


def rounded(values: np.ndarray, dtype: DType) -> np.ndarray:
    """float32 values rounded to a half-precision wire type and back, as
    torch rounds (to nearest even)."""
    torch_type = {DType.BFLOAT16: torch.bfloat16, DType.FLOAT16: torch.float16}[dtype]
    return torch.from_numpy(values).to(torch_type).float().numpy()


def info(index: int, shards: int = 2, block: int = 8, consistency: str = "async",
         workers: int = 0, quorum: int = 0) -> ps_pb2.ClusterInfo:
    return ps_pb2.ClusterInfo(shard_index=index, num_shards=shards, block_size=block,
                              consistency=consistency, num_workers=workers,
                              quorum=quorum)


class OneShard(ps_pb2_grpc.ParameterServiceServicer):
    """What every fake shard here answers alike: one shard (blocks of 4
    values) that creates anything and opens sessions at epoch 1."""

    def GetClusterInfo(self, request, context):
        return info(0, shards=1, block=4)

    def CreateVariable(self, request, context):
        return ps_pb2.CreateVariableResponse(created=True)

    def OpenSession(self, request, context):
        return ps_pb2.OpenSessionResponse(epoch=1)


class FlakyShard(OneShard):
    """A one-shard cluster that fails the first `failures` attempts of each
    push with `code`, and records every push attempt it sees."""

    def __init__(self, failures: int, code: grpc.StatusCode):
        self.failures = failures
        self.code = code
        self.lock = threading.Lock()
        self.attempts: List[ps_pb2.PushRequest] = []
        self.failed_seqs: dict = {}

    def PushPull(self, request, context):
        with self.lock:
            self.attempts.append(request)
            seen = self.failed_seqs.get(request.seq, 0)
            if seen < self.failures:
                self.failed_seqs[request.seq] = seen + 1
                context.abort(self.code, "flaky shard says no")
        answer = ps_pb2.PullResponse()
        for g in request.gradients:
            answer.values.add(variable=g.variable, offset=g.offset, length=g.length,
                              dtype=request.pull_dtype, version=request.seq,
                              data=encode(np.zeros(g.length, np.float32)))
        return answer


class HeldPartShard(OneShard):
    """A one-shard cluster (blocks of 4 values) that holds the PushPull of
    block 0 until every other block has been answered (or 10 s), fails the
    first attempt at block 1 with UNAVAILABLE, and records what it sees."""

    def __init__(self, blocks: int):
        self.blocks = blocks
        self.lock = threading.Lock()
        self.others_done = threading.Event()
        self.attempts: List[ps_pb2.PushRequest] = []
        self.answered: set = set()
        self.answered_while_held = -1
        self.in_flight = 0
        self.most_in_flight = 0

    def PushPull(self, request, context):
        block = request.gradients[0].offset // 4
        with self.lock:
            self.attempts.append(request)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            fail = block == 1 and sum(
                a.gradients[0].offset == 4 for a in self.attempts) == 1
        try:
            if fail:
                context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
            if block == 0:
                self.others_done.wait(10)
                with self.lock:
                    self.answered_while_held = len(self.answered)
            answer = ps_pb2.PullResponse()
            for g in request.gradients:
                # The gradient back, negated, as the new values.
                values = -decode(g.data)
                answer.values.add(variable=g.variable, offset=g.offset,
                                  length=g.length, dtype=request.pull_dtype,
                                  version=request.seq,
                                  data=encode(values))
            with self.lock:
                self.answered.add(block)
                if len(self.answered - {0}) == self.blocks - 1:
                    self.others_done.set()
            return answer
        finally:
            with self.lock:
                self.in_flight -= 1


class PartsWindowTest(unittest.TestCase):

    def test_a_slow_part_does_not_hold_back_the_others(self):
        shard = HeldPartShard(blocks=6)
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
        ps_pb2_grpc.add_ParameterServiceServicer_to_server(shard, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.addCleanup(server.stop, None)
        # One block per part (part_bytes below one block), 2 parts in flight.
        with Client([f"127.0.0.1:{port}"], retry=FAST_RETRY, part_bytes=16,
                    parts_in_flight=2) as client:
            client.create_variable("v", shape=[24])
            gradient = np.arange(24, dtype=np.float32)
            after = client.push_pull({"v": gradient})["v"]
        np.testing.assert_array_equal(after, -gradient)
        # While block 0 was held, the other five parts went through one
        # after another in the window's second place (a retry included).
        self.assertEqual(shard.answered_while_held, 5)
        self.assertEqual(shard.most_in_flight, 2)
        seqs = {}
        for a in shard.attempts:
            seqs.setdefault(a.gradients[0].offset // 4, set()).add(a.seq)
        self.assertEqual(len(shard.attempts), 7)
        self.assertTrue(all(len(s) == 1 for s in seqs.values()))  # retry: same seq
        numbered = sorted(next(iter(seqs[b])) for b in range(6))
        self.assertEqual(numbered, list(range(numbered[0], numbered[0] + 6)))


class RetryTest(unittest.TestCase):

    def start(self, shard: FlakyShard) -> str:
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        ps_pb2_grpc.add_ParameterServiceServicer_to_server(shard, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.addCleanup(server.stop, None)
        return f"127.0.0.1:{port}"

    def test_retries_reuse_the_seq_and_seqs_increase(self):
        shard = FlakyShard(failures=2, code=grpc.StatusCode.UNAVAILABLE)
        with Client([self.start(shard)], retry=FAST_RETRY, worker_id="w1") as client:
            client.create_variable("v", shape=[6])
            for step in range(3):
                client.push_pull({"v": np.ones(6, np.float32)}, step=step)
        # 3 pushes, each tried 3 times (2 failures, then success).
        self.assertEqual(len(shard.attempts), 9)
        seqs = [a.seq for a in shard.attempts]
        self.assertEqual(seqs[0:3], [seqs[0]] * 3)
        self.assertEqual(seqs[3:6], [seqs[0] + 1] * 3)
        self.assertEqual(seqs[6:9], [seqs[0] + 2] * 3)
        self.assertTrue(all(a.worker_id == "w1" for a in shard.attempts))
        self.assertEqual([a.step for a in shard.attempts[::3]], [0, 1, 2])

    def test_deadline_exceeded_is_retried(self):
        shard = FlakyShard(failures=1, code=grpc.StatusCode.DEADLINE_EXCEEDED)
        with Client([self.start(shard)], retry=FAST_RETRY) as client:
            client.create_variable("v", shape=[3])
            client.push_pull({"v": np.ones(3, np.float32)})
        self.assertEqual(len(shard.attempts), 2)
        self.assertEqual(shard.attempts[0].seq, shard.attempts[1].seq)

    def test_gives_up_after_max_attempts(self):
        shard = FlakyShard(failures=100, code=grpc.StatusCode.UNAVAILABLE)
        with Client([self.start(shard)], retry=FAST_RETRY) as client:
            client.create_variable("v", shape=[3])
            with self.assertRaises(PsError) as caught:
                client.push_pull({"v": np.ones(3, np.float32)})
        self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(len(shard.attempts), FAST_RETRY.max_attempts)

    def test_other_errors_are_not_retried(self):
        shard = FlakyShard(failures=100, code=grpc.StatusCode.INVALID_ARGUMENT)
        with Client([self.start(shard)], retry=FAST_RETRY) as client:
            client.create_variable("v", shape=[3])
            with self.assertRaisesRegex(PsError, "INVALID_ARGUMENT.*flaky shard"):
                client.push_pull({"v": np.ones(3, np.float32)})
        self.assertEqual(len(shard.attempts), 1)

    def test_an_answer_that_does_not_parse_is_internal(self):
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        # Bytes that no PullResponse parses to (a field running past the end),
        # for PushPull; the rest of the service as a shard answers it.
        garbage = grpc.unary_unary_rpc_method_handler(
            lambda request, context: b"\x0a\x64abc")
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "ps.v1.ParameterService", {"PushPull": garbage}),))
        ps_pb2_grpc.add_ParameterServiceServicer_to_server(
            FlakyShard(0, grpc.StatusCode.OK), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.addCleanup(server.stop, None)
        with Client([f"127.0.0.1:{port}"], retry=FAST_RETRY) as client:
            client.create_variable("v", shape=[3])
            with self.assertRaises(PsError) as caught:
                client.push_pull({"v": np.ones(3, np.float32)})
        self.assertEqual(caught.exception.code, grpc.StatusCode.INTERNAL)
        self.assertIn("not a ps.v1.PullResponse", caught.exception.details)

    def test_unreachable_shard(self):
        with self.assertRaises(PsError) as caught:
            Client(["127.0.0.1:1"], retry=FAST_RETRY, timeout=2)
        self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE)


class LiveClusterTest(unittest.TestCase):
    """Against two real shards with 4-value blocks and SGD at rate 1."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = LocalCluster(2, block_size=4,
                                   optimizer="sgd {} learning_rate: 1").start()
        cls.client = Client(cls.cluster.addresses)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        assert cls.cluster.stop() == [0, 0]

    def test_shards_in_any_order(self):
        with Client(list(reversed(self.cluster.addresses))) as client:
            self.assertEqual(client.addresses, self.cluster.addresses)
            self.assertEqual(client.cluster_info.num_shards, 2)
            self.assertEqual(client.plan.block_size, 4)

    def test_create_pull_push(self):
        values = np.arange(30, dtype=np.float32).reshape(5, 6)
        self.assertTrue(self.client.create_variable("cpp/w", initial=values))
        self.assertFalse(self.client.create_variable("cpp/w", initial=values))
        with self.assertRaises(PsError) as caught:
            self.client.create_variable("cpp/w", initial=values * 0)
        self.assertEqual(caught.exception.code, grpc.StatusCode.ALREADY_EXISTS)
        self.assertIn("cpp/w", str(caught.exception))
        self.assertFalse(self.client.create_variable("cpp/w", initial=values * 0,
                                                     on_exists="reuse"))
        pulled, versions = self.client.pull("cpp/w", return_versions=True)
        np.testing.assert_array_equal(pulled, values)
        self.assertEqual(pulled.shape, (5, 6))
        np.testing.assert_array_equal(versions, np.zeros(8))  # ceil(30 / 4) blocks

        grad = np.full((5, 6), 0.5, dtype=np.float32)
        after = self.client.push_pull({"cpp/w": grad}, step=0)["cpp/w"]
        np.testing.assert_array_equal(after, values - 0.5)
        self.client.push({"cpp/w": grad.reshape(-1)}, loss=1.0)
        np.testing.assert_array_equal(self.client.pull("cpp/w"), values - 1.0)

    def test_several_variables_in_one_call(self):
        a = np.ones(7, np.float32)
        b = np.full((3, 3), 2.0, np.float32)
        self.client.create_variable("multi/a", initial=a)
        self.client.create_variable("multi/b", initial=b)
        out = self.client.push_pull({"multi/a": a, "multi/b": b})
        np.testing.assert_array_equal(out["multi/a"], np.zeros(7))
        np.testing.assert_array_equal(out["multi/b"], np.zeros((3, 3)))
        both = self.client.pull(["multi/a", "multi/b"])
        self.assertEqual(set(both), {"multi/a", "multi/b"})

    def test_a_restarted_worker_fences_the_old_one_and_is_applied(self):
        # Same worker id, seqs from 1 again: a newer session, so every push
        # is applied, and the process it replaced is refused, not dropped.
        self.client.create_variable("session/w", initial=np.zeros(6, np.float32))
        ones = np.ones(6, np.float32)
        with Client(self.cluster.addresses, worker_id="trainer") as old:
            old.create_variable("session/w", shape=[6])
            for _ in range(3):
                old.push({"session/w": ones})
            with Client(self.cluster.addresses, worker_id="trainer") as new:
                new.create_variable("session/w", shape=[6])
                self.assertGreater(new.session_epoch, old.session_epoch)
                new.push({"session/w": ones})
                new.push({"session/w": ones})
                with self.assertRaises(PsError) as caught:
                    old.push({"session/w": ones})
                self.assertEqual(caught.exception.code,
                                 grpc.StatusCode.FAILED_PRECONDITION)
                self.assertIn("fenced", caught.exception.details)
        np.testing.assert_array_equal(self.client.pull("session/w"), -5 * ones)

    def test_arrays_go_in_and_out_without_copies(self):
        self.client.create_variable("arrays/w", initial=np.zeros((2, 3), np.float32))
        grad = np.ones((2, 3), np.float32)
        out = np.full(6, 7.0, np.float32)
        answer = self.client.push_pull({"arrays/w": grad}, out={"arrays/w": out})
        self.assertIs(answer["arrays/w"], out)  # written in place
        np.testing.assert_array_equal(out, np.full(6, -1.0))
        # A CPU tensor in, a tensor's memory out.
        into = torch.zeros(2, 3)
        self.client.push({"arrays/w": torch.ones(2, 3)})
        self.client.pull("arrays/w", out={"arrays/w": into})
        torch.testing.assert_close(into, torch.full((2, 3), -2.0))

    def test_bad_arrays_are_refused_with_a_clear_error(self):
        self.client.create_variable("bad/w", shape=[6])
        cases = [(np.ones(6), TypeError, "float32"),
                 ([1.0] * 6, TypeError, "numpy array"),
                 (np.ones(12, np.float32)[::2], ValueError, "C-contiguous"),
                 (torch.ones(6, dtype=torch.float64), TypeError, "float32")]
        for gradient, error, says in cases:
            with self.subTest(says=says), self.assertRaisesRegex(error, says):
                self.client.push({"bad/w": gradient})
        read_only = np.zeros(6, np.float32)
        read_only.flags.writeable = False
        with self.assertRaisesRegex(ValueError, "read-only"):
            self.client.pull("bad/w", out={"bad/w": read_only})
        with self.assertRaisesRegex(ValueError, "holds 5 values"):
            self.client.pull("bad/w", out={"bad/w": np.zeros(5, np.float32)})
        # Nothing was pushed.
        np.testing.assert_array_equal(self.client.pull("bad/w"), np.zeros(6))

    def test_async_forms(self):
        self.client.create_variable("async/w", initial=np.zeros(10, np.float32))
        futures = [self.client.push_async({"async/w": np.ones(10, np.float32)})
                   for _ in range(3)]
        for f in futures:
            self.assertIsNone(f.result(timeout=30))
            self.assertTrue(f.done())
        pushed = self.client.push_pull_async({"async/w": np.ones(10, np.float32)},
                                             return_versions=True)
        values, versions = pushed.result(timeout=30)
        np.testing.assert_array_equal(values["async/w"], np.full(10, -4.0))
        np.testing.assert_array_equal(versions["async/w"], np.full(3, 4))
        out = np.empty(10, np.float32)
        pulled = self.client.pull_async("async/w", out={"async/w": out})
        self.assertIs(pulled.result(timeout=30), out)
        np.testing.assert_array_equal(out, np.full(10, -4.0))
        # A refusal surfaces from result().
        bad = self.client.push_async({"async/w": np.full(10, np.nan, np.float32)})
        with self.assertRaises(PsError) as caught:
            bad.result(timeout=30)
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_initial_values_larger_than_a_message_go_in_parts(self):
        # 64 KiB messages; 40,000 values (160 KB) of initial values.
        values = np.random.default_rng(5).normal(size=40_000).astype(np.float32)
        with Client(self.cluster.addresses, max_message_bytes=64 << 10) as small:
            self.assertTrue(small.create_variable("big/v", initial=values))
            np.testing.assert_array_equal(small.pull("big/v"), values)
            # A second creator's values do not replace the first's: an error,
            # or kept with reuse, or replaced (in parts too) with reset.
            with self.assertRaises(PsError) as caught:
                small.create_variable("big/v", initial=values + 1)
            self.assertEqual(caught.exception.code, grpc.StatusCode.ALREADY_EXISTS)
            self.assertFalse(small.create_variable("big/v", initial=values + 1,
                                                   on_exists="reuse"))
            np.testing.assert_array_equal(small.pull("big/v"), values)
            self.assertTrue(small.create_variable("big/v", initial=values + 1,
                                                  on_exists="reset"))
            np.testing.assert_array_equal(small.pull("big/v"), values + 1)

    def test_on_exists_reuse_and_reset(self):
        self.assertTrue(self.client.create_variable("exists/v", initial=np.ones(6),
                                                    optimizer="adam {}"))
        with self.assertRaises(PsError) as caught:
            self.client.create_variable("exists/v", initial=np.ones(6), optimizer="sgd {}")
        self.assertEqual(caught.exception.code, grpc.StatusCode.ALREADY_EXISTS)
        self.assertIn("adam", str(caught.exception))
        self.assertFalse(self.client.create_variable("exists/v", initial=np.ones(6),
                                                     optimizer="sgd {}", on_exists="reuse"))
        self.assertTrue(self.client.create_variable("exists/v", initial=np.full((2, 2), 3.0),
                                                    optimizer="sgd {}", on_exists="reset"))
        np.testing.assert_array_equal(self.client.pull("exists/v"), np.full((2, 2), 3.0))
        with self.assertRaises(ValueError):
            self.client.create_variable("exists/v", shape=[4], on_exists="replace")

    def test_delete_variable(self):
        self.client.create_variable("del/v", initial=np.ones(9))
        self.client.push({"del/v": np.ones(9, np.float32)})
        self.client.delete_variable("del/v")
        with self.assertRaises(KeyError):
            self.client.shape("del/v")
        with self.assertRaises(PsError) as caught:
            self.client.delete_variable("del/v")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        # Created afresh with other values: no error, step 0.
        self.assertTrue(self.client.create_variable("del/v", initial=np.zeros(3)))
        values, versions = self.client.pull("del/v", return_versions=True)
        np.testing.assert_array_equal(values, np.zeros(3))
        np.testing.assert_array_equal(versions, np.zeros(1))

    def test_delete_table(self):
        self.client.create_table("del/emb", 2, optimizer="sgd {} learning_rate: 1")
        ids = np.array([3, 8, 21], dtype=np.uint64)
        self.client.push_rows("del/emb", ids, np.ones((3, 2), np.float32))
        np.testing.assert_array_equal(self.client.pull_rows("del/emb", ids, 2),
                                      -np.ones((3, 2)))
        self.client.delete_variable("del/emb")
        with self.assertRaises(PsError) as caught:
            self.client.push_rows("del/emb", ids, np.ones((3, 2), np.float32))
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        # Created again, its rows start afresh from their initial rows.
        self.assertTrue(self.client.create_table("del/emb", 2))
        np.testing.assert_array_equal(self.client.pull_rows("del/emb", ids, 2),
                                      np.zeros((3, 2)))

    def test_table_on_exists(self):
        self.assertTrue(self.client.create_table("exists/emb", 2, optimizer="adagrad {}"))
        self.assertFalse(self.client.create_table("exists/emb", 2, optimizer="adagrad {}"))
        with self.assertRaises(PsError) as caught:
            self.client.create_table("exists/emb", 2, optimizer="sgd {}")
        self.assertEqual(caught.exception.code, grpc.StatusCode.ALREADY_EXISTS)
        self.assertIn("exists/emb", str(caught.exception))
        self.assertIn("adagrad", str(caught.exception))
        self.assertFalse(self.client.create_table("exists/emb", 2, optimizer="sgd {}",
                                                  on_exists="reuse"))
        self.assertTrue(self.client.create_table("exists/emb", 4, optimizer="sgd {}",
                                                 on_exists="reset"))
        self.assertEqual(self.client.pull_rows("exists/emb", [1], 4).shape, (1, 4))
        with self.assertRaises(ValueError):
            self.client.create_table("exists/emb", 4, on_exists="keep")

    def test_zeros_without_initial_values(self):
        self.client.create_variable("zeros/v", shape=[3, 3])
        np.testing.assert_array_equal(self.client.pull("zeros/v"), np.zeros((3, 3)))

    def test_other_shape_is_already_exists(self):
        self.client.create_variable("shape/v", shape=[4])
        with self.assertRaises(PsError) as caught:
            self.client.create_variable("shape/v", shape=[5])
        self.assertEqual(caught.exception.code, grpc.StatusCode.ALREADY_EXISTS)

    def test_unknown_variable(self):
        with self.assertRaises(KeyError):
            self.client.pull("never/created")
        self.client.register_variable("never/created", [3])
        with self.assertRaises(PsError) as caught:
            self.client.pull("never/created")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)

    def test_wrong_gradient_size(self):
        self.client.create_variable("size/v", shape=[4])
        with self.assertRaisesRegex(ValueError, "holds 3 values"):
            self.client.push({"size/v": np.ones(3, np.float32)})

    def test_nan_gradient_is_refused(self):
        self.client.create_variable("nan/v", shape=[4])
        with self.assertRaises(PsError) as caught:
            self.client.push({"nan/v": np.array([0, np.nan, 0, 0], np.float32)})
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_small_messages_are_split(self):
        values = np.random.default_rng(1).normal(size=1000).astype(np.float32)
        # 600 bytes: a handful of 4-value blocks per request.
        # Initial values go in one message per shard: create with the default.
        self.client.create_variable("split/v", initial=values)
        with Client(self.cluster.addresses, max_message_bytes=1024) as small:
            small.register_variable("split/v", [1000])
            np.testing.assert_array_equal(small.pull("split/v"), values)
            after = small.push_pull({"split/v": np.ones(1000, np.float32)})["split/v"]
            np.testing.assert_array_equal(after, values - 1)
            _, versions = small.pull("split/v", return_versions=True)
            np.testing.assert_array_equal(versions, np.ones(250))

    def test_parts_in_flight(self):
        values = np.random.default_rng(3).normal(size=1000).astype(np.float32)
        self.client.create_variable("parts/v", initial=values)
        # One 4-value block per part (part_bytes below one block), 3 parts of
        # a push in flight per shard, each with its own seq.
        with Client(self.cluster.addresses, part_bytes=16,
                    parts_in_flight=3) as parted:
            parted.register_variable("parts/v", [1000])
            np.testing.assert_array_equal(parted.pull("parts/v"), values)
            expected = values.copy()
            for _ in range(3):
                after = parted.push_pull({"parts/v": np.ones(1000, np.float32)})["parts/v"]
                expected -= np.float32(1)  # as the shard does, in float32
                np.testing.assert_array_equal(after, expected)
            parted.push({"parts/v": np.ones(1000, np.float32)})
            expected -= np.float32(1)
            values_now, versions = parted.pull("parts/v", return_versions=True)
            np.testing.assert_array_equal(values_now, expected)
            np.testing.assert_array_equal(versions, np.full(250, 4))
        for bad in ({"part_bytes": 0}, {"parts_in_flight": 0}):
            with self.subTest(**bad), self.assertRaises(ValueError):
                Client(self.cluster.addresses, **bad)

    def test_half_precision_on_the_wire(self):
        values = np.random.default_rng(2).normal(size=37).astype(np.float32)
        self.client.create_variable("half/v", initial=values)
        for dtype in (DType.BFLOAT16, DType.FLOAT16):
            with self.subTest(dtype=dtype.name):
                expected = rounded(values, dtype)
                np.testing.assert_array_equal(self.client.pull("half/v", dtype=dtype),
                                              expected)
        # A bf16 gradient is widened exactly: 0.5 and 0.25 are representable.
        grad = np.where(np.arange(37) % 2 == 0, 0.5, 0.25).astype(np.float32)
        after = self.client.push_pull({"half/v": grad}, dtype="bf16",
                                      pull_dtype="float32")["half/v"]
        np.testing.assert_array_equal(after, values - grad)

    def test_other_cluster_is_refused(self):
        with LocalCluster(1, block_size=4) as other:
            with self.assertRaisesRegex(ClusterMismatchError, "disagree on num_shards"):
                Client([self.cluster.addresses[0], other.addresses[0]])
        with self.assertRaisesRegex(ValueError, "listed twice"):
            Client([self.cluster.addresses[0], self.cluster.addresses[0]])


class ShardRestartTest(unittest.TestCase):
    """With the default retry policy a call waits for a shard that restarts
    on its port, and the outage is logged once, not at every attempt."""

    SCRIPT = """
import sys, threading, time
import numpy as np
from psclient import Client, LocalCluster
with LocalCluster(2, block_size=4, optimizer="sgd {} learning_rate: 1") as cluster:
    with Client(cluster.addresses) as client:
        client.create_variable("r/v", initial=np.zeros(16, np.float32))
        cluster.stop_shard(1)
        threading.Timer(float(sys.argv[1]), cluster.restart_shard, args=(1,)).start()
        start = time.monotonic()
        # The restarted shard has lost its state: creating again restores it.
        client.create_variable("r/v", initial=np.zeros(16, np.float32))
        waited = time.monotonic() - start
        after = client.push_pull({"r/v": np.ones(16, np.float32)})["r/v"]
        assert (after == -1).all(), after
        print(f"{waited:.2f}")
"""

    def test_a_call_rides_through_a_restart_and_the_outage_is_logged_once(self):
        done = subprocess.run([sys.executable, "-c", self.SCRIPT, "2.5"],
                              capture_output=True, text=True, timeout=120,
                              cwd=pathlib.Path(__file__).resolve().parents[1])
        self.assertEqual(done.returncode, 0, done.stderr)
        waited = float(done.stdout.strip().splitlines()[-1])
        self.assertGreater(waited, 2.0)  # it did wait for the restart
        self.assertLess(waited, 60.0)
        log = done.stdout + done.stderr  # spdlog's default logger: stdout
        self.assertEqual(log.count("is unreachable"), 1, log)
        self.assertEqual(log.count("answers again after"), 1, log)
        self.assertNotIn("giving up", log)

    def test_past_the_deadline_the_call_fails(self):
        with LocalCluster(1, block_size=4) as cluster:
            with Client(cluster.addresses,
                        retry=RetryPolicy(deadline=1.0, initial_backoff=0.05,
                                          max_backoff=0.2)) as client:
                client.create_variable("gone/v", shape=[4])
                cluster.stop_shard(0)
                start = time.monotonic()
                with self.assertRaises(PsError) as caught:
                    client.pull("gone/v")
                waited = time.monotonic() - start
        self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE)
        self.assertGreater(waited, 0.7)
        self.assertLess(waited, 10.0)


class SyncTest(unittest.TestCase):
    """Two workers on a sync cluster: each step applies their mean gradient."""

    def test_two_workers_average(self):
        self._two_workers_average()

    def test_two_workers_average_in_parts(self):
        # 40 values in blocks of 4, one block per request, 2 in flight: each
        # shard's share of a step arrives as several requests at once.
        self._two_workers_average(part_bytes=16, parts_in_flight=2)

    def _two_workers_average(self, **client_args: int) -> None:
        size = 40
        with LocalCluster(2, block_size=4, consistency="sync", num_workers=2,
                          optimizer="sgd {} learning_rate: 1") as cluster:
            clients = [Client(cluster.addresses, worker_id=f"w{i}", **client_args)
                       for i in range(2)]
            self.assertTrue(clients[0].sync)
            for c in clients:
                c.create_variable("s/v", initial=np.zeros(size, np.float32))
            results = {}

            def work(i: int) -> None:
                out = []
                for step in range(3):
                    grad = np.full(size, float(i + 1) * (step + 1), np.float32)
                    out.append(clients[i].push_pull({"s/v": grad}, step=step,
                                                    loss=float(i))["s/v"])
                results[i] = out

            threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            # Mean gradient per step: 1.5 * (step + 1); values -1.5, -4.5, -9.
            for i in range(2):
                for step, expected in enumerate([-1.5, -4.5, -9.0]):
                    np.testing.assert_array_equal(results[i][step],
                                                  np.full(size, expected))
            # A step that was applied already is refused, never applied late.
            with self.assertRaises(StaleStepError) as caught:
                clients[0].push({"s/v": np.ones(size, np.float32)}, step=1)
            self.assertIn("already applied", caught.exception.details)
            for c in clients:
                c.close()



class SyncRollBackTest(unittest.TestCase):
    """A sync shard killed with SIGKILL and restarted from a checkpoint takes
    the cluster back to it: psclient workers whose loop reads its step from
    ``client.sync_step`` (and passes none) redo the steps since, with no code
    for it, and end bit for bit where an uninterrupted run ends."""

    SIZE = 24
    STEPS = 30

    @staticmethod
    def gradient(worker: int, step: int, values: np.ndarray) -> np.ndarray:
        i = np.arange(SyncRollBackTest.SIZE, dtype=np.float32)
        return (np.float32(0.5) * values +
                np.sin(np.float32(0.37) * i + np.float32(0.91 * step + 1.3 * worker))
                ).astype(np.float32)

    def run_training(self, interrupt: bool):
        folder = tempfile.mkdtemp(prefix="psclient-rollback-")
        self.addCleanup(shutil.rmtree, folder, True)
        checkpointed, restarted = threading.Event(), threading.Event()
        results, failures = {}, {}
        with LocalCluster(1, block_size=8, consistency="sync", num_workers=2,
                          optimizer="adam {} learning_rate: 0.01",
                          extra_args=[f"--checkpoint_dir={folder}"]) as cluster:
            clients = [Client(cluster.addresses, worker_id=f"w{i}",
                              retry=RetryPolicy(initial_backoff=0.02,
                                                max_backoff=0.2))
                       for i in range(2)]
            for c in clients:
                c.create_variable("rb/v", initial=np.cos(
                    np.float32(0.11) * np.arange(self.SIZE, dtype=np.float32)))

            def work(i: int) -> None:
                client = clients[i]
                try:
                    values = client.pull("rb/v")
                    while client.sync_step < self.STEPS:
                        step = client.sync_step
                        if interrupt and step == 10:
                            checkpointed.wait(60)
                        if interrupt and step == 20:
                            restarted.wait(60)
                        values = client.push_pull(
                            {"rb/v": self.gradient(i, step, values)})["rb/v"]
                    results[i] = (values, client.rollbacks, client.resume_step)
                except Exception as e:  # reported by the test below
                    failures[i] = e

            threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            checkpoint_step = None
            if interrupt:
                channel = grpc.insecure_channel(cluster.addresses[0])
                admin = ps_pb2_grpc.AdminServiceStub(channel)
                deadline = time.monotonic() + 60
                while (min(c.sync_step for c in clients) < 10 and
                       time.monotonic() < deadline):
                    time.sleep(0.005)
                answer = admin.Checkpoint(ps_pb2.CheckpointRequest(), timeout=30)
                channel.close()
                self.assertTrue(answer.parts[0].sync_cut)
                checkpoint_step = answer.parts[0].sync_step
                checkpointed.set()
                while (min(c.sync_step for c in clients) < 20 and
                       time.monotonic() < deadline):
                    time.sleep(0.005)
                self.assertEqual(cluster.kill_shard(0), -9)
                cluster.restart_shard(0)
                restarted.set()
            for t in threads:
                t.join(timeout=120)
            for c in clients:
                c.close()
        self.assertEqual(failures, {})
        return results, checkpoint_step

    def test_workers_redo_the_steps_since_the_checkpoint_bit_for_bit(self):
        interrupted, checkpoint_step = self.run_training(True)
        straight, _ = self.run_training(False)
        self.assertEqual(checkpoint_step, 10)
        for i in range(2):
            values, rollbacks, resume_step = interrupted[i]
            self.assertEqual(rollbacks, 1)
            self.assertEqual(resume_step, checkpoint_step)
            self.assertEqual(straight[i][1], 0)
            np.testing.assert_array_equal(values.view(np.uint32),
                                          straight[i][0].view(np.uint32))


    def train_with_remote_optimizer(self, interrupt: bool):
        folder = tempfile.mkdtemp(prefix="psclient-rollback-")
        self.addCleanup(shutil.rmtree, folder, True)
        torch.manual_seed(3)
        model = torch.nn.Linear(8, 4)
        inputs = torch.sin(torch.arange(40 * 8, dtype=torch.float32)).reshape(40, 8)
        targets = torch.cos(torch.arange(40 * 4, dtype=torch.float32)).reshape(40, 4)
        steps_seen = []
        with LocalCluster(1, block_size=8, consistency="sync", num_workers=1,
                          extra_args=[f"--checkpoint_dir={folder}"]) as cluster:
            with Client(cluster.addresses,
                        retry=RetryPolicy(initial_backoff=0.02,
                                          max_backoff=0.2)) as client:
                opt = RemoteOptimizer(model.named_parameters(), client,
                                      "adam {} learning_rate: 0.05",
                                      prefix="rbopt/")
                while opt.step_count < self.STEPS:
                    step = opt.step_count
                    steps_seen.append(step)
                    if interrupt and step == 10 and steps_seen.count(10) == 1:
                        with grpc.insecure_channel(cluster.addresses[0]) as channel:
                            ps_pb2_grpc.AdminServiceStub(channel).Checkpoint(
                                ps_pb2.CheckpointRequest(), timeout=30)
                    if interrupt and step == 20 and steps_seen.count(20) == 1:
                        cluster.kill_shard(0)
                        cluster.restart_shard(0)
                    opt.zero_grad()
                    loss = torch.nn.functional.mse_loss(
                        model(inputs[step:step + 4]), targets[step:step + 4])
                    loss.backward()
                    opt.step(loss)
                rollbacks = client.rollbacks
        return [p.detach().clone() for p in model.parameters()], steps_seen, rollbacks

    def test_remote_optimizer_steps_back_with_the_cluster(self):
        params, steps, rollbacks = self.train_with_remote_optimizer(True)
        straight, straight_steps, _ = self.train_with_remote_optimizer(False)
        self.assertEqual(rollbacks, 1)
        # Step 20 met the roll-back; steps 10..19 were redone.
        self.assertEqual(steps, list(range(21)) + list(range(10, self.STEPS)))
        self.assertEqual(straight_steps, list(range(self.STEPS)))
        for p, q in zip(params, straight):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


class RemoteOptimizerTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.cluster = LocalCluster(2, block_size=50).start()

    @classmethod
    def tearDownClass(cls):
        assert cls.cluster.stop() == [0, 0]

    def test_later_workers_start_from_the_server(self):
        with Client(self.cluster.addresses) as a, Client(self.cluster.addresses) as b:
            first = make_mlp(seed=1)
            RemoteOptimizer(first.named_parameters(), a, "sgd {}", prefix="late/")
            second = make_mlp(seed=2)
            # Other initial values: an error naming a variable, unless the
            # later worker asks to reuse the server's.
            with self.assertRaises(PsError) as caught:
                RemoteOptimizer(second.named_parameters(), b, "sgd {}", prefix="late/")
            self.assertEqual(caught.exception.code, grpc.StatusCode.ALREADY_EXISTS)
            self.assertIn("late/", str(caught.exception))
            RemoteOptimizer(second.named_parameters(), b, "sgd {}", prefix="late/",
                            on_exists="reuse")
            for (n, p), (_, q) in zip(first.named_parameters(), second.named_parameters()):
                torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)

    def test_eve_needs_the_loss_and_closures_work(self):
        x, y = digits()
        model = make_mlp()
        with Client(self.cluster.addresses) as client:
            opt = RemoteOptimizer(model.named_parameters(), client,
                                  "eve {} learning_rate: 0.01", prefix="eve/")
            loss = torch.nn.functional.cross_entropy(model(x[:64]), y[:64])
            loss.backward()
            with self.assertRaises(PsError) as caught:
                opt.step()
            self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)

            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x[:64]), y[:64])
                loss.backward()
                return loss

            losses = [opt.step(closure) for _ in range(20)]
            self.assertLess(losses[-1], losses[0])
            self.assertEqual(opt.step_count, 20)

    def test_sync_workers_match_local_training_on_the_mean_gradient(self):
        x, y = digits()
        halves = [(x[i::2][:256], y[i::2][:256]) for i in range(2)]
        steps = 10
        with LocalCluster(2, block_size=50, consistency="sync", num_workers=2) as cluster:
            models = [make_mlp() for _ in range(2)]
            clients = [Client(cluster.addresses) for _ in range(2)]
            opts = [RemoteOptimizer(m.named_parameters(), c, "adam {} learning_rate: 0.01")
                    for m, c in zip(models, clients)]

            def work(i: int) -> None:
                for s in range(steps):
                    xb, yb = halves[i][0][s * 16:(s + 1) * 16], halves[i][1][s * 16:(s + 1) * 16]
                    opts[i].zero_grad()
                    loss = torch.nn.functional.cross_entropy(models[i](xb), yb)
                    loss.backward()
                    opts[i].step(loss)

            threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            for c in clients:
                c.close()

        local = make_mlp()
        optimizer = torch.optim.Adam(local.parameters(), lr=0.01)
        for s in range(steps):
            optimizer.zero_grad()
            loss = sum(torch.nn.functional.cross_entropy(
                local(h[0][s * 16:(s + 1) * 16]), h[1][s * 16:(s + 1) * 16])
                for h in halves) / 2
            loss.backward()
            optimizer.step()
        for model in models:
            for (n, p), q in zip(model.named_parameters(), local.parameters()):
                torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=2e-6,
                                           msg=n)
        self.assertEqual([o.step_count for o in opts], [steps, steps])


def _openssl() -> str:
    return shutil.which("openssl") or ""


class SecurityTest(unittest.TestCase):

    def setUp(self):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="psclient-sec-"))
        self.addCleanup(shutil.rmtree, self.dir)

    def test_tokens(self):
        (self.dir / "workers").write_text("worker-secret trainer\n")
        (self.dir / "admins").write_text("admin-secret ops\n")
        args = [f"--worker_tokens_file={self.dir / 'workers'}",
                f"--admin_tokens_file={self.dir / 'admins'}"]
        with LocalCluster(2, block_size=4, extra_args=args) as cluster:
            with self.assertRaises(PsError) as caught:
                Client(cluster.addresses, retry=FAST_RETRY)
            self.assertEqual(caught.exception.code, grpc.StatusCode.UNAUTHENTICATED)
            with self.assertRaises(PsError) as caught:
                Client(cluster.addresses, token="guess", retry=FAST_RETRY)
            self.assertEqual(caught.exception.code, grpc.StatusCode.UNAUTHENTICATED)
            for token in ("worker-secret", "admin-secret"):
                with Client(cluster.addresses, token=token) as client:
                    client.create_variable(f"tok/{token}", initial=np.ones(9))
                    np.testing.assert_array_equal(client.pull(f"tok/{token}"), np.ones(9))
            # Deleting takes an admin token.
            with Client(cluster.addresses, token="worker-secret") as client:
                with self.assertRaises(PsError) as caught:
                    client.delete_variable("tok/worker-secret")
                self.assertEqual(caught.exception.code, grpc.StatusCode.PERMISSION_DENIED)
            with Client(cluster.addresses, token="admin-secret") as client:
                client.delete_variable("tok/worker-secret")

    @unittest.skipUnless(_openssl(), "openssl is not installed")
    def test_tls(self):
        cert, key = self.dir / "cert.pem", self.dir / "key.pem"
        subprocess.run(
            [_openssl(), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-addext",
             "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True)
        args = [f"--tls_cert_file={cert}", f"--tls_key_file={key}"]
        with LocalCluster(1, block_size=4, extra_args=args) as cluster:
            with Client(cluster.addresses, tls_ca_file=str(cert)) as client:
                self.assertTrue(client.create_variable("tls/v", initial=np.ones(5)))
                np.testing.assert_array_equal(client.pull("tls/v"), np.ones(5))
            # localhost rather than the IP: the name checked is overridable.
            port = cluster.addresses[0].rsplit(":", 1)[1]
            with Client([f"127.0.0.1:{port}"], tls_ca_file=str(cert),
                        tls_server_name="localhost") as client:
                client.register_variable("tls/v", [5])
                np.testing.assert_array_equal(client.pull("tls/v", dtype="fp16"),
                                              np.ones(5))
            # Plaintext against a TLS shard fails.
            with self.assertRaises(PsError):
                Client(cluster.addresses, retry=FAST_RETRY, timeout=2)


class TuneMallocTest(unittest.TestCase):
    """tune_malloc keeps freed call-sized buffers in the heap: allocating
    them again faults in no new pages, where glibc's defaults do."""

    CHURN = """
import resource, sys
import psclient
if sys.argv[1] == "tuned":
    assert psclient.tune_malloc()
def churn():
    for _ in range(30):
        held = [bytes(size << 20) for size in (1, 2, 4, 1, 2)]
        del held
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

    def faults(self, mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", self.CHURN, mode],
                             capture_output=True, text=True, check=True,
                             timeout=60)
        return int(out.stdout.strip())

    def test_reused_buffers_fault_in_no_pages(self):
        plain, tuned = self.faults("plain"), self.faults("tuned")
        self.assertLess(tuned, 64)
        self.assertGreater(plain, 4 * max(tuned, 16))

    def test_refuses_a_negative_size(self):
        with self.assertRaises(ValueError):
            psclient_tune_malloc(-1)


if __name__ == "__main__":
    unittest.main()
