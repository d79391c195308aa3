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


# ------------------------------------------- the library's call sites use them
import revtrain as rt  # noqa: E402


@pytest.mark.parametrize("call, error, message", [
    (lambda: rt.InfoBuffer(True), ValueError, "n_streams must be a positive int, got True"),
    (lambda: rt.to_fixed(1.0, 63), ValueError, r"frac_bits must be an int in \[0, 62\], got 63"),
    (lambda: rt.to_fixed(1.0, 32.0), TypeError, "frac_bits must be an int, got float"),
    (lambda: rt.ratio_from_float(0.5, bits=17), ValueError, r"bits must be an int in \[1, 16\]"),
    (lambda: rt.RNN(2, 3, 2).init_params(seed=-1), ValueError, "seed must be an int >= 0"),
    (lambda: rt.RNN(2, 3, 2).init_params(scale=True), ValueError,
     "scale must be a positive finite number, got True"),
    (lambda: rt.set_blas_threads(0), ValueError, "n must be a positive int or None, got 0"),
    (lambda: rt.RevLSTM(2, 3, 2), ValueError, "n_hidden must be even for RevLSTM"),
    (lambda: rt.RevGRU(2, 4, 2, frac_bits=True), ValueError,
     r"frac_bits must be an int in \[8, 52\], got True"),
    (lambda: rt.RevGRU(2, 4, 2, gate_bits=8, max_forget_bits=9), ValueError,
     r"max_forget_bits must be an int in \[1, 8\], got 9"),
    (lambda: rt.copy_task(2, -1, 3), ValueError, "delay must be an int >= 0, got -1"),
    (lambda: rt.digits_task(val_fraction=1.0), ValueError, r"val_fraction must be in \(0, 1\)"),
])
def test_library_arguments_are_checked_with_the_shared_messages(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_numpy_integers_are_stored_as_python_ints():
    m = rt.RevGRU(2, np.int64(4), 2, frac_bits=np.int32(40), gate_bits=np.uint8(12))
    assert type(m.frac_bits) is int and type(m.gate_bits) is int and type(m.n_hidden) is int
    old = rt.set_blas_threads(np.int64(1))
    try:
        assert type(rt.get_blas_threads()) is int
    finally:
        rt.set_blas_threads(old)
    assert np.array_equal(rt.RNN(2, 3, 2).init_params(seed=np.int16(4), scale=np.float32(2)),
                          rt.RNN(2, 3, 2).init_params(seed=4, scale=2.0))
