"""The information buffer: an rANS stack of uniform symbols, one state per stream."""
import mmap

import numpy as np

from ._checks import positive_int
from ._kernels.rans import INITIAL_STATE, PROB_TOTAL, push_streams, pop_streams

MAX_BASE = PROB_TOTAL
#: Word stacks of at least this many bytes live in an anonymous memory map of their own.
MAP_BYTES = 1 << 16
#: :meth:`InfoBuffer.release_popped` returns a stream's pages once it has popped this many
#: bytes of words since its last release.
RELEASE_BYTES = 1 << 13
_PAGE = mmap.PAGESIZE


def zeroed_words(n_streams, capacity):
    """A zeroed ``(n_streams, capacity)`` uint32 array for the word stacks.

    Large ones are an anonymous memory map (:data:`MAP_BYTES`): its pages are
    zero and take no memory until a word is written, so the unused reserve of
    the stacks costs no RSS, and they go back to the operating system as soon
    as the array is dropped (when the buffer grows, or with the buffer). From
    ``malloc`` instead, every grown copy could stay resident in the heap of the
    thread that grew it: measured (RevLSTM float64, T=1000, B=32, H=256, two
    row threads), the peak RSS growth of a pass fell from 9.4 to 8.7 MiB.
    """
    n = int(n_streams) * int(capacity) * 4
    if n < MAP_BYTES:
        return np.zeros((n_streams, capacity), dtype=np.uint32)
    # private: its pages are the process's own, so a released page is freed (shared
    # anonymous memory would keep it in its shared-memory object)
    flags = {"flags": mmap.MAP_PRIVATE} if hasattr(mmap, "MAP_PRIVATE") else {}
    return np.frombuffer(mmap.mmap(-1, n, **flags), dtype=np.uint32).reshape(n_streams, capacity)


def _memory_map(words):
    """The anonymous memory map under ``words`` (:func:`zeroed_words`), or None."""
    a = words
    while a is not None and not isinstance(a, mmap.mmap):
        a = getattr(a, "base", None) if isinstance(a, np.ndarray) else getattr(a, "obj", None)
    return a


def _as_stream_ints(value, n_streams, name):
    arr = np.asarray(value)
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.ndim == 0:
        arr = np.full(n_streams, arr, dtype=np.int64)
    if arr.shape != (n_streams,):
        raise ValueError(f"{name} must be a scalar or have shape ({n_streams},) "
                         f"(one per stream), got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def check_base(base, n_streams, name="base"):
    """Validate bases ``1 <= base <= 2**16``; return an int64 array of shape ``(n_streams,)``."""
    b = _as_stream_ints(base, n_streams, name)
    bad = (b < 1) | (b > MAX_BASE)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must be in [1, {MAX_BASE}], got {int(b[i])} at stream {i}")
    return b


class InfoBuffer:
    """A stack of uniform symbols, entropy coded with rANS, one stream per row.

    Pushing a symbol ``0 <= r < b`` costs about ``log2(b)`` bits; popping with
    the same base returns it and frees them. Operations on one stream must be
    undone in exactly the reverse order; streams are independent. An empty
    stream pops zeros.

    Parameters
    ----------
    n_streams : int
        Number of independent streams ``S`` (for example one per batch row).
    capacity : int, optional
        Initial number of 32-bit words allocated per stream; grows as needed.

    Attributes
    ----------
    states : ndarray of uint64, shape (S,)
        rANS state per stream, in ``[2**32, 2**64)``.
    counts : ndarray of int64, shape (S,)
        Words stored per stream.
    words : ndarray of uint32, shape (S, capacity)
        Word stacks. Kernels receive ``(states, counts, words)`` and call
        ``revtrain._kernels.rans.rans_push`` / ``rans_pop`` inline, after
        :meth:`reserve` made room.
    info : ndarray of float64, shape (S,)
        Running sum per stream of ``log2(base)`` pushed minus popped.
    """

    def __init__(self, n_streams, capacity=0):
        S = positive_int(n_streams, "n_streams")
        self.states = np.full(S, INITIAL_STATE, dtype=np.uint64)
        self.counts = np.zeros(S, dtype=np.int64)
        self.words = zeroed_words(S, max(int(capacity), 0))
        self.info = np.zeros(S, dtype=np.float64)
        self._released = np.zeros(S, dtype=np.int64)   # counts at each stream's last release

    @property
    def n_streams(self):
        """Number of independent streams."""
        return self.states.shape[0]

    @property
    def nbytes(self):
        """Bytes actually held: 4 per stored word plus the 8-byte state of each stream."""
        return int(4 * self.counts.sum() + 8 * self.n_streams)

    @property
    def allocated_bytes(self):
        """Bytes allocated, including the unused reserve of the word stacks."""
        return int(self.words.nbytes + self.states.nbytes + self.counts.nbytes + self.info.nbytes)

    @property
    def info_bits(self):
        """Information held: sum over streams of ``log2(base)`` pushed minus popped."""
        return float(self.info.sum())

    def is_empty(self):
        """True when every stream is back at its initial state with no stored words."""
        return bool((self.counts == 0).all() and (self.states == INITIAL_STATE).all())

    def reserve(self, extra_words):
        """Make room for ``extra_words`` more words on every stream (grows by >= 1.5x)."""
        need = int(self.counts.max()) + int(extra_words)
        cap = self.words.shape[1]
        if need > cap:
            new = zeroed_words(self.n_streams, max(need, cap + cap // 2 + 16))
            new[:, :cap] = self.words
            self.words = new

    def release_popped(self):
        """Give the memory pages of the word stacks above each stream's stored words back to
        the operating system, for stacks in a memory map (:func:`zeroed_words`).

        A backward pass pops the buffer empty, step after step; without this the pages of
        the popped words stay resident until the buffer is dropped, so the buffer's largest
        size is held beside everything the backward pass allocates. A stream's pages are
        released once it has popped :data:`RELEASE_BYTES` since its last release; they read
        as zeros afterwards (the words above a stack's top are never read) and cost memory
        again only when pushed to. Returns the number of streams released.
        """
        mm = _memory_map(self.words)
        if mm is None or not hasattr(mm, "madvise"):
            return 0
        # the pages' offsets below are those of the whole map: only for the stacks as made
        # by zeroed_words (not a view of some of their rows)
        whole = np.frombuffer(mm, dtype=np.uint8)
        if (not self.words.flags.c_contiguous or self.words.nbytes != whole.nbytes
                or self.words.ctypes.data != whole.ctypes.data):
            return 0
        counts = self.counts
        self._released = np.maximum(self._released, counts)
        due = np.flatnonzero((self._released - counts) * 4 >= RELEASE_BYTES)
        row = self.words.shape[1] * 4
        for s in due.tolist():
            lo = -(-(s * row + int(counts[s]) * 4) // _PAGE) * _PAGE
            hi = ((s + 1) * row // _PAGE) * _PAGE
            if hi > lo:
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            self._released[s] = counts[s]
        return len(due)

    def push(self, r, base):
        """Push symbol ``r[s]`` of base ``base[s]`` on every stream.

        Parameters
        ----------
        r : int array_like, shape (S,) or scalar
            Symbols, ``0 <= r < base``.
        base : int array_like, shape (S,) or scalar
            Bases, ``1 <= base <= 2**16``.
        """
        S = self.n_streams
        b = check_base(base, S)
        rr = _as_stream_ints(r, S, "r")
        bad = (rr < 0) | (rr >= b)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"r must satisfy 0 <= r < base, got r={int(rr[i])} with "
                             f"base={int(b[i])} at stream {i}")
        self.reserve(1)
        push_streams(self.states, self.counts, self.words, rr, b)
        self.info += np.log2(b)

    def pop(self, base):
        """Pop one symbol of base ``base[s]`` from every stream.

        ``base`` must be the base the symbol was pushed with: the coder cannot
        detect a wrong base (it returns some other symbol), and popping more
        than was pushed does not raise (a stream reads as if zeros lay below
        its first word). Check :meth:`is_empty` after undoing everything.

        Returns
        -------
        r : ndarray of int64, shape (S,)
        """
        b = check_base(base, self.n_streams)
        out = np.empty(self.n_streams, dtype=np.int64)
        pop_streams(self.states, self.counts, self.words, b, out)
        self.info -= np.log2(b)
        return out

    def copy(self):
        """An independent copy (words trimmed to what is stored)."""
        new = InfoBuffer(self.n_streams)
        new.states = self.states.copy()
        new.counts = self.counts.copy()
        new.words = self.words[:, :int(self.counts.max())].copy()
        new.info = self.info.copy()
        return new

    def __repr__(self):
        return (f"InfoBuffer(n_streams={self.n_streams}, nbytes={self.nbytes}, "
                f"info_bits={self.info_bits:.1f})")
