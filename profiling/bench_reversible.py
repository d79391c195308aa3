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
"""
import argparse
import json
import math
import os
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


def problem(T, B, vocab, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, (T, B)), rng.integers(0, vocab, (T, B))


def measure(cls, mode, T, B, H, vocab, seed, untraced):
    """One configuration: stats, tracemalloc peak and time of one ``loss_and_grad`` call."""
    model = getattr(rt, cls)(vocab, H, vocab)
    theta = model.init_params(seed=seed)
    xw, yw = problem(min(T, 5), B, vocab, seed + 1)
    model.loss_and_grad(theta, xw, yw, bptt=mode)          # compile / load the cache
    x, y = problem(T, B, vocab, seed)

    def call():
        return model.loss_and_grad(theta, x, y, bptt=mode, return_stats=True)

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
    return dict(model=cls, mode=mode, T=T, B=B, H=H, vocab=vocab, stored=int(st.stored_bytes),
                buffer=int(st.buffer_bytes), info_bits=float(st.info_bits), peak=int(peak),
                seconds=seconds, traced_time=traced_time, loss=float(loss))


def paired_times(cls, T, B, H, vocab, seed, reps):
    """Reversible and standard BPTT of one reversible model, called alternately ``reps`` times.

    On a shared machine the load changes between configurations measured one
    after the other; alternating the two calls and keeping the best of each
    gives a fairer ratio; the process CPU time (BLAS runs single-threaded
    inside revtrain calls) is the least sensitive to other processes. Returns
    best wall and CPU seconds: ``(rev_wall, std_wall, rev_cpu, std_cpu)``.
    """
    model = getattr(rt, cls)(vocab, H, vocab)
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
    return (r["model"], r["mode"], r["T"], r["B"], r["H"], r["vocab"])


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


def table(rows):
    order = {c: i for i, c in enumerate(CONFIGS)}
    rows = sorted(rows, key=lambda r: (order.get((r["model"], r["mode"]), 99), r["T"]))
    out = ["| model | BPTT | T | stored MiB | buffer MiB | tracemalloc peak MiB | time s | "
           "held bits / info bits | info bits per unit-step |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["mode"] == "paired":
            continue
        held = f"{8 * r['buffer'] / r['info_bits']:.4f}" if r["buffer"] and r["info_bits"] else "-"
        per = "-"
        if r["info_bits"]:
            units = getattr(rt, r["model"])(r["vocab"], r["H"], r["vocab"]).forget_units
            per = f"{r['info_bits'] / (r['T'] * r['B'] * units):.3f}"
        t = f"{r['seconds']:.2f}" + ("*" if r["traced_time"] else "")
        out.append(f"| {r['model']} | {r['mode']} | {r['T']} | {_mib(r['stored'])} | "
                   f"{_mib(r['buffer'])} | {_mib(r['peak'])} | {t} | {held} | {per} |")
    return "\n".join(out)


def targets(rows, B):
    """The issue's targets, checked at T=1000 (or the largest T where both sides were measured)."""
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


def plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, name in ((axes[0], "stored", "stored bytes (library accounting)"),
                          (axes[1], "peak", "tracemalloc peak")):
        for cls, mode in CONFIGS:
            rs = sorted((r for r in rows if r["model"] == cls and r["mode"] == mode),
                        key=lambda r: r["T"])
            if rs:
                ax.loglog([r["T"] for r in rs], [r[key] / 2**20 for r in rs], marker="o",
                          label=f"{cls} {mode}", ls="--" if mode == "standard"
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
    a = p.parse_args(argv)
    Ts = a.T or ([30, 100, 300] if a.quick else [100, 300, 1000, 3000, 10000])
    B = a.batch or (8 if a.quick else 32)
    H = a.hidden or (64 if a.quick else 256)
    names = set(a.models.split(",")) if a.models else None
    os.makedirs(a.out, exist_ok=True)
    store = os.path.join(a.out, "bench_reversible.json")
    rows = [] if a.fresh else load(store)
    skipped, failed = [], []
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for T in sorted(Ts):
        for cls, mode in CONFIGS:
            if names and cls not in names:
                continue
            if not hasattr(rt, cls):
                skipped.append(f"{cls} (not in this install)")
                continue
            if mode == "standard" and T > a.max_standard_T:
                skipped.append(f"{cls} standard T={T} (above --max-standard-T)")
                continue
            try:
                r = measure(cls, mode, T, B, H, a.vocab, a.seed, T <= a.untraced_max)
            except FloatingPointError as e:
                print(f"{cls:12s} {mode:10s} T={T:6d} FAILED: {e}", flush=True)
                failed.append(f"{cls} {mode} T={T}: {e}")
                continue
            print(f"{cls:12s} {mode:10s} T={T:6d} stored={r['stored'] / 2**20:9.3f} MiB "
                  f"peak={r['peak'] / 2**20:9.3f} MiB time={r['seconds']:8.2f} s", flush=True)
            rows = [q for q in rows if _key(q) != _key(r)] + [r]
            save(store, rows)
        if a.paired and T <= a.max_standard_T:
            for cls in REVERSIBLE:
                if (names and cls not in names) or not hasattr(rt, cls):
                    continue
                rev_s, std_s, rev_c, std_c = paired_times(cls, T, B, H, a.vocab, a.seed,
                                                          a.paired)
                print(f"{cls:12s} paired     T={T:6d} wall: reversible {rev_s:.2f} s, standard "
                      f"{std_s:.2f} s (ratio {rev_s / std_s:.2f}); CPU: {rev_c:.2f} s, "
                      f"{std_c:.2f} s (ratio {rev_c / std_c:.2f})", flush=True)
                r = dict(model=cls, mode="paired", T=T, B=B, H=H, vocab=a.vocab, rev_s=rev_s,
                         std_s=std_s, rev_cpu=rev_c, std_cpu=std_c)
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
