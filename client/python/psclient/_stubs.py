"""Locates and imports the gRPC stubs generated from proto/ at build time.

The stubs live in the build tree, never in the source tree. They are found,
in this order, in:

1. ``$PSCLIENT_STUBS_DIR`` (a directory holding ``proto/ps/v1/ps_pb2.py``);
2. ``$PS_BUILD_DIR/python``;
3. ``<repository root>/build/python``.

Build them with ``ninja -C <build dir> psclient_stubs``.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import sys
from types import ModuleType
from typing import List, Tuple

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


def repo_root() -> pathlib.Path:
    """The repository this package sits in."""
    return _REPO_ROOT


def build_dir() -> pathlib.Path:
    """The build tree: ``$PS_BUILD_DIR``, else ``<repo>/build``."""
    env = os.environ.get("PS_BUILD_DIR")
    return pathlib.Path(env).resolve() if env else _REPO_ROOT / "build"


def _candidates() -> List[pathlib.Path]:
    dirs = []
    env = os.environ.get("PSCLIENT_STUBS_DIR")
    if env:
        dirs.append(pathlib.Path(env))
    dirs.append(build_dir() / "python")
    return dirs


def _load() -> Tuple[ModuleType, ModuleType]:
    for directory in _candidates():
        if (directory / "proto" / "ps" / "v1" / "ps_pb2.py").is_file():
            path = str(directory.resolve())
            if path not in sys.path:
                sys.path.insert(0, path)
            pb2 = importlib.import_module("proto.ps.v1.ps_pb2")
            grpc_mod = importlib.import_module("proto.ps.v1.ps_pb2_grpc")
            return pb2, grpc_mod
    looked = ", ".join(str(d) for d in _candidates())
    raise ImportError(
        "psclient: no generated stubs (proto/ps/v1/ps_pb2.py) in " + looked +
        "; build them with `ninja -C <build dir> psclient_stubs` and set "
        "PS_BUILD_DIR or PSCLIENT_STUBS_DIR")


ps_pb2, ps_pb2_grpc = _load()
