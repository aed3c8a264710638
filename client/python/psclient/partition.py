"""The partitioning rule of DESIGN.md, as ps::Client computes it
(common/partition.h, through the binding): one implementation for C++ and
Python.

A variable's flat (row-major) values are cut into blocks of ``block_size``
values (the last may be shorter); block ``k`` of variable ``v`` lives on shard
``(fnv1a64(utf8(v)) mod S + k) mod S``.
"""

from __future__ import annotations

from typing import Iterator, Tuple, Union

from psclient._stubs import core as _core


def fnv1a64(data: Union[str, bytes]) -> int:
    """64-bit FNV-1a of ``data`` (a str is hashed as its UTF-8 bytes)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return _core.fnv1a64(bytes(data))


class PartitionPlan:
    """Where each block of a variable lives."""

    def __init__(self, num_shards: int, block_size: int):
        self._plan = _core.PartitionPlan(int(num_shards), int(block_size))

    @property
    def num_shards(self) -> int:
        return self._plan.num_shards

    @property
    def block_size(self) -> int:
        return self._plan.block_size

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PartitionPlan) and
                (self.num_shards, self.block_size) == (other.num_shards, other.block_size))

    def __repr__(self) -> str:
        return f"PartitionPlan(num_shards={self.num_shards}, block_size={self.block_size})"

    def num_blocks(self, size: int) -> int:
        """Blocks in a variable of ``size`` values."""
        return self._plan.num_blocks(int(size))

    def block_range(self, size: int, k: int) -> Tuple[int, int]:
        """(offset, length) of block ``k`` of a variable of ``size`` values."""
        offset = k * self.block_size
        return offset, min(self.block_size, size - offset)

    def shard_of(self, variable: str, k: int) -> int:
        """The shard that owns block ``k`` of ``variable``."""
        return self._plan.shard_of(variable, int(k))

    def blocks(self, variable: str, size: int) -> Iterator[Tuple[int, int, int, int]]:
        """Yields (shard, k, offset, length) for every block of a variable."""
        for k in range(self.num_blocks(size)):
            offset, length = self.block_range(size, k)
            yield self.shard_of(variable, k), k, offset, length
