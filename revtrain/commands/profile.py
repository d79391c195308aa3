"""``revtrain profile``: memory and time of standard, checkpointed and reversible BPTT."""
import sys

from ._common import UsageError, check_out_dir, pos_int, pos_float


def run(a):
    check_out_dir(a.out, "--out")
    from ..profile import run_profile, unknown_names, CONFIGS
    bad = unknown_names(a.models)
    if bad:
        raise UsageError(f"--models: unknown {' '.join(bad)} (choose from "
                         f"{' '.join(dict.fromkeys(c for _, c, _ in CONFIGS))}, or labels "
                         f"such as '{CONFIGS[0][0]}')")
    run_profile(lengths=tuple(a.lengths), batch=a.batch_size, hidden=a.hidden, vocab=a.vocab,
                names=a.models, out_dir=a.out, rss=a.rss, isolate=a.isolate,
                max_seconds=a.max_seconds, progress=not a.quiet and sys.stdout.isatty(),
                layers=tuple(dict.fromkeys(a.layers)))
    return 0


def add_parser(sub):
    """Add the subcommand to ``sub`` (an argparse subparsers object)."""
    f = sub.add_parser("profile", help="memory/time of standard, checkpointed and "
                       "reversible BPTT", description="Measure the memory and time of "
                       "standard, checkpointed and reversible BPTT across sequence lengths; "
                       "print a table and write markdown and PNG plots.")
    f.add_argument("--lengths", type=pos_int, nargs="+", default=[100, 300, 1000],
                   metavar="T", help="sequence lengths (default: 100 300 1000)")
    f.add_argument("--layers", type=pos_int, nargs="+", default=[1], metavar="L",
                   help="stack depths to measure (models that do not stack are measured at "
                        "1 only; default: 1)")
    f.add_argument("--batch-size", type=pos_int, default=32, help="(default: %(default)s)")
    f.add_argument("--hidden", type=pos_int, default=256, help="(default: %(default)s)")
    f.add_argument("--vocab", type=pos_int, default=64, help="(default: %(default)s)")
    f.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="restrict to these model classes or labels")
    f.add_argument("--rss", action="store_true",
                   help="also measure peak resident memory (memory-profiler)")
    f.add_argument("--isolate", action="store_true",
                   help="measure each configuration in a fresh process")
    f.add_argument("--max-seconds", type=pos_float, default=None,
                   help="skip longer sequences of a configuration after one takes this long")
    f.add_argument("--out", default="profiling/results", metavar="DIR",
                   help="folder for the markdown table and plots (default: %(default)s)")
    f.add_argument("--quiet", action="store_true", help="no progress output")
    f.set_defaults(func=run)
