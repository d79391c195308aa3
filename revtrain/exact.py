"""Exact, reversible multiplication of fixed-point arrays by ratios n/d <= 1."""
import math

import numpy as np

from .buffer import InfoBuffer, MAX_BASE
from .errors import FixedPointError
from ._kernels.exact import check_ratios, mul_ratio


def _check_q(q, buf):
    if not isinstance(buf, InfoBuffer):
        raise TypeError(f"buf must be an InfoBuffer, got {type(buf).__name__}")
    if not isinstance(q, np.ndarray) or q.dtype != np.int64:
        got = q.dtype if isinstance(q, np.ndarray) else type(q).__name__
        raise TypeError(f"q must be an int64 ndarray (it is changed in place), got {got}")
    if q.ndim < 1 or q.shape[0] != buf.n_streams:
        raise ValueError(f"q must have shape (n_streams={buf.n_streams}, ...): its leading "
                         f"axis is the stream axis; got shape {q.shape}")
    if not (q.flags.c_contiguous and q.flags.writeable):
        raise ValueError("q must be a writeable C-contiguous array (it is changed in place)")
    return q.reshape(q.shape[0], -1)


def _as_ratio(v, name, shape):
    """An int, or a C-contiguous int64 ``(S, K)`` array of ``v`` broadcast to ``shape``."""
    a = np.asarray(v)
    if a.dtype == bool or a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {a.dtype}")
    if a.ndim == 0:
        return int(a)
    if a.shape != shape:
        try:
            a = np.broadcast_to(a, shape)
        except ValueError:
            raise ValueError(f"{name} must be a scalar or broadcast to q's shape {shape}, "
                             f"got shape {a.shape}") from None
    return np.ascontiguousarray(a.reshape(shape[0], -1), dtype=np.int64)


def _words_needed(K, n_max, d_max):
    """Upper bound on words a pass of K pushes (base <= d_max) and pops (<= n_max) can emit."""
    bits = K * (math.log2(d_max) + math.log2(n_max) + 2.0)
    return min(2 * K, int(math.ceil(bits / 32.0)) + 2)


def _apply(q, num, den, buf, reverse):
    q2 = _check_q(q, buf)
    S, K = q2.shape
    n, d = _as_ratio(num, "n", q.shape), _as_ratio(den, "d", q.shape)
    if np.ndim(n) == 0 and np.ndim(d) == 0 and not 1 <= n <= d <= MAX_BASE:
        raise ValueError(f"need 1 <= n <= d <= {MAX_BASE}, got n={n}, d={d}")
    # multiply by `mul / div`: the forward pass is (n, d), its inverse (d, n) in reverse order
    mul, div = (d, n) if reverse else (n, d)
    log2_ratio = np.empty(S)
    code, bad, mul_max, div_max = check_ratios(q2, mul, div, reverse, log2_ratio)
    if code:
        idx = tuple(int(i) for i in np.unravel_index(bad, q.shape))
        if code == 2:
            raise FixedPointError(f"exact_div would overflow int64 at index {idx} "
                                  f"(value {int(q2.flat[bad])}); nothing was changed")
        nb = n if np.ndim(n) == 0 else int(n.flat[bad])
        db = d if np.ndim(d) == 0 else int(d.flat[bad])
        raise ValueError(f"need 1 <= n <= d <= {MAX_BASE} elementwise; first violation at "
                         f"index {idx}: n={nb}, d={db}")
    buf.reserve(_words_needed(K, mul_max, div_max))
    mul_ratio(q2, mul, div, buf.states, buf.counts, buf.words, reverse)
    # log2_ratio holds sum log2(div / mul): + log2(d/n) going forward, - when undoing
    buf.info += log2_ratio


def exact_mul(q, n, d, buf):
    """Multiply fixed-point values by ``n/d`` in place, keeping the lost digits in ``buf``.

    For each stream ``s`` and its elements in C order::

        r = q mod d   (floor);  buf.push(r, d);  q = (q - r) // d;  q = q*n + buf.pop(n)

    Adds ``log2(d/n)`` bits per element to ``buf.info_bits``. Undo it with
    :func:`exact_div` on the same arguments.

    Parameters
    ----------
    q : ndarray of int64, shape (S, ...), C-contiguous; changed in place.
        The leading axis is the stream axis, ``S == buf.n_streams``.
    n, d : int or int arrays broadcastable to ``q.shape``
        ``1 <= n <= d <= 2**16``.
    buf : InfoBuffer with ``S`` streams.
    """
    _apply(q, n, d, buf, reverse=False)


def exact_div(q, n, d, buf):
    """Undo :func:`exact_mul`: multiply by ``d/n`` in place, reading digits back from ``buf``.

    Elements of each stream are processed in the reverse of C order, so
    ``exact_mul(q, n, d, buf); exact_div(q, n, d, buf)`` restores ``q`` and
    ``buf`` bit for bit. On a buffer that does not hold the matching digits it
    still computes an exact multiply by ``d/n`` (values may grow).

    Raises
    ------
    FixedPointError
        If a result would not fit int64 (checked before anything changes).
    """
    _apply(q, n, d, buf, reverse=True)
