"""MDRNN: wavefront and raster kernels against a slow NumPy reference (loops over cells),
the float64 product kernels against NumPy in long double (with a rounding-error bound) and
their blocking-independent bits, wavefront == raster, finite differences, checkpointing by
diagonals, complex-step Hessian-vector products, bad input, no recompilation."""
import numpy as np
import pytest

import revtrain as rt
from revtrain._kernels import head as k_head, inputs as k_inputs, mdrnn as k_mdrnn
from revtrain._kernels.gemm_vec import rows_matmul_add
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


def model_theta(kind, order="wavefront", seed=1, n_hidden=H):
    m = rt.MDRNN(D, n_hidden, O, loss=kind, order=order)
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


@pytest.mark.parametrize("n_hidden,B_", [(37, 3), (45, 1), (64, 2)])
@pytest.mark.parametrize("order", ["wavefront", "raster"])
def test_matches_reference_wide(n_hidden, B_, order):
    """Widths that take the float64 kernels' 4x32, 4x8 and scalar-column blocks."""
    for kind, per_cell, tokens in CASES:
        m, theta = model_theta(kind, order, seed=11, n_hidden=n_hidden)
        x, y = make_grid(kind, per_cell, tokens, seed=12, rows=5, cols=6, B_=B_)
        loss, grad = m.loss_and_grad(theta, x, y)
        rl, rg, hs = ref_mdrnn(m, theta, x, y)
        assert abs(loss - rl) <= 1e-12 * abs(rl)
        assert normwise(grad, rg) <= 1e-12
        np.testing.assert_allclose(m.final_state(theta, x), hs[-1, -1], rtol=1e-13, atol=1e-15)
        if order == "wavefront":
            l1, g1 = m.loss_and_grad(theta, x, y, bptt="checkpoint", checkpoint_every=3)
            assert abs(l1 - loss) <= 1e-13 * abs(loss)
            assert normwise(g1, grad) <= 1e-13


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


@pytest.mark.parametrize("order", ["wavefront", "raster"])
def test_hvp_wide(order):
    """Complex step (BLAS products) against finite differences of float64 gradients
    (vector kernels)."""
    m, theta = model_theta("softmax", order, seed=13, n_hidden=40)
    x, y = make_grid("softmax", True, False, seed=13, rows=4, cols=5)
    check_hvp(m, theta, x, y)


# ------------------------------------------------------------ kernel level
def ref_sweeps(P, Wn, Ww, b, dh):
    """States, dL/da and dL/dWn, dL/dWw of the grid by loops over the cells (NumPy).

    P : (rows, cols, B, H) input projections; dh : (rows, cols, B, H) dL/dh from the
    output layer. Any dtype (complex: the complex step, tanh to first order as the kernels).
    """
    rows, cols = P.shape[:2]
    h = np.zeros_like(P)
    for i in range(rows):
        for j in range(cols):
            a = P[i, j] + b
            if i > 0:
                a = a + h[i - 1, j] @ Wn
            if j > 0:
                a = a + h[i, j - 1] @ Ww
            t = np.tanh(a.real)
            h[i, j] = t + 1j * a.imag * (1 - t * t) if np.iscomplexobj(a) else t
    dh = dh.copy()
    da = np.zeros_like(P)
    dWn, dWw = np.zeros_like(Wn), np.zeros_like(Ww)
    for i in range(rows - 1, -1, -1):
        for j in range(cols - 1, -1, -1):
            da[i, j] = dh[i, j] * (1 - h[i, j] ** 2)
            if i > 0:
                dh[i - 1, j] += da[i, j] @ Wn.T
                dWn += h[i - 1, j].T @ da[i, j]
            if j > 0:
                dh[i, j - 1] += da[i, j] @ Ww.T
                dWw += h[i, j - 1].T @ da[i, j]
    return h, da, dWn, dWw


def _close(got, want, tol):
    """Normwise relative error below tol; complex: the real part and the imaginary part
    (of order 1e-30, the complex step) each."""
    parts = [(got.real, want.real)]
    if np.iscomplexobj(want):
        parts.append((got.imag, want.imag))
    for g, w in parts:
        assert np.max(np.abs(g - w)) <= tol * np.max(np.abs(w)), (np.max(np.abs(g - w)),
                                                                np.max(np.abs(w)))


@pytest.mark.parametrize("rows,cols,B_,H_", [(5, 7, 1, 64), (6, 4, 3, 45), (3, 3, 2, 13),
                                           (4, 6, 2, 8), (1, 5, 1, 37), (7, 1, 2, 33),
                                           (2, 2, 1, 3)])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_wavefront_kernels_match_loops(rows, cols, B_, H_, dtype):
    """The wavefront kernels on the whole grid and in segments of diagonals, against
    ref_sweeps, in float64 (vector kernels) and complex128 (BLAS)."""
    rng = np.random.default_rng(rows * 100 + cols * 10 + H_)

    def draw(*shape, scale=1.0):
        a = scale * rng.normal(size=shape)
        return a + 1e-30j * rng.normal(size=shape) if dtype == np.complex128 else a
    P = draw(rows, cols, B_, H_)
    Wn, Ww = draw(H_, H_, scale=1.5 / np.sqrt(H_)), draw(H_, H_, scale=1.5 / np.sqrt(H_))
    b, dh = draw(H_, scale=0.2), draw(rows, cols, B_, H_)
    h, da, dWn, dWw = ref_sweeps(P, Wn, Ww, b, dh)

    perm, off, i0s = diagonal_order(rows, cols)
    N, n_diag = rows * cols, rows + cols - 1
    by_diag = lambda a: np.ascontiguousarray(a.reshape(N, B_, H_)[perm])     # noqa: E731
    tmp = np.empty((min(rows, cols) * B_, H_), dtype=dtype)
    tmpHH = np.empty((H_, H_), dtype=dtype)
    S = by_diag(P)
    k_mdrnn.mdrnn_wavefront_forward(S, Wn, Ww, b, off, i0s, 0, n_diag, 0, tmp)
    _close(S, by_diag(h), 1e-13)
    # segments of diagonals from the states of the diagonal before each: the same bits
    for d0, d1 in [(0, 2), (2, n_diag), (1, n_diag - 1)]:
        if not 0 <= d0 < d1 <= n_diag:
            continue
        base = off[d0 - 1] if d0 > 0 else 0
        seg = np.concatenate([S[base:off[d0]], by_diag(P)[off[d0]:off[d1]]])
        k_mdrnn.mdrnn_wavefront_forward(seg, Wn, Ww, b, off, i0s, d0, d1, base, tmp)
        np.testing.assert_array_equal(seg, S[base:off[d1]])

    dS = by_diag(dh)
    gWn, gWw = np.zeros_like(Wn), np.zeros_like(Ww)
    k_mdrnn.mdrnn_wavefront_backward(S, dS, np.ascontiguousarray(Wn.T),
                                     np.ascontiguousarray(Ww.T), off, i0s, 0, n_diag, 0,
                                     gWn, gWw, tmp, tmpHH)
    _close(dS, by_diag(da), 1e-13)
    if N > 1:
        _close(gWn if rows > 1 else gWw, dWn if rows > 1 else dWw, 1e-13)
        _close(gWw if cols > 1 else gWn, dWw if cols > 1 else dWn, 1e-13)


U53 = 2.0 ** -53


def _bound(terms, mag):
    """Rounding-error bound gamma_terms * mag of an FMA chain (plus one addition)."""
    return (terms + 2) * U53 / (1 - (terms + 2) * U53) * mag


@pytest.mark.parametrize("K,N", [(1, 1), (3, 5), (8, 8), (13, 37), (64, 64), (45, 70),
                                 (33, 8), (64, 40)])
def test_rows_matmul_add_f64(K, N):
    """C[c:c+n] += A[a:a+n] @ W against long double, within the bound of a K-term chain;
    rows outside untouched; a row's bits do not depend on the other rows, on n or on the
    column's block (4x32, 4x8 or scalar)."""
    rng = np.random.default_rng(K * 100 + N)
    for n in (1, 2, 3, 4, 5, 7, 8, 9, 33):
        C = rng.normal(size=(n + 7, N))
        A = rng.normal(size=(n + 5, K))
        W = rng.normal(size=(K, N))
        c, a = 3, 2
        got = C.copy()
        rows_matmul_add(got, c, A, a, n, W, False)
        L = np.longdouble
        exact = C[c:c + n].astype(L) + A[a:a + n].astype(L) @ W.astype(L)
        mag = np.abs(C[c:c + n]) + np.abs(A[a:a + n]) @ np.abs(W)
        assert np.all(np.abs(got[c:c + n] - exact) <= _bound(K, mag))
        np.testing.assert_array_equal(got[:c], C[:c])
        np.testing.assert_array_equal(got[c + n:], C[c + n:])
        one = C.copy()
        for r in range(n):                      # row by row
            rows_matmul_add(one, c + r, A, a + r, 1, W, False)
        np.testing.assert_array_equal(one, got)
        for j in {0, N // 2, N - 1}:           # one column alone: the scalar path
            col = C[:, j:j + 1].copy()
            rows_matmul_add(col, c, A, a, n, np.ascontiguousarray(W[:, j:j + 1]), False)
            np.testing.assert_array_equal(col[:, 0], got[:, j])
        if K == N:      # C and A one array (rows of the previous diagonal feed the next)
            both = np.zeros((2 * n + 1, N))
            both[:n] = A[a:a + n]
            both[n + 1:] = C[c:c + n]
            rows_matmul_add(both, n + 1, both, 0, n, W, False)
            np.testing.assert_array_equal(both[n + 1:], got[c:c + n])


@pytest.mark.parametrize("K,N", [(1, 1), (3, 5), (8, 8), (13, 37), (64, 64), (45, 70),
                                 (6, 32)])
def test_tn_matmul_add_f64(K, N):
    """Out += X[x:x+n]^T @ D[e:e+n] against long double, within the bound of an n-term
    sum; the rows are summed in chunks of 32 (splitting a call there gives the same bits);
    an element's bits do not depend on its block."""
    rng = np.random.default_rng(K * 100 + N + 7)
    for n in (1, 2, 5, 31, 32, 33, 64, 70):
        Out = rng.normal(size=(K, N))
        X = rng.normal(size=(n + 3, K))
        D = rng.normal(size=(n + 4, N))
        x, e = 1, 4
        got = Out.copy()
        k_mdrnn._tn_matmul_add_f64(got, X, x, D, e, n)
        L = np.longdouble
        exact = Out.astype(L) + X[x:x + n].astype(L).T @ D[e:e + n].astype(L)
        mag = np.abs(Out) + np.abs(X[x:x + n]).T @ np.abs(D[e:e + n])
        assert np.all(np.abs(got - exact) <= _bound(n, mag))
        split = Out.copy()
        for r0 in range(0, n, 32):
            k_mdrnn._tn_matmul_add_f64(split, X, x + r0, D, e + r0, min(32, n - r0))
        np.testing.assert_array_equal(split, got)
        for k in {0, K // 2, K - 1}:           # one row of Out alone
            row = Out[k:k + 1].copy()
            k_mdrnn._tn_matmul_add_f64(row, np.ascontiguousarray(X[:, k:k + 1]), x, D, e, n)
            np.testing.assert_array_equal(row[0], got[k])
        for j in {0, N // 2, N - 1}:           # one column alone: the scalar path
            col = Out[:, j:j + 1].copy()
            k_mdrnn._tn_matmul_add_f64(col, X, x, np.ascontiguousarray(D[:, j:j + 1]), e, n)
            np.testing.assert_array_equal(col[:, 0], got[:, j])


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
