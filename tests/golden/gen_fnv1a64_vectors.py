#!/usr/bin/python3
"""Writes tests/data/fnv1a64_vectors.txt: 64-bit FNV-1a of UTF-8 names.

The C++ partition test and the Python client test both read the file. Each
line after the comments is `<16 hex digits> <string>`: the string is
everything after the first space, and a line with no space is the empty
string.
"""

import sys

NAMES = [
    '', 'a', 'b', 'foobar', 'hello world', ' leading space',
    'w', 'weights', 'layer1.weight', 'layer1.bias',
    'model/dense_1/kernel:0', 'embedding/table', 'x' * 100,
    'caf\u00e9', 'Gr\u00f6\u00dfe', '\u6743\u91cd', '\u0432\u0435\u0441',
    'emoji_\U0001f3af', 'tab\tinside',
]


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for byte in data:
        h ^= byte
        h = (h * 0x100000001b3) % (1 << 64)
    return h


def main():
    out = open(sys.argv[1], 'w', encoding='utf-8') if len(sys.argv) > 1 \
        else sys.stdout
    out.write('# 64-bit FNV-1a (offset basis 0xcbf29ce484222325, prime '
              '0x100000001b3) of UTF-8 strings.\n')
    out.write('# <16 hex digits> <string>: the string is everything after '
              'the first space; no space = "".\n')
    out.write('# Written by tests/golden/gen_fnv1a64_vectors.py.\n')
    for name in NAMES:
        h = '%016x' % fnv1a64(name.encode('utf-8'))
        out.write(h + (' ' + name if name else '') + '\n')


if __name__ == '__main__':
    main()
