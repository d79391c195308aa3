"""RevMDRNN kernels: exact momentum updates of one anti-diagonal, and cell gathers.

The reversible two-dimensional cell (see :class:`revtrain.RevMDRNN`) keeps a
*frontier*: for every column ``c`` the fixed-point state of the last cell
computed in that column, as rows ``c*B .. c*B+B-1`` of int64 arrays of shape
``(cols*B, H)``. Sweeping anti-diagonal ``d`` updates the cells
``(d-c, c)`` for ``c`` in ``[c0, c1]`` -- the contiguous frontier rows
``c0*B .. (c1+1)*B-1`` -- by

    v <- v * n / D + inc        (exact multiply, lost digits to the buffer)
    h <- h + v                  (integer add)

The information buffer has one rANS stream per batch row ``b``: frontier row
``r`` of a diagonal block uses stream ``r % B``. Within a stream the forward
kernel pushes in the order (column ascending, unit ascending) and the undo
pops in exactly the reverse order (column descending, unit descending), so
diagonals undone in reverse order recover every bit.

The element updates are :func:`~revtrain._kernels.quantize.forget_add_elem`
and its undo, as for sequences; the loops that push and pop per element are compiled with ``buffer_kernel`` (no Numba runtime) and return an
error code instead of raising: ``-1`` = fine, otherwise the flat index
``r * H + j`` of the first offending element of the block.
"""
from numba import njit

from ._options import NJIT_OPTS
from .quantize import forget_add_elem, forget_add_undo_elem
from .rans import buffer_kernel


@buffer_kernel
def diag_forget_add(q, n, inc, B, D, states, counts, words, info, log2tab):
    """In place ``q[r, j] = q[r, j] * n[r, j] / D + inc[r, j]`` exactly, stream ``r % B``.

    Parameters
    ----------
    q : int64 (m*B, H)     the velocity rows of one diagonal (``m`` columns, row ``k*B + b``).
    n : int64 (>= m*B, H)  ratios, ``1 <= n <= D`` (only the first ``m*B`` rows are read).
    inc : int64 (>= m*B, H) fixed-point increments.
    B : int                batch size = number of streams.
    D : int                denominator ``2**gate_bits``.
    states, counts, words : InfoBuffer arrays with ``B`` streams (room reserved by the caller).
    info : float64 (B,)    information per stream; ``log2(D / n)`` added per element.
    log2tab : float64 (D + 1,) ``log2`` table.

    Returns
    -------
    code : int  -1, or the flat index of the first result with ``|q| >= LIMIT``.
    """
    R, H = q.shape
    m = R // B
    ld = log2tab[D]
    for k in range(m):
        for b in range(B):
            r = k * B + b
            for j in range(H):
                nn = n[r, j]
                v, ok = forget_add_elem(q[r, j], nn, inc[r, j], D, states, counts, words, b)
                if not ok:
                    return r * H + j
                q[r, j] = v
                info[b] += ld - log2tab[nn]
    return -1


@buffer_kernel
def diag_forget_add_undo(q, n, inc, B, D, states, counts, words, info, log2tab):
    """Undo :func:`diag_forget_add`: ``q[r, j] = (q[r, j] - inc[r, j]) * D / n[r, j]``.

    Elements are visited in the reverse order of the forward kernel (columns
    and units descending). Returns -1, or the flat index of the first element
    whose value is out of range or whose undo would overflow int64 (a
    corrupted state or buffer).
    """
    R, H = q.shape
    m = R // B
    ld = log2tab[D]
    for kk in range(m):
        k = m - 1 - kk
        for b in range(B):
            r = k * B + b
            for jj in range(H):
                j = H - 1 - jj
                nn = n[r, j]
                v, ok = forget_add_undo_elem(q[r, j], nn, inc[r, j], D, states, counts, words, b)
                if not ok:
                    return r * H + j
                q[r, j] = v
                info[b] -= ld - log2tab[nn]
    return -1


@njit(**NJIT_OPTS)
def store_cells(src, d, c0, c1, dst):
    """Copy a diagonal's frontier rows into a per-cell array.

    ``dst[d - c, c, b, :] = src[(c - c0)*B + b, :]`` for ``c`` in ``[c0, c1]``.

    src : ((c1-c0+1)*B, H).  dst : (rows, cols, B, H), any dtype ``src`` converts to.
    """
    rows, cols, B, H = dst.shape
    for c in range(c0, c1 + 1):
        i = d - c
        for b in range(B):
            r = (c - c0) * B + b
            for j in range(H):
                dst[i, c, b, j] = src[r, j]


@njit(**NJIT_OPTS)
def load_cells(src, d, c0, c1, mult, out):
    """Gather the cells ``(d - c, c)``, ``c`` in ``[c0, c1]``, from a per-cell array.

    ``out[(c - c0)*B + b, :] = src[d - c, c, b, :] * mult``, zeros where the
    row ``d - c`` is negative (the zero states above the grid).

    src : (rows, cols, B, H) int64 (fixed point, ``mult = 2**-F``) or float.
    out : ((c1-c0+1)*B, H) float64 or complex128.

    With ``d`` one less than a diagonal's index this loads the frontier
    *before* that diagonal (each column's last cell above it).
    """
    rows, cols, B, H = src.shape
    for c in range(c0, c1 + 1):
        i = d - c
        for b in range(B):
            r = (c - c0) * B + b
            if i < 0:
                for j in range(H):
                    out[r, j] = 0.0
            else:
                for j in range(H):
                    out[r, j] = src[i, c, b, j] * mult
