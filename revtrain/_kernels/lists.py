"""Numba typed Lists of arrays, built in one compiled call.

The whole-window kernels take per-layer parameter blocks as typed Lists
(:func:`revtrain.models.window_arrays.stacked`). Filling a ``numba.typed.List``
from Python dispatches one compiled ``append`` per element: about 14 us for a
one-element list, a dozen lists per ``loss_and_grad`` call; :func:`typed_list`
builds it in one call (about 2 us, measured).
"""
from numba import njit
from numba.typed import List

from ._options import NJIT_OPTS


@njit(**NJIT_OPTS)
def typed_list(arrays):
    """A typed List of the arrays in the tuple ``arrays``, in order (all of one Numba type:
    dtype, dimensions, layout and writeability)."""
    out = List()
    for a in arrays:
        out.append(a)
    return out
