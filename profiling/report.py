"""Write profiling/results/REPORT.md: memory and time of standard, checkpointed and
reversible BPTT for every model family across sequence lengths, with plots.

Memory is measured two ways for each configuration, each in a fresh Python
process (so earlier runs do not pollute the figures):

* memory-profiler's ``memory_usage`` peak of the process during one
  ``loss_and_grad`` call, minus the resident size just before it (RSS);
* tracemalloc's peak of memory allocated during the call;

next to the library's own accounting of bytes kept for the backward pass.
Nothing it writes is committed (profiling/results/ is ignored).

``--layers 1 2 3`` also measures stacked models (``n_layers``; classes that do
not stack are skipped above one layer) with the same machinery, and
``--with-standard`` adds the reversible cells with ``bptt="standard"`` (stored
fixed-point states: the time reference of reversible BPTT). When stacked rows
are present the report checks the deep-model targets (PASS/FAIL lines) at
T=1000, or the largest T measured for both sides:

* RevLSTM reversible stores <= 1/150 of LSTM standard's bytes, and its
  tracemalloc peak is <= 1/50 of LSTM standard's (same depth);
* RevLSTM reversible takes <= 1.3x the time of RevLSTM standard (same depth;
  fresh processes one after the other, so run it on a quiet machine, or see
  ``bench_reversible.py --paired``).

Usage:
    python profiling/report.py                 # T = 100 300 1000 3000, B=32, H=256
    python profiling/report.py --quick         # T = 30 100 300, H=64 (a minute or two)
    python profiling/report.py --lengths 1000 --layers 1 2 3 --models LSTM RevLSTM \
        --with-standard --out profiling/results/deep   # stacked rows and their targets
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

import revtrain as rt
from revtrain.profile import available_configs, format_table, plot, profile_bptt, stackable

#: Deep-model targets (issue 11): stored-bytes and tracemalloc-peak ratios of RevLSTM
#: reversible to LSTM standard (at least), and reversible / standard time of RevLSTM (at most).
DEEP_STORED_RATIO, DEEP_PEAK_RATIO, DEEP_TIME_RATIO = 150, 50, 1.3


def environment():
    import numba
    lines = [f"- revtrain {rt.__version__}, Python {platform.python_version()}, "
             f"NumPy {np.__version__}, Numba {numba.__version__}",
             f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
             f"- OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"]
    return "\n".join(lines)


def summary(rows):
    """Ratios of the reversible and checkpointed memory to standard BPTT at the largest common T
    (per model depth)."""
    out = []
    by = {(r.label, r.T, r.layers): r for r in rows}
    for n in sorted({r.layers for r in rows}):
        deep = f", {n} layers" if n > 1 else ""
        for rev, std in [("RevLSTM reversible", "LSTM standard"),
                         ("RevGRU reversible", "GRU standard"),
                         ("MomentumRNN reversible", "RNN standard"),
                         ("LSTM checkpoint", "LSTM standard"), ("GRU checkpoint", "GRU standard"),
                         ("RNN checkpoint", "RNN standard"),
                         ("RevMDRNN reversible", "MDRNN standard"),
                         ("RevLSTM reversible", "RevLSTM standard"),
                         ("RevGRU reversible", "RevGRU standard"),
                         ("MomentumRNN reversible", "MomentumRNN standard"),
                         ("RevMDRNN reversible", "RevMDRNN standard")]:
            Ts = sorted(T for (lab, T, m) in by if lab == rev and m == n and (std, T, n) in by)
            if not Ts:
                continue
            T = Ts[-1]
            a, b = by[(rev, T, n)], by[(std, T, n)]
            rss = (f", RSS peak 1/{b.rss_peak / a.rss_peak:.0f}"
                   if np.isfinite(a.rss_peak) and a.rss_peak > 0 else "")
            out.append(f"- {rev} vs {std} at T={T}{deep}: stored bytes "
                       f"1/{b.stored_bytes / a.stored_bytes:.0f}, tracemalloc peak "
                       f"1/{b.tracemalloc_peak / max(a.tracemalloc_peak, 1):.0f}{rss}, "
                       f"time x{a.seconds / b.seconds:.2f}")
    return "\n".join(out)


def _verdict(ok):
    return "PASS" if ok else "FAIL"


def deep_targets(rows):
    """PASS/FAIL lines of the deep-model targets, one block per depth above 1 (a list of str).

    Checked at T=1000 when both sides were measured there, else at the largest
    common T (the line says so); a side that was not measured is reported, not failed.
    """
    by = {(r.label, r.T, r.layers): r for r in rows}
    lines = []
    for n in sorted({r.layers for r in rows if r.layers > 1}):
        def at(a_label, b_label):
            Ts = sorted(T for (lab, T, m) in by if lab == a_label and m == n
                        and (b_label, T, n) in by)
            if not Ts:
                return None, None, None
            T = 1000 if 1000 in Ts else Ts[-1]
            return T, by[(a_label, T, n)], by[(b_label, T, n)]

        def where(T):
            return f"{n} layers, T={T}" + ("" if T == 1000 else "; the targets are stated at T=1000")

        T, a, b = at("RevLSTM reversible", "LSTM standard")
        if a is None:
            lines.append(f"- NOT CHECKED ({n} layers): RevLSTM reversible and LSTM standard "
                         f"were not both measured")
        else:
            rs = b.stored_bytes / max(a.stored_bytes, 1)
            rp = b.tracemalloc_peak / max(a.tracemalloc_peak, 1)
            lines.append(f"- {_verdict(rs >= DEEP_STORED_RATIO)} ({where(T)}): RevLSTM reversible "
                         f"stored bytes = 1/{rs:.0f} of LSTM standard's "
                         f"(target <= 1/{DEEP_STORED_RATIO})")
            lines.append(f"- {_verdict(rp >= DEEP_PEAK_RATIO)} ({where(T)}): RevLSTM reversible "
                         f"tracemalloc peak = 1/{rp:.0f} of LSTM standard's "
                         f"(target <= 1/{DEEP_PEAK_RATIO})")
        T, a, b = at("RevLSTM reversible", "RevLSTM standard")
        if a is None:
            lines.append(f"- NOT CHECKED ({n} layers): RevLSTM reversible and RevLSTM standard "
                         f"were not both measured (add --with-standard)")
        else:
            q = a.seconds / b.seconds
            lines.append(f"- {_verdict(q <= DEEP_TIME_RATIO)} ({where(T)}): RevLSTM reversible "
                         f"time = {q:.2f}x RevLSTM standard's ({a.seconds:.3f} s / "
                         f"{b.seconds:.3f} s; target <= {DEEP_TIME_RATIO}x)")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[100, 300, 1000, 3000])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--models", nargs="+", default=None, help="labels or class names to include")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="stop growing T for a configuration once a call took longer")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--quick", action="store_true", help="T = 30 100 300 and H = 64")
    p.add_argument("--layers", type=int, nargs="+", default=[1], metavar="N",
                   help="model depths n_layers to measure (default: 1), e.g. --layers 1 2 3; "
                        "classes that do not stack are measured with one layer only")
    p.add_argument("--with-standard", action="store_true",
                   help="also measure the selected reversible cells with bptt='standard' "
                        "(the time reference of reversible BPTT)")
    a = p.parse_args(argv)
    if a.quick:
        a.lengths, a.hidden = [30, 100, 300], 64
    if min(a.layers) < 1:
        p.error(f"--layers: depths must be >= 1, got {a.layers}")
    os.makedirs(a.out, exist_ok=True)
    configs = available_configs(a.models, a.with_standard)
    cells = sum(1 for n in dict.fromkeys(a.layers) for _, cls, _ in configs
                if n == 1 or stackable(cls))
    deep = f" x depths {sorted(set(a.layers))}" if a.layers != [1] else ""
    print(f"profiling {len(configs)} configurations{deep} ({cells} in all) at T = {a.lengths} "
          f"(each in a fresh process) ...", file=sys.stderr)
    t0 = time.perf_counter()
    rows = profile_bptt(a.lengths, a.batch, a.hidden, a.vocab, a.models, rss=True, isolate=True,
                        max_seconds=a.max_seconds, progress=sys.stderr.isatty(),
                        layers=a.layers, references=a.with_standard)
    table = format_table(rows)
    targets = deep_targets(rows)
    targets_md = ("" if not targets else "\n## Targets (stacked models)\n\n" + "\n".join(targets)
                  + "\n\nTimes come from separate fresh processes run one after the other; "
                    "on a shared machine compare them with `profiling/bench_reversible.py "
                    "--paired`.\n")
    depths = sorted({r.layers for r in rows})
    problem_layers = ("" if depths in ([], [1]) else
                      f"\nStacked models: n_layers in {depths} (no embedding, no dropout); "
                      f"every depth is compared with the same depth.")
    plot(rows, os.path.join(a.out, "memory_stored.png"), "stored_bytes",
         "bytes kept for the backward pass (library accounting)")
    plot(rows, os.path.join(a.out, "memory_tracemalloc.png"), "tracemalloc_peak",
         "tracemalloc peak of one loss_and_grad call")
    plot(rows, os.path.join(a.out, "memory_rss.png"), "rss_peak",
         "RSS peak increase of one loss_and_grad call (memory-profiler)")
    report = f"""# revtrain profiling report

Generated by `python profiling/report.py {' '.join(argv if argv is not None else sys.argv[1:])}` in
{time.perf_counter() - t0:.0f} s.

{environment()}

Problem: token input (vocabulary {a.vocab}), per-step softmax targets, B={a.batch}, H={a.hidden};
one `loss_and_grad` call per configuration, each in a fresh process after a warm-up call.
Grid models (MDRNN) use an n x n grid with n = round(sqrt(T)); T counts cells.{problem_layers}

## Summary

{summary(rows)}
{targets_md}
## All measurements

{table}

Columns: *stored* is what the backward pass keeps by the library's accounting (states and
gates for standard BPTT; checkpoints plus one segment for checkpointing; kept state plus the
information buffer for reversible BPTT). *tracemalloc peak* is the peak of memory allocated
through Python's allocators during the call (it includes temporaries such as the gradient
of the output layer). *RSS peak* is memory-profiler's peak resident size during the call
minus the size before it (sampled every 5 ms; it misses short spikes and counts pages the
allocator keeps). *held bits / info bits* is the information buffer's size over the
information the forward pass destroyed.

![stored bytes](memory_stored.png)
![tracemalloc peak](memory_tracemalloc.png)
![RSS peak](memory_rss.png)
"""
    path = os.path.join(a.out, "REPORT.md")
    with open(path, "w") as f:
        f.write(report)
    print(report)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
