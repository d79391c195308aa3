"""Reversible cells (MomentumRNN, RevGRU, RevLSTM): exact reversal and reversible BPTT.

Gradient check. The fixed-point loss is piecewise constant (state rounding at
2**-frac_bits, gates at 2**-gate_bits), so central differences of the model's
own loss measure quantisation jumps, not the gradient. The gradient that
reversible BPTT computes is, by design, the straight-through one: the float
step differentiated at the fixed-point states. That is exactly the gradient
of a smooth *frozen-offset* model written here in plain NumPy:

    s'_t = f(s'_{t-1}, x_t; theta) + delta_t,   delta_t = s_t - f(s_{t-1}, x_t; theta)

where ``s_t`` is the model's fixed-point trajectory at the base ``theta`` and
``f`` the float cell (for the two-half cells each half gets its own offset,
applied before the other half reads it). At the base ``theta`` it reproduces
the fixed-point trajectory and loss; its central differences check the
gradient (directional and per coordinate) and its second differences check
the complex-step Hessian-vector product. A looser check compares a
high-precision fixed-point model with the plain float model (no offsets).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import revtrain as rt
from revtrain import MomentumRNN, RevGRU, RevLSTM

CELLS = {"momentum": lambda *a, **k: MomentumRNN(*a, **k),
         "momentum_const": lambda *a, **k: MomentumRNN(*a, gamma=0.6, beta=0.6, **k),
         "revlstm": lambda *a, **k: RevLSTM(*a, **k),
         "revgru": lambda *a, **k: RevGRU(*a, **k)}


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


# --------------------------------------------------------------- reference
def ref_step(m, p, s, P, delta=None, target=None):
    """Float step of the cell in plain NumPy.

    Each part is computed in update order; its value is ``raw + delta[part]``
    (or ``target[part]`` when given, used to measure the offsets), and later
    parts read that value. Returns ``(new_state, raw)`` dicts.
    """
    new, raw = {}, {}

    def put(name, val):
        raw[name] = val
        if target is not None:
            new[name] = target[name]
        else:
            new[name] = val + (0.0 if delta is None else delta[name])
        return new[name]

    F = m.floor
    if isinstance(m, MomentumRNN):
        H = m.n_hidden
        A = s["h"] @ p["W"] + P
        g = np.tanh(A[:, :H] + p["b"])
        gam = F + (1 - F) * _sig(A[:, H:] + p["b_g"]) if m.learned else m.gamma
        v = put("v", gam * s["v"] + (1 - gam) * g)
        put("h", m.beta * s["h"] + (1 - m.beta) * v)
        return new, raw
    Hh = m.n_hidden // 2
    if isinstance(m, RevLSTM):
        cur = dict(s)
        for k, (mine, other) in enumerate([("1", "2"), ("2", "1")]):
            o = cur["h" + other]
            A = o @ p["W" + mine] + P[:, 5 * Hh * k:5 * Hh * (k + 1)] \
                + p["b"][5 * Hh * k:5 * Hh * (k + 1)]
            i = _sig(A[:, :Hh])
            f = F + (1 - F) * _sig(A[:, Hh:2 * Hh])
            og = _sig(A[:, 2 * Hh:3 * Hh])
            pg = F + (1 - F) * _sig(A[:, 3 * Hh:4 * Hh])
            g = np.tanh(A[:, 4 * Hh:])
            c = put("c" + mine, f * cur["c" + mine] + i * g)
            cur["c" + mine] = c
            h = put("h" + mine, pg * cur["h" + mine] + (1.0 - pg) * og * np.tanh(c))
            cur["h" + mine] = h
        return new, raw
    # RevGRU
    cur = dict(s)
    for k, (mine, other) in enumerate([("1", "2"), ("2", "1")]):
        o = cur["h" + other]
        Pk = P[:, 3 * Hh * k:3 * Hh * (k + 1)]
        bk = p["b"][3 * Hh * k:3 * Hh * (k + 1)]
        A = o @ p["W" + mine] + Pk[:, :2 * Hh] + bk[:2 * Hh]
        z = F + (1 - F) * _sig(A[:, :Hh])
        r = _sig(A[:, Hh:])
        g = np.tanh((r * o) @ p["Wg" + mine] + Pk[:, 2 * Hh:] + bk[2 * Hh:])
        h = put("h" + mine, z * cur["h" + mine] + (1 - z) * g)
        cur["h" + mine] = h
    return new, raw


def ref_proj(p, x, t):
    return p["V"][x[t]] if x.dtype.kind == "i" else x[t] @ p["V"]


def ref_head(m, p, h, ylab):
    """Summed softmax cross-entropy of rows ``h`` with labels ``ylab``."""
    z = h @ p["U"] + p["b_y"]
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float((lse - z[np.arange(len(ylab)), ylab]).sum())


def fixed_trajectory(m, theta, x, state0):
    """Fixed-point states s_0 .. s_T (dicts) from final states of prefixes."""
    s0 = np.zeros((x.shape[1], m.state_size)) if state0 is None else state0
    out = [m._unpack(s0)]
    for t in range(x.shape[0]):
        out.append(m._unpack(m.final_state(theta, x[:t + 1], initial_state=state0)))
    return out


def offsets(m, theta, x, traj):
    p = m.params(theta)
    return [{k: traj[t + 1][k] - v for k, v in
             ref_step(m, p, traj[t], ref_proj(p, x, t), target=traj[t + 1])[1].items()}
            for t in range(x.shape[0])]


def ref_loss(m, theta, x, y, s0, deltas):
    """Loss of the frozen-offset float model (targets at every step)."""
    p = m.params(theta)
    s = dict(s0)
    total = 0.0
    for t in range(x.shape[0]):
        s, _ = ref_step(m, p, s, ref_proj(p, x, t), delta=None if deltas is None else deltas[t])
        total += ref_head(m, p, m._h(s), y[t])
    return total / y.size


def make(cell, n_in=5, H=6, n_out=4, **kw):
    return CELLS[cell](n_in, H, n_out, **kw)


def data(seed, T, B, n_in, n_out, tokens=True):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, n_in, (T, B)) if tokens else rng.standard_normal((T, B, n_in))
    return x, rng.integers(0, n_out, (T, B))


# ------------------------------------------------------------------- tests
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("variant", ["tokens", "float_last_mse", "state0"])
def test_reversible_equals_standard(cell, variant):
    """Same loss and gradient (<= 1e-12 relative) from reversible and stored-state BPTT."""
    rng = np.random.default_rng(1)
    T, B, D, O = 17, 3, 5, 4
    loss = "mse" if variant == "float_last_mse" else "softmax"
    m = make(cell, D, 6, O, loss=loss)
    theta = m.init_params(seed=2)
    s0 = None
    if variant == "tokens":
        x, y = data(3, T, B, D, O)
    elif variant == "float_last_mse":
        x = rng.standard_normal((T, B, D))
        y = rng.standard_normal((B, O))
    else:
        x, y = data(4, T, B, D, O)
        s0 = 0.5 * rng.standard_normal((B, m.state_size))
    lr, gr, sr = m.loss_and_grad(theta, x, y, return_stats=True, initial_state=s0)
    ls, gs, ss = m.loss_and_grad(theta, x, y, bptt="standard", return_stats=True,
                                 initial_state=s0)
    assert sr.mode == "reversible" and ss.mode == "standard"
    assert lr == ls
    assert np.abs(gr - gs).max() <= 1e-12 * np.abs(gs).max()
    assert np.array_equal(sr.final_state, ss.final_state)
    assert abs(m.loss(theta, x, y, initial_state=s0) - lr) <= 1e-12 * abs(lr)
    assert np.abs(gr).max() > 0
    # accounting: reversible keeps the buffer + the running state; standard keeps T+1 states
    assert sr.stored_bytes == sr.buffer_bytes + B * m.state_size * 8
    assert ss.stored_bytes == (T + 1) * B * m.state_size * 8
    assert sr.info_bits == ss.info_bits > 0


@pytest.mark.parametrize("cell", list(CELLS))
def test_gradient_and_hvp_match_frozen_offset_reference(cell):
    """Straight-through gradient and complex-step Hv against central differences of the reference."""
    T, B, D, O = 6, 2, 3, 4
    m = make(cell, D, 4, O)
    theta = m.init_params(seed=5)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((T, B, D))
    y = rng.integers(0, O, (T, B))
    s0 = 0.3 * rng.standard_normal((B, m.state_size))
    traj = fixed_trajectory(m, theta, x, s0)
    deltas = offsets(m, theta, x, traj)
    loss, grad = m.loss_and_grad(theta, x, y, initial_state=s0)
    # the reference reproduces the fixed-point loss at the base point
    assert abs(ref_loss(m, theta, x, y, traj[0], deltas) - loss) <= 1e-12
    # deltas are rounding offsets, small but not all zero
    dmax = max(np.abs(d[k]).max() for d in deltas for k in d)
    assert 0 < dmax < 1e-2

    def L(th):
        return ref_loss(m, th, x, y, traj[0], deltas)

    eps = 1e-6
    dirs = [rng.standard_normal(theta.size) for _ in range(2)]
    for i in rng.choice(theta.size, 8, replace=False):
        e = np.zeros(theta.size)
        e[i] = 1.0
        dirs.append(e)
    for v in dirs:
        fd = (L(theta + eps * v) - L(theta - eps * v)) / (2 * eps)
        assert abs(fd - grad @ v) <= 1e-7 * max(1.0, np.abs(grad).max() * np.abs(v).sum())
    # Hessian-vector product (complex step, standard mode): v.Hv by a second difference
    v = rng.standard_normal(theta.size)
    hv = m.hvp(theta, x, y, v, initial_state=s0)
    l2, g2, hv2 = m.grad_and_hvp(theta, x, y, v, initial_state=s0)
    assert np.abs(g2 - grad).max() <= 1e-12 * np.abs(grad).max()
    assert np.array_equal(hv, hv2)
    h = 1e-4
    sd = (L(theta + h * v) - 2 * L(theta) + L(theta - h * v)) / h ** 2
    assert abs(sd - v @ hv) <= 2e-6 * max(1.0, abs(sd))


@pytest.mark.parametrize("cell", list(CELLS))
def test_high_precision_model_is_close_to_float_model(cell):
    """With 48 fraction bits and 16 gate bits the fixed-point model tracks the float cell."""
    T, B, D, O = 8, 2, 3, 4
    m = make(cell, D, 4, O, frac_bits=48, gate_bits=16)
    theta = m.init_params(seed=7)
    x, y = data(8, T, B, D, O)
    loss, grad = m.loss_and_grad(theta, x, y)
    s0 = m._unpack(np.zeros((B, m.state_size)))
    assert abs(ref_loss(m, theta, x, y, s0, None) - loss) <= 1e-4 * abs(loss)
    rng = np.random.default_rng(9)
    for _ in range(2):
        v = rng.standard_normal(theta.size)
        eps = 1e-5
        fd = (ref_loss(m, theta + eps * v, x, y, s0, None)
              - ref_loss(m, theta - eps * v, x, y, s0, None)) / (2 * eps)
        assert abs(fd - grad @ v) <= 1e-3 * np.abs(grad).sum() * np.abs(v).max()


@pytest.mark.parametrize("cell", list(CELLS))
def test_long_sequence_reconstructs_exactly(cell):
    """T = 10**4 at small H: the reversal recovers every bit (else ReversalError)."""
    T, B, D, O = 10_000, 2, 3, 3
    # mse on the last step
    m = make(cell, D, 2, O, loss="mse")
    theta = m.init_params(seed=11, scale=2.0)
    x, _ = data(12, T, B, D, O)
    y = np.random.default_rng(12).standard_normal((B, O))
    loss, grad, st_ = m.loss_and_grad(theta, x, y, return_stats=True)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    k = m.max_forget_bits
    assert 0 < st_.info_bits <= T * B * m.forget_units * k
    # the buffer holds about the information destroyed (plus per-stream state and a word)
    assert st_.buffer_bytes * 8 <= 1.02 * st_.info_bits + B * 96


@settings(max_examples=12, deadline=None)
@given(cell=st.sampled_from(sorted(CELLS)), T=st.integers(1, 25), B=st.integers(1, 4),
       half=st.integers(1, 3), seed=st.integers(0, 2 ** 31), frac=st.sampled_from([16, 32, 44]),
       gbits=st.sampled_from([4, 12, 16]), kbits=st.integers(1, 4),
       tokens=st.booleans(), scale=st.sampled_from([0.5, 1.0, 3.0]))
def test_random_shapes_reversible_equals_standard(cell, T, B, half, seed, frac, gbits, kbits,
                                                  tokens, scale):
    """Hypothesis: random shapes, seeds and precisions reverse exactly and match standard BPTT."""
    D, O = 3, 3
    m = make(cell, D, 2 * half, O, frac_bits=frac, gate_bits=gbits,
             max_forget_bits=min(kbits, gbits))
    theta = m.init_params(seed=seed % 1000, scale=scale)
    x, y = data(seed, T, B, D, O, tokens)
    lr, gr, sr = m.loss_and_grad(theta, x, y, return_stats=True)
    ls, gs = m.loss_and_grad(theta, x, y, bptt="standard")
    assert lr == ls
    assert np.abs(gr - gs).max() <= 1e-12 * max(np.abs(gs).max(), 1e-300)
    assert sr.info_bits <= T * B * m.forget_units * m.max_forget_bits + 1e-6


@pytest.mark.parametrize("cell", list(CELLS))
def test_two_runs_give_identical_bits(cell):
    m = make(cell)
    theta = m.init_params(seed=3)
    x, y = data(13, 40, 3, 5, 4)
    a = m.loss_and_grad(theta, x, y, return_stats=True)
    b = m.loss_and_grad(theta, x, y, return_stats=True)
    assert a[0] == b[0]
    assert np.array_equal(a[1], b[1])
    assert a[2].buffer_bytes == b[2].buffer_bytes
    assert np.array_equal(a[2].final_state, b[2].final_state)


@pytest.mark.parametrize("cell", list(CELLS))
def test_predict_and_final_state_follow_the_fixed_point_trajectory(cell):
    m = make(cell)
    theta = m.init_params(seed=4)
    x, y = data(14, 9, 2, 5, 4)
    out = m.predict(theta, x)
    assert out.shape == (9, 2, 4)
    assert np.allclose(out.sum(axis=-1), 1.0)
    _, _, st_ = m.loss_and_grad(theta, x, y, return_stats=True)
    assert np.array_equal(m.final_state(theta, x), st_.final_state)


def test_overflow_raises_fixed_point_error():
    """A state value past 2**(62 - frac_bits) raises FixedPointError, never wraps.

    MomentumRNN's updates are convex, so the run that used to overflow (h = h + v
    from 1000 in the range +-1024) now stays in range; the driver's guard is
    then driven directly.
    """
    from revtrain._kernels.quantize import LIMIT
    m = MomentumRNN(2, 2, 2, frac_bits=52)        # range +-1024
    theta = m.init_params(seed=0)
    m.params(theta)["W"][...] = 0.0
    m.params(theta)["b"][...] = 8.0               # candidate ~ +1
    m.params(theta)["b_g"][...] = -8.0            # small momentum: v ~ g quickly
    x = np.zeros((200, 1), dtype=np.int64)
    y = np.zeros((200, 1), dtype=np.int64)
    s0 = np.array([[1000.0, 1000.0, 0.0, 0.0]])
    fin = m.final_state(theta, x, initial_state=s0)
    assert np.abs(fin).max() <= 1000.0 and np.isfinite(m.loss(theta, x, y, initial_state=s0))
    q = np.array([[LIMIT - 10, 5]], dtype=np.int64)
    n = np.full((1, 2), m.D, dtype=np.int64)
    inc = np.array([[0, 0]], dtype=np.int64)
    buf = rt.InfoBuffer(1)
    m._reserve_step(buf)
    m._forget(q, n, inc, buf, 3, "h")               # in range: fine
    inc[0, 0] = 20
    with pytest.raises(rt.FixedPointError, match="'h' overflowed the fixed-point range at "
                                                 "step 7, batch row 0, unit 0"):
        m._forget(q, n, inc, buf, 7, "h")
    with pytest.raises(rt.FixedPointError, match="initial_state"):
        m.loss_and_grad(theta, x, y, initial_state=s0 * 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="frac_bits"):
        MomentumRNN(2, 2, 2, frac_bits=60)
    with pytest.raises(ValueError, match="max_forget_bits"):
        MomentumRNN(2, 2, 2, max_forget_bits=0)
    with pytest.raises(ValueError, match="gamma"):
        MomentumRNN(2, 2, 2, gamma=0.01)
    for bad in ("0.5", True):
        with pytest.raises(ValueError, match="gamma must be None .learned. or a float"):
            MomentumRNN(2, 2, 2, gamma=bad)
    assert "gamma=0.5" in repr(MomentumRNN(2, 2, 2, gamma=0.5))
    assert "gamma=None" in repr(MomentumRNN(2, 2, 2))
    m = MomentumRNN(2, 2, 2)
    x, y = data(0, 3, 1, 2, 2)
    with pytest.raises(ValueError, match="bptt"):
        m.loss_and_grad(m.init_params(), x, y, bptt="checkpoint")
    for cls in (RevGRU, RevLSTM):
        with pytest.raises(ValueError, match="even"):
            cls(2, 3, 2)


def test_huge_logits_give_the_finite_loss():
    """Logit gaps beyond exp's range (large output weights) still give the exact loss."""
    T, B, D, O = 5, 2, 3, 4
    m = MomentumRNN(D, 4, O)
    theta = m.init_params(seed=1)
    m.params(theta)["U"][...] *= 1e4
    x, y = data(2, T, B, D, O)
    loss, grad = m.loss_and_grad(theta, x, y)
    traj = fixed_trajectory(m, theta, x, None)
    ref = sum(ref_head(m, m.params(theta), m._h(traj[t + 1]), y[t]) for t in range(T)) / y.size
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert ref > 1e3 and abs(loss - ref) <= 1e-9 * ref      # logits ~1e4: cancellation
    assert m.loss(theta, x, y) == pytest.approx(loss, rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(S=st.integers(1, 4), K=st.integers(1, 9), m=st.integers(1, 16), k=st.integers(1, 4),
       seed=st.integers(0, 2 ** 32 - 1))
def test_forget_add_kernel_matches_exact_mul_then_add(S, K, m, k, seed):
    """The cells' fused kernel = rt.exact_mul followed by an integer add (same buffer bits), and undoes."""
    from revtrain._kernels.quantize import forget_add, forget_add_undo, log2_table
    k = min(k, m)
    D = 1 << m
    rng = np.random.default_rng(seed)
    q = rng.integers(-2 ** 40, 2 ** 40, (S, K))
    n = rng.integers(D >> k, D + 1, (S, K))
    inc = rng.integers(-2 ** 32, 2 ** 32, (S, K))
    q0 = q.copy()
    a, b = rt.InfoBuffer(S, capacity=4 * K + 8), rt.InfoBuffer(S)
    assert forget_add(q, n, inc, D, a.states, a.counts, a.words, a.info, log2_table(D)) == -1
    qb = q0.copy()
    rt.exact_mul(qb, n, D, b)
    qb += inc
    assert np.array_equal(q, qb)
    assert np.array_equal(a.states, b.states) and np.array_equal(a.counts, b.counts)
    assert np.array_equal(a.words[:, :int(a.counts.max())], b.words[:, :int(b.counts.max())])
    assert np.allclose(a.info, b.info)
    assert forget_add_undo(q, n, inc, D, a.states, a.counts, a.words, a.info,
                           log2_table(D)) == -1
    assert np.array_equal(q, q0) and a.is_empty()


@pytest.mark.parametrize("m", [1, 3, 12, 13, 16])
def test_forget_add_fast_path_over_many_rounds(m):
    """forget_add's branch-free path (D <= 2**12) and its generic one (D > 2**12) against
    rt.exact_mul + add over 40 rounds of 3 x 150 elements, ratios including 1 (when
    D >> k = 1), powers of two and D: the same q, states and words after every round
    (words are emitted and read back many times), then undone to an empty buffer."""
    from revtrain._kernels.quantize import forget_add, forget_add_undo, log2_table
    D = 1 << m
    rng = np.random.default_rng(m)
    S, K, R = 3, 150, 40
    q = rng.integers(-2 ** 40, 2 ** 40, (S, K))
    a, b = rt.InfoBuffer(S, capacity=R * (K * 16 // 32 + 4)), rt.InfoBuffer(S)
    qb, q0, steps = q.copy(), q.copy(), []
    tab = log2_table(D)
    for _ in range(R):
        n = rng.integers(max(1, D >> 3), D + 1, (S, K))
        n[:, :8] = [1 if D >> 3 <= 1 else D >> 3, D, D >> 1 or 1, max(1, D >> 2), D - 1 or 1,
                    max(1, (D >> 3) + 1), D, D]
        n = np.clip(n, max(1, D >> 3), D)
        inc = rng.integers(-2 ** 32, 2 ** 32, (S, K))
        steps.append((n, inc))
        assert forget_add(q, n, inc, D, a.states, a.counts, a.words, a.info, tab) == -1
        rt.exact_mul(qb, n, D, b)
        qb += inc
        assert np.array_equal(q, qb)
        assert np.array_equal(a.states, b.states) and np.array_equal(a.counts, b.counts)
        for s in range(S):
            c = int(a.counts[s])
            assert np.array_equal(a.words[s, :c], b.words[s, :c])
    assert int(a.counts.max()) > 10 or m == 1          # many words went through
    for n, inc in reversed(steps):
        assert forget_add_undo(q, n, inc, D, a.states, a.counts, a.words, a.info, tab) == -1
    assert np.array_equal(q, q0) and a.is_empty()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forget_add_undo_fast_path_divides_exactly_at_every_magnitude(seed):
    """The undo's fast path (D <= 2**12) takes floor((q - inc) / n) from a table of
    reciprocals below 2**52 (one-off products corrected) and by integer division above: the
    same q, states and words as the generic undo (rt.exact_mul's arithmetic), for values at
    every magnitude, exact multiples of n, their neighbours and both sides of 2**52."""
    from revtrain._kernels.quantize import (forget_add_undo, _forget_add_undo_generic,
                                            log2_table, RECIP_SAFE)
    D, S, K = 1 << 12, 3, 400
    rng = np.random.default_rng(seed)
    n = rng.integers(D >> 3, D + 1, (S, K))
    mag = 2.0 ** rng.uniform(0, 58, (S, K))
    v = (rng.choice([-1, 1], (S, K)) * mag).astype(np.int64)
    v[:, :60] = (v[:, :60] // n[:, :60]) * n[:, :60] + rng.integers(-1, 2, (S, 60))  # multiples
    v[:, 60:70] = RECIP_SAFE + np.arange(-5, 5)
    v[:, 70:80] = -RECIP_SAFE + np.arange(-5, 5)
    inc = rng.integers(-2 ** 32, 2 ** 32, (S, K))
    q = v + inc
    a = rt.InfoBuffer(S, capacity=4 * K + 64)
    a.push(rng.integers(0, 1000, S), 1000)            # something below to pop
    b = a.copy()
    b.words = np.ascontiguousarray(np.pad(b.words, ((0, 0), (0, a.words.shape[1]))))
    qa, qb = q.copy(), q.copy()
    tab = log2_table(D)
    assert forget_add_undo(qa, n, inc, D, a.states, a.counts, a.words, a.info, tab) == -1
    assert _forget_add_undo_generic(qb, n, inc, D, b.states, b.counts, b.words, b.info,
                                    tab) == -1
    assert np.array_equal(qa, qb)
    assert np.array_equal(a.states, b.states) and np.array_equal(a.counts, b.counts)
    for s in range(S):
        c = int(a.counts[s])
        assert np.array_equal(a.words[s, :c], b.words[s, :c])


def test_revlstm_hidden_state_stays_bounded_over_long_carried_sequences():
    """h = p h + (1 - p) o tanh(c) is a convex combination: |h| <= 1 even when gates saturate."""
    m = RevLSTM(5, 6, 5)
    theta = m.init_params(seed=3, scale=4.0)
    m.params(theta)["b"][:] = 6.0                    # p (and every gate) near 1: the worst case
    rng = np.random.default_rng(3)
    state = None
    for _ in range(5):                               # 5 windows of 400 steps, state carried
        x = rng.integers(0, 5, size=(400, 3))
        state = m.final_state(theta, x, initial_state=state)
    Hh = 3
    h = state[:, :2 * Hh]
    assert np.abs(h).max() <= 1.0 + 1e-9
