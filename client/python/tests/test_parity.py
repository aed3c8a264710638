"""Parity with torch.optim: the same MLP on the digits data, trained 100 steps
through RemoteOptimizer and with a local torch.optim optimizer, ends at the same
parameters up to float32 rounding.

Runs once against 1 shard and once against 2 shards with a block size of 100,
so that the 64x32 weight spans 21 blocks spread over both shards. One worker,
async consistency. Each rule trains its own variables (named "<rule>/...") on
the cluster of its class.
"""

from __future__ import annotations

import sys
import unittest
from typing import Callable, Dict, List, Tuple

import torch

from tests.helpers import batch, digits, make_mlp

from psclient import Client, LocalCluster
from psclient.torch import RemoteOptimizer

STEPS = 100

# rule -> (local optimizer factory, the server's OptimizerConfig in text form)
RULES: Dict[str, Tuple[Callable[..., torch.optim.Optimizer], str]] = {
    "sgd": (lambda p: torch.optim.SGD(p, lr=0.1),
            "sgd {} learning_rate: 0.1"),
    "momentum": (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                 "momentum { momentum: 0.9 } learning_rate: 0.05"),
    "nesterov": (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                           weight_decay=1e-3),
                 "momentum { momentum: 0.9 nesterov: true } learning_rate: 0.05 "
                 "weight_decay: 0.001"),
    "adagrad": (lambda p: torch.optim.Adagrad(p, lr=0.05, lr_decay=0.01,
                                              initial_accumulator_value=0.1),
                "adagrad { lr_decay: 0.01 initial_accumulator_value: 0.1 } "
                "learning_rate: 0.05"),
    "rmsprop": (lambda p: torch.optim.RMSprop(p, lr=0.002),
                "rmsprop {} learning_rate: 0.002"),
    "rmsprop_centered_momentum": (
        lambda p: torch.optim.RMSprop(p, lr=0.001, centered=True, momentum=0.5),
        "rmsprop { centered: true momentum: 0.5 } learning_rate: 0.001"),
    "adam": (lambda p: torch.optim.Adam(p, lr=0.003),
             "adam {} learning_rate: 0.003"),
    "amsgrad": (lambda p: torch.optim.Adam(p, lr=0.003, amsgrad=True),
                "adam { amsgrad: true } learning_rate: 0.003"),
    "adamw": (lambda p: torch.optim.AdamW(p, lr=0.003, weight_decay=0.05),
              "adam { decoupled_weight_decay: true } learning_rate: 0.003 "
              "weight_decay: 0.05"),
}

# Float32 rounding, accumulated over 100 steps of training: the server's
# kernels (Eigen) and torch's evaluate the same formulas in a different order.
RTOL = 1e-5
ATOL = 2e-6


def train_local(rule: str) -> Tuple[torch.nn.Module, List[float]]:
    x, y = digits()
    model = make_mlp()
    optimizer = RULES[rule][0](model.parameters())
    losses = []
    for step in range(STEPS):
        xb, yb = batch(x, y, step)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model, losses


def train_remote(rule: str, client: Client) -> Tuple[torch.nn.Module, List[float]]:
    x, y = digits()
    model = make_mlp()
    optimizer = RemoteOptimizer(model.named_parameters(), client,
                                optimizer=RULES[rule][1], prefix=f"{rule}/")
    losses = []
    for step in range(STEPS):
        xb, yb = batch(x, y, step)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step(loss)
        losses.append(loss.item())
    return model, losses


class _ParityBase(unittest.TestCase):
    NUM_SHARDS = 1
    BLOCK_SIZE = 262144
    cluster: LocalCluster
    client: Client
    deviations: Dict[str, Tuple[float, float]]

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = LocalCluster(cls.NUM_SHARDS, block_size=cls.BLOCK_SIZE).start()
        cls.client = Client(cls.cluster.addresses)
        cls.deviations = {}

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        codes = cls.cluster.stop()
        # Measured deviations, for the record (visible with ctest -V).
        print(f"\n{cls.__name__}: max |remote - local| after {STEPS} steps",
              file=sys.stderr)
        for rule, (param_dev, loss_dev) in cls.deviations.items():
            print(f"  {rule:28s} params {param_dev:.3e}   loss {loss_dev:.3e}",
                  file=sys.stderr)
        assert codes == [0] * cls.NUM_SHARDS, f"shards exited with {codes}"

    def check_rule(self, rule: str) -> None:
        local, local_losses = train_local(rule)
        remote, remote_losses = train_remote(rule, self.client)
        worst = 0.0
        local_params = dict(local.named_parameters())
        for name, p in remote.named_parameters():
            q = local_params[name].detach()
            worst = max(worst, (p.detach() - q).abs().max().item())
            torch.testing.assert_close(p.detach(), q, rtol=RTOL, atol=ATOL,
                                       msg=lambda m: f"{rule} {name}: {m}")
        loss_dev = max(abs(a - b) for a, b in zip(local_losses, remote_losses))
        self.deviations[rule] = (worst, loss_dev)
        # Training did something, and the same thing.
        self.assertLess(remote_losses[-1], remote_losses[0])
        self.assertLess(loss_dev, 1e-5)
        # The server stepped every block once per step.
        _, versions = self.client.pull(
            [f"{rule}/{n}" for n, _ in remote.named_parameters()], return_versions=True)
        for name, v in versions.items():
            self.assertTrue((v == STEPS).all(), f"{name} versions {v}")


def _add_rule_tests(cls: type) -> type:
    for rule in RULES:
        setattr(cls, f"test_{rule}", lambda self, rule=rule: self.check_rule(rule))
    return cls


@_add_rule_tests
class OneShardParityTest(_ParityBase):
    NUM_SHARDS = 1
    BLOCK_SIZE = 262144


@_add_rule_tests
class TwoShardParityTest(_ParityBase):
    NUM_SHARDS = 2
    BLOCK_SIZE = 100


if __name__ == "__main__":
    unittest.main()
