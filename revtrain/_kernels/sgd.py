"""Exact SGD with momentum on fixed-point weights and velocity, forward and backward.

Weights ``w`` (``Fw`` fraction bits) and velocity ``v`` (``Fv`` fraction bits)
are int64 vectors of length ``P``. Element ``i`` belongs to parameter group
``j = gidx[i]``, which has its own learning rate ``alpha_j``, momentum
``gamma_j = n_j / 2**16`` and weight decay ``lambda_j`` for the step. One step::

    gt    = g[i] + lambda_j * w_i                     (float64, w_i = w[i] * 2**-Fw)
    v[i]  = mul_ratio(v[i], n_j, 2**16)               exact multiply, digits on the buffer
    v[i] -= rint(cv_j * gt)                           cv_j = (1 - gamma_j) * 2**Fv
    w[i] += rint(cw_j * float(v[i]))                  cw_j = alpha_j * 2**(Fw - Fv)

``rint`` rounds half to even, so the increments equal
``to_fixed((1 - gamma) * gt, Fv)`` and ``to_fixed(alpha * from_fixed(v, Fv), Fw)``.
The inverse subtracts the same ``w`` increment (computed from the same ``v``),
then, given the gradient at the recovered ``w``, adds the same ``v`` increment
back and multiplies by ``2**16 / n_j`` with the digits read from the buffer.

Streams: the buffer has ``S`` streams; stream ``s`` owns the contiguous chunk
``[s*chunk, min((s+1)*chunk, P))`` of elements, which it processes in
increasing order going forward and in decreasing order going backward. The
stream loop is innermost so that the independent streams overlap in the
pipeline. Every kernel first checks its whole input (no buffer operation, no
write) and returns a nonzero code with the offending index instead of
changing anything: 1 = non-finite gradient, 2 = a result would not fit int64.
"""
import numpy as np
from numba import int64, njit

from .exact import mul_ratio_elem
from .rans import buffer_kernel

#: Momentum is held as ``n / 2**MOMENTUM_BITS``.
MOMENTUM_BITS = 16
MOMENTUM_DEN = 1 << MOMENTUM_BITS
#: Values are kept below this bound (in units of the last bit) by the range checks.
SAFE_LIMIT = 4.0e18      # < 2**62


@buffer_kernel
def sgd_step(w, v, g, gidx, n, cv, cw, wd, inv_w, chunk,
             states, counts, words, w_out, v_out):
    """One exact step of SGD with momentum; writes ``w_out``, ``v_out``, pushes on the buffer.

    Parameters
    ----------
    w, v : int64 (P,)
        Weights (``Fw`` fraction bits) and velocity (``Fv`` fraction bits) before the step.
    g : float64 (P,)
        Gradient of the training loss at ``w`` (weight decay not included).
    gidx : int64 (P,)
        Group of each element, in ``[0, G)``.
    n : int64 (G,)
        Momentum numerators, ``1 <= n < 2**16``.
    cv, cw, wd : float64 (G,)
        ``(1 - gamma) * 2**Fv``, ``alpha * 2**(Fw - Fv)`` and the weight decay per group.
    inv_w : float
        ``2**-Fw``.
    chunk : int
        Elements per stream.
    states, counts, words : buffer arrays (see :mod:`revtrain._kernels.rans`); room
        for ``chunk // 2 + 2`` more words per stream must be reserved.
    w_out, v_out : int64 (P,)
        Outputs (may not alias ``w``, ``v``).

    Returns
    -------
    code, index : int, int
        ``(0, -1)`` on success; else nothing was changed.
    """
    P = w.shape[0]
    S = states.shape[0]
    for i in range(P):
        j = gidx[i]
        gt = g[i] + wd[j] * (float(w[i]) * inv_w)
        if not np.isfinite(gt):
            return 1, i
        inc = abs(cv[j] * gt)
        vb = abs(float(v[i])) + inc + 65536.0
        if inc >= SAFE_LIMIT or vb >= SAFE_LIMIT:
            return 2, i
        if abs(float(w[i])) + abs(cw[j]) * vb + 1.0 >= SAFE_LIMIT:
            return 2, i
    for k in range(chunk):
        for s in range(S):
            i = s * chunk + k
            if i < P:
                j = gidx[i]
                gt = g[i] + wd[j] * (float(w[i]) * inv_w)
                q = mul_ratio_elem(v[i], n[j], MOMENTUM_DEN, states, counts, words, s)
                q -= int64(np.rint(cv[j] * gt))
                v_out[i] = q
                w_out[i] = w[i] + int64(np.rint(cw[j] * float(q)))
    return 0, -1


@buffer_kernel
def sgd_unstep_weights(w, v, gidx, cw, w_out):
    """First half of the inverse step: ``w_out = w - rint(cw * float(v))`` (no buffer).

    Returns ``(code, index)`` as :func:`sgd_step` (code 2: out of range).
    """
    P = w.shape[0]
    for i in range(P):
        c = cw[gidx[i]]
        if abs(float(w[i])) + abs(c * float(v[i])) + 1.0 >= SAFE_LIMIT:
            return 2, i
    for i in range(P):
        w_out[i] = w[i] - int64(np.rint(cw[gidx[i]] * float(v[i])))
    return 0, -1


@buffer_kernel
def sgd_unstep_velocity(w, v, g, gidx, n, cv, wd, inv_w, chunk,
                        states, counts, words, v_out):
    """Second half of the inverse step: the velocity before the step, popping the buffer.

    ``v_out = mul_ratio(v + rint(cv * (g + wd * w)), 2**16, n)`` element by
    element, each stream's chunk in decreasing order, where ``w`` are the
    recovered weights (output of :func:`sgd_unstep_weights`) and ``g`` the
    gradient recomputed there. Room for ``chunk + 2`` words per stream must be
    reserved. Returns ``(code, index)`` as :func:`sgd_step`.
    """
    P = w.shape[0]
    S = states.shape[0]
    for i in range(P):
        j = gidx[i]
        gt = g[i] + wd[j] * (float(w[i]) * inv_w)
        if not np.isfinite(gt):
            return 1, i
        inc = abs(cv[j] * gt)
        vb = abs(float(v[i])) + inc + 1.0
        if inc >= SAFE_LIMIT or vb >= SAFE_LIMIT or \
                vb * (MOMENTUM_DEN / float(n[j])) + 65536.0 >= SAFE_LIMIT:
            return 2, i
    for kk in range(chunk):
        k = chunk - 1 - kk
        for s in range(S):
            i = s * chunk + k
            if i < P:
                j = gidx[i]
                gt = g[i] + wd[j] * (float(w[i]) * inv_w)
                q = v[i] + int64(np.rint(cv[j] * gt))
                v_out[i] = mul_ratio_elem(q, MOMENTUM_DEN, n[j], states, counts, words, s)
    return 0, -1


@njit(cache=True, error_model="numpy")
def group_dot(a, b, gidx, out):
    """``out[j] = sum_{i: gidx[i] == j} a[i] * b[i]`` (``out`` zeroed by the caller)."""
    for i in range(a.shape[0]):
        out[gidx[i]] += a[i] * b[i]
