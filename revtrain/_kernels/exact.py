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
def first_overflow(q, n, d):
    """Flat index of the first element of ``q`` (2-D) for which ``* n / d`` overflows, or -1.

    ``n`` and ``d`` are ints or 2-D arrays shaped like ``q``.
    """
    S, K = q.shape
    for s in range(S):
        for k in range(K):
            if overflows(q[s, k], elem(n, s, k), elem(d, s, k)):
                return s * K + k
    return -1


@buffer_kernel
def first_bad_ratio(n, d):
    """Flat index of the first ``(n, d)`` pair violating ``1 <= n <= d <= 2**16``, or -1.

    ``n`` and ``d`` are ints or 2-D arrays of one shape ``(S, K)``; ``shape``
    is taken from whichever is an array.
    """
    S, K = shape2(n, d)
    for s in range(S):
        for k in range(K):
            nn = elem(n, s, k)
            dd = elem(d, s, k)
            if nn < 1 or nn > dd or dd > MAX_BASE:
                return s * K + k
    return -1


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
