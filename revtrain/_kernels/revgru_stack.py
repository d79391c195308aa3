"""Whole-window kernels of a RevGRU stack: the time loop, with the layers inside, in Numba.

One call runs steps ``t0 .. t1-1`` of every layer forward in fixed point
(:func:`stack_forward`), or undoes them top-down, recomputes them in float and
backpropagates (:func:`stack_backward`). Python validates, allocates the
workspaces and the buffer room for a chunk of steps, and reads the results
(:mod:`revtrain.models.revgru_window`).

Layouts (``L`` layers, ``B`` rows, ``H = 2 Hh`` units per layer):

* ``q`` int64 ``(L, 2, B, Hh)``: the fixed-point parts ``[h1, h2]`` of every
  layer (contiguous ``(B, Hh)`` blocks); ``sn`` (float, the run's dtype) of the same shape holds
  the float state after the current step in the backward pass.
* The information buffer has ``L * B`` streams: layer ``l`` uses streams
  ``l*B .. (l+1)*B - 1``.
* Parameters: ``V0`` (D0, 3H) for layer 0; per layer, Numba typed Lists (``W1s[l]``,
  views of ``theta`` in float64): ``Vs`` of (H, 3H) for layers 1.., ``W1s``, ``W2s``
  of (Hh, 2Hh) (columns ``[z | r]``), ``Wg1s``, ``Wg2s`` of (Hh, Hh), ``bs`` of (3H,);
  gradients ``gV0``, ``gVs``, ... alike (float64: views of the gradient, added into).
* Inputs: ``xtok`` = ``(ids, c0)``: the run's token ids ``ids[t, c0 + r]`` of the batch's
  int64 ``(T, B_total)`` (``mode_in = 0``: one-hot,
  ``1``: embedding rows ``E[x] * m_emb``) or ``xflt`` float ``(T, B, D0)``
  (``mode_in = 2``). Dropout masks ``m_btw`` ``(L-1, B, H)`` (one layer: a (1, 1, 1) stand-in) and
  ``m_top`` ``(B, H)`` are all ones without dropout.
* Gates of one half: ``g`` (5, B, Hh) holds ``z`` (floored), ``sz`` (its
  sigmoid), ``r``, ``ro = r * o`` and the candidate ``g``.

Every step does exactly the operations of the Python cell
(:class:`revtrain.models.revgru.RevGRU`) in the same order, with the same
element kernels, so its results equal those of the Python driver.

Errors are returned, not raised: ``(t, layer, part, code)`` with ``code = -1``
when fine, else the flat ``(row, unit)`` index of the element; ``part`` is
0 or 1 for ``h1``, ``h2``.
"""
from numba import njit

from ._options import NJIT_OPTS, ELEMENT_OPTS
from .revgru import revgru_gates1, revgru_gates2, revgru_back1, revgru_back2
from .quantize import quantise_convex, forget_add, forget_add_undo
from .gemm import dot_rows, dot_rows_t, add_tn_product
from .gemm_vec import add_column_sums
from .window import (to_float, project, head_step, pass_down,
                     chunk_common_grads, copy_cols, copy_rows, add_rows, keep_step,
                     state_float)

#: Part indices in ``q``: h1, h2.
H1, H2 = 0, 1
#: Gate indices in ``g``: z, sigmoid of z's pre-activation, r, r * o, candidate g.
GZ, GSZ, GR, GRO, GG = 0, 1, 2, 3, 4


@njit(**ELEMENT_OPTS)
def _half_gates(half, ql, P, W, Wg, b, floor, inv_scale, o, A, Gm, g):
    """Gates of half ``half`` (0 or 1) from the other half's current fixed-point ``h``.

    ``g`` (5, B, Hh) receives ``z, sz, r, ro, g``; ``o`` (B, Hh) the other half's float h;
    ``A`` (B, 2Hh) and ``Gm`` (B, Hh) are the products ``o W`` and ``ro Wg``.
    """
    Hh = o.shape[1]
    off = half * 3 * Hh
    to_float(ql[H2 if half == 0 else H1], inv_scale, o)
    dot_rows(o, W, A)
    revgru_gates1(A, P, b, off, floor, o, g[GZ], g[GSZ], g[GR], g[GRO])
    dot_rows(g[GRO], Wg, Gm)
    revgru_gates2(Gm, P, b, off, g[GG])


@njit(**ELEMENT_OPTS)
def layer_forward(ql, P, W1, Wg1, W2, Wg2, b, floor, D, nmin, scale, inv_scale, st, ct, wd, inf,
                  log2, o, A, Gm, g, n, inc):
    """One fixed-point step of one layer (half 1, then half 2); returns ``(part, code)``."""
    for half in range(2):
        W = W1 if half == 0 else W2
        Wg = Wg1 if half == 0 else Wg2
        _half_gates(half, ql, P, W, Wg, b, floor, inv_scale, o, A, Gm, g)
        quantise_convex(g[GZ], g[GG], D, nmin, scale, n, inc)
        code = forget_add(ql[H1 + half], n, inc, D, st, ct, wd, inf, log2)
        if code >= 0:
            return half, code
    return 0, -1


@njit(**ELEMENT_OPTS)
def layer_undo(ql, P, W1, Wg1, W2, Wg2, b, floor, D, nmin, scale, inv_scale, st, ct, wd, inf,
               log2, o, A, Gm, g1, g2, n, inc):
    """Undo one step of one layer exactly (half 2, then half 1); the gates stay in ``g1``, ``g2``.

    Returns ``(part, code)``.
    """
    for hh in range(2):
        half = 1 - hh
        W = W1 if half == 0 else W2
        Wg = Wg1 if half == 0 else Wg2
        g = g1 if half == 0 else g2
        _half_gates(half, ql, P, W, Wg, b, floor, inv_scale, o, A, Gm, g)
        quantise_convex(g[GZ], g[GG], D, nmin, scale, n, inc)
        code = forget_add_undo(ql[H1 + half], n, inc, D, st, ct, wd, inf, log2)
        if code >= 0:
            return half, code
    return 0, -1


@njit(**NJIT_OPTS)
def stack_forward(t0, t1, xtok, xflt, mode_in, E, m_emb, V0, Vs, W1s, Wg1s, W2s, Wg2s, bs, m_btw,
                  q, bst, bct, bwd, binf, log2, D, nmin, scale, inv_scale, floor, store, s0,
                  inp0, inpH, P, o, A, Gm, g, n, inc):
    """Steps ``t0 .. t1-1`` of every layer in fixed point (layers 0..L-1 per step).

    ``store`` (., L, 2, B, Hh) int64 receives the state after step ``t`` at row
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
            part, code = layer_forward(q[l], P, W1s[l], Wg1s[l], W2s[l], Wg2s[l], bs[l], floor,
                                       D, nmin, scale, inv_scale, bst[r0:r1], bct[r0:r1],
                                       bwd[r0:r1], binf[r0:r1], log2, o, A, Gm, g, n, inc)
            if code >= 0:
                return t, l, part, code
            if keep:
                store[t + 1 - s0, l] = q[l]
    return t1, 0, 0, -1


@njit(**NJIT_OPTS)
def stack_backward(t0, t1, T, reverse, grads, xtok, xflt, mode_in, E, m_emb, V0, Vs, W1s, Wg1s,
                   W2s, Wg2s, bs, m_btw, m_top, q, store, bst, bct, bwd, binf, log2, D, nmin,
                   scale, inv_scale, floor, U, by, softmax, labels, target, lscale, per_step,
                   sn, sp, ds, gE, gV0, gVs, gW1s, gWg1s, gW2s, gWg2s, gbs, gU, gby, dX, want_dx,
                   inp0, inpH, P, dx0, dxH, o, A, Gm, g1, g2, n, inc, dAzr, dAg, dRO, do,
                   tmp, htop, dH, work, Ob, ROb, dPb, Xb0, XbH, terms):
    """Steps ``t1-1 .. t0`` backwards: per step, layers top-down: undo (``reverse``) or load
    the stored state and recompute the gates, output layer on the top, backpropagate.

    ``sn`` (L, 2, B, Hh) float holds each layer's float state after the current step
    on entry (and before ``t0`` on exit); ``ds`` the gradient with respect to it.
    The float recompute of a real step changes nothing (the fixed-point state stands,
    the gates are those of the undo or of the stored state), as in the Python cell.
    The loss goes to ``terms`` (steps with a target, B) float64 as per-row terms
    (:func:`~revtrain._kernels.window.head_step`), summed by the caller.
    The weight gradients, the output layer's included (``htop``, ``work``: the chunk's
    rows, :func:`~revtrain._kernels.window.head_step`), are summed once per call over
    the chunk's steps (``Ob``,
    ``ROb`` hold the chunk's ``o`` and ``r * o`` per half, ``dPb`` the pre-activation
    gradients, ``Xb0``, ``XbH`` the inputs), so they agree with the Python driver's
    step-by-step sums to rounding, not bit for bit; the loss, the trajectory and the
    gradients with respect to the states and inputs are the same bits.
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
            r0, r1 = l * B, (l + 1) * B
            st0, st1 = (store[tt, l], store[tt + 1, l]) if not reverse else (q[l], q[l])
            dP = dPb[l, tt - t0]          # the step's dL/dP, in the chunk's rows
            part, code = _layer_back(
                tt, tt - t0, T, l == L - 1, reverse, q[l], st0, st1, P, W1s[l], Wg1s[l],
                W2s[l], Wg2s[l], bs[l], floor, D, nmin,
                scale, inv_scale, bst[r0:r1], bct[r0:r1], bwd[r0:r1], binf[r0:r1], log2, o, A,
                Gm, g1, g2, n, inc, dAzr, dAg, dRO, do, tmp, sp[l], sn[l], ds[l], m_top, U,
                by, softmax, labels, target, lscale, per_step, htop, work, dH, terms, dP,
                Ob[l], ROb[l])
            if code >= 0:
                return tt, l, part, code
            pass_down(tt, tt - t0, l, mode_in, dP, V0, Vs, inp0, inpH, m_btw,
                      2, ds, dX, want_dx, dx0, dxH, Xb0, XbH)
    if grads:
        chunk_grads(t1 - t0, t0, Ob, ROb, dPb, gW1s, gWg1s, gW2s, gWg2s, gbs, mode_in, xtok,
                    m_emb, Xb0, XbH, dx0, htop, work, gV0, gVs, gE, gU, gby)
    return t0, 0, 0, -1


@njit(**ELEMENT_OPTS)
def _layer_back(tt, i, T, top, reverse, ql, st0, st1, P, W1, Wg1, W2, Wg2, b,
                floor, D, nmin, scale, inv_scale, st, ct, wd, inf, log2, o, A, Gm, g1, g2,
                n, inc, dAzr, dAg, dRO, do, tmp, spl, snl, dsl, m_top, U, by, softmax,
                labels, target, lscale, per_step, htop, work, dH, terms, dP, Obl, ROl):
    """One layer of :func:`stack_backward` at step ``tt`` (row ``i`` of the chunk): undo it
    (``reverse``) or load it (``st0``, ``st1``: the stored states before and after), then
    :func:`_layer_float_back`. Compiled without the Numba runtime (see
    :data:`~revtrain._kernels._options.ELEMENT_OPTS`). Returns ``(part, code)``."""
    if reverse:
        part, code = layer_undo(ql, P, W1, Wg1, W2, Wg2, b, floor, D, nmin, scale, inv_scale,
                                st, ct, wd, inf, log2, o, A, Gm, g1, g2, n, inc)
        if code >= 0:
            return part, code
    else:
        for k in range(2):
            copy_rows(st0[k], ql[k])
        _half_gates(1, st1, P, W2, Wg2, b, floor, inv_scale, o, A, Gm, g2)
        _half_gates(0, ql, P, W1, Wg1, b, floor, inv_scale, o, A, Gm, g1)
    _layer_float_back(tt, i, T, top, ql, g1, g2, floor, inv_scale, dAzr, dAg, dRO, do, tmp,
                      spl, snl, dsl, m_top, U, by, softmax, labels, target, lscale,
                      per_step, htop, work, dH, terms, dP, Obl, ROl, W1, Wg1, W2, Wg2)
    return 0, -1


@njit(**ELEMENT_OPTS)
def _layer_float_back(tt, i, T, top, ql, g1, g2, floor, inv_scale, dAzr, dAg, dRO, do, tmp,
                      spl, snl, dsl, m_top, U, by, softmax, labels, target, lscale,
                      per_step, htop, work, dH, terms, dP, Obl, ROl, W1, Wg1, W2, Wg2):
    """The float part of a layer's backward step from the state before it ``ql`` (fixed-point,
    or as float: :func:`~revtrain._kernels.window.state_float`) and its gates ``g1``, ``g2``
    (5, B, Hh): output layer when ``top``, backpropagation
    into ``dsl`` and ``dP`` (the float recompute of a real step changes nothing)."""
    Hh = ql.shape[2]
    for k in range(2):
        state_float(ql[k], inv_scale, spl[k])
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
        off = half * 3 * Hh
        revgru_back1(g[GZ], g[GSZ], g[GG], spl[mine], floor, dsl[mine], dP, off)
        copy_cols(dP, off + 2 * Hh, dAg)
        dot_rows_t(dAg, Wg1 if half == 0 else Wg2, dRO)         # dAg @ Wg.T
        revgru_back2(dRO, g[GR], ov, dP, off, do)
        copy_cols(dP, off, dAzr)
        dot_rows_t(dAzr, W1 if half == 0 else W2, tmp)          # dAzr @ W.T
        add_rows(tmp, do)
        add_rows(do, dsl[other])
        copy_rows(ov, Obl[half, i])        # weight gradients: one product per chunk
        copy_rows(g[GRO], ROl[half, i])
    for k in range(2):
        copy_rows(spl[k], snl[k])


@njit(**NJIT_OPTS)
def stack_undo(t0, t1, xtok, xflt, mode_in, E, m_emb, V0, Vs, W1s, Wg1s, W2s, Wg2s, bs, m_btw,
               q, bst, bct, bwd, binf, log2, D, nmin, scale, inv_scale, floor, inp0, inpH, P, o,
               A, Gm, n, inc, Gs, Qs, X0s, XHs):
    """The undo stage of a pipelined backward (see
    :func:`revtrain._kernels.revlstm_stack.stack_undo`): steps ``t1-1 .. t0`` undone, the
    gates of step ``tt`` (``i = tt - t0``) and layer ``l`` kept in ``Gs[l, i]`` (2, 5, B, Hh),
    the state before it in ``Qs[l, i]`` (2, B, Hh), the layer's input in ``X0s[i]`` /
    ``XHs[l - 1, i]``. Returns ``(t, layer, part, code)``."""
    L, B = q.shape[0], q.shape[2]
    for tt in range(t1 - 1, t0 - 1, -1):
        i = tt - t0
        for l in range(L - 1, -1, -1):
            project(tt, l, xtok, xflt, mode_in, E, m_emb, V0, Vs, q, 2, m_btw, inv_scale, inp0,
                    inpH, P)
            r0, r1 = l * B, (l + 1) * B
            part, code = layer_undo(q[l], P, W1s[l], Wg1s[l], W2s[l], Wg2s[l], bs[l], floor, D,
                                    nmin, scale, inv_scale, bst[r0:r1], bct[r0:r1], bwd[r0:r1],
                                    binf[r0:r1], log2, o, A, Gm, Gs[l, i, 0], Gs[l, i, 1], n,
                                    inc)
            if code >= 0:
                return tt, l, part, code
            keep_step(l, mode_in, q[l], inv_scale, inp0, inpH, Qs[l, i], X0s[i],
                      XHs[max(l - 1, 0), i])
    return t0, 0, 0, -1


@njit(**NJIT_OPTS)
def stack_backprop(t0, t1, T, xtok, mode_in, m_emb, m_btw, m_top, inv_scale, floor, U, by,
                   softmax, labels, target, lscale, per_step, sn, sp, ds, gE, gV0, gVs, gW1s,
                   gWg1s, gW2s, gWg2s, gbs, gU, gby, dX, want_dx, dP, dx0, dxH, dAzr, dAg, dRO,
                   do, tmp, htop, dH, work, Ob, ROb, dPb, Xb0, XbH, terms, V0, Vs, W1s, Wg1s,
                   W2s, Wg2s, Gs, Qs, X0s, XHs):
    """The backpropagation stage of a pipelined backward: steps ``t1-1 .. t0`` of
    :func:`stack_backward` from what :func:`stack_undo` kept; the same operations in the
    same order, so the same bits."""
    L = sn.shape[0]
    for tt in range(t1 - 1, t0 - 1, -1):
        i = tt - t0
        for l in range(L - 1, -1, -1):
            _layer_float_back(tt, i, T, l == L - 1, Qs[l, i], Gs[l, i, 0], Gs[l, i, 1], floor,
                              inv_scale, dAzr, dAg, dRO, do, tmp, sp[l], sn[l], ds[l], m_top, U,
                              by, softmax, labels, target, lscale, per_step, htop, work,
                              dH, terms, dP, Ob[l], ROb[l], W1s[l], Wg1s[l], W2s[l], Wg2s[l])
            dPb[l, i] = dP
            pass_down(tt, i, l, mode_in, dP, V0, Vs, X0s[i], XHs[max(l - 1, 0), i],
                      m_btw, 2, ds, dX, want_dx, dx0, dxH, Xb0, XbH)
    chunk_grads(t1 - t0, t0, Ob, ROb, dPb, gW1s, gWg1s, gW2s, gWg2s, gbs, mode_in, xtok, m_emb,
                Xb0, XbH, dx0, htop, work, gV0, gVs, gE, gU, gby)
    return t0, 0, 0, -1


@njit(**NJIT_OPTS)
def _chunk_weight_grads(k, Ob, ROb, dPb, gW1s, gWg1s, gW2s, gWg2s, gbs):
    """Add a chunk's recurrent and bias gradients, one product over its ``k * B`` rows per
    block: ``gW_half += O^T dA_zr``, ``gWg_half += RO^T dA_g``, ``gb += sum dP``."""
    L, B, Hh = Ob.shape[0], Ob.shape[3], Ob.shape[4]
    N = k * B
    for l in range(L):
        dP = dPb[l, :k].reshape((N, 6 * Hh))
        for half in range(2):
            off = half * 3 * Hh
            O = Ob[l, half, :k].reshape((N, Hh))
            RO = ROb[l, half, :k].reshape((N, Hh))
            if half == 0:
                add_tn_product(gW1s[l], O, dP, N, off)
                add_tn_product(gWg1s[l], RO, dP, N, off + 2 * Hh)
            else:
                add_tn_product(gW2s[l], O, dP, N, off)
                add_tn_product(gWg2s[l], RO, dP, N, off + 2 * Hh)
        add_column_sums(gbs[l], dP, N, 0)


@njit(**NJIT_OPTS)
def chunk_grads(k, t0, Ob, ROb, dPb, gW1s, gWg1s, gW2s, gWg2s, gbs, mode_in, xtok, m_emb, Xb0,
                XbH, dxb0, htop, work, gV0, gVs, gE, gU, gby):
    """Add the parameter gradients of a backward chunk of ``k`` steps from ``t0``, from what
    :func:`stack_backward` (``grads=False``) or :func:`stack_backprop` left in the chunk
    buffers: the cell's weights (one product per block), the input weights, the token rows
    and the output layer (:func:`~revtrain._kernels.window.chunk_common_grads`)."""
    _chunk_weight_grads(k, Ob, ROb, dPb, gW1s, gWg1s, gW2s, gWg2s, gbs)
    chunk_common_grads(k, t0, mode_in, xtok, m_emb, dPb, Xb0, XbH, dxb0, htop, work, gV0, gVs,
                       gE, gU, gby)
