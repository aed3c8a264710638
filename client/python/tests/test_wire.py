"""psclient.wire: raw push requests and scanned pull answers, against
protobuf's own serialization and parse."""

from __future__ import annotations

import random
import unittest

import numpy as np
from google.protobuf import message

from psclient import ps_pb2, wire
from psclient.encoding import DType, decode_into, encode, encode_view


varint = wire.varint


def tag(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def length_field(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def realistic_answer() -> ps_pb2.PullResponse:
    answer = ps_pb2.PullResponse()
    answer.values.add(variable="dense/kernel", offset=4096, length=80, dtype=0,
                      data=np.arange(80, dtype="<f4").tobytes(), version=17)
    answer.values.add(variable="bias", offset=0, length=0, dtype=2, version=3)
    answer.values.add(variable="embedding", offset=1 << 20, length=100, dtype=1,
                      data=bytes(range(200)), version=1)
    return answer


def as_tuples(slices) -> list:
    return [(s.variable, s.offset, s.length, s.dtype, s.version, bytes(s.data))
            for s in slices]


class PullResponseScanTest(unittest.TestCase):

    def assert_same_as_protobuf(self, buf: bytes, scanned: bool = True) -> None:
        expected = as_tuples(ps_pb2.PullResponse.FromString(buf).values)
        slices = wire.pull_response_slices(buf)
        if scanned:
            self.assertIsNotNone(slices)
            self.assertEqual(as_tuples(slices), expected)
        self.assertEqual(as_tuples(wire.read_pull_response(buf)), expected)

    def test_reads_an_answer_in_place(self):
        buf = realistic_answer().SerializeToString()
        slices = wire.pull_response_slices(buf)
        self.assert_same_as_protobuf(buf)
        # The data are views of the answer's bytes, not copies.
        self.assertIsInstance(slices[0].data, memoryview)
        self.assertIs(slices[0].data.obj, buf)

    def test_empty_answer(self):
        self.assert_same_as_protobuf(b"")

    def test_last_data_wins(self):
        one = length_field(1, b"v") + length_field(5, b"first") + length_field(5, b"last")
        self.assert_same_as_protobuf(length_field(1, one))

    def test_skips_unknown_fields_as_protobuf_does(self):
        unknown = (tag(99, 0) + varint(7) + tag(98, 5) + b"abcd" + tag(97, 1) + b"12345678"
                   + length_field(96, b"whatever"))
        inner = (unknown + realistic_answer().values[0].SerializeToString() + unknown)
        self.assert_same_as_protobuf(unknown + length_field(1, inner) + unknown)

    def test_leaves_groups_to_protobuf(self):
        group = tag(20, 3) + tag(1, 0) + varint(5) + tag(20, 4)
        buf = group + realistic_answer().SerializeToString()
        self.assertIsNone(wire.pull_response_slices(buf))
        self.assert_same_as_protobuf(buf, scanned=False)

    def test_reads_padded_tags_as_protobuf_does(self):
        padded_tag = bytes([0x8A, 0x80, 0x80, 0x80, 0x00])  # field 1 in 5 bytes
        inner = length_field(1, b"v")
        self.assert_same_as_protobuf(padded_tag + varint(len(inner)) + inner)

    def test_leaves_longer_tags_and_lengths_to_protobuf(self):
        inner = length_field(1, b"v")
        for buf in (bytes([0x8A, 0x80, 0x80, 0x80, 0x80, 0x00]) + varint(len(inner)) + inner,
                    tag(1, 2) + bytes([0x83, 0x80, 0x80, 0x80, 0x80, 0x00]) + b"abc"):
            with self.subTest(buf=buf):
                self.assertIsNone(wire.pull_response_slices(buf))
                try:
                    expected = as_tuples(ps_pb2.PullResponse.FromString(buf).values)
                except message.DecodeError:
                    with self.assertRaises(message.DecodeError):
                        wire.read_pull_response(buf)
                else:
                    self.assertEqual(as_tuples(wire.read_pull_response(buf)), expected)

    def test_leaves_field_zero_to_protobuf(self):
        # (Python's protobuf stops at a zero tag rather than refusing it.)
        self.assertIsNone(wire.pull_response_slices(b"\x00\x01"))
        self.assert_same_as_protobuf(b"\x00\x01", scanned=False)

    def test_refuses_what_protobuf_refuses(self):
        good = realistic_answer().SerializeToString()
        broken = [
            good[:-1],  # cut short
            good[:10],
            length_field(1, length_field(1, b"\xff\xfe")),  # not UTF-8
            tag(1, 2) + varint(100) + b"abc",  # runs past the end
            bytes([0x0F]) + b"abc",  # wire type 7
            b"\xff" * 11,  # an overlong varint
        ]
        for buf in broken:
            with self.subTest(buf=buf):
                with self.assertRaises(message.DecodeError):
                    ps_pb2.PullResponse.FromString(buf)
                self.assertIsNone(wire.pull_response_slices(buf))
                with self.assertRaises(message.DecodeError):
                    wire.read_pull_response(buf)

    def test_matches_protobuf_on_mutated_answers(self):
        good = bytearray(realistic_answer().SerializeToString())
        rng = random.Random(12345)
        for _ in range(2000):
            buf = bytearray(good)
            for _ in range(rng.randint(1, 3)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            buf = bytes(buf)
            try:
                expected = as_tuples(ps_pb2.PullResponse.FromString(buf).values)
            except message.DecodeError:
                expected = None
            slices = wire.pull_response_slices(buf)
            if slices is not None:
                self.assertEqual(as_tuples(slices), expected, buf)


class PushRequestBytesTest(unittest.TestCase):

    def test_parses_as_the_message_protobuf_would_build(self):
        values = np.linspace(-1, 1, 300, dtype=np.float32)
        head = ps_pb2.PushRequest(worker_id="w-1", seq=42, step=7, loss=0.5,
                                  pull_dtype=1)
        gradients = []
        expected = ps_pb2.PushRequest()
        expected.CopyFrom(head)
        for i, dtype in enumerate((DType.FLOAT32, DType.BFLOAT16, DType.FLOAT16)):
            header = ps_pb2.Slice(variable=f"v{i}", offset=100 * i, length=100,
                                  dtype=int(dtype))
            chunk = values[100 * i:100 * (i + 1)]
            gradients.append((header, encode_view(chunk, dtype)))
            expected.gradients.add().CopyFrom(header)
            expected.gradients[-1].data = encode(chunk, dtype)
        # A gradient without values too.
        gradients.append((ps_pb2.Slice(variable="empty"), np.empty(0, "<f4")))
        expected.gradients.add(variable="empty")
        got = ps_pb2.PushRequest.FromString(wire.push_request_bytes(head, gradients))
        self.assertEqual(got, expected)

    def test_float32_gradients_are_not_copied_before_the_join(self):
        values = np.arange(10, dtype=np.float32)
        self.assertTrue(np.shares_memory(encode_view(values, DType.FLOAT32), values))


class DecodeIntoTest(unittest.TestCase):

    def test_writes_every_value_for_every_dtype(self):
        # Values every encoding holds exactly, so each comes back as it was.
        values = np.array([0.0, -1.5, 0.25, 2.0, -np.inf, 3.0], np.float32)
        for dtype in DType:
            out = np.full(values.size, 7.0, np.float32)
            decode_into(memoryview(encode(values, dtype)), dtype, out)
            np.testing.assert_array_equal(out, values, err_msg=dtype.name)

    def test_refuses_a_wrong_size(self):
        with self.assertRaises(ValueError):
            decode_into(b"\x00" * 6, DType.FLOAT32, np.empty(2, np.float32))


if __name__ == "__main__":
    unittest.main()
