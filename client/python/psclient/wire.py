"""Push requests and pull answers as raw bytes, without protobuf's copies.

Building a PushRequest message copies every gradient into the message, and
serializing it copies it again; parsing a PullResponse copies every value
out of the received bytes, and reading a ``data`` field copies it once more.
Here a request is serialized by joining its small headers (serialized by
protobuf) with the gradients' own buffers, and an answer is scanned for its
slices, each ``data`` left where it was received (a memoryview), so that the
values are copied once, into the caller's array. The scan reads only what
protobuf would read the same way; anything unusual (a group, a padded tag
or length, a malformed field) makes it return None, and the caller falls
back to protobuf's parse, which then decides.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from psclient._stubs import ps_pb2

_LEN = 2  # protobuf's length-delimited wire type
_GRADIENTS_TAG = (5 << 3) | _LEN  # PushRequest.gradients
_VALUES_TAG = (1 << 3) | _LEN  # PullResponse.values
_DATA_TAG = (5 << 3) | _LEN  # Slice.data


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf varint."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def push_request_bytes(head: "ps_pb2.PushRequest",
                       gradients: Sequence[Tuple["ps_pb2.Slice", Any]]) -> bytes:
    """The serialized PushRequest of ``head`` (without gradients) and the
    ``gradients``: (a Slice without data, its data as a bytes-like object
    such as a little-endian float32 array's memoryview)."""
    parts: List[Any] = [head.SerializeToString()]
    for header, data in gradients:
        data = memoryview(data).cast("B")
        slice_bytes = header.SerializeToString()
        data_field = bytes([_DATA_TAG]) + varint(len(data)) if len(data) else b""
        parts.append(bytes([_GRADIENTS_TAG])
                     + varint(len(slice_bytes) + len(data_field) + len(data)))
        parts.append(slice_bytes)
        if len(data):
            parts.append(data_field)
            parts.append(data)
    return b"".join(parts)


class WireSlice:
    """A Slice of a scanned answer; ``data`` is a view into the answer."""

    __slots__ = ("variable", "offset", "length", "dtype", "version", "data")

    def __init__(self) -> None:
        self.variable = ""
        self.offset = 0
        self.length = 0
        self.dtype = 0
        self.version = 0
        self.data: Any = b""


class _Unusual(Exception):
    """Something the scan leaves to protobuf."""


def _read_varint(buf: bytes, pos: int, end: int, max_bytes: int = 10) -> Tuple[int, int]:
    result = 0
    for i in range(max_bytes):
        if pos >= end:
            raise _Unusual
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if i == 9 and byte > 1:
                raise _Unusual
            return result, pos
    raise _Unusual


def _read_length(buf: bytes, pos: int, end: int) -> Tuple[int, int]:
    """A tag or a length as protobuf reads them: at most 5 bytes, within 31
    bits (anything else is left to protobuf)."""
    value, pos = _read_varint(buf, pos, end, 5)
    if value >= 1 << 31:
        raise _Unusual
    return value, pos


def _skip(buf: bytes, pos: int, end: int, wire_type: int) -> int:
    if wire_type == 0:
        return _read_varint(buf, pos, end)[1]
    if wire_type == 1:
        pos += 8
    elif wire_type == 5:
        pos += 4
    elif wire_type == _LEN:
        size, pos = _read_length(buf, pos, end)
        pos += size
    else:  # groups (deprecated), or not a wire type
        raise _Unusual
    if pos > end:
        raise _Unusual
    return pos


def _read_slice(buf: bytes, view: memoryview, pos: int, end: int) -> WireSlice:
    got = WireSlice()
    while pos < end:
        tag, pos = _read_length(buf, pos, end)
        field, wire_type = tag >> 3, tag & 7
        if field == 1 and wire_type == _LEN:
            size, pos = _read_length(buf, pos, end)
            if pos + size > end:
                raise _Unusual
            try:
                got.variable = bytes(view[pos:pos + size]).decode("utf-8")
            except UnicodeDecodeError:
                raise _Unusual from None
            pos += size
        elif field in (2, 3, 6) and wire_type == 0:
            value, pos = _read_varint(buf, pos, end)
            if field == 2:
                got.offset = value
            elif field == 3:
                got.length = value
            else:
                got.version = value
        elif field == 4 and wire_type == 0:
            value, pos = _read_varint(buf, pos, end)
            if value >= 1 << 31:  # a negative enum value
                raise _Unusual
            got.dtype = value
        elif field == 5 and wire_type == _LEN:
            size, pos = _read_length(buf, pos, end)
            if pos + size > end:
                raise _Unusual
            got.data = view[pos:pos + size]  # the last one wins, as in protobuf
            pos += size
        elif field in (1, 2, 3, 4, 5, 6) or field == 0:
            raise _Unusual  # a known field under another wire type, or field 0
        else:
            pos = _skip(buf, pos, end, wire_type)
    if pos != end:
        raise _Unusual
    return got


def pull_response_slices(buf: bytes) -> Optional[List[WireSlice]]:
    """The slices of a serialized PullResponse, each ``data`` a view into
    ``buf``; None when the bytes need protobuf's parse."""
    view = memoryview(buf)
    end = len(buf)
    slices: List[WireSlice] = []
    pos = 0
    try:
        while pos < end:
            tag, pos = _read_length(buf, pos, end)
            if tag == _VALUES_TAG:
                size, pos = _read_length(buf, pos, end)
                if pos + size > end:
                    raise _Unusual
                slices.append(_read_slice(buf, view, pos, pos + size))
                pos += size
            elif tag >> 3 == 1 or tag >> 3 == 0:
                raise _Unusual
            else:
                pos = _skip(buf, pos, end, tag & 7)
    except _Unusual:
        return None
    return slices


def read_pull_response(buf: bytes) -> Sequence[Any]:
    """The slices of a serialized PullResponse: scanned in place, or parsed
    by protobuf when the scan leaves them to it (which raises
    google.protobuf.message.DecodeError for bytes that are not one)."""
    slices = pull_response_slices(buf)
    if slices is not None:
        return slices
    return ps_pb2.PullResponse.FromString(buf).values
