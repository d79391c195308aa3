"""Argument checks shared by the library's public functions.

One vocabulary for "is this an int / a number, and is it in range". Every
check that accepts a value returns it as a plain Python ``int`` or ``float``,
so no numpy scalar type (``np.int32``, ``np.float32``, ...) leaks into an
object's state or a saved file. Rejections raise ``ValueError`` with a message
of the form ``"<name> must be <what>, got <repr(v)>"``.

``bool`` is rejected everywhere an int or a number is asked for, although
Python treats ``True`` as ``1``: a flag passed where a count is expected is a
caller's mistake, not a count.
"""
import math

import numpy as np


def is_int(v):
    """True if ``v`` is a Python or numpy integer and not a ``bool``."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_number(v):
    """True if ``v`` is a real Python or numpy int or float and not a ``bool``.

    NaN and infinities are numbers here; the range checks below reject them.
    """
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def positive_int(v, name, none_ok=False):
    """``int(v)`` if ``v`` is an int >= 1, else a ValueError naming ``name``.

    With ``none_ok=True`` ``None`` is accepted and returned unchanged.
    """
    if none_ok and v is None:
        return None
    if not is_int(v) or v < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if none_ok else ''}, "
                         f"got {v!r}")
    return int(v)


def int_at_least(v, name, lo):
    """``int(v)`` if ``v`` is an int with ``v >= lo``, else a ValueError naming ``name``."""
    if not is_int(v) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


def nonneg_int(v, name):
    """``int(v)`` if ``v`` is an int >= 0 (a seed, a delay, a length), else a ValueError."""
    return int_at_least(v, name, 0)


def int_in_range(v, name, lo, hi):
    """``int(v)`` if ``v`` is an int with ``lo <= v <= hi`` (both ends included)."""
    if not is_int(v) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {v!r}")
    return int(v)


def positive_number(v, name, none_ok=False):
    """``float(v)`` if ``v`` is a finite number > 0, else a ValueError naming ``name``.

    With ``none_ok=True`` ``None`` is accepted and returned unchanged.
    """
    if none_ok and v is None:
        return None
    if not is_number(v) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number"
                         f"{' or None' if none_ok else ''}, got {v!r}")
    return float(v)


def number_in_range(v, name, lo, hi, lo_open=False, hi_open=False):
    """``float(v)`` if ``v`` is a number in the interval from ``lo`` to ``hi``.

    The interval is closed at each end unless ``lo_open`` / ``hi_open``: for
    example ``lo_open=True, hi_open=True`` is (lo, hi), a fraction strictly
    between 0 and 1 when ``lo, hi = 0, 1``. NaN is never in range. The message
    writes the interval with brackets, e.g. ``"b1 must be in [0, 1), got 1.0"``.
    """
    ok = is_number(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
    if not ok:
        raise ValueError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}"
                         f"{')' if hi_open else ']'}, got {v!r}")
    return float(v)
