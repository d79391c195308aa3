"""Bit-twiddling intrinsics for kernels: trailing zeros and bit length of int64."""
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _cttz64(typingctx, x):
    """LLVM cttz on an int64 (x != 0)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return sig, codegen


@intrinsic
def _ctlz64(typingctx, x):
    """LLVM ctlz on an int64 (x != 0)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.ctlz(args[0], ir.Constant(ir.IntType(1), 1))

    return sig, codegen


@njit(cache=True)
def trailing_zeros(x):
    """Number of trailing zero bits of a positive int64 (log2 of a power of two)."""
    return _cttz64(int(x))


@njit(cache=True)
def bit_length(x):
    """Number of bits needed for a positive int64: ``floor(log2(x)) + 1``."""
    return 64 - _ctlz64(int(x))
