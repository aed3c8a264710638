"""The Python client of the parameter server.

A :class:`Client` holds one gRPC channel per shard. A call on one or more
variables is cut into blocks by the partitioning rule (``partition.py``),
grouped into one request per shard (more only when a request would exceed
``max_message_bytes``), sent to every shard in parallel with gRPC futures, and
finished when every shard has answered.

Example::

    client = Client(["127.0.0.1:7000", "127.0.0.1:7001"])
    client.create_variable("w", initial=np.zeros((784, 10), np.float32))
    values = client.push_pull({"w": gradient}, step=t)["w"]
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import queue
import random
import threading
import time
import uuid
from typing import (Any, Callable, Dict, Iterable, List, Mapping, Optional,
                    Sequence, Tuple, Union)

import grpc
import numpy as np
from google.protobuf import message, text_format

from psclient import encoding, wire
from psclient._stubs import ps_pb2, ps_pb2_grpc
from psclient.encoding import DType
from psclient.partition import PartitionPlan

_LOG = logging.getLogger(__name__)

# What one Slice costs beyond its data: field tags, lengths, offset, length,
# dtype, version. Generous, so that split requests stay under the limit.
_SLICE_OVERHEAD = 48
_REQUEST_OVERHEAD = 256

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

OptimizerLike = Union["ps_pb2.OptimizerConfig", str, None]


class PsError(Exception):
    """A call refused by a shard (or that could not reach it).

    Attributes:
        code: the gRPC status code.
        details: the shard's message.
        address: the shard that answered, when known.
    """

    def __init__(self, code: grpc.StatusCode, details: str, address: str = ""):
        self.code = code
        self.details = details
        self.address = address
        where = f" from {address}" if address else ""
        super().__init__(f"{code.name}{where}: {details}")


class StaleStepError(PsError):
    """Sync mode: the step pushed has already been applied (ABORTED)."""


class ClusterMismatchError(PsError):
    """The addresses given do not form one cluster."""

    def __init__(self, details: str):
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION,
                         "not one cluster: " + details)


def _to_error(error: grpc.RpcError, address: str) -> PsError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else str(error)) or ""
    cls = StaleStepError if code == grpc.StatusCode.ABORTED else PsError
    return cls(code, details, address)


@dataclasses.dataclass
class RetryPolicy:
    """How calls that fail with UNAVAILABLE or DEADLINE_EXCEEDED are retried.

    Every retry of a push reuses its (worker_id, seq), so a shard applies it
    at most once; retrying is safe for every verb.
    """

    #: Attempts per request, the first included (1 = never retry). More
    #: attempts ride out longer shard restarts; a dead shard takes longer to
    #: be reported.
    max_attempts: int = 5
    #: Seconds before the first retry.
    initial_backoff: float = 0.1
    #: The longest wait between two attempts, in seconds.
    max_backoff: float = 5.0
    #: Each wait is the previous one times this (>= 1).
    multiplier: float = 2.0
    #: Each wait is scaled by a uniform factor in [1 - jitter, 1 + jitter], so
    #: that workers that failed together do not retry in lockstep.
    jitter: float = 0.2

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        base = min(self.max_backoff,
                   self.initial_backoff * self.multiplier ** (retry - 1))
        return base * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)


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


@dataclasses.dataclass
class _Call:
    """One request to one shard, retried as a unit.

    With ``payload`` the request goes as those raw bytes (``request`` then
    describes it without the data) and a Pull or PushPull answer is read
    with :func:`psclient.wire.read_pull_response`.
    """

    shard: int
    method: str
    request: Any
    attempts: int = 0
    payload: Optional[bytes] = None


@dataclasses.dataclass
class _Block:
    variable: str
    offset: int
    length: int


class Client:
    """A connection to every shard of one cluster.

    Thread safety: every method may be called from any thread. Pushes (push
    and push_pull) from one Client are serialized: the exactly-once rule needs
    each shard to see (worker_id, seq) increase. Pulls run in parallel.

    Args:
        servers: "host:port" of every shard, in any order (they are put in
            shard-index order from what each reports).
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
            Must not exceed the shards' --max_message_mb. One block of
            gradients, and one shard's initial values in create_variable,
            must fit in one message.
        part_bytes: pushes and pulls are cut into requests of whole blocks
            of about this many bytes (a larger block goes alone)...
        parts_in_flight: ...and up to this many of one push's requests are
            in flight to each shard at once, so a shard applies one part
            while the next is on the wire and holds only those in memory.
            A push's parts cover different blocks; the next push starts when
            they have all been answered, so each block applies this worker's
            pushes in order. Pulls send all their parts at once.
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
                 parts_in_flight: int = 4):
        if isinstance(servers, str):
            servers = [s for s in servers.split(",") if s.strip()]
        addresses = [s.strip() for s in servers]
        if not addresses:
            raise ValueError("Client needs at least one server address")
        if max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes {max_message_bytes} is too small")
        if part_bytes < 1:
            raise ValueError(f"part_bytes must be >= 1, got {part_bytes}")
        if parts_in_flight < 1:
            raise ValueError(f"parts_in_flight must be >= 1, got {parts_in_flight}")
        self._worker_id = worker_id or f"py-{uuid.uuid4().hex[:16]}"
        self._dtype = DType.parse(dtype)
        self._timeout = float(timeout)
        self._retry = retry or RetryPolicy()
        self._max_bytes = int(max_message_bytes)
        self._part_bytes = min(int(part_bytes), self._max_bytes)
        self._parts_in_flight = int(parts_in_flight)
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        self._rng = random.Random()
        self._push_lock = threading.Lock()
        self._shapes_lock = threading.Lock()
        self._shapes: Dict[str, Tuple[int, ...]] = {}

        options = [("grpc.max_send_message_length", self._max_bytes),
                   ("grpc.max_receive_message_length", self._max_bytes)]
        credentials = None
        if tls_ca_file:
            with open(tls_ca_file, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
        channels = [
            grpc.secure_channel(a, credentials, options=options)
            if credentials else grpc.insecure_channel(a, options=options)
            for a in addresses
        ]
        self._addresses = addresses
        self._channels = channels
        self._stubs = [ps_pb2_grpc.ParameterServiceStub(c) for c in channels]
        # Bytes in, bytes out: the calls whose messages are mostly values.
        self._raw = [{m: c.unary_unary(f"/ps.v1.ParameterService/{m}")
                      for m in ("Push", "Pull", "PushPull")} for c in channels]
        try:
            infos = self._call_all([
                _Call(i, "GetClusterInfo", ps_pb2.GetClusterInfoRequest())
                for i in range(len(addresses))
            ])
            order = check_cluster(infos, addresses)
        except BaseException:
            self.close()
            raise
        # Shard-index order from here on.
        self._addresses = [addresses[i] for i in order]
        self._channels = [channels[i] for i in order]
        self._stubs = [self._stubs[i] for i in order]
        self._raw = [self._raw[i] for i in order]
        self._info = infos[order[0]]
        self._plan = PartitionPlan(self._info.num_shards, self._info.block_size)
        # Seqs count from 1 in each session: the session's epoch, not the
        # seq, tells a restarted worker from a retry.
        self._next_seq = [1] * len(self._stubs)
        try:
            self._epoch, self._sync_step = self._open_session()
        except BaseException:
            self.close()
            raise
        _LOG.info("worker %s connected to %d shard(s) (%s, block_size %d), "
                  "session epoch %d", self._worker_id, self._info.num_shards,
                  self._info.consistency, self._info.block_size, self._epoch)

    def _open_session(self) -> Tuple[int, int]:
        """Opens this worker's session on every shard: (epoch, sync step).

        Each shard picks an epoch above all it knows for this worker; the
        shards that picked less then take the highest, so all hold the same
        one. ABORTED means another process with this worker id opened a
        newer session meanwhile: start over.
        """
        error: Optional[PsError] = None
        for _ in range(3):
            answers = self._call_all([
                _Call(i, "OpenSession",
                      ps_pb2.OpenSessionRequest(worker_id=self._worker_id))
                for i in range(len(self._stubs))
            ])
            epoch = max(a.epoch for a in answers)
            step = max(a.sync_step for a in answers)
            behind = [i for i, a in enumerate(answers) if a.epoch != epoch]
            try:
                self._call_all([
                    _Call(i, "OpenSession",
                          ps_pb2.OpenSessionRequest(worker_id=self._worker_id,
                                                    epoch=epoch))
                    for i in behind
                ])
            except PsError as e:
                if e.code != grpc.StatusCode.ABORTED:
                    raise
                error = e
                continue
            return epoch, step
        assert error is not None
        raise error

    # ---------------------------------------------------------------- basics

    @property
    def worker_id(self) -> str:
        """This worker's id."""
        return self._worker_id

    @property
    def session_epoch(self) -> int:
        """The epoch of this worker's session, opened on every shard.

        Its pushes are applied exactly once; a later Client with the same
        worker_id fences this one (its pushes then fail with
        FAILED_PRECONDITION, "fenced").
        """
        return self._epoch

    @property
    def sync_step(self) -> int:
        """Sync mode: the step the shards collected when the session opened.

        Where a worker starts or resumes (the highest of any shard); 0 in a
        new cluster.
        """
        return self._sync_step

    @property
    def cluster_info(self) -> "ps_pb2.ClusterInfo":
        """The cluster's settings as the shards report them (shard 0's)."""
        return self._info

    @property
    def plan(self) -> PartitionPlan:
        """Where each block lives."""
        return self._plan

    @property
    def addresses(self) -> List[str]:
        """The shards' addresses, by shard index."""
        return list(self._addresses)

    @property
    def sync(self) -> bool:
        """True when the cluster averages pushes per step."""
        return self._info.consistency == "sync"

    def close(self) -> None:
        """Closes the channels. The Client cannot be used afterwards."""
        for channel in self._channels:
            channel.close()

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
        with self._shapes_lock:
            self._shapes[name] = tuple(int(d) for d in shape)

    # ------------------------------------------------------------------ verbs

    def create_variable(self,
                        name: str,
                        shape: Optional[Sequence[int]] = None,
                        initial: Optional[np.ndarray] = None,
                        optimizer: OptimizerLike = None) -> bool:
        """Creates ``name`` on every shard, or confirms it exists.

        Args:
            name: the variable's name.
            shape: its shape; defaults to ``initial.shape``.
            initial: every initial value (converted to float32); None = zeros.
                When several workers create the same variable, the first
                creator's values win on each shard.
            optimizer: this variable's own optimizer (an OptimizerConfig or
                its text form); None = the server default, which is what
                AdminService.SetOptimizer(variable="") later changes.

        Returns:
            True when this call created it (on at least one shard), False when
            it existed with this shape.

        Raises:
            PsError: ALREADY_EXISTS when it exists with another shape, or the
                shard's error.
        """
        if shape is None:
            if initial is None:
                raise ValueError(f"create_variable('{name}') needs a shape or initial values")
            shape = np.shape(initial)
        shape = tuple(int(d) for d in shape)
        size = int(np.prod(shape, dtype=np.int64)) if shape else 1
        flat = None
        if initial is not None:
            flat = np.asarray(initial, dtype=np.float32).reshape(-1)
            if flat.size != size:
                raise ValueError(
                    f"initial values of '{name}' hold {flat.size} values; "
                    f"shape {list(shape)} needs {size}")
        config = parse_optimizer(optimizer)
        requests = []
        for shard in range(self._plan.num_shards):
            request = ps_pb2.CreateVariableRequest(name=name, shape=list(shape))
            if config is not None:
                request.optimizer.CopyFrom(config)
            requests.append(_Call(shard, "CreateVariable", request))
        if flat is not None:
            for shard, _, offset, length in self._plan.blocks(name, size):
                requests[shard].request.initial_values.add(
                    variable=name, offset=offset, length=length,
                    dtype=ps_pb2.FLOAT32,
                    data=encoding.encode(flat[offset:offset + length]))
        answers = self._call_all(requests)
        self.register_variable(name, shape)
        return any(a.created for a in answers)

    def pull(self,
             names: Union[str, Iterable[str]],
             *,
             dtype: Union[DType, int, str, None] = None,
             return_versions: bool = False) -> Any:
        """Reads every value of one or more variables.

        Args:
            names: a variable name, or several.
            dtype: wire encoding of the answer (default: the client's).
            return_versions: also return, per variable, the version (update
                count) of each block, as an int64 array.

        Returns:
            For one name, its float32 array (shaped); for several, a dict of
            them. With ``return_versions``, a pair (values, versions) of that
            form.
        """
        single = isinstance(names, str)
        name_list = [names] if single else list(names)
        dtype = self._dtype if dtype is None else DType.parse(dtype)
        outputs = {n: np.empty(self._size(n), dtype=np.float32) for n in name_list}
        versions = {n: np.zeros(self._plan.num_blocks(self._size(n)), dtype=np.int64)
                    for n in name_list}
        per_shard: List[List[_Block]] = [[] for _ in range(self._plan.num_shards)]
        for n in name_list:
            for shard, _, offset, length in self._plan.blocks(n, outputs[n].size):
                per_shard[shard].append(_Block(n, offset, length))
        calls = []
        budget, limit = self._part_budget()
        for shard, blocks in enumerate(per_shard):
            for chunk in _chunks(_split_ranges(blocks, limit, dtype.itemsize),
                                 budget, dtype.itemsize, limit):
                request = ps_pb2.PullRequest(dtype=int(dtype))
                for b in chunk:
                    request.slices.add(variable=b.variable, offset=b.offset,
                                       length=b.length)
                calls.append(_Call(shard, "Pull", request,
                                   payload=request.SerializeToString()))
        for call, answer in zip(calls, self._call_all(calls)):
            self._scatter(call, call.request.slices, answer, outputs, versions)
        shaped = {n: outputs[n].reshape(self.shape(n)) for n in name_list}
        result: Any = shaped[name_list[0]] if single else shaped
        if return_versions:
            vers: Any = versions[name_list[0]] if single else versions
            return result, vers
        return result

    def push(self,
             gradients: Mapping[str, np.ndarray],
             *,
             step: int = 0,
             loss: Optional[float] = None,
             dtype: Union[DType, int, str, None] = None) -> None:
        """Sends the gradient of every value of each variable given.

        Args:
            gradients: variable name -> gradient (its shape or flat).
            step: the worker's iteration; sync mode averages pushes per step.
            loss: the objective at the values the gradients were computed on
                (the Eve rule needs it; sync mode averages it).
            dtype: wire encoding of the gradients (default: the client's).

        Raises:
            StaleStepError: sync mode, the step was already applied.
            PsError: any other refusal.
        """
        self._push("Push", gradients, step, loss, dtype, None)

    def push_pull(self,
                  gradients: Mapping[str, np.ndarray],
                  *,
                  step: int = 0,
                  loss: Optional[float] = None,
                  dtype: Union[DType, int, str, None] = None,
                  pull_dtype: Union[DType, int, str, None] = None,
                  return_versions: bool = False) -> Any:
        """Pushes gradients and returns the values after the update.

        In sync mode the answer holds the values after the whole step. The
        arguments are those of :meth:`push`; ``pull_dtype`` is the encoding of
        the answer. Returns a dict name -> float32 array (shaped), or
        (values, versions) with ``return_versions``.
        """
        return self._push("PushPull", gradients, step, loss, dtype,
                          pull_dtype, return_versions)

    # -------------------------------------------------------------- internals

    def _part_budget(self) -> Tuple[int, int]:
        """Bytes of slices per request: (a part's, a message's limit)."""
        return (max(1, self._part_bytes - _REQUEST_OVERHEAD),
                self._max_bytes - _REQUEST_OVERHEAD)

    def _size(self, name: str) -> int:
        shape = self.shape(name)
        return int(np.prod(shape, dtype=np.int64)) if shape else 1

    def _push(self, method: str, gradients: Mapping[str, np.ndarray], step: int,
              loss: Optional[float], dtype: Any, pull_dtype: Any,
              return_versions: bool = False) -> Any:
        dtype = self._dtype if dtype is None else DType.parse(dtype)
        pull_dtype = self._dtype if pull_dtype is None else DType.parse(pull_dtype)
        flats: Dict[str, np.ndarray] = {}
        for name, grad in gradients.items():
            flat = np.asarray(grad, dtype=np.float32).reshape(-1)
            if flat.size != self._size(name):
                raise ValueError(
                    f"gradient of '{name}' holds {flat.size} values; its shape "
                    f"{list(self.shape(name))} needs {self._size(name)}")
            flats[name] = flat
        per_shard: List[List[_Block]] = [[] for _ in range(self._plan.num_shards)]
        for name, flat in flats.items():
            for shard, _, offset, length in self._plan.blocks(name, flat.size):
                per_shard[shard].append(_Block(name, offset, length))
        # Both the request (gradients) and the answer (values) must fit.
        width = max(dtype.itemsize, pull_dtype.itemsize if method == "PushPull" else 0)
        budget, limit = self._part_budget()
        lanes: List[List[List[_Block]]] = [
            _chunks(blocks, budget, width, limit) for blocks in per_shard
        ]
        outputs = {n: np.empty(f.size, dtype=np.float32) for n, f in flats.items()}
        versions = {n: np.zeros(self._plan.num_blocks(f.size), dtype=np.int64)
                    for n, f in flats.items()}
        def part_maker(shard: int, part: List[_Block]) -> Callable[[], _Call]:
            def make() -> _Call:
                request = ps_pb2.PushRequest(
                    worker_id=self._worker_id, epoch=self._epoch,
                    seq=self._next_seq[shard], step=int(step),
                    pull_dtype=int(pull_dtype))
                self._next_seq[shard] += 1
                if loss is not None:
                    request.loss = float(loss)
                gradients = []
                for b in part:
                    header = ps_pb2.Slice(variable=b.variable, offset=b.offset,
                                          length=b.length, dtype=int(dtype))
                    values = flats[b.variable][b.offset:b.offset + b.length]
                    gradients.append((header, encoding.encode_view(values, dtype)))
                payload = wire.push_request_bytes(request, gradients)
                # The gradients' headers, to check the answer against.
                request.gradients.extend(header for header, _ in gradients)
                return _Call(shard, method, request, payload=payload)
            return make

        def scatter(call: _Call, answer: Any) -> None:
            if method == "PushPull":
                self._scatter(call, call.request.gradients, answer, outputs, versions)

        with self._push_lock:
            # Up to parts_in_flight requests per shard, each numbered (seq)
            # and encoded when it is sent; they cover different blocks. The
            # lock keeps pushes in order.
            self._run([[part_maker(shard, part) for part in lane]
                       for shard, lane in enumerate(lanes)],
                      self._parts_in_flight, scatter)
        if method != "PushPull":
            return None
        shaped = {n: outputs[n].reshape(self.shape(n)) for n in flats}
        return (shaped, versions) if return_versions else shaped

    def _scatter(self, call: _Call, asked: Sequence[Any], got: Sequence[Any],
                 outputs: Dict[str, np.ndarray], versions: Dict[str, np.ndarray]) -> None:
        address = self._addresses[call.shard]
        if len(got) != len(asked):
            raise PsError(grpc.StatusCode.INTERNAL,
                          f"asked for {len(asked)} slices, got {len(got)}", address)
        for want, value in zip(asked, got):
            if (value.variable != want.variable or value.offset != want.offset
                    or value.length != want.length):
                raise PsError(
                    grpc.StatusCode.INTERNAL,
                    f"answered {value.variable}[{value.offset}:+{value.length}] "
                    f"for {want.variable}[{want.offset}:+{want.length}]", address)
            try:
                encoding.decode_into(
                    value.data, DType(value.dtype),
                    outputs[value.variable][value.offset:value.offset + value.length])
            except ValueError as e:
                raise PsError(grpc.StatusCode.INTERNAL, str(e), address) from e
            versions[value.variable][value.offset // self._plan.block_size] = value.version

    def _read_answer(self, answer: bytes, call: _Call) -> Sequence[Any]:
        try:
            return wire.read_pull_response(answer)
        except message.DecodeError as e:
            raise PsError(grpc.StatusCode.INTERNAL,
                          f"the shard's answer is not a ps.v1.PullResponse: {e}",
                          self._addresses[call.shard]) from e

    def _call_all(self, calls: List[_Call]) -> List[Any]:
        """Runs every call at once; returns the answers in the order of ``calls``.

        Errors as :meth:`_run`.
        """
        answers: List[Any] = [None] * len(calls)
        order = {id(call): i for i, call in enumerate(calls)}

        def keep(call: _Call, answer: Any) -> None:
            answers[order[id(call)]] = answer

        self._run([[(lambda c=c: c) for c in calls]], max(1, len(calls)), keep)
        return answers

    def _run(self, lanes: Sequence[Sequence[Callable[[], _Call]]], window: int,
             on_answer: Callable[[_Call, Any], None]) -> None:
        """Sends each lane's calls in order, up to ``window`` of a lane at once.

        A lane's next call is made (``lanes[l][i]()``: numbered and encoded)
        when one of its calls in flight ends, so a slow request does not hold
        back the others. UNAVAILABLE and DEADLINE_EXCEEDED are retried with
        the same request after the policy's backoff, still counting against
        the window. ``on_answer`` gets each answer (a Pull or PushPull sent
        as raw bytes: its read slices) as it arrives. After the first other
        error no new call or retry starts; the error is raised once every
        call in flight has ended.
        """
        ended: "queue.SimpleQueue[Tuple[_Call, grpc.Future]]" = queue.SimpleQueue()
        sent = [0] * len(lanes)
        in_flight = [0] * len(lanes)
        lane_of: Dict[int, int] = {}
        retries: List[Tuple[float, int, _Call]] = []  # a heap, by due time
        fatal: Optional[PsError] = None

        def attempt(call: _Call) -> None:
            call.attempts += 1
            if call.payload is not None:
                stub_method: Callable[..., Any] = self._raw[call.shard][call.method]
                outgoing = call.payload
            else:
                stub_method = getattr(self._stubs[call.shard], call.method)
                outgoing = call.request
            future = stub_method.future(outgoing, timeout=self._timeout,
                                        metadata=self._metadata)
            future.add_done_callback(lambda f: ended.put((call, f)))

        def fill(lane: int) -> None:
            while (fatal is None and in_flight[lane] < window
                   and sent[lane] < len(lanes[lane])):
                call = lanes[lane][sent[lane]]()
                sent[lane] += 1
                in_flight[lane] += 1
                lane_of[id(call)] = lane
                attempt(call)

        for lane in range(len(lanes)):
            fill(lane)
        while any(in_flight):
            while retries and (fatal is not None
                               or retries[0][0] <= time.monotonic()):
                call = heapq.heappop(retries)[2]
                if fatal is None:
                    attempt(call)
                else:  # the whole run fails: no more attempts
                    in_flight[lane_of.pop(id(call))] -= 1
            if not any(in_flight):
                break
            wait = None
            if retries:
                wait = max(0.0, retries[0][0] - time.monotonic())
            try:
                call, future = ended.get(timeout=wait)
            except queue.Empty:
                continue
            lane = lane_of[id(call)]
            try:
                answer = future.result()
                if call.payload is not None and call.method != "Push":
                    answer = self._read_answer(answer, call)
                on_answer(call, answer)
            except grpc.RpcError as e:
                error = _to_error(e, self._addresses[call.shard])
                if (error.code in _RETRYABLE
                        and call.attempts < self._retry.max_attempts):
                    _LOG.warning("%s to %s failed (attempt %d): %s; retrying",
                                 call.method, error.address, call.attempts,
                                 error.details)
                    due = time.monotonic() + self._retry.backoff(call.attempts,
                                                                self._rng)
                    heapq.heappush(retries, (due, id(call), call))
                    continue
                if fatal is None:
                    fatal = error
            except PsError as error:
                if fatal is None:
                    fatal = error
            in_flight[lane] -= 1
            del lane_of[id(call)]
            fill(lane)
        if fatal is not None:
            raise fatal


def check_cluster(infos: Sequence["ps_pb2.ClusterInfo"],
                  addresses: Sequence[str]) -> List[int]:
    """Checks that the shards form one cluster; returns them by shard index.

    The shards must agree on num_shards, block_size, consistency, num_workers
    and quorum, and their shard indexes must cover 0..num_shards-1 once each.

    Returns:
        ``order`` such that ``addresses[order[k]]`` serves shard k.

    Raises:
        ClusterMismatchError: naming the addresses that disagree.
    """
    fields = [("num_shards", lambda i: i.num_shards),
              ("block_size", lambda i: i.block_size),
              ("consistency", lambda i: f'"{i.consistency}"'),
              ("num_workers", lambda i: i.num_workers),
              ("quorum", lambda i: i.quorum)]
    for field, value in fields:
        if any(value(i) != value(infos[0]) for i in infos):
            says = ", ".join(f"{a} says {value(i)}" for a, i in zip(addresses, infos))
            raise ClusterMismatchError(f"shards disagree on {field}: {says}")
    num_shards = infos[0].num_shards
    if num_shards == 0 or infos[0].block_size == 0:
        raise ClusterMismatchError(
            f"shards report num_shards = {num_shards} and block_size = "
            f"{infos[0].block_size}")
    if len(infos) != num_shards:
        raise ClusterMismatchError(
            f"{len(infos)} addresses given ({', '.join(addresses)}) but the "
            f"shards report num_shards = {num_shards}")
    holders: List[List[int]] = [[] for _ in range(num_shards)]
    for i, info in enumerate(infos):
        if info.shard_index >= num_shards:
            raise ClusterMismatchError(
                f"{addresses[i]} reports shard_index {info.shard_index} of "
                f"num_shards = {num_shards}")
        holders[info.shard_index].append(i)
    problems = []
    for index, held in enumerate(holders):
        if not held:
            problems.append(f"no address serves shard_index {index}")
        elif len(held) > 1:
            problems.append(f"shard_index {index} is served by " +
                            " and ".join(addresses[i] for i in held))
    if problems:
        raise ClusterMismatchError("; ".join(problems))
    return [held[0] for held in holders]


def _split_ranges(blocks: List[_Block], budget: int, width: int) -> List[_Block]:
    """Cuts blocks larger than the budget into pieces (pulls only)."""
    out = []
    for b in blocks:
        room = max(1, (budget - _SLICE_OVERHEAD - len(b.variable)) // width)
        if b.length <= room:
            out.append(b)
            continue
        for start in range(0, b.length, room):
            out.append(_Block(b.variable, b.offset + start, min(room, b.length - start)))
    return out


def _chunks(blocks: List[_Block], budget: int, width: int,
            limit: int) -> List[List[_Block]]:
    """Groups blocks, in order, into requests of at most ``budget`` bytes.

    A block that alone exceeds the budget goes in a request of its own (a
    gradient slice must cover a whole block); one over ``limit``, the
    message limit, is then refused by the shard with RESOURCE_EXHAUSTED
    unless its limit is higher.
    """
    chunks: List[List[_Block]] = []
    current: List[_Block] = []
    used = 0
    for b in blocks:
        cost = b.length * width + _SLICE_OVERHEAD + len(b.variable.encode("utf-8"))
        if current and used + cost > budget:
            chunks.append(current)
            current, used = [], 0
        if cost > limit:
            _LOG.warning("block %s[%d:+%d] alone needs %d bytes, over the %d-byte "
                         "message limit", b.variable, b.offset, b.length, cost, limit)
        current.append(b)
        used += cost
    if current:
        chunks.append(current)
    return chunks
