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
CHUNK_F64, CHUNK_ROWS_F64 = 8, 16


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
    dtype, takes smaller chunks to stay within the peak memory of the per-step code the
    kernels replaced, at some cost in time: at most 8 steps and 16 rows, so one step per
    call for the 16-row halves of a batch of 32 (RevLSTM reversible, T=100, B=32, H=256:
    peak RSS growth 5.0-5.2 MiB against 5.5-5.6 with 32 rows and 5.3 for the per-step
    code, 69-71 against 66-68 ms; T=1000: 6.3-6.7 against 6.6-6.7 MiB and 7.1 for the
    per-step code; at B=1, 8 steps: 0.93 MiB against 1.33 with 32 steps, 21-24 against
    19 ms).
    """
    if np.dtype(dtype) == np.float64:
        return max(1, min(CHUNK_F64, CHUNK_ROWS_F64 // max(B, 1)))
    return max(1, min(CHUNK, CHUNK_ROWS // max(B, 1)))
