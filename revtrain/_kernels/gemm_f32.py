"""float32 matrix products of the reversible cells' steps, in register-blocked vector kernels.

A reversible step's products are small: ``(B, k) x (k, n)`` with ``B`` the
16 rows of a row group (or 1), e.g. ``(16, 128) x (128, 640)`` for a RevLSTM
half at H=256. Through OpenBLAS each call repacks the whole ``(k, n)``
weight matrix for 16 rows of work: measured with its Haswell kernels on one
core, the packing took about as long as the arithmetic (60 GFLOP/s in all).
These kernels read the weights in place, keep a block of 4 rows by 64
columns in 16 vector registers and stream the weights through them.

Vectors are LLVM ``<16 x float>`` (``F32x16``: one AVX-512 register, two AVX2
ones; loads, stores, broadcast and ``llvm.fma`` below). A product with a
transposed weight (``dA @ W.T``) takes a transposed copy made once per call
(:func:`revtrain.models.window.transposed`): reading ``W`` across its rows
instead measured 3x slower. Measured on one core (Zen 5, AVX-512), per call:
``(16, 128) x (128, 640)`` 13.8 us against OpenBLAS's 44.0 (its Haswell
kernels, which this machine's environment selects), ``(16, 640) x (640, 128)``
10.5 against 43.3, ``(1, 64) x (64, 320)`` 0.67 against 0.68.

Bits
----
Every output element is computed alone, in an order fixed by the shapes:

element ``out[i, j]`` of :func:`matmul_f32` (``out = A @ W``) is the chain
``fma(A[i, k], W[k, j], .)`` over ``k`` ascending, from 0. So its bits
depend neither on the other rows of the product (how a batch is cut into
row groups) nor on the block an element falls in, the CPU's vector width
or the thread count.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from ._options import NJIT_OPTS
from .mathfn import _fma


class _F32x16Type(types.Type):
    """Sixteen float32 lanes in a register (a kernel's local variable, never in an array)."""

    def __init__(self):
        super().__init__(name="revtrain.F32x16")


_f32x16 = _F32x16Type()
_V16 = ir.VectorType(ir.FloatType(), 16)


@register_model(_F32x16Type)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V16)


def _f32_matrix(a):
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim == 2 \
        and a.layout == "C"


def _lane_pointer(context, builder, sig, args):
    """Pointer (as ``<16 x float>*``) to ``a[i, j]`` of a C-contiguous float32 matrix."""
    aryty = sig.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]],
                                   wraparound=False)
    return builder.bitcast(ptr, _V16.as_pointer())


@intrinsic
def _vload(typingctx, a, i, j):
    """``a[i, j:j+16]`` as a vector (no bounds check: the caller keeps ``j + 16 <= a.shape[1]``)."""
    if not (_f32_matrix(a) and isinstance(i, types.Integer) and isinstance(j, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_lane_pointer(context, builder, sig, args), align=4)
    return _f32x16(a, i, j), codegen


@intrinsic
def _vstore(typingctx, a, i, j, v):
    """``a[i, j:j+16] = v``."""
    if not (_f32_matrix(a) and isinstance(i, types.Integer) and isinstance(j, types.Integer)
            and v == _f32x16):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[3], _lane_pointer(context, builder, sig, args), align=4)
        return context.get_dummy_value()
    return types.none(a, i, j, v), codegen


@intrinsic
def _vsplat(typingctx, x):
    """``x`` in all sixteen lanes."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        undef = ir.Constant(_V16, ir.Undefined)
        v = builder.insert_element(undef, args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), 16),
                                                            [0] * 16))
    return _f32x16(x), codegen


@intrinsic
def _vzero(typingctx):
    """Sixteen zeros."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_V16, [0.0] * 16)
    return _f32x16(), codegen


@intrinsic
def _vfma(typingctx, a, b, c):
    """``a*b + c`` lane by lane with one rounding (``llvm.fma``)."""
    if not (a == _f32x16 and b == _f32x16 and c == _f32x16):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16] * 3),
                                            "llvm.fma.v16f32")
        return builder.call(fn, args)
    return _f32x16(a, b, c), codegen


# ------------------------------------------------------------------ out = A @ W
@njit(**NJIT_OPTS)
def matmul_f32(A, W, out):
    """``out = A @ W``: A (M, K), W (K, N), out (M, N), float32, C-contiguous.

    Blocks of 4 rows by 64 columns (16 vector accumulators), then 4 rows by
    16, then scalar columns; the last ``M % 4`` rows one by one
    (:func:`_row_matmul_f32`). Element ``out[i, j]`` is the fused chain over
    ``k`` ascending from 0 in every block.
    """
    M, K = A.shape
    N = W.shape[1]
    M4 = M - M % 4
    for r in range(M4, M):
        _row_matmul_f32(A, W, out, r)
    for r in range(0, M4, 4):
        i0 = r
        i1 = r + 1
        i2 = r + 2
        i3 = r + 3
        j = 0
        while j + 64 <= N:
            c00 = _vzero()
            c01 = _vzero()
            c02 = _vzero()
            c03 = _vzero()
            c10 = _vzero()
            c11 = _vzero()
            c12 = _vzero()
            c13 = _vzero()
            c20 = _vzero()
            c21 = _vzero()
            c22 = _vzero()
            c23 = _vzero()
            c30 = _vzero()
            c31 = _vzero()
            c32 = _vzero()
            c33 = _vzero()
            for k in range(K):
                w0 = _vload(W, k, j)
                w1 = _vload(W, k, j + 16)
                w2 = _vload(W, k, j + 32)
                w3 = _vload(W, k, j + 48)
                x = _vsplat(A[i0, k])
                c00 = _vfma(x, w0, c00)
                c01 = _vfma(x, w1, c01)
                c02 = _vfma(x, w2, c02)
                c03 = _vfma(x, w3, c03)
                x = _vsplat(A[i1, k])
                c10 = _vfma(x, w0, c10)
                c11 = _vfma(x, w1, c11)
                c12 = _vfma(x, w2, c12)
                c13 = _vfma(x, w3, c13)
                x = _vsplat(A[i2, k])
                c20 = _vfma(x, w0, c20)
                c21 = _vfma(x, w1, c21)
                c22 = _vfma(x, w2, c22)
                c23 = _vfma(x, w3, c23)
                x = _vsplat(A[i3, k])
                c30 = _vfma(x, w0, c30)
                c31 = _vfma(x, w1, c31)
                c32 = _vfma(x, w2, c32)
                c33 = _vfma(x, w3, c33)
            _vstore(out, i3, j, c30)
            _vstore(out, i3, j + 16, c31)
            _vstore(out, i3, j + 32, c32)
            _vstore(out, i3, j + 48, c33)
            _vstore(out, i2, j, c20)
            _vstore(out, i2, j + 16, c21)
            _vstore(out, i2, j + 32, c22)
            _vstore(out, i2, j + 48, c23)
            _vstore(out, i1, j, c10)
            _vstore(out, i1, j + 16, c11)
            _vstore(out, i1, j + 32, c12)
            _vstore(out, i1, j + 48, c13)
            _vstore(out, i0, j, c00)
            _vstore(out, i0, j + 16, c01)
            _vstore(out, i0, j + 32, c02)
            _vstore(out, i0, j + 48, c03)
            j += 64
        while j + 16 <= N:
            c0 = _vzero()
            c1 = _vzero()
            c2 = _vzero()
            c3 = _vzero()
            for k in range(K):
                w0 = _vload(W, k, j)
                c0 = _vfma(_vsplat(A[i0, k]), w0, c0)
                c1 = _vfma(_vsplat(A[i1, k]), w0, c1)
                c2 = _vfma(_vsplat(A[i2, k]), w0, c2)
                c3 = _vfma(_vsplat(A[i3, k]), w0, c3)
            _vstore(out, i3, j, c3)
            _vstore(out, i2, j, c2)
            _vstore(out, i1, j, c1)
            _vstore(out, i0, j, c0)
            j += 16
        while j < N:
            for i in range(r, r + 4):
                out[i, j] = _column_f32(A, W, i, j)
            j += 1


@njit(**NJIT_OPTS)
def _column_f32(A, W, i, j):
    """``(A @ W)[i, j]``: the fma chain over ``k`` ascending from 0."""
    acc = np.float32(0.0)
    for k in range(A.shape[1]):
        acc = _fma(A[i, k], W[k, j], acc)
    return acc


@njit(**NJIT_OPTS)
def _row_matmul_f32(A, W, out, i):
    """Row ``i`` of ``out = A @ W`` alone (the rows after the last block of 4): blocks of
    128 columns (8 vector accumulators), then 64, 16, then scalar columns."""
    K = A.shape[1]
    N = W.shape[1]
    j = 0
    while j + 128 <= N:
        c0 = _vzero()
        c1 = _vzero()
        c2 = _vzero()
        c3 = _vzero()
        c4 = _vzero()
        c5 = _vzero()
        c6 = _vzero()
        c7 = _vzero()
        for k in range(K):
            x = _vsplat(A[i, k])
            c0 = _vfma(x, _vload(W, k, j), c0)
            c1 = _vfma(x, _vload(W, k, j + 16), c1)
            c2 = _vfma(x, _vload(W, k, j + 32), c2)
            c3 = _vfma(x, _vload(W, k, j + 48), c3)
            c4 = _vfma(x, _vload(W, k, j + 64), c4)
            c5 = _vfma(x, _vload(W, k, j + 80), c5)
            c6 = _vfma(x, _vload(W, k, j + 96), c6)
            c7 = _vfma(x, _vload(W, k, j + 112), c7)
        _vstore(out, i, j, c0)
        _vstore(out, i, j + 16, c1)
        _vstore(out, i, j + 32, c2)
        _vstore(out, i, j + 48, c3)
        _vstore(out, i, j + 64, c4)
        _vstore(out, i, j + 80, c5)
        _vstore(out, i, j + 96, c6)
        _vstore(out, i, j + 112, c7)
        j += 128
    while j + 64 <= N:
        c0 = _vzero()
        c1 = _vzero()
        c2 = _vzero()
        c3 = _vzero()
        for k in range(K):
            x = _vsplat(A[i, k])
            c0 = _vfma(x, _vload(W, k, j), c0)
            c1 = _vfma(x, _vload(W, k, j + 16), c1)
            c2 = _vfma(x, _vload(W, k, j + 32), c2)
            c3 = _vfma(x, _vload(W, k, j + 48), c3)
        _vstore(out, i, j, c0)
        _vstore(out, i, j + 16, c1)
        _vstore(out, i, j + 32, c2)
        _vstore(out, i, j + 48, c3)
        j += 64
    while j + 16 <= N:
        c0 = _vzero()
        for k in range(K):
            c0 = _vfma(_vsplat(A[i, k]), _vload(W, k, j), c0)
        _vstore(out, i, j, c0)
        j += 16
    while j < N:
        out[i, j] = _column_f32(A, W, i, j)
        j += 1
