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
import threading


def run_pipeline(chunks, slots, first, second):
    """``second(k, *chunks[k], slots[k % 2], first(k, *chunks[k], slots[k % 2]))`` for every
    chunk ``k`` in order, ``first`` on a new thread running ahead by at most one chunk.

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
    after ``second`` finished the chunks before it), once the thread has ended.
    """
    ready = [threading.Semaphore(0), threading.Semaphore(0)]
    free = [threading.Semaphore(1), threading.Semaphore(1)]
    codes, failed, stop = [None] * len(chunks), [], threading.Event()

    def run_first():
        k = 0
        try:
            for k, chunk in enumerate(chunks):
                free[k % 2].acquire()
                if stop.is_set():
                    return
                codes[k] = first(k, *chunk, slots[k % 2])
                ready[k % 2].release()
                if codes[k][-1] >= 0:
                    return
        except BaseException as e:       # noqa: B902 - raised on the calling thread
            failed.append(e)
            ready[k % 2].release()

    worker = threading.Thread(target=run_first, name="revtrain-undo", daemon=True)
    worker.start()
    try:
        for k, chunk in enumerate(chunks):
            ready[k % 2].acquire()
            if codes[k] is None:
                raise failed[0]
            second(k, *chunk, slots[k % 2], codes[k])
            free[k % 2].release()
    finally:
        stop.set()
        for sem in free:
            sem.release()
        worker.join()
