"""The two-dimensional (multidimensional) RNN over a grid, swept by anti-diagonals."""
import numpy as np

from ..params import ParamSpec
from .base import RecurrentModel
from .results import no_input_grad
from .sequence import project, project_grad
from .._kernels.head import softmax_xent_head, mse_head
from .._kernels.mdrnn import (mdrnn_wavefront_forward, mdrnn_wavefront_backward,
                              mdrnn_raster_forward, mdrnn_raster_backward)


def diagonal_order(rows, cols):
    """Cell order by anti-diagonals.

    Returns
    -------
    perm : int64 (rows*cols,)
        Row-major cell index ``i*cols + j`` of each cell in diagonal order
        (diagonal ``d = i + j`` ascending, then ``i`` ascending).
    off : int64 (rows+cols,)
        ``off[d]`` is the position of diagonal ``d``'s first cell in that order.
    i0s : int64 (rows+cols-1,)
        Row of each diagonal's first cell, ``max(0, d - cols + 1)``.
    """
    n_diag = rows + cols - 1
    perm = np.empty(rows * cols, dtype=np.int64)
    off = np.empty(n_diag + 1, dtype=np.int64)
    i0s = np.empty(n_diag, dtype=np.int64)
    c = 0
    for d in range(n_diag):
        off[d] = c
        i0 = max(0, d - cols + 1)
        i1 = min(d, rows - 1)
        i0s[d] = i0
        for i in range(i0, i1 + 1):
            perm[c] = i * cols + (d - i)
            c += 1
    off[n_diag] = c
    return perm, off, i0s


class MDRNN(RecurrentModel):
    """Two-dimensional RNN: ``h[i,j] = tanh(x[i,j] W_in + h[i-1,j] W_n + h[i,j-1] W_w + b)``.

    Over a ``rows x cols`` grid, with zero states outside the grid (there is
    no initial state). Outputs ``yhat[i,j] = softmax(h[i,j] U + b_y)`` (or
    ``h[i,j] U + b_y`` for ``loss="mse"``), scored at every cell
    (``y`` of shape ``(rows, cols, B)``) or at the last cell
    ``(rows-1, cols-1)`` only (``y`` of shape ``(B,)``); the loss is a mean
    over targets. Inputs ``x``: float ``(rows, cols, B, n_in)`` or int token
    ids ``(rows, cols, B)`` (rows of ``W_in`` are gathered).

    Parameters (views of ``theta``): ``W_in`` (n_in, H) ("input"), ``W_n``
    (H, H) and ``W_w`` (H, H) ("recurrent", from the north and west
    neighbours), ``b`` (H,) ("bias"), ``U`` (H, n_out), ``b_y`` (n_out,)
    ("output").

    Parameters
    ----------
    n_in, n_hidden, n_out, loss : see :class:`~revtrain.models.base.RecurrentModel`.
    order : {"wavefront", "raster"}
        ``"wavefront"`` (default): ``rows + cols - 1`` steps, one per
        anti-diagonal ``i + j = d`` (its cells are independent), each one
        ``(m B, H) x (H, H)`` product per direction over the diagonal's ``m``
        cells, with states stored by diagonal; a pass is one kernel call (one
        per segment with checkpointing; the float64 products run in
        register-blocked vector kernels, see
        :mod:`revtrain._kernels.mdrnn`). ``"raster"``: cell by cell in
        row-major order (two ``(B, H) x (H, H)`` BLAS products per cell; the
        reference and benchmark baseline). Both give the same loss and
        gradient to rounding.

    Notes
    -----
    ``bptt="standard"`` stores all ``rows*cols*B*H`` states (the input
    projection is one GEMM over all cells, computed into the state array).
    ``bptt="checkpoint"`` (wavefront only) cuts the diagonals into segments
    of ``checkpoint_every`` diagonals (default ``ceil(sqrt(rows))``), keeps
    the states of the diagonal before each segment and recomputes each
    segment in the backward pass.
    """

    n_lead = 2

    stackable = False

    def __init__(self, n_in, n_hidden, n_out, loss="softmax", order="wavefront", *, n_layers=1,
                 dtype="float64"):
        if order not in ("wavefront", "raster"):
            raise ValueError(f"order must be 'wavefront' or 'raster', got {order!r}")
        self.order = order
        super().__init__(n_in, n_hidden, n_out, loss=loss, n_layers=n_layers, dtype=dtype)
        self._orders = {}

    def __repr__(self):
        return (f"MDRNN(n_in={self.n_in}, n_hidden={self.n_hidden}, n_out={self.n_out}, "
                f"loss={self.loss_kind!r}, order={self.order!r})")

    def _specs(self):
        D, H, O = self.n_in, self.n_hidden, self.n_out
        return [ParamSpec("W_in", (D, H), "uniform", "input"),
                ParamSpec("W_n", (H, H), "uniform", "recurrent"),
                ParamSpec("W_w", (H, H), "uniform", "recurrent"),
                ParamSpec("b", (H,), "zeros", "bias"),
                ParamSpec("U", (H, O), "uniform", "output"),
                ParamSpec("b_y", (O,), "zeros", "output")]

    # ------------------------------------------------------------- helpers
    def _diag(self, rows, cols):
        key = (rows, cols)
        if key not in self._orders:
            self._orders[key] = diagonal_order(rows, cols)
        return self._orders[key]

    @staticmethod
    def _no_state(state0):
        if state0 is not None:
            raise ValueError("initial_state: MDRNN has no initial state (states outside "
                             "the grid are zero); pass None")

    def _check_state(self, state0, B):
        self._no_state(state0)          # before any shape check: no shape is right
        return None

    def _cells(self, a, rows, cols, B, perm):
        """``a`` of shape ``(rows, cols, B, ...)`` as ``(N, B, ...)`` in diagonal order (or raster)."""
        a = a.reshape((rows * cols, B) + a.shape[3:])
        return a if perm is None else a[perm]

    def _head(self, p, g, batch, labels, target, h_rows, dh_rows):
        N = h_rows.shape[0]
        work = np.empty((N, self.n_out), dtype=h_rows.dtype)
        if self.loss_kind == "softmax":
            return softmax_xent_head(h_rows, p["U"], p["b_y"], labels, batch.scale, work,
                                     dh_rows, g["U"], g["b_y"])
        return mse_head(h_rows, p["U"], p["b_y"], target, batch.scale, work, dh_rows,
                        g["U"], g["b_y"])

    # ---------------------------------------------------------------- passes
    def _run(self, theta, batch, mode, k, want_grad, state0, masks=None, want_inputs=False):
        self._no_state(state0)
        no_input_grad(self, want_inputs)
        if self.order == "raster":
            if mode != "standard":
                raise ValueError(f"bptt={mode!r} needs order='wavefront'; MDRNN with "
                                 "order='raster' supports bptt='standard' only")
            return self._run_raster(theta, batch, want_grad)
        return self._run_wavefront(theta, batch, mode, k, want_grad)

    def _targets(self, batch, rows, cols, perm):
        """Per-cell targets in the cells' order (labels flat (N*B,), target (N*B, O))."""
        B, N = batch.B, rows * cols
        if not batch.per_step:
            return batch.labels, batch.target
        labels, target = batch.labels, batch.target
        if self.loss_kind == "softmax":
            labels = labels.reshape(N, B)
            labels = np.ascontiguousarray(labels if perm is None else labels[perm]).reshape(-1)
        else:
            target = target.reshape(N, B, -1)
            target = np.ascontiguousarray(target if perm is None else target[perm])
            target = target.reshape(N * B, -1)
        return labels, target

    def _run_wavefront(self, theta, batch, mode, k, want_grad):
        dtype = theta.dtype
        rows, cols = batch.lead
        B, H = batch.B, self.n_hidden
        N, n_diag = rows * cols, rows + cols - 1
        perm, off, i0s = self._diag(rows, cols)
        p = self.layout.views(theta)
        grad = np.zeros_like(theta)
        g = self.layout.views(grad)
        x = self._cells(batch.x, rows, cols, B, perm)
        labels, target = self._targets(batch, rows, cols, perm)
        Wn, Ww, b = p["W_n"], p["W_w"], p["b"]
        tmp = np.empty((min(rows, cols) * B, H), dtype=dtype)

        if mode == "standard" or not want_grad:
            k = n_diag
        k = min(k, n_diag)
        starts = list(range(0, n_diag, k))
        ends = starts[1:] + [n_diag]
        # workspace: the diagonal before a segment, then the segment's diagonals
        m_max = max(off[e] - off[max(s - 1, 0)] for s, e in zip(starts, ends))
        # states (ws) and dL/dh (dws) of the diagonal before a segment and of the segment's
        # diagonals; one allocation made before anything that outlives the call
        ws, dws = np.empty((2, m_max, B, H), dtype=dtype)
        ckpt = [None] * len(starts)

        def forward(si, prev):
            d0, d1 = starts[si], ends[si]
            base = off[d0 - 1] if d0 > 0 else 0
            m_prev = off[d0] - base
            m = off[d1] - base
            S = ws[:m]
            if m_prev:
                S[:m_prev] = prev
            project(x[off[d0]:off[d1]], batch.tokens, p["W_in"], S[m_prev:])
            mdrnn_wavefront_forward(S, Wn, Ww, b, off, i0s, d0, d1, base, tmp)
            return S, m_prev, base

        def seg_loss(S, m_prev, d0, d1, dS):
            """Head on the segment's cells; writes dS (dL/dh) of those cells."""
            c0, c1 = off[d0], off[d1]
            if batch.per_step:
                return self._head(p, g, batch, labels[c0 * B:c1 * B], target[c0 * B:c1 * B],
                                  S[m_prev:].reshape(-1, H), dS[m_prev:].reshape(-1, H))
            dS[m_prev:] = 0
            if d1 == n_diag:
                return self._head(p, g, batch, labels, target, S[-1], dS[-1])
            return 0.0

        if not want_grad:
            S, m_prev, _ = forward(0, None)
            dS = dws[:S.shape[0]]
            loss = seg_loss(S, m_prev, 0, n_diag, dS)
            return loss, None, {"stored_bytes": 0, "final_state": S[-1].real.copy()}

        for si in range(len(starts)):
            d0 = starts[si]
            if si > 0:                      # states of diagonal d0 - 1
                ckpt[si] = S[off[d0 - 1] - base:].copy()
            S, m_prev, base = forward(si, ckpt[si])
        final_state = S[-1].real.copy()
        stored = ws.nbytes + sum(c.nbytes for c in ckpt if c is not None)

        tmpHH = np.empty((H, H), dtype=dtype)
        WnT, WwT = np.ascontiguousarray(Wn.T), np.ascontiguousarray(Ww.T)
        carry = None
        loss = 0.0
        for si in range(len(starts) - 1, -1, -1):
            d0, d1 = starts[si], ends[si]
            if si < len(starts) - 1:
                S, m_prev, base = forward(si, ckpt[si])
            else:
                base = off[d0 - 1] if d0 > 0 else 0
                m_prev = off[d0] - base
            m = off[d1] - base
            S, dS = ws[:m], dws[:m]
            loss = loss + seg_loss(S, m_prev, d0, d1, dS)
            if carry is not None:
                dS[m - carry.shape[0]:] += carry
            dS[:m_prev] = 0
            mdrnn_wavefront_backward(S, dS, WnT, WwT, off, i0s, d0, d1, base, g["W_n"],
                                     g["W_w"], tmp, tmpHH)
            carry = dS[:m_prev].copy() if m_prev else None
            dA = dS[m_prev:]
            project_grad(x[off[d0]:off[d1]], batch.tokens, dA, g["W_in"])
            g["b"] += dA.reshape(-1, H).sum(axis=0)
        return loss, grad, {"stored_bytes": stored, "final_state": final_state}

    def _run_raster(self, theta, batch, want_grad):
        dtype = theta.dtype
        rows, cols = batch.lead
        B, H, N = batch.B, self.n_hidden, rows * cols
        p = self.layout.views(theta)
        grad = np.zeros_like(theta)
        g = self.layout.views(grad)
        x = self._cells(batch.x, rows, cols, B, None)
        labels, target = self._targets(batch, rows, cols, None)
        S = np.empty((N, B, H), dtype=dtype)
        project(x, batch.tokens, p["W_in"], S)
        S4 = S.reshape(rows, cols, B, H)
        mdrnn_raster_forward(S4, p["W_n"], p["W_w"], p["b"], np.empty((B, H), dtype=dtype))
        dS = np.zeros_like(S)
        if batch.per_step:
            loss = self._head(p, g, batch, labels, target, S.reshape(-1, H), dS.reshape(-1, H))
        else:
            loss = self._head(p, g, batch, labels, target, S[-1], dS[-1])
        info = {"stored_bytes": S.nbytes if want_grad else 0, "final_state": S[-1].real.copy()}
        if not want_grad:
            return loss, None, info
        mdrnn_raster_backward(S4, dS.reshape(rows, cols, B, H), p["W_n"], p["W_w"], g["W_n"],
                              g["W_w"], np.empty((B, H), dtype=dtype),
                              np.empty((H, H), dtype=dtype))
        project_grad(x, batch.tokens, dS, g["W_in"])
        g["b"] += dS.reshape(-1, H).sum(axis=0)
        return loss, grad, info

    def _hidden(self, theta, x, tokens, state0):
        """States ``(rows, cols, B, H)`` float64 and the last cell's state ``(B, H)``."""
        self._no_state(state0)
        rows, cols = x.shape[0], x.shape[1]
        B, H, N = x.shape[2], self.n_hidden, rows * cols
        p = self.layout.views(theta)
        S = np.empty((N, B, H))
        if self.order == "raster":
            project(x.reshape((N, B) + x.shape[3:]), tokens, p["W_in"], S)
            mdrnn_raster_forward(S.reshape(rows, cols, B, H), p["W_n"], p["W_w"], p["b"],
                                 np.empty((B, H)))
            hs = S
        else:
            perm, off, i0s = self._diag(rows, cols)
            project(self._cells(x, rows, cols, B, perm), tokens, p["W_in"], S)
            mdrnn_wavefront_forward(S, p["W_n"], p["W_w"], p["b"], off, i0s, 0, rows + cols - 1,
                                    0, np.empty((min(rows, cols) * B, H)))
            hs = np.empty_like(S)
            hs[perm] = S
        return hs.reshape(rows, cols, B, H), S[-1].copy()      # the last cell in both orders
