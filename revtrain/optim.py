"""Optimisers as pure functions over explicit state (optax style).

:class:`ExactSGD` is SGD with momentum computed exactly in fixed point, so that
it can be run backwards bit for bit (Maclaurin, Duvenaud & Adams 2015); the
digits that the momentum decay destroys are kept in an
:class:`~revtrain.InfoBuffer`. :class:`Adam` is an ordinary float64 Adam.

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

from ._checks import number_in_range, positive_int, positive_number
from .buffer import InfoBuffer
from .errors import FixedPointError
from .fixed_point import DEFAULT_FRAC_BITS, from_fixed, to_fixed, _check_frac_bits
from ._kernels.sgd import (MOMENTUM_BITS, MOMENTUM_DEN, sgd_step, sgd_unstep_velocity,
                           sgd_unstep_weights, wide_freqs)

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


def _describe(arr, bad):
    i = np.unravel_index(int(np.flatnonzero(bad)[0]), arr.shape) if arr.ndim else ()
    return f"{float(arr[i])!r} at index {tuple(int(k) for k in i)}"


def _schedule(value, name, lower, upper, open_lower, open_upper):
    """Validate a hyperparameter: scalar, (n_iters,) or (n_iters, n_groups).

    Returns a float64 array of shape ``(L, G)`` (``L = 1`` for a scalar) and the
    original shape.
    """
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or an array of numbers, "
                         f"got {type(value).__name__}") from None
    if arr.ndim > 2:
        raise ValueError(f"{name} must be a scalar, a schedule of shape (n_iters,) or "
                         f"(n_iters, n_groups), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} must be finite, got {_describe(arr, bad)}")
    lo_bad = arr <= lower if open_lower else arr < lower
    hi_bad = arr >= upper if open_upper else arr > upper
    if (lo_bad | hi_bad).any():
        interval = ("(" if open_lower else "[") + f"{lower:g}, {upper:g}" + \
            (")" if open_upper else "]")
        raise ValueError(f"{name} must be in {interval}, got {_describe(arr, lo_bad | hi_bad)}")
    shape = arr.shape
    if arr.ndim == 0:
        arr = arr.reshape(1, 1)
    elif arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    return np.ascontiguousarray(arr), shape


def quantise_momentum(momentum):
    """Numerators ``n = round(momentum * 2**16)`` of momenta held as ``n / 2**16``.

    Raises
    ------
    ValueError
        If a momentum rounds to 0 or to ``2**16`` (too close to 0 or 1 to hold):
        the usable range is ``(2**-17, 1 - 2**-17)``.
    """
    m = np.asarray(momentum, dtype=np.float64)
    n = np.rint(m * MOMENTUM_DEN).astype(np.int64)
    bad = (n < 1) | (n >= MOMENTUM_DEN)
    if bad.any():
        raise ValueError(f"momentum must be in (2**-17, 1 - 2**-17) to be held as n / 2**16 "
                         f"with 1 <= n < 2**16, got {_describe(m, bad)}")
    return n


class ExactSGD:
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

    def __init__(self, lr, momentum, weight_decay=0.0, groups=None,
                 frac_bits=DEFAULT_FRAC_BITS, velocity_frac_bits=None, n_streams=None):
        self._lr, self.lr_shape = _schedule(lr, "lr", 0.0, np.inf, False, True)
        self._gam, self.momentum_shape = _schedule(momentum, "momentum", 0.0, 1.0, True, True)
        self._n = quantise_momentum(self._gam)
        self._gam = self._n / MOMENTUM_DEN
        wd_arr, self.weight_decay_shape = _schedule(weight_decay, "weight_decay", 0.0, np.inf,
                                                    False, True)
        if len(self.weight_decay_shape) > 1:
            raise ValueError(f"weight_decay must be a scalar or have shape (n_groups,), "
                             f"got shape {self.weight_decay_shape}")
        self._wd = wd_arr.reshape(-1)          # (1,) or (G,)
        self.frac_bits = _check_frac_bits(frac_bits)
        if velocity_frac_bits is None:
            velocity_frac_bits = min(self.frac_bits + 16, 62)
        self.velocity_frac_bits = _check_frac_bits(velocity_frac_bits)
        self.n_streams = positive_int(n_streams, "n_streams", none_ok=True)
        lens = [a.shape[0] for a, s in ((self._lr, self.lr_shape),
                                        (self._gam, self.momentum_shape)) if len(s) >= 1]
        if len(set(lens)) > 1:
            raise ValueError(f"lr and momentum schedules must have the same length, got "
                             f"lr shape {self.lr_shape} and momentum shape "
                             f"{self.momentum_shape}")
        #: Iterations the schedules cover (None: constant hyperparameters, any number).
        self.n_iters = lens[0] if lens else None
        gs = {a.shape[1] for a in (self._lr, self._gam) if a.shape[1] > 1}
        if self._wd.shape[0] > 1:
            gs.add(self._wd.shape[0])
        if len(gs) > 1:
            raise ValueError(f"per-group hyperparameters disagree on the number of groups: "
                             f"lr {self.lr_shape}, momentum {self.momentum_shape}, "
                             f"weight_decay {self.weight_decay_shape}")
        self._hyper_groups = gs.pop() if gs else 1
        self.groups = groups
        self._gidx = None
        self._stream_counts = {}
        self._tab = None
        if groups is not None:
            self._gidx = self._group_index(groups)

    # ---------------------------------------------------------------- groups
    def _group_index(self, groups):
        layout = getattr(groups, "layout", groups)
        if hasattr(layout, "group_index"):
            gidx = np.asarray(layout.group_index(), dtype=np.int64)
            n_groups = len(layout.groups)
        else:
            gidx = np.asarray(groups)
            if gidx.ndim != 1 or gidx.dtype.kind not in "iu" or gidx.size == 0:
                raise ValueError(f"groups must be a model, a ParamLayout or a 1-D int array of "
                                 f"group indices, got {type(groups).__name__} "
                                 f"{getattr(gidx, 'shape', '')}")
            if gidx.min() < 0:
                raise ValueError(f"group indices must be >= 0, got {int(gidx.min())}")
            gidx = gidx.astype(np.int64)
            n_groups = int(gidx.max()) + 1
        if self._hyper_groups > 1 and n_groups != self._hyper_groups:
            names = getattr(layout, "groups", None)
            which = (f"the model's parameters have {n_groups} groups {tuple(names)}"
                     if names is not None else f"groups defines {n_groups}")
            raise ValueError(f"the hyperparameters have {self._hyper_groups} groups (the last "
                             f"axis of lr / momentum, or weight_decay's length) but {which}")
        self._n_bound = n_groups
        return np.ascontiguousarray(gidx)

    def get_config(self):
        """Constructor arguments that rebuild this optimiser: ``ExactSGD(**opt.get_config())``.

        Schedules come back in their original shapes (momenta quantised);
        ``groups`` as the int64 group index of every parameter (or None).
        """
        def sched(arr, shape):
            a = np.asarray(arr, dtype=np.float64).reshape(shape)
            return float(a) if a.ndim == 0 else a.copy()
        return {"lr": sched(self._lr, self.lr_shape),
                "momentum": sched(self._gam, self.momentum_shape),
                "weight_decay": sched(self._wd, self.weight_decay_shape),
                "groups": None if self._gidx is None else self._gidx.copy(),
                "frac_bits": self.frac_bits, "velocity_frac_bits": self.velocity_frac_bits,
                "n_streams": self.n_streams}

    def with_groups(self, groups):
        """A copy of this optimiser with parameter groups set (see ``groups``)."""
        new = object.__new__(ExactSGD)
        new.__dict__.update(self.__dict__)
        new.groups = groups
        new._gidx = new._group_index(groups)
        new._stream_counts = {}
        new._tab = None
        return new

    def for_slice(self, lo, hi, size):
        """This optimiser restricted to parameters ``lo .. hi-1`` of a ``size``-long vector.

        Same schedules, radix and ``n_streams``; the group of each parameter
        is its group in the full vector (``group_index(size)[lo:hi]``) and
        :attr:`n_groups` and :meth:`hyperparameters` stay those of the full
        vector, so per-group hyperparameters apply per parameter as before.
        A state of the slice (``init(theta[lo:hi])``) steps elementwise as the
        same entries of a full state would, except that its information
        buffer has its own streams (the digits the exact multiply pops depend
        on the stream layout, so ``w`` and ``v`` bits match a full state's only
        for the same stream layout). Used by the sharded hypergradient
        (:mod:`revtrain.hypergrad_shard`): each MPI rank keeps the state of
        its own slices.

        Parameters
        ----------
        lo, hi : int
            ``0 <= lo < hi <= size``.
        size : int
            Length of the full parameter vector (checked against the groups).

        Returns
        -------
        ExactSGD
        """
        size = positive_int(size, "size")
        if isinstance(lo, bool) or isinstance(hi, bool) or not (0 <= lo < hi <= size):
            raise ValueError(f"for_slice needs 0 <= lo < hi <= size={size}, got lo={lo!r}, "
                             f"hi={hi!r}")
        gidx = self.group_index(size)          # checks the groups (zeros without groups)
        new = object.__new__(ExactSGD)
        new.__dict__.update(self.__dict__)
        if self._gidx is not None:
            new._gidx = np.ascontiguousarray(gidx[int(lo):int(hi)])
            new.groups = new._gidx
        new._stream_counts = {}
        new._tab = None
        return new

    @property
    def n_groups(self):
        """Number of parameter groups once bound (1 if no groups are set)."""
        return 1 if self._gidx is None else self._n_bound

    def group_index(self, size):
        """int64 ``(size,)``: the group of each parameter (zeros when no groups are set)."""
        if self._gidx is None:
            if self._hyper_groups > 1:
                raise ValueError("per-group hyperparameters need parameter groups: pass "
                                 "groups=model (or model.layout) to ExactSGD")
            return np.zeros(size, dtype=np.int64)
        if self._gidx.shape[0] != size:
            raise ValueError(f"groups cover {self._gidx.shape[0]} parameters but theta has "
                             f"{size}")
        return self._gidx

    # ------------------------------------------------------- hyperparameters
    def check_iterations(self, n_iters):
        """Raise a ValueError if the schedules cover fewer than ``n_iters`` iterations."""
        if self.n_iters is not None and n_iters > self.n_iters:
            raise ValueError(f"the lr/momentum schedules have {self.n_iters} iterations, "
                             f"shorter than n_iters={n_iters}")

    def hyperparameters(self, t):
        """``(lr, momentum, weight_decay)`` of iteration ``t``, float64 arrays ``(n_groups,)``.

        The momentum is the quantised ``n / 2**16`` actually used.
        """
        n, lr, gam, wd = self._row(t)
        return lr.copy(), gam.copy(), wd.copy()

    def info_bits_per_param(self, n_iters):
        """Most bits one parameter puts on the information buffer in ``n_iters`` iterations.

        Iteration ``t`` multiplies the velocity of a parameter of group ``g``
        by ``gamma_{t,g} = n_{t,g} / 2**16`` exactly, which destroys (and
        stores) ``log2(2**16 / n_{t,g})`` bits. This returns the bound over
        the groups, summed over iterations ``0 .. n_iters-1``::

            sum_t max_g log2(2**16 / n_{t,g})

        so a stream of ``k`` parameters holds at most about
        ``k * info_bits_per_param(n_iters) / 32`` words after ``n_iters``
        steps (the rANS coder stays within a fraction of a percent of it).
        It does not need parameter groups to be set.

        Parameters
        ----------
        n_iters : int >= 1
            At most the length of the schedules (any number for constant ones).

        Returns
        -------
        float
        """
        n_iters = positive_int(n_iters, "n_iters")
        self.check_iterations(n_iters)
        bits = (MOMENTUM_BITS - np.log2(self._n.astype(np.float64))).max(axis=1)   # (L,)
        if bits.shape[0] == 1:
            return float(bits[0]) * n_iters
        return float(bits[:n_iters].sum())

    def _tables(self):
        """Per-iteration tables ``(L, G)`` of everything a step needs (built once per G)."""
        G = self.n_groups
        tab = self._tab
        if tab is None or tab["G"] != G:
            L = max(self._lr.shape[0], self._gam.shape[0])

            def full(a):
                return np.ascontiguousarray(np.broadcast_to(a, (L, G)))

            lr, gam, n = full(self._lr), full(self._gam), full(self._n)
            wq, we = wide_freqs(n)
            tab = dict(G=G, lr=lr, gam=gam, n=n, wq=wq, we=we,
                       wd=np.ascontiguousarray(np.broadcast_to(self._wd, (G,))),
                       cv=(1.0 - gam) * 2.0 ** self.velocity_frac_bits,
                       cw=lr * 2.0 ** (self.frac_bits - self.velocity_frac_bits),
                       bits=MOMENTUM_BITS - np.log2(n.astype(np.float64)))
            self._tab = tab
        return tab

    def _index(self, t):
        if t < 0:
            raise ValueError(f"iteration must be >= 0, got {t}")
        if self.n_iters is not None and t >= self.n_iters:
            raise ValueError(f"iteration {t} is beyond the lr/momentum schedules "
                             f"({self.n_iters} iterations)")
        return 0 if self.n_iters is None else t

    def _row(self, t):
        r = self._index(t)
        tab = self._tables()
        return tab["n"][r], tab["lr"][r], tab["gam"][r], tab["wd"]

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


class AdamState(NamedTuple):
    """State of :class:`Adam`: parameters, first and second moments, step count (int)."""
    theta: np.ndarray
    m: np.ndarray
    v: np.ndarray
    t: int


class Adam:
    """Adam (Kingma & Ba 2015) in float64.

    ``m = b1*m + (1-b1)*g``, ``v = b2*v + (1-b2)*g**2``,
    ``theta -= lr * mhat / (sqrt(vhat) + eps)`` with the bias-corrected
    ``mhat = m / (1 - b1**t)``, ``vhat = v / (1 - b2**t)``.

    Parameters
    ----------
    lr : float > 0
    b1, b2 : float in [0, 1)
    eps : float > 0
    """

    def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.eps = positive_number(lr, "lr"), positive_number(eps, "eps")
        self.b1 = number_in_range(b1, "b1", 0, 1, hi_open=True)
        self.b2 = number_in_range(b2, "b2", 0, 1, hi_open=True)

    def init(self, theta):
        """State with ``theta`` copied (float64 array of any shape) and zero moments."""
        th = np.array(theta, dtype=np.float64)
        if not np.isfinite(th).all():
            raise ValueError("theta contains NaN or inf")
        return AdamState(th, np.zeros_like(th), np.zeros_like(th), 0)

    def step(self, state, grad):
        """One Adam update; returns a new state (the old one is not changed).

        Parameters
        ----------
        state : AdamState
            Its ``t`` may be any integer type; the returned ``t`` is a Python
            ``int`` and the update is the same for every type.
        grad : ndarray of float64, same shape as ``state.theta``

        Returns
        -------
        AdamState
        """
        g = np.asarray(grad, dtype=np.float64)
        if g.shape != state.theta.shape:
            raise ValueError(f"grad must have shape {state.theta.shape}, got {g.shape}")
        if not np.isfinite(g).all():
            raise ValueError("grad contains NaN or inf")
        t = int(state.t) + 1
        m = self.b1 * state.m + (1.0 - self.b1) * g
        v = self.b2 * state.v + (1.0 - self.b2) * (g * g)
        # Python float ** Python int: numpy's power for an np.int64 exponent can differ
        # in the last bit, and the counter of a state read from a file may be one
        mhat = m / (1.0 - float(self.b1) ** t)
        vhat = v / (1.0 - float(self.b2) ** t)
        theta = state.theta - self.lr * mhat / (np.sqrt(vhat) + self.eps)
        return AdamState(theta, m, v, t)

    def params(self, state):
        """The parameters (float64)."""
        return state.theta

    def __repr__(self):
        return f"Adam(lr={self.lr}, b1={self.b1}, b2={self.b2}, eps={self.eps})"
