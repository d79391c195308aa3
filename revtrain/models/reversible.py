"""The reversible cells' base: fixed-point state, exact forget-type updates, their errors.

A reversible cell holds its recurrent state in fixed point (int64 with ``F``
fraction bits) and updates each part of it as ``q <- q * n/D + inc``: an
exact multiply by a quantised forget-type gate (the digits it destroys go to
an :class:`~revtrain.buffer.InfoBuffer`, one rANS stream per batch row) and an
integer add (see :mod:`revtrain._kernels.quantize`). The gates and increments
are computed in float (float64, or float32 with ``dtype="float32"``) from the
*other* parts of the state, so a step can be
undone bit for bit once those parts are recovered. The BPTT that uses this
(reversible and standard modes, stacks) is :mod:`revtrain.models.reversible_bptt`.
"""
import numpy as np

from .base import RecurrentModel
from .reversible_bptt import ReversibleBPTT
from .window_calls import run_window, window_loss, window_hidden
from .._checks import is_int, int_in_range
from ..errors import FixedPointError, ReversalError
from ..fixed_point import to_fixed
from .._kernels.quantize import forget_add, forget_add_undo, add_checked, log2_table

#: Default fraction bits of the fixed-point state: resolution 2**-32, range +-2**30.
REV_FRAC_BITS = 32
#: Default bits of the quantised gates (``n / 2**gate_bits``).
GATE_BITS = 12
#: Default bound on the bits one forget-type multiply may destroy per unit and step.
MAX_FORGET_BITS = 3


class ReversibleModel(ReversibleBPTT, RecurrentModel):
    """Base class of the reversible cells: fixed-point state, exact reversal, reversible BPTT.

    Parameters
    ----------
    n_in, n_hidden, n_out, loss
        As for :class:`~revtrain.models.base.RecurrentModel`.
    frac_bits : int in [8, 52]
        Fraction bits ``F`` of the fixed-point state (default 32). State
        values must stay below ``2**(62 - F)`` in magnitude, otherwise
        :class:`~revtrain.FixedPointError` is raised.
    max_forget_bits : int in [1, gate_bits]
        ``k``: forget-type gates are floored at ``2**-k``, so no unit loses
        more than ``k`` bits per multiply (default 3).
    gate_bits : int in [max_forget_bits, 16]
        ``m``: gates are quantised to ``n / 2**m`` (default 12).

    Subclass hooks
    --------------
    ``_parts()`` list of ``(name, width)``: the state layout (columns in order).
    ``_head_parts`` tuple of part names whose concatenation is the hidden state ``h`` (B, H).
    ``_n_proj`` columns ``G`` of the input weights ``V`` (n_in, G).
    ``_fixed_step(p, P, q, buf, t)`` / ``_fixed_unstep(p, P, q, buf, t, cache)``:
    one fixed-point step on the dict ``q`` of int64 ``(B, width)`` parts,
    forward and exactly backward, given the projection ``P = x_t V`` (B, G);
    the undo leaves the step's float64 gates in ``cache``.
    ``_cache(B, dtype)`` workspace of one float step.
    ``_float_step(p, P, s_prev, s_new, cache, have_gates=False)``: recompute
    step ``t`` in float (or complex) from ``s_prev`` (the gates are already in
    ``cache`` when ``have_gates``); ``s_new`` holds the fixed-point result and,
    for complex dtypes, gets the imaginary part of the float update.
    ``_float_back(p, g, s_prev, s_new, cache, ds, dP)``: backpropagate through
    the step; ``ds`` (dict) holds dL/ds_t on entry and dL/ds_{t-1} on exit;
    writes ``dP`` = dL/dP (B, G); adds parameter gradients to the views ``g``
    (the input weights ``V`` are handled by the driver).
    """

    bptt_modes = ("reversible", "standard")
    #: Exact multiplies per row and step, divided by n_hidden (set by subclasses).
    forget_per_unit = 1

    #: The state is split in two halves updated in turn (n_hidden must be even).
    two_halves = False
    #: The cell's :class:`~revtrain.models.window.WindowRun` (whole-window kernels), or None.
    window_class = None
    #: Run through the window kernels when the cell has them (False: the per-step Python
    #: driver, the reference; the complex-step hvp always runs it).
    window_kernels = True

    def __init__(self, n_in, n_hidden, n_out, loss="softmax", frac_bits=REV_FRAC_BITS,
                 max_forget_bits=MAX_FORGET_BITS, gate_bits=GATE_BITS, *, n_layers=1,
                 embed_dim=None, dropout=0.0, dtype="float64"):
        if self.two_halves and is_int(n_hidden) and n_hidden % 2:
            raise ValueError(f"n_hidden must be even for {type(self).__name__} (two halves), "
                             f"got {n_hidden}")
        self.frac_bits = int_in_range(frac_bits, "frac_bits", 8, 52)
        self.gate_bits = int_in_range(gate_bits, "gate_bits", 1, 16)
        self.max_forget_bits = int_in_range(max_forget_bits, "max_forget_bits", 1, self.gate_bits)
        self.D = 1 << self.gate_bits
        self.nmin = self.D >> self.max_forget_bits
        self.floor = 2.0 ** -self.max_forget_bits
        self.scale = 2.0 ** self.frac_bits
        self.inv_scale = 2.0 ** -self.frac_bits
        self._log2 = log2_table(self.D)
        super().__init__(n_in, n_hidden, n_out, loss, n_layers=n_layers, embed_dim=embed_dim,
                         dropout=dropout, dtype=dtype)
        self._layout_parts = list(self._parts())
        # words one step can emit per stream: each exact multiply pushes at most gate_bits
        # bits before its pop, and each forget_add pass may emit 2 more partial words
        self._step_words = (self.forget_units * self.gate_bits) // 32 + 16

    def __repr__(self):
        return (f"{type(self).__name__}(n_in={self.n_in}, n_hidden={self.n_hidden}, "
                f"n_out={self.n_out}, loss={self.loss_kind!r}, frac_bits={self.frac_bits}, "
                f"max_forget_bits={self.max_forget_bits}, gate_bits={self.gate_bits}"
                f"{self._stack_repr()})")

    def _use_window(self, theta):
        """Whether this call runs through the window kernels (see :attr:`window_kernels`)."""
        if np.iscomplexobj(theta):
            self._float64_only("the complex-step hvp (and hypergradients)")
            return False
        use = self.window_kernels and self.window_class is not None
        if self.dtype != "float64" and not use:
            raise ValueError(f"dtype={self.dtype!r} runs through the window kernels: "
                             f"window_kernels must be True")
        return use

    def _run(self, theta, batch, mode, k, want_grad, state0, masks, want_inputs):
        if not self._use_window(theta):
            return super()._run(theta, batch, mode, k, want_grad, state0, masks, want_inputs)
        if not want_grad:
            return window_loss(self, theta, batch, state0, masks, self.window_class)
        return run_window(self, theta, batch, mode, state0, masks, want_inputs,
                          self.window_class)

    def _hidden(self, theta, x, tokens, state0):
        if not self._use_window(theta):
            return super()._hidden(theta, x, tokens, state0)
        return window_hidden(self, theta, x, tokens, state0, self.window_class)

    @property
    def layer_state_size(self):
        """Columns of one layer's state: the widths of :meth:`_parts` summed."""
        return sum(w for _, w in self._parts())

    @property
    def forget_units(self):
        """Exact forget-type multiplies per batch row and step (bound: ``info_bits <= T*B*forget_units*k``)."""
        return self.forget_per_unit * self.n_hidden

    # ------------------------------------------------------------ state I/O
    def _pack(self, parts, out=None):
        if out is None:
            return np.concatenate([parts[nm] for nm, _ in self._layout_parts], axis=1)
        c = 0
        for nm, w in self._layout_parts:
            out[:, c:c + w] = parts[nm]
            c += w
        return out

    def _unpack(self, arr):
        out, c = {}, 0
        for nm, w in self._layout_parts:
            out[nm] = np.ascontiguousarray(arr[:, c:c + w])
            c += w
        return out

    def _to_float(self, q, dtype=np.float64):
        return {k: (v * self.inv_scale).astype(dtype, copy=False) for k, v in q.items()}

    def _initial_fixed(self, state0, B):
        """Per layer, the dict of int64 fixed-point parts of ``state0`` (zeros if None)."""
        if state0 is None:
            return [{nm: np.zeros((B, w), dtype=np.int64) for nm, w in self._layout_parts}
                    for _ in range(self.n_layers)]
        bound = 2.0 ** (62 - self.frac_bits)
        big = np.abs(state0) >= bound
        if big.any():
            i = np.argwhere(big)[0]
            where = "" if self.n_layers == 1 else \
                f" (layer {int(i[1]) // self.layer_state_size} of {self.n_layers})"
            raise FixedPointError(
                f"initial_state value {float(state0[tuple(i)])!r} at index {tuple(int(v) for v in i)}"
                f"{where} does not fit the fixed-point state (|x| must be < 2**(62 - frac_bits) = "
                f"{bound:g} with frac_bits={self.frac_bits})")
        return [self._unpack(s) for s in self.layer_states(to_fixed(state0, self.frac_bits))]

    def _h(self, s):
        if len(self._head_parts) == 1:
            return s[self._head_parts[0]]
        return np.concatenate([s[nm] for nm in self._head_parts], axis=1)

    def _add_dh(self, ds, dH):
        c = 0
        for nm in self._head_parts:
            w = ds[nm].shape[1]
            ds[nm] += dH[:, c:c + w]
            c += w

    # ----------------------------------------------------- exact primitives
    def _forget(self, q, n, inc, buf, t, what):
        """``q <- q*n/D + inc`` exactly (forward), FixedPointError if the state leaves the range.

        The caller reserved room in ``buf`` (:meth:`_reserve_step`, once per step).
        """
        code = forget_add(q, n, inc, self.D, buf.states, buf.counts, buf.words, buf.info,
                          self._log2)
        if code >= 0:
            self._overflow(what, t, code, q.shape)

    def _unforget(self, q, n, inc, buf, t, what):
        """Undo :meth:`_forget` exactly; ReversalError on an impossible value."""
        code = forget_add_undo(q, n, inc, self.D, buf.states, buf.counts, buf.words, buf.info,
                               self._log2)
        if code >= 0:
            self._corrupt(what, t, code, q.shape)

    def _reserve_step(self, buf):
        """Room for the words one step (or its undo) can emit on every stream."""
        if buf.words.shape[1] - int(buf.counts.max()) < self._step_words:
            buf.reserve(self._step_words)

    def _add(self, q, v, sign, t, what, reverse=False):
        code = add_checked(q, v, sign)
        if code >= 0:
            (self._corrupt if reverse else self._overflow)(what, t, code, q.shape)

    def _overflow(self, what, t, code, shape):
        b, j = divmod(int(code), shape[1])
        raise FixedPointError(
            f"{type(self).__name__}: state part {what!r} overflowed the fixed-point range at "
            f"step {t}, batch row {b}, unit {j} (|value| must stay < 2**(62 - frac_bits) = "
            f"{2.0 ** (62 - self.frac_bits):g} with frac_bits={self.frac_bits}); use fewer "
            f"frac_bits or shorter sequences")

    def _corrupt(self, what, t, code, shape):
        b, j = divmod(int(code), shape[1])
        raise ReversalError(
            f"{type(self).__name__}: undoing step {t} produced an impossible value in state "
            f"part {what!r} (batch row {b}, unit {j}): the information buffer or the kept "
            f"final state is corrupted; no gradient is returned")
