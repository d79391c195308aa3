"""Fixed-point updates of reversible cells: quantised gates, exact forget-multiply and add.

Every reversible cell (MomentumRNN, RevGRU, RevLSTM) updates a part ``q`` of
its fixed-point state (int64, ``F`` fraction bits) as

    q <- q * n / D + inc          (elementwise)

with ``D = 2**m`` (``m`` = gate bits), ``n = round(gate * D)`` a forget-type
gate floored at ``n >= D * 2**-k`` (``k`` = max forget bits) and
``inc = round(value * 2**F)`` the added term. The multiply is exact
(:func:`revtrain._kernels.exact.mul_ratio_elem`: the digits it destroys go to
the rANS stream of the row), the add is an integer add, so

    q <- (q - inc) * D / n        (elements in reverse order)

undoes it bit for bit, given the same ``n`` and ``inc`` (recomputed from the
recovered other parts of the state by the same kernels). Each multiply adds
``log2(D / n) <= k`` bits to the row's information count.

Rows of ``q`` are streams (one per batch row). The loops here push and pop per
element, so they are compiled with ``buffer_kernel`` (no Numba runtime) and
return an error code instead of raising: ``-1`` = fine, otherwise the flat
index of the first element that left the allowed range ``|q| < LIMIT``
(forward) or whose undo would overflow int64 (reverse). They take one stream
(row) after another: the elements of a row are one dependency chain through
the stream's rANS state, which the loop keeps in registers (the rows' chains
do not overlap in time, measured no slower), so "first" is in row order.
"""
import numpy as np
from numba import njit, int64, uint64, types
from numba.extending import overload

from ._options import NJIT_OPTS, INLINE_OPTS
from .exact import mul_ratio_elem, overflows
from .bits import trailing_zeros
from .rans import (buffer_kernel, buffer_op, SPLIT_LIMIT, PROB_BITS, push_pow2_shift,
                   pop_pow2_shift, push_small, pop_small)

#: Largest magnitude a fixed-point state element may reach (exclusive).
LIMIT = 1 << 62
#: ``1 / n`` for ``n = 0 .. 2**12`` (entry 0 unused), float64: for ``|v| < RECIP_SAFE``,
#: ``floor(v * RECIP[n])`` is ``v // n`` or one off (the product's error is below one).
RECIP = np.array([0.0] + [1.0 / n for n in range(1, SPLIT_LIMIT + 1)])
RECIP_SAFE = 1 << 52


@njit(**INLINE_OPTS)
def quant_gate(gate, D, nmin):
    """``n = clip(rint(gate * D), nmin, D)``: a gate in (0, 1] as the ratio ``n / D``.

    A NaN gate maps to ``D`` (callers check the state range separately).
    """
    x = np.rint(gate * D)
    if not x >= nmin:          # also catches NaN
        return int64(nmin) if x < nmin else int64(D)
    if x > D:
        return int64(D)
    return int64(x)


@njit(**INLINE_OPTS)
def fixed_inc(value, scale):
    """``rint(value * scale)`` as int64 for a value with ``|value| <= 1`` (``scale = 2**F``)."""
    return int64(np.rint(value * scale))


def log2_table(D):
    """``log2(n)`` for ``n = 0 .. D`` (entry 0 unused), float64 ``(D + 1,)``."""
    t = np.zeros(D + 1)
    t[1:] = np.log2(np.arange(1, D + 1, dtype=np.float64))
    return t


@buffer_op
def forget_add_elem(q, n, inc, D, states, counts, words, s):
    """``q * n / D + inc`` exactly on stream ``s``; returns ``(value, ok)``.

    ``ok`` is False when ``|value| >= LIMIT`` (the state would leave its range).
    """
    v = mul_ratio_elem(q, n, D, states, counts, words, s) + inc
    return v, -LIMIT < v < LIMIT


@buffer_op
def forget_add_undo_elem(q, n, inc, D, states, counts, words, s):
    """Undo :func:`forget_add_elem`: ``(q - inc) * D / n`` exactly on stream ``s``.

    Returns ``(value, ok)``; ``ok`` is False (and nothing is read from the
    buffer) when ``q`` is out of range or the result would overflow int64 --
    a corrupted state or buffer.
    """
    if q >= LIMIT or q <= -LIMIT:
        return q, False
    v = q - inc
    if overflows(v, D, n):
        return q, False
    return mul_ratio_elem(v, D, n, states, counts, words, s), True


@buffer_kernel
def forget_add(q, n, inc, D, states, counts, words, info, log2tab):
    """In place ``q[s, j] = q[s, j] * n[s, j] / D + inc[s, j]`` exactly.

    Parameters
    ----------
    q : int64 (S, K)      state part; row ``s`` uses stream ``s``.
    n : int64 (S, K)      ratios, ``1 <= n <= D``.
    inc : int64 (S, K)    fixed-point increments.
    D : int               denominator ``2**m <= 2**16``.
    states, counts, words : the InfoBuffer arrays (room reserved by the caller).
    info : float64 (S,)   information count per stream; ``log2(D / n)`` added per element.
    log2tab : float64 (D + 1,)  ``log2`` table.

    Returns
    -------
    code : int  -1, or the flat index of the first result with ``|q| >= LIMIT``.

    For ``D <= 2**12`` (the default ``gate_bits = 12``) the multiply runs on
    the branch-free fast paths of :mod:`~revtrain._kernels.rans`
    (:func:`_forget_add_small`; the same words and states as
    :func:`forget_add_elem`, tested), in a loop of its own (sharing the
    function with the generic loop made it 40 % slower).
    """
    if D > SPLIT_LIMIT:
        return _forget_add_generic(q, n, inc, D, states, counts, words, info, log2tab)
    return _forget_add_small(q, n, inc, D, states, counts, words, info, log2tab)


@buffer_kernel
def _forget_add_generic(q, n, inc, D, states, counts, words, info, log2tab):
    S, K = q.shape
    ld = log2tab[D]
    for s in range(S):
        for j in range(K):
            nn = n[s, j]
            v, ok = forget_add_elem(q[s, j], nn, inc[s, j], D, states, counts, words, s)
            if not ok:
                return s * K + j
            q[s, j] = v
            info[s] += ld - log2tab[nn]
    return -1


@buffer_kernel
def _forget_add_small(q, n, inc, D, states, counts, words, info, log2tab):
    S, K = q.shape
    ld = log2tab[D]
    m = trailing_zeros(D)
    sh = uint64(PROB_BITS - m)
    mask = D - 1
    for s in range(S):
        x, cnt, inf = states[s], counts[s], info[s]
        for j in range(K):
            nn = n[s, j]
            qq = q[s, j]
            x, cnt = push_pow2_shift(x, cnt, words, s, qq & mask, sh)    # r = q mod D
            r, x, cnt = pop_small(x, cnt, words, s, nn)
            v = (qq >> m) * nn + r + inc[s, j]
            if not -LIMIT < v < LIMIT:
                states[s], counts[s], info[s] = x, cnt, inf
                return s * K + j
            q[s, j] = v
            inf += ld - log2tab[nn]
        states[s], counts[s], info[s] = x, cnt, inf
    return -1


@buffer_kernel
def forget_add_undo(q, n, inc, D, states, counts, words, info, log2tab):
    """Undo :func:`forget_add`: ``q[s, j] = (q[s, j] - inc[s, j]) * D / n[s, j]``, ``j`` descending.

    Returns -1, or the flat index of the first element whose value is out of
    range (a corrupted state or buffer; nothing sensible can be recovered).
    """
    if D > SPLIT_LIMIT:
        return _forget_add_undo_generic(q, n, inc, D, states, counts, words, info, log2tab)
    return _forget_add_undo_small(q, n, inc, D, states, counts, words, info, log2tab)


@buffer_kernel
def _forget_add_undo_generic(q, n, inc, D, states, counts, words, info, log2tab):
    S, K = q.shape
    ld = log2tab[D]
    for s in range(S):
        for jj in range(K):
            j = K - 1 - jj
            nn = n[s, j]
            v, ok = forget_add_undo_elem(q[s, j], nn, inc[s, j], D, states, counts, words, s)
            if not ok:
                return s * K + j
            q[s, j] = v
            info[s] -= ld - log2tab[nn]
    return -1


@buffer_kernel
def _forget_add_undo_small(q, n, inc, D, states, counts, words, info, log2tab):
    S, K = q.shape
    ld = log2tab[D]
    m = trailing_zeros(D)
    sh = PROB_BITS - m
    for s in range(S):
        x, cnt, inf = states[s], counts[s], info[s]
        for jj in range(K):
            j = K - 1 - jj
            nn = n[s, j]
            qq = q[s, j]
            if qq >= LIMIT or qq <= -LIMIT:
                states[s], counts[s], info[s] = x, cnt, inf
                return s * K + j
            v = qq - inc[s, j]
            if overflows(v, D, nn):
                states[s], counts[s], info[s] = x, cnt, inf
                return s * K + j
            if -RECIP_SAFE < v < RECIP_SAFE:
                # floor(v / n) from the reciprocal's table, off by at most one: corrected
                base = int64(np.floor(float(v) * RECIP[nn]))
                rem = v - base * nn
                if rem < 0:
                    base -= 1
                    rem += nn
                elif rem >= nn:
                    base += 1
                    rem -= nn
            else:
                base = v // nn              # floor: 0 <= r < n also for negative v
                rem = v - base * nn
            x, cnt = push_small(x, cnt, words, s, rem, nn)
            r, x, cnt = pop_pow2_shift(x, cnt, words, s, sh)
            q[s, j] = (base << m) + r
            inf -= ld - log2tab[nn]
        states[s], counts[s], info[s] = x, cnt, inf
    return -1


@njit(**NJIT_OPTS)
def add_checked(q, v, sign):
    """In place ``q += sign * v`` (sign = +1 or -1); returns -1 or the first flat index leaving ``|q| < LIMIT``.

    Both operands are expected within ``+-LIMIT`` so the int64 sum cannot wrap;
    an operand outside that range is reported too.
    """
    S, K = q.shape
    for s in range(S):
        for j in range(K):
            a = q[s, j]
            b = v[s, j]
            if a >= LIMIT or a <= -LIMIT or b >= LIMIT or b <= -LIMIT:
                return s * K + j
            r = a + b if sign > 0 else a - b
            if r >= LIMIT or r <= -LIMIT:
                return s * K + j
            q[s, j] = r
    return -1


@njit(**NJIT_OPTS)
def quantise_convex(gate, target, D, nmin, scale, n, inc):
    """Ratios and increments of ``q <- gate*q + (1-gate)*target`` with the quantised gate.

    ``n = quant(gate)``, ``inc = rint((1 - n/D) * target * 2**F)``.
    gate, target : float64 (B, K).  n, inc : int64 (B, K) outputs.
    """
    B, K = gate.shape
    invD = 1.0 / D
    for i in range(B):
        for j in range(K):
            nn = quant_gate(gate[i, j], D, nmin)
            n[i, j] = nn
            inc[i, j] = fixed_inc((1.0 - nn * invD) * target[i, j], scale)


def snap_(fixed, value):
    """Straight-through state value: ``fixed`` for floats; ``Re(fixed) + i Im(value)`` for complex.

    The fixed-point trajectory gives the real part; the imaginary part (the
    complex-step tangent) follows the float update ``value``.
    """
    raise NotImplementedError


@overload(snap_, inline="always")
def _snap_impl(fixed, value):
    if isinstance(value, types.Complex):
        return lambda fixed, value: complex(fixed.real, value.imag)
    return lambda fixed, value: fixed
