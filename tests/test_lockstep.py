"""Two row groups adding into one gradient (revtrain.models.lockstep): the serial order's
results on any number of threads, the same failure, nothing left running."""
import threading
import time
import tracemalloc

import numpy as np
import pytest

import revtrain as rt
from revtrain.models import lockstep
from revtrain.models.lockstep import run_lockstep

CELLS = (rt.RevLSTM, rt.RevGRU, rt.MomentumRNN)


def _recorder(n_chunks, fail_at=None, raise_at=None, slow=()):
    """compute/add callables that log the adds and fail (code) or raise where told."""
    log, lock = [], threading.Lock()

    def compute(g, k):
        if (k, g) in slow:
            time.sleep(0.01)
        if raise_at == (k, g):
            raise ValueError(f"group {g} chunk {k}")
        return (k, g, 7 if fail_at == (k, g) else -1)

    def add(g, k):
        with lock:
            log.append((k, g))
    return compute, add, log


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("slow", [(), ((0, 0), (2, 0)), ((1, 1), (3, 1))])
def test_adds_come_in_the_serial_order(threads, slow):
    compute, add, log = _recorder(5, slow=slow)
    assert run_lockstep(5, compute, add, threads) is None
    assert log == [(k, g) for k in range(5) for g in (0, 1)]
    assert lockstep.running() == 0


@pytest.mark.parametrize("fail_at", [(0, 0), (0, 1), (2, 0), (3, 1), (4, 1)])
def test_the_first_failure_in_the_serial_order_whatever_the_threads(fail_at):
    out = {}
    for threads in (1, 2):
        compute, add, log = _recorder(5, fail_at=fail_at)
        out[threads] = run_lockstep(5, compute, add, threads)
        # no add after the failure's place in the serial order
        assert all(a < fail_at for a in log)
    k, g = fail_at
    assert out[1] == out[2] == (g, (k, g, 7))
    assert lockstep.running() == 0


def test_an_exception_is_raised_after_the_second_lane_ended():
    for threads in (1, 2):
        for where in ((1, 0), (2, 1)):
            compute, add, _ = _recorder(4, raise_at=where)
            with pytest.raises(ValueError, match=f"group {where[1]} chunk {where[0]}"):
                run_lockstep(4, compute, add, threads)
            assert lockstep.running() == 0


def test_an_interrupted_call_leaves_nothing_running():
    """KeyboardInterrupt in the calling thread's work: the second lane, waiting for its turn
    or computing, stops by itself."""
    def compute(g, k):
        if g == 0 and k == 2:
            raise KeyboardInterrupt
        return (k, g, -1)
    with pytest.raises(KeyboardInterrupt):
        run_lockstep(6, compute, lambda g, k: None, 2)
    for _ in range(100):
        if lockstep.running() == 0:
            break
        time.sleep(0.01)
    assert lockstep.running() == 0


def _problem(cls, B, dtype="float32", T=37, dropout=0.2):
    m = cls(6, 10, 6, n_layers=2, embed_dim=4, dropout=dropout, dtype=dtype)
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 6, (T, B)), rng.integers(0, 6, (T, B))
    return m, m.init_params(2), x, y


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("B", [4, 7])
def test_halves_give_the_same_bits_on_one_or_two_threads(cls, B, threads):
    """Two halves (embedding input, dropout, two layers): loss and gradient the same bits
    on 1 and 2 threads, reversible equal to standard, and the gradient within rounding of
    the halves' gradients computed alone and summed."""
    m, theta, x, y = _problem(cls, B)
    res = {}
    for n in (1, 2):
        threads(n)
        for mode in ("reversible", "standard"):
            res[n, mode] = m.loss_and_grad(theta, x, y, bptt=mode, dropout_seed=4)
    ref_loss, ref_grad = res[1, "reversible"]
    for key, (loss, grad) in res.items():
        assert loss == ref_loss and np.array_equal(grad, ref_grad), key
    # each half alone weighs its rows by 1/(its rows); the whole batch by 1/B
    m, theta, x, y = _problem(cls, B, dropout=0.0)
    h = (B + 1) // 2
    g0 = m.loss_and_grad(theta, x[:, :h], y[:, :h])[1] * (h / B)
    g1 = m.loss_and_grad(theta, x[:, h:], y[:, h:])[1] * ((B - h) / B)
    plain = m.loss_and_grad(theta, x, y)[1]
    assert np.max(np.abs(plain - (g0 + g1))) <= 1e-5 * np.max(np.abs(plain))


@pytest.mark.parametrize("threads_n", [1, 2])
def test_halves_hold_one_gradient(threads_n, threads):
    """At the end of the halves' backward passes the call holds one parameter-sized
    gradient, not one per half."""
    threads(threads_n)
    m = rt.RevLSTM(16, 64, 16, dtype="float32")
    theta = m.init_params(0).astype(np.float32)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 16, (5, 8)), rng.integers(0, 16, (5, 8))
    grad_bytes = m.size * 4
    counts = []

    def hook(when, run):
        if when == "after" and run.row0 > 0:
            traces = tracemalloc.take_snapshot().traces
            counts.append(sum(grad_bytes <= t.size < grad_bytes + 1024 for t in traces))
    m._fault_hook = hook
    tracemalloc.start()
    try:
        m.loss_and_grad(theta, x, y)
    finally:
        tracemalloc.stop()
    assert counts == [1]


STRESS = r'''
import random, signal, sys, time
from revtrain.models import lockstep
from revtrain.models.lockstep import run_lockstep

armed = [False]

def handler(sig, frame):
    if armed[0]:              # once per call, never in the loop's own clean-up
        armed[0] = False
        raise KeyboardInterrupt
signal.signal(signal.SIGALRM, handler)
rnd = random.Random(5)
log = []

def compute(g, k):
    time.sleep(rnd.uniform(0, 2e-4))
    return (k, g, -1)

def add(g, k):
    log.append((k, g))
    time.sleep(rnd.uniform(0, 1e-4))

hits = 0
for i in range(400):
    log.clear()
    try:
        armed[0] = True
        signal.setitimer(signal.ITIMER_REAL, rnd.uniform(1e-5, 3e-3))
        run_lockstep(8, compute, add, 2)
        armed[0] = False
    except KeyboardInterrupt:
        hits += 1
    signal.setitimer(signal.ITIMER_REAL, 0)
for _ in range(100):
    if lockstep.running() == 0:
        break
    time.sleep(0.01)
log.clear()
assert run_lockstep(8, compute, add, 2) is None
assert log == [(k, g) for k in range(8) for g in (0, 1)], log
print("OK", hits, lockstep.running())
'''


def test_random_interruptions_leave_nothing_running_and_no_hang(tmp_path):
    """400 calls interrupted at random moments (SIGALRM raising KeyboardInterrupt in the
    calling thread): no hang (the subprocess's timeout), no lane left running, and the next
    call adds in the serial order."""
    import subprocess
    import sys
    script = tmp_path / "stress.py"
    script.write_text(STRESS)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    ok, hits, running = res.stdout.split()
    assert ok == "OK" and int(hits) > 50 and running == "0"
    assert "Exception ignored in thread" not in res.stderr, res.stderr[-2000:]


def test_an_exception_in_the_second_group_alone_and_the_next_call(threads):
    """A group-1 exception is raised on 1 and 2 threads; nothing stays running and the
    next call gives the bits of a clean call."""
    m, theta, x, y = _problem(rt.RevGRU, 9)
    ref = m.loss_and_grad(theta, x, y, dropout_seed=1)
    from revtrain.models import window
    orig = window.WindowRun.add_chunk_grads

    def add(self, bw, k):
        if self.row0 > 0 and k == 1:
            raise ValueError("add of group 1")
        return orig(self, bw, k)
    for n in (1, 2):
        threads(n)
        window.WindowRun.add_chunk_grads = add
        try:
            with pytest.raises(ValueError, match="add of group 1"):
                m.loss_and_grad(theta, x, y, dropout_seed=1)
        finally:
            window.WindowRun.add_chunk_grads = orig
        assert lockstep.running() == 0
        loss, grad = m.loss_and_grad(theta, x, y, dropout_seed=1)
        assert loss == ref[0] and np.array_equal(grad, ref[1])


def test_a_forked_child_counts_no_lanes():
    """A child forked while a lane runs has none: its count restarts at 0 and it can call."""
    import os
    import threading
    m, theta, x, y = _problem(rt.RevLSTM, 6)
    ref = m.loss_and_grad(theta, x, y, dropout_seed=2)
    inside = threading.Event()
    release = threading.Event()

    def compute(g, k):
        inside.set()
        release.wait(5)
        return (k, g, -1)
    t = threading.Thread(target=run_lockstep, args=(2, compute, lambda g, k: None, 2))
    t.start()
    inside.wait(5)
    assert lockstep.running() >= 1
    pid = os.fork()
    if pid == 0:                                    # the child
        ok = lockstep.running() == 0
        loss, grad = m.loss_and_grad(theta, x, y, dropout_seed=2)
        ok = ok and loss == ref[0] and np.array_equal(grad, ref[1])
        os._exit(0 if ok else 1)
    release.set()
    t.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
