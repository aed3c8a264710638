#!/usr/bin/python3
"""Writes tests/data/table_vectors.txt: row_shard and initial rows.

An independent implementation of DESIGN.md's row_shard and of the initial
row generator (common/row_init.h), for the C++ and Python tests to check
against. Lines after the comments:
  shard <table> <id> <num_shards> <shard>
  init <table> <seed> <id> <kind> <p1> <p2> <dim> <float32 bits as hex>...
where <table> has no spaces, kind is zeros, uniform (p1 = low, p2 = high)
or normal (p1 = mean, p2 = stddev).
"""

import math
import struct
import sys

M = (1 << 64) - 1


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for byte in data:
        h ^= byte
        h = (h * 0x100000001b3) & M
    return h


def mix64(x):
    z = (x + 0x9e3779b97f4a7c15) & M
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
    return z ^ (z >> 31)


def row_shard(table, row_id, num_shards):
    return mix64(row_id ^ fnv1a64(table.encode('utf-8'))) % num_shards


def f32(x):
    return struct.unpack('<f', struct.pack('<f', x))[0]


def initial_row(table, seed, row_id, kind, p1, p2, dim):
    base = mix64(mix64(row_id ^ fnv1a64(table.encode('utf-8'))) ^ seed)

    def r(j):
        return mix64((base + j) & M)

    def unit(x):
        return (x >> 11) * 2.0 ** -53

    out = [0.0] * dim
    if kind == 'uniform':
        for j in range(dim):
            out[j] = f32(p1 + (p2 - p1) * unit(r(j)))
    elif kind == 'normal':
        for j in range(0, dim, 2):
            a = ((r(j) >> 11) + 1) * 2.0 ** -53
            b = unit(r(j + 1))
            radius = math.sqrt(-2.0 * math.log(a))
            angle = 2.0 * math.pi * b
            out[j] = f32(p1 + p2 * radius * math.cos(angle))
            if j + 1 < dim:
                out[j + 1] = f32(p1 + p2 * radius * math.sin(angle))
    return out


TABLES = ['emb', 'user_id', 'words/bigrams', 'caf\u00e9']
IDS = [0, 1, 2, 42, 1 << 32, (1 << 63) + 5, M]


def main():
    out = open(sys.argv[1], 'w', encoding='utf-8') if len(sys.argv) > 1 \
        else sys.stdout
    out.write('# row_shard (DESIGN.md) and initial rows (common/row_init.h).\n')
    out.write('# Written by tests/golden/gen_table_vectors.py.\n')
    for table in TABLES:
        for row_id in IDS:
            for shards in (1, 2, 3, 8, 1000):
                out.write('shard %s %d %d %d\n' % (
                    table, row_id, shards, row_shard(table, row_id, shards)))
    cases = [('zeros', 0.0, 0.0), ('uniform', -0.5, 0.25),
             ('normal', 0.0, 1.0), ('normal', 1.5, 0.01)]
    for table in TABLES[:2]:
        for seed in (0, 7, M):
            for row_id in IDS:
                for kind, p1, p2 in cases:
                    for dim in (1, 5):
                        row = initial_row(table, seed, row_id, kind, p1, p2,
                                          dim)
                        bits = ' '.join('%08x' % struct.unpack(
                            '<I', struct.pack('<f', v))[0] for v in row)
                        out.write('init %s %d %d %s %r %r %d %s\n' % (
                            table, seed, row_id, kind, p1, p2, dim, bits))


if __name__ == '__main__':
    main()
