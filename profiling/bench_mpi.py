"""Data-parallel training over MPI: steps per second on N processes and the all-reduce's cost.

Trains a 2-layer RevLSTM over a character embedding (token input, the built-in
corpus) with ``Trainer(comm=MPI.COMM_WORLD, micro_batches=M)`` under
``mpiexec -n N`` for each N (default 1 and 2), one BLAS/OpenMP/Numba thread per
process, and reports per N (plus, for reference, one process whose row groups run
on a thread per core, revtrain's in-process threading):

* steps/s (wall clock of ``fit`` after warm-up steps) and the speed-up over N = 1
  (the same M micro-batches, so the same arithmetic and the same bits);
* the bytes each process contributes to the exact int64 ``Allreduce`` per step
  (P parameters x 8 bytes) and the time in it (ms per step and share of a step);
* for comparison, the time of a float64 ``Allreduce`` of the same length and of
  an int64 one, both in isolation (best of a few), which is what the exact sum
  costs over a float one: the same bytes, an integer sum instead of a float sum.

Usage: python profiling/bench_mpi.py [--procs 1 2] [--batch 64] [--hidden 256]
       [--layers 2] [--embed 64] [--seq-len 64] [--micro-batches 2] [--steps 8] [--warmup 2]

Needs the mpi extra (``pip install ".[mpi]"``); ``mpiexec`` is taken from next to
the Python interpreter. The last column runs a CPU-bound loop on every process at
once: ``N * t(1) / t(N)`` is how many cores' worth the machine actually gives N
processes (on a shared or virtual machine it can be well below N, and the
speed-up with it). Targets: 2 processes >= 1.7x the steps/s of 1; the
all-reduce <= 10 % of a step. The machine must have N free cores for a fair number.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMBA_NUM_THREADS": "1"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--micro-batches", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="row-group threads per process (revtrain's own threading of the "
                   "reversible cells' row groups; default 1, the MPI comparison)")
    p.add_argument("--no-threaded-row", action="store_true",
                   help="skip the extra row: 1 process with a row-group thread per core")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _best_allreduce(comm, buf, repeat=7):
    from mpi4py import MPI
    out = buf.copy()
    best = float("inf")
    for _ in range(repeat):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(buf, out, op=MPI.SUM)
        best = min(best, time.perf_counter() - t0)
    return comm.allreduce(best, op=MPI.MAX)


def _spin_seconds(comm, n=5_000_000):
    """Seconds of a CPU-bound pure-Python loop run by every rank at once (the slowest rank):
    ``N * spin(1) / spin(N)`` is how many cores' worth the machine gives N processes."""
    comm.Barrier()
    t0 = time.perf_counter()
    s = 0
    for i in range(n):
        s += i
    from mpi4py import MPI
    return comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)


def worker(a):
    """Run under mpiexec: train, time, print one JSON line from rank 0."""
    import numpy as np
    from mpi4py import MPI
    import revtrain as rt
    from revtrain._threads import set_row_threads
    set_row_threads(a.threads)
    comm = MPI.COMM_WORLD
    corpus = rt.char_corpus()
    V = corpus.vocab.size
    model = rt.RevLSTM(V, a.hidden, V, n_layers=a.layers, embed_dim=a.embed)
    tr = rt.Trainer(model, rt.Adam(0.01), seed=0, comm=comm, micro_batches=a.micro_batches)
    fit = dict(batch_size=a.batch, seq_len=a.seq_len, quiet=True)
    spin = _spin_seconds(comm)
    tr.fit(corpus.train, steps=a.warmup, **fit)          # compile, warm caches
    before = dict(tr.comm_stats)
    comm.Barrier()
    t0 = time.perf_counter()
    tr.fit(corpus.train, steps=a.steps, **fit)
    comm.Barrier()
    wall = time.perf_counter() - t0
    st = {k: tr.comm_stats.get(k, 0) - before.get(k, 0) for k in tr.comm_stats}
    ar = comm.allreduce(st["allreduce_s"], op=MPI.MAX) / a.steps
    gather = comm.allreduce(st["gather_s"], op=MPI.MAX) / a.steps
    P = tr.theta.size
    f64 = _best_allreduce(comm, np.random.default_rng(0).standard_normal(P))
    i64 = _best_allreduce(comm, np.arange(P, dtype=np.int64))
    if comm.Get_rank() == 0:
        print(json.dumps({"N": comm.Get_size(), "threads": a.threads, "P": P, "steps_per_s": a.steps / wall,
                          "step_s": wall / a.steps, "bytes": st["allreduce_bytes"] / a.steps,
                          "allreduce_s": ar, "gather_s": gather, "f64_s": f64, "i64_s": i64,
                          "loss": tr.history.loss[-1], "spin_s": spin}), flush=True)


def mpiexec():
    cand = Path(sys.executable).parent / "mpiexec"
    return str(cand) if cand.exists() else shutil.which("mpiexec")


def main(argv=None):
    a = parse(argv)
    if a.worker:
        return worker(a)
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        sys.exit("bench_mpi: needs the mpi extra: pip install \".[mpi]\"")
    launcher = mpiexec()
    if launcher is None:
        sys.exit("bench_mpi: mpiexec not found (pip install \".[mpi]\" brings it)")
    env = dict(os.environ, **ONE_THREAD)
    args = [a_ for k, v in vars(a).items()
            if k not in ("procs", "worker", "threads", "no_threaded_row")
            for a_ in ("--" + k.replace("_", "-"), str(v))]
    runs = [(n, a.threads) for n in a.procs]
    if not a.no_threaded_row:
        runs.append((1, os.cpu_count() or 1))
    rows = []
    for n, threads in runs:
        if a.micro_batches % n:
            print(f"skipping N={n}: --micro-batches {a.micro_batches} is not a multiple of it")
            continue
        res = subprocess.run([launcher, "-n", str(n), sys.executable, __file__, "--worker",
                              "--threads", str(threads), *args], capture_output=True,
                             text=True, env=env)
        if res.returncode:
            sys.exit(f"bench_mpi: N={n} failed:\n{res.stderr}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    base = rows[0]["steps_per_s"] if rows else 1.0
    print(f"RevLSTM {a.layers} layers, H={a.hidden}, embed {a.embed}, B={a.batch}, "
          f"T={a.seq_len}, {a.micro_batches} micro-batches, P={rows[0]['P'] if rows else '?'} "
          f"parameters, {a.threads} thread(s) per process (BLAS 1), {a.steps} timed steps after "
          f"{a.warmup}")
    head = ("| N (threads) | steps/s | speed-up | all-reduce bytes/step | int64 all-reduce ms/step "
            "(% of step) | status+extras gather ms | float64 Allreduce ms (same length) "
            "| int64 Allreduce ms (alone) | same loss | cores' worth (CPU loop) |")
    print(head)
    print("|" + "---|" * head.count(" | ") + "---|")
    for r in rows:
        print(f"| {r['N']} ({r['threads']}) | {r['steps_per_s']:.3f} | {r['steps_per_s'] / base:.2f}x "
              f"| {r['bytes'] / 1e6:.2f} MB | {1e3 * r['allreduce_s']:.2f} "
              f"({100 * r['allreduce_s'] / r['step_s']:.2f} %) | {1e3 * r['gather_s']:.1f} "
              f"| {1e3 * r['f64_s']:.2f} | {1e3 * r['i64_s']:.2f} "
              f"| {r['loss'] == rows[0]['loss']} "
              f"| {r['N'] * rows[0]['spin_s'] / r['spin_s']:.2f} |")


if __name__ == "__main__":
    main()
