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


if __name__ == "__main__":
    unittest.main()
