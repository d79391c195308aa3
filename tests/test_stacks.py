"""Deep models: ``n_layers``, ``embed_dim``, variational dropout and input gradients.

Reference. A plain NumPy forward pass of the stacked loss (:func:`ref_loss`)
written from the documented formulas: layer 0 reads ``embed[x_t] * m.embed``
(or the one-hot / float input), layer ``l > 0`` reads ``h_{l-1,t} *
between[l-1]``, the output layer reads ``h_{L-1,t} * top``; the masks are the
model's own :meth:`dropout_masks`, the same array at every step.

* Standard cells (RNN, LSTM, GRU): the reference is the float model itself.
* Reversible cells (MomentumRNN, RevGRU, RevLSTM): the fixed-point loss is
  piecewise constant, so, as in ``test_reversible.py``, the reference is the
  smooth *frozen-offset* model ``s'_{l,t} = f_l(s'_{l,t-1}, in_{l,t}) +
  delta_{l,t}`` with ``delta`` measured on the model's own fixed-point
  trajectory (per layer, per step, per half for the two-half cells; the
  trajectory comes from prefix runs with the same ``dropout_seed``). At the
  base point it reproduces the fixed-point loss; its derivatives are the
  straight-through gradient that reversible BPTT computes.

Gradients of the reference are taken by the complex step (``Im f(z + i h e_j)
/ h``, ``h = 1e-30``: no cancellation, exact to rounding), so the kernels'
gradient of every parameter block, dL/dx (float inputs) and dL/d state0 are
checked per coordinate to 1e-12 relative; central differences of the
reference (random directions and a subset of coordinates) are checked too.
Hessian-vector products are checked against central differences of the
model's gradient (standard cells) or of the reference's complex-step
gradient (reversible cells, frozen offsets).
"""
import re

import numpy as np
import pytest

import revtrain as rt
from revtrain import RNN, LSTM, GRU, MomentumRNN, RevGRU, RevLSTM, MDRNN, RevMDRNN
from revtrain.models.results import InputGrads
from revtrain.models.dropout import DropoutMasks
from revtrain.models.reversible import ReversibleModel
from test_reversible import ref_step
from test_reversal_faults import _flip_word, _flip_state, _flip_q

STD = ("rnn", "lstm", "gru")
REV = ("momentum", "momentum_const", "revgru", "revlstm")
ALL = STD + REV
CLASSES = {"rnn": RNN, "lstm": LSTM, "gru": GRU, "momentum": MomentumRNN,
           "momentum_const": MomentumRNN, "revgru": RevGRU, "revlstm": RevLSTM}
CS = 1e-30          # complex step


def make(cell, n_in=5, H=4, n_out=5, **kw):
    if cell == "momentum_const":
        return MomentumRNN(n_in, H, n_out, gamma=0.6, beta=0.6, **kw)
    return CLASSES[cell](n_in, H, n_out, **kw)


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def fixed_point(a, frac_bits=32):
    """``a`` rounded to the fixed-point grid (so that ``to_fixed`` is exact on it)."""
    return np.round(a * 2.0 ** frac_bits) * 2.0 ** -frac_bits


# ------------------------------------------------------------------ reference
def std_step(m, p, s, inp):
    """One float step of a standard layer (short-name params ``p``): ``(new_state, h)``."""
    H = m.n_hidden
    if isinstance(m, RNN):
        h = np.tanh(inp @ p["V"] + s @ p["W"] + p["b_h"])
        return h, h
    if isinstance(m, LSTM):
        h, c = s[:, :H], s[:, H:]
        a = inp @ p["W_x"] + h @ p["W_h"] + np.concatenate([p["b_f"], p["b_iog"]])
        f, i, o = _sig(a[:, :H]), _sig(a[:, H:2 * H]), _sig(a[:, 2 * H:3 * H])
        g = np.tanh(a[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        return np.concatenate([h, c], axis=1), h
    assert isinstance(m, GRU)
    ax, Wh, b = inp @ p["W_x"], p["W_h"], p["b"]
    z = _sig(ax[:, :H] + s @ Wh[:, :H] + b[:H])
    r = _sig(ax[:, H:2 * H] + s @ Wh[:, H:2 * H] + b[H:2 * H])
    n = np.tanh(ax[:, 2 * H:] + (r * s) @ Wh[:, 2 * H:] + b[2 * H:])
    h = (1 - z) * n + z * s
    return h, h


def bottom_inputs(m, p, x, masks):
    """Layer 0's inputs at every step, (T, B, D): embedding rows (masked), one-hot or ``x``."""
    if x.dtype.kind == "i":
        inp = p["embed"][x] if m.embed_dim is not None else np.eye(m.n_in)[x]
    else:
        inp = x
    if m.embed_dim is not None and masks is not None:
        inp = inp * masks.embed
    return inp


def out_mask(m, masks, l):
    """The mask on layer ``l``'s output (between layers, or top), or None."""
    if masks is None:
        return None
    return masks.top if l == m.n_layers - 1 else masks.between[l]


def head(m, p, h, y, t, T):
    """Summed loss of step ``t`` (0 where the step has no target); complex-safe."""
    per_step = y.ndim == (2 if m.loss_kind == "softmax" else 3)
    if not per_step and t != T - 1:
        return 0.0
    yt = y[t] if per_step else y
    z = h @ p["U"] + p["b_y"]
    if m.loss_kind == "softmax":
        z = z - z.real.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        return (lse - z[np.arange(len(yt)), yt]).sum()
    d = z - yt
    return (d * d).sum()


def ref_loss(m, theta, x, y, s0=None, masks=None, deltas=None):
    """Plain NumPy loss of the stack; ``theta``, float ``x`` and ``s0`` may be complex.

    Reversible cells: with ``deltas`` (per step, per layer, dicts of parts)
    the frozen-offset model; without, the plain float cell.
    """
    p = m.layout.views(theta)
    pl = m.layer_params(p)
    T, B = x.shape[:2]
    L = m.n_layers
    rev = isinstance(m, ReversibleModel)
    if s0 is None:
        s0 = np.zeros((B, m.state_size))
    states = [m._unpack(s) if rev else s for s in m.layer_states(s0)]
    inp0 = bottom_inputs(m, p, x, masks)
    total = 0.0
    for t in range(T):
        inp = inp0[t]
        for l in range(L):
            if rev:
                d = None if deltas is None else deltas[t][l]
                states[l], _ = ref_step(m, pl[l], states[l], inp @ pl[l]["V"], delta=d)
                h = m._h(states[l])
            else:
                states[l], h = std_step(m, pl[l], states[l], inp)
            mk = out_mask(m, masks, l)
            inp = h if mk is None else h * mk
        total = total + head(m, p, inp, y, t, T)
    return total / y.size


def _dummy_targets(m, t, B):
    if m.loss_kind == "softmax":
        return np.zeros((t, B), dtype=np.int64)
    return np.zeros((t, B, m.n_out))


def trajectory(m, theta, x, s0, seed):
    """Fixed-point states of every layer, ``traj[t][l]`` (dict of parts), t = 0..T.

    From prefix runs with the same ``dropout_seed`` (the masks depend on the
    seed and B only, so every prefix sees the masks of the whole window).
    """
    B = x.shape[1]
    s = np.zeros((B, m.state_size)) if s0 is None else s0
    out = [[m._unpack(a) for a in m.layer_states(s)]]
    for t in range(1, x.shape[0] + 1):
        st = m.loss_and_grad(theta, x[:t], _dummy_targets(m, t, B), initial_state=s0,
                             dropout_seed=seed, return_stats=True)[-1]
        out.append([m._unpack(a) for a in m.layer_states(st.final_state)])
    return out


def offsets(m, theta, x, traj, masks):
    """``delta[t][l][part]``: fixed-point value minus the float step from the fixed-point inputs."""
    p = m.params(theta)
    pl = m.layer_params(p)
    inp0 = bottom_inputs(m, p, x, masks)
    out = []
    for t in range(x.shape[0]):
        inp, dt = inp0[t], []
        for l in range(m.n_layers):
            new = traj[t + 1][l]
            raw = ref_step(m, pl[l], traj[t][l], inp @ pl[l]["V"], target=new)[1]
            dt.append({k: new[k] - raw[k] for k in raw})
            mk = out_mask(m, masks, l)
            inp = m._h(new) if mk is None else m._h(new) * mk
        out.append(dt)
    return out


def cs_partials(f, z0):
    """Every partial derivative of the real function ``f`` at ``z0``, by the complex step."""
    z0 = np.asarray(z0, dtype=np.float64)
    z = z0.astype(np.complex128)
    flat = z.reshape(-1)
    out = np.empty(z0.size)
    for i in range(z0.size):
        flat[i] += 1j * CS
        out[i] = f(z).imag / CS
        flat[i] = z0.flat[i]
    return out.reshape(z0.shape)


def rel_err(a, b):
    """max |a - b| / max |b| (b not all zero)."""
    scale = np.abs(b).max()
    assert scale > 0
    return float(np.abs(a - b).max() / scale)


def _case(cell, variant, n_layers=2, T=6, B=2, seed=0):
    """A stacked model, data, state0 and dropout seed for a reference check.

    ``tokens_embed``: token ids, embedding, dropout 0.3, softmax at every step.
    ``float_mse_last``: float inputs, dropout 0.3, squared error on the last step.
    ``onehot_3layers_last``: 3 layers, token ids without embedding (rows of layer 0's
    input weights), dropout 0.3, softmax on the last step only.
    All start from a random fixed-point-representable initial state.
    """
    rng = np.random.default_rng(seed)
    D, O = 5, 5
    if variant == "tokens_embed":
        m = make(cell, D, 4, O, n_layers=n_layers, embed_dim=3, dropout=0.3)
        x = rng.integers(0, D, (T, B))
        y = rng.integers(0, O, (T, B))
    elif variant == "onehot_3layers_last":
        m = make(cell, D, 4, O, n_layers=3, dropout=0.3)
        x = rng.integers(0, D, (T, B))
        y = rng.integers(0, O, (B,))
    else:
        m = make(cell, D, 4, O, loss="mse", n_layers=n_layers, dropout=0.3)
        x = rng.standard_normal((T, B, D))
        y = rng.standard_normal((B, O))
    theta = m.init_params(seed=seed + 1)
    # nonzero biases so that every block's gradient is generic
    theta += 0.1 * rng.standard_normal(theta.size)
    s0 = fixed_point(0.4 * rng.standard_normal((B, m.state_size)))
    dseed = 11
    masks = m.dropout_masks(dseed, B)
    # some units dropped and some kept at every place, so the masks matter
    for mk in (masks.embed,) + masks.between + (masks.top,):
        if mk is not None:
            assert 0 < np.count_nonzero(mk) < mk.size
    return m, theta, x, y, s0, dseed, masks


# ---------------------------------------------------- 1. reference checks
@pytest.mark.parametrize("variant", ["tokens_embed", "float_mse_last", "onehot_3layers_last"])
@pytest.mark.parametrize("cell", ALL)
def test_stack_matches_plain_numpy_reference(cell, variant):
    """Loss, every parameter block's gradient, dL/dx and dL/dstate0 against the reference."""
    m, theta, x, y, s0, dseed, masks = _case(cell, variant)
    loss, grad, ig = m.loss_and_grad(theta, x, y, initial_state=s0, dropout_seed=dseed,
                                     input_grad=True)
    rev = isinstance(m, ReversibleModel)
    deltas = None
    if rev:
        traj = trajectory(m, theta, x, s0, dseed)
        deltas = offsets(m, theta, x, traj, masks)
        dmax = max(np.abs(d[k]).max() for dt in deltas for d in dt for k in d)
        assert 0 < dmax < 1e-2          # rounding offsets: small, not all zero

    def L(th=theta, xx=x, ss=s0):
        return ref_loss(m, th, xx, y, ss, masks, deltas)

    ref = L()
    assert abs(ref - loss) <= 1e-12 * abs(ref)
    # the loss-only entry point agrees
    assert abs(m.loss(theta, x, y, initial_state=s0, dropout_seed=dseed) - ref) <= 1e-12 * abs(ref)

    # gradient of every parameter block, per coordinate (complex step of the reference)
    gref = cs_partials(lambda th: L(th=th), theta)
    gv, rv = m.params(grad), m.params(gref)
    for name in m.layout.names:
        assert np.abs(rv[name]).max() > 0, name
        assert rel_err(gv[name], rv[name]) <= 1e-12, (name, rel_err(gv[name], rv[name]))
    # input gradients
    assert isinstance(ig, InputGrads)
    assert ig.initial_state.shape == (x.shape[1], m.state_size)
    dref = cs_partials(lambda ss: L(ss=ss), s0)
    assert rel_err(ig.initial_state, dref) <= 1e-12
    for l, (a, b) in enumerate(zip(m.layer_states(ig.initial_state), m.layer_states(dref))):
        assert rel_err(a, b) <= 1e-12, l           # every layer's block is nonzero and right
    if x.dtype.kind == "i":
        assert ig.x is None
    else:
        assert ig.x.shape == x.shape
        assert rel_err(ig.x, cs_partials(lambda xx: L(xx=xx), x)) <= 1e-12

    # central differences of the (real) reference, eps = 1e-6: random directions (error
    # relative to |grad| |v|) and coordinates (relative to max |grad|); measured errors are
    # below 1e-10 and 2e-9, so these bounds are tighter than 1e-6 with a wide margin
    rng = np.random.default_rng(7)
    eps = 1e-6
    gmax = np.abs(grad).max()
    for _ in range(3):
        v = rng.standard_normal(theta.size)
        fd = (L(th=theta + eps * v) - L(th=theta - eps * v)) / (2 * eps)
        assert abs(fd - grad @ v) <= 1e-8 * np.linalg.norm(grad) * np.linalg.norm(v)
    for i in rng.choice(theta.size, 12, replace=False):
        v = np.zeros(theta.size)
        v[i] = 1.0
        fd = (L(th=theta + eps * v) - L(th=theta - eps * v)) / (2 * eps)
        assert abs(fd - grad[i]) <= 1e-7 * gmax, (m.layout.name_of(int(i)), fd, grad[i])
    dsmax = np.abs(ig.initial_state).max()
    for i in rng.choice(s0.size, 4, replace=False):
        e = np.zeros(s0.size)
        e[i] = 1.0
        e = e.reshape(s0.shape)
        fd = (L(ss=s0 + eps * e) - L(ss=s0 - eps * e)) / (2 * eps)
        assert abs(fd - ig.initial_state.flat[i]) <= 1e-7 * dsmax


@pytest.mark.parametrize("cell", REV)
def test_frozen_offset_reference_is_needed_and_close_to_plain_float(cell):
    """Without offsets the reference is the float cell: close to the fixed-point loss, not equal."""
    m, theta, x, y, s0, dseed, masks = _case(cell, "tokens_embed")
    loss = m.loss(theta, x, y, initial_state=s0, dropout_seed=dseed)
    plain = ref_loss(m, theta, x, y, s0, masks, None)
    assert plain != loss and abs(plain - loss) <= 1e-2 * abs(loss)


# ----------------------------------------- 2. reversible == standard, bits
def _rev_case(cell, n_layers, variant, T=10, B=3):
    rng = np.random.default_rng(n_layers)
    D, O = 5, 5
    kw = dict(n_layers=n_layers, dropout=0.25)
    if variant == "tokens_embed":
        m = make(cell, D, 6, O, embed_dim=3, **kw)
        x = rng.integers(0, D, (T, B))
        y = rng.integers(0, O, (T, B))
        s0 = None
    else:
        m = make(cell, D, 6, O, loss="mse", **kw)
        x = 2.0 * rng.standard_normal((T, B, D))
        y = rng.standard_normal((T, B, O))
        s0 = 0.6 * rng.standard_normal((B, m.state_size))      # rounded to fixed point inside
    theta = m.init_params(seed=3, scale=1.5)
    return m, theta, x, y, s0


@pytest.mark.parametrize("variant", ["tokens_embed", "float_state0"])
@pytest.mark.parametrize("n_layers", [2, 3])
@pytest.mark.parametrize("cell", REV)
def test_reversible_equals_standard_bit_for_bit(cell, n_layers, variant):
    m, theta, x, y, s0 = _rev_case(cell, n_layers, variant)
    B = x.shape[1]
    for dseed in (None, 4):
        lr, gr, ir, sr = m.loss_and_grad(theta, x, y, initial_state=s0, dropout_seed=dseed,
                                         input_grad=True, return_stats=True)
        ls, gs, is_, ss = m.loss_and_grad(theta, x, y, bptt="standard", initial_state=s0,
                                          dropout_seed=dseed, input_grad=True,
                                          return_stats=True)
        assert sr.mode == "reversible" and ss.mode == "standard"
        assert lr == ls
        assert np.array_equal(gr, gs)
        assert np.array_equal(ir.initial_state, is_.initial_state)
        if variant == "tokens_embed":
            assert ir.x is None and is_.x is None
        else:
            assert np.array_equal(ir.x, is_.x) and np.abs(ir.x).max() > 0
        assert np.array_equal(sr.final_state, ss.final_state)
        assert sr.final_state.shape == (B, m.state_size)
        assert sr.info_bits == ss.info_bits > 0
        assert sr.info_bits <= x.shape[0] * B * m.forget_units * m.max_forget_bits * n_layers
        # every layer's gradient and initial-state gradient is used
        for gl in m.layer_params(m.params(gr)):
            assert all(np.abs(v).max() > 0 for v in gl.values())
        for d in m.layer_states(ir.initial_state):
            assert np.abs(d).max() > 0
        # accounting: buffers + the running state + the masks; or T+1 states per layer + masks
        masks = m.dropout_masks(dseed, B)
        mb = 0 if masks is None else sum(
            a.nbytes for a in (masks.embed, masks.top) + masks.between if a is not None)
        assert sr.stored_bytes == sr.buffer_bytes + B * m.state_size * 8 + mb
        assert ss.stored_bytes == (x.shape[0] + 1) * B * m.state_size * 8 + mb
        assert ss.buffer_bytes == 0
        assert m.loss(theta, x, y, initial_state=s0, dropout_seed=dseed) == \
            pytest.approx(lr, rel=1e-12)


# ------------------------------------- 3. faults in one layer of a stack
def _run_with_layer_fault(m, theta, x, y, layer, fault, dseed):
    """Reversible BPTT with ``fault(q, buf)`` applied to layer ``layer``'s kept state and
    buffer just before its first undo (step T-1; the layers above were undone first).

    This hooks the per-step Python driver (the whole-window kernels are switched off here;
    they are faulted in ``test_a_fault_in_the_window_kernels_names_the_layer`` and the
    cells' window test files)."""
    m.window_kernels = False
    orig = m._fixed_unstep
    T = x.shape[0]
    V = m.params(theta)[f"layer{layer}.V"]
    applied = []

    def unstep(p, P, q, buf, t, cache):
        if t == T - 1 and not applied and np.shares_memory(p["V"], V):
            applied.append(t)
            fault(q, buf)
        orig(p, P, q, buf, t, cache)

    m._fixed_unstep = unstep
    try:
        return m.loss_and_grad(theta, x, y, dropout_seed=dseed)
    finally:
        del m._fixed_unstep
        assert applied == [T - 1]


def _faults(seed):
    rng = np.random.default_rng(seed)
    return {"word": _flip_word(int(rng.integers(3)), int(rng.integers(1 << 20)), 13),
            "bottom_word": _flip_word(0, 0, 5),
            "rans_state": _flip_state(1, 20),
            "kept_state_low": _flip_q(int(rng.integers(4)), 2, int(rng.integers(6)), 0),
            "kept_state_high": _flip_q(0, 1, 2, 31)}


@pytest.mark.parametrize("cell", ["momentum", "revgru", "revlstm"])
def test_a_fault_in_one_layer_names_that_layer(cell):
    L, T, B = 3, 10, 3
    m = make(cell, 5, 6, 5, n_layers=L, embed_dim=3, dropout=0.25)
    theta = m.init_params(seed=1)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, (T, B)), rng.integers(0, 5, (T, B))
    name = type(m).__name__
    # no fault: the same run succeeds
    loss, grad = _run_with_layer_fault(m, theta, x, y, 1, lambda q, buf: None, 6)
    assert np.isfinite(grad).all()
    for layer in (1, 2, 0):                  # the middle layer, the top layer, the bottom layer
        for kind, fault in _faults(layer).items():
            with pytest.raises(rt.ReversalError) as info:
                _run_with_layer_fault(m, theta, x, y, layer, fault, 6)
            msg = str(info.value)
            assert msg.startswith(f"{name} layer {layer} (of {L}):"), (layer, kind, msg)
            others = [j for j in range(L) if j != layer]
            assert not any(f"layer {j} (of {L})" in msg for j in others), (layer, kind, msg)


#: Faults (cell, faulted layer, kept-state part, bit) that an upper layer detects first,
#: mid-undo, as an impossible value (T = 30; found by a sweep, deterministic for these seeds).
UPPER_DETECTS = [
    ("revgru", 1, 0, 31),          # layer 2 fails at step 17
    ("revlstm", 1, 0, 10),         # layer 2 fails at step 0; layer 1's end check fails
    ("revgru", 0, 1, 31),          # layer 1 fails at step 16
    ("revlstm", 0, 1, 31),         # layer 1 fails at step 15
    ("momentum", 0, 0, 0),         # layer 2 fails at step 9; layer 1 fails when undone alone
    ("revgru", 0, 0, 15),          # layer 2 fails at step 1; layer 1 fails when undone alone
    ("revgru", 0, 1, 10),          # layer 2 fails at step 0; layer 1 fails when undone alone
]


@pytest.mark.parametrize("cell, layer, part, bit", UPPER_DETECTS,
                         ids=[f"{c}-layer{l}-part{p}-bit{b}" for c, l, p, b in UPPER_DETECTS])
def test_a_fault_detected_by_an_upper_layer_is_blamed_on_the_corrupted_layer(cell, layer,
                                                                               part, bit):
    """A corrupted layer is named even when a layer above it fails first.

    Layer ``j`` > ``layer`` reads the corrupted layer's output, so its undo
    can fail first; the layers below it are then undone on their own and the
    lowest that fails is the corrupted one. A layer between the two reads
    the corrupted layer too, so it can fail as well when undone alone: it
    must not be named while the layer below it also fails.
    """
    L, T, B = 3, 30, 3
    m = make(cell, 5, 6, 5, n_layers=L, embed_dim=3, dropout=0.25)
    m.window_kernels = False                 # the Python driver's timing of the fault
    theta = m.init_params(seed=1)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, (T, B)), rng.integers(0, 5, (T, B))
    detected = []
    orig = m._blame

    def blame(err, l, t, *args):
        detected.append((l, t))
        return orig(err, l, t, *args)

    m._blame = blame
    try:
        with pytest.raises(rt.ReversalError) as info:
            _run_with_layer_fault(m, theta, x, y, layer, _flip_q(part, 1, 2, bit), 6)
    finally:
        del m._blame
    # the case does exercise detection by an upper layer
    assert len(detected) == 1 and detected[0][0] > layer, detected
    msg = str(info.value)
    assert msg.startswith(f"{type(m).__name__} layer {layer} (of {L}):"), msg


# -------------------------------------------------------------- 4. hvp
@pytest.mark.parametrize("variant", ["tokens_embed", "float_mse_last"])
@pytest.mark.parametrize("cell", STD)
def test_hvp_of_a_standard_stack_matches_differences_of_the_gradient(cell, variant):
    m, theta, x, y, s0, dseed, masks = _case(cell, variant)
    rng = np.random.default_rng(3)
    v = rng.standard_normal(theta.size)
    hv = m.hvp(theta, x, y, v, initial_state=s0, dropout_seed=dseed)
    l2, g2, hv2 = m.grad_and_hvp(theta, x, y, v, initial_state=s0, dropout_seed=dseed)
    loss, grad = m.loss_and_grad(theta, x, y, initial_state=s0, dropout_seed=dseed)
    assert np.array_equal(hv, hv2)
    assert abs(l2 - loss) <= 1e-12 * abs(loss) and rel_err(g2, grad) <= 1e-12
    eps = 1e-5

    def g(th):
        return m.loss_and_grad(th, x, y, initial_state=s0, dropout_seed=dseed)[1]

    fd = (g(theta + eps * v) - g(theta - eps * v)) / (2 * eps)
    assert rel_err(hv, fd) <= 1e-6
    # the dropout masks are part of the function: without the seed, another Hv
    hv0 = m.hvp(theta, x, y, v, initial_state=s0)
    assert rel_err(hv0, hv) > 1e-3


@pytest.mark.parametrize("cell", REV)
def test_hvp_of_a_reversible_stack_matches_the_frozen_offset_reference(cell):
    """Complex-step Hv (straight-through, fixed trajectory) = central differences, in theta
    along v, of the frozen-offset reference's complex-step gradient, every coordinate."""
    m, theta, x, y, s0, dseed, masks = _case(cell, "tokens_embed", T=5)
    traj = trajectory(m, theta, x, s0, dseed)
    deltas = offsets(m, theta, x, traj, masks)
    rng = np.random.default_rng(4)
    v = rng.standard_normal(theta.size)
    hv = m.hvp(theta, x, y, v, initial_state=s0, dropout_seed=dseed)
    _, g2, hv2 = m.grad_and_hvp(theta, x, y, v, initial_state=s0, dropout_seed=dseed)
    _, grad = m.loss_and_grad(theta, x, y, initial_state=s0, dropout_seed=dseed)
    assert np.array_equal(hv, hv2) and rel_err(g2, grad) <= 1e-12

    def gref(th):
        return cs_partials(lambda z: ref_loss(m, z, x, y, s0, masks, deltas), th)

    eps = 1e-5
    fd = (gref(theta + eps * v) - gref(theta - eps * v)) / (2 * eps)
    assert rel_err(hv, fd) <= 1e-6


# --------------------------------------------------------------- 5. dropout
@pytest.mark.parametrize("cell", ALL)
def test_dropout_seeds(cell):
    T, B = 7, 3
    rng = np.random.default_rng(5)
    m = make(cell, 5, 4, 5, n_layers=2, embed_dim=3, dropout=0.4)
    m0 = make(cell, 5, 4, 5, n_layers=2, embed_dim=3)              # dropout 0, same layout
    assert m0.layout.names == m.layout.names
    theta = m.init_params(seed=2)
    x, y = rng.integers(0, 5, (T, B)), rng.integers(0, 5, (T, B))

    def run(model, seed):
        return model.loss_and_grad(theta, x, y, dropout_seed=seed, input_grad=True,
                                   return_stats=True)

    a, b = run(m, 3), run(m, 3)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])
    assert np.array_equal(a[2].initial_state, b[2].initial_state)
    assert np.array_equal(a[3].final_state, b[3].final_state)
    # different seeds, different losses
    assert len({run(m, s)[0] for s in (0, 1, 2, 3, 2 ** 40)}) == 5
    # numpy ints are seeds too
    assert run(m, np.int64(3))[0] == a[0]
    # no seed: no dropout, the bits of the dropout-0 model; a seed on a dropout-0 model
    # changes nothing
    n = run(m, None)
    for other in (run(m0, None), run(m0, 3), run(m0, 0)):
        assert n[0] == other[0] and np.array_equal(n[1], other[1])
        assert np.array_equal(n[2].initial_state, other[2].initial_state)
    assert n[0] != a[0]
    assert m.loss(theta, x, y) == m0.loss(theta, x, y, dropout_seed=3) == \
        pytest.approx(n[0], rel=1e-12)
    v = rng.standard_normal(theta.size)
    assert np.array_equal(m.hvp(theta, x, y, v), m0.hvp(theta, x, y, v, dropout_seed=5))
    # predict and final_state never use dropout
    assert np.array_equal(m.predict(theta, x), m0.predict(theta, x))
    assert np.array_equal(m.final_state(theta, x), m0.final_state(theta, x))
    assert np.array_equal(m.final_state(theta, x), n[3].final_state)
    # the final state of a dropout run differs: the embedding mask reaches even the
    # bottom layer's state
    assert not np.array_equal(a[3].final_state, n[3].final_state)
    assert not np.array_equal(m.layer_states(a[3].final_state)[0],
                              m.layer_states(n[3].final_state)[0])


def test_dropout_masks_values_shapes_and_draw_order():
    B, p = 4, 0.3
    m = LSTM(7, 5, 3, n_layers=3, embed_dim=2, dropout=p)
    mk = m.dropout_masks(9, B)
    assert isinstance(mk, DropoutMasks)
    assert mk.embed.shape == (B, 2) and mk.top.shape == (B, 5)
    assert len(mk.between) == 2 and all(b.shape == (B, 5) for b in mk.between)
    keep = 1.0 / (1.0 - p)
    # drawn from default_rng(seed) in the order embed, between (layer 0 up), top
    rng = np.random.default_rng(9)
    for a, w in zip((mk.embed,) + mk.between + (mk.top,), (2, 5, 5, 5)):
        assert a.dtype == np.float64
        assert set(np.unique(a)) <= {0.0, keep}
        assert np.array_equal(a, (rng.random((B, w)) >= p) * keep)
    again = m.dropout_masks(9, B)
    assert all(np.array_equal(u, w) for u, w in zip((mk.embed, mk.top) + mk.between,
                                                    (again.embed, again.top) + again.between))
    # without an embedding: no embed mask; one layer: no between mask
    m1 = GRU(4, 6, 3, dropout=0.5)
    mk1 = m1.dropout_masks(0, 2)
    assert mk1.embed is None and mk1.between == () and mk1.top.shape == (2, 6)
    # None without a seed or without dropout
    assert m.dropout_masks(None, B) is None
    assert LSTM(7, 5, 3, n_layers=3, embed_dim=2).dropout_masks(9, B) is None
    # the rate: about p of a large mask is dropped, and the kept entries keep the mean
    big = RNN(3, 1000, 2, dropout=p).dropout_masks(1, 200).top
    assert abs((big == 0).mean() - p) < 0.01
    assert abs(big.mean() - 1.0) < 0.02


@pytest.mark.parametrize("cell", ALL)
def test_masks_are_the_same_at_every_step_windows_carry(cell):
    """Two windows with the state carried (same seed: same masks) = one long window.

    The masks depend on the seed and B only, the same at every step, so the
    long window's steps see exactly the masks each half sees. Standard cells:
    equal to rounding. Reversible cells: only to a few units of 2**-frac_bits,
    by design: an exact multiply ``q*n/D`` pops digits from the information
    buffer, which starts empty in each window (single layer and before the
    stacks alike), so the fixed-point states may differ in their last bits."""
    T, B = 10, 3
    rng = np.random.default_rng(6)
    m = make(cell, 5, 4, 5, n_layers=2, embed_dim=3, dropout=0.3)
    theta = m.init_params(seed=4)
    x, y = rng.integers(0, 5, (T, B)), rng.integers(0, 5, (T, B))
    rev = isinstance(m, ReversibleModel)
    for dseed in (None, 8):
        l, _, st = m.loss_and_grad(theta, x, y, dropout_seed=dseed, return_stats=True)
        l1, _, st1 = m.loss_and_grad(theta, x[:4], y[:4], dropout_seed=dseed, return_stats=True)
        l2, _, st2 = m.loss_and_grad(theta, x[4:], y[4:], dropout_seed=dseed, return_stats=True,
                                     initial_state=st1.final_state)
        assert (4 * l1 + 6 * l2) / 10 == pytest.approx(l, rel=1e-9 if rev else 1e-12)
        atol = 16 * 2.0 ** -m.frac_bits if rev else 1e-13
        assert np.allclose(st2.final_state, st.final_state, rtol=0, atol=atol)
        if dseed is not None:
            # the masks matter: without them another final state
            assert np.abs(st.final_state - m.final_state(theta, x)).max() > 1e-3
    if not rev:
        # the same carried through final_state / predict (no dropout)
        f1 = m.final_state(theta, x[:4])
        assert np.allclose(m.final_state(theta, x[4:], initial_state=f1),
                           m.final_state(theta, x), rtol=0, atol=1e-13)
        assert np.allclose(m.predict(theta, x[4:], initial_state=f1), m.predict(theta, x)[4:],
                           rtol=1e-12, atol=1e-15)


# --------------------------------------------------- predict / final_state
@pytest.mark.parametrize("cell", ALL)
def test_final_state_and_predict_of_a_stack(cell):
    T, B, H = 7, 3, 4
    rng = np.random.default_rng(8)
    m = make(cell, 5, H, 5, n_layers=3, embed_dim=2)
    theta = m.init_params(seed=6)
    x, y = rng.integers(0, 5, (T, B)), rng.integers(0, 5, (T, B))
    s0 = fixed_point(0.3 * rng.standard_normal((B, m.state_size)))
    _, _, st = m.loss_and_grad(theta, x, y, initial_state=s0, return_stats=True)
    fs = m.final_state(theta, x, initial_state=s0)
    assert fs.shape == (B, m.state_size) == (B, 3 * m.layer_state_size)
    if isinstance(m, ReversibleModel):
        assert np.array_equal(fs, st.final_state)
    else:
        assert np.allclose(fs, st.final_state, rtol=0, atol=1e-14)
    # predict: softmax of the top layer's h (the first H columns of its block, every cell)
    out = m.predict(theta, x, initial_state=s0)
    assert out.shape == (T, B, 5)
    p = m.params(theta)
    for t in (0, 3, T - 1):
        top = m.layer_states(m.final_state(theta, x[:t + 1], initial_state=s0))[-1][:, :H]
        z = top @ p["U"] + p["b_y"]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        assert np.allclose(out[t], e / e.sum(axis=1, keepdims=True), rtol=1e-12, atol=1e-15)
    # a carried state continues the prediction (reversible cells: to the last bits of the
    # fixed-point state, see test_masks_are_the_same_at_every_step_windows_carry)
    st3 = m.final_state(theta, x[:3], initial_state=s0)
    tol = 1e-8 if isinstance(m, ReversibleModel) else 1e-12
    assert np.allclose(m.predict(theta, x[3:], initial_state=st3), out[3:], rtol=tol,
                       atol=1e-15)
    # the layers' blocks differ (each layer has its own state)
    blocks = m.layer_states(fs)
    assert len(blocks) == 3 and not np.array_equal(blocks[0], blocks[1])


@pytest.mark.parametrize("cell", STD)
def test_checkpointed_stack_equals_standard(cell):
    T, B = 10, 3
    rng = np.random.default_rng(9)
    m = make(cell, 5, 4, 5, n_layers=3, dropout=0.3)
    theta = m.init_params(seed=1)
    x, y = rng.standard_normal((T, B, 5)), rng.integers(0, 5, (T, B))
    s0 = 0.3 * rng.standard_normal((B, m.state_size))
    ref = m.loss_and_grad(theta, x, y, initial_state=s0, dropout_seed=2, input_grad=True,
                          return_stats=True)
    for k in (1, 3, 4):
        got = m.loss_and_grad(theta, x, y, bptt="checkpoint", checkpoint_every=k,
                              initial_state=s0, dropout_seed=2, input_grad=True,
                              return_stats=True)
        assert got[0] == pytest.approx(ref[0], rel=1e-12)
        assert rel_err(got[1], ref[1]) <= 1e-12
        assert rel_err(got[2].x, ref[2].x) <= 1e-12
        assert rel_err(got[2].initial_state, ref[2].initial_state) <= 1e-12
        assert np.allclose(got[3].final_state, ref[3].final_state, rtol=0, atol=1e-14)
        assert got[3].stored_bytes < ref[3].stored_bytes


# ---------------------------------------------------------------- layout
@pytest.mark.parametrize("cell", ALL)
def test_stack_layout_and_views(cell):
    H, E, D = 4, 3, 5
    m = make(cell, D, H, 2, n_layers=3, embed_dim=E)
    one = make(cell, D, H, 2)
    short = one.layout.names[:-2]
    names = ("embed",) + tuple(f"layer{l}.{s}" for l in range(3) for s in short) + ("U", "b_y")
    assert m.layout.names == names
    assert m.layout.groups == ("embed", "layer0", "layer1", "layer2", "output")
    specs = {s.name: s for s in m.layout.specs}
    assert specs["embed"].shape == (D, E)
    first = make(cell, E, H, 2)                # layer 0 reads the embedding
    upper = make(cell, H, H, 2)                # layers above read h
    for s in first.layout.specs[:-2]:
        assert specs[f"layer0.{s.name}"].shape == s.shape
        assert specs[f"layer0.{s.name}"].init == s.init
    for l in (1, 2):
        for s in upper.layout.specs[:-2]:
            assert specs[f"layer{l}.{s.name}"].shape == s.shape
    theta = m.init_params(seed=1)
    views = m.params(theta)
    pl = m.layer_params(views)
    assert len(pl) == 3 and all(tuple(d) == short for d in pl)
    for l in range(3):
        for s in short:
            assert np.shares_memory(pl[l][s], theta) and pl[l][s] is views[f"layer{l}.{s}"]
    assert m.state_size == 3 * m.layer_state_size == 3 * one.state_size
    st = np.arange(2 * m.state_size, dtype=float).reshape(2, m.state_size)
    blocks = m.layer_states(st)
    S = m.layer_state_size
    assert all(np.array_equal(b, st[:, l * S:(l + 1) * S]) and np.shares_memory(b, st)
               for l, b in enumerate(blocks))
    if cell == "momentum":
        assert all(np.all(d["b_g"] == MomentumRNN.GATE_BIAS_INIT) for d in pl)
    if cell == "lstm":
        assert all(np.all(d["b_f"] == 1.0) for d in pl)
    r = repr(m)
    assert "n_layers=3" in r and "embed_dim=3" in r and "dropout" not in r
    assert "dropout=0.5" in repr(make(cell, D, H, 2, dropout=0.5))


# ------------------------------------------------------------ 6. bad args
def test_bad_constructor_arguments():
    for cls in (RNN, LSTM, GRU, MomentumRNN, RevGRU, RevLSTM):
        for bad in (0, -1, 1.5, True, "2", None, 65, 10 ** 9):
            with pytest.raises(ValueError, match=r"n_layers must be an int in \[1, 64\], got "
                                                 + re.escape(repr(bad))):
                cls(3, 4, 2, n_layers=bad)
        if cls in (RNN, LSTM, GRU):             # the stack arguments are keywords only
            with pytest.raises(TypeError):
                cls(3, 4, 2, "softmax", 2)
        for bad in (1.0, -0.1, float("nan"), 1.5, True, "0.1", None):
            with pytest.raises(ValueError, match=r"dropout must be in \[0\.0, 1\.0\), got "
                                                 + re.escape(repr(bad))):
                cls(3, 4, 2, dropout=bad)
        for bad in (0, -2, 2.0, True):
            with pytest.raises(ValueError, match=r"embed_dim must be a positive int or None, "
                                                 r"got " + re.escape(repr(bad))):
                cls(3, 4, 2, embed_dim=bad)
    for cls in (MDRNN, RevMDRNN):
        with pytest.raises(ValueError, match=f"{cls.__name__} does not stack layers: n_layers "
                                             f"must be 1"):
            cls(3, 4, 2, n_layers=2)
        with pytest.raises(ValueError, match=r"n_layers must be an int in \[1, 64\]"):
            cls(3, 4, 2, n_layers=0)
        cls(3, 4, 2, n_layers=1)                                 # one layer is fine


def test_bad_call_arguments():
    rng = np.random.default_rng(0)
    T, B = 4, 3
    xf = rng.standard_normal((T, B, 5))
    xt = rng.integers(0, 5, (T, B))
    y = rng.integers(0, 2, (T, B))
    for cell in ALL:
        m = make(cell, 5, 4, 2, n_layers=2, embed_dim=3, dropout=0.2)
        theta = m.init_params()
        msg = r"a model with embed_dim=3 reads int token ids"
        with pytest.raises(ValueError, match=msg):
            m.loss_and_grad(theta, xf, y)
        with pytest.raises(ValueError, match=msg):
            m.loss(theta, xf, y)
        with pytest.raises(ValueError, match=msg):
            m.hvp(theta, xf, y, np.zeros(m.size))
        with pytest.raises(ValueError, match=msg):
            m.predict(theta, xf)
        with pytest.raises(ValueError, match=msg):
            m.final_state(theta, xf)
        m0 = make(cell, 5, 4, 2, n_layers=2, embed_dim=3)           # dropout 0: still checked
        for model in (m, m0):
            for bad in (-1, "a", 1.5, True):
                with pytest.raises(ValueError, match=r"dropout_seed must be an int >= 0, got "
                                                     + re.escape(repr(bad))):
                    model.loss_and_grad(theta, xt, y, dropout_seed=bad)
                with pytest.raises(ValueError, match=r"dropout_seed must be an int >= 0"):
                    model.loss(theta, xt, y, dropout_seed=bad)
                with pytest.raises(ValueError, match=r"dropout_seed must be an int >= 0"):
                    model.hvp(theta, xt, y, np.zeros(m.size), dropout_seed=bad)
        # initial_state: one layer's width, or a layer too many, is not a stack's state
        for width in (m.layer_state_size, 3 * m.layer_state_size, m.state_size + 1):
            bad = np.zeros((B, width))
            msg = re.escape(f"initial_state must be float of shape (B, state_size) = "
                            f"({B}, {m.state_size}), got float64 ({B}, {width})")
            with pytest.raises(ValueError, match=msg):
                m.loss_and_grad(theta, xt, y, initial_state=bad)
            with pytest.raises(ValueError, match=msg):
                m.final_state(theta, xt, initial_state=bad)
            with pytest.raises(ValueError, match=msg):
                m.predict(theta, xt, initial_state=bad)
        # a right-width state is fine
        m.loss_and_grad(theta, xt, y, initial_state=np.zeros((B, m.state_size)))
    # the grids: no input gradients
    for cls in (MDRNN, RevMDRNN):
        g = cls(3, 4, 2)
        xg = rng.standard_normal((2, 3, B, 3))
        yg = rng.integers(0, 2, (2, 3, B))
        with pytest.raises(ValueError, match=f"input_grad=True is not available for "
                                             f"{cls.__name__}"):
            g.loss_and_grad(g.init_params(), xg, yg, input_grad=True)
        g.loss_and_grad(g.init_params(), xg, yg, input_grad=False)     # fine


# ----------------------------------------------------------- 7. regression
#: Names, shapes (n_in=5, H=4, n_out=3), groups and inits of one layer as before the
#: stacks (commit 1077040).
ONE_LAYER = {
    "rnn": [("V", (5, 4), "input", "uniform"), ("W", (4, 4), "recurrent", "uniform"),
            ("b_h", (4,), "bias", "zeros")],
    "lstm": [("W_x", (5, 16), "input", "uniform"), ("W_h", (4, 16), "recurrent", "uniform"),
             ("b_f", (4,), "bias", "ones"), ("b_iog", (12,), "bias", "zeros")],
    "gru": [("W_x", (5, 12), "input", "uniform"), ("W_h", (4, 12), "recurrent", "uniform"),
            ("b", (12,), "bias", "zeros")],
    "momentum": [("V", (5, 8), "input", "uniform"), ("W", (4, 8), "recurrent", "uniform"),
                 ("b", (4,), "bias", "zeros"), ("b_g", (4,), "bias", "zeros")],
    "revgru": [("V", (5, 12), "input", "uniform"), ("W1", (2, 4), "recurrent", "uniform"),
               ("Wg1", (2, 2), "recurrent", "uniform"), ("W2", (2, 4), "recurrent", "uniform"),
               ("Wg2", (2, 2), "recurrent", "uniform"), ("b", (12,), "bias", "zeros")],
    "revlstm": [("V", (5, 20), "input", "uniform"), ("W1", (2, 10), "recurrent", "uniform"),
                ("W2", (2, 10), "recurrent", "uniform"), ("b", (20,), "bias", "zeros")],
}
@pytest.mark.parametrize("cell", sorted(ONE_LAYER))
def test_one_layer_keeps_the_old_layout(cell):
    m = make(cell, 5, 4, 3)
    specs = [(s.name, s.shape, s.group, s.init) for s in m.layout.specs]
    assert specs == ONE_LAYER[cell] + [("U", (4, 3), "output", "uniform"),
                                       ("b_y", (3,), "output", "zeros")]
    assert m.layer_state_size == m.state_size
    views = m.params(m.init_params())
    assert m.layer_params(views) == [views]
    # the same draws in the same order as before: one uniform(-1/sqrt(fan_in), ..) block
    # after another from default_rng(seed) (no stored hashes: they would pin NumPy's streams)
    rng = np.random.default_rng(3)
    expect = []
    for name, shape, group, init in ONE_LAYER[cell] + [("U", (4, 3), "output", "uniform"),
                                                       ("b_y", (3,), "output", "zeros")]:
        if init == "uniform":
            lim = 1.0 / np.sqrt(shape[0])
            expect.append(rng.uniform(-lim, lim, size=shape).ravel())
        else:
            expect.append(np.full(int(np.prod(shape)), 1.0 if init == "ones" else 0.0))
    got = m.init_params(seed=3)
    if cell == "momentum":
        expect[3][:] = -2.0                       # MomentumRNN sets b_g = -2 after the draws
    assert np.array_equal(got, np.concatenate(expect))
    if cell == "lstm":
        assert m.layout.names == ("W_x", "W_h", "b_f", "b_iog", "U", "b_y")
    # one layer with an embedding: the table first, the cell's names unprefixed
    e = make(cell, 5, 4, 3, embed_dim=2)
    assert e.layout.names == ("embed",) + m.layout.names
    assert e.layout.groups[0] == "embed" and "layer0" not in e.layout.groups


@pytest.mark.parametrize("cell", ALL)
def test_explicit_defaults_give_the_same_bits(cell):
    T, B = 6, 2
    rng = np.random.default_rng(10)
    base = make(cell, 5, 4, 3)
    expl = make(cell, 5, 4, 3, n_layers=1, embed_dim=None, dropout=0.0)
    assert repr(base) == repr(expl)
    theta = base.init_params(seed=2)
    assert np.array_equal(theta, expl.init_params(seed=2))
    for x in (rng.integers(0, 5, (T, B)), rng.standard_normal((T, B, 5))):
        y = rng.integers(0, 3, (T, B))
        s0 = fixed_point(0.3 * rng.standard_normal((B, base.state_size)))
        v = rng.standard_normal(theta.size)
        a = base.loss_and_grad(theta, x, y, initial_state=s0, return_stats=True)
        b = expl.loss_and_grad(theta, x, y, initial_state=s0, return_stats=True, dropout_seed=7)
        c = expl.loss_and_grad(theta, x, y, initial_state=s0, return_stats=True, dropout_seed=7,
                               input_grad=True)
        for r in (b, c):
            assert a[0] == r[0] and np.array_equal(a[1], r[1])
            assert np.array_equal(a[2].final_state, r[-1].final_state)
            assert a[2].stored_bytes == r[-1].stored_bytes
        assert base.loss(theta, x, y, initial_state=s0) == \
            expl.loss(theta, x, y, initial_state=s0, dropout_seed=7)
        assert np.array_equal(base.hvp(theta, x, y, v, initial_state=s0),
                              expl.hvp(theta, x, y, v, initial_state=s0, dropout_seed=7))
        assert np.array_equal(base.predict(theta, x, initial_state=s0),
                              expl.predict(theta, x, initial_state=s0))
        assert np.array_equal(base.final_state(theta, x, initial_state=s0),
                              expl.final_state(theta, x, initial_state=s0))


@pytest.mark.parametrize("cell", ALL)
def test_input_grads_of_one_layer_match_reference(cell):
    """input_grad on the single-layer model (float inputs): dL/dx and dL/dstate0."""
    T, B = 5, 2
    rng = np.random.default_rng(12)
    m = make(cell, 3, 4, 3)
    theta = m.init_params(seed=1)
    x, y = rng.standard_normal((T, B, 3)), rng.integers(0, 3, (T, B))
    s0 = fixed_point(0.3 * rng.standard_normal((B, m.state_size)))
    loss, grad, ig, st = m.loss_and_grad(theta, x, y, initial_state=s0, input_grad=True,
                                         return_stats=True)
    assert isinstance(st, rt.BPTTStats)
    deltas = None
    if isinstance(m, ReversibleModel):
        deltas = offsets(m, theta, x, trajectory(m, theta, x, s0, None), None)
    assert abs(ref_loss(m, theta, x, y, s0, None, deltas) - loss) <= 1e-12 * loss
    dx = cs_partials(lambda xx: ref_loss(m, theta, xx, y, s0, None, deltas), x)
    ds = cs_partials(lambda ss: ref_loss(m, theta, x, y, ss, None, deltas), s0)
    assert rel_err(ig.x, dx) <= 1e-12 and rel_err(ig.initial_state, ds) <= 1e-12
    # no initial state: the gradient with respect to the zeros it stands for
    _, _, ig0 = m.loss_and_grad(theta, x, y, input_grad=True)
    _, _, igz = m.loss_and_grad(theta, x, y, input_grad=True,
                                initial_state=np.zeros((B, m.state_size)))
    assert np.array_equal(ig0.initial_state, igz.initial_state)
    assert np.abs(ig0.initial_state).max() > 0


def test_stack_state_and_input_messages_say_what_to_fix():
    m = RevLSTM(5, 8, 5, n_layers=2)
    with pytest.raises(ValueError, match=r"state must have shape \(B, state_size\) = \(B, 32\) "
                                         r"\(n_layers 2 x layer_state_size 16\), got \(3, 5\)"):
        m.layer_states(np.zeros((3, 5)))
    theta = m.init_params()
    x = np.zeros((4, 3), dtype=int)
    y = np.zeros((4, 3), dtype=int)
    with pytest.raises(ValueError, match=r"\(3, 32\), got float64 \(3, 16\); state_size = "
                                         r"n_layers \(2\) x layer_state_size \(16\)"):
        m.loss_and_grad(theta, x, y, initial_state=np.zeros((3, 16)))
    big = np.zeros((3, 32))
    big[0, 20] = 5e9                                   # column 20: layer 1
    with pytest.raises(rt.FixedPointError, match=r"at index \(0, 20\) \(layer 1 of 2\)"):
        m.loss_and_grad(theta, x, y, initial_state=big)
    with pytest.raises(ValueError, match="input_grad must be True or False, got 'yes'"):
        m.loss_and_grad(theta, x, y, input_grad="yes")
    e = LSTM(5, 4, 5, embed_dim=3)
    with pytest.raises(ValueError, match=r"reads int token ids \(T, B\) in \[0, n_in=5\), got "
                                         r"dtype float64 \(cast token ids with x.astype\(int\)"):
        e.loss_and_grad(e.init_params(), np.zeros((5, 2)), np.zeros((5, 2), dtype=int))


def window_fault_messages(m, layer, theta, x, y, dseed):
    """Per fault of :func:`_faults`, ``(kind, message)`` of the ReversalError raised when it
    flips layer ``layer``'s kept state or buffer streams before the window kernels' backward
    pass (through ``m._fault_hook``, in the first row group: rows 0..2 need ``B >= 5``)."""
    for kind, fault in _faults(layer).items():
        def hook(when, run, fault=fault):
            if when == "before" and run.row0 == 0:
                fault(run.layer_q(layer), run.layer_buffer(layer))
        m._fault_hook = hook
        try:
            with pytest.raises(rt.ReversalError) as info:
                m.loss_and_grad(theta, x, y, dropout_seed=dseed)
        finally:
            del m._fault_hook
        yield kind, str(info.value)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_a_fault_in_the_window_kernels_names_the_layer(layer):
    """RevLSTM's whole-window kernels: a flipped bit in layer ``layer``'s kept state or
    buffer streams (before the backward pass, so the layers above read it first) raises
    a ReversalError naming that layer."""
    L, T, B = 3, 30, 5
    m = RevLSTM(5, 6, 5, n_layers=L, embed_dim=3, dropout=0.25)
    assert m.window_kernels
    theta = m.init_params(seed=1)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, (T, B)), rng.integers(0, 5, (T, B))
    for kind, msg in window_fault_messages(m, layer, theta, x, y, 6):
        assert msg.startswith(f"RevLSTM layer {layer} (of {L}):"), (kind, msg)


def test_window_kernels_agree_with_the_python_driver():
    """RevLSTM through the whole-window kernels against the per-step Python driver (the
    reference), in both BPTT modes, with 1-3 layers, one-hot / embedded tokens or float
    inputs, with and without dropout: the same bits for the loss, the input gradients and
    the final state (the fixed-point trajectory and the backpropagated state gradients are
    the same computation); the parameter gradient to 1e-13 relative (the kernels sum the
    weight gradients once per 32-step chunk, the reference step by step)."""
    rng = np.random.default_rng(5)
    for L, emb, fl in ((1, None, False), (2, 4, False), (3, None, True), (2, None, True)):
        m = RevLSTM(5, 6, 5, n_layers=L, embed_dim=emb, dropout=0.3,
                    loss="mse" if fl and L == 3 else "softmax")
        theta = m.init_params(1)
        T, B = 37, 3                           # more than one kernel chunk (32 steps)
        x = rng.standard_normal((T, B, 5)) if fl else rng.integers(0, 5, (T, B))
        y = (rng.standard_normal((B, 5)) if m.loss_kind == "mse"
             else rng.integers(0, 5, (T, B)))
        s0 = 0.3 * rng.standard_normal((B, m.state_size))
        for mode in ("reversible", "standard"):
            for dseed in (None, 7):
                out = []
                for wk in (True, False):
                    m.window_kernels = wk
                    out.append(m.loss_and_grad(theta, x, y, bptt=mode, dropout_seed=dseed,
                                               initial_state=s0, input_grad=True,
                                               return_stats=True))
                (la, ga, ia, sa), (lb, gb, ib, sb) = out
                assert la == lb
                assert np.abs(ga - gb).max() <= 1e-13 * np.abs(gb).max()
                assert np.array_equal(ia.initial_state, ib.initial_state)
                assert (ia.x is None) == (ib.x is None)
                if ia.x is not None:
                    assert np.array_equal(ia.x, ib.x)
                assert np.array_equal(sa.final_state, sb.final_state)
                assert sa.stored_bytes == sb.stored_bytes
                # a sum of the streams' counts, over one array or per layer: float association
                assert sa.info_bits == pytest.approx(sb.info_bits, rel=1e-13)
