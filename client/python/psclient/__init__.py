"""psclient: the Python client of the parameter server, a binding of the
C++ ps::Client (client/client.h).

- :class:`Client`: create, push, pull and push-pull named float32 tensors on a
  cluster of shards (numpy arrays or CPU torch tensors in and out, without
  copies; async forms return a :class:`Future`).
- :class:`psclient.torch.RemoteOptimizer`: a ``torch.optim``-style optimizer
  whose update rule runs on the server (import ``psclient.torch``).
- :class:`LocalCluster`: ps_server shard processes on this machine.
- :func:`tune_malloc`: keep the large buffers of every call in the heap
  (call once at start-up).

The binding (``psclient._core``) and the protobuf messages are built by
CMake; see ``psclient/_stubs.py`` for where they are looked for.
"""

from psclient._stubs import ps_pb2, ps_pb2_grpc
from psclient.allocator import tune_malloc
from psclient.client import (Client, ClusterMismatchError, DType, Future, PsError,
                             RetryPolicy, StaleStepError, as_float32,
                             parse_optimizer)
from psclient.cluster import LocalCluster, find_server_binary
from psclient.partition import PartitionPlan, fnv1a64

__all__ = [
    "Client", "ClusterMismatchError", "DType", "Future", "LocalCluster",
    "PartitionPlan", "PsError", "RetryPolicy", "StaleStepError", "as_float32",
    "find_server_binary", "fnv1a64", "parse_optimizer", "ps_pb2", "ps_pb2_grpc",
    "tune_malloc",
]
