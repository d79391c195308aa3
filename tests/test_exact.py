import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import revtrain as rt
from reference_rans import RefStream, ref_exact_mul

INT_RANGE = st.integers(-2 ** 62, 2 ** 62)


@st.composite
def ratio(draw):
    d = draw(st.sampled_from([1, 2, 8, 2 ** 12, 2 ** 16, 3, 1000, 4097, 40000, 65535]) | st.integers(1, 2 ** 16))
    n = draw(st.integers(1, d))
    return n, d


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["mul", "add"]), ratio(), st.floats(-1e3, 1e3)),
                min_size=1, max_size=40),
       st.integers(1, 5), st.integers(1, 7), st.integers(0, 2 ** 32))
def test_random_program_undone_in_reverse_restores_every_bit(program, S, K, seed):
    """Multiplies (scalar and per-element ratios), divides and fixed-point adds, undone in reverse."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-2 ** 50, 2 ** 50, size=(S, K))
    q[0, 0] = 0
    if K > 1:
        q[0, 1] = -1
    q0 = q.copy()
    buf = rt.InfoBuffer(S)
    start_bytes = buf.nbytes
    undo = []
    for op, (n, d), a in program:
        if op == "mul":
            nn = n if rng.random() < 0.5 else rng.integers(1, d + 1, size=(S, K))
            rt.exact_mul(q, nn, d, buf)
            undo.append(("mul", nn, d))
        else:
            inc = rt.to_fixed(a * rng.standard_normal((S, K)), 20)
            q += inc
            undo.append(("add", inc, None))
    for op, x, d in reversed(undo):
        if op == "mul":
            rt.exact_div(q, x, d, buf)
        else:
            q -= x
    assert (q == q0).all()
    assert buf.is_empty()
    assert buf.nbytes == start_bytes


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(INT_RANGE, ratio()), min_size=1, max_size=30))
def test_exact_mul_matches_python_reference(steps):
    """The kernel equals a big-integer reference (floor semantics, same buffer words)."""
    buf = rt.InfoBuffer(1)
    ref = RefStream()
    q_ref = steps[0][0]
    q = np.array([[q_ref]], dtype=np.int64)
    for _, (n, d) in steps:
        rt.exact_mul(q, n, d, buf)
        q_ref = ref_exact_mul(q_ref, n, d, ref)
        assert int(q[0, 0]) == q_ref
        assert int(buf.states[0]) == ref.x
        assert buf.words[0, :buf.counts[0]].tolist() == ref.words


def test_negative_values_use_floor_semantics():
    buf = rt.InfoBuffer(1)
    q = np.array([[-7]], dtype=np.int64)
    rt.exact_mul(q, 1, 2, buf)       # -7/2: r = 1, (-7-1)/2 = -4
    assert q[0, 0] == -4
    rt.exact_div(q, 1, 2, buf)
    assert q[0, 0] == -7 and buf.is_empty()


def test_multiplying_by_one_over_d_then_d_changes_nothing_with_empty_pops():
    buf = rt.InfoBuffer(2)
    q = np.array([[5, -5], [2 ** 40 + 3, -(2 ** 40) - 3]], dtype=np.int64)
    q0 = q.copy()
    rt.exact_mul(q, 3, 7, buf)
    assert buf.info_bits == pytest.approx(2 * 2 * np.log2(7 / 3))
    rt.exact_div(q, 3, 7, buf)
    assert (q == q0).all() and buf.is_empty()


def test_float_arithmetic_is_not_reversible():
    """Negative control: the same program in float64 does not come back."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64))
    x0 = x.copy()
    factors = rng.uniform(1 / 8, 1, size=50)
    incs = rng.standard_normal((50, 4, 64))
    for f, inc in zip(factors, incs):
        x = x * f + inc
    for f, inc in zip(factors[::-1], incs[::-1]):
        x = (x - inc) / f
    assert not (x == x0).all()
    assert np.abs(x - x0).max() > 1e-6


def test_long_run_held_bits_within_one_percent_of_information():
    """10^5 multiplies per stream by factors in [1/8, 1] interleaved with fixed-point adds."""
    rng = np.random.default_rng(1)
    S, K, rounds = 4, 100, 1000
    for d in (2 ** 16, 40000):
        buf = rt.InfoBuffer(S)
        q = rt.to_fixed(rng.standard_normal((S, K)))
        for _ in range(rounds):
            rt.exact_mul(q, rng.integers(d // 8, d + 1, size=(S, K)), d, buf)
            q += rt.to_fixed(rng.standard_normal((S, K)))
        held = 8 * buf.nbytes
        assert held <= 1.01 * buf.info_bits + 64 * S
        assert held >= 0.99 * buf.info_bits


def test_momentum_ratio_is_coded_near_the_bound():
    """Momentum 0.9 as n/2^16: a large non-power-of-two base (split into two digits)."""
    rng = np.random.default_rng(2)
    n = int(rt.ratio_from_float(0.9))
    buf = rt.InfoBuffer(2)
    q = rt.to_fixed(rng.standard_normal((2, 500)))
    for _ in range(400):
        rt.exact_mul(q, n, 2 ** 16, buf)
        q += rt.to_fixed(rng.standard_normal((2, 500)))
    assert 8 * buf.nbytes <= 1.01 * buf.info_bits + 64 * 2


def test_exact_div_overflow_raises_and_changes_nothing():
    buf = rt.InfoBuffer(1)
    q = np.array([[1, 2 ** 62, 3]], dtype=np.int64)
    q0 = q.copy()
    with pytest.raises(rt.FixedPointError, match=r"overflow.*index \(0, 1\)"):
        rt.exact_div(q, 1, 4, buf)
    assert (q == q0).all() and buf.is_empty()


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(n=0, d=4), ValueError, "1 <= n <= d"),
    (dict(n=5, d=4), ValueError, "1 <= n <= d"),
    (dict(n=1, d=2 ** 16 + 1), ValueError, "1 <= n <= d"),
    (dict(n=np.array([[1, 5]]), d=4), ValueError, r"index \(0, 1\): n=5, d=4"),
    (dict(n=np.ones((1, 3), np.int64), d=4), ValueError, "broadcast"),
    (dict(n=1.5, d=4), ValueError, "integers"),
])
def test_bad_ratios_raise(kwargs, exc, msg):
    buf = rt.InfoBuffer(1)
    q = np.zeros((1, 2), dtype=np.int64)
    with pytest.raises(exc, match=msg):
        rt.exact_mul(q, kwargs["n"], kwargs["d"], buf)
    assert buf.is_empty()


def test_bad_arrays_raise():
    buf = rt.InfoBuffer(2)
    with pytest.raises(TypeError, match="int64"):
        rt.exact_mul(np.zeros((2, 3)), 1, 2, buf)
    with pytest.raises(ValueError, match="n_streams=2"):
        rt.exact_mul(np.zeros((3, 3), np.int64), 1, 2, buf)
    with pytest.raises(ValueError, match="C-contiguous"):
        rt.exact_mul(np.zeros((3, 2), np.int64).T, 1, 2, buf)
    with pytest.raises(TypeError, match="InfoBuffer"):
        rt.exact_mul(np.zeros((2, 3), np.int64), 1, 2, None)


def test_multidimensional_elements_are_undone_in_reverse_order():
    rng = np.random.default_rng(3)
    q = rng.integers(-10 ** 9, 10 ** 9, size=(3, 4, 5))
    n = rng.integers(1, 9, size=(3, 4, 5))
    q0 = q.copy()
    buf = rt.InfoBuffer(3)
    rt.exact_mul(q, n, 8, buf)
    rt.exact_mul(q, 5, 7, buf)
    rt.exact_div(q, 5, 7, buf)
    rt.exact_div(q, n, 8, buf)
    assert (q == q0).all() and buf.is_empty()


def test_overflow_check_is_exact_at_the_int64_limit():
    """The largest value that still fits is accepted; one more is refused."""
    top = np.iinfo(np.int64).max
    buf = rt.InfoBuffer(1)
    q = np.array([[top // 4, -(top // 4) - 1]], dtype=np.int64)   # * 4 (+ digit < 4) fits
    q0 = q.copy()
    rt.exact_div(q, 1, 4, buf)
    assert q[0, 0] >= 4 * q0[0, 0] and q[0, 1] < 0
    rt.exact_mul(q, 1, 4, buf)
    assert (q == q0).all() and buf.is_empty()
    for bad in (top // 4 + 1, -(top // 4) - 2):
        with pytest.raises(rt.FixedPointError, match="overflow"):
            rt.exact_div(np.array([[bad]], dtype=np.int64), 1, 4, rt.InfoBuffer(1))
