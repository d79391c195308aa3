"""Register-blocked matrix products of float32 and float64 matrices, written once for both.

The recurrent kernels' products are small: ``(B, k) x (k, n)`` with ``B`` the
16 rows of a row group (or 1), e.g. ``(16, 128) x (128, 640)`` for a RevLSTM
half at H=256, and the diagonals of an MDRNN wavefront (1 to 32 rows).
Through OpenBLAS each call repacks the whole ``(k, n)`` weight matrix for a
few rows of work: measured with its Haswell kernels on one core, the packing
took about as long as the arithmetic (60 GFLOP/s in all in float32). These
kernels read the weights in place, keep a block of 4 rows by 4 vectors in 16
vector registers and stream the weights through them; rows after the last
block of 4 run one by one (blocks of 8, 4 and 1 vectors). Vectors are the
64-byte ``F32x16`` / ``F64x8`` of :mod:`~revtrain._kernels.simd`. Measured on
one core (Zen 5, AVX-512), float32 ``(16, 128) x (128, 640)``: 11-14 us
against OpenBLAS's 44 (its Haswell kernels, which this machine's environment
selects); ``(1, 64) x (64, 320)``: 0.67 against 0.68.

Bits
----
Element ``C[c+i, j]`` of :func:`rows_matmul_add` is the chain
``fma(A[a+i, k], W[k, j], .)`` over ``k`` ascending, starting from its old
value (or from 0). So its bits depend neither on the other rows of the
product (how a batch is cut into row groups) nor on the block the element
falls in, the CPU's vector width or the thread count.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from ._options import ELEMENT_OPTS
from .mathfn import _fma
from .simd import vload, vstore, vsplat, vfma, lanes


def zero_of(a):
    """0 in ``a``'s float type (Numba only)."""
    raise NotImplementedError


@overload(zero_of, inline="always")
def _zero_of_impl(a):
    if a.dtype == types.float32:
        return lambda a: np.float32(0.0)
    return lambda a: 0.0


@njit(**ELEMENT_OPTS)
def rows_matmul_add(C, c, A, a, n, W, from_zero):
    """``C[c+r] = (0 if from_zero else C[c+r]) + A[a+r] @ W`` for ``r < n``.

    ``C``, ``A``, ``W`` (K, N): C-contiguous, all float32 or all float64; ``C`` and
    ``A`` may be the same array if the row ranges do not overlap. Each element is
    the fused chain over ``k`` ascending (module docstring).
    """
    n4 = n - n % 4
    for r in range(0, n4, 4):
        _block4(C, c + r, A, a + r, W, from_zero)
    for r in range(n4, n):
        _row1(C, c + r, A, a + r, W, from_zero)


@njit(**ELEMENT_OPTS)
def _block4(C, p, A, q, W, from_zero):
    """Rows ``p .. p+3`` of ``C`` from rows ``q .. q+3`` of ``A``: blocks of 4 vectors
    (16 accumulators), then of 1, then scalar columns."""
    K, N = W.shape
    L = lanes(C)
    z = vsplat(zero_of(C))
    j = 0
    while j + 4 * L <= N:
        if from_zero:
            c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = z
            c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = z
        else:
            c00, c01 = vload(C, p, j), vload(C, p, j + L)
            c02, c03 = vload(C, p, j + 2 * L), vload(C, p, j + 3 * L)
            c10, c11 = vload(C, p + 1, j), vload(C, p + 1, j + L)
            c12, c13 = vload(C, p + 1, j + 2 * L), vload(C, p + 1, j + 3 * L)
            c20, c21 = vload(C, p + 2, j), vload(C, p + 2, j + L)
            c22, c23 = vload(C, p + 2, j + 2 * L), vload(C, p + 2, j + 3 * L)
            c30, c31 = vload(C, p + 3, j), vload(C, p + 3, j + L)
            c32, c33 = vload(C, p + 3, j + 2 * L), vload(C, p + 3, j + 3 * L)
        for k in range(K):
            w0 = vload(W, k, j)
            w1 = vload(W, k, j + L)
            w2 = vload(W, k, j + 2 * L)
            w3 = vload(W, k, j + 3 * L)
            x = vsplat(A[q, k])
            c00 = vfma(x, w0, c00)
            c01 = vfma(x, w1, c01)
            c02 = vfma(x, w2, c02)
            c03 = vfma(x, w3, c03)
            x = vsplat(A[q + 1, k])
            c10 = vfma(x, w0, c10)
            c11 = vfma(x, w1, c11)
            c12 = vfma(x, w2, c12)
            c13 = vfma(x, w3, c13)
            x = vsplat(A[q + 2, k])
            c20 = vfma(x, w0, c20)
            c21 = vfma(x, w1, c21)
            c22 = vfma(x, w2, c22)
            c23 = vfma(x, w3, c23)
            x = vsplat(A[q + 3, k])
            c30 = vfma(x, w0, c30)
            c31 = vfma(x, w1, c31)
            c32 = vfma(x, w2, c32)
            c33 = vfma(x, w3, c33)
        vstore(C, p, j, c00)
        vstore(C, p, j + L, c01)
        vstore(C, p, j + 2 * L, c02)
        vstore(C, p, j + 3 * L, c03)
        vstore(C, p + 1, j, c10)
        vstore(C, p + 1, j + L, c11)
        vstore(C, p + 1, j + 2 * L, c12)
        vstore(C, p + 1, j + 3 * L, c13)
        vstore(C, p + 2, j, c20)
        vstore(C, p + 2, j + L, c21)
        vstore(C, p + 2, j + 2 * L, c22)
        vstore(C, p + 2, j + 3 * L, c23)
        vstore(C, p + 3, j, c30)
        vstore(C, p + 3, j + L, c31)
        vstore(C, p + 3, j + 2 * L, c32)
        vstore(C, p + 3, j + 3 * L, c33)
        j += 4 * L
    while j + L <= N:
        if from_zero:
            c0 = c1 = c2 = c3 = z
        else:
            c0, c1 = vload(C, p, j), vload(C, p + 1, j)
            c2, c3 = vload(C, p + 2, j), vload(C, p + 3, j)
        for k in range(K):
            w0 = vload(W, k, j)
            c0 = vfma(vsplat(A[q, k]), w0, c0)
            c1 = vfma(vsplat(A[q + 1, k]), w0, c1)
            c2 = vfma(vsplat(A[q + 2, k]), w0, c2)
            c3 = vfma(vsplat(A[q + 3, k]), w0, c3)
        vstore(C, p, j, c0)
        vstore(C, p + 1, j, c1)
        vstore(C, p + 2, j, c2)
        vstore(C, p + 3, j, c3)
        j += L
    for i in range(4):
        _columns(C, p + i, A, q + i, W, from_zero, j)


@njit(**ELEMENT_OPTS)
def _row1(C, p, A, q, W, from_zero):
    """Row ``p`` of ``C`` from row ``q`` of ``A`` alone: blocks of 8 vectors, then 4, then 1,
    then scalar columns."""
    K, N = W.shape
    L = lanes(C)
    z = vsplat(zero_of(C))
    j = 0
    while j + 8 * L <= N:
        if from_zero:
            c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = z
        else:
            c0, c1, c2, c3 = (vload(C, p, j), vload(C, p, j + L), vload(C, p, j + 2 * L),
                              vload(C, p, j + 3 * L))
            c4, c5, c6, c7 = (vload(C, p, j + 4 * L), vload(C, p, j + 5 * L),
                              vload(C, p, j + 6 * L), vload(C, p, j + 7 * L))
        for k in range(K):
            x = vsplat(A[q, k])
            c0 = vfma(x, vload(W, k, j), c0)
            c1 = vfma(x, vload(W, k, j + L), c1)
            c2 = vfma(x, vload(W, k, j + 2 * L), c2)
            c3 = vfma(x, vload(W, k, j + 3 * L), c3)
            c4 = vfma(x, vload(W, k, j + 4 * L), c4)
            c5 = vfma(x, vload(W, k, j + 5 * L), c5)
            c6 = vfma(x, vload(W, k, j + 6 * L), c6)
            c7 = vfma(x, vload(W, k, j + 7 * L), c7)
        vstore(C, p, j, c0)
        vstore(C, p, j + L, c1)
        vstore(C, p, j + 2 * L, c2)
        vstore(C, p, j + 3 * L, c3)
        vstore(C, p, j + 4 * L, c4)
        vstore(C, p, j + 5 * L, c5)
        vstore(C, p, j + 6 * L, c6)
        vstore(C, p, j + 7 * L, c7)
        j += 8 * L
    while j + 4 * L <= N:
        if from_zero:
            c0 = c1 = c2 = c3 = z
        else:
            c0, c1, c2, c3 = (vload(C, p, j), vload(C, p, j + L), vload(C, p, j + 2 * L),
                              vload(C, p, j + 3 * L))
        for k in range(K):
            x = vsplat(A[q, k])
            c0 = vfma(x, vload(W, k, j), c0)
            c1 = vfma(x, vload(W, k, j + L), c1)
            c2 = vfma(x, vload(W, k, j + 2 * L), c2)
            c3 = vfma(x, vload(W, k, j + 3 * L), c3)
        vstore(C, p, j, c0)
        vstore(C, p, j + L, c1)
        vstore(C, p, j + 2 * L, c2)
        vstore(C, p, j + 3 * L, c3)
        j += 4 * L
    while j + L <= N:
        c0 = z if from_zero else vload(C, p, j)
        for k in range(K):
            c0 = vfma(vsplat(A[q, k]), vload(W, k, j), c0)
        vstore(C, p, j, c0)
        j += L
    _columns(C, p, A, q, W, from_zero, j)


@njit(**ELEMENT_OPTS)
def _columns(C, p, A, q, W, from_zero, j0):
    """Columns ``j0 ..`` of row ``p``, one scalar chain each."""
    K, N = W.shape
    for j in range(j0, N):
        s = zero_of(C) if from_zero else C[p, j]
        for k in range(K):
            s = _fma(A[q, k], W[k, j], s)
        C[p, j] = s


@njit(**ELEMENT_OPTS)
def matmul_vec(A, W, out):
    """``out = A @ W``: A (M, K), W (K, N), out (M, N), C-contiguous, all float32 or all
    float64 (:func:`rows_matmul_add` from zero)."""
    M, K = A.shape
    if W.shape[0] != K or out.shape[0] != M or out.shape[1] != W.shape[1]:
        raise ValueError("matmul: the shapes of A (M, K), W (K, N) and out (M, N) "
                         "do not match")
    rows_matmul_add(out, 0, A, 0, M, W, True)
