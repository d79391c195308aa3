"""Matrix products called from Python but run through Numba's BLAS.

Numba's ``np.dot`` calls SciPy's OpenBLAS; NumPy's ``np.dot`` calls NumPy's own
copy. The per-step products of the recurrent kernels run in the former. If the
big per-segment products (input projections, weight gradients) ran in NumPy's
library, two OpenBLAS thread pools would alternate: with more than one BLAS
thread (``rt.set_blas_threads(2)``) the idle pool's spinning threads fight the
busy one for the cores (measured on 2 cores, LSTM B=32 H=256 T=100: 249 ms
with two pools vs 128 ms with one). Routing them through these kernels keeps
every product in one pool. Generic over float64 and complex128.
"""
import numpy as np
from numba import njit

from ._options import NJIT_OPTS


@njit(**NJIT_OPTS)
def matmul_into(A, B, out):
    """``out = A @ B``.  A : (m, k).  B : (k, n).  out : (m, n) (C-contiguous)."""
    np.dot(A, B, out)


@njit(**NJIT_OPTS)
def matmul_tn_add(A, B, out, tmp):
    """``out += A.T @ B``.  A : (m, k).  B : (m, n).  out, tmp : (k, n); ``tmp`` is scratch."""
    np.dot(A.T, B, tmp)
    out += tmp
