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
    """Run the ``revtrain`` command; returns the exit code.

    Under ``mpiexec -n N`` (N > 1) an error raised on every rank together
    (a usage error, divergence, or one marked ``all_ranks``: see
    :func:`revtrain.distributed.mark_all_ranks`) is printed by rank 0 and every
    rank returns the exit code; any other error on one rank is printed tagged
    with its rank and ends the whole job with ``MPI_Abort`` (same exit code),
    so that no rank waits forever for a partner that failed.
    """
    parser = build_parser()
    a = parser.parse_args(argv)
    prog = f"revtrain {a.command}"
    try:
        return a.func(a)
    except UsageError as e:
        return _fail(e, 2, f"{prog}: error: {e} (see {prog} --help)")
    except Unavailable as e:
        return _fail(e, 1, f"{prog}: error: {e}")
    except KeyboardInterrupt as e:
        return _fail(e, 130, f"{prog}: interrupted")
    except DivergenceError as e:
        return _fail(e, EXIT_DIVERGED, f"{prog}: error: {e}")
    except (RuntimeError, ValueError, FloatingPointError, OSError) as e:
        return _fail(e, 1, f"{prog}: error: {e}")
    except Exception as e:
        if _mpi_world() is None:
            raise
        return _fail(e, 1, f"{prog}: error: {type(e).__name__}: {e}")


def _mpi_world():
    """``MPI.COMM_WORLD`` when this process runs under ``mpiexec -n N > 1`` and MPI is
    initialised (mpi4py imported), else None."""
    from .distributed import launched_size
    if launched_size() <= 1 or "mpi4py.MPI" not in sys.modules:
        return None
    return sys.modules["mpi4py.MPI"].COMM_WORLD


def _fail(e, code, message):
    """Print ``message`` (rank 0 only for an error every rank shares) and return ``code``;
    under MPI, an error of one rank alone ends the job with ``MPI_Abort(code)``."""
    comm = _mpi_world()
    if comm is None:
        print(message, file=sys.stderr)
        return code
    rank, size = comm.Get_rank(), comm.Get_size()
    if isinstance(e, (UsageError, DivergenceError)) or getattr(e, "all_ranks", False):
        if rank == 0:
            print(message, file=sys.stderr, flush=True)
        return code
    print(f"[MPI rank {rank} of {size}] {message}; ending all {size} processes",
          file=sys.stderr, flush=True)
    comm.Abort(code)
    return code     # pragma: no cover - Abort does not return


if __name__ == "__main__":
    sys.exit(main())
