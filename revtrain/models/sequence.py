"""BPTT driver shared by the standard sequence models (RNN, LSTM, GRU).

The sequence is cut into segments of ``k`` steps. A cell provides kernels
that run one segment forward, storing what its backward pass needs in a
workspace, and one segment backward. Then

* **standard BPTT** is one segment of length ``T``: everything stored;
* **checkpointed BPTT** keeps the state at the start of each segment; the
  backward pass recomputes each segment from its checkpoint into one
  segment-sized workspace and backpropagates through it. Memory
  ``O((T/k + k) * B * H)``, one extra forward pass of compute.

The output layer and loss run on a whole segment's hidden states at once (one
GEMM over ``k*B`` rows). Input projections and input-weight gradients are
one GEMM per segment (float inputs) or a gather / scatter-add of weight rows
(token ids).
"""
import numpy as np

from .base import RecurrentModel
from .._kernels.head import softmax_xent_head, mse_head
from .._kernels.inputs import gather_rows, scatter_add_rows
from .._kernels.gemm import matmul_into, matmul_tn_add

#: Segment length of forward-only passes (``loss``, ``predict``).
FORWARD_CHUNK = 64


def project(x_seg, tokens, V, out):
    """Input projection of a segment: ``out[t, b] = x[t, b] @ V`` into ``out`` (k, B, G)."""
    if tokens:
        gather_rows(x_seg, V, out)
    else:
        k, B, D = x_seg.shape
        xs = x_seg.reshape(k * B, D)
        if xs.dtype != V.dtype:
            xs = xs.astype(V.dtype)
        matmul_into(xs, V, out.reshape(k * B, -1))      # Numba's BLAS: see _kernels/gemm.py


def project_grad(x_seg, tokens, dA, dV):
    """Add the input-weight gradient of a segment: ``dV += sum_{t,b} x[t,b]^T dA[t,b]``."""
    if tokens:
        scatter_add_rows(x_seg, dA, dV)
    else:
        k, B, D = x_seg.shape
        xs = x_seg.reshape(k * B, D)
        if xs.dtype != dV.dtype:
            xs = xs.astype(dV.dtype)
        matmul_tn_add(xs, dA.reshape(k * B, -1), dV, np.empty_like(dV))


class SequenceModel(RecurrentModel):
    """A standard recurrent model on sequences, trained by stored or checkpointed BPTT.

    Subclasses implement the cell:

    ``_workspace(k, B, dtype)``
        dict of arrays for ``k`` steps; must contain ``"h"`` of shape
        ``(k + 1, B, H)`` (``h[0]`` = hidden state before the segment).
    ``_forward(p, x_seg, tokens, state, ws, k)``
        run ``k`` steps from ``state`` (B, state_size); fill ``ws``; return the
        state after the last step.
    ``_backward(p, g, x_seg, tokens, ws, k, dH, dstate)``
        backpropagate through the segment held in ``ws``: ``dH`` (k, B, H)
        is dL/dh from the output layer, ``dstate`` (B, state_size) is dL/dstate
        after the segment on entry and before it on exit; gradients are
        *added* to the views ``g``.
    """

    def _zero_state(self, B, dtype):
        return np.zeros((B, self.state_size), dtype=dtype)

    def _head(self, p, g, batch, h_rows, rows, dH_rows, dtype):
        """Loss on hidden-state rows ``h_rows`` (N, H) with targets ``rows`` (slice)."""
        N = h_rows.shape[0]
        work = np.empty((N, self.n_out), dtype=dtype)
        if self.loss_kind == "softmax":
            return softmax_xent_head(h_rows, p["U"], p["b_y"], batch.labels[rows], batch.scale,
                                     work, dH_rows, g["U"], g["b_y"])
        return mse_head(h_rows, p["U"], p["b_y"], batch.target[rows], batch.scale, work,
                        dH_rows, g["U"], g["b_y"])

    def _segment_loss(self, p, g, batch, ws, t0, klen, dH):
        """Output-layer loss of steps ``t0 .. t0+klen-1``; fills ``dH`` (klen, B, H)."""
        B, H, T = batch.B, self.n_hidden, batch.lead[0]
        hs = ws["h"][1:klen + 1]
        if batch.per_step:
            return self._head(p, g, batch, hs.reshape(klen * B, H),
                              slice(t0 * B, (t0 + klen) * B), dH.reshape(klen * B, H), hs.dtype)
        dH[...] = 0
        if t0 + klen == T:
            return self._head(p, g, batch, hs[klen - 1], slice(0, B), dH[klen - 1], hs.dtype)
        return 0.0

    def _run(self, theta, batch, mode, k, want_grad, state0):
        dtype = theta.dtype
        T, B, H = batch.lead[0], batch.B, self.n_hidden
        p = self.layout.views(theta)
        grad = np.zeros_like(theta)
        g = self.layout.views(grad)
        state = self._zero_state(B, dtype) if state0 is None else state0.astype(dtype)
        x = batch.x
        if not want_grad:
            k = min(T, FORWARD_CHUNK)
            ws = self._workspace(k, B, dtype)
            dH = np.empty((k, B, H), dtype=dtype)
            loss = 0.0
            for t0 in range(0, T, k):
                klen = min(k, T - t0)
                state = self._forward(p, x[t0:t0 + klen], batch.tokens, state, ws, klen)
                loss = loss + self._segment_loss(p, g, batch, ws, t0, klen, dH[:klen])
            return loss, None, {"stored_bytes": 0, "final_state": state.real.copy()}
        if mode == "standard":
            k = T
        k = min(k, T)
        starts = list(range(0, T, k))
        ws = self._workspace(k, B, dtype)
        checkpoints = np.empty((len(starts), B, self.state_size), dtype=dtype) \
            if mode == "checkpoint" else None
        for i, t0 in enumerate(starts):
            klen = min(k, T - t0)
            if checkpoints is not None:
                checkpoints[i] = state
            state = self._forward(p, x[t0:t0 + klen], batch.tokens, state, ws, klen)
        final_state = state.real.copy()
        dH = np.empty((k, B, H), dtype=dtype)
        dstate = np.zeros((B, self.state_size), dtype=dtype)
        loss = 0.0
        for i in range(len(starts) - 1, -1, -1):
            t0 = starts[i]
            klen = min(k, T - t0)
            if checkpoints is not None and len(starts) > 1:
                self._forward(p, x[t0:t0 + klen], batch.tokens, checkpoints[i].copy(), ws, klen)
            loss = loss + self._segment_loss(p, g, batch, ws, t0, klen, dH[:klen])
            self._backward(p, g, x[t0:t0 + klen], batch.tokens, ws, klen, dH[:klen], dstate)
        stored = sum(a.nbytes for a in ws.values())
        if checkpoints is not None:
            stored += checkpoints.nbytes
        return loss, grad, {"stored_bytes": stored, "final_state": final_state}

    def _hidden(self, theta, x, tokens, state0):
        T, B = x.shape[0], x.shape[1]
        p = self.layout.views(theta)
        state = self._zero_state(B, np.float64) if state0 is None else state0
        k = min(T, FORWARD_CHUNK)
        ws = self._workspace(k, B, np.float64)
        hs = np.empty((T, B, self.n_hidden))
        for t0 in range(0, T, k):
            klen = min(k, T - t0)
            state = self._forward(p, x[t0:t0 + klen], tokens, state, ws, klen)
            hs[t0:t0 + klen] = ws["h"][1:klen + 1]
        return hs, state
