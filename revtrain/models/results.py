"""What a model call returns besides the loss and gradient: BPTT statistics, input gradients."""
from typing import NamedTuple, Optional

import numpy as np


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


class InputGrads(NamedTuple):
    """Gradients of the loss with respect to a call's inputs (``input_grad=True``).

    Attributes
    ----------
    x : ndarray of float64, shape (T, B, n_in), or None
        dL/dx for float inputs; None for token ids (the embedding table, if
        any, gets its gradient in ``grad``).
    initial_state : ndarray of float64, shape (B, state_size)
        dL/d initial_state, every layer's block (zeros-initialised state
        included). Reversible cells differentiate through the rounding to
        fixed point as the identity (straight-through), like every gradient.
    """
    x: Optional[np.ndarray]
    initial_state: np.ndarray


def no_input_grad(model, want_inputs):
    """ValueError for ``input_grad=True`` on a model that does not provide it (the grids)."""
    if want_inputs:
        raise ValueError(f"input_grad=True is not available for {type(model).__name__} (grid "
                         f"models have no initial state); use a sequence model")
