"""The interface shared by every recurrent model.

A model is a stateless description (sizes, loss); its parameters live in one
flat float64 vector ``theta`` (see :class:`~revtrain.params.ParamLayout`).
Subclasses provide the parameter layout and two hooks:

``_layer_specs(n_in_layer)``
    list of :class:`~revtrain.params.ParamSpec` of one layer reading
    ``n_in_layer`` inputs (the base class adds the embedding, names the
    blocks per layer and appends the output layer ``U``, ``b_y``); or
    ``_specs()`` for a model that does not stack (MDRNN, RevMDRNN).
``_run(theta, batch, mode, k, want_grad, state0, masks, want_inputs)``
    one forward (and backward) pass; ``theta`` is float64 or complex128 (the
    complex-step Hessian-vector product runs the same kernels on
    ``theta + i*eps*v``); ``masks`` a :class:`~revtrain.models.dropout.DropoutMasks` or None.
    Returns ``(loss, grad, info)`` with ``grad`` of ``theta``'s dtype (None
    unless ``want_grad``) and ``info`` a dict with at least ``stored_bytes``
    and ``final_state`` (and, with ``want_inputs``, ``dx`` and ``dstate0``).
``_hidden(theta, batch, state0)``
    float64 hidden states that feed the output layer, ``(*lead, B, n_hidden)``,
    and the final state.
"""
import numpy as np

from ..batch import check_batch, check_x
from ..params import ParamLayout
from .._threads import blas_threads
from .._kernels.head import softmax_probs, linear_out
from .._checks import positive_int, nonneg_int, number_in_range, int_in_range
from ..params import ParamSpec
from .dropout import draw_masks
from ..errors import DivergenceError
from .results import BPTTStats, InputGrads

#: Step of the complex-step Hessian-vector product.
COMPLEX_STEP = 1e-30
#: Most layers a stack may have (a bound that catches typos such as 1000000000).
MAX_LAYERS = 64


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
    n_layers : int >= 1
        Stacked layers of the cell (torch.nn.LSTM's convention: layer
        ``l > 0`` reads layer ``l-1``'s hidden state). With ``n_layers > 1``
        the parameter blocks are named ``layer{l}.<name>`` and each layer is
        one parameter group ``"layer{l}"``; with one layer the names and
        groups are those of the single cell.
    embed_dim : int, optional
        Size of an embedding table ``embed`` (n_in, embed_dim) (group
        ``"embed"``) for token inputs: layer 0 reads ``embed[x_t]``. None
        (default) keeps the one-hot form (token ids select rows of layer 0's
        input weights). Needs int token inputs.
    dropout : float in [0, 1)
        Variational dropout rate: one mask per window and place (embedding
        output, between layers, top output), the same at every step, never
        on the recurrent state. Applied only when a call passes
        ``dropout_seed`` (training); evaluation, sampling and ``hvp`` run
        without it unless asked.
    dtype : {"float64", "float32"}
        Float type of the activations and gradients (keyword). A float32
        model takes ``theta`` in float64 (the default of :meth:`init_params`
        and the optimisers; it computes with a float32 copy) or in float32
        (used as it is, no copy); the gradient has ``theta``'s dtype.
        Reversible cells keep their int64 fixed-point state, so reversal
        stays exact. The complex-step ``hvp`` (and so hypergradients) need
        float64. Available where :attr:`supports_float32`.

    The recurrent state of a stack is the layers' states side by side:
    ``(B, state_size)`` with layer ``l`` in columns
    ``[l * layer_state_size, (l+1) * layer_state_size)``.
    """

    #: BPTT modes the model supports; the first is the default.
    bptt_modes = ("standard", "checkpoint")
    #: Leading (time or grid) axes of the inputs: 1 for sequences, 2 for grids.
    n_lead = 1
    #: Whether the model takes ``n_layers > 1``, ``embed_dim`` and ``dropout``.
    stackable = True
    #: Whether ``dtype="float32"`` is available.
    supports_float32 = False

    def __init__(self, n_in, n_hidden, n_out, loss="softmax", *, n_layers=1, embed_dim=None,
                 dropout=0.0, dtype="float64"):
        self.n_in = positive_int(n_in, "n_in")
        self.n_hidden = positive_int(n_hidden, "n_hidden")
        self.n_out = positive_int(n_out, "n_out")
        if loss not in ("softmax", "mse"):
            raise ValueError(f"loss must be 'softmax' or 'mse', got {loss!r}")
        self.loss_kind = loss
        self.n_layers = int_in_range(n_layers, "n_layers", 1, MAX_LAYERS)
        self.embed_dim = positive_int(embed_dim, "embed_dim", none_ok=True)
        self.dropout = float(number_in_range(dropout, "dropout", 0.0, 1.0, hi_open=True))
        if not self.stackable and (self.n_layers != 1 or self.embed_dim is not None
                                   or self.dropout):
            raise ValueError(f"{type(self).__name__} does not stack layers: n_layers must be 1, "
                             f"got {n_layers!r}")
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        if dtype == "float32" and not self.supports_float32:
            raise ValueError(f"dtype='float32' is not available for {type(self).__name__} yet; "
                             f"use dtype='float64'")
        self.dtype = dtype
        self.layout = ParamLayout(self._specs())

    def _overflow_hint(self):
        hint = "try a smaller init scale or learning rate"
        if self.dtype != "float64":
            hint += f", or dtype='float64' ({self.dtype} overflows sooner)"
        return hint

    def _float64_only(self, what):
        """ValueError when a float32 model is asked for ``what`` (which needs float64)."""
        if self.dtype != "float64":
            raise ValueError(f"{what} need float64: this {type(self).__name__} computes in "
                             f"{self.dtype}; build the model with dtype='float64' for them")

    def _stack_repr(self):
        """``, n_layers=.., embed_dim=.., dropout=..`` for the arguments that are not the default."""
        out = ""
        if self.n_layers != 1:
            out += f", n_layers={self.n_layers}"
        if self.embed_dim is not None:
            out += f", embed_dim={self.embed_dim}"
        if self.dropout:
            out += f", dropout={self.dropout!r}"
        if self.dtype != "float64":
            out += f", dtype={self.dtype!r}"
        return out

    # ----------------------------------------------------------------- layout
    def _layer_specs(self, n_in_layer):
        raise NotImplementedError

    def _layer_input_size(self, layer):
        """Inputs of layer ``layer``: the embedding or input size for layer 0, else ``H``."""
        if layer > 0:
            return self.n_hidden
        return self.n_in if self.embed_dim is None else self.embed_dim

    def _layer_name(self, layer, name):
        return name if self.n_layers == 1 else f"layer{layer}.{name}"

    def _specs(self):
        specs = []
        if self.embed_dim is not None:
            specs.append(ParamSpec("embed", (self.n_in, self.embed_dim), "embedding", "embed"))
        for l in range(self.n_layers):
            for s in self._layer_specs(self._layer_input_size(l)):
                if self.n_layers > 1:
                    s = s._replace(name=f"layer{l}.{s.name}", group=f"layer{l}")
                specs.append(s)
        return specs + [ParamSpec("U", (self.n_hidden, self.n_out), "uniform", "output"),
                        ParamSpec("b_y", (self.n_out,), "zeros", "output")]

    def layer_params(self, views):
        """Per layer, a dict of that layer's blocks under their short names (``V``, ``W``, ...).

        ``views`` is a dict from :meth:`params` (or ``layout.views``) of
        parameters or gradients; the dicts hold the same views (no copies).
        """
        if self.n_layers == 1:
            return [views]
        out = []
        for l in range(self.n_layers):
            pre = f"layer{l}."
            out.append({k[len(pre):]: v for k, v in views.items() if k.startswith(pre)})
        return out

    @property
    def size(self):
        """Number of parameters (length of ``theta``)."""
        return self.layout.size

    @property
    def layer_state_size(self):
        """Columns of one layer's recurrent state (``H``; ``2H`` for LSTM-type cells)."""
        return self.n_hidden

    @property
    def state_size(self):
        """Columns of the recurrent state per batch row: ``n_layers * layer_state_size``."""
        return self.n_layers * self.layer_state_size

    def layer_states(self, state):
        """The per-layer blocks ``state[:, l*S:(l+1)*S]`` of a stack's state (views), a list."""
        S = self.layer_state_size
        if np.ndim(state) != 2 or np.shape(state)[1] != self.state_size:
            raise ValueError(f"state must have shape (B, state_size) = (B, {self.state_size}) "
                             f"(n_layers {self.n_layers} x layer_state_size {S}), got "
                             f"{np.shape(state)}")
        return [state[:, l * S:(l + 1) * S] for l in range(self.n_layers)]

    # ---------------------------------------------------------------- dropout
    def dropout_masks(self, dropout_seed, B):
        """The :class:`~revtrain.models.dropout.DropoutMasks` of one window of ``B`` rows, or None.

        None when ``dropout`` is 0 or ``dropout_seed`` is None. Otherwise the
        masks are drawn from ``numpy.random.default_rng(dropout_seed)`` in the
        order embed, between (layer 0 up), top: the same seed gives the same bits.
        """
        if dropout_seed is not None:
            dropout_seed = nonneg_int(dropout_seed, "dropout_seed")
        if dropout_seed is None or not self.dropout:
            return None
        return draw_masks(dropout_seed, B, self.dropout, self.embed_dim, self.n_hidden,
                          self.n_layers)

    def init_params(self, seed=0, scale=1.0):
        """A fresh flat parameter vector (float64, shape ``(size,)``).

        Weights are uniform in ``+-scale / sqrt(fan_in)``; biases zero unless
        the model says otherwise. The same seed gives the same bits.
        """
        return self.layout.init(seed=seed, scale=scale)

    def params(self, theta):
        """Dict of named views into ``theta`` (no copies, also for a strided ``theta``; float32
        ``theta`` too for a float32 model, as :meth:`loss_and_grad` takes it)."""
        self.layout.check(theta, float32_ok=getattr(self, "dtype", "float64") == "float32")
        return self.layout.views(theta)

    def __repr__(self):
        return (f"{type(self).__name__}(n_in={self.n_in}, n_hidden={self.n_hidden}, "
                f"n_out={self.n_out}, loss={self.loss_kind!r}{self._stack_repr()})")

    # ----------------------------------------------------------------- checks
    def _check_theta(self, theta):
        """``layout.check(theta)``; a float32 model also takes float32 ``theta`` (used as it is),
        and checks a float64 one's values are within float32's range (a larger one would
        become inf in the float32 copy and fail later, misleadingly)."""
        f32 = getattr(self, "dtype", "float64") == "float32"
        theta = self.layout.check(theta, float32_ok=f32)
        if f32 and theta.dtype != np.float32:
            big = np.abs(theta.real) > np.finfo(np.float32).max
            if big.any():
                i = int(np.flatnonzero(big)[0])
                raise ValueError(f"theta[{i}] = {float(theta[i].real)!r} (in '{self.layout.name_of(i)}') is "
                                 f"beyond float32's range (|value| <= 3.4e38) of this "
                                 f"dtype='float32' model; use dtype='float64'")
        return theta

    def _need_tokens(self, x):
        """An embedding model reads int token ids: say so before any shape check."""
        if self.embed_dim is None:
            return
        dt = np.asarray(x).dtype
        if dt == bool or dt.kind not in "iu":
            raise ValueError(f"x: a model with embed_dim={self.embed_dim} reads int token ids "
                             f"(T, B) in [0, n_in={self.n_in}), got dtype {dt} (cast token ids "
                             f"with x.astype(int); use embed_dim=None for float inputs)")

    def _batch(self, x, y):
        self._need_tokens(x)
        return check_batch(x, y, self.n_in, self.n_out, self.loss_kind, self.n_lead)

    def _x(self, x):
        self._need_tokens(x)
        return check_x(x, self.n_in, self.n_lead)

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
            stack = "" if self.n_layers == 1 else (
                f"; state_size = n_layers ({self.n_layers}) x layer_state_size "
                f"({self.layer_state_size}), layer l in columns [l*{self.layer_state_size}, "
                f"(l+1)*{self.layer_state_size})")
            raise ValueError(f"initial_state must be float of shape (B, state_size) = "
                             f"({B}, {self.state_size}), got {s.dtype} {s.shape}{stack}")
        if not np.isfinite(s).all():
            raise ValueError("initial_state contains NaN or inf")
        return np.ascontiguousarray(s, dtype=np.float64)

    def _segment(self, checkpoint_every, T):
        if checkpoint_every is None:
            return max(1, int(np.ceil(np.sqrt(T))))
        return positive_int(checkpoint_every, "checkpoint_every")

    # -------------------------------------------------------------------- API
    def loss_and_grad(self, theta, x, y, bptt=None, checkpoint_every=None,
                      return_stats=False, initial_state=None, dropout_seed=None,
                      input_grad=False):
        """Loss and its gradient with respect to ``theta`` by BPTT.

        Parameters
        ----------
        theta : ndarray of float64 (or float32 for a ``dtype="float32"`` model), shape (size,)
        x : array_like
            Time-major: float ``(T, B, n_in)`` or int token ids ``(T, B)`` in
            ``[0, n_in)`` (token ids only, with ``embed_dim``); grids
            ``(rows, cols, B, n_in)`` or ``(rows, cols, B)``.
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
            Also return a :class:`BPTTStats` (last).
        initial_state : ndarray (B, state_size), optional
            Recurrent state before the first step, every layer's block
            (default zeros).
        dropout_seed : int >= 0, optional
            Draw this window's variational dropout masks from this seed
            (:meth:`dropout_masks`); None (default) runs without dropout.
            Checked, but without effect, when ``dropout`` is 0.
        input_grad : bool
            Also return :class:`InputGrads`: dL/dx (float inputs) and
            dL/d initial_state, for composing the model with other code.

        Returns
        -------
        loss : float
        grad : ndarray of ``theta``'s dtype, shape (size,)
        input_grads : InputGrads, only if ``input_grad``
        stats : BPTTStats, only if ``return_stats``

        Raises
        ------
        ValueError
            Bad ``theta``, ``x``, ``y``, ``bptt``, ``checkpoint_every``,
            ``initial_state`` or ``dropout_seed`` (the message names the
            argument and the expected shape).
        FixedPointError
            Reversible cells: a value leaves the fixed-point range (the message
            names the layer of a stack).
        ReversalError
            Reversible BPTT: the undone steps did not reproduce the original
            bits (the message names the layer of a stack).
        """
        theta = self._check_theta(theta)
        if not isinstance(input_grad, (bool, np.bool_)):
            raise ValueError(f"input_grad must be True or False, got {input_grad!r}")
        batch = self._batch(x, y)
        mode = self._mode(bptt)
        k = self._segment(checkpoint_every, batch.lead[0])
        state0 = self._check_state(initial_state, batch.B)
        masks = self.dropout_masks(dropout_seed, batch.B)
        with blas_threads():
            loss, grad, info = self._run(theta, batch, mode, k, True, state0, masks,
                                         bool(input_grad))
        loss = float(np.real(loss))
        if not np.isfinite(loss):
            raise DivergenceError(f"the loss is {loss}: the forward pass overflowed",
                                  hint=self._overflow_hint())
        if not np.isfinite(grad).all():
            i = int(np.flatnonzero(~np.isfinite(grad))[0])
            raise DivergenceError(f"the gradient has NaN or inf (first in "
                                  f"'{self.layout.name_of(i)}'): the backward pass overflowed",
                                  hint=self._overflow_hint())
        out = [loss, grad]
        if input_grad:
            out.append(InputGrads(info.get("dx"), info["dstate0"]))
        if return_stats:
            out.append(BPTTStats(stored_bytes=int(info["stored_bytes"]),
                                 buffer_bytes=int(info.get("buffer_bytes", 0)),
                                 info_bits=float(info.get("info_bits", 0.0)),
                                 mode=mode, final_state=info.get("final_state")))
        return tuple(out)

    def loss(self, theta, x, y, initial_state=None, dropout_seed=None):
        """The loss alone (a forward pass, nothing kept for a backward pass).

        ``dropout_seed`` as in :meth:`loss_and_grad` (default: no dropout).
        """
        theta = self._check_theta(theta)
        batch = self._batch(x, y)
        state0 = self._check_state(initial_state, batch.B)
        masks = self.dropout_masks(dropout_seed, batch.B)
        with blas_threads():
            loss, _, _ = self._run(theta, batch, self.bptt_modes[0], 1, False, state0, masks,
                                   False)
        return float(np.real(loss))

    def hvp(self, theta, x, y, v, initial_state=None, dropout_seed=None):
        """Exact Hessian-vector product ``H v`` of the loss, by the complex step.

        ``Hv = Im(grad(theta + i*eps*v)) / eps`` with ``eps = 1e-30``: the
        same kernels run in complex128, so no subtraction of nearby numbers
        happens and the result is exact to rounding (not a finite difference).
        No dropout unless ``dropout_seed`` is given.

        Returns
        -------
        hv : ndarray of float64, shape (size,)
        """
        return self.grad_and_hvp(theta, x, y, v, initial_state=initial_state,
                                 dropout_seed=dropout_seed)[2]

    def grad_and_hvp(self, theta, x, y, v, initial_state=None, dropout_seed=None):
        """``(loss, grad, Hv)`` from one complex-step pass (``grad`` = its real part)."""
        theta = self._check_theta(theta)
        v = self.layout.check(np.asarray(v, dtype=np.float64), name="v")
        batch = self._batch(x, y)
        state0 = self._check_state(initial_state, batch.B)
        masks = self.dropout_masks(dropout_seed, batch.B)
        thc = theta + 1j * COMPLEX_STEP * v
        with blas_threads():
            loss, g, _ = self._run(thc, batch, "standard", 1, True, state0, masks, False)
        return float(loss.real), np.ascontiguousarray(g.real), \
            np.ascontiguousarray(g.imag / COMPLEX_STEP)

    def predict(self, theta, x, initial_state=None):
        """Outputs at every step (or cell), without dropout.

        Returns
        -------
        out : ndarray of float64, shape (*lead, B, n_out)
            Softmax probabilities (``loss="softmax"``) or linear outputs (``"mse"``).
        """
        theta = self._check_theta(theta)
        xx, tokens, lead, B = self._x(x)
        state0 = self._check_state(initial_state, B)
        with blas_threads():
            hs, _ = self._hidden(theta, xx, tokens, state0)
        p = self.layout.views(theta.astype(np.float64, copy=False))   # the head in float64
        h2 = np.ascontiguousarray(hs.reshape(-1, self.n_hidden))
        out = np.empty((h2.shape[0], self.n_out))
        (softmax_probs if self.loss_kind == "softmax" else linear_out)(h2, p["U"], p["b_y"], out)
        return out.reshape(hs.shape[:-1] + (self.n_out,))

    def final_state(self, theta, x, initial_state=None):
        """The recurrent state after the last step, float64 ``(B, state_size)``."""
        theta = self._check_theta(theta)
        xx, tokens, lead, B = self._x(x)
        state0 = self._check_state(initial_state, B)
        with blas_threads():
            return self._hidden(theta, xx, tokens, state0)[1]

    # ------------------------------------------------------------------ hooks
    def _run(self, theta, batch, mode, k, want_grad, state0, masks, want_inputs):
        raise NotImplementedError

    def _hidden(self, theta, x, tokens, state0):
        raise NotImplementedError
