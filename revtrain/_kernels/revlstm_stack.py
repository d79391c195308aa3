"""Whole-window kernels of a RevLSTM stack: the time loop, with the layers inside, in Numba.

One call runs steps ``t0 .. t1-1`` of every layer forward in fixed point
(:func:`stack_forward`), or undoes them top-down, recomputes them in float and
backpropagates (:func:`stack_backward`). Python validates, allocates the
workspaces and the buffer room for a chunk of steps, and reads the results.
A run alone in its call splits the backward into two stages that run on two
threads, chunk after chunk (:meth:`revtrain.models.window.WindowRun.backward`):
:func:`stack_undo` undoes a chunk and keeps its gates, states and inputs,
:func:`stack_backprop` backpropagates the chunk before it from what was kept,
with the same operations as :func:`stack_backward`.

Layouts (``L`` layers, ``B`` rows, ``H = 2 Hh`` units per layer):

* ``q`` int64 ``(L, 4, B, Hh)``: the fixed-point parts ``[h1, h2, c1, c2]`` of
  every layer (contiguous ``(B, Hh)`` blocks); ``sn`` (float, the run's dtype) of the same
  shape holds the float state after the current step in the backward pass.
* The information buffer has ``L * B`` streams: layer ``l`` uses streams
  ``l*B .. (l+1)*B - 1``.
* Parameters: ``V0`` (D0, 5H) for layer 0; per layer, Numba typed Lists (``W1s[l]``,
  views of ``theta`` in float64): ``Vs`` of (H, 5H) for layers 1.. (one (1, 5H)
  stand-in for a single layer), ``W1s``, ``W2s`` of (Hh, 5Hh), ``bs`` of (5H,);
  gradients ``gV0``, ``gVs``, ... alike (float64: views of the gradient, added into).
* Inputs: ``xtok`` = ``(ids, c0)``: the run's token ids ``ids[t, c0 + r]`` of the batch's
  int64 ``(T, B_total)`` (``mode_in = 0``: one-hot,
  ``1``: embedding rows ``E[x] * m_emb``) or ``xflt`` float ``(T, B, D0)``
  (``mode_in = 2``). Dropout masks ``m_btw`` ``(L-1, B, H)`` (one layer: a (1, 1, 1) stand-in) and
  ``m_top`` ``(B, H)`` are all ones without dropout.

Every step does exactly the operations of the Python cell
(:class:`revtrain.models.revlstm.RevLSTM`) in the same order, with the same
element kernels, so its results equal those of the Python driver.

Errors are returned, not raised: ``(t, layer, part, code)`` with ``code = -1``
when fine, else the flat ``(row, unit)`` index of the element; ``part`` is
0..3 for ``c1, h1, c2, h2``.
"""
from numba import njit

from ._options import NJIT_OPTS, ELEMENT_OPTS
from .revlstm import revlstm_gates, revlstm_quant_c, revlstm_quant_h, revlstm_cell, revlstm_back
from .quantize import forget_add, forget_add_undo
from .gemm import dot_rows, dot_rows_t, add_tn_product
from .gemm_vec import add_column_sums
from .window import (to_float, project, head_step, pass_down,
                     chunk_common_grads, copy_cols, copy_rows, add_rows, keep_step,
                     state_float)

#: Part indices in ``q``: h1, h2, c1, c2.
H1, H2, C1, C2 = 0, 1, 2, 3
#: A half's gates ``g`` (5, B, Hh) hold, in this order: ``i``, ``sigmoid(A_f)``, ``o``,
#: ``sigmoid(A_p)``, ``g``. The floored gates ``f = floor + (1 - floor) sigmoid(A_f)`` and
#: ``p`` go to a scratch ``fp`` (2, B, Hh) where they are used, and are recomputed from the
#: sigmoids for the backward (:func:`_gate_rows`, the same bits): 5 arrays per half kept
#: per step instead of 7.
GATE_ROWS = 5


@njit(**ELEMENT_OPTS)
def _half_gates(half, ql, P, W, b, floor, inv_scale, o, A, g, fp):
    """Gates of half ``half`` (0 or 1) from the other half's current fixed-point ``h``.

    ``g`` (5, B, Hh) receives ``i, sf, o, sp, g`` (:data:`GATE_ROWS`), ``fp`` (2, B, Hh) the
    floored ``f, p``; ``o`` (B, Hh) the other half's float h.
    """
    Hh = o.shape[1]
    to_float(ql[H2 if half == 0 else H1], inv_scale, o)
    dot_rows(o, W, A)
    revlstm_gates(A, P, b, half * 5 * Hh, floor, g[0], fp[0], g[1], g[2], fp[1], g[3], g[4])


@njit(**ELEMENT_OPTS)
def _gate_rows(g, floor, fp):
    """A half's 7 gate arrays (``i, f, sf, o, p, sp, g``, each (B, Hh)) from its gates ``g``
    (5, B, Hh, :data:`GATE_ROWS`), with ``f`` and ``p`` recomputed into ``fp`` (2, B, Hh) by
    the expression of :func:`~revtrain._kernels.revlstm.revlstm_gates` (its sigmoids are
    stored unrounded: its arguments are all of the gates' dtype here), so the same bits."""
    B, Hh = fp.shape[1], fp.shape[2]
    c1 = 1.0 - floor
    for r in range(B):
        for j in range(Hh):
            fp[0, r, j] = floor + c1 * g[1, r, j]
            fp[1, r, j] = floor + c1 * g[3, r, j]
    return g[0], fp[0], g[1], g[2], fp[1], g[3], g[4]


@njit(**ELEMENT_OPTS)
def layer_forward(ql, P, W1, W2, b, floor, D, nmin, scale, inv_scale, st, ct, wd, inf, log2,
                  o, A, g, fp, n, inc):
    """One fixed-point step of one layer (both halves); returns ``(part, code)``.
    ``g`` (5, B, Hh), ``fp`` (2, B, Hh): the gates' scratch (:func:`_half_gates`)."""
    for half in range(2):
        W = W1 if half == 0 else W2
        c = ql[C1 + half]
        h = ql[H1 + half]
        _half_gates(half, ql, P, W, b, floor, inv_scale, o, A, g, fp)
        revlstm_quant_c(g[0], fp[0], g[4], D, nmin, scale, n, inc)
        code = forget_add(c, n, inc, D, st, ct, wd, inf, log2)
        if code >= 0:
            return 2 * half, code
        revlstm_quant_h(c, inv_scale, g[2], fp[1], D, nmin, scale, n, inc)
        code = forget_add(h, n, inc, D, st, ct, wd, inf, log2)
        if code >= 0:
            return 2 * half + 1, code
    return 0, -1


@njit(**ELEMENT_OPTS)
def layer_undo(ql, P, W1, W2, b, floor, D, nmin, scale, inv_scale, st, ct, wd, inf, log2,
               o, A, g1, g2, fp, n, inc):
    """Undo one step of one layer exactly (half 2, then half 1); the gates stay in ``g1``, ``g2``
    (5, B, Hh each, :data:`GATE_ROWS`; ``fp`` (2, B, Hh): scratch).

    Returns ``(part, code)``.
    """
    for hh in range(2):
        half = 1 - hh
        W = W1 if half == 0 else W2
        g = g1 if half == 0 else g2
        c = ql[C1 + half]
        h = ql[H1 + half]
        _half_gates(half, ql, P, W, b, floor, inv_scale, o, A, g, fp)
        revlstm_quant_h(c, inv_scale, g[2], fp[1], D, nmin, scale, n, inc)
        code = forget_add_undo(h, n, inc, D, st, ct, wd, inf, log2)
        if code >= 0:
            return 2 * half + 1, code
        revlstm_quant_c(g[0], fp[0], g[4], D, nmin, scale, n, inc)
        code = forget_add_undo(c, n, inc, D, st, ct, wd, inf, log2)
        if code >= 0:
            return 2 * half, code
    return 0, -1


@njit(**NJIT_OPTS)
def stack_forward(t0, t1, xtok, xflt, mode_in, E, m_emb, V0, Vs, W1s, W2s, bs, m_btw, q,
                  bst, bct, bwd, binf, log2, D, nmin, scale, inv_scale, floor, store, s0, inp0,
                  inpH, P, o, A, g, fp, n, inc):
    """Steps ``t0 .. t1-1`` of every layer in fixed point (layers 0..L-1 per step).

    ``store`` (., L, 4, B, Hh) int64 receives the state after step ``t`` at row
    ``t + 1 - s0`` when it has more than one row (standard mode: ``s0 = 0``; a
    forward-only chunk: ``s0 = t0``), else is not touched.
    ``inp0`` (B, D0), ``inpH`` (B, H): the layers' float inputs. Returns ``(t, layer, part, code)``.
    """
    L, B = q.shape[0], q.shape[2]
    keep = store.shape[0] > 1
    for t in range(t0, t1):
        for l in range(L):
            project(t, l, xtok, xflt, mode_in, E, m_emb, V0, Vs, q, 2, m_btw, inv_scale, inp0,
                    inpH, P)
            r0, r1 = l * B, (l + 1) * B
            part, code = layer_forward(q[l], P, W1s[l], W2s[l], bs[l], floor, D, nmin, scale,
                                       inv_scale, bst[r0:r1], bct[r0:r1], bwd[r0:r1],
                                       binf[r0:r1], log2, o, A, g, fp, n, inc)
            if code >= 0:
                return t, l, part, code
            if keep:
                store[t + 1 - s0, l] = q[l]
    return t1, 0, 0, -1


@njit(**NJIT_OPTS)
def stack_backward(t0, t1, T, reverse, grads, xtok, xflt, mode_in, E, m_emb, V0, Vs, W1s, W2s, bs,
                   m_btw, m_top, q, store, bst, bct, bwd, binf, log2, D, nmin, scale, inv_scale,
                   floor, U, by, softmax, labels, target, lscale, per_step,
                   sn, sp, ds, gE, gV0, gVs, gW1s, gW2s, gbs, gU, gby, dX, want_dx,
                   inp0, inpH, P, dx0, dxH, o, A, g1, g2, fp, n, inc, tc, htop, dH, work, Ob,
                   dPb, Xb0, XbH, terms):
    """Steps ``t1-1 .. t0`` backwards: per step, layers top-down: undo (``reverse``) or load
    the stored state, recompute in float, output layer on the top, backpropagate.

    ``sn`` (L, 4, B, Hh) float holds each layer's float state after the current step
    on entry (and before ``t0`` on exit); ``ds`` the gradient with respect to it.
    The loss goes to ``terms`` (steps with a target, B) float64 as per-row terms
    (:func:`~revtrain._kernels.window.head_step`), summed by the caller.
    The weight gradients, the output layer's included (``htop``, ``work``: the chunk's
    rows, :func:`~revtrain._kernels.window.head_step`), are summed once per call over
    the chunk's steps (``Ob``, ``dPb``, ``Xb0``, ``XbH`` hold the chunk's inputs and pre-activation
    gradients), so they agree with the Python driver's step-by-step sums to
    rounding, not bit for bit; the loss, the trajectory and the gradients
    with respect to the states and inputs are the same bits.
    Returns ``(t, layer, part, code)``.
    With ``grads`` False the chunk's parameter gradients are left in the chunk buffers
    (``Ob``, ``dPb``, ``Xb0``, ``XbH``, ``dx0``, ``htop``, ``work``) for the caller to add
    with :func:`chunk_grads` when its turn comes (two row groups adding into one gradient).
    """
    L, B = q.shape[0], q.shape[2]
    for tt in range(t1 - 1, t0 - 1, -1):
        for l in range(L - 1, -1, -1):
            project(tt, l, xtok, xflt, mode_in, E, m_emb, V0, Vs, q, 2, m_btw, inv_scale, inp0,
                    inpH, P)
            s0, s1 = l * B, (l + 1) * B
            st0, st1 = (store[tt, l], store[tt + 1, l]) if not reverse else (q[l], q[l])
            dP = dPb[l, tt - t0]          # the step's dL/dP, in the chunk's rows
            part, code = _layer_back(
                tt, tt - t0, T, l == L - 1, reverse, q[l], st0, st1, P, W1s[l], W2s[l], bs[l],
                floor, D, nmin, scale, inv_scale, bst[s0:s1], bct[s0:s1], bwd[s0:s1],
                binf[s0:s1], log2, o, A, g1, g2, fp, n, inc, tc, sp[l], sn[l], ds[l],
                m_top, U, by, softmax, labels, target, lscale, per_step, htop, work, dH,
                terms, dP, Ob[l])
            if code >= 0:
                return tt, l, part, code
            pass_down(tt, tt - t0, l, mode_in, dP, V0, Vs, inp0, inpH, m_btw,
                      2, ds, dX, want_dx, dx0, dxH, Xb0, XbH)
    if grads:
        chunk_grads(t1 - t0, t0, Ob, dPb, gW1s, gW2s, gbs, mode_in, xtok, m_emb, Xb0, XbH, dx0,
                    htop, work, gV0, gVs, gE, gU, gby)
    return t0, 0, 0, -1


@njit(**ELEMENT_OPTS)
def _layer_back(tt, i, T, top, reverse, ql, st0, st1, P, W1, W2, b, floor, D, nmin,
                scale, inv_scale, st, ct, wd, inf, log2, o, A, g1, g2, fp, n, inc, tc, spl, snl,
                dsl, m_top, U, by, softmax, labels, target, lscale, per_step, htop, work, dH,
                terms, dP, Obl):
    """One layer of :func:`stack_backward` at step ``tt`` (row ``i`` of the chunk): undo it
    (``reverse``) or load it (``st0``, ``st1``: the stored states before and after), recompute
    in float, the output layer when ``top``, backpropagate into ``dsl`` and ``dP``.

    Compiled without the Numba runtime: the views it takes of its arrays cost no
    reference counting (about a tenth of a step's time at ``B = 1``).
    ``spl`` receives the state before the step, ``snl`` (the state after it on entry) too
    on exit. Returns ``(part, code)``.
    """
    if reverse:
        part, code = layer_undo(ql, P, W1, W2, b, floor, D, nmin, scale, inv_scale, st, ct, wd,
                                inf, log2, o, A, g1, g2, fp, n, inc)
        if code >= 0:
            return part, code
    else:
        for k in range(4):
            copy_rows(st0[k], ql[k])
        _half_gates(1, st1, P, W2, b, floor, inv_scale, o, A, g2, fp)
        _half_gates(0, ql, P, W1, b, floor, inv_scale, o, A, g1, fp)
    _layer_float_back(tt, i, T, top, ql, g1, g2, floor, inv_scale, tc, spl, snl, dsl, m_top, U,
                      by, softmax, labels, target, lscale, per_step, htop, work, dH, terms,
                      dP, Obl, W1, W2, o, A, fp)
    return 0, -1


@njit(**ELEMENT_OPTS)
def _layer_float_back(tt, i, T, top, ql, g1, g2, floor, inv_scale, tc, spl, snl, dsl, m_top, U,
                      by, softmax, labels, target, lscale, per_step, htop, work, dH, terms,
                      dP, Obl, W1, W2, o, A, fp):
    """The float part of a layer's backward step: from the state before the step ``ql``
    (fixed-point, or as float: :func:`~revtrain._kernels.window.state_float`) and the step's
    gates ``g1``, ``g2`` (5, B, Hh each: :func:`_gate_rows`), recompute the step in
    float, run the output layer when ``top``, backpropagate into ``dsl`` and ``dP``; ``o``,
    ``A``, ``fp``: scratch."""
    Hh = ql.shape[2]
    for k in range(4):
        state_float(ql[k], inv_scale, spl[k])
    # float recompute (real: the fixed-point results stand; tanh(c_new) is kept)
    gi, gf, sf, go, gp, sp, gg = _gate_rows(g1, floor, fp)
    revlstm_cell(spl[C1], spl[H1], gi, gf, go, gp, gg, snl[C1], snl[H1], tc[0])
    gi, gf, sf, go, gp, sp, gg = _gate_rows(g2, floor, fp)
    revlstm_cell(spl[C2], spl[H2], gi, gf, go, gp, gg, snl[C2], snl[H2], tc[1])
    if top:
        head_step(tt, i, T, per_step, snl, 2, m_top, U, by, softmax, labels, target, lscale,
                  htop, work, dH, dsl, terms)
    # backpropagate: half 2, then half 1
    for hh in range(2):
        half = 1 - hh
        g = g1 if half == 0 else g2
        mine, other = (H1, H2) if half == 0 else (H2, H1)
        # the other half's h this half read: h2 before the step (half 0), new h1 (half 1)
        ov = spl[H2] if half == 0 else snl[H1]
        off = half * 5 * Hh
        gi, gf, sf, go, gp, sp, gg = _gate_rows(g, floor, fp)
        revlstm_back(gi, gf, sf, go, gp, sp, gg, tc[half], spl[C1 + half], spl[mine], floor,
                     dsl[mine], dsl[C1 + half], dP, off)
        copy_cols(dP, off, A)              # dL/dA of this half; A: free scratch here
        copy_rows(ov, Obl[half, i])        # weight gradients: one product per chunk
        dot_rows_t(A, W1 if half == 0 else W2, o)      # A @ W.T; o: free scratch (B, Hh)
        add_rows(o, dsl[other])
    for k in range(4):
        copy_rows(spl[k], snl[k])


@njit(**NJIT_OPTS)
def stack_undo(t0, t1, xtok, xflt, mode_in, E, m_emb, V0, Vs, W1s, W2s, bs, m_btw, q, bst, bct,
               bwd, binf, log2, D, nmin, scale, inv_scale, floor, inp0, inpH, P, o, A, fp,
               n, inc, Gs, Qs, X0s, XHs):
    """The undo side of a pipelined backward (:meth:`~revtrain.models.window.WindowRun.backward`):
    steps ``t1-1 .. t0``, layers top-down, undone exactly, keeping what
    :func:`stack_backprop` needs of step ``tt`` (``i = tt - t0``) and layer ``l``:
    its gates in ``Gs[l, i]`` (2, 5, B, Hh, :data:`GATE_ROWS`: the undo writes them there), the
    state before it in ``Qs[l, i]`` (4, B, Hh, as float:
    :func:`~revtrain._kernels.window.keep_step`) and the layer's float input in ``X0s[i]``
    (layer 0, float or embedding inputs) or ``XHs[l - 1, i]``.

    The same operations as the undo of :func:`stack_backward`. Returns ``(t, layer, part, code)``.
    """
    L, B = q.shape[0], q.shape[2]
    for tt in range(t1 - 1, t0 - 1, -1):
        i = tt - t0
        for l in range(L - 1, -1, -1):
            project(tt, l, xtok, xflt, mode_in, E, m_emb, V0, Vs, q, 2, m_btw, inv_scale, inp0,
                    inpH, P)
            s0, s1 = l * B, (l + 1) * B
            part, code = layer_undo(q[l], P, W1s[l], W2s[l], bs[l], floor, D, nmin, scale,
                                    inv_scale, bst[s0:s1], bct[s0:s1], bwd[s0:s1], binf[s0:s1],
                                    log2, o, A, Gs[l, i, 0], Gs[l, i, 1], fp, n, inc)
            if code >= 0:
                return tt, l, part, code
            keep_step(l, mode_in, q[l], inv_scale, inp0, inpH, Qs[l, i], X0s[i],
                      XHs[max(l - 1, 0), i])
    return t0, 0, 0, -1


@njit(**NJIT_OPTS)
def stack_backprop(t0, t1, T, xtok, mode_in, m_emb, m_btw, m_top, inv_scale, floor, U, by,
                   softmax, labels, target, lscale, per_step, sn, sp, ds, gE, gV0, gVs, gW1s,
                   gW2s, gbs, gU, gby, dX, want_dx, dP, dx0, dxH, o, A, fp, tc, htop, dH, work,
                   Ob, dPb, Xb0, XbH, terms, V0, Vs, W1s, W2s, Gs, Qs, X0s, XHs):
    """The backpropagation side of a pipelined backward: steps ``t1-1 .. t0`` of
    :func:`stack_backward` from the gates, states and inputs :func:`stack_undo` kept, on
    another thread meanwhile undoing the chunk before. The same operations in the same
    order as :func:`stack_backward`, so the same bits.

    ``dPb`` (L, chunk, B, 5H) may be a view of ``Gs``'s memory (the same size: 2 * 5 * Hh
    = 5H per row): step ``i``'s pre-activation gradients overwrite its gates once they
    have been used (:meth:`~revtrain.models.window.WindowRun._undo_slot`)."""
    L = sn.shape[0]
    for tt in range(t1 - 1, t0 - 1, -1):
        i = tt - t0
        for l in range(L - 1, -1, -1):
            _layer_float_back(tt, i, T, l == L - 1, Qs[l, i], Gs[l, i, 0], Gs[l, i, 1], floor,
                              inv_scale, tc, sp[l], sn[l], ds[l], m_top, U, by, softmax,
                              labels, target, lscale, per_step, htop, work, dH, terms, dP, Ob[l],
                              W1s[l], W2s[l], o, A, fp)
            dPb[l, i] = dP
            pass_down(tt, i, l, mode_in, dP, V0, Vs, X0s[i], XHs[max(l - 1, 0), i],
                      m_btw, 2, ds, dX, want_dx, dx0, dxH, Xb0, XbH)
    chunk_grads(t1 - t0, t0, Ob, dPb, gW1s, gW2s, gbs, mode_in, xtok, m_emb, Xb0, XbH, dx0,
                htop, work, gV0, gVs, gE, gU, gby)
    return t0, 0, 0, -1


@njit(**NJIT_OPTS)
def _chunk_weight_grads(k, Ob, dPb, gW1s, gW2s, gbs):
    """Add a chunk's recurrent and bias gradients, one product over its ``k * B`` rows per
    block: ``gW_half += O^T dA_half``, ``gb += sum dP``."""
    L, B, Hh = Ob.shape[0], Ob.shape[3], Ob.shape[4]
    N = k * B
    for l in range(L):
        dP = dPb[l, :k].reshape((N, 10 * Hh))
        add_tn_product(gW1s[l], Ob[l, 0, :k].reshape((N, Hh)), dP, N, 0)
        add_tn_product(gW2s[l], Ob[l, 1, :k].reshape((N, Hh)), dP, N, 5 * Hh)
        add_column_sums(gbs[l], dP, N, 0)


@njit(**NJIT_OPTS)
def chunk_grads(k, t0, Ob, dPb, gW1s, gW2s, gbs, mode_in, xtok, m_emb, Xb0, XbH, dxb0, htop, work,
                gV0, gVs, gE, gU, gby):
    """Add the parameter gradients of a backward chunk of ``k`` steps from ``t0``, from what
    :func:`stack_backward` (``grads=False``) or :func:`stack_backprop` left in the chunk
    buffers: the cell's weights (one product per block), the input weights, the token rows
    and the output layer (:func:`~revtrain._kernels.window.chunk_common_grads`)."""
    _chunk_weight_grads(k, Ob, dPb, gW1s, gW2s, gbs)
    chunk_common_grads(k, t0, mode_in, xtok, m_emb, dPb, Xb0, XbH, dxb0, htop, work, gV0, gVs,
                       gE, gU, gby)
