"""rANS stack kernels: push and pop uniform symbols on independent streams.

The information buffer is held in three plain arrays so that any ``@njit``
kernel can push and pop inline, element by element:

``states``  uint64 ``(S,)``      rANS state of each stream, in ``[2**32, 2**64)``
``counts``  int64 ``(S,)``       number of 32-bit words stored per stream
``words``   uint32 ``(S, cap)``  word stack of each stream (``words[s, :counts[s]]``)

A uniform symbol ``r`` in ``[0, b)`` is coded with a quantised distribution of
total ``M = 2**16``: with ``q = M // b`` and ``e = M % b`` the first ``e``
symbols have frequency ``q + 1``, the others ``q``, and the cumulative
frequency is ``c(r) = r*q + min(r, e)``.

Reading from an empty stack yields 0 and emitting a zero word onto an empty
stack stores nothing, so a stream behaves as if it had infinitely many zero
words below it; the initial state is ``2**32``. Callers must make sure
``words`` has room for every word a kernel may emit (see
``InfoBuffer.reserve``); a push onto a full stack raises instead of writing
out of bounds.
"""
import numpy as np
from numba import njit, uint64, int64

from ._options import BUFFER_KERNEL_OPTS, BUFFER_OP_OPTS
from .bits import bit_length, trailing_zeros

PROB_BITS = 16
PROB_TOTAL = 1 << PROB_BITS
MAX_BASE = PROB_TOTAL
STATE_LOW = np.uint64(1) << np.uint64(32)
INITIAL_STATE = STATE_LOW
WORD_MASK = np.uint64(0xFFFFFFFF)
SPLIT_BITS = 12
SPLIT_LIMIT = 1 << SPLIT_BITS

#: Decorator for the element routines that kernels call per element. They take
#: the buffer arrays as arguments; in a kernel compiled with the Numba runtime
#: (NRT) every call increments and decrements the arrays' reference counts with
#: atomic instructions, which costs 3-10x their work. So they are compiled
#: without the runtime (``_nrt=False``; they only index arrays the caller owns)
#: and inlined. Put the per-element loop that pushes and pops in a kernel
#: compiled with :data:`buffer_kernel` (no allocation inside, preallocated
#: arrays in); called from an ordinary kernel they are correct but slower.
buffer_op = njit(**BUFFER_OP_OPTS)

#: Decorator for loop kernels that call :data:`buffer_op` routines per element.
buffer_kernel = njit(**BUFFER_KERNEL_OPTS)


@njit(cache=True, inline="always")
def small_floordiv(a, b):
    """``a // b`` for ``0 <= a <= 2**16`` and ``1 <= b <= 2**16`` by a float division.

    Exact: the true quotient ``k + j/b`` (``0 < j < b``) lies at least
    ``1/b >= 2**-16`` below ``k + 1``, a relative gap >= 2**-32 that the
    correctly rounded float64 quotient (error <= 2**-53 relative) cannot cross.
    """
    return int64(float(a) / float(b))


@buffer_op
def _emit_local(words, s, n, x):
    """:func:`_emit_word` on a stream whose count ``n`` the caller holds: ``(x >> 32, n)``."""
    w = x & WORD_MASK
    if n > 0 or w != 0:
        if n >= words.shape[1]:
            raise RuntimeError("InfoBuffer is full: reserve more words before pushing")
        words[s, n] = np.uint32(w)
        n += 1
    return x >> uint64(32), n


@buffer_op
def _read_word_local(words, s, n, x):
    """``(x << 32) | words[s, n - 1]`` (0 for an empty stack): :func:`_read_word`'s state."""
    w = uint64(0)
    if n > 0:
        w = uint64(words[s, n - 1])
    return (x << uint64(32)) | w


@buffer_op
def _emit_word(counts, words, s, x):
    """Store the low 32 bits of state ``x`` on stream ``s``; return ``x >> 32``.

    A zero word on an empty stack is not stored (the stack reads zeros below).
    """
    x, n = _emit_local(words, s, counts[s], x)
    counts[s] = n
    return x


@buffer_op
def _read_word(counts, words, s, x):
    """Refill state ``x < 2**32`` from stream ``s``: ``(x << 32) | word`` (0 when the stack is empty).

    The inverse of :func:`_emit_word`.
    """
    n = counts[s]
    x = _read_word_local(words, s, n, x)
    if n > 0:
        counts[s] = n - 1
    return x


@buffer_op
def _push_symbol(states, counts, words, s, r, b):
    """rANS-encode one symbol ``0 <= r < b`` with ``2 <= b <= 2**16``.

    ``x <- (x // f) * M + x % f + c`` after emitting 32 bits when
    ``x >= 2**48 * f``, so the state stays in ``[2**32, 2**64)``. Powers of two
    use shifts: then ``f = M / b`` exactly and the code costs ``log2(b)`` bits.
    """
    x = states[s]
    if (b & (b - 1)) == 0:
        sh = uint64(PROB_BITS - trailing_zeros(b))          # f = 2**sh
        if x >= (uint64(1) << (uint64(48) + sh)):
            x = _emit_word(counts, words, s, x)
        x = ((x >> sh) << uint64(PROB_BITS)) + (x & ((uint64(1) << sh) - uint64(1))) \
            + (uint64(r) << sh)
    else:
        q = small_floordiv(PROB_TOTAL, b)
        e = PROB_TOTAL - q * b
        if r < e:
            f = q + 1
            c = r * f
        else:
            f = q
            c = r * q + e
        fu = uint64(f)
        if x >= (fu << uint64(48)):
            x = _emit_word(counts, words, s, x)
        x = ((x // fu) << uint64(PROB_BITS)) + (x % fu) + uint64(c)
    states[s] = x


@buffer_op
def _pop_symbol(states, counts, words, s, b):
    """rANS-decode one symbol of base ``2 <= b <= 2**16``: the inverse of :func:`_push_symbol`."""
    x = states[s]
    slot = int64(x & uint64(PROB_TOTAL - 1))
    if (b & (b - 1)) == 0:
        sh = PROB_BITS - trailing_zeros(b)
        r = slot >> sh
        x = ((x >> uint64(PROB_BITS)) << uint64(sh)) + uint64(slot & ((1 << sh) - 1))
    else:
        q = small_floordiv(PROB_TOTAL, b)
        e = PROB_TOTAL - q * b
        big = e * (q + 1)
        if slot < big:
            f = q + 1
            r = small_floordiv(slot, f)
            c = r * f
        else:
            f = q
            r = e + small_floordiv(slot - big, q)
            c = r * q + e
        x = uint64(f) * (x >> uint64(PROB_BITS)) + uint64(slot - c)
    if x < STATE_LOW:
        x = _read_word(counts, words, s, x)
    states[s] = x
    return int64(r)


# ---------------------------------------------------------------------------------------
# Fast paths of the forget-gate multiply ``q * n / D`` (``D = 2**m <= 2**12``): the same
# code as _push_symbol / _pop_symbol (the same words and states), with the symbol class
# chosen without a branch and the base-``D`` shift known once per call. Branches on the
# symbol class and on the refill were mispredicted about half the time with varying
# ratios: measured 14.8 -> 10.0 ns per forward multiply and 18.1 -> 14.4 ns per undo
# (32 x 128 elements, ratios spread over [D/8, D]). pop_small's refill is a branch again
# since its division became a table multiplication: with it, 6.2 against 7.5 ns per forward
# multiply on one stream, 8.1 against 8.6 on 32 (measured). They repeat the bodies of
# _push_symbol / _pop_symbol on purpose: calling those (a second level of Numba inlining) made the
# RevLSTM float32 pass at T=1000, B=32, H=256 6 % slower (0.774 against 0.729 s, measured).
# They take and return the stream's state and word count: a caller's loop over one stream's
# elements keeps them in registers instead of loading and storing ``states[s]`` and
# ``counts[s]`` per element (:func:`~revtrain._kernels.quantize.forget_add`).

#: ``M // b`` for ``b = 0 .. 2**12`` (entry 0 unused) and ``ceil(2**32 / f)`` for
#: ``f = 0 .. MAGIC_SIZE - 1`` (entry 0 unused): the divisions of :func:`pop_small` (and
#: ``M // b`` of :func:`push_small`), read from tables (Numba freezes global arrays into the
#: code), so none is left on the pop's chain.
M_DIV = np.array([0] + [PROB_TOTAL // b for b in range(1, SPLIT_LIMIT + 1)], dtype=np.int32)
MAGIC_SIZE = 4097
MAGIC = np.array([0] + [((1 << 32) + f - 1) // f for f in range(1, MAGIC_SIZE)], dtype=np.int64)


@buffer_op
def _refill_local(words, s, n, x):
    """:func:`_read_word` as :func:`pop_small` needs it: ``(x, n)`` after the refill of a state
    ``x < 2**32`` on stream ``s``, else unchanged; the word is read under a branch, the state
    and count are selected without one."""
    need = x < STATE_LOW
    if need and n > 0:
        w = uint64(words[s, n - 1])
    else:
        w = uint64(0)
    take = int64(need) * int64(n > 0)
    x = ((x << uint64(32)) | w) if need else x
    return x, n - take


@buffer_op
def push_pow2_shift(x, n, words, s, r, sh):
    """:func:`_push_symbol` of ``0 <= r < 2**(16 - sh)`` in base ``2**(16 - sh)`` on a stream
    whose state ``x`` and word count ``n`` the caller holds: returns ``(x, n)``."""
    if x >= (uint64(1) << (uint64(48) + sh)):
        x, n = _emit_local(words, s, n, x)
    return (((x >> sh) << uint64(PROB_BITS)) + (x & ((uint64(1) << sh) - uint64(1)))
            + (uint64(r) << sh)), n


@buffer_op
def pop_pow2_shift(x, n, words, s, sh):
    """:func:`_pop_symbol` in base ``2**(16 - sh)`` on a stream whose state ``x`` and count
    ``n`` the caller holds: returns ``(r, x, n)``."""
    slot = int64(x & uint64(PROB_TOTAL - 1))
    r = slot >> sh
    x = ((x >> uint64(PROB_BITS)) << uint64(sh)) + uint64(slot & ((int64(1) << sh) - 1))
    if x < STATE_LOW:
        x = _read_word_local(words, s, n, x)
        n -= int64(n > 0)
    return r, x, n


@buffer_op
def push_small(x, n, words, s, r, b):
    """:func:`rans_push` for ``1 <= b <= 2**12`` (no digit split), the class chosen
    arithmetically, on a stream whose state ``x`` and count ``n`` the caller holds:
    returns ``(x, n)``."""
    if b <= 1:
        return x, n
    if (b & (b - 1)) == 0:
        sh = uint64(PROB_BITS - trailing_zeros(b))
        if x >= (uint64(1) << (uint64(48) + sh)):
            x, n = _emit_local(words, s, n, x)
        x = ((x >> sh) << uint64(PROB_BITS)) + (x & ((uint64(1) << sh) - uint64(1))) \
            + (uint64(r) << sh)
    else:
        q = int64(M_DIV[b])                 # M // b, from the table
        e = PROB_TOTAL - q * b
        lo = int64(r < e)                   # the first e symbols have frequency q + 1
        f = q + lo
        c = r * f + (1 - lo) * e
        fu = uint64(f)
        if x >= (fu << uint64(48)):
            x, n = _emit_local(words, s, n, x)
        x = ((x // fu) << uint64(PROB_BITS)) + (x % fu) + uint64(c)
    return x, n


@buffer_op
def pop_small(x, n, words, s, b):
    """:func:`rans_pop` for ``1 <= b <= 2**12``, the symbol class chosen arithmetically, on a
    stream whose state ``x`` and count ``n`` the caller holds: returns ``(r, x, n)``.

    The symbol class (frequency ``q + 1`` or ``q``) is selected without a branch and the
    division ``k // f`` of the slot is a multiplication by ``ceil(2**32 / f)`` read from a
    table by ``b`` alone (:data:`M_DIV`, :data:`MAGIC`), off the state's dependency chain.
    Exact: for ``0 <= k < 2**16`` and ``1 <= f <= 2**16``, ``ceil(2**32 / f) = 2**32 / f + e``
    with ``0 <= e < 1``, so ``k * ceil(2**32 / f) / 2**32`` exceeds ``k / f`` by less than
    ``2**-16 <= 1 / f``, the least distance from ``k / f`` up to the next integer: its floor
    is ``k // f``. Against reciprocals in float64 (the same words and states) this took
    11.2 -> 6.3-7.2 ns per forward multiply of one stream (64-128 elements), 9.2 -> 8.0-8.5 ns
    over 32 streams (a microbenchmark of :func:`~revtrain._kernels.quantize.forget_add`, two
    processes: the figures move by 10-15 % with where the compiled code lands).
    """
    if b <= 1:
        return int64(0), x, n
    slot = int64(x & uint64(PROB_TOTAL - 1))
    if (b & (b - 1)) == 0:
        sh = PROB_BITS - trailing_zeros(b)
        r = slot >> sh
        x = ((x >> uint64(PROB_BITS)) << uint64(sh)) + uint64(slot & ((int64(1) << sh) - 1))
    else:
        q = int64(M_DIV[b])                                  # M // b
        e = PROB_TOTAL - q * b
        big = e * (q + 1)
        if q < MAGIC_SIZE - 1:                               # for k // (q + 1), k // q
            m_hi = MAGIC[q + 1]
            m_lo = MAGIC[q]
        else:
            m_hi = ((int64(1) << 32) + q) // (q + 1)
            m_lo = ((int64(1) << 32) + q - 1) // q
        lo = slot < big                                      # frequency q + 1
        k = slot if lo else slot - big
        d = (k * (m_hi if lo else m_lo)) >> 32               # k // f
        hi = 1 - int64(lo)
        f = q + int64(lo)
        r = d + hi * e
        c = r * f + hi * e
        x = uint64(f) * (x >> uint64(PROB_BITS)) + uint64(slot - c)
    x, n = _refill_local(words, s, n, x)
    return r, x, n


@buffer_op
def _split(r, b):
    """Digits of a large base: ``r = hi * 2**k + lo`` with ``hi < nh <= 2**SPLIT_BITS``.

    Returns ``(k, nh, base of lo given hi)``; the last group of ``hi`` may be short.
    """
    k = bit_length(b - 1) - SPLIT_BITS
    nh = ((b - 1) >> k) + 1
    hi = r >> k
    blo = (1 << k) if hi < nh - 1 else b - ((nh - 1) << k)
    return k, nh, blo


@buffer_op
def rans_push(states, counts, words, s, r, b):
    """Push symbol ``0 <= r < b`` (``1 <= b <= 2**16``) onto stream ``s``.

    Base 1 carries no information and changes nothing. Bases above
    ``2**SPLIT_BITS`` that are not powers of two are coded as two digits (a
    high digit of base <= 2**SPLIT_BITS, then a low one of base <= 2**k):
    coding them directly with ``M = 2**16`` would waste up to 0.07 bit each.
    """
    if b <= 1:
        return
    if b <= SPLIT_LIMIT or (b & (b - 1)) == 0:
        _push_symbol(states, counts, words, s, r, b)
        return
    k, nh, blo = _split(r, b)
    if blo > 1:
        _push_symbol(states, counts, words, s, r & ((1 << k) - 1), blo)
    _push_symbol(states, counts, words, s, r >> k, nh)


@buffer_op
def rans_pop(states, counts, words, s, b):
    """Pop a symbol of base ``b`` from stream ``s``: the exact inverse of :func:`rans_push`."""
    if b <= 1:
        return int64(0)
    if b <= SPLIT_LIMIT or (b & (b - 1)) == 0:
        return _pop_symbol(states, counts, words, s, b)
    k = bit_length(b - 1) - SPLIT_BITS
    nh = ((b - 1) >> k) + 1
    hi = _pop_symbol(states, counts, words, s, nh)
    blo = (1 << k) if hi < nh - 1 else b - ((nh - 1) << k)
    lo = int64(0)
    if blo > 1:
        lo = _pop_symbol(states, counts, words, s, blo)
    return (hi << k) | lo


@buffer_kernel
def push_streams(states, counts, words, r, b):
    """Push ``r[s]`` of base ``b[s]`` on every stream ``s`` (vectorised API)."""
    for s in range(states.shape[0]):
        rans_push(states, counts, words, s, r[s], b[s])


@buffer_kernel
def pop_streams(states, counts, words, b, out):
    """Pop one symbol of base ``b[s]`` from every stream ``s`` into ``out[s]``."""
    for s in range(states.shape[0]):
        out[s] = rans_pop(states, counts, words, s, b[s])
