"""Pieces of the whole-window kernels shared by the reversible cells (any cell's stack).

Layouts as in :mod:`revtrain.models.window`: ``q`` int64 ``(L, n_parts, B, w)``
with the first ``nh`` parts forming the hidden state ``h`` (B, H = nh * w) that
the next layer and the output layer read; float states ``sn``/``ds`` of the
same shape; inputs ``xtok`` / ``xflt`` with ``mode_in`` 0 (one-hot), 1
(embedding) or 2 (float); input weights ``V0`` (D0, G), ``Vs`` (., H, G).

A run may hold a group of the batch's rows (``B`` of ``B_total``, from row ``c0``): it
reads its token ids, labels and targets in the batch's arrays, with no copy of
them: ``xtok = (ids, c0)`` with ``ids`` int64 (T, B_total), ``labels = (lab, c0,
B_total)`` with ``lab`` int64 (steps with a target * B_total,) and ``target =
(values, c0, B_total)`` alike (rows, O) (:func:`project`, :func:`head_step`,
:func:`chunk_scatter`).
"""
from numba import njit, types
from numba.extending import overload

from ._options import NJIT_OPTS, ELEMENT_OPTS
from .head import xent_dz, mse_dz
from .gemm import dot_rows, dot_rows_t, add_tn_product
from .gemm_vec import add_column_sums


@njit(**ELEMENT_OPTS)
def to_float(qp, inv_scale, out):
    """``out = qp * 2**-F`` (B, w)."""
    B, w = qp.shape
    for r in range(B):
        for j in range(w):
            out[r, j] = qp[r, j] * inv_scale


def state_float(qp, inv_scale, out):
    """``out`` (B, w) = a kept state part as float: ``qp * 2**-F`` for the fixed-point
    int64 part, a copy for a part :func:`keep_step` already converted (the same bits).
    (Numba only: an ``overload``.)"""
    raise NotImplementedError("state_float runs inside Numba kernels")


@overload(state_float, inline="always")
def _state_float_impl(qp, inv_scale, out):
    if isinstance(qp.dtype, types.Integer):
        return lambda qp, inv_scale, out: to_float(qp, inv_scale, out)
    return lambda qp, inv_scale, out: copy_rows(qp, out)


@njit(**ELEMENT_OPTS)
def copy_cols(src, c0, out):
    """``out = src[:, c0:c0 + out.shape[1]]`` (a contiguous copy of a column block)."""
    B, w = out.shape
    for r in range(B):
        for j in range(w):
            out[r, j] = src[r, c0 + j]


@njit(**ELEMENT_OPTS)
def copy_rows(src, out):
    """``out[...] = src`` for 2-d arrays of one shape (a loop: no Numba runtime needed)."""
    for r in range(src.shape[0]):
        for j in range(src.shape[1]):
            out[r, j] = src[r, j]


@njit(**ELEMENT_OPTS)
def keep_step(l, mode_in, ql, inv_scale, inp0, inpH, Q, X0, XH):
    """What a pipelined backward's undo stage keeps of layer ``l``'s step: its fixed-point
    parts ``ql`` (n, B, w) as float in ``Q`` (what the backpropagation reads of them:
    :func:`state_float`; half the bytes of int64 in float32), its float input in ``X0``
    (layer 0, unless one-hot) or ``XH`` (layers 1..)."""
    for k in range(ql.shape[0]):
        state_float(ql[k], inv_scale, Q[k])
    if l > 0:
        copy_rows(inpH, XH)
    elif mode_in != 0:
        copy_rows(inp0, X0)


@njit(**ELEMENT_OPTS)
def add_rows(src, out):
    """``out += src`` for 2-d arrays of one shape."""
    for r in range(src.shape[0]):
        for j in range(src.shape[1]):
            out[r, j] += src[r, j]


@njit(**ELEMENT_OPTS)
def h_float(ql, nh, inv_scale, out):
    """``out`` (B, nh * w) = the first ``nh`` fixed-point parts of ``ql`` side by side, as float."""
    B, w = ql.shape[1], ql.shape[2]
    for k in range(nh):
        for r in range(B):
            for j in range(w):
                out[r, k * w + j] = ql[k, r, j] * inv_scale


@njit(**NJIT_OPTS)
def project(t, l, xtok, xflt, mode_in, E, m_emb, V0, Vs, q, nh, m_btw, inv_scale, inp0, inpH,
            P):
    """``P = input_l(t) @ V_l`` (B, G); the float input goes to ``inp0`` (layer 0, embedding
    or float inputs) or ``inpH``. Layer ``l``'s input is layer ``l-1``'s current ``h``, masked.
    ``xtok`` = ``(ids, c0)``: the run's token ids are ``ids[t, c0 + r]`` (the module's
    docstring)."""
    B = P.shape[0]
    ids, c0 = xtok
    if l == 0:
        if mode_in == 0:
            G = P.shape[1]
            for r in range(B):
                row = ids[t, c0 + r]
                for c in range(G):
                    P[r, c] = V0[row, c]
            return
        if mode_in == 1:
            Ed = E.shape[1]
            for r in range(B):
                row = ids[t, c0 + r]
                for c in range(Ed):
                    inp0[r, c] = E[row, c] * m_emb[r, c]
        else:
            D0 = xflt.shape[2]
            for r in range(B):
                for c in range(D0):
                    inp0[r, c] = xflt[t, r, c]
        dot_rows(inp0, V0, P)
        return
    h_float(q[l - 1], nh, inv_scale, inpH)
    H = inpH.shape[1]
    m = m_btw[l - 1]
    for r in range(B):
        for c in range(H):
            inpH[r, c] = inpH[r, c] * m[r, c]
    dot_rows(inpH, Vs[l - 1], P)


@njit(**ELEMENT_OPTS)
def _add_h(dsl, nh, d, m):
    """``dsl[k] += d[:, k*w:(k+1)*w] * m[...]`` for the ``nh`` hidden parts."""
    B, w = dsl.shape[1], dsl.shape[2]
    for k in range(nh):
        for r in range(B):
            for j in range(w):
                dsl[k, r, j] += d[r, k * w + j] * m[r, k * w + j]


@njit(**ELEMENT_OPTS)
def head_step(t, i, T, per_step, snl, nh, m_top, U, by, softmax, labels, target, lscale,
              Hb, Zb, dH, dsl, terms):
    """Output layer of step ``t`` (row ``i`` of its chunk) on the top layer's (masked) ``h``;
    adds dL/dh = ``dz U^T`` (:func:`~revtrain._kernels.gemm.dot_rows_t`) to ``dsl``.

    The masked ``h`` goes to rows ``i*B .. (i+1)*B`` of ``Hb`` (chunk rows, H)
    and dL/dz to those of ``Zb`` (chunk rows, O; zeros for a step without a
    target): :func:`chunk_head_grads` adds the output layer's weight gradients
    once per chunk. The step's per-row loss terms go to ``terms[t]``
    (``terms[0]`` when only the last step has a target; nothing when step ``t``
    has none): the loss is ``lscale * sum_terms(terms[t])``
    (:func:`revtrain.models.window_calls.fold_terms`). ``labels``, ``target``: the batch's,
    with the run's first row and the batch's rows (the module's docstring; the two tuples
    carry the same ones, and the target's are taken from ``labels``).
    """
    B, w = snl.shape[1], snl.shape[2]
    lab, c0, Bl = labels
    tgt = target[0]
    htop = Hb[i * B:(i + 1) * B]
    dz = Zb[i * B:(i + 1) * B]
    for k in range(nh):
        for r in range(B):
            for j in range(w):
                htop[r, k * w + j] = snl[k, r, j] * m_top[r, k * w + j]
    if per_step:
        r0 = t * Bl + c0
        row = t
    elif t == T - 1:
        r0 = c0
        row = 0
    else:
        dz[:, :] = 0.0
        return
    if softmax:
        xent_dz(htop, U, by, lab[r0:r0 + B], lscale, dz, terms[row], True)
    else:
        mse_dz(htop, U, by, tgt[r0:r0 + B], lscale, dz, terms[row], True)
    dot_rows_t(dz, U, dH)
    _add_h(dsl, nh, dH, m_top)


@njit(**NJIT_OPTS)
def chunk_head_grads(k, B, Hb, Zb, gU, gby):
    """Add the output layer's gradients of a chunk's ``k`` steps (``k * B`` rows of ``Hb``,
    ``Zb``, see :func:`head_step`): ``gU += Hb^T Zb`` (one product), ``gby += sum_rows Zb``."""
    N = k * B
    add_tn_product(gU, Hb, Zb, N, 0)
    add_column_sums(gby, Zb, N, 0)


@njit(**NJIT_OPTS)
def pass_down(t, i, l, mode_in, dP, V0, Vs, inp0, inpH, m_btw, nh, ds, dX, want_dx, dxb0, dxH,
              Xb0, XbH):
    """Input side of layer ``l``'s backward at step ``t`` (row ``i`` of the chunk).

    Float inputs are kept in ``Xb0`` / ``XbH`` for :func:`chunk_input_grads`;
    dL/d(input) = ``dP V^T`` goes to ``dxb0[i]`` (layer 0: embedding rows, for
    :func:`chunk_scatter`, or ``dX[t]``) or the layer below's ``h`` (masked).
    One-hot inputs need nothing here: :func:`chunk_scatter` adds the chunk's ``dP``
    into rows of ``gV0``. The products by the transposed input weights ``V0``, ``Vs[l - 1]``
    read them in place (:func:`~revtrain._kernels.gemm.dot_rows_t`).
    """
    B = dP.shape[0]
    if l == 0 and mode_in == 0:
        return
    if l == 0:
        Xb0[i] = inp0
        if mode_in == 1 or want_dx:
            dx0 = dxb0[i]
            dot_rows_t(dP, V0, dx0)
            if mode_in == 2:
                D0 = dx0.shape[1]
                for r in range(B):
                    for c in range(D0):
                        dX[t, r, c] = dx0[r, c]
    else:
        XbH[l - 1, i] = inpH
        dot_rows_t(dP, Vs[l - 1], dxH)
        _add_h(ds[l - 1], nh, dxH, m_btw[l - 1])


@njit(**NJIT_OPTS)
def chunk_scatter(k, t0, mode_in, xtok, m_emb, dPb, dxb0, gV0, gE):
    """Add a chunk's token-row gradients: one-hot inputs ``gV0[x[t, r]] += dP_0[t, r]``,
    embeddings ``gE[x[t, r]] += dxb0[t - t0, r] * m_emb[r]``, steps ``t0 + k - 1 .. t0``
    (the backward's order), rows in order: the additions of a per-step scatter."""
    B, G = dPb.shape[2], dPb.shape[3]
    D0 = dxb0.shape[2]
    ids, c0 = xtok
    for i in range(k - 1, -1, -1):
        t = t0 + i
        for r in range(B):
            row = ids[t, c0 + r]
            if mode_in == 0:
                for c in range(G):
                    gV0[row, c] += dPb[0, i, r, c]
            elif mode_in == 1:
                for c in range(D0):
                    gE[row, c] += dxb0[i, r, c] * m_emb[r, c]


@njit(**NJIT_OPTS)
def chunk_input_grads(k, mode_in, dPb, Xb0, XbH, gV0, gVs):
    """Add a chunk's input-weight gradients, ``gV += X^T dP`` over its ``k * B`` rows."""
    L, B, G = dPb.shape[0], dPb.shape[2], dPb.shape[3]
    N = k * B
    for l in range(L):
        dP = dPb[l, :k].reshape((N, G))
        if l > 0:
            H = XbH.shape[3]
            add_tn_product(gVs[l - 1], XbH[l - 1, :k].reshape((N, H)), dP, N, 0)
        elif mode_in != 0:
            D0 = Xb0.shape[2]
            add_tn_product(gV0, Xb0[:k].reshape((N, D0)), dP, N, 0)


@njit(**NJIT_OPTS)
def chunk_common_grads(k, t0, mode_in, xtok, m_emb, dPb, Xb0, XbH, dxb0, htop, work, gV0, gVs,
                       gE, gU, gby):
    """The gradients every cell adds once per chunk of ``k`` steps from ``t0``: the input
    weights' (:func:`chunk_input_grads`), the token rows' (:func:`chunk_scatter`) and the
    output layer's (:func:`chunk_head_grads`). They write to different arrays."""
    chunk_input_grads(k, mode_in, dPb, Xb0, XbH, gV0, gVs)
    chunk_scatter(k, t0, mode_in, xtok, m_emb, dPb, dxb0, gV0, gE)
    chunk_head_grads(k, dPb.shape[2], htop, work, gU, gby)
