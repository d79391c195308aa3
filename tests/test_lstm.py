"""rt.LSTM against a slow plain-NumPy reference, finite differences and its own invariants."""
import numpy as np
import pytest

import revtrain as rt
from revtrain._kernels import lstm as lstm_kernels
from revtrain._kernels import head as head_kernels
from revtrain._kernels import inputs as input_kernels

D, H, O, T, B = 3, 4, 5, 6, 2


# --------------------------------------------------------------------------- reference
def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def reference(model, theta, x, y, h0=None, c0=None):
    """Loss and gradient by an obvious loop over time (float64, manual backward).

    ``x`` float (T, B, n_in) or int tokens (T, B) (turned into one-hot rows);
    targets as in the model: softmax labels (T, B) or (B,), mse (T, B, O) or (B, O).
    """
    p = {k: v.copy() for k, v in model.params(theta).items()}
    n_in, Hh = model.n_in, model.n_hidden
    if x.ndim == 2:
        x = np.eye(n_in)[x]
    Tn, Bn = x.shape[0], x.shape[1]
    b = np.concatenate([p["b_f"], p["b_iog"]])
    h = np.zeros((Bn, Hh)) if h0 is None else h0.copy()
    c = np.zeros((Bn, Hh)) if c0 is None else c0.copy()
    hs, cs, gates = [h], [c], []
    for t in range(Tn):
        a = x[t] @ p["W_x"] + h @ p["W_h"] + b
        f, i, o = _sig(a[:, :Hh]), _sig(a[:, Hh:2 * Hh]), _sig(a[:, 2 * Hh:3 * Hh])
        g = np.tanh(a[:, 3 * Hh:])
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
        cs.append(c)
        gates.append((f, i, o, g))
    per_step = (y.ndim == 2) if model.loss_kind == "softmax" else (y.ndim == 3)
    steps = range(Tn) if per_step else [Tn - 1]
    n_targets = Tn * Bn if per_step else Bn
    loss = 0.0
    dz = {}
    for t in steps:
        z = hs[t + 1] @ p["U"] + p["b_y"]
        yt = y[t] if per_step else y
        if model.loss_kind == "softmax":
            m = z.max(axis=1, keepdims=True)
            lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
            loss += np.sum(lse - z[np.arange(Bn), yt]) / n_targets
            prob = np.exp(z - lse[:, None])
            prob[np.arange(Bn), yt] -= 1.0
            dz[t] = prob / n_targets
        else:
            d = z - yt
            loss += np.sum(d * d) / (n_targets * model.n_out)
            dz[t] = 2.0 * d / (n_targets * model.n_out)
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    db = np.zeros(4 * Hh)
    dh_next = np.zeros((Bn, Hh))
    dc_next = np.zeros((Bn, Hh))
    for t in range(Tn - 1, -1, -1):
        dh = dh_next.copy()
        if t in dz:
            dh += dz[t] @ p["U"].T
            grads["U"] += hs[t + 1].T @ dz[t]
            grads["b_y"] += dz[t].sum(axis=0)
        f, i, o, g = gates[t]
        tc = np.tanh(cs[t + 1])
        dc = dc_next + dh * o * (1.0 - tc ** 2)
        da = np.concatenate([dc * cs[t] * f * (1 - f), dc * g * i * (1 - i),
                             dh * tc * o * (1 - o), dc * i * (1 - g ** 2)], axis=1)
        dc_next = dc * f
        grads["W_x"] += x[t].T @ da
        grads["W_h"] += hs[t].T @ da
        db += da.sum(axis=0)
        dh_next = da @ p["W_h"].T
    grads["b_f"] = db[:Hh]
    grads["b_iog"] = db[Hh:]
    flat = np.zeros(model.size)
    for k, v in model.params(flat).items():
        v[...] = grads[k]
    return loss, flat, (hs[-1], cs[-1])


# --------------------------------------------------------------------------- data
def _data(kind, seed=0, Tn=T, Bn=B):
    rng = np.random.default_rng(seed)
    loss = "mse" if kind.startswith("mse") else "softmax"
    model = rt.LSTM(D, H, O, loss=loss)
    theta = model.init_params(seed=seed, scale=1.5)
    theta += rng.normal(scale=0.1, size=theta.shape)       # non-trivial biases
    if "tokens" in kind:
        x = rng.integers(0, D, size=(Tn, Bn))
    else:
        x = rng.normal(size=(Tn, Bn, D))
    if loss == "softmax":
        y = rng.integers(0, O, size=(Bn,) if "last" in kind else (Tn, Bn))
    else:
        y = rng.normal(size=(Bn, O) if "last" in kind else (Tn, Bn, O))
    return model, theta, x, y


KINDS = ["softmax", "softmax_last", "softmax_tokens", "softmax_tokens_last", "mse", "mse_last",
         "mse_tokens"]


def _rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


# --------------------------------------------------------------------------- tests
def test_layout_and_init():
    model = rt.LSTM(D, H, O)
    assert model.state_size == 2 * H
    p = model.params(model.init_params(seed=1))
    assert p["W_x"].shape == (D, 4 * H) and p["W_h"].shape == (H, 4 * H)
    assert np.all(p["b_f"] == 1.0) and np.all(p["b_iog"] == 0.0)
    assert model.size == D * 4 * H + H * 4 * H + 4 * H + H * O + O
    groups = {s.name: s.group for s in model.layout.specs}
    assert groups == {"W_x": "input", "W_h": "recurrent", "b_f": "bias", "b_iog": "bias",
                      "U": "output", "b_y": "output"}


@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(kind):
    model, theta, x, y = _data(kind)
    loss, grad = model.loss_and_grad(theta, x, y)
    rloss, rgrad, (hT, cT) = reference(model, theta, x, y)
    assert abs(loss - rloss) <= 1e-12 * abs(rloss)
    assert _rel(grad, rgrad) <= 1e-12
    assert abs(model.loss(theta, x, y) - rloss) <= 1e-12 * abs(rloss)
    fs = model.final_state(theta, x)
    np.testing.assert_allclose(fs, np.concatenate([hT, cT], axis=1), rtol=1e-12, atol=1e-15)


def test_matches_reference_from_initial_state():
    model, theta, x, y = _data("softmax", seed=4)
    rng = np.random.default_rng(9)
    s0 = rng.normal(size=(B, 2 * H))
    loss, grad = model.loss_and_grad(theta, x, y, initial_state=s0)
    rloss, rgrad, _ = reference(model, theta, x, y, h0=s0[:, :H], c0=s0[:, H:])
    assert abs(loss - rloss) <= 1e-12 * abs(rloss)
    assert _rel(grad, rgrad) <= 1e-12


@pytest.mark.parametrize("kind", ["softmax", "softmax_tokens_last", "mse"])
def test_finite_differences(kind):
    model, theta, x, y = _data(kind, seed=2, Tn=4)
    _, grad = model.loss_and_grad(theta, x, y)
    eps = 1e-5
    fd = np.empty_like(theta)
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = eps
        fd[j] = (model.loss(theta + e, x, y) - model.loss(theta - e, x, y)) / (2 * eps)
    scale = np.max(np.abs(grad))
    err = np.abs(fd - grad) / np.maximum(np.abs(grad), 1e-3 * scale)
    assert err.max() <= 1e-6, (err.max(), model.layout.name_of(int(np.argmax(err))))


def test_softmax_output_bias_closed_form():
    # per-step softmax cross-entropy: dL/db_y = sum_t,b (yhat - onehot(y)) / (T*B)
    model, theta, x, y = _data("softmax", seed=3)
    _, grad = model.loss_and_grad(theta, x, y)
    yhat = model.predict(theta, x)
    np.testing.assert_allclose(yhat.sum(axis=-1), 1.0, rtol=1e-14)
    expect = (yhat - np.eye(O)[y]).sum(axis=(0, 1)) / (T * B)
    np.testing.assert_allclose(model.params(grad)["b_y"], expect, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["softmax", "mse_tokens"])
def test_hvp(kind):
    model, theta, x, y = _data(kind, seed=5)
    rng = np.random.default_rng(6)
    u, v = rng.normal(size=(2, theta.size))
    hv = model.hvp(theta, x, y, v)
    eps = 1e-5
    fd = (model.loss_and_grad(theta + eps * v, x, y)[1]
          - model.loss_and_grad(theta - eps * v, x, y)[1]) / (2 * eps)
    assert _rel(hv, fd) <= 1e-5
    hu = model.hvp(theta, x, y, u)
    assert abs(u @ hv - v @ hu) <= 1e-10 * max(abs(u @ hv), 1e-300)
    loss, g, hv2 = model.grad_and_hvp(theta, x, y, v)
    loss0, g0 = model.loss_and_grad(theta, x, y)
    assert abs(loss - loss0) <= 1e-14 * abs(loss0)
    assert _rel(g, g0) <= 1e-13
    np.testing.assert_array_equal(hv2, hv)


@pytest.mark.parametrize("kind", ["softmax", "softmax_tokens_last", "mse"])
def test_checkpoint_equals_standard(kind):
    model, theta, x, y = _data(kind, seed=7, Tn=11)
    loss, grad, st = model.loss_and_grad(theta, x, y, return_stats=True)
    assert st.mode == "standard" and st.stored_bytes > 0
    # gates (T,B,4H), tanh(c) (T,B,H), h and c (T+1,B,H)
    assert st.stored_bytes == 8 * B * H * (4 * 11 + 11 + 2 * 12)
    for k in (None, 1, 2, 3, 5, 11, 20):
        l2, g2, s2 = model.loss_and_grad(theta, x, y, bptt="checkpoint", checkpoint_every=k,
                                         return_stats=True)
        assert abs(l2 - loss) <= 1e-13 * abs(loss)
        assert _rel(g2, grad) <= 1e-13
        np.testing.assert_array_equal(s2.final_state, st.final_state)
        if k is not None and k < 11:
            assert s2.stored_bytes < st.stored_bytes


def test_initial_state_carries():
    model, theta, x, y = _data("softmax", seed=8, Tn=9)
    x1, x2 = x[:4], x[4:]
    s1 = model.final_state(theta, x1)
    _, _, st1 = model.loss_and_grad(theta, x1, y[:4], return_stats=True)
    np.testing.assert_array_equal(st1.final_state, s1)
    # the same forward pass in two pieces
    np.testing.assert_allclose(model.final_state(theta, x2, initial_state=s1),
                               model.final_state(theta, x), rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(model.predict(theta, x2, initial_state=s1),
                               model.predict(theta, x)[4:], rtol=1e-13, atol=1e-16)
    l_all = model.loss(theta, x, y)
    l1 = model.loss(theta, x1, y[:4])
    l2 = model.loss(theta, x2, y[4:], initial_state=s1)
    assert abs((4 * l1 + 5 * l2) / 9 - l_all) <= 1e-13 * l_all
    y_last = y[-1]
    assert abs(model.loss(theta, x2, y_last, initial_state=s1)
               - model.loss(theta, x, y_last)) <= 1e-13 * model.loss(theta, x, y_last)


def test_bad_input():
    model, theta, x, y = _data("softmax", seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, n_in=3\), got \(6, 2, 4\)"):
        model.loss_and_grad(theta, np.zeros((T, B, D + 1)), y)
    with pytest.raises(ValueError, match=r"x must be float .* got dtype complex128"):
        model.loss_and_grad(theta, x.astype(complex), y)
    xn = x.copy()
    xn[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"x contains NaN or inf \(first at index \(2, 1, 0\)\)"):
        model.loss_and_grad(theta, xn, y)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, n_in=3\), got 3"):
        model.loss(theta, np.full((T, B), D), y)
    yb = y.copy()
    yb[1, 0] = O
    with pytest.raises(ValueError, match=r"labels must be in \[0, n_out=5\), got 5 at index \(1, 0\)"):
        model.loss_and_grad(theta, x, yb)
    with pytest.raises(ValueError, match=r"y must have shape \(T, B\) = \(6, 2\)"):
        model.loss_and_grad(theta, x, y[:3])
    with pytest.raises(ValueError, match=r"y must be int class labels"):
        model.loss_and_grad(theta, x, y.astype(float))
    with pytest.raises(ValueError, match=rf"theta must have shape \({model.size},\) for this "
                                         rf"model, got \({model.size - 1},\)"):
        model.loss_and_grad(theta[:-1], x, y)
    with pytest.raises(ValueError, match=r"theta must have dtype float64, got float32"):
        model.loss_and_grad(theta.astype(np.float32), x, y)
    with pytest.raises(ValueError, match=r"initial_state must be float of shape \(B, state_size\) "
                                         r"= \(2, 8\), got float64 \(2, 4\)"):
        model.loss_and_grad(theta, x, y, initial_state=np.zeros((B, H)))
    with pytest.raises(ValueError, match=r"bptt must be one of"):
        model.loss_and_grad(theta, x, y, bptt="reversible")
    with pytest.raises(ValueError, match=r"v must have shape"):
        model.hvp(theta, x, y, theta[:-1])
    with pytest.raises(ValueError, match=r"n_hidden must be a positive int, got 0"):
        rt.LSTM(D, 0, O)


def test_second_call_compiles_nothing():
    kernels = [lstm_kernels.lstm_forward, lstm_kernels.lstm_backward,
               head_kernels.softmax_xent_head, head_kernels.mse_head,
               input_kernels.gather_rows, input_kernels.scatter_add_rows]

    def work(seed, Tn, Bn):
        for kind in ("softmax", "softmax_tokens", "mse_last"):
            model, theta, x, y = _data(kind, seed=seed, Tn=Tn, Bn=Bn)
            model.loss_and_grad(theta, x, y)
            model.loss_and_grad(theta, x, y, bptt="checkpoint", checkpoint_every=2)
            model.hvp(theta, x, y, theta)
            model.predict(theta, x)

    work(0, 5, 2)
    before = [len(k.signatures) for k in kernels]
    work(1, 7, 3)
    assert [len(k.signatures) for k in kernels] == before
