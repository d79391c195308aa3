"""GRU cell kernels (Cho et al. 2014 form, reset applied before the recurrent product).

With ``P_t = x_t @ W_x`` (columns ``[z | r | n]``, each ``H`` wide) and the
recurrent weights split as ``W_h = [Wzr | Wn]`` (``(H, 2H)`` and ``(H, H)``)::

    [z, r] = sigmoid(P_t[:, :2H] + h_{t-1} @ Wzr + b[:2H])
    n      = tanh(P_t[:, 2H:] + (r * h_{t-1}) @ Wn + b[2H:])
    h_t    = (1 - z) * n + z * h_{t-1}

Two products per step, ``(B, H) x (H, 2H)`` for the gates and ``(B, H) x (H, H)``
for the candidate (it needs ``r`` first); the backward pass has the two
transposed products. Generic over float64 and complex128 (complex step).
"""
from numba import njit

from ._options import NJIT_OPTS
from .mathfn import sigmoid_, tanh_
from .gemm import dot_step, transpose_for_dot


@njit(**NJIT_OPTS)
def gru_forward(P, Wzr, Wn, b, hs, zr, n, rh):
    """Run ``k`` GRU steps, storing what the backward pass needs.

    Parameters
    ----------
    P : (k, B, 3H) input projections ``x_t @ W_x`` (bias not included).
    Wzr : (H, 2H) C-contiguous, the gate columns of ``W_h``.
    Wn : (H, H) C-contiguous, the candidate columns of ``W_h``.
    b : (3H,) biases ``[b_z, b_r, b_n]``.
    hs : (k + 1, B, H); ``hs[0]`` is the initial state (read), ``hs[1:]`` written.
    zr : (k, B, 2H) output, the gates ``[z, r]``.
    n : (k, B, H) output, the candidate ``n``.
    rh : (k, B, H) output, ``r * h_{t-1}``.
    """
    k, B, H3 = P.shape
    H = H3 // 3
    H2 = 2 * H
    for t in range(k):
        hp = hs[t]
        g = zr[t]
        q = rh[t]
        c = n[t]
        ht = hs[t + 1]
        dot_step(hp, Wzr, g)
        for i in range(B):
            for j in range(H2):
                g[i, j] = sigmoid_(g[i, j] + P[t, i, j] + b[j])
            for j in range(H):
                q[i, j] = g[i, H + j] * hp[i, j]
        dot_step(q, Wn, c)
        for i in range(B):
            for j in range(H):
                nn = tanh_(c[i, j] + P[t, i, H2 + j] + b[H2 + j])
                c[i, j] = nn
                z = g[i, j]
                ht[i, j] = (1.0 - z) * nn + z * hp[i, j]


@njit(**NJIT_OPTS)
def gru_backward(hs, zr, n, dH, Wzr, Wn, dh, dP, tmp):
    """Backpropagate through ``k`` GRU steps held by :func:`gru_forward`.

    Parameters
    ----------
    hs : (k + 1, B, H) states.
    zr : (k, B, 2H) gates ``[z, r]``; overwritten with dL/d of their pre-activations.
    n : (k, B, H) candidates; overwritten with dL/d of its pre-activation.
    dH : (k, B, H) dL/dh_t from the output layer.
    Wzr, Wn : as in :func:`gru_forward`.
    dh : (B, H) dL/dh_k from later steps on entry; dL/dh_0 on exit.
    dP : (k, B, 3H) output: dL/d(pre-activations) ``[da_z, da_r, da_n]``
        (the input-projection gradient; may be the projection buffer).
    tmp : (B, H) workspace.

    Notes
    -----
    With ``d = dL/dh_t``: ``da_z = d (h_{t-1} - n) z (1 - z)``,
    ``da_n = d (1 - z) (1 - n^2)``, ``dq = da_n @ Wn^T`` (``q = r h_{t-1}``),
    ``da_r = dq h_{t-1} r (1 - r)`` and
    ``dL/dh_{t-1} = d z + dq r + [da_z, da_r] @ Wzr^T``.
    """
    k, B, H = dH.shape
    H2 = 2 * H
    WnT, WzrT = transpose_for_dot(Wn), transpose_for_dot(Wzr)
    for t in range(k - 1, -1, -1):
        hp = hs[t]
        g = zr[t]
        c = n[t]
        for i in range(B):
            for j in range(H):
                d = dh[i, j] + dH[t, i, j]
                z = g[i, j]
                nn = c[i, j]
                dh[i, j] = d * z
                g[i, j] = d * (hp[i, j] - nn) * (z * (1.0 - z))
                c[i, j] = d * (1.0 - z) * (1.0 - nn * nn)
        dot_step(c, WnT, tmp)
        for i in range(B):
            for j in range(H):
                r = g[i, H + j]
                dq = tmp[i, j]
                dh[i, j] += dq * r
                g[i, H + j] = dq * hp[i, j] * (r * (1.0 - r))
        dot_step(g, WzrT, tmp)
        for i in range(B):
            for j in range(H):
                dh[i, j] += tmp[i, j]
            for j in range(H2):
                dP[t, i, j] = g[i, j]
            for j in range(H):
                dP[t, i, H2 + j] = c[i, j]
