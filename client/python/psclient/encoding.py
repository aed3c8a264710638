"""Encodings of ``Slice.data``: little-endian float32, bfloat16 or float16.

They match common/wire.h: bfloat16 and float16 are rounded to nearest even on
encode (NaN stays NaN) and widened exactly on decode.
"""

from __future__ import annotations

import enum

import numpy as np


class DType(enum.IntEnum):
    """Wire encoding of values; the numbers are those of ``ps.v1.DType``."""

    FLOAT32 = 0
    BFLOAT16 = 1
    FLOAT16 = 2

    @property
    def itemsize(self) -> int:
        """Bytes per value on the wire."""
        return 4 if self is DType.FLOAT32 else 2

    @classmethod
    def parse(cls, value: "DType | int | str") -> "DType":
        """Accepts a DType, its number, or a name such as "bf16" or "float16"."""
        if isinstance(value, str):
            key = value.strip().upper()
            key = {"F32": "FLOAT32", "FP32": "FLOAT32", "BF16": "BFLOAT16",
                   "F16": "FLOAT16", "FP16": "FLOAT16", "HALF": "FLOAT16"}.get(key, key)
            return cls[key]
        return cls(int(value))


_LE_F32 = np.dtype("<f4")
_LE_U16 = np.dtype("<u2")
_LE_U32 = np.dtype("<u4")


def float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values, rounded to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        # A quiet NaN with the sign kept, as Eigen::bfloat16 does.
        rounded[nan] = ((bits[nan] >> 16) & 0x8000).astype(np.uint16) | np.uint16(0x7FC0)
    return rounded


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def encode(values: np.ndarray, dtype: DType = DType.FLOAT32) -> bytes:
    """``values`` (any shape, converted to float32) as wire bytes."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    if dtype == DType.FLOAT32:
        return flat.astype(_LE_F32, copy=False).tobytes()
    if dtype == DType.BFLOAT16:
        return float32_to_bfloat16_bits(flat).astype(_LE_U16, copy=False).tobytes()
    if dtype == DType.FLOAT16:
        # numpy's float32 -> float16 cast rounds to nearest even, like Eigen::half.
        with np.errstate(over="ignore"):
            half = flat.astype(np.float16)
        return half.view(np.uint16).astype(_LE_U16, copy=False).tobytes()
    raise ValueError(f"unknown dtype {dtype!r}")


def encode_view(values: np.ndarray, dtype: DType = DType.FLOAT32) -> np.ndarray:
    """``values`` as wire bytes, in an array: for float32, the values
    themselves when they are little-endian and contiguous (no copy)."""
    if dtype == DType.FLOAT32:
        return np.ascontiguousarray(values, dtype=_LE_F32).reshape(-1)
    return np.frombuffer(encode(values, dtype), dtype=np.uint8)


def decode_into(data: "bytes | memoryview", dtype: DType, out: np.ndarray) -> None:
    """Writes the ``out.size`` values of wire bytes ``data`` into ``out``
    (float32), converting once.

    Raises ValueError when ``data`` does not hold exactly that many values.
    """
    dtype = DType(dtype)
    if len(data) != out.size * dtype.itemsize:
        raise ValueError(
            f"data holds {len(data)} bytes but {out.size} values of "
            f"{dtype.name} need {out.size * dtype.itemsize}")
    if dtype == DType.FLOAT32:
        out[...] = np.frombuffer(data, dtype=_LE_F32)
        return
    bits = np.frombuffer(data, dtype=_LE_U16)
    if dtype == DType.BFLOAT16:
        out[...] = bfloat16_bits_to_float32(bits)
    else:
        out[...] = bits.astype(np.uint16).view(np.float16)


def decode(data: bytes, length: int, dtype: DType = DType.FLOAT32) -> np.ndarray:
    """``length`` float32 values from wire bytes of ``dtype``.

    Raises ValueError when ``data`` does not hold exactly ``length`` values.
    """
    out = np.empty(length, dtype=np.float32)
    decode_into(data, dtype, out)
    return out
