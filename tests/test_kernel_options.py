"""Every Numba kernel is compiled with the shared options of revtrain._kernels._options."""
import importlib
import pkgutil

import pytest
from numba.core.registry import CPUDispatcher

import revtrain._kernels as kernels
from revtrain._kernels._options import NJIT_OPTS, INLINE_OPTS, ELEMENT_OPTS, BUFFER_KERNEL_OPTS

#: Integer bit tricks that keep Numba's default error model on purpose.
DEFAULT_ERROR_MODEL = {"bits.trailing_zeros", "bits.bit_length", "rans.small_floordiv"}


def _dispatchers():
    """(module.name, dispatcher) for every @njit function defined in a kernel module."""
    for info in pkgutil.iter_modules(kernels.__path__):
        mod = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == mod.__name__:
                yield f"{info.name}.{name}", obj


KERNELS = dict(_dispatchers())


def test_the_options_say_what_the_docstring_says():
    assert NJIT_OPTS == {"cache": True, "error_model": "numpy", "nogil": True}
    assert INLINE_OPTS == {**NJIT_OPTS, "inline": "always"}
    assert ELEMENT_OPTS == {**NJIT_OPTS, "_nrt": False}
    assert BUFFER_KERNEL_OPTS == {"cache": True, "_nrt": False}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_is_cached_on_disk_and_uses_the_shared_error_model(name):
    disp = KERNELS[name]
    assert type(disp._cache).__name__ == "FunctionCache", f"{name} is not cache=True"
    opts = disp.targetoptions
    if name in DEFAULT_ERROR_MODEL or (opts.get("_nrt") is False and not opts.get("nogil")):
        assert "error_model" not in opts          # integer code: bit tricks, buffer kernels
    else:
        assert opts.get("error_model") == "numpy", f"{name}: {opts}"
        # the row groups of a batch run the window kernels on threads at once
        assert opts.get("nogil") is True, f"{name}: {opts}"


def test_all_kernel_modules_were_found():
    modules = {name.split(".")[0] for name in KERNELS}
    assert {"rnn", "lstm", "gru", "mdrnn", "revlstm", "revgru", "revmdrnn", "momentum_rnn",
            "head", "gemm", "inputs", "quantize", "mathfn", "sgd", "rans"} <= modules


def test_cache_guard_deletes_caches_when_any_kernel_source_changes(tmp_path):
    """A kernel's cache holds the code of what it calls from other modules, which Numba does
    not check: the guard drops every cached kernel when any source of the folder changes."""
    from revtrain._kernels import guard_cache, STAMP_NAME
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    for name in ("a.f-1.py311.nbi", "a.f-1.py311.1.nbc", "b.g-2.py311.nbi"):
        (cache / name).write_bytes(b"old")
    assert guard_cache(tmp_path)                       # no stamp yet: caches of unknown origin
    assert not list(cache.glob("*.nb?")) and (cache / STAMP_NAME).exists()
    (cache / "a.f-1.py311.nbi").write_bytes(b"new")
    assert not guard_cache(tmp_path)                   # sources unchanged: caches kept
    assert (cache / "a.f-1.py311.nbi").exists()
    (tmp_path / "b.py").write_text("y = 3\n")          # another module changes
    assert guard_cache(tmp_path)
    assert not (cache / "a.f-1.py311.nbi").exists()
