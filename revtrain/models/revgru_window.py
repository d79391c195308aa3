"""RevGRU BPTT through the whole-window kernels (:mod:`revtrain._kernels.revgru_stack`).

The results equal those of the per-step Python driver: the loss, the
fixed-point trajectory and the gradients with respect to states and inputs
bit for bit, the parameter gradient to rounding (the kernels sum weight
gradients once per chunk).
"""
import numpy as np

from .window import WindowRun
from .window_arrays import stacked
from .._kernels.revgru_stack import (stack_forward, stack_backward, stack_undo,
                                     stack_backprop, chunk_grads)


class RevGRUWindow(WindowRun):
    """A RevGRU stack's arrays: ``W1s``, ``W2s`` (L, Hh, 2Hh), ``Wg1s``, ``Wg2s`` (L, Hh, Hh),
    ``bs`` (L, 3H); parts ``[h1, h2]``."""

    error_parts = ("h1", "h2")

    def _pack_cell(self):
        pl, B, Hh, dt = self.pl, self.B, self.H // 2, self.dt
        for nm in ("W1", "Wg1", "W2", "Wg2", "b"):
            setattr(self, nm + "s", stacked([q[nm] for q in pl], dt))
        self.o, self.A = np.empty((B, Hh), dtype=dt), np.empty((B, 2 * Hh), dtype=dt)
        self.Gm = np.empty((B, Hh), dtype=dt)
        self.g1, self.g2 = np.empty((5, B, Hh), dtype=dt), np.empty((5, B, Hh), dtype=dt)
        self.n = np.empty((B, Hh), dtype=np.int64)
        self.inc = np.empty((B, Hh), dtype=np.int64)

    def _weights(self):
        return self.W1s, self.Wg1s, self.W2s, self.Wg2s, self.bs

    def _forward_chunk(self, t0, t1, store, s0=0):
        m, b = self.m, self.buf
        return stack_forward(
            t0, t1, *self.inputs(), *self._weights(), self.m_btw, self.q, b.states, b.counts,
            b.words, b.info, m._log2, m.D, m.nmin, m.scale, m.inv_scale, m.floor, store, s0,
            self.inp0, self.inpH, self.P, self.o, self.A, self.Gm, self.g1, self.n, self.inc)

    def _cell_grads(self, gl, grad):
        L, B, Hh, dt = self.L, self.B, self.H // 2, self.dt
        c = {nm + "s": stacked([q[nm] for q in gl], dt)
             for nm in ("W1", "Wg1", "W2", "Wg2", "b")}
        c.update(Ob=np.empty((L, 2, self.chunk, B, Hh), dtype=dt),
                 ROb=np.empty((L, 2, self.chunk, B, Hh), dtype=dt))
        for nm, w in (("dAzr", 2 * Hh), ("dAg", Hh), ("dRO", Hh), ("do", Hh), ("tmp", Hh)):
            c[nm] = np.empty((B, w), dtype=dt)
        return c

    def _backward_chunk(self, t0, t1, reverse, grads, store, batch, bw):
        m, b, c = self.m, self.buf, bw.cell
        return stack_backward(
            t0, t1, self.T, reverse, grads, *self.inputs(), *self._weights(), self.m_btw,
            self.m_top, self.q, store, b.states, b.counts, b.words, b.info, m._log2, m.D, m.nmin,
            m.scale, m.inv_scale, m.floor, self.U, self.by, bw.softmax, bw.labels, bw.target,
            batch.scale, batch.per_step, bw.sn, bw.sp, bw.ds, bw.gE, bw.gV0, bw.gVs, c["W1s"],
            c["Wg1s"], c["W2s"], c["Wg2s"], c["bs"], bw.gU, bw.gby, bw.dX, bw.want_dx, self.inp0,
            self.inpH, self.P, bw.dx0, bw.dxH, self.o, self.A, self.Gm, self.g1, self.g2,
            self.n, self.inc, c["dAzr"], c["dAg"], c["dRO"], c["do"], c["tmp"], bw.htop, bw.dH,
            bw.work, c["Ob"], c["ROb"], bw.dPb, bw.Xb0, bw.XbH, bw.terms)

    def _chunk_grads(self, t0, t1, bw):
        c = bw.cell
        chunk_grads(t1 - t0, t0, c["Ob"], c["ROb"], bw.dPb, c["W1s"], c["Wg1s"], c["W2s"],
                    c["Wg2s"], c["bs"], self.mode_in, self.xtok, self.m_emb, bw.Xb0, bw.XbH,
                    bw.dx0, bw.htop, bw.work, bw.gV0, bw.gVs, bw.gE, bw.gU, bw.gby)

    def kept_gates(self):
        """(z, sz, r, ro, g of each half, B, units)."""
        return (2, 5, self.B, self.H // 2)

    def _undo_chunk(self, t0, t1, slot):
        m, b = self.m, self.buf
        return stack_undo(
            t0, t1, *self.inputs(), *self._weights(), self.m_btw, self.q, b.states, b.counts,
            b.words, b.info, m._log2, m.D, m.nmin, m.scale, m.inv_scale, m.floor, self.inp0,
            self.inpH, self.P, self.o, self.A, self.Gm, self.n, self.inc, slot.Gs, slot.Qs,
            slot.X0s, slot.XHs)

    def _backprop_chunk(self, t0, t1, batch, bw, slot):
        m, c = self.m, bw.cell
        stack_backprop(
            t0, t1, self.T, self.xtok, self.mode_in, self.m_emb, self.m_btw, self.m_top,
            m.inv_scale, m.floor, self.U, self.by, bw.softmax, bw.labels, bw.target,
            batch.scale, batch.per_step, bw.sn, bw.sp, bw.ds, bw.gE, bw.gV0, bw.gVs, c["W1s"],
            c["Wg1s"], c["W2s"], c["Wg2s"], c["bs"], bw.gU, bw.gby, bw.dX, bw.want_dx, bw.dP,
            bw.dx0, bw.dxH, c["dAzr"], c["dAg"], c["dRO"], c["do"], c["tmp"], bw.htop, bw.dH,
            bw.work, c["Ob"], c["ROb"], slot.dPb, bw.Xb0, bw.XbH, bw.terms, self.V0, self.Vs,
            self.W1s, self.Wg1s, self.W2s, self.Wg2s, slot.Gs, slot.Qs, slot.X0s, slot.XHs)
