"""Validation of model inputs and targets into a normalised :class:`Batch`.

Shapes are time-major. Sequences: ``x`` float ``(T, B, n_in)`` or int token
ids ``(T, B)`` in ``[0, n_in)``. Grids: ``x`` float ``(rows, cols, B, n_in)``
or int ``(rows, cols, B)``. Targets for ``loss="softmax"``: int labels per
step ``(T, B)`` (grids: per cell ``(rows, cols, B)``) or for the last
step/cell only ``(B,)``. For ``loss="mse"``: float ``(T, B, n_out)`` (grids
``(rows, cols, B, n_out)``) or last only ``(B, n_out)``.
"""
from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
    """A validated batch.

    Attributes
    ----------
    x : ndarray
        float64 ``(*lead, B, n_in)`` C-contiguous, or int64 token ids ``(*lead, B)``.
    tokens : bool
        Whether ``x`` holds token ids.
    lead : tuple of int
        ``(T,)`` for sequences, ``(rows, cols)`` for grids.
    B : int
    per_step : bool
        Targets at every step/cell (else only at the last).
    labels : ndarray of int64
        Softmax targets flattened to ``(n_targets,)`` (rows ordered as the
        flattened ``(*lead, B)``, or ``(B,)``); empty for mse.
    target : ndarray of float64
        MSE targets ``(n_targets, n_out)``; empty for softmax.
    scale : float
        ``1 / n_targets`` (softmax) or ``1 / (n_targets * n_out)`` (mse): the loss is a mean.
    """
    x: np.ndarray
    tokens: bool
    lead: tuple
    B: int
    per_step: bool
    labels: np.ndarray
    target: np.ndarray
    scale: float


def _shape_str(lead_names, extra):
    return "(" + ", ".join(lead_names + extra) + ")"


def check_x(x, n_in, n_lead=1, name="x"):
    """Validate inputs; return ``(x, tokens, lead, B)`` with ``x`` float64 or int64, C-contiguous."""
    lead_names = ["T"] if n_lead == 1 else ["rows", "cols"]
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype == bool or x.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be float {_shape_str(lead_names, ['B', 'n_in'])} or int "
                         f"token ids {_shape_str(lead_names, ['B'])}, got dtype {x.dtype}")
    if x.dtype.kind in "iu":
        if x.ndim != n_lead + 1:
            raise ValueError(f"{name}: int token ids must have shape "
                             f"{_shape_str(lead_names, ['B'])}, got {x.shape}")
        if x.size and (x.min() < 0 or x.max() >= n_in):
            bad = np.flatnonzero((x.ravel() < 0) | (x.ravel() >= n_in))[0]
            idx = tuple(int(i) for i in np.unravel_index(bad, x.shape))
            raise ValueError(f"{name}: token ids must be in [0, n_in={n_in}), got "
                             f"{int(x.ravel()[bad])} at index {idx}")
        xx = np.ascontiguousarray(x, dtype=np.int64)
        tokens = True
    else:
        if x.ndim != n_lead + 2 or x.shape[-1] != n_in:
            raise ValueError(f"{name} must have shape {_shape_str(lead_names, ['B', f'n_in={n_in}'])}"
                             f", got {x.shape}")
        xx = np.ascontiguousarray(x, dtype=np.float64)
        if not np.isfinite(xx).all():
            bad = np.flatnonzero(~np.isfinite(xx.ravel()))[0]
            idx = tuple(int(i) for i in np.unravel_index(bad, xx.shape))
            raise ValueError(f"{name} contains NaN or inf (first at index {idx})")
        tokens = False
    lead = tuple(int(s) for s in xx.shape[:n_lead])
    B = int(xx.shape[n_lead])
    if min(lead + (B,)) < 1:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    return xx, tokens, lead, B


def check_batch(x, y, n_in, n_out, loss, n_lead=1):
    """Validate ``x`` and targets ``y`` for a model; return a :class:`Batch`."""
    xx, tokens, lead, B = check_x(x, n_in, n_lead)
    lead_names = ["T"] if n_lead == 1 else ["rows", "cols"]
    y = np.asarray(y)
    if loss == "softmax":
        if y.dtype == bool or y.dtype.kind not in "iu":
            raise ValueError(f"y must be int class labels for loss='softmax', got dtype {y.dtype}")
        if y.shape == lead + (B,):
            per_step = True
        elif y.shape == (B,):
            per_step = False
        else:
            raise ValueError(f"y must have shape {_shape_str(lead_names, ['B'])} = {lead + (B,)} "
                             f"(every step) or (B,) = ({B},) (last step), got {y.shape}")
        if y.min() < 0 or y.max() >= n_out:
            bad = np.flatnonzero((y.ravel() < 0) | (y.ravel() >= n_out))[0]
            idx = tuple(int(i) for i in np.unravel_index(bad, y.shape))
            raise ValueError(f"y: labels must be in [0, n_out={n_out}), got "
                             f"{int(y.ravel()[bad])} at index {idx}")
        labels = np.ascontiguousarray(y.reshape(-1), dtype=np.int64)
        target = np.zeros((0, n_out))
        scale = 1.0 / labels.shape[0]
    elif loss == "mse":
        if y.dtype == bool or y.dtype.kind not in "iuf":
            raise ValueError(f"y must be float targets for loss='mse', got dtype {y.dtype}")
        if y.shape == lead + (B, n_out):
            per_step = True
        elif y.shape == (B, n_out):
            per_step = False
        else:
            raise ValueError(f"y must have shape {_shape_str(lead_names, ['B', 'n_out'])} = "
                             f"{lead + (B, n_out)} (every step) or (B, n_out) = ({B}, {n_out}) "
                             f"(last step), got {y.shape}")
        target = np.ascontiguousarray(y.reshape(-1, n_out), dtype=np.float64)
        if not np.isfinite(target).all():
            raise ValueError("y contains NaN or inf")
        labels = np.zeros(0, dtype=np.int64)
        scale = 1.0 / target.size
    else:
        raise ValueError(f"loss must be 'softmax' or 'mse', got {loss!r}")
    return Batch(xx, tokens, lead, B, per_step, labels, target, scale)
