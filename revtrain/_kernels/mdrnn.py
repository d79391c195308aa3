"""Two-dimensional RNN cell kernels: ``h[i,j] = tanh(P[i,j] + h[i-1,j] @ Wn + h[i,j-1] @ Ww + b)``.

States outside the grid are zero. Two orders of evaluation:

* **wavefront**: the cells of the anti-diagonal ``i + j = d`` do not depend
  on each other, so the grid is swept in ``rows + cols - 1`` steps. States are
  laid out *by diagonal*: ``S`` has shape ``(n_cells, B, H)`` with the cells
  of diagonal ``d`` at ``off[d] .. off[d+1]-1`` ordered by row ``i`` (first
  row ``i0[d] = max(0, d - cols + 1)``). Then the north neighbours
  ``(i-1, j)`` and the west neighbours ``(i, j-1)`` of a diagonal's cells are
  each one contiguous run of the previous diagonal, and each diagonal costs
  one ``(m B, H) x (H, H)`` product per direction (``m`` cells), with no
  gathering; the backward pass adds one ``(H, m B) x (m B, H)`` product per
  direction for the weight gradients. The sweeps take a range of diagonals
  so that checkpointed BPTT can recompute a segment from the states of the
  diagonal before it.
* **raster**: cell by cell in row-major order, two ``(B, H) x (H, H)``
  products per cell (the reference order, for tests and benchmarks).

Generic over float64 and complex128 (complex step).
"""
import numpy as np
from numba import njit

from ._options import NJIT_OPTS
from .mathfn import tanh_


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
    tmp : (max_cells * B, H) workspace, ``max_cells = min(rows, cols)``.
    """
    N, B, H = S.shape
    S2 = S.reshape(N * B, H)
    for d in range(d_first, d_last):
        c0 = off[d] - base
        c1 = off[d + 1] - base
        if d > 0:
            nd, ns, nn, wd, wsrc, nw = _neighbours(d, off, i0s, base)
            if nn > 0:
                np.dot(S2[ns * B:(ns + nn) * B], Wn, tmp[:nn * B])
                _add_into(S2[nd * B:(nd + nn) * B], tmp, nn * B)
            if nw > 0:
                np.dot(S2[wsrc * B:(wsrc + nw) * B], Ww, tmp[:nw * B])
                _add_into(S2[wd * B:(wd + nw) * B], tmp, nw * B)
        for r in range(c0 * B, c1 * B):
            for j in range(H):
                S2[r, j] = tanh_(S2[r, j] + b[j])


@njit(**NJIT_OPTS)
def mdrnn_wavefront_backward(S, dS, Wn, Ww, off, i0s, d_first, d_last, base, dWn, dWw,
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
    Wn, Ww, off, i0s, d_first, d_last, base : as in the forward sweep.
    dWn, dWw : (H, H) gradients, accumulated.
    tmp : (max_cells * B, H) and tmpHH : (H, H) workspaces.

    Notes
    -----
    ``da[i,j] = dh[i,j] (1 - h[i,j]^2)``; it sends ``da @ Wn^T`` to
    ``dh[i-1,j]`` and ``da @ Ww^T`` to ``dh[i,j-1]``, and adds
    ``h[i-1,j]^T da`` to ``dWn`` and ``h[i,j-1]^T da`` to ``dWw``.
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
                da = dS2[nd * B:(nd + nn) * B]
                np.dot(da, Wn.T, tmp[:nn * B])
                _add_into(dS2[ns * B:(ns + nn) * B], tmp, nn * B)
                np.dot(S2[ns * B:(ns + nn) * B].T, da, tmpHH)
                dWn += tmpHH
            if nw > 0:
                da = dS2[wd * B:(wd + nw) * B]
                np.dot(da, Ww.T, tmp[:nw * B])
                _add_into(dS2[wsrc * B:(wsrc + nw) * B], tmp, nw * B)
                np.dot(S2[wsrc * B:(wsrc + nw) * B].T, da, tmpHH)
                dWw += tmpHH


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
