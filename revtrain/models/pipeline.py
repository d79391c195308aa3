"""A two-stage pipeline over a backward pass's chunks: one stage on a second thread.

The reversible backward of a run alone in its call
(:meth:`revtrain.models.window.WindowRun.backward`) has two chains of work per
chunk of steps: undoing the steps exactly (the fixed-point chain: products,
gates, the information buffer's pops), and backpropagating through them (float
recompute, output layer, gradients). The second needs the first's results
for its chunk only, and the first never needs the second's, so the undo of a
chunk can run while the chunk after it (in time) backpropagates. The stages
hand chunks over through two or three slots of arrays; both run Numba kernels that
release the GIL, so they take two cores, and the backward costs about the
longer stage instead of the sum of both.

The hand-over uses the interpreter's plain locks and a thread started with
``_thread.start_new_thread``: each of their operations either happens or not
when Ctrl-C interrupts the calling thread, whereas ``threading``'s semaphores,
``Thread.start`` and thread pools keep Python-level state that an interruption
at the wrong moment leaves inconsistent (a random-interrupt test stranded
threads with ``Thread.start`` and hung the next call with a thread pool).
"""
import _thread
import weakref

from .._threads import ThreadCount, CallToken, POLL_SECONDS, held_lock, release_if_held

#: First stages running now (:func:`running`).
_running = ThreadCount()


def running():
    """How many first stages are running now (0 once every call has ended and its stage
    stopped)."""
    return _running.n


def run_pipeline(chunks, slots, first, second):
    """``second(*chunks[k], slots[k % S], first(*chunks[k], slots[k % S]))`` for every
    chunk ``k`` in order, ``first`` on another thread running ahead by at most ``S - 1``
    chunks (``S = len(slots)``).

    Parameters
    ----------
    chunks : list of tuples
        The chunks' arguments, in processing order (``(t0, t1)``: steps).
    slots : sequence of two or more objects
        Arrays ``first`` fills for ``second``; chunk ``k`` uses ``slots[k % S]``, so ``first``
        waits until ``second`` is done with chunk ``k - S``.
    first : callable ``(*chunk, slot) -> code``
        Runs on the pipeline's thread. A returned ``code`` whose last item is ``>= 0`` (a
        kernel's error code) stops it after that chunk: ``second`` gets that code and is
        expected to raise.
    second : callable ``(*chunk, slot, code)``
        Runs on the calling thread.

    An exception in either stage stops both and is raised here (the first stage's
    after ``second`` finished the chunks before it), once the first stage has ended. An
    interruption of the calling thread anywhere (Ctrl-C, even inside this function's
    clean-up) leaves nothing running: the first stage also stops by itself, after its
    current chunk or within ``POLL_SECONDS`` of waiting, once the call has unwound.
    """
    # binary semaphores as plain locks: ready[s] held = slot s not filled yet, free[s] held =
    # slot s in use by the first stage; done held until the first stage has ended
    S = len(slots)
    ready = [held_lock() for _ in range(S)]
    free = [_thread.allocate_lock() for _ in range(S)]
    done = held_lock()
    codes, failed, stop = [None] * len(chunks), [], [False]
    call = CallToken()
    alive = weakref.ref(call)

    def stopped():
        return stop[0] or alive() is None

    def first_stage():
        k = 0
        try:
            for k, chunk in enumerate(chunks):
                while not free[k % S].acquire(timeout=POLL_SECONDS):
                    if stopped():
                        return
                if stopped():
                    return
                codes[k] = first(*chunk, slots[k % S])
                ready[k % S].release()
                if codes[k][-1] >= 0:
                    return
        except BaseException as e:       # noqa: B902 - raised on the calling thread
            failed.append(e)
            release_if_held(ready[k % S])

    def run_first():
        try:
            with _running:
                first_stage()
        finally:
            done.release()

    started = False
    try:
        _thread.start_new_thread(run_first, ())
        started = True
        for k, chunk in enumerate(chunks):
            ready[k % S].acquire()
            if codes[k] is None:
                raise failed[0]
            second(*chunk, slots[k % S], codes[k])
            free[k % S].release()
    finally:
        stop[0] = True            # the stage ends within a chunk or a poll, waited for or not
        for lock in free:
            release_if_held(lock)
        if started:
            done.acquire()
