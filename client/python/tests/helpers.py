"""What several test modules share: the digits data, the MLP, clusters."""

from __future__ import annotations

import logging
import sys
from typing import Tuple

import numpy as np
import torch

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

# Two cores: keep torch from oversubscribing them next to the shards.
torch.set_num_threads(1)


def digits() -> Tuple[torch.Tensor, torch.Tensor]:
    """sklearn's digits (1797 8x8 images), features scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.from_numpy((data.data / 16.0).astype(np.float32))
    y = torch.from_numpy(data.target.astype(np.int64))
    return x, y


def make_mlp(seed: int = 0, hidden: int = 32) -> torch.nn.Module:
    """A small MLP 64 -> hidden -> 10 with a fixed initialization."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 10))


def batch(x: torch.Tensor, y: torch.Tensor, step: int, size: int = 64):
    """The step-th minibatch, cycling through the data in order."""
    start = (step * size) % (x.shape[0] - size)
    return x[start:start + size], y[start:start + size]
