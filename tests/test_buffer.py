import mmap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import revtrain as rt
from reference_rans import RefStream

bases = st.integers(1, 2 ** 16)
symbols = bases.flatmap(lambda b: st.tuples(st.integers(0, b - 1), st.just(b)))


@settings(max_examples=60, deadline=None)
@given(st.lists(symbols, min_size=1, max_size=300))
def test_push_matches_reference_and_pop_restores(ops):
    """Kernel states and words equal the pure-Python rANS reference after every push."""
    buf = rt.InfoBuffer(1)
    ref = RefStream()
    for r, b in ops:
        buf.push([r], [b])
        ref.push(r, b)
        assert int(buf.states[0]) == ref.x
        assert buf.words[0, :buf.counts[0]].tolist() == ref.words
    for r, b in reversed(ops):
        assert buf.pop([b]).tolist() == [r] == [ref.pop(b)]
    assert buf.is_empty()
    assert buf.nbytes == 8
    assert abs(buf.info_bits) < 1e-6


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.lists(st.integers(1, 2 ** 16), min_size=1, max_size=60), st.integers(0, 2 ** 32))
def test_streams_are_independent(S, bs, seed):
    rng = np.random.default_rng(seed)
    buf = rt.InfoBuffer(S)
    pushed = []
    for b in bs:
        base = rng.integers(1, b + 1, size=S)
        r = rng.integers(0, base)
        buf.push(r, base)
        pushed.append((r, base))
    # stream 0 alone sees the same words as in a one-stream buffer
    solo = rt.InfoBuffer(1)
    for r, base in pushed:
        solo.push(r[:1], base[:1])
    assert buf.words[0, :buf.counts[0]].tolist() == solo.words[0, :solo.counts[0]].tolist()
    for r, base in reversed(pushed):
        assert (buf.pop(base) == r).all()
    assert buf.is_empty()


def test_empty_buffer_reads_zero_words():
    """An empty stack reads zero words: pops are deterministic, equal on every
    stream, store nothing, and pushing them back returns to the empty state."""
    buf = rt.InfoBuffer(3)
    ref = RefStream()
    bases = (2, 7, 2 ** 16, 40000, 1, 3)
    got = []
    for b in bases:
        r = buf.pop(b)
        assert r.tolist() == [ref.pop(b)] * 3
        got.append(r)
    assert buf.counts.tolist() == [0, 0, 0] and buf.nbytes == 3 * 8
    for b, r in zip(reversed(bases), reversed(got)):
        buf.push(r, b)
    assert buf.is_empty()


def test_pop_below_empty_then_push_back_is_exact():
    buf = rt.InfoBuffer(2)
    got = [buf.pop([5, 2 ** 16 - 1]) for _ in range(40)]
    assert not buf.is_empty() or all((g == 0).all() for g in got)
    for g in reversed(got):
        buf.push(g, [5, 2 ** 16 - 1])
    assert buf.is_empty()


def test_nbytes_counts_words_and_states():
    buf = rt.InfoBuffer(2)
    rng = np.random.default_rng(0)
    for _ in range(1000):
        buf.push(rng.integers(0, 2 ** 16, 2), 2 ** 16)
    # 16000 bits per stream: 500 words (the state holds the rest)
    assert 498 <= buf.counts.min() and buf.counts.max() <= 500
    assert buf.nbytes == 4 * int(buf.counts.sum()) + 16
    assert buf.info_bits == pytest.approx(2 * 16000)
    assert buf.allocated_bytes >= buf.nbytes


def test_full_word_stack_raises_instead_of_writing_out_of_bounds():
    from revtrain._kernels.rans import push_streams
    buf = rt.InfoBuffer(1)
    r = np.array([12345]); b = np.array([2 ** 16])
    with pytest.raises(RuntimeError, match="reserve"):
        for _ in range(10):
            push_streams(buf.states, buf.counts, buf.words, r, b)


@pytest.mark.parametrize("r, base, msg", [
    ([5], [5], "0 <= r < base"),
    ([-1], [5], "0 <= r < base"),
    ([0], [0], r"base must be in \[1, 65536\]"),
    ([0], [2 ** 16 + 1], r"base must be in \[1, 65536\]"),
    ([0, 1], [5], r"shape \(1,\)"),
    ([0.5], [5], "integers"),
])
def test_push_rejects_bad_input(r, base, msg):
    buf = rt.InfoBuffer(1)
    with pytest.raises(ValueError, match=msg):
        buf.push(r, base)
    assert buf.is_empty()


def test_bad_construction_and_pop_base():
    with pytest.raises(ValueError):
        rt.InfoBuffer(0)
    with pytest.raises(ValueError):
        rt.InfoBuffer(2).pop([3, 0])


def test_copy_is_independent():
    buf = rt.InfoBuffer(2)
    buf.push([3, 4], 10)
    c = buf.copy()
    assert c.pop(10).tolist() == [3, 4]
    assert buf.pop(10).tolist() == [3, 4]


def _divisions_to_check(f):
    """Numerators ``k < 2**16`` where ``k // f`` changes (multiples of ``f`` and the number
    below each), the largest, and some random ones."""
    k = np.concatenate([np.arange(0, 1 << 16, f), np.arange(f - 1, 1 << 16, f), [(1 << 16) - 1],
                        np.random.default_rng(f).integers(0, 1 << 16, 16)])
    return k[k < (1 << 16)].astype(np.int64)


def test_slot_division_by_reciprocal_tables_is_exact():
    """The forward multiply's pop divides the slot ``k < 2**16`` by a frequency ``f`` as
    ``(k * ceil(2**32 / f)) >> 32``, from the table MAGIC (``f < MAGIC_SIZE``) or computed the
    same way (larger ``f``, up to 2**16): exactly ``k // f`` wherever the quotient steps."""
    from revtrain._kernels.rans import MAGIC, MAGIC_SIZE
    assert MAGIC[0] == 0
    for f in range(1, (1 << 16) + 1):
        m = int(MAGIC[f]) if f < MAGIC_SIZE else ((1 << 32) + f - 1) // f
        assert m == -(-(1 << 32) // f)                        # ceil(2**32 / f)
        k = _divisions_to_check(f)
        assert np.array_equal((k * m) >> 32, k // f), f


def test_slot_division_by_a_rounded_down_reciprocal_would_be_wrong():
    """Negative control: ``floor(2**32 / f)`` instead of the ceiling misses quotients (the
    exactness rests on rounding the reciprocal up)."""
    wrong = 0
    for f in (3, 7, 641, 4095):
        k = _divisions_to_check(f)
        wrong += int(np.sum(((k * ((1 << 32) // f)) >> 32) != k // f))
    assert wrong > 0


def test_release_popped_frees_the_pages_above_the_stacks_and_keeps_the_words_below():
    from revtrain.buffer import InfoBuffer, RELEASE_BYTES
    S, n = 3, 12000                        # 3 x 12064 words: a memory-mapped stack
    buf = InfoBuffer(S, capacity=n + 64)
    rng = np.random.default_rng(0)
    symbols = rng.integers(0, 1 << 16, (n, S))
    for k in range(n):
        buf.push(symbols[k], 1 << 16)
    assert buf.release_popped() == 0        # nothing popped yet
    full, top = buf.counts.copy(), buf.words.copy()
    half = n // 2
    for k in range(n - 1, half - 1, -1):
        buf.pop(1 << 16)
    counts = buf.counts.copy()
    assert ((full - counts) * 4 >= RELEASE_BYTES).all()
    assert buf.release_popped() == S
    row, page_words = buf.words.shape[1], mmap.PAGESIZE // 4
    for s in range(S):
        c = int(counts[s])
        assert np.array_equal(buf.words[s, :c], top[s, :c])          # the stack is intact
        free = -(-(s * row + c) // page_words) * page_words - s * row
        assert free < full[s] and (top[s, free:full[s]] != 0).any()  # popped words were there
        assert (buf.words[s, free:] == 0).all()                      # released: zero pages
    assert buf.release_popped() == 0        # nothing more popped since
    for k in range(half - 1, -1, -1):
        assert np.array_equal(buf.pop(1 << 16), symbols[k])
    assert buf.is_empty()


def test_release_popped_leaves_a_small_buffer_alone():
    from revtrain.buffer import InfoBuffer
    buf = InfoBuffer(2, capacity=16)        # not memory-mapped
    buf.push([1, 2], 4)
    buf.pop(4)
    assert buf.release_popped() == 0


def test_release_popped_leaves_a_view_of_some_streams_alone():
    """A buffer over a view of some rows of a mapped stack (as a layer's view of a stack's
    buffer) releases nothing: its pages' offsets would not be the map's."""
    from revtrain.buffer import InfoBuffer
    whole = InfoBuffer(4, capacity=8192)               # 128 KiB: memory-mapped
    view = InfoBuffer(2)
    view.words = whole.words[2:]
    view.states, view.counts = whole.states[2:], whole.counts[2:]
    whole.words[:, :4000] = 7                          # every stream holds 4000 words
    whole.counts[:] = 4000
    view.release_popped()
    view.counts[:] = 0                                 # the view's streams popped empty
    assert view.release_popped() == 0
    assert (whole.words[:2, :4000] == 7).all()         # (the map's first rows: the offsets
    assert (whole.words[2:, :4000] == 7).all()         # the view's rows would have used)
