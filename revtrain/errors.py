"""Exceptions raised by revtrain."""


class FixedPointError(ValueError):
    """A value cannot be represented in fixed point (NaN, infinity or int64 overflow)."""


class ReversalError(RuntimeError):
    """An exact reversal did not reproduce the original bits.

    Raised when a backward pass recovers an initial state or initial weights that
    differ from the true ones, or finds the information buffer not empty where it
    must be. It means the buffer or the kept state was corrupted, or a step was
    not recomputed bit-identically; no gradient is returned in that case.
    """
