"""The ``revtrain`` command: train, evaluate, sample, profile, hypertune.

Exit codes:

* 0: done;
* 1: a failure while running (a corrupt or truncated model file, a part of
  revtrain that is not installed), one line on stderr;
* 2: a usage error (bad or inconsistent arguments, a missing data or model
  file, an output that cannot be written, checked before any work), one line
  ``revtrain CMD: error: ...``;
* 3: training diverged (non-finite or runaway loss); the last good
  checkpoint is kept, the diverged weights are not saved;
* 130: interrupted (Ctrl-C); ``train`` saves the last completed step first.
"""
import sys

from .commands import evaluate, hypertune, profile, sample, train
from .commands._common import Parser, UsageError, Unavailable
from .commands.train import EXIT_DIVERGED
from .errors import DivergenceError

#: The subcommands, in the order ``--help`` lists them.
COMMANDS = (train, evaluate, sample, profile, hypertune)


def build_parser():
    p = Parser(prog="revtrain", description="Train recurrent networks with memory-lean, "
               "exactly reversible backpropagation through time.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"revtrain {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        cmd.add_parser(sub)
    return p


def main(argv=None):
    """Run the ``revtrain`` command; returns the exit code."""
    parser = build_parser()
    a = parser.parse_args(argv)
    prog = f"revtrain {a.command}"
    try:
        return a.func(a)
    except UsageError as e:
        print(f"{prog}: error: {e} (see {prog} --help)", file=sys.stderr)
        return 2
    except Unavailable as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except DivergenceError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except (RuntimeError, ValueError, FloatingPointError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
