import numpy as np
import pytest
from hypothesis import given, strategies as st

import revtrain as rt


def test_round_half_to_even_and_default_radix():
    assert rt.DEFAULT_FRAC_BITS == 32
    q = rt.to_fixed([0.5, 1.5, 2.5, -0.5, -1.5, 0.25, 0.75], frac_bits=0)
    assert q.tolist() == [0, 2, 2, 0, -2, 0, 1]
    assert q.dtype == np.int64
    assert rt.to_fixed(1.0).tolist() == 2 ** 32
    assert rt.to_fixed(2.0 ** -33, 32).tolist() == 0      # tie -> even (0)
    assert rt.to_fixed(3 * 2.0 ** -33, 32).tolist() == 2  # 1.5 -> 2


@given(st.lists(st.floats(-2.0 ** 30, 2.0 ** 30, allow_nan=False), min_size=1, max_size=50),
       st.integers(0, 32))
def test_round_trip_is_nearest(xs, F):
    x = np.array(xs)
    q = rt.to_fixed(x, F)
    back = rt.from_fixed(q, F)
    assert np.all(np.abs(back - x) <= 2.0 ** (-F - 1))
    # values already on the grid come back exactly
    assert (rt.to_fixed(back, F) == q).all()


@pytest.mark.parametrize("bad, what", [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_non_finite_raises_with_index_and_count(bad, what):
    x = np.zeros((3, 4))
    x[1, 2] = bad
    x[2, 0] = bad
    with pytest.raises(rt.FixedPointError, match=r"2 value\(s\).*index \(1, 2\)"):
        rt.to_fixed(x)


def test_overflow_raises_never_wraps():
    limit = 2.0 ** (63 - 32)
    with pytest.raises(rt.FixedPointError, match=r"do not fit int64.*index \(1,\)"):
        rt.to_fixed([1.0, limit])
    with pytest.raises(rt.FixedPointError):
        rt.to_fixed([-limit * 1.0000001])
    assert rt.to_fixed([-limit]).tolist() == [np.iinfo(np.int64).min]
    assert issubclass(rt.FixedPointError, ValueError)


def test_bad_types_and_radix():
    with pytest.raises(TypeError):
        rt.to_fixed(np.array([1 + 2j]))
    with pytest.raises(TypeError):
        rt.to_fixed(np.array([True]))
    with pytest.raises(ValueError, match="frac_bits"):
        rt.to_fixed([1.0], frac_bits=63)
    with pytest.raises(TypeError):
        rt.from_fixed(np.array([1.5]))


def test_ratio_from_float():
    assert int(rt.ratio_from_float(0.5)) == 2 ** 15
    assert int(rt.ratio_from_float(1.0)) == 2 ** 16
    assert int(rt.ratio_from_float(1e-9)) == 1
    assert rt.ratio_from_float([0.9, 0.125], bits=8).tolist() == [230, 32]
    with pytest.raises(ValueError, match="not in \\(0, 1\\]"):
        rt.ratio_from_float([0.5, 1.5])
    with pytest.raises(ValueError):
        rt.ratio_from_float(0.0)
