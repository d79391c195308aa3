"""RevLSTM BPTT through the whole-window kernels (:mod:`revtrain._kernels.revlstm_stack`).

Python validates, packs the parameters of the stack into contiguous arrays,
allocates the workspaces, makes room in the information buffer for a chunk
of steps, calls one kernel per chunk (forward, then backward) and turns the
kernels' error codes into :class:`~revtrain.FixedPointError` /
:class:`~revtrain.ReversalError` naming the layer. The results equal those of
the per-step Python driver (:mod:`revtrain.models.reversible_bptt`), which
remains the reference (and serves the complex-step ``hvp``).
"""
from types import SimpleNamespace

import numpy as np

from ..buffer import InfoBuffer
from ..errors import ReversalError, check_reversal
from .._kernels.revlstm_stack import stack_forward, stack_backward

#: Steps per kernel call (the buffer gets room for this many steps between calls).
CHUNK = 32
#: Part names in the kernels' order ``[h1, h2, c1, c2]`` and of their error codes.
PARTS = ("h1", "h2", "c1", "c2")
ERROR_PARTS = ("c1", "h1", "c2", "h2")


class WindowRun:
    """The arrays of one RevLSTM ``loss_and_grad`` / forward call through the kernels."""

    def __init__(self, model, theta, x, tokens, state0, masks):
        m = model
        self.m = m
        L, H, Hh = m.n_layers, m.n_hidden, m.n_hidden // 2
        self.T, self.B = x.shape[0], x.shape[1]
        B = self.B
        self.L, self.H, self.Hh = L, H, Hh
        p = m.layout.views(theta)
        pl = m.layer_params(p)
        self.p = p
        self.V0 = pl[0]["V"]
        self.Vs = (np.ascontiguousarray(np.stack([pl[l]["V"] for l in range(1, L)])) if L > 1
                   else np.zeros((1, H, 5 * H)))
        self.W1s = np.ascontiguousarray(np.stack([q["W1"] for q in pl]))
        self.W2s = np.ascontiguousarray(np.stack([q["W2"] for q in pl]))
        self.bs = np.ascontiguousarray(np.stack([q["b"] for q in pl]))
        self.E = p["embed"] if m.embed_dim is not None else np.zeros((1, 1))
        self.mode_in = 2 if not tokens else (1 if m.embed_dim is not None else 0)
        self.xtok = x if tokens else np.zeros((1, 1), dtype=np.int64)
        self.xflt = x if not tokens else np.zeros((1, 1, 1))
        D0 = self.V0.shape[0] if self.mode_in == 2 else (m.embed_dim or 1)
        self.D0 = D0
        if masks is None:
            self.m_emb = np.ones((B, D0))
            self.m_btw = np.ones((max(L - 1, 1), B, H))
            self.m_top = np.ones((B, H))
        else:
            self.m_emb = masks.embed if masks.embed is not None else np.ones((B, D0))
            self.m_btw = (np.ascontiguousarray(np.stack(masks.between)) if L > 1
                          else np.ones((1, B, H)))
            self.m_top = masks.top
        q0 = m._initial_fixed(state0, B)
        self.q = np.empty((L, 4, B, Hh), dtype=np.int64)
        for l in range(L):
            for k, nm in enumerate(PARTS):
                self.q[l, k] = q0[l][nm]
        self.q0 = self.q.copy()
        self.buf = InfoBuffer(L * B, capacity=16)
        # workspaces
        self.inp0 = np.empty((B, D0))
        self.inpH = np.empty((B, H))
        self.P = np.empty((B, 5 * H))
        self.o = np.empty((B, Hh))
        self.A = np.empty((B, 5 * Hh))
        self.g1 = np.empty((7, B, Hh))
        self.g2 = np.empty((7, B, Hh))
        self.n = np.empty((B, Hh), dtype=np.int64)
        self.inc = np.empty((B, Hh), dtype=np.int64)

    # ------------------------------------------------------------ helpers
    def _reserve(self, steps):
        self.buf.reserve(steps * self.m._step_words)

    def _args_common(self):
        m = self.m
        return (self.xtok, self.xflt, self.mode_in, self.E, self.m_emb, self.V0, self.Vs,
                self.W1s, self.W2s, self.bs)

    def state(self):
        """Float64 ``(B, state_size)`` of the current fixed-point state."""
        m = self.m
        S = m.layer_state_size
        out = np.empty((self.B, self.L * S))
        for l in range(self.L):
            out[:, l * S:(l + 1) * S] = np.concatenate([self.q[l, k] for k in range(4)],
                                                       axis=1) * m.inv_scale
        return out

    def _raise(self, t, l, part, code, reverse):
        m = self.m
        fn = m._corrupt if reverse else m._overflow
        m._in_layer(l, fn, ERROR_PARTS[part], t, code, (self.B, self.Hh))

    def layer_q(self, l):
        """Layer ``l``'s fixed-point parts as a dict of views ``{h1, h2, c1, c2}`` (B, Hh)."""
        return {nm: self.q[l, k] for k, nm in enumerate(PARTS)}

    def layer_buffer(self, l):
        """Layer ``l``'s streams of the buffer, as an object with the InfoBuffer arrays (views)."""
        B = self.B
        b = self.buf
        view = InfoBuffer(B)
        view.states, view.counts = b.states[l * B:(l + 1) * B], b.counts[l * B:(l + 1) * B]
        view.words, view.info = b.words[l * B:(l + 1) * B], b.info[l * B:(l + 1) * B]
        return view

    # ------------------------------------------------------------ forward
    def forward(self, store=None):
        """All steps in fixed point; ``store`` (T+1, L, 4, B, Hh) gets every state (standard)."""
        m = self.m
        st = np.zeros((1, 1, 1, 1, 1), dtype=np.int64) if store is None else store
        if store is not None:
            store[0] = self.q
        for t0 in range(0, self.T, CHUNK):
            t1 = min(self.T, t0 + CHUNK)
            self._reserve(t1 - t0)
            b = self.buf
            t, l, part, code = stack_forward(
                t0, t1, *self._args_common(), self.m_btw, self.q, b.states, b.counts, b.words,
                b.info, m._log2, m.D, m.nmin, m.scale, m.inv_scale, m.floor, st, self.inp0,
                self.inpH, self.P, self.o, self.A, self.g1, self.n, self.inc)
            if code >= 0:
                self._raise(t, l, part, code, False)

    # ----------------------------------------------------------- backward
    def backward(self, batch, reverse, store, want_dx):
        """Undo (or reload) every step top-down, recompute, backpropagate.

        Returns ``(loss, grad, dstate0, dx)``.
        """
        m = self.m
        L, B, H, Hh, T = self.L, self.B, self.H, self.Hh, self.T
        grad = np.zeros(m.size)
        g = m.layout.views(grad)
        gl = m.layer_params(g)
        gV0 = np.zeros_like(self.V0)
        gVs = np.zeros_like(self.Vs)
        gW1s = np.zeros_like(self.W1s)
        gW2s = np.zeros_like(self.W2s)
        gbs = np.zeros_like(self.bs)
        gE = np.zeros_like(self.E)
        sn = self.q * m.inv_scale
        sp = np.empty_like(sn)
        ds = np.zeros_like(sn)
        dX = np.empty(self.xflt.shape) if want_dx else np.zeros((1, 1, 1))
        st = np.zeros((1, 1, 1, 1, 1), dtype=np.int64) if store is None else store
        softmax = m.loss_kind == "softmax"
        dP = np.empty((B, 5 * H))
        dx0 = np.empty((B, self.D0))
        dxH = np.empty((B, H))
        tc = np.empty((2, B, Hh))
        htop = np.empty((B, H))
        dH = np.empty((B, H))
        work = np.empty((B, m.n_out))
        Ob = np.empty((L, 2, CHUNK, B, Hh))
        dPb = np.empty((L, CHUNK, B, 5 * H))
        Xb0 = np.empty((CHUNK, B, self.D0))
        XbH = np.empty((max(L - 1, 1), CHUNK, B, H))
        loss = 0.0
        hook = getattr(m, "_fault_hook", None)        # tests inject faults here
        if hook is not None:
            hook("before", self)
        starts = list(range(0, T, CHUNK))
        for t0 in reversed(starts):
            t1 = min(T, t0 + CHUNK)
            if reverse:
                self._reserve(t1 - t0)
            b = self.buf
            loss, t, l, part, code = stack_backward(
                loss, t0, t1, T, reverse, *self._args_common(), self.m_btw, self.m_top, self.q,
                st, b.states, b.counts, b.words, b.info, m._log2, m.D, m.nmin, m.scale,
                m.inv_scale, m.floor, self.p["U"], self.p["b_y"], softmax, batch.labels,
                batch.target, batch.scale, batch.per_step, sn, sp, ds, gE, gV0, gVs, gW1s, gW2s,
                gbs, g["U"], g["b_y"], dX, want_dx, self.inp0, self.inpH, self.P, dP, dx0, dxH,
                self.o, self.A, self.g1, self.g2, self.n, self.inc, tc, htop, dH, work, Ob, dPb,
                Xb0, XbH)
            if code >= 0:
                return self._reversal_failed(t, l, part, code)
        for l in range(L):
            gl[l]["W1"][...] += gW1s[l]
            gl[l]["W2"][...] += gW2s[l]
            gl[l]["b"][...] += gbs[l]
            if l > 0:
                gl[l]["V"][...] += gVs[l - 1]
        gl[0]["V"][...] += gV0
        if m.embed_dim is not None:
            g["embed"][...] += gE
        if hook is not None:
            hook("after", self)
        if reverse:
            for l in range(L):
                check_reversal(f"{m._layer_tag(l)}: reversible BPTT",
                               np.array_equal(self.q[l], self.q0[l]), self.layer_buffer(l))
        S = m.layer_state_size
        dstate0 = np.empty((B, L * S))
        for l in range(L):
            dstate0[:, l * S:(l + 1) * S] = np.concatenate([ds[l, k] for k in range(4)], axis=1)
        return loss, grad, dstate0, (dX if want_dx else None)

    def _reversal_failed(self, t, l, part, code):
        """Raise the ReversalError of a failed undo, blaming the lowest corrupted layer."""
        m = self.m
        try:
            self._raise(t, l, part, code, True)
        except ReversalError as err:
            e = err
        if l == 0:
            raise e
        # the Python driver undoes the layers below on their own and names the lowest failing
        q = [self.layer_q(j) for j in range(self.L)]
        q0 = [{nm: self.q0[j, k] for k, nm in enumerate(PARTS)} for j in range(self.L)]
        bufs = [self.layer_buffer(j) for j in range(self.L)]
        pr = self.p
        prl = m.layer_params(pr)
        masks = SimpleNamespace(embed=self.m_emb, between=tuple(self.m_btw), top=self.m_top)
        ebuf = None if m.embed_dim is None else np.empty((self.B, m.embed_dim))
        x = self.xtok if self.mode_in < 2 else self.xflt
        raise m._blame(e, l, t, prl, pr, x, self.mode_in < 2, q, q0, bufs, np.empty(
            (self.B, m._n_proj)), masks, ebuf, self.B) from None
