"""MomentumRNN: a reversible recurrent cell with a momentum (velocity) and a leaky position."""
import numpy as np

from .._checks import is_number
from ..params import ParamSpec
from .reversible import ReversibleModel, REV_FRAC_BITS, MAX_FORGET_BITS, GATE_BITS
from .._kernels.momentum_rnn import momentum_gates, leaky_h_inc, momentum_snap, momentum_back
from .._kernels.quantize import quantise_convex
from .._kernels.gemm import matmul_rows, matmul_rows_t, matmul_tn_add
from .momentum_window import MomentumRNNWindow


class MomentumCoupled(ReversibleModel):
    """Base of the momentum-coupled reversible cells (MomentumRNN, RevMDRNN).

    State ``[h, v]`` (``state_size = 2H``): ``v = gamma v + (1 - gamma) g``,
    then ``h`` from ``v`` (RevMDRNN: ``h = h + v``; MomentumRNN: the leaky
    ``h = beta h + (1 - beta) v``), with ``gamma`` a learned gate
    (``gamma=None``) floored at ``2**-max_forget_bits`` or a constant in
    ``[2**-max_forget_bits, 1]`` (MomentumRNN: ``< 1``).
    Parameters: ``V`` (n_in, G), one ``(H, G)`` block per name in
    :attr:`_recurrent`, ``b`` (H,), ``b_g`` (H,) initialised to 1 (learned gate
    only; MomentumRNN: -2), ``U`` (H, n_out), ``b_y``; ``G = 2H`` (columns ``[candidate | gate]``)
    or ``H`` for a constant gamma.
    """

    forget_per_unit = 1
    _head_parts = ("h",)
    #: Whether a constant ``gamma = 1`` is accepted (RevMDRNN: yes; MomentumRNN: no).
    _gamma_one_ok = True
    #: Names of the recurrent weight blocks, each (H, G).
    _recurrent = ("W",)

    def __init__(self, n_in, n_hidden, n_out, loss="softmax", gamma=None,
                 frac_bits=REV_FRAC_BITS, max_forget_bits=MAX_FORGET_BITS, gate_bits=GATE_BITS,
                 **stack):
        self.learned = gamma is None
        if not self.learned:
            if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.integer,
                                                                 np.floating)):
                raise ValueError(f"gamma must be None (learned) or a float, got {gamma!r}")
        self.gamma = None if gamma is None else float(gamma)
        super().__init__(n_in, n_hidden, n_out, loss, frac_bits, max_forget_bits, gate_bits,
                         **stack)
        if not self.learned:
            if self._gamma_one_ok:
                ok = self.floor <= self.gamma <= 1.0
                rng = f"[2**-max_forget_bits, 1] = [{self.floor}, 1]"
            else:
                ok = self.floor <= self.gamma and np.rint(self.gamma * self.D) < self.D
                rng = (f"[2**-max_forget_bits, 1) = [{self.floor}, 1) and below 1 once "
                       f"quantised to n / 2**gate_bits (gamma = 1 keeps v = v_0: the input "
                       f"never reaches the state)")
            if not ok:
                raise ValueError(f"gamma must be None (learned) or in {rng}, got {gamma!r}")
        self._bg_dummy = np.zeros(self.n_hidden)      # stands in for b_g with a constant gamma

    def __repr__(self):
        return (f"{type(self).__name__}(n_in={self.n_in}, n_hidden={self.n_hidden}, "
                f"n_out={self.n_out}, loss={self.loss_kind!r}, gamma={self.gamma!r}, "
                f"frac_bits={self.frac_bits}, max_forget_bits={self.max_forget_bits}, "
                f"gate_bits={self.gate_bits}{self._stack_repr()})")

    def _parts(self):
        return [("h", self.n_hidden), ("v", self.n_hidden)]

    @property
    def _n_proj(self):
        return 2 * self.n_hidden if self.learned else self.n_hidden

    def _layer_specs(self, D):
        H = self.n_hidden
        G = self._n_proj
        specs = [ParamSpec("V", (D, G), "uniform", "input")]
        specs += [ParamSpec(name, (H, G), "uniform", "recurrent") for name in self._recurrent]
        specs.append(ParamSpec("b", (H,), "zeros", "bias"))
        if self.learned:
            specs.append(ParamSpec("b_g", (H,), "ones", "bias"))
        return specs


class MomentumRNN(MomentumCoupled):
    """Momentum RNN with a leaky (bounded) position, exactly reversible in fixed point.

    ::

        g_t     = tanh(x_t V_g + h_{t-1} W_g + b)
        gamma_t = 2**-k + (1 - 2**-k) * sigmoid(x_t V_m + h_{t-1} W_m + b_g)   (gamma=None)
        v_t     = gamma_t * v_{t-1} + (1 - gamma_t) * g_t
        h_t     = beta * h_{t-1} + (1 - beta) * v_t,        yhat_t = softmax(h_t U + b_y)

    The state is ``[h, v]`` (``state_size = 2H``), held in fixed point with
    ``F = frac_bits`` fraction bits. Both updates are ``q <- q * n / 2**m + inc``:
    the multiplies by ``gamma_t`` and by the constant ``beta`` (quantised to
    ``n / 2**m``, ``m = gate_bits``, at least ``2**-max_forget_bits``) are
    exact, with their lost digits in the information buffer, and
    ``round((1 - gamma_t) g_t)``, ``round((1 - beta) v_t)`` are integer adds.

    Reversal of step ``t``: the ``h`` increment needs only the new ``v_t``
    (kept), so ``h_{t-1} = (h_t - round((1 - beta) v_t)) / beta`` exactly; then
    ``gamma_t, g_t`` are recomputed from ``h_{t-1}`` and ``x_t`` and
    ``v_{t-1} = (v_t - round((1 - gamma_t) g_t)) / gamma_t`` exactly.

    Bound. Both updates are convex combinations of the old value and a value
    in ``[-1, 1]`` (``|g_t| <= 1``; then ``|v_t| <= 1``), so with
    ``M = max(1, |h_0|, |v_0|)``

        ``|v_t| <= M + eps``,  ``|h_t| <= M + 2 eps``,  ``eps = 2**(2m - F)``

    for every ``t``, however long the sequence or the carried state. ``eps``
    bounds the fixed-point rounding: the exact multiply by ``n / 2**m`` is
    off the real product by less than ``n`` units of ``2**-F`` and the
    rounded increment by at most one more, and a contraction by
    ``n / 2**m <= 1 - 2**-m`` accumulates errors of ``< n + 1`` units per step
    to at most ``(n + 1) 2**m / (2**m - n) <= 2**(2m)`` units (a ratio that
    quantises to 1 is an exact identity and adds nothing). At the defaults ``m = 12``,
    ``F = 32``: ``eps = 2**-8``. The earlier ``h_t = h_{t-1} + v_t`` grew
    without bound (``|h|`` about 55 after 64 steps at initialisation on the
    built-in corpus, initial loss 20 nats against ``log V = 4.6``).

    Cost: the ``beta`` multiply destroys ``log2(2**m / n_beta)`` bits per unit
    and step (2 bits for the default ``beta = 1/4``) on top of ``gamma_t``'s
    (at most ``k = max_forget_bits``), so ``forget_units = 2H``.

    Initial scale: ``|h| <= 1`` and the uniform ``U`` (``+-1/sqrt(H)``) give
    logits of order 1, so a fresh model's loss is near ``log n_out``. The
    gate bias ``b_g`` starts at -2 (``gamma_0 = 0.23`` at ``k = 3``): at first
    ``v`` follows ``g`` closely, as in a plain RNN, and training lengthens
    the memory where it helps (with ``b_g = 1``, ``gamma_0 = 0.77``, the
    character model trained markedly worse in 300 steps).

    Parameters
    ----------
    n_in, n_hidden, n_out, loss
        See :class:`~revtrain.models.base.RecurrentModel`.
    gamma : float in [2**-max_forget_bits, 1), optional
        A constant momentum instead of the learned gate (then ``V`` is
        (n_in, H), ``W`` is (H, H) and there is no ``b_g``). It must stay
        below 1 once quantised to ``n / 2**gate_bits``: with ``gamma = 1``,
        ``v`` never changes and the input never reaches the state.
    frac_bits, max_forget_bits, gate_bits
        See :class:`~revtrain.models.reversible.ReversibleModel`.
    beta : float in [2**-max_forget_bits, 1), keyword only, optional
        Leak of the position ``h``, quantised to ``n_beta / 2**gate_bits``
        with ``n_beta < 2**gate_bits`` (``beta = 1`` would freeze ``h``).
        Default (None): ``max(1/4, 2**-max_forget_bits)``. Smaller: ``h``
        follows ``v`` more closely and more bits per step go to the buffer.

    Parameters (views of ``theta``): ``V`` (n_in, G), ``W`` (H, G) with
    ``G = 2H`` (columns ``[candidate | gate]``) or ``H``; ``b`` (H,),
    ``b_g`` (H,) initialised to -2 (learned gate only), ``U`` (H, n_out), ``b_y``.

    Stacks: ``n_layers``, ``embed_dim`` and ``dropout`` (keywords) as described
    in :class:`~revtrain.models.base.RecurrentModel`; the blocks above are then
    per layer (``layer{l}.<name>``, layer 0 reading ``n_in`` or ``embed_dim``
    inputs and the others ``H``), with one ``U``, ``b_y``.
    """

    #: Initial gate bias ``b_g`` (learned gate).
    GATE_BIAS_INIT = -2.0
    #: Default leak ``beta`` (raised to the gate floor ``2**-max_forget_bits`` if that is higher).
    BETA_DEFAULT = 0.25
    forget_per_unit = 2
    _gamma_one_ok = False
    #: Whole-window kernels of the stack (see :class:`~revtrain.models.reversible.ReversibleModel`).
    window_class = MomentumRNNWindow
    supports_float32 = True

    def __init__(self, n_in, n_hidden, n_out, loss="softmax", gamma=None,
                 frac_bits=REV_FRAC_BITS, max_forget_bits=MAX_FORGET_BITS, gate_bits=GATE_BITS,
                 *, beta=None, n_layers=1, embed_dim=None, dropout=0.0, dtype="float64"):
        super().__init__(n_in, n_hidden, n_out, loss, gamma, frac_bits, max_forget_bits,
                         gate_bits, n_layers=n_layers, embed_dim=embed_dim, dropout=dropout,
                         dtype=dtype)
        if beta is None:
            beta = max(self.BETA_DEFAULT, self.floor)
        if not is_number(beta) or not (self.floor <= beta and np.rint(beta * self.D) < self.D):
            raise ValueError(
                f"beta must be a float in [2**-max_forget_bits, 1) = [{self.floor}, 1) and below "
                f"1 once quantised to n / 2**gate_bits (beta = 1 would freeze h), got {beta!r}")
        self.beta = float(beta)
        self._nbeta = int(np.rint(self.beta * self.D))
        self._cbeta = 1.0 - self._nbeta / self.D        # 1 - n_beta/D, exact (dyadic)

    def __repr__(self):
        return super().__repr__()[:-1] + f", beta={self.beta!r})"

    def _layer_specs(self, D):
        # b_g is set to GATE_BIAS_INIT by init_params
        return [s._replace(init="zeros") if s.name == "b_g" else s
                for s in super()._layer_specs(D)]

    def init_params(self, seed=0, scale=1.0):
        """A fresh flat parameter vector: as the base class, with ``b_g = -2`` (learned gate).

        ``V``, ``W``, ``U`` uniform in ``+-scale / sqrt(fan_in)``, ``b``, ``b_y`` zero.
        """
        theta = super().init_params(seed=seed, scale=scale)
        if self.learned:
            for p in self.layer_params(self.layout.views(theta)):
                p["b_g"][...] = self.GATE_BIAS_INIT
        return theta

    def _cache(self, B, dtype):
        H = self.n_hidden
        return {"A": np.empty((B, self._n_proj), dtype=dtype), "g": np.empty((B, H), dtype=dtype),
                "gam": np.empty((B, H), dtype=dtype), "sig": np.empty((B, H), dtype=dtype)}

    def _gates(self, p, P, h, c):
        # products through Numba's BLAS, as in the whole-window kernels (the same bits)
        matmul_rows(np.ascontiguousarray(h), p["W"], c["A"])
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

    def _h_increments(self, v):
        """Ratios ``n_beta`` and increments ``round((1 - n_beta/D) v_t)`` of the ``h`` update.

        From the new fixed-point ``v_t`` (int64 (B, H)); both outputs int64 (B, H).
        """
        inc = np.empty_like(v)
        leaky_h_inc(v, self._cbeta, inc)
        return np.full(v.shape, self._nbeta, dtype=np.int64), inc

    def _fixed_step(self, p, P, q, buf, t):
        n, inc = self._increments(p, P, q)
        self._forget(q["v"], n, inc, buf, t, "v")
        n, inc = self._h_increments(q["v"])
        self._forget(q["h"], n, inc, buf, t, "h")

    def _fixed_unstep(self, p, P, q, buf, t, cache):
        n, inc = self._h_increments(q["v"])
        self._unforget(q["h"], n, inc, buf, t, "h")
        n, inc = self._increments(p, P, q, cache)
        self._unforget(q["v"], n, inc, buf, t, "v")

    def _float_step(self, p, P, s_prev, s_new, cache, have_gates=False):
        if not have_gates:
            self._gates(p, P, s_prev["h"], cache)
        if np.iscomplexobj(s_new["h"]):
            momentum_snap(s_prev["h"], s_prev["v"], cache["g"], cache["gam"], self.beta,
                          1.0 - self.beta, s_new["h"], s_new["v"])

    def _float_back(self, p, g, s_prev, s_new, cache, ds, dP):
        H = self.n_hidden
        momentum_back(cache["g"], cache["gam"], cache["sig"], s_prev["v"], self.floor,
                      self.learned, self.beta, 1.0 - self.beta, ds["h"], ds["v"], dP)
        matmul_tn_add(np.ascontiguousarray(s_prev["h"]), dP, g["W"], np.empty_like(g["W"]))
        g["b"] += dP[:, :H].sum(axis=0)
        if self.learned:
            g["b_g"] += dP[:, H:].sum(axis=0)
        d_h = np.empty_like(ds["h"])
        matmul_rows_t(dP, p["W"], d_h)
        ds["h"] += d_h
