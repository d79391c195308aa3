"""MomentumRNN BPTT through the whole-window kernels (:mod:`revtrain._kernels.momentum_stack`).

The results equal those of the per-step Python driver: the loss, the
fixed-point trajectory and the gradients with respect to states and inputs
bit for bit, the parameter gradient to rounding (the kernels sum weight
gradients once per chunk).
"""
import numpy as np

from .window import WindowRun
from .window_arrays import stacked
from .._kernels.momentum_stack import (stack_forward, stack_backward, stack_undo,
                                       stack_backprop, chunk_grads)


class MomentumRNNWindow(WindowRun):
    """A MomentumRNN stack's arrays: ``Ws`` (L, H, G), ``bs``, ``bgs`` (L, H); parts ``[h, v]``.

    ``bgs`` is zero with a constant gamma (the gate kernel does not read it then).
    """

    error_parts = ("h", "v")

    def _pack_cell(self):
        m, pl, B, H, L, dt = self.m, self.pl, self.B, self.H, self.L, self.dt
        self.Ws = stacked([q["W"] for q in pl], dt)
        self.bs = stacked([q["b"] for q in pl], dt)
        self.bgs = (stacked([q["b_g"] for q in pl], dt) if m.learned
                    else stacked([np.zeros(H, dtype=dt)] * L, dt))
        self.consts = (m.floor, 0.0 if m.learned else m.gamma, m.learned, m._nbeta, m._cbeta)
        self.hf, self.A = np.empty((B, H), dtype=dt), np.empty((B, m._n_proj), dtype=dt)
        self.gt = np.zeros((3, B, H), dtype=dt)
        self.n = np.empty((B, H), dtype=np.int64)
        self.inc = np.empty((B, H), dtype=np.int64)

    def _forward_chunk(self, t0, t1, store, s0=0):
        m, b = self.m, self.buf
        return stack_forward(
            t0, t1, *self.inputs(), self.Ws, self.bs, self.bgs, self.m_btw, self.q, b.states,
            b.counts, b.words, b.info, m._log2, m.D, m.nmin, m.scale, m.inv_scale, *self.consts,
            store, s0, self.inp0, self.inpH, self.P, self.hf, self.A, self.gt, self.n, self.inc)

    def _bias_views(self, grad):
        """Per layer, the gradient of ``[b | b_g]`` (adjacent in ``theta``) as one view of ``grad``."""
        m, out = self.m, []
        for l in range(self.L):
            a = m.layout.offsets[m._layer_name(l, "b")][0]
            out.append(grad[a:a + m._n_proj])
        return out

    def _cell_grads(self, gl, grad):
        L, B, H, dt = self.L, self.B, self.H, self.dt
        return {"Ws": stacked([q["W"] for q in gl], dt),
                "bs": stacked(self._bias_views(grad), dt),
                "Ob": np.empty((L, self.chunk, B, H), dtype=dt)}

    def _stage_scratch(self):
        return {"scratch": np.empty((self.B, self.H), dtype=self.dt)}

    def _backward_chunk(self, t0, t1, reverse, grads, store, batch, bw):
        m, b, c = self.m, self.buf, bw.cell
        return stack_backward(
            t0, t1, self.T, reverse, grads, *self.inputs(), self.Ws, self.bs, self.bgs,
            self.m_btw, self.m_top, self.q, store, b.states, b.counts, b.words, b.info, m._log2,
            m.D, m.nmin, m.scale, m.inv_scale, *self.consts, m.beta, 1.0 - m.beta, self.U,
            self.by, bw.softmax, bw.labels, bw.target, batch.scale, batch.per_step, bw.sn,
            bw.sp, bw.ds, bw.gE, bw.gV0, bw.gVs, c["Ws"], c["bs"], bw.gU, bw.gby, bw.dX,
            bw.want_dx, self.inp0, self.inpH, self.P, bw.dx0, bw.dxH, self.hf, self.A,
            self.gt, self.n, self.inc, bw.htop, bw.dH, bw.work, c["Ob"], bw.dPb, bw.Xb0, bw.XbH,
            bw.terms)

    def _chunk_grads(self, t0, t1, bw):
        c = bw.cell
        chunk_grads(t1 - t0, t0, c["Ob"], bw.dPb, c["Ws"], c["bs"],
                    self.mode_in, self.xtok, self.m_emb, bw.Xb0, bw.XbH, bw.dx0, bw.htop,
                    bw.work, bw.gV0, bw.gVs, bw.gE, bw.gU, bw.gby)

    def kept_gates(self):
        """(g, gamma, sigma, B, units)."""
        return (3, self.B, self.H)

    def _undo_chunk(self, t0, t1, slot):
        m, b = self.m, self.buf
        return stack_undo(
            t0, t1, *self.inputs(), self.Ws, self.bs, self.bgs, self.m_btw, self.q, b.states,
            b.counts, b.words, b.info, m._log2, m.D, m.nmin, m.scale, m.inv_scale, *self.consts,
            self.inp0, self.inpH, self.P, self.hf, self.A, self.n, self.inc, slot.Gs, slot.Qs,
            slot.X0s, slot.XHs)

    def _backprop_chunk(self, t0, t1, batch, bw, slot):
        m, c = self.m, bw.cell
        floor, _, learned = self.consts[:3]
        stack_backprop(
            t0, t1, self.T, self.xtok, self.mode_in, self.m_emb, self.m_btw, self.m_top,
            m.inv_scale, floor, learned, m.beta, 1.0 - m.beta, self.U, self.by, bw.softmax,
            bw.labels, bw.target, batch.scale, batch.per_step, bw.sn, bw.sp, bw.ds, bw.gE,
            bw.gV0, bw.gVs, c["Ws"], c["bs"], bw.gU, bw.gby, bw.dX, bw.want_dx, bw.dP, bw.dx0,
            bw.dxH, bw.stage["scratch"], bw.htop, bw.dH, bw.work, c["Ob"], slot.dPb, bw.Xb0, bw.XbH,
            bw.terms, self.V0, self.Vs, self.Ws, slot.Gs, slot.Qs, slot.X0s, slot.XHs)
