"""Launch a command under ``mpiexec -n N`` from a test (skipped when MPI is missing).

The MPI extra (``pip install ".[mpi]"``: mpi4py and the MPICH runtime from
the package index) puts ``mpiexec`` next to the Python interpreter. Without
it the MPI tests are skipped with the reason printed (``-ra``).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def mpiexec():
    """Path of ``mpiexec`` (the venv's first), or None."""
    cand = Path(sys.executable).parent / "mpiexec"
    if cand.exists():
        return str(cand)
    return shutil.which("mpiexec")


def mpi_available():
    """``(ok, reason)``: mpi4py importable and ``mpiexec`` found."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False, "mpi4py not installed (pip install \".[mpi]\")"
    if mpiexec() is None:
        return False, "mpiexec not found (pip install \".[mpi]\" brings it)"
    return True, ""


_ok, _reason = mpi_available()
#: Mark for tests that launch mpiexec.
needs_mpi = pytest.mark.skipif(not _ok, reason=_reason)


def run_mpi(n, args, timeout=120, cwd=None, env=None):
    """Run ``mpiexec -n n <args>`` (args: a list, e.g. ``[sys.executable, "x.py"]``).

    One BLAS/OpenMP thread per rank. Returns the ``CompletedProcess`` (text
    output captured); raises ``subprocess.TimeoutExpired`` after ``timeout`` s.
    """
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if env:
        e.update(env)
    return subprocess.run([mpiexec(), "-n", str(n), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=e)
