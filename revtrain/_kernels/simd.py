"""Vector registers for the register-blocked product kernels: LLVM vectors as Numba values.

Two vector types, one per float type, each 64 bytes (one AVX-512 register,
two AVX2 ones; LLVM splits them where needed, with the same lane-by-lane
results):

* ``F64x8``: eight float64 lanes (``<8 x double>``), for float64 matrices;
* ``F32x16``: sixteen float32 lanes (``<16 x float>``), for float32 ones.

The intrinsics below pick the type from their arguments: :func:`vload` of a
float64 matrix gives an ``F64x8``, of a float32 one an ``F32x16``; a vector
is a kernel's local variable, never stored in an array.

``vload(a, i, j)`` / ``vstore(a, i, j, v)``
    ``a[i, j:j+L]`` of a C-contiguous matrix (no bounds check: the caller
    keeps ``j + L <= a.shape[1]``).
``vsplat(x)``
    ``x`` (float64 or float32) in every lane.
``vfma(a, b, c)``
    ``a*b + c`` lane by lane with one rounding (``llvm.fma``).
``vadd(a, b)``
    ``a + b`` lane by lane.
``vsum(v)``
    the lanes of ``v`` added in a fixed tree (:func:`vsum`).
``lanes(a)``
    the lanes of the vectors of matrix ``a`` (a compile-time constant).
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model


class _VectorType(types.Type):
    """``lanes`` values of ``dtype`` in a register."""

    def __init__(self, dtype, lanes):
        self.dtype, self.lanes = dtype, lanes
        super().__init__(name=f"revtrain.{'F64' if dtype == types.float64 else 'F32'}x{lanes}")


F64x8 = _VectorType(types.float64, 8)
F32x16 = _VectorType(types.float32, 16)
#: The vector type of each float type.
_BY_DTYPE = {types.float64: F64x8, types.float32: F32x16}


def lanes(a):
    """Lanes of the vector type of array ``a``'s float type (16 for float32, 8 for
    float64), a compile-time constant. (Numba only: an ``overload``.)"""
    raise NotImplementedError("lanes runs inside Numba kernels")


@overload(lanes, inline="always")
def _lanes_impl(a):
    vt = _BY_DTYPE.get(getattr(a, "dtype", None))
    if vt is None:
        return None
    n = vt.lanes
    return lambda a: n


def _ir_type(vt):
    return ir.VectorType(ir.DoubleType() if vt.dtype == types.float64 else ir.FloatType(),
                         vt.lanes)


@register_model(_VectorType)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _ir_type(fe_type))


def _matrix_vector(a):
    """The vector type of a C-contiguous float64/float32 matrix ``a``, or None."""
    if isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C":
        return _BY_DTYPE.get(a.dtype)
    return None


def _lane_pointer(context, builder, sig, args, vt):
    """Pointer (as a vector pointer) to ``a[i, j]`` of a C-contiguous matrix."""
    aryty = sig.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]],
                                   wraparound=False)
    return builder.bitcast(ptr, _ir_type(vt).as_pointer())


def _indices(i, j):
    return isinstance(i, types.Integer) and isinstance(j, types.Integer)


@intrinsic
def vload(typingctx, a, i, j):
    """``a[i, j:j+L]`` as a vector."""
    vt = _matrix_vector(a)
    if vt is None or not _indices(i, j):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_lane_pointer(context, builder, sig, args, vt),
                            align=vt.dtype.bitwidth // 8)
    return vt(a, i, j), codegen


@intrinsic
def vstore(typingctx, a, i, j, v):
    """``a[i, j:j+L] = v``."""
    vt = _matrix_vector(a)
    if vt is None or not _indices(i, j) or v != vt:
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[3], _lane_pointer(context, builder, sig, args, vt),
                      align=vt.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(a, i, j, v), codegen


@intrinsic
def vsplat(typingctx, x):
    """``x`` in every lane."""
    vt = _BY_DTYPE.get(x)
    if vt is None:
        return None

    def codegen(context, builder, sig, args):
        ty = _ir_type(vt)
        undef = ir.Constant(ty, ir.Undefined)
        v = builder.insert_element(undef, args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, undef, ir.Constant(
            ir.VectorType(ir.IntType(32), vt.lanes), [0] * vt.lanes))
    return vt(x), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """``a*b + c`` lane by lane with one rounding (``llvm.fma``)."""
    if not (isinstance(a, _VectorType) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        ty = _ir_type(a)
        name = f"llvm.fma.v{a.lanes}{'f64' if a.dtype == types.float64 else 'f32'}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3), name)
        return builder.call(fn, args)
    return a(a, b, c), codegen


@intrinsic
def vadd(typingctx, a, b):
    """``a + b`` lane by lane."""
    if not (isinstance(a, _VectorType) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return a(a, b), codegen


@intrinsic
def vsum(typingctx, v):
    """The lanes of ``v`` added in a fixed tree: the upper half of the lanes is added to
    the lower half lane by lane (lane ``j + n/2`` onto lane ``j``) until one lane is left.
    For eight lanes: ``((v0+v4) + (v2+v6)) + ((v1+v5) + (v3+v7))``. The order is the
    type's, never the machine's."""
    if not isinstance(v, _VectorType):
        return None

    def codegen(context, builder, sig, args):
        x, n = args[0], v.lanes
        while n > 1:
            h = n // 2
            lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(ir.IntType(32), h),
                                                          list(range(h))))
            hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(ir.IntType(32), h),
                                                          list(range(h, n))))
            x, n = builder.fadd(lo, hi), h
        return builder.extract_element(x, ir.Constant(ir.IntType(32), 0))
    return v.dtype(v), codegen
