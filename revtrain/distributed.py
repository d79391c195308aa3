"""Data parallel over MPI: micro-batches and an exact integer all-reduce.

A batch is cut into ``M`` micro-batches (``M`` fixed by the user, independent
of the number of processes ``N``, which must divide it). Rank ``r`` of ``N``
computes micro-batches ``r*M/N .. (r+1)*M/N - 1``. Each micro-batch's vectors
(gradients, Hessian-vector products) are converted to fixed point,

    k_m = rint(v_m * 2**F)          int64, F = GRAD_FRAC_BITS fraction bits,

and summed over ``m`` with ``Allreduce(SUM)`` on int64. Integer addition is
associative, so ``sum_m k_m`` and the float ``2**-F * sum_m k_m`` that every
rank gets are the same bits for every ``N`` that divides ``M`` and without MPI
(``comm=None`` runs the same conversion and sum in one process). A float
all-reduce would not: its sum depends on the number and order of the ranks.

Overflow: every ``|v_m| * 2**F`` must stay below ``2**62 / M`` so that no
partial sum can wrap (``|v_m| < 2**22 / M`` at ``F = 40``); a larger or
non-finite value is a :class:`~revtrain.FixedPointError` (or
:class:`~revtrain.DivergenceError` when not finite) raised on every rank.
Resolution: ``2**-40 ~ 9.1e-13`` per micro-batch.

Scalars (losses) and small per-micro-batch objects (final states) are
gathered exactly (``allgather`` of the values themselves) and combined in the
order of ``m`` on every rank. An exception raised while computing a
micro-batch on one rank is re-raised on every rank after the collective (same
class for revtrain's errors), so no rank waits forever for a partner that
failed. A rank that dies outright is handled by the MPI launcher
(``mpiexec`` ends the job).
"""
import os
import pickle
import sys
import time

import numpy as np

from .errors import DivergenceError, FixedPointError, ReversalError

#: Fraction bits of the fixed-point micro-batch sums.
GRAD_FRAC_BITS = 40

#: Environment variables that MPI launchers set in every process they start.
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE")

_ERRORS = {c.__name__: c for c in (DivergenceError, FixedPointError, ReversalError,
                                   FloatingPointError, ValueError, MemoryError)}


def launched_size():
    """Number of processes the MPI launcher started (1 when not started by ``mpiexec``).

    Read from the launcher's environment, so that a plain run never imports
    ``mpi4py`` (importing it initialises MPI).
    """
    for var in _LAUNCHER_SIZE_VARS:
        val = os.environ.get(var)
        if val and val.isdigit():
            return int(val)
    return 1


#: Environment variables that MPI launchers set to the process's rank.
_LAUNCHER_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def launched_rank():
    """This process's rank as the MPI launcher numbered it (0 when not started by ``mpiexec``),
    read from the environment like :func:`launched_size`."""
    for var in _LAUNCHER_RANK_VARS:
        val = os.environ.get(var)
        if val and val.isdigit():
            return int(val)
    return 0


def world():
    """``MPI.COMM_WORLD`` when started by ``mpiexec`` with more than one process, else None.

    Raises
    ------
    ImportError
        Started under MPI with ``N > 1`` but mpi4py is missing (message says
        ``pip install "revtrain[mpi]"``).
    """
    if launched_size() <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError as e:            # pragma: no cover - depends on the install
        raise ImportError("started under mpiexec with more than one process, but mpi4py is "
                          "not installed: pip install \"revtrain[mpi]\"") from e
    return MPI.COMM_WORLD


def comm_size(comm):
    """``comm.Get_size()``, 1 for None."""
    return 1 if comm is None else int(comm.Get_size())


def comm_rank(comm):
    """``comm.Get_rank()``, 0 for None."""
    return 0 if comm is None else int(comm.Get_rank())


def check_micro(n_micro, batch_size, comm=None):
    """Validate ``n_micro`` micro-batches of a batch of ``batch_size`` rows on ``comm``.

    ``n_micro`` must divide ``batch_size`` (equal micro-batches) and be a
    multiple of the number of processes. Returns ``n_micro`` as an int.
    """
    if isinstance(n_micro, bool) or not isinstance(n_micro, (int, np.integer)) or n_micro < 1:
        raise ValueError(f"micro_batches must be a positive int, got {n_micro!r}")
    n_micro, N = int(n_micro), comm_size(comm)
    if batch_size % n_micro:
        raise ValueError(f"micro_batches={n_micro} must divide the batch size {batch_size} "
                         "(equal micro-batches)")
    if n_micro % N:
        raise ValueError(f"micro_batches={n_micro} must be a multiple of the number of MPI "
                         f"processes ({N}): each process computes the same number of "
                         "micro-batches")
    return n_micro


def micro_rows(m, n_micro, batch_size):
    """Rows ``slice`` of micro-batch ``m`` in a batch of ``batch_size`` rows."""
    k = batch_size // n_micro
    return slice(m * k, (m + 1) * k)


def owned(n_micro, comm=None):
    """The micro-batches this rank computes: ``range(r*M/N, (r+1)*M/N)``."""
    N, r = comm_size(comm), comm_rank(comm)
    k = n_micro // N
    return range(r * k, (r + 1) * k)


def to_fixed_sum(vectors, n_micro, frac_bits=GRAD_FRAC_BITS, what="gradient"):
    """``sum_i rint(v_i * 2**F)`` as int64 over the given float vectors, overflow checked.

    Raises FixedPointError (or DivergenceError for NaN/inf) naming ``what``.
    """
    scale = float(2 ** frac_bits)
    bound = float(2 ** 62) / n_micro
    total = None
    for v in vectors:
        v = np.asarray(v, dtype=np.float64)
        if not np.isfinite(v).all():
            raise DivergenceError(f"the {what} of a micro-batch has NaN or inf")
        s = v * scale
        big = np.abs(s) >= bound
        if big.any():
            i = int(np.flatnonzero(big.ravel())[0])
            raise FixedPointError(
                f"the {what} of a micro-batch is too large for the exact all-reduce: "
                f"{float(v.ravel()[i])!r} at index {i}; |values| must stay below "
                f"{bound / scale:.4g} (2**{62 - frac_bits} / micro_batches) at "
                f"{frac_bits} fraction bits")
        k = np.rint(s).astype(np.int64)
        total = k if total is None else total + k
    return total


def reduce_micro(compute, n_micro, comm=None, frac_bits=GRAD_FRAC_BITS, what="gradient",
                 timing=None):
    """Run ``compute(m)`` for this rank's micro-batches and combine them exactly.

    Parameters
    ----------
    compute : callable ``m -> (vectors, extra)``
        ``vectors``: a tuple of float arrays (same shapes for every ``m``) to
        be summed in fixed point; ``extra``: any picklable value (a loss, a
        final state) gathered as it is.
    n_micro : int
        Micro-batches ``M`` (a multiple of the number of processes).
    comm : mpi4py communicator or None
    timing : dict, optional
        Accumulates ``allreduce_s`` (seconds in the int64 ``Allreduce``),
        ``allreduce_bytes`` (bytes each rank contributes to it), ``gather_s``
        (seconds in the status and extras gathers) and ``calls``.

    Returns
    -------
    sums : tuple of float64 arrays
        ``2**-F * sum_m rint(v_m * 2**F)`` for each vector: the same bits on
        every rank and for every number of processes dividing ``M``.
    extras : list
        ``extra`` of micro-batch ``m`` at index ``m``, on every rank.

    Raises
    ------
    Whatever ``compute`` raised on any rank (revtrain's errors keep their
    class, others become RuntimeError), on every rank, after the collective.
    """
    mine = owned(n_micro, comm)
    local_vecs, extras, failure = [], {}, None
    for m in mine:
        try:
            vecs, extra = compute(m)
            local_vecs.append(tuple(np.asarray(v, dtype=np.float64) for v in vecs))
            extras[m] = extra
        except Exception as e:           # re-raised on every rank below
            failure = (m, type(e).__name__, str(e), e)
            break
    ints = None
    if failure is None:
        try:
            n_vec = len(local_vecs[0])
            ints = [to_fixed_sum([lv[i] for lv in local_vecs], n_micro, frac_bits, what)
                    for i in range(n_vec)]
        except (FixedPointError, DivergenceError) as e:
            failure = (mine[0], type(e).__name__, str(e), e)
    if comm is None:
        if failure is not None:
            raise failure[3]
        scale = 2.0 ** -frac_bits
        return tuple(k * scale for k in ints), [extras[m] for m in range(n_micro)]
    return _collect(comm, ints, extras, failure, n_micro, frac_bits, timing)


def _add(timing, key, value):
    if timing is not None:
        timing[key] = timing.get(key, 0) + value


def _collect(comm, ints, extras, failure, n_micro, frac_bits, timing=None):
    """The collective part of :func:`reduce_micro`: status first, then the sums and extras."""
    from mpi4py import MPI
    t0 = time.perf_counter()
    status = comm.allgather(None if failure is None else failure[:3])
    _add(timing, "gather_s", time.perf_counter() - t0)
    failed = [(r, f) for r, f in enumerate(status) if f is not None]
    if failed:
        r, (m, name, msg) = failed[0]
        if failure is not None and comm_rank(comm) == r:
            raise mark_all_ranks(failure[3])
        cls = _ERRORS.get(name, RuntimeError)
        raise mark_all_ranks(cls(f"MPI rank {r}, micro-batch {m}: {msg}"))
    shapes = [k.shape for k in ints]
    flat = np.concatenate([k.ravel() for k in ints]) if ints else np.zeros(0, np.int64)
    total = np.empty_like(flat)
    t0 = time.perf_counter()
    comm.Allreduce(flat, total, op=MPI.SUM)
    t1 = time.perf_counter()
    all_extras = {}
    for d in comm.allgather(extras):
        all_extras.update(d)
    _add(timing, "allreduce_s", t1 - t0)
    _add(timing, "allreduce_bytes", flat.nbytes)
    _add(timing, "gather_s", time.perf_counter() - t1)
    _add(timing, "calls", 1)
    scale = 2.0 ** -frac_bits
    out, i = [], 0
    for shp in shapes:
        n = int(np.prod(shp))
        out.append(total[i:i + n].reshape(shp) * scale)
        i += n
    return tuple(out), [all_extras[m] for m in range(n_micro)]


def mark_all_ranks(e):
    """Mark exception ``e`` as raised on every rank together (``e.all_ranks = True``).

    The ``revtrain`` command ends a run quietly on the other ranks for such an
    error (every rank leaves with the same exit code); any other error on one
    rank ends the job with ``MPI_Abort`` so that no rank waits forever.
    """
    try:
        e.all_ranks = True
    except AttributeError:      # pragma: no cover - exceptions with __slots__
        pass
    return e


#: Seconds a rank waits between printing why it ends the job and ``MPI_Abort``.
ABORT_GRACE = 1.0


def abort_job(comm, code):
    """End the MPI job with exit code ``code`` (``MPI_Abort``), once the caller's last words
    (printed to stderr and flushed) have had :data:`ABORT_GRACE` seconds to leave.

    MPICH's launcher passes a rank's stderr on through its proxy process, which an
    immediate abort can end before it has read the line still in the pipe: twice the job
    ended with code 1 and an empty stderr, on a machine busy with other tests.
    """
    sys.stderr.flush()
    time.sleep(ABORT_GRACE)
    comm.Abort(code)


def is_root(comm):
    """True on rank 0 (and without MPI): the process that reads inputs and writes outputs."""
    return comm_rank(comm) == 0


def _portable(e):
    """``e`` if it survives pickling (to be sent to the other ranks), else a RuntimeError."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:           # noqa: BLE001 - any unpicklable exception
        return RuntimeError(f"{type(e).__name__}: {e}")


def on_root(fn, comm=None):
    """``fn()`` computed on rank 0 only, its result given to every rank (``bcast``).

    An exception ``fn`` raises on rank 0 is raised on every rank (a copy of
    it; rank 0 re-raises the original), so the ranks leave together instead
    of the others waiting for rank 0 at the next collective. Without MPI
    (``comm`` None) this is just ``fn()``.
    """
    if comm is None:
        return fn()
    if comm_rank(comm) == 0:
        try:
            out = fn()
        except Exception as e:
            comm.bcast(("error", _portable(e)), root=0)
            raise mark_all_ranks(e)
        comm.bcast(("ok", out), root=0)
        return out
    kind, val = comm.bcast(None, root=0)
    if kind == "error":
        raise mark_all_ranks(val)
    return val


def agree(value, comm, what):
    """Check that every rank holds the same ``value`` (compared with ``==``); else a
    ValueError on every rank naming ``what`` and the first rank that differs."""
    if comm is None:
        return value
    values = comm.allgather(value)
    for r, v in enumerate(values):
        if v != values[0]:
            raise mark_all_ranks(ValueError(
                f"{what} differs between MPI processes (rank {r} has {v!r}, rank 0 "
                f"{values[0]!r}); every process must pass the same"))
    return value


def check_parallel(comm, micro_batches):
    """Validated ``(comm, micro_batches)`` of a :class:`~revtrain.Trainer` or
    :func:`~revtrain.hypergradient` (see their parameters).

    Raises TypeError for a ``comm`` that is not an mpi4py communicator, and
    ValueError for ``micro_batches`` missing with more than one process, not
    a positive int, or not a multiple of the number of processes.
    """
    if comm is not None and not all(callable(getattr(comm, m, None))
                                    for m in ("Get_size", "Allreduce", "allgather")):
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD) or None, "
                        f"got {type(comm).__name__}")
    N = comm_size(comm)
    if micro_batches is None:
        if N > 1:
            raise ValueError(f"{N} MPI processes need micro_batches: pass micro_batches=M, "
                             f"a multiple of {N} that divides the batch size (the same M "
                             "gives the same bits on any number of processes dividing it, "
                             "and without MPI)")
        return comm, None
    if isinstance(micro_batches, bool) or not isinstance(micro_batches, (int, np.integer)) \
            or micro_batches < 1:
        raise ValueError(f"micro_batches must be a positive int or None, got {micro_batches!r}")
    if micro_batches % N:
        raise ValueError(f"micro_batches={micro_batches} must be a multiple of the number of "
                         f"MPI processes ({N}): each process computes the same number of "
                         "micro-batches")
    return comm, int(micro_batches)


class DeferredInterrupt:
    """Under MPI, Ctrl-C (SIGINT) ends :meth:`revtrain.Trainer.fit` on every rank after the same step.

    A rank blocked in a collective cannot see a KeyboardInterrupt, and one that
    leaves alone would leave the others waiting. So during ``fit`` with a
    ``comm``, SIGINT only sets a flag; after every step the ranks exchange their
    flags (with the callbacks' stop requests and errors) in one small
    ``allgather``, and all raise KeyboardInterrupt together (rank 0 then saves
    the last step), or the callback's error.
    Without ``comm`` (or outside the main thread) nothing changes.
    """

    def __init__(self, comm):
        import signal
        self.comm, self.flag, self.old = comm, False, None
        if comm is None:
            return
        try:
            self.old = signal.signal(signal.SIGINT, self._note)
        except ValueError:          # not the main thread: signals stay as they are
            self.old = None

    def _note(self, signum, frame):
        self.flag = True

    def agree(self, stop, failed=None):
        """True to stop after this step (a callback asked on some rank).

        Raises KeyboardInterrupt (marked ``all_ranks``) when a rank got SIGINT,
        and, when a callback raised ``failed`` on some rank, that exception on
        its rank and a RuntimeError naming it on the others (all marked
        ``all_ranks``): every rank leaves after the same step, none waits.
        """
        notes = self.comm.allgather((bool(stop), bool(self.flag),
                                     None if failed is None
                                     else f"{type(failed).__name__}: {failed}"))
        if any(n[1] for n in notes):
            e = KeyboardInterrupt()
            e.all_ranks = True
            raise e
        errors = [(r, n[2]) for r, n in enumerate(notes) if n[2] is not None]
        if errors:
            if failed is not None:
                raise mark_all_ranks(failed)
            r, msg = errors[0]
            raise mark_all_ranks(RuntimeError(
                f"a callback raised on MPI rank {r} ({msg}); every rank stopped after the "
                "same step"))
        return any(n[0] for n in notes)

    def restore(self):
        if self.old is not None:
            import signal
            signal.signal(signal.SIGINT, self.old)
            self.old = None
