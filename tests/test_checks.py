"""The shared argument checks in revtrain._checks."""
import math

import numpy as np
import pytest

from revtrain._checks import (is_int, is_number, positive_int, int_at_least, nonneg_int,
                              int_in_range, positive_number, number_in_range)


def test_is_int_and_is_number_reject_bool():
    assert is_int(3) and is_int(np.int64(3)) and not is_int(True) and not is_int(3.0)
    assert is_number(2.5) and is_number(np.float32(1)) and not is_number(False)
    assert not is_number("1")


@pytest.mark.parametrize("check, good, expected", [
    (lambda v: positive_int(v, "n"), np.int32(3), 3),
    (lambda v: nonneg_int(v, "seed"), np.uint8(0), 0),
    (lambda v: int_at_least(v, "max_chars", 4), 4, 4),
    (lambda v: int_in_range(v, "frac_bits", 8, 52), np.int16(52), 52),
    (lambda v: positive_number(v, "lr"), np.float32(0.5), 0.5),
    (lambda v: number_in_range(v, "b1", 0, 1, hi_open=True), np.int64(0), 0.0),
])
def test_accepted_values_come_back_as_python_scalars(check, good, expected):
    out = check(good)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("call, message", [
    (lambda: positive_int(True, "n"), "n must be a positive int, got True"),
    (lambda: positive_int(0, "n"), "n must be a positive int, got 0"),
    (lambda: positive_int("2", "n", none_ok=True), "n must be a positive int or None"),
    (lambda: nonneg_int(-1, "seed"), "seed must be an int >= 0, got -1"),
    (lambda: int_at_least(3, "max_chars", 4), "max_chars must be an int >= 4, got 3"),
    (lambda: int_in_range(53, "frac_bits", 8, 52), r"frac_bits must be an int in \[8, 52\]"),
    (lambda: int_in_range(8.0, "frac_bits", 8, 52), r"frac_bits must be an int in \[8, 52\]"),
    (lambda: positive_number(math.inf, "lr"), "lr must be a positive finite number, got inf"),
    (lambda: positive_number(True, "lr"), "lr must be a positive finite number, got True"),
    (lambda: number_in_range(1.0, "b1", 0, 1, hi_open=True), r"b1 must be in \[0, 1\), got 1.0"),
    (lambda: number_in_range(0, "f", 0, 1, lo_open=True, hi_open=True), r"f must be in \(0, 1\)"),
    (lambda: number_in_range(math.nan, "f", 0, 1), r"f must be in \[0, 1\]"),
    (lambda: number_in_range("x", "f", 0, 1), r"f must be in \[0, 1\], got 'x'"),
])
def test_rejections_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_none_ok_passes_none_through():
    assert positive_int(None, "n", none_ok=True) is None
    assert positive_number(None, "clip", none_ok=True) is None
    with pytest.raises(ValueError):
        positive_int(None, "n")
