"""dtype="float32": float32 compute; exact reversal in float32 for the reversible cells.

Parameters are float64 at the API by default (the optimiser's master copy) or
float32 (used as they are; the gradient is then float32); the kernels compute
activations and gradients in float32, and the fixed-point state stays int64,
so undoing a step recomputes the same float32 gates bit for bit.
"""
import numpy as np
import pytest

import revtrain as rt
from revtrain import RevLSTM, RevGRU


def _data(rng, T, B, V=5, floats=False):
    x = rng.standard_normal((T, B, V)) if floats else rng.integers(0, V, (T, B))
    return x, rng.integers(0, V, (T, B))


@pytest.mark.parametrize("L, embed, floats", [(1, None, False), (2, 4, False), (3, None, True)])
def test_float32_reversible_equals_standard_bit_for_bit(L, embed, floats):
    rng = np.random.default_rng(L)
    m = RevLSTM(5, 8, 5, n_layers=L, embed_dim=embed, dropout=0.2, dtype="float32")
    theta = m.init_params(1)
    x, y = _data(rng, 40, 3, floats=floats)
    s0 = 0.3 * rng.standard_normal((3, m.state_size))
    out = [m.loss_and_grad(theta, x, y, bptt=mode, dropout_seed=4, initial_state=s0,
                           input_grad=True, return_stats=True)
           for mode in ("reversible", "standard")]
    (la, ga, ia, sa), (lb, gb, ib, sb) = out
    assert la == lb and np.array_equal(ga, gb)
    assert np.array_equal(ia.initial_state, ib.initial_state)
    assert ia.x is None or np.array_equal(ia.x, ib.x)
    assert np.array_equal(sa.final_state, sb.final_state)
    assert ga.dtype == np.float64 and sa.stored_bytes < sb.stored_bytes


def test_float32_gradient_is_close_to_float64():
    """The float32 gradient against the float64 model's, at a character-model size."""
    rng = np.random.default_rng(0)
    m32 = RevLSTM(30, 64, 30, n_layers=2, embed_dim=16, dtype="float32")
    m64 = RevLSTM(30, 64, 30, n_layers=2, embed_dim=16)
    theta = m64.init_params(2)
    x, y = _data(rng, 64, 8, V=30)
    l32, g32 = m32.loss_and_grad(theta, x, y)
    l64, g64 = m64.loss_and_grad(theta, x, y)
    assert abs(l32 - l64) <= 1e-5 * abs(l64)
    assert np.abs(g32 - g64).max() <= 1e-4 * np.abs(g64).max()
    # and the same float32 run twice: the same bits
    l32b, g32b = m32.loss_and_grad(theta, x, y)
    assert l32b == l32 and np.array_equal(g32b, g32)


def test_float32_forward_passes_agree_with_training():
    rng = np.random.default_rng(1)
    m = RevLSTM(5, 8, 5, n_layers=2, dtype="float32")
    theta = m.init_params(0)
    x, y = _data(rng, 40, 2)
    loss, _, st = m.loss_and_grad(theta, x, y, return_stats=True)
    assert m.loss(theta, x, y) == pytest.approx(loss, rel=1e-6)
    assert np.array_equal(m.final_state(theta, x), st.final_state)
    p = m.predict(theta, x)
    assert p.shape == (40, 2, 5) and np.allclose(p.sum(axis=-1), 1.0)


def test_float32_fault_is_detected():
    rng = np.random.default_rng(3)
    m = RevLSTM(5, 8, 5, n_layers=2, dtype="float32")
    theta = m.init_params(0)
    x, y = _data(rng, 40, 3)

    def hook(when, run):
        if when == "before":
            b = run.layer_buffer(1)
            b.words[1, int(b.counts[1]) // 2] ^= np.uint32(1 << 9)
    m._fault_hook = hook
    with pytest.raises(rt.ReversalError, match=r"RevLSTM layer 1 \(of 2\)"):
        m.loss_and_grad(theta, x, y)


def test_float32_arguments_and_limits():
    m = RevLSTM(5, 8, 5, dtype="float32")
    theta = m.init_params(0)
    x, y = _data(np.random.default_rng(0), 6, 2)
    with pytest.raises(ValueError, match="need float64: this RevLSTM computes in float32"):
        m.hvp(theta, x, y, np.ones(theta.size))
    with pytest.raises(ValueError, match="dtype must be 'float64' or 'float32', got 'float16'"):
        RevLSTM(5, 8, 5, dtype="float16")
    m.window_kernels = False
    with pytest.raises(ValueError, match="runs through the window kernels"):
        m.loss_and_grad(theta, x, y)
    assert "dtype='float32'" in repr(RevLSTM(5, 8, 5, dtype="float32"))


@pytest.mark.parametrize("cls", [RevLSTM, rt.LSTM])
def test_float32_theta_beyond_float32_range_is_an_error(cls):
    """A finite float64 value too large for float32 would become inf in the float32 copy:
    refused up front, naming the index and block (float64 models accept it)."""
    m = cls(5, 8, 5, dtype="float32")
    theta = m.init_params(0)
    theta[3] = 1e39
    x, y = _data(np.random.default_rng(0), 6, 2)
    for call in (lambda: m.loss_and_grad(theta, x, y), lambda: m.loss(theta, x, y),
                 lambda: m.predict(theta, x)):
        with pytest.raises(ValueError, match=r"theta\[3\] = 1e\+39 .* beyond float32's range"):
            call()
    assert np.isfinite(cls(5, 8, 5).loss(theta, x, y))             # float64 accepts it


def test_float32_model_saves_and_resumes(tmp_path):
    m = RevLSTM(6, 8, 6, n_layers=2, embed_dim=4, dropout=0.1, dtype="float32")
    rng = np.random.default_rng(0)
    data = rng.integers(0, 6, 400)
    a = rt.Trainer(m, rt.Adam(0.01), seed=0)
    a.fit(data, steps=4, batch_size=2, seq_len=8, quiet=True)
    a.save(tmp_path / "m.npz")
    b = rt.Trainer.load(tmp_path / "m.npz")
    assert b.model.dtype == "float32"
    a.fit(data, steps=3, batch_size=2, seq_len=8, quiet=True)
    b.fit(data, steps=3, batch_size=2, seq_len=8, quiet=True)
    assert np.array_equal(a.theta, b.theta)


@pytest.mark.parametrize("cls", [rt.RNN, rt.LSTM, rt.GRU, rt.MomentumRNN, RevGRU, RevLSTM])
def test_every_sequence_model_computes_in_float32(cls):
    """dtype='float32' on every sequence model: gradients within 1e-4 of float64 (measured
    here around 1e-7 at these sizes), float64 results at the API, the same bits twice, and
    reversible cells: reversible == standard bit for bit."""
    rng = np.random.default_rng(7)
    m32, m64 = cls(5, 8, 5, n_layers=2, dtype="float32"), cls(5, 8, 5, n_layers=2)
    theta = m64.init_params(3)
    x, y = _data(rng, 30, 3)
    l32, g32, st = m32.loss_and_grad(theta, x, y, return_stats=True)
    l64, g64 = m64.loss_and_grad(theta, x, y)
    assert g32.dtype == np.float64 and st.final_state.dtype == np.float64
    assert abs(l32 - l64) <= 1e-5 * abs(l64)
    assert np.abs(g32 - g64).max() <= 1e-4 * np.abs(g64).max()
    again = m32.loss_and_grad(theta, x, y)
    assert again[0] == l32 and np.array_equal(again[1], g32)
    if "reversible" in m32.bptt_modes:
        std = m32.loss_and_grad(theta, x, y, bptt="standard")
        assert std[0] == l32 and np.array_equal(std[1], g32)
    with pytest.raises(ValueError, match="need float64"):
        m32.hvp(theta, x, y, np.ones(theta.size))


def test_grid_models_stay_float64():
    for cls in (rt.MDRNN, rt.RevMDRNN):
        with pytest.raises(ValueError, match=f"dtype='float32' is not available for "
                                             f"{cls.__name__} yet"):
            cls(3, 4, 2, dtype="float32")


def test_float32_runs_repeat_bit_for_bit_under_one_blas_setting():
    """Under one BLAS setting (the default: 1 thread) a float32 run gives the same bits every
    time. (Across settings OpenBLAS's float32 products may differ in the last bits, which is
    why the default does not change with the machine's load; not asserted here, as it
    depends on the CPU.)"""
    rng = np.random.default_rng(11)
    x, y = _data(rng, 20, 16, V=30)
    m32 = rt.LSTM(30, 64, 30, n_layers=2, dtype="float32")
    theta = m32.init_params(0)
    assert rt.get_blas_threads() == 1
    c, d = m32.loss_and_grad(theta, x, y), m32.loss_and_grad(theta, x, y)
    assert c[0] == d[0] and np.array_equal(c[1], d[1])


def test_float32_overflow_is_a_divergence_error_naming_float64():
    """A float32 backward pass that overflows (where float64 stays finite: a MomentumRNN at
    init scale 8 over 2000 steps) is a DivergenceError that suggests float64, never NaNs."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 64, (2000, 2)), rng.integers(0, 64, (2000, 2))
    m32, m64 = rt.MomentumRNN(64, 64, 64, dtype="float32"), rt.MomentumRNN(64, 64, 64)
    theta = m64.init_params(0, scale=8)
    assert np.isfinite(m64.loss_and_grad(theta, x, y)[1]).all()
    with pytest.raises(rt.DivergenceError, match=r"gradient has NaN or inf .*dtype='float64'"):
        m32.loss_and_grad(theta, x, y)


def test_hypergradient_refuses_float32_at_once():
    m = RevLSTM(5, 8, 5, dtype="float32")
    calls = []

    def batch(t):
        calls.append(t)
        return np.zeros((4, 2), dtype=int), np.zeros((4, 2), dtype=int)
    with pytest.raises(ValueError, match="hypergradients need float64"):
        rt.hypergradient(m, rt.ExactSGD(0.1, 0.9), m.init_params(0), batch,
                         (np.zeros((4, 2), dtype=int), np.zeros((4, 2), dtype=int)), 5)
    assert calls == []


FLOAT32_MODELS = [rt.RevLSTM, rt.RevGRU, rt.MomentumRNN, rt.LSTM, rt.GRU, rt.RNN]


@pytest.mark.parametrize("cls", FLOAT32_MODELS)
@pytest.mark.parametrize("B", [3, 20, 40])
def test_float32_parameters_give_the_float32_gradient(cls, B):
    """float32 ``theta`` is used as it is and the gradient comes back float32. With one or
    two row groups (B = 3, 20) it is the float64-``theta`` call's gradient rounded to
    float32, bit for bit (the same float32 sums; two float32 values added in float32 give
    their exact sum rounded). Three groups or more (B = 40) round the partial sums group
    by group: many ulps on small entries, within 1e-6 of the largest (measured: 4e-8)."""
    rng = np.random.default_rng(B)
    m = cls(5, 8, 5, n_layers=2, embed_dim=4, dropout=0.1, dtype="float32")
    theta = m.init_params(3)
    x, y = _data(rng, 12, B)
    kw = dict(dropout_seed=2, input_grad=True, return_stats=True)
    l64, g64, i64, s64 = m.loss_and_grad(theta, x, y, **kw)
    l32, g32, i32, s32 = m.loss_and_grad(theta.astype(np.float32), x, y, **kw)
    assert g32.dtype == np.float32 and g64.dtype == np.float64
    assert l32 == l64 and np.array_equal(s32.final_state, s64.final_state)
    assert np.array_equal(i32.initial_state, i64.initial_state)
    if B <= 20:
        assert np.array_equal(g32, g64.astype(np.float32))
    else:
        assert np.abs(g32 - g64).max() <= 1e-6 * np.abs(g64).max()
    assert m.loss(theta.astype(np.float32), x, y) == m.loss(theta, x, y)
    # predict's output layer runs in float64 on theta's values
    th32 = theta.astype(np.float32)
    assert np.array_equal(m.predict(th32, x), m.predict(th32.astype(np.float64), x))
    assert m.params(th32)["U"].dtype == np.float32        # views, as loss_and_grad takes it


def test_float32_parameters_are_refused_by_a_float64_model():
    m = RevLSTM(5, 8, 5)
    x = np.zeros((4, 2), dtype=int)
    with pytest.raises(ValueError, match="theta must have dtype float64, got float32"):
        m.loss_and_grad(m.init_params(0).astype(np.float32), x, x)
    m32 = RevLSTM(5, 8, 5, dtype="float32")
    with pytest.raises(ValueError, match="theta must have dtype float64 or float32, got float16"):
        m32.loss_and_grad(m32.init_params(0).astype(np.float16), x, x)
    bad = m32.init_params(0).astype(np.float32)
    bad[5] = np.nan
    with pytest.raises(ValueError, match=r"theta contains NaN or inf \(first at index 5"):
        m32.loss_and_grad(bad, x, x)
