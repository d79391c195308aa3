"""Elman RNN: kernels against a slow NumPy reference, finite differences, BPTT closed forms,
checkpointing, complex-step Hessian-vector products, bad input, no recompilation."""
import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

import revtrain as rt
from revtrain._kernels import head as k_head, inputs as k_inputs, rnn as k_rnn

D, H, O, T, B = 3, 4, 5, 6, 2


# ------------------------------------------------------------ reference code
def ref_head(hrows, U, by, target, kind):
    """Output layer and mean loss on rows (N, H); returns loss, dL/dh, dU, dby."""
    z = hrows @ U + by
    N = hrows.shape[0]
    if kind == "softmax":
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -np.mean(np.log(p[np.arange(N), target]))
        dz = p.copy()
        dz[np.arange(N), target] -= 1.0
        dz /= N
    else:
        loss = np.mean((z - target) ** 2)
        dz = 2.0 * (z - target) / z.size
    return loss, dz @ U.T, hrows.T @ dz, dz.sum(axis=0)


def is_per_step(y, kind):
    return y.ndim == (2 if kind == "softmax" else 3)


def ref_rnn(model, theta, x, y, h0=None):
    """Loss, gradient and dL/dh_t (total, through time) by loops over time."""
    p = model.params(theta)
    V, W, bh, U, by = p["V"], p["W"], p["b_h"], p["U"], p["b_y"]
    kind = model.loss_kind
    tokens = x.dtype.kind == "i"
    Tn, Bn = x.shape[:2]
    Hn = W.shape[0]
    h = np.zeros((Bn, Hn)) if h0 is None else h0
    hs = [h]
    for t in range(Tn):
        inp = V[x[t]] if tokens else x[t] @ V
        h = np.tanh(inp + h @ W + bh)
        hs.append(h)
    dHt = np.zeros((Tn, Bn, Hn))
    if is_per_step(y, kind):
        rows = np.concatenate(hs[1:], axis=0)
        targ = y.reshape(Tn * Bn, *y.shape[2:])
        loss, dh_rows, dU, dby = ref_head(rows, U, by, targ, kind)
        dHt[:] = dh_rows.reshape(Tn, Bn, Hn)
    else:
        loss, dHt[-1], dU, dby = ref_head(hs[-1], U, by, y, kind)
    dV, dW, dbh = np.zeros_like(V), np.zeros_like(W), np.zeros_like(bh)
    dh_total = np.zeros((Tn, Bn, Hn))
    dh = np.zeros((Bn, Hn))
    for t in range(Tn - 1, -1, -1):
        dh = dh + dHt[t]
        dh_total[t] = dh
        da = dh * (1.0 - hs[t + 1] ** 2)
        dW += hs[t].T @ da
        if tokens:
            np.add.at(dV, x[t], da)
        else:
            dV += x[t].T @ da
        dbh += da.sum(axis=0)
        dh = da @ W.T
    grad = np.zeros_like(theta)
    g = model.params(grad)
    g["V"][...], g["W"][...], g["b_h"][...], g["U"][...], g["b_y"][...] = dV, dW, dbh, dU, dby
    return loss, grad, np.stack(hs[1:]), dh_total


# ------------------------------------------------------------------ helpers
def make_data(kind, per_step, tokens, seed=0, T_=T, B_=B, n_in=D, n_out=O):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, n_in, size=(T_, B_)) if tokens else rng.normal(size=(T_, B_, n_in))
    if kind == "softmax":
        y = rng.integers(0, n_out, size=(T_, B_) if per_step else (B_,))
    else:
        y = rng.normal(size=(T_, B_, n_out) if per_step else (B_, n_out))
    return x, y


def fd_grad(f, theta, eps=1e-5):
    g = np.zeros_like(theta)
    for i in range(theta.size):
        tp, tm = theta.copy(), theta.copy()
        tp[i] += eps
        tm[i] -= eps
        g[i] = (f(tp) - f(tm)) / (2 * eps)
    return g


def max_rel(a, b, floor=1e-4):
    """max_i |a_i - b_i| / max(|a_i|, |b_i|, floor)."""
    return float(np.max(np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)))


def normwise(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def check_hvp(m, theta, x, y, seed=8):
    """The complex-step hvp against finite differences of gradients, its symmetry
    (u.Hv == v.Hu), and grad_and_hvp against hvp and loss_and_grad."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=theta.size), rng.normal(size=theta.size)
    hv = m.hvp(theta, x, y, v)
    eps = 1e-5
    fd = (m.loss_and_grad(theta + eps * v, x, y)[1]
          - m.loss_and_grad(theta - eps * v, x, y)[1]) / (2 * eps)
    assert normwise(hv, fd) <= 1e-5
    hu = m.hvp(theta, x, y, u)
    assert abs(u @ hv - v @ hu) <= 1e-12 * max(abs(u @ hv), 1e-3)
    loss, g, hv2 = m.grad_and_hvp(theta, x, y, v)
    l0, g0 = m.loss_and_grad(theta, x, y)
    assert loss == pytest.approx(l0, rel=1e-13)  # complex GEMMs round differently
    assert normwise(g, g0) <= 1e-13
    np.testing.assert_array_equal(hv2, hv)


def assert_rejects(m, theta, x, y, change, name):
    """``loss_and_grad`` with the arguments in ``change`` replaced raises a ValueError whose
    message starts with ``name``. ``change["theta"]`` may be a function of theta; keys other
    than theta, x, y are keyword arguments."""
    args = dict(theta=theta, x=x, y=y)
    kw = {}
    for key, val in change.items():
        if key not in args:
            kw[key] = val
        elif key == "theta" and callable(val):
            args["theta"] = val(theta)
        else:
            args[key] = val
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        m.loss_and_grad(args["theta"], args["x"], args["y"], **kw)


def signature_counts(*modules):
    return {f"{m.__name__}.{n}": len(f.signatures) for m in modules
            for n, f in vars(m).items() if isinstance(f, CPUDispatcher)}


CASES = [("softmax", True, False), ("softmax", True, True), ("softmax", False, False),
         ("softmax", False, True), ("mse", True, False), ("mse", False, True)]
CASE_IDS = [f"{k}-{'step' if s else 'last'}-{'tok' if t else 'float'}" for k, s, t in CASES]


def model_theta(kind, seed=1):
    m = rt.RNN(D, H, O, loss=kind)
    theta = m.init_params(seed=seed, scale=1.5)
    theta += 0.1 * np.random.default_rng(seed + 100).normal(size=theta.size)  # non-zero biases
    return m, theta


# -------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind,per_step,tokens", CASES, ids=CASE_IDS)
def test_matches_reference(kind, per_step, tokens):
    m, theta = model_theta(kind)
    x, y = make_data(kind, per_step, tokens)
    loss, grad = m.loss_and_grad(theta, x, y)
    rl, rg, _, _ = ref_rnn(m, theta, x, y)
    assert abs(loss - rl) <= 1e-12 * abs(rl)
    assert normwise(grad, rg) <= 1e-12
    assert m.loss(theta, x, y) == pytest.approx(rl, rel=1e-12)


def test_initial_state_matches_reference_and_continues():
    m, theta = model_theta("softmax")
    x, y = make_data("softmax", True, False)
    h0 = np.random.default_rng(5).uniform(-0.5, 0.5, size=(B, H))
    loss, grad, st = m.loss_and_grad(theta, x, y, initial_state=h0, return_stats=True)
    rl, rg, hs, _ = ref_rnn(m, theta, x, y, h0=h0)
    assert abs(loss - rl) <= 1e-12 * abs(rl)
    assert normwise(grad, rg) <= 1e-12
    np.testing.assert_allclose(st.final_state, hs[-1], rtol=1e-13, atol=1e-15)
    # running the two halves with the state carried gives the same outputs
    s = m.final_state(theta, x[:3], initial_state=h0)
    out = np.concatenate([m.predict(theta, x[:3], initial_state=h0),
                          m.predict(theta, x[3:], initial_state=s)])
    np.testing.assert_allclose(out, m.predict(theta, x, initial_state=h0), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kind,per_step,tokens", [CASES[0], CASES[3], CASES[4]],
                         ids=[CASE_IDS[0], CASE_IDS[3], CASE_IDS[4]])
def test_finite_differences(kind, per_step, tokens):
    m, theta = model_theta(kind, seed=2)
    x, y = make_data(kind, per_step, tokens, seed=3)
    _, grad = m.loss_and_grad(theta, x, y)
    fd = fd_grad(lambda th: m.loss(th, x, y), theta)
    assert max_rel(grad, fd) <= 1e-6


def test_closed_forms_per_step_softmax():
    """dL/db_y = sum_t (yhat_t - onehot(y_t)) / (T B);  dL/db_h = sum_t dL/dh_t * (1 - h_t^2)."""
    m, theta = model_theta("softmax", seed=4)
    x, y = make_data("softmax", True, False, seed=4)
    _, grad = m.loss_and_grad(theta, x, y)
    g = m.params(grad)
    yhat = m.predict(theta, x)                               # (T, B, O)
    onehot = np.eye(O)[y]
    np.testing.assert_allclose(g["b_y"], (yhat - onehot).sum(axis=(0, 1)) / (T * B),
                               rtol=1e-12, atol=1e-15)
    _, _, hs, dh_total = ref_rnn(m, theta, x, y)
    np.testing.assert_allclose(g["b_h"], (dh_total * (1.0 - hs ** 2)).sum(axis=(0, 1)),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("tokens", [False, True])
@pytest.mark.parametrize("per_step", [True, False])
def test_checkpoint_equals_standard(tokens, per_step):
    m, theta = model_theta("softmax", seed=6)
    Tl = 11
    x, y = make_data("softmax", per_step, tokens, seed=6, T_=Tl)
    l0, g0, s0 = m.loss_and_grad(theta, x, y, return_stats=True)
    for k in (1, 2, 3, 4, 5, 11, 20, None):
        l1, g1, s1 = m.loss_and_grad(theta, x, y, bptt="checkpoint", checkpoint_every=k,
                                     return_stats=True)
        assert abs(l1 - l0) <= 1e-13 * abs(l0)
        assert normwise(g1, g0) <= 1e-13
        np.testing.assert_array_equal(s1.final_state, s0.final_state)
        assert s1.mode == "checkpoint"
    # stored bytes: states for every step vs checkpoints + one segment
    _, _, s_ck = m.loss_and_grad(theta, x, y, bptt="checkpoint", checkpoint_every=4,
                                 return_stats=True)
    assert s_ck.stored_bytes < s0.stored_bytes


@pytest.mark.parametrize("kind,per_step,tokens", [CASES[0], CASES[3], CASES[4]],
                         ids=[CASE_IDS[0], CASE_IDS[3], CASE_IDS[4]])
def test_hvp(kind, per_step, tokens):
    m, theta = model_theta(kind, seed=7)
    check_hvp(m, theta, *make_data(kind, per_step, tokens, seed=7))


def _bad_cases():
    """(description, call mutator, argument name expected at the start of the message)."""
    x, y = make_data("softmax", True, False)
    xt, _ = make_data("softmax", True, True)
    xn = x.copy()
    xn[2, 1, 0] = np.nan
    return [
        ("x 2-D float", dict(x=x[:, :, 0]), "x"),
        ("x wrong n_in", dict(x=np.zeros((T, B, D + 1))), "x"),
        ("x complex", dict(x=x.astype(complex)), "x"),
        ("x bool", dict(x=np.zeros((T, B), dtype=bool)), "x"),
        ("x NaN", dict(x=xn), "x"),
        ("x inf", dict(x=np.where(xn != xn, np.inf, xn)), "x"),
        ("token out of range", dict(x=np.where(xt == 0, D, xt)), "x"),
        ("negative token", dict(x=-xt - 1), "x"),
        ("label out of range", dict(y=np.where(y == 0, O, y)), "y"),
        ("negative label", dict(y=-y - 1), "y"),
        ("y float", dict(y=y.astype(float)), "y"),
        ("y wrong shape", dict(y=y[:, :1]), "y"),
        ("y (T,) only", dict(y=y[:, 0]), "y"),
        ("theta short", dict(theta=lambda th: th[:-1]), "theta"),
        ("theta 2-D", dict(theta=lambda th: th[None]), "theta"),
        ("theta float32", dict(theta=lambda th: th.astype(np.float32)), "theta"),
        ("theta NaN", dict(theta=lambda th: np.where(np.arange(th.size) == 3, np.nan, th)),
         "theta"),
        ("theta list", dict(theta=lambda th: list(th)), "theta"),
        ("bptt", dict(bptt="reversible"), "bptt"),
        ("checkpoint_every", dict(bptt="checkpoint", checkpoint_every=0), "checkpoint_every"),
        ("initial_state shape", dict(initial_state=np.zeros((B, H + 1))), "initial_state"),
        ("initial_state NaN", dict(initial_state=np.full((B, H), np.nan)), "initial_state"),
    ]


@pytest.mark.parametrize("desc,change,name", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_input(desc, change, name):
    m, theta = model_theta("softmax")
    assert_rejects(m, theta, *make_data("softmax", True, False), change, name)


def test_bad_input_other_entry_points():
    m, theta = model_theta("softmax")
    x, y = make_data("softmax", True, False)
    with pytest.raises(ValueError, match=r"^v\b"):
        m.hvp(theta, x, y, np.zeros(theta.size + 1))
    with pytest.raises(ValueError, match=r"^x\b"):
        m.predict(theta, np.zeros((T, B, D + 2)))
    with pytest.raises(ValueError, match=r"^theta\b"):
        m.loss(theta[1:], x, y)
    mm = rt.RNN(D, H, O, loss="mse")
    with pytest.raises(ValueError, match=r"^y\b"):
        mm.loss_and_grad(mm.init_params(), x, np.zeros((T, B, O + 1)))
    with pytest.raises(ValueError, match=r"^y\b"):
        mm.loss_and_grad(mm.init_params(), x, np.full((T, B, O), np.nan))
    for bad in [dict(n_in=0), dict(n_hidden=2.5), dict(loss="hinge")]:
        kw = dict(n_in=D, n_hidden=H, n_out=O)
        kw.update(bad)
        with pytest.raises(ValueError, match=rf"^{list(bad)[0]}\b"):
            rt.RNN(**kw)
    for bad in [dict(seed="a"), dict(seed=-1), dict(seed=1.5), dict(scale="1"), dict(scale=0)]:
        with pytest.raises(ValueError, match=rf"^{list(bad)[0]} must be"):
            m.init_params(**bad)


def call_every_entry_point(m, theta, seed, T_, B_):
    """Every public computation of a sequence model, on float and token inputs of size (T_, B_)."""
    for kind_tokens in (False, True):
        x, y = make_data("softmax", True, kind_tokens, seed=seed, T_=T_, B_=B_)
        m.loss_and_grad(theta, x, y)
        m.loss_and_grad(theta, x, y, bptt="checkpoint", checkpoint_every=2)
        m.loss_and_grad(theta, x, y[-1])
        m.hvp(theta, x, y, theta)
        m.loss(theta, x, y)
        m.predict(theta, x)


def test_second_call_compiles_nothing():
    m, theta = model_theta("softmax")
    mods = (k_rnn, k_head, k_inputs)
    call_every_entry_point(m, theta, 0, T, B)
    before = signature_counts(*mods)
    call_every_entry_point(m, theta, 1, T + 3, B + 1)          # other data, other sizes
    assert signature_counts(*mods) == before


def test_params_are_views_of_a_strided_theta():
    # a theta that is a strided view: params() must still write through to it
    m = rt.RNN(3, 4, 2)
    base = np.zeros(2 * m.size)
    theta = base[::2]
    theta[:] = m.init_params(seed=1)
    p = m.params(theta)
    p["b_y"][:] = 7.0
    p["W"][0, 1] = 5.0
    assert (theta[-2:] == 7.0).all() and (base[-4::2] == 7.0).all()
    assert m.params(np.ascontiguousarray(theta))["W"][0, 1] == 5.0
    # and the loss of the strided theta equals that of a contiguous copy
    x = np.random.default_rng(0).integers(0, 3, size=(5, 2))
    y = np.random.default_rng(1).integers(0, 2, size=(5, 2))
    la, ga = m.loss_and_grad(theta, x, y)
    lb, gb = m.loss_and_grad(theta.copy(), x, y)
    assert la == lb and np.array_equal(ga, gb)
