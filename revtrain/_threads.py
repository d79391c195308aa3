"""How many threads revtrain's kernels use: BLAS threads and row-group threads.

BLAS: one thread. The recurrent kernels make one small matrix product per
time step (e.g. ``(32, 256) x (256, 1024)``). Multi-threaded OpenBLAS gains
little on such products and, on a loaded machine or when NumPy's and SciPy's
OpenBLAS thread pools alternate (Numba calls SciPy's BLAS, NumPy its own),
its spinning threads fight for the cores: measured here on 2 busy cores, one
``32x256x256`` product took 15.6 ms with 2 threads and 0.13 ms with 1. Its
results also depend on the thread count in float32 (OpenBLAS splits a
product's rows among its threads, and a row's bits depend on the rows
computed with it). So every model call runs with BLAS limited to one thread
(restored afterwards, via threadpoolctl); :func:`set_blas_threads` changes that.

Row groups: the parallelism instead. A batch is cut into groups of 16 rows
fixed by the batch size (:mod:`revtrain.models.row_groups`); each group runs
its whole window in kernels that release the GIL, the groups on up to
:func:`get_row_threads` Python threads at once (default: the usable cores,
shared among the MPI processes of the machine). Waiting threads sleep
instead of spinning, so a busy machine slows them down without the collapse
above, and the bits do not depend on the number of threads (a group
computes the same whether it runs alone or beside others).
"""
import _thread
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from ._checks import positive_int

_state = {"threads": 1, "controller": None, "row_threads": None, "pool": None,
          "pool_pid": None}


def set_blas_threads(n):
    """Threads BLAS may use during revtrain calls: a positive int, or None to leave BLAS alone.

    Returns the previous setting. Float32 models give different last bits
    with different settings (see the module docstring); float64 ones do not.
    """
    n = positive_int(n, "n", none_ok=True)
    old = _state["threads"]
    _state["threads"] = n
    return old


def get_blas_threads():
    """The current setting of :func:`set_blas_threads`."""
    return _state["threads"]


def _controller():
    c = _state["controller"]
    if c is None:
        import scipy.linalg.cython_blas  # noqa: F401  (the BLAS Numba calls: load it first)
        from threadpoolctl import ThreadpoolController
        c = _state["controller"] = ThreadpoolController()
    return c


@contextmanager
def blas_threads():
    """Context in which BLAS uses :func:`get_blas_threads` threads."""
    n = _state["threads"]
    if n is None:
        yield
        return
    with _controller().limit(limits=n, user_api="blas"):
        yield


# ------------------------------------------------------------------ row groups
def usable_cores():
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):       # pragma: no cover - not Linux
        return os.cpu_count() or 1


def set_row_threads(n):
    """Threads that run a batch's row groups of the reversible cells at once.

    The reversible cells cut a batch into row groups (two halves for 4 to 32 rows,
    blocks of ``ROW_BLOCK = 16`` rows above:
    :func:`~revtrain.models.row_groups.window_row_groups`) whose kernels run side by
    side, one thread each, BLAS on one thread inside each; the standard cells into
    blocks of 16 rows. ``n``: a positive int, or None for the default (the cores this
    process may use). With ``n >= 2`` a reversible batch of one group (``B <= 3``) runs
    its backward as a two-stage pipeline instead (the undo of a chunk on a second thread
    while the previous chunk backpropagates,
    :meth:`~revtrain.models.window.WindowRun.backward`).
    Results do not depend on it: the groups are fixed by the batch size alone
    and computed the same way on any number of threads. Returns the previous
    setting.
    """
    n = positive_int(n, "n", none_ok=True)
    old = _state["row_threads"]
    _state["row_threads"] = n
    return old


#: Variables MPI launchers set to the number of processes on this machine.
_LOCAL_RANKS_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")


def _local_processes():
    """Processes an MPI launcher started on this machine (1 outside MPI)."""
    for var in _LOCAL_RANKS_VARS:
        val = os.environ.get(var, "")
        if val.isdigit() and int(val) > 0:
            return int(val)
    return 1


def get_row_threads():
    """Threads for row groups: the :func:`set_row_threads` value, else the usable cores
    shared among the MPI processes of this machine (each gets at least one)."""
    n = _state["row_threads"]
    return max(1, usable_cores() // _local_processes()) if n is None else n


def run_groups(fn, n):
    """``[fn(0), ..., fn(n - 1)]``, on up to :func:`get_row_threads` threads at once.

    ``fn`` runs Numba kernels that release the GIL. Every call finishes before
    an exception is raised; of several, the lowest index's is raised (the same
    one on any number of threads).
    """
    k = min(n, get_row_threads())
    if k <= 1:
        return [fn(i) for i in range(n)]
    pool = _state["pool"]
    if pool is None or pool._max_workers != k or _state["pool_pid"] != os.getpid():
        # (a forked child has the pool object but not its threads: a new one)
        pool = _state["pool"] = ThreadPoolExecutor(max_workers=k,
                                                   thread_name_prefix="revtrain-rows")
        _state["pool_pid"] = os.getpid()
    futures = [pool.submit(fn, i) for i in range(n)]
    out, err = [], None
    for f in futures:
        try:
            out.append(f.result())
        except BaseException as e:          # noqa: B902 - re-raised below, in index order
            out.append(None)
            err = e if err is None else err
    if err is not None:
        raise err
    return out


class ThreadCount:
    """How many threads of one kind are running now (``with count:`` around a thread's work;
    ``count.n``). Tests read it to check that nothing was left running. A forked child has
    none of the parent's threads: the count restarts at 0 there, with a new lock (the
    parent's may have been held at the fork)."""

    def __init__(self):
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self):
        self.n = 0
        self._lock = _thread.allocate_lock()

    def __enter__(self):
        with self._lock:
            self.n += 1

    def __exit__(self, *exc):
        with self._lock:
            self.n -= 1


class CallToken:
    """A token whose life is one call's (the pipeline's or the lockstep's): the call's frame
    alone holds it, so its threads, keeping a weak reference, see the call gone once an
    interruption has unwound it, even one that came before the call could set its stop flag."""


#: How often (s) a thread of the pipeline or the lockstep, waiting for a lock, looks whether
#: its call stopped.
POLL_SECONDS = 0.05


def held_lock():
    """A new plain lock (``_thread``), already held: a binary semaphore at 0. Its operations
    either happen or not when Ctrl-C interrupts, unlike ``threading``'s Python-level ones."""
    lock = _thread.allocate_lock()
    lock.acquire()
    return lock


def release_if_held(lock):
    """Release ``lock`` if it is held (a clean-up may find it released already)."""
    try:
        lock.release()
    except RuntimeError:
        pass
