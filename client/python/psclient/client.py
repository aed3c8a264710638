"""The Python client of the parameter server: ps::Client through a binding.

The calls themselves (cutting tensors into blocks, one request per shard and
part, retries with exactly-once seqs, the cluster check) run in the C++
client (``client/client.h``) behind ``psclient._core``; this module converts
arguments and errors. Every call releases the GIL while it runs, so other
Python threads (a data loader, another client) go on meanwhile.

Arrays go in and out without copies: gradients are float32, C-contiguous
numpy arrays or CPU torch tensors (anything else is refused with a
TypeError or ValueError); answers are written into arrays the caller passes
(``out=``) or into new numpy arrays.

Example::

    client = Client(["127.0.0.1:7000", "127.0.0.1:7001"])
    client.create_variable("w", initial=np.zeros((784, 10), np.float32))
    values = client.push_pull({"w": gradient}, step=t)["w"]
"""

from __future__ import annotations

import dataclasses
import enum
import re
import threading
from typing import (Any, Dict, Iterable, List, Mapping, Optional, Sequence,
                    Tuple, Union)

import grpc
import numpy as np
from google.protobuf import text_format

from psclient._stubs import core as _core
from psclient._stubs import ps_pb2, ps_pb2_grpc
from psclient.partition import PartitionPlan

OptimizerLike = Union["ps_pb2.OptimizerConfig", str, None]


class DType(enum.IntEnum):
    """Encoding of values on the wire (``ps.v1.DType``)."""

    FLOAT32 = 0
    BFLOAT16 = 1
    FLOAT16 = 2

    @property
    def itemsize(self) -> int:
        """Bytes per value on the wire."""
        return 4 if self == DType.FLOAT32 else 2

    @classmethod
    def parse(cls, value: Union["DType", int, str]) -> "DType":
        """A DType from itself, its number, or a name ("bf16", "float16", ...)."""
        if isinstance(value, DType):
            return value
        if isinstance(value, str):
            names = {"float32": cls.FLOAT32, "f32": cls.FLOAT32, "fp32": cls.FLOAT32,
                     "bfloat16": cls.BFLOAT16, "bf16": cls.BFLOAT16,
                     "float16": cls.FLOAT16, "f16": cls.FLOAT16, "fp16": cls.FLOAT16}
            key = value.strip().lower()
            if key not in names:
                raise ValueError(f"unknown dtype '{value}'; use float32, bf16 or fp16")
            return names[key]
        return cls(int(value))


_CODES = {code.value[0]: code for code in grpc.StatusCode}

# create_variable's on_exists, as CreateVariableRequest.on_exists numbers it.
_ON_EXISTS = {"error": 0, "reuse": 1, "reset": 2}


class PsError(Exception):
    """A call refused by a shard (or that could not reach it).

    Attributes:
        code: the gRPC status code.
        details: the message (naming the shard when one refused).
        address: the first shard named in the message, when one is.
    """

    def __init__(self, code: grpc.StatusCode, details: str, address: str = ""):
        self.code = code
        self.details = details
        self.address = address
        super().__init__(f"{code.name}: {details}")


class StaleStepError(PsError):
    """Sync mode: the step pushed has already been applied (ABORTED)."""


class ClusterMismatchError(PsError):
    """The addresses given do not form one cluster."""


_ADDRESS = re.compile(r"^shard (?:\d+ \(([^)]*)\)|at (\S+?)):")


def _error(status: Exception) -> PsError:
    """The PsError of a ``_core.StatusError``."""
    number, message = status.args
    code = _CODES.get(number, grpc.StatusCode.UNKNOWN)
    match = _ADDRESS.match(message)
    address = (match.group(1) or match.group(2)) if match else ""
    if code == grpc.StatusCode.ABORTED:
        return StaleStepError(code, message, address)
    if code == grpc.StatusCode.FAILED_PRECONDITION and "not one cluster" in message:
        return ClusterMismatchError(code, message, address)
    return PsError(code, message, address)


@dataclasses.dataclass
class RetryPolicy:
    """How calls that fail with UNAVAILABLE or DEADLINE_EXCEEDED are retried.

    Every retry of a push reuses its (worker_id, seq), so a shard applies it
    at most once; retrying is safe for every verb. By default a request is
    retried for up to two minutes, which rides out a shard restart.
    """

    #: Seconds a request keeps being retried from its first attempt; a call
    #: against a dead shard takes this long to fail.
    deadline: float = 120.0
    #: Attempts per request, the first included (1 = never retry); 0 = no
    #: limit but the deadline.
    max_attempts: int = 0
    #: Seconds before the first retry.
    initial_backoff: float = 0.1
    #: The longest wait between two attempts, in seconds.
    max_backoff: float = 5.0
    #: Each wait is the previous one times this (>= 1).
    multiplier: float = 2.0
    #: Each wait is scaled by a uniform factor in [1 - jitter, 1 + jitter], so
    #: that workers that failed together do not retry in lockstep.
    jitter: float = 0.2


def parse_optimizer(config: OptimizerLike) -> Optional["ps_pb2.OptimizerConfig"]:
    """An OptimizerConfig from a message or its protobuf text form.

    ``"adam { amsgrad: true } learning_rate: 0.01"`` and
    ``ps_pb2.OptimizerConfig(adam=ps_pb2.Adam(amsgrad=True))`` are the same.
    None stays None (the server's default).
    """
    if config is None or isinstance(config, ps_pb2.OptimizerConfig):
        return config
    if isinstance(config, str):
        return text_format.Parse(config, ps_pb2.OptimizerConfig())
    raise TypeError(f"optimizer must be an OptimizerConfig or text, not {type(config)}")


def as_float32(array: Any, what: str) -> np.ndarray:
    """``array`` as a float32 C-contiguous numpy array, without copying.

    A CPU torch tensor is viewed through ``Tensor.numpy()``. Anything that
    would need a copy (another dtype, a strided view, a GPU tensor, a list)
    is refused.
    """
    if type(array).__module__.startswith("torch"):
        if array.device.type != "cpu":
            raise ValueError(f"{what}: a {array.device.type} tensor; move it to "
                             "the CPU first")
        if array.requires_grad:
            array = array.detach()
        array = array.numpy()
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{what}: expected a float32 numpy array or CPU torch "
                        f"tensor, got {type(array).__name__}")
    if array.dtype != np.float32:
        raise TypeError(f"{what}: expected float32 values, got {array.dtype}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{what}: the array is not C-contiguous; pass "
                         "numpy.ascontiguousarray(...)")
    return array


class Future:
    """The outcome of an async call.

    ``result(timeout)`` waits (without the GIL) and returns what the blocking
    form returns, or raises its error; ``done()`` says whether it has ended.
    The arrays of the call must not be touched until it has ended.
    """

    def __init__(self, pending: Any, value: Any):
        self._pending = pending
        self._value = value

    def done(self) -> bool:
        """True once the call has ended (successfully or not)."""
        return self._pending.done()

    def result(self, timeout: Optional[float] = None) -> Any:
        """The call's result; TimeoutError if it has not ended in ``timeout`` s."""
        try:
            ended = self._pending.wait(timeout)
        except _core.StatusError as e:
            raise _error(e) from None
        if not ended:
            raise TimeoutError(f"the call has not ended within {timeout} s")
        return self._value


class Client:
    """A connection to every shard of one cluster (a ``ps::Client``).

    Thread safety: every method may be called from any thread. Pushes (push
    and push_pull) from one Client reach each shard in the order they were
    issued. Pulls run in parallel.

    Args:
        servers: "host:port" of every shard, in any order (they are put in
            shard-index order from what each reports), or them joined by
            commas.
        token: sent as ``authorization: Bearer <token>`` with every call.
        tls_ca_file: PEM file of the CA certificates that sign the shards'
            certificates; None = plaintext (loopback or a trusted network).
        tls_server_name: the name to check the shards' certificates against
            when it differs from the host in ``servers``.
        worker_id: identifies this worker (exactly-once and sync steps). Must
            be unique among live workers; reusing it after a restart is safe:
            the new process opens a newer session, which fences the old one.
            None = a random one.
        dtype: default wire encoding of gradients and pulled values.
        timeout: deadline of each attempt, in seconds. In sync mode a push
            waits for the step's quorum, so this also bounds how long a slow
            peer is waited for (a timed-out push is retried with its seq).
        retry: retries of UNAVAILABLE and DEADLINE_EXCEEDED.
        max_message_bytes: the largest request or answer sent or accepted.
            Must not exceed the shards' --max_message_mb.
        part_bytes: pushes and pulls are cut into requests of whole blocks
            of about this many bytes (a larger block goes alone)...
        parts_in_flight: ...and up to this many of one push's requests are
            in flight to each shard at once.
        channels_per_shard: gRPC channels (TCP connections) per shard.
    """

    def __init__(self,
                 servers: Union[str, Sequence[str]],
                 *,
                 token: Optional[str] = None,
                 tls_ca_file: Optional[str] = None,
                 tls_server_name: Optional[str] = None,
                 worker_id: Optional[str] = None,
                 dtype: Union[DType, int, str] = DType.FLOAT32,
                 timeout: float = 60.0,
                 retry: Optional[RetryPolicy] = None,
                 max_message_bytes: int = 16 << 20,
                 part_bytes: int = 2 << 20,
                 parts_in_flight: int = 4,
                 channels_per_shard: int = 1):
        if isinstance(servers, str):
            servers = [s for s in servers.split(",") if s.strip()]
        addresses = [s.strip() for s in servers]
        if not addresses:
            raise ValueError("Client needs at least one server address")
        for name, value in (("part_bytes", part_bytes),
                            ("parts_in_flight", parts_in_flight),
                            ("channels_per_shard", channels_per_shard)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self._dtype = DType.parse(dtype)
        self._token = token or ""
        self._tls_ca_file = tls_ca_file or ""
        self._tls_server_name = tls_server_name or ""
        self._timeout = float(timeout)
        self._admin_lock = threading.Lock()
        self._admin_channels: Dict[str, "grpc.Channel"] = {}
        self._shapes_lock = threading.Lock()
        self._shapes: Dict[str, Tuple[int, ...]] = {}
        self._sizes: Dict[str, int] = {}
        policy = retry or RetryPolicy()
        try:
            self._core = _core.Client.connect(
                addresses=addresses, token=token or "",
                tls_ca_file=tls_ca_file or "",
                tls_server_name=tls_server_name or "", worker_id=worker_id or "",
                call_timeout=float(timeout), retry_deadline=float(policy.deadline),
                max_attempts=int(policy.max_attempts),
                initial_backoff=float(policy.initial_backoff),
                max_backoff=float(policy.max_backoff),
                backoff_multiplier=float(policy.multiplier),
                jitter=float(policy.jitter),
                max_message_bytes=int(max_message_bytes),
                part_bytes=int(part_bytes), parts_in_flight=int(parts_in_flight),
                channels_per_shard=int(channels_per_shard))
        except _core.StatusError as e:
            error = _error(e)
            if error.code == grpc.StatusCode.INVALID_ARGUMENT and "Options" in error.details:
                raise ValueError(error.details) from None
            raise error from None
        self._info = ps_pb2.ClusterInfo.FromString(self._core.cluster_info)
        self._plan = PartitionPlan(self._info.num_shards, self._info.block_size)
        self._addresses = list(self._core.addresses)

    # ---------------------------------------------------------------- basics

    @property
    def worker_id(self) -> str:
        """This worker's id."""
        return self._core.worker_id

    @property
    def session_epoch(self) -> int:
        """The epoch of this worker's session, opened on every shard.

        Its pushes are applied exactly once; a later Client with the same
        worker_id fences this one (its pushes then fail with
        FAILED_PRECONDITION, "fenced").
        """
        return self._core.session_epoch

    @property
    def sync_step(self) -> int:
        """Sync mode: the step this worker pushes next.

        A push or push_pull without ``step`` carries it. It starts at the
        step the shards collected when the session opened (0 in a new
        cluster), moves to s + 1 after a push of step s succeeds, and after
        the cluster went back to a checkpoint it is the step the cluster
        resumes from. A training loop that picks its data by ``sync_step``
        and passes no ``step`` goes on through a roll-back unchanged::

            while client.sync_step < steps:
                batch = data[client.sync_step]
                values = client.push_pull({"w": grad(values, batch)})
        """
        return self._core.sync_step

    @property
    def rollbacks(self) -> int:
        """Sync mode: the roll-backs of the cluster this client resumed after.

        When the shards go back to a checkpoint cut before step K (a shard
        restarted from it), a push, push_pull, push_rows or push_pull_rows
        that meets the roll-back opens a new session, sets ``sync_step`` to
        K and returns without applying its gradient (push_pull returns the
        values the cluster went back to). The async forms raise the refusal
        (PsError, "rolled back to checkpoint ..."); the next blocking push
        resumes, or :meth:`resume_after` at once.
        """
        return self._core.rollbacks

    def resume_after(self, error: PsError, epoch: int) -> bool:
        """Sync mode: after an async push failed with ``error``, resumes as
        a blocking push does when ``error`` is a roll-back's refusal of the
        session ``epoch`` (``session_epoch`` read before the push started):
        opens a new session and moves ``sync_step`` to the step the cluster
        resumes from, once however many pushes met it. Returns True then,
        False when ``error`` is something else.
        """
        number = error.code.value[0]
        try:
            return self._core.resume_after_rollback(number, error.details, int(epoch))
        except _core.StatusError as e:
            raise _error(e) from None

    @property
    def resume_step(self) -> int:
        """Sync mode: the step the latest roll-back resumed from (0: none)."""
        return self._core.resume_step

    @property
    def cluster_info(self) -> "ps_pb2.ClusterInfo":
        """The cluster's settings as the shards report them (shard 0's)."""
        return self._info

    @property
    def sync(self) -> bool:
        """Whether the cluster runs in sync mode."""
        return self._info.consistency == "sync"

    @property
    def plan(self) -> PartitionPlan:
        """Where each block lives."""
        return self._plan

    @property
    def addresses(self) -> List[str]:
        """The shards' addresses, in shard-index order."""
        return list(self._addresses)

    def close(self) -> None:
        """Waits for calls in flight and closes the channels. Idempotent."""
        core = getattr(self, "_core", None)
        if core is not None:
            core.close()
        lock = getattr(self, "_admin_lock", None)
        if lock is not None:
            with lock:
                for channel in self._admin_channels.values():
                    channel.close()
                self._admin_channels.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def shape(self, name: str) -> Tuple[int, ...]:
        """The shape of a variable this client created or registered."""
        with self._shapes_lock:
            if name not in self._shapes:
                raise KeyError(
                    f"variable '{name}' is unknown to this client; create it "
                    "or register its shape with register_variable()")
            return self._shapes[name]

    def register_variable(self, name: str, shape: Sequence[int]) -> None:
        """Tells this client the shape of a variable created elsewhere."""
        shape = tuple(int(d) for d in shape)
        size = 1
        for d in shape:
            size *= d
        with self._shapes_lock:
            self._shapes[name] = shape
            self._sizes[name] = size

    def _forget(self, name: str) -> None:
        with self._shapes_lock:
            self._shapes.pop(name, None)
            self._sizes.pop(name, None)

    def _size(self, name: str) -> int:
        size = self._sizes.get(name)
        if size is None:
            self.shape(name)  # raises KeyError, naming the variable
        return size

    # ------------------------------------------------------------------ verbs

    def create_variable(self,
                        name: str,
                        shape: Optional[Sequence[int]] = None,
                        initial: Any = None,
                        optimizer: OptimizerLike = None,
                        on_exists: str = "error") -> bool:
        """Creates ``name`` on every shard, or confirms it exists.

        Args:
            name: the variable's name.
            shape: its shape; defaults to ``initial.shape``.
            initial: every initial value (array-like, converted to float32
                once); None = zeros. Any size: values that do not fit in one
                message are sent in parts.
            optimizer: this variable's own optimizer (an OptimizerConfig or
                its text form); None = the server default.
            on_exists: what to do when it exists already. ``"error"`` (the
                default): fine when it was created with the same optimizer
                and initial values (the workers of one job all create it),
                else PsError ALREADY_EXISTS naming what differs.
                ``"reuse"``: keep the server's values, optimizer and state.
                ``"reset"``: replace them (values, optimizer, slots, steps;
                another shape too), as if it had been deleted first.

        Returns:
            True when this call created it (on at least one shard; always
            after a reset), False when it existed with this shape.

        Raises:
            PsError: ALREADY_EXISTS when it exists with another shape (but
                for a reset), or with another optimizer or initial values
                (on_exists="error"); or the shard's error.
            ValueError: an unknown on_exists.
        """
        if on_exists not in _ON_EXISTS:
            raise ValueError(
                f"on_exists must be one of {', '.join(map(repr, _ON_EXISTS))}, "
                f"not {on_exists!r}")
        if shape is None:
            if initial is None:
                raise ValueError(f"create_variable('{name}') needs a shape or initial values")
            shape = np.shape(initial)
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"shape {list(shape)} of '{name}' has a negative dimension")
        size = int(np.prod(shape, dtype=np.int64))
        flat = None
        if initial is not None:
            if type(initial).__module__.startswith("torch"):
                initial = initial.detach().cpu().numpy()
            flat = np.ascontiguousarray(initial, dtype=np.float32).reshape(-1)
            if flat.size != size:
                raise ValueError(
                    f"initial values of '{name}' hold {flat.size} values; "
                    f"shape {list(shape)} needs {size}")
        config = parse_optimizer(optimizer)
        try:
            created = self._core.create_variable(
                name, list(shape), flat,
                None if config is None else config.SerializeToString(),
                _ON_EXISTS[on_exists])
        except _core.StatusError as e:
            raise _error(e) from None
        self.register_variable(name, shape)
        return created

    def delete_variable(self, name: str) -> None:
        """Deletes the variable or sparse table ``name`` on every shard: its
        values (rows), optimizer state and exactly-once records go; pushes to
        it then fail with NOT_FOUND, and a later create_variable (or
        create_table) starts afresh. Needs an admin token when the shards
        have tokens.

        Raises:
            PsError: NOT_FOUND when no shard had it, PERMISSION_DENIED with a
                worker's token.
        """
        try:
            self._core.delete_variable(name)
        except _core.StatusError as e:
            raise _error(e) from None
        self._forget(name)

    # ---- a variable's optimizer state (docs/pytorch.md, state_dict)

    #: The optimizer slots, by the bit each has in a block's ``held``.
    SLOT_NAMES = ("momentum", "square_avg", "grad_avg", "max_square_avg")

    def read_state(self, name: str) -> Dict[str, Any]:
        """The values and optimizer state of variable ``name``, read from
        every shard: a dict with

        - ``values``: float32, the variable's shape (flat when this client
          does not know it);
        - ``slots``: {slot name: float32 array of that shape} for each slot
          a block holds (``SLOT_NAMES``; zeros in blocks that do not);
        - ``blocks``: per block, by offset, a tuple ``(offset, length, step,
          held, eve_d, eve_f_hat, eve_started)``: ``step`` is the rule's t
          and bit i of ``held`` stands for ``SLOT_NAMES[i]``;
        - ``optimizer``: the variable's ``OptimizerConfig``.

        Raises:
            PsError: NOT_FOUND for an unknown variable, INVALID_ARGUMENT
                for a table.
        """
        try:
            values, slots, blocks, config = self._core.read_state(name)
        except _core.StatusError as e:
            raise _error(e) from None
        with self._shapes_lock:
            shape = self._shapes.get(name)
        values = np.frombuffer(values, dtype=np.float32).copy()
        if shape is None or int(np.prod(shape, dtype=np.int64)) != values.size:
            shape = (values.size,)
        optimizer = ps_pb2.OptimizerConfig()
        optimizer.ParseFromString(config)
        return {
            "values": values.reshape(shape),
            "slots": {k: np.frombuffer(v, dtype=np.float32).copy().reshape(shape)
                      for k, v in slots.items()},
            "blocks": [tuple(b) for b in blocks],
            "optimizer": optimizer,
        }

    def write_state(self, name: str, state: Mapping[str, Any]) -> None:
        """Sets variable ``name``'s values and optimizer state from
        ``state``, in read_state's form (``optimizer`` is not read: set it
        with ``create_variable`` or psctl). Every shard checks its blocks
        before any shard writes; the blocks' exactly-once records and sync
        step stay.

        Raises:
            PsError: INVALID_ARGUMENT for blocks that are not the
                variable's, sizes that differ, values that are not finite,
                or a slot its optimizer does not hold; NOT_FOUND for an
                unknown variable.
        """
        def flat(array: Any) -> np.ndarray:
            if type(array).__module__.startswith("torch"):
                array = array.detach().cpu().numpy()
            return np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
        slots = {str(k): flat(v) for k, v in state.get("slots", {}).items()}
        blocks = [tuple(b) for b in state["blocks"]]
        try:
            self._core.write_state(name, flat(state["values"]), slots, blocks)
        except _core.StatusError as e:
            raise _error(e) from None
        except (TypeError, RuntimeError) as e:
            raise ValueError(f"state of '{name}': {e}") from None

    # ---- sparse tables (docs/tables.md)

    def create_table(self,
                     name: str,
                     dim: int,
                     *,
                     init: Optional["ps_pb2.RowInit"] = None,
                     policy: Optional["ps_pb2.TablePolicy"] = None,
                     optimizer: OptimizerLike = None,
                     on_exists: str = "error") -> bool:
        """Creates a sparse table of rows of ``dim`` values on every shard.

        Args:
            name: the table's name (variables and tables share names).
            dim: values per row.
            init: the rows' initial values (a ps_pb2.RowInit); None = zeros.
            policy: admission and eviction (a ps_pb2.TablePolicy).
            optimizer: the table's own optimizer; None = the server default.
            on_exists: what to do when it exists already, as for
                :meth:`create_variable`: ``"error"`` (fine when it was
                created with the same init, policy and optimizer, else
                PsError ALREADY_EXISTS naming what differs), ``"reuse"``
                (keep it as it is) or ``"reset"`` (replace it: rows, slots,
                steps; another dim too).

        Returns:
            True when this call created (or reset) it, False when it existed.
        """
        if on_exists not in _ON_EXISTS:
            raise ValueError(
                f"on_exists must be one of {', '.join(map(repr, _ON_EXISTS))}, "
                f"not {on_exists!r}")
        config = parse_optimizer(optimizer)
        try:
            return self._core.create_table(
                name, int(dim),
                None if init is None else init.SerializeToString(),
                None if policy is None else policy.SerializeToString(),
                None if config is None else config.SerializeToString(),
                _ON_EXISTS[on_exists])
        except _core.StatusError as e:
            raise _error(e) from None

    @staticmethod
    def _ids(ids: Any) -> np.ndarray:
        if type(ids).__module__.startswith("torch"):
            ids = ids.detach().cpu().numpy()
        return np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)

    def pull_rows(self, table: str, ids: Any, dim: int, *,
                  dtype: Union[DType, int, str, None] = None,
                  out: Any = None) -> np.ndarray:
        """Reads the rows of ``ids`` (repeats allowed) as an (n, dim) array.

        An id without a row reads its initial row; nothing is created.
        """
        id_array = self._ids(ids)
        if out is None:
            out = np.empty((id_array.size, int(dim)), dtype=np.float32)
        try:
            self._core.pull_rows(table, id_array, out, int(self._wire(dtype)))
        except _core.StatusError as e:
            raise _error(e) from None
        return out

    def push_rows(self, table: str, ids: Any, grads: Any, *,
                  step: Optional[int] = None,
                  loss: Optional[float] = None,
                  dtype: Union[DType, int, str, None] = None,
                  pull: bool = False) -> Optional[np.ndarray]:
        """Pushes row gradients (n, dim) for ``ids``; repeats are summed.

        With ``pull``, returns the rows after the push, (n, dim). One table
        of :meth:`push_mixed` / :meth:`push_pull_mixed` (the answer in
        ``dtype`` too).
        """
        rows = {table: (ids, grads)}
        if pull:
            return self.push_pull_mixed({}, rows, step=step, loss=loss, dtype=dtype,
                                        pull_dtype=dtype)[1][table]
        self.push_mixed({}, rows, step=step, loss=loss, dtype=dtype)
        return None

    def pull(self,
             names: Union[str, Iterable[str]],
             *,
             dtype: Union[DType, int, str, None] = None,
             return_versions: bool = False,
             out: Optional[Mapping[str, Any]] = None) -> Any:
        """Reads every value of one or more variables.

        Args:
            names: a variable name, or several.
            dtype: wire encoding of the answer (default: the client's).
            return_versions: also return, per variable, the version (update
                count) of each block, as an int64 array.
            out: name -> float32 array to write the values into (any shape
                with the variable's size); the others go into new arrays.

        Returns:
            For one name, its float32 array (shaped); for several, a dict of
            them. With ``return_versions``, a pair (values, versions) of that
            form.
        """
        single = isinstance(names, str)
        name_list = [names] if single else list(names)
        outputs, versions = self._outputs(name_list, out, return_versions)
        try:
            self._core.pull(name_list, list(outputs.values()),
                            list(versions.values()) if versions else None,
                            int(self._wire(dtype)))
        except _core.StatusError as e:
            raise _error(e) from None
        return self._answer(name_list, outputs, versions, single, return_versions)

    def push(self,
             gradients: Mapping[str, Any],
             *,
             step: Optional[int] = None,
             loss: Optional[float] = None,
             dtype: Union[DType, int, str, None] = None) -> None:
        """Sends the gradient of every value of each variable given.

        Args:
            gradients: variable name -> gradient (float32, C-contiguous numpy
                array or CPU tensor; its shape or flat).
            step: the worker's iteration; sync mode averages pushes per step.
                None: the client's ``sync_step`` (see there).
            loss: the objective at the values the gradients were computed on
                (the Eve rule needs it; sync mode averages it).
            dtype: wire encoding of the gradients (default: the client's).

        Raises:
            StaleStepError: sync mode, the step was already applied.
            PsError: any other refusal.
        """
        names, grads = self._gradients(gradients)
        try:
            self._core.push(names, grads, _step(step), _loss(loss),
                            int(self._wire(dtype)))
        except _core.StatusError as e:
            raise _error(e) from None

    def push_pull(self,
                  gradients: Mapping[str, Any],
                  *,
                  step: Optional[int] = None,
                  loss: Optional[float] = None,
                  dtype: Union[DType, int, str, None] = None,
                  pull_dtype: Union[DType, int, str, None] = None,
                  return_versions: bool = False,
                  out: Optional[Mapping[str, Any]] = None) -> Any:
        """Pushes gradients and returns the values after the update.

        In sync mode the answer holds the values after the whole step. The
        arguments are those of :meth:`push` and :meth:`pull`; ``pull_dtype``
        is the encoding of the answer. Returns a dict name -> float32 array
        (shaped), or (values, versions) with ``return_versions``.
        """
        names, grads = self._gradients(gradients)
        outputs, versions = self._outputs(names, out, return_versions)
        try:
            self._core.push_pull(names, grads, list(outputs.values()),
                                 list(versions.values()) if versions else None,
                                 _step(step), _loss(loss), int(self._wire(dtype)),
                                 int(self._wire(pull_dtype)))
        except _core.StatusError as e:
            raise _error(e) from None
        return self._answer(names, outputs, versions, False, return_versions)

    # ----------------------------------------------- optimizer configs (admin)

    def get_optimizer(self, name: str = "") -> "ps_pb2.OptimizerConfig":
        """The optimizer of variable or table ``name`` ("" = the default), as
        shard 0 holds it (``AdminService.GetOptimizer``)."""
        address = self._addresses[0]
        try:
            return self._admin(address).GetOptimizer(
                ps_pb2.GetOptimizerRequest(variable=name), timeout=self._timeout,
                metadata=self._metadata())
        except grpc.RpcError as e:
            raise PsError(e.code(), f"shard at {address}: GetOptimizer('{name}'): "
                          f"{e.details()}", address) from None

    def set_optimizer(self, names: Union[str, Iterable[str]],
                      optimizer: OptimizerLike, *,
                      reset_state: bool = False) -> None:
        """Sets the own optimizer of each variable or table in ``names`` on
        every shard (``AdminService.SetOptimizer``), all calls in flight at
        once.

        With the same rule, every slot and step count is kept (a new
        learning rate takes effect at the next update); see
        docs/optimizers.md for a change of rule. Needs a token that may call
        AdminService when the shards check tokens. On an error some shards
        may have taken the change: call again.
        """
        config = parse_optimizer(optimizer)
        if config is None:
            raise ValueError("set_optimizer needs a config")
        name_list = [names] if isinstance(names, str) else list(names)
        calls = []
        for address in self._addresses:
            stub = self._admin(address)
            for name in name_list:
                request = ps_pb2.SetOptimizerRequest(
                    variable=name, config=config, reset_state=reset_state)
                calls.append((address, name, stub.SetOptimizer.future(
                    request, timeout=self._timeout, metadata=self._metadata())))
        failure = None
        for address, name, call in calls:
            try:
                call.result()
            except grpc.RpcError as e:
                failure = failure or PsError(
                    e.code(), f"shard at {address}: SetOptimizer('{name}'): "
                    f"{e.details()}", address)
        if failure is not None:
            raise failure

    def _metadata(self) -> List[Tuple[str, str]]:
        return [("authorization", "Bearer " + self._token)] if self._token else []

    def _admin(self, address: str) -> "ps_pb2_grpc.AdminServiceStub":
        """The AdminService stub of a shard, on a channel kept until close()."""
        with self._admin_lock:
            if address not in self._admin_channels:
                self._admin_channels[address] = self._admin_channel(address)
            return ps_pb2_grpc.AdminServiceStub(self._admin_channels[address])

    def _admin_channel(self, address: str) -> "grpc.Channel":
        if not self._tls_ca_file:
            return grpc.insecure_channel(address)
        with open(self._tls_ca_file, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = []
        if self._tls_server_name:
            options.append(("grpc.ssl_target_name_override", self._tls_server_name))
        return grpc.secure_channel(address, credentials, options=options)

    # ----------------------------------------- dense and rows in one call

    def push_mixed(self,
                   gradients: Mapping[str, Any],
                   rows: Optional[Mapping[str, Tuple[Any, Any]]] = None,
                   *,
                   step: Optional[int] = None,
                   loss: Optional[float] = None,
                   dtype: Union[DType, int, str, None] = None) -> None:
        """:meth:`push` of dense variables and :meth:`push_rows` of tables in
        one request per shard.

        Args:
            gradients: variable name -> gradient, as for :meth:`push` (may be
                empty).
            rows: table name -> (ids, row gradients (n, dim)); repeated ids
                are summed. Every shard hears of every table, so in sync
                mode a table this worker has no rows for this step counts as
                zero there.
            step, loss, dtype: as for :meth:`push`.
        """
        call = self._mixed(gradients, rows, None, pull=False)
        try:
            self._core.push_mixed(*call[:7], _step(step), _loss(loss),
                                  int(self._wire(dtype)), 0)
        except _core.StatusError as e:
            raise _error(e) from None

    def push_pull_mixed(self,
                        gradients: Mapping[str, Any],
                        rows: Optional[Mapping[str, Tuple[Any, Any]]] = None,
                        *,
                        step: Optional[int] = None,
                        loss: Optional[float] = None,
                        dtype: Union[DType, int, str, None] = None,
                        pull_dtype: Union[DType, int, str, None] = None,
                        out: Optional[Mapping[str, Any]] = None,
                        rows_wanted: Optional[Iterable[str]] = None
                        ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        """:meth:`push_mixed` that answers the values after the update.

        Returns (values, row_values): name -> float32 array (shaped) for each
        dense variable, and table -> (n, dim) float32 rows after the update,
        in the order of the ids given (a repeated id repeats its row). In
        sync mode both hold the state after the whole step. ``out`` may give
        arrays for dense variables, as for :meth:`push_pull`.
        ``rows_wanted``: the tables whose rows after the update are wanted
        (None: every table); the shards do not send the others back, and
        ``row_values`` leaves them out.
        """
        call = self._mixed(gradients, rows, out, pull=True, rows_wanted=rows_wanted)
        try:
            self._core.push_mixed(*call[:7], _step(step), _loss(loss),
                                  int(self._wire(dtype)),
                                  int(self._wire(pull_dtype)))
        except _core.StatusError as e:
            raise _error(e) from None
        return call[7]

    def push_pull_mixed_async(self,
                              gradients: Mapping[str, Any],
                              rows: Optional[Mapping[str, Tuple[Any, Any]]] = None,
                              *,
                              step: Optional[int] = None,
                              loss: Optional[float] = None,
                              dtype: Union[DType, int, str, None] = None,
                              pull_dtype: Union[DType, int, str, None] = None,
                              out: Optional[Mapping[str, Any]] = None,
                              rows_wanted: Optional[Iterable[str]] = None) -> Future:
        """:meth:`push_pull_mixed` without waiting; the Future's result is
        its (values, row_values)."""
        call = self._mixed(gradients, rows, out, pull=True, rows_wanted=rows_wanted)
        try:
            pending = self._core.push_mixed_async(
                *call[:7], _step(step), _loss(loss), int(self._wire(dtype)),
                int(self._wire(pull_dtype)))
        except _core.StatusError as e:
            raise _error(e) from None
        return Future(pending, call[7])

    # ------------------------------------------------------------ async forms

    def push_async(self, gradients: Mapping[str, Any], *, step: Optional[int] = None,
                   loss: Optional[float] = None,
                   dtype: Union[DType, int, str, None] = None) -> Future:
        """:meth:`push` without waiting; the Future's result is None."""
        names, grads = self._gradients(gradients)
        try:
            pending = self._core.push_async(names, grads, _step(step), _loss(loss),
                                            int(self._wire(dtype)))
        except _core.StatusError as e:
            raise _error(e) from None
        return Future(pending, None)

    def pull_async(self, names: Union[str, Iterable[str]], *,
                   dtype: Union[DType, int, str, None] = None,
                   return_versions: bool = False,
                   out: Optional[Mapping[str, Any]] = None) -> Future:
        """:meth:`pull` without waiting; the Future's result is its answer."""
        single = isinstance(names, str)
        name_list = [names] if single else list(names)
        outputs, versions = self._outputs(name_list, out, return_versions)
        try:
            pending = self._core.pull_async(
                name_list, list(outputs.values()),
                list(versions.values()) if versions else None,
                int(self._wire(dtype)))
        except _core.StatusError as e:
            raise _error(e) from None
        return Future(pending, self._answer(name_list, outputs, versions, single,
                                            return_versions))

    def push_pull_async(self, gradients: Mapping[str, Any], *, step: Optional[int] = None,
                        loss: Optional[float] = None,
                        dtype: Union[DType, int, str, None] = None,
                        pull_dtype: Union[DType, int, str, None] = None,
                        return_versions: bool = False,
                        out: Optional[Mapping[str, Any]] = None) -> Future:
        """:meth:`push_pull` without waiting; the Future's result is its answer."""
        names, grads = self._gradients(gradients)
        outputs, versions = self._outputs(names, out, return_versions)
        try:
            pending = self._core.push_pull_async(
                names, grads, list(outputs.values()),
                list(versions.values()) if versions else None, _step(step),
                _loss(loss), int(self._wire(dtype)), int(self._wire(pull_dtype)))
        except _core.StatusError as e:
            raise _error(e) from None
        return Future(pending, self._answer(names, outputs, versions, False,
                                            return_versions))

    # -------------------------------------------------------------- internals

    def _wire(self, dtype: Union[DType, int, str, None]) -> DType:
        return self._dtype if dtype is None else DType.parse(dtype)

    def _gradients(self, gradients: Mapping[str, Any]) -> Tuple[List[str], List[np.ndarray]]:
        names, grads = [], []
        for name, grad in gradients.items():
            flat = as_float32(grad, "gradient of '%s'" % name)
            size = self._size(name)
            if flat.size != size:
                raise ValueError(
                    f"gradient of '{name}' holds {flat.size} values; its shape "
                    f"{list(self.shape(name))} needs {size}")
            names.append(name)
            grads.append(flat)
        return names, grads

    def _mixed(self, gradients: Mapping[str, Any],
               rows: Optional[Mapping[str, Tuple[Any, Any]]],
               out: Optional[Mapping[str, Any]], pull: bool,
               rows_wanted: Optional[Iterable[str]] = None) -> Tuple[Any, ...]:
        """The arguments of _core.push_mixed, then the (values, row_values)
        a pull answers into. A table not in ``rows_wanted`` (None: all) gets
        an empty output: its rows are not answered."""
        wanted = None if rows_wanted is None else set(rows_wanted)
        names, grads = self._gradients(gradients)
        outputs: Dict[str, np.ndarray] = {}
        if pull:
            outputs, _ = self._outputs(names, out, False)
        tables: List[str] = []
        ids: List[np.ndarray] = []
        row_grads: List[np.ndarray] = []
        row_outputs: Dict[str, np.ndarray] = {}
        binding_row_outputs: List[np.ndarray] = []
        for table, entry in (rows or {}).items():
            try:
                table_ids, table_grads = entry
            except (TypeError, ValueError):
                raise TypeError(f"rows of '{table}' must be a pair "
                                "(ids, gradients)") from None
            id_array = self._ids(table_ids)
            grad_array = as_float32(table_grads, f"row gradients of '{table}'")
            if grad_array.size % max(id_array.size, 1) != 0 or (
                    id_array.size == 0 and grad_array.size != 0):
                raise ValueError(
                    f"row gradients of '{table}' hold {grad_array.size} "
                    f"values for {id_array.size} ids")
            dim = grad_array.size // id_array.size if id_array.size else (
                np.shape(table_grads)[-1] if np.ndim(table_grads) == 2 else 0)
            tables.append(table)
            ids.append(id_array)
            row_grads.append(grad_array)
            if pull and (wanted is None or table in wanted):
                row_outputs[table] = np.empty((id_array.size, dim),
                                              dtype=np.float32)
                binding_row_outputs.append(row_outputs[table])
            elif pull:
                binding_row_outputs.append(np.empty(0, dtype=np.float32))
        return (names, grads, list(outputs.values()), tables, ids, row_grads,
                binding_row_outputs, (dict(outputs), row_outputs))

    def _outputs(self, names: Sequence[str], out: Optional[Mapping[str, Any]],
                 with_versions: bool) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        outputs: Dict[str, np.ndarray] = {}
        for name in names:
            size = self._size(name)
            if out is not None and name in out:
                array = as_float32(out[name], f"output of '{name}'")
                if array.size != size:
                    raise ValueError(f"output of '{name}' holds {array.size} "
                                     f"values; the variable has {size}")
                if not array.flags.writeable:
                    raise ValueError(f"output of '{name}' is read-only")
                outputs[name] = array
            else:
                outputs[name] = np.empty(self.shape(name), dtype=np.float32)
        versions = {n: np.zeros(self._plan.num_blocks(self._size(n)), dtype=np.int64)
                    for n in names} if with_versions else {}
        return outputs, versions

    def _answer(self, names: Sequence[str], outputs: Dict[str, np.ndarray],
                versions: Dict[str, np.ndarray], single: bool,
                with_versions: bool) -> Any:
        result: Any = outputs[names[0]] if single else dict(outputs)
        if not with_versions:
            return result
        return result, (versions[names[0]] if single else dict(versions))


def _loss(loss: Optional[float]) -> Optional[float]:
    return None if loss is None else float(loss)


def _step(step: Optional[int]) -> Optional[int]:
    return None if step is None else int(step)
