"""Two threads on one reversible call: the pipelined backward or two row halves, against one.

A batch of one row group runs its reversible backward as a two-stage pipeline
when it has two row threads (``rt.set_row_threads``): the undo of a chunk of
steps on a second thread beside the backpropagation of the chunk before
(``revtrain/models/pipeline.py``). A batch of 4 to 32 rows is cut into two
halves instead, whose forward and backward passes run side by side
(``revtrain/models/row_groups.window_row_groups``). This script times one
``loss_and_grad`` (token input, vocabulary 64, per-step softmax, float32 by
default) of each reversible cell on 1 thread, on 2 threads as one pipelined
group (the rule before the halves, for batches of up to 16 rows) and on 2
threads by the current rule: the median of ``--repeat`` calls after a warm-up,
all in this process, so compare the rows of one run only. All give the same
trajectory and loss bits (``tests/test_pipeline.py``, ``tests/test_row_groups.py``).

Usage:
    python profiling/bench_pipeline.py                      # T=1000, B=1 (H=128), 4 (128), 16 (256)
    python profiling/bench_pipeline.py --T 100 --repeat 3   # smoke
"""
import argparse
import os
import statistics
import time

import numpy as np

import revtrain as rt
from revtrain.models import window_calls
from revtrain.models.row_groups import window_row_groups

VOCAB = 64
CELLS = ("RevLSTM", "RevGRU", "MomentumRNN")


def median_ms(cell, T, B, H, dtype, threads, repeat, one_group=False):
    """Median wall time (ms) of ``repeat`` ``loss_and_grad`` calls on ``threads`` row threads
    (``one_group``: the whole batch as one row group, pipelined on two threads)."""
    rt.set_row_threads(threads)
    rule = window_calls.window_row_groups
    if one_group:
        window_calls.window_row_groups = lambda b: [(0, b)]
    try:
        model = getattr(rt, cell)(VOCAB, H, VOCAB, dtype=dtype)
        theta = model.init_params(seed=0)
        if dtype == "float32":
            theta = theta.astype(np.float32)
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, VOCAB, (T, B)), rng.integers(0, VOCAB, (T, B))
        model.loss_and_grad(theta, x, y)               # warm-up: compile / load caches
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            model.loss_and_grad(theta, x, y)
            times.append(time.perf_counter() - t0)
    finally:
        window_calls.window_row_groups = rule
    return 1e3 * statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--sizes", nargs="+", default=["1,128", "4,128", "16,256"], help='"B,H ..."')
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--repeat", type=int, default=9)
    args = p.parse_args(argv)
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, "
          f"{len(os.sched_getaffinity(0))} usable cores, {args.dtype}, T={args.T}")
    print()
    print("| cell | B | H | 1 thread | 2 threads, one group pipelined | 2 threads (rule) "
          "| rule | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for cell in CELLS:
        for size in args.sizes:
            B, H = (int(v) for v in size.split(","))
            serial = median_ms(cell, args.T, B, H, args.dtype, 1, args.repeat)
            piped = (median_ms(cell, args.T, B, H, args.dtype, 2, args.repeat, one_group=True)
                     if B <= 16 else float("nan"))
            rule = median_ms(cell, args.T, B, H, args.dtype, 2, args.repeat)
            how = "pipeline" if len(window_row_groups(B)) == 1 else "halves"
            print(f"| {cell} | {B} | {H} | {serial:.1f} ms | {piped:.1f} ms | {rule:.1f} ms | "
                  f"{how} | {serial / rule:.2f}x |", flush=True)
    rt.set_row_threads(None)


if __name__ == "__main__":
    main()
