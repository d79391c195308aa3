"""GRU: kernels against a slow NumPy reference, finite differences, checkpointing,
complex-step Hessian-vector products, bad input, no recompilation."""
import numpy as np
import pytest

import revtrain as rt
from revtrain._kernels import gru as k_gru, head as k_head, inputs as k_inputs
from test_rnn import (ref_head, is_per_step, make_data, fd_grad, max_rel, normwise, check_hvp,
                      assert_rejects, signature_counts, call_every_entry_point)

D, H, O, T, B = 3, 4, 5, 6, 2


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def ref_gru(model, theta, x, y, h0=None):
    """Loss and gradient by loops over time, written from the equations:

    z = sigma(x Wz + h Uz + bz), r = sigma(x Wr + h Ur + br),
    n = tanh(x Wn + (r*h) Un + bn), h' = (1-z)*n + z*h.
    """
    p = model.params(theta)
    Hn = model.n_hidden
    Wx, Wh, b, U, by = p["W_x"], p["W_h"], p["b"], p["U"], p["b_y"]
    Wz, Wr, Wn = Wx[:, :Hn], Wx[:, Hn:2 * Hn], Wx[:, 2 * Hn:]
    Uz, Ur, Un = Wh[:, :Hn], Wh[:, Hn:2 * Hn], Wh[:, 2 * Hn:]
    bz, br, bn = b[:Hn], b[Hn:2 * Hn], b[2 * Hn:]
    kind = model.loss_kind
    tokens = x.dtype.kind == "i"
    Tn, Bn = x.shape[:2]
    xin = [np.eye(model.n_in)[x[t]] if tokens else x[t] for t in range(Tn)]  # one-hot
    h = np.zeros((Bn, Hn)) if h0 is None else h0
    hs, zs, rs, ns = [h], [], [], []
    for t in range(Tn):
        z = sigmoid(xin[t] @ Wz + h @ Uz + bz)
        r = sigmoid(xin[t] @ Wr + h @ Ur + br)
        n = np.tanh(xin[t] @ Wn + (r * h) @ Un + bn)
        h = (1 - z) * n + z * h
        hs.append(h)
        zs.append(z)
        rs.append(r)
        ns.append(n)
    dHt = np.zeros((Tn, Bn, Hn))
    if is_per_step(y, kind):
        rows = np.concatenate(hs[1:], axis=0)
        loss, dh_rows, dU, dby = ref_head(rows, U, by, y.reshape(Tn * Bn, *y.shape[2:]), kind)
        dHt[:] = dh_rows.reshape(Tn, Bn, Hn)
    else:
        loss, dHt[-1], dU, dby = ref_head(hs[-1], U, by, y, kind)
    dWz, dWr, dWn = (np.zeros_like(Wz) for _ in range(3))
    dUz, dUr, dUn = (np.zeros_like(Uz) for _ in range(3))
    dbz, dbr, dbn = (np.zeros(Hn) for _ in range(3))
    dh = np.zeros((Bn, Hn))
    for t in range(Tn - 1, -1, -1):
        hp, z, r, n, xt = hs[t], zs[t], rs[t], ns[t], xin[t]
        dh = dh + dHt[t]
        dn = dh * (1 - z)
        dz = dh * (hp - n)
        dhp = dh * z
        dan = dn * (1 - n ** 2)
        daz = dz * z * (1 - z)
        drh = dan @ Un.T
        dr = drh * hp
        dhp = dhp + drh * r
        dar = dr * r * (1 - r)
        dhp = dhp + daz @ Uz.T + dar @ Ur.T
        dWz += xt.T @ daz
        dWr += xt.T @ dar
        dWn += xt.T @ dan
        dUz += hp.T @ daz
        dUr += hp.T @ dar
        dUn += (r * hp).T @ dan
        dbz += daz.sum(0)
        dbr += dar.sum(0)
        dbn += dan.sum(0)
        dh = dhp
    grad = np.zeros_like(theta)
    g = model.params(grad)
    g["W_x"][...] = np.concatenate([dWz, dWr, dWn], axis=1)
    g["W_h"][...] = np.concatenate([dUz, dUr, dUn], axis=1)
    g["b"][...] = np.concatenate([dbz, dbr, dbn])
    g["U"][...], g["b_y"][...] = dU, dby
    return loss, grad, np.stack(hs[1:])


CASES = [("softmax", True, False), ("softmax", True, True), ("softmax", False, False),
         ("softmax", False, True), ("mse", True, False), ("mse", False, True)]
CASE_IDS = [f"{k}-{'step' if s else 'last'}-{'tok' if t else 'float'}" for k, s, t in CASES]


def model_theta(kind, seed=1):
    m = rt.GRU(D, H, O, loss=kind)
    theta = m.init_params(seed=seed, scale=1.5)
    theta += 0.1 * np.random.default_rng(seed + 100).normal(size=theta.size)  # non-zero biases
    return m, theta


def test_layout():
    m = rt.GRU(D, H, O)
    p = m.params(m.init_params(seed=0))
    assert [(k, v.shape) for k, v in p.items()] == [
        ("W_x", (D, 3 * H)), ("W_h", (H, 3 * H)), ("b", (3 * H,)), ("U", (H, O)), ("b_y", (O,))]
    assert m.size == D * 3 * H + H * 3 * H + 3 * H + H * O + O
    assert m.layout.groups == ("input", "recurrent", "bias", "output")
    assert not p["b"].any()


@pytest.mark.parametrize("kind,per_step,tokens", CASES, ids=CASE_IDS)
def test_matches_reference(kind, per_step, tokens):
    m, theta = model_theta(kind)
    x, y = make_data(kind, per_step, tokens, n_in=D, n_out=O)
    loss, grad = m.loss_and_grad(theta, x, y)
    rl, rg, _ = ref_gru(m, theta, x, y)
    assert abs(loss - rl) <= 1e-12 * abs(rl)
    assert normwise(grad, rg) <= 1e-12
    assert m.loss(theta, x, y) == pytest.approx(rl, rel=1e-12)


def test_initial_state_predict_and_continuation():
    m, theta = model_theta("softmax")
    x, y = make_data("softmax", True, True)
    h0 = np.random.default_rng(5).uniform(-0.5, 0.5, size=(B, H))
    loss, grad, st = m.loss_and_grad(theta, x, y, initial_state=h0, return_stats=True)
    rl, rg, hs = ref_gru(m, theta, x, y, h0=h0)
    assert abs(loss - rl) <= 1e-12 * abs(rl)
    assert normwise(grad, rg) <= 1e-12
    np.testing.assert_allclose(st.final_state, hs[-1], rtol=1e-13, atol=1e-15)
    p = m.params(theta)
    z = hs @ p["U"] + p["b_y"]
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    out = m.predict(theta, x, initial_state=h0)
    np.testing.assert_allclose(out, probs, rtol=1e-12, atol=1e-15)
    s = m.final_state(theta, x[:2], initial_state=h0)
    np.testing.assert_allclose(m.predict(theta, x[2:], initial_state=s), out[2:],
                               rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kind,per_step,tokens", [CASES[0], CASES[3], CASES[4]],
                         ids=[CASE_IDS[0], CASE_IDS[3], CASE_IDS[4]])
def test_finite_differences(kind, per_step, tokens):
    m, theta = model_theta(kind, seed=2)
    x, y = make_data(kind, per_step, tokens, seed=3)
    _, grad = m.loss_and_grad(theta, x, y)
    fd = fd_grad(lambda th: m.loss(th, x, y), theta)
    assert max_rel(grad, fd) <= 1e-6


def test_closed_form_output_bias():
    """Per-step softmax: dL/db_y = sum_t (yhat_t - onehot(y_t)) / (T B)."""
    m, theta = model_theta("softmax", seed=4)
    x, y = make_data("softmax", True, False, seed=4)
    _, grad = m.loss_and_grad(theta, x, y)
    yhat = m.predict(theta, x)
    np.testing.assert_allclose(m.params(grad)["b_y"],
                               (yhat - np.eye(O)[y]).sum(axis=(0, 1)) / (T * B),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("tokens", [False, True])
@pytest.mark.parametrize("kind,per_step", [("softmax", True), ("softmax", False), ("mse", True)])
def test_checkpoint_equals_standard(kind, per_step, tokens):
    m, theta = model_theta(kind, seed=6)
    Tl = 11
    x, y = make_data(kind, per_step, tokens, seed=6, T_=Tl)
    l0, g0, s0 = m.loss_and_grad(theta, x, y, return_stats=True)
    for k in (1, 2, 3, 4, 5, 11, 20, None):
        l1, g1, s1 = m.loss_and_grad(theta, x, y, bptt="checkpoint", checkpoint_every=k,
                                     return_stats=True)
        assert abs(l1 - l0) <= 1e-13 * abs(l0)
        assert normwise(g1, g0) <= 1e-13
        np.testing.assert_array_equal(s1.final_state, s0.final_state)
    _, _, s_ck = m.loss_and_grad(theta, x, y, bptt="checkpoint", checkpoint_every=4,
                                 return_stats=True)
    assert s_ck.stored_bytes < s0.stored_bytes


@pytest.mark.parametrize("kind,per_step,tokens", [CASES[0], CASES[3], CASES[4]],
                         ids=[CASE_IDS[0], CASE_IDS[3], CASE_IDS[4]])
def test_hvp(kind, per_step, tokens):
    m, theta = model_theta(kind, seed=7)
    x, y = make_data(kind, per_step, tokens, seed=7)
    check_hvp(m, theta, x, y)


def test_bad_input():
    m, theta = model_theta("softmax")
    x, y = make_data("softmax", True, False)
    xt, _ = make_data("softmax", True, True)
    xn = x.copy()
    xn[1, 0, 2] = np.nan
    bad = [
        (dict(x=x[..., 0]), "x"), (dict(x=np.zeros((T, B, D + 1))), "x"),
        (dict(x=x.astype(np.complex128)), "x"), (dict(x=xn), "x"),
        (dict(x=np.where(xt == 1, D + 3, xt)), "x"), (dict(x=x.astype(str)), "x"),
        (dict(y=np.where(y == 2, O, y)), "y"), (dict(y=-1 - y), "y"),
        (dict(y=y.astype(float)), "y"), (dict(y=y[:-1]), "y"),
        (dict(theta=theta[:-1]), "theta"), (dict(theta=np.append(theta, 0.0)), "theta"),
        (dict(theta=theta.astype(np.float32)), "theta"),
        (dict(bptt="reversible"), "bptt"), (dict(checkpoint_every=-2), "checkpoint_every"),
        (dict(initial_state=np.zeros((B + 1, H))), "initial_state"),
    ]
    for change, name in bad:
        assert_rejects(m, theta, x, y, change, name)
    with pytest.raises(ValueError, match=r"^v\b"):
        m.hvp(theta, x, y, theta[:3])
    with pytest.raises(ValueError, match=r"^x\b"):
        m.predict(theta, xn)
    mm = rt.GRU(D, H, O, loss="mse")
    with pytest.raises(ValueError, match=r"^y\b"):
        mm.loss_and_grad(mm.init_params(), x, np.zeros((B, O + 1)))


def test_second_call_compiles_nothing():
    m, theta = model_theta("softmax")
    mods = (k_gru, k_head, k_inputs)
    call_every_entry_point(m, theta, 0, T, B)
    before = signature_counts(*mods)
    call_every_entry_point(m, theta, 1, T + 3, B + 1)
    assert signature_counts(*mods) == before
