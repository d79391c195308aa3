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
from .row_groups import row_groups, group_batch, group_masks
from .._threads import run_groups
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


def project_grad(x_seg, tokens, dA, dV, V=None, dx=None):
    """Gradients of a segment's input projection ``A = x V`` from ``dA`` (k, B, G).

    Adds ``dV += sum_{t,b} x[t,b]^T dA[t,b]`` and, when ``dx`` (k, B, D) is
    given (float inputs), writes ``dx = dA V^T``.
    """
    if tokens:
        scatter_add_rows(x_seg, dA, dV)
    else:
        k, B, D = x_seg.shape
        xs = x_seg.reshape(k * B, D)
        if xs.dtype != dV.dtype:
            xs = xs.astype(dV.dtype)
        matmul_tn_add(xs, dA.reshape(k * B, -1), dV, np.empty_like(dV))
    if dx is not None:
        k, B = dA.shape[:2]
        np.dot(dA.reshape(k * B, -1), V.T, out=dx.reshape(k * B, -1))


class SequenceModel(RecurrentModel):
    """A standard recurrent model on sequences, trained by stored or checkpointed BPTT.

    A stack runs segment by segment; within a segment layer 0 runs all its
    steps, then layer 1 on layer 0's (masked) outputs, and so on; the
    backward pass goes top-down through the segment. Subclasses implement
    one layer of the cell:

    ``_workspace(k, B, dtype)``
        dict of arrays for ``k`` steps; must contain ``"h"`` of shape
        ``(k + 1, B, H)`` (``h[0]`` = hidden state before the segment).
    ``_forward(p, x_seg, tokens, state, ws, k)``
        run ``k`` steps from ``state`` (B, layer_state_size); fill ``ws``;
        return the state after the last step.
    ``_backward(p, g, x_seg, tokens, ws, k, dH, dstate, dx=None)``
        backpropagate through the segment held in ``ws``: ``dH`` (k, B, H)
        is dL/dh from above (output layer or next layer), ``dstate`` (B,
        layer_state_size) is dL/dstate after the segment on entry and before
        it on exit; gradients are *added* to the views ``g``; ``dx`` (k, B,
        D), when given, receives dL/dx_seg (float inputs).
    """

    supports_float32 = True

    def _zero_state(self, B, dtype):
        return np.zeros((B, self.state_size), dtype=dtype)

    def _compute_params(self, theta):
        """``theta`` in the compute dtype: for a float32 model a float32 copy of float64 ``theta``
        (float32 ``theta`` as it is); complex: float64 models only."""
        if np.iscomplexobj(theta):
            self._float64_only("the complex-step hvp (and hypergradients)")
            return theta
        return theta.astype(self.dtype, copy=False)

    def _head(self, p, g, batch, h_rows, rows, dH_rows, dtype):
        """Loss on hidden-state rows ``h_rows`` (N, H) with targets ``rows`` (slice)."""
        N = h_rows.shape[0]
        work = np.empty((N, self.n_out), dtype=dtype)
        if self.loss_kind == "softmax":
            return softmax_xent_head(h_rows, p["U"], p["b_y"], batch.labels[rows], batch.scale,
                                     work, dH_rows, g["U"], g["b_y"])
        return mse_head(h_rows, p["U"], p["b_y"], batch.target[rows], batch.scale, work,
                        dH_rows, g["U"], g["b_y"])

    def _segment_loss(self, p, g, batch, hs, t0, klen, dH):
        """Output-layer loss of steps ``t0 .. t0+klen-1`` on ``hs`` (klen, B, H); fills ``dH``."""
        B, H, T = batch.B, self.n_hidden, batch.lead[0]
        if batch.per_step:
            return self._head(p, g, batch, hs.reshape(klen * B, H),
                              slice(t0 * B, (t0 + klen) * B), dH.reshape(klen * B, H), hs.dtype)
        dH[...] = 0
        if t0 + klen == T:
            return self._head(p, g, batch, np.ascontiguousarray(hs[klen - 1]), slice(0, B),
                              dH[klen - 1], hs.dtype)
        return 0.0

    # ------------------------------------------------------------ the stack
    def _stack_work(self, k, B, dtype, masks):
        """Workspaces of a ``k``-step segment: per layer, and the embedded / masked inputs."""
        L, H = self.n_layers, self.n_hidden
        work = {"ws": [self._workspace(k, B, dtype) for _ in range(L)],
                "emb": None if self.embed_dim is None else np.empty((k, B, self.embed_dim), dtype),
                "masked": [np.empty((k, B, H), dtype) if masks is not None else None
                           for _ in range(L)]}
        return work

    def _stack_forward(self, p, pls, x_seg, tokens, states, work, masks, klen):
        """Run ``klen`` steps of every layer from ``states`` (list, updated in place).

        Returns ``(top, inputs)``: the (masked) top-layer outputs (klen, B, H)
        and, per layer, the ``(x, tokens)`` it read.
        """
        inp, tok = x_seg, tokens
        if self.embed_dim is not None:
            e = work["emb"][:klen]
            gather_rows(x_seg, p["embed"], e)
            if masks is not None:
                e *= masks.embed
            inp, tok = e, False
        inputs = []
        for l in range(self.n_layers):
            inputs.append((inp, tok))
            states[l] = self._forward(pls[l], inp, tok, states[l], work["ws"][l], klen)
            h = work["ws"][l]["h"][1:klen + 1]
            if masks is not None:
                m = masks.top if l == self.n_layers - 1 else masks.between[l]
                h = np.multiply(h, m, out=work["masked"][l][:klen])
            inp, tok = h, False
        return inp, inputs

    def _stack_backward(self, p, pls, g, gls, x_seg, inputs, work, masks, klen, dH, dstates,
                        dxs, dX):
        """Backpropagate a segment top-down; ``dH`` (klen, B, H) is dL/d(top output)."""
        d = dH
        if masks is not None:
            d *= masks.top
        for l in range(self.n_layers - 1, -1, -1):
            inp, tok = inputs[l]
            dx = dxs[l][:klen] if dxs[l] is not None else None
            self._backward(pls[l], gls[l], inp, tok, work["ws"][l], klen, d, dstates[l], dx)
            if l > 0:
                d = dx
                if masks is not None:
                    d *= masks.between[l - 1]
            elif self.embed_dim is not None:
                if masks is not None:
                    dx *= masks.embed
                scatter_add_rows(x_seg, dx, g["embed"])
            elif dX is not None:
                dX[...] = dx

    def _input_grad_work(self, k, B, dtype, batch, want_inputs):
        """Per layer, a (k, B, D_l) buffer for dL/d(layer input), or None where unused."""
        out = []
        for l in range(self.n_layers):
            need = l > 0 or self.embed_dim is not None or (want_inputs and not batch.tokens)
            out.append(np.empty((k, batch.B, self._layer_input_size(l)), dtype) if need else None)
        return out

    def _run(self, theta, batch, mode, k, want_grad, state0, masks, want_inputs):
        """:meth:`_run_rows` on each row group of the batch (:mod:`.row_groups`) on threads,
        combined in group order (one group: the batch itself; complex steps: never split)."""
        groups = row_groups(batch.B)
        if len(groups) == 1 or np.iscomplexobj(theta):
            return self._run_rows(theta, batch, mode, k, want_grad, state0, masks, want_inputs)

        def one(i):
            r0, r1 = groups[i]
            return self._run_rows(theta, group_batch(batch, r0, r1), mode, k, want_grad,
                                  None if state0 is None else state0[r0:r1],
                                  group_masks(masks, r0, r1), want_inputs)
        out = run_groups(one, len(groups))
        loss, grad = out[0][0], out[0][1]
        for o in out[1:]:
            loss = loss + o[0]
            if want_grad:
                grad += o[1]
        info = {"stored_bytes": sum(o[2]["stored_bytes"] for o in out),
                "final_state": np.concatenate([o[2]["final_state"] for o in out])}
        if want_inputs:
            info["dstate0"] = np.concatenate([o[2]["dstate0"] for o in out])
            info["dx"] = (None if out[0][2]["dx"] is None
                          else np.concatenate([o[2]["dx"] for o in out], axis=1))
        return loss, grad, info

    def _run_rows(self, theta, batch, mode, k, want_grad, state0, masks, want_inputs):
        """Loss (and gradient, in ``theta``'s dtype) of one batch of rows, segment by segment
        (module docstring)."""
        out_dtype = theta.dtype
        theta = self._compute_params(theta)
        dtype = theta.dtype
        T, B, H = batch.lead[0], batch.B, self.n_hidden
        p = self.layout.views(theta)
        pls = self.layer_params(p)
        grad = np.zeros_like(theta)
        g = self.layout.views(grad)
        gls = self.layer_params(g)
        state = self._zero_state(B, dtype) if state0 is None else state0.astype(dtype)
        states = [s.copy() for s in self.layer_states(state)]
        x = batch.x
        if not want_grad:
            k = min(T, FORWARD_CHUNK)
            work = self._stack_work(k, B, dtype, masks)
            dH = np.empty((k, B, H), dtype=dtype)
            loss = 0.0
            for t0 in range(0, T, k):
                klen = min(k, T - t0)
                top, _ = self._stack_forward(p, pls, x[t0:t0 + klen], batch.tokens, states, work,
                                             masks, klen)
                loss = loss + self._segment_loss(p, g, batch, top, t0, klen, dH[:klen])
            return loss, None, {"stored_bytes": 0, "final_state": np.concatenate(
                states, axis=1).real.astype(np.float64)}
        if mode == "standard":
            k = T
        k = min(k, T)
        starts = list(range(0, T, k))
        work = self._stack_work(k, B, dtype, masks)
        checkpoints = np.empty((len(starts), B, self.state_size), dtype=dtype) \
            if mode == "checkpoint" else None
        top = inputs = None
        for i, t0 in enumerate(starts):
            klen = min(k, T - t0)
            if checkpoints is not None:
                checkpoints[i] = np.concatenate(states, axis=1)
            top, inputs = self._stack_forward(p, pls, x[t0:t0 + klen], batch.tokens, states,
                                              work, masks, klen)
        final_state = np.concatenate(states, axis=1).real.copy()
        dH = np.empty((k, B, H), dtype=dtype)
        dstates = [np.zeros((B, self.layer_state_size), dtype=dtype)
                   for _ in range(self.n_layers)]
        dxs = self._input_grad_work(k, B, dtype, batch, want_inputs)
        dX = np.empty(x.shape, dtype=dtype) if want_inputs and not batch.tokens else None
        loss = 0.0
        for i in range(len(starts) - 1, -1, -1):
            t0 = starts[i]
            klen = min(k, T - t0)
            if checkpoints is not None and len(starts) > 1:
                rec = [s.copy() for s in self.layer_states(checkpoints[i])]
                top, inputs = self._stack_forward(p, pls, x[t0:t0 + klen], batch.tokens, rec,
                                                  work, masks, klen)
            loss = loss + self._segment_loss(p, g, batch, top, t0, klen, dH[:klen])
            self._stack_backward(p, pls, g, gls, x[t0:t0 + klen], inputs, work, masks, klen,
                                 dH[:klen], dstates, dxs,
                                 None if dX is None else dX[t0:t0 + klen])
        stored = sum(a.nbytes for ws in work["ws"] for a in ws.values())
        stored += sum(a.nbytes for a in work["masked"] if a is not None)
        if work["emb"] is not None:
            stored += work["emb"].nbytes
        if checkpoints is not None:
            stored += checkpoints.nbytes
        info = {"stored_bytes": stored, "final_state": final_state.astype(np.float64)}
        if want_inputs:
            info["dstate0"] = np.concatenate(dstates, axis=1).real.astype(np.float64)
            info["dx"] = None if dX is None else dX.real.astype(np.float64)
        if grad.dtype != out_dtype:             # a float32 model given float64 parameters
            grad = grad.astype(out_dtype)
        return loss, grad, info

    def _hidden(self, theta, x, tokens, state0):
        T, B = x.shape[0], x.shape[1]
        theta = self._compute_params(theta)
        dtype = theta.dtype
        p = self.layout.views(theta)
        pls = self.layer_params(p)
        state = self._zero_state(B, dtype) if state0 is None else state0.astype(dtype)
        states = [s.copy() for s in self.layer_states(state)]
        k = min(T, FORWARD_CHUNK)
        work = self._stack_work(k, B, dtype, None)
        hs = np.empty((T, B, self.n_hidden))
        for t0 in range(0, T, k):
            klen = min(k, T - t0)
            top, _ = self._stack_forward(p, pls, x[t0:t0 + klen], tokens, states, work, None,
                                         klen)
            hs[t0:t0 + klen] = top
        return hs, np.concatenate(states, axis=1).astype(np.float64)
