"""RevMDRNN: exact reversal over grids, reversible BPTT == stored-state BPTT, gradient checks.

Gradient check (as for the sequence cells in test_reversible.py). The
fixed-point loss is piecewise constant, so central differences of the model's
own loss measure quantisation jumps. Reversible BPTT computes the
straight-through gradient: the float cell differentiated at the fixed-point
states. That is exactly the gradient of a smooth *frozen-offset* model,
written here in plain NumPy cell by cell in row-major order::

    v'[i,j] = gam * v'[i-1,j] + (1-gam) * g + dv[i,j]
    h'[i,j] = h'[i-1,j] + v'[i,j] + dh[i,j]

(``gam``, ``g`` from ``x[i,j]``, ``h'[i-1,j]``, ``h'[i,j-1]``), where the
offsets ``dv``, ``dh`` are measured on the model's fixed-point trajectory at
the base ``theta``. There it reproduces the trajectory and the loss; its
central differences check the gradient and its second differences the
complex-step Hessian-vector product.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import revtrain as rt
from revtrain import RevMDRNN


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


# --------------------------------------------------------------- reference
def ref_cell(m, p, hN, vN, hW, xin, tokens):
    """Float update of one cell (B rows): returns the raw ``v`` before adding ``h``."""
    H = m.n_hidden
    P = p["V"][xin] if tokens else xin @ p["V"]
    A = hN @ p["W_n"] + hW @ p["W_w"] + P
    g = np.tanh(A[:, :H] + p["b"])
    F = m.floor
    gam = F + (1 - F) * _sig(A[:, H:] + p["b_g"]) if m.learned else m.gamma
    return gam * vN + (1 - gam) * g


def ref_forward(m, theta, x, offsets=None):
    """Slow row-major sweep of the float (or frozen-offset) recurrence; (h, v) of shape (rows, cols, B, H)."""
    p = m.params(theta)
    tokens = x.dtype.kind == "i"
    rows, cols, B = x.shape[:3]
    H = m.n_hidden
    h = np.zeros((rows, cols, B, H))
    v = np.zeros((rows, cols, B, H))
    z = np.zeros((B, H))
    for i in range(rows):
        for j in range(cols):
            hN = h[i - 1, j] if i > 0 else z
            vN = v[i - 1, j] if i > 0 else z
            hW = h[i, j - 1] if j > 0 else z
            vv = ref_cell(m, p, hN, vN, hW, x[i, j], tokens)
            if offsets is not None:
                vv = vv + offsets[0][i, j]
            v[i, j] = vv
            h[i, j] = hN + vv + (0.0 if offsets is None else offsets[1][i, j])
    return h, v


def ref_loss(m, theta, h, y):
    p = m.params(theta)
    rows, cols, B, H = h.shape
    if m.loss_kind == "softmax":
        hh = h.reshape(-1, H) if y.ndim == 3 else h[-1, -1]
        yy = y.reshape(-1)
        z = hh @ p["U"] + p["b_y"]
        zm = z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z - zm).sum(axis=1)) + zm[:, 0]
        return float((lse - z[np.arange(len(yy)), yy]).mean())
    hh = h.reshape(-1, H) if y.ndim == 4 else h[-1, -1]
    out = hh @ p["U"] + p["b_y"]
    return float(((out - y.reshape(out.shape)) ** 2).mean())


def fixed_trajectory(m, theta, x):
    """The model's fixed-point (h, v) per cell: v[i] = h[i] - h[i-1] exactly."""
    h = m._hidden(theta, x, x.dtype.kind == "i", None)[0]
    v = np.diff(h, axis=0, prepend=0.0)
    return h, v


def offsets_of(m, theta, x, h, v):
    p = m.params(theta)
    tokens = x.dtype.kind == "i"
    rows, cols, B, H = h.shape
    dv = np.zeros_like(v)
    dh = np.zeros_like(h)
    z = np.zeros((B, H))
    for i in range(rows):
        for j in range(cols):
            hN = h[i - 1, j] if i > 0 else z
            vN = v[i - 1, j] if i > 0 else z
            hW = h[i, j - 1] if j > 0 else z
            dv[i, j] = v[i, j] - ref_cell(m, p, hN, vN, hW, x[i, j], tokens)
            dh[i, j] = h[i, j] - (hN + v[i, j])
    return dv, dh


def grid_data(seed, rows, cols, B, n_in, n_out, tokens=True, per_cell=True, loss="softmax"):
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, n_in, (rows, cols, B)) if tokens
         else rng.standard_normal((rows, cols, B, n_in)))
    if loss == "softmax":
        y = rng.integers(0, n_out, (rows, cols, B) if per_cell else (B,))
    else:
        y = rng.standard_normal((rows, cols, B, n_out) if per_cell else (B, n_out))
    return x, y


# ------------------------------------------------------------------- tests
VARIANTS = {
    # name: (gamma, loss, tokens, per_cell, rows, cols, B)
    "tokens_cells": (None, "softmax", True, True, 4, 7, 3),
    "float_last_mse": (None, "mse", False, False, 6, 3, 2),
    "const_gamma": (0.6, "softmax", True, True, 5, 5, 2),
    "one_row": (None, "softmax", False, True, 1, 6, 2),
    "one_col_mse_cells": (0.5, "mse", True, True, 7, 1, 3),
    "last_cell_softmax": (None, "softmax", True, False, 3, 4, 1),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reversible_equals_standard(variant):
    """Same loss and gradient (<= 1e-12 relative) from reversible and stored-state BPTT."""
    gamma, loss, tokens, per_cell, rows, cols, B = VARIANTS[variant]
    D, H, O = 5, 6, 4
    m = RevMDRNN(D, H, O, loss=loss, gamma=gamma)
    theta = m.init_params(seed=2)
    x, y = grid_data(3, rows, cols, B, D, O, tokens, per_cell, loss)
    lr, gr, sr = m.loss_and_grad(theta, x, y, return_stats=True)
    ls, gs, ss = m.loss_and_grad(theta, x, y, bptt="standard", return_stats=True)
    assert sr.mode == "reversible" and ss.mode == "standard"
    assert lr == ls
    assert np.abs(gr - gs).max() <= 1e-12 * np.abs(gs).max()
    assert np.abs(gr).max() > 0
    assert np.array_equal(sr.final_state, ss.final_state)
    assert abs(m.loss(theta, x, y) - lr) <= 1e-12 * abs(lr)
    # accounting: reversible keeps the buffer + the frontier (one row of h and v);
    # standard keeps every cell's h and v
    assert sr.stored_bytes == sr.buffer_bytes + 2 * cols * B * H * 8
    assert ss.stored_bytes == 2 * rows * cols * B * H * 8 and ss.buffer_bytes == 0
    assert sr.info_bits == ss.info_bits > 0
    assert sr.info_bits <= rows * cols * B * H * m.max_forget_bits


@pytest.mark.parametrize("gamma, loss, per_cell", [(None, "softmax", True),
                                                   (0.6, "softmax", True),
                                                   (None, "mse", False)])
def test_gradient_and_hvp_match_frozen_offset_reference(gamma, loss, per_cell):
    """Straight-through gradient and complex-step Hv against central differences of the reference."""
    rows, cols, B, D, H, O = 4, 3, 2, 3, 4, 3
    m = RevMDRNN(D, H, O, loss=loss, gamma=gamma)
    theta = m.init_params(seed=5)
    x, y = grid_data(6, rows, cols, B, D, O, tokens=False, per_cell=per_cell, loss=loss)
    h, v = fixed_trajectory(m, theta, x)
    offs = offsets_of(m, theta, x, h, v)
    lval, grad = m.loss_and_grad(theta, x, y)
    # the reference reproduces the fixed-point trajectory and loss at the base point
    hr, vr = ref_forward(m, theta, x, offs)
    assert np.abs(hr - h).max() <= 1e-13 and np.abs(vr - v).max() <= 1e-13
    assert abs(ref_loss(m, theta, hr, y) - lval) <= 1e-12 * max(1.0, abs(lval))
    # the offsets are rounding errors: small, not all zero; h = h_north + v exactly
    assert 0 < np.abs(offs[0]).max() < 1e-2
    assert np.abs(offs[1]).max() == 0.0

    def L(th):
        return ref_loss(m, th, ref_forward(m, th, x, offs)[0], y)

    rng = np.random.default_rng(7)
    eps = 1e-6
    dirs = [rng.standard_normal(theta.size) for _ in range(2)]
    for i in rng.choice(theta.size, 8, replace=False):
        e = np.zeros(theta.size)
        e[i] = 1.0
        dirs.append(e)
    for d in dirs:
        fd = (L(theta + eps * d) - L(theta - eps * d)) / (2 * eps)
        assert abs(fd - grad @ d) <= 1e-7 * max(1.0, np.abs(grad).max() * np.abs(d).sum())
    # complex-step Hessian-vector product (standard mode): v.Hv by a second difference
    d = rng.standard_normal(theta.size)
    hv = m.hvp(theta, x, y, d)
    l2, g2, hv2 = m.grad_and_hvp(theta, x, y, d)
    assert np.abs(g2 - grad).max() <= 1e-12 * np.abs(grad).max()
    assert np.array_equal(hv, hv2)
    step = 1e-4
    sd = (L(theta + step * d) - 2 * L(theta) + L(theta - step * d)) / step ** 2
    assert abs(sd - d @ hv) <= 2e-6 * max(1.0, abs(sd))


def test_high_precision_model_is_close_to_float_model():
    """With 48 fraction bits and 16 gate bits the fixed-point grid tracks the float recurrence."""
    rows, cols, B, D, H, O = 4, 5, 2, 3, 4, 3
    m = RevMDRNN(D, H, O, frac_bits=48, gate_bits=16)
    theta = m.init_params(seed=8)
    x, y = grid_data(9, rows, cols, B, D, O)
    lval, grad = m.loss_and_grad(theta, x, y)
    hf, _ = ref_forward(m, theta, x)
    h, _ = fixed_trajectory(m, theta, x)
    assert np.abs(h - hf).max() <= 1e-3
    assert abs(ref_loss(m, theta, hf, y) - lval) <= 1e-4 * abs(lval)
    rng = np.random.default_rng(10)
    for _ in range(2):
        d = rng.standard_normal(theta.size)
        eps = 1e-5
        fd = (ref_loss(m, theta + eps * d, ref_forward(m, theta + eps * d, x)[0], y)
              - ref_loss(m, theta - eps * d, ref_forward(m, theta - eps * d, x)[0], y)) / (2 * eps)
        assert abs(fd - grad @ d) <= 1e-3 * np.abs(grad).sum() * np.abs(d).max()


def test_predict_and_final_state_follow_the_fixed_point_trajectory():
    rows, cols, B, D, H, O = 3, 4, 2, 5, 3, 4
    m = RevMDRNN(D, H, O)
    theta = m.init_params(seed=4)
    x, y = grid_data(14, rows, cols, B, D, O)
    out = m.predict(theta, x)
    assert out.shape == (rows, cols, B, O)
    assert np.allclose(out.sum(axis=-1), 1.0)
    h, v = fixed_trajectory(m, theta, x)
    p = m.params(theta)
    z = h @ p["U"] + p["b_y"]
    assert np.allclose(out, np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True), atol=1e-13)
    _, _, st_ = m.loss_and_grad(theta, x, y, return_stats=True)
    fs = m.final_state(theta, x)
    assert fs.shape == (B, 2 * H) == st_.final_state.shape
    assert np.array_equal(fs, st_.final_state)
    assert np.array_equal(fs, np.concatenate([h[-1, -1], v[-1, -1]], axis=1))


def test_token_ids_equal_one_hot_inputs():
    rows, cols, B, D, H, O = 3, 3, 2, 4, 3, 3
    m = RevMDRNN(D, H, O)
    theta = m.init_params(seed=15)
    x, y = grid_data(16, rows, cols, B, D, O)
    oh = np.eye(D)[x]
    l1, g1 = m.loss_and_grad(theta, x, y)
    l2, g2 = m.loss_and_grad(theta, oh, y)
    assert abs(l1 - l2) <= 1e-14 * abs(l1)
    assert np.abs(g1 - g2).max() <= 1e-13 * np.abs(g1).max()


def test_large_grid_reconstructs_exactly():
    """A 100 x 100 grid (10**4 cells) at small H: every bit is recovered (else ReversalError)."""
    rows, cols, B, D, H, O = 100, 100, 2, 3, 2, 3
    m = RevMDRNN(D, H, O, loss="mse")
    theta = m.init_params(seed=11, scale=2.0)
    x, y = grid_data(12, rows, cols, B, D, O, per_cell=False, loss="mse")
    lval, grad, st_ = m.loss_and_grad(theta, x, y, return_stats=True)
    assert np.isfinite(lval) and np.isfinite(grad).all() and np.abs(grad).max() > 0
    k = m.max_forget_bits
    assert 0 < st_.info_bits <= rows * cols * B * H * k
    # one stream per batch row: the buffer holds about the information destroyed
    assert st_.buffer_bytes * 8 <= 1.02 * st_.info_bits + B * 96
    # and far less than storing the cells
    assert st_.stored_bytes * 20 < 2 * rows * cols * B * H * 8


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 6), B=st.integers(1, 3),
       H=st.integers(1, 3), seed=st.integers(0, 2 ** 31), frac=st.sampled_from([16, 32, 44]),
       gbits=st.sampled_from([4, 12, 16]), kbits=st.integers(1, 4), tokens=st.booleans(),
       scale=st.sampled_from([0.5, 1.0, 3.0]), const=st.booleans())
def test_random_shapes_reversible_equals_standard(rows, cols, B, H, seed, frac, gbits, kbits,
                                                  tokens, scale, const):
    D, O = 3, 3
    k = min(kbits, gbits)
    m = RevMDRNN(D, H, O, gamma=(0.75 if const else None), frac_bits=frac, gate_bits=gbits,
                 max_forget_bits=k)
    theta = m.init_params(seed=seed % 1000, scale=scale)
    x, y = grid_data(seed, rows, cols, B, D, O, tokens)
    lr, gr, sr = m.loss_and_grad(theta, x, y, return_stats=True)
    ls, gs = m.loss_and_grad(theta, x, y, bptt="standard")
    assert lr == ls
    assert np.abs(gr - gs).max() <= 1e-12 * max(np.abs(gs).max(), 1e-300)
    assert sr.info_bits <= rows * cols * B * H * k + 1e-6


def test_two_runs_give_identical_bits():
    m = RevMDRNN(5, 4, 4)
    theta = m.init_params(seed=3)
    x, y = grid_data(13, 6, 7, 3, 5, 4)
    a = m.loss_and_grad(theta, x, y, return_stats=True)
    b = m.loss_and_grad(theta, x, y, return_stats=True)
    assert a[0] == b[0]
    assert np.array_equal(a[1], b[1])
    assert a[2].buffer_bytes == b[2].buffer_bytes and a[2].info_bits == b[2].info_bits
    assert np.array_equal(a[2].final_state, b[2].final_state)


# ------------------------------------------------------------ fault injection
def _run_with_fault(m, theta, x, y, fault):
    """Reversible BPTT with ``fault(qh, qv, buf)`` applied just before the last diagonal is undone."""
    orig = m._undo_diag
    n_diag = x.shape[0] + x.shape[1] - 1

    def undo(p, x_, tokens, d, c0, c1, cs, qh, qv, hf, buf, w):
        if d == n_diag - 1:
            fault(qh, qv, buf)
        orig(p, x_, tokens, d, c0, c1, cs, qh, qv, hf, buf, w)

    m._undo_diag = undo
    try:
        return m.loss_and_grad(theta, x, y)
    finally:
        del m._undo_diag


def _flip_word(s, i, bit):
    def fault(qh, qv, buf):
        n = int(buf.counts[s])
        assert n > 0
        buf.words[s, i % n] ^= np.uint32(1 << bit)
    return fault


def _flip_state(s, bit):
    def fault(qh, qv, buf):
        buf.states[s] ^= np.uint64(1 << bit)
    return fault


def _flip_q(which, r, j, bit):
    def fault(qh, qv, buf):
        q = qh if which == "h" else qv
        q[r % q.shape[0], j % q.shape[1]] ^= np.int64(1 << bit)
    return fault


def test_one_flipped_bit_raises_reversal_error():
    m = RevMDRNN(5, 4, 4)
    theta = m.init_params(seed=1)
    x, y = grid_data(2, 6, 5, 3, 5, 4)
    loss, grad = _run_with_fault(m, theta, x, y, lambda qh, qv, buf: None)   # no fault: fine
    assert np.isfinite(grad).all()
    rng = np.random.default_rng(3)
    faults = [_flip_word(int(rng.integers(3)), int(rng.integers(1 << 20)), b) for b in (0, 13, 31)]
    faults += [_flip_word(0, 0, 5)]                                # the bottom word
    faults += [_flip_state(1, b) for b in (0, 20, 40, 63)]         # a stream's rANS state
    # the kept frontier: h and v of the last row, first and last columns, low to high bits
    faults += [_flip_q(w_, r, int(rng.integers(4)), b) for w_ in ("h", "v")
               for r in (0, 14) for b in (0, 31, 61)]
    for fault in faults:
        with pytest.raises(rt.ReversalError):
            _run_with_fault(m, theta, x, y, fault)


def test_a_flipped_deep_word_is_reported_as_a_wrong_rans_state():
    """The bottom word is read last: no word is left, the rANS state check fails."""
    m = RevMDRNN(5, 4, 4)
    theta = m.init_params(seed=1)
    x, y = grid_data(2, 6, 5, 3, 5, 4)
    with pytest.raises(rt.ReversalError) as info:
        _run_with_fault(m, theta, x, y, _flip_word(0, 0, 5))
    msg = str(info.value)
    assert msg.startswith("RevMDRNN: reversible BPTT failed")
    assert "rANS state of 1 of" in msg and "words" not in msg


# ------------------------------------------------------------ negative control
def test_float_arithmetic_does_not_reconstruct():
    """The same recurrence in float64, inverted row by row, loses row 0; fixed point does not."""
    rows, cols, B, D, H, O = 100, 3, 2, 3, 4, 3
    m = RevMDRNN(D, H, O)
    theta = m.init_params(seed=5)
    p = m.params(theta)
    x, y = grid_data(6, rows, cols, B, D, O)
    h, v = ref_forward(m, theta, x)
    F = m.floor

    def unrow(i, hi, vi):
        """Row i-1 from row i (float): h_prev = h - v; v_prev = (v - (1-gam) g) / gam."""
        hp = hi - vi
        vp = np.empty_like(vi)
        z = np.zeros((B, H))
        for j in range(cols):
            A = hp[j] @ p["W_n"] + (hi[j - 1] if j > 0 else z) @ p["W_w"] + p["V"][x[i, j]]
            g = np.tanh(A[:, :H] + p["b"])
            gam = F + (1 - F) * _sig(A[:, H:] + p["b_g"])
            vp[j] = (vi[j] - (1 - gam) * g) / gam
        return hp, vp

    # one row is undone well (a sanity check of the inverse) ...
    hp, vp = unrow(1, h[1], v[1])
    assert np.allclose(hp, h[0], atol=1e-12) and np.allclose(vp, v[0], atol=1e-12)
    # ... but over many rows the rounding errors grow by 1/gam per row
    hi, vi = h[-1], v[-1]
    with np.errstate(all="ignore"):
        for i in range(rows - 1, 0, -1):
            hi, vi = unrow(i, hi, vi)
        err = float(np.nan_to_num(np.abs(np.concatenate([hi - h[0], vi - v[0]])),
                                  nan=np.inf).max())
    assert err > 1e-6
    # the fixed-point cell reverses the same grid exactly (no ReversalError)
    loss, grad = m.loss_and_grad(theta, x, y)
    assert np.isfinite(grad).all()


def test_huge_logit_gaps_give_a_finite_loss():
    """h integrates v down a column; logit gaps beyond exp's range still give the true loss."""
    m = RevMDRNN(2, 2, 3, frac_bits=40)
    theta = m.init_params(seed=0)
    p = m.params(theta)
    p["U"][...] = [[400.0, -400.0, 0.0], [400.0, -400.0, 0.0]]
    p["b"][...] = 5.0
    x, y = grid_data(1, 6, 2, 1, 2, 3)
    lval, grad = m.loss_and_grad(theta, x, y)
    ls, gs = m.loss_and_grad(theta, x, y, bptt="standard")
    h, _ = fixed_trajectory(m, theta, x)
    assert np.isfinite(lval) and lval == ls and np.array_equal(grad, gs)
    assert abs(lval - ref_loss(m, theta, h, y)) <= 1e-9 * lval
    assert np.isfinite(grad).all()


# ------------------------------------------------------------------ errors
def test_overflow_raises_fixed_point_error():
    """h = h_north + v grows along a column; past 2**(62 - frac_bits) FixedPointError, never wraps."""
    m = RevMDRNN(2, 1, 2, frac_bits=52)        # range +-1024
    theta = m.init_params(seed=0)
    p = m.params(theta)
    p["W_n"][...] = 0.0
    p["W_w"][...] = 0.0
    p["b"][...] = 8.0                           # candidate ~ +1: h grows by ~1 per row
    p["b_g"][...] = -8.0                        # gate at its floor: v ~ g quickly
    x = np.zeros((1200, 1, 1), dtype=np.int64)
    y = np.zeros((1,), dtype=np.int64)
    with pytest.raises(rt.FixedPointError, match="overflowed the fixed-point range"):
        m.loss_and_grad(theta, x, y)


def test_bad_arguments():
    with pytest.raises(ValueError, match="frac_bits"):
        RevMDRNN(2, 2, 2, frac_bits=60)
    with pytest.raises(ValueError, match="max_forget_bits"):
        RevMDRNN(2, 2, 2, max_forget_bits=0)
    with pytest.raises(ValueError, match="gamma"):
        RevMDRNN(2, 2, 2, gamma=0.01)
    with pytest.raises(ValueError, match="gamma"):
        RevMDRNN(2, 2, 2, gamma="0.5")
    with pytest.raises(ValueError, match="loss"):
        RevMDRNN(2, 2, 2, loss="hinge")
    m = RevMDRNN(2, 2, 2)
    theta = m.init_params()
    x, y = grid_data(0, 3, 2, 1, 2, 2)
    with pytest.raises(ValueError, match="bptt"):
        m.loss_and_grad(theta, x, y, bptt="checkpoint")
    with pytest.raises(ValueError, match="initial_state"):
        m.loss_and_grad(theta, x, y, initial_state=np.zeros((1, 4)))
    with pytest.raises(ValueError, match="^initial_state: RevMDRNN has no initial state"):
        m.loss_and_grad(theta, x, y, initial_state=np.zeros((1, 5)))    # wrong shape too
    with pytest.raises(ValueError, match="rows, cols"):
        m.loss_and_grad(theta, x[0], y[0])                 # a sequence, not a grid
    with pytest.raises(ValueError, match="y must have shape"):
        m.loss_and_grad(theta, x, y[0])
    with pytest.raises(ValueError, match="token ids"):
        m.loss_and_grad(theta, x + 5, y)
    with pytest.raises(ValueError, match="theta|size|shape"):
        m.loss_and_grad(theta[:-1], x, y)
