"""The partitioning rule of DESIGN.md, identical to common/partition.h.

A variable's flat (row-major) values are cut into blocks of ``block_size``
values (the last may be shorter); block ``k`` of variable ``v`` lives on shard
``(fnv1a64(utf8(v)) mod S + k) mod S``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Tuple, Union

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = 0xFFFFFFFFFFFFFFFF


def fnv1a64(data: Union[str, bytes]) -> int:
    """64-bit FNV-1a of ``data`` (a str is hashed as its UTF-8 bytes)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    h = _FNV_OFFSET
    for byte in data:
        h ^= byte
        h = (h * _FNV_PRIME) & _MASK
    return h


@dataclass(frozen=True)
class PartitionPlan:
    """Where each block of a variable lives."""

    num_shards: int
    block_size: int

    def __post_init__(self) -> None:
        if self.num_shards <= 0 or self.block_size <= 0:
            raise ValueError(
                f"num_shards ({self.num_shards}) and block_size "
                f"({self.block_size}) must be positive")

    def num_blocks(self, size: int) -> int:
        """Blocks in a variable of ``size`` values."""
        return (size + self.block_size - 1) // self.block_size

    def block_range(self, size: int, k: int) -> Tuple[int, int]:
        """(offset, length) of block ``k`` of a variable of ``size`` values."""
        offset = k * self.block_size
        return offset, min(self.block_size, size - offset)

    def shard_of(self, variable: str, k: int) -> int:
        """The shard that owns block ``k`` of ``variable``."""
        base = fnv1a64(variable) % self.num_shards
        return (base + k % self.num_shards) % self.num_shards

    def blocks(self, variable: str, size: int) -> Iterator[Tuple[int, int, int, int]]:
        """Yields (shard, k, offset, length) for every block of a variable."""
        base = fnv1a64(variable) % self.num_shards
        for k in range(self.num_blocks(size)):
            offset = k * self.block_size
            yield ((base + k) % self.num_shards, k, offset,
                   min(self.block_size, size - offset))
