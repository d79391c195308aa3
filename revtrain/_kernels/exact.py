"""Exact multiplication of fixed-point integers by a ratio ``n/d``.

Maclaurin, Duvenaud & Adams (2015), Algorithm 3, on the rANS stack of
:mod:`revtrain._kernels.rans`. For one value ``q`` on stream ``s``::

    r = q mod d              floor modulo, 0 <= r < d also for negative q
    push(r, base=d)          the digits the division destroys
    q = (q - r) // d         exact division
    q = q * n + pop(base=n)  fill the new low digit from the buffer

Multiplying by ``d/n`` with the same routine (``n`` and ``d`` swapped), on the
elements in the reverse order, undoes it bit for bit.
"""
import math

import numpy as np
from numba import int64, types
from numba.extending import overload

from .bits import trailing_zeros
from .rans import buffer_kernel, buffer_op, rans_push, rans_pop, MAX_BASE

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


@buffer_op
def mul_ratio_elem(q, n, d, states, counts, words, s):
    """Return ``q * n / d`` exactly, using stream ``s`` for the lost digits.

    ``1 <= n, d <= 2**16``. The result overflows int64 only if ``n > d`` and
    ``|q|`` is near the int64 limit; callers multiplying by more than 1 check
    first with :func:`overflows`.
    """
    if d == 1:
        r = int64(0)
        base = q
    elif (d & (d - 1)) == 0:
        r = q & (d - 1)
        base = q >> trailing_zeros(d)
    else:
        base = q // d          # floor division (Python semantics in Numba)
        r = q - base * d       # so 0 <= r < d, also for negative q
    rans_push(states, counts, words, s, r, d)
    return base * n + rans_pop(states, counts, words, s, n)


@buffer_op
def overflows(q, n, d):
    """True if ``floor(q / d) * n + (n - 1)`` does not fit in int64."""
    if n <= d:
        return False
    # |q| n / d < 4e18 < 2**62: far from the limit (a product, not a quotient: a division
    # per element limited the undo of a forget-multiply, whose other divisions are needed)
    if abs(float(q)) * float(n) < 4.0e18 * float(d):
        return False
    base = q // d
    if base >= 0:
        return base > (INT64_MAX - (n - 1)) // n
    return base < INT64_MIN // n


def elem(a, s, k):
    """``a[s, k]`` for a 2-D array, ``a`` itself for a scalar (resolved at compile time)."""
    return a if np.ndim(a) == 0 else a[s, k]


@overload(elem)
def _elem_impl(a, s, k):
    if isinstance(a, types.Integer):
        return lambda a, s, k: a
    return lambda a, s, k: a[s, k]


@buffer_kernel
def check_ratios(q, n, d, undo, log2_ratio):
    """One pass over per-element ratios before an exact multiply by ``n / d``.

    Checks ``1 <= n <= d <= 2**16`` (``1 <= d <= n <= 2**16`` when ``undo``:
    the inverse multiplies by the swapped ratio) and that no ``q * n / d`` overflows int64
    (possible only where ``n > d``, that is when undoing), finds the largest
    ``n`` and ``d`` and writes ``log2_ratio[s] = sum_k log2(d / n)`` per stream
    (products of ratios, renormalised by powers of two; one log at the end).

    Returns ``(code, flat_index, n_max, d_max)``: code 0 = fine, 1 = bad ratio,
    2 = overflow, with the flat index of the first offending element.
    """
    S, K = q.shape
    n_max = 1
    d_max = 1
    for s in range(S):
        prod = 1.0
        exp2 = 0
        for k in range(K):
            nn = elem(n, s, k)
            dd = elem(d, s, k)
            lo = min(nn, dd)
            if lo < 1 or max(nn, dd) > MAX_BASE or (nn > dd) != (undo and nn != dd):
                return 1, s * K + k, n_max, d_max
            if overflows(q[s, k], nn, dd):
                return 2, s * K + k, n_max, d_max
            n_max = max(n_max, nn)
            d_max = max(d_max, dd)
            prod *= float(dd) / float(nn)
            if prod > 1e200 or prod < 1e-200:
                m, e = math.frexp(prod)
                prod = m
                exp2 += e
        log2_ratio[s] = math.log2(prod) + exp2
    return 0, -1, n_max, d_max


def shape2(n, d):
    """The 2-D shape of whichever of ``n``, ``d`` is an array."""
    return n.shape if np.ndim(n) else d.shape


@overload(shape2)
def _shape2_impl(n, d):
    if isinstance(n, types.Array):
        return lambda n, d: n.shape
    return lambda n, d: d.shape


@buffer_kernel
def mul_ratio(q, n, d, states, counts, words, reverse):
    """In place ``q[s, k] *= n / d`` for every stream ``s`` and element ``k``.

    ``n`` and ``d`` are ints or int64 arrays shaped like ``q`` (each
    combination compiles to its own specialisation). Elements of a stream are
    processed in increasing ``k``, or decreasing when ``reverse`` (the order
    that undoes a forward pass). The stream loop is innermost so that
    independent streams overlap in the pipeline.
    """
    S, K = q.shape
    for i in range(K):
        k = K - 1 - i if reverse else i
        for s in range(S):
            q[s, k] = mul_ratio_elem(q[s, k], elem(n, s, k), elem(d, s, k),
                                     states, counts, words, s)
