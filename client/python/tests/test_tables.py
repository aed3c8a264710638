"""Sparse tables from Python through the binding: torch parity of the lazy
updates with repeated ids, initial rows without creation, and refusals."""

from __future__ import annotations

import unittest

import numpy as np
import torch

from psclient import Client, LocalCluster, PsError, ps_pb2

DIM = 4


class TablesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = LocalCluster(2, optimizer="sgd {} learning_rate: 0.1")
        cls.cluster.__enter__()
        cls.client = Client(cls.cluster.addresses, worker_id="tables")

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.cluster.__exit__(None, None, None)

    def follow_torch(self, name, config, make_optimizer):
        init = ps_pb2.RowInit(normal=ps_pb2.Normal(stddev=0.1), seed=5)
        self.assertTrue(self.client.create_table(name, DIM, init=init,
                                                 optimizer=config))
        vocab = 50
        start = self.client.pull_rows(name, np.arange(vocab), DIM)
        weight = torch.nn.Parameter(torch.tensor(start))
        optimizer = make_optimizer([weight])
        rng = np.random.default_rng(3)
        for _ in range(20):
            ids = rng.integers(0, vocab, size=12)
            ids[1] = ids[0]  # a repeat in every step
            grads = rng.standard_normal((ids.size, DIM)).astype(np.float32)
            optimizer.zero_grad()
            weight.grad = torch.sparse_coo_tensor(
                torch.tensor(ids).unsqueeze(0), torch.tensor(grads),
                (vocab, DIM)).coalesce()
            optimizer.step()
            after = self.client.push_rows(name, ids, grads, pull=True)
            np.testing.assert_allclose(after, weight.detach().numpy()[ids],
                                       rtol=1e-5, atol=1e-6)

    def test_sparse_adam(self):
        self.follow_torch("adam_rows", "adam {} learning_rate: 0.01",
                          lambda p: torch.optim.SparseAdam(p, lr=0.01))

    def test_adagrad(self):
        self.follow_torch("adagrad_rows", "adagrad {} learning_rate: 0.1",
                          lambda p: torch.optim.Adagrad(p, lr=0.1))

    def test_unknown_ids_read_initial_rows_and_bad_input_is_refused(self):
        init = ps_pb2.RowInit(uniform=ps_pb2.Uniform(low=-1, high=1), seed=1)
        self.client.create_table("plain", 3, init=init)
        ids = np.array([2**40, 7, 2**40], dtype=np.int64)
        rows = self.client.pull_rows("plain", ids, 3)
        np.testing.assert_array_equal(rows[0], rows[2])
        self.assertTrue(np.all(np.abs(rows) <= 1) and np.any(rows != 0))
        again = self.client.pull_rows("plain", ids, 3)
        np.testing.assert_array_equal(rows, again)
        with self.assertRaises(PsError) as missing:
            self.client.pull_rows("nope", ids, 3)
        self.assertEqual(missing.exception.code.name, "NOT_FOUND")
        with self.assertRaises(ValueError):
            self.client.push_rows("plain", ids, np.zeros(5, np.float32))
        with self.assertRaises(TypeError):
            self.client.push_rows("plain", ids, np.zeros((3, 3)))

    def test_dense_and_rows_in_one_call_equal_separate_calls(self):
        # Two twins: "mixed_*" go through push_pull_mixed and push_mixed,
        # "apart_*" through push_pull and push_rows. Same start, same
        # gradients, so the same values after every step.
        init = ps_pb2.RowInit(zeros=ps_pb2.Zeros())  # the same rows in both
        start = np.linspace(-1, 1, 300, dtype=np.float32)
        for prefix in ("mixed", "apart"):
            self.client.create_variable(prefix + "_w", [300], initial=start,
                                        optimizer="adam {} learning_rate: 0.01")
            self.client.create_table(prefix + "_t", DIM, init=init,
                                     optimizer="adagrad {} learning_rate: 0.1")
        rng = np.random.default_rng(11)
        for step in range(6):
            dense = rng.standard_normal(300).astype(np.float32)
            ids = rng.integers(0, 2**40, size=9)
            ids[2] = ids[0]
            grads = rng.standard_normal((ids.size, DIM)).astype(np.float32)
            if step % 3 == 2:
                self.client.push_mixed({"mixed_w": dense},
                                       {"mixed_t": (ids, grads)})
                self.client.push({"apart_w": dense})
                self.client.push_rows("apart_t", ids, grads)
                continue
            if step == 4:
                # The rows after are not wanted: not answered, still applied.
                values, rows = self.client.push_pull_mixed(
                    {"mixed_w": dense}, {"mixed_t": (ids, grads)}, rows_wanted=[])
                self.assertEqual(rows, {})
                expected = self.client.push_pull({"apart_w": dense})["apart_w"]
                self.client.push_rows("apart_t", ids, grads)
                np.testing.assert_array_equal(values["mixed_w"], expected)
                continue
            if step % 3 == 1:
                future = self.client.push_pull_mixed_async(
                    {"mixed_w": dense}, {"mixed_t": (ids, grads)})
                values, rows = future.result()
            else:
                values, rows = self.client.push_pull_mixed(
                    {"mixed_w": dense}, {"mixed_t": (ids, grads)})
            expected = self.client.push_pull({"apart_w": dense})["apart_w"]
            expected_rows = self.client.push_rows("apart_t", ids, grads,
                                                  pull=True)
            np.testing.assert_array_equal(values["mixed_w"], expected)
            self.assertEqual(rows["mixed_t"].shape, (ids.size, DIM))
            np.testing.assert_array_equal(rows["mixed_t"], expected_rows)
        np.testing.assert_array_equal(self.client.pull("mixed_w"),
                                      self.client.pull("apart_w"))
        every = np.unique(ids)
        np.testing.assert_array_equal(
            self.client.pull_rows("mixed_t", every, DIM),
            self.client.pull_rows("apart_t", every, DIM))

        # Refusals change nothing.
        before = self.client.pull("mixed_w")
        with self.assertRaises(PsError) as unknown:
            self.client.push_pull_mixed({"mixed_w": dense},
                                        {"nope": (ids, grads)})
        self.assertEqual(unknown.exception.code.name, "NOT_FOUND")
        np.testing.assert_array_equal(self.client.pull("mixed_w"), before)
        with self.assertRaises(TypeError):
            self.client.push_mixed({}, {"mixed_t": ids})
        with self.assertRaises(ValueError):
            self.client.push_mixed({}, {"mixed_t": (ids, np.zeros(5, np.float32))})


if __name__ == "__main__":
    unittest.main()
