"""The gated recurrent unit (GRU) with a softmax or linear output layer."""
import numpy as np

from ..params import ParamSpec
from .sequence import SequenceModel, project, project_grad
from .._kernels.gru import gru_forward, gru_backward


class GRU(SequenceModel):
    """Gated recurrent unit (Cho et al. 2014; the reset gate acts before the recurrent product).

    Row-vector convention (states are rows of ``(B, H)`` arrays)::

        z_t   = sigmoid(x_t Wz + h_{t-1} Uz + bz)            update gate
        r_t   = sigmoid(x_t Wr + h_{t-1} Ur + br)            reset gate
        n_t   = tanh(x_t Wn + (r_t * h_{t-1}) Un + bn)       candidate
        h_t   = (1 - z_t) * n_t + z_t * h_{t-1}
        yhat_t = softmax(h_t U + b_y)      (or h_t U + b_y for loss="mse")

    (PyTorch's ``nn.GRU`` instead uses ``r * (h Un + b_hn)``.)

    Parameters (views of ``theta``): ``W_x`` (n_in, 3H) = ``[Wz | Wr | Wn]``
    (group "input"), ``W_h`` (H, 3H) = ``[Uz | Ur | Un]`` ("recurrent"),
    ``b`` (3H,) = ``[bz, br, bn]`` ("bias"), ``U`` (H, n_out) and ``b_y``
    (n_out,) ("output"). Token ids select rows of ``W_x``. See
    :class:`~revtrain.models.base.RecurrentModel` for the API and
    :mod:`revtrain.batch` for shapes; the loss is a mean over targets.

    Each step is two products, ``(B, H) x (H, 2H)`` for ``[z, r]`` and
    ``(B, H) x (H, H)`` for the candidate. Stored for the backward pass per
    step: ``h``, ``[z, r]``, ``n``, ``r * h_{t-1}`` and the ``3H``-wide input
    projection buffer (reused for the pre-activation gradients), ``8 B H``
    float64 numbers.

    Stacks: ``n_layers``, ``embed_dim`` and ``dropout`` (keywords) as described
    in :class:`~revtrain.models.base.RecurrentModel`; the blocks above are then
    per layer (``layer{l}.<name>``, layer 0 reading ``n_in`` or ``embed_dim``
    inputs and the others ``H``), with one ``U``, ``b_y``.
    """

    def _layer_specs(self, D):
        H = self.n_hidden
        return [ParamSpec("W_x", (D, 3 * H), "uniform", "input"),
                ParamSpec("W_h", (H, 3 * H), "uniform", "recurrent"),
                ParamSpec("b", (3 * H,), "zeros", "bias")]

    def _workspace(self, k, B, dtype):
        H = self.n_hidden
        return {"h": np.empty((k + 1, B, H), dtype=dtype),
                "a": np.empty((k, B, 3 * H), dtype=dtype),
                "zr": np.empty((k, B, 2 * H), dtype=dtype),
                "n": np.empty((k, B, H), dtype=dtype),
                "rh": np.empty((k, B, H), dtype=dtype)}

    def _split(self, p):
        """Contiguous copies of the gate and candidate blocks of ``W_h``."""
        H = self.n_hidden
        Wh = p["W_h"]
        return np.ascontiguousarray(Wh[:, :2 * H]), np.ascontiguousarray(Wh[:, 2 * H:])

    def _forward(self, p, x_seg, tokens, state, ws, k):
        hs, P = ws["h"][:k + 1], ws["a"][:k]
        project(x_seg, tokens, p["W_x"], P)
        hs[0] = state
        Wzr, Wn = self._split(p)
        gru_forward(P, Wzr, Wn, p["b"], hs, ws["zr"][:k], ws["n"][:k], ws["rh"][:k])
        return hs[k].copy()

    def _backward(self, p, g, x_seg, tokens, ws, k, dH, dstate, dx=None):
        H = self.n_hidden
        hs, dA = ws["h"][:k + 1], ws["a"][:k]     # the projections are no longer needed
        dzr, dn, rh = ws["zr"][:k], ws["n"][:k], ws["rh"][:k]
        B = hs.shape[1]
        Wzr, Wn = self._split(p)
        tmp = np.empty((B, H), dtype=hs.dtype)
        gru_backward(hs, dzr, dn, dH, Wzr, Wn, dstate, dA, tmp)
        gWh = g["W_h"]
        gWh[:, :2 * H] += np.dot(hs[:k].reshape(k * B, H).T, dzr.reshape(k * B, 2 * H))
        gWh[:, 2 * H:] += np.dot(rh.reshape(k * B, H).T, dn.reshape(k * B, H))
        g["b"] += dA.reshape(k * B, 3 * H).sum(axis=0)
        project_grad(x_seg, tokens, dA, g["W_x"], p["W_x"], dx)
