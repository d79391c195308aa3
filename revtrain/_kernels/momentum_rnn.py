"""Momentum-coupled cell kernels (MomentumRNN, RevMDRNN; generic over float64 and complex128).

Step (row-vector convention, ``A = h_{t-1} @ W``, ``P = x_t @ V``)::

    g_t     = tanh(A[:, :H] + P[:, :H] + b)
    gamma_t = floor + (1 - floor) * sigmoid(A[:, H:] + P[:, H:] + b_g)   (learned gate)
              or a constant in [floor, 1]
    v_t     = gamma_t * v_{t-1} + (1 - gamma_t) * g_t
    h_t     = h_{t-1} + v_t                          (RevMDRNN: h_decay = v_weight = 1)
    h_t     = beta * h_{t-1} + (1 - beta) * v_t      (MomentumRNN: h_decay = beta,
                                                      v_weight = 1 - beta; leaky_h_inc)

In fixed point the multiplies by ``gamma_t`` and ``beta`` are exact (quantised
to ``n / 2**m``, see :mod:`revtrain._kernels.quantize`) and the added terms
``(1 - n/2**m) * g_t``, ``(1 - n_b/2**m) * v_t`` are rounded; the float
kernels here serve the fixed-point gates (forward and reverse call the same
kernel, so the increments are bit-identical) and the straight-through
recompute and backward pass.
"""
import numpy as np
from numba import njit, int64

from ._options import ELEMENT_OPTS
from .mathfn import tanh_, sigmoid_


@njit(**ELEMENT_OPTS)
def momentum_gates(A, P, b, bg, floor, gamma, learned, g, gam, sig):
    """Candidate and momentum gate of one step.

    A, P : (B, G) with ``G = 2H`` (learned gate) or ``H``.  b, bg : (H,).
    floor : float, the gate floor ``2**-k``.  gamma : float, the constant gate (if not learned).
    g, gam, sig : (B, H) outputs: ``tanh`` candidate, gate, and the gate's sigmoid.
    """
    B, H = g.shape
    c1 = 1.0 - floor
    for i in range(B):
        for j in range(H):
            g[i, j] = tanh_(A[i, j] + P[i, j] + b[j])
        if learned:
            for j in range(H):
                s = sigmoid_(A[i, H + j] + P[i, H + j] + bg[j])
                sig[i, j] = s
                gam[i, j] = floor + c1 * s
        else:
            for j in range(H):
                gam[i, j] = gamma


@njit(**ELEMENT_OPTS)
def momentum_snap(h_prev, v_prev, g, gam, h_decay, v_weight, h_new, v_new):
    """Give ``h_new``, ``v_new`` (complex, real part = fixed-point values) the imaginary part
    of the float update ``v = gam v_prev + (1 - gam) g``, ``h = h_decay h_prev + v_weight v``.

    ``(h_decay, v_weight)`` is ``(1, 1)`` for RevMDRNN's ``h = h + v`` and
    ``(beta, 1 - beta)`` for MomentumRNN's ``h = beta h + (1 - beta) v``.
    """
    B, H = g.shape
    for i in range(B):
        for j in range(H):
            vf = gam[i, j] * v_prev[i, j] + (1.0 - gam[i, j]) * g[i, j]
            v_new[i, j] = complex(v_new[i, j].real, vf.imag)
            hf = h_decay * h_prev[i, j] + v_weight * vf
            h_new[i, j] = complex(h_new[i, j].real, hf.imag)


@njit(**ELEMENT_OPTS)
def momentum_back(g, gam, sig, v_prev, floor, learned, h_decay, v_weight, dh, dv, dA):
    """Backpropagate through one step of ``v = gam v + (1 - gam) g``, ``h = h_decay h + v_weight v``.

    On entry ``dh``, ``dv`` (B, H) are dL/dh_t, dL/dv_t. On exit ``dv`` is
    dL/dv_{t-1} and ``dh`` is ``h_decay * dL/dh_t``, the direct part of
    dL/dh_{t-1} (the caller adds ``dA @ W.T``). ``dA`` (B, G) receives
    dL/d(pre-activations): columns ``[candidate | gate]`` (gate only if ``learned``).
    """
    B, H = g.shape
    c1 = 1.0 - floor
    for i in range(B):
        for j in range(H):
            dvt = dv[i, j] + v_weight * dh[i, j]
            dh[i, j] = h_decay * dh[i, j]
            gm = gam[i, j]
            gg = g[i, j]
            dv[i, j] = dvt * gm
            dA[i, j] = dvt * (1.0 - gm) * (1.0 - gg * gg)
            if learned:
                s = sig[i, j]
                dA[i, H + j] = dvt * (v_prev[i, j] - gg) * (c1 * s * (1.0 - s))


# ------------------------------------------------- MomentumRNN's leaky position
# MomentumRNN's h_t = beta h_{t-1} + (1 - beta) v_t needs its increment in fixed point
# (RevMDRNN's h = h + v adds v itself).

@njit(**ELEMENT_OPTS)
def leaky_h_inc(v, c, inc):
    """Increments of ``h <- (n_b/D) h + (1 - n_b/D) v`` in fixed point.

    v : int64 (B, H), the *new* fixed-point velocity ``v_t``.  c : float,
    ``1 - n_b/D`` (dyadic, exact).  inc : int64 (B, H) output,
    ``rint(c * v)`` (same units as ``v``; one rounding, so forward and reverse
    get the same integers from the same ``v_t``).
    """
    B, H = v.shape
    for i in range(B):
        for j in range(H):
            inc[i, j] = int64(np.rint(c * float(v[i, j])))
