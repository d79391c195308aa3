"""Elman RNN cell kernels: ``h_t = tanh(P_t + h_{t-1} @ W + b)`` with ``P_t = x_t @ V``.

Generic over float64 and complex128 (complex step). One ``(B, H) x (H, H)``
product per step; everything else is elementwise.
"""
from numba import njit

from ._options import NJIT_OPTS
from .mathfn import tanh_
from .gemm import dot_step, transpose_for_dot


@njit(**NJIT_OPTS)
def rnn_forward(P, W, b, hs):
    """Run ``k`` steps.

    P : (k, B, H) input projections.  W : (H, H).  b : (H,).
    hs : (k + 1, B, H); ``hs[0]`` is the initial state (read), ``hs[1:]`` written.
    """
    k, B, H = P.shape
    for t in range(k):
        ht = hs[t + 1]
        dot_step(hs[t], W, ht)
        for i in range(B):
            for j in range(H):
                ht[i, j] = tanh_(ht[i, j] + P[t, i, j] + b[j])


@njit(**NJIT_OPTS)
def rnn_backward(hs, dH, W, dh, dA):
    """Backpropagate through ``k`` steps.

    hs : (k + 1, B, H) states from :func:`rnn_forward`.
    dH : (k, B, H) dL/dh_t from the output layer.
    dh : (B, H) dL/dh_k from later steps on entry; dL/dh_0 on exit.
    dA : (k, B, H) output: dL/da_t, ``a_t`` the pre-activation (may alias nothing else).
    """
    k, B, H = dH.shape
    WT = transpose_for_dot(W)
    for t in range(k - 1, -1, -1):
        ht = hs[t + 1]
        da = dA[t]
        for i in range(B):
            for j in range(H):
                h = ht[i, j]
                da[i, j] = (dh[i, j] + dH[t, i, j]) * (1.0 - h * h)
        dot_step(da, WT, dh)
