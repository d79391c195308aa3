"""RevLSTM: the reversible LSTM of MacKay, Vicol, Ba & Grosse (2018) in exact fixed point."""
import numpy as np

from ..params import ParamSpec
from .._kernels.gemm import matmul_rows, matmul_rows_t, matmul_tn_add
from .reversible import ReversibleModel
from .revlstm_window import RevLSTMWindow
from .._kernels.revlstm import (revlstm_gates, revlstm_quant_c, revlstm_quant_h, revlstm_cell,
                                revlstm_back)

_HALVES = ((0, "1", "2"), (1, "2", "1"))     # (index, updated half, other half)


class RevLSTM(ReversibleModel):
    """Reversible LSTM (MacKay et al. 2018), exactly reversible in fixed point.

    The hidden state ``h = [h1 | h2]`` and cell ``c = [c1 | c2]`` are split in
    halves of ``H/2`` units, updated in turn, each from the input and the
    *other* half's ``h``::

        [i1, f1, o1, p1, g1] = gates(x_t V_1 + h2 W_1 + b_1)
        c1 = f1 * c1 + i1 * g1,      h1 = p1 * h1 + (1 - p1) * o1 * tanh(c1)
        [i2, f2, o2, p2, g2] = gates(x_t V_2 + h1 W_2 + b_2)     (with the new h1)
        c2 = f2 * c2 + i2 * g2,      h2 = p2 * h2 + (1 - p2) * o2 * tanh(c2)
        yhat_t = softmax(h_t U + b_y)

    ``i, o`` are sigmoids, ``g`` a tanh, and the forget-type gates
    ``f, p = 2**-k + (1 - 2**-k) sigmoid(.)`` are quantised to
    ``n / 2**gate_bits``; the multiplies by them are exact (lost digits in the
    information buffer, at most ``k = max_forget_bits`` bits each) and the
    added terms rounded to fixed point. Reversal undoes half 2 (gates from
    h1, ``tanh`` of the current c2), then half 1 (gates from the recovered h2).

    One change from MacKay et al.: the ``h`` update is the convex combination
    ``p h + (1 - p) o tanh(c)`` instead of ``p h + o tanh(c)``, so ``|h| <= 1``
    however long the sequence or the carried state (with the original form a
    unit whose ``p`` quantises to 1 grows by up to 1 per step; training a
    character model with the state carried between windows diverged).

    State: ``[h1, h2, c1, c2]`` (``state_size = 2H``); ``n_hidden`` must be even.
    Parameters (views of ``theta``): ``V`` (n_in, 5H) with columns
    ``[half 1: i f o p g | half 2: i f o p g]``, ``W1``, ``W2`` (H/2, 5H/2),
    ``b`` (5H,) laid out like ``V``'s columns, ``U`` (H, n_out), ``b_y`` (n_out,).
    See :class:`~revtrain.models.reversible.ReversibleModel` for ``frac_bits``,
    ``max_forget_bits``, ``gate_bits`` and the BPTT modes.

    Parameters
    ----------
    n_in : int
        Input size, or vocabulary size when ``x`` holds int token ids.
    n_hidden : int, even
        Hidden units ``H`` (two halves of ``H/2``).
    n_out : int
        Output classes (``loss="softmax"``) or output dimension (``loss="mse"``).
    loss : {"softmax", "mse"}
    frac_bits : int in [8, 52]
        Fraction bits of the fixed-point state (default 32); state values
        must stay below ``2**(62 - frac_bits)`` or :class:`~revtrain.FixedPointError` is raised.
    max_forget_bits : int
        Forget-type gates are floored at ``2**-max_forget_bits`` (default 3).
    gate_bits : int in [max_forget_bits, 16]
        Gates are quantised to ``n / 2**gate_bits`` (default 12).
    n_layers : int >= 1, keyword
        Stacked layers (layer ``l > 0`` reads layer ``l-1``'s ``h``); blocks are
        then named ``layer{l}.<name>`` in group ``"layer{l}"``. Reversible BPTT
        runs step ``t`` through layers 0..L-1 and undoes it top-down, one
        information buffer per layer.
    embed_dim : int, optional, keyword
        Embedding table ``embed`` (n_in, embed_dim) read by token ids (layer 0
        reads ``embed[x_t]``); None keeps the one-hot form.
    dropout : float in [0, 1), keyword
        Variational dropout on the embedding output, between layers and on
        the top output (one mask per window, never on the recurrent state),
        applied when ``loss_and_grad`` gets a ``dropout_seed``.
    """

    forget_per_unit = 2
    _head_parts = ("h1", "h2")
    two_halves = True
    #: Whole-window kernels of the stack (see :class:`~revtrain.models.reversible.ReversibleModel`).
    window_class = RevLSTMWindow
    supports_float32 = True

    def _parts(self):
        Hh = self.n_hidden // 2
        return [("h1", Hh), ("h2", Hh), ("c1", Hh), ("c2", Hh)]

    @property
    def _n_proj(self):
        return 5 * self.n_hidden

    def _layer_specs(self, D):
        H = self.n_hidden
        Hh = H // 2
        return [ParamSpec("V", (D, 5 * H), "uniform", "input"),
                ParamSpec("W1", (Hh, 5 * Hh), "uniform", "recurrent"),
                ParamSpec("W2", (Hh, 5 * Hh), "uniform", "recurrent"),
                ParamSpec("b", (5 * H,), "zeros", "bias")]

    def _cache(self, B, dtype):
        Hh = self.n_hidden // 2
        c = {}
        for k in "12":
            c["A" + k] = np.empty((B, 5 * Hh), dtype=dtype)
            for nm in ("i", "f", "sf", "o", "p", "sp", "g", "tc"):
                c[nm + k] = np.empty((B, Hh), dtype=dtype)
        return c

    def _gates(self, p, P, k, mine, o, c):
        Hh = self.n_hidden // 2
        cols = slice(5 * Hh * k, 5 * Hh * (k + 1))
        A = c["A" + mine]
        matmul_rows(np.ascontiguousarray(o), p["W" + mine], A)
        revlstm_gates(A, P, p["b"], cols.start, self.floor, c["i" + mine], c["f" + mine],
                      c["sf" + mine], c["o" + mine], c["p" + mine], c["sp" + mine],
                      c["g" + mine])

    def _quant(self, c, mine, cq, which):
        B, Hh = cq.shape
        n = np.empty((B, Hh), dtype=np.int64)
        inc = np.empty((B, Hh), dtype=np.int64)
        if which == "c":
            revlstm_quant_c(c["i" + mine], c["f" + mine], c["g" + mine], self.D, self.nmin,
                            self.scale, n, inc)
        else:
            revlstm_quant_h(cq, self.inv_scale, c["o" + mine], c["p" + mine], self.D, self.nmin,
                            self.scale, n, inc)
        return n, inc

    def _fixed_step(self, p, P, q, buf, t):
        c = self._cache(P.shape[0], np.float64)
        for k, mine, other in _HALVES:
            self._gates(p, P, k, mine, q["h" + other] * self.inv_scale, c)
            n, inc = self._quant(c, mine, q["c" + mine], "c")
            self._forget(q["c" + mine], n, inc, buf, t, "c" + mine)
            n, inc = self._quant(c, mine, q["c" + mine], "h")
            self._forget(q["h" + mine], n, inc, buf, t, "h" + mine)

    def _fixed_unstep(self, p, P, q, buf, t, cache):
        c = cache
        for k, mine, other in reversed(_HALVES):
            self._gates(p, P, k, mine, q["h" + other] * self.inv_scale, c)
            n, inc = self._quant(c, mine, q["c" + mine], "h")
            self._unforget(q["h" + mine], n, inc, buf, t, "h" + mine)
            n, inc = self._quant(c, mine, q["c" + mine], "c")
            self._unforget(q["c" + mine], n, inc, buf, t, "c" + mine)

    def _float_step(self, p, P, s_prev, s_new, cache, have_gates=False):
        for k, mine, other in _HALVES:
            o = s_prev["h2"] if k == 0 else s_new["h1"]
            if not have_gates:
                self._gates(p, P, k, mine, o, cache)
            revlstm_cell(s_prev["c" + mine], s_prev["h" + mine], cache["i" + mine],
                         cache["f" + mine], cache["o" + mine], cache["p" + mine],
                         cache["g" + mine], s_new["c" + mine], s_new["h" + mine],
                         cache["tc" + mine])

    def _float_back(self, p, g, s_prev, s_new, cache, ds, dP):
        Hh = self.n_hidden // 2
        for k, mine, other in reversed(_HALVES):
            o = s_prev["h2"] if k == 0 else s_new["h1"]
            cols = slice(5 * Hh * k, 5 * Hh * (k + 1))
            dA = dP[:, cols]
            c = cache
            revlstm_back(c["i" + mine], c["f" + mine], c["sf" + mine], c["o" + mine],
                         c["p" + mine], c["sp" + mine], c["g" + mine], c["tc" + mine],
                         s_prev["c" + mine], s_prev["h" + mine], self.floor,
                         ds["h" + mine], ds["c" + mine], dP, cols.start)
            dA = np.ascontiguousarray(dA)
            matmul_tn_add(np.ascontiguousarray(o), dA, g["W" + mine], np.empty_like(g["W" + mine]))
            d_other = np.empty_like(ds["h" + other])
            matmul_rows_t(dA, p["W" + mine], d_other)     # dA @ W.T
            ds["h" + other] += d_other
        g["b"] += dP.sum(axis=0)
