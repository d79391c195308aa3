"""Input projections for token ids: gather rows of the input weights, scatter-add their gradients."""
from numba import njit

from ._options import NJIT_OPTS


@njit(**NJIT_OPTS)
def gather_rows(tok, V, out):
    """``out[t, b, :] = V[tok[t, b], :]`` (the product of one-hot inputs with ``V``).

    tok : int64 (k, B).  V : (n_in, G).  out : (k, B, G).
    """
    k, B = tok.shape
    G = V.shape[1]
    for t in range(k):
        for b in range(B):
            r = tok[t, b]
            for j in range(G):
                out[t, b, j] = V[r, j]


@njit(**NJIT_OPTS)
def scatter_add_rows(tok, dA, dV):
    """``dV[tok[t, b], :] += dA[t, b, :]`` in a fixed order (deterministic).

    tok : int64 (k, B).  dA : (k, B, G).  dV : (n_in, G).
    """
    k, B = tok.shape
    G = dV.shape[1]
    for t in range(k):
        for b in range(B):
            r = tok[t, b]
            for j in range(G):
                dV[r, j] += dA[t, b, j]
