"""Memory and time of standard, checkpointed and reversible BPTT across sequence lengths.

Each configuration (a model and a BPTT mode) runs one ``loss_and_grad`` call
on random token sequences (time-major ``(T, B)`` ids, per-step labels; grid
models get an ``n x n`` grid with ``n = round(sqrt(T))``, so ``T`` counts cells) and is
measured three ways:

* ``stored_bytes``: the library's own accounting of what the backward pass
  keeps (states and gates, checkpoints, or the kept state plus the
  information buffer);
* ``tracemalloc peak``: the largest amount of memory allocated through
  Python's allocators (NumPy arrays included) during the call, minus what
  was allocated before it;
* optionally ``RSS peak``: memory-profiler's ``memory_usage`` peak of the
  process during the call, minus the resident size just before it (run each
  configuration in a fresh process with ``isolate=True`` for clean figures);

and the wall time of the call (after one warm-up call that compiles).

Stacked models (``n_layers > 1``, for the classes that stack) are measured
with ``layers=(1, 2, 3)``; their rows carry ``layers`` and are compared with
the same depth. The reversible cells' ``bptt="standard"`` (stored fixed-point
states: the time reference of reversible BPTT) are in :data:`REFERENCE_CONFIGS`,
measured when named by label (``"RevLSTM standard"``) or with ``references=True``.

Run it as ``revtrain profile`` or ``python -m revtrain.profile``.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc
from typing import NamedTuple

import numpy as np

#: (label, class name, bptt mode) in the order they are reported.
CONFIGS = (
    ("RNN standard", "RNN", "standard"),
    ("RNN checkpoint", "RNN", "checkpoint"),
    ("LSTM standard", "LSTM", "standard"),
    ("LSTM checkpoint", "LSTM", "checkpoint"),
    ("GRU standard", "GRU", "standard"),
    ("GRU checkpoint", "GRU", "checkpoint"),
    ("MomentumRNN reversible", "MomentumRNN", "reversible"),
    ("RevLSTM reversible", "RevLSTM", "reversible"),
    ("RevGRU reversible", "RevGRU", "reversible"),
    ("MDRNN standard", "MDRNN", "standard"),
    ("RevMDRNN reversible", "RevMDRNN", "reversible"),
)

#: Reversible cells with stored fixed-point states (``bptt="standard"``): the time
#: reference of reversible BPTT. Measured only when named by label or asked for.
REFERENCE_CONFIGS = (
    ("RevLSTM standard", "RevLSTM", "standard"),
    ("RevGRU standard", "RevGRU", "standard"),
    ("MomentumRNN standard", "MomentumRNN", "standard"),
    ("RevMDRNN standard", "RevMDRNN", "standard"),
)


class ProfileRow(NamedTuple):
    label: str
    T: int
    batch: int
    hidden: int
    stored_bytes: int
    buffer_bytes: int
    info_bits: float
    tracemalloc_peak: int
    rss_peak: float          # bytes, NaN when not measured
    seconds: float
    loss: float
    layers: int = 1          # n_layers of the model


def row_name(r):
    """The row's label, with the depth when the model has more than one layer."""
    return r.label if r.layers == 1 else f"{r.label}, {r.layers} layers"


def unknown_names(names):
    """The entries of ``names`` that match no configuration label or model class (a list)."""
    known = {s.lower() for label, cls, _ in CONFIGS + REFERENCE_CONFIGS for s in (label, cls)}
    return [n for n in (names or ()) if n.lower() not in known]


def available_configs(names=None, references=False):
    """The configurations whose model classes exist in this install (optionally filtered by label or class).

    :data:`REFERENCE_CONFIGS` (reversible cells with ``bptt="standard"``) are
    included when named by their label, or with ``references=True`` for the
    classes selected; they follow the configuration list.
    """
    import revtrain as rt
    wanted = [n.lower() for n in names or ()]
    out = []
    for label, cls, mode in CONFIGS:
        if not hasattr(rt, cls):
            continue
        if wanted and not (label.lower() in wanted or cls.lower() in wanted):
            continue
        out.append((label, cls, mode))
    for label, cls, mode in REFERENCE_CONFIGS:
        if not hasattr(rt, cls):
            continue
        if label.lower() in wanted or (references and (not wanted or cls.lower() in wanted)):
            out.append((label, cls, mode))
    return out


def stackable(cls_name):
    """Whether model class ``cls_name`` takes ``n_layers > 1``."""
    import revtrain as rt
    return bool(getattr(getattr(rt, cls_name), "stackable", False))


def rss_peak_of(call):
    """memory-profiler's peak resident size while ``call()`` runs, minus the size just before (bytes).

    Sampled every 5 ms (short spikes can be missed); run it in a fresh process
    for clean figures. ``call`` is called once; its result is dropped.
    """
    from memory_profiler import memory_usage
    base = memory_usage(-1, interval=0.01, timeout=0.05, max_usage=True)
    peak = memory_usage((call, (), {}), interval=0.005, max_usage=True)
    return max(0.0, (peak - base) * 2**20)


def _problem(T, B, vocab, seed, grid=False):
    """Random token ids and per-step labels: ``(T, B)``, or ``(n, n, B)`` with ``n = round(sqrt(T))``."""
    rng = np.random.default_rng(seed)
    lead = (max(1, int(round(np.sqrt(T)))),) * 2 if grid else (T,)
    x = rng.integers(0, vocab, size=lead + (B,))
    y = rng.integers(0, vocab, size=lead + (B,))
    return x, y


def measure_one(cls_name, mode, T, batch=32, hidden=256, vocab=64, seed=0, rss=False,
                n_layers=1):
    """Measure one configuration in this process; returns a dict of :class:`ProfileRow` fields."""
    import revtrain as rt
    kw = {} if n_layers == 1 else {"n_layers": n_layers}
    model = getattr(rt, cls_name)(vocab, hidden, vocab, **kw)
    theta = model.init_params(seed=seed)
    grid = model.n_lead == 2
    x, y = _problem(T, batch, vocab, seed, grid)
    xw, yw = _problem(min(T, 9), batch, vocab, seed + 1, grid)
    T = int(np.prod(x.shape[:-1]))          # cells of a grid
    model.loss_and_grad(theta, xw, yw, bptt=mode)            # compile / load the cache

    def call():
        return model.loss_and_grad(theta, x, y, bptt=mode, return_stats=True)

    rss_peak = rss_peak_of(call) if rss else float("nan")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    loss, _, stats = call()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    # time again without tracemalloc's overhead; keep the faster
    t0 = time.perf_counter()
    call()
    seconds = min(seconds, time.perf_counter() - t0)
    return dict(T=T, batch=batch, hidden=hidden, stored_bytes=int(stats.stored_bytes),
                buffer_bytes=int(stats.buffer_bytes), info_bits=float(stats.info_bits),
                tracemalloc_peak=int(peak), rss_peak=rss_peak, seconds=seconds, loss=loss,
                layers=int(n_layers))


def _measure_isolated(cls_name, mode, T, batch, hidden, vocab, seed, rss, n_layers=1):
    cmd = [sys.executable, "-m", "revtrain.profile", "--one", cls_name, mode, str(T),
           "--batch", str(batch), "--hidden", str(hidden), "--vocab", str(vocab),
           "--seed", str(seed), "--layers", str(n_layers)] + (["--rss"] if rss else [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        deep = f" n_layers={n_layers}" if n_layers != 1 else ""
        raise RuntimeError(f"profiling {cls_name} {mode} T={T}{deep} failed:\n"
                           f"{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def profile_bptt(lengths=(100, 300, 1000), batch=32, hidden=256, vocab=64, names=None,
                 seed=0, rss=False, isolate=False, max_seconds=None, progress=True,
                 layers=(1,), references=False):
    """Measure every available configuration at every sequence length.

    Parameters
    ----------
    lengths : sequence of int
        Sequence lengths ``T``.
    batch, hidden, vocab : int
        ``B``, ``H`` and the vocabulary (token inputs, per-step softmax targets).
    names : sequence of str, optional
        Restrict to these labels or class names (e.g. ``["LSTM", "RevLSTM"]``).
    rss : bool
        Also measure the RSS peak with memory-profiler.
    isolate : bool
        Run each measurement in a fresh Python process.
    max_seconds : float, optional
        Skip longer lengths of a configuration once one call took longer than this.
    progress : bool
        Show a tqdm progress bar.
    layers : sequence of int
        Model depths ``n_layers``; depths above 1 skip the classes that do not
        stack (MDRNN, RevMDRNN). Rows come depth by depth.
    references : bool
        Also measure the selected reversible cells with ``bptt="standard"``
        (:data:`REFERENCE_CONFIGS`; they can also be named by label).

    Returns
    -------
    rows : list of ProfileRow
    """
    from tqdm.auto import tqdm
    bad = unknown_names(names)
    if bad:
        raise ValueError(f"names: no configuration called {', '.join(map(repr, bad))}; "
                         f"choose model classes ({', '.join(dict.fromkeys(c for _, c, _ in CONFIGS))})"
                         f" or labels such as {CONFIGS[0][0]!r}")
    depths = list(dict.fromkeys(int(n) for n in layers))
    if not depths or min(depths) < 1:
        raise ValueError(f"layers: depths must be integers >= 1, got {list(layers)!r}")
    configs = available_configs(names, references)
    jobs = [(c, T, n) for n in depths for c in configs for T in sorted(lengths)
            if n == 1 or stackable(c[1])]
    rows, slow = [], set()
    for (label, cls, mode), T, n in tqdm(jobs, disable=not progress, desc="profile",
                                         leave=False):
        if (label, n) in slow:
            continue
        if isolate:
            r = _measure_isolated(cls, mode, T, batch, hidden, vocab, seed, rss, n)
        else:
            r = measure_one(cls, mode, T, batch, hidden, vocab, seed, rss, n)
        rows.append(ProfileRow(label=label, **r))
        if max_seconds is not None and r["seconds"] > max_seconds:
            slow.add((label, n))
    return rows


def _mib(b):
    return f"{b / 2**20:.2f}" if np.isfinite(b) else "-"


def format_table(rows):
    """A markdown table of the rows, with stored bytes relative to LSTM standard BPTT at the same T and depth."""
    std = {}
    for r in rows:
        if r.label.endswith("standard"):
            std[(r.label.split()[0], r.T, r.layers)] = r
    lines = ["| model | T | stored MiB | tracemalloc peak MiB | RSS peak MiB | time s | "
             "stored vs LSTM standard | held bits / info bits |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = std.get(("LSTM", r.T, r.layers))
        ratio = f"1/{ref.stored_bytes / r.stored_bytes:.0f}" if ref and r.stored_bytes else "-"
        held = (f"{8 * r.buffer_bytes / r.info_bits:.4f}" if r.info_bits > 0 and r.buffer_bytes
                else "-")
        lines.append(f"| {row_name(r)} | {r.T} | {_mib(r.stored_bytes)} | {_mib(r.tracemalloc_peak)} | "
                     f"{_mib(r.rss_peak)} | {r.seconds:.3f} | {ratio} | {held} |")
    return "\n".join(lines)


def plot(rows, path, key="stored_bytes", title=None):
    """Log-log plot of a memory figure against T, one line per configuration; writes ``path``."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'revtrain[profile]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(row_name(r) for r in rows):
        rs = [r for r in rows if row_name(r) == label]
        ax.loglog([r.T for r in rs], [getattr(r, key) / 2**20 for r in rs], "o-", label=label)
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(f"{key.replace('_', ' ')} (MiB)")
    ax.set_title(title or f"memory for BPTT ({key.replace('_', ' ')})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_profile(lengths=(100, 300, 1000), batch=32, hidden=256, vocab=64, names=None,
                out_dir="profiling/results", rss=False, isolate=False, max_seconds=None,
                progress=True, stream=None, layers=(1,), references=False):
    """Profile, print the markdown table, write ``bptt_memory.md`` and PNG plots to ``out_dir``.

    Returns the rows.
    """
    stream = sys.stdout if stream is None else stream
    rows = profile_bptt(lengths, batch, hidden, vocab, names, rss=rss, isolate=isolate,
                        max_seconds=max_seconds, progress=progress, layers=layers,
                        references=references)
    table = format_table(rows)
    head = (f"BPTT memory and time: B={batch}, H={hidden}, token input and per-step softmax "
            f"over a vocabulary of {vocab}; one loss_and_grad call each.")
    print(head + "\n\n" + table, file=stream)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "bptt_memory.md"), "w") as f:
            f.write(head + "\n\n" + table + "\n")
        try:
            plot(rows, os.path.join(out_dir, "bptt_stored_bytes.png"), "stored_bytes")
            plot(rows, os.path.join(out_dir, "bptt_tracemalloc_peak.png"), "tracemalloc_peak")
            print(f"\nwrote {out_dir}/bptt_memory.md and PNG plots", file=stream)
        except ImportError as e:
            print(f"\nwrote {out_dir}/bptt_memory.md; no plots ({e})", file=stream)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m revtrain.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", nargs=3, metavar=("CLASS", "MODE", "T"),
                   help="measure one configuration and print JSON (used for isolated runs)")
    p.add_argument("--lengths", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--layers", type=int, nargs="+", default=[1],
                   help="model depths n_layers (default 1); with --one, a single depth")
    p.add_argument("--with-standard", action="store_true",
                   help="also measure the reversible cells with bptt='standard'")
    p.add_argument("--rss", action="store_true")
    p.add_argument("--isolate", action="store_true")
    p.add_argument("--out", default="profiling/results")
    a = p.parse_args(argv)
    if a.one:
        cls, mode, T = a.one
        if len(a.layers) != 1:
            p.error("--one measures one depth: give one --layers value")
        r = measure_one(cls, mode, int(T), a.batch, a.hidden, a.vocab, a.seed, a.rss,
                        a.layers[0])
        print(json.dumps(r))
        return 0
    run_profile(a.lengths, a.batch, a.hidden, a.vocab, a.models, a.out, a.rss, a.isolate,
                layers=a.layers, references=a.with_standard)
    return 0


if __name__ == "__main__":
    sys.exit(main())
