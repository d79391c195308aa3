"""RevLSTM BPTT through the whole-window kernels (:mod:`revtrain._kernels.revlstm_stack`).

The results equal those of the per-step Python driver: the loss, the
fixed-point trajectory and the gradients with respect to states and inputs
bit for bit, the parameter gradient to rounding (the kernels sum weight
gradients once per chunk).
"""
import numpy as np

from .window import WindowRun
from .window_arrays import stacked
from .._kernels.revlstm_stack import (stack_forward, stack_backward, stack_undo,
                                      stack_backprop, chunk_grads)


class RevLSTMWindow(WindowRun):
    """A RevLSTM stack's arrays: ``W1s``, ``W2s`` (L, Hh, 5Hh), ``bs`` (L, 5H); parts ``[h1, h2, c1, c2]``."""

    error_parts = ("c1", "h1", "c2", "h2")
    #: stack_backprop overwrites a step's kept gates with its dL/dP only once it used them
    gates_hold_dp = True

    def _pack_cell(self):
        pl, B, Hh, dt = self.pl, self.B, self.H // 2, self.dt
        self.W1s = stacked([q["W1"] for q in pl], dt)
        self.W2s = stacked([q["W2"] for q in pl], dt)
        self.bs = stacked([q["b"] for q in pl], dt)
        self.o, self.A = np.empty((B, Hh), dtype=dt), np.empty((B, 5 * Hh), dtype=dt)
        # each half's gates (revlstm_stack.GATE_ROWS); the floored f, p in fp where used
        self.g1, self.g2 = np.empty((5, B, Hh), dtype=dt), np.empty((5, B, Hh), dtype=dt)
        self.fp = np.empty((2, B, Hh), dtype=dt)
        self.n = np.empty((B, Hh), dtype=np.int64)
        self.inc = np.empty((B, Hh), dtype=np.int64)

    def _forward_chunk(self, t0, t1, store, s0):
        m, b = self.m, self.buf
        return stack_forward(
            t0, t1, *self.inputs(), self.W1s, self.W2s, self.bs, self.m_btw, self.q, b.states,
            b.counts, b.words, b.info, m._log2, m.D, m.nmin, m.scale, m.inv_scale, m.floor,
            store, s0, self.inp0, self.inpH, self.P, self.o, self.A, self.g1, self.fp, self.n,
            self.inc)

    def _cell_grads(self, gl, grad):
        L, B, Hh, dt = self.L, self.B, self.H // 2, self.dt
        c = {nm + "s": stacked([q[nm] for q in gl], dt) for nm in ("W1", "W2", "b")}
        c.update(Ob=np.empty((L, 2, self.chunk, B, Hh), dtype=dt),
                 tc=np.empty((2, B, Hh), dtype=dt))
        return c

    def _stage_scratch(self):
        B, Hh, dt = self.B, self.H // 2, self.dt
        return dict(o=np.empty((B, Hh), dtype=dt), A=np.empty((B, 5 * Hh), dtype=dt),
                    fp=np.empty((2, B, Hh), dtype=dt))

    def _backward_chunk(self, t0, t1, reverse, grads, store, batch, bw):
        m, b, c = self.m, self.buf, bw.cell
        return stack_backward(
            t0, t1, self.T, reverse, grads, *self.inputs(), self.W1s, self.W2s, self.bs,
            self.m_btw, self.m_top, self.q, store, b.states, b.counts, b.words, b.info, m._log2,
            m.D, m.nmin, m.scale, m.inv_scale, m.floor, self.U, self.by, bw.softmax,
            bw.labels, bw.target, batch.scale, batch.per_step, bw.sn, bw.sp, bw.ds, bw.gE,
            bw.gV0, bw.gVs, c["W1s"], c["W2s"], c["bs"], bw.gU, bw.gby, bw.dX, bw.want_dx,
            self.inp0, self.inpH, self.P, bw.dx0, bw.dxH, self.o, self.A, self.g1,
            self.g2, self.fp, self.n, self.inc, c["tc"], bw.htop, bw.dH, bw.work, c["Ob"],
            bw.dPb, bw.Xb0, bw.XbH, bw.terms)

    def _chunk_grads(self, t0, t1, bw):
        c = bw.cell
        chunk_grads(t1 - t0, t0, c["Ob"], bw.dPb, c["W1s"], c["W2s"], c["bs"],
                    self.mode_in, self.xtok, self.m_emb, bw.Xb0, bw.XbH, bw.dx0, bw.htop,
                    bw.work, bw.gV0, bw.gVs, bw.gE, bw.gU, bw.gby)

    def kept_gates(self):
        """(each half's i, sigmoid(A_f), o, sigmoid(A_p), g; B, units): 5 of the 7 gate arrays
        (the floored f and p are recomputed from their sigmoids: ``revlstm_stack.GATE_ROWS``)."""
        return (2, 5, self.B, self.H // 2)

    def _undo_chunk(self, t0, t1, slot):
        m, b = self.m, self.buf
        return stack_undo(
            t0, t1, *self.inputs(), self.W1s, self.W2s, self.bs, self.m_btw, self.q, b.states,
            b.counts, b.words, b.info, m._log2, m.D, m.nmin, m.scale, m.inv_scale, m.floor,
            self.inp0, self.inpH, self.P, self.o, self.A, self.fp, self.n, self.inc,
            slot.Gs, slot.Qs, slot.X0s, slot.XHs)

    def _backprop_chunk(self, t0, t1, batch, bw, slot):
        m, c, s = self.m, bw.cell, bw.stage
        stack_backprop(
            t0, t1, self.T, self.xtok, self.mode_in, self.m_emb, self.m_btw, self.m_top,
            m.inv_scale, m.floor, self.U, self.by, bw.softmax, bw.labels, bw.target,
            batch.scale, batch.per_step, bw.sn, bw.sp, bw.ds, bw.gE, bw.gV0, bw.gVs, c["W1s"],
            c["W2s"], c["bs"], bw.gU, bw.gby, bw.dX, bw.want_dx, bw.dP, bw.dx0, bw.dxH, s["o"],
            s["A"], s["fp"], c["tc"], bw.htop, bw.dH, bw.work, c["Ob"], slot.dPb, bw.Xb0, bw.XbH,
            bw.terms, self.V0, self.Vs, self.W1s, self.W2s, slot.Gs, slot.Qs, slot.X0s,
            slot.XHs)
