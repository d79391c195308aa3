"""Two-dimensional RNN cell kernels: ``h[i,j] = tanh(P[i,j] + h[i-1,j] @ Wn + h[i,j-1] @ Ww + b)``.

States outside the grid are zero. Two orders of evaluation:

* **wavefront**: the cells of the anti-diagonal ``i + j = d`` do not depend
  on each other, so the grid is swept in ``rows + cols - 1`` steps, all in
  one kernel call per pass (or one per segment of diagonals: checkpointed
  BPTT recomputes a segment from the states of the diagonal before it).
  States are laid out *by diagonal*: ``S`` has shape ``(n_cells, B, H)`` with
  the cells of diagonal ``d`` at ``off[d] .. off[d+1]-1`` ordered by row
  ``i`` (first row ``i0[d] = max(0, d - cols + 1)``). Then the north
  neighbours ``(i-1, j)`` and the west neighbours ``(i, j-1)`` of a
  diagonal's cells are each one contiguous run of the previous diagonal, and
  each diagonal costs one ``(m B, H) x (H, H)`` product per direction
  (``m`` cells), with no gathering; the backward pass adds one
  ``(H, m B) x (m B, H)`` product per direction for the weight gradients.
* **raster**: cell by cell in row-major order, two ``(B, H) x (H, H)``
  products per cell through BLAS (the reference order, for tests and
  benchmarks).

Generic over float64 and complex128 (complex step).

Products of the wavefront
-------------------------
A diagonal's products are small (``m B`` rows, at most ``min(rows, cols) B``;
1 to 32 rows on a 32x32 grid with ``B = 1``), where a BLAS call costs more
in call overhead and edge handling than in arithmetic (there, with
``H = 64`` on one core, the sweeps ran at about 30 GFLOP/s through OpenBLAS
and at 80 forward, 100 backward with the kernels below). For float64 they run
in the register-blocked kernels :func:`~revtrain._kernels.gemm_vec.rows_matmul_add` (``C += A @ W``:
forward pre-activations, dL/dh of the previous diagonal) and
:func:`_tn_matmul_add_f64` (``Out += X^T D``: weight gradients), written
with 8-lane vectors of float64 (``F64x8``: an LLVM ``<8 x double>``, one
AVX-512 register or two AVX2 ones; loads, stores, broadcast and
``llvm.fma`` below). In ``C += A @ W`` each element is one chain of fused
multiply-adds over ``k`` ascending, starting from its old value; in
``Out += X^T D`` each chunk of 32 rows gives one such chain starting from
zero, added to the element. So an element's bits do not depend on the
output block it falls in (4 rows by 32 columns, 4 by 8, or a scalar column)
or on the CPU's vector width, and nothing depends on thread scheduling.
complex128 arrays (the complex step) take the BLAS path: ``np.dot`` into a
workspace, then an addition.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from ._options import NJIT_OPTS, INLINE_OPTS
from .simd import vload, vstore, vsplat, vfma, vadd
from .gemm_vec import rows_matmul_add
from .mathfn import tanh_, _fma


# ------------------------------------------------------------ 8-lane vectors
# F64x8 (LLVM <8 x double>) loads, stores, broadcast, fma and add: revtrain._kernels.simd
def _f64_matrix(a):
    return isinstance(a, types.Array) and a.dtype == types.float64 and a.ndim == 2 \
        and a.layout == "C"


# ------------------------------------------------------- float64 products
@njit(**NJIT_OPTS)
def _tn_matmul_add_f64(Out, X, x, D, e, n):
    """``Out += X[x:x+n]^T @ D[e:e+n]``, float64, C-contiguous.

    ``Out`` : (K, N), ``X`` rows of length K, ``D`` rows of length N. The rows are summed
    in chunks of 32: for each chunk, element ``[k, j]`` gets the chain
    ``fma(X[x+r1, k], D[e+r1, j], ... fma(X[x+r0, k], D[e+r0, j], 0))`` over the chunk's
    rows ``r0 .. r1`` ascending, added to ``Out[k, j]``. The chunk stays in the L1 cache
    while every block of ``Out`` (4 rows by 32 columns, then by 8, then scalar columns)
    takes it in.
    """
    for r0 in range(0, n, 32):
        _tn_chunk_f64(Out, X, x + r0, D, e + r0, min(32, n - r0))


@njit(**INLINE_OPTS)
def _vadd_into(a, i, j, v):
    """``a[i, j:j+8] += v``."""
    vstore(a, i, j, vadd(vload(a, i, j), v))


@njit(**NJIT_OPTS)
def _tn_chunk_f64(Out, X, x, D, e, n):
    """:func:`_tn_matmul_add_f64` on one chunk of rows (``n <= 32``)."""
    K, N = Out.shape
    last = K - 1
    for k in range(0, K, 4):
        k1 = min(k + 1, last)           # a last block of fewer than 4 rows repeats its
        k2 = min(k + 2, last)           # last row (the copies are not stored)
        k3 = min(k + 3, last)
        j = 0
        while j + 32 <= N:
            z = vsplat(0.0)
            c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = z
            c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = z
            for r in range(n):
                d0 = vload(D, e + r, j)
                d1 = vload(D, e + r, j + 8)
                d2 = vload(D, e + r, j + 16)
                d3 = vload(D, e + r, j + 24)
                v = vsplat(X[x + r, k])
                c00 = vfma(v, d0, c00)
                c01 = vfma(v, d1, c01)
                c02 = vfma(v, d2, c02)
                c03 = vfma(v, d3, c03)
                v = vsplat(X[x + r, k1])
                c10 = vfma(v, d0, c10)
                c11 = vfma(v, d1, c11)
                c12 = vfma(v, d2, c12)
                c13 = vfma(v, d3, c13)
                v = vsplat(X[x + r, k2])
                c20 = vfma(v, d0, c20)
                c21 = vfma(v, d1, c21)
                c22 = vfma(v, d2, c22)
                c23 = vfma(v, d3, c23)
                v = vsplat(X[x + r, k3])
                c30 = vfma(v, d0, c30)
                c31 = vfma(v, d1, c31)
                c32 = vfma(v, d2, c32)
                c33 = vfma(v, d3, c33)
            _vadd_into(Out, k, j, c00)
            _vadd_into(Out, k, j + 8, c01)
            _vadd_into(Out, k, j + 16, c02)
            _vadd_into(Out, k, j + 24, c03)
            if k + 1 <= last:
                _vadd_into(Out, k1, j, c10)
                _vadd_into(Out, k1, j + 8, c11)
                _vadd_into(Out, k1, j + 16, c12)
                _vadd_into(Out, k1, j + 24, c13)
            if k + 2 <= last:
                _vadd_into(Out, k2, j, c20)
                _vadd_into(Out, k2, j + 8, c21)
                _vadd_into(Out, k2, j + 16, c22)
                _vadd_into(Out, k2, j + 24, c23)
            if k + 3 <= last:
                _vadd_into(Out, k3, j, c30)
                _vadd_into(Out, k3, j + 8, c31)
                _vadd_into(Out, k3, j + 16, c32)
                _vadd_into(Out, k3, j + 24, c33)
            j += 32
        while j + 8 <= N:
            z = vsplat(0.0)
            c00 = c10 = c20 = c30 = z
            for r in range(n):
                d0 = vload(D, e + r, j)
                c00 = vfma(vsplat(X[x + r, k]), d0, c00)
                c10 = vfma(vsplat(X[x + r, k1]), d0, c10)
                c20 = vfma(vsplat(X[x + r, k2]), d0, c20)
                c30 = vfma(vsplat(X[x + r, k3]), d0, c30)
            _vadd_into(Out, k, j, c00)
            if k + 1 <= last:
                _vadd_into(Out, k1, j, c10)
            if k + 2 <= last:
                _vadd_into(Out, k2, j, c20)
            if k + 3 <= last:
                _vadd_into(Out, k3, j, c30)
            j += 8
        for kk in range(k, min(k + 4, K)):
            for jj in range(j, N):
                s = 0.0
                for r in range(n):
                    s = _fma(X[x + r, kk], D[e + r, jj], s)
                Out[kk, jj] += s


# ------------------------------------------------ products, any dtype
def _rows_matmul_add(C, c, A, a, n, W, tmp):
    """``C[c:c+n] += A[a:a+n] @ W`` (float64: :func:`~revtrain._kernels.gemm_vec.rows_matmul_add`; else BLAS
    into ``tmp`` (>= n rows) and an addition)."""
    raise NotImplementedError


def _tn_matmul_add(Out, X, x, D, e, n, tmp):
    """``Out += X[x:x+n]^T @ D[e:e+n]`` (float64: :func:`_tn_matmul_add_f64`; else BLAS
    into ``tmp`` (shape of ``Out``) and an addition)."""
    raise NotImplementedError


@overload(_rows_matmul_add, inline="always")
def _rows_matmul_add_impl(C, c, A, a, n, W, tmp):
    if _f64_matrix(C) and _f64_matrix(A) and _f64_matrix(W):
        def impl(C, c, A, a, n, W, tmp):
            rows_matmul_add(C, c, A, a, n, W, False)
        return impl

    def impl(C, c, A, a, n, W, tmp):
        np.dot(A[a:a + n], W, tmp[:n])
        _add_into(C[c:c + n], tmp, n)
    return impl


@overload(_tn_matmul_add, inline="always")
def _tn_matmul_add_impl(Out, X, x, D, e, n, tmp):
    if _f64_matrix(Out) and _f64_matrix(X) and _f64_matrix(D):
        def impl(Out, X, x, D, e, n, tmp):
            _tn_matmul_add_f64(Out, X, x, D, e, n)
        return impl

    def impl(Out, X, x, D, e, n, tmp):
        np.dot(X[x:x + n].T, D[e:e + n], tmp)
        Out += tmp
    return impl


@njit(**NJIT_OPTS)
def _add_into(dst, src, n):
    """``dst[:n] += src[:n]`` for 2-D arrays."""
    H = dst.shape[1]
    for r in range(n):
        for j in range(H):
            dst[r, j] += src[r, j]


@njit(**NJIT_OPTS)
def _neighbours(d, off, i0s, base):
    """Runs of diagonal ``d`` and their neighbours on diagonal ``d - 1``.

    Returns ``(north_dst, north_src, n_north, west_dst, west_src, n_west)``:
    cell indices (diagonal order, minus ``base``) of the first cell with a
    north / west neighbour, of that neighbour, and the run lengths.
    """
    c0 = off[d] - base
    i0 = i0s[d]
    i1 = i0 + (off[d + 1] - off[d]) - 1
    p0 = off[d - 1] - base
    pi0 = i0s[d - 1]
    a = max(i0, 1)                      # cells with i >= 1 have a north neighbour
    n_north = i1 - a + 1
    north_dst = c0 + (a - i0)
    north_src = p0 + (a - 1 - pi0)
    e = min(i1, d - 1)                  # cells with j = d - i >= 1 have a west neighbour
    n_west = e - i0 + 1
    west_dst = c0
    west_src = p0 + (i0 - pi0)
    return north_dst, north_src, max(n_north, 0), west_dst, west_src, max(n_west, 0)


@njit(**NJIT_OPTS)
def mdrnn_wavefront_forward(S, Wn, Ww, b, off, i0s, d_first, d_last, base, tmp):
    """Forward sweep over the anti-diagonals ``d_first .. d_last-1``, in place.

    Parameters
    ----------
    S : (m, B, H), diagonal order, holding the cells ``base .. base+m-1``:
        the states of diagonal ``d_first - 1`` (if ``d_first > 0``; then
        ``base = off[d_first - 1]``, else ``base = 0``) followed by the swept
        diagonals. On entry the swept cells hold the input projections
        ``x[i,j] @ W_in``; on exit their hidden states.
    Wn, Ww : (H, H) north and west recurrent weights.  b : (H,).
    off : int64 (n_diag + 1,) first cell of each diagonal.
    i0s : int64 (n_diag,) row of each diagonal's first cell.
    d_first, d_last, base : int, see above (whole grid: ``0, n_diag, 0``).
    tmp : (max_cells * B, H) workspace, ``max_cells = min(rows, cols)`` (complex128 only).

    Notes
    -----
    A cell's pre-activation is ``P``, plus ``h_north @ Wn``, plus ``h_west @ Ww``; in
    float64 each element is one FMA chain (``P``, then the north terms, then the west
    terms, see :func:`~revtrain._kernels.gemm_vec.rows_matmul_add`), then ``+ b`` and ``tanh``.
    """
    N, B, H = S.shape
    S2 = S.reshape(N * B, H)
    for d in range(d_first, d_last):
        c0 = off[d] - base
        c1 = off[d + 1] - base
        if d > 0:
            nd, ns, nn, wd, wsrc, nw = _neighbours(d, off, i0s, base)
            if nn > 0:
                _rows_matmul_add(S2, nd * B, S2, ns * B, nn * B, Wn, tmp)
            if nw > 0:
                _rows_matmul_add(S2, wd * B, S2, wsrc * B, nw * B, Ww, tmp)
        for r in range(c0 * B, c1 * B):
            for j in range(H):
                S2[r, j] = tanh_(S2[r, j] + b[j])


@njit(**NJIT_OPTS)
def mdrnn_wavefront_backward(S, dS, WnT, WwT, off, i0s, d_first, d_last, base, dWn, dWw,
                             tmp, tmpHH):
    """Backward sweep over the anti-diagonals ``d_last-1`` down to ``d_first``.

    Parameters
    ----------
    S : (m, B, H) states laid out as in :func:`mdrnn_wavefront_forward`.
    dS : (m, B, H), same cells. On entry dL/dh of the swept cells (from the
        output layer and from later diagonals); on exit their dL/da, ``a`` the
        pre-activation (its sum over cells and batch is the bias gradient,
        ``x^T dS`` the input-weight gradient). The rows of diagonal
        ``d_first - 1`` (if present) receive its contributions to dL/dh there.
    WnT, WwT : (H, H) the transposed recurrent weights ``Wn.T``, ``Ww.T`` (C-contiguous).
    off, i0s, d_first, d_last, base : as in the forward sweep.
    dWn, dWw : (H, H) gradients, accumulated.
    tmp : (max_cells * B, H) and tmpHH : (H, H) workspaces (complex128 only).

    Notes
    -----
    ``da[i,j] = dh[i,j] (1 - h[i,j]^2)``; it sends ``da @ Wn^T`` to
    ``dh[i-1,j]`` and ``da @ Ww^T`` to ``dh[i,j-1]``, and adds
    ``h[i-1,j]^T da`` to ``dWn`` and ``h[i,j-1]^T da`` to ``dWw``. In float64
    every element of ``dh`` and of the weight gradients is one FMA chain
    continued diagonal by diagonal (see :func:`_tn_matmul_add_f64`).
    """
    N, B, H = S.shape
    S2 = S.reshape(N * B, H)
    dS2 = dS.reshape(N * B, H)
    for d in range(d_last - 1, d_first - 1, -1):
        c0 = off[d] - base
        c1 = off[d + 1] - base
        for r in range(c0 * B, c1 * B):
            for j in range(H):
                h = S2[r, j]
                dS2[r, j] = dS2[r, j] * (1.0 - h * h)
        if d > 0:
            nd, ns, nn, wd, wsrc, nw = _neighbours(d, off, i0s, base)
            if nn > 0:
                _rows_matmul_add(dS2, ns * B, dS2, nd * B, nn * B, WnT, tmp)
                _tn_matmul_add(dWn, S2, ns * B, dS2, nd * B, nn * B, tmpHH)
            if nw > 0:
                _rows_matmul_add(dS2, wsrc * B, dS2, wd * B, nw * B, WwT, tmp)
                _tn_matmul_add(dWw, S2, wsrc * B, dS2, wd * B, nw * B, tmpHH)


@njit(**NJIT_OPTS)
def mdrnn_raster_forward(S, Wn, Ww, b, tmp):
    """Forward cell by cell in row-major order, in place.

    S : (rows, cols, B, H); on entry the input projections, on exit the states.
    Wn, Ww : (H, H).  b : (H,).  tmp : (B, H) workspace.
    """
    rows, cols, B, H = S.shape
    for i in range(rows):
        for j in range(cols):
            a = S[i, j]
            if i > 0:
                np.dot(S[i - 1, j], Wn, tmp)
                _add_into(a, tmp, B)
            if j > 0:
                np.dot(S[i, j - 1], Ww, tmp)
                _add_into(a, tmp, B)
            for r in range(B):
                for c in range(H):
                    a[r, c] = tanh_(a[r, c] + b[c])


@njit(**NJIT_OPTS)
def mdrnn_raster_backward(S, dS, Wn, Ww, dWn, dWw, tmp, tmpHH):
    """Backward cell by cell in reverse row-major order.

    S : (rows, cols, B, H) states.  dS : (rows, cols, B, H), dL/dh from the
    output layer on entry, dL/da on exit.  dWn, dWw : (H, H) accumulated.
    tmp : (B, H) and tmpHH : (H, H) workspaces.
    """
    rows, cols, B, H = S.shape
    for i in range(rows - 1, -1, -1):
        for j in range(cols - 1, -1, -1):
            h = S[i, j]
            da = dS[i, j]
            for r in range(B):
                for c in range(H):
                    da[r, c] = da[r, c] * (1.0 - h[r, c] * h[r, c])
            if i > 0:
                np.dot(da, Wn.T, tmp)
                _add_into(dS[i - 1, j], tmp, B)
                np.dot(S[i - 1, j].T, da, tmpHH)
                dWn += tmpHH
            if j > 0:
                np.dot(da, Ww.T, tmp)
                _add_into(dS[i, j - 1], tmp, B)
                np.dot(S[i, j - 1].T, da, tmpHH)
                dWw += tmpHH
