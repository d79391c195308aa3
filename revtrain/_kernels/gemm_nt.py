"""``out = A @ W.T`` with ``W`` read in place: the backward's products by transposed weights.

A reversible cell's backward multiplies its pre-activation gradients by the
transposed weights at every step (``dA @ W.T``: dL/dh of the other half, of
the layer below, of the output layer). Reading ``W.T`` column-wise is slow, so
these products used to read transposed copies of every weight block made once
per call: as much memory again as the parameters (1.4 MiB of a RevLSTM at
H = 256 in float64). This kernel reads ``W`` (N, K) itself: element
``out[r, i]`` is a dot product of two C-contiguous rows, ``A[r]`` and ``W[i]``.

Bits
----
With ``L`` the lanes of the dtype's vector (:mod:`~revtrain._kernels.simd`: 16
for float32, 8 for float64) and ``Kv = K - K % L``:

1. lane ``j < L`` is the chain ``acc_j = fma(A[r, k], W[i, k], acc_j)`` over
   ``k = j, j + L, ..., < Kv`` ascending, from 0;
2. ``s = vsum(acc)``, the lanes added in the fixed tree of
   :func:`~revtrain._kernels.simd.vsum`;
3. ``s = fma(A[r, k], W[i, k], s)`` for ``k = Kv .. K-1`` ascending;
4. ``out[r, i] = s``.

So an element's bits depend neither on the block it falls in nor on the other
rows (how a batch is cut into row groups), the CPU's vector width or the thread
count; the per-step reference (:func:`~revtrain._kernels.gemm.matmul_rows_t`)
and the window kernels give the same bits. It is another order than
:func:`~revtrain._kernels.gemm_vec.matmul_vec` of a transposed copy (whose
chain runs over ``k`` ascending in one lane).
"""
from numba import njit

from ._options import ELEMENT_OPTS
from .gemm_vec import zero_of
from .mathfn import _fma
from .simd import vload, vsplat, vfma, vsum, lanes


@njit(**dict(ELEMENT_OPTS, inline="always"))
def _tail(A, r, W, i, s, K0, K):
    """Step 3 of the module docstring: the columns ``K0 .. K-1`` onto ``s``."""
    for k in range(K0, K):
        s = _fma(A[r, k], W[i, k], s)
    return s


@njit(**ELEMENT_OPTS)
def _block4x4(out, A, r, W, i, Kv, K):
    """``out[r:r+4, i:i+4]``: 16 vector accumulators, each (A row, W row) pair's own."""
    L = lanes(A)
    z = vsplat(zero_of(A))
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = z
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = z
    for k in range(0, Kv, L):
        w0, w1 = vload(W, i, k), vload(W, i + 1, k)
        w2, w3 = vload(W, i + 2, k), vload(W, i + 3, k)
        a = vload(A, r, k)
        c00, c01 = vfma(a, w0, c00), vfma(a, w1, c01)
        c02, c03 = vfma(a, w2, c02), vfma(a, w3, c03)
        a = vload(A, r + 1, k)
        c10, c11 = vfma(a, w0, c10), vfma(a, w1, c11)
        c12, c13 = vfma(a, w2, c12), vfma(a, w3, c13)
        a = vload(A, r + 2, k)
        c20, c21 = vfma(a, w0, c20), vfma(a, w1, c21)
        c22, c23 = vfma(a, w2, c22), vfma(a, w3, c23)
        a = vload(A, r + 3, k)
        c30, c31 = vfma(a, w0, c30), vfma(a, w1, c31)
        c32, c33 = vfma(a, w2, c32), vfma(a, w3, c33)
    out[r, i] = _tail(A, r, W, i, vsum(c00), Kv, K)
    out[r, i + 1] = _tail(A, r, W, i + 1, vsum(c01), Kv, K)
    out[r, i + 2] = _tail(A, r, W, i + 2, vsum(c02), Kv, K)
    out[r, i + 3] = _tail(A, r, W, i + 3, vsum(c03), Kv, K)
    out[r + 1, i] = _tail(A, r + 1, W, i, vsum(c10), Kv, K)
    out[r + 1, i + 1] = _tail(A, r + 1, W, i + 1, vsum(c11), Kv, K)
    out[r + 1, i + 2] = _tail(A, r + 1, W, i + 2, vsum(c12), Kv, K)
    out[r + 1, i + 3] = _tail(A, r + 1, W, i + 3, vsum(c13), Kv, K)
    out[r + 2, i] = _tail(A, r + 2, W, i, vsum(c20), Kv, K)
    out[r + 2, i + 1] = _tail(A, r + 2, W, i + 1, vsum(c21), Kv, K)
    out[r + 2, i + 2] = _tail(A, r + 2, W, i + 2, vsum(c22), Kv, K)
    out[r + 2, i + 3] = _tail(A, r + 2, W, i + 3, vsum(c23), Kv, K)
    out[r + 3, i] = _tail(A, r + 3, W, i, vsum(c30), Kv, K)
    out[r + 3, i + 1] = _tail(A, r + 3, W, i + 1, vsum(c31), Kv, K)
    out[r + 3, i + 2] = _tail(A, r + 3, W, i + 2, vsum(c32), Kv, K)
    out[r + 3, i + 3] = _tail(A, r + 3, W, i + 3, vsum(c33), Kv, K)


@njit(**ELEMENT_OPTS)
def _block1x8(out, A, r, W, i, Kv, K):
    """``out[r, i:i+8]``: one A row against 8 W rows (8 independent chains)."""
    L = lanes(A)
    z = vsplat(zero_of(A))
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = z
    for k in range(0, Kv, L):
        a = vload(A, r, k)
        c0, c1 = vfma(a, vload(W, i, k), c0), vfma(a, vload(W, i + 1, k), c1)
        c2, c3 = vfma(a, vload(W, i + 2, k), c2), vfma(a, vload(W, i + 3, k), c3)
        c4, c5 = vfma(a, vload(W, i + 4, k), c4), vfma(a, vload(W, i + 5, k), c5)
        c6, c7 = vfma(a, vload(W, i + 6, k), c6), vfma(a, vload(W, i + 7, k), c7)
    out[r, i] = _tail(A, r, W, i, vsum(c0), Kv, K)
    out[r, i + 1] = _tail(A, r, W, i + 1, vsum(c1), Kv, K)
    out[r, i + 2] = _tail(A, r, W, i + 2, vsum(c2), Kv, K)
    out[r, i + 3] = _tail(A, r, W, i + 3, vsum(c3), Kv, K)
    out[r, i + 4] = _tail(A, r, W, i + 4, vsum(c4), Kv, K)
    out[r, i + 5] = _tail(A, r, W, i + 5, vsum(c5), Kv, K)
    out[r, i + 6] = _tail(A, r, W, i + 6, vsum(c6), Kv, K)
    out[r, i + 7] = _tail(A, r, W, i + 7, vsum(c7), Kv, K)


@njit(**ELEMENT_OPTS)
def _block1x1(out, A, r, W, i, Kv, K):
    """``out[r, i]`` alone."""
    L = lanes(A)
    c = vsplat(zero_of(A))
    for k in range(0, Kv, L):
        c = vfma(vload(A, r, k), vload(W, i, k), c)
    out[r, i] = _tail(A, r, W, i, vsum(c), Kv, K)


@njit(**ELEMENT_OPTS)
def matmul_vec_t(A, W, out):
    """``out = A @ W.T``: A (M, K), W (N, K), out (M, N), C-contiguous, all float32 or all
    float64; each element as in the module docstring.

    Blocks of 4 W rows (kept in L1 while every block of 4 A rows streams past them), then
    single rows; the W rows of a lone A row in blocks of 8.
    """
    M, K = A.shape
    N = W.shape[0]
    if W.shape[1] != K or out.shape[0] != M or out.shape[1] != N:
        raise ValueError("matmul_t: the shapes of A (M, K), W (N, K) and out (M, N) "
                         "do not match")
    Kv = K - K % lanes(A)
    M4, N4 = M - M % 4, N - N % 4
    for i in range(0, N4, 4):
        for r in range(0, M4, 4):
            _block4x4(out, A, r, W, i, Kv, K)
    for i in range(N4, N):
        for r in range(M4):
            _block1x1(out, A, r, W, i, Kv, K)
    for r in range(M4, M):
        N8 = N - N % 8
        for i in range(0, N8, 8):
            _block1x8(out, A, r, W, i, Kv, K)
        for i in range(N8, N):
            _block1x1(out, A, r, W, i, Kv, K)
