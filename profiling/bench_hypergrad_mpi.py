"""Memory per process and time of distributed hypergradients, against the number of processes.

Runs ``rt.hypergradient(..., micro_batches=M)`` on a character-level model
(built-in corpus, fixed random windows, exact SGD at momentum 0.9) without
MPI, then under ``mpiexec -n N`` for each ``N`` asked, and prints a markdown
table: the information buffer each process holds (its parameter blocks'),
the total over processes (the same for every ``N``: the same blocks hold the
same digits), the wall time of the forward and reverse passes (slowest rank)
and whether the hypergradients are the same bits as without MPI.

Usage: python profiling/bench_hypergrad_mpi.py [--procs 1 2] [--model revlstm]
       [--hidden 64] [--iters 100] [--micro-batches 4] ...
(It launches itself under mpiexec; ``--worker`` is that mode.)
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import revtrain as rt
from revtrain.data import char_corpus

MODELS = {"rnn": "RNN", "revlstm": "RevLSTM", "lstm": "LSTM", "revgru": "RevGRU"}


def problem(a):
    ids = char_corpus(None).train
    ids = np.asarray(ids)
    V = int(ids.max()) + 1
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(ids) - a.seq_len - 1, size=(a.iters, a.batch))
    idx = starts[:, None, :] + np.arange(a.seq_len)[None, :, None]
    xs, ys = ids[idx], ids[idx + 1]
    vstart = rng.integers(0, len(ids) - a.seq_len - 1, size=a.batch)
    vidx = vstart[None, :] + np.arange(a.seq_len)[:, None]
    model = getattr(rt, MODELS[a.model])(V, a.hidden, V)
    return model, (lambda t: (xs[t], ys[t])), (ids[vidx], ids[vidx + 1]), model.init_params(seed=1)


def digest(hg):
    h = hashlib.sha256()
    for f in ("lr", "momentum", "weight_decay", "init_scale", "theta0", "final_theta"):
        h.update(np.ascontiguousarray(getattr(hg, f)).tobytes())
    return h.hexdigest()[:16]


def run(a, comm):
    model, batch, val, theta0 = problem(a)
    hg = rt.hypergradient(model, rt.ExactSGD(a.lr, 0.9, 1e-4), theta0, batch, val, a.iters,
                          comm=comm, micro_batches=a.micro_batches)
    s = hg.stats
    return dict(rank_bytes=s.rank_buffer_bytes, total_bytes=s.buffer_bytes,
                forward=s.forward_seconds, reverse=s.reverse_seconds, digest=digest(hg),
                P=s.n_params)


def worker(a):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    res = comm.gather(run(a, comm), root=0)
    if comm.Get_rank() == 0:
        print(json.dumps(res))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--model", choices=list(MODELS), default="revlstm")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--micro-batches", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    base = run(a, None)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    args = [a2 for a2 in sys.argv[1:] if a2 != "--worker"]
    print(f"{a.model} H={a.hidden} (P={base['P']}), T={a.seq_len}, B={a.batch}, "
          f"M={a.micro_batches} micro-batches, {a.iters} iterations, momentum 0.9\n")
    print("| processes | buffer bytes per rank | total buffer bytes | forward s | reverse s "
          "| same bits as comm=None |")
    print("|---|---|---|---|---|---|")
    print(f"| none (comm=None) | {base['rank_bytes']} | {base['total_bytes']} | "
          f"{base['forward']:.2f} | {base['reverse']:.2f} | - |")
    for n in a.procs:
        out = subprocess.run([str(mpiexec), "-n", str(n), sys.executable, __file__, "--worker",
                              *args], capture_output=True, text=True, env=env, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        per = ", ".join(str(r["rank_bytes"]) for r in res)
        same = all(r["digest"] == base["digest"] for r in res)
        print(f"| {n} | {per} | {res[0]['total_bytes']} | "
              f"{max(r['forward'] for r in res):.2f} | {max(r['reverse'] for r in res):.2f} | "
              f"{'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
