"""MomentumRNN: the leaky position h = beta h + (1 - beta) v, its bound, initial scale, arguments.

The shared reversible-cell checks (reversible == standard, gradient and
complex-step hvp against the plain-NumPy reference, the float negative
control, fault injection) run on MomentumRNN in test_reversible.py and
test_reversal_faults.py.
"""
import numpy as np
import pytest

import revtrain as rt
from revtrain import MomentumRNN, RevMDRNN
from revtrain.trainer import constructor_args


def _h_trajectory(m, theta, x, state0=None):
    """h at every step (T, B, H): the model with U = I, b_y = 0 and a linear (mse) head."""
    p = m.params(theta)
    p["U"][...] = np.eye(m.n_hidden)
    p["b_y"][...] = 0.0
    return m.predict(theta, x, initial_state=state0)


@pytest.mark.parametrize("gamma", [None, 0.9])
def test_state_stays_bounded_over_long_carried_sequences(gamma):
    """|h|, |v| <= max(1, |h_0|, |v_0|) + 2 * 2**(2 gate_bits - frac_bits) with saturated gates.

    Inputs of size ~100 drive the candidate to +-1 and the gate to its ends, the
    worst case for the old h = h + v (it grew by up to 1 per step: ~1000 here).
    """
    H = 6
    m = MomentumRNN(4, H, H, loss="mse", gamma=gamma)
    theta = m.init_params(seed=3, scale=4.0)
    rng = np.random.default_rng(3)
    eps = 2.0 ** (2 * m.gate_bits - m.frac_bits)
    state, hmax = None, 0.0
    for w in range(2):                                      # 2 windows of 500 steps, carried
        x = 100.0 * rng.standard_normal((500, 3, 4))
        x[:250] = np.abs(x[:250])                           # a long push one way first
        h = _h_trajectory(m, theta, x, state)
        state = m.final_state(theta, x, initial_state=state)
        assert np.array_equal(h[-1], state[:, :H])
        hmax = max(hmax, float(np.abs(h).max()))
        assert np.abs(state).max() <= 1.0 + 2 * eps
    assert 0.9 < hmax <= 1.0 + 2 * eps                       # saturated, and bounded

    # from a large carried state the bound is max(|h_0|, |v_0|): the state only shrinks
    s0 = np.full((3, 2 * H), -50.0)
    h = _h_trajectory(m, theta, x[:100], s0)
    assert np.abs(h).max() <= 50.0 + 2 * eps
    assert np.abs(h[-1]).max() < 2.0                       # beta**100: back near [-1, 1]


@pytest.mark.parametrize("gamma", [None, 0.5])
@pytest.mark.parametrize("V", [8, 103])
def test_initial_loss_is_near_log_vocabulary(gamma, V):
    """A fresh model on random tokens scores within 10% of log V (the old cell: 20 nats, V=103)."""
    rng = np.random.default_rng(V)
    x = rng.integers(0, V, (64, 16))
    y = rng.integers(0, V, (64, 16))
    for seed in range(3):
        m = MomentumRNN(V, 128, V, gamma=gamma)
        loss = m.loss(m.init_params(seed=seed), x, y)
        assert abs(loss - np.log(V)) <= 0.1 * np.log(V)


def test_gate_bias_starts_at_minus_two():
    m = MomentumRNN(3, 4, 3)
    theta = m.init_params(seed=0, scale=2.0)
    assert np.array_equal(m.params(theta)["b_g"], np.full(4, -2.0))
    # the uniform blocks are those of the base layout (seed and scale as for every model)
    base = m.layout.init(seed=0, scale=2.0)
    assert np.array_equal(m.params(theta)["W"], m.params(base)["W"])
    mc = MomentumRNN(3, 4, 3, gamma=0.5)
    assert "b_g" not in mc.params(mc.init_params())


@pytest.mark.parametrize("gamma", [None, 0.5])
@pytest.mark.parametrize("tokens", [True, False])
def test_reversible_equals_standard_bit_for_bit(gamma, tokens):
    rng = np.random.default_rng(4)
    T, B, D, H, O = 23, 3, 5, 6, 4
    m = MomentumRNN(D, H, O, gamma=gamma)
    theta = m.init_params(seed=1)
    x = rng.integers(0, D, (T, B)) if tokens else 3.0 * rng.standard_normal((T, B, D))
    y = rng.integers(0, O, (T, B))
    s0 = 0.7 * rng.standard_normal((B, 2 * H))
    lr, gr, sr = m.loss_and_grad(theta, x, y, return_stats=True, initial_state=s0)
    ls, gs, ss = m.loss_and_grad(theta, x, y, bptt="standard", return_stats=True,
                                 initial_state=s0)
    assert lr == ls
    assert np.array_equal(gr, gs)
    assert np.array_equal(sr.final_state, ss.final_state)
    assert sr.info_bits == ss.info_bits
    if gamma is not None:
        # gamma = 1/2 and beta = 1/4 destroy exactly 1 + 2 bits per unit and step
        assert sr.info_bits == T * B * H * 3


def test_gamma_one_is_rejected():
    """gamma = 1 keeps v = v_0 = 0: the input never reaches the state (loss log O, W gradient 0)."""
    for bad in (1.0, 1, 1.0 - 2.0 ** -14):                  # the last quantises to 4096/4096
        with pytest.raises(ValueError, match=r"gamma must be None \(learned\) or in "
                                             r"\[2\*\*-max_forget_bits, 1\).*the input never "
                                             r"reaches the state.*got "):
            MomentumRNN(3, 4, 3, gamma=bad)
    m = MomentumRNN(3, 4, 3, gamma=1.0 - 2.0 ** -12)        # n = 4095: accepted, and learns
    theta = m.init_params(seed=0)
    x = np.random.default_rng(0).integers(0, 3, (20, 2))
    _, grad = m.loss_and_grad(theta, x, x)
    assert np.abs(m.params(grad)["W"]).max() > 0
    with pytest.raises(ValueError, match="gamma"):
        MomentumRNN(3, 4, 3, gamma=0.01)                     # below the floor 1/8
    # RevMDRNN shares the gamma checks and still accepts gamma = 1 (h = h + v there)
    assert RevMDRNN(3, 4, 3, gamma=1.0).gamma == 1.0


def test_beta_argument():
    m = MomentumRNN(3, 4, 3)
    assert m.beta == 0.25 and m.forget_units == 8
    assert "beta=0.25" in repr(m)
    assert MomentumRNN(3, 4, 3, max_forget_bits=1).beta == 0.5     # default raised to the floor
    assert MomentumRNN(3, 4, 3, beta=np.float32(0.75)).beta == 0.75
    for bad in (1.0, 1.0 - 2.0 ** -14, 0.1, 2, -0.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"beta must be a float in \[2\*\*-max_forget_bits, "
                                             r"1\) = \[0.125, 1\)"):
            MomentumRNN(3, 4, 3, beta=bad)
    with pytest.raises(TypeError):
        MomentumRNN(3, 4, 3, "softmax", None, 32, 3, 12, 0.5)   # beta is keyword-only
    args = constructor_args(MomentumRNN(3, 4, 3, gamma=0.5, beta=0.5))
    assert args["beta"] == 0.5 and args["gamma"] == 0.5
    assert repr(MomentumRNN(**args)) == repr(MomentumRNN(3, 4, 3, gamma=0.5, beta=0.5))
