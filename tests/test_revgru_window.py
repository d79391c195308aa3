"""RevGRU's whole-window kernels (:mod:`revtrain._kernels.revgru_stack`) against the per-step
Python driver (``window_kernels = False``), the reference.

The kernels run the same operations in the same order with the same element kernels
and the same BLAS (Numba's), so the loss, the fixed-point trajectory (final state,
stored bytes) and the gradients with respect to the initial state and float inputs
are the same bits; the parameter gradient agrees to 1e-13 relative (the kernels sum
the weight gradients once per 32-step chunk, the reference step by step).
"""
import numpy as np
import pytest

import revtrain as rt
from revtrain import RevGRU
from test_stacks import _faults, window_fault_messages

#: (n_layers, embed_dim, float inputs, loss, per-step mse targets)
CONFIGS = [(1, None, False, "softmax", False), (2, 4, False, "softmax", False),
           (3, None, True, "mse", False), (2, None, True, "mse", True),
           (1, 3, False, "mse", True)]


def _problem(L, emb, fl, loss, per_step, T, B=3, seed=5):
    rng = np.random.default_rng(seed)
    m = RevGRU(5, 6, 5, n_layers=L, embed_dim=emb, dropout=0.3, loss=loss)
    theta = m.init_params(1)
    x = rng.standard_normal((T, B, 5)) if fl else rng.integers(0, 5, (T, B))
    if loss == "mse":
        y = rng.standard_normal((T, B, 5) if per_step else (B, 5))
    else:
        y = rng.integers(0, 5, (T, B))
    s0 = 0.3 * rng.standard_normal((B, m.state_size))
    return m, theta, x, y, s0


def _run(m, theta, x, y, s0, mode, dseed, kernels):
    m.window_kernels = kernels
    return m.loss_and_grad(theta, x, y, bptt=mode, dropout_seed=dseed, initial_state=s0,
                           input_grad=True, return_stats=True)


def test_window_kernels_are_the_default():
    assert RevGRU.window_kernels and RevGRU(5, 6, 5).window_kernels


@pytest.mark.parametrize("L, emb, fl, loss, per_step", CONFIGS,
                         ids=[f"L{c[0]}-{'float' if c[2] else ('embed' if c[1] else 'onehot')}-"
                              f"{c[3]}{'-per_step' if c[4] else ''}" for c in CONFIGS])
@pytest.mark.parametrize("T", [37, 64])           # more than one chunk; a chunk boundary at the end
def test_window_kernels_agree_with_the_python_driver(L, emb, fl, loss, per_step, T):
    m, theta, x, y, s0 = _problem(L, emb, fl, loss, per_step, T)
    for mode in ("reversible", "standard"):
        for dseed in (None, 7):
            la, ga, ia, sa = _run(m, theta, x, y, s0, mode, dseed, True)
            lb, gb, ib, sb = _run(m, theta, x, y, s0, mode, dseed, False)
            assert la == lb, (mode, dseed)
            assert np.abs(ga - gb).max() <= 1e-13 * np.abs(gb).max(), (mode, dseed)
            assert np.array_equal(ia.initial_state, ib.initial_state), (mode, dseed)
            assert (ia.x is None) == (ib.x is None) == (not fl)
            if fl:
                assert np.array_equal(ia.x, ib.x), (mode, dseed)
            assert np.array_equal(sa.final_state, sb.final_state), (mode, dseed)
            assert sa.stored_bytes == sb.stored_bytes
            assert sa.buffer_bytes == sb.buffer_bytes
            assert sa.info_bits == pytest.approx(sb.info_bits, rel=1e-13)


@pytest.mark.parametrize("L, emb, fl, loss, per_step", CONFIGS[:4])
def test_reversible_equals_standard_through_the_kernels(L, emb, fl, loss, per_step):
    m, theta, x, y, s0 = _problem(L, emb, fl, loss, per_step, 45, seed=8)
    for dseed in (None, 3):
        lr, gr, ir, sr = _run(m, theta, x, y, s0, "reversible", dseed, True)
        ls, gs, is_, ss = _run(m, theta, x, y, s0, "standard", dseed, True)
        assert lr == ls
        assert np.array_equal(gr, gs)
        assert np.array_equal(ir.initial_state, is_.initial_state)
        if fl:
            assert np.array_equal(ir.x, is_.x)
        assert np.array_equal(sr.final_state, ss.final_state)


def test_the_kernels_agree_at_a_realistic_size():
    """H = 64 (BLAS blocking), B = 8, two layers, one-hot tokens, 70 steps."""
    rng = np.random.default_rng(11)
    m = RevGRU(20, 64, 20, n_layers=2)
    theta = m.init_params(2)
    x, y = rng.integers(0, 20, (70, 8)), rng.integers(0, 20, (70, 8))
    for mode in ("reversible", "standard"):
        la, ga, ia, sa = _run(m, theta, x, y, None, mode, None, True)
        lb, gb, ib, sb = _run(m, theta, x, y, None, mode, None, False)
        assert la == lb
        assert np.abs(ga - gb).max() <= 1e-13 * np.abs(gb).max()
        assert np.array_equal(ia.initial_state, ib.initial_state)
        assert np.array_equal(sa.final_state, sb.final_state)


def test_forward_only_and_hvp_use_the_python_driver():
    """The loss alone and the complex-step hvp are unchanged by the kernels."""
    m, theta, x, y, s0 = _problem(2, None, True, "mse", True, 20)
    v = np.random.default_rng(4).standard_normal(theta.shape)
    out = []
    for wk in (True, False):
        m.window_kernels = wk
        out.append((m.loss(theta, x, y, initial_state=s0, dropout_seed=2),
                    m.hvp(theta, x, y, v, initial_state=s0, dropout_seed=2)))
    (la, ha), (lb, hb) = out
    assert la == lb
    assert np.array_equal(ha, hb)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_a_fault_in_the_window_kernels_names_the_layer(layer):
    """A flipped bit in layer ``layer``'s kept state or buffer streams (before the backward
    pass, so the layers above read it first) raises a ReversalError naming that layer."""
    L, T, B = 3, 30, 5
    m = RevGRU(5, 6, 5, n_layers=L, embed_dim=3, dropout=0.25)
    assert m.window_kernels
    theta = m.init_params(seed=1)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, (T, B)), rng.integers(0, 5, (T, B))
    calls = []

    def no_fault(when, run):
        calls.append(when)
    m._fault_hook = no_fault
    try:
        loss, grad = m.loss_and_grad(theta, x, y, dropout_seed=6)
    finally:
        del m._fault_hook
    # once per row group (B = 5: two), before and after its backward pass
    assert sorted(calls) == ["after", "after", "before", "before"]
    assert np.isfinite(grad).all()
    for kind, msg in window_fault_messages(m, layer, theta, x, y, 6):
        assert msg.startswith(f"RevGRU layer {layer} (of {L}):"), (kind, msg)
        others = [j for j in range(L) if j != layer]
        assert not any(f"layer {j} (of {L})" in msg for j in others), (kind, msg)


def test_a_fault_in_a_single_layer_is_reported_by_the_kernels():
    """One layer: a flipped buffer word, rANS state or kept-state bit raises a ReversalError
    whose message has no layer tag."""
    m = RevGRU(5, 6, 5)
    theta = m.init_params(seed=1)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, (40, 3)), rng.integers(0, 5, (40, 3))
    for kind, fault in _faults(0).items():
        def hook(when, run, fault=fault):
            if when == "before":
                fault(run.layer_q(0), run.layer_buffer(0))
        m._fault_hook = hook
        try:
            with pytest.raises(rt.ReversalError, match=r"^RevGRU: ") as info:
                m.loss_and_grad(theta, x, y)
        finally:
            del m._fault_hook
        assert "layer" not in str(info.value), (kind, str(info.value))
