"""Matrix products called from Python but run through Numba's BLAS.

Numba's ``np.dot`` calls SciPy's OpenBLAS; NumPy's ``np.dot`` calls NumPy's own
copy. The per-step products of the recurrent kernels run in the former. If the
big per-segment products (input projections, weight gradients) ran in NumPy's
library, two OpenBLAS thread pools would alternate: with more than one BLAS
thread (``rt.set_blas_threads(2)``) the idle pool's spinning threads fight the
busy one for the cores (measured on 2 cores, LSTM B=32 H=256 T=100: 249 ms
with two pools vs 128 ms with one). Routing them through these kernels keeps
every product in one pool. Generic over float64 and complex128.

Row blocks
----------
OpenBLAS's result for one row of ``A @ B`` depends on how many rows the
product has (measured: float32 rows of a 40-row product differ in the last
bits from the same rows computed in 16-row pieces). The reversible cells
split a batch into groups of :data:`ROW_BLOCK` rows that run on separate
threads (:mod:`revtrain.models.window`), and their fixed-point trajectory
must not depend on that split nor differ from the per-step reference. So
every product that determines a reversible cell's trajectory, its loss or
its state and input gradients goes through :func:`dot_rows`, which computes
it in fixed blocks of ``ROW_BLOCK`` rows: the same bits whether the batch is
one group or several, on one thread or many. Real products (float32 and
float64) run in register-blocked vector kernels instead
(:func:`~revtrain._kernels.gemm_vec.matmul_vec`), where
each row is computed on its own, 3-4x faster (float32) and 1.3x (the whole
float64 RevLSTM pass) than OpenBLAS's 16-row calls; complex products (the
complex step) keep the BLAS blocks.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from ._options import NJIT_OPTS
from .gemm_vec import matmul_vec, tn_add
from .gemm_nt import matmul_vec_t

#: Rows per block of the reversible cells' per-step products (and rows per thread group).
ROW_BLOCK = 16


def dot_rows(A, B, out):
    """``out = A @ B`` with each row's bits independent of the product's other rows.

    A : (m, k).  B : (k, n) (may be a transposed view).  out : (m, n) C-contiguous.

    float32 / float64: :func:`~revtrain._kernels.gemm_vec.matmul_vec` (a ``B``
    that is not C-contiguous, e.g. ``W.T``, is copied first: pass a transposed
    copy made once where speed matters).
    complex128: BLAS in blocks of :data:`ROW_BLOCK` rows, one call per block.
    (Numba only: an ``overload``.)
    """
    raise NotImplementedError("dot_rows runs inside Numba kernels; use matmul_rows")


@overload(dot_rows, inline="always")
def _dot_rows_impl(A, B, out):
    if A.dtype == B.dtype and A.dtype in (types.float32, types.float64):
        if A.layout == "C" and B.layout == "C":
            return lambda A, B, out: matmul_vec(A, B, out)
        return lambda A, B, out: matmul_vec(np.ascontiguousarray(A), np.ascontiguousarray(B),
                                            out)

    def blocked(A, B, out):
        M = A.shape[0]
        for r0 in range(0, M, ROW_BLOCK):
            r1 = min(M, r0 + ROW_BLOCK)
            np.dot(A[r0:r1], B, out[r0:r1])
    return blocked


def dot_rows_t(A, W, out):
    """``out = A @ W.T`` with each row's bits independent of the product's other rows.

    A : (m, k).  W : (n, k), read in place (no transposed copy).  out : (m, n) C-contiguous.

    float32 / float64: :func:`~revtrain._kernels.gemm_nt.matmul_vec_t` (each element
    a dot product of two rows in the fixed order documented there); complex128: BLAS
    on ``W.T`` in blocks of :data:`ROW_BLOCK` rows. (Numba only: an ``overload``.)
    """
    raise NotImplementedError("dot_rows_t runs inside Numba kernels; use matmul_rows_t")


@overload(dot_rows_t, inline="always")
def _dot_rows_t_impl(A, W, out):
    if A.dtype == W.dtype and A.dtype in (types.float32, types.float64):
        if A.layout == "C" and W.layout == "C":
            return lambda A, W, out: matmul_vec_t(A, W, out)
        return lambda A, W, out: matmul_vec_t(np.ascontiguousarray(A),
                                              np.ascontiguousarray(W), out)
    return lambda A, W, out: dot_rows(A, W.T, out)       # complex: dot_rows' BLAS blocks


def dot_step(A, B, out):
    """``out = A @ B`` for the standard cells' per-step products: float32 / float64
    (C-contiguous operands) in :func:`~revtrain._kernels.gemm_vec.matmul_vec`, anything
    else in one BLAS call. (Numba only: an ``overload``.)"""
    raise NotImplementedError("dot_step runs inside Numba kernels")


@overload(dot_step, inline="always")
def _dot_step_impl(A, B, out):
    if (A.layout == "C" and B.layout == "C" and A.dtype == B.dtype
            and A.dtype in (types.float32, types.float64)):
        return lambda A, B, out: matmul_vec(A, B, out)
    return lambda A, B, out: np.dot(A, B, out)


def add_tn_product(C, A, W, n, w0):
    """``C += A[:n].T @ W[:n, w0:w0 + N]`` in place (``C`` (M, N); the weight gradients of a
    chunk's rows): float32 / float64 C-contiguous operands in
    :func:`~revtrain._kernels.gemm_vec.tn_add` (no temporary, the documented fma chain),
    anything else through BLAS. (Numba only: an ``overload``.)"""
    raise NotImplementedError("add_tn_product runs inside Numba kernels")


@overload(add_tn_product, inline="always")
def _add_tn_product_impl(C, A, W, n, w0):
    if (C.layout == "C" and W.layout == "C" and C.dtype == A.dtype == W.dtype
            and C.dtype in (types.float32, types.float64)):
        return lambda C, A, W, n, w0: tn_add(C, np.ascontiguousarray(A), W, n, w0)
    return lambda C, A, W, n, w0: _add_product_blas(C, A, W, n, w0)


@njit(**NJIT_OPTS)
def _add_product_blas(C, A, W, n, w0):
    N = C.shape[1]
    C[:, :] += np.dot(A[:n].T, W[:n, w0:w0 + N])


def transpose_for_dot(W):
    """``W.T`` as :func:`dot_step` reads it fastest: a C-contiguous copy for float32 and
    float64 (made once per kernel call), the view otherwise. (Numba only: an ``overload``.)"""
    raise NotImplementedError("transpose_for_dot runs inside Numba kernels")


@overload(transpose_for_dot, inline="always")
def _transpose_for_dot_impl(W):
    if W.dtype in (types.float32, types.float64):
        return lambda W: np.ascontiguousarray(W.T)
    return lambda W: W.T


@njit(**NJIT_OPTS)
def matmul_rows(A, B, out):
    """``out = A @ B`` by :func:`dot_rows` (the reversible cells' per-step products)."""
    dot_rows(A, B, out)


@njit(**NJIT_OPTS)
def matmul_rows_t(A, W, out):
    """``out = A @ W.T`` by :func:`dot_rows_t` (the reversible cells' backward products)."""
    dot_rows_t(A, W, out)


@njit(**NJIT_OPTS)
def matmul_into(A, B, out):
    """``out = A @ B``.  A : (m, k).  B : (k, n).  out : (m, n) (C-contiguous)."""
    np.dot(A, B, out)


@njit(**NJIT_OPTS)
def matmul_tn_add(A, B, out, tmp):
    """``out += A.T @ B``.  A : (m, k).  B : (m, n).  out, tmp : (k, n); ``tmp`` is scratch."""
    np.dot(A.T, B, tmp)
    out += tmp
