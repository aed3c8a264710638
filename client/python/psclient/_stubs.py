"""Locates and imports what the build makes for psclient: the binding of
ps::Client (``psclient._core``) and the protobuf messages generated from
proto/ (``ps_pb2``, for optimizer configs and cluster info).

Installed (``cmake --install``), both sit beside the package. In a source
checkout they live in the build tree, never in the source tree, and are
found, in this order, in:

1. a directory on ``sys.path`` holding ``psclient/_core*.so`` (and
   ``proto/ps/v1/ps_pb2.py``): ``sys.path.insert(0, "<build>/python")``
   picks a build tree;
2. ``$PSCLIENT_STUBS_DIR`` (such a directory);
3. ``$PS_BUILD_DIR/python``;
4. ``<repository root>/build/python``.

The environment variables are only fallbacks for where the build tree is.
Build both with ``cmake --build <build dir> --target psclient_stubs
psclient_core``.
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
    dirs = [pathlib.Path(p) for p in sys.path
            if p and list(pathlib.Path(p).glob("psclient/_core*.so"))]
    env = os.environ.get("PSCLIENT_STUBS_DIR")
    if env:
        dirs.append(pathlib.Path(env))
    dirs.append(build_dir() / "python")
    return dirs


def _load_core() -> ModuleType:
    try:
        return importlib.import_module("psclient._core")
    except ImportError:
        pass
    package = sys.modules["psclient"]
    for directory in _candidates():
        found = list((directory / "psclient").glob("_core*.so"))
        if found:
            path = str((directory / "psclient").resolve())
            if path not in package.__path__:
                package.__path__.append(path)
            return importlib.import_module("psclient._core")
    looked = ", ".join(str(d / "psclient") for d in _candidates())
    raise ImportError(
        "psclient: no binding (_core*.so) in " + looked + "; build it with "
        "`cmake --build <build dir> --target psclient_core` and set "
        "PS_BUILD_DIR, or install psclient with `cmake --install`")


def _load() -> Tuple[ModuleType, ModuleType]:
    try:
        pb2 = importlib.import_module("proto.ps.v1.ps_pb2")
        return pb2, importlib.import_module("proto.ps.v1.ps_pb2_grpc")
    except ImportError:
        pass
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
core = _load_core()
