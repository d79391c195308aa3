"""ExactSGD (exact, reversible SGD with momentum) and the float Adam."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import revtrain as rt
from revtrain.optim import ExactSGD, Adam, quantise_momentum


def _buffer_snapshot(buf):
    return buf.states.copy(), buf.counts.copy(), buf.words[:, :int(buf.counts.max())].copy()


def _random_setup(seed, P=203, n_iters=7, n_groups=3):
    rng = np.random.default_rng(seed)
    gidx = rng.integers(0, n_groups, size=P)
    gidx[:n_groups] = np.arange(n_groups)
    lr = rng.uniform(0.0, 0.5, size=(n_iters, n_groups))
    mom = rng.uniform(0.05, 0.999, size=(n_iters, n_groups))
    wd = rng.uniform(0.0, 0.1, size=n_groups)
    return rng, gidx, lr, mom, wd


@pytest.mark.parametrize("seed,n_streams", [(0, None), (1, 1), (2, 5), (3, 203)])
def test_unstep_inverts_step_bit_for_bit_on_random_states(seed, n_streams):
    rng, gidx, lr, mom, wd = _random_setup(seed)
    P, n_iters = gidx.shape[0], lr.shape[0]
    opt = ExactSGD(lr, mom, wd, groups=gidx, n_streams=n_streams)
    state = opt.init(rng.standard_normal(P))
    # a random state in the middle of training: random velocity, a buffer with content
    state = state._replace(v=rng.integers(-2**45, 2**45, size=P), t=0)
    grads = [rng.standard_normal(P) * 10.0 ** rng.uniform(-4, 1) for _ in range(n_iters)]
    state = opt.step(state, grads[0])
    w1, v1, snap1 = state.w.copy(), state.v.copy(), _buffer_snapshot(state.buffer)
    for t in range(1, n_iters):
        state = opt.step(state, grads[t])
    for t in range(n_iters - 1, 0, -1):
        state = opt.unstep(state, lambda theta, tt: grads[tt])
    assert state.t == 1
    assert np.array_equal(state.w, w1) and np.array_equal(state.v, v1)
    snap = _buffer_snapshot(state.buffer)
    for a, b in zip(snap, snap1):
        assert np.array_equal(a, b)
    state = opt.unstep(state, lambda theta, tt: grads[tt])
    assert state.buffer.is_empty()
    assert state.buffer.info_bits == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(P=st.integers(1, 40), n_streams=st.integers(1, 9), seed=st.integers(0, 2**32 - 1),
       n=st.lists(st.sampled_from([1, 2, 3, 4096, 32768, 32769, 58982, 65534, 65535]),
                  min_size=3, max_size=3),
       vbits=st.integers(0, 61))
def test_unstep_inverts_step_at_extreme_momenta(P, n_streams, seed, n, vbits):
    rng = np.random.default_rng(seed)
    mom = np.array(n) / 2**16                       # includes 2**-16 and 1 - 2**-16
    opt = ExactSGD(rng.uniform(0, 1, 3), mom, groups=rng.integers(0, 1, P), n_streams=n_streams)
    state = opt.init(rng.standard_normal(P))
    lim = 2**vbits
    state = state._replace(v=rng.integers(-lim, lim, size=P, endpoint=True))
    grads = [rng.standard_normal(P) for _ in range(3)]
    w0, v0 = state.w.copy(), state.v.copy()
    for g in grads:
        state = opt.step(state, g)
    for _ in grads:
        state = opt.unstep(state, lambda theta, t: grads[t])
    assert np.array_equal(state.w, w0) and np.array_equal(state.v, v0)
    assert state.buffer.is_empty()


def test_step_increments_are_to_fixed_of_the_float_updates():
    rng, gidx, lr, mom, wd = _random_setup(4, P=50, n_iters=1, n_groups=2)
    opt = ExactSGD(lr, mom, wd, groups=gidx, frac_bits=30, velocity_frac_bits=36)
    theta = rng.standard_normal(50)
    state = opt.init(theta)
    state = state._replace(v=rng.integers(-2**40, 2**40, size=50))
    g = rng.standard_normal(50)
    new = opt.step(state, g)
    lr_t, gam_t, wd_t = opt.hyperparameters(0)
    n = quantise_momentum(mom[0])[gidx]
    assert np.array_equal(gam_t, quantise_momentum(mom[0]) / 2**16)
    # w increment: to_fixed(lr * from_fixed(v_new)) exactly
    inc_w = rt.to_fixed(lr_t[gidx] * rt.from_fixed(new.v, 36), 30)
    assert np.array_equal(new.w - state.w, inc_w)
    # v_new + to_fixed((1-gamma)(g + wd w)) = floor(v / 2**16) * n + digit, 0 <= digit < n
    wf = rt.from_fixed(state.w, 30)
    inc_v = rt.to_fixed((1.0 - gam_t[gidx]) * (g + wd_t[gidx] * wf), 36)
    digit = new.v + inc_v - (state.v >> 16) * n
    assert ((digit >= 0) & (digit < n)).all()


def test_constant_and_per_iteration_hyperparameters_agree():
    rng = np.random.default_rng(5)
    theta = rng.standard_normal(40)
    grads = [rng.standard_normal(40) for _ in range(4)]
    a, b = ExactSGD(0.1, 0.9, 0.01), ExactSGD(np.full(4, 0.1), np.full(4, 0.9), 0.01)
    sa, sb = a.init(theta), b.init(theta)
    for g in grads:
        sa, sb = a.step(sa, g), b.step(sb, g)
    assert np.array_equal(sa.w, sb.w) and np.array_equal(sa.v, sb.v)
    assert np.array_equal(sa.buffer.states, sb.buffer.states)
    # the float trajectory it approximates (weight decay coupled into the gradient)
    w, v = theta.copy(), np.zeros(40)
    gam = round(0.9 * 2**16) / 2**16
    for g in grads:
        v = gam * v - (1 - gam) * (g + 0.01 * w)
        w = w + 0.1 * v
    np.testing.assert_allclose(a.params(sa), w, atol=1e-8)
    np.testing.assert_allclose(a.velocity(sa), v, atol=1e-8)


@pytest.mark.parametrize("momentum", [0.5, 0.9, 0.99])
def test_buffer_bits_near_information_bound(momentum):
    rng = np.random.default_rng(6)
    P, N = 1000, 150
    mom = np.clip(momentum + 0.05 * rng.standard_normal(N), 0.3, 0.995)
    opt = ExactSGD(0.05, mom)
    state = opt.init(rng.standard_normal(P))
    for t in range(N):
        state = opt.step(state, rng.standard_normal(P))
    gam = quantise_momentum(mom) / 2**16
    bound = P * np.sum(np.log2(1.0 / gam))
    assert state.buffer.info_bits == pytest.approx(bound, rel=1e-9)
    buf = state.buffer
    # bits held: the stored words plus what each stream state holds above its initial 2**32
    held = 32 * buf.counts.sum() + np.log2(buf.states.astype(np.float64)).sum() - 32 * buf.n_streams
    assert abs(held - bound) <= 0.02 * bound
    # bytes: at most 12 per stream (state, partly filled word) above the bound
    assert 8 * buf.nbytes <= 1.02 * bound + 96 * buf.n_streams


def test_get_config_rebuilds_the_same_optimiser():
    rng, gidx, lr, mom, wd = _random_setup(9, P=30, n_iters=3, n_groups=2)
    for opt in (ExactSGD(lr, mom, wd, groups=gidx, frac_bits=30, n_streams=2),
                ExactSGD(0.1, 0.9), ExactSGD(np.full(4, 0.2), np.full(4, 0.7), 0.01)):
        cfg = opt.get_config()
        again = ExactSGD(**cfg).get_config()
        assert again.keys() == cfg.keys()
        for k, v in cfg.items():
            assert (again[k] is None) if v is None else np.array_equal(again[k], v)
    model = rt.RNN(3, 4, 3)
    opt = ExactSGD(np.full((2, len(model.layout.groups)), 0.1), 0.9, groups=model)
    assert np.array_equal(opt.get_config()["groups"], model.layout.group_index())


def test_momentum_quantisation():
    opt = ExactSGD(0.1, [0.9, 0.5, 1 - 2**-16])
    _, gam, _ = opt.hyperparameters(0)
    assert gam[0] == round(0.9 * 2**16) / 2**16
    assert opt.hyperparameters(1)[1][0] == 0.5
    assert opt.hyperparameters(2)[1][0] == 1 - 2**-16


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=0.1, momentum=0.0), "momentum must be in"),
    (dict(lr=0.1, momentum=1.0), "momentum must be in"),
    (dict(lr=0.1, momentum=1.5), "momentum must be in"),
    (dict(lr=0.1, momentum=-0.2), "momentum must be in"),
    (dict(lr=0.1, momentum=float("nan")), "momentum must be finite"),
    (dict(lr=0.1, momentum=[0.9, np.inf]), "momentum must be finite"),
    (dict(lr=0.1, momentum=1e-7), r"2\*\*-17"),
    (dict(lr=0.1, momentum=1 - 1e-7), r"2\*\*-17"),
    (dict(lr=float("nan"), momentum=0.9), "lr must be finite"),
    (dict(lr=-0.1, momentum=0.9), "lr must be in"),
    (dict(lr=[0.1, 0.2], momentum=[0.9, 0.9, 0.9]), "same length"),
    (dict(lr=np.ones((2, 2, 2)), momentum=0.9), "shape"),
    (dict(lr=[], momentum=0.9), "must not be empty"),
    (dict(lr="fast", momentum=0.9), "lr must be a number"),
    (dict(lr=0.1, momentum=0.9, weight_decay=-1.0), "weight_decay must be in"),
    (dict(lr=0.1, momentum=0.9, weight_decay=np.ones((2, 2))), "weight_decay must be"),
    (dict(lr=np.ones((3, 2)), momentum=np.full((3, 4), 0.9)), "number of groups"),
    (dict(lr=0.1, momentum=0.9, n_streams=0), "n_streams"),
    (dict(lr=0.1, momentum=0.9, frac_bits=70), "frac_bits"),
])
def test_bad_hyperparameters_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExactSGD(**kwargs)


def test_schedule_errors_at_use():
    opt = ExactSGD([0.1, 0.1], [0.9, 0.9])
    state = opt.init(np.zeros(5))
    state = opt.step(opt.step(state, np.ones(5)), np.ones(5))
    with pytest.raises(ValueError, match="beyond the lr/momentum schedules"):
        opt.step(state, np.ones(5))
    with pytest.raises(ValueError, match="shorter than n_iters=3"):
        opt.check_iterations(3)
    with pytest.raises(ValueError, match="per-group hyperparameters need parameter groups"):
        ExactSGD(np.ones((2, 3)), 0.9).init(np.zeros(5))
    with pytest.raises(ValueError, match="groups cover 4 parameters"):
        ExactSGD(0.1, 0.9, groups=np.zeros(4, dtype=int)).init(np.zeros(5))
    with pytest.raises(ValueError, match=r"3 groups \(the last axis of lr / momentum, or "
                                         r"weight_decay's length\) but groups defines 2"):
        ExactSGD(np.ones((2, 3)), 0.9, groups=np.array([0, 1, 1]))
    deep = rt.RevGRU(6, 4, 6, n_layers=2, embed_dim=3)
    with pytest.raises(ValueError, match=r"but the model's parameters have 4 groups \('embed', "
                                         r"'layer0', 'layer1', 'output'\)"):
        ExactSGD(np.ones((2, 3)), 0.9, groups=deep)
    with pytest.raises(ValueError, match="nothing to undo"):
        opt.unstep(opt.init(np.zeros(5)), lambda th, t: np.ones(5))


def test_bad_gradients_change_nothing():
    opt = ExactSGD(0.1, 0.9)
    state = opt.step(opt.init(np.linspace(-1, 1, 7)), np.ones(7))
    w, v, snap = state.w.copy(), state.v.copy(), _buffer_snapshot(state.buffer)
    g = np.ones(7)
    g[3] = np.nan
    with pytest.raises(FloatingPointError, match="parameter 3"):
        opt.step(state, g)
    with pytest.raises(rt.FixedPointError, match="parameter 2"):
        opt.step(state, np.array([0, 0, 1e30, 0, 0, 0, 0.0]))
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        opt.step(state, np.ones(6))
    with pytest.raises(FloatingPointError):
        opt.unstep(state, lambda th, t: g)
    assert np.array_equal(state.w, w) and np.array_equal(state.v, v)
    for a, b in zip(_buffer_snapshot(state.buffer), snap):
        assert np.array_equal(a, b)
    state = opt.unstep(state, lambda th, t: np.ones(7))
    assert state.buffer.is_empty()


def test_adam_matches_reference_and_minimises_a_quadratic():
    rng = np.random.default_rng(7)
    A = rng.standard_normal((6, 6))
    A = A @ A.T + np.eye(6)
    b = rng.standard_normal(6)
    opt = Adam(0.05)
    state = opt.init(np.zeros(6))
    th, m, v = np.zeros(6), np.zeros(6), np.zeros(6)
    for t in range(1, 4):
        g = A @ th - b
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        th = th - 0.05 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        state = opt.step(state, A @ opt.params(state) - b)
    np.testing.assert_allclose(opt.params(state), th, rtol=1e-14, atol=1e-15)
    for _ in range(3000):
        state = opt.step(state, A @ opt.params(state) - b)
    np.testing.assert_allclose(opt.params(state), np.linalg.solve(A, b), atol=1e-4)
    with pytest.raises(ValueError, match="lr"):
        Adam(-1.0)
    with pytest.raises(ValueError, match="b2"):
        Adam(0.1, b2=1.0)
    with pytest.raises(ValueError, match="lr must be a positive finite number, got True"):
        Adam(True)                               # a flag is not a rate
    with pytest.raises(ValueError, match=r"b1 must be in \[0, 1\), got True"):
        Adam(0.1, b1=True)
    assert type(Adam(np.float32(0.5)).lr) is float
    with pytest.raises(ValueError, match="shape"):
        opt.step(state, np.ones(5))


# ------------------------------------------------------------- step counters
@pytest.mark.parametrize("int_type", [np.int64, np.int32])
@pytest.mark.parametrize("t0", [6, 22, 48, 110])
def test_adam_counter_type_does_not_change_the_step(int_type, t0):
    # 0.999 ** np.int64(7) != 0.999 ** 7 in the last bit (numpy's power); these t0 + 1
    # are such exponents for b1 = 0.9 or b2 = 0.999
    rng = np.random.default_rng(t0)
    opt = Adam(0.01)
    base = opt.init(rng.standard_normal(9))._replace(m=rng.standard_normal(9),
                                                     v=rng.uniform(0.1, 1.0, 9))
    g = rng.standard_normal(9)
    ref = opt.step(base._replace(t=t0), g)
    got = opt.step(base._replace(t=int_type(t0)), g)
    assert type(ref.t) is int and type(got.t) is int and got.t == t0 + 1
    assert np.array_equal(got.theta, ref.theta)
    assert np.array_equal(got.m, ref.m) and np.array_equal(got.v, ref.v)
    # and the bias correction is that of Python floats and ints
    mhat = ref.m / (1.0 - 0.9 ** (t0 + 1))
    vhat = ref.v / (1.0 - 0.999 ** (t0 + 1))
    assert np.array_equal(ref.theta, base.theta - 0.01 * mhat / (np.sqrt(vhat) + 1e-8))
    assert type(opt.init(np.zeros(2)).t) is int


@pytest.mark.parametrize("int_type", [np.int64, np.int32])
def test_exact_sgd_counter_stays_a_python_int(int_type):
    opt = ExactSGD([0.1, 0.2, 0.3], [0.9, 0.8, 0.7])
    state = opt.step(opt.init(np.linspace(-1, 1, 6)), np.ones(6))
    ref_w, ref_v = state.w.copy(), state.v.copy()
    state = state._replace(t=int_type(1))
    state = opt.step(state, np.full(6, 0.5))
    assert type(state.t) is int and state.t == 2
    state = opt.unstep(state._replace(t=int_type(2)), lambda th, t: np.full(6, 0.5))
    assert type(state.t) is int and state.t == 1
    assert np.array_equal(state.w, ref_w) and np.array_equal(state.v, ref_v)
    pending = opt.unstep_weights(state._replace(t=int_type(1)))
    assert type(pending.t) is int and pending.t == 0
    assert type(opt.unstep_velocity(pending, np.ones(6)).t) is int


# ------------------------------------------------------ two-phase unstep
def _run_forward(seed, n_streams):
    rng, gidx, lr, mom, wd = _random_setup(seed)
    P, n_iters = gidx.shape[0], lr.shape[0]
    opt = ExactSGD(lr, mom, wd, groups=gidx, n_streams=n_streams)
    state = opt.init(rng.standard_normal(P))
    grads = [rng.standard_normal(P) * 10.0 ** rng.uniform(-4, 1) for _ in range(n_iters)]
    for g in grads:
        state = opt.step(state, g)
    return opt, state, grads


@pytest.mark.parametrize("seed,n_streams", [(11, None), (12, 1), (13, 7)])
def test_two_phase_unstep_equals_unstep_bit_for_bit(seed, n_streams):
    opt, one, grads = _run_forward(seed, n_streams)
    _, two, _ = _run_forward(seed, n_streams)
    P = one.w.shape[0]
    for t in range(len(grads) - 1, -1, -1):
        seen = []
        one = opt.unstep(one, lambda theta, tt: seen.append((theta, tt)) or grads[tt])
        pending = opt.unstep_weights(two)
        assert pending.t == t and seen[0][1] == t
        assert pending.theta.dtype == np.float64 and pending.theta.shape == (P,)
        assert np.array_equal(pending.theta, seen[0][0])
        assert np.array_equal(pending.theta, rt.from_fixed(pending.w, opt.frac_bits))
        assert np.array_equal(pending.w, one.w)
        two = opt.unstep_velocity(pending, grads[t])
        assert two.t == one.t == t
        assert np.array_equal(two.w, one.w) and np.array_equal(two.v, one.v)
        for a, b in zip(_buffer_snapshot(two.buffer), _buffer_snapshot(one.buffer)):
            assert np.array_equal(a, b)
    assert two.buffer.is_empty() and not two.v.any()


def test_two_phase_unstep_misuse_raises_clearly():
    opt = ExactSGD(0.1, 0.9)
    with pytest.raises(ValueError, match="iteration 0, there is nothing to undo"):
        opt.unstep_weights(opt.init(np.zeros(5)))
    state = opt.step(opt.init(np.linspace(-1, 1, 7)), np.ones(7))
    snap = _buffer_snapshot(state.buffer)
    pending = opt.unstep_weights(state)
    # phase 1 leaves the buffer alone
    for a, b in zip(_buffer_snapshot(state.buffer), snap):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match=r"unstep_velocity: grad must be a float array of "
                                         r"shape \(7,\), got float64 \(6,\)"):
        opt.unstep_velocity(pending, np.ones(6))
    with pytest.raises(ValueError, match=r"shape \(7,\), got int64"):
        opt.unstep_velocity(pending, np.ones(7, dtype=np.int64))
    with pytest.raises(TypeError, match="PendingUnstep"):
        opt.unstep_velocity(state, np.ones(7))
    for a, b in zip(_buffer_snapshot(state.buffer), snap):     # nothing was changed
        assert np.array_equal(a, b)
    back = opt.unstep_velocity(pending, np.ones(7))
    assert back.t == 0 and not back.v.any() and back.buffer.is_empty()
    with pytest.raises(ValueError, match="already used"):
        opt.unstep_velocity(pending, np.ones(7))


def test_info_bits_per_param():
    b9 = 16.0 - np.log2(quantise_momentum(0.9))        # log2(2**16 / n)
    assert ExactSGD(0.1, 0.9).info_bits_per_param(5) == 5 * b9
    mom = np.array([[0.9, 0.5], [0.99, 0.3], [0.5, 0.5]])
    opt = ExactSGD(0.1, mom)                 # per group, no groups bound: still answers
    want = (16.0 - np.log2(quantise_momentum(mom))).max(axis=1)
    assert opt.info_bits_per_param(2) == want[:2].sum()
    assert opt.info_bits_per_param(3) == want.sum()
    with pytest.raises(ValueError, match="shorter than n_iters=4"):
        opt.info_bits_per_param(4)
    with pytest.raises(ValueError, match="n_iters must be a positive int"):
        opt.info_bits_per_param(0)
    # with one group it is the information per parameter that the buffer counts
    rng = np.random.default_rng(14)
    opt = ExactSGD(0.05, [0.9, 0.7, 0.99])
    state = opt.init(rng.standard_normal(300))
    for _ in range(3):
        state = opt.step(state, rng.standard_normal(300))
    assert state.buffer.info_bits == pytest.approx(300 * opt.info_bits_per_param(3), rel=1e-12)
