"""Optimisers as pure functions over explicit state (optax style).

:class:`ExactSGD` is SGD with momentum computed exactly in fixed point, so that
it can be run backwards bit for bit (Maclaurin, Duvenaud & Adams 2015); the
digits that the momentum decay destroys are kept in an
:class:`~revtrain.InfoBuffer`. Its hyperparameters (schedules, groups,
radices) are validated and held by :class:`~revtrain.sgd_hyperparams.SGDHyperparams`,
its base class. :class:`Adam` (:mod:`revtrain.adam`) is an ordinary float64 Adam.

Both follow the same protocol::

    state = opt.init(theta)          # NamedTuple
    state = opt.step(state, grad)    # grad of the loss at opt.params(state)
    theta = opt.params(state)

Step counters ``state.t`` are Python ``int`` in every state these optimisers
return, whatever integer type they were given (a state read back from a file
may hold ``np.int64``), and the results do not depend on that type.
"""
from typing import NamedTuple

import numpy as np

from .adam import Adam, AdamState                        # noqa: F401  (re-exported)
from .buffer import InfoBuffer
from .errors import FixedPointError
from .fixed_point import from_fixed, to_fixed
from .sgd_hyperparams import SGDHyperparams, quantise_momentum   # noqa: F401  (re-exported)
from ._kernels.sgd import sgd_step, sgd_unstep_velocity, sgd_unstep_weights

#: Largest number of buffer streams chosen automatically.
MAX_AUTO_STREAMS = 8
#: Parameters per stream below which fewer streams are used automatically.
MIN_STREAM_CHUNK = 256


class ExactSGDState(NamedTuple):
    """State of :class:`ExactSGD`.

    Attributes
    ----------
    w : ndarray of int64, shape (P,)
        Weights in fixed point (``opt.frac_bits`` fraction bits).
    v : ndarray of int64, shape (P,)
        Velocity in fixed point (``opt.velocity_frac_bits`` fraction bits).
    buffer : InfoBuffer
        The digits destroyed by the momentum decay so far. It is shared by
        the states that ``step``/``unstep`` return (it is changed in place,
        which keeps it O(bits held) instead of copying it every step): only
        the newest state is valid for further ``step``/``unstep`` calls.
    t : int
        Iterations done (the next ``step`` uses the hyperparameters of
        iteration ``t``; ``unstep`` undoes iteration ``t - 1``).
    """
    w: np.ndarray
    v: np.ndarray
    buffer: InfoBuffer
    t: int


class PendingUnstep(NamedTuple):
    """Half-undone iteration: what :meth:`ExactSGD.unstep_weights` returns.

    The weights are back at their value before iteration ``t``; the velocity
    is still the one after it, waiting for the gradient at ``theta``, which
    :meth:`ExactSGD.unstep_velocity` needs to undo it.

    Attributes
    ----------
    theta : ndarray of float64, shape (P,)
        The weights before iteration ``t``, ``from_fixed(w, frac_bits)``: where
        the gradient of iteration ``t`` must be recomputed.
    w : ndarray of int64, shape (P,)
        The same weights in fixed point.
    v : ndarray of int64, shape (P,)
        The velocity *after* iteration ``t`` (not yet undone).
    buffer : InfoBuffer
        The information buffer, not yet popped.
    t : int
        The iteration being undone (the state's ``t - 1``).
    mark : tuple of ndarray
        Copies of the buffer's stream states and word counts (``(S,)`` each)
        when the weights were undone, so that a second use of the same
        pending step, or a buffer changed in between, is refused.
    """
    theta: np.ndarray
    w: np.ndarray
    v: np.ndarray
    buffer: InfoBuffer
    t: int
    mark: tuple


class ExactSGD(SGDHyperparams):
    """SGD with momentum, exact in fixed point and reversible bit for bit.

    Iteration ``t`` with learning rate ``alpha_t``, momentum ``gamma_t`` and
    weight decay ``lambda`` (per parameter group)::

        g   = grad L_t(w) + lambda * w
        v  <- gamma_t * v - (1 - gamma_t) * g
        w  <- w + alpha_t * v

    ``w`` and ``v`` are int64 fixed point. ``gamma_t`` is held as
    ``n_t / 2**16`` (``n_t = round(gamma_t * 2**16)``; the momentum used is
    this quantised value); ``v * gamma_t`` is an exact multiply: with
    ``r = v mod 2**16`` (floor) pushed onto the information buffer in base
    ``2**16``, ``v <- ((v - r) / 2**16) * n_t + s`` with the new low digit
    ``s`` in ``[0, n_t)`` popped from the buffer. Net, about
    ``log2(2**16 / n_t) = log2(1 / gamma_t)`` bits per parameter go onto the
    buffer: the information the multiply destroys, which undoing it reads
    back (the division by ``gamma_t`` is the same routine with ``n_t`` and
    ``2**16`` swapped). The two additions are exact fixed-point adds of the
    increments ``to_fixed((1 - gamma_t) * g)`` and ``to_fixed(alpha_t * v)``,
    which :meth:`unstep` recomputes bit-identically and subtracts.

    Weight decay convention: the gradient passed to :meth:`step` (and
    returned by ``grad_fn``) is that of the loss alone; the optimiser adds
    ``weight_decay * w`` (an L2 penalty ``weight_decay / 2 * |w|**2``) with
    ``w`` the current fixed-point weights. It goes through the momentum like
    the loss gradient (the decay is "coupled", as in ``torch.optim.SGD``).

    Parameters
    ----------
    lr : float >= 0, or array (n_iters,) or (n_iters, n_groups)
        Learning rate ``alpha``: constant, per iteration, or per iteration and
        parameter group.
    momentum : float in (0, 1), or array (n_iters,) or (n_iters, n_groups)
        Momentum ``gamma``, held as ``n / 2**16``.
    weight_decay : float >= 0, or array (n_groups,)
        Weight decay ``lambda``, constant or per group.
    groups : ParamLayout, model or int array (P,), optional
        Parameter groups for per-group hyperparameters: a model (its
        ``layout``), a :class:`~revtrain.params.ParamLayout` (its
        ``group_index()``; groups in the order of ``layout.groups``) or the
        group index of every parameter. Needed only if some hyperparameter is
        per group; :func:`~revtrain.hypergradient` takes them from the model.
    frac_bits : int
        Fraction bits ``Fw`` of the weights (default 32: resolution 2.3e-10,
        range +-2.1e9).
    velocity_frac_bits : int, optional
        Fraction bits ``Fv`` of the velocity. Default ``min(frac_bits + 16, 62)``
        (48): the exact multiply by ``n / 2**16`` replaces the low 16 bits of
        ``v`` with a digit from the buffer, an error of up to ``n < 2**16``
        units in the last place of ``v``; 16 more fraction bits than the
        weights keep that error below the weights' resolution for learning
        rates up to 1. The range of ``v`` is then ``+-2**(63 - Fv)`` (+-32768),
        ample for a running average of gradients; values that do not fit raise
        :class:`~revtrain.FixedPointError`.
    n_streams : int, optional
        Independent streams of the information buffer; stream ``s`` holds the
        digits of a contiguous chunk of parameters. Default: one stream per
        256 parameters, at most 8. Each stream costs at most 12 bytes above
        the information it holds; several let the kernel overlap their
        (otherwise serial) rANS updates.

    Notes
    -----
    ``state = opt.step(state, grad)`` then ``state = opt.unstep(state, grad_fn)``
    restores ``w``, ``v`` and the buffer bit for bit, provided ``grad_fn``
    returns bit for bit the gradient passed to ``step``. ``unstep`` is
    :meth:`unstep_weights` followed by :meth:`unstep_velocity`; calling the
    two directly lets the caller compute (and keep) the gradient at the
    recovered weights itself, as :func:`~revtrain.hypergradient` does.
    """

    # ----------------------------------------------------------------- state
    def _streams(self, P):
        S = self.n_streams
        if S is None:
            S = max(1, min(MAX_AUTO_STREAMS, P // MIN_STREAM_CHUNK))
        S = min(S, P)
        chunk = -(-P // S)
        S = -(-P // chunk)        # no empty stream
        return S, chunk

    def init(self, theta):
        """Initial state: ``w = to_fixed(theta)``, ``v = 0``, an empty buffer, ``t = 0``.

        Parameters
        ----------
        theta : ndarray of float64, shape (P,)

        Returns
        -------
        ExactSGDState
        """
        th = np.asarray(theta)
        if th.ndim != 1 or th.size == 0 or th.dtype.kind != "f":
            raise ValueError(f"theta must be a non-empty 1-D float array, got "
                             f"{th.dtype} {th.shape}")
        self.group_index(th.shape[0])          # checks groups against the size
        w = to_fixed(th, self.frac_bits)
        S, _ = self._streams(th.shape[0])
        return ExactSGDState(w, np.zeros_like(w), InfoBuffer(S), 0)

    def params(self, state):
        """The weights as float64 ``(P,)``."""
        return from_fixed(state.w, self.frac_bits)

    def velocity(self, state):
        """The velocity as float64 ``(P,)``."""
        return from_fixed(state.v, self.velocity_frac_bits)

    def _stream_info(self, P, S, chunk, gidx, bits):
        """Bits per stream that one step pushes: sum over its elements of log2(2**16 / n_j)
        (``bits[j] = log2(2**16 / n_j)`` per group)."""
        key = (P, S)
        counts = self._stream_counts.get(key)
        if counts is None:       # (S, G): parameters of each group in each stream's chunk
            counts = np.zeros((S, self.n_groups))
            np.add.at(counts, (np.arange(P) // chunk, gidx), 1.0)
            self._stream_counts = {key: counts}
        return counts @ bits

    def _check_state(self, state):
        if not isinstance(state, ExactSGDState):
            raise TypeError(f"state must be an ExactSGDState from init(), got "
                            f"{type(state).__name__}")
        return state.w.shape[0]

    def _check_grad(self, g, P, where):
        g = np.asarray(g)
        if g.shape != (P,) or g.dtype.kind != "f":
            raise ValueError(f"{where} must be a float array of shape ({P},), got "
                             f"{g.dtype} {g.shape}")
        return np.ascontiguousarray(g, dtype=np.float64)

    def _coeffs(self, t):
        r = self._index(t)
        tab = self._tables()
        return (tab["n"][r], tab["wq"][r], tab["we"][r], tab["cv"][r], tab["cw"][r], tab["wd"],
                tab["bits"][r])

    def _raise(self, code, idx, where, t):
        if code == 1:
            raise FloatingPointError(f"{where}: the gradient plus weight decay is NaN or "
                                     f"infinite at parameter {idx} (iteration {t}); nothing "
                                     "was changed")
        raise FixedPointError(f"{where}: the weights or velocity would leave the fixed-point "
                              f"range at parameter {idx} (iteration {t}); nothing was changed. "
                              "Use a smaller learning rate or fewer (velocity_)frac_bits")

    def step(self, state, grad):
        """One iteration: ``v = gamma*v - (1-gamma)*(grad + wd*w)``, ``w = w + lr*v``.

        Parameters
        ----------
        state : ExactSGDState
        grad : ndarray of float64, shape (P,)
            Gradient of the training loss at ``params(state)`` (no weight decay).

        Returns
        -------
        ExactSGDState
            New ``w``, ``v`` arrays, the same (grown) buffer, ``t + 1``.
        """
        P = self._check_state(state)
        t = int(state.t)
        g = self._check_grad(grad, P, "grad")
        gidx = self.group_index(P)
        n, wq, we, cv, cw, wd, bits = self._coeffs(t)
        buf = state.buffer
        S, chunk = buf.n_streams, -(-P // buf.n_streams)
        buf.reserve(chunk // 2 + 3)
        w_out = np.empty_like(state.w)
        v_out = np.empty_like(state.v)
        code, idx = sgd_step(state.w, state.v, g, gidx, n, wq, we, cv, cw, wd,
                             2.0 ** -self.frac_bits, chunk, buf.states, buf.counts, buf.words,
                             w_out, v_out)
        if code:
            self._raise(code, idx, "step", t)
        buf.info += self._stream_info(P, S, chunk, gidx, bits)
        return ExactSGDState(w_out, v_out, buf, t + 1)

    def unstep(self, state, grad_fn):
        """Undo the last iteration exactly: :meth:`unstep_weights`, then :meth:`unstep_velocity`.

        ``w_prev = w - to_fixed(lr*v)``; ``g = grad_fn(from_fixed(w_prev), t)``;
        ``v_prev = (v + to_fixed((1-gamma)*(g + wd*w_prev))) / gamma`` with the
        division exact (digits from the buffer).

        Parameters
        ----------
        state : ExactSGDState with ``t >= 1``
        grad_fn : callable ``(theta, t) -> grad``
            Recomputes, bit for bit, the gradient that ``step`` got at
            iteration ``t`` (``theta`` float64 ``(P,)``, ``grad`` float
            ``(P,)``).

        Returns
        -------
        ExactSGDState
            The state before the last ``step`` (same buffer, popped).
        """
        pending = self.unstep_weights(state)
        g = self._check_grad(grad_fn(pending.theta, pending.t), pending.w.shape[0],
                             "grad_fn(theta, t)")
        return self.unstep_velocity(pending, g)

    def unstep_weights(self, state):
        """First half of undoing iteration ``t = state.t - 1``: the weights before it.

        The step did ``w <- w_prev + to_fixed(alpha_t * v)`` with ``v`` the new
        velocity, which the state still holds, so::

            w_prev = w - to_fixed(alpha_t * from_fixed(v))

        exactly (the same integer increment is recomputed and subtracted).
        The buffer is not touched. Pass the result, with the gradient of the
        training loss at ``pending.theta``, to :meth:`unstep_velocity`.

        Parameters
        ----------
        state : ExactSGDState with ``t >= 1``
            The newest state (its buffer is shared and changed in place).

        Returns
        -------
        PendingUnstep
            ``theta`` (float64 ``(P,)``) and ``w`` (int64 ``(P,)``) are the
            weights before iteration ``t``; ``v`` and ``buffer`` are those of
            ``state``; ``t`` is the iteration being undone.

        Raises
        ------
        ValueError
            If ``state.t`` is 0 (nothing to undo).
        FixedPointError
            If the weights would leave the fixed-point range (impossible for a
            state that ``step`` produced; nothing is changed).
        """
        P = self._check_state(state)
        t = int(state.t) - 1
        if t < 0:
            raise ValueError("unstep: the state is at iteration 0, there is nothing to undo")
        gidx = self.group_index(P)
        cw = self._coeffs(t)[4]
        w_prev = np.empty_like(state.w)
        code, idx = sgd_unstep_weights(state.w, state.v, gidx, cw, w_prev)
        if code:
            self._raise(code, idx, "unstep", t)
        buf = state.buffer
        return PendingUnstep(from_fixed(w_prev, self.frac_bits), w_prev, state.v, buf, t,
                             (buf.states.copy(), buf.counts.copy()))

    def unstep_velocity(self, pending, grad):
        """Second half of undoing iteration ``t``: the velocity before it, exactly.

        With ``w_prev`` the weights from :meth:`unstep_weights` and ``grad``
        the gradient of the training loss there (bit for bit the one ``step``
        got), the step did ``v <- gamma_t * v_prev - to_fixed((1 - gamma_t) * gt)``
        with ``gt = grad + lambda * w_prev``, so::

            v_prev = (v + to_fixed((1 - gamma_t) * gt)) / gamma_t

        where the division by ``gamma_t = n_t / 2**16`` is exact: the low
        digit ``s = q mod n_t`` is pushed back in base ``n_t``, and the 16 low
        bits that the multiply destroyed are popped from the buffer
        (``q <- ((q - s) / n_t) * 2**16 + r``).

        Parameters
        ----------
        pending : PendingUnstep
            From :meth:`unstep_weights`, used once.
        grad : ndarray of float, shape (P,)
            Gradient of the training loss alone (no weight decay) at
            ``pending.theta``.

        Returns
        -------
        ExactSGDState
            The state before iteration ``t`` (the same buffer, popped), with
            ``t`` the Python int ``pending.t``.

        Raises
        ------
        TypeError
            If ``pending`` is not a :class:`PendingUnstep`.
        ValueError
            If ``grad`` is not a float array of shape ``(P,)``, or the pending
            step was already used (or the buffer changed since
            :meth:`unstep_weights`).
        FloatingPointError
            If ``grad + lambda * w`` is not finite (nothing is changed).
        """
        if not isinstance(pending, PendingUnstep):
            raise TypeError(f"pending must be the PendingUnstep that unstep_weights() "
                            f"returned, got {type(pending).__name__}")
        P = pending.w.shape[0]
        t = int(pending.t)
        g = self._check_grad(grad, P, "unstep_velocity: grad")
        buf = pending.buffer
        states, counts = pending.mark
        if not (np.array_equal(buf.states, states) and np.array_equal(buf.counts, counts)):
            raise ValueError("unstep_velocity: the buffer changed since unstep_weights() "
                             "(was this pending step already used?); each PendingUnstep "
                             "can be completed once, right after it was made")
        gidx = self.group_index(P)
        n, wq, we, cv, cw, wd, bits = self._coeffs(t)
        S, chunk = buf.n_streams, -(-P // buf.n_streams)
        buf.reserve(chunk + 3)
        v_prev = np.empty_like(pending.v)
        code, idx = sgd_unstep_velocity(pending.w, pending.v, g, gidx, n, wq, we, cv, wd,
                                        2.0 ** -self.frac_bits, chunk,
                                        buf.states, buf.counts, buf.words, v_prev)
        if code:
            self._raise(code, idx, "unstep", t)
        buf.info -= self._stream_info(P, S, chunk, gidx, bits)
        return ExactSGDState(pending.w, v_prev, buf, t)

    def __repr__(self):
        return (f"ExactSGD(lr shape {self.lr_shape}, momentum shape {self.momentum_shape}, "
                f"weight_decay shape {self.weight_decay_shape}, frac_bits={self.frac_bits}, "
                f"velocity_frac_bits={self.velocity_frac_bits})")
