"""Forward + backward time of the standard recurrent models, against PyTorch when present.

Measures one ``loss_and_grad`` call (softmax cross-entropy at every step,
float inputs; the median of ``--repeats`` runs after a warm-up call) for

* LSTM, GRU, RNN at (B=32, n_in=64, H=256, T=100), (B=32, n_in=64, H=256,
  T=1000) and (B=1, n_in=64, H=128, T=1000), stored BPTT and, at T=1000,
  checkpointed BPTT (segments of ceil(sqrt(T)) steps);
* MDRNN on a 32x32 grid, B=1 (the speed issue's target size) and B=16, H=64,
  wavefront vs raster order (label of the last cell);
* optionally PyTorch CPU (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` + ``nn.Linear``
  + cross-entropy, float64 and float32, ``torch.set_num_threads(2)``) in a
  separate worker process, asked case by case right after the same revtrain
  case (so both see similar machine load), when torch is importable (never a
  dependency of revtrain);

and the memory of standard vs checkpointed BPTT at T=1000: ``stats.stored_bytes``
(what the backward pass keeps) and the tracemalloc peak of one call (NumPy
reports its buffers to tracemalloc; Numba-internal allocations are not seen).

revtrain runs with one BLAS thread by default (``rt.get_blas_threads()``: safe
on busy shared cores) while PyTorch gets two; on an idle machine pass
``--blas-threads 2`` for a like-for-like comparison. Models missing from
``revtrain`` (e.g. not written yet) are skipped. The
machine may be shared: the script prints the load average before and after;
compare columns measured in the same run. Prints markdown tables.

Usage: python profiling/bench_kernels.py [--quick] [--repeats 5] [--blas-threads 1]
       [--no-torch] [--torch-threads 2] [--models LSTM,GRU,RNN,MDRNN]
"""
import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np

SEQ_CONFIGS = [  # (B, n_in, H, T)
    (32, 64, 256, 100),
    (32, 64, 256, 1000),
    (1, 64, 128, 1000),
]
N_OUT = 64
GRID = dict(rows=32, cols=32, n_in=8, H=64, n_out=10)
#: Batch sizes of the MDRNN rows.
GRID_BATCHES = (1, 16)
MEMORY_CONFIG = (32, 64, 256, 1000)


def _median_time(fn, repeats):
    fn()                                    # warm-up (compilation, page faults)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _seq_data(B, n_in, T, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, B, n_in)), rng.integers(0, N_OUT, size=(T, B))


def _fmt_ms(t):
    return "—" if t is None else f"{1e3 * t:.1f}"


def _fmt_mb(b):
    return "—" if b is None else f"{b / 2**20:.2f}"


# ---------------------------------------------------------------------- revtrain
def bench_sequence(rt, name, repeats, torch_col=None, torch_dtypes=()):
    cls = getattr(rt, name, None)
    if cls is None:
        return []
    rows = []
    for (B, n_in, H, T) in SEQ_CONFIGS:
        model = cls(n_in, H, N_OUT)
        theta = model.init_params(seed=0)
        x, y = _seq_data(B, n_in, T)
        reps = max(1, repeats // 2) if T * B * H > 4e6 else repeats
        t_std = _median_time(lambda: model.loss_and_grad(theta, x, y), reps)
        t_ck = None
        if T >= 1000:
            t_ck = _median_time(lambda: model.loss_and_grad(theta, x, y, bptt="checkpoint"), reps)
        row = dict(model=name, B=B, n_in=n_in, H=H, T=T, standard=t_std, checkpoint=t_ck)
        for dt in torch_dtypes:
            row["torch_" + dt] = None if torch_col is None else \
                torch_col.time(name, B, n_in, H, T, dt, reps)
        rows.append(row)
    return rows


def bench_memory(rt, name, repeats):
    cls = getattr(rt, name, None)
    if cls is None:
        return []
    B, n_in, H, T = MEMORY_CONFIG
    model = cls(n_in, H, N_OUT)
    theta = model.init_params(seed=0)
    x, y = _seq_data(B, n_in, T)
    out = []
    for mode in ("standard", "checkpoint"):
        model.loss_and_grad(theta, x, y, bptt=mode)           # warm-up
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        _, _, st = model.loss_and_grad(theta, x, y, bptt=mode, return_stats=True)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        t = _median_time(lambda: model.loss_and_grad(theta, x, y, bptt=mode), max(1, repeats // 2))
        out.append(dict(model=name, mode=mode, stored=st.stored_bytes, peak=peak, time=t))
    return out


def bench_mdrnn(rt, repeats, B):
    cls = getattr(rt, "MDRNN", None)
    if cls is None:
        return []
    g = GRID
    rng = np.random.default_rng(0)
    x = rng.normal(size=(g["rows"], g["cols"], B, g["n_in"]))
    y = rng.integers(0, g["n_out"], size=(B,))
    rows = []
    for order in ("wavefront", "raster"):
        try:
            model = cls(g["n_in"], g["H"], g["n_out"], order=order)
        except TypeError:                     # no order argument: wavefront only
            if order == "raster":
                continue
            model = cls(g["n_in"], g["H"], g["n_out"])
        theta = model.init_params(seed=0)
        t = _median_time(lambda: model.loss_and_grad(theta, x, y), repeats)
        rows.append(dict(order=order, time=t))
    return rows


# ---------------------------------------------------------------------- PyTorch (subprocess)
def torch_worker(threads):
    """Separate process: read one JSON case per line on stdin, time PyTorch fwd+bwd, reply."""
    import torch
    torch.set_num_threads(threads)
    cells = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}
    print(json.dumps({"ready": torch.__version__}), flush=True)
    for line in sys.stdin:
        name, B, n_in, H, T, dtype_name, repeats = json.loads(line)
        dtype = getattr(torch, dtype_name)
        torch.manual_seed(0)
        rnn = cells[name](n_in, H).to(dtype)
        lin = torch.nn.Linear(H, N_OUT).to(dtype)
        x = torch.randn(T, B, n_in, dtype=dtype)
        y = torch.randint(0, N_OUT, (T * B,))
        params = list(rnn.parameters()) + list(lin.parameters())

        def step():
            for p in params:
                p.grad = None
            out, _ = rnn(x)
            loss = torch.nn.functional.cross_entropy(lin(out).reshape(T * B, N_OUT), y)
            loss.backward()

        print(json.dumps({"time": _median_time(step, repeats)}), flush=True)


class TorchColumn:
    """A PyTorch worker process, asked case by case (interleaved with the revtrain runs,
    so both see similar machine load). Disabled (returns None) if it cannot start."""

    def __init__(self, threads=2):
        self.proc = None
        try:
            self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                          "--torch-worker", "--torch-threads", str(threads)],
                                         stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
            self.version = json.loads(self.proc.stdout.readline())["ready"]
        except Exception as e:             # noqa: BLE001 (optional column)
            print(f"(PyTorch worker did not start: {e!r}; no PyTorch column)")
            self.close()

    def time(self, name, B, n_in, H, T, dtype, repeats):
        if self.proc is None:
            return None
        try:
            self.proc.stdin.write(json.dumps([name, B, n_in, H, T, dtype, repeats]) + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())["time"]
        except Exception as e:             # noqa: BLE001
            print(f"(PyTorch worker failed: {e!r}; no further PyTorch figures)")
            self.close()
            return None

    def close(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except Exception:              # noqa: BLE001
                self.proc.kill()
            self.proc = None


def torch_available():
    import importlib.util
    return importlib.util.find_spec("torch") is not None


# ---------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 repeats, skip the PyTorch float32 runs")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="BLAS threads in revtrain calls (default: the library default, "
                         "rt.get_blas_threads())")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    ap.add_argument("--models", default="LSTM,GRU,RNN,MDRNN",
                    help="comma-separated subset of LSTM,GRU,RNN,MDRNN")
    ap.add_argument("--torch-threads", type=int, default=2,
                    help="torch.set_num_threads in the PyTorch process (default 2)")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.torch_worker:
        torch_worker(args.torch_threads)
        return
    import revtrain as rt
    if args.blas_threads is not None and hasattr(rt, "set_blas_threads"):
        rt.set_blas_threads(args.blas_threads)
    repeats = 2 if args.quick else max(1, args.repeats)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    threads = rt.get_blas_threads() if hasattr(rt, "get_blas_threads") else "default"
    print(f"load average before: {os.getloadavg()}; cpus: {os.cpu_count()}; "
          f"revtrain BLAS threads: {threads}; repeats: {repeats} (median)")

    skipped = [m for m in models if m in ("LSTM", "GRU", "RNN", "MDRNN") and getattr(rt, m, None) is None]
    torch_col = None
    dtypes = ("float64",) if args.quick else ("float64", "float32")
    if not args.no_torch:
        if torch_available():
            torch_col = TorchColumn(args.torch_threads)
            if torch_col.proc is not None:
                print(f"PyTorch {torch_col.version}, torch.set_num_threads({args.torch_threads}), "
                      "separate process")
        else:
            print("(torch not importable: no PyTorch column)")
    try:
        seq = [r for m in models if m in ("LSTM", "GRU", "RNN")
               for r in bench_sequence(rt, m, repeats, torch_col, dtypes)]
    finally:
        if torch_col is not None:
            torch_col.close()

    print("\n## Forward + backward, softmax cross-entropy at every step, float64 (ms, median)\n")
    print("| model | B | n_in | H | T | revtrain standard | revtrain checkpoint | "
          "torch f64 | torch f32 | torch f64 / revtrain |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in seq:
        t64, t32 = r.get("torch_float64"), r.get("torch_float32")
        ratio = "—" if t64 is None else f"{t64 / r['standard']:.2f}x"
        print(f"| {r['model']} | {r['B']} | {r['n_in']} | {r['H']} | {r['T']} | "
              f"{_fmt_ms(r['standard'])} | {_fmt_ms(r['checkpoint'])} | {_fmt_ms(t64)} | "
              f"{_fmt_ms(t32)} | {ratio} |")

    for B in (GRID_BATCHES if "MDRNN" in models else ()):
        md = bench_mdrnn(rt, repeats, B)
        if md:
            g = GRID
            print(f"\n## MDRNN {g['rows']}x{g['cols']} grid, B={B}, n_in={g['n_in']}, "
                  f"H={g['H']}, label of the last cell (ms, median)\n")
            print("| order | fwd+bwd | raster / this |")
            print("|---|---|---|")
            tr = {r["order"]: r["time"] for r in md}
            for r in md:
                rel = "—" if "raster" not in tr else f"{tr['raster'] / r['time']:.1f}x"
                print(f"| {r['order']} | {_fmt_ms(r['time'])} | {rel} |")

    mem = [r for m in models if m in ("LSTM", "GRU", "RNN") for r in bench_memory(rt, m, repeats)]
    if mem:
        B, n_in, H, T = MEMORY_CONFIG
        print(f"\n## Memory, B={B}, n_in={n_in}, H={H}, T={T} (checkpoint every "
              f"ceil(sqrt(T)) = {int(np.ceil(np.sqrt(T)))} steps)\n")
        print("| model | BPTT | stored MB | tracemalloc peak MB | time ms | stored / standard | "
              "time / standard |")
        print("|---|---|---|---|---|---|---|")
        std = {r["model"]: r for r in mem if r["mode"] == "standard"}
        for r in mem:
            s = std[r["model"]]
            print(f"| {r['model']} | {r['mode']} | {_fmt_mb(r['stored'])} | {_fmt_mb(r['peak'])} | "
                  f"{_fmt_ms(r['time'])} | {r['stored'] / s['stored']:.3f} | "
                  f"{r['time'] / s['time']:.2f} |")
    if skipped:
        print(f"\n(skipped, not in revtrain: {', '.join(skipped)})")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
