"""The arrays a reversible stack's whole-window kernels take, made once per call.

Per-layer parameter blocks as Numba typed Lists (:func:`stacked`; the
backward's products by their transposes read them in place,
:func:`~revtrain._kernels.gemm.dot_rows_t`) and the number of steps per kernel
call (:func:`chunk_steps`). Used by :mod:`revtrain.models.window` and the cells'
window modules.
"""
import numpy as np
from numba.typed import List

from .._kernels.lists import typed_list


#: Most steps per kernel call (the buffer gets room for a call's steps before it).
CHUNK = 32
#: Rows (steps x batch rows) a call aims at: its weight gradients are one product over them.
CHUNK_ROWS = 64
#: float64 runs: most steps and rows per call (:func:`chunk_steps`).
CHUNK_F64, CHUNK_ROWS_F64 = 8, 32


def stacked(arrays, dtype):
    """The per-layer blocks ``arrays`` as a Numba typed List of ``dtype`` arrays (``[l]`` in
    kernels).

    Blocks already of ``dtype`` are passed as they are (views of ``theta``, no
    copies); others are converted.
    """
    return _as_list([a if a.dtype == dtype and a.flags.c_contiguous
                     else np.ascontiguousarray(a, dtype=dtype) for a in arrays])


def _as_list(arrays):
    """``arrays`` (a list) as a Numba typed List: in one compiled call
    (:func:`~revtrain._kernels.lists.typed_list`) when they look all of one Numba type, else
    appended one by one as before (the List then takes the first array's type)."""
    if len({(a.dtype, a.ndim, a.flags.c_contiguous, a.flags.f_contiguous, a.flags.writeable)
            for a in arrays}) == 1:
        return typed_list(tuple(arrays))
    out = List()
    for a in arrays:
        out.append(a)
    return out


def chunk_steps(B, dtype=np.float32):
    """Steps per kernel call for ``B`` rows: ``CHUNK_ROWS / B`` within ``[1, CHUNK]``
    (float32), ``CHUNK_ROWS_F64 / B`` within ``[1, CHUNK_F64]`` (float64).

    A call's weight gradients are one product over its ``steps * B`` rows, and
    its scratch (the rows' pre-activation gradients; a pipelined backward's two
    slots of kept gates and states) is that size: about 64 rows keeps both the
    products efficient at ``B = 1`` and the scratch small at ``B = 32`` (it grew
    the peak memory of large batches tenfold with 32 steps). float64, the default
    dtype, takes smaller chunks to come near the peak memory of the per-step code the
    kernels replaced, at some cost in time (RevLSTM reversible, peak RSS growth (MiB) /
    time with 32 and 64 rows at T=1000, B=32, H=256: 7.5 / 600-670 ms against 8.7 /
    625 ms; with 8 and 32 steps at B=1, H=128: 0.93 / 21-24 ms against 1.33 / 19 ms;
    the per-step code: 7.1 and 0.93 MiB).
    """
    if np.dtype(dtype) == np.float64:
        return max(1, min(CHUNK_F64, CHUNK_ROWS_F64 // max(B, 1)))
    return max(1, min(CHUNK, CHUNK_ROWS // max(B, 1)))
