"""Numba kernels (internal): compiled with ``cache=True`` (see :mod:`._options`).

Cache guard
-----------
Numba checks a cached kernel against its own source file only. A kernel that
calls or inlines a function of another module (``dot_rows`` ->
``gemm_vec.matmul_vec``, ``quantize`` -> ``rans``, ...) keeps that function's
old machine code in its cache entry when only the other module changes: after
an edit to ``gemm_vec.py`` the window kernels ran the old product (measured).
So on import the kernels' sources are hashed together and, when the hash
differs from the one stored with the caches, every cached kernel of this
folder is deleted (Numba then compiles afresh and caches again). An install
whose folder is not writable is left alone: Numba keeps its caches elsewhere
then, and a reinstall rewrites every source file, which invalidates them all.
"""
import hashlib
from pathlib import Path

#: File beside the caches holding the hash of the sources they were compiled from.
STAMP_NAME = "revtrain-kernels.sha256"


def sources_hash(folder):
    """SHA-256 of the kernel modules in ``folder`` (names and contents, in name order)."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def guard_cache(folder=Path(__file__).parent):
    """Delete ``folder``'s cached kernels if its sources changed since they were compiled.

    Returns True if caches were deleted (or none were marked yet), False if they are current
    or the folder cannot be written.
    """
    cache = Path(folder) / "__pycache__"
    stamp = cache / STAMP_NAME
    digest = sources_hash(folder)
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    try:
        for path in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
            path.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:
        return False
    return True


guard_cache()
