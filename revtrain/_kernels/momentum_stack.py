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
import numpy as np
from numba import njit

from ._options import NJIT_OPTS
from .momentum_rnn import momentum_gates, leaky_h_inc, momentum_back
from .quantize import quantise_convex, forget_add, forget_add_undo
from .gemm import dot_rows
from .window import (to_float, project, head_step, chunk_head_grads, pass_down,
                     chunk_input_grads)

#: Part indices in ``q``: h, v.
PH, PV = 0, 1


@njit(**NJIT_OPTS)
def _gates(hq, P, W, b, bg, floor, gamma, learned, inv_scale, hf, A, gt):
    """Candidate and gate of a step from the fixed-point ``h`` before it (``hq``) and ``P``.

    ``hf`` (B, H) receives ``h`` as float, ``A`` (B, G) ``h @ W``, ``gt`` (3, B, H) ``g, gam, sig``.
    """
    to_float(hq, inv_scale, hf)
    dot_rows(hf, W, A)
    momentum_gates(A, P, b, bg, floor, gamma, learned, gt[0], gt[1], gt[2])


@njit(**NJIT_OPTS)
def _h_update(v, nbeta, cbeta, n, inc):
    """Ratios ``n_beta`` and increments ``rint((1 - n_beta/D) v_t)`` of the ``h`` update."""
    leaky_h_inc(v, cbeta, inc)
    B, H = n.shape
    for r in range(B):
        for j in range(H):
            n[r, j] = nbeta


@njit(**NJIT_OPTS)
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


@njit(**NJIT_OPTS)
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
def stack_backward(t0, t1, T, reverse, xtok, xflt, mode_in, E, m_emb, V0, Vs, Ws, bs, bgs,
                   m_btw, m_top, q, store, bst, bct, bwd, binf, log2, D, nmin, scale, inv_scale,
                   floor, gamma, learned, nbeta, cbeta, beta, vweight, U, by, softmax, labels,
                   target, lscale, per_step, sn, sp, ds, gE, gV0, gVs, gWs, gbs, gU, gby, dX,
                   want_dx, inp0, inpH, P, dP, dx0, dxH, hf, A, gt, n, inc, htop, dH, work, Ob,
                   dPb, Xb0, XbH, terms, tr):
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
    """
    L, B = q.shape[0], q.shape[2]
    for tt in range(t1 - 1, t0 - 1, -1):
        for l in range(L - 1, -1, -1):
            project(tt, l, xtok, xflt, mode_in, E, m_emb, V0, Vs, q, 1, m_btw, inv_scale, inp0,
                    inpH, P)
            W = Ws[l]
            ql = q[l]
            if reverse:
                r0, r1 = l * B, (l + 1) * B
                part, code = layer_undo(ql, P, W, bs[l], bgs[l], floor, gamma, learned, nbeta,
                                        cbeta, D, nmin, scale, inv_scale, bst[r0:r1],
                                        bct[r0:r1], bwd[r0:r1], binf[r0:r1], log2, hf, A, gt,
                                        n, inc)
                if code >= 0:
                    return tt, l, part, code
            else:
                ql[:] = store[tt, l]
                _gates(ql[PH], P, W, bs[l], bgs[l], floor, gamma, learned, inv_scale, hf, A, gt)
            spl, snl = sp[l], sn[l]
            to_float(ql[PH], inv_scale, spl[PH])
            to_float(ql[PV], inv_scale, spl[PV])
            dsl = ds[l]
            if l == L - 1:
                head_step(tt, tt - t0, T, per_step, snl, 1, m_top, U, tr[0], by, softmax, labels,
                          target, lscale, htop, work, dH, dsl, terms)
            momentum_back(gt[0], gt[1], gt[2], spl[PV], floor, learned, beta, vweight,
                          dsl[PH], dsl[PV], dP)
            Ob[l, tt - t0] = spl[PH]                # weight gradients: one product per chunk
            dot_rows(dP, tr[3][l], hf)             # W.T; hf: free scratch (B, H) here
            dsl[PH] += hf
            dPb[l, tt - t0] = dP
            pass_down(tt, tt - t0, l, mode_in, xtok, dP, tr[1], tr[2], inp0, inpH, m_emb, m_btw,
                      1, ds, gE, gV0, dX, want_dx, dx0, dxH, Xb0, XbH)
            snl[PH] = spl[PH]
            snl[PV] = spl[PV]
    _chunk_weight_grads(t1 - t0, Ob, dPb, gWs, gbs)
    chunk_input_grads(t1 - t0, mode_in, dPb, Xb0, XbH, gV0, gVs)
    chunk_head_grads(t1 - t0, B, htop, work, gU, gby)
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
        gWs[l] += np.dot(O.T, dP)
        gbs[l] += dP.sum(axis=0)
