"""The ``revtrain`` command: train, sample, profile, hypertune.

Usage errors (bad or inconsistent arguments, a missing data or model file, a
folder where a file is expected) print one line ``revtrain CMD: error: ...``
and exit with code 2; a failure while running (a corrupt or truncated model
file, a part of revtrain that is not installed) prints one line and exits
with code 1.
"""
import sys

from .commands import hypertune, profile, sample, train
from .commands._common import Parser, UsageError, Unavailable

#: The subcommands, in the order ``--help`` lists them.
COMMANDS = (train, sample, profile, hypertune)


def build_parser():
    p = Parser(prog="revtrain", description="Train recurrent networks with memory-lean, "
               "exactly reversible backpropagation through time.")
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
    except (RuntimeError, ValueError, FloatingPointError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
