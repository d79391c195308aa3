"""MDRNN: wavefront and raster kernels against a slow NumPy reference (loops over cells),
wavefront == raster, finite differences, checkpointing by diagonals, complex-step
Hessian-vector products, bad input, no recompilation."""
import numpy as np
import pytest

import revtrain as rt
from revtrain._kernels import head as k_head, inputs as k_inputs, mdrnn as k_mdrnn
from revtrain.models.mdrnn import diagonal_order
from test_rnn import (ref_head, fd_grad, max_rel, normwise, signature_counts, check_hvp,
                      assert_rejects)

D, H, O, R, C, B = 3, 4, 5, 3, 4, 2


def ref_mdrnn(model, theta, x, y):
    """Loss, gradient and states (R, C, B, H) by loops over the cells in row-major order.

    h[i,j] = tanh(x[i,j] W_in + h[i-1,j] W_n + h[i,j-1] W_w + b), zero outside the grid.
    """
    p = model.params(theta)
    Win, Wn, Ww, b, U, by = p["W_in"], p["W_n"], p["W_w"], p["b"], p["U"], p["b_y"]
    kind = model.loss_kind
    rows, cols, Bn = x.shape[:3]
    Hn = model.n_hidden
    xin = np.eye(model.n_in)[x] if x.dtype.kind == "i" else x      # one-hot tokens
    zero = np.zeros((Bn, Hn))
    h = {}
    for i in range(rows):
        for j in range(cols):
            north = h[i - 1, j] if i > 0 else zero
            west = h[i, j - 1] if j > 0 else zero
            h[i, j] = np.tanh(xin[i, j] @ Win + north @ Wn + west @ Ww + b)
    hs = np.array([[h[i, j] for j in range(cols)] for i in range(rows)])
    dh = np.zeros_like(hs)
    per_cell = y.ndim == (3 if kind == "softmax" else 4)
    if per_cell:
        loss, d_rows, dU, dby = ref_head(hs.reshape(-1, Hn), U, by,
                                         y.reshape(rows * cols * Bn, *y.shape[3:]), kind)
        dh[:] = d_rows.reshape(dh.shape)
    else:
        loss, dh[-1, -1], dU, dby = ref_head(hs[-1, -1], U, by, y, kind)
    dWin, dWn, dWw, db = (np.zeros_like(a) for a in (Win, Wn, Ww, b))
    for i in range(rows - 1, -1, -1):
        for j in range(cols - 1, -1, -1):
            da = dh[i, j] * (1 - hs[i, j] ** 2)
            dWin += xin[i, j].T @ da
            db += da.sum(0)
            if i > 0:
                dWn += hs[i - 1, j].T @ da
                dh[i - 1, j] += da @ Wn.T
            if j > 0:
                dWw += hs[i, j - 1].T @ da
                dh[i, j - 1] += da @ Ww.T
    grad = np.zeros_like(theta)
    g = model.params(grad)
    g["W_in"][...], g["W_n"][...], g["W_w"][...], g["b"][...] = dWin, dWn, dWw, db
    g["U"][...], g["b_y"][...] = dU, dby
    return loss, grad, hs


def make_grid(kind, per_cell, tokens, seed=0, rows=R, cols=C, B_=B):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, D, size=(rows, cols, B_)) if tokens \
        else rng.normal(size=(rows, cols, B_, D))
    if kind == "softmax":
        y = rng.integers(0, O, size=(rows, cols, B_) if per_cell else (B_,))
    else:
        y = rng.normal(size=(rows, cols, B_, O) if per_cell else (B_, O))
    return x, y


def model_theta(kind, order="wavefront", seed=1):
    m = rt.MDRNN(D, H, O, loss=kind, order=order)
    theta = m.init_params(seed=seed, scale=1.2)
    theta += 0.1 * np.random.default_rng(seed + 100).normal(size=theta.size)  # non-zero biases
    return m, theta


CASES = [("softmax", True, False), ("softmax", True, True), ("softmax", False, False),
         ("softmax", False, True), ("mse", True, False), ("mse", False, True)]
CASE_IDS = [f"{k}-{'cell' if s else 'last'}-{'tok' if t else 'float'}" for k, s, t in CASES]
SHAPES = [(3, 4), (4, 3), (1, 5), (5, 1), (1, 1), (4, 4)]


def test_diagonal_order():
    for rows, cols in SHAPES:
        perm, off, i0s = diagonal_order(rows, cols)
        assert sorted(perm.tolist()) == list(range(rows * cols))
        for d in range(rows + cols - 1):
            cells = [(int(c) // cols, int(c) % cols) for c in perm[off[d]:off[d + 1]]]
            assert cells == [(i, d - i) for i in range(rows) if 0 <= d - i < cols]
            assert cells[0][0] == i0s[d]


def test_layout():
    m = rt.MDRNN(D, H, O)
    assert m.n_lead == 2
    p = m.params(m.init_params(seed=0))
    assert [(k, v.shape) for k, v in p.items()] == [
        ("W_in", (D, H)), ("W_n", (H, H)), ("W_w", (H, H)), ("b", (H,)), ("U", (H, O)),
        ("b_y", (O,))]
    assert m.size == H * D + 2 * H * H + H + H * O + O


@pytest.mark.parametrize("order", ["wavefront", "raster"])
@pytest.mark.parametrize("kind,per_cell,tokens", CASES, ids=CASE_IDS)
def test_matches_reference(kind, per_cell, tokens, order):
    m, theta = model_theta(kind, order)
    x, y = make_grid(kind, per_cell, tokens)
    loss, grad = m.loss_and_grad(theta, x, y)
    rl, rg, _ = ref_mdrnn(m, theta, x, y)
    assert abs(loss - rl) <= 1e-12 * abs(rl)
    assert normwise(grad, rg) <= 1e-12
    assert m.loss(theta, x, y) == pytest.approx(rl, rel=1e-12)


@pytest.mark.parametrize("rows,cols", SHAPES)
def test_wavefront_equals_raster(rows, cols):
    for kind, per_cell, tokens in CASES:
        x, y = make_grid(kind, per_cell, tokens, seed=rows * 10 + cols, rows=rows, cols=cols)
        mw, theta = model_theta(kind, "wavefront", seed=3)
        mr, _ = model_theta(kind, "raster", seed=3)
        lw, gw, sw = mw.loss_and_grad(theta, x, y, return_stats=True)
        lr, gr, sr = mr.loss_and_grad(theta, x, y, return_stats=True)
        assert abs(lw - lr) <= 1e-13 * abs(lr)
        assert normwise(gw, gr) <= 1e-13
        assert sw.stored_bytes == sr.stored_bytes == rows * cols * x.shape[2] * H * 8
        np.testing.assert_allclose(sw.final_state, sr.final_state, rtol=1e-13, atol=1e-16)
        _, _, hs = ref_mdrnn(mw, theta, x, y)
        for m in (mw, mr):
            np.testing.assert_allclose(m.final_state(theta, x), hs[-1, -1], rtol=1e-13,
                                       atol=1e-16)
            out = m.predict(theta, x)
            assert out.shape == (rows, cols, x.shape[2], O)
            p = m.params(theta)
            z = hs @ p["U"] + p["b_y"]
            if kind == "softmax":
                z = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
            np.testing.assert_allclose(out, z, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("order", ["wavefront", "raster"])
@pytest.mark.parametrize("kind,per_cell,tokens", [CASES[0], CASES[3], CASES[4]],
                         ids=[CASE_IDS[0], CASE_IDS[3], CASE_IDS[4]])
def test_finite_differences(kind, per_cell, tokens, order):
    m, theta = model_theta(kind, order, seed=2)
    x, y = make_grid(kind, per_cell, tokens, seed=3)
    _, grad = m.loss_and_grad(theta, x, y)
    fd = fd_grad(lambda th: m.loss(th, x, y), theta)
    assert max_rel(grad, fd) <= 1e-6


def test_closed_form_output_bias():
    """Per-cell softmax: dL/db_y = sum_cells (yhat - onehot(y)) / (rows cols B)."""
    m, theta = model_theta("softmax", seed=4)
    x, y = make_grid("softmax", True, False, seed=4)
    _, grad = m.loss_and_grad(theta, x, y)
    yhat = m.predict(theta, x)
    np.testing.assert_allclose(m.params(grad)["b_y"],
                               (yhat - np.eye(O)[y]).sum(axis=(0, 1, 2)) / (R * C * B),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rows,cols", [(4, 5), (6, 2), (1, 4), (3, 3)])
def test_checkpoint_equals_standard(rows, cols):
    for kind, per_cell, tokens in CASES:
        m, theta = model_theta(kind, seed=6)
        x, y = make_grid(kind, per_cell, tokens, seed=6, rows=rows, cols=cols)
        l0, g0, s0 = m.loss_and_grad(theta, x, y, return_stats=True)
        for k in (1, 2, 3, 4, 7, 20, None):
            l1, g1, s1 = m.loss_and_grad(theta, x, y, bptt="checkpoint", checkpoint_every=k,
                                         return_stats=True)
            assert abs(l1 - l0) <= 1e-13 * abs(l0)
            assert normwise(g1, g0) <= 1e-13
            np.testing.assert_array_equal(s1.final_state, s0.final_state)
            assert s1.mode == "checkpoint"


def test_checkpoint_stored_bytes():
    """Checkpoints: the diagonal before each segment; workspace: the largest segment + 1 diagonal."""
    rows = cols = 16
    m, theta = model_theta("softmax", seed=9)
    x, y = make_grid("softmax", True, True, seed=9, rows=rows, cols=cols, B_=1)
    _, off, _ = diagonal_order(rows, cols)
    n_diag = rows + cols - 1
    _, _, s0 = m.loss_and_grad(theta, x, y, return_stats=True)
    assert s0.stored_bytes == rows * cols * H * 8
    for k in (2, 4, 6, None):
        _, _, s = m.loss_and_grad(theta, x, y, bptt="checkpoint", checkpoint_every=k,
                                  return_stats=True)
        kk = 4 if k is None else k                      # default ceil(sqrt(rows))
        starts = list(range(0, n_diag, kk))
        ends = starts[1:] + [n_diag]
        ws = max(off[e] - off[max(d - 1, 0)] for d, e in zip(starts, ends))
        ck = sum(off[d] - off[d - 1] for d in starts[1:])
        assert s.stored_bytes == (ws + ck) * H * 8
        assert s.stored_bytes < s0.stored_bytes


@pytest.mark.parametrize("order", ["wavefront", "raster"])
@pytest.mark.parametrize("kind,per_cell,tokens", [CASES[0], CASES[3], CASES[4]],
                         ids=[CASE_IDS[0], CASE_IDS[3], CASE_IDS[4]])
def test_hvp(kind, per_cell, tokens, order):
    m, theta = model_theta(kind, order, seed=7)
    x, y = make_grid(kind, per_cell, tokens, seed=7)
    check_hvp(m, theta, x, y)


def test_bad_input():
    m, theta = model_theta("softmax")
    x, y = make_grid("softmax", True, False)
    xt, _ = make_grid("softmax", True, True)
    xn = x.copy()
    xn[2, 1, 0, 1] = np.inf
    bad = [
        (dict(x=x[0]), "x"), (dict(x=x[..., :-1]), "x"), (dict(x=xt[0]), "x"),
        (dict(x=x.astype(np.complex128)), "x"), (dict(x=xn), "x"),
        (dict(x=np.where(xt == 0, D, xt)), "x"), (dict(x=x[:, :, :0]), "x"),
        (dict(y=np.where(y == 1, O + 2, y)), "y"), (dict(y=y[:, :, 0]), "y"),
        (dict(y=y[0]), "y"), (dict(y=y.astype(np.float64)), "y"),
        (dict(theta=theta[1:]), "theta"), (dict(theta=np.concatenate([theta, theta])), "theta"),
        (dict(theta=np.where(np.arange(theta.size) == 0, np.nan, theta)), "theta"),
        (dict(bptt="reversible"), "bptt"), (dict(checkpoint_every=0), "checkpoint_every"),
        (dict(initial_state=np.zeros((B, H))), "initial_state"),
    ]
    for change, name in bad:
        assert_rejects(m, theta, x, y, change, name)
    mr, _ = model_theta("softmax", "raster")
    with pytest.raises(ValueError, match=r"^bptt\b"):
        mr.loss_and_grad(theta, x, y, bptt="checkpoint")
    with pytest.raises(ValueError, match=r"^initial_state\b"):
        m.predict(theta, x, initial_state=np.zeros((B, H)))
    for bad in (np.zeros((B, H + 1)), np.zeros((B, H), dtype=int)):   # any state: "pass None"
        with pytest.raises(ValueError, match=r"^initial_state: MDRNN has no initial state"):
            m.loss_and_grad(theta, x, y, initial_state=bad)
    with pytest.raises(ValueError, match=r"^order\b"):
        rt.MDRNN(D, H, O, order="diagonal")
    with pytest.raises(ValueError, match=r"^v\b"):
        m.hvp(theta, x, y, theta[:-1])
    mm = rt.MDRNN(D, H, O, loss="mse")
    with pytest.raises(ValueError, match=r"^y\b"):
        mm.loss_and_grad(mm.init_params(), x, np.zeros((R, C, B, O + 1)))


def _round(models, theta, seed, rows, cols, B_):
    for tokens in (False, True):
        for per_cell in (True, False):
            x, y = make_grid("softmax", per_cell, tokens, seed=seed, rows=rows, cols=cols, B_=B_)
            for m in models:
                m.loss_and_grad(theta, x, y)
                m.hvp(theta, x, y, theta)
                m.loss(theta, x, y)
                m.predict(theta, x)
            models[0].loss_and_grad(theta, x, y, bptt="checkpoint", checkpoint_every=2)


def test_second_call_compiles_nothing():
    mw, theta = model_theta("softmax")
    mr, _ = model_theta("softmax", "raster")
    mods = (k_mdrnn, k_head, k_inputs)
    _round((mw, mr), theta, 0, R, C, B)
    before = signature_counts(*mods)
    _round((mw, mr), theta, 1, R + 2, C - 1, B + 1)
    assert signature_counts(*mods) == before
