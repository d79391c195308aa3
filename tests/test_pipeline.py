"""The pipelined reversible backward: a run alone in its call (one row group: ``B <= 3``)
undoes its steps on a second thread while this one backpropagates, with the serial loop's
bits."""
import time

import numpy as np
import pytest

import revtrain as rt
from revtrain.models import pipeline


CELLS = (rt.RevLSTM, rt.RevGRU, rt.MomentumRNN)


@pytest.fixture
def stages(monkeypatch):
    """Count the pipeline's backpropagation-stage calls (of every pipelined cell)."""
    calls = []
    for cls in CELLS:
        win = cls.window_class
        orig = win._backprop_chunk

        def spy(self, *a, _orig=orig):
            calls.append(a[0])
            return _orig(self, *a)
        monkeypatch.setattr(win, "_backprop_chunk", spy)
    return calls


def _stages_left():
    """First stages still running a moment after the calls ended (none: a list to compare)."""
    for _ in range(100):
        if pipeline.running() == 0:
            return []
        time.sleep(0.01)
    return [pipeline.running()]


CASES = {
    # one row, one-hot input, T not a multiple of the chunk
    "B1-onehot": dict(B=1, T=70, n_layers=1, embed_dim=None, dropout=0.0, floats=False),
    # a stack with an embedding and dropout masks
    "B2-embed-dropout": dict(B=2, T=45, n_layers=2, embed_dim=4, dropout=0.3, floats=False),
    # float inputs: input gradients, an initial state
    "B3-floats": dict(B=3, T=33, n_layers=2, embed_dim=None, dropout=0.0, floats=True),
}


def _call(cls, case, dtype):
    c = CASES[case]
    m = cls(6, 10, 6, n_layers=c["n_layers"], embed_dim=c["embed_dim"],
                   dropout=c["dropout"], dtype=dtype)
    theta = m.init_params(seed=1)
    rng = np.random.default_rng(2)
    T, B = c["T"], c["B"]
    x = rng.standard_normal((T, B, 6)) if c["floats"] else rng.integers(0, 6, (T, B))
    y = rng.integers(0, 6, (T, B))
    s0 = rng.uniform(-0.5, 0.5, (B, m.state_size))
    kw = dict(dropout_seed=3) if c["dropout"] else {}
    return m.loss_and_grad(theta, x, y, initial_state=s0, return_stats=True, input_grad=True,
                           **kw)


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_pipelined_backward_gives_the_serial_bits(cls, case, dtype, threads, stages):
    """One thread: the serial loop; two: the pipeline (its stage ran). Every output is the
    same bits: loss, parameter gradient, final state, state and input gradients."""
    threads(1)
    serial = _call(cls, case, dtype)
    assert stages == []
    threads(2)
    piped = _call(cls, case, dtype)
    assert len(stages) > 1                  # several chunks went through both stages
    (l1, g1, i1, s1), (l2, g2, i2, s2) = serial, piped
    assert l1 == l2
    assert np.array_equal(g1, g2)
    assert np.array_equal(s1.final_state, s2.final_state)
    assert s1.stored_bytes == s2.stored_bytes
    assert np.array_equal(i1.initial_state, i2.initial_state)
    if CASES[case]["floats"]:
        assert np.array_equal(i1.x, i2.x)
    assert _stages_left() == []


def test_only_a_run_alone_in_its_call_is_pipelined(threads, stages):
    """B = 4 and B = 20 are two row groups, which keep the two threads busy already: no
    pipeline; B = 1 is pipelined."""
    threads(2)
    m = rt.RevLSTM(5, 8, 5)
    rng = np.random.default_rng(0)
    for B in (20, 4):
        m.loss_and_grad(m.init_params(0), rng.integers(0, 5, (12, B)),
                        rng.integers(0, 5, (12, B)))
    assert stages == []
    m.loss_and_grad(m.init_params(0), rng.integers(0, 5, (12, 1)), rng.integers(0, 5, (12, 1)))
    assert len(stages) > 0


def _single_row(cls=rt.RevLSTM):
    m = cls(5, 8, 5)
    rng = np.random.default_rng(1)
    return m, m.init_params(0), rng.integers(0, 5, (200, 1)), rng.integers(0, 5, (200, 1))


@pytest.mark.parametrize("cls", CELLS)
def test_a_corrupted_state_is_reported_as_without_the_pipeline(cls, threads):
    """A flipped bit in the kept final state: the same ReversalError on 1 and 2 threads."""
    m, theta, x, y = _single_row(cls)

    def hook(when, run):
        if when == "before":
            run.layer_q(0)[run.parts[-1]][0, 3] ^= 1 << 40      # h2 or v
    m._fault_hook = hook
    msgs = []
    for n in (1, 2):
        threads(n)
        with pytest.raises(rt.ReversalError) as err:
            m.loss_and_grad(theta, x, y)
        msgs.append(str(err.value))
    assert msgs[0] == msgs[1]
    assert _stages_left() == []


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("stage", ["_undo_chunk", "_backprop_chunk"])
def test_an_error_in_either_stage_stops_both(cls, stage, threads, monkeypatch):
    """An exception in the third chunk of either stage is raised by loss_and_grad, and the
    undo thread has ended; the next call works."""
    threads(2)
    m, theta, x, y = _single_row(cls)
    win = cls.window_class
    orig = getattr(win, stage)
    seen = []

    def failing(self, *a):
        seen.append(a[0])
        if len(seen) == 3:
            raise RuntimeError(f"stage {stage} failed")
        return orig(self, *a)
    monkeypatch.setattr(win, stage, failing)
    with pytest.raises(RuntimeError, match=f"stage {stage} failed"):
        m.loss_and_grad(theta, x, y)
    assert _stages_left() == []
    monkeypatch.setattr(win, stage, orig)
    threads(1)
    want = m.loss_and_grad(theta, x, y)
    threads(2)
    got = m.loss_and_grad(theta, x, y)
    assert want[0] == got[0] and np.array_equal(want[1], got[1])


def test_an_interruption_while_the_stage_starts_leaves_nothing_running(threads, monkeypatch):
    """Ctrl-C right after the first stage's thread started (before this call knew it had):
    KeyboardInterrupt is raised, the stage stops by itself, and the next call gives the
    serial bits."""
    import _thread
    threads(2)
    m, theta, x, y = _single_row()

    class Interrupted:
        allocate_lock = staticmethod(_thread.allocate_lock)

        @staticmethod
        def start_new_thread(fn, args):
            _thread.start_new_thread(fn, args)
            raise KeyboardInterrupt
    monkeypatch.setattr(pipeline, "_thread", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        m.loss_and_grad(theta, x, y)
    assert _stages_left() == []
    monkeypatch.undo()
    threads(1)
    want = m.loss_and_grad(theta, x, y)
    threads(2)
    got = m.loss_and_grad(theta, x, y)
    assert want[0] == got[0] and np.array_equal(want[1], got[1])


def _fork_child(q):
    m, theta, x, y = _single_row()
    loss1 = m.loss_and_grad(theta, x, y)[0]                    # one group: the pipeline
    xs = np.random.default_rng(4).integers(0, 5, (20, 40))
    loss2 = m.loss_and_grad(theta, xs, xs)[0]                  # three groups: the row pool
    q.put((loss1, loss2))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_runs_both_thread_pools(threads):
    """After the parent used both pools, a forked child (which has the pool objects but
    not their threads) still runs pipelined and grouped calls to the end."""
    import multiprocessing as mp
    threads(2)
    m, theta, x, y = _single_row()
    want1 = m.loss_and_grad(theta, x, y)[0]
    xs = np.random.default_rng(4).integers(0, 5, (20, 40))
    want2 = m.loss_and_grad(theta, xs, xs)[0]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_fork_child, args=(q,))
    p.start()
    p.join(120)
    if p.is_alive():
        p.kill()
        pytest.fail("the forked child hung")
    assert p.exitcode == 0
    assert q.get(timeout=5) == (want1, want2)


def test_revlstm_slots_keep_five_gates_and_the_gradients_in_them(threads, monkeypatch):
    """A pipelined RevLSTM's slots keep 5 of the 7 gate arrays per half (the floored f, p are
    recomputed), its states as float (not int64), and the chunk's pre-activation gradients
    in the gates' own memory: the backward allocates no ``dPb`` of its own. (The bits of
    the result against the serial loop: test_pipelined_backward_gives_the_serial_bits.)"""
    from revtrain.models.window import WindowRun
    threads(2)
    seen = {}
    orig_slot, orig_begin = WindowRun._undo_slot, WindowRun.begin_backward

    def slot(self):
        s = orig_slot(self)
        seen.setdefault("slots", []).append(s)
        return s

    def begin(self, *a, **k):
        bw = orig_begin(self, *a, **k)
        seen["bw"] = bw
        return bw
    monkeypatch.setattr(WindowRun, "_undo_slot", slot)
    monkeypatch.setattr(WindowRun, "begin_backward", begin)
    m, theta, x, y = _single_row()
    m.loss_and_grad(theta, x, y)
    assert len(seen["slots"]) == 2 and seen["bw"].dPb is None
    for s in seen["slots"]:
        assert s.Gs.shape[2:4] == (2, 5)
        assert s.Qs.dtype == np.float64 and s.XHs.size == s.Gs.shape[1]   # one-layer stand-in
        assert s.dPb.shape[-1] == m._n_proj and np.shares_memory(s.dPb, s.Gs)


@pytest.mark.parametrize("n_slots", [2, 3])
def test_pipeline_hands_every_chunk_over_in_order_and_runs_at_most_a_slot_ahead(n_slots):
    """run_pipeline with 2 or 3 slots: the second stage gets every chunk in order, in the slot
    the first stage filled for it, and the first stage never starts chunk ``k`` before the
    second finished chunk ``k - n_slots`` (it would overwrite a slot still being read)."""
    chunks = [(k,) for k in range(40)]
    slots = [dict(i=i, k=None) for i in range(n_slots)]
    finished, ahead = [-1], []

    def first(k, slot):
        ahead.append(k - finished[0])
        assert slot["k"] is None
        slot["k"] = k
        time.sleep(0.0005 * (k % 3))            # uneven chunks, both ways
        return (0, -1)

    def second(k, slot, code):
        assert slot["k"] == k and slot["i"] == k % n_slots and code == (0, -1)
        time.sleep(0.0005 * ((k + 1) % 3))
        slot["k"] = None
        finished[0] = k
    pipeline.run_pipeline(chunks, slots, first, second)
    assert finished[0] == 39 and max(ahead) <= n_slots and _stages_left() == []


def test_small_float32_runs_take_a_third_slot(threads, monkeypatch):
    """A pipelined float32 run with small slots (B = 1) takes three, float64 two (its peak
    memory is held to the per-step code's); either gives the serial loop's bits."""
    from revtrain.models.window import WindowRun
    counts = []
    orig = WindowRun._slot_count

    def count(self, slot):
        counts.append(orig(self, slot))
        return counts[-1]
    monkeypatch.setattr(WindowRun, "_slot_count", count)
    for dtype, want in (("float32", 3), ("float64", 2)):
        m = rt.RevLSTM(5, 8, 5, dtype=dtype)
        theta = m.init_params(0).astype(dtype)
        rng = np.random.default_rng(1)
        x, y = rng.integers(0, 5, (200, 1)), rng.integers(0, 5, (200, 1))
        threads(2)
        counts.clear()
        loss, grad = m.loss_and_grad(theta, x, y)
        assert counts == [want]
        threads(1)
        loss1, grad1 = m.loss_and_grad(theta, x, y)
        assert loss == loss1 and np.array_equal(grad, grad1)
