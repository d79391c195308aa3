"""RevGRU half-step kernels (generic over float64 and complex128).

One half ``k`` of the hidden state (``Hh = H/2`` units) is updated from the
input and the *other* half ``o`` (MacKay, Vicol, Ba & Grosse 2018)::

    [A_z | A_r] = o @ W_k + P_k[:, :2Hh] + b_k[:2Hh]
    z = floor + (1 - floor) sigmoid(A_z),   r = sigmoid(A_r)
    g = tanh((r * o) @ Wg_k + P_k[:, 2Hh:] + b_k[2Hh:])
    h_k <- z * h_k + (1 - z) * g

In fixed point the multiply by ``z`` (quantised to ``n / 2**m``) is exact and
``(1 - n/2**m) g`` is rounded and added
(:func:`revtrain._kernels.quantize.quantise_convex`).
"""
from numba import njit

from ._options import ELEMENT_OPTS
from .mathfn import tanh_, sigmoid_
from .quantize import snap_


@njit(**ELEMENT_OPTS)
def revgru_gates1(A1, P, b, off, floor, o, z, sz, r, ro):
    """Update and reset gates: ``A1`` = o @ W_k (B, 2Hh), ``o`` (B, Hh); the half's
    projections and biases are columns ``off .. off + 3Hh`` of ``P`` (B, 3H), ``b`` (3H,).

    Outputs (B, Hh): ``z`` (floored), ``sz`` (its sigmoid), ``r``, ``ro = r * o``.
    """
    B, Hh = z.shape
    c1 = 1.0 - floor
    for i in range(B):
        for j in range(Hh):
            s = sigmoid_(A1[i, j] + P[i, off + j] + b[off + j])
            sz[i, j] = s
            z[i, j] = floor + c1 * s
        for j in range(Hh):
            rr = sigmoid_(A1[i, Hh + j] + P[i, off + Hh + j] + b[off + Hh + j])
            r[i, j] = rr
            ro[i, j] = rr * o[i, j]


@njit(**ELEMENT_OPTS)
def revgru_gates2(A2, P, b, off, g):
    """Candidate ``g = tanh(A2 + P[:, off+2Hh:off+3Hh] + b[...])`` with ``A2 = (r*o) @ Wg_k`` (B, Hh)."""
    B, Hh = g.shape
    for i in range(B):
        for j in range(Hh):
            g[i, j] = tanh_(A2[i, j] + P[i, off + 2 * Hh + j] + b[off + 2 * Hh + j])


@njit(**ELEMENT_OPTS)
def revgru_cell(h_prev, z, g, h_new):
    """Give ``h_new`` (fixed-point values) the imaginary part of ``z h + (1 - z) g`` (complex only)."""
    B, Hh = z.shape
    for i in range(B):
        for j in range(Hh):
            h_new[i, j] = snap_(h_new[i, j], z[i, j] * h_prev[i, j] + (1.0 - z[i, j]) * g[i, j])


@njit(**ELEMENT_OPTS)
def revgru_back1(z, sz, g, h_old, floor, dh, dP, off):
    """Through ``h <- z h + (1-z) g``: ``dh`` (B, Hh) dL/dh after -> before; writes dA_z and
    dA_g of the half (columns ``off`` and ``off + 2Hh`` onwards of ``dP`` (B, 3H))."""
    B, Hh = z.shape
    c1 = 1.0 - floor
    for i in range(B):
        for j in range(Hh):
            d = dh[i, j]
            zz = z[i, j]
            gg = g[i, j]
            s = sz[i, j]
            dh[i, j] = d * zz
            dP[i, off + j] = d * (h_old[i, j] - gg) * (c1 * s * (1.0 - s))
            dP[i, off + 2 * Hh + j] = d * (1.0 - zz) * (1.0 - gg * gg)


@njit(**ELEMENT_OPTS)
def revgru_back2(dRO, r, o, dP, off, do):
    """Through ``ro = r * o``: given dL/dro (B, Hh), write dA_r (columns ``off + Hh`` onwards
    of ``dP``) and ``do`` = dL/do (the direct part)."""
    B, Hh = r.shape
    for i in range(B):
        for j in range(Hh):
            rr = r[i, j]
            dP[i, off + Hh + j] = dRO[i, j] * o[i, j] * rr * (1.0 - rr)
            do[i, j] = dRO[i, j] * rr
