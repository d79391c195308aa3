"""The Elman RNN with a softmax or linear output layer."""
import numpy as np

from ..params import ParamSpec
from .sequence import SequenceModel, project, project_grad
from .._kernels.rnn import rnn_forward, rnn_backward


class RNN(SequenceModel):
    """Elman RNN: ``h_t = tanh(x_t V + h_{t-1} W + b_h)``, ``yhat_t = softmax(h_t U + b_y)``.

    Parameters (views of ``theta``): ``V`` (n_in, H), ``W`` (H, H), ``b_h`` (H,),
    ``U`` (H, n_out), ``b_y`` (n_out,). Row-vector convention: states are rows
    of ``(B, H)`` arrays. See :class:`~revtrain.models.base.RecurrentModel`
    for the API and :mod:`revtrain.batch` for shapes.

    Stacks: ``n_layers``, ``embed_dim`` and ``dropout`` (keywords) as described
    in :class:`~revtrain.models.base.RecurrentModel`; the blocks above are then
    per layer (``layer{l}.<name>``, layer 0 reading ``n_in`` or ``embed_dim``
    inputs and the others ``H``), with one ``U``, ``b_y``.
    """

    def _layer_specs(self, D):
        H = self.n_hidden
        return [ParamSpec("V", (D, H), "uniform", "input"),
                ParamSpec("W", (H, H), "uniform", "recurrent"),
                ParamSpec("b_h", (H,), "zeros", "bias")]

    def _workspace(self, k, B, dtype):
        H = self.n_hidden
        return {"h": np.empty((k + 1, B, H), dtype=dtype),
                "a": np.empty((k, B, H), dtype=dtype)}

    def _forward(self, p, x_seg, tokens, state, ws, k):
        hs, P = ws["h"][:k + 1], ws["a"][:k]
        project(x_seg, tokens, p["V"], P)
        hs[0] = state
        rnn_forward(P, p["W"], p["b_h"], hs)
        return hs[k].copy()

    def _backward(self, p, g, x_seg, tokens, ws, k, dH, dstate, dx=None):
        H = self.n_hidden
        hs, dA = ws["h"][:k + 1], ws["a"][:k]     # the projections are no longer needed
        B = hs.shape[1]
        rnn_backward(hs, dH, p["W"], dstate, dA)
        dA2 = dA.reshape(k * B, H)
        g["W"] += np.dot(hs[:k].reshape(k * B, H).T, dA2)
        g["b_h"] += dA2.sum(axis=0)
        project_grad(x_seg, tokens, dA, g["V"], p["V"], dx)
