"""Argument checks shared by the library's public functions."""
import numpy as np


def positive_int(v, name):
    """``int(v)`` if ``v`` is an int (not a bool) >= 1, else a ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)
