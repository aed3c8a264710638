"""psclient.torch against torch.optim through real shards: parameter groups,
lr schedulers, state_dict, zero_grad and closures, overlapped and plain
pushes, remote embeddings beside dense layers, nn.Embedding(sparse=True),
and BatchNorm buffers kept on the server.

Two shards, block size 100 (the 64x32 weight spans 21 blocks on both),
async consistency, one worker. Each test trains its own variables (its own
prefix or table names)."""

from __future__ import annotations

import copy
import threading
import unittest
from unittest import mock
from typing import Callable, Dict, List, Tuple

import grpc
import numpy as np
import torch

from tests.helpers import batch, digits, make_mlp

from psclient import Client, LocalCluster, PsError, ps_pb2, ps_pb2_grpc
from psclient.torch import RemoteEmbedding, RemoteEmbeddingBag, RemoteOptimizer

RTOL = 1e-5
ATOL = 2e-6
STEPS = 12


def _groups(model: torch.nn.Module, lrs: Tuple[float, float]) -> List[Dict]:
    """Two groups: the first layer, and the last, each with its own lr."""
    return [{"params": list(model[0].parameters()), "lr": lrs[0]},
            {"params": list(model[2].parameters()), "lr": lrs[1]}]


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int,
           first: int = 0, scheduler=None) -> List[float]:
    x, y = digits()
    losses = []
    for step in range(first, first + steps):
        xb, yb = batch(x, y, step)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


class TorchTest(unittest.TestCase):
    cluster: LocalCluster
    client: Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = LocalCluster(2, block_size=100).start()
        cls.client = Client(cls.cluster.addresses, worker_id="torch-test")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        codes = cls.cluster.stop()
        assert codes == [0, 0], f"shards exited with {codes}"

    def assert_same(self, remote: torch.nn.Module, local: torch.nn.Module,
                    rtol: float = RTOL, atol: float = ATOL) -> None:
        local_params = dict(local.named_parameters())
        for name, p in remote.named_parameters():
            torch.testing.assert_close(p.detach(), local_params[name].detach(),
                                       rtol=rtol, atol=atol,
                                       msg=lambda m, name=name: f"{name}: {m}")

    # ---------------------------------------------------------- dense rules

    def check_groups(self, rule: str, local_factory: Callable, **hyper) -> None:
        lrs = (0.05, 0.01) if rule != "adam" else (0.01, 0.002)
        local = make_mlp()
        local_losses = _train(local, local_factory(_groups(local, lrs)), STEPS)
        trained = {}
        for overlap in (True, False):
            remote = make_mlp()
            opt = RemoteOptimizer(_groups(remote, lrs), self.client, rule, model=remote,
                                  prefix=f"groups-{rule}-{overlap}/", overlap=overlap,
                                  **hyper)
            self.assertIsInstance(opt, torch.optim.Optimizer)
            self.assertEqual(opt.overlap, overlap)
            self.assertEqual(opt.variable_names[0], f"groups-{rule}-{overlap}/0.weight")
            losses = _train(remote, opt, STEPS)
            np.testing.assert_allclose(losses, local_losses, rtol=1e-5, atol=1e-6)
            self.assert_same(remote, local)
            trained[overlap] = remote
            # Each group's rate reached its variables.
            config = self.client.get_optimizer(f"groups-{rule}-{overlap}/2.bias")
            self.assertAlmostEqual(config.learning_rate, lrs[1])
        # Overlapped and plain pushes give the same numbers, bit for bit.
        for (name, a), (_, b) in zip(trained[True].named_parameters(),
                                     trained[False].named_parameters()):
            self.assertTrue(torch.equal(a, b), name)

    def test_adam_groups(self):
        self.check_groups("adam", lambda g: torch.optim.Adam(g, betas=(0.8, 0.99)),
                          betas=(0.8, 0.99))

    def test_sgd_momentum_groups(self):
        self.check_groups("sgd", lambda g: torch.optim.SGD(g, momentum=0.9,
                                                           weight_decay=1e-3),
                          momentum=0.9, weight_decay=1e-3)

    def test_adagrad_groups(self):
        self.check_groups("adagrad", lambda g: torch.optim.Adagrad(g, lr_decay=0.01),
                          lr_decay=0.01)

    def test_lr_schedulers_follow_torch(self):
        def lam(epoch):
            return 1.0 / (1 + epoch)

        for kind, make in (("step", lambda o: torch.optim.lr_scheduler.StepLR(
                o, step_size=3, gamma=0.5)),
                           ("lambda", lambda o: torch.optim.lr_scheduler.LambdaLR(o, lam))):
            local = make_mlp()
            local_opt = torch.optim.Adam(_groups(local, (0.01, 0.02)))
            _train(local, local_opt, STEPS, scheduler=make(local_opt))
            remote = make_mlp()
            opt = RemoteOptimizer(_groups(remote, (0.01, 0.02)), self.client, "adam",
                                  model=remote, prefix=f"sched-{kind}/")
            scheduler = make(opt)
            _train(remote, opt, STEPS, scheduler=scheduler)
            # Every step ran at torch's scheduled rate...
            self.assert_same(remote, local)
            self.assertLess(opt.param_groups[0]["lr"], 0.01)
            # ...and the rate the scheduler set last reaches the shards with
            # the next step (each group's to its own variables).
            _train(remote, opt, 1, first=STEPS)
            for group, name in ((0, "0.weight"), (1, "2.bias")):
                self.assertAlmostEqual(
                    self.client.get_optimizer(f"sched-{kind}/{name}").learning_rate,
                    opt.param_groups[group]["lr"])

    def test_server_default_takes_a_scheduler(self):
        # The test cluster's default is Adam with torch's values.
        local = make_mlp()
        local_opt = torch.optim.Adam(local.parameters())
        remote = make_mlp()
        opt = RemoteOptimizer(remote.parameters(), self.client, model=remote,
                              prefix="default/")
        self.assertFalse(opt.overlap)  # the default may become Eve
        self.assertEqual(opt.param_groups[0]["lr"], 1e-3)
        self.assertEqual(tuple(opt.param_groups[0]["betas"]), (0.9, 0.999))
        for o, m in ((local_opt, local), (opt, remote)):
            _train(m, o, 6, scheduler=torch.optim.lr_scheduler.StepLR(
                o, step_size=2, gamma=0.5))
        self.assert_same(remote, local)
        self.assertAlmostEqual(
            self.client.get_optimizer("default/0.weight").learning_rate, 2.5e-4)

    def test_state_dict_round_trip_continues_identically(self):
        local = make_mlp()
        local_opt = torch.optim.SGD(_groups(local, (0.1, 0.05)), momentum=0.9)
        local_sched = torch.optim.lr_scheduler.StepLR(local_opt, step_size=4, gamma=0.5)
        _train(local, local_opt, 2 * STEPS, scheduler=local_sched)

        first = make_mlp()
        opt = RemoteOptimizer(_groups(first, (0.1, 0.05)), self.client, "sgd",
                              momentum=0.9, model=first, prefix="resume/")
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
        _train(first, opt, STEPS, scheduler=sched)
        saved = (opt.state_dict(), sched.state_dict())
        self.assertEqual(saved[0]["param_groups"][0]["names"],
                         ["resume/0.weight", "resume/0.bias"])
        self.assertEqual(saved[0]["state"][0]["step"].item(), STEPS)
        del opt, sched

        # A new worker: other initial values, the optimizer's defaults; it
        # takes the server's values and the saved hyper-parameters.
        second = make_mlp(seed=7)
        opt = RemoteOptimizer(_groups(second, (1.0, 1.0)), self.client, "sgd",
                              momentum=0.9, model=second, prefix="resume/",
                              on_exists="reuse")
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
        # A state_dict ahead of the shards' state is refused.
        # A state of a step alone (no values or slots to write) that is
        # ahead of the shards is refused.
        ahead = copy.deepcopy(saved[0])
        ahead["state"][1] = {"step": ahead["state"][1]["step"] + 1}
        with self.assertRaisesRegex(ValueError, "older than the state_dict's step"):
            opt.load_state_dict(ahead)
        opt.load_state_dict(saved[0])
        sched.load_state_dict(saved[1])
        self.assertAlmostEqual(opt.param_groups[1]["lr"], 0.05 * 0.5 ** (STEPS // 4))
        self.assert_same(second, first, rtol=0, atol=0)
        _train(second, opt, STEPS, first=STEPS, scheduler=sched)
        self.assert_same(second, local)

    def test_state_dict_holds_the_server_state_and_restores_it(self):
        # Adam, locally and remotely, the same steps.
        local = make_mlp()
        local_opt = torch.optim.Adam(local.parameters(), lr=0.01)
        _train(local, local_opt, STEPS)
        first = make_mlp()
        opt = RemoteOptimizer(first.parameters(), self.client, "adam", lr=0.01,
                              model=first, prefix="state/")
        _train(first, opt, STEPS)
        saved = opt.state_dict()
        local_saved = local_opt.state_dict()
        for i, p in enumerate(first.parameters()):
            entry = saved["state"][i]
            self.assertEqual(entry["step"].item(), STEPS)
            self.assertTrue(torch.equal(entry["value"], p.detach()))
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(entry[key], local_saved["state"][i][key],
                                           rtol=RTOL, atol=ATOL)
            self.assertNotIn("max_exp_avg_sq", entry)
        saved = copy.deepcopy(saved)

        # The server loses it all: the variables are deleted, and a new
        # worker creates them afresh from other values.
        for name in opt.variable_names:
            self.client.delete_variable(name)
        del opt
        second = make_mlp(seed=11)
        opt = RemoteOptimizer(second.parameters(), self.client, "adam", lr=0.01,
                              model=second, prefix="state/")
        self.assertEqual(self.client.read_state("state/0.weight")["blocks"][0][2], 0)
        # A state that does not fit is refused before anything is written.
        bad = copy.deepcopy(saved)
        bad["state"][3]["exp_avg"] = bad["state"][3]["exp_avg"][:-1]
        with self.assertRaisesRegex(ValueError, "exp_avg of 'state/2.bias'"):
            opt.load_state_dict(bad)
        self.assertEqual(self.client.read_state("state/0.weight")["blocks"][0][2], 0)
        # The state_dict puts back values, moments and steps: training goes
        # on as the uninterrupted local Adam does.
        opt.load_state_dict(saved)
        self.assert_same(second, first, rtol=0, atol=0)
        _train(local, local_opt, STEPS, first=STEPS)
        _train(second, opt, STEPS, first=STEPS)
        self.assert_same(second, local)

        # torch's own Adam state_dict (no values, no server blocks): its
        # moments and step go to the server, the parameters' values stay.
        third = copy.deepcopy(local)
        opt = RemoteOptimizer(third.parameters(), self.client, "adam", lr=0.01,
                              model=third, prefix="from_torch/")
        opt.load_state_dict(local_opt.state_dict())
        state = self.client.read_state("from_torch/0.weight")
        self.assertEqual({b[2] for b in state["blocks"]}, {2 * STEPS})
        _train(local, local_opt, 4, first=2 * STEPS)
        _train(third, opt, 4, first=2 * STEPS)
        self.assert_same(third, local)

    def test_zero_grad_and_closure(self):
        x, y = digits()
        xb, yb = batch(x, y, 0)

        def backward(m):
            torch.nn.functional.cross_entropy(m(xb), yb).backward()

        # Without overlap, zero_grad drops gradients unsent, as in torch.
        model = make_mlp()
        opt = RemoteOptimizer(model.parameters(), self.client, "sgd", lr=0.1,
                              model=model, prefix="zero/", overlap=False)
        initial = copy.deepcopy(model)
        # The default is torch's (None in torch 2, zeros in torch 1).
        local = make_mlp()
        local_opt = torch.optim.SGD(local.parameters(), lr=0.1)
        backward(local)
        local_opt.zero_grad()
        backward(model)
        opt.zero_grad()
        self.assertEqual([p.grad is None for p in model.parameters()],
                         [p.grad is None for p in local.parameters()])
        backward(model)
        opt.zero_grad(set_to_none=True)
        self.assertTrue(all(p.grad is None for p in model.parameters()))
        backward(model)
        opt.zero_grad(set_to_none=False)
        self.assertTrue(all(p.grad is not None and not p.grad.any()
                            for p in model.parameters()))
        opt.pull()
        self.assert_same(model, initial, rtol=0, atol=0)

        # With overlap, the gradients left during backward: zero_grad before
        # step() is refused, and step() completes the update.
        model = make_mlp()
        opt = RemoteOptimizer(model.parameters(), self.client, "sgd", lr=0.1,
                              model=model, prefix="zero-overlap/")
        self.assertTrue(opt.overlap)
        backward(model)
        with self.assertRaisesRegex(RuntimeError, "call step"):
            opt.zero_grad()
        opt.step()
        self.assertEqual(opt.step_count, 1)
        # Two backward passes before a step: step() says so, and the model
        # then holds what the server holds.
        opt.zero_grad()
        backward(model)
        backward(model)
        with self.assertRaisesRegex(RuntimeError, "second gradient"):
            opt.step()
        server = self.client.pull(opt.variable_names)
        for name, p in zip(opt.variable_names, model.parameters()):
            np.testing.assert_array_equal(p.detach().numpy(), server[name])
        opt.zero_grad()
        backward(model)
        opt.step()

        # Closures, as torch.optim takes them.
        model = make_mlp()
        opt = RemoteOptimizer(model.parameters(), self.client, "sgd", lr=0.1,
                              model=model, prefix="closure/")
        local = make_mlp()
        local_opt = torch.optim.SGD(local.parameters(), lr=0.1)

        def closure_of(m, o):
            def closure():
                o.zero_grad()
                loss = torch.nn.functional.cross_entropy(m(xb), yb)
                loss.backward()
                return loss
            return closure

        for _ in range(3):
            expected = local_opt.step(closure_of(local, local_opt))
            got = opt.step(closure_of(model, opt))
            self.assertIsInstance(got, torch.Tensor)
            self.assertAlmostEqual(got.item(), expected.item(), places=5)
        self.assert_same(model, local)

    def test_names_without_model_and_named_parameters(self):
        model = make_mlp()
        opt = RemoteOptimizer(model.parameters(), self.client, "sgd", prefix="pos/")
        self.assertEqual(opt.variable_names, ["pos/0", "pos/1", "pos/2", "pos/3"])
        model = make_mlp()
        opt = RemoteOptimizer(model.named_parameters(), self.client,
                              "sgd {} learning_rate: 0.1", prefix="named/")
        self.assertEqual(opt.variable_names[-1], "named/2.bias")
        self.assertEqual(opt.param_groups[0]["lr"], 0.1)

    def test_set_optimizer_reaches_every_shard_and_names_errors(self):
        self.client.create_variable("setopt/v", shape=(300,))  # on both shards
        self.client.set_optimizer(["setopt/v"], "sgd {} learning_rate: 0.25")
        for address in self.client.addresses:
            with grpc.insecure_channel(address) as channel:
                config = ps_pb2_grpc.AdminServiceStub(channel).GetOptimizer(
                    ps_pb2.GetOptimizerRequest(variable="setopt/v"), timeout=10)
            self.assertEqual(config.learning_rate, 0.25)
        with self.assertRaisesRegex(PsError, "SetOptimizer\\('setopt/missing'\\)") as caught:
            self.client.set_optimizer(["setopt/v", "setopt/missing"], "sgd {}")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        with self.assertRaisesRegex(ValueError, "needs a config"):
            self.client.set_optimizer("setopt/v", None)

    def test_overlap_refuses_a_gradient_changed_after_backward(self):
        model = make_mlp()
        opt = RemoteOptimizer(model.parameters(), self.client, "sgd", lr=0.1,
                              model=model, prefix="clip/")
        x, y = digits()
        xb, yb = batch(x, y, 0)
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
        with self.assertRaisesRegex(RuntimeError, "overlap=False"):
            opt.step()
        # Without overlap, clipped gradients are what is sent.
        model = make_mlp()
        local = make_mlp()
        opt = RemoteOptimizer(model.parameters(), self.client, "sgd", lr=0.1,
                              model=model, prefix="clip2/", overlap=False)
        local_opt = torch.optim.SGD(local.parameters(), lr=0.1)
        for m, o in ((model, opt), (local, local_opt)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(xb), yb).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1e-3)
            o.step()
        self.assert_same(model, local)

    # ---------------------------------------------------------- embeddings

    def test_remote_embedding_beside_linear_equals_sparse_adam(self):
        vocab, dim = 40, 6
        embedding = RemoteEmbedding(self.client, "emb/words", vocab, dim)
        torch.manual_seed(1)
        head = torch.nn.Linear(dim, 3)
        remote = torch.nn.ModuleDict({"emb": embedding, "head": head})
        opt = RemoteOptimizer(remote.parameters(), self.client, "adam", lr=0.02,
                              model=remote, prefix="emb/")
        local_emb = torch.nn.Embedding(vocab, dim, sparse=True)
        with torch.no_grad():
            local_emb.weight.copy_(torch.from_numpy(
                self.client.pull_rows("emb/words", np.arange(vocab), dim)))
        local_head = copy.deepcopy(head)
        local_opts = [torch.optim.SparseAdam(local_emb.parameters(), lr=0.02),
                      torch.optim.Adam(local_head.parameters(), lr=0.02)]
        rng = np.random.default_rng(0)
        # The head's gradients and the rows go in one request per shard.
        mixed = mock.patch.object(self.client, "push_pull_mixed_async",
                                  wraps=self.client.push_pull_mixed_async)
        apart = mock.patch.object(self.client, "push_rows",
                                  side_effect=AssertionError("rows sent apart"))
        dense_only = mock.patch.object(self.client, "push_pull_async",
                                       side_effect=AssertionError("dense sent apart"))
        with mixed as spy, apart, dense_only:
            used = self._train_embedding(embedding, head, local_emb, local_head, local_opts,
                                  opt, rng, vocab)
        self.assertEqual(spy.call_count, 10)
        for call in spy.call_args_list:
            self.assertEqual(sorted(call.args[0]), ["emb/head.bias", "emb/head.weight"])
            self.assertEqual(list(call.args[1]), ["emb/words"])
        rows = self.client.pull_rows("emb/words", np.arange(vocab), dim)
        np.testing.assert_allclose(rows, local_emb.weight.detach().numpy(),
                                   rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(head.weight.detach(), local_head.weight.detach(),
                                   rtol=RTOL, atol=ATOL)
        # Pulls create no rows (all 40 were pulled above): the table holds
        # the rows of the ids trained, fewer than the vocabulary.
        self.assertLess(len(used), vocab)
        self.assertEqual(self._table_rows("emb/words"), len(used))

    def _train_embedding(self, embedding, head, local_emb, local_head, local_opts,
                         opt, rng, vocab) -> set:
        used = set()
        for step in range(10):
            ids = torch.from_numpy(rng.integers(0, vocab // 2 + 2 * step, size=(8, 3)))
            ids[0, 1] = ids[0, 0]  # a repeat in every batch
            used.update(ids.reshape(-1).tolist())
            target = torch.from_numpy(rng.integers(0, 3, size=8))
            opt.zero_grad()
            for o in local_opts:
                o.zero_grad()
            remote_loss = torch.nn.functional.cross_entropy(
                head(embedding(ids).mean(1)), target)
            local_loss = torch.nn.functional.cross_entropy(
                local_head(local_emb(ids).mean(1)), target)
            self.assertAlmostEqual(remote_loss.item(), local_loss.item(), places=5)
            remote_loss.backward()
            local_loss.backward()
            opt.step()
            for o in local_opts:
                o.step()
        return used

    def _table_rows(self, table: str) -> int:
        total = 0
        for address in self.client.addresses:
            with grpc.insecure_channel(address) as channel:
                listing = ps_pb2_grpc.AdminServiceStub(channel).ListVariables(
                    ps_pb2.ListVariablesRequest(), timeout=10)
                total += sum(v.table.rows for v in listing.variables if v.name == table)
        return total

    def _traffic(self) -> int:
        total = 0
        for address in self.client.addresses:
            with grpc.insecure_channel(address) as channel:
                stats = ps_pb2_grpc.AdminServiceStub(channel).GetStats(
                    ps_pb2.GetStatsRequest(), timeout=10)
                total += stats.bytes_in + stats.bytes_out
        return total

    def test_remote_embedding_moves_only_the_batch_rows(self):
        vocab, dim, steps = 20000, 16, 4
        embedding = RemoteEmbedding(self.client, "bytes/emb", vocab, dim)
        head = torch.nn.Linear(dim, 3)
        model = torch.nn.ModuleDict({"emb": embedding, "head": head})
        opt = RemoteOptimizer(model.parameters(), self.client, "adagrad", lr=0.1,
                              model=model, prefix="bytes/")
        with self.assertRaisesRegex(RuntimeError, "no RemoteOptimizer takes table"):
            RemoteEmbedding(self.client, "bytes/untaken", vocab, dim)(torch.tensor([1]))
        rng = np.random.default_rng(6)
        before = self._traffic()
        unique = 0
        for _ in range(steps):
            ids = torch.from_numpy(rng.integers(0, vocab, size=(32, 4)))
            unique += torch.unique(ids).numel()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(
                head(embedding(ids).mean(1)),
                torch.from_numpy(rng.integers(0, 3, size=32))).backward()
            opt.step()
        moved = self._traffic() - before
        # Per unique id: its row pulled and its gradient pushed (2 x dim
        # floats; the rows after the update are not sent back, as the
        # embedding does not use them) and its id three times (pull request
        # and answer, push); plus the head and the messages' framing. The
        # dense table would be vocab x dim floats each way.
        row_bytes = unique * (2 * dim * 4 + 8)
        self.assertGreater(moved, row_bytes)
        self.assertLess(moved, row_bytes + unique * 16 + steps * 4096)
        self.assertLess(moved * 50, steps * 2 * vocab * dim * 4)

    def test_remote_embedding_bag_with_hashed_ids_equals_adagrad(self):
        dim = 5
        for mode in ("sum", "mean"):
            table = f"bag/{mode}"
            bag = RemoteEmbeddingBag(self.client, table, None, dim, mode=mode,
                                     optimizer="adagrad {} learning_rate: 0.1")
            torch.manual_seed(2)
            head = torch.nn.Linear(dim, 2)
            model = torch.nn.ModuleDict({"bag": bag, "head": head})
            opt = RemoteOptimizer(model.parameters(), self.client, "adagrad", lr=0.05,
                                  model=model, prefix=f"bag-{mode}/")
            rng = np.random.default_rng(4)
            hashed = (rng.integers(1, 2**62, size=30)).astype(np.int64)
            local_bag = torch.nn.EmbeddingBag(hashed.size, dim, mode=mode, sparse=True)
            with torch.no_grad():
                local_bag.weight.copy_(torch.from_numpy(
                    self.client.pull_rows(table, hashed, dim)))
            local_head = copy.deepcopy(head)
            local_opts = [torch.optim.Adagrad(local_bag.parameters(), lr=0.1),
                          torch.optim.Adagrad(local_head.parameters(), lr=0.05)]
            for step in range(8):
                index = torch.from_numpy(rng.integers(0, 10 + 2 * step, size=12))
                offsets = torch.tensor([0, 3, 3, 7])  # bag 1 is empty
                target = torch.from_numpy(rng.integers(0, 2, size=4))
                opt.zero_grad()
                for o in local_opts:
                    o.zero_grad()
                remote_loss = torch.nn.functional.cross_entropy(
                    head(bag(torch.from_numpy(hashed)[index], offsets)), target)
                local_loss = torch.nn.functional.cross_entropy(
                    local_head(local_bag(index, offsets)), target)
                self.assertAlmostEqual(remote_loss.item(), local_loss.item(), places=5)
                remote_loss.backward()
                local_loss.backward()
                opt.step()
                for o in local_opts:
                    o.step()
            np.testing.assert_allclose(self.client.pull_rows(table, hashed, dim),
                                       local_bag.weight.detach().numpy(),
                                       rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(head.weight.detach(), local_head.weight.detach(),
                                       rtol=RTOL, atol=ATOL)

    def test_sparse_nn_embedding_travels_as_rows(self):
        vocab, dim = 50, 4

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(vocab, dim, sparse=True)
                self.bag = torch.nn.EmbeddingBag(vocab, dim, mode="mean", sparse=True)
                self.head = torch.nn.Linear(dim, 2)

            def forward(self, ids):
                return self.head(self.emb(ids).sum(1) + self.bag(ids))

        torch.manual_seed(3)
        remote = Model()
        opt = RemoteOptimizer(remote.named_parameters(), self.client, "adam", lr=0.01,
                              model=remote, prefix="sparse/")
        self.assertEqual(opt.variable_names, ["sparse/head.weight", "sparse/head.bias"])
        local = copy.deepcopy(remote)  # with the server's rows
        local_opts = [torch.optim.SparseAdam([local.emb.weight, local.bag.weight], lr=0.01),
                      torch.optim.Adam(local.head.parameters(), lr=0.01)]
        rng = np.random.default_rng(5)
        for _ in range(10):
            ids = torch.from_numpy(rng.integers(0, vocab, size=(6, 4)))
            target = torch.from_numpy(rng.integers(0, 2, size=6))
            for m, opts in ((remote, [opt]), (local, local_opts)):
                for o in opts:
                    o.zero_grad()
                torch.nn.functional.cross_entropy(m(ids), target).backward()
                for o in opts:
                    o.step()
        self.assert_same(remote, local)
        for name in ("emb", "bag"):
            rows = self.client.pull_rows(f"sparse/{name}.weight", np.arange(vocab), dim)
            np.testing.assert_allclose(rows, getattr(local, name).weight.detach().numpy(),
                                       rtol=RTOL, atol=ATOL)

    def test_sync_workers_with_rows_match_local_training_on_the_mean(self):
        vocab, dim, steps = 30, 4, 6
        rng = np.random.default_rng(7)
        data = [[(torch.from_numpy(rng.integers(0, vocab, size=(8, 3))),
                  torch.from_numpy(rng.integers(0, 2, size=8))) for _ in range(steps)]
                for _ in range(2)]
        torch.manual_seed(8)
        head = torch.nn.Linear(dim, 2)
        with LocalCluster(2, block_size=4, consistency="sync", num_workers=2) as cluster:
            clients = [Client(cluster.addresses, worker_id=f"sync-{i}") for i in range(2)]
            models, opts = [], []
            for client in clients:
                model = torch.nn.ModuleDict({
                    "emb": RemoteEmbedding(client, "sync/words", vocab, dim),
                    "head": copy.deepcopy(head)})
                models.append(model)
                opts.append(RemoteOptimizer(model.parameters(), client, "adam",
                                            lr=0.05, model=model, prefix="sync/"))
            initial = clients[0].pull_rows("sync/words", np.arange(vocab), dim)
            errors = []

            def work(i: int) -> None:
                try:
                    for ids, target in data[i]:
                        opts[i].zero_grad()
                        m = models[i]
                        torch.nn.functional.cross_entropy(
                            m["head"](m["emb"](ids).sum(1)), target).backward()
                        opts[i].step()
                except BaseException as e:  # pylint: disable=broad-except
                    errors.append(e)

            threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            self.assertEqual(errors, [])
            rows = clients[0].pull_rows("sync/words", np.arange(vocab), dim)
            for c in clients:
                c.close()

        local_emb = torch.nn.Embedding(vocab, dim, sparse=True)
        with torch.no_grad():
            local_emb.weight.copy_(torch.from_numpy(initial))
        local_head = copy.deepcopy(head)
        local_opts = [torch.optim.SparseAdam(local_emb.parameters(), lr=0.05),
                      torch.optim.Adam(local_head.parameters(), lr=0.05)]
        for s in range(steps):
            for o in local_opts:
                o.zero_grad()
            loss = sum(torch.nn.functional.cross_entropy(
                local_head(local_emb(data[i][s][0]).sum(1)), data[i][s][1])
                for i in range(2)) / 2
            loss.backward()
            for o in local_opts:
                o.step()
        np.testing.assert_allclose(rows, local_emb.weight.detach().numpy(),
                                   rtol=RTOL, atol=ATOL)
        for model in models:
            torch.testing.assert_close(model["head"].weight.detach(),
                                       local_head.weight.detach(), rtol=RTOL, atol=ATOL)
        self.assertEqual([o.step_count for o in opts], [steps, steps])

    # ------------------------------------------------------------- buffers

    def test_batchnorm_buffers_rebuilt_from_the_server(self):
        def make(seed):
            torch.manual_seed(seed)
            return torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16),
                                       torch.nn.ReLU(), torch.nn.Linear(16, 10))

        trained = make(0)
        opt = RemoteOptimizer(trained.parameters(), self.client, "adam", lr=0.01,
                              model=trained, buffers=True, prefix="bn/")
        self.assertIn("bn/buffers/1.running_mean", opt.buffer_names)
        _train(trained, opt, STEPS)
        self.assertEqual(int(trained[1].num_batches_tracked), STEPS)
        self.assertGreater(trained[1].running_mean.abs().max().item(), 0.01)

        rebuilt = make(9)  # other values, fresh statistics
        RemoteOptimizer(rebuilt.parameters(), self.client, "adam", lr=0.01,
                        model=rebuilt, buffers=True, prefix="bn/",
                        on_exists="reuse")
        for (name, a), (_, b) in zip(trained.named_buffers(), rebuilt.named_buffers()):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
        x, _ = digits()
        trained.eval()
        rebuilt.eval()
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), trained(x), rtol=1e-5, atol=1e-5)

    def test_async_workers_add_their_buffer_changes(self):
        def make():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8))

        x, _ = digits()
        models, opts = [], []
        with Client(self.client.addresses, worker_id="torch-test-b") as other:
            for client in (self.client, other):
                model = make()
                models.append(model)
                opts.append(RemoteOptimizer(model.parameters(), client, "sgd", lr=0.0,
                                            model=model, buffers=True,
                                            prefix="bn-async/"))
            start = models[0][1].running_mean.clone()
            moved = []
            for k, (model, opt) in enumerate(zip(models, opts)):
                opt.zero_grad()
                model(x[64 * k:64 * (k + 1)]).sum().backward()
                moved.append(model[1].running_mean.clone())
                opt.step()
        # The server holds the start plus both workers' changes, and the
        # second worker took it back.
        expected = start + (moved[0] - start) + (moved[1] - start)
        server = torch.from_numpy(
            self.client.pull("bn-async/buffers/1.running_mean")).reshape(-1)
        torch.testing.assert_close(server, expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(models[1][1].running_mean, expected,
                                   rtol=1e-6, atol=1e-6)
        self.assertEqual(int(models[1][1].num_batches_tracked), 2)
        self.assertFalse(torch.allclose(moved[0], moved[1]))


if __name__ == "__main__":
    unittest.main()
