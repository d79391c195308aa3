"""Memory and time of reversible BPTT against stored and checkpointed BPTT.

For each sequence length T (default 100, 300, 1000, 3000, 10000; B=32, H=256,
token input and per-step softmax targets over a vocabulary of 64) and each
configuration

* LSTM and GRU, standard (stored) BPTT, and LSTM checkpointed (segments of
  ceil(sqrt(T)) steps) -- skipped when the class is not in this install;
* RevLSTM, RevGRU and MomentumRNN, reversible BPTT;
* the same three reversible cells with ``bptt="standard"`` (stored fixed-point
  states: the time reference for reversible BPTT);

one ``loss_and_grad`` call is measured:

* ``stored``: the library's accounting of what the backward pass keeps
  (``stats.stored_bytes``; reversible: buffer + running state);
* ``buffer``: bytes held by the information buffer, and ``held/info`` = its
  bits over the information the forward pass destroyed (``stats.info_bits``);
* ``peak``: tracemalloc peak during the call, minus what was allocated before
  (NumPy reports its buffers to tracemalloc; Numba-internal allocations are
  not seen);
* ``time``: wall time of an untraced call (best of up to 3 while they take
  under 2 s together; after a warm-up call on a short sequence); for T above
  ``--untraced-max`` only the traced call is made and its time is reported
  (marked ``*``; tracemalloc adds a few percent).

With ``--paired REPS`` the reversible / standard time ratio of each reversible
cell is also measured by alternating the two calls (best of REPS each), which
is robust to the load changing on a shared machine; the targets then use it.

With ``--isolate`` each configuration runs in a fresh Python process (as in
``report.py``) and its ``RSS peak`` is measured too: memory-profiler's peak
resident size during one extra call, minus the size just before it
(``revtrain.profile.rss_peak_of``); the table then gains an RSS column.

``--layers 1 2 3`` also measures stacked models (``n_layers``; MDRNN-type
classes do not stack and are skipped above one layer); rows of each depth are
compared with the same depth. For depths above 1 the deep-model targets are
checked (PASS/FAIL lines) at T=1000, or the largest T measured for both sides:
RevLSTM reversible stores <= 1/150 of LSTM standard's bytes, its tracemalloc
peak is <= 1/50 of LSTM standard's, and it takes <= 1.3x the time of RevLSTM
with ``bptt="standard"`` (the ``--paired`` ratio when measured).

Stored-state configurations are skipped above ``--max-standard-T`` (default
1000: LSTM standard would keep ~1.4 GB at T=3000). Results accumulate in
``<out>/bench_reversible.json`` (so long lengths can be run separately, e.g.
``--T 10000 --models RevLSTM``); the markdown table ``bench_reversible.md``
and the log-log plot ``bench_reversible.png`` are written from every stored
row with the same B, H and vocabulary. Nothing under profiling/results/ is
committed.

The machine may be shared: compare times measured in the same run.

Usage:
    python profiling/bench_reversible.py                 # full (long: T=10000 takes minutes)
    python profiling/bench_reversible.py --quick         # T = 30 100 300, B=8, H=64
    python profiling/bench_reversible.py --T 100 300 1000 --paired 3
    python profiling/bench_reversible.py --T 3000 10000 --models RevLSTM,RevGRU,MomentumRNN
    python profiling/bench_reversible.py --T 1000 --layers 2 3 --models LSTM,RevLSTM \
        --isolate --paired 3                             # stacked rows and their targets
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np

import revtrain as rt

#: (class name, BPTT mode) in report order.
CONFIGS = (
    ("LSTM", "standard"),
    ("GRU", "standard"),
    ("LSTM", "checkpoint"),
    ("RevLSTM", "reversible"),
    ("RevGRU", "reversible"),
    ("MomentumRNN", "reversible"),
    ("RevLSTM", "standard"),
    ("RevGRU", "standard"),
    ("MomentumRNN", "standard"),
)
REVERSIBLE = ("RevLSTM", "RevGRU", "MomentumRNN")
#: Deep-model targets (issue 11), checked for n_layers > 1: stored-bytes and tracemalloc-peak
#: ratios of LSTM standard to RevLSTM reversible (at least), RevLSTM reversible / standard
#: time (at most).
DEEP_STORED_RATIO, DEEP_PEAK_RATIO, DEEP_TIME_RATIO = 150, 50, 1.3


def make_model(cls, vocab, H, n_layers=1):
    kw = {} if n_layers == 1 else {"n_layers": n_layers}
    return getattr(rt, cls)(vocab, H, vocab, **kw)


def stackable(cls):
    return bool(getattr(getattr(rt, cls), "stackable", False))


def layers_of(r):
    """n_layers of a stored row (rows stored before --layers existed have one layer)."""
    return r.get("layers", 1)


def problem(T, B, vocab, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, (T, B)), rng.integers(0, vocab, (T, B))


def measure(cls, mode, T, B, H, vocab, seed, untraced, n_layers=1, rss=False):
    """One configuration: stats, tracemalloc peak and time of one ``loss_and_grad`` call.

    With ``rss`` also memory-profiler's RSS peak of one more call (measured first;
    meaningful in a fresh process, see :func:`measure_isolated`).
    """
    model = make_model(cls, vocab, H, n_layers)
    theta = model.init_params(seed=seed)
    xw, yw = problem(min(T, 5), B, vocab, seed + 1)
    model.loss_and_grad(theta, xw, yw, bptt=mode)          # compile / load the cache
    x, y = problem(T, B, vocab, seed)

    def call():
        return model.loss_and_grad(theta, x, y, bptt=mode, return_stats=True)

    rss_peak = None
    if rss:
        from revtrain.profile import rss_peak_of
        rss_peak = rss_peak_of(call)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    loss, _, st = call()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    traced_time = True
    if untraced:
        # best of a few untraced calls (up to 3, while they take < 2 s together)
        times = []
        while len(times) < 3 and sum(times) < 2.0:
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        seconds = min(times)
        traced_time = False
    r = dict(model=cls, mode=mode, T=T, B=B, H=H, vocab=vocab, stored=int(st.stored_bytes),
             buffer=int(st.buffer_bytes), info_bits=float(st.info_bits), peak=int(peak),
             seconds=seconds, traced_time=traced_time, loss=float(loss))
    if n_layers != 1:
        r["layers"] = int(n_layers)
    if rss_peak is not None:
        r["rss"] = float(rss_peak)
    return r


def measure_isolated(cls, mode, T, B, H, vocab, seed, untraced, n_layers=1):
    """:func:`measure` with the RSS peak, in a fresh Python process (this script's ``--one``)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", cls, mode, str(T),
           "--batch", str(B), "--hidden", str(H), "--vocab", str(vocab), "--seed", str(seed),
           "--layers", str(n_layers)] + ([] if untraced else ["--traced-only"])
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{cls} {mode} T={T} n_layers={n_layers} failed in its process:\n"
                           f"{res.stderr[-2000:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    if "failed" in r:
        raise FloatingPointError(r["failed"])
    return r


def paired_times(cls, T, B, H, vocab, seed, reps, n_layers=1):
    """Reversible and standard BPTT of one reversible model, called alternately ``reps`` times.

    On a shared machine the load changes between configurations measured one
    after the other; alternating the two calls and keeping the best of each
    gives a fairer ratio; the process CPU time (BLAS runs single-threaded
    inside revtrain calls) is the least sensitive to other processes. Returns
    best wall and CPU seconds: ``(rev_wall, std_wall, rev_cpu, std_cpu)``.
    """
    model = make_model(cls, vocab, H, n_layers)
    theta = model.init_params(seed=seed)
    x, y = problem(T, B, vocab, seed)
    xw, yw = problem(min(T, 5), B, vocab, seed + 1)
    modes = ("reversible", "standard")
    wall = {m: math.inf for m in modes}
    cpu = {m: math.inf for m in modes}
    for mode in modes:
        model.loss_and_grad(theta, xw, yw, bptt=mode)
    for _ in range(reps):
        for mode in modes:
            t0, c0 = time.perf_counter(), time.process_time()
            model.loss_and_grad(theta, x, y, bptt=mode)
            cpu[mode] = min(cpu[mode], time.process_time() - c0)
            wall[mode] = min(wall[mode], time.perf_counter() - t0)
    return wall["reversible"], wall["standard"], cpu["reversible"], cpu["standard"]


def _key(r):
    return (r["model"], r["mode"], r["T"], r["B"], r["H"], r["vocab"], layers_of(r))


def load(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return []


def save(path, rows):
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)


def _mib(b):
    return f"{b / 2**20:.3f}" if b else "0"


def model_name(r):
    n = layers_of(r)
    return r["model"] if n == 1 else f"{r['model']} ({n} layers)"


def table(rows):
    """Markdown table, depth by depth; an RSS column when some row has an RSS peak (--isolate)."""
    order = {c: i for i, c in enumerate(CONFIGS)}
    rows = sorted(rows, key=lambda r: (layers_of(r), order.get((r["model"], r["mode"]), 99),
                                       r["T"]))
    with_rss = any("rss" in r for r in rows if r["mode"] != "paired")
    rss_head, rss_rule = ("RSS peak MiB | ", "---:|") if with_rss else ("", "")
    out = ["| model | BPTT | T | stored MiB | buffer MiB | tracemalloc peak MiB | " + rss_head +
           "time s | held bits / info bits | info bits per unit-step |",
           "|---|---|---:|---:|---:|---:|" + rss_rule + "---:|---:|---:|"]
    for r in rows:
        if r["mode"] == "paired":
            continue
        held = f"{8 * r['buffer'] / r['info_bits']:.4f}" if r["buffer"] and r["info_bits"] else "-"
        per = "-"
        if r["info_bits"]:
            units = make_model(r["model"], r["vocab"], r["H"]).forget_units * layers_of(r)
            per = f"{r['info_bits'] / (r['T'] * r['B'] * units):.3f}"
        t = f"{r['seconds']:.2f}" + ("*" if r["traced_time"] else "")
        rss = (f"{r['rss'] / 2**20:.3f} | " if "rss" in r else "- | ") if with_rss else ""
        out.append(f"| {model_name(r)} | {r['mode']} | {r['T']} | {_mib(r['stored'])} | "
                   f"{_mib(r['buffer'])} | {_mib(r['peak'])} | {rss}{t} | {held} | {per} |")
    return "\n".join(out)


def targets(rows, B):
    """The issue's targets, checked at T=1000 (or the largest T where both sides were measured).

    One-layer rows give the original targets (met / NOT met); deeper rows add
    :func:`deep_targets` (PASS/FAIL, with the buffer bound per depth).
    """
    lines = targets_one_layer([r for r in rows if layers_of(r) == 1], B)
    deep = deep_targets(rows)
    return "\n".join(([lines] if lines else []) + deep)


def targets_one_layer(rows, B):
    if not rows:
        return ""
    by = {(r["model"], r["mode"], r["T"]): r for r in rows}
    lines = []
    Ts = sorted({r["T"] for r in rows})
    both = [T for T in Ts if ("RevLSTM", "reversible", T) in by and ("LSTM", "standard", T) in by]
    if both:
        T = 1000 if 1000 in both else both[-1]
        a, b = by[("RevLSTM", "reversible", T)], by[("LSTM", "standard", T)]
        rs, rp = b["stored"] / a["stored"], b["peak"] / a["peak"]
        lines.append(f"- T={T}: RevLSTM reversible stored bytes = 1/{rs:.0f} of LSTM standard's "
                     f"(target <= 1/50: {'met' if rs >= 50 else 'NOT met'}); tracemalloc peak "
                     f"= 1/{rp:.0f} (target <= 1/20: {'met' if rp >= 20 else 'NOT met'})")
    else:
        lines.append("- RevLSTM vs LSTM standard: not measured at a common T (rt.LSTM missing?)")
    worst = None
    for r in rows:
        if r["mode"] == "reversible" and r["info_bits"] > 0:
            excess = (r["buffer"] - 12 * r["B"]) * 8 / r["info_bits"]
            if worst is None or excess > worst[0]:
                worst = (excess, r)
    if worst:
        e, r = worst
        lines.append(f"- buffer bytes <= 1.02 x info_bits/8 + 12 bytes per stream (8-byte rANS "
                     f"state + a partial word): worst (buffer - 12*B) / (info_bits/8) = {e:.4f} "
                     f"({r['model']} T={r['T']}) -> {'met' if e <= 1.02 else 'NOT met'}")
    for cls in REVERSIBLE:
        paired = [T for T in Ts if (cls, "paired", T) in by]
        if paired:
            ratios = [by[(cls, "paired", T)]["rev_cpu"] / by[(cls, "paired", T)]["std_cpu"]
                      for T in paired]
            walls = [by[(cls, "paired", T)]["rev_s"] / by[(cls, "paired", T)]["std_s"]
                     for T in paired]
            how = ("CPU time of alternating calls, best of each (wall-time ratios: "
                   + ", ".join(f"{w:.2f}" for w in walls) + ")")
            common = paired
        else:
            common = [T for T in Ts if (cls, "reversible", T) in by
                      and (cls, "standard", T) in by]
            if not common:
                continue
            ratios = [by[(cls, "reversible", T)]["seconds"] / by[(cls, "standard", T)]["seconds"]
                      for T in common]
            how = "from the table (separate calls)"
        lines.append(f"- {cls}: reversible / standard BPTT time, {how} = "
                     + ", ".join(f"{q:.2f} (T={T})" for q, T in zip(ratios, common))
                     + f" (target <= 1.5: {'met' if max(ratios) <= 1.5 else 'NOT met'})")
    return "\n".join(lines)


def _verdict(ok):
    return "PASS" if ok else "FAIL"


def deep_targets(rows):
    """PASS/FAIL lines of the deep-model targets for each depth above 1 (a list of str)."""
    by = {(r["model"], r["mode"], r["T"], layers_of(r)): r for r in rows}
    lines = []
    for n in sorted({layers_of(r) for r in rows if layers_of(r) > 1}):
        def common(a, b):
            Ts = sorted(T for (m, mo, T, k) in by if (m, mo) == a and k == n
                        and (b[0], b[1], T, n) in by)
            return (1000 if 1000 in Ts else Ts[-1]) if Ts else None

        def where(T):
            return f"{n} layers, T={T}" + ("" if T == 1000 else "; the targets are stated at T=1000")

        T = common(("RevLSTM", "reversible"), ("LSTM", "standard"))
        if T is None:
            lines.append(f"- NOT CHECKED ({n} layers): RevLSTM reversible and LSTM standard "
                         f"were not both measured")
        else:
            a, b = by[("RevLSTM", "reversible", T, n)], by[("LSTM", "standard", T, n)]
            rs, rp = b["stored"] / max(a["stored"], 1), b["peak"] / max(a["peak"], 1)
            lines.append(f"- {_verdict(rs >= DEEP_STORED_RATIO)} ({where(T)}): RevLSTM reversible "
                         f"stored bytes = 1/{rs:.0f} of LSTM standard's "
                         f"(target <= 1/{DEEP_STORED_RATIO})")
            lines.append(f"- {_verdict(rp >= DEEP_PEAK_RATIO)} ({where(T)}): RevLSTM reversible "
                         f"tracemalloc peak = 1/{rp:.0f} of LSTM standard's "
                         f"(target <= 1/{DEEP_PEAK_RATIO})")
            if "rss" in a and "rss" in b and a["rss"] > 0:
                lines.append(f"  (RSS peak: 1/{b['rss'] / a['rss']:.0f} of LSTM standard's; "
                             f"no target)")
        Tp = sorted(T for (m, mo, T, k) in by if (m, mo, k) == ("RevLSTM", "paired", n))
        if Tp:
            T = 1000 if 1000 in Tp else Tp[-1]
            r = by[("RevLSTM", "paired", T, n)]
            q = r["rev_cpu"] / r["std_cpu"]
            how = (f"CPU time of alternating calls, best of each: {r['rev_cpu']:.2f} s / "
                   f"{r['std_cpu']:.2f} s; wall-time ratio {r['rev_s'] / r['std_s']:.2f}")
        else:
            T = common(("RevLSTM", "reversible"), ("RevLSTM", "standard"))
            if T is not None:
                a, b = by[("RevLSTM", "reversible", T, n)], by[("RevLSTM", "standard", T, n)]
                q = a["seconds"] / b["seconds"]
                how = (f"from the table (separate calls): {a['seconds']:.2f} s / "
                       f"{b['seconds']:.2f} s")
        if not Tp and T is None:
            lines.append(f"- NOT CHECKED ({n} layers): RevLSTM reversible and RevLSTM standard "
                         f"were not both measured")
        else:
            lines.append(f"- {_verdict(q <= DEEP_TIME_RATIO)} ({where(T)}): RevLSTM reversible "
                         f"time = {q:.2f}x RevLSTM standard's ({how}; target <= "
                         f"{DEEP_TIME_RATIO}x)")
        # one information buffer per layer: 12 bytes per stream and layer on top of the data
        revs = [r for r in rows if layers_of(r) == n and r["mode"] == "reversible"
                and r["info_bits"] > 0 and r["buffer"]]
        if revs:
            def excess(r):
                return (r["buffer"] - 12 * r["B"] * n) * 8 / r["info_bits"]
            r = max(revs, key=excess)
            e = excess(r)
            lines.append(f"- {_verdict(e <= 1.02)} ({n} layers): buffer bytes <= 1.02 x "
                         f"info_bits/8 + 12 bytes per stream and layer: worst "
                         f"(buffer - 12*B*{n}) / (info_bits/8) = {e:.4f} ({r['model']} T={r['T']})")
    return lines


def plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, name in ((axes[0], "stored", "stored bytes (library accounting)"),
                          (axes[1], "peak", "tracemalloc peak")):
        for n in sorted({layers_of(r) for r in rows}):
            for cls, mode in CONFIGS:
                rs = sorted((r for r in rows if r["model"] == cls and r["mode"] == mode
                             and layers_of(r) == n), key=lambda r: r["T"])
                if rs:
                    deep = f" ({n} layers)" if n > 1 else ""
                    ax.loglog([r["T"] for r in rs], [r[key] / 2**20 for r in rs], marker="o",
                              label=f"{cls} {mode}{deep}", ls="--" if mode == "standard"
                              and cls in REVERSIBLE else "-")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("MiB")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="T = 30 100 300, B=8, H=64")
    p.add_argument("--T", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--models", default=None,
                   help="comma-separated class names to run (default: all available)")
    p.add_argument("--max-standard-T", type=int, default=1000,
                   help="skip stored-state BPTT above this T (memory)")
    p.add_argument("--untraced-max", type=int, default=1000,
                   help="above this T, time only the traced call")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--fresh", action="store_true", help="ignore earlier stored rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--paired", type=int, default=0, metavar="REPS",
                   help="also time reversible vs standard BPTT of each reversible model by "
                        "alternating calls, REPS times each (T <= --max-standard-T)")
    p.add_argument("--layers", type=int, nargs="+", default=[1], metavar="N",
                   help="model depths n_layers to measure (default: 1), e.g. --layers 1 2 3; "
                        "classes that do not stack are measured with one layer only")
    p.add_argument("--isolate", action="store_true",
                   help="measure each configuration in a fresh process, with its RSS peak "
                        "(memory-profiler)")
    p.add_argument("--one", nargs=3, metavar=("CLASS", "MODE", "T"), help=argparse.SUPPRESS)
    p.add_argument("--traced-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if min(a.layers) < 1:
        p.error(f"--layers: depths must be >= 1, got {a.layers}")
    if a.one:       # one configuration in this (fresh) process, for --isolate: JSON on stdout
        cls, mode, T = a.one
        try:
            r = measure(cls, mode, int(T), a.batch or 32, a.hidden or 256, a.vocab, a.seed,
                        not a.traced_only, a.layers[0], rss=True)
        except FloatingPointError as e:
            r = {"failed": str(e)}
        print(json.dumps(r))
        return
    Ts = a.T or ([30, 100, 300] if a.quick else [100, 300, 1000, 3000, 10000])
    B = a.batch or (8 if a.quick else 32)
    H = a.hidden or (64 if a.quick else 256)
    names = set(a.models.split(",")) if a.models else None
    os.makedirs(a.out, exist_ok=True)
    store = os.path.join(a.out, "bench_reversible.json")
    rows = [] if a.fresh else load(store)
    skipped, failed = [], []
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    depths = list(dict.fromkeys(a.layers))
    for T in sorted(Ts):
        for n in depths:
            deep = f" ({n} layers)" if n > 1 else ""
            tag = f"L={n} " if depths != [1] else ""
            for cls, mode in CONFIGS:
                if names and cls not in names:
                    continue
                if not hasattr(rt, cls):
                    skipped.append(f"{cls} (not in this install)")
                    continue
                if n > 1 and not stackable(cls):
                    skipped.append(f"{cls} with {n} layers (does not stack)")
                    continue
                if mode == "standard" and T > a.max_standard_T:
                    skipped.append(f"{cls}{deep} standard T={T} (above --max-standard-T)")
                    continue
                try:
                    if a.isolate:
                        r = measure_isolated(cls, mode, T, B, H, a.vocab, a.seed,
                                             T <= a.untraced_max, n)
                    else:
                        r = measure(cls, mode, T, B, H, a.vocab, a.seed, T <= a.untraced_max, n)
                except FloatingPointError as e:
                    print(f"{tag}{cls:12s} {mode:10s} T={T:6d} FAILED: {e}", flush=True)
                    failed.append(f"{cls}{deep} {mode} T={T}: {e}")
                    continue
                rss = f" rss={r['rss'] / 2**20:9.3f} MiB" if "rss" in r else ""
                print(f"{tag}{cls:12s} {mode:10s} T={T:6d} stored={r['stored'] / 2**20:9.3f} MiB "
                      f"peak={r['peak'] / 2**20:9.3f} MiB{rss} time={r['seconds']:8.2f} s",
                      flush=True)
                rows = [q for q in rows if _key(q) != _key(r)] + [r]
                save(store, rows)
            if a.paired and T <= a.max_standard_T:
                for cls in REVERSIBLE:
                    if (names and cls not in names) or not hasattr(rt, cls):
                        continue
                    if n > 1 and not stackable(cls):
                        continue
                    rev_s, std_s, rev_c, std_c = paired_times(cls, T, B, H, a.vocab, a.seed,
                                                              a.paired, n)
                    print(f"{tag}{cls:12s} paired     T={T:6d} wall: reversible {rev_s:.2f} s, "
                          f"standard {std_s:.2f} s (ratio {rev_s / std_s:.2f}); CPU: "
                          f"{rev_c:.2f} s, {std_c:.2f} s (ratio {rev_c / std_c:.2f})", flush=True)
                    r = dict(model=cls, mode="paired", T=T, B=B, H=H, vocab=a.vocab, rev_s=rev_s,
                             std_s=std_s, rev_cpu=rev_c, std_cpu=std_c)
                    if n != 1:
                        r["layers"] = n
                    rows = [q for q in rows if _key(q) != _key(r)] + [r]
                    save(store, rows)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    mine = [r for r in rows if (r["B"], r["H"], r["vocab"]) == (B, H, a.vocab)]
    head = (f"Reversible vs stored vs checkpointed BPTT: B={B}, H={H}, token input and "
            f"per-step softmax over {a.vocab} symbols; one loss_and_grad call each "
            f"(times marked * were measured under tracemalloc).")
    text = head + "\n\n" + table(mine) + "\n\nTargets:\n" + targets(mine, B) + "\n"
    if skipped:
        text += "\nSkipped in the last run: " + "; ".join(dict.fromkeys(skipped)) + "\n"
    if failed:
        text += "\nFailed in the last run: " + "; ".join(failed) + "\n"
    print("\n" + text)
    with open(os.path.join(a.out, "bench_reversible.md"), "w") as f:
        f.write(text)
    plot(mine, os.path.join(a.out, "bench_reversible.png"),
         f"BPTT memory vs T (B={B}, H={H}, vocab {a.vocab})")
    print(f"wrote {a.out}/bench_reversible.md, bench_reversible.png, bench_reversible.json")


if __name__ == "__main__":
    main()
