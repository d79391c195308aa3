"""The standard LSTM with a softmax or linear output layer."""
import numpy as np

from ..params import ParamSpec
from .sequence import SequenceModel, project, project_grad
from .._kernels.lstm import lstm_forward, lstm_backward
from .._kernels.gemm import matmul_tn_add


class LSTM(SequenceModel):
    """Long short-term memory network (no peepholes), trained by stored or checkpointed BPTT.

    With pre-activations ``A_t = x_t @ W_x + h_{t-1} @ W_h + b`` (row-vector
    convention, columns ordered ``[f | i | o | g]``, each ``H`` wide)::

        f_t, i_t, o_t = sigmoid(A_t[:, :H]), sigmoid(A_t[:, H:2H]), sigmoid(A_t[:, 2H:3H])
        g_t = tanh(A_t[:, 3H:])
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(c_t)
        yhat_t = softmax(h_t @ U + b_y)        (or h_t @ U + b_y for loss="mse")

    The recurrent state of a layer is ``[h | c]``, shape ``(B, 2H)``
    (``layer_state_size = 2H``; ``initial_state`` and ``final_state`` hold
    one such block per layer).

    Parameters (views of ``theta``, in this order): ``W_x`` (n_in, 4H) group
    "input"; ``W_h`` (H, 4H) "recurrent"; ``b_f`` (H,) "bias", the forget-gate
    bias, initialised to **1** (so that the cell keeps its memory at the start
    of training); ``b_iog`` (3H,) "bias", the input, output and candidate
    biases, initialised to 0; ``U`` (H, n_out), ``b_y`` (n_out,) "output".
    ``b_f`` and ``b_iog`` are adjacent in ``theta``: together they are the
    ``4H`` bias ``b`` of the formula above. Weights are uniform in
    ``+-scale/sqrt(fan_in)``.

    Per step the kernels do one ``(B, H) x (H, 4H)`` product forward and one
    backward; input projections and weight gradients are single GEMMs over
    all ``k*B`` rows of a segment (token ids gather / scatter-add rows of
    ``W_x``). ``stats.stored_bytes`` counts the gates ``(k, B, 4H)``, ``h``
    and ``c`` ``(k+1, B, H)`` each and ``tanh(c)`` ``(k, B, H)`` of one
    segment (``k = T`` for standard BPTT) plus the checkpointed states.

    See :class:`~revtrain.models.base.RecurrentModel` for the API and
    :mod:`revtrain.batch` for shapes.

    Stacks: ``n_layers``, ``embed_dim`` and ``dropout`` (keywords) as described
    in :class:`~revtrain.models.base.RecurrentModel`; the blocks above are then
    per layer (``layer{l}.<name>``, layer 0 reading ``n_in`` or ``embed_dim``
    inputs and the others ``H``), with one ``U``, ``b_y``.
    """

    def _layer_specs(self, D):
        H = self.n_hidden
        return [ParamSpec("W_x", (D, 4 * H), "uniform", "input"),
                ParamSpec("W_h", (H, 4 * H), "uniform", "recurrent"),
                ParamSpec("b_f", (H,), "ones", "bias"),
                ParamSpec("b_iog", (3 * H,), "zeros", "bias")]

    @property
    def layer_state_size(self):
        """Columns of one layer's recurrent state ``[h | c]``: ``2H``."""
        return 2 * self.n_hidden

    def _workspace(self, k, B, dtype):
        H = self.n_hidden
        return {"h": np.empty((k + 1, B, H), dtype=dtype),
                "c": np.empty((k + 1, B, H), dtype=dtype),
                "gates": np.empty((k, B, 4 * H), dtype=dtype),
                "tanh_c": np.empty((k, B, H), dtype=dtype)}

    def _forward(self, p, x_seg, tokens, state, ws, k):
        H = self.n_hidden
        G = ws["gates"][:k]
        hs, cs = ws["h"][:k + 1], ws["c"][:k + 1]
        project(x_seg, tokens, p["W_x"], G)
        hs[0] = state[:, :H]
        cs[0] = state[:, H:]
        b = np.concatenate((p["b_f"], p["b_iog"]))
        Z = np.empty((state.shape[0], 4 * H), dtype=G.dtype)
        lstm_forward(G, p["W_h"], b, hs, cs, ws["tanh_c"][:k], Z)
        return np.concatenate((hs[k], cs[k]), axis=1)

    def _backward(self, p, g, x_seg, tokens, ws, k, dH, dstate, dx=None):
        H = self.n_hidden
        G = ws["gates"][:k]
        hs, cs = ws["h"][:k + 1], ws["c"][:k + 1]
        B = hs.shape[1]
        dh = np.ascontiguousarray(dstate[:, :H])
        dc = np.ascontiguousarray(dstate[:, H:])
        lstm_backward(G, cs, ws["tanh_c"][:k], dH, p["W_h"], dh, dc)   # G now holds dL/dA
        dstate[:, :H] = dh
        dstate[:, H:] = dc
        dA2 = G.reshape(k * B, 4 * H)
        matmul_tn_add(hs[:k].reshape(k * B, H), dA2, g["W_h"], np.empty_like(g["W_h"]))
        db = dA2.sum(axis=0)
        g["b_f"] += db[:H]
        g["b_iog"] += db[H:]
        project_grad(x_seg, tokens, G, g["W_x"], p["W_x"], dx)
