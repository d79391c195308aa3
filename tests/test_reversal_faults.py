"""Fault injection into reversible BPTT, and the float-arithmetic negative control."""
import numpy as np
import pytest

import revtrain as rt
from test_reversible import CELLS, make, data, ref_step, ref_proj, _sig, MomentumRNN, RevLSTM


def _run_with_fault(m, theta, x, y, fault, after_last=False):
    """Reversible BPTT with ``fault(q, buf)`` applied just before the first step is undone
    (with ``after_last``: just after the last step, t = 0, is undone).

    A model running the whole-window kernels (RevLSTM, RevGRU, MomentumRNN) takes the fault
    through its
    ``_fault_hook`` (on the top layer's state and buffer streams); the others through
    their per-step ``_fixed_unstep``.
    """
    if getattr(m, "window_kernels", False):
        def hook(when, run):
            if (when == "after") == after_last:
                fault(run.layer_q(run.L - 1), run.layer_buffer(run.L - 1))
        m._fault_hook = hook
        try:
            return m.loss_and_grad(theta, x, y)
        finally:
            del m._fault_hook
    orig = m._fixed_unstep
    T = x.shape[0]

    def unstep(p, P, q, buf, t, cache):
        if t == T - 1 and not after_last:
            fault(q, buf)
        orig(p, P, q, buf, t, cache)
        if t == 0 and after_last:
            fault(q, buf)

    m._fixed_unstep = unstep
    try:
        return m.loss_and_grad(theta, x, y)
    finally:
        del m._fixed_unstep


def _flip_word(s, i, bit):
    def fault(q, buf):
        n = int(buf.counts[s])
        assert n > 0
        buf.words[s, i % n] ^= np.uint32(1 << bit)
    return fault


def _flip_state(s, bit):
    def fault(q, buf):
        buf.states[s] ^= np.uint64(1 << bit)
    return fault


def _flip_q(part, s, j, bit):
    def fault(q, buf):
        name = list(q)[part % len(q)]
        q[name][s, j % q[name].shape[1]] ^= np.int64(1 << bit)
    return fault


@pytest.mark.parametrize("cell", list(CELLS))
def test_one_flipped_bit_raises_reversal_error(cell):
    m = make(cell)
    theta = m.init_params(seed=1)
    x, y = data(2, 30, 3, 5, 4)
    loss, grad = _run_with_fault(m, theta, x, y, lambda q, buf: None)   # no fault: fine
    assert np.isfinite(grad).all()
    rng = np.random.default_rng(3)
    faults = [_flip_word(int(rng.integers(3)), int(rng.integers(1 << 20)), int(b))
              for b in (0, 13, 31)]
    faults += [_flip_word(0, 0, 5)]                          # the bottom word
    faults += [_flip_state(1, b) for b in (0, 20, 40, 63)]    # the rANS state of a stream
    faults += [_flip_q(part, int(rng.integers(3)), int(rng.integers(6)), b)
               for part in range(4) for b in (0, 31, 61)]     # the kept final state
    for fault in faults:
        with pytest.raises(rt.ReversalError):
            _run_with_fault(m, theta, x, y, fault)


def _reversal_message(cell, fault, after_last=False):
    """The ReversalError message of ``cell``'s reversible BPTT under ``fault``."""
    m = make(cell)
    theta = m.init_params(seed=1)
    x, y = data(2, 30, 3, 5, 4)
    with pytest.raises(rt.ReversalError) as info:
        _run_with_fault(m, theta, x, y, fault, after_last)
    return str(info.value)


@pytest.mark.parametrize("cell", list(CELLS))
def test_a_flipped_deep_word_is_reported_as_a_wrong_rans_state(cell):
    """The bottom word is read last: every word is consumed (0 left), the rANS state is off.

    The message names the failed check and does not claim a non-empty buffer."""
    msg = _reversal_message(cell, _flip_word(0, 0, 5))
    assert f"{type(make(cell)).__name__}: reversible BPTT failed" in msg
    assert "the rANS state of 1 of 3 buffer streams is not back at its initial value" in msg
    assert "words" not in msg


@pytest.mark.parametrize("cell", list(CELLS))
def test_a_wrong_recovered_state_is_reported_as_a_differing_state(cell):
    """A bit of h_0 flipped after the last step is undone: only the state check fails."""
    msg = _reversal_message(cell, _flip_q(0, 1, 2, 0), after_last=True)
    assert "the recovered initial state differs from the true one" in msg
    assert "rANS" not in msg and "words" not in msg
    # flipped before the reversal, the error also disturbs what is popped from the buffer
    msg = _reversal_message(cell, _flip_q(0, 1, 2, 0))
    if cell == "momentum":
        # undoing a step multiplies an error by up to 1/(beta gamma) ~ 17 at init
        # (beta = 1/4, gamma ~ 0.23): over 30 steps a flipped low bit leaves the range
        assert "produced an impossible value in state part" in msg
    else:
        assert "initial state differs" in msg and "rANS state of 1 of 3" in msg


def test_check_reversal_names_only_the_failed_checks():
    buf = rt.InfoBuffer(3)
    rt.errors.check_reversal("X", True, buf)                   # everything fine: no error
    with pytest.raises(rt.ReversalError) as info:
        rt.errors.check_reversal("X", False, buf)
    assert "initial state differs" in str(info.value) and "rANS" not in str(info.value)
    buf.push(np.array([5, 6, 7]), 1000)
    with pytest.raises(rt.ReversalError, match="rANS state of 3 of 3") as info:
        rt.errors.check_reversal("X", True, buf)
    assert "differs" not in str(info.value)


# ------------------------------------------------------------ negative control
def _float_unstep(m, p, s, P):
    """Invert one float step analytically (what the fixed-point cells do exactly)."""
    F = m.floor
    s = dict(s)
    if isinstance(m, MomentumRNN):
        H = m.n_hidden
        h = (s["h"] - (1 - m.beta) * s["v"]) / m.beta
        A = h @ p["W"] + P
        g = np.tanh(A[:, :H] + p["b"])
        gam = F + (1 - F) * _sig(A[:, H:] + p["b_g"]) if m.learned else m.gamma
        return {"h": h, "v": (s["v"] - (1 - gam) * g) / gam}
    Hh = m.n_hidden // 2
    for k, (mine, other) in [(1, ("2", "1")), (0, ("1", "2"))]:
        o = s["h" + other]
        if isinstance(m, RevLSTM):
            A = o @ p["W" + mine] + P[:, 5 * Hh * k:5 * Hh * (k + 1)] \
                + p["b"][5 * Hh * k:5 * Hh * (k + 1)]
            i = _sig(A[:, :Hh])
            f = F + (1 - F) * _sig(A[:, Hh:2 * Hh])
            og = _sig(A[:, 2 * Hh:3 * Hh])
            pg = F + (1 - F) * _sig(A[:, 3 * Hh:4 * Hh])
            g = np.tanh(A[:, 4 * Hh:])
            s["h" + mine] = (s["h" + mine] - (1 - pg) * og * np.tanh(s["c" + mine])) / pg
            s["c" + mine] = (s["c" + mine] - i * g) / f
        else:
            Pk = P[:, 3 * Hh * k:3 * Hh * (k + 1)]
            bk = p["b"][3 * Hh * k:3 * Hh * (k + 1)]
            A = o @ p["W" + mine] + Pk[:, :2 * Hh] + bk[:2 * Hh]
            z = F + (1 - F) * _sig(A[:, :Hh])
            r = _sig(A[:, Hh:])
            g = np.tanh((r * o) @ p["Wg" + mine] + Pk[:, 2 * Hh:] + bk[2 * Hh:])
            s["h" + mine] = (s["h" + mine] - (1 - z) * g) / z
    return s


@pytest.mark.parametrize("cell", list(CELLS))
def test_float_arithmetic_does_not_reconstruct(cell):
    """The same cell in float64, run backwards analytically, loses h_0; fixed point recovers it."""
    T, B = 100, 2
    m = make(cell, 3, 4, 3)
    theta = m.init_params(seed=5)
    p = m.params(theta)
    x, y = data(6, T, B, 3, 3)
    s0 = m._unpack(0.5 * np.random.default_rng(7).standard_normal((B, m.state_size)))
    s = dict(s0)
    for t in range(T):
        s, _ = ref_step(m, p, s, ref_proj(p, x, t))
    # one step is undone well (a sanity check of the inverse) ...
    s1, _ = ref_step(m, p, s0, ref_proj(p, x, 0))
    back1 = _float_unstep(m, p, s1, ref_proj(p, x, 0))
    assert all(np.allclose(back1[k], s0[k], atol=1e-12) for k in s0)
    # ... but over T steps the rounding errors grow by 1/gate per step
    with np.errstate(all="ignore"):
        for t in range(T - 1, -1, -1):
            s = _float_unstep(m, p, s, ref_proj(p, x, t))
        err = max(float(np.nan_to_num(np.abs(s[k] - s0[k]), nan=np.inf).max()) for k in s0)
    assert err > 1e-6
    # the fixed-point cell reverses the same sequence exactly (no ReversalError)
    loss, grad = m.loss_and_grad(theta, x, y, initial_state=m._pack(s0))
    assert np.isfinite(grad).all()
