"""RevMDRNN: a reversible two-dimensional RNN (momentum coupling along the rows of a grid)."""
import numpy as np

from ..buffer import InfoBuffer
from ..errors import FixedPointError, ReversalError, check_reversal
from .momentum_rnn import MomentumCoupled
from .results import no_input_grad
from .reversible import REV_FRAC_BITS, MAX_FORGET_BITS, GATE_BITS
from .._kernels.head import softmax_xent_head, mse_head
from .._kernels.inputs import gather_rows, scatter_add_rows
from .._kernels.momentum_rnn import momentum_gates, momentum_snap, momentum_back
from .._kernels.quantize import quantise_convex, add_checked
from .._kernels.revmdrnn import (diag_forget_add, diag_forget_add_undo, store_cells,
                                 load_cells)


class RevMDRNN(MomentumCoupled):
    """Reversible multidimensional RNN over a ``rows x cols`` grid, exact in fixed point.

    Every cell carries a hidden state ``h[i,j]`` and a velocity ``v[i,j]``
    (``H`` units each). Row ``i`` is a momentum step from row ``i-1``, with
    the west neighbour taken in the *current* row as in :class:`MDRNN`::

        A[i,j]  = x[i,j] V + h[i-1,j] W_n + h[i,j-1] W_w
        g[i,j]  = tanh(A[i,j][:H] + b)
        gam[i,j] = 2**-k + (1 - 2**-k) * sigmoid(A[i,j][H:] + b_g)   (or a constant gamma)
        v[i,j]  = gam[i,j] * v[i-1,j] + (1 - gam[i,j]) * g[i,j]
        h[i,j]  = h[i-1,j] + v[i,j]

    with zero states outside the grid (``h[-1,j] = v[-1,j] = h[i,-1] = 0``).
    Outputs ``yhat[i,j] = softmax(h[i,j] U + b_y)`` (or linear for
    ``loss="mse"``), scored at every cell (``y`` of shape ``(rows, cols,
    B)``) or at the last cell ``(rows-1, cols-1)`` (``y`` of shape ``(B,)``).
    Inputs ``x``: float ``(rows, cols, B, n_in)`` or token ids
    ``(rows, cols, B)``.

    Why it reverses exactly. In fixed point the multiply by ``gam``
    (quantised to ``n / 2**gate_bits``, at least ``2**-max_forget_bits``) is
    exact with its lost digits in the information buffer, and
    ``round((1 - gam) g)`` and ``v`` are integer adds. Given row ``i``:
    ``h[i-1,j] = h[i,j] - v[i,j]`` for every ``j`` (no gate needed -- the
    momentum coupling); then ``A[i,j]`` depends only on ``h[i-1,j]`` (just
    recovered) and ``h[i,j-1]`` (row ``i``, known), so ``gam`` and ``g`` are
    recomputed bit-identically and
    ``v[i-1,j] = (v[i,j] - round((1-gam) g)) / gam`` exactly. So row ``i-1``
    is recovered from row ``i``, and the whole grid from its last row.

    Evaluation order. Cell ``(i,j)`` needs ``(i-1,j)`` and ``(i,j-1)``, so
    both passes sweep anti-diagonals ``d = i + j`` (``rows + cols - 1``
    steps, each one ``(m B, H) x (H, G)`` product per direction over the
    diagonal's ``m`` cells). The kept state is a *frontier*: for each column
    its last computed cell, ``2 * cols * B * H`` int64 -- before the sweep all
    zeros (row ``-1``), after it the last row. Undoing diagonal ``d`` first
    steps its columns back by ``h -= v``; the frontier is then exactly the
    one the forward pass read for diagonal ``d``, so the same products give
    the same gates. The information buffer has one rANS stream per batch
    row.

    Parameters
    ----------
    n_in, n_hidden, n_out, loss
        See :class:`~revtrain.models.base.RecurrentModel`.
    gamma : float in [2**-max_forget_bits, 1], optional
        A constant momentum instead of the learned gate (then ``V``, ``W_n``,
        ``W_w`` have ``H`` columns and there is no ``b_g``).
    frac_bits, max_forget_bits, gate_bits
        See :class:`~revtrain.models.reversible.ReversibleModel`.

    Parameters (views of ``theta``): ``V`` (n_in, G) ("input"), ``W_n`` (H, G)
    and ``W_w`` (H, G) ("recurrent"), ``G = 2H`` (columns ``[candidate |
    gate]``) or ``H``; ``b`` (H,), ``b_g`` (H,) initialised to 1 (learned
    gate only) ("bias"); ``U`` (H, n_out), ``b_y`` (n_out,) ("output").

    Notes
    -----
    ``bptt="reversible"`` (default) keeps the final frontier and the buffer
    (``stored_bytes = buffer_bytes + 2 * cols * B * H * 8``); the backward
    pass undoes diagonal ``d``, recomputes it in float from the recovered
    frontier, runs the output layer on its cells and backpropagates through
    it; at the end the frontier must be zero again and the buffer empty, else
    :class:`~revtrain.ReversalError`. ``bptt="standard"`` stores every cell's
    fixed-point ``h`` and ``v`` (``2 * rows * cols * B * H * 8`` bytes) and
    reads them instead; both give the same loss and gradient. Gradients are
    straight-through (the float cell differentiated at the fixed-point
    states). There is no initial state; :meth:`final_state` returns the last
    cell's ``[h, v]`` (B, 2H). Information destroyed: at most
    ``rows * cols * B * H * max_forget_bits`` bits. As in :class:`MDRNN`,
    cell ``(i, j)`` sees every cell ``(i', j')`` with ``i' <= i, j' <= j``
    (the west input comes from the current row). Work arrays (not counted in
    ``stored_bytes``) hold one diagonal: ``O(min(rows, cols) * B * G)``
    floats, besides the float copy of the frontier and its gradient.
    """

    n_lead = 2
    _recurrent = ("W_n", "W_w")

    stackable = False

    def __init__(self, n_in, n_hidden, n_out, loss="softmax", gamma=None,
                 frac_bits=REV_FRAC_BITS, max_forget_bits=MAX_FORGET_BITS, gate_bits=GATE_BITS,
                 *, n_layers=1, dtype="float64"):
        super().__init__(n_in, n_hidden, n_out, loss, gamma, frac_bits, max_forget_bits,
                         gate_bits, n_layers=n_layers, dtype=dtype)
        self._diags = {}

    # --------------------------------------------------------------- helpers
    @staticmethod
    def _no_state(state0):
        if state0 is not None:
            raise ValueError("initial_state: RevMDRNN has no initial state (states outside "
                             "the grid are zero); pass None")

    def _check_state(self, state0, B):
        self._no_state(state0)          # before any shape check: no shape is right
        return None

    def _diag_cols(self, rows, cols):
        """Per diagonal ``d``: ``(c0, c1, cs)``, its columns ``c0..c1`` and ``cs = arange(c0, c1+1)``."""
        key = (rows, cols)
        if key not in self._diags:
            out = []
            for d in range(rows + cols - 1):
                c0, c1 = max(0, d - rows + 1), min(d, cols - 1)
                out.append((c0, c1, np.arange(c0, c1 + 1)))
            self._diags[key] = out
        return self._diags[key]

    def _work(self, m_max, B, dtype):
        """Workspace of one diagonal of at most ``m_max`` cells."""
        H, G, R = self.n_hidden, self._n_proj, m_max * B
        dA = np.empty((R, G), dtype=dtype)
        # "T" (the west product) and "P" (the input projection), used one after the
        # other inside _gates, share memory with "dA" (written after the gates are used)
        return {"A": np.empty((R, G), dtype=dtype), "T": dA, "P": dA, "dA": dA,
                "g": np.empty((R, H), dtype=dtype), "gam": np.empty((R, H), dtype=dtype),
                "sig": np.empty((R if self.learned else 1, H), dtype=dtype),
                "n": np.empty((R, H), dtype=np.int64), "inc": np.empty((R, H), dtype=np.int64),
                "dH": np.empty((R, H), dtype=dtype), "hn": np.empty((R, H), dtype=dtype),
                "vp": np.empty((R, H), dtype=dtype)}

    def _inputs(self, x, tokens, d, cs):
        """Inputs of the cells ``(d - c, c)``: ids (m, B) or floats (m, B, n_in)."""
        return x[d - cs, cs]

    def _gates(self, p, xd, tokens, fr, c0, c1, B, w):
        """Candidate and momentum gate of diagonal cells ``c0..c1`` from the frontier ``fr``.

        ``fr`` (cols*B, H) holds, per column, the state before the diagonal:
        column ``c``'s row ``d-1-c`` (the north neighbours of the cells) and,
        for ``c0 - 1``, row ``d - c0`` (the west neighbour of the first cell).
        Forward and undo call this with identical arrays, so the gates are
        bit-identical. Fills ``w["A"], w["P"], w["g"], w["gam"], w["sig"]``.
        """
        mB = (c1 - c0 + 1) * B
        A = w["A"][:mB]
        np.dot(fr[c0 * B:(c1 + 1) * B], p["W_n"], out=A)
        cw = max(c0, 1)
        if c1 >= cw:
            nw = (c1 - cw + 1) * B
            T = w["T"][:nw]
            np.dot(fr[(cw - 1) * B:c1 * B], p["W_w"], out=T)
            A[(cw - c0) * B:] += T
        P = w["P"][:mB]                 # same memory as T (no longer needed)
        V = p["V"]
        if tokens:
            gather_rows(xd, V, P.reshape(xd.shape + (-1,)))
        else:
            xs = xd.reshape(mB, -1)
            np.dot(xs if xs.dtype == V.dtype else xs.astype(V.dtype), V, out=P)
        bg = p["b_g"] if self.learned else self._bg_dummy.astype(A.dtype)
        sig = w["sig"][:mB] if self.learned else w["sig"]
        momentum_gates(A, P, p["b"], bg, self.floor, 0.0 if self.learned else self.gamma,
                       self.learned, w["g"][:mB], w["gam"][:mB], sig)

    def _cell_of(self, code, d, c0, B):
        r, j = divmod(int(code), self.n_hidden)
        c = c0 + r // B
        return d - c, c, r % B, j

    def _overflow_at(self, what, code, d, c0, B):
        i, c, b, j = self._cell_of(code, d, c0, B)
        raise FixedPointError(
            f"RevMDRNN: state part {what!r} overflowed the fixed-point range at cell "
            f"({i}, {c}), batch row {b}, unit {j} (|value| must stay < 2**(62 - frac_bits) = "
            f"{2.0 ** (62 - self.frac_bits):g} with frac_bits={self.frac_bits}); use fewer "
            f"frac_bits or smaller grids")

    def _corrupt_at(self, what, code, d, c0, B):
        i, c, b, j = self._cell_of(code, d, c0, B)
        raise ReversalError(
            f"RevMDRNN: undoing cell ({i}, {c}) produced an impossible value in state part "
            f"{what!r} (batch row {b}, unit {j}): the information buffer or the kept final "
            f"state is corrupted; no gradient is returned")

    def _reserve(self, buf, m):
        buf.reserve((m * self.n_hidden * self.gate_bits) // 32 + 3)

    # ------------------------------------------------------ exact diagonal
    def _fixed_diag(self, p, x, tokens, d, c0, c1, cs, qh, qv, hf, buf, w):
        """One forward diagonal in fixed point: ``v = v*n/D + inc``, ``h += v``; ``hf`` updated."""
        B = buf.n_streams
        mB = (c1 - c0 + 1) * B
        sl = slice(c0 * B, (c1 + 1) * B)
        self._gates(p, self._inputs(x, tokens, d, cs), tokens, hf, c0, c1, B, w)
        n, inc = w["n"][:mB], w["inc"][:mB]
        quantise_convex(w["gam"][:mB], w["g"][:mB], self.D, self.nmin, self.scale, n, inc)
        self._reserve(buf, c1 - c0 + 1)
        code = diag_forget_add(qv[sl], n, inc, B, self.D, buf.states, buf.counts, buf.words,
                               buf.info, self._log2)
        if code >= 0:
            self._overflow_at("v", code, d, c0, B)
        code = add_checked(qh[sl], qv[sl], 1)
        if code >= 0:
            self._overflow_at("h", code, d, c0, B)
        np.multiply(qh[sl], self.inv_scale, out=hf[sl])

    def _undo_diag(self, p, x, tokens, d, c0, c1, cs, qh, qv, hf, buf, w):
        """Undo :meth:`_fixed_diag` exactly; leaves the diagonal's float gates in ``w`` and
        the recovered frontier in ``hf`` (ReversalError on an impossible value)."""
        B = buf.n_streams
        mB = (c1 - c0 + 1) * B
        sl = slice(c0 * B, (c1 + 1) * B)
        code = add_checked(qh[sl], qv[sl], -1)
        if code >= 0:
            self._corrupt_at("h", code, d, c0, B)
        np.multiply(qh[sl], self.inv_scale, out=hf[sl])
        self._gates(p, self._inputs(x, tokens, d, cs), tokens, hf, c0, c1, B, w)
        n, inc = w["n"][:mB], w["inc"][:mB]
        quantise_convex(w["gam"][:mB], w["g"][:mB], self.D, self.nmin, self.scale, n, inc)
        self._reserve(buf, c1 - c0 + 1)
        code = diag_forget_add_undo(qv[sl], n, inc, B, self.D, buf.states, buf.counts,
                                    buf.words, buf.info, self._log2)
        if code >= 0:
            self._corrupt_at("v", code, d, c0, B)

    # ---------------------------------------------------------- float parts
    def _diag_targets(self, batch, rows, cols, d, cs):
        """Targets of the diagonal's cells (flat, cell-major), or None if it has none."""
        B = batch.B
        if batch.per_step:
            if self.loss_kind == "softmax":
                return batch.labels.reshape(rows, cols, B)[d - cs, cs].reshape(-1)
            return batch.target.reshape(rows, cols, B, -1)[d - cs, cs].reshape(-1, self.n_out)
        if d == rows + cols - 2:
            return batch.labels if self.loss_kind == "softmax" else batch.target
        return None

    def _diag_loss(self, p, g, batch, rows, cols, d, cs, h, dH):
        """Loss of the diagonal's cells with hidden rows ``h`` (mB, H); writes ``dH``."""
        tg = self._diag_targets(batch, rows, cols, d, cs)
        if tg is None:
            dH[...] = 0
            return 0.0
        work = np.empty((h.shape[0], self.n_out), dtype=h.dtype)
        if self.loss_kind == "softmax":
            return softmax_xent_head(h, p["U"], p["b_y"], tg, batch.scale, work, dH,
                                     g["U"], g["b_y"])
        return mse_head(h, p["U"], p["b_y"], tg, batch.scale, work, dH, g["U"], g["b_y"])

    def _float_back(self, p, g, xd, tokens, fr, c0, c1, B, w, ds_h, ds_v):
        """Backpropagate through one diagonal (gates in ``w``, previous velocities in ``w["vp"]``).

        On entry ``ds_h``, ``ds_v`` (cols*B, H) are dL/d(frontier after the
        diagonal); on exit dL/d(frontier before it). Parameter gradients are
        added to the views ``g``.
        """
        H = self.n_hidden
        mB = (c1 - c0 + 1) * B
        sl = slice(c0 * B, (c1 + 1) * B)
        dA = w["dA"][:mB]
        sig = w["sig"][:mB] if self.learned else w["sig"]
        momentum_back(w["g"][:mB], w["gam"][:mB], sig, w["vp"][:mB], self.floor,
                      self.learned, 1.0, 1.0, ds_h[sl], ds_v[sl], dA)
        tmp = w["hn"]                   # free once the diagonal's loss is computed
        g["W_n"] += np.dot(fr[sl].T, dA)
        np.dot(dA, p["W_n"].T, out=tmp[:mB])
        ds_h[sl] += tmp[:mB]
        cw = max(c0, 1)
        if c1 >= cw:
            wsl = slice((cw - 1) * B, c1 * B)
            dAw = dA[(cw - c0) * B:]
            g["W_w"] += np.dot(fr[wsl].T, dAw)
            nw = dAw.shape[0]
            np.dot(dAw, p["W_w"].T, out=tmp[:nw])
            ds_h[wsl] += tmp[:nw]
        g["b"] += dA[:, :H].sum(axis=0)
        if self.learned:
            g["b_g"] += dA[:, H:].sum(axis=0)
        if tokens:
            scatter_add_rows(xd, dA.reshape(xd.shape + (-1,)), g["V"])
        else:
            xs = xd.reshape(mB, -1)
            g["V"] += np.dot((xs if xs.dtype == dA.dtype else xs.astype(dA.dtype)).T, dA)

    def _final(self, qh, qv, B):
        H = self.n_hidden
        out = np.empty((B, 2 * H))
        out[:, :H] = qh[-B:] * self.inv_scale
        out[:, H:] = qv[-B:] * self.inv_scale
        return out

    # ----------------------------------------------------------------- runs
    def _run(self, theta, batch, mode, k, want_grad, state0, masks=None, want_inputs=False):
        no_input_grad(self, want_inputs)
        self._no_state(state0)
        cplx, pr = self._fixed_point_params(theta, mode)
        x, tokens = batch.x, batch.tokens
        rows, cols = batch.lead
        B, H = batch.B, self.n_hidden
        diags = self._diag_cols(rows, cols)
        m_max = min(rows, cols)
        qh = np.zeros((cols * B, H), dtype=np.int64)
        qv = np.zeros((cols * B, H), dtype=np.int64)
        hf = np.zeros((cols * B, H))
        buf = InfoBuffer(B, capacity=16)
        w = self._work(m_max, B, np.float64)

        if not want_grad:
            gdummy = self.layout.views(np.zeros(self.size))
            loss = 0.0
            for d, (c0, c1, cs) in enumerate(diags):
                self._fixed_diag(pr, x, tokens, d, c0, c1, cs, qh, qv, hf, buf, w)
                mB = (c1 - c0 + 1) * B
                loss += self._diag_loss(pr, gdummy, batch, rows, cols, d, cs,
                                        hf[c0 * B:(c1 + 1) * B], w["dH"][:mB])
            return loss, None, {"stored_bytes": 0, "final_state": self._final(qh, qv, B)}

        Sh = Sv = None
        if mode == "standard":
            Sh = np.empty((rows, cols, B, H), dtype=np.int64)
            Sv = np.empty((rows, cols, B, H), dtype=np.int64)
        for d, (c0, c1, cs) in enumerate(diags):
            self._fixed_diag(pr, x, tokens, d, c0, c1, cs, qh, qv, hf, buf, w)
            if Sh is not None:
                sl = slice(c0 * B, (c1 + 1) * B)
                store_cells(qh[sl], d, c0, c1, Sh)
                store_cells(qv[sl], d, c0, c1, Sv)
        info_bits = buf.info_bits
        final_state = self._final(qh, qv, B)
        kept = qh.nbytes + qv.nbytes            # the frontier (reversed in place)
        if mode == "standard":
            stored, buffer_bytes = Sh.nbytes + Sv.nbytes, 0
            buf = None
        else:
            buffer_bytes = buf.nbytes
            stored = buffer_bytes + kept

        dtype = theta.dtype
        p = self.layout.views(theta)
        src_h, src_v, mult = Sh, Sv, self.inv_scale
        if cplx:
            # imaginary parts: the float (straight-through) recurrence along the fixed trajectory
            src_h = np.empty((rows, cols, B, H), dtype=dtype)
            src_v = np.empty((rows, cols, B, H), dtype=dtype)
            hc = np.zeros((cols * B, H), dtype=dtype)
            vc = np.zeros((cols * B, H), dtype=dtype)
            wc = self._work(m_max, B, dtype)
            for d, (c0, c1, cs) in enumerate(diags):
                mB = (c1 - c0 + 1) * B
                sl = slice(c0 * B, (c1 + 1) * B)
                self._gates(p, self._inputs(x, tokens, d, cs), tokens, hc, c0, c1, B, wc)
                hn, vn = wc["hn"][:mB], wc["vp"][:mB]
                load_cells(Sh, d, c0, c1, self.inv_scale, hn)
                load_cells(Sv, d, c0, c1, self.inv_scale, vn)
                momentum_snap(hc[sl], vc[sl], wc["g"][:mB], wc["gam"][:mB], 1.0, 1.0, hn, vn)
                hc[sl] = hn
                vc[sl] = vn
                store_cells(hn, d, c0, c1, src_h)
                store_cells(vn, d, c0, c1, src_v)
            stored += src_h.nbytes + src_v.nbytes
            mult = 1.0
            w = self._work(m_max, B, dtype)

        grad = np.zeros_like(theta)
        g = self.layout.views(grad)
        fr = hf if not cplx else np.zeros((cols * B, H), dtype=dtype)
        ds_h = np.zeros((cols * B, H), dtype=dtype)
        ds_v = np.zeros((cols * B, H), dtype=dtype)
        loss = 0.0
        for d in range(len(diags) - 1, -1, -1):
            c0, c1, cs = diags[d]
            mB = (c1 - c0 + 1) * B
            sl = slice(c0 * B, (c1 + 1) * B)
            xd = self._inputs(x, tokens, d, cs)
            dH = w["dH"][:mB]
            if mode == "reversible":
                # the frontier rows of the diagonal hold its cells; head, then undo
                loss = loss + self._diag_loss(p, g, batch, rows, cols, d, cs, fr[sl], dH)
                ds_h[sl] += dH
                self._undo_diag(pr, x, tokens, d, c0, c1, cs, qh, qv, hf, buf, w)
                np.multiply(qv[sl], self.inv_scale, out=w["vp"][:mB])
            else:
                hn = w["hn"][:mB]
                load_cells(src_h, d, c0, c1, mult, hn)
                loss = loss + self._diag_loss(p, g, batch, rows, cols, d, cs, hn, dH)
                ds_h[sl] += dH
                lo = max(c0 - 1, 0)
                load_cells(src_h, d - 1, lo, c1, mult, fr[lo * B:(c1 + 1) * B])
                load_cells(src_v, d - 1, c0, c1, mult, w["vp"][:mB])
                self._gates(p, xd, tokens, fr, c0, c1, B, w)
            self._float_back(p, g, xd, tokens, fr, c0, c1, B, w, ds_h, ds_v)
        if mode == "reversible":
            zero = not (qh.any() or qv.any())
            check_reversal("RevMDRNN: reversible BPTT", zero, buf,
                           what="initial frontier (all zeros)")
        return loss, grad, {"stored_bytes": stored, "buffer_bytes": buffer_bytes,
                            "info_bits": info_bits, "final_state": final_state}

    def _hidden(self, theta, x, tokens, state0):
        """Hidden states ``(rows, cols, B, H)`` float64 and the last cell's ``[h, v]`` (B, 2H)."""
        self._no_state(state0)
        rows, cols, B = x.shape[0], x.shape[1], x.shape[2]
        H = self.n_hidden
        p = self.layout.views(theta)
        diags = self._diag_cols(rows, cols)
        qh = np.zeros((cols * B, H), dtype=np.int64)
        qv = np.zeros((cols * B, H), dtype=np.int64)
        hf = np.zeros((cols * B, H))
        buf = InfoBuffer(B, capacity=16)
        w = self._work(min(rows, cols), B, np.float64)
        hs = np.empty((rows, cols, B, H))
        for d, (c0, c1, cs) in enumerate(diags):
            self._fixed_diag(p, x, tokens, d, c0, c1, cs, qh, qv, hf, buf, w)
            store_cells(hf[c0 * B:(c1 + 1) * B], d, c0, c1, hs)
        return hs, self._final(qh, qv, B)
