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


@njit(**dict(ELEMENT_OPTS, inline="always"))
def _a(A, q, k, a_t):
    """``A[k, q]`` when ``a_t`` (the transposed operand), else ``A[q, k]``."""
    return A[k, q] if a_t else A[q, k]


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
    K = W.shape[0]
    n4 = n - n % 4
    for r in range(0, n4, 4):
        _block4(C, c + r, A, a + r, W, from_zero, K, 0, False)
    for r in range(n4, n):
        _row1(C, c + r, A, a + r, W, from_zero, K, 0, False)


@njit(**ELEMENT_OPTS)
def tn_add(C, A, W, n, w0):
    """``C += A[:n].T @ W[:n, w0:w0 + N]`` in place (the weight gradients of a chunk).

    ``C`` (M, N), ``A`` (R, M), ``W`` (R, >= w0 + N): C-contiguous, all float32 or all
    float64; ``n <= R``. Element ``C[i, j]`` is the chain ``fma(A[k, i], W[k, w0 + j], .)``
    over ``k`` ascending from its old value, so its bits depend neither on the blocks nor
    on the other rows and columns (no temporary is allocated).
    """
    M, N = C.shape
    if (A.shape[1] != M or n < 0 or n > A.shape[0] or n > W.shape[0] or w0 < 0
            or w0 + N > W.shape[1]):
        raise ValueError("tn_add: the shapes of C (M, N), A (R, M), W (R, >= w0 + N) and "
                         "the rows n do not match")
    m4 = M - M % 4
    for r in range(0, m4, 4):
        _block4(C, r, A, r, W, False, n, w0, True)
    for r in range(m4, M):
        _row1(C, r, A, r, W, False, n, w0, True)


@njit(**ELEMENT_OPTS)
def add_column_sums(c, A, n, a0):
    """``c += A[:n, a0:a0 + N].sum(axis=0)`` in place, rows ascending (``c`` (N,))."""
    N = c.shape[0]
    if n < 0 or n > A.shape[0] or a0 < 0 or a0 + N > A.shape[1]:
        raise ValueError("add_column_sums: the shapes of c (N,), A (R, >= a0 + N) and the "
                         "rows n do not match")
    for k in range(n):
        for j in range(N):
            c[j] += A[k, a0 + j]


@njit(**ELEMENT_OPTS)
def _block4(C, p, A, q, W, from_zero, K, w0, a_t):
    """Rows ``p .. p+3`` of ``C`` from rows ``q .. q+3`` of ``A`` (columns of ``A`` when
    ``a_t``) and rows ``0 .. K-1`` of ``W`` from column ``w0``: blocks of 4 vectors
    (16 accumulators), then of 1, then scalar columns."""
    N = C.shape[1]
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
            v0 = vload(W, k, w0 + j)
            v1 = vload(W, k, w0 + j + L)
            v2 = vload(W, k, w0 + j + 2 * L)
            v3 = vload(W, k, w0 + j + 3 * L)
            x = vsplat(_a(A, q, k, a_t))
            c00 = vfma(x, v0, c00)
            c01 = vfma(x, v1, c01)
            c02 = vfma(x, v2, c02)
            c03 = vfma(x, v3, c03)
            x = vsplat(_a(A, q + 1, k, a_t))
            c10 = vfma(x, v0, c10)
            c11 = vfma(x, v1, c11)
            c12 = vfma(x, v2, c12)
            c13 = vfma(x, v3, c13)
            x = vsplat(_a(A, q + 2, k, a_t))
            c20 = vfma(x, v0, c20)
            c21 = vfma(x, v1, c21)
            c22 = vfma(x, v2, c22)
            c23 = vfma(x, v3, c23)
            x = vsplat(_a(A, q + 3, k, a_t))
            c30 = vfma(x, v0, c30)
            c31 = vfma(x, v1, c31)
            c32 = vfma(x, v2, c32)
            c33 = vfma(x, v3, c33)
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
            v0 = vload(W, k, w0 + j)
            c0 = vfma(vsplat(_a(A, q, k, a_t)), v0, c0)
            c1 = vfma(vsplat(_a(A, q + 1, k, a_t)), v0, c1)
            c2 = vfma(vsplat(_a(A, q + 2, k, a_t)), v0, c2)
            c3 = vfma(vsplat(_a(A, q + 3, k, a_t)), v0, c3)
        vstore(C, p, j, c0)
        vstore(C, p + 1, j, c1)
        vstore(C, p + 2, j, c2)
        vstore(C, p + 3, j, c3)
        j += L
    for i in range(4):
        _columns(C, p + i, A, q + i, W, from_zero, j, K, w0, a_t)


@njit(**ELEMENT_OPTS)
def _row1(C, p, A, q, W, from_zero, K, w0, a_t):
    """Row ``p`` of ``C`` from row ``q`` of ``A`` alone (as :func:`_block4`): blocks of 8
    vectors, then 4, then 1, then scalar columns."""
    N = C.shape[1]
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
            x = vsplat(_a(A, q, k, a_t))
            c0 = vfma(x, vload(W, k, w0 + j), c0)
            c1 = vfma(x, vload(W, k, w0 + j + L), c1)
            c2 = vfma(x, vload(W, k, w0 + j + 2 * L), c2)
            c3 = vfma(x, vload(W, k, w0 + j + 3 * L), c3)
            c4 = vfma(x, vload(W, k, w0 + j + 4 * L), c4)
            c5 = vfma(x, vload(W, k, w0 + j + 5 * L), c5)
            c6 = vfma(x, vload(W, k, w0 + j + 6 * L), c6)
            c7 = vfma(x, vload(W, k, w0 + j + 7 * L), c7)
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
            x = vsplat(_a(A, q, k, a_t))
            c0 = vfma(x, vload(W, k, w0 + j), c0)
            c1 = vfma(x, vload(W, k, w0 + j + L), c1)
            c2 = vfma(x, vload(W, k, w0 + j + 2 * L), c2)
            c3 = vfma(x, vload(W, k, w0 + j + 3 * L), c3)
        vstore(C, p, j, c0)
        vstore(C, p, j + L, c1)
        vstore(C, p, j + 2 * L, c2)
        vstore(C, p, j + 3 * L, c3)
        j += 4 * L
    while j + L <= N:
        c0 = z if from_zero else vload(C, p, j)
        for k in range(K):
            c0 = vfma(vsplat(_a(A, q, k, a_t)), vload(W, k, w0 + j), c0)
        vstore(C, p, j, c0)
        j += L
    _columns(C, p, A, q, W, from_zero, j, K, w0, a_t)


@njit(**ELEMENT_OPTS)
def _columns(C, p, A, q, W, from_zero, j0, K, w0, a_t):
    """Columns ``j0 ..`` of row ``p``, one scalar chain each."""
    N = C.shape[1]
    for j in range(j0, N):
        s = zero_of(C) if from_zero else C[p, j]
        for k in range(K):
            s = _fma(_a(A, q, k, a_t), W[k, w0 + j], s)
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
