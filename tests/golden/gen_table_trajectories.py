#!/usr/bin/python3
"""Writes tests/data/table_trajectories.txt: torch's sparse updates of a table.

For each rule (SGD, Adagrad, SparseAdam) an nn.Embedding-like weight starts
from the table's initial rows (common/row_init.h, normal(0, 0.1) with seed 3)
and takes 30 steps of sparse gradients: each step a batch of ids with
repeats and new ids, one gradient row per occurrence. torch sums repeats
(coalesce) as the client does. Lines:
  rule <name> <lr>
  step <t> <ids...>
  grad <float32 hex of each occurrence's row, row-major>
  expect <id> <float32 hex of its row after step t>   (each unique id)
"""

import random
import struct
import sys

import torch

sys.path.insert(0, __file__.rsplit('/', 1)[0])
from gen_table_vectors import initial_row  # noqa: E402

TABLE = 'emb'
DIM = 4
SEED = 3
STEPS = 30


def hexf(values):
    return ' '.join('%08x' % struct.unpack('<I', struct.pack('<f', float(v)))[0]
                    for v in values)


def run(out, rule, lr):
    rng = random.Random(11)
    known = []
    # Rows of every id ever touched, as torch holds them.
    weights = {}
    state = {}
    ids_all = list(range(40)) + [2**40 + 7, 2**63 + 1]
    out.write('rule %s %r\n' % (rule, lr))
    # One parameter holding every id's row; ids map to positions.
    pos = {i: k for k, i in enumerate(ids_all)}
    init = torch.tensor([initial_row(TABLE, SEED, i, 'normal', 0.0, 0.1, DIM)
                         for i in ids_all], dtype=torch.float32)
    param = torch.nn.Parameter(init.clone())
    if rule == 'sgd':
        opt = torch.optim.SGD([param], lr=lr)
    elif rule == 'adagrad':
        opt = torch.optim.Adagrad([param], lr=lr)
    else:
        opt = torch.optim.SparseAdam([param], lr=lr)
    for t in range(1, STEPS + 1):
        batch = []
        for _ in range(6):
            if known and rng.random() < 0.6:
                batch.append(rng.choice(known))
            else:
                batch.append(rng.choice(ids_all))
        batch.append(batch[0])  # a repeat in every step
        for i in batch:
            if i not in known:
                known.append(i)
        grads = torch.tensor([[rng.uniform(-1, 1) for _ in range(DIM)]
                              for _ in batch], dtype=torch.float32)
        opt.zero_grad()
        index = torch.tensor([[pos[i] for i in batch]])
        param.grad = torch.sparse_coo_tensor(index, grads,
                                             (len(ids_all), DIM)).coalesce()
        opt.step()
        out.write('step %d %s\n' % (t, ' '.join(str(i) for i in batch)))
        out.write('grad %s\n' % hexf(grads.flatten().tolist()))
        for i in sorted(set(batch)):
            out.write('expect %d %s\n' % (i, hexf(param.data[pos[i]].tolist())))


def main():
    out = open(sys.argv[1], 'w', encoding='utf-8') if len(sys.argv) > 1 \
        else sys.stdout
    out.write('# torch %s sparse updates; written by '
              'tests/golden/gen_table_trajectories.py.\n' % torch.__version__)
    run(out, 'sgd', 0.1)
    run(out, 'adagrad', 0.1)
    run(out, 'sparse_adam', 0.01)


if __name__ == '__main__':
    main()
