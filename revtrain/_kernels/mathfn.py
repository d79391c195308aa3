"""Elementwise functions for kernels, generic over float64 and complex128.

The complex versions serve the complex-step Hessian-vector product: a
parameter vector ``theta + i*eps*v`` with ``eps = 1e-30`` is pushed through
the same kernels, and ``Im(grad) / eps`` is the exact directional derivative
of the gradient. For ``z = a + i*b`` with ``|b|`` of order ``eps`` every
function is evaluated to first order, ``f(z) = f(a) + i*b*f'(a)`` (the
``b**2`` terms are below 1e-60 relative), so the real part equals the float64
result bit for bit.
"""
import math

from numba import njit, types
from numba.extending import overload

_fast = dict(cache=True, inline="always", error_model="numpy")


def tanh_(z):
    """tanh for float64 or complex128 (first order in the imaginary part)."""
    raise NotImplementedError


def exp_(z):
    """exp for float64 or complex128 (first order in the imaginary part)."""
    raise NotImplementedError


def log_(z):
    """log for float64 or complex128 (first order in the imaginary part)."""
    raise NotImplementedError


def sigmoid_(z):
    """Logistic sigmoid ``1 / (1 + exp(-z))`` for float64 or complex128."""
    raise NotImplementedError


def real_(z):
    """Real part (the value itself for floats)."""
    raise NotImplementedError


@njit(**_fast)
def _sigmoid_real(a):
    if a >= 0.0:
        return 1.0 / (1.0 + math.exp(-a))
    e = math.exp(a)
    return e / (1.0 + e)


@overload(tanh_, inline="always")
def _tanh_impl(z):
    if isinstance(z, types.Complex):
        def impl(z):
            t = math.tanh(z.real)
            return complex(t, z.imag * (1.0 - t * t))
        return impl
    return lambda z: math.tanh(z)


@overload(exp_, inline="always")
def _exp_impl(z):
    if isinstance(z, types.Complex):
        def impl(z):
            e = math.exp(z.real)
            return complex(e, z.imag * e)
        return impl
    return lambda z: math.exp(z)


@overload(log_, inline="always")
def _log_impl(z):
    if isinstance(z, types.Complex):
        def impl(z):
            return complex(math.log(z.real), z.imag / z.real)
        return impl
    return lambda z: math.log(z)


@overload(sigmoid_, inline="always")
def _sigmoid_impl(z):
    if isinstance(z, types.Complex):
        def impl(z):
            s = _sigmoid_real(z.real)
            return complex(s, z.imag * s * (1.0 - s))
        return impl
    return lambda z: _sigmoid_real(z)


@overload(real_, inline="always")
def _real_impl(z):
    if isinstance(z, types.Complex):
        return lambda z: z.real
    return lambda z: z
