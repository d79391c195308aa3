"""LSTM cell kernels, generic over float64 and complex128 (complex step).

Gate columns are ordered ``[f | i | o | g]`` (each ``H`` wide) in the
``4H``-wide pre-activations ``A_t = x_t @ W_x + h_{t-1} @ W_h + b``::

    f, i, o = sigmoid(A_t[:, :3H])        g = tanh(A_t[:, 3H:])
    c_t = f * c_{t-1} + i * g             h_t = o * tanh(c_t)

One ``(B, H) x (H, 4H)`` product per step (forward and backward); the input
projection and the weight gradients are GEMMs over the whole segment, done
by the caller. Everything else is elementwise over contiguous rows of ``H``
or ``4H`` values (loops LLVM vectorises with the fast functions of
:mod:`.mathfn`).
"""
from numba import njit

from ._options import NJIT_OPTS
from .mathfn import sigmoid_, tanh_
from .gemm import dot_step, transpose_for_dot


@njit(**NJIT_OPTS)
def lstm_forward(G, W_h, b, hs, cs, tc, Z):
    """Run ``k`` steps, keeping what :func:`lstm_backward` needs.

    Parameters
    ----------
    G : (k, B, 4H)
        On entry the input projections ``x_t @ W_x``; on exit the gate
        activations ``[f | i | o | g]`` of every step.
    W_h : (H, 4H).  b : (4H,) biases ``[b_f | b_i | b_o | b_g]``.
    hs, cs : (k + 1, B, H)
        ``hs[0]``, ``cs[0]`` the state before the segment (read); ``hs[t]``,
        ``cs[t]`` for ``t >= 1`` written (``h_t`` and ``c_t``).
    tc : (k, B, H)
        Output: ``tanh(c_t)`` of steps ``1..k``.
    Z : (B, 4H)
        Scratch for ``h_{t-1} @ W_h``.
    """
    k, B, G4 = G.shape
    H = G4 // 4
    H3 = 3 * H
    # Loops index views from 0 (j >= 0 is then known to LLVM, which vectorises
    # them; an offset index like a[H3 + j] would need a wraparound check).
    for t in range(k):
        dot_step(hs[t], W_h, Z)
        for r in range(B):
            a = G[t, r]
            z = Z[r]
            for j in range(H3):
                a[j] = sigmoid_(a[j] + z[j] + b[j])
            ag, zg, bg = a[H3:], z[H3:], b[H3:]
            for j in range(H):
                ag[j] = tanh_(ag[j] + zg[j] + bg[j])
            af, ai, ao = a[:H], a[H:2 * H], a[2 * H:H3]
            cp = cs[t, r]
            cn = cs[t + 1, r]
            hn = hs[t + 1, r]
            tt = tc[t, r]
            for j in range(H):
                cn[j] = af[j] * cp[j] + ai[j] * ag[j]
            for j in range(H):
                tt[j] = tanh_(cn[j])
            for j in range(H):
                hn[j] = ao[j] * tt[j]


@njit(**NJIT_OPTS)
def lstm_backward(G, cs, tc, dH, W_h, dh, dc):
    """Backpropagate through ``k`` steps held by :func:`lstm_forward`.

    Parameters
    ----------
    G : (k, B, 4H)
        On entry the gate activations; on exit ``dL/dA_t``, the gradient with
        respect to the pre-activations (input of the weight-gradient GEMMs).
    cs : (k + 1, B, H) cell states.  tc : (k, B, H) ``tanh(c_t)``.
    dH : (k, B, H) dL/dh_t from the output layer.
    W_h : (H, 4H).
    dh, dc : (B, H)
        dL/dh_k and dL/dc_k from later steps on entry; dL/dh_0, dL/dc_0 on exit.

    Notes
    -----
    With ``dh~ = dh + dH_t`` and ``dc~ = dc + dh~ * o * (1 - tanh(c_t)^2)``:
    ``dA_f = dc~ c_{t-1} f (1-f)``, ``dA_i = dc~ g i (1-i)``,
    ``dA_o = dh~ tanh(c_t) o (1-o)``, ``dA_g = dc~ i (1-g^2)``;
    then ``dc <- dc~ f`` and ``dh <- dA_t @ W_h^T``.
    """
    k, B, G4 = G.shape
    H = G4 // 4
    WT = transpose_for_dot(W_h)
    for t in range(k - 1, -1, -1):
        for r in range(B):
            a = G[t, r]
            af, ai, ao, ag = a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:]
            cp = cs[t, r]
            tt = tc[t, r]
            dHt = dH[t, r]
            dhr = dh[r]
            dcr = dc[r]
            for j in range(H):
                f = af[j]
                i = ai[j]
                o = ao[j]
                g = ag[j]
                th = tt[j]
                dht = dhr[j] + dHt[j]
                dct = dcr[j] + dht * o * (1.0 - th * th)
                af[j] = dct * cp[j] * f * (1.0 - f)
                ai[j] = dct * g * i * (1.0 - i)
                ao[j] = dht * th * o * (1.0 - o)
                ag[j] = dct * i * (1.0 - g * g)
                dcr[j] = dct * f
        dot_step(G[t], WT, dh)
