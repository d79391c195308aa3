"""Conversion between float64 and fixed-point int64.

A real ``x`` is held as the integer ``q = round(x * 2**F)`` with ``F`` fraction
bits (default :data:`DEFAULT_FRAC_BITS` = 32, a resolution of 2**-32 ~ 2.3e-10
and a range of +-2**31 ~ +-2.1e9). Rounding is to nearest, ties to even.
Values that are NaN, infinite or too large for int64 at that radix raise
:class:`~revtrain.FixedPointError`; nothing ever wraps around.
"""
import numpy as np

from ._checks import is_int, int_in_range
from .errors import FixedPointError

DEFAULT_FRAC_BITS = 32
_TWO63 = 2.0 ** 63


def _check_frac_bits(frac_bits):
    """``int(frac_bits)``: TypeError unless an int, ValueError unless in [0, 62]."""
    if not is_int(frac_bits):
        raise TypeError(f"frac_bits must be an int, got {type(frac_bits).__name__}")
    return int_in_range(frac_bits, "frac_bits", 0, 62)


def _describe_bad(x, bad, what):
    idx = np.flatnonzero(bad)
    first = np.unravel_index(idx[0], x.shape) if x.ndim else ()
    value = x[first] if x.ndim else x
    return (f"{len(idx)} value(s) {what}; first at index {tuple(int(i) for i in first)}: "
            f"{float(value)!r}")


def to_fixed(x, frac_bits=DEFAULT_FRAC_BITS):
    """Convert reals to fixed point: ``q = round_half_even(x * 2**frac_bits)``.

    Parameters
    ----------
    x : array_like of real numbers, any shape
    frac_bits : int in [0, 62]
        Number of fraction bits ``F``.

    Returns
    -------
    q : ndarray of int64, same shape as ``x``

    Raises
    ------
    FixedPointError
        If any value is NaN or infinite, or ``|x| * 2**F`` does not fit int64
        (the message gives how many, the first index and its value).
    TypeError
        If ``x`` is not real-valued (complex, object, string, bool).
    """
    F = _check_frac_bits(frac_bits)
    arr = np.asarray(x)
    if arr.dtype == bool or arr.dtype.kind not in "iuf":
        raise TypeError(f"to_fixed needs real numbers, got dtype {arr.dtype}")
    xf = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(xf)
    if bad.any():
        raise FixedPointError("to_fixed: " + _describe_bad(xf, bad, "are NaN or infinite"))
    scaled = np.rint(np.ldexp(xf, F))
    bad = (scaled >= _TWO63) | (scaled < -_TWO63)
    if bad.any():
        limit = 2.0 ** (63 - F)
        raise FixedPointError(
            "to_fixed: " + _describe_bad(xf, bad, f"do not fit int64 with frac_bits={F} "
                                                   f"(|x| must be < {limit:g})")
            + "; use fewer fraction bits or rescale the input")
    return scaled.astype(np.int64)


def from_fixed(q, frac_bits=DEFAULT_FRAC_BITS):
    """Convert fixed point back to float64: ``x = q * 2**-frac_bits``.

    Exact when ``|q| <= 2**53``; otherwise rounded to the nearest float64.

    Parameters
    ----------
    q : array_like of integers, any shape
    frac_bits : int in [0, 62]

    Returns
    -------
    x : ndarray of float64, same shape as ``q``
    """
    F = _check_frac_bits(frac_bits)
    arr = np.asarray(q)
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        raise TypeError(f"from_fixed needs integers, got dtype {arr.dtype}")
    return np.ldexp(arr.astype(np.float64), -F)


def ratio_from_float(factor, bits=16):
    """Quantise a factor in (0, 1] to the ratio ``n / 2**bits`` used by exact multiplies.

    ``n = round(factor * 2**bits)`` clipped to ``[1, 2**bits]``.

    Parameters
    ----------
    factor : float or array_like of floats in (0, 1]
    bits : int in [1, 16]

    Returns
    -------
    n : int64 (scalar or array like ``factor``); the ratio is ``n / 2**bits``
    """
    bits = int_in_range(bits, "bits", 1, 16)
    f = np.asarray(factor, dtype=np.float64)
    bad = ~((f > 0) & (f <= 1))
    if bad.any():
        raise ValueError("ratio_from_float: " + _describe_bad(f, bad, "are not in (0, 1]"))
    n = np.clip(np.rint(f * (1 << bits)), 1, 1 << bits).astype(np.int64)
    return n if n.ndim else np.int64(n)
