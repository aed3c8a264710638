"""Starts a cluster of ps_server shard processes on this machine.

Meant for tests, examples and trying things out: each shard binds a free
loopback port (``--port=0``) and reports it on its first stdout line
(``listening on HOST:PORT``).

Example::

    with LocalCluster(num_shards=2, block_size=1024) as cluster:
        client = Client(cluster.addresses)
"""

from __future__ import annotations

import logging
import os
import pathlib
import select
import signal
import subprocess
import tempfile
import time
from typing import IO, List, Optional, Sequence

from psclient._stubs import build_dir

_LOG = logging.getLogger(__name__)


def find_server_binary(build: Optional[str] = None) -> pathlib.Path:
    """The ps_server binary: ``$PS_SERVER_BINARY``, else ``<build>/server/ps_server``.

    ``build`` defaults to ``$PS_BUILD_DIR``, else ``<repo>/build``.
    """
    env = os.environ.get("PS_SERVER_BINARY")
    path = pathlib.Path(env) if env else (
        (pathlib.Path(build) if build else build_dir()) / "server" / "ps_server")
    if not path.is_file():
        raise FileNotFoundError(
            f"no ps_server at {path}; build it (ninja -C <build dir> ps_server) "
            "and set PS_BUILD_DIR or PS_SERVER_BINARY")
    return path


def _read_line(stream: IO[bytes], deadline: float) -> str:
    """One line from a pipe, or TimeoutError at ``deadline``."""
    fd = stream.fileno()
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete line in time (read {data!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1)
        if not chunk:
            break  # end of file: the process exited
        data += chunk
    return data.decode("utf-8", "replace").strip()


class LocalCluster:
    """ps_server shards as child processes.

    Args:
        num_shards: shards to start.
        block_size: values per block.
        consistency: "async" or "sync".
        num_workers: sync: workers per step.
        quorum: sync: pushes that complete a step (0 = num_workers).
        optimizer: the default optimizer, in protobuf text format.
        extra_args: more flags for every shard (e.g. token files, TLS).
        binary: the ps_server to run (default: find_server_binary()).
        log_dir: where each shard's stderr goes (shard-<k>.log); default a
            temporary directory, removed by stop().
        start_timeout: seconds to wait for each shard's `listening on` line.
    """

    def __init__(self,
                 num_shards: int = 1,
                 *,
                 block_size: int = 16384,
                 consistency: str = "async",
                 num_workers: int = 0,
                 quorum: int = 0,
                 optimizer: Optional[str] = None,
                 extra_args: Sequence[str] = (),
                 binary: Optional[str] = None,
                 log_dir: Optional[str] = None,
                 start_timeout: float = 30.0):
        self.num_shards = num_shards
        self.block_size = block_size
        self.consistency = consistency
        self.num_workers = num_workers
        self.quorum = quorum
        self.optimizer = optimizer
        self.extra_args = list(extra_args)
        self.binary = pathlib.Path(binary) if binary else find_server_binary()
        self.start_timeout = start_timeout
        self._own_log_dir = log_dir is None
        self._log_dir = log_dir
        self._procs: List[subprocess.Popen] = []
        self._logs: List[IO[bytes]] = []
        self.addresses: List[str] = []

    def log_path(self, shard: int) -> pathlib.Path:
        """The file that holds shard ``shard``'s stderr."""
        assert self._log_dir is not None, "the cluster was not started"
        return pathlib.Path(self._log_dir) / f"shard-{shard}.log"

    def start(self) -> "LocalCluster":
        """Starts every shard and waits until each listens. Idempotent."""
        if self._procs:
            return self
        if self._log_dir is None:
            self._log_dir = tempfile.mkdtemp(prefix="ps-cluster-")
        os.makedirs(self._log_dir, exist_ok=True)
        try:
            for shard in range(self.num_shards):
                self._start_shard(shard)
        except BaseException:
            self.stop()
            raise
        _LOG.info("cluster up: %s", ",".join(self.addresses))
        return self

    def _start_shard(self, shard: int, port: int = 0) -> None:
        args = [str(self.binary), "--host=127.0.0.1", f"--port={port}",
                f"--shard_index={shard}", f"--num_shards={self.num_shards}",
                f"--block_size={self.block_size}",
                f"--consistency={self.consistency}"]
        if self.consistency == "sync":
            args += [f"--num_workers={self.num_workers}", f"--quorum={self.quorum}"]
        if self.optimizer is not None:
            args.append(f"--optimizer={self.optimizer}")
        args += self.extra_args
        log = open(self.log_path(shard), "ab")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log,
                                stdin=subprocess.DEVNULL)
        if shard < len(self._procs):
            self._logs[shard].close()
            self._logs[shard], self._procs[shard] = log, proc
        else:
            self._logs.append(log)
            self._procs.append(proc)
        assert proc.stdout is not None
        line = _read_line(proc.stdout, time.monotonic() + self.start_timeout)
        prefix = "listening on "
        if not line.startswith(prefix):
            proc.wait(timeout=5)
            raise RuntimeError(
                f"shard {shard} did not start (exit {proc.returncode}; first "
                f"line {line!r}); its log:\n{self.log_path(shard).read_text()}")
        address = line[len(prefix):].strip()
        if shard < len(self.addresses):
            self.addresses[shard] = address
        else:
            self.addresses.append(address)

    def stop_shard(self, shard: int, timeout: float = 10.0) -> Optional[int]:
        """SIGTERMs one shard and waits for it; returns its exit code. Its
        address stays reserved for :meth:`restart_shard`."""
        proc = self._procs[shard]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def kill_shard(self, shard: int) -> int:
        """SIGKILLs one shard (a crash: no final checkpoint) and waits for
        it; returns its exit code. Its address stays reserved for
        :meth:`restart_shard`."""
        proc = self._procs[shard]
        if proc.poll() is None:
            proc.kill()
        return proc.wait()

    def restart_shard(self, shard: int) -> None:
        """Starts a stopped shard again on the port it had (its state is
        what its flags restore, e.g. from --checkpoint_dir)."""
        if self._procs[shard].poll() is None:
            raise RuntimeError(f"shard {shard} is running")
        if self._procs[shard].stdout is not None:
            self._procs[shard].stdout.close()
        port = int(self.addresses[shard].rsplit(":", 1)[1])
        self._start_shard(shard, port)

    @property
    def servers(self) -> str:
        """The addresses joined by commas (psctl's --servers)."""
        return ",".join(self.addresses)

    def stop(self, timeout: float = 10.0) -> List[Optional[int]]:
        """SIGTERMs every shard and waits; kills any still running after ``timeout``.

        Returns the exit codes (0 for a clean stop).
        """
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: List[Optional[int]] = []
        for proc in self._procs:
            try:
                codes.append(proc.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                _LOG.warning("shard pid %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                codes.append(proc.wait())
            if proc.stdout is not None:
                proc.stdout.close()
        for log in self._logs:
            log.close()
        self._procs, self._logs, self.addresses = [], [], []
        if self._own_log_dir and self._log_dir is not None:
            for name in os.listdir(self._log_dir):
                os.unlink(os.path.join(self._log_dir, name))
            os.rmdir(self._log_dir)
            self._log_dir = None
        return codes

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
