"""Per-element kernels of the hypergradient's reverse pass (see :mod:`revtrain.hypergrad`)."""
import numpy as np
from numba import njit, int64, uint64

from ._options import NJIT_OPTS


# Limit of the step kernels' range checks (revtrain._kernels.sgd.SAFE_LIMIT).
SAFE_LIMIT = 4.0e18


@njit(**NJIT_OPTS)
def fingerprint_kernel(g, w, gidx, cv, wd, inv_w):
    """``(ok, h)``: ``h = sum_i m_i * q_i mod 2**64`` of the velocity increments
    ``q_i = rint(cv_j * (g_i + wd_j * w_i * inv_w))`` (``j = gidx[i]``), computed with the
    arithmetic of ``sgd_step`` / ``sgd_unstep_velocity``; ``m_i`` odd (splitmix64 of
    ``i``), so increments that differ in one entry always differ in ``h``. ``ok`` is
    False (and ``h`` 0) if an increment is not finite or out of the steps' range."""
    h = uint64(0)
    bad = False
    for i in range(g.shape[0]):
        j = gidx[i]
        inc = cv[j] * (g[i] + wd[j] * (float(w[i]) * inv_w))
        bad = bad or not (abs(inc) < SAFE_LIMIT)      # no branch: the loop vectorises
        z = (uint64(i) + uint64(1)) * uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
        z = (z ^ (z >> uint64(31))) | uint64(1)
        h += uint64(int64(np.rint(inc))) * z
    if bad:
        return False, uint64(0)
    return True, h


# The two adjoint kernels fuse what one reverse iteration does per element besides
# the undo. Their per-group sums add the same terms in the same order as a plain
# ``out[gidx[i]] += a[i] * b[i]`` loop, but keep the running sum of
# a run of equal ``gidx`` in a register (a layout's groups are contiguous runs), so
# the additions do not wait on a store and a load each.
@njit(**NJIT_OPTS)
def adjoint_before(dw, v, dv, gidx, lr, om, d_lr, u):
    """Before undoing iteration ``t`` (``v = v_{t+1}``), element by element::

        d_lr[j] += dw_i * v_i;   dv_i += lr_j * dw_i;   u_i = om_j * dv_i

    (``j = gidx[i]``, ``om = 1 - gamma_t``). Returns whether ``u`` has a nonzero."""
    nonzero = False
    P = dw.shape[0]
    if P == 0:
        return nonzero
    cur = gidx[0]
    acc = d_lr[cur]
    for i in range(P):
        j = gidx[i]
        if j != cur:
            d_lr[cur] = acc
            cur = j
            acc = d_lr[j]
        acc += dw[i] * v[i]
        dv[i] += lr[j] * dw[i]
        u[i] = om[j] * dv[i]
        nonzero = nonzero or u[i] != 0.0
    d_lr[cur] = acc
    return nonzero


@njit(**NJIT_OPTS)
def adjoint_after(dw, dv, v, g, w, hu, u, with_hu, gidx, gam, wd, d_mom, wdv):
    """After undoing iteration ``t`` (``v = v_t``, ``w = w_t``, ``g = g_t``)::

        d_mom[j] += dv_i * ((v_i + g_i) + wd_j * w_i);   wdv[j] += w_i * dv_i
        dw_i -= hu_i + wd_j * u_i    (if with_hu);       dv_i *= gam_j

    Returns False if a ``dv_i`` or ``dw_i`` is not finite."""
    P = dw.shape[0]
    if P == 0:
        return True
    zero = 0.0                  # stays 0 unless some x - x is NaN: x not finite
    cur = gidx[0]
    acc_mom, acc_wdv = d_mom[cur], wdv[cur]
    for i in range(P):
        j = gidx[i]
        if j != cur:
            d_mom[cur], wdv[cur] = acc_mom, acc_wdv
            cur = j
            acc_mom, acc_wdv = d_mom[j], wdv[j]
        acc_mom += dv[i] * ((v[i] + g[i]) + wd[j] * w[i])
        acc_wdv += w[i] * dv[i]
        if with_hu:
            dw[i] -= hu[i] + wd[j] * u[i]
        dv[i] *= gam[j]
        zero += (dv[i] - dv[i]) + (dw[i] - dw[i])
    d_mom[cur], wdv[cur] = acc_mom, acc_wdv
    return zero == 0.0
