"""Deep models (layers, embedding, dropout) in hypergradients: exact reversal, same masks."""
import itertools

import numpy as np
import pytest

import revtrain as rt
import revtrain.hypergrad as hypergrad
from revtrain.trainer import step_dropout_seed

N_ITERS = 6
FINE = dict(frac_bits=48, velocity_frac_bits=60)      # as in test_hypergrad.py


def _problem(cls, H, dropout, V=6, T=5, B=3):
    model = cls(V, H, V, n_layers=2, embed_dim=3, dropout=dropout)
    rng = np.random.default_rng(0)
    data = [(rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))) for _ in range(N_ITERS)]
    val = (rng.integers(0, V, (T, 2 * B)), rng.integers(0, V, (T, 2 * B)))
    return model, data, val, model.init_params(seed=1), rng.uniform(0.2, 0.6, N_ITERS)


def _val_after_training(model, lr, theta0, data, val, seed):
    """Train N_ITERS exact steps with the masks a run seeded ``seed`` draws; validation loss."""
    opt = rt.ExactSGD(lr, 0.9, **FINE)
    state = opt.init(theta0)
    for t in range(N_ITERS):
        _, g = model.loss_and_grad(opt.params(state), *data[t],
                                   dropout_seed=step_dropout_seed(seed, t + 1))
        state = opt.step(state, g)
    return model.loss(opt.params(state), *val)


def test_hypergradient_of_a_two_layer_model_with_dropout_matches_finite_differences():
    model, data, val, theta0, lr = _problem(rt.LSTM, 4, 0.3)
    hg = rt.hypergradient(model, rt.ExactSGD(lr, 0.9, **FINE), theta0, lambda t: data[t], val,
                          N_ITERS, dropout_seed=7)
    assert hg.groups == ("embed", "layer0", "layer1", "output")
    assert hg.init_scale.shape == (4,)
    assert hg.val_loss == _val_after_training(model, lr, theta0, data, val, 7)
    for t in (0, N_ITERS - 1):       # the Hessian-vector products used the forward's masks
        e = np.zeros(N_ITERS)
        e[t] = 1e-4
        fd = (_val_after_training(model, lr + e, theta0, data, val, 7)
              - _val_after_training(model, lr - e, theta0, data, val, 7)) / 2e-4
        assert abs(hg.lr[t] - fd) <= 1e-5 * abs(fd), (t, hg.lr[t], fd)
    # no seed: no dropout, the same bits as the model without dropout
    plain = rt.LSTM(6, 4, 6, n_layers=2, embed_dim=3)
    a = rt.hypergradient(model, rt.ExactSGD(lr, 0.9), theta0, lambda t: data[t], val, N_ITERS)
    b = rt.hypergradient(plain, rt.ExactSGD(lr, 0.9), theta0, lambda t: data[t], val, N_ITERS)
    assert a.val_loss == b.val_loss and a.lr.tobytes() == b.lr.tobytes()
    assert a.val_loss != hg.val_loss


def test_reversible_two_layer_model_with_dropout_recovers_w0(monkeypatch):
    model, data, val, theta0, lr = _problem(rt.RevLSTM, 4, 0.25)
    opt = rt.ExactSGD(lr, 0.9)
    # check_reversal (the default) raises unless w_0 == to_fixed(theta0), v_0 == 0 and the
    # buffer is empty, bit for bit
    hg = rt.hypergradient(model, opt, theta0, lambda t: data[t], val, N_ITERS,
                          bptt="reversible", dropout_seed=3)
    assert np.isfinite(hg.lr).all() and hg.stats.buffer_bytes > 0
    # masks that differ between the forward and the reverse pass break the reversal
    fresh = itertools.count(1)
    monkeypatch.setattr(hypergrad, "step_dropout_seed", lambda seed, step: next(fresh))
    with pytest.raises(rt.ReversalError):
        rt.hypergradient(model, opt, theta0, lambda t: data[t], val, N_ITERS,
                         bptt="reversible", dropout_seed=3)
    with pytest.raises(ValueError, match="dropout_seed"):
        rt.hypergradient(model, opt, theta0, lambda t: data[t], val, N_ITERS, dropout_seed=-1)
