"""Flat parameter vectors with named views.

Every model keeps its parameters in one flat float64 vector ``theta`` so that
optimisers and hypergradients see a single array; :class:`ParamLayout` maps
names to slices of it and reshapes them into views (no copies).
"""
from typing import NamedTuple

import numpy as np

from ._checks import nonneg_int, positive_number


class ParamSpec(NamedTuple):
    """One named parameter block.

    Attributes
    ----------
    name : str
    shape : tuple of int
    init : str
        ``"uniform"``: U(-s/sqrt(fan_in), s/sqrt(fan_in)) with ``fan_in = shape[0]``
        (scaled by the ``scale`` argument of :meth:`ParamLayout.init`);
        ``"embedding"``: U(-s, s) (an embedding table: its rows are inputs, not weights);
        ``"zeros"``; ``"ones"`` (constant 1, not scaled; e.g. a forget bias).
    group : str
        Parameter group for per-group hyperparameters (``"recurrent"``,
        ``"input"``, ``"bias"``, ``"output"``; stacks: ``"embed"``, ``"layer0"``, ...).
    """
    name: str
    shape: tuple
    init: str = "uniform"
    group: str = "recurrent"


class ParamLayout:
    """Ordered named blocks of a flat parameter vector.

    Parameters
    ----------
    specs : sequence of ParamSpec
    """

    def __init__(self, specs):
        self.specs = tuple(ParamSpec(s.name, tuple(int(d) for d in s.shape), s.init, s.group)
                           for s in specs)
        self.offsets = {}
        off = 0
        for s in self.specs:
            n = int(np.prod(s.shape, dtype=np.int64))
            self.offsets[s.name] = (off, off + n)
            off += n
        self.size = off
        groups = []
        for s in self.specs:
            if s.group not in groups:
                groups.append(s.group)
        self.groups = tuple(groups)

    @property
    def names(self):
        return tuple(s.name for s in self.specs)

    def check(self, theta, name="theta", float32_ok=False):
        """Validate a parameter vector: 1-D float64 (or complex128; float32 too when
        ``float32_ok``) of length :attr:`size`."""
        if not isinstance(theta, np.ndarray):
            raise ValueError(f"{name} must be a numpy array of shape ({self.size},), "
                             f"got {type(theta).__name__}")
        if theta.dtype not in (np.float64, np.complex128) and not (
                float32_ok and theta.dtype == np.float32):
            allowed = "float64 or float32" if float32_ok else "float64"
            raise ValueError(f"{name} must have dtype {allowed}, got {theta.dtype}")
        if theta.shape != (self.size,):
            raise ValueError(f"{name} must have shape ({self.size},) for this model, "
                             f"got {theta.shape}")
        if not np.isfinite(theta).all():
            i = int(np.flatnonzero(~np.isfinite(theta))[0])
            raise ValueError(f"{name} contains NaN or inf (first at index {i}, in "
                             f"'{self.name_of(i)}')")
        return np.ascontiguousarray(theta)

    def name_of(self, index):
        """The name of the block holding flat index ``index``."""
        for name, (a, b) in self.offsets.items():
            if a <= index < b:
                return name
        raise IndexError(index)

    def views(self, theta):
        """Dict of named views into ``theta`` (writing to a view writes to ``theta``)."""
        return {s.name: theta[a:b].reshape(s.shape)
                for s, (a, b) in zip(self.specs, self.offsets.values())}

    def group_masks(self):
        """Dict group name -> boolean mask of shape ``(size,)``."""
        masks = {g: np.zeros(self.size, dtype=bool) for g in self.groups}
        for s in self.specs:
            a, b = self.offsets[s.name]
            masks[s.group][a:b] = True
        return masks

    def group_index(self):
        """int64 array of shape ``(size,)``: the index of each entry's group in :attr:`groups`."""
        idx = np.empty(self.size, dtype=np.int64)
        for s in self.specs:
            a, b = self.offsets[s.name]
            idx[a:b] = self.groups.index(s.group)
        return idx

    def init(self, seed=0, scale=1.0):
        """A fresh parameter vector.

        Parameters
        ----------
        seed : int
            Seed of ``numpy.random.default_rng``; the same seed gives the same bits.
        scale : float > 0
            Multiplies the initialisation range of every ``"uniform"`` and ``"embedding"`` block.

        Returns
        -------
        theta : ndarray of float64, shape (size,)
        """
        seed = nonneg_int(seed, "seed")
        scale = positive_number(scale, "scale")
        rng = np.random.default_rng(seed)
        theta = np.zeros(self.size)
        v = self.views(theta)
        for s in self.specs:
            if s.init == "uniform":
                lim = scale / np.sqrt(max(s.shape[0], 1))
                v[s.name][...] = rng.uniform(-lim, lim, size=s.shape)
            elif s.init == "embedding":
                v[s.name][...] = rng.uniform(-scale, scale, size=s.shape)
            elif s.init == "ones":
                v[s.name][...] = 1.0
            elif s.init != "zeros":
                raise ValueError(f"unknown init {s.init!r}")
        return theta

    def init_scale_direction(self, theta):
        """d theta / d log(scale) at ``theta`` from :meth:`init`, per group (dict of arrays).

        Uniform and embedding blocks scale linearly with ``scale``, so the derivative is the
        block itself; other blocks do not depend on it.
        """
        out = {}
        for g in self.groups:
            d = np.zeros(self.size)
            for s in self.specs:
                if s.group == g and s.init in ("uniform", "embedding"):
                    a, b = self.offsets[s.name]
                    d[a:b] = theta[a:b]
            out[g] = d
        return out
