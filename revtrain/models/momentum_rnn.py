"""MomentumRNN: a reversible recurrent cell with a momentum (velocity) coupling."""
import numpy as np

from ..params import ParamSpec
from .reversible import ReversibleModel, REV_FRAC_BITS, MAX_FORGET_BITS, GATE_BITS
from .._kernels.momentum_rnn import momentum_gates, momentum_snap, momentum_back
from .._kernels.quantize import quantise_convex


class MomentumCoupled(ReversibleModel):
    """Base of the momentum-coupled reversible cells (MomentumRNN, RevMDRNN).

    State ``[h, v]`` (``state_size = 2H``): ``v = gamma v + (1 - gamma) g``,
    ``h = h + v``, with ``gamma`` a learned gate (``gamma=None``) floored at
    ``2**-max_forget_bits`` or a constant in ``[2**-max_forget_bits, 1]``.
    Parameters: ``V`` (n_in, G), one ``(H, G)`` block per name in
    :attr:`_recurrent`, ``b`` (H,), ``b_g`` (H,) initialised to 1 (learned gate
    only), ``U`` (H, n_out), ``b_y``; ``G = 2H`` (columns ``[candidate | gate]``)
    or ``H`` for a constant gamma.
    """

    forget_per_unit = 1
    _head_parts = ("h",)
    #: Names of the recurrent weight blocks, each (H, G).
    _recurrent = ("W",)

    def __init__(self, n_in, n_hidden, n_out, loss="softmax", gamma=None,
                 frac_bits=REV_FRAC_BITS, max_forget_bits=MAX_FORGET_BITS, gate_bits=GATE_BITS):
        self.learned = gamma is None
        if not self.learned:
            if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.integer,
                                                                 np.floating)):
                raise ValueError(f"gamma must be None (learned) or a float, got {gamma!r}")
        self.gamma = None if gamma is None else float(gamma)
        super().__init__(n_in, n_hidden, n_out, loss, frac_bits, max_forget_bits, gate_bits)
        if not self.learned and not (self.floor <= self.gamma <= 1.0):
            raise ValueError(f"gamma must be None (learned) or in [2**-max_forget_bits, 1] = "
                             f"[{self.floor}, 1], got {gamma!r}")
        self._bg_dummy = np.zeros(self.n_hidden)      # stands in for b_g with a constant gamma

    def __repr__(self):
        return (f"{type(self).__name__}(n_in={self.n_in}, n_hidden={self.n_hidden}, "
                f"n_out={self.n_out}, loss={self.loss_kind!r}, gamma={self.gamma!r}, "
                f"frac_bits={self.frac_bits}, max_forget_bits={self.max_forget_bits}, "
                f"gate_bits={self.gate_bits})")

    def _parts(self):
        return [("h", self.n_hidden), ("v", self.n_hidden)]

    @property
    def _n_proj(self):
        return 2 * self.n_hidden if self.learned else self.n_hidden

    def _specs(self):
        D, H, O = self.n_in, self.n_hidden, self.n_out
        G = self._n_proj
        specs = [ParamSpec("V", (D, G), "uniform", "input")]
        specs += [ParamSpec(name, (H, G), "uniform", "recurrent") for name in self._recurrent]
        specs.append(ParamSpec("b", (H,), "zeros", "bias"))
        if self.learned:
            specs.append(ParamSpec("b_g", (H,), "ones", "bias"))
        return specs + [ParamSpec("U", (H, O), "uniform", "output"),
                        ParamSpec("b_y", (O,), "zeros", "output")]


class MomentumRNN(MomentumCoupled):
    """Momentum RNN, exactly reversible in fixed point.

    ::

        g_t     = tanh(x_t V_g + h_{t-1} W_g + b)
        gamma_t = 2**-k + (1 - 2**-k) * sigmoid(x_t V_m + h_{t-1} W_m + b_g)   (gamma=None)
        v_t     = gamma_t * v_{t-1} + (1 - gamma_t) * g_t
        h_t     = h_{t-1} + v_t,        yhat_t = softmax(h_t U + b_y)

    The state is ``[h, v]`` (``state_size = 2H``), held in fixed point. The
    multiply by ``gamma_t`` (quantised to ``n / 2**gate_bits``, at least
    ``2**-max_forget_bits``) is exact with its lost digits in the information
    buffer; ``(1 - gamma_t) g_t`` is rounded and added. Reversal:
    ``h_{t-1} = h_t - v_t``, then ``gamma_t, g_t`` are recomputed from
    ``h_{t-1}`` and ``v_{t-1} = (v_t - round((1-gamma_t) g_t)) / gamma_t`` exactly.

    Parameters
    ----------
    n_in, n_hidden, n_out, loss
        See :class:`~revtrain.models.base.RecurrentModel`.
    gamma : float in [2**-max_forget_bits, 1], optional
        A constant momentum instead of the learned gate (then ``V`` is
        (n_in, H), ``W`` is (H, H) and there is no ``b_g``).
    frac_bits, max_forget_bits, gate_bits
        See :class:`~revtrain.models.reversible.ReversibleModel`.

    Parameters (views of ``theta``): ``V`` (n_in, G), ``W`` (H, G) with
    ``G = 2H`` (columns ``[candidate | gate]``) or ``H``; ``b`` (H,),
    ``b_g`` (H,) initialised to 1 (learned gate only), ``U`` (H, n_out), ``b_y``.
    """

    def _cache(self, B, dtype):
        H = self.n_hidden
        return {"A": np.empty((B, self._n_proj), dtype=dtype), "g": np.empty((B, H), dtype=dtype),
                "gam": np.empty((B, H), dtype=dtype), "sig": np.empty((B, H), dtype=dtype)}

    def _gates(self, p, P, h, c):
        np.dot(h, p["W"], out=c["A"])
        bg = p["b_g"] if self.learned else self._bg_dummy.astype(P.dtype)
        momentum_gates(c["A"], P, p["b"], bg, self.floor,
                       0.0 if self.learned else self.gamma, self.learned, c["g"], c["gam"], c["sig"])

    def _increments(self, p, P, q, c=None):
        B, H = q["h"].shape
        if c is None:
            c = self._cache(B, np.float64)
        self._gates(p, P, q["h"] * self.inv_scale, c)
        n = np.empty((B, H), dtype=np.int64)
        inc = np.empty((B, H), dtype=np.int64)
        quantise_convex(c["gam"], c["g"], self.D, self.nmin, self.scale, n, inc)
        return n, inc

    def _fixed_step(self, p, P, q, buf, t):
        n, inc = self._increments(p, P, q)
        self._forget(q["v"], n, inc, buf, t, "v")
        self._add(q["h"], q["v"], 1, t, "h")

    def _fixed_unstep(self, p, P, q, buf, t, cache):
        self._add(q["h"], q["v"], -1, t, "h", reverse=True)
        n, inc = self._increments(p, P, q, cache)
        self._unforget(q["v"], n, inc, buf, t, "v")

    def _float_step(self, p, P, s_prev, s_new, cache, have_gates=False):
        if not have_gates:
            self._gates(p, P, s_prev["h"], cache)
        if np.iscomplexobj(s_new["h"]):
            momentum_snap(s_prev["h"], s_prev["v"], cache["g"], cache["gam"], s_new["h"],
                          s_new["v"])

    def _float_back(self, p, g, s_prev, s_new, cache, ds, dP):
        H = self.n_hidden
        momentum_back(cache["g"], cache["gam"], cache["sig"], s_prev["v"], self.floor,
                      self.learned, ds["h"], ds["v"], dP)
        g["W"] += np.dot(s_prev["h"].T, dP)
        g["b"] += dP[:, :H].sum(axis=0)
        if self.learned:
            g["b_g"] += dP[:, H:].sum(axis=0)
        ds["h"] += np.dot(dP, p["W"].T)
