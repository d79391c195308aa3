"""Learning-rate schedules as plain text files.

A schedule file holds one learning rate per line (iteration ``t`` on the
``t``-th rate line), so ``np.loadtxt(path)`` reads it as an array ``(n,)``.
:func:`save_lr_schedule` puts one ``#`` header line first, holding a JSON
object of metadata::

    # {"format": "revtrain-lr-schedule", "version": 1, "momentum": 0.9, "iterations": 3, ...}
    0.5
    0.61803
    0.25

:func:`load_lr_schedule` reads such files, and plain files of numbers without
a header (``#`` lines that are not a JSON header are comments).
"""
import json
import math
import os

import numpy as np

from ._checks import is_number
from .data import read_file_bytes
from .model_file import atomic_write

#: The ``format`` field of the header.
FORMAT = "revtrain-lr-schedule"
#: The header's ``version``; files of a later version are refused.
VERSION = 1


def _check_rates(lr):
    """float64 ``(n,)`` of finite rates > 0, or a ValueError."""
    try:
        arr = np.array(lr, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"lr must be an array of numbers, got {type(lr).__name__}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"lr must be a non-empty 1-D array (one rate per iteration), got "
                         f"shape {arr.shape}")
    bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"learning rates must be finite and > 0, got {float(arr[i])!r} at "
                         f"iteration {i}")
    return arr


def _check_momentum(m, n, where):
    """``m`` as a JSON value: a float in (0, 1), or a list of ``n`` of them; else ValueError."""
    vals = m.tolist() if isinstance(m, np.ndarray) else m
    if is_number(vals):
        items = [vals]
    elif isinstance(vals, (list, tuple)) and len(vals) == n and all(map(is_number, vals)):
        items = list(vals)
    else:
        items = None
    if items is None or not all(0 < x < 1 for x in items):
        raise ValueError(f"{where}: momentum must be a number in (0, 1) or a list of {n} "
                         f"such numbers (one per iteration), got {m!r}")
    return float(items[0]) if is_number(vals) else [float(x) for x in items]


def _json_value(v):
    """numpy scalars and arrays as plain JSON values (``json.dumps``'s ``default``)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def save_lr_schedule(path, lr, momentum, **info):
    """Write a learning-rate schedule: a JSON ``#`` header, then one rate per line.

    The header holds ``{"format": "revtrain-lr-schedule", "version": 1,
    "momentum": momentum, "iterations": n, **info}``. Each rate is written as
    the shortest decimal that reads back to the same float64, so
    :func:`load_lr_schedule` returns ``lr`` bit for bit. The file is replaced
    atomically (a temporary file in the same folder, fsynced, then
    ``os.replace``): an interrupted write leaves the old file or none, never
    a truncated one. Its mode follows the umask, as for any new file.

    Parameters
    ----------
    path : str or os.PathLike
    lr : array_like of float, shape (n,)
        Learning rate of each iteration; finite and > 0.
    momentum : float in (0, 1), or array_like (n,)
        The momentum the rates were tuned with.
    **info
        More metadata (model, hidden size, validation loss, ...): values that
        JSON can hold (numpy scalars and arrays are converted). The keys
        ``format``, ``version`` and ``iterations`` are set here.

    Raises
    ------
    ValueError
        For bad rates, momentum or metadata (nothing is written).
    OSError
        If the file cannot be written (nothing is left behind).
    """
    path = os.fspath(path)
    rates = _check_rates(lr)
    n = rates.shape[0]
    meta = {"format": FORMAT, "version": VERSION,
            "momentum": _check_momentum(momentum, n, "save_lr_schedule"), "iterations": n}
    clash = sorted(set(info) & set(meta))
    if clash:
        raise ValueError(f"save_lr_schedule sets {', '.join(clash)} itself; do not pass "
                         f"{'them' if len(clash) > 1 else 'it'} in info")
    meta.update(info)
    try:
        header = json.dumps(meta, default=_json_value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"save_lr_schedule: the metadata must be JSON values (no NaN or "
                         f"inf): {e}") from None
    text = "# " + header + "\n" + "".join(repr(float(x)) + "\n" for x in rates)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _read_text(path):
    raw = read_file_bytes(path, "learning-rate schedule")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"learning-rate schedule {path!r} is not UTF-8 text") from None


def _parse_header(body, path):
    """The JSON object ``body`` (text after ``#`` on line 1, starting with ``{``) as a dict."""
    try:
        meta = json.loads(body)
    except ValueError as e:
        raise ValueError(f"{path!r} line 1: the header is not valid JSON ({e})") from None
    if meta.get("format", FORMAT) != FORMAT:
        raise ValueError(f"{path!r} is not a learning-rate schedule (header format "
                         f"{meta['format']!r}, expected {FORMAT!r})")
    version = meta.get("version", VERSION)
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(f"{path!r} has schedule format version {version!r}; this revtrain "
                         f"reads version {VERSION} and earlier")
    return meta


def _parse_rate(s, k, path):
    try:
        x = float(s)
    except ValueError:
        raise ValueError(f"{path!r} line {k}: {s[:40]!r} is not a number (expected one "
                         f"learning rate per line)") from None
    if not math.isfinite(x) or x <= 0:
        raise ValueError(f"{path!r} line {k}: learning rates must be finite and > 0, "
                         f"got {s[:40]!r}")
    return x


def load_lr_schedule(path):
    """Read a learning-rate schedule written by :func:`save_lr_schedule` or by hand.

    One rate per line; blank lines and ``#`` comments are skipped. A first
    line ``# {...}`` is the JSON metadata header. When the header has
    ``iterations`` it must match the number of rates, and ``momentum`` must
    be a number in (0, 1) or a list with one per rate.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    lr : ndarray of float64, shape (n,)
        The rates, each finite and > 0, ``n >= 1``.
    meta : dict
        The header (``{}`` for a plain file of numbers).

    Raises
    ------
    ValueError
        Naming the file (and line) for a missing, unreadable, non-UTF-8 or
        empty file, a line that is not one number, a rate that is not finite
        or not > 0, a bad header, or a header that disagrees with the rates.
    """
    path = os.fspath(path)
    meta = {}
    rates = []
    for k, line in enumerate(_read_text(path).splitlines(), 1):
        s = line.strip()
        if k == 1 and s.startswith("#") and s[1:].strip().startswith("{"):
            meta = _parse_header(s[1:].strip(), path)
            continue
        s = s.split("#", 1)[0].strip()
        if s:
            rates.append(_parse_rate(s, k, path))
    if not rates:
        raise ValueError(f"learning-rate schedule {path!r} holds no rates (empty file)")
    n = len(rates)
    if "iterations" in meta and meta["iterations"] != n:
        raise ValueError(f"{path!r}: the header says {meta['iterations']!r} iterations but "
                         f"the file holds {n} rates (truncated or edited?)")
    if "momentum" in meta:
        _check_momentum(meta["momentum"], n, repr(path))
    return np.array(rates, dtype=np.float64), meta
