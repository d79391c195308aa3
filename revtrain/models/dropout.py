"""Variational dropout masks: one per window and place, the same at every step.

Gal & Ghahramani (2016); MacKay et al. (2018) used it for reversible RNNs.
A mask multiplies a layer's *input* (the embedding output, a lower layer's
output) or the top output, never the recurrent state, so exact reversal is
untouched. Masks are ``O(n_layers * B * H)`` numbers whatever ``T`` is.
"""
from typing import NamedTuple, Optional

import numpy as np


class DropoutMasks(NamedTuple):
    """Variational dropout masks of one window: one per place, the same at every step.

    Each is float64 ``(B, width)`` holding 0 (dropped) or ``1 / (1 - p)``
    (kept), so the expected input is unchanged.

    Attributes
    ----------
    embed : ndarray (B, embed_dim) or None
        On the embedding output (None without an embedding).
    between : tuple of ndarray (B, H)
        ``between[l]`` on layer ``l``'s output where layer ``l+1`` reads it
        (``n_layers - 1`` masks).
    top : ndarray (B, H)
        On the top layer's output, before the output layer.
    """
    embed: Optional[np.ndarray]
    between: tuple
    top: np.ndarray


def draw_masks(seed, B, rate, embed_dim, n_hidden, n_layers):
    """Draw the :class:`DropoutMasks` of one window from ``numpy.random.default_rng(seed)``.

    Order: embed ``(B, embed_dim)`` (if ``embed_dim``), ``between[0..n_layers-2]``
    ``(B, n_hidden)``, top ``(B, n_hidden)``; each entry is kept (``1 / (1 - rate)``)
    when its uniform draw is ``>= rate``, else 0. The same seed gives the same bits.
    """
    rng = np.random.default_rng(seed)
    keep = 1.0 / (1.0 - rate)

    def draw(width):
        return (rng.random((B, width)) >= rate) * keep

    embed = None if embed_dim is None else draw(embed_dim)
    between = tuple(draw(n_hidden) for _ in range(n_layers - 1))
    return DropoutMasks(embed, between, draw(n_hidden))
