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
whatever the threads. The groups run on two threads started with
``_thread.start_new_thread`` while the calling thread waits, so a Ctrl-C reaches
the calling thread in a wait, never inside a kernel call's argument handling;
the hand-over uses the interpreter's plain locks, whose operations either happen
or not when interrupted, and every wait polls a stop flag, as the pipeline does
(:mod:`revtrain.models.pipeline`).
"""
import _thread
import weakref

from .._threads import ThreadCount, CallToken, POLL_SECONDS, held_lock, release_if_held

#: Lanes running now (:func:`running`).
_running = ThreadCount()


def running():
    """How many lanes are running now (0 once every call has ended)."""
    return _running.n


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
        With 2 or more, the groups run on two threads of their own and only the ``add``
        calls take turns; else both run in the serial order on the calling thread.

    Returns
    -------
    None, or ``(g, code)`` of the first failure in the serial order (the same whatever
    ``threads``). An exception of either group is raised here (the first in the serial
    order) once both threads have ended. An interruption of the calling thread (which
    only waits) stops both within a chunk or ``POLL_SECONDS``, and is raised once they
    have ended.
    """
    if threads < 2:
        for k in range(n_chunks):
            for g in (0, 1):
                code = compute(g, k)
                if code[-1] >= 0:
                    return g, code
                add(g, k)
        return None

    # turn[g] free = group g may add its next chunk; wake released when a lane ends
    turn = [_thread.allocate_lock(), held_lock()]
    wake = held_lock()
    ended = [False, False]
    first = [None]                  # (k, g, code or exception) first in the serial order
    first_lock = _thread.allocate_lock()
    stop = [False]
    call = CallToken()              # gone once an interruption has unwound this call
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
                if first[0] is None and not stopped():
                    add(g, k)
            except BaseException as e:          # noqa: B902
                record(k, g, e)
                return
            finally:
                release_if_held(turn[1 - g])    # (already free if the call was stopped)

    def run_lane(g):
        try:
            with _running:
                lane(g)
        finally:
            ended[g] = True
            release_if_held(wake)

    started = 0
    try:
        for g in (0, 1):
            _thread.start_new_thread(run_lane, (g,))
            started += 1
        while not all(ended):
            wake.acquire(timeout=POLL_SECONDS)
    except BaseException:
        stop[0] = True              # interrupted: the lanes stop within a chunk or a poll
        for lock in turn:
            release_if_held(lock)
        raise
    finally:
        # the end is read from the lanes' flags, not from consuming a lock, so an
        # interruption anywhere here cannot make this wait for a release already taken
        while not all(ended[:started]):
            wake.acquire(timeout=POLL_SECONDS)
    if first[0] is None:
        return None
    k, g, what = first[0]
    if isinstance(what, BaseException):
        raise what
    return g, what
