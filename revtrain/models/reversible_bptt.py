"""Reversible BPTT of a stack of reversible cells (MomentumRNN, RevGRU, RevLSTM).

The cells (:mod:`revtrain.models.reversible`) update a fixed-point state
exactly; a step can be undone bit for bit given the buffer.

Stacks run time-major with the layers inside: step ``t`` goes through layers
0..L-1 (layer ``l`` reads layer ``l-1``'s new ``h``, masked by variational
dropout), each layer with its own buffer. Backward, step ``t`` is undone
top-down: layer ``l``'s input at ``t`` is layer ``l-1``'s state at ``t``, still
current, so each layer is undone, recomputed in float and backpropagated in
turn; dL/d(input) passes to the layer below. Kept: the L final states, the
buffers and the masks. A ReversalError names the corrupted layer.

BPTT modes
----------
``"reversible"`` (default)
    The forward pass keeps only the final fixed-point state and the buffer.
    The backward pass undoes step ``t`` exactly to get the state before it,
    recomputes step ``t`` in float from that state, runs the output layer on
    step ``t`` and backpropagates through the step. At the end the recovered
    initial state must equal the true one and the buffer must be empty,
    otherwise :class:`~revtrain.ReversalError` is raised (no gradient).
    Memory: ``O(B * state_size)`` plus the buffer (about the information the
    forward pass destroyed, ``<= T * B * forget_units * max_forget_bits`` bits).
``"standard"``
    The same fixed-point forward pass, storing every state ``(T+1, B,
    state_size)`` int64; the backward pass reads them instead of undoing
    steps. Both modes run the same float recompute and backward code, so
    their losses and gradients are identical. With complex ``theta`` (the
    complex-step :meth:`hvp`) the fixed-point trajectory is that of
    ``Re(theta)`` and the imaginary parts follow the float (straight-through)
    recurrence, giving the Hessian-vector product of the straight-through
    model at that trajectory.

Products run through Numba's BLAS (:mod:`revtrain._kernels.gemm`), as in the
whole-window kernels, so both drivers give the same bits.

Gradients treat quantisation as the identity (straight-through): the float
step ``s_t = f(s_{t-1}, x_t)`` is differentiated at the fixed-point states.
"""
import numpy as np

from ..buffer import InfoBuffer
from ..errors import FixedPointError, ReversalError, check_reversal
from .._kernels.head import softmax_xent_rows, mse_rows, sum_terms
from .._kernels.inputs import scatter_add_rows
from .._kernels.gemm import matmul_rows, matmul_rows_t, matmul_tn_add


class ReversibleBPTT:
    """BPTT of a stack of reversible cells (a mixin of :class:`~revtrain.models.reversible.ReversibleModel`).

    Uses the cell hooks ``_fixed_step``, ``_fixed_unstep``, ``_float_step``,
    ``_float_back``, ``_cache`` and the state I/O (``_pack``, ``_unpack``,
    ``_to_float``, ``_initial_fixed``) of the model.
    """

    # --------------------------------------------------------------- inputs
    @staticmethod
    def _project_row(V, xt, tok, out):
        """``out = x_t @ V`` (B, G): a gather of rows for token ids, else one product."""
        if tok:
            np.take(V, xt, axis=0, out=out)
        else:
            if xt.dtype != V.dtype:
                xt = xt.astype(V.dtype)
            matmul_rows(np.ascontiguousarray(xt), V, out)
        return out

    @staticmethod
    def _project_row_grad(gV, xt, tok, dP):
        """``gV += x_t^T dP`` (a scatter-add of rows for token ids)."""
        if tok:
            scatter_add_rows(xt[None], dP[None], gV)
        else:
            if xt.dtype != gV.dtype:
                xt = xt.astype(gV.dtype)
            matmul_tn_add(np.ascontiguousarray(xt), dP, gV, np.empty_like(gV))

    def _bottom_input(self, p, x, tokens, t, masks, ebuf):
        """Layer 0's input at step ``t``: ``(x_t, tokens)`` or the (masked) embedding rows."""
        if self.embed_dim is None:
            return x[t], tokens
        np.take(p["embed"], x[t], axis=0, out=ebuf)
        if masks is not None:
            ebuf *= masks.embed
        return ebuf, False

    def _upper_input(self, h, l, masks):
        """Layer ``l``'s input (l > 0): layer ``l-1``'s output ``h`` (B, H), masked."""
        return h if masks is None else h * masks.between[l - 1]

    def _top(self, h, masks):
        return h if masks is None else h * masks.top

    def _step_loss(self, p, g, batch, t, h, dH):
        """Loss of step ``t`` on hidden rows ``h`` (B, H); fills ``dH``; 0 (and dH = 0) if no target."""
        T, B = batch.lead[0], batch.B
        if batch.per_step:
            rows = slice(t * B, (t + 1) * B)
        elif t == T - 1:
            rows = slice(0, B)
        else:
            dH[...] = 0
            return 0.0
        work = np.empty((B, self.n_out), dtype=h.dtype)
        terms = np.empty(B, dtype=np.complex128 if np.iscomplexobj(h) else np.float64)
        h = np.ascontiguousarray(h)
        if self.loss_kind == "softmax":
            softmax_xent_rows(h, p["U"], p["b_y"], batch.labels[rows], batch.scale, work, dH,
                              g["U"], g["b_y"], terms)
        else:
            mse_rows(h, p["U"], p["b_y"], batch.target[rows], batch.scale, work, dH, g["U"],
                     g["b_y"], terms)
        # the window kernels' groups of rows add their terms in the same order
        return sum_terms(terms) * batch.scale

    # ------------------------------------------------------- layer errors
    def _layer_tag(self, l):
        name = type(self).__name__
        return name if self.n_layers == 1 else f"{name} layer {l} (of {self.n_layers})"

    def _in_layer(self, l, fn, *args):
        """``fn(*args)``; a FixedPointError or ReversalError names layer ``l`` of a stack."""
        try:
            return fn(*args)
        except (FixedPointError, ReversalError) as e:
            if self.n_layers == 1:
                raise
            msg, name = str(e), type(self).__name__
            if msg.startswith(name + ":"):
                msg = msg[len(name) + 1:]
            raise type(e)(f"{self._layer_tag(l)}:{msg}") from None

    # --------------------------------------------------- one step of the stack
    def _stack_step(self, prl, pr, x, tokens, t, q, bufs, P, masks, ebuf):
        """Step ``t`` of the whole stack in fixed point, layers 0..L-1 (the unit of work)."""
        xt, tok = self._bottom_input(pr, x, tokens, t, masks, ebuf)
        for l in range(self.n_layers):
            self._reserve_step(bufs[l])
            self._in_layer(l, self._fixed_step, prl[l], self._project_row(prl[l]["V"], xt, tok, P),
                           q[l], bufs[l], t)
            if l < self.n_layers - 1:
                xt, tok = self._upper_input(self._h_fixed(q[l]), l + 1, masks), False

    def _h_fixed(self, q):
        """The float64 hidden state ``h`` (B, H) of a layer's fixed-point parts ``q``."""
        return self._h({nm: q[nm] * self.inv_scale for nm in self._head_parts})

    def _unstep_layer(self, prl, pr, x, tokens, t, l, q, bufs, P, masks, ebuf, cache):
        """Undo step ``t`` of layer ``l`` (its input, layer ``l-1`` at ``t``, is still current).

        Returns the layer's input ``(x_t, tokens)`` and leaves ``P`` and the gates in ``cache``.
        """
        if l == 0:
            xt, tok = self._bottom_input(pr, x, tokens, t, masks, ebuf)
        else:
            xt, tok = self._upper_input(self._h_fixed(q[l - 1]), l, masks), False
        self._project_row(prl[l]["V"], xt, tok, P)
        self._reserve_step(bufs[l])
        self._in_layer(l, self._fixed_unstep, prl[l], P, q[l], bufs[l], t, cache)
        return xt, tok

    def _blame(self, err, l, t, prl, pr, x, tokens, q, q0, bufs, P, masks, ebuf, B):
        """Name the corrupted layer after undoing step ``t`` of layer ``l`` failed.

        Layer ``l`` reads the layers below it, so they are undone on their own
        from step ``t`` (which they have not undone yet) to the start, and
        checked at the end. A layer that fails stops being undone, together
        with the layers above it (they read it); the lowest layer that fails
        is the corrupted one, else ``l``.
        """
        cache = self._cache(B, np.float64)
        failed = {l: err}
        active = l                      # layers 0 .. active-1 are still being undone
        for tt in range(t, -1, -1):
            for j in range(active - 1, -1, -1):
                try:
                    self._unstep_layer(prl, pr, x, tokens, tt, j, q, bufs, P, masks, ebuf, cache)
                except ReversalError as e:
                    failed[j] = e
                    active = j
        for j in range(active):
            same = all(np.array_equal(q[j][nm], q0[j][nm]) for nm in q0[j])
            try:
                check_reversal(f"{self._layer_tag(j)}: reversible BPTT", same, bufs[j])
            except ReversalError as e:
                failed[j] = ReversalError(f"{e} (found when undoing step {t} of layer {l}, "
                                          f"which reads layer {j})")
        return failed[min(failed)]

    # ----------------------------------------------------------------- runs
    def _fixed_point_params(self, theta, mode):
        """``(complex?, views of Re(theta))``: the fixed-point trajectory follows Re(theta).

        Complex parameters (the complex-step hvp) need ``bptt="standard"``.
        """
        cplx = np.iscomplexobj(theta)
        if cplx and mode != "standard":
            raise ValueError(f"complex parameters (complex-step hvp) need bptt='standard', "
                             f"got {mode!r}")
        return cplx, self.layout.views(np.ascontiguousarray(theta.real) if cplx else theta)

    def _run(self, theta, batch, mode, k, want_grad, state0, masks, want_inputs):
        cplx, pr = self._fixed_point_params(theta, mode)
        prl = self.layer_params(pr)
        x, tokens = batch.x, batch.tokens
        T, B, H, L = batch.lead[0], batch.B, self.n_hidden, self.n_layers
        G = self._n_proj
        q0 = self._initial_fixed(state0, B)
        q = [{nm: a.copy() for nm, a in ql.items()} for ql in q0]
        bufs = [InfoBuffer(B, capacity=16) for _ in range(L)]
        P = np.empty((B, G))
        ebuf = None if self.embed_dim is None else np.empty((B, self.embed_dim))
        mask_bytes = 0 if masks is None else sum(
            m.nbytes for m in (masks.embed, masks.top) + tuple(masks.between) if m is not None)

        if not want_grad:
            gdummy = self.layout.views(np.zeros(self.size))
            dH = np.empty((B, H))
            loss = 0.0
            for t in range(T):
                self._stack_step(prl, pr, x, tokens, t, q, bufs, P, masks, ebuf)
                loss += self._step_loss(pr, gdummy, batch, t, self._top(self._h_fixed(q[-1]), masks),
                                        dH)
            return loss, None, {"stored_bytes": 0, "final_state": self._pack_stack(q)}

        store = None
        if mode == "standard":
            store = [np.empty((T + 1, B, self.layer_state_size), dtype=np.int64) for _ in range(L)]
            for l in range(L):
                self._pack(q[l], store[l][0])
        for t in range(T):
            self._stack_step(prl, pr, x, tokens, t, q, bufs, P, masks, ebuf)
            if store is not None:
                for l in range(L):
                    self._pack(q[l], store[l][t + 1])
        info_bits = sum(b.info_bits for b in bufs)
        final_state = self._pack_stack(q)
        kept = B * self.state_size * 8 + mask_bytes  # running states (reversed in place), masks
        if mode == "standard":
            stored, buffer_bytes = sum(s.nbytes for s in store) + mask_bytes, 0
            bufs = None
        else:
            buffer_bytes = sum(b.nbytes for b in bufs)
            stored = buffer_bytes + kept

        dtype = theta.dtype
        p = self.layout.views(theta)
        pl = self.layer_params(p)
        grad = np.zeros_like(theta)
        g = self.layout.views(grad)
        gl = self.layer_params(g)
        ebuf_c = None if self.embed_dim is None else np.empty((B, self.embed_dim), dtype=dtype)
        cstore = None
        if cplx:
            cstore, cbytes = self._complex_states(pl, p, x, tokens, store, masks, ebuf_c, B)
            stored += cbytes

        caches = [self._cache(B, dtype) for _ in range(L)]
        Pd = np.empty((B, G), dtype=dtype)
        dP = np.empty((B, G), dtype=dtype)
        dH = np.empty((B, H), dtype=dtype)
        ds = [{nm: np.zeros((B, w), dtype=dtype) for nm, w in self._layout_parts}
              for _ in range(L)]
        dX = np.empty(x.shape, dtype=dtype) if want_inputs and not tokens else None
        if cplx:
            s_new = [self._unpack(cstore[l][T]) for l in range(L)]
        else:
            s_new = [self._to_float(q[l]) for l in range(L)]
        loss = 0.0
        for t in range(T - 1, -1, -1):
            for l in range(L - 1, -1, -1):
                if mode == "reversible":
                    # undoing the step computes its gates from the recovered state: the
                    # same float64 values the recompute would give, so they are kept
                    try:
                        xt, tok = self._unstep_layer(prl, pr, x, tokens, t, l, q, bufs, P, masks,
                                                     ebuf, caches[l])
                    except ReversalError as e:
                        raise self._blame(e, l, t, prl, pr, x, tokens, q, q0, bufs, P, masks,
                                          ebuf, B) from None
                    s_prev = self._to_float(q[l])
                    self._float_step(pl[l], P, s_prev, s_new[l], caches[l], have_gates=True)
                else:
                    if l == 0:
                        xt, tok = self._bottom_input(p, x, tokens, t, masks, ebuf_c)
                    else:
                        xt, tok = self._upper_input(self._h(s_new[l - 1]), l, masks), False
                    s_prev = self._unpack(cstore[l][t]) if cplx else \
                        self._to_float(self._unpack(store[l][t]))
                    self._float_step(pl[l], self._project_row(pl[l]["V"], xt, tok, Pd), s_prev,
                                     s_new[l], caches[l])
                if l == L - 1:
                    loss = loss + self._step_loss(p, g, batch, t,
                                                  self._top(self._h(s_new[l]), masks), dH)
                    self._add_dh(ds[l], self._top(dH, masks))
                self._float_back(pl[l], gl[l], s_prev, s_new[l], caches[l], ds[l], dP)
                self._project_row_grad(gl[l]["V"], xt, tok, dP)
                self._input_grad(pl[l], g, x, t, l, dP, ds, masks, dX)
                s_new[l] = s_prev
        if mode == "reversible":
            for l in range(L):
                same = all(np.array_equal(q[l][nm], q0[l][nm]) for nm in q0[l])
                check_reversal(f"{self._layer_tag(l)}: reversible BPTT", same, bufs[l])
        info = {"stored_bytes": stored, "buffer_bytes": buffer_bytes, "info_bits": info_bits,
                "final_state": final_state}
        if want_inputs:
            info["dstate0"] = np.concatenate([self._pack(d) for d in ds], axis=1).real.copy()
            info["dx"] = None if dX is None else dX.real.copy()
        return loss, grad, info

    def _input_grad(self, p, g, x, t, l, dP, ds, masks, dX):
        """Pass dL/d(layer ``l``'s input at ``t``) = ``dP V^T`` down: to layer ``l-1``'s
        state, to the embedding rows, or into ``dX[t]`` (float inputs)."""
        if l == 0 and self.embed_dim is None and dX is None:
            return
        d = np.empty((dP.shape[0], p["V"].shape[0]), dtype=dP.dtype)
        matmul_rows_t(dP, p["V"], d)
        if l > 0:
            self._add_dh(ds[l - 1], d if masks is None else d * masks.between[l - 1])
        elif self.embed_dim is not None:
            if masks is not None:
                d *= masks.embed
            scatter_add_rows(x[t:t + 1], d[None], g["embed"])
        else:
            dX[t] = d

    def _complex_states(self, pl, p, x, tokens, store, masks, ebuf, B):
        """Complex-step hvp: the float (straight-through) recurrence along the fixed trajectory.

        Returns per layer ``(T+1, B, layer_state_size)`` complex states, and their bytes.
        """
        T, L = x.shape[0], self.n_layers
        dtype = np.complex128
        cstore = [np.empty((T + 1, B, self.layer_state_size), dtype=np.complex128)
                  for _ in range(L)]
        for l in range(L):
            cstore[l][0] = store[l][0] * self.inv_scale
        Pc = np.empty((B, self._n_proj), dtype=dtype)
        cache = self._cache(B, dtype)
        for t in range(T):
            xt, tok = self._bottom_input(p, x, tokens, t, masks, ebuf)
            for l in range(L):
                s_prev = self._unpack(cstore[l][t])
                s_new = self._unpack((store[l][t + 1] * self.inv_scale).astype(dtype))
                self._float_step(pl[l], self._project_row(pl[l]["V"], xt, tok, Pc), s_prev,
                                 s_new, cache)
                self._pack(s_new, cstore[l][t + 1])
                if l < L - 1:
                    xt, tok = self._upper_input(self._h(s_new), l + 1, masks), False
        return cstore, sum(c.nbytes for c in cstore)

    def _pack_stack(self, q):
        """Float64 ``(B, state_size)``: every layer's fixed-point state, side by side."""
        return np.concatenate([self._pack(self._to_float(ql)) for ql in q], axis=1)

    def _hidden(self, theta, x, tokens, state0):
        T, B = x.shape[0], x.shape[1]
        p = self.layout.views(theta)
        pl = self.layer_params(p)
        q = self._initial_fixed(state0, B)
        bufs = [InfoBuffer(B, capacity=16) for _ in range(self.n_layers)]
        P = np.empty((B, self._n_proj))
        ebuf = None if self.embed_dim is None else np.empty((B, self.embed_dim))
        hs = np.empty((T, B, self.n_hidden))
        for t in range(T):
            self._stack_step(pl, p, x, tokens, t, q, bufs, P, None, ebuf)
            hs[t] = self._h_fixed(q[-1])
        return hs, self._pack_stack(q)
