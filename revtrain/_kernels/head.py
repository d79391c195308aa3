"""Output layer and loss on a block of hidden states: ``yhat = h @ U + b_y``.

Used on all ``T*B`` rows at once (standard BPTT), per segment (checkpointing)
or per step (reversible BPTT). Generic over float64 and complex128 (complex
step). Every kernel *adds* to ``dU`` and ``dby`` and *writes* ``dh``.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from ._options import NJIT_OPTS, INLINE_OPTS
from .mathfn import exp_, log_, real_
from .gemm import dot_rows, dot_rows_t


def terms_like(work):
    """An empty ``(N,)`` array for the row terms of a ``(N, O)`` ``work``: float64, or
    complex128 for complex ``work`` (resolved at compile time)."""
    raise NotImplementedError


@overload(terms_like, inline="always")
def _terms_like_impl(work):
    if isinstance(work.dtype, types.Complex):
        return lambda work: np.empty(work.shape[0], dtype=np.complex128)
    return lambda work: np.empty(work.shape[0], dtype=np.float64)


@njit(**INLINE_OPTS)
def _product(A, B, out, blocked):
    """``out = A @ B``: in row blocks (:func:`~.gemm.dot_rows`) when ``blocked``, else one call."""
    if blocked:
        dot_rows(A, B, out)
    else:
        np.dot(A, B, out)


@njit(**INLINE_OPTS)
def _backprop_output(h, U, dz, dh, dU, dby, blocked):
    """Through ``z = h @ U + by`` given ``dz`` = dL/dz (N, O): ``dby += sum_n dz[n]``,
    ``dU += h.T @ dz``, ``dh = dz @ U.T``."""
    N, O = dz.shape
    for k in range(O):
        acc = dz[0, k] * 0.0
        for n in range(N):
            acc += dz[n, k]
        dby[k] += acc
    dU[:, :] += np.dot(h.T, dz)      # (an in-place "dU +=" is lost when inlined twice)
    if blocked:
        dot_rows_t(dz, U, dh)
    else:
        np.dot(dz, U.T, dh)


@njit(**INLINE_OPTS)
def xent_dz(h, U, by, labels, scale, work, terms, blocked):
    """Row terms ``logsumexp(z_n) - z_n[labels[n]]`` into ``terms`` (N,) and
    ``dL/dz = scale * (softmax(z) - onehot(labels))`` into ``work`` (N, O), ``z = h @ U + by``."""
    N, O = work.shape
    _product(h, U, work, blocked)
    for n in range(N):
        m = real_(work[n, 0] + by[0])
        for k in range(1, O):
            zr = real_(work[n, k] + by[k])
            if zr > m:
                m = zr
        lab = labels[n]
        z_lab = work[n, lab] + by[lab]
        s = work[n, 0] * 0.0
        for k in range(O):
            e = exp_(work[n, k] + by[k] - m)
            work[n, k] = e
            s += e
        # -log p_label = m + log(s) - z_label: finite even when exp(z_label - m) underflows
        terms[n] = (m + log_(s)) - z_lab
        inv = scale / s
        for k in range(O):
            work[n, k] *= inv
        work[n, lab] -= scale


@njit(**INLINE_OPTS)
def _xent(h, U, by, labels, scale, work, dh, dU, dby, terms, blocked):
    """:func:`xent_dz`, then the gradients as documented in :func:`softmax_xent_head`."""
    xent_dz(h, U, by, labels, scale, work, terms, blocked)
    _backprop_output(h, U, work, dh, dU, dby, blocked)


@njit(**INLINE_OPTS)
def mse_dz(h, U, by, target, scale, work, terms, blocked):
    """Row terms ``sum_k (z[n,k] - target[n,k])**2`` into ``terms`` and
    ``dL/dz = 2 scale (z - target)`` into ``work``."""
    N, O = work.shape
    _product(h, U, work, blocked)
    for n in range(N):
        acc = work[n, 0] * 0.0
        for k in range(O):
            d = work[n, k] + by[k] - target[n, k]
            acc += d * d
            work[n, k] = (2.0 * scale) * d
        terms[n] = acc


@njit(**INLINE_OPTS)
def _mse(h, U, by, target, scale, work, dh, dU, dby, terms, blocked):
    """:func:`mse_dz`, then the gradients as documented in :func:`mse_head`."""
    mse_dz(h, U, by, target, scale, work, terms, blocked)
    _backprop_output(h, U, work, dh, dU, dby, blocked)


@njit(**NJIT_OPTS)
def sum_terms(terms):
    """``terms[0] + terms[1] + ...`` in row order (the loss of :func:`softmax_xent_rows` is
    ``scale * sum_terms(terms)``)."""
    acc = terms[0] * 0.0
    for n in range(terms.shape[0]):
        acc += terms[n]
    return acc


@njit(**NJIT_OPTS)
def fold_rows(terms, scale, forward):
    """``sum_i scale * sum_terms(terms[i])`` over the rows of ``terms`` (n, B) float64, last
    to first (first to last when ``forward``), one float64 add after the other."""
    loss = 0.0
    n = terms.shape[0]
    for k in range(n):
        i = k if forward else n - 1 - k
        loss += sum_terms(terms[i]) * scale
    return loss


@njit(**NJIT_OPTS)
def softmax_xent_head(h, U, by, labels, scale, work, dh, dU, dby):
    """Softmax cross-entropy summed over rows, times ``scale``; gradients added.

    ``L = scale * sum_n [logsumexp(z_n) - z_n[labels[n]]]`` with
    ``z = h @ U + by``; ``dL/dz = scale * (softmax(z) - onehot(labels))``.

    Parameters
    ----------
    h : (N, H) hidden states.  U : (H, O).  by : (O,)
    labels : int64 (N,) in [0, O).  scale : float, usually 1 / number of targets.
    work : (N, O) workspace (same dtype as U).
    dh : (N, H) output, overwritten with dL/dh.  dU : (H, O), dby : (O,) accumulated.

    Returns
    -------
    loss : float64 (complex128 for complex ``h``); the rows' terms are added in
        float64 in row order, as :func:`softmax_xent_rows` and :func:`sum_terms` do.
    """
    terms = terms_like(work)
    _xent(h, U, by, labels, scale, work, dh, dU, dby, terms, False)
    return sum_terms(terms) * scale


@njit(**NJIT_OPTS)
def mse_head(h, U, by, target, scale, work, dh, dU, dby):
    """Squared error ``L = scale * sum_{n,k} (z[n,k] - target[n,k])**2``, ``z = h @ U + by``.

    ``scale`` is usually ``1 / (N_targets * O)`` (a mean over elements).
    Shapes as in :func:`softmax_xent_head`, with ``target`` float (N, O); the sum
    is taken per row, then over rows in order.
    """
    terms = terms_like(work)
    _mse(h, U, by, target, scale, work, dh, dU, dby, terms, False)
    return sum_terms(terms) * scale


@njit(**NJIT_OPTS)
def softmax_xent_rows(h, U, by, labels, scale, work, dh, dU, dby, terms):
    """:func:`softmax_xent_head` per row: ``terms[n] = logsumexp(z_n) - z_n[labels[n]]``.

    Nothing is summed: the caller adds ``scale * sum_terms(terms)``
    (:func:`sum_terms`), so rows computed in separate groups add up to the
    same bits as one call over all rows. The products run in row blocks
    (:func:`~.gemm.dot_rows`). ``terms`` (N,) float64 (complex128 for a
    complex ``h``); other arguments as in :func:`softmax_xent_head`.
    """
    _xent(h, U, by, labels, scale, work, dh, dU, dby, terms, True)


@njit(**NJIT_OPTS)
def mse_rows(h, U, by, target, scale, work, dh, dU, dby, terms):
    """:func:`mse_head` per row: ``terms[n] = sum_k (z[n,k] - target[n,k])**2`` (see
    :func:`softmax_xent_rows`)."""
    _mse(h, U, by, target, scale, work, dh, dU, dby, terms, True)


@njit(**NJIT_OPTS)
def softmax_probs(h, U, by, out):
    """``out[n] = softmax(h[n] @ U + by)``; ``h`` (N, H), ``out`` (N, O) float64."""
    N, O = out.shape
    np.dot(h, U, out)
    for n in range(N):
        m = out[n, 0] + by[0]
        for k in range(1, O):
            m = max(m, out[n, k] + by[k])
        s = 0.0
        for k in range(O):
            e = np.exp(out[n, k] + by[k] - m)
            out[n, k] = e
            s += e
        for k in range(O):
            out[n, k] /= s


@njit(**NJIT_OPTS)
def linear_out(h, U, by, out):
    """``out = h @ U + by``."""
    np.dot(h, U, out)
    for n in range(out.shape[0]):
        for k in range(out.shape[1]):
            out[n, k] += by[k]
