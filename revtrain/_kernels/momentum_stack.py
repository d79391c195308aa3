"""Whole-window kernels of a MomentumRNN stack: the time loop, with the layers inside, in Numba.

One call runs steps ``t0 .. t1-1`` of every layer forward in fixed point
(:func:`stack_forward`), or undoes them top-down, recomputes them in float and
backpropagates (:func:`stack_backward`). Python
(:mod:`revtrain.models.momentum_window`) validates, allocates the workspaces
and the buffer room for a chunk of steps, and reads the results.

Layouts (``L`` layers, ``B`` rows, ``H`` units per layer, ``G = 2H`` columns
``[candidate | gate]`` with the learned gate, ``H`` with a constant one):

* ``q`` int64 ``(L, 2, B, H)``: the fixed-point parts ``[h, v]`` of every
  layer; ``sn`` (float, the run's dtype) of the same shape holds the float state after the
  current step in the backward pass.
* The information buffer has ``L * B`` streams: layer ``l`` uses streams
  ``l*B .. (l+1)*B - 1``.
* Parameters: ``V0`` (D0, G) for layer 0; per layer, Numba typed Lists (``Ws[l]``,
  views of ``theta`` in float64): ``Vs`` of (H, G) for layers 1.., ``Ws`` of (H, G),
  ``bs``, ``bgs`` of (H,) (``bgs`` zeros with a constant gamma); gradients ``gWs``
  of (H, G) and ``gbs`` of (G,) (``[b | b_g]``, adjacent in ``theta``).
* Inputs, dropout masks: as in :mod:`revtrain._kernels.window`.
* Gate workspace ``gt`` (3, B, H): candidate ``g``, gate ``gam``, its sigmoid ``sig``.

Every step does exactly the operations of the Python cell
(:class:`revtrain.models.momentum_rnn.MomentumRNN`) in the same order, with
the same element kernels, so its results equal those of the Python driver.

Errors are returned, not raised: ``(t, layer, part, code)`` with ``code = -1``
when fine, else the flat ``(row, unit)`` index of the element; ``part`` is
0 for ``h``, 1 for ``v``.
"""
from numba import njit

from ._options import NJIT_OPTS, ELEMENT_OPTS
from .momentum_rnn import momentum_gates, leaky_h_inc, momentum_back
from .quantize import quantise_convex, forget_add, forget_add_undo
from .gemm import dot_rows, dot_rows_t, add_tn_product
from .gemm_vec import add_column_sums
from .window import (to_float, project, head_step, pass_down,
                     chunk_common_grads, copy_rows,
                     add_rows, keep_step,
                     state_float)

#: Part indices in ``q``: h, v.
PH, PV = 0, 1


@njit(**ELEMENT_OPTS)
def _gates(hq, P, W, b, bg, floor, gamma, learned, inv_scale, hf, A, gt):
    """Candidate and gate of a step from the fixed-point ``h`` before it (``hq``) and ``P``.

    ``hf`` (B, H) receives ``h`` as float, ``A`` (B, G) ``h @ W``, ``gt`` (3, B, H) ``g, gam, sig``.
    """
    to_float(hq, inv_scale, hf)
    dot_rows(hf, W, A)
    momentum_gates(A, P, b, bg, floor, gamma, learned, gt[0], gt[1], gt[2])


@njit(**ELEMENT_OPTS)
def _h_update(v, nbeta, cbeta, n, inc):
    """Ratios ``n_beta`` and increments ``rint((1 - n_beta/D) v_t)`` of the ``h`` update."""
    leaky_h_inc(v, cbeta, inc)
    B, H = n.shape
    for r in range(B):
        for j in range(H):
            n[r, j] = nbeta


@njit(**ELEMENT_OPTS)
def layer_forward(ql, P, W, b, bg, floor, gamma, learned, nbeta, cbeta, D, nmin, scale,
                  inv_scale, st, ct, wd, inf, log2, hf, A, gt, n, inc):
    """One fixed-point step of one layer (``v``, then ``h``); returns ``(part, code)``."""
    _gates(ql[PH], P, W, b, bg, floor, gamma, learned, inv_scale, hf, A, gt)
    quantise_convex(gt[1], gt[0], D, nmin, scale, n, inc)
    code = forget_add(ql[PV], n, inc, D, st, ct, wd, inf, log2)
    if code >= 0:
        return PV, code
    _h_update(ql[PV], nbeta, cbeta, n, inc)
    code = forget_add(ql[PH], n, inc, D, st, ct, wd, inf, log2)
    if code >= 0:
        return PH, code
    return 0, -1


@njit(**ELEMENT_OPTS)
def layer_undo(ql, P, W, b, bg, floor, gamma, learned, nbeta, cbeta, D, nmin, scale, inv_scale,
               st, ct, wd, inf, log2, hf, A, gt, n, inc):
    """Undo one step of one layer exactly (``h`` from the kept ``v_t``, then ``v`` from the
    gates of the recovered ``h``); the gates stay in ``gt``. Returns ``(part, code)``."""
    _h_update(ql[PV], nbeta, cbeta, n, inc)
    code = forget_add_undo(ql[PH], n, inc, D, st, ct, wd, inf, log2)
    if code >= 0:
        return PH, code
    _gates(ql[PH], P, W, b, bg, floor, gamma, learned, inv_scale, hf, A, gt)
    quantise_convex(gt[1], gt[0], D, nmin, scale, n, inc)
    code = forget_add_undo(ql[PV], n, inc, D, st, ct, wd, inf, log2)
    if code >= 0:
        return PV, code
    return 0, -1


@njit(**NJIT_OPTS)
def stack_forward(t0, t1, xtok, xflt, mode_in, E, m_emb, V0, Vs, Ws, bs, bgs, m_btw, q,
                  bst, bct, bwd, binf, log2, D, nmin, scale, inv_scale, floor, gamma, learned,
                  nbeta, cbeta, store, s0, inp0, inpH, P, hf, A, gt, n, inc):
    """Steps ``t0 .. t1-1`` of every layer in fixed point (layers 0..L-1 per step).

    ``store`` (., L, 2, B, H) int64 receives the state after step ``t`` at row
    ``t + 1 - s0`` when it has more than one row (standard mode: ``s0 = 0``; a
    forward-only chunk: ``s0 = t0``), else is not touched.
    ``inp0`` (B, D0), ``inpH`` (B, H): the layers' float inputs. Returns ``(t, layer, part, code)``.
    """
    L, B = q.shape[0], q.shape[2]
    keep = store.shape[0] > 1
    for t in range(t0, t1):
        for l in range(L):
            project(t, l, xtok, xflt, mode_in, E, m_emb, V0, Vs, q, 1, m_btw, inv_scale, inp0,
                    inpH, P)
            r0, r1 = l * B, (l + 1) * B
            part, code = layer_forward(q[l], P, Ws[l], bs[l], bgs[l], floor, gamma, learned,
                                       nbeta, cbeta, D, nmin, scale, inv_scale, bst[r0:r1],
                                       bct[r0:r1], bwd[r0:r1], binf[r0:r1], log2, hf, A, gt,
                                       n, inc)
            if code >= 0:
                return t, l, part, code
            if keep:
                store[t + 1 - s0, l] = q[l]
    return t1, 0, 0, -1


@njit(**NJIT_OPTS)
def stack_backward(t0, t1, T, reverse, grads, xtok, xflt, mode_in, E, m_emb, V0, Vs, Ws, bs, bgs,
                   m_btw, m_top, q, store, bst, bct, bwd, binf, log2, D, nmin, scale, inv_scale,
                   floor, gamma, learned, nbeta, cbeta, beta, vweight, U, by, softmax, labels,
                   target, lscale, per_step, sn, sp, ds, gE, gV0, gVs, gWs, gbs, gU, gby, dX,
                   want_dx, inp0, inpH, P, dx0, dxH, hf, A, gt, n, inc, htop, dH, work, Ob,
                   dPb, Xb0, XbH, terms):
    """Steps ``t1-1 .. t0`` backwards: per step, layers top-down: undo (``reverse``) or load
    the stored state, recompute in float, output layer on the top, backpropagate.

    ``sn`` (L, 2, B, H) float holds each layer's float state after the current step
    on entry (and before ``t0`` on exit); ``ds`` the gradient with respect to it.
    The loss goes to ``terms`` (steps with a target, B) float64 as per-row terms
    (:func:`~revtrain._kernels.window.head_step`), summed by the caller.
    ``beta``, ``vweight = 1 - beta``: the float leak of the backward pass (as the Python cell).
    The float recompute of a real step is the fixed-point result itself (straight
    through) plus the gates, which the undo (or, in standard mode, the gate kernel on
    the stored state) leaves in ``gt``.
    The weight gradients, the output layer's included (``htop``, ``work``: the chunk's
    rows, :func:`~revtrain._kernels.window.head_step`), are summed once per call over
    the chunk's steps (``Ob``
    (L, CHUNK, B, H) keeps the ``h`` each step read, ``dPb`` its pre-activation
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
            project(tt, l, xtok, xflt, mode_in, E, m_emb, V0, Vs, q, 1, m_btw, inv_scale, inp0,
                    inpH, P)
            r0, r1 = l * B, (l + 1) * B
            st0 = store[tt, l] if not reverse else q[l]
            dP = dPb[l, tt - t0]          # the step's dL/dP, in the chunk's rows
            part, code = _layer_back(
                tt, tt - t0, T, l == L - 1, reverse, q[l], st0, P, Ws[l], bs[l], bgs[l],
                floor, gamma, learned, nbeta, cbeta, beta, vweight, D, nmin, scale,
                inv_scale, bst[r0:r1], bct[r0:r1], bwd[r0:r1], binf[r0:r1], log2, hf, A, gt, n,
                inc, hf, sp[l], sn[l], ds[l], m_top, U, by, softmax, labels, target,
                lscale, per_step, htop, work, dH, terms, dP, Ob[l])
            if code >= 0:
                return tt, l, part, code
            pass_down(tt, tt - t0, l, mode_in, dP, V0, Vs, inp0, inpH, m_btw,
                      1, ds, dX, want_dx, dx0, dxH, Xb0, XbH)
    if grads:
        chunk_grads(t1 - t0, t0, Ob, dPb, gWs, gbs, mode_in, xtok, m_emb, Xb0, XbH, dx0,
                    htop, work, gV0, gVs, gE, gU, gby)
    return t0, 0, 0, -1


@njit(**ELEMENT_OPTS)
def _layer_back(tt, i, T, top, reverse, ql, st0, P, W, b, bg, floor, gamma, learned, nbeta,
                cbeta, beta, vweight, D, nmin, scale, inv_scale, st, ct, wd, inf, log2, hf, A, gt,
                n, inc, scratch, spl, snl, dsl, m_top, U, by, softmax, labels, target,
                lscale, per_step, htop, work, dH, terms, dP, Obl):
    """One layer of :func:`stack_backward` at step ``tt`` (row ``i`` of the chunk): undo it
    (``reverse``) or load it (``st0``: the stored state before it) with its gates in ``gt``,
    then :func:`_layer_float_back` (``scratch`` (B, H): its free scratch). Compiled without
    the Numba runtime (see :data:`~revtrain._kernels._options.ELEMENT_OPTS`).
    Returns ``(part, code)``."""
    if reverse:
        part, code = layer_undo(ql, P, W, b, bg, floor, gamma, learned, nbeta, cbeta, D, nmin,
                                scale, inv_scale, st, ct, wd, inf, log2, hf, A, gt, n, inc)
        if code >= 0:
            return part, code
    else:
        for k in range(2):
            copy_rows(st0[k], ql[k])
        _gates(ql[PH], P, W, b, bg, floor, gamma, learned, inv_scale, hf, A, gt)
    _layer_float_back(tt, i, T, top, ql, gt, floor, learned, beta, vweight, inv_scale, scratch,
                      spl, snl, dsl, m_top, U, by, softmax, labels, target, lscale, per_step,
                      htop, work, dH, terms, dP, Obl, W)
    return 0, -1


@njit(**ELEMENT_OPTS)
def _layer_float_back(tt, i, T, top, ql, gt, floor, learned, beta, vweight, inv_scale, scratch,
                      spl, snl, dsl, m_top, U, by, softmax, labels, target, lscale, per_step,
                      htop, work, dH, terms, dP, Obl, W):
    """The float part of a layer's backward step from the state before it ``ql`` (fixed-point,
    or as float: :func:`~revtrain._kernels.window.state_float`) and its gates ``gt``
    (3, B, H): output layer when ``top``, backpropagation into ``dsl`` and ``dP``."""
    state_float(ql[PH], inv_scale, spl[PH])
    state_float(ql[PV], inv_scale, spl[PV])
    if top:
        head_step(tt, i, T, per_step, snl, 1, m_top, U, by, softmax, labels, target, lscale,
                  htop, work, dH, dsl, terms)
    momentum_back(gt[0], gt[1], gt[2], spl[PV], floor, learned, beta, vweight, dsl[PH],
                  dsl[PV], dP)
    copy_rows(spl[PH], Obl[i])              # weight gradients: one product per chunk
    dot_rows_t(dP, W, scratch)              # dP @ W.T
    add_rows(scratch, dsl[PH])
    copy_rows(spl[PH], snl[PH])
    copy_rows(spl[PV], snl[PV])


@njit(**NJIT_OPTS)
def stack_undo(t0, t1, xtok, xflt, mode_in, E, m_emb, V0, Vs, Ws, bs, bgs, m_btw, q, bst, bct,
               bwd, binf, log2, D, nmin, scale, inv_scale, floor, gamma, learned, nbeta, cbeta,
               inp0, inpH, P, hf, A, n, inc, Gs, Qs, X0s, XHs):
    """The undo stage of a pipelined backward (see
    :func:`revtrain._kernels.revlstm_stack.stack_undo`): steps ``t1-1 .. t0`` undone, the
    gates of step ``tt`` (``i = tt - t0``) and layer ``l`` kept in ``Gs[l, i]`` (3, B, H),
    the state before it in ``Qs[l, i]`` (2, B, H), the layer's input in ``X0s[i]`` /
    ``XHs[l - 1, i]``. Returns ``(t, layer, part, code)``."""
    L, B = q.shape[0], q.shape[2]
    for tt in range(t1 - 1, t0 - 1, -1):
        i = tt - t0
        for l in range(L - 1, -1, -1):
            project(tt, l, xtok, xflt, mode_in, E, m_emb, V0, Vs, q, 1, m_btw, inv_scale, inp0,
                    inpH, P)
            r0, r1 = l * B, (l + 1) * B
            part, code = layer_undo(q[l], P, Ws[l], bs[l], bgs[l], floor, gamma, learned, nbeta,
                                    cbeta, D, nmin, scale, inv_scale, bst[r0:r1], bct[r0:r1],
                                    bwd[r0:r1], binf[r0:r1], log2, hf, A, Gs[l, i], n, inc)
            if code >= 0:
                return tt, l, part, code
            keep_step(l, mode_in, q[l], inv_scale, inp0, inpH, Qs[l, i], X0s[i],
                      XHs[max(l - 1, 0), i])
    return t0, 0, 0, -1


@njit(**NJIT_OPTS)
def stack_backprop(t0, t1, T, xtok, mode_in, m_emb, m_btw, m_top, inv_scale, floor, learned,
                   beta, vweight, U, by, softmax, labels, target, lscale, per_step, sn, sp, ds, gE,
                   gV0, gVs, gWs, gbs, gU, gby, dX, want_dx, dP, dx0, dxH, scratch, htop, dH,
                   work, Ob, dPb, Xb0, XbH, terms, V0, Vs, Ws, Gs, Qs, X0s, XHs):
    """The backpropagation stage of a pipelined backward: steps ``t1-1 .. t0`` of
    :func:`stack_backward` from what :func:`stack_undo` kept; the same operations in the
    same order, so the same bits."""
    L = sn.shape[0]
    for tt in range(t1 - 1, t0 - 1, -1):
        i = tt - t0
        for l in range(L - 1, -1, -1):
            _layer_float_back(tt, i, T, l == L - 1, Qs[l, i], Gs[l, i], floor, learned, beta,
                              vweight, inv_scale, scratch, sp[l], sn[l], ds[l], m_top, U,
                              by, softmax, labels, target, lscale, per_step, htop, work, dH,
                              terms, dP, Ob[l], Ws[l])
            dPb[l, i] = dP
            pass_down(tt, i, l, mode_in, dP, V0, Vs, X0s[i], XHs[max(l - 1, 0), i],
                      m_btw, 1, ds, dX, want_dx, dx0, dxH, Xb0, XbH)
    chunk_grads(t1 - t0, t0, Ob, dPb, gWs, gbs, mode_in, xtok, m_emb, Xb0, XbH, dx0,
                htop, work, gV0, gVs, gE, gU, gby)
    return t0, 0, 0, -1


@njit(**NJIT_OPTS)
def _chunk_weight_grads(k, Ob, dPb, gWs, gbs):
    """Add a chunk's recurrent and bias gradients over its ``k * B`` rows:
    ``gW += h^T dP`` (one product per layer), ``gbs += sum dP`` (columns ``[b | b_g]``)."""
    L, B, H, G = Ob.shape[0], Ob.shape[2], Ob.shape[3], dPb.shape[3]
    N = k * B
    for l in range(L):
        dP = dPb[l, :k].reshape((N, G))
        O = Ob[l, :k].reshape((N, H))
        add_tn_product(gWs[l], O, dP, N, 0)
        add_column_sums(gbs[l], dP, N, 0)


@njit(**NJIT_OPTS)
def chunk_grads(k, t0, Ob, dPb, gWs, gbs, mode_in, xtok, m_emb, Xb0, XbH, dxb0, htop, work,
                gV0, gVs, gE, gU, gby):
    """Add the parameter gradients of a backward chunk of ``k`` steps from ``t0``, from what
    :func:`stack_backward` (``grads=False``) or :func:`stack_backprop` left in the chunk
    buffers: the cell's weights (one product per block), the input weights, the token rows
    and the output layer (:func:`~revtrain._kernels.window.chunk_common_grads`)."""
    _chunk_weight_grads(k, Ob, dPb, gWs, gbs)
    chunk_common_grads(k, t0, mode_in, xtok, m_emb, dPb, Xb0, XbH, dxb0, htop, work, gV0, gVs,
                       gE, gU, gby)
