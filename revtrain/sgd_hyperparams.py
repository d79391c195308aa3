"""Hyperparameters of exact SGD: schedules per iteration and parameter group.

:class:`SGDHyperparams` validates and holds what :class:`~revtrain.ExactSGD`
steps with: the learning rate ``alpha`` and momentum ``gamma`` (a constant,
a schedule ``(n_iters,)`` or ``(n_iters, n_groups)``), the weight decay
``lambda`` (a constant or ``(n_groups,)``), the parameter groups, and the
fixed-point radices. Momenta are held as ``n / 2**16`` (:func:`quantise_momentum`).
Per iteration ``t`` it builds the table rows ``(n_t, alpha_t, gamma_t, lambda)``
``(n_groups,)`` the kernels read; ``info_bits_per_param`` bounds what a
parameter puts on the information buffer.
"""
import numpy as np

from ._checks import positive_int
from .fixed_point import DEFAULT_FRAC_BITS, _check_frac_bits
from ._kernels.sgd import MOMENTUM_BITS, MOMENTUM_DEN, wide_freqs


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



class SGDHyperparams:
    """The hyperparameters, groups and radices of :class:`~revtrain.ExactSGD`
    (its constructor arguments are documented there)."""

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
        new = object.__new__(type(self))
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
        new = object.__new__(type(self))
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

