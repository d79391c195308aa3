"""A two-stage pipeline over a backward pass's chunks: one stage on a second thread.

The reversible backward of a run alone in its call
(:meth:`revtrain.models.window.WindowRun.backward`) has two chains of work per
chunk of steps: undoing the steps exactly (the fixed-point chain: products,
gates, the information buffer's pops), and backpropagating through them (float
recompute, output layer, gradients). The second needs the first's results
for its chunk only, and the first never needs the second's, so the undo of a
chunk can run while the chunk after it (in time) backpropagates. The stages
hand chunks over through two slots of arrays; both run Numba kernels that
release the GIL, so they take two cores, and the backward costs about the
longer stage instead of the sum of both.
"""
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor, wait

#: How often (s) the pipeline's thread, waiting for a slot, looks whether the pipeline stopped.
POLL_SECONDS = 0.05


class _Call:
    """A token whose life is one :func:`run_pipeline` call's."""


#: The threads that run first stages: made once per process (a thread started per call
#: could be left half-started by a Ctrl-C inside ``Thread.start``, holding its call's
#: arrays for good), two so that a call need not wait for the end of an interrupted one.
_pool = {"executor": None, "pid": None}
#: First stages running now (:func:`running`).
_running = [0]
_running_lock = threading.Lock()


def _executor():
    if _pool["executor"] is None or _pool["pid"] != os.getpid():     # a forked child: anew
        _pool["executor"] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="revtrain-undo")
        _pool["pid"] = os.getpid()
    return _pool["executor"]


def running():
    """How many first stages are running now (0 once every call has ended and its stage
    stopped)."""
    with _running_lock:
        return _running[0]


def run_pipeline(chunks, slots, first, second):
    """``second(k, *chunks[k], slots[k % 2], first(k, *chunks[k], slots[k % 2]))`` for every
    chunk ``k`` in order, ``first`` on another thread running ahead by at most one chunk.

    Parameters
    ----------
    chunks : list of tuples
        The chunks' arguments, in processing order (``(t0, t1)``: steps).
    slots : two objects
        Arrays ``first`` fills for ``second``; chunk ``k`` uses ``slots[k % 2]``, so ``first``
        waits until ``second`` is done with chunk ``k - 2``.
    first : callable ``(k, *chunk, slot) -> code``
        Runs on the pipeline's thread. A returned ``code`` whose last item is ``>= 0`` (a
        kernel's error code) stops it after that chunk: ``second`` gets that code and is
        expected to raise.
    second : callable ``(k, *chunk, slot, code)``
        Runs on the calling thread.

    An exception in either stage stops both and is raised here (the first stage's
    after ``second`` finished the chunks before it), once the first stage has ended. An
    interruption of the calling thread anywhere (Ctrl-C, even inside this function's
    clean-up) leaves nothing running: the first stage also stops by itself, after its
    current chunk or within ``POLL_SECONDS`` of waiting, once the call has unwound.
    """
    ready = [threading.Semaphore(0), threading.Semaphore(0)]
    free = [threading.Semaphore(1), threading.Semaphore(1)]
    codes, failed, stop = [None] * len(chunks), [], threading.Event()
    # held by this call's frame alone: gone once an interruption has unwound it, even one
    # that came before ``stop`` could be set
    call = _Call()
    alive = weakref.ref(call)

    def stopped():
        return stop.is_set() or alive() is None

    def run_first():
        with _running_lock:
            _running[0] += 1
        try:
            _first_stage()
        finally:
            with _running_lock:
                _running[0] -= 1

    def _first_stage():
        k = 0
        try:
            for k, chunk in enumerate(chunks):
                # wait for the slot, looking meanwhile whether the pipeline stopped: the
                # calling thread may be interrupted (Ctrl-C) anywhere
                while not free[k % 2].acquire(timeout=POLL_SECONDS):
                    if stopped():
                        return
                if stopped():
                    return
                codes[k] = first(k, *chunk, slots[k % 2])
                ready[k % 2].release()
                if codes[k][-1] >= 0:
                    return
        except BaseException as e:       # noqa: B902 - raised on the calling thread
            failed.append(e)
            ready[k % 2].release()

    future = None
    try:
        future = _executor().submit(run_first)
        for k, chunk in enumerate(chunks):
            ready[k % 2].acquire()
            if codes[k] is None:
                raise failed[0]
            second(k, *chunk, slots[k % 2], codes[k])
            free[k % 2].release()
    finally:
        stop.set()                # the stage ends within a chunk or a poll, waited for or not
        for sem in free:
            sem.release()
        if future is not None:
            wait([future])
