"""Two row groups' backward passes side by side, adding into one gradient in a fixed order.

The two halves of a batch (:func:`~revtrain.models.row_groups.window_row_groups`) run
their backward passes on two threads. Each chunk of steps ends with its parameter
gradients: products over the chunk's rows added into the gradient. Were each
half to add into a gradient of its own, summed at the end, the call would hold
one more parameter vector (1 MiB for RevLSTM at H = 256 in float32, the largest
array of its backward pass). Here both add into one, chunk after chunk, in the
order of one thread running the groups in turn::

    for k in chunks:  compute(0, k), add(0, k), compute(1, k), add(1, k)

Each group's ``compute`` reads and writes only its own arrays, so on two threads
the computes of the two groups overlap and only the additions take turns
(:func:`run_lockstep`); the gradient's bits are those of the serial order
whatever the threads. The hand-over uses the interpreter's plain locks and a
thread started with ``_thread.start_new_thread``, as the pipeline does
(:mod:`revtrain.models.pipeline`): an interruption of the calling thread leaves
nothing running.
"""
import _thread
import weakref

from .pipeline import POLL_SECONDS, _locked, _release

#: Second lanes running now (:func:`running`), and the lock of that count.
_running = [0]
_running_lock = _thread.allocate_lock()


class _Call:
    """A token whose life is one :func:`run_lockstep` call's."""


def running():
    """How many second lanes are running now (0 once every call has ended)."""
    return _running[0]


def run_lockstep(n_chunks, compute, add, threads):
    """For chunks ``k = 0 .. n_chunks-1``: ``compute(g, k)`` and ``add(g, k)`` of groups
    ``g = 0, 1``, with the results of the serial order ``compute(0, k), add(0, k),
    compute(1, k), add(1, k)``.

    Parameters
    ----------
    n_chunks : int
    compute : callable ``(g, k) -> code``
        Group ``g``'s work on chunk ``k``, touching only the group's own arrays. A code
        whose last item is ``>= 0`` (a kernel's error code) is a failure: nothing after
        it in the serial order matters any more.
    add : callable ``(g, k)``
        Adds what ``compute(g, k)`` left into the shared result.
    threads : int
        With 2 or more, group 1 runs on a second thread and only the ``add`` calls take
        turns; else both groups run in the serial order on the calling thread.

    Returns
    -------
    None, or ``(g, code)`` of the first failure in the serial order (the same whatever
    ``threads``). An exception of either group is raised here (the first in the serial
    order), once the second thread has ended; an interruption of the calling thread
    stops the second thread within a chunk or ``POLL_SECONDS``.
    """
    if threads < 2:
        for k in range(n_chunks):
            for g in (0, 1):
                code = compute(g, k)
                if code[-1] >= 0:
                    return g, code
                add(g, k)
        return None

    # turn[g] free = group g may add its next chunk; done held until the second lane ended
    turn = [_thread.allocate_lock(), _locked()]
    done = _locked()
    first = [None]                  # (k, g, code or exception) first in the serial order
    first_lock = _thread.allocate_lock()
    stop = [False]
    call = _Call()                  # gone once an interruption has unwound this call
    alive = weakref.ref(call)

    def stopped():
        return stop[0] or alive() is None

    def record(k, g, what):
        with first_lock:
            if first[0] is None or (k, g) < first[0][:2]:
                first[0] = (k, g, what)

    def needed(k, g):
        """Whether ``(k, g)`` comes before every failure so far (else its result is moot)."""
        f = first[0]
        return not stopped() and (f is None or (k, g) < f[:2])

    def take_turn(g):
        while not turn[g].acquire(timeout=POLL_SECONDS):
            if stopped() or first[0] is not None:
                return False
        return True

    def lane(g):
        for k in range(n_chunks):
            if not needed(k, g):
                return
            try:
                code = compute(g, k)
            except BaseException as e:          # noqa: B902 - raised on the calling thread
                record(k, g, e)
                return
            if code[-1] >= 0:
                record(k, g, code)
                return
            if not take_turn(g):
                continue                        # a failure: no more sums, only the computes
            try:
                if first[0] is None:
                    add(g, k)
            except BaseException as e:          # noqa: B902
                record(k, g, e)
                return
            finally:
                turn[1 - g].release()

    def run_second():
        with _running_lock:
            _running[0] += 1
        try:
            lane(1)
        finally:
            with _running_lock:
                _running[0] -= 1
            done.release()

    started = waited = False
    try:
        _thread.start_new_thread(run_second, ())
        started = True
        lane(0)
        done.acquire()
        waited = True
    finally:
        stop[0] = True
        for lock in turn:
            _release(lock)
        if started and not waited:
            done.acquire()
    if first[0] is None:
        return None
    k, g, what = first[0]
    if isinstance(what, BaseException):
        raise what
    return g, what
