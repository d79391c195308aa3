"""RevLSTM half-step kernels (generic over float64 and complex128).

One half ``k`` of the hidden state (``Hh = H/2`` units) is updated from the
input and the *other* half ``o`` (MacKay, Vicol, Ba & Grosse 2018)::

    A = o @ W_k + P_k + b_k                       (B, 5*Hh), columns [i | f | o | p | g]
    i = sigmoid(A_i),  og = sigmoid(A_o),  g = tanh(A_g)
    f = floor + (1 - floor) sigmoid(A_f),  p = floor + (1 - floor) sigmoid(A_p)
    c_k <- f * c_k + i * g
    h_k <- p * h_k + (1 - p) * og * tanh(c_k)

The ``h`` update is a convex combination (as the GRU's), so ``|h| <= 1``
stays bounded over arbitrarily long sequences and carried states; with
MacKay et al.'s ``p * h + og * tanh(c)`` a unit whose ``p`` quantises to 1
grows by up to 1 per step, and training with carried state diverged.

In fixed point both multiplies (by ``f`` and ``p``, quantised) are exact and
the added terms are rounded; ``tanh(c_k)`` is taken of the updated fixed-point
``c_k``, so undoing the ``h`` update needs only the new ``c_k`` and ``o``.
"""
from numba import njit

from ._options import ELEMENT_OPTS
from .mathfn import tanh_, sigmoid_
from .quantize import quant_gate, fixed_inc, snap_


@njit(**ELEMENT_OPTS)
def revlstm_gates(A, P, b, off, floor, gi, gf, sf, go, gp, sp, gg):
    """Gates of one half: ``A`` = o @ W_k (B, 5Hh); the half's projections and biases
    are columns ``off .. off + 5Hh`` of ``P`` (B, 5H) and ``b`` (5H,).

    Outputs (B, Hh): ``gi``, ``gf`` (floored), ``sf`` (its sigmoid), ``go``, ``gp`` (floored),
    ``sp`` (its sigmoid), ``gg`` (tanh candidate).
    """
    B, Hh = gi.shape
    c1 = 1.0 - floor
    for r in range(B):
        for j in range(Hh):
            gi[r, j] = sigmoid_(A[r, j] + P[r, off + j] + b[off + j])
        for j in range(Hh):
            s = sigmoid_(A[r, Hh + j] + P[r, off + Hh + j] + b[off + Hh + j])
            sf[r, j] = s
            gf[r, j] = floor + c1 * s
        for j in range(Hh):
            go[r, j] = sigmoid_(A[r, 2 * Hh + j] + P[r, off + 2 * Hh + j] + b[off + 2 * Hh + j])
        for j in range(Hh):
            s = sigmoid_(A[r, 3 * Hh + j] + P[r, off + 3 * Hh + j] + b[off + 3 * Hh + j])
            sp[r, j] = s
            gp[r, j] = floor + c1 * s
        for j in range(Hh):
            gg[r, j] = tanh_(A[r, 4 * Hh + j] + P[r, off + 4 * Hh + j] + b[off + 4 * Hh + j])


@njit(**ELEMENT_OPTS)
def revlstm_quant_c(gi, gf, gg, D, nmin, scale, n, inc):
    """Fixed-point ``c`` update: ``n = quant(f)``, ``inc = rint(i * g * 2**F)`` (int64 (B, Hh) outputs)."""
    B, Hh = gi.shape
    for r in range(B):
        for j in range(Hh):
            n[r, j] = quant_gate(gf[r, j], D, nmin)
            inc[r, j] = fixed_inc(gi[r, j] * gg[r, j], scale)


@njit(**ELEMENT_OPTS)
def revlstm_quant_h(cq, inv_scale, go, gp, D, nmin, scale, n, inc):
    """Fixed-point ``h`` update from the updated ``c`` (int64 ``cq``).

    ``n = quant(p)``, ``inc = rint((1 - p) og tanh(c) 2**F)``.
    """
    B, Hh = go.shape
    for r in range(B):
        for j in range(Hh):
            n[r, j] = quant_gate(gp[r, j], D, nmin)
            inc[r, j] = fixed_inc((1.0 - gp[r, j]) * go[r, j] * tanh_(float(cq[r, j]) * inv_scale),
                                  scale)


@njit(**ELEMENT_OPTS)
def revlstm_cell(c_prev, h_prev, gi, gf, go, gp, gg, c_new, h_new, tc):
    """Float update of one half along the fixed-point trajectory.

    ``c_new``, ``h_new`` hold the fixed-point results; for complex dtypes they
    get the imaginary part of ``f c + i g`` and ``p h + (1 - p) og tanh(c_new)``.
    ``tc`` (B, Hh) receives ``tanh(c_new)``.
    """
    B, Hh = gi.shape
    for r in range(B):
        for j in range(Hh):
            c = snap_(c_new[r, j], gf[r, j] * c_prev[r, j] + gi[r, j] * gg[r, j])
            c_new[r, j] = c
            t = tanh_(c)
            tc[r, j] = t
            h_new[r, j] = snap_(h_new[r, j], gp[r, j] * h_prev[r, j]
                                + (1.0 - gp[r, j]) * go[r, j] * t)


@njit(**ELEMENT_OPTS)
def revlstm_back(gi, gf, sf, go, gp, sp, gg, tc, c_old, h_old, floor, dh, dc, dP, off):
    """Backpropagate through the elementwise part of one half.

    On entry ``dh``, ``dc`` (B, Hh) are dL/dh_k, dL/dc_k after the update; on
    exit before it (the caller adds ``dA @ W_k.T`` to the other half's
    gradient). ``dA`` = dL/dA (B, 5Hh) is written to columns ``off .. off + 5Hh``
    of ``dP`` (B, 5H).
    """
    B, Hh = gi.shape
    c1 = 1.0 - floor
    for r in range(B):
        for j in range(Hh):
            dhn = dh[r, j]
            t = tc[r, j]
            pg = gp[r, j]
            dh[r, j] = dhn * pg
            dho = dhn * (1.0 - pg)             # dL/d(og tanh(c))
            dct = dc[r, j] + dho * go[r, j] * (1.0 - t * t)
            dc[r, j] = dct * gf[r, j]
            i = gi[r, j]
            g = gg[r, j]
            o = go[r, j]
            s = sf[r, j]
            dP[r, off + j] = dct * g * i * (1.0 - i)
            dP[r, off + Hh + j] = dct * c_old[r, j] * (c1 * s * (1.0 - s))
            dP[r, off + 2 * Hh + j] = dho * t * o * (1.0 - o)
            s = sp[r, j]
            dP[r, off + 3 * Hh + j] = dhn * (h_old[r, j] - o * t) * (c1 * s * (1.0 - s))
            dP[r, off + 4 * Hh + j] = dct * i * (1.0 - g * g)
