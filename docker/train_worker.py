#!/usr/bin/python3
"""A training worker for a running cluster: trains a small classifier, then exits.

The job is softmax regression on a synthetic data set (Gaussian clusters, one
per class) that every worker generates from the same seed; worker i of n
trains on every n-th training example from the i-th on. Each step it computes
the gradient of the cross-entropy on a batch with numpy, sends it with
push_pull, and continues from the values the shards answer with. The update
rule is the cluster's (ps_server --optimizer, or whatever `psctl optimizer set`
/ `psctl lr set` made it since), so changing it while the workers run changes
their trajectory.

It needs only numpy and psclient (with its binding and generated stubs:
see psclient/_stubs.py for where they are looked for). The container
image runs it as

    python3 /opt/ps/examples/train_worker.py --servers=shard-0:50051,shard-1:50051 \\
        --token_file=/run/secrets/worker_tokens --worker_index=0 --num_workers=2

Exit status: 0 when training finished (and reached --min_accuracy), 1 when it
did not, 2 for bad arguments, 143 when stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import List, Optional, Tuple

PARAMS = ("softmax/weights", "softmax/bias")


def read_token(path: str) -> str:
    """The first word of the first line that is neither blank nor a # comment.

    Token files hold one token per line with an optional label after it, the
    format of ps_server --worker_tokens_file and psctl --token_file.
    """
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = line.split()
            if words and not words[0].startswith("#"):
                return words[0]
    raise ValueError(f"{path} holds no token")


def make_data(args):
    """(train x, train y, test x, test y) of the whole synthetic data set."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    centers = rng.normal(0.0, 1.0, size=(args.classes, args.features))
    total = args.examples
    y = rng.integers(0, args.classes, size=total)
    x = centers[y] + rng.normal(0.0, args.noise, size=(total, args.features))
    x = x.astype(np.float32)
    test = total // 5
    return x[test:], y[test:], x[:test], y[:test]


def loss_and_gradients(weights, bias, x, y):
    """Mean cross-entropy of softmax(x @ weights + bias), its gradients, accuracy."""
    import numpy as np

    logits = x @ weights + bias
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    probs = exp / exp.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
    accuracy = float((probs.argmax(axis=1) == y).mean())
    delta = probs
    delta[np.arange(n), y] -= 1.0
    delta /= n
    return loss, x.T @ delta, delta.sum(axis=0), accuracy


def evaluate(weights, bias, x, y) -> Tuple[float, float]:
    loss, _, _, accuracy = loss_and_gradients(weights, bias, x, y)
    return loss, accuracy


def train(args) -> int:
    import numpy as np

    from psclient import Client, PsError, RetryPolicy

    x_all, y_all, x_test, y_test = make_data(args)
    x = x_all[args.worker_index::args.num_workers]
    y = y_all[args.worker_index::args.num_workers]
    name = f"worker {args.worker_index}/{args.num_workers}"
    token: Optional[str] = read_token(args.token_file) if args.token_file else None
    servers: List[str] = [s for s in args.servers.split(",") if s]

    # Shards may still be starting (a Job's pods and the StatefulSet's start
    # together): retry unreachable shards for about a minute.
    retry = RetryPolicy(max_attempts=15, initial_backoff=0.5, max_backoff=5.0)
    start = time.monotonic()
    with Client(servers, token=token, tls_ca_file=args.tls_ca_file or None,
                worker_id=f"train-worker-{args.worker_index}",
                retry=retry) as client:
        info = client.cluster_info
        print(f"{name}: connected to {info.num_shards} shard(s) ({info.consistency}, "
              f"block_size {info.block_size}); {len(y)} training examples",
              flush=True)
        # Every worker creates the variables with the same values (one seed
        # for all), which the shards accept as the same variable; the others
        # learn the shape.
        init = np.random.default_rng(args.seed + 1)
        client.create_variable(PARAMS[0], initial=init.normal(
            0.0, 0.01, size=(args.features, args.classes)).astype(np.float32))
        client.create_variable(PARAMS[1], shape=(args.classes,))
        values = client.pull(list(PARAMS))
        weights, bias = values[PARAMS[0]], values[PARAMS[1]]
        first_loss, _ = evaluate(weights, bias, x, y)
        print(f"{name}: step 0 training loss {first_loss:.4f}", flush=True)

        rng = np.random.default_rng(args.seed + 100 + args.worker_index)
        for step in range(1, args.steps + 1):
            batch = rng.integers(0, len(y), size=args.batch_size)
            loss, grad_w, grad_b, accuracy = loss_and_gradients(
                weights, bias, x[batch], y[batch])
            try:
                grads = {PARAMS[0]: np.ascontiguousarray(grad_w, np.float32),
                         PARAMS[1]: np.ascontiguousarray(grad_b, np.float32)}
                values = client.push_pull(grads,
                                          step=step, loss=loss)
            except PsError as e:
                print(f"{name}: step {step} refused: {e}", file=sys.stderr)
                return 1
            weights, bias = values[PARAMS[0]], values[PARAMS[1]]
            if step % args.log_every == 0 or step == args.steps:
                print(f"{name}: step {step} batch loss {loss:.4f} "
                      f"batch accuracy {accuracy:.3f}", flush=True)
            if args.step_delay_s > 0:
                time.sleep(args.step_delay_s)

        values = client.pull(list(PARAMS))
        weights, bias = values[PARAMS[0]], values[PARAMS[1]]
    train_loss, _ = evaluate(weights, bias, x, y)
    test_loss, test_accuracy = evaluate(weights, bias, x_test, y_test)
    seconds = time.monotonic() - start
    print(f"{name}: done after {args.steps} steps in {seconds:.1f}s: training loss "
          f"{first_loss:.4f} -> {train_loss:.4f}, test loss {test_loss:.4f}, "
          f"test accuracy {test_accuracy:.3f}", flush=True)
    if test_accuracy < args.min_accuracy:
        print(f"{name}: test accuracy {test_accuracy:.3f} is below "
              f"--min_accuracy={args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--servers", required=True,
                        help="HOST:PORT of every shard, comma-separated")
    parser.add_argument("--token_file", default="",
                        help="file whose first token is sent as the bearer token")
    parser.add_argument("--tls_ca_file", default="",
                        help="PEM root CA: connect with TLS; empty = plaintext")
    parser.add_argument("--worker_index", type=int, default=0,
                        help="this worker, 0..num_workers-1 (picks its data)")
    parser.add_argument("--num_workers", type=int, default=1,
                        help="workers sharing the training set")
    parser.add_argument("--steps", type=int, default=2000, help="steps to train")
    parser.add_argument("--batch_size", type=int, default=64,
                        help="examples per step")
    parser.add_argument("--features", type=int, default=64, help="input width")
    parser.add_argument("--classes", type=int, default=10, help="output classes")
    parser.add_argument("--examples", type=int, default=10000,
                        help="size of the data set (a fifth is the test set)")
    parser.add_argument("--noise", type=float, default=3.0,
                        help="spread of each class around its center")
    parser.add_argument("--seed", type=int, default=0,
                        help="data seed; every worker must use the same")
    parser.add_argument("--log_every", type=int, default=200,
                        help="print progress every N steps")
    parser.add_argument("--step_delay_s", type=float, default=0.0,
                        help="pause after each step (to watch a live change)")
    parser.add_argument("--min_accuracy", type=float, default=0.0,
                        help="exit 1 when the test accuracy ends below this")
    args = parser.parse_args(argv)
    if not 0 <= args.worker_index < args.num_workers:
        parser.error("--worker_index must be in 0..num_workers-1")
    for flag in ("steps", "batch_size", "features", "classes", "log_every"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be positive")
    if args.examples < 10:
        parser.error("--examples must be at least 10")
    return args


def exit_on_sigterm() -> None:
    """Makes SIGTERM end the worker at once, with status 143 (128 + 15).

    In a container the worker is PID 1, and the kernel gives PID 1 no default
    action for a signal it does not handle: without this, `docker stop` and a
    pod's deletion wait out their grace period and end in SIGKILL.
    """
    # A Python handler would run only once the main thread is back in the
    # interpreter, and a call of psclient's binding may block for its whole
    # retry deadline (an unreachable shard). So SIGTERM is blocked in every
    # thread (gRPC's inherit the mask) and one thread waits for it; the
    # binding releases the GIL while it blocks, so that thread runs at once.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        signal.sigwait({signal.SIGTERM})
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=wait, name="sigterm", daemon=True).start()


def main() -> int:
    exit_on_sigterm()
    args = parse_args()
    try:
        return train(args)
    except Exception as e:  # a refusal or an unreachable shard: say which
        if type(e).__module__.startswith(("psclient", "grpc")) or isinstance(e, OSError):
            print(f"worker {args.worker_index}: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
