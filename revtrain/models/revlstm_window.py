"""RevLSTM BPTT through the whole-window kernels (:mod:`revtrain._kernels.revlstm_stack`).

The results equal those of the per-step Python driver: the loss, the
fixed-point trajectory and the gradients with respect to states and inputs
bit for bit, the parameter gradient to rounding (the kernels sum weight
gradients once per chunk).
"""
import numpy as np

from .window import WindowRun, CHUNK
from .._kernels.revlstm_stack import stack_forward, stack_backward


class RevLSTMWindow(WindowRun):
    """A RevLSTM stack's arrays: ``W1s``, ``W2s`` (L, Hh, 5Hh), ``bs`` (L, 5H); parts ``[h1, h2, c1, c2]``."""

    error_parts = ("c1", "h1", "c2", "h2")

    def _pack_cell(self):
        pl, B, Hh = self.pl, self.B, self.H // 2
        self.W1s = np.ascontiguousarray(np.stack([q["W1"] for q in pl]))
        self.W2s = np.ascontiguousarray(np.stack([q["W2"] for q in pl]))
        self.bs = np.ascontiguousarray(np.stack([q["b"] for q in pl]))
        self.o, self.A = np.empty((B, Hh)), np.empty((B, 5 * Hh))
        self.g1, self.g2 = np.empty((7, B, Hh)), np.empty((7, B, Hh))
        self.n = np.empty((B, Hh), dtype=np.int64)
        self.inc = np.empty((B, Hh), dtype=np.int64)

    def _forward_chunk(self, t0, t1, store):
        m, b = self.m, self.buf
        return stack_forward(
            t0, t1, *self.inputs(), self.W1s, self.W2s, self.bs, self.m_btw, self.q, b.states,
            b.counts, b.words, b.info, m._log2, m.D, m.nmin, m.scale, m.inv_scale, m.floor,
            store, self.inp0, self.inpH, self.P, self.o, self.A, self.g1, self.n, self.inc)

    def _cell_grads(self):
        L, B, Hh = self.L, self.B, self.H // 2
        return {"W1s": np.zeros_like(self.W1s), "W2s": np.zeros_like(self.W2s),
                "bs": np.zeros_like(self.bs), "Ob": np.empty((L, 2, CHUNK, B, Hh)),
                "tc": np.empty((2, B, Hh))}

    def _backward_chunk(self, loss, t0, t1, reverse, store, batch, bw):
        m, b, c, p, g = self.m, self.buf, bw.cell, self.p, bw.g
        return stack_backward(
            loss, t0, t1, self.T, reverse, *self.inputs(), self.W1s, self.W2s, self.bs,
            self.m_btw, self.m_top, self.q, store, b.states, b.counts, b.words, b.info, m._log2,
            m.D, m.nmin, m.scale, m.inv_scale, m.floor, p["U"], p["b_y"], bw.softmax,
            batch.labels, batch.target, batch.scale, batch.per_step, bw.sn, bw.sp, bw.ds, bw.gE,
            bw.gV0, bw.gVs, c["W1s"], c["W2s"], c["bs"], g["U"], g["b_y"], bw.dX, bw.want_dx,
            self.inp0, self.inpH, self.P, bw.dP, bw.dx0, bw.dxH, self.o, self.A, self.g1,
            self.g2, self.n, self.inc, c["tc"], bw.htop, bw.dH, bw.work, c["Ob"], bw.dPb,
            bw.Xb0, bw.XbH)

    def _add_cell_grads(self, gl, cg):
        for l in range(self.L):
            gl[l]["W1"][...] += cg["W1s"][l]
            gl[l]["W2"][...] += cg["W2s"][l]
            gl[l]["b"][...] += cg["bs"][l]
