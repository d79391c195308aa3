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
    a = _parse(parser, argv)
    prog = f"revtrain {a.command}"
    try:
        _one_process_only(a.command)
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


#: Subcommands that run data parallel under ``mpiexec -n N``; the others run in one process.
PARALLEL_COMMANDS = ("train", "hypertune")


def _one_process_only(command):
    """A usage error for a one-process subcommand started by ``mpiexec -n N > 1`` (it would
    run N times, each writing the same outputs)."""
    from .distributed import launched_size
    N = launched_size()
    if N > 1 and command not in PARALLEL_COMMANDS:
        raise UsageError(f"{command} runs in one process; start it without mpiexec (only "
                         f"{' and '.join(PARALLEL_COMMANDS)} run data parallel, here on {N} "
                         "processes)")


def _parse(parser, argv):
    """``parser.parse_args(argv)``; under ``mpiexec -n N`` only rank 0 prints what parsing
    prints (``--help``, ``--version``, usage errors), every rank exits with its code."""
    from .distributed import launched_rank, launched_size
    if launched_size() <= 1 or launched_rank() == 0:
        return parser.parse_args(argv)
    import contextlib
    import os
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
            contextlib.redirect_stderr(null):
        return parser.parse_args(argv)


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
    if comm is None:        # one process, or under mpiexec before MPI was started
        from .distributed import launched_rank
        shared = (isinstance(e, (UsageError, DivergenceError, KeyboardInterrupt))
                  or getattr(e, "all_ranks", False))
        if launched_rank() == 0 or not shared:  # (every rank meets a shared one: say it once)
            print(message, file=sys.stderr)
        return code
    rank, size = comm.Get_rank(), comm.Get_size()
    if isinstance(e, (UsageError, DivergenceError)) or getattr(e, "all_ranks", False):
        if rank == 0:
            print(message, file=sys.stderr, flush=True)
        return code
    print(f"[MPI rank {rank} of {size}] {message}; ending all {size} processes",
          file=sys.stderr, flush=True)
    from .distributed import abort_job
    abort_job(comm, code)
    return code     # pragma: no cover - Abort does not return


if __name__ == "__main__":
    sys.exit(main())
