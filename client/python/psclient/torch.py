"""PyTorch on the parameter server: an optimizer and embeddings that run there.

- :class:`RemoteOptimizer`: a ``torch.optim.Optimizer`` whose update rule runs
  on the shards. Only the optimizer line of a training loop changes::

      opt = RemoteOptimizer(model.parameters(), client, "adam", lr=1e-3,
                            model=model, prefix="cnn/")
      sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
      for x, y in batches:
          opt.zero_grad()
          loss_fn(model(x), y).backward()   # gradients leave as they are made
          opt.step()                        # waits, writes the new values back
          sched.step()

- :class:`RemoteEmbedding` and :class:`RemoteEmbeddingBag`: ``nn.Embedding``
  and ``nn.EmbeddingBag`` whose rows live in a sparse table on the shards
  (any int64 ids: vocabulary indexes or hashed features). The forward pulls
  the batch's unique ids; the optimizer's step pushes their row gradients.

docs/pytorch.md says what behaves as in torch and what differs.
"""

from __future__ import annotations

import logging
from typing import (Any, Callable, Dict, Iterable, List, Mapping, Optional,
                    Sequence, Tuple, Union)

import numpy as np
import torch

from psclient.client import (Client, DType, OptimizerLike, PsError,
                             StaleStepError, parse_optimizer)
from psclient._stubs import ps_pb2
from psclient.partition import fnv1a64

_LOG = logging.getLogger(__name__)

LossLike = Union[float, "torch.Tensor", Callable[[], "torch.Tensor"], None]

# ------------------------------------------------------------ hyper-parameters
#
# A group's hyper-parameters use torch.optim's names; each rule maps them to
# the server's OptimizerConfig. "sgd" with momentum != 0 is the server's
# Momentum rule, as torch.optim.SGD is.

_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "sgd": dict(lr=1e-2, momentum=0.0, dampening=0.0, nesterov=False,
                weight_decay=0.0),
    "adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False),
    "adamw": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                  amsgrad=False),
    "adagrad": dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                    initial_accumulator_value=0.0, eps=1e-10),
    "rmsprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                    momentum=0.0, centered=False),
    "eve": dict(lr=1e-3, betas=(0.9, 0.999, 0.999), k=0.1, big_k=10.0,
                eps=1e-8, loss_floor=0.0, weight_decay=0.0),
}
# torch's spelling of each rule name, and the server rules they may be.
_ALIASES = {"sgd": "sgd", "momentum": "sgd", "adam": "adam", "adamw": "adamw",
            "adagrad": "adagrad", "rmsprop": "rmsprop", "eve": "eve",
            "sparseadam": "adam"}


def _opt(message: Any, field: str, default: float) -> float:
    return getattr(message, field) if message.HasField(field) else default


def _kind_of(config: "ps_pb2.OptimizerConfig") -> Tuple[str, Dict[str, Any]]:
    """A config as (torch rule name, torch hyper-parameters)."""
    rule = config.WhichOneof("rule")
    if rule is None:
        raise ValueError("the optimizer config names no rule")
    lr_default = 1e-3 if rule in ("adam", "eve") else 1e-2
    h: Dict[str, Any] = {"lr": _opt(config, "learning_rate", lr_default),
                         "weight_decay": _opt(config, "weight_decay", 0.0)}
    if rule == "sgd":
        h.update(momentum=0.0, dampening=0.0, nesterov=False)
        return "sgd", h
    if rule == "momentum":
        m = config.momentum
        h.update(momentum=_opt(m, "momentum", 0.9), dampening=_opt(m, "dampening", 0.0),
                 nesterov=m.nesterov)
        return "sgd", h
    if rule == "adagrad":
        a = config.adagrad
        h.update(lr_decay=_opt(a, "lr_decay", 0.0), eps=_opt(a, "eps", 1e-10),
                 initial_accumulator_value=_opt(a, "initial_accumulator_value", 0.0))
        return "adagrad", h
    if rule == "rmsprop":
        r = config.rmsprop
        h.update(alpha=_opt(r, "alpha", 0.99), eps=_opt(r, "eps", 1e-8),
                 momentum=_opt(r, "momentum", 0.0), centered=r.centered)
        return "rmsprop", h
    if rule == "adam":
        a = config.adam
        h.update(betas=(_opt(a, "beta1", 0.9), _opt(a, "beta2", 0.999)),
                 eps=_opt(a, "eps", 1e-8), amsgrad=a.amsgrad)
        return ("adamw" if a.decoupled_weight_decay else "adam"), h
    e = config.eve
    h.update(betas=(_opt(e, "beta1", 0.9), _opt(e, "beta2", 0.999),
                    _opt(e, "beta3", 0.999)),
             k=_opt(e, "k", 0.1), big_k=_opt(e, "big_k", 10.0),
             eps=_opt(e, "eps", 1e-8), loss_floor=_opt(e, "loss_floor", 0.0))
    return "eve", h


def _config_of(kind: str, group: Mapping[str, Any],
               base: "ps_pb2.OptimizerConfig") -> "ps_pb2.OptimizerConfig":
    """The server config of a group: ``base`` (schedule, clip_norm) with the
    group's rule and hyper-parameters."""
    config = ps_pb2.OptimizerConfig()
    if base.HasField("schedule"):
        config.schedule.CopyFrom(base.schedule)
    if base.HasField("clip_norm"):
        config.clip_norm = base.clip_norm
    config.learning_rate = float(group["lr"])
    config.weight_decay = float(group.get("weight_decay", 0.0))
    if kind == "sgd":
        if group["momentum"] == 0:
            if group.get("nesterov"):
                raise ValueError("Nesterov momentum needs a momentum > 0")
            config.sgd.SetInParent()
        else:
            config.momentum.momentum = float(group["momentum"])
            config.momentum.dampening = float(group["dampening"])
            config.momentum.nesterov = bool(group["nesterov"])
    elif kind == "adagrad":
        config.adagrad.lr_decay = float(group["lr_decay"])
        config.adagrad.eps = float(group["eps"])
        config.adagrad.initial_accumulator_value = float(
            group["initial_accumulator_value"])
    elif kind == "rmsprop":
        config.rmsprop.alpha = float(group["alpha"])
        config.rmsprop.eps = float(group["eps"])
        config.rmsprop.momentum = float(group["momentum"])
        config.rmsprop.centered = bool(group["centered"])
    elif kind in ("adam", "adamw"):
        beta1, beta2 = group["betas"]
        config.adam.beta1 = float(beta1)
        config.adam.beta2 = float(beta2)
        config.adam.eps = float(group["eps"])
        config.adam.amsgrad = bool(group["amsgrad"])
        config.adam.decoupled_weight_decay = kind == "adamw"
    elif kind == "eve":
        beta1, beta2, beta3 = group["betas"]
        e = config.eve
        e.beta1, e.beta2, e.beta3 = float(beta1), float(beta2), float(beta3)
        e.k, e.big_k = float(group["k"]), float(group["big_k"])
        e.eps, e.loss_floor = float(group["eps"]), float(group["loss_floor"])
    else:
        raise ValueError(f"unknown rule '{kind}'")
    return config


def _rule(optimizer: Union[OptimizerLike, str],
          hyper: Mapping[str, Any]) -> Tuple[Optional[str], Dict[str, Any],
                                             "ps_pb2.OptimizerConfig"]:
    """(torch rule name or None, group defaults, base config) of the
    ``optimizer`` argument."""
    if optimizer is None:
        if hyper:
            raise ValueError("hyper-parameters " + ", ".join(sorted(hyper)) +
                             " need an optimizer (e.g. \"adam\")")
        return None, {}, ps_pb2.OptimizerConfig()
    if isinstance(optimizer, str) and optimizer.strip().lower() in _ALIASES:
        kind = _ALIASES[optimizer.strip().lower()]
        defaults = dict(_DEFAULTS[kind])
        if optimizer.strip().lower() == "momentum":
            defaults["momentum"] = 0.9
        base = ps_pb2.OptimizerConfig()
    else:
        base = parse_optimizer(optimizer)
        kind, defaults = _kind_of(base)
    unknown = set(hyper) - set(defaults)
    if unknown:
        raise ValueError(f"rule '{kind}' takes no " + ", ".join(sorted(unknown)) +
                         "; it takes " + ", ".join(sorted(defaults)))
    defaults.update(hyper)
    return kind, defaults, base


def _server_default(client: Client) -> Tuple[Optional[str], Dict[str, Any],
                                               "ps_pb2.OptimizerConfig"]:
    """The server default as (torch rule name, group defaults, config), or
    (None, {}, empty) when the shards do not tell (no AdminService rights)."""
    try:
        config = client.get_optimizer("")
    except PsError as e:
        _LOG.info("cannot read the server default (%s); parameter groups carry "
                  "no hyper-parameters", e)
        return None, {}, ps_pb2.OptimizerConfig()
    try:
        kind, defaults = _kind_of(config)
    except ValueError as e:
        _LOG.info("the server default has no rule a torch group can hold (%s)", e)
        return None, {}, ps_pb2.OptimizerConfig()
    return kind, defaults, config


def _group_key(kind: str, group: Mapping[str, Any]) -> Tuple:
    return tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                 for k, v in sorted(group.items())
                 if k in _DEFAULTS[kind])


# ------------------------------------------------------------------ embeddings


def _default_init(name: str) -> "ps_pb2.RowInit":
    # torch.nn.Embedding's default: N(0, 1); the seed from the name, so that
    # every worker and shard agrees.
    return ps_pb2.RowInit(normal=ps_pb2.Normal(mean=0.0, stddev=1.0),
                          seed=fnv1a64(name) & 0x7FFFFFFFFFFFFFFF)


class _RowBatch:
    """The rows one forward pulled: unique ids and a leaf tensor of them."""

    def __init__(self, ids: np.ndarray, rows: torch.Tensor):
        self.ids = ids
        self.rows = rows


class _RemoteRows(torch.nn.Module):
    """What RemoteEmbedding and RemoteEmbeddingBag share: the table, and the
    row batches pulled since the last step."""

    def __init__(self, client: Client, name: str, num_embeddings: Optional[int],
                 embedding_dim: int, *, init: Optional["ps_pb2.RowInit"],
                 optimizer: OptimizerLike, policy: Optional["ps_pb2.TablePolicy"],
                 dtype: Union[DType, int, str, None]):
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.client = client
        self.table = name
        self.num_embeddings = num_embeddings
        self.embedding_dim = int(embedding_dim)
        self._dtype = dtype
        self.created = client.create_table(
            name, self.embedding_dim, init=init or _default_init(name),
            policy=policy, optimizer=optimizer)
        self._batches: List[_RowBatch] = []
        #: Whether a RemoteOptimizer pushes this table's rows.
        self.taken = False
        #: Whether the table has a rule of its own (else it follows the
        #: first group of the RemoteOptimizer that takes it).
        self.own_optimizer = optimizer is not None

    def extra_repr(self) -> str:
        return (f"table='{self.table}', num_embeddings={self.num_embeddings}, "
                f"embedding_dim={self.embedding_dim}")

    def _check(self, ids: torch.Tensor) -> None:
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"ids must be int64 or int32, got {ids.dtype}")
        if self.num_embeddings is not None and ids.numel() > 0 and (
                int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise IndexError(f"ids outside [0, {self.num_embeddings}) for table "
                             f"'{self.table}'")

    def _rows(self, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(rows of the unique ids, as a leaf that takes a gradient; the
        inverse index of every id into them)."""
        self._check(ids)
        train = torch.is_grad_enabled() and self.training
        if train and not self.taken:
            raise RuntimeError(
                f"no RemoteOptimizer takes table '{self.table}', so its rows "
                "would never be trained: give the optimizer model= (the module "
                "holding it) or embeddings=[...], or run under torch.no_grad() "
                "or eval()")
        unique, inverse = torch.unique(ids.reshape(-1).to(torch.int64),
                                       return_inverse=True)
        unique_np = np.ascontiguousarray(unique.cpu().numpy())
        pulled = self.client.pull_rows(self.table, unique_np, self.embedding_dim,
                                       dtype=self._dtype)
        # On the ids' device, as a leaf of its own.
        rows = torch.from_numpy(pulled).to(ids.device)
        if train:
            rows.requires_grad_(True)
            self._batches.append(_RowBatch(unique_np, rows))
        return rows, inverse.reshape(ids.shape)

    def row_gradients(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """The coalesced (ids, gradients) of every forward since the last
        call, or None when no row got a gradient; forgets them."""
        batches, self._batches = self._batches, []
        ids, grads = [], []
        for b in batches:
            if b.rows.grad is not None:
                ids.append(b.ids)
                grads.append(b.rows.grad.detach().cpu().numpy())
        if not ids:
            return None
        return _coalesce(np.concatenate(ids), np.concatenate(grads))

    def zero_grad_rows(self) -> None:
        """Forgets the rows pulled since the last step (their gradients)."""
        self._batches = []


def _coalesce(ids: np.ndarray, grads: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sums the gradients of repeated ids (torch's ``coalesce``)."""
    unique, inverse = np.unique(ids, return_inverse=True)
    if unique.size == ids.size:
        order = np.argsort(ids, kind="stable")
        return (np.ascontiguousarray(ids[order]),
                np.ascontiguousarray(grads[order], dtype=np.float32))
    summed = np.zeros((unique.size, grads.shape[1]), dtype=np.float32)
    np.add.at(summed, inverse, grads)
    return unique, summed


class RemoteEmbedding(_RemoteRows):
    """``nn.Embedding`` on a sparse table of the cluster.

    The table (named ``name``) is created on first use; rows start from
    ``init`` (default N(0, 1), as nn.Embedding) and are created on the
    shards when first pushed. ``forward(ids)`` pulls the rows of the batch's
    unique ids only; :class:`RemoteOptimizer` (given this module, or a model
    holding it) pushes their coalesced gradients at its step.

    Args:
        client: the connection to the cluster.
        name: the table's name (with the model's prefix, if any).
        num_embeddings: ids must lie in [0, num_embeddings); None = any
            int64 id (hashed features; no vocabulary on the worker).
        embedding_dim: values per row.
        init: the rows' initial values (``ps_pb2.RowInit``).
        optimizer: the table's own rule; None = the RemoteOptimizer's (the
            rule and hyper-parameters of its first parameter group) when one
            takes it, else the server default.
        policy: admission and eviction (``ps_pb2.TablePolicy``).
        dtype: wire encoding of the rows pulled.
    """

    def __init__(self, client: Client, name: str, num_embeddings: Optional[int],
                 embedding_dim: int, *, init: Optional["ps_pb2.RowInit"] = None,
                 optimizer: OptimizerLike = None,
                 policy: Optional["ps_pb2.TablePolicy"] = None,
                 dtype: Union[DType, int, str, None] = None):
        super().__init__(client, name, num_embeddings, embedding_dim, init=init,
                         optimizer=optimizer, policy=policy, dtype=dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows, inverse = self._rows(ids)
        return torch.nn.functional.embedding(inverse, rows)


class RemoteEmbeddingBag(_RemoteRows):
    """``nn.EmbeddingBag`` (mode "sum" or "mean") on a sparse table.

    ``forward(ids, offsets=None, per_sample_weights=None)`` takes what
    nn.EmbeddingBag takes: a 2-D batch of bags of equal length, or a 1-D
    ``ids`` with ``offsets``. An empty bag gives zeros. Arguments as for
    :class:`RemoteEmbedding`, plus ``mode``.
    """

    def __init__(self, client: Client, name: str, num_embeddings: Optional[int],
                 embedding_dim: int, mode: str = "mean", *,
                 init: Optional["ps_pb2.RowInit"] = None,
                 optimizer: OptimizerLike = None,
                 policy: Optional["ps_pb2.TablePolicy"] = None,
                 dtype: Union[DType, int, str, None] = None):
        if mode not in ("sum", "mean"):
            raise ValueError(f"mode must be 'sum' or 'mean', got '{mode}'")
        super().__init__(client, name, num_embeddings, embedding_dim, init=init,
                         optimizer=optimizer, policy=policy, dtype=dtype)
        self.mode = mode

    def forward(self, ids: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                per_sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        rows, inverse = self._rows(ids)
        return torch.nn.functional.embedding_bag(
            inverse, rows, offsets, mode=self.mode,
            per_sample_weights=per_sample_weights)


class _SparseParameter:
    """A parameter of nn.Embedding(sparse=True) kept as rows of a table."""

    def __init__(self, name: str, param: torch.nn.Parameter, module: torch.nn.Module):
        self.name = name
        self.param = param
        self.module = module
        self.hook: Any = None


# ------------------------------------------------------------------- optimizer


class _Bucket:
    """Dense parameters whose gradients leave together (overlapped mode)."""

    def __init__(self) -> None:
        self.names: List[str] = []
        self.ready: set = set()
        self.pending: Optional["_Sent"] = None
        self.sent: Dict[str, torch.Tensor] = {}


class _Sent:
    """What one send is waiting for: dense values and pulled rows."""

    def __init__(self, future: Any, rows: Optional[Dict[str, np.ndarray]]):
        self.future = future
        # None: the future answers (values, rows) itself (one mixed call).
        self.rows = rows

    def result(self) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        if self.rows is None:
            return self.future.result()
        values = self.future.result() if self.future is not None else {}
        return values, self.rows


class RemoteOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose update rule runs on the shards.

    Each parameter becomes a server variable named ``prefix + name`` that
    starts from the parameter's values (every worker then pulls what the
    server holds; a variable that exists with other values or another
    optimizer is an error unless ``on_exists`` says otherwise). ``step()``
    sends the gradients and writes the values after the update back into
    the parameters. In sync mode, when the cluster goes back to a
    checkpoint (a shard restarted from it), ``step()`` applies nothing,
    writes the checkpoint's values into the parameters and moves
    ``step_count`` to the step the cluster resumes from.

    Args:
        params: what any torch optimizer takes (``model.parameters()``, or a
            list of parameter-group dicts), or ``model.named_parameters()``
            (also as a group's ``"params"``). Parameters that do not require
            a gradient are left out.
        client: the connection to the cluster.
        optimizer: the rule: a torch name (``"sgd"``, ``"adam"``,
            ``"adamw"``, ``"adagrad"``, ``"rmsprop"``, ``"eve"``) whose
            hyper-parameters come as torch's keyword arguments
            (``**defaults``) and per group; or an ``OptimizerConfig`` or its
            text form, whose values become the groups' defaults (its
            ``schedule`` and ``clip_norm`` apply to every group); or None:
            the server default, which ``psctl`` changes while training runs.
            With None the groups carry the default's hyper-parameters as
            read at construction; a group whose values change (a scheduler)
            gives its variables their own config from then on.
        prefix: prepended to every server name (one per model on a cluster).
        model: the module the parameters belong to: names its parameters
            when ``params`` are bare tensors, finds its
            ``nn.Embedding(sparse=True)`` weights (kept as table rows) and
            its RemoteEmbedding modules. Without it, bare tensors are named
            by position (``"0"``, ``"1"``, ... across the groups).
        embeddings: more RemoteEmbedding / RemoteEmbeddingBag modules whose
            rows this optimizer pushes.
        buffers: ``model.named_buffers()`` (or True with ``model``): kept on
            the server as variables (``prefix + "buffers/" + name``) and
            synchronised every ``buffer_every`` steps: sync mode averages
            them over the workers; async mode adds each worker's change
            since its last synchronisation. The server's values are written
            back into the buffers.
        buffer_every: steps between two buffer synchronisations (1 in sync
            mode).
        dtype: wire encoding of gradients and values (default: the client's).
        step: the first step to push (sync mode). None = the step the shards
            collect (``client.sync_step``).
        overlap: push gradients while backward runs, in buckets of about
            ``bucket_bytes`` (True), or all at once in ``step()`` (False).
            None = on when every group's rule is known and is not Eve (Eve
            needs each push's loss, which is known only at the step).
        bucket_bytes: the size of an overlapped bucket.
        on_exists: for a variable or table that exists with other initial
            values or another optimizer (another model with the same names,
            or an earlier run): ``"error"`` (PsError ALREADY_EXISTS naming
            it), ``"reuse"`` (start from the server's values and optimizer)
            or ``"reset"`` (replace it). See
            :meth:`psclient.Client.create_variable`.
        **defaults: torch hyper-parameters (lr, betas, momentum, ...).

    Thread safety: not thread-safe; one per worker thread.
    """

    def __init__(self,
                 params: Iterable[Any],
                 client: Client,
                 optimizer: Union[OptimizerLike, str] = None,
                 *,
                 prefix: str = "",
                 model: Optional[torch.nn.Module] = None,
                 embeddings: Iterable[_RemoteRows] = (),
                 buffers: Union[bool, Iterable[Tuple[str, torch.Tensor]], None] = None,
                 buffer_every: int = 1,
                 dtype: Union[DType, int, str, None] = None,
                 step: Optional[int] = None,
                 overlap: Optional[bool] = None,
                 bucket_bytes: int = 1 << 20,
                 on_exists: str = "error",
                 **defaults: Any):
        self.client = client
        self.prefix = prefix
        self._dtype = dtype
        self._kind, group_defaults, self._base = _rule(optimizer, defaults)
        #: Whether the rule was named here (each variable then has it as its
        #: own config); else the variables follow the server default.
        self._explicit = optimizer is not None
        if not self._explicit:
            self._kind, group_defaults, self._base = _server_default(client)
        self._model_names: Dict[int, str] = {}
        self._sparse_modules: Dict[int, torch.nn.Module] = {}
        self._remote_rows: List[_RemoteRows] = list(embeddings)
        if model is not None:
            self._model_names = {id(p): n for n, p in model.named_parameters()}
            for m in model.modules():
                if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.sparse:
                    self._sparse_modules[id(m.weight)] = m
                if isinstance(m, _RemoteRows) and m not in self._remote_rows:
                    self._remote_rows.append(m)
        self._position = 0
        self._names: Dict[int, str] = {}          # id(param) -> server name
        self._dense: List[Tuple[str, torch.nn.Parameter]] = []
        self._sparse: List[_SparseParameter] = []
        self._group_keys: List[Optional[Tuple]] = []
        self._buckets: List[_Bucket] = []
        self._bucket_of: Dict[str, _Bucket] = {}
        self._accumulators: List[Any] = []
        self._bucket_bytes = int(bucket_bytes)
        rule = self._kind if self._explicit else None
        if overlap and rule in (None, "eve"):
            raise ValueError("overlap needs a rule other than Eve, named here "
                             "(the server default may change to one that needs the loss)")
        self.overlap = (rule not in (None, "eve")) if overlap is None else bool(overlap)
        self._in_iteration = False
        self._hook_error: Optional[BaseException] = None
        #: The step of the next push (sync mode aggregates pushes per step).
        self.step_count: int = client.sync_step if step is None else int(step)
        # The session the pushes of the current step go out in.
        self._epoch = client.session_epoch
        self._on_exists = on_exists
        #: The loss passed to the last step(), as a float.
        self.last_loss: Optional[float] = None
        if buffer_every < 1 or (client.sync and buffer_every != 1):
            raise ValueError("buffer_every must be >= 1 (and 1 in sync mode)")
        self._buffer_every = int(buffer_every)
        self._buffers: List[Tuple[str, torch.Tensor]] = []
        self._buffer_seen: Dict[str, np.ndarray] = {}
        super().__init__(params, group_defaults)
        if buffers is True:
            if model is None:
                raise ValueError("buffers=True needs model=")
            buffers = model.named_buffers()
        if buffers:
            self._add_buffers(buffers)
        for rows in self._remote_rows:
            rows.zero_grad_rows()
            rows.taken = True
        if self._explicit and self._following_tables():
            self.client.set_optimizer(self._following_tables(),
                                      self._config(self.param_groups[0]))
        self.pull()

    # ---------------------------------------------------------------- groups

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Adds a group (as torch does) and creates its server variables."""
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        named: List[Tuple[str, torch.nn.Parameter]] = []
        for item in list(params):
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                name, p = item
            elif isinstance(item, torch.Tensor):
                name = self._model_names.get(id(item), str(self._position))
                p = item
            else:
                raise TypeError("a group's params must be tensors or (name, tensor) "
                                f"pairs, got {type(item).__name__}")
            self._position += 1
            if p.requires_grad:
                named.append((self.prefix + name, p))
        if not named:
            raise ValueError("RemoteOptimizer got no parameters that require a gradient")
        names = [n for n, _ in named] + list(self._names.values())
        if len(set(names)) != len(names):
            raise ValueError("parameter names are not unique: " + ", ".join(sorted(names)))
        group["params"] = [p for _, p in named]
        super().add_param_group(group)
        group = self.param_groups[-1]
        config = self._config(group)
        self._group_keys.append(None if self._kind is None else _group_key(self._kind, group))
        created = 0
        for name, p in named:
            self._names[id(p)] = name
            module = self._sparse_modules.get(id(p))
            if module is not None:
                self._add_sparse(name, p, module, config)
                continue
            with torch.no_grad():
                initial = p.detach().cpu().numpy().astype(np.float32, copy=False)
            created += bool(self.client.create_variable(name, initial=initial,
                                                        optimizer=config,
                                                        on_exists=self._on_exists))
            self._dense.append((name, p))
        _LOG.info("created %d of %d variables (the rest existed)", created, len(named))
        if self.overlap:
            self._add_hooks([(n, p) for n, p in named if id(p) not in self._sparse_modules])

    def _config(self, group: Mapping[str, Any]) -> Optional["ps_pb2.OptimizerConfig"]:
        if not self._explicit:
            return None
        return _config_of(self._kind, group, self._base)

    def _add_sparse(self, name: str, p: torch.nn.Parameter, module: torch.nn.Module,
                    config: Optional["ps_pb2.OptimizerConfig"]) -> None:
        if p.dim() != 2:
            raise ValueError(f"sparse parameter '{name}' is not 2-D")
        self.client.create_table(name, p.shape[1], init=_default_init(name),
                                 optimizer=config, on_exists=self._on_exists)
        entry = _SparseParameter(name, p, module)
        # Before each forward, the rows it reads are refreshed from the server.
        entry.hook = module.register_forward_pre_hook(
            lambda m, inputs, e=entry: self._refresh_rows(e, inputs[0]))
        self._sparse.append(entry)

    def _refresh_rows(self, entry: _SparseParameter, ids: torch.Tensor) -> None:
        unique = np.ascontiguousarray(torch.unique(ids).cpu().numpy().astype(np.int64))
        rows = self.client.pull_rows(entry.name, unique, entry.param.shape[1],
                                     dtype=self._dtype)
        with torch.no_grad():
            entry.param[torch.from_numpy(unique).to(entry.param.device)] = \
                torch.from_numpy(rows).to(entry.param.device, entry.param.dtype)

    def _add_buffers(self, buffers: Iterable[Tuple[str, torch.Tensor]]) -> None:
        config = ps_pb2.OptimizerConfig(learning_rate=1.0, weight_decay=0.0)
        config.sgd.SetInParent()
        for name, buf in buffers:
            full = self.prefix + "buffers/" + name
            initial = buf.detach().cpu().numpy().astype(np.float32)
            self.client.create_variable(full, shape=tuple(buf.shape) or (1,),
                                        initial=initial.reshape(tuple(buf.shape) or (1,)),
                                        optimizer=config, on_exists=self._on_exists)
            self._buffers.append((full, buf))

    # -------------------------------------------------------------- overlap

    def _add_hooks(self, named: Sequence[Tuple[str, torch.nn.Parameter]]) -> None:
        bucket = _Bucket()
        size = 0
        for name, p in reversed(named):  # backward meets the last layers first
            if bucket.names and size + 4 * p.numel() > self._bucket_bytes:
                self._buckets.append(bucket)
                bucket, size = _Bucket(), 0
            bucket.names.append(name)
            size += 4 * p.numel()
            self._bucket_of[name] = bucket
            # The parameter's AccumulateGrad node runs after its .grad is set.
            accumulator = p.view_as(p).grad_fn.next_functions[0][0]
            accumulator.register_hook(
                lambda *_, name=name, p=p: self._on_gradient(name, p))
            self._accumulators.append(accumulator)
        if bucket.names:
            self._buckets.append(bucket)

    def _on_gradient(self, name: str, p: torch.nn.Parameter) -> None:
        # An exception raised inside an autograd hook leaves torch's graph
        # in a thread-local that deadlocks the interpreter's exit (torch
        # 1.13): the error is kept and raised by step() or zero_grad().
        if self._hook_error is not None:
            return
        try:
            if not self._in_iteration:
                self._begin_iteration()
            bucket = self._bucket_of[name]
            if name in bucket.ready:
                raise RuntimeError(
                    f"'{name}' got a second gradient before step(): with overlap=True "
                    "each backward pushes its gradients at once; accumulate gradients "
                    "over several backward passes with overlap=False")
            bucket.ready.add(name)
            if len(bucket.ready) == len(bucket.names) and not self._held(bucket):
                self._launch(bucket)
        except Exception as e:  # pylint: disable=broad-except
            self._hook_error = e

    def _held(self, bucket: _Bucket) -> bool:
        """Whether a complete bucket waits for step(): the last one of a
        model with table rows, which then travel with it in one request per
        shard (backward ends with it, so little overlap is lost)."""
        if not (self._sparse or self._remote_rows) or \
                not hasattr(self.client, "push_pull_mixed_async"):
            return False
        launched = sum(b.pending is not None for b in self._buckets)
        return launched == len(self._buckets) - 1

    def _begin_iteration(self) -> None:
        self._in_iteration = True
        self._sync_hyperparameters()

    def _launch(self, bucket: _Bucket) -> None:
        params = dict(self._dense)
        grads: Dict[str, torch.Tensor] = {}
        for name in bucket.names:
            grad = self._gradient(name, params[name], copy=True)
            if grad is not None:
                grads[name] = grad
        bucket.sent = grads
        bucket.pending = self._send(grads, {}, None) if grads else None

    # ------------------------------------------------------------------ step

    def zero_grad(self, set_to_none: Optional[bool] = None) -> None:
        """Clears the gradients (and the rows pulled by RemoteEmbeddings), as
        ``torch.optim.Optimizer.zero_grad`` does (None: torch's default,
        which torch 2 changed to True)."""
        if self._hook_error is not None:
            self._abandon_iteration()
        if any(bucket.pending is not None for bucket in self._buckets):
            raise RuntimeError(
                "zero_grad() after a backward whose gradients already went to the "
                "server (overlap=True pushes them as backward makes them): call "
                "step() first, or use RemoteOptimizer(..., overlap=False) to drop "
                "gradients unsent")
        if set_to_none is None:
            super().zero_grad()
        else:
            super().zero_grad(set_to_none=set_to_none)
        for rows in self._remote_rows:
            rows.zero_grad_rows()

    def _abandon_iteration(self) -> None:
        """After an error in a gradient hook: waits for the pushes that
        left, takes the server's values, and raises the error."""
        error, self._hook_error = self._hook_error, None
        for bucket in self._buckets:
            if bucket.pending is not None:
                try:
                    bucket.pending.result()
                except PsError:
                    pass
            bucket.ready.clear()
            bucket.pending = None
            bucket.sent = {}
        self._in_iteration = False
        self.pull()
        raise error

    @torch.no_grad()
    def step(self, closure: LossLike = None) -> Optional[Any]:
        """Sends the gradients and writes the updated values back.

        Args:
            closure: as for torch.optim, a closure that zeroes the gradients,
                recomputes the loss, back-propagates and returns it; or the
                loss itself (a float or scalar tensor), which the Eve rule
                needs and sync mode averages over the workers.

        Returns:
            What the closure returned (or the loss given), as torch does.

        In sync mode a parameter without a gradient is pushed as zeros, so
        that every block completes every step. If the step was already
        applied (this worker fell behind), the parameters are refreshed from
        the server and the step counter moves to the server's step.
        """
        returned: Any = None
        if callable(closure):
            with torch.enable_grad():
                returned = closure()
            loss = returned
        else:
            loss = returned = closure
        value = None if loss is None else float(
            loss.detach().item() if isinstance(loss, torch.Tensor) else loss)
        if self._hook_error is not None:
            self._abandon_iteration()
        if not self._in_iteration:
            self._begin_iteration()
        try:
            self._finish(value)
        finally:
            self._in_iteration = False
            for bucket in self._buckets:
                bucket.ready.clear()
                bucket.pending = None
                bucket.sent = {}
        self.last_loss = value
        return returned

    def _gradient(self, name: str, p: torch.nn.Parameter,
                  copy: bool) -> Optional[torch.Tensor]:
        if p.grad is None:
            if self.client.sync:
                return torch.zeros(p.shape, dtype=torch.float32)
            return None
        grad = p.grad.detach()
        if grad.is_sparse:
            raise TypeError(
                f"'{name}' has a sparse gradient: give RemoteOptimizer model= so "
                "that it keeps nn.Embedding(sparse=True) weights as table rows")
        if grad.device.type != "cpu" or grad.dtype != torch.float32:
            return grad.to(device="cpu", dtype=torch.float32).contiguous()
        return grad.clone(memory_format=torch.contiguous_format) if copy \
            else grad.contiguous()

    def _finish(self, loss: Optional[float]) -> None:
        params = dict(self._dense)
        sends: List[Tuple[_Sent, Dict[str, torch.Tensor]]] = []
        for bucket in self._buckets:
            if bucket.pending is not None:
                sends.append((bucket.pending, {}))
        # What no bucket took: everything without overlap; with overlap the
        # parameters whose backward did not run (sync: zeros).
        rest: Dict[str, torch.Tensor] = {}
        for name, p in self._dense:
            bucket = self._bucket_of.get(name)
            if bucket is not None and bucket.pending is not None:
                continue
            grad = self._gradient(name, p, copy=False)
            if grad is not None:
                rest[name] = grad
        rows: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        for entry in self._sparse:
            grad = entry.param.grad
            if grad is None:
                continue
            if grad.is_sparse:
                grad = grad.coalesce()
                ids = grad.indices()[0].cpu().numpy().astype(np.int64)
                values = grad.values().to("cpu", torch.float32).numpy()
            else:  # a dense gradient of a sparse module's weight
                grad = grad.to("cpu", torch.float32)
                ids = np.flatnonzero(grad.abs().sum(1).numpy()).astype(np.int64)
                values = grad[torch.from_numpy(ids)].numpy()
            rows[entry.name] = _coalesce(ids, np.ascontiguousarray(values))
        for module in self._remote_rows:
            found = module.row_gradients()
            if found is not None:
                rows[module.table] = found
        buffers = self._buffer_gradients()
        rest.update(buffers)
        direct = {} if self.overlap else {
            name: p.detach() for name, p in self._dense
            if name in rest and _writable_in_place(p)}
        try:
            main = self._send(rest, rows, loss, out=direct)
            sends.append((main, direct))
            values: Dict[str, np.ndarray] = {}
            row_values: Dict[str, np.ndarray] = {}
            stale: Optional[StaleStepError] = None
            for sent, _ in sends:
                try:
                    v, r = sent.result()
                except StaleStepError as e:
                    stale = e
                    continue
                values.update(v)
                row_values.update(r)
            if stale is not None:
                raise stale
        except StaleStepError as e:
            versions = self.pull()
            behind = self.step_count
            self.step_count = min((int(v.min()) for v in versions.values()),
                                  default=self.step_count)
            _LOG.warning("step %d was already applied (%s); continuing at step %d",
                         behind, e.details, self.step_count)
            return
        except PsError as e:
            # Sync: the cluster went back to a checkpoint (a shard restarted
            # from it, docs/checkpoints.md). The gradients were not applied;
            # the parameters take the checkpoint's values and the next step
            # is the one the cluster resumes from, so a loop that picks its
            # data by step_count redoes those steps.
            if not self.client.resume_after(e, self._epoch):
                raise
            self._epoch = self.client.session_epoch
            self.step_count = self.client.sync_step
            self.pull()
            _LOG.warning("the cluster went back to a checkpoint; continuing at "
                         "step %d", self.step_count)
            return
        for bucket in self._buckets:
            for name, sent in bucket.sent.items():
                p = params[name]
                if p.grad is None or not torch.equal(
                        p.grad.detach().to(torch.float32).cpu(), sent.reshape(p.shape)):
                    raise RuntimeError(
                        f"the gradient of '{name}' changed after backward pushed it "
                        "(gradient clipping or scaling between backward and step?); "
                        "use RemoteOptimizer(..., overlap=False) to change gradients "
                        "before they are sent")
        self._write_back({n: v for n, v in values.items() if n not in direct})
        self._write_rows(row_values, rows)
        self.step_count += 1
        self._epoch = self.client.session_epoch

    def _send(self, dense: Dict[str, Any], rows: Dict[str, Tuple[np.ndarray, np.ndarray]],
              loss: Optional[float], out: Optional[Dict[str, torch.Tensor]] = None) -> _Sent:
        """Every push of this optimizer goes through here: dense gradients
        (answered with the values after the update) and row gradients
        (answered with the rows after it), without waiting.

        Both go in one request per shard (``Client.push_pull_mixed``); a
        client without it sends the dense gradients in one PushPull per
        shard and each table's rows in PushRows calls of their own, which
        wait.
        """
        if rows and hasattr(self.client, "push_pull_mixed_async"):
            # Only nn.Embedding(sparse=True) weights take their rows after
            # the update (_write_rows); a RemoteEmbedding's are not sent.
            return _Sent(self.client.push_pull_mixed_async(
                dense, rows, step=self.step_count, loss=loss, dtype=self._dtype,
                pull_dtype=self._dtype, out=out,
                rows_wanted=[e.name for e in self._sparse]), None)
        future = None
        if dense:
            future = self.client.push_pull_async(
                dense, step=self.step_count, loss=loss, dtype=self._dtype,
                pull_dtype=self._dtype, out=out)
        pulled: Dict[str, np.ndarray] = {}
        try:
            for table, (ids, grads) in rows.items():
                pulled[table] = self.client.push_rows(
                    table, ids, grads, step=self.step_count, loss=loss,
                    dtype=self._dtype, pull=True)
        except PsError:
            if future is not None:
                try:
                    future.result()
                except PsError:
                    pass
            raise
        return _Sent(future, pulled)

    def _write_rows(self, row_values: Dict[str, np.ndarray],
                    rows: Dict[str, Tuple[np.ndarray, np.ndarray]]) -> None:
        for entry in self._sparse:
            if entry.name in row_values:
                ids = torch.from_numpy(rows[entry.name][0]).to(entry.param.device)
                entry.param[ids] = torch.from_numpy(row_values[entry.name]).to(
                    entry.param.device, entry.param.dtype)

    def _buffer_gradients(self) -> Dict[str, np.ndarray]:
        """Buffers due for synchronisation: the gradient that takes the
        server's value (SGD, rate 1) from what this worker last saw to its
        own, summed (async) or averaged (sync) over the workers."""
        if not self._buffers or (self.step_count + 1) % self._buffer_every != 0 and \
                not self.client.sync:
            return {}
        grads = {}
        for name, buf in self._buffers:
            local = buf.detach().cpu().numpy().astype(np.float32).reshape(-1)
            grads[name] = np.ascontiguousarray(self._buffer_seen[name] - local)
        return grads

    def _sync_hyperparameters(self) -> None:
        """Sends the config of every group whose hyper-parameters changed
        (an lr scheduler's new rate) to the shards."""
        if self._kind is None:
            for group in self.param_groups:
                if group.get("lr") is not None:
                    raise ValueError(
                        "this RemoteOptimizer could not read the server default "
                        "(AdminService), so its groups carry no hyper-parameters: "
                        "name the rule (e.g. \"adam\", lr=...) or change the "
                        "default with psctl")
            return
        for i, group in enumerate(self.param_groups):
            key = _group_key(self._kind, group)
            if key == self._group_keys[i]:
                continue
            base = self._base
            if not self._explicit:
                # The variables follow the server default until a group
                # changes; they then get its values over the default's rule.
                base = self.client.get_optimizer("")
                kind, _ = _kind_of(base)
                if kind != self._kind:
                    raise ValueError(
                        f"the server default changed from {self._kind} to {kind} "
                        "since this RemoteOptimizer was made; its groups' values "
                        f"are {self._kind}'s: make a new RemoteOptimizer")
            config = _config_of(self._kind, group, base)
            names = [self._names[id(p)] for p in group["params"]]
            if i == 0:  # RemoteEmbeddings without a rule of their own
                names += self._following_tables()
            self.client.set_optimizer(names, config)
            self._group_keys[i] = key

    def _following_tables(self) -> List[str]:
        return [m.table for m in self._remote_rows if not m.own_optimizer]

    # -------------------------------------------------------------- values

    @property
    def variable_names(self) -> List[str]:
        """The server variable of each dense parameter, in order."""
        return [n for n, _ in self._dense]

    @property
    def buffer_names(self) -> List[str]:
        """The server variable of each buffer, in order."""
        return [n for n, _ in self._buffers]

    def pull(self) -> Dict[str, np.ndarray]:
        """Overwrites the parameters and buffers with the server's values.

        Returns the block versions of each dense variable.
        """
        names = self.variable_names + self.buffer_names
        values, versions = self.client.pull(names, dtype=self._dtype,
                                            return_versions=True)
        self._write_back(values)
        for entry in self._sparse:
            count = entry.param.shape[0]
            for start in range(0, count, 65536):
                self._refresh_rows(entry, torch.arange(start, min(count, start + 65536)))
        return {n: versions[n] for n in self.variable_names}

    def _write_back(self, values: Dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name, p in self._dense:
                if name in values:
                    src = torch.from_numpy(np.ascontiguousarray(values[name]).reshape(p.shape))
                    p.copy_(src.to(dtype=p.dtype, device=p.device))
            for name, buf in self._buffers:
                if name in values:
                    value = np.array(values[name], dtype=np.float32).reshape(-1)
                    self._buffer_seen[name] = value
                    src = torch.from_numpy(value.reshape(buf.shape))
                    if not buf.dtype.is_floating_point:
                        src = src.round()
                    buf.copy_(src.to(dtype=buf.dtype, device=buf.device))

    # --------------------------------------------------------- state_dict

    def state_dict(self) -> Dict[str, Any]:
        """torch's form, with the server's state: ``param_groups``
        (hyper-parameters and parameter indexes, plus the server names) and
        ``state``, per index of a dense parameter: ``step`` (the rule's t,
        as torch keeps it), the rule's slots under torch's names
        (``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq`` for Adam and Eve,
        ``momentum_buffer``, ``sum`` for Adagrad, ``square_avg`` and
        ``grad_avg`` for RMSProp), ``value`` (the server's values) and
        ``blocks`` (each block's step, held slots and Eve feedback, so that
        load_state_dict puts back exactly what was read). Sparse tables'
        rows stay on the server and in its checkpoints (docs/pytorch.md)."""
        state = super().state_dict()
        dense = set(self.variable_names)
        index = 0
        for group, saved in zip(self.param_groups, state["param_groups"]):
            saved["names"] = [self._names[id(p)] for p in group["params"]]
            for p in group["params"]:
                name = self._names[id(p)]
                if name in dense:
                    state["state"][index] = _torch_state(self.client.read_state(name),
                                                         p.shape)
                index += 1
        state["step_count"] = self.step_count
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Takes the hyper-parameters of a state_dict (sending changed ones
        to the server), its step counter, and each parameter's server state:
        its values and slots are written to the shards (every shard checks
        before any writes) and into the parameter. The server names must
        match. A state without ``value`` (torch's own Adam, say) keeps the
        server's values and sets the slots and step it has; one without
        slots either (an older state_dict) only checks that the shards are
        not behind it."""
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            names = [self._names[id(p)] for p in group["params"]]
            if "names" in saved and list(saved["names"]) != names:
                raise ValueError(f"the state_dict's parameters {saved['names']} are "
                                 f"not this optimizer's {names}")
        saved_state = state_dict.get("state", {})
        order = [(self._names[id(p)], p) for g in self.param_groups for p in g["params"]]
        dense = set(self.variable_names)
        writes = []
        for i, entry in saved_state.items():
            i = int(i)
            if i >= len(order) or order[i][0] not in dense:
                continue
            if "value" in entry or any(k in entry for k in _SLOT_OF_TORCH):
                writes.append((order[i], entry))
        written = {name for (name, _), _ in writes}
        self._check_server_steps({i: e for i, e in saved_state.items()
                                  if int(i) < len(order) and order[int(i)][0] not in written})
        # Every state is built (and checked here) before any is written.
        states = [(name, p, _server_state(self.client.read_state(name), entry, name))
                  for (name, p), entry in writes]
        saved_groups = [{k: v for k, v in g.items() if k != "names"}
                        for g in state_dict["param_groups"]]
        super().load_state_dict({"state": {}, "param_groups": saved_groups})
        if "step_count" in state_dict and not self.client.sync:
            self.step_count = int(state_dict["step_count"])
        self._sync_hyperparameters()
        for name, p, server in states:
            self.client.write_state(name, server)
        self._write_back({name: server["values"] for name, _, server in states})

    def _check_server_steps(self, state: Mapping[int, Mapping[str, Any]]) -> None:
        """Refuses a state_dict newer than what the shards hold (shards
        restarted from an older checkpoint, or another cluster)."""
        order = [self._names[id(p)] for g in self.param_groups for p in g["params"]]
        saved = {order[int(i)]: float(entry["step"]) for i, entry in state.items()
                 if int(i) < len(order) and "step" in entry}
        names = [n for n in self.variable_names if n in saved]
        if not names:
            return
        versions = self.client.pull(names, return_versions=True)[1]
        for name in names:
            held = int(versions[name].min())
            if held < saved[name]:
                raise ValueError(
                    f"the shards hold step {held} of '{name}', older than the "
                    f"state_dict's step {int(saved[name])}: restore the shards' "
                    "checkpoint of that step (the values and slots live there)")


# The server's slots under torch's names, by rule (OptimizerConfig's oneof).
_TORCH_SLOTS = {
    "sgd": {"momentum": "momentum_buffer"},
    "momentum": {"momentum": "momentum_buffer"},
    "adagrad": {"square_avg": "sum"},
    "rmsprop": {"square_avg": "square_avg", "momentum": "momentum_buffer",
                "grad_avg": "grad_avg"},
    "adam": {"momentum": "exp_avg", "square_avg": "exp_avg_sq",
             "max_square_avg": "max_exp_avg_sq"},
    "eve": {"momentum": "exp_avg", "square_avg": "exp_avg_sq",
            "max_square_avg": "max_exp_avg_sq"},
}
# Every torch name back to its slot (the names do not collide across rules).
_SLOT_OF_TORCH = {torch_name: slot for names in _TORCH_SLOTS.values()
                  for slot, torch_name in names.items()}


def _torch_state(server: Dict[str, Any], shape: torch.Size) -> Dict[str, Any]:
    """A variable's read_state in torch's per-parameter form."""
    names = _TORCH_SLOTS.get(server["optimizer"].WhichOneof("rule") or "sgd", {})
    blocks = server["blocks"]
    state: Dict[str, Any] = {
        "step": torch.tensor(float(min((b[2] for b in blocks), default=0))),
        "value": torch.from_numpy(server["values"].reshape(shape)),
        "blocks": [tuple(b) for b in blocks],
    }
    for slot, values in server["slots"].items():
        state[names.get(slot, slot)] = torch.from_numpy(values.reshape(shape))
    return state


def _server_state(current: Dict[str, Any], entry: Mapping[str, Any],
                  name: str) -> Dict[str, Any]:
    """What write_state takes, from a torch-form state (``entry``) and the
    variable's current read_state (its block layout and values)."""
    def flat(t: Any, what: str) -> np.ndarray:
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().numpy()
        array = np.ascontiguousarray(t, dtype=np.float32).reshape(-1)
        if array.size != current["values"].size:
            raise ValueError(f"{what} of '{name}' has {array.size} values; the "
                             f"variable has {current['values'].size}")
        return array
    slots = {}
    for key, value in entry.items():
        slot = _SLOT_OF_TORCH.get(key, key if key in Client.SLOT_NAMES else None)
        if slot is not None:
            slots[slot] = flat(value, key)
    bits = {s: 1 << i for i, s in enumerate(Client.SLOT_NAMES)}
    if "blocks" in entry:
        blocks = [tuple(b) for b in entry["blocks"]]
        layout = [tuple(b[:2]) for b in current["blocks"]]
        if [tuple(b[:2]) for b in blocks] != layout:
            raise ValueError(f"the state_dict's blocks of '{name}' are not the "
                             "variable's (another block_size or shape)")
    else:
        step = int(float(entry.get("step", 0)))
        held = sum(bits[s] for s in slots)
        blocks = [(b[0], b[1], step, held, 0.0, 0.0, False) for b in current["blocks"]]
    values = flat(entry["value"], "value") if "value" in entry \
        else current["values"].reshape(-1)
    return {"values": values, "slots": slots, "blocks": blocks}


def _writable_in_place(p: torch.Tensor) -> bool:
    return (p.device.type == "cpu" and p.dtype == torch.float32
            and p.is_contiguous())
