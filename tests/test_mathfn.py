"""Fast vectorisable exp / tanh / sigmoid (revtrain/_kernels/mathfn.py) against libm."""
import math

import numpy as np
import pytest
from numba import njit

from revtrain._kernels.mathfn import exp_, tanh_, sigmoid_, log_, real_

TOL = 1e-14          # relative, for normal results


def _sigmoid_ref(a):
    if a >= 0:
        return 1.0 / (1.0 + math.exp(-a))
    e = math.exp(a)
    return e / (1.0 + e)


REF = {"exp": math.exp, "tanh": math.tanh, "sigmoid": _sigmoid_ref}


@njit(error_model="numpy")
def _apply_exp(x, out):
    for i in range(x.size):
        out[i] = exp_(x[i])


@njit(error_model="numpy")
def _apply_tanh(x, out):
    for i in range(x.size):
        out[i] = tanh_(x[i])


@njit(error_model="numpy")
def _apply_sigmoid(x, out):
    for i in range(x.size):
        out[i] = sigmoid_(x[i])


@njit(error_model="numpy")
def _scalar(kind, a):
    # one element at a time (no loop for LLVM to vectorise)
    if kind == 0:
        return exp_(a)
    if kind == 1:
        return tanh_(a)
    return sigmoid_(a)


APPLY = {"exp": _apply_exp, "tanh": _apply_tanh, "sigmoid": _apply_sigmoid}
KIND = {"exp": 0, "tanh": 1, "sigmoid": 2}


def _inputs(lo, hi):
    rng = np.random.default_rng(12)
    tiny = np.exp(rng.uniform(-700.0, -1.0, 3000)) * rng.choice([-1.0, 1.0], 3000)
    parts = [rng.uniform(-1.0, 1.0, 20000), rng.uniform(-40.0, 40.0, 20000),
             rng.uniform(lo, hi, 20000), tiny, np.linspace(-25.0, 25.0, 10001),
             np.array([0.0, -0.0, 5e-324, -5e-324, 1e-300, 0.5 * math.log(2.0),
                       -0.5 * math.log(2.0), math.log(2.0), 1.0, -1.0, 19.0, -19.0,
                       40.0, -40.0, 1e3, -1e3, 1e300, -1e300])]
    return np.concatenate(parts)


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid"])
def test_matches_libm(name):
    x = _inputs(-745.0, 709.7) if name == "exp" else _inputs(-1e4, 1e4)
    out = np.empty_like(x)
    APPLY[name](x, out)
    ref = np.array([REF[name](v) if not (name == "exp" and v > 709.7) else math.inf
                    for v in x])
    normal = np.abs(ref) >= np.finfo(np.float64).tiny
    finite = np.isfinite(ref)
    rel = np.abs(out[normal & finite] - ref[normal & finite]) / np.abs(ref[normal & finite])
    assert rel.max() <= TOL, (name, x[normal & finite][np.argmax(rel)], rel.max())
    # subnormal or zero results: tiny absolute error only
    assert np.all(np.abs(out[~normal] - ref[~normal]) <= 1e-300)
    assert np.array_equal(np.isfinite(out), finite)


def test_tiny_arguments_keep_relative_accuracy():
    x = np.array([1e-300, -1e-200, 1e-20, -3e-12, 1e-8, -1e-5])
    out = np.empty_like(x)
    _apply_tanh(x, out)
    for a, t in zip(x, out):
        assert abs(t - math.tanh(a)) <= 1e-15 * abs(math.tanh(a))


def test_limits():
    x = np.array([710.0, 1e4, -746.0, -1e4])
    out = np.empty_like(x)
    _apply_exp(x, out)
    assert out[0] == math.inf and out[1] == math.inf and out[2] == 0.0 and out[3] == 0.0
    x = np.array([40.0, 1e300, -40.0, -1e300, 0.0])
    _apply_tanh(x, out := np.empty_like(x))
    assert list(out) == [1.0, 1.0, -1.0, -1.0, 0.0]
    _apply_sigmoid(np.array([0.0, 800.0, -800.0]), out := np.empty(3))
    assert out[0] == 0.5 and out[1] == 1.0 and 0.0 <= out[2] < 1e-300


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid"])
def test_vectorised_equals_scalar_bit_for_bit(name):
    x = np.random.default_rng(3).uniform(-30.0, 30.0, 1001)
    out = np.empty_like(x)
    APPLY[name](x, out)
    scal = np.array([_scalar(KIND[name], v) for v in x])
    assert np.array_equal(out.view(np.int64), scal.view(np.int64))
    out2 = np.empty_like(x)
    APPLY[name](x, out2)
    assert np.array_equal(out.view(np.int64), out2.view(np.int64))


@njit(error_model="numpy")
def _complex_all(z, out):
    for i in range(z.size):
        out[0, i] = exp_(z[i])
        out[1, i] = tanh_(z[i])
        out[2, i] = sigmoid_(z[i])
        out[3, i] = log_(z[i] * z[i] + 1.0)
        out[4, i] = real_(z[i])


def test_complex_first_order_and_real_part_bit_for_bit():
    rng = np.random.default_rng(5)
    a = rng.uniform(-8.0, 8.0, 257)
    b = rng.uniform(-1.0, 1.0, 257) * 1e-30
    out = np.empty((5, a.size), dtype=np.complex128)
    _complex_all(a + 1j * b, out)
    for k, name in enumerate(["exp", "tanh", "sigmoid"]):
        re = np.empty_like(a)
        APPLY[name](a, re)
        assert np.array_equal(out[k].real, re)
    sg = 1.0 / (1.0 + np.exp(-a))
    np.testing.assert_allclose(out[0].imag, b * np.exp(a), rtol=1e-14, atol=0)
    # 1 - tanh^2 cancels for large |a|: compare where it is well conditioned
    ok = np.abs(a) < 3.0
    np.testing.assert_allclose(out[1].imag[ok], b[ok] / np.cosh(a[ok]) ** 2, rtol=1e-13, atol=0)
    t = out[1].real
    assert np.array_equal(out[1].imag, b * (1.0 - t * t))
    np.testing.assert_allclose(out[2].imag, b * sg * (1.0 - sg), rtol=1e-13, atol=0)
    # log(z^2 + 1): derivative 2a / (a^2 + 1); z^2 has imaginary part 2ab
    np.testing.assert_allclose(out[3].imag, 2 * a * b / (a * a + 1.0), rtol=1e-14, atol=0)
    assert np.array_equal(out[4].real, a) and np.all(out[4].imag == 0)


# ------------------------------------------------------------------ float32
TOL32 = 4e-7         # relative: a few float32 ulp (the float64 versions round once: 0.5 ulp)


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid"])
def test_float32_versions_compute_in_float32_to_a_few_ulp(name):
    """float32 arguments run the float32 versions (3x faster than float64 arithmetic here):
    against the float64 reference within 4e-7 relative for normal results, finite where it
    is, the same bits scalar and vectorised."""
    rng = np.random.default_rng(7)
    hi = 88.0 if name == "exp" else 100.0
    x = np.concatenate([rng.uniform(-1.0, 1.0, 20000), rng.uniform(-hi, hi, 20000),
                        np.exp(rng.uniform(-80.0, -1.0, 2000)) * rng.choice([-1.0, 1.0], 2000),
                        [0.0, -0.0, 1e-30, -1e-30, 9.0, -9.0, 20.0, -20.0]]).astype(np.float32)
    out = np.empty_like(x)
    APPLY[name](x, out)
    assert out.dtype == np.float32
    ref = np.array([REF[name](float(v)) for v in x])
    normal = np.abs(ref) >= np.finfo(np.float32).tiny
    rel = np.abs(out[normal].astype(np.float64) - ref[normal]) / np.abs(ref[normal])
    assert rel.max() <= TOL32, (name, x[normal][np.argmax(rel)], rel.max())
    assert np.all(np.abs(out[~normal]) <= 2 * np.finfo(np.float32).tiny)
    scal = np.array([_scalar(KIND[name], v) for v in x[:500]], dtype=np.float32)
    assert np.array_equal(out[:500].view(np.int32), scal.view(np.int32))


def test_float32_limits():
    x = np.array([88.0, 89.0, 1e30, -103.0, -104.0, -1e30], dtype=np.float32)
    out = np.empty_like(x)
    _apply_exp(x, out)
    assert np.isfinite(out[0]) and out[1] == np.inf and out[2] == np.inf
    assert 0.0 < out[3] < 1e-44 and out[4] == 0.0 and out[5] == 0.0
    x = np.array([10.0, 1e30, -10.0, -1e30, 0.0], dtype=np.float32)
    _apply_tanh(x, out := np.empty_like(x))
    assert list(out) == [1.0, 1.0, -1.0, -1.0, 0.0]
    _apply_sigmoid(np.array([0.0, 200.0, -200.0], dtype=np.float32),
                   out := np.empty(3, dtype=np.float32))
    assert out[0] == 0.5 and out[1] == 1.0 and out[2] == 0.0
