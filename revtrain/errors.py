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


class DivergenceError(FloatingPointError):
    """Training diverged: a non-finite loss or gradient, or a loss far above the start.

    Raised by :meth:`revtrain.Trainer.fit` and :func:`revtrain.hypergradient`
    instead of carrying on with (or saving) weights that no longer mean
    anything. A subclass of ``FloatingPointError``.

    Attributes
    ----------
    step : int or None
        The (1-based) training step or iteration at which it was detected.
    loss : float or None
        The loss that triggered the stop (may be NaN or inf).
    reason : str
        What happened, without the advice (a command line gives its own, naming its options).
    hint : str or None
        What to try, in the library's terms; ``str(e)`` is ``reason (hint)``.
    """

    def __init__(self, message, step=None, loss=None, hint=None):
        super().__init__(message if hint is None else f"{message} ({hint})")
        self.reason = message
        self.hint = hint
        self.step = step
        self.loss = loss


def check_reversal(who, state_matches, buffer, what="initial state"):
    """Raise :class:`ReversalError` unless an exact reversal ended where it began.

    After undoing every step, the recovered ``what`` must equal the true one
    (``state_matches``) and ``buffer`` (an :class:`~revtrain.InfoBuffer`) must
    be empty: no words left on any stream *and* every rANS state back at its
    initial value. The message names each check that failed.

    Parameters
    ----------
    who : str
        Names the computation in the message (e.g. ``"RevLSTM: reversible BPTT"``).
    state_matches : bool
    buffer : InfoBuffer
    what : str
        What was recovered (``"initial state"``, ``"w_0"``, ...).
    """
    from ._kernels.rans import INITIAL_STATE
    failed = []
    if not state_matches:
        failed.append(f"the recovered {what} differs from the true one")
    words = int(buffer.counts.sum())
    if words:
        failed.append(f"the information buffer still holds {words} words")
    bad = int((buffer.states != INITIAL_STATE).sum())
    if bad:
        failed.append(f"the rANS state of {bad} of {buffer.n_streams} buffer streams is not "
                      f"back at its initial value")
    if failed:
        raise ReversalError(f"{who} failed: " + "; ".join(failed)
                            + " (corrupted buffer or kept state); no result is returned")
