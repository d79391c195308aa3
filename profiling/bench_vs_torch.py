"""Time and memory of one forward+backward pass: revtrain against PyTorch on the CPU.

Each cell measures one pass (forward, per-step softmax cross-entropy over a
vocabulary of 64 on token input, backward to every parameter): the median wall
time of ``--repeat`` calls (default 3) after a warm-up call of the same size,
and the peak resident-size growth during those calls (MiB: Linux's VmHWM, reset
through /proc/self/clear_refs just before them, minus the size then; sampled by
memory-profiler where that is unavailable). Every cell runs in a fresh Python
process (this script with the hidden ``--one`` option, answering JSON).

Columns, each "ms / MiB":

* torch f32, torch f32 ckpt, torch f64: ``nn.Embedding(64, H)`` +
  ``nn.LSTM(H, H, num_layers=L)`` + ``nn.Linear(H, 64)`` + cross-entropy on 2
  threads; ckpt runs segments of ceil(sqrt(T)) steps (LSTM, head and loss)
  under ``torch.utils.checkpoint(use_reentrant=False)``. Measured once per size
  and depth, shown in the rows of every dtype.
* rt LSTM standard, rt LSTM checkpoint (segments of ceil(sqrt(T))), rt RevLSTM
  reversible: ``rt.LSTM/RevLSTM(64, H, 64, n_layers=L)``, ``loss_and_grad(theta,
  x, y, bptt=...)`` with int ids x, y (T, B) in the row's dtype (float32 needs
  the models' ``dtype`` argument, else "n/a"; float32 rows pass float32
  ``theta``, as torch's parameters are, where the models take it); BLAS on 1 thread (the default),
  the batch's row groups of 16 rows on ``rt.get_row_threads()`` threads (the
  default: the usable cores, 2 here, as torch's).

A second table divides each time by the row's torch f32 time. torch is optional
(never a revtrain dependency); without it, or with --no-torch, its columns read
"-". The machine load is printed before and after: on a shared machine compare
cells of one run only.

Usage:
    python profiling/bench_vs_torch.py --out profiling/results/bench_vs_torch.md   # full
    python profiling/bench_vs_torch.py --sizes 20,2,16 --layers 1 --repeat 1       # smoke
Options: --sizes "T,B,H ..." (default "1000,32,256 1000,1,128 100,32,256"),
--layers 1 2, --dtypes float32 float64, --repeat 3, --out FILE.md, --no-torch.
"""
import argparse
import ctypes
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np

VOCAB = 64
DEFAULT_SIZES = "1000,32,256 1000,1,128 100,32,256"
#: (label, backend, dtype (None: the row's), BPTT mode), in table order.
COLUMNS = (
    ("torch f32", "torch", "float32", "standard"),
    ("torch f32 ckpt", "torch", "float32", "checkpoint"),
    ("torch f64", "torch", "float64", "standard"),
    ("rt LSTM standard", "LSTM", None, "standard"),
    ("rt LSTM checkpoint", "LSTM", None, "checkpoint"),
    ("rt RevLSTM reversible", "RevLSTM", None, "reversible"),
)
REFERENCE = "torch f32"


def problem(T, B, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, VOCAB, (T, B)), rng.integers(0, VOCAB, (T, B))


def torch_call(dtype, mode, T, B, H, L, seed=0):
    """A no-argument function running one forward+backward pass of the torch model."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    dt = getattr(torch, dtype)
    emb, lstm, head = (m.to(dt) for m in (torch.nn.Embedding(VOCAB, H),
                                           torch.nn.LSTM(H, H, num_layers=L),
                                           torch.nn.Linear(H, VOCAB)))
    params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    x, y = (torch.from_numpy(a) for a in problem(T, B, seed))
    k = math.ceil(math.sqrt(T)) if mode == "checkpoint" else T

    def segment(xs, ys, h, c):
        out, (h, c) = lstm(emb(xs), (h, c))
        loss = F.cross_entropy(head(out).reshape(-1, VOCAB), ys.reshape(-1), reduction="sum")
        return loss, h, c

    def call():
        for p in params:
            p.grad = None
        h = c = torch.zeros(L, B, H, dtype=dt)
        loss = 0.0
        for t in range(0, T, k):
            args = (x[t:t + k], y[t:t + k], h, c)
            part, h, c = (checkpoint(segment, *args, use_reentrant=False)
                          if mode == "checkpoint" else segment(*args))
            loss = loss + part
        loss = loss / (T * B)
        loss.backward()
        return float(loss.detach())
    return call


def rt_call(cls, dtype, mode, T, B, H, L, seed=0):
    """A no-argument function running one ``loss_and_grad`` of the revtrain model."""
    import revtrain as rt
    kw = {} if dtype == "float64" else {"dtype": dtype}
    model = getattr(rt, cls)(VOCAB, H, VOCAB, n_layers=L, **kw)
    theta = model.init_params(seed=seed)
    if dtype == "float32" and theta_float32_ok(model, theta):
        theta = theta.astype(np.float32)   # float32 parameters, as torch's: no copy per call
    x, y = problem(T, B, seed)
    return lambda: model.loss_and_grad(theta, x, y, bptt=mode)[0]


def theta_float32_ok(model, theta):
    """Whether the float32 model takes float32 parameters (a later feature than ``dtype``)."""
    try:
        model.layout.check(theta.astype(np.float32), float32_ok=True)
        return True
    except TypeError:
        return False


def rt_has_dtype():
    """Whether the revtrain models take ``dtype="float32"`` (a later feature)."""
    import revtrain as rt
    try:
        return rt.LSTM(4, 4, 4, dtype="float32") is not None
    except TypeError:
        return False


def torch_importable():
    try:
        return __import__("torch") is not None
    except Exception:  # noqa: BLE001  (a broken install counts as missing)
        return False


def _status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"no {key} in /proc/self/status")


def timed_calls(call, repeat):
    """Wall times (s) of ``repeat`` calls and the peak RSS growth over them (MiB, method)."""
    def run(times):
        for _ in range(repeat):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)      # glibc keeps freed blocks otherwise
    except (OSError, AttributeError):
        pass
    times = []
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                               # VmHWM := VmRSS (Linux >= 4.0)
        base = _status_kib("VmRSS")
        reset = _status_kib("VmHWM") <= base + 1024
    except OSError:
        reset = False
    if reset:
        run(times)
        return times, (_status_kib("VmHWM") - base) / 1024, "VmHWM"
    from memory_profiler import memory_usage
    base = memory_usage(-1, interval=0.01, timeout=0.05, max_usage=True)
    peak = memory_usage((run, (times,), {}), interval=0.005, max_usage=True)
    return times, max(0.0, peak - base), "memory_profiler"


def measure(backend, dtype, mode, T, B, H, L, repeat):
    """One cell in this process: warm-up call, then ``repeat`` timed calls."""
    call = (torch_call(dtype, mode, T, B, H, L) if backend == "torch"
            else rt_call(backend, dtype, mode, T, B, H, L))
    loss = call()                                      # warm-up: compile / load caches
    times, mib, how = timed_calls(call, repeat)
    return dict(ms=1e3 * statistics.median(times), mib=mib, times_ms=[1e3 * t for t in times],
                loss=float(loss), rss=how)


def measure_isolated(backend, dtype, mode, T, B, H, L, repeat):
    """:func:`measure` in a fresh Python process (``--one``); errors come back as ``{"error"}``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", backend, dtype, mode,
           str(T), str(B), str(H), str(L), "--repeat", str(repeat)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        tail = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
        return {"error": tail}
    return json.loads(lines[-1])


def fmt_cell(r):
    if r is None or "ms" not in r:
        return "-" if r is None else r.get("na", "error")
    return f"{r['ms']:.4g} ms / {r['mib']:.1f} MiB"


def fmt_ratio(r, ref):
    if r is None or ref is None or "ms" not in r or "ms" not in ref:
        return "-"
    return f"{r['ms'] / ref['ms']:.2f}x"


def tables(rows):
    """The two markdown tables of ``rows`` [(dtype, L, (T, B, H), {label: result})]."""
    def table(labels, fmt):
        out = ["| dtype | L | T | B | H | " + " | ".join(labels) + " |",
               "|---|---:|---:|---:|---:|" + "---:|" * len(labels)]
        return out + [f"| {dtype} | {L} | {T} | {B} | {H} | "
                      + " | ".join(fmt(cells, c) for c in labels) + " |"
                      for dtype, L, (T, B, H), cells in rows]
    others = [c[0] for c in COLUMNS if c[0] != REFERENCE]
    return (["**ms / MiB** (median time; peak RSS growth during the calls)", ""]
            + table([c[0] for c in COLUMNS], lambda cells, c: fmt_cell(cells.get(c)))
            + ["", f"**time / {REFERENCE} standard time**", ""]
            + table(others, lambda cells, c: fmt_ratio(cells.get(c), cells.get(REFERENCE))))


def parse_sizes(items):
    return [tuple(int(v) for v in item.split(",")) for item in " ".join(items).split()]


def load():
    return "load average %.2f %.2f %.2f (1, 5, 15 min), %d cores" % (*os.getloadavg(),
                                                                     os.cpu_count() or 0)


def run_table(sizes, layers, dtypes, repeat, with_torch=True, isolate=True, log=print):
    """Measure every cell; returns (rows, notes)."""
    one = measure_isolated if isolate else measure
    notes = []
    if with_torch and not torch_importable():
        with_torch = False
        notes.append("torch is not importable here: its columns read '-' (pip install torch).")
    has_dtype = rt_has_dtype()
    if not has_dtype and any(d != "float64" for d in dtypes):
        notes.append("revtrain models take no dtype argument yet: rt float32 cells are n/a.")
    rows = []

    def cell(label, backend, dtype, mode, T, B, H, L):
        r = one(backend, dtype, mode, T, B, H, L, repeat)
        where = f"L={L} T={T} B={B} H={H}" + ("" if backend == "torch" else f" {dtype}")
        log(f"  {where} {label}: {fmt_cell(r)}")
        if "error" in r:
            notes.append(f"{label} ({where}): {r['error']}")
        return r

    for L in layers:
        for size in sizes:
            torch_cells = {c[0]: cell(*c, *size, L) for c in COLUMNS
                           if c[1] == "torch" and with_torch}
            for dtype in dtypes:
                cells = dict(torch_cells)
                for label, backend, _, mode in COLUMNS:
                    if backend == "torch":
                        continue
                    if dtype != "float64" and not has_dtype:
                        cells[label] = {"na": "n/a (no dtype yet)"}
                    else:
                        cells[label] = cell(label, backend, dtype, mode, *size, L)
                rows.append((dtype, L, size, cells))
    rows.sort(key=lambda r: (dtypes.index(r[0]), layers.index(r[1])))   # stable: sizes in order
    return rows, notes


def _row_threads():
    import revtrain as rt
    return rt.get_row_threads()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=[DEFAULT_SIZES], help='"T,B,H T,B,H ..."')
    p.add_argument("--layers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--dtypes", nargs="+", choices=("float32", "float64"),
                   default=["float32", "float64"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", help="also write the tables to this markdown file")
    p.add_argument("--no-torch", action="store_true", help="skip the torch columns")
    p.add_argument("--one", nargs=7, help=argparse.SUPPRESS,
                   metavar=("BACKEND", "DTYPE", "MODE", "T", "B", "H", "L"))
    a = p.parse_args(argv)
    if a.one:
        backend, dtype, mode = a.one[:3]
        try:
            r = measure(backend, dtype, mode, *(int(v) for v in a.one[3:]), a.repeat)
        except Exception as e:  # noqa: BLE001  (reported in the table's notes)
            r = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
        print(json.dumps(r))
        return r
    sizes = parse_sizes(a.sizes)
    before = load()
    print("before:", before, flush=True)
    t0 = time.perf_counter()
    rows, notes = run_table(sizes, a.layers, a.dtypes, a.repeat, with_torch=not a.no_torch,
                            log=lambda s: print(s, flush=True))
    after = load()
    lines = ["# revtrain vs PyTorch: one forward+backward pass", "",
             f"vocabulary {VOCAB}, token input, per-step softmax; median of {a.repeat} calls "
             "after a warm-up; each cell in a fresh process; torch on 2 threads, revtrain "
             f"BLAS on 1 and row groups on {_row_threads()} threads.", "", f"before: {before}  ", f"after: {after}  ",
             f"total {time.perf_counter() - t0:.0f} s", ""] + tables(rows)
    if notes:
        lines += ["", "Notes:", ""] + [f"* {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    print()
    print(text, end="")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"written: {a.out}")
    return rows


if __name__ == "__main__":
    main()
