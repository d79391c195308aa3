"""The interface shared by every recurrent model.

A model is a stateless description (sizes, loss); its parameters live in one
flat float64 vector ``theta`` (see :class:`~revtrain.params.ParamLayout`).
Subclasses provide the parameter layout and two hooks:

``_specs()``
    list of :class:`~revtrain.params.ParamSpec`; must end with the output
    layer ``U`` (n_hidden, n_out) and ``b_y`` (n_out,).
``_run(theta, batch, mode, k, want_grad, state0)``
    one forward (and backward) pass; ``theta`` is float64 or complex128 (the
    complex-step Hessian-vector product runs the same kernels on
    ``theta + i*eps*v``). Returns ``(loss, grad, info)`` with ``grad`` of
    ``theta``'s dtype (None unless ``want_grad``) and ``info`` a dict with at
    least ``stored_bytes`` and ``final_state``.
``_hidden(theta, batch, state0)``
    float64 hidden states that feed the output layer, ``(*lead, B, n_hidden)``,
    and the final state.
"""
from typing import NamedTuple, Optional

import numpy as np

from ..batch import check_batch, check_x
from ..params import ParamLayout
from .._threads import blas_threads
from .._kernels.head import softmax_probs, linear_out
from .._checks import positive_int
from ..errors import DivergenceError

#: Step of the complex-step Hessian-vector product.
COMPLEX_STEP = 1e-30


class BPTTStats(NamedTuple):
    """What one ``loss_and_grad`` call kept for its backward pass.

    Attributes
    ----------
    stored_bytes : int
        Bytes held for the backward pass: stored states and gates
        (standard), checkpoints and one segment (checkpoint), or the kept
        final state plus the information buffer (reversible). Inputs,
        targets, parameters and gradients are not counted.
    buffer_bytes : int
        Bytes held by the information buffer (reversible BPTT; else 0).
    info_bits : float
        Information destroyed by the forward pass, in bits (reversible cells; else 0).
    mode : str
        The BPTT mode used.
    final_state : ndarray of float64, shape (B, state_size)
        The recurrent state after the last step (carry it into the next
        window for truncated BPTT).
    """
    stored_bytes: int
    buffer_bytes: int = 0
    info_bits: float = 0.0
    mode: str = "standard"
    final_state: Optional[np.ndarray] = None


class RecurrentModel:
    """Base class: sizes, loss, parameter layout, input checks and the public API.

    Parameters
    ----------
    n_in : int
        Input size, or vocabulary size when inputs are int token ids.
    n_hidden : int
        Hidden units ``H``.
    n_out : int
        Output classes (``loss="softmax"``) or output dimension (``loss="mse"``).
    loss : {"softmax", "mse"}
        Softmax cross-entropy, averaged over targets; or squared error
        averaged over all target elements.
    """

    #: BPTT modes the model supports; the first is the default.
    bptt_modes = ("standard", "checkpoint")
    #: Leading (time or grid) axes of the inputs: 1 for sequences, 2 for grids.
    n_lead = 1

    def __init__(self, n_in, n_hidden, n_out, loss="softmax"):
        self.n_in = positive_int(n_in, "n_in")
        self.n_hidden = positive_int(n_hidden, "n_hidden")
        self.n_out = positive_int(n_out, "n_out")
        if loss not in ("softmax", "mse"):
            raise ValueError(f"loss must be 'softmax' or 'mse', got {loss!r}")
        self.loss_kind = loss
        self.layout = ParamLayout(self._specs())

    # ----------------------------------------------------------------- layout
    def _specs(self):
        raise NotImplementedError

    @property
    def size(self):
        """Number of parameters (length of ``theta``)."""
        return self.layout.size

    @property
    def state_size(self):
        """Columns of the recurrent state per batch row (``H``; ``2H`` for LSTM-type cells)."""
        return self.n_hidden

    def init_params(self, seed=0, scale=1.0):
        """A fresh flat parameter vector (float64, shape ``(size,)``).

        Weights are uniform in ``+-scale / sqrt(fan_in)``; biases zero unless
        the model says otherwise. The same seed gives the same bits.
        """
        return self.layout.init(seed=seed, scale=scale)

    def params(self, theta):
        """Dict of named views into ``theta`` (no copies, also for a strided ``theta``)."""
        self.layout.check(theta)
        return self.layout.views(theta)

    def __repr__(self):
        return (f"{type(self).__name__}(n_in={self.n_in}, n_hidden={self.n_hidden}, "
                f"n_out={self.n_out}, loss={self.loss_kind!r})")

    # ----------------------------------------------------------------- checks
    def _batch(self, x, y):
        return check_batch(x, y, self.n_in, self.n_out, self.loss_kind, self.n_lead)

    def _mode(self, bptt):
        if bptt is None:
            return self.bptt_modes[0]
        if bptt not in self.bptt_modes:
            raise ValueError(f"bptt must be one of {self.bptt_modes} for "
                             f"{type(self).__name__}, got {bptt!r}")
        return bptt

    def _check_state(self, state0, B):
        if state0 is None:
            return None
        s = np.asarray(state0)
        if s.dtype.kind != "f" or s.shape != (B, self.state_size):
            raise ValueError(f"initial_state must be float of shape (B, state_size) = "
                             f"({B}, {self.state_size}), got {s.dtype} {s.shape}")
        if not np.isfinite(s).all():
            raise ValueError("initial_state contains NaN or inf")
        return np.ascontiguousarray(s, dtype=np.float64)

    def _segment(self, checkpoint_every, T):
        if checkpoint_every is None:
            return max(1, int(np.ceil(np.sqrt(T))))
        return positive_int(checkpoint_every, "checkpoint_every")

    # -------------------------------------------------------------------- API
    def loss_and_grad(self, theta, x, y, bptt=None, checkpoint_every=None,
                      return_stats=False, initial_state=None):
        """Loss and its gradient with respect to ``theta`` by BPTT.

        Parameters
        ----------
        theta : ndarray of float64, shape (size,)
        x : array_like
            Time-major: float ``(T, B, n_in)`` or int token ids ``(T, B)`` in
            ``[0, n_in)``; grids ``(rows, cols, B, n_in)`` or ``(rows, cols, B)``.
        y : array_like
            ``loss="softmax"``: int labels in ``[0, n_out)``, ``(T, B)`` (every
            step; grids ``(rows, cols, B)``) or ``(B,)`` (last step/cell only).
            ``loss="mse"``: float ``(T, B, n_out)`` (grids ``(rows, cols, B,
            n_out)``) or ``(B, n_out)``.
        bptt : str, optional
            One of :attr:`bptt_modes` (default: the first).
        checkpoint_every : int, optional
            Segment length ``k`` for ``bptt="checkpoint"`` (default ``ceil(sqrt(T))``).
        return_stats : bool
            Also return a :class:`BPTTStats`.
        initial_state : ndarray (B, state_size), optional
            Recurrent state before the first step (default zeros).

        Returns
        -------
        loss : float
        grad : ndarray of float64, shape (size,)
        stats : BPTTStats, only if ``return_stats``

        Raises
        ------
        ValueError
            Bad ``theta``, ``x``, ``y``, ``bptt``, ``checkpoint_every`` or
            ``initial_state`` (the message names the argument and the expected shape).
        FixedPointError
            Reversible cells: a value leaves the fixed-point range.
        ReversalError
            Reversible BPTT: the undone steps did not reproduce the original bits.
        """
        theta = self.layout.check(theta)
        batch = self._batch(x, y)
        mode = self._mode(bptt)
        k = self._segment(checkpoint_every, batch.lead[0])
        state0 = self._check_state(initial_state, batch.B)
        with blas_threads():
            loss, grad, info = self._run(theta, batch, mode, k, True, state0)
        loss = float(np.real(loss))
        if not np.isfinite(loss):
            raise DivergenceError(f"the loss is {loss}: the forward pass overflowed",
                                  hint="try a smaller init scale or learning rate")
        if not return_stats:
            return loss, grad
        stats = BPTTStats(stored_bytes=int(info["stored_bytes"]),
                          buffer_bytes=int(info.get("buffer_bytes", 0)),
                          info_bits=float(info.get("info_bits", 0.0)),
                          mode=mode, final_state=info.get("final_state"))
        return loss, grad, stats

    def loss(self, theta, x, y, initial_state=None):
        """The loss alone (a forward pass, nothing kept for a backward pass)."""
        theta = self.layout.check(theta)
        batch = self._batch(x, y)
        state0 = self._check_state(initial_state, batch.B)
        with blas_threads():
            loss, _, _ = self._run(theta, batch, self.bptt_modes[0], 1, False, state0)
        return float(np.real(loss))

    def hvp(self, theta, x, y, v, initial_state=None):
        """Exact Hessian-vector product ``H v`` of the loss, by the complex step.

        ``Hv = Im(grad(theta + i*eps*v)) / eps`` with ``eps = 1e-30``: the
        same kernels run in complex128, so no subtraction of nearby numbers
        happens and the result is exact to rounding (not a finite difference).

        Returns
        -------
        hv : ndarray of float64, shape (size,)
        """
        return self.grad_and_hvp(theta, x, y, v, initial_state=initial_state)[2]

    def grad_and_hvp(self, theta, x, y, v, initial_state=None):
        """``(loss, grad, Hv)`` from one complex-step pass (``grad`` = its real part)."""
        theta = self.layout.check(theta)
        v = self.layout.check(np.asarray(v, dtype=np.float64), name="v")
        batch = self._batch(x, y)
        state0 = self._check_state(initial_state, batch.B)
        thc = theta + 1j * COMPLEX_STEP * v
        with blas_threads():
            loss, g, _ = self._run(thc, batch, "standard", 1, True, state0)
        return float(loss.real), np.ascontiguousarray(g.real), \
            np.ascontiguousarray(g.imag / COMPLEX_STEP)

    def predict(self, theta, x, initial_state=None):
        """Outputs at every step (or cell).

        Returns
        -------
        out : ndarray of float64, shape (*lead, B, n_out)
            Softmax probabilities (``loss="softmax"``) or linear outputs (``"mse"``).
        """
        theta = self.layout.check(theta)
        xx, tokens, lead, B = check_x(x, self.n_in, self.n_lead)
        state0 = self._check_state(initial_state, B)
        with blas_threads():
            hs, _ = self._hidden(theta, xx, tokens, state0)
        p = self.layout.views(theta)
        h2 = np.ascontiguousarray(hs.reshape(-1, self.n_hidden))
        out = np.empty((h2.shape[0], self.n_out))
        (softmax_probs if self.loss_kind == "softmax" else linear_out)(h2, p["U"], p["b_y"], out)
        return out.reshape(hs.shape[:-1] + (self.n_out,))

    def final_state(self, theta, x, initial_state=None):
        """The recurrent state after the last step, float64 ``(B, state_size)``."""
        theta = self.layout.check(theta)
        xx, tokens, lead, B = check_x(x, self.n_in, self.n_lead)
        state0 = self._check_state(initial_state, B)
        with blas_threads():
            return self._hidden(theta, xx, tokens, state0)[1]

    # ------------------------------------------------------------------ hooks
    def _run(self, theta, batch, mode, k, want_grad, state0):
        raise NotImplementedError

    def _hidden(self, theta, x, tokens, state0):
        raise NotImplementedError
