"""MomentumRNN's whole-window BPTT kernels (revtrain/_kernels/momentum_stack.py) against the
per-step Python driver, the reference (``window_kernels = False``).

The kernels run the same operations in the same order with the same element
kernels and the same BLAS (Numba's), so the loss, the fixed-point trajectory
and the gradients with respect to the inputs and the initial state are the
same bits; the parameter gradient agrees to rounding (the kernels sum the
weight gradients once per 32-step chunk, the reference step by step).
"""
import numpy as np
import pytest

import revtrain as rt
from revtrain import MomentumRNN
from revtrain.models.momentum_window import MomentumRNNWindow
from test_stacks import window_fault_messages

#: (n_layers, embed_dim, float inputs, loss): one-hot, embedded and float inputs, 1-3 layers.
CONFIGS = [(1, None, False, "softmax"), (2, 4, False, "softmax"), (3, None, True, "mse"),
           (2, None, True, "softmax"), (1, None, True, "mse_per_step")]


def _model(L, emb, loss, gamma, H=6, dropout=0.3):
    kw = {} if gamma is None else {"gamma": gamma, "beta": 0.6}
    return MomentumRNN(5, H, 5, n_layers=L, embed_dim=emb, dropout=dropout,
                       loss="mse" if loss.startswith("mse") else "softmax", **kw)


def _data(rng, m, T, B, fl, loss):
    x = rng.standard_normal((T, B, 5)) if fl else rng.integers(0, 5, (T, B))
    if loss == "mse":
        y = rng.standard_normal((B, 5))                     # the last step's target only
    elif loss == "mse_per_step":
        y = rng.standard_normal((T, B, 5))
    else:
        y = rng.integers(0, 5, (T, B))
    s0 = 0.3 * rng.standard_normal((B, m.state_size))
    return x, y, s0


def _both(m, theta, x, y, **kw):
    out = []
    for wk in (True, False):
        m.window_kernels = wk
        out.append(m.loss_and_grad(theta, x, y, input_grad=True, return_stats=True, **kw))
    m.window_kernels = True
    return out


@pytest.mark.parametrize("gamma", [None, 0.6])
@pytest.mark.parametrize("L, emb, fl, loss", CONFIGS)
def test_window_kernels_agree_with_the_python_driver(gamma, L, emb, fl, loss):
    """Both BPTT modes, with and without dropout, learned and constant gamma, T = 37
    (two kernel chunks): the same bits for the loss, the input gradients, the final
    state and the stored bytes; the parameter gradient to 1e-13 relative."""
    rng = np.random.default_rng(5 + L)
    m = _model(L, emb, loss, gamma)
    assert m.window_kernels
    theta = m.init_params(1)
    x, y, s0 = _data(rng, m, 37, 3, fl, loss)
    for mode in ("reversible", "standard"):
        for dseed in (None, 7):
            (la, ga, ia, sa), (lb, gb, ib, sb) = _both(m, theta, x, y, bptt=mode,
                                                       dropout_seed=dseed, initial_state=s0)
            assert la == lb, (mode, dseed)
            assert np.abs(ga - gb).max() <= 1e-13 * np.abs(gb).max(), (mode, dseed)
            assert np.array_equal(ia.initial_state, ib.initial_state)
            assert (ia.x is None) == (ib.x is None) == (not fl)
            if fl:
                assert np.array_equal(ia.x, ib.x)
            assert np.array_equal(sa.final_state, sb.final_state)
            assert sa.stored_bytes == sb.stored_bytes
            assert sa.buffer_bytes == sb.buffer_bytes
            # a sum of the streams' counts, over one array or per layer: float association
            assert sa.info_bits == pytest.approx(sb.info_bits, rel=1e-13)


@pytest.mark.parametrize("gamma", [None, 0.3])
def test_window_kernels_agree_at_a_larger_size(gamma):
    """H = 40, B = 5, T = 70 (three chunks; BLAS products of a realistic shape), 2 layers."""
    rng = np.random.default_rng(11)
    m = MomentumRNN(7, 40, 7, n_layers=2, gamma=gamma)
    theta = m.init_params(3)
    x, y = rng.integers(0, 7, (70, 5)), rng.integers(0, 7, (70, 5))
    s0 = 0.5 * rng.standard_normal((5, m.state_size))
    for mode in ("reversible", "standard"):
        (la, ga, ia, sa), (lb, gb, ib, sb) = _both(m, theta, x, y, bptt=mode, initial_state=s0)
        assert la == lb
        assert np.abs(ga - gb).max() <= 1e-13 * np.abs(gb).max()
        assert np.array_equal(ia.initial_state, ib.initial_state)
        assert np.array_equal(sa.final_state, sb.final_state)
        assert sa.stored_bytes == sb.stored_bytes


@pytest.mark.parametrize("gamma", [None, 0.6])
@pytest.mark.parametrize("L, emb, fl, loss", CONFIGS[:4])
def test_reversible_equals_standard_through_the_kernels(gamma, L, emb, fl, loss):
    """Undoing the steps and reloading the stored states give the same bits: loss, gradient,
    input gradients, final state, information count."""
    rng = np.random.default_rng(21 + L)
    m = _model(L, emb, loss, gamma)
    theta = m.init_params(2)
    x, y, s0 = _data(rng, m, 41, 2, fl, loss)
    for dseed in (None, 3):
        out = [m.loss_and_grad(theta, x, y, bptt=mode, initial_state=s0, dropout_seed=dseed,
                               input_grad=True, return_stats=True)
               for mode in ("reversible", "standard")]
        (lr, gr, ir, sr), (ls, gs, is_, ss) = out
        assert sr.mode == "reversible" and ss.mode == "standard"
        assert lr == ls and np.array_equal(gr, gs)
        assert np.array_equal(ir.initial_state, is_.initial_state)
        if fl:
            assert np.array_equal(ir.x, is_.x)
        assert np.array_equal(sr.final_state, ss.final_state)
        assert sr.info_bits == ss.info_bits > 0
        assert sr.stored_bytes < ss.stored_bytes


def test_the_kernels_run_and_the_python_driver_serves_hvp_and_forward():
    """Gradients go through the kernels (their hook is called); the complex-step hvp and
    forward-only calls use the Python driver and agree with the kernels' results."""
    m = MomentumRNN(5, 6, 5, n_layers=2)
    theta = m.init_params(4)
    rng = np.random.default_rng(8)
    x, y = rng.integers(0, 5, (35, 2)), rng.integers(0, 5, (35, 2))
    seen = []
    m._fault_hook = lambda when, run: seen.append((when, type(run)))
    try:
        loss, grad = m.loss_and_grad(theta, x, y)
        assert seen == [("before", MomentumRNNWindow), ("after", MomentumRNNWindow)]
        seen.clear()
        # the forward pass adds the steps' losses in the other order
        assert m.loss(theta, x, y) == pytest.approx(loss, rel=1e-14)
        v = rng.standard_normal(m.size)
        hv = m.hvp(theta, x, y, v)
        assert seen == []
    finally:
        del m._fault_hook
    assert np.isfinite(hv).all()
    m.window_kernels = False
    assert np.array_equal(m.hvp(theta, x, y, v), hv)


@pytest.mark.parametrize("gamma", [None, 0.6])
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_a_fault_in_the_window_kernels_names_the_layer(layer, gamma):
    """A flipped bit in layer ``layer``'s kept state or buffer streams (before the backward
    pass, so the layers above read it first) raises a ReversalError naming that layer."""
    L, T, B = 3, 30, 5
    kw = {} if gamma is None else {"gamma": gamma}
    m = MomentumRNN(5, 6, 5, n_layers=L, embed_dim=3, dropout=0.25, **kw)
    theta = m.init_params(seed=1)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, (T, B)), rng.integers(0, 5, (T, B))
    for kind, msg in window_fault_messages(m, layer, theta, x, y, 6):
        assert msg.startswith(f"MomentumRNN layer {layer} (of {L}):"), (kind, msg)


def test_a_fault_in_one_layer_names_the_part_and_step():
    """One layer: an undo that leaves the range names the part (h or v) and the step, as the
    Python driver does (the same message)."""
    m = MomentumRNN(5, 6, 5)
    theta = m.init_params(seed=1)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, (30, 3)), rng.integers(0, 5, (30, 3))
    msgs = []
    for wk in (True, False):
        m.window_kernels = wk

        def fault(q, buf):
            q["h"][1, 2] ^= np.int64(1 << 61)
        if wk:
            def hook(when, run):
                if when == "before":
                    fault(run.layer_q(0), run.layer_buffer(0))
            m._fault_hook = hook
        else:
            orig = m._fixed_unstep

            def unstep(p, P, q, buf, t, cache):
                if t == x.shape[0] - 1:
                    fault(q, buf)
                orig(p, P, q, buf, t, cache)
            m._fixed_unstep = unstep
        try:
            with pytest.raises(rt.ReversalError) as info:
                m.loss_and_grad(theta, x, y)
        finally:
            m.__dict__.pop("_fault_hook", None)
            m.__dict__.pop("_fixed_unstep", None)
        msgs.append(str(info.value))
    assert msgs[0] == msgs[1]
    assert msgs[0].startswith("MomentumRNN: undoing step 29 produced an impossible value in "
                              "state part 'h' (batch row 1, unit 2)")
