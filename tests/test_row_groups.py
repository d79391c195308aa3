"""Row groups of the reversible cells: a batch cut into blocks of ROW_BLOCK rows that run on
threads at once, with results that do not depend on the number of threads."""
import numpy as np
import pytest

import revtrain as rt
from revtrain import _threads
from revtrain._kernels.gemm import ROW_BLOCK, matmul_rows
from revtrain.models.row_groups import row_groups, window_row_groups, MIN_HALVES

CELLS = (rt.RevLSTM, rt.RevGRU, rt.MomentumRNN)


def test_row_groups_cover_the_batch_in_fixed_blocks():
    assert ROW_BLOCK == 16
    assert row_groups(1) == [(0, 1)]
    assert row_groups(16) == [(0, 16)]
    assert row_groups(40) == [(0, 16), (16, 32), (32, 40)]
    for B in range(1, 70):
        g = row_groups(B)
        assert g[0][0] == 0 and g[-1][1] == B
        assert all(a[1] == b[0] for a, b in zip(g, g[1:]))
        assert all(0 < r1 - r0 <= ROW_BLOCK for r0, r1 in g)


def test_reversible_batches_up_to_32_rows_are_two_halves():
    """A reversible cell's batch: one group below MIN_HALVES rows (its backward pipelined),
    two halves up to 32 rows, blocks of 16 above; fixed by B alone."""
    assert MIN_HALVES == 4
    assert window_row_groups(1) == [(0, 1)] and window_row_groups(3) == [(0, 3)]
    assert window_row_groups(4) == [(0, 2), (2, 4)]
    assert window_row_groups(9) == [(0, 5), (5, 9)]
    assert window_row_groups(32) == [(0, 16), (16, 32)]
    assert window_row_groups(40) == row_groups(40)
    for B in range(1, 70):
        g = window_row_groups(B)
        assert g[0][0] == 0 and g[-1][1] == B
        assert all(a[1] == b[0] for a, b in zip(g, g[1:]))
        assert all(0 < r1 - r0 <= ROW_BLOCK for r0, r1 in g)


@pytest.mark.parametrize("cls", CELLS)
def test_halves_do_not_change_the_trajectory(cls, threads):
    """B = 6 runs as two halves of 3 rows: the final state and the state and input
    gradients are the bits of each half run alone (every row on its own; the half's loss
    weighs its rows twice, an exact factor 2); on 1 or 2 threads every output is the same."""
    m = cls(5, 8, 5, n_layers=2, dtype="float32")
    theta = m.init_params(1)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((21, 6, 5)), rng.integers(0, 5, (21, 6))
    out = {}
    for n in (1, 2):
        threads(n)
        out[n] = m.loss_and_grad(theta, x, y, input_grad=True, return_stats=True)
    assert out[1][0] == out[2][0] and np.array_equal(out[1][1], out[2][1])
    (_, _, ig, st) = out[2]
    for r0, r1 in window_row_groups(6):
        _, _, ig_h, st_h = m.loss_and_grad(theta, x[:, r0:r1], y[:, r0:r1], input_grad=True,
                                           return_stats=True)
        assert np.array_equal(st_h.final_state, st.final_state[r0:r1])
        assert np.array_equal(ig_h.initial_state, 2 * ig.initial_state[r0:r1])
        assert np.array_equal(ig_h.x, 2 * ig.x[:, r0:r1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_rows_is_its_blocks_computed_alone(dtype):
    """``matmul_rows`` = the product of each 16-row block on its own, bit for bit (a group of
    rows computes its blocks the same way), and the plain product to rounding: rows do not
    depend on the other rows at all (the vector kernels, float32 and float64)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 96)).astype(dtype)
    W = rng.standard_normal((200, 96)).astype(dtype)
    out = np.empty((40, 200), dtype=dtype)
    matmul_rows(A, W.T, out)
    for r0, r1 in row_groups(40):
        blk = np.empty((r1 - r0, 200), dtype=dtype)
        matmul_rows(np.ascontiguousarray(A[r0:r1]), W.T, blk)
        assert np.array_equal(out[r0:r1], blk)
    for r in (0, 5, 39):
        row = np.empty((1, 200), dtype=dtype)
        matmul_rows(np.ascontiguousarray(A[r:r + 1]), np.ascontiguousarray(W.T), row)
        assert np.array_equal(out[r], row[0])
    tol = 1e-4 if dtype == np.float32 else 1e-12
    assert np.allclose(out, A.astype(np.float64) @ W.T.astype(np.float64), rtol=tol, atol=tol)


def _problem(cls, dtype, B=40, T=7, float_inputs=False):
    kw = dict(n_layers=2, embed_dim=None if float_inputs else 4, dropout=0.2)
    m = cls(6, 10, 6, dtype=dtype, **kw)
    theta = m.init_params(seed=1)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((T, B, 6)) if float_inputs else rng.integers(0, 6, (T, B)))
    y = rng.integers(0, 6, (T, B))
    return m, theta, x, y


@pytest.mark.parametrize("cls", CELLS)
def test_three_groups_agree_with_the_per_step_reference(cls):
    """B = 40 (groups of 16, 16, 8) through the kernels against the per-step Python driver
    over all 40 rows: the same bits for the loss, the final state, the stored bytes and the
    state and input gradients; the parameter gradient (the groups' sums added) to 1e-13."""
    for float_inputs in (False, True):
        m, theta, x, y = _problem(cls, "float64", float_inputs=float_inputs)
        s0 = np.random.default_rng(3).uniform(-0.5, 0.5, (40, m.state_size))
        out = {}
        for kernels in (True, False):
            m.window_kernels = kernels
            out[kernels] = m.loss_and_grad(theta, x, y, initial_state=s0, dropout_seed=4,
                                           return_stats=True, input_grad=True)
        (lk, gk, ik, sk), (lr, gr, ir, sr) = out[True], out[False]
        assert lk == lr
        assert np.array_equal(sk.final_state, sr.final_state)
        assert sk.stored_bytes == sr.stored_bytes
        assert np.array_equal(ik.initial_state, ir.initial_state)
        if float_inputs:
            assert np.array_equal(ik.x, ir.x)
        assert np.max(np.abs(gk - gr)) <= 1e-13 * np.max(np.abs(gr))


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_threads_do_not_change_the_bits(cls, dtype, threads):
    """1, 2 or 3 threads over the groups of B = 40: every output identical, the weight
    gradient included (the groups are fixed by B, their sums added in group order)."""
    m, theta, x, y = _problem(cls, dtype)
    res = []
    for n in (1, 2, 3):
        threads(n)
        for mode in ("reversible", "standard"):
            loss, grad, st = m.loss_and_grad(theta, x, y, bptt=mode, dropout_seed=5,
                                             return_stats=True)
            res.append((mode, loss, grad, st.final_state))
    for mode in ("reversible", "standard"):
        runs = [r for r in res if r[0] == mode]
        for r in runs[1:]:
            assert r[1] == runs[0][1]
            assert np.array_equal(r[2], runs[0][2])
            assert np.array_equal(r[3], runs[0][3])
    # and reversible == standard bit for bit, as with one group
    assert res[0][1] == res[1][1] and np.array_equal(res[0][2], res[1][2])


def test_a_group_fault_names_the_batch_row():
    """A flipped bit in row 3 of the third group (batch row 35) is reported as batch row 35."""
    m = rt.RevLSTM(5, 8, 5)
    theta = m.init_params(0)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, (30, 40)), rng.integers(0, 5, (30, 40))
    seen = []

    def hook(when, run):
        seen.append((when, run.row0, run.B))
        if when == "before" and run.row0 == 32:
            run.layer_q(0)["c1"][3, 2] ^= 1 << 61
    m._fault_hook = hook
    with pytest.raises(rt.ReversalError, match=r"batch row 35, unit 2"):
        m.loss_and_grad(theta, x, y)
    assert sorted(r for w, r, _ in seen if w == "before") == [0, 16, 32]
    assert {(r, b) for _, r, b in seen} == {(0, 16), (16, 16), (32, 8)}


def test_an_error_in_one_group_is_raised_whatever_the_threads(threads):
    """run_groups finishes every call, then raises the lowest index's error."""
    def fn(i):
        if i in (1, 3):
            raise ValueError(f"group {i}")
        return i
    for n in (1, 2, 4):
        threads(n)
        with pytest.raises(ValueError, match="group 1"):
            _threads.run_groups(fn, 5)
        assert _threads.run_groups(lambda i: i * i, 5) == [0, 1, 4, 9, 16]


def test_row_threads_setting(threads, monkeypatch):
    threads(None)
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert _threads.get_row_threads() == _threads.usable_cores()
    # under MPI the processes of a machine share its cores
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")
    assert _threads.get_row_threads() == max(1, _threads.usable_cores() // 2)
    monkeypatch.setenv("MPI_LOCALNRANKS", "64")
    assert _threads.get_row_threads() == 1
    assert rt.get_row_threads is _threads.get_row_threads
    threads(3)
    assert _threads.get_row_threads() == 3
    with pytest.raises(ValueError):
        threads(0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_standard_cells_in_groups_match_the_numpy_reference(cell, threads):
    """Standard cells run the 3 groups of B = 40 as batches of their own: loss, gradient and
    dL/d state0 against the plain NumPy reference of test_stacks (complex-step gradient) to
    1e-12, in both BPTT modes, with identical bits on 1 and 2 threads."""
    from test_stacks import _case, ref_loss, cs_partials, rel_err
    m, theta, x, y, s0, dseed, masks = _case(cell, "tokens_embed", B=40)
    ref = ref_loss(m, theta, x, y, s0, masks)
    gref = cs_partials(lambda th: ref_loss(m, th, x, y, s0, masks), theta)
    out = []
    for n in (1, 2):
        threads(n)
        for mode in ("standard", "checkpoint"):
            loss, grad, ig = m.loss_and_grad(theta, x, y, bptt=mode, initial_state=s0,
                                             dropout_seed=dseed, input_grad=True)
            assert abs(loss - ref) <= 1e-12 * abs(ref)
            assert rel_err(grad, gref) <= 1e-12
            out.append((loss, grad, ig.initial_state))
    dref = cs_partials(lambda ss: ref_loss(m, theta, x, y, ss, masks), s0)
    assert rel_err(out[0][2], dref) <= 1e-12
    for a, b in ((out[0], out[2]), (out[1], out[3])):     # the same mode on 1 and 2 threads
        assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])


@pytest.mark.parametrize("cls", CELLS)
def test_forward_only_passes_in_groups(cls, threads):
    """loss, predict and final_state run the groups on threads: the same bits on 1 and 2
    threads and as the per-step reference's loss, the final state equal to loss_and_grad's
    (the same trajectory) and the loss equal to its loss to rounding (steps summed in the
    other order)."""
    m, theta, x, y = _problem(cls, "float64")
    res = []
    for n in (1, 2):
        threads(n)
        res.append((m.loss(theta, x, y), m.predict(theta, x), m.final_state(theta, x)))
    assert res[0][0] == res[1][0]
    assert np.array_equal(res[0][1], res[1][1]) and np.array_equal(res[0][2], res[1][2])
    loss, _, st = m.loss_and_grad(theta, x, y, return_stats=True)
    assert np.array_equal(res[0][2], st.final_state)
    assert abs(res[0][0] - loss) <= 1e-13 * abs(loss)
    # the loss alone is the per-step reference's bits (steps in forward order)
    m.window_kernels = False
    assert m.loss(theta, x, y) == res[0][0]
    m.window_kernels = True
    # predict row r equals predict on that row alone (the rows are independent)
    alone = m.predict(theta, x[:, 35:36])
    assert np.allclose(res[0][1][:, 35:36], alone, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", CELLS)
def test_groups_read_the_batch_targets_in_place(cls, threads, monkeypatch):
    """Row groups read the batch's token ids, labels and targets in place: every group's
    backward gets the same arrays (float32 targets of an MSE model converted once per call,
    not once per group), and the result is the per-step reference's: loss and final state
    the same bits, the gradient to rounding, also for a target on the last step only."""
    from revtrain.models.window import WindowRun
    seen = []
    orig = WindowRun.begin_backward

    def begin(self, *a, **k):
        bw = orig(self, *a, **k)
        seen.append((self.xtok, bw.labels, bw.target))
        return bw
    monkeypatch.setattr(WindowRun, "begin_backward", begin)
    threads(2)
    rng = np.random.default_rng(5)
    T, B = 6, 40
    x = rng.integers(0, 6, (T, B))
    for last_only in (False, True):
        y = rng.standard_normal((B, 3) if last_only else (T, B, 3))
        res = {}
        for dtype in ("float64", "float32"):
            m = cls(6, 10, 3, loss="mse", dtype=dtype, embed_dim=4)
            theta = m.init_params(seed=2)
            seen.clear()
            res[dtype] = m.loss_and_grad(theta, x, y, return_stats=True)
            assert len(seen) == 3                                  # groups of 16, 16, 8
            for xt, lab, tgt in seen:
                assert xt[0] is seen[0][0][0] and np.shares_memory(xt[0], x)
                assert tgt[0] is seen[0][2][0]                     # one conversion per call
                assert tgt[0].dtype == m.dtype and tgt[0].shape == (y.size // 3, 3)
            assert sorted(s[2][1] for s in seen) == [0, 16, 32]    # the groups' first rows
        m64 = cls(6, 10, 3, loss="mse", embed_dim=4)
        m64.window_kernels = False                                 # the per-step driver
        lr, gr, sr = m64.loss_and_grad(m64.init_params(seed=2), x, y, return_stats=True)
        lk, gk, sk = res["float64"]
        assert lk == lr and np.array_equal(sk.final_state, sr.final_state)
        assert np.max(np.abs(gk - gr)) <= 1e-12 * np.max(np.abs(gr))
        l32, g32, _ = res["float32"]
        assert abs(l32 - lr) <= 1e-4 * abs(lr)
        assert np.max(np.abs(g32 - gr)) <= 1e-3 * np.max(np.abs(gr))
