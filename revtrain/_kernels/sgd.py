"""Exact SGD with momentum on fixed-point weights and velocity, forward and backward.

Weights ``w`` (``Fw`` fraction bits) and velocity ``v`` (``Fv`` fraction bits)
are int64 vectors of length ``P``. Element ``i`` belongs to parameter group
``j = gidx[i]``, which has its own learning rate ``alpha_j``, momentum
``gamma_j = n_j / 2**16`` and weight decay ``lambda_j`` for the step. One step::

    gt    = g[i] + lambda_j * w_i                     (float64, w_i = w[i] * 2**-Fw)
    v[i]  = v[i] * n_j / 2**16                        exact multiply, digits on the buffer
    v[i] -= rint(cv_j * gt)                           cv_j = (1 - gamma_j) * 2**Fv
    w[i] += rint(cw_j * float(v[i]))                  cw_j = alpha_j * 2**(Fw - Fv)

``rint`` rounds half to even, so the increments equal
``to_fixed((1 - gamma) * gt, Fv)`` and ``to_fixed(alpha * from_fixed(v, Fv), Fw)``.
The inverse subtracts the same ``w`` increment (computed from the same ``v``),
then, given the gradient at the recovered ``w``, adds the same ``v`` increment
back and multiplies by ``2**16 / n_j`` with the digits read from the buffer.

**The exact multiply** of ``q`` by ``n / d`` with ``d = 2**16`` (Maclaurin,
Duvenaud & Adams 2015, Algorithm 3)::

    r = q mod d              floor mod, 0 <= r < d also for q < 0; pushed
    q = (q - r) // d         exact
    q = q * n + s            s in [0, n) popped from the buffer

and its inverse is the same with ``n`` and ``d`` swapped. Here
``r = q mod 2**16`` is pushed with :func:`~revtrain._kernels.rans.rans_push`
(a power of two: exactly 16 bits), then the new low digit ``s`` is popped.
That pop is coded here with a wider quantised distribution, of total ``M = 2**24``
(frequencies ``2**24 // n`` or one more), on the same stack and state, instead
of the ``2**16`` of ``rans_pop``: with ``M = 2**16`` a base ``n`` close to
``2**16`` must be split into digits whose coarse quantised frequencies waste
about 1e-3 bit per multiply, 0.5-16 % of the ``log2(2**16 / n)`` bits that a
momentum of 0.9-0.995 destroys (measured). ``M = 2**24`` keeps the quantisation loss
(frequencies >= 256) and the rANS approximation loss (of order ``M / x`` for
a state ``x >= 2**32``) near 1e-5 bit per multiply; measured, the held bits
are within 0.2 % of the information at momenta 0.5-0.995 (``M = 2**32``
would be worse: ``M / x`` is then of order 1). The rANS invariants are those
of :mod:`revtrain._kernels.rans` (state in ``[2**32, 2**64)``, 32-bit words,
zeros below an empty stack): ``M`` divides the state's lower bound ``2**32``.

Streams: the buffer has ``S`` streams; stream ``s`` owns the contiguous chunk
``[s*chunk, min((s+1)*chunk, P))`` of elements, which it processes in
increasing order going forward and in decreasing order going backward. The
stream loop is innermost so that the independent streams overlap in the
pipeline. Every kernel first checks its whole input (no buffer operation, no
write) and returns a nonzero code with the offending index instead of
changing anything: 1 = non-finite gradient, 2 = a result would not fit int64.
"""
import numpy as np
from numba import int64, uint64, njit

from ._options import NJIT_OPTS
from .rans import buffer_kernel, buffer_op, rans_push, rans_pop, _emit_word, _read_word, STATE_LOW

#: Momentum is held as ``n / 2**MOMENTUM_BITS``.
MOMENTUM_BITS = 16
MOMENTUM_DEN = 1 << MOMENTUM_BITS
#: Values are kept below this bound (in units of the last bit) by the range checks.
SAFE_LIMIT = 4.0e18      # < 2**62
#: Total frequency ``2**WIDE_BITS`` of the wide distribution (see the module docstring).
WIDE_BITS = 24
WIDE_TOTAL = 1 << WIDE_BITS


def wide_freqs(n):
    """``(q, e)`` of the wide distribution of base ``n`` (int64 arrays): ``q = M // n``,
    ``e = M - q*n`` with ``M = 2**WIDE_BITS``; symbols ``r < e`` have frequency
    ``q + 1``, the others ``q``."""
    n = np.asarray(n, dtype=np.int64)
    q = WIDE_TOTAL // n
    return q, WIDE_TOTAL - q * n


@buffer_op
def wide_pop(states, counts, words, s, q, e):
    """Pop a uniform symbol of base ``n`` (``2 <= n <= 2**16``; ``q, e`` from
    :func:`wide_freqs`) from stream ``s`` with total frequency ``M = 2**24``.

    ``slot = x mod M``; ``r`` is the symbol whose range holds ``slot``;
    ``x = f * (x // M) + slot - c(r)``, then one word is read if ``x < 2**32``.
    The divisions ``slot // f`` (``slot < 2**24``, ``f >= 2**8``) are done in
    float64: the true quotient is at least ``1/f`` below the next integer, a
    relative gap >= 2**-40 that the rounded quotient cannot cross.
    """
    x = states[s]
    slot = int64(x & uint64(WIDE_TOTAL - 1))
    big = e * (q + 1)
    if slot < big:
        f = q + 1
        r = int64(float(slot) / float(f))
        c = r * f
    else:
        f = q
        r = e + int64(float(slot - big) / float(f))
        c = r * q + e
    x = uint64(f) * (x >> uint64(WIDE_BITS)) + uint64(slot - c)
    if x < STATE_LOW:
        x = _read_word(counts, words, s, x)
    states[s] = x
    return r


@buffer_op
def wide_push(states, counts, words, s, r, q, e):
    """Push symbol ``0 <= r < n`` with the wide distribution: the inverse of :func:`wide_pop`.

    Emits a word first if ``x >= f * 2**(64 - 24)``, so that ``x // f < 2**40``
    and the new state ``(x // f) * M + x % f + c`` stays below ``2**64``.
    """
    if r < e:
        f = q + 1
        c = r * f
    else:
        f = q
        c = r * q + e
    fu = uint64(f)
    x = states[s]
    if x >= (fu << uint64(64 - WIDE_BITS)):
        x = _emit_word(counts, words, s, x)
    x = ((x // fu) << uint64(WIDE_BITS)) + (x % fu) + uint64(c)
    states[s] = x


@buffer_op
def mul_gamma(v, n, q, e, states, counts, words, s):
    """``v * n / 2**16`` exactly: push ``v mod 2**16`` (16 bits), pop the new low digit."""
    if n == MOMENTUM_DEN:
        return v
    rans_push(states, counts, words, s, v & (MOMENTUM_DEN - 1), MOMENTUM_DEN)
    d = int64(0)
    if n > 1:
        d = wide_pop(states, counts, words, s, q, e)
    return (v >> MOMENTUM_BITS) * n + d


@buffer_op
def div_gamma(v, n, q, e, states, counts, words, s):
    """``v * 2**16 / n`` exactly: the inverse of :func:`mul_gamma`."""
    if n == MOMENTUM_DEN:
        return v
    base = v // n              # floor division, so 0 <= d < n also for negative v
    d = v - base * n
    if n > 1:
        wide_push(states, counts, words, s, d, q, e)
    return (base << MOMENTUM_BITS) + rans_pop(states, counts, words, s, MOMENTUM_DEN)


@buffer_kernel
def sgd_step(w, v, g, gidx, n, wq, we, cv, cw, wd, inv_w, chunk,
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
    wq, we : int64 (G,)
        Their wide frequencies, :func:`wide_freqs`.
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
        # |v * n / 2**16| <= |v| * n / 2**16 + n, then the increment
        vb = abs(float(v[i])) * (float(n[j]) / MOMENTUM_DEN) + inc + 65536.0
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
                q = mul_gamma(v[i], n[j], wq[j], we[j], states, counts, words, s)
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
def sgd_unstep_velocity(w, v, g, gidx, n, wq, we, cv, wd, inv_w, chunk,
                        states, counts, words, v_out):
    """Second half of the inverse step: the velocity before the step, popping the buffer.

    ``v_out = (v + rint(cv * (g + wd * w))) * 2**16 / n`` (exact) element by
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
        inc = cv[j] * gt
        if abs(inc) >= SAFE_LIMIT or abs(float(v[i])) >= SAFE_LIMIT:
            return 2, i
        q = v[i] + int64(np.rint(inc))         # both below 2**62: no overflow
        if abs(float(q)) * (MOMENTUM_DEN / float(n[j])) + 65536.0 >= SAFE_LIMIT:
            return 2, i
    for kk in range(chunk):
        k = chunk - 1 - kk
        for s in range(S):
            i = s * chunk + k
            if i < P:
                j = gidx[i]
                gt = g[i] + wd[j] * (float(w[i]) * inv_w)
                q = v[i] + int64(np.rint(cv[j] * gt))
                v_out[i] = div_gamma(q, n[j], wq[j], we[j], states, counts, words, s)
    return 0, -1
