"""The wire encodings: float32, bfloat16 and float16, as common/wire.h has them."""

from __future__ import annotations

import struct
import unittest

import numpy as np
import torch

from psclient.encoding import (DType, bfloat16_bits_to_float32, decode, encode,
                               float32_to_bfloat16_bits)


def bits(values):
    return np.array(values, dtype=np.float32)


class Float32Test(unittest.TestCase):

    def test_little_endian_round_trip(self):
        values = bits([1.0, -2.5, 3.25e-8, 1e30])
        data = encode(values)
        self.assertEqual(data, struct.pack("<4f", *values))
        np.testing.assert_array_equal(decode(data, 4), values)

    def test_accepts_other_shapes_and_types(self):
        data = encode(np.arange(6, dtype=np.float64).reshape(2, 3))
        np.testing.assert_array_equal(decode(data, 6), np.arange(6, dtype=np.float32))

    def test_length_mismatch(self):
        with self.assertRaises(ValueError):
            decode(b"\0" * 7, 2)
        with self.assertRaises(ValueError):
            decode(b"\0" * 6, 2, DType.BFLOAT16)


class BFloat16Test(unittest.TestCase):

    def test_exact_values(self):
        self.assertEqual(encode(bits([1.0]), DType.BFLOAT16), struct.pack("<H", 0x3F80))
        self.assertEqual(encode(bits([-2.0]), DType.BFLOAT16), struct.pack("<H", 0xC000))

    def test_rounds_to_nearest_even(self):
        # 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to even (1.0).
        # 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6.
        got = float32_to_bfloat16_bits(bits([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-12]))
        self.assertEqual(list(got), [0x3F80, 0x3F82, 0x3F81])

    def test_matches_torch(self):
        rng = np.random.default_rng(7)
        values = np.concatenate([
            rng.normal(size=2000).astype(np.float32),
            (rng.normal(size=1000) * 1e30).astype(np.float32),
            (rng.normal(size=1000) * 1e-30).astype(np.float32),
            bits([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45]),
        ])
        expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy()
        np.testing.assert_array_equal(float32_to_bfloat16_bits(values),
                                      expected.view(np.uint16))

    def test_nan_stays_quiet_nan(self):
        got = float32_to_bfloat16_bits(bits([np.nan, -np.nan]))
        self.assertEqual(list(got), [0x7FC0, 0xFFC0])
        self.assertTrue(np.isnan(bfloat16_bits_to_float32(got)).all())

    def test_decode_is_exact(self):
        patterns = np.arange(0, 0x10000, dtype=np.uint32).astype(np.uint16)
        finite = patterns[(patterns & 0x7F80) != 0x7F80]
        data = finite.astype("<u2").tobytes()
        widened = decode(data, finite.size, DType.BFLOAT16)
        # Every finite bfloat16 is a float32 whose low half is zero.
        np.testing.assert_array_equal(widened.view(np.uint32) >> 16, finite)
        self.assertEqual(encode(widened, DType.BFLOAT16), data)


class Float16Test(unittest.TestCase):

    def test_exact_values(self):
        self.assertEqual(encode(bits([1.0, -2.0]), DType.FLOAT16),
                         struct.pack("<2H", 0x3C00, 0xC000))

    def test_rounds_to_nearest_even_and_overflows_to_inf(self):
        # 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0).
        data = encode(bits([1 + 2**-11, 1 + 3 * 2**-11, 70000.0, 6e-8]), DType.FLOAT16)
        self.assertEqual(struct.unpack("<4H", data), (0x3C00, 0x3C02, 0x7C00, 0x0001))

    def test_matches_torch(self):
        values = np.random.default_rng(3).normal(size=4000).astype(np.float32) * 100
        expected = torch.from_numpy(values).to(torch.float16).numpy().view(np.uint16)
        np.testing.assert_array_equal(
            np.frombuffer(encode(values, DType.FLOAT16), dtype="<u2"), expected)

    def test_round_trip_of_representable_values(self):
        values = np.array([0.5, -1024.0, 65504.0, 2**-24], dtype=np.float32)
        np.testing.assert_array_equal(
            decode(encode(values, DType.FLOAT16), 4, DType.FLOAT16), values)


class DTypeTest(unittest.TestCase):

    def test_parse(self):
        self.assertIs(DType.parse("bf16"), DType.BFLOAT16)
        self.assertIs(DType.parse("float16"), DType.FLOAT16)
        self.assertIs(DType.parse(0), DType.FLOAT32)
        self.assertIs(DType.parse(DType.FLOAT16), DType.FLOAT16)
        with self.assertRaises(KeyError):
            DType.parse("int8")

    def test_numbers_match_the_proto(self):
        from psclient import ps_pb2
        for d in DType:
            self.assertEqual(ps_pb2.DType.Value(d.name), int(d))


if __name__ == "__main__":
    unittest.main()
