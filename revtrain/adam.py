"""Adam as pure functions over an explicit state (optax style): ``init``, ``step``, ``params``."""
from typing import NamedTuple

import numpy as np

from ._checks import number_in_range, positive_number


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
