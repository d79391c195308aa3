"""Numba compilation options shared by the kernel modules.

Use as ``@njit(**NJIT_OPTS)`` (loop kernels) or ``@njit(**INLINE_OPTS)``
(small element routines that other kernels call per element).

``cache=True``
    The compiled machine code is cached on disk next to the module
    (``__pycache__/*.nbi``, ``*.nbc``), so a new process does not recompile
    every kernel; Numba invalidates a kernel's cache when its own module's
    source changes, and the cache guard of :mod:`revtrain._kernels` when any
    kernel module does (a kernel's cache also holds the code of the functions
    it calls from other modules).
``error_model="numpy"``
    Floating-point division by zero gives ``inf``/``nan`` as numpy does
    instead of raising ``ZeroDivisionError``, so Numba emits no exception
    check inside the loops (faster, and vectorisable). Integer ``//`` and
    ``%`` by zero give 0 instead of raising, so callers must pass positive
    divisors (a zero must be rejected before the kernel is called).
``nogil=True``
    The kernel releases the GIL while it runs: the row groups of a batch
    (:mod:`revtrain.models.window`) run their kernels side by side on threads.
``inline="always"``
    The routine is inlined into its caller at the Numba IR level, so a
    per-element call costs nothing.

``_nrt=False`` (:data:`ELEMENT_OPTS`, :data:`BUFFER_KERNEL_OPTS`, :data:`BUFFER_OP_OPTS`)
    Compiled without the Numba runtime (NRT): no reference counting of the
    array arguments, which for the information-buffer routines called per
    element would cost several times their work. Such code must not allocate.
    Used through the decorators ``buffer_kernel`` and ``buffer_op`` of
    :mod:`revtrain._kernels.rans` (see there); they keep Numba's default
    error model (integer arithmetic only). :data:`ELEMENT_OPTS` is
    :data:`NJIT_OPTS` without the runtime, for the float routines a window
    kernel calls per step (cell element kernels, the product kernel, the
    per-layer step of the RevLSTM backward): every view of an array a
    runtime-compiled kernel takes, and every array it passes, costs an atomic
    increment and decrement of a reference count, which at ``B = 1`` was a
    seventh of a RevLSTM pass. They must not allocate (so copies are written
    as loops, :func:`~revtrain._kernels.window.copy_rows`).
"""

#: Options for loop kernels: ``@njit(**NJIT_OPTS)``.
NJIT_OPTS = dict(cache=True, error_model="numpy", nogil=True)

#: Options for per-element routines inlined into their caller.
INLINE_OPTS = dict(NJIT_OPTS, inline="always")

#: Options of ``rans.buffer_kernel``: loop kernels that push/pop per element.
BUFFER_KERNEL_OPTS = dict(cache=True, _nrt=False)

#: Options of ``rans.buffer_op``: per-element buffer routines, inlined.
BUFFER_OP_OPTS = dict(BUFFER_KERNEL_OPTS, inline="always")

#: Runtime-free float routines called per step by the window kernels (no allocation inside).
ELEMENT_OPTS = dict(NJIT_OPTS, _nrt=False)
