"""float32 matrix products of the reversible cells' steps, in register-blocked vector kernels.

A reversible step's products are small: ``(B, k) x (k, n)`` with ``B`` the
16 rows of a row group (or 1), e.g. ``(16, 128) x (128, 640)`` for a RevLSTM
half at H=256. Through OpenBLAS each call repacks the whole ``(k, n)``
weight matrix for 16 rows of work: measured with its Haswell kernels on one
core, the packing took about as long as the arithmetic (60 GFLOP/s in all).
These kernels read the weights in place, keep a block of 4 rows by 64
columns in 16 vector registers and stream the weights through them.

Vectors are LLVM ``<16 x float>`` (``F32x16`` of :mod:`~revtrain._kernels.simd`:
one AVX-512 register, two AVX2 ones). A product with a
transposed weight (``dA @ W.T``) takes a transposed copy made once per call
(:func:`revtrain.models.window.transposed`): reading ``W`` across its rows
instead measured 3x slower. Measured on one core (Zen 5, AVX-512), per call:
``(16, 128) x (128, 640)`` 13.8 us against OpenBLAS's 44.0 (its Haswell
kernels, which this machine's environment selects), ``(16, 640) x (640, 128)``
10.5 against 43.3, ``(1, 64) x (64, 320)`` 0.67 against 0.68.

Bits
----
Every output element is computed alone, in an order fixed by the shapes:

element ``out[i, j]`` of :func:`matmul_f32` (``out = A @ W``) is the chain
``fma(A[i, k], W[k, j], .)`` over ``k`` ascending, from 0. So its bits
depend neither on the other rows of the product (how a batch is cut into
row groups) nor on the block an element falls in, the CPU's vector width
or the thread count.
"""
import numpy as np
from numba import njit

from ._options import NJIT_OPTS, INLINE_OPTS
from .mathfn import _fma
from .simd import vload, vstore, vsplat, vfma




@njit(**INLINE_OPTS)
def _vzero():
    """Sixteen float32 zeros."""
    return vsplat(np.float32(0.0))


# ------------------------------------------------------------------ out = A @ W
@njit(**NJIT_OPTS)
def matmul_f32(A, W, out):
    """``out = A @ W``: A (M, K), W (K, N), out (M, N), float32, C-contiguous.

    Blocks of 4 rows by 64 columns (16 vector accumulators), then 4 rows by
    16, then scalar columns; the last ``M % 4`` rows one by one
    (:func:`_row_matmul_f32`). Element ``out[i, j]`` is the fused chain over
    ``k`` ascending from 0 in every block.
    """
    M, K = A.shape
    N = W.shape[1]
    if W.shape[0] != K or out.shape[0] != M or out.shape[1] != N:
        raise ValueError("matmul_f32: the shapes of A (M, K), W (K, N) and out (M, N) "
                         "do not match")
    M4 = M - M % 4
    for r in range(M4, M):
        _row_matmul_f32(A, W, out, r)
    for r in range(0, M4, 4):
        i0 = r
        i1 = r + 1
        i2 = r + 2
        i3 = r + 3
        j = 0
        while j + 64 <= N:
            c00 = _vzero()
            c01 = _vzero()
            c02 = _vzero()
            c03 = _vzero()
            c10 = _vzero()
            c11 = _vzero()
            c12 = _vzero()
            c13 = _vzero()
            c20 = _vzero()
            c21 = _vzero()
            c22 = _vzero()
            c23 = _vzero()
            c30 = _vzero()
            c31 = _vzero()
            c32 = _vzero()
            c33 = _vzero()
            for k in range(K):
                w0 = vload(W, k, j)
                w1 = vload(W, k, j + 16)
                w2 = vload(W, k, j + 32)
                w3 = vload(W, k, j + 48)
                x = vsplat(A[i0, k])
                c00 = vfma(x, w0, c00)
                c01 = vfma(x, w1, c01)
                c02 = vfma(x, w2, c02)
                c03 = vfma(x, w3, c03)
                x = vsplat(A[i1, k])
                c10 = vfma(x, w0, c10)
                c11 = vfma(x, w1, c11)
                c12 = vfma(x, w2, c12)
                c13 = vfma(x, w3, c13)
                x = vsplat(A[i2, k])
                c20 = vfma(x, w0, c20)
                c21 = vfma(x, w1, c21)
                c22 = vfma(x, w2, c22)
                c23 = vfma(x, w3, c23)
                x = vsplat(A[i3, k])
                c30 = vfma(x, w0, c30)
                c31 = vfma(x, w1, c31)
                c32 = vfma(x, w2, c32)
                c33 = vfma(x, w3, c33)
            vstore(out, i3, j, c30)
            vstore(out, i3, j + 16, c31)
            vstore(out, i3, j + 32, c32)
            vstore(out, i3, j + 48, c33)
            vstore(out, i2, j, c20)
            vstore(out, i2, j + 16, c21)
            vstore(out, i2, j + 32, c22)
            vstore(out, i2, j + 48, c23)
            vstore(out, i1, j, c10)
            vstore(out, i1, j + 16, c11)
            vstore(out, i1, j + 32, c12)
            vstore(out, i1, j + 48, c13)
            vstore(out, i0, j, c00)
            vstore(out, i0, j + 16, c01)
            vstore(out, i0, j + 32, c02)
            vstore(out, i0, j + 48, c03)
            j += 64
        while j + 16 <= N:
            c0 = _vzero()
            c1 = _vzero()
            c2 = _vzero()
            c3 = _vzero()
            for k in range(K):
                w0 = vload(W, k, j)
                c0 = vfma(vsplat(A[i0, k]), w0, c0)
                c1 = vfma(vsplat(A[i1, k]), w0, c1)
                c2 = vfma(vsplat(A[i2, k]), w0, c2)
                c3 = vfma(vsplat(A[i3, k]), w0, c3)
            vstore(out, i3, j, c3)
            vstore(out, i2, j, c2)
            vstore(out, i1, j, c1)
            vstore(out, i0, j, c0)
            j += 16
        while j < N:
            for i in range(r, r + 4):
                out[i, j] = _column_f32(A, W, i, j)
            j += 1


@njit(**NJIT_OPTS)
def _column_f32(A, W, i, j):
    """``(A @ W)[i, j]``: the fma chain over ``k`` ascending from 0."""
    acc = np.float32(0.0)
    for k in range(A.shape[1]):
        acc = _fma(A[i, k], W[k, j], acc)
    return acc


@njit(**NJIT_OPTS)
def _row_matmul_f32(A, W, out, i):
    """Row ``i`` of ``out = A @ W`` alone (the rows after the last block of 4): blocks of
    128 columns (8 vector accumulators), then 64, 16, then scalar columns."""
    K = A.shape[1]
    N = W.shape[1]
    j = 0
    while j + 128 <= N:
        c0 = _vzero()
        c1 = _vzero()
        c2 = _vzero()
        c3 = _vzero()
        c4 = _vzero()
        c5 = _vzero()
        c6 = _vzero()
        c7 = _vzero()
        for k in range(K):
            x = vsplat(A[i, k])
            c0 = vfma(x, vload(W, k, j), c0)
            c1 = vfma(x, vload(W, k, j + 16), c1)
            c2 = vfma(x, vload(W, k, j + 32), c2)
            c3 = vfma(x, vload(W, k, j + 48), c3)
            c4 = vfma(x, vload(W, k, j + 64), c4)
            c5 = vfma(x, vload(W, k, j + 80), c5)
            c6 = vfma(x, vload(W, k, j + 96), c6)
            c7 = vfma(x, vload(W, k, j + 112), c7)
        vstore(out, i, j, c0)
        vstore(out, i, j + 16, c1)
        vstore(out, i, j + 32, c2)
        vstore(out, i, j + 48, c3)
        vstore(out, i, j + 64, c4)
        vstore(out, i, j + 80, c5)
        vstore(out, i, j + 96, c6)
        vstore(out, i, j + 112, c7)
        j += 128
    while j + 64 <= N:
        c0 = _vzero()
        c1 = _vzero()
        c2 = _vzero()
        c3 = _vzero()
        for k in range(K):
            x = vsplat(A[i, k])
            c0 = vfma(x, vload(W, k, j), c0)
            c1 = vfma(x, vload(W, k, j + 16), c1)
            c2 = vfma(x, vload(W, k, j + 32), c2)
            c3 = vfma(x, vload(W, k, j + 48), c3)
        vstore(out, i, j, c0)
        vstore(out, i, j + 16, c1)
        vstore(out, i, j + 32, c2)
        vstore(out, i, j + 48, c3)
        j += 64
    while j + 16 <= N:
        c0 = _vzero()
        for k in range(K):
            c0 = vfma(vsplat(A[i, k]), vload(W, k, j), c0)
        vstore(out, i, j, c0)
        j += 16
    while j < N:
        out[i, j] = _column_f32(A, W, i, j)
        j += 1
