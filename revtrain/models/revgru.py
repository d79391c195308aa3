"""RevGRU: the reversible GRU of MacKay, Vicol, Ba & Grosse (2018) in exact fixed point."""
import numpy as np

from ..params import ParamSpec
from .._kernels.gemm import matmul_rows, matmul_rows_t, matmul_tn_add
from .reversible import ReversibleModel
from .revgru_window import RevGRUWindow
from .._kernels.revgru import revgru_gates1, revgru_gates2, revgru_cell, revgru_back1, revgru_back2
from .._kernels.quantize import quantise_convex

_HALVES = ((0, "1", "2"), (1, "2", "1"))     # (index, updated half, other half)


class RevGRU(ReversibleModel):
    """Reversible GRU (MacKay et al. 2018), exactly reversible in fixed point.

    The hidden state ``h = [h1 | h2]`` is split in halves of ``H/2`` units,
    updated in turn, each from the input and the *other* half::

        z1 = 2**-k + (1 - 2**-k) sigmoid(x_t V_z1 + h2 W_z1 + b_z1)
        r1 = sigmoid(x_t V_r1 + h2 W_r1 + b_r1)
        g1 = tanh(x_t V_g1 + (r1 * h2) Wg1 + b_g1)
        h1 = z1 * h1 + (1 - z1) * g1
        then h2 likewise from the new h1;   yhat_t = softmax(h_t U + b_y)

    The multiply by the update gate ``z`` (quantised to ``n / 2**gate_bits``,
    at least ``2**-max_forget_bits``) is exact with its lost digits in the
    information buffer; ``(1 - z) g`` is rounded to fixed point and added.
    Reversal undoes h2 (gates from h1), then h1 (gates from the recovered h2).

    State: ``[h1, h2]`` (``state_size = H``); ``n_hidden`` must be even.
    Parameters (views of ``theta``): ``V`` (n_in, 3H) with columns
    ``[half 1: z r g | half 2: z r g]``, ``W1``, ``W2`` (H/2, H) (columns
    ``[z | r]``), ``Wg1``, ``Wg2`` (H/2, H/2), ``b`` (3H,) laid out like ``V``'s
    columns, ``U`` (H, n_out), ``b_y`` (n_out,). See
    :class:`~revtrain.models.reversible.ReversibleModel` for ``frac_bits``,
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

    forget_per_unit = 1
    _head_parts = ("h1", "h2")
    two_halves = True
    #: Whole-window kernels of the stack (see :class:`~revtrain.models.reversible.ReversibleModel`).
    window_class = RevGRUWindow
    supports_float32 = True

    def _parts(self):
        Hh = self.n_hidden // 2
        return [("h1", Hh), ("h2", Hh)]

    @property
    def _n_proj(self):
        return 3 * self.n_hidden

    def _layer_specs(self, D):
        H = self.n_hidden
        Hh = H // 2
        return [ParamSpec("V", (D, 3 * H), "uniform", "input"),
                ParamSpec("W1", (Hh, 2 * Hh), "uniform", "recurrent"),
                ParamSpec("Wg1", (Hh, Hh), "uniform", "recurrent"),
                ParamSpec("W2", (Hh, 2 * Hh), "uniform", "recurrent"),
                ParamSpec("Wg2", (Hh, Hh), "uniform", "recurrent"),
                ParamSpec("b", (3 * H,), "zeros", "bias")]

    def _cache(self, B, dtype):
        Hh = self.n_hidden // 2
        c = {}
        for k in "12":
            c["A" + k] = np.empty((B, 2 * Hh), dtype=dtype)
            c["G" + k] = np.empty((B, Hh), dtype=dtype)
            for nm in ("z", "sz", "r", "ro", "g"):
                c[nm + k] = np.empty((B, Hh), dtype=dtype)
        return c

    def _gates(self, p, P, k, mine, o, c):
        Hh = self.n_hidden // 2
        off = 3 * Hh * k
        o = np.ascontiguousarray(o)
        matmul_rows(o, p["W" + mine], c["A" + mine])
        revgru_gates1(c["A" + mine], P, p["b"], off, self.floor, o, c["z" + mine],
                      c["sz" + mine], c["r" + mine], c["ro" + mine])
        matmul_rows(c["ro" + mine], p["Wg" + mine], c["G" + mine])
        revgru_gates2(c["G" + mine], P, p["b"], off, c["g" + mine])

    def _quant(self, c, mine):
        B, Hh = c["z" + mine].shape
        n = np.empty((B, Hh), dtype=np.int64)
        inc = np.empty((B, Hh), dtype=np.int64)
        quantise_convex(c["z" + mine], c["g" + mine], self.D, self.nmin, self.scale, n, inc)
        return n, inc

    def _fixed_step(self, p, P, q, buf, t):
        c = self._cache(P.shape[0], np.float64)
        for k, mine, other in _HALVES:
            self._gates(p, P, k, mine, q["h" + other] * self.inv_scale, c)
            n, inc = self._quant(c, mine)
            self._forget(q["h" + mine], n, inc, buf, t, "h" + mine)

    def _fixed_unstep(self, p, P, q, buf, t, cache):
        c = cache
        for k, mine, other in reversed(_HALVES):
            self._gates(p, P, k, mine, q["h" + other] * self.inv_scale, c)
            n, inc = self._quant(c, mine)
            self._unforget(q["h" + mine], n, inc, buf, t, "h" + mine)

    def _float_step(self, p, P, s_prev, s_new, cache, have_gates=False):
        for k, mine, other in _HALVES:
            o = s_prev["h2"] if k == 0 else s_new["h1"]
            if not have_gates:
                self._gates(p, P, k, mine, o, cache)
            if np.iscomplexobj(o):
                revgru_cell(s_prev["h" + mine], cache["z" + mine], cache["g" + mine],
                            s_new["h" + mine])

    def _float_back(self, p, g, s_prev, s_new, cache, ds, dP):
        Hh = self.n_hidden // 2
        c = cache
        do = np.empty_like(ds["h1"])
        for k, mine, other in reversed(_HALVES):
            o = np.ascontiguousarray(s_prev["h2"] if k == 0 else s_new["h1"])
            off = 3 * Hh * k
            revgru_back1(c["z" + mine], c["sz" + mine], c["g" + mine], s_prev["h" + mine],
                         self.floor, ds["h" + mine], dP, off)
            dAg = np.ascontiguousarray(dP[:, off + 2 * Hh:off + 3 * Hh])
            gWg = g["Wg" + mine]
            matmul_tn_add(c["ro" + mine], dAg, gWg, np.empty_like(gWg))
            dRO = np.empty_like(do)
            matmul_rows_t(dAg, p["Wg" + mine], dRO)
            revgru_back2(dRO, c["r" + mine], o, dP, off, do)
            dAzr = np.ascontiguousarray(dP[:, off:off + 2 * Hh])
            gW = g["W" + mine]
            matmul_tn_add(o, dAzr, gW, np.empty_like(gW))
            d_o = np.empty_like(do)
            matmul_rows_t(dAzr, p["W" + mine], d_o)
            do += d_o
            ds["h" + other] += do
        g["b"] += dP.sum(axis=0)
