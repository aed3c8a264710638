"""A drop-in replacement for a ``torch.optim`` optimizer that runs on the server.

Example::

    opt = RemoteOptimizer(model.named_parameters(), client,
                          optimizer="adam { } learning_rate: 0.001")
    for x, y in batches:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step(loss)   # pushes the gradients, writes back the new values
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

from psclient.client import (Client, DType, OptimizerLike, StaleStepError,
                             parse_optimizer)

_LOG = logging.getLogger(__name__)

LossLike = Union[float, "torch.Tensor", Callable[[], "torch.Tensor"], None]


class RemoteOptimizer:
    """Trains a model's parameters with an update rule that runs on the shards.

    Creating it creates one server variable per parameter (named
    ``prefix + name``) with the parameter's current values, then pulls, so
    that every worker starts from what the server holds. A variable that
    exists with other initial values or another optimizer (another model
    with the same names, or an earlier run) is an error unless
    ``on_exists`` says to reuse or reset it; workers of one job that seed
    their models alike need neither.

    Each :meth:`step` sends every gradient in one PushPull request per shard
    (more only for very large models), all shards in parallel, and writes the
    values after the update back into the parameters.

    Args:
        named_parameters: ``model.named_parameters()``; parameters that do not
            require a gradient are left alone.
        client: the connection to the cluster.
        optimizer: the update rule, an ``OptimizerConfig`` or its protobuf
            text form (e.g. ``"momentum { nesterov: true } learning_rate:
            0.1"``), set as each variable's own; None = the server default,
            which ``psctl`` / ``AdminService.SetOptimizer(variable="")``
            changes while training runs.
        prefix: prepended to every parameter name (to train several models on
            one cluster).
        dtype: wire encoding of gradients and values (default: the client's).
        step: the first step to push (sync mode). None = the step the
            shards collect (``client.sync_step``), which is right for a new
            job and for a worker that joins or rejoins a running one.
        on_exists: what to do with a variable that exists with other
            initial values or another optimizer: ``"error"`` (PsError
            ALREADY_EXISTS naming it), ``"reuse"`` (start from the server's
            values and keep its optimizer: a worker joining a running job)
            or ``"reset"`` (replace it with this model's values and
            optimizer). See :meth:`psclient.Client.create_variable`.

    Thread safety: not thread-safe; one per worker thread.
    """

    def __init__(self,
                 named_parameters: Iterable[Tuple[str, torch.nn.Parameter]],
                 client: Client,
                 optimizer: OptimizerLike = None,
                 *,
                 prefix: str = "",
                 dtype: Union[DType, int, str, None] = None,
                 step: Optional[int] = None,
                 on_exists: str = "error"):
        self.client = client
        self.config = parse_optimizer(optimizer)
        self._dtype = dtype
        self._params: List[Tuple[str, torch.nn.Parameter]] = [
            (prefix + name, p) for name, p in named_parameters if p.requires_grad
        ]
        if not self._params:
            raise ValueError("RemoteOptimizer got no parameters that require a gradient")
        names = [n for n, _ in self._params]
        if len(set(names)) != len(names):
            raise ValueError("parameter names are not unique: " + ", ".join(names))
        created = []
        for name, p in self._params:
            with torch.no_grad():
                initial = p.detach().cpu().numpy().astype(np.float32, copy=False)
            if self.client.create_variable(name, initial=initial, optimizer=self.config,
                                           on_exists=on_exists):
                created.append(name)
        _LOG.info("created %d of %d variables (the rest existed)", len(created),
                  len(self._params))
        self.pull()
        #: The step of the next push (sync mode aggregates pushes per step):
        #: where the shards were when the client's session opened.
        self.step_count: int = client.sync_step if step is None else int(step)
        #: The loss passed to the last step(), as a float.
        self.last_loss: Optional[float] = None

    @property
    def variable_names(self) -> List[str]:
        """The server variable of each parameter, in order."""
        return [n for n, _ in self._params]

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Clears the gradients, as ``torch.optim.Optimizer.zero_grad`` does."""
        for _, p in self._params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.zero_()

    def pull(self) -> Dict[str, np.ndarray]:
        """Overwrites the parameters with the server's values.

        Returns the block versions of each variable.
        """
        values, versions = self.client.pull(self.variable_names, dtype=self._dtype,
                                            return_versions=True)
        self._write_back(values)
        return versions

    def step(self, loss: LossLike = None) -> Optional[float]:
        """Pushes every gradient and writes the updated values back.

        Args:
            loss: the objective at the current values: a float, a scalar
                tensor, or a closure that recomputes it (zeroing and
                back-propagating, as for ``torch.optim``). The Eve rule needs
                it; in sync mode the shards average it over the workers.

        Returns:
            The loss as a float (None when none was given).

        In sync mode a parameter without a gradient is pushed as zeros, so that
        every block completes every step. If the step was already applied
        (this worker fell behind), the parameters are refreshed from the
        server and the step counter moves to the server's step. If the
        cluster went back to a checkpoint (a shard restarted from it, see
        docs/checkpoints.md), the gradient is not applied, the parameters
        hold the checkpoint's values and ``step_count`` moves to the step it
        resumes from: a loop that picks its data by ``step_count`` redoes
        those steps.
        """
        if callable(loss):
            with torch.enable_grad():
                loss = loss()
        value = None if loss is None else float(
            loss.detach().item() if isinstance(loss, torch.Tensor) else loss)
        gradients: Dict[str, np.ndarray] = {}
        for name, p in self._params:
            if p.grad is None:
                if self.client.sync:
                    gradients[name] = np.zeros(p.numel(), dtype=np.float32)
                continue
            grad = p.grad.detach()
            if grad.device.type != "cpu" or grad.dtype != torch.float32:
                grad = grad.to(device="cpu", dtype=torch.float32)
            gradients[name] = grad.contiguous()
        if not gradients:
            return value
        # The values after the step are written straight into the parameters
        # that can take them (float32, contiguous, on the CPU).
        direct = {name: p.detach() for name, p in self._params
                  if name in gradients and _writable_in_place(p)}
        rollbacks = self.client.rollbacks
        try:
            values = self.client.push_pull(gradients, step=self.step_count, loss=value,
                                           dtype=self._dtype, pull_dtype=self._dtype,
                                           out=direct)
        except StaleStepError as e:
            versions = self.pull()
            behind = self.step_count
            self.step_count = min(int(v.min()) for v in versions.values())
            _LOG.warning("step %d was already applied (%s); continuing at step %d",
                         behind, e.details, self.step_count)
            self.last_loss = value
            return value
        self._write_back({n: v for n, v in values.items() if n not in direct})
        if self.client.rollbacks != rollbacks:
            # The cluster went back to a checkpoint: the gradient was not
            # applied, the parameters now hold the checkpoint's values, and
            # the next step is the one it resumes from.
            self.step_count = self.client.sync_step
            _LOG.warning("the cluster went back to a checkpoint; continuing at "
                         "step %d", self.step_count)
        else:
            self.step_count += 1
        self.last_loss = value
        return value

    def _write_back(self, values: Dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name, p in self._params:
                if name not in values:
                    continue
                src = torch.from_numpy(np.ascontiguousarray(values[name]).reshape(p.shape))
                p.copy_(src.to(dtype=p.dtype, device=p.device))


def _writable_in_place(p: torch.Tensor) -> bool:
    return (p.device.type == "cpu" and p.dtype == torch.float32
            and p.is_contiguous())
