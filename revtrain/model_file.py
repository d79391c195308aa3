"""The trainer file: one ``.npz`` (no pickle) holding everything a resumed run depends on.

Layout (format version 2):

* ``meta``: a JSON string with the format name and version, the model and
  optimiser classes and constructor arguments, the optimiser state's scalar
  fields (Python ints and floats, never NumPy scalars), the training
  position, the random generator's state, the history, free-form
  ``metadata`` and a SHA-256 ``checksum`` of everything else;
* ``theta``: the parameters, float64 ``(P,)``;
* ``opt__<field>``: array fields of the optimiser state; an information
  buffer field is kept as ``opt__<field>__states`` (uint64 ``(S,)``),
  ``__counts`` (int64 ``(S,)``), ``__words`` (uint32 ``(S, max count)``) and
  ``__info`` (float64 ``(S,)``), so a resumed ExactSGD run can still be reversed;
* ``carry``: the recurrent state carried into the next window, if any.

Files are written atomically: a temporary file in the target's folder,
flushed and fsynced, then ``os.replace`` over the target; the file mode
follows the umask. Readers never see half a file.
"""
import functools
import hashlib
import inspect
import json
import os
import tempfile
import zipfile

import numpy as np

from .buffer import InfoBuffer

#: Identifies revtrain trainer files.
FILE_FORMAT = "revtrain-trainer"
#: Version of the file layout written by :func:`write`.
FORMAT_VERSION = 2


class ModelFileError(ValueError):
    """A saved trainer file is missing, corrupt, truncated or of an incompatible version."""


# --------------------------------------------------------------- registry
_REGISTRY = {}


def register(cls):
    """Make ``cls`` (a model or optimiser class) loadable by name; returns it (a decorator)."""
    if not isinstance(cls, type):
        raise TypeError(f"register takes a class, got {type(cls).__name__}")
    _REGISTRY[cls.__name__] = cls
    return cls


@functools.lru_cache(maxsize=None)
def _builtin():
    """Register revtrain's own models and optimisers (once; imported late to avoid a cycle)."""
    from . import models, optim
    for cls in (models.RNN, models.LSTM, models.GRU, models.MDRNN, models.MomentumRNN,
                models.RevGRU, models.RevLSTM, models.RevMDRNN, optim.Adam, optim.ExactSGD):
        _REGISTRY.setdefault(cls.__name__, cls)


def find_class(name):
    """The model or optimiser class called ``name`` (revtrain's or :func:`register` ed), or None."""
    _builtin()
    return _REGISTRY.get(name)


# ------------------------------------------------------- config helpers
def _to_json(v):
    """JSON-able form of a constructor argument (arrays tagged), or raise TypeError."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "biuf":
            raise TypeError(f"array of dtype {v.dtype}")
        return {"__array__": v.tolist(), "dtype": str(v.dtype)}
    if isinstance(v, (list, tuple)):
        return [_to_json(a) for a in v]
    raise TypeError(type(v).__name__)


def _from_json(v):
    if isinstance(v, dict) and "__array__" in v:
        return np.asarray(v["__array__"], dtype=v["dtype"])
    if isinstance(v, list):
        return [_from_json(a) for a in v]
    return v


def constructor_args(obj):
    """The constructor arguments of ``obj`` as a JSON-able dict.

    Uses ``obj.get_config()`` when defined; otherwise reads, for every
    parameter of ``type(obj).__init__``, the attribute ``name``, ``_name``
    or ``name_kind`` (e.g. a model's ``loss`` is kept as ``loss_kind``).
    Arguments that are not stored and have a default are left out.

    Raises
    ------
    ValueError
        A required argument is not stored on the object or cannot be written
        as JSON.
    """
    cls = type(obj)
    if hasattr(obj, "get_config"):
        raw = dict(obj.get_config())
    else:
        raw = {}
        sig = inspect.signature(cls.__init__)
        for pname, p in list(sig.parameters.items())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            found = False
            for attr in (pname, "_" + pname, pname + "_kind"):
                if hasattr(obj, attr):
                    val = getattr(obj, attr)
                    if callable(val) and not isinstance(val, np.ndarray):
                        continue
                    raw[pname] = val
                    found = True
                    break
            if not found and p.default is p.empty:
                raise ValueError(f"cannot save {cls.__name__}: its constructor argument "
                                 f"{pname!r} is not stored on the object (define get_config())")
    out = {}
    for k, v in raw.items():
        try:
            out[k] = _to_json(v)
        except TypeError as e:
            raise ValueError(f"cannot save {cls.__name__}: constructor argument {k!r} "
                             f"has an unsupported type ({e})") from None
    return out


def describe_object(obj):
    """``{"class", "args"}`` of a model or optimiser, for the metadata."""
    return {"class": type(obj).__name__, "args": constructor_args(obj)}


def rebuild(desc, what, path):
    """The object described by :func:`describe_object` (``what``: "model" or "optimizer")."""
    cls = find_class(desc["class"])
    if cls is None:
        raise ModelFileError(f"{path!r} holds a {what} of class {desc['class']}, which this "
                             f"revtrain does not have (register your own class with "
                             f"revtrain.model_file.register)")
    args = {k: _from_json(v) for k, v in desc["args"].items()}
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{path!r}: cannot rebuild the {what} {cls.__name__} from the "
                             f"saved arguments ({e})") from None


# ------------------------------------------------------ optimiser state
class BufferSnapshot:
    """The state of an :class:`~revtrain.InfoBuffer` at one moment, cheap to take.

    ``states``, ``counts`` and ``info`` are copied; ``words`` is shared. That
    is enough while the buffer only grows (training pushes, it never pops):
    a push writes above ``counts`` and a growth reallocates, so the words
    below the snapshot's counts stay as they were.
    """

    def __init__(self, buf):
        self.states = buf.states.copy()
        self.counts = buf.counts.copy()
        self.info = buf.info.copy()
        self.words = buf.words

    def arrays(self):
        """``states, counts, words, info`` with the words trimmed to the largest count."""
        return (self.states, self.counts,
                np.ascontiguousarray(self.words[:, :int(self.counts.max(initial=0))]), self.info)


def freeze_state(state):
    """A snapshot of an optimiser state (NamedTuple) that later steps do not change.

    Arrays are kept by reference (the optimisers return new arrays each
    step); information buffers, which grow in place, become
    :class:`BufferSnapshot` s.
    """
    if not (isinstance(state, tuple) and hasattr(state, "_fields")):
        return state
    return type(state)(*[BufferSnapshot(v) if isinstance(v, InfoBuffer) else v for v in state])


def encode_state(state, prefix="opt__"):
    """Split an optimiser state (NamedTuple) into JSON fields and arrays.

    Returns
    -------
    fields : dict
        ``name -> {"kind": "array" | "buffer" | "int" | "float", ["value"]}``
    arrays : dict of str -> ndarray

    Raises
    ------
    ValueError
        The state is not a NamedTuple of arrays, ints, floats and buffers.
    """
    if not (isinstance(state, tuple) and hasattr(state, "_fields")):
        raise ValueError(f"cannot save an optimizer state of type {type(state).__name__}: "
                         "it must be a NamedTuple of arrays, ints, floats and InfoBuffers")
    fields, arrays = {}, {}
    for name, v in zip(state._fields, state):
        if isinstance(v, InfoBuffer):
            v = BufferSnapshot(v)
        if isinstance(v, BufferSnapshot):
            fields[name] = {"kind": "buffer"}
            for part, a in zip(("states", "counts", "words", "info"), v.arrays()):
                arrays[f"{prefix}{name}__{part}"] = a
        elif isinstance(v, np.ndarray):
            fields[name] = {"kind": "array"}
            arrays[prefix + name] = v
        elif isinstance(v, (bool, np.bool_)):
            raise ValueError(f"cannot save optimizer state field {name!r} of type bool")
        elif isinstance(v, (int, np.integer)):
            fields[name] = {"kind": "int", "value": int(v)}
        elif isinstance(v, (float, np.floating)):
            fields[name] = {"kind": "float", "value": float(v)}
        else:
            raise ValueError(f"cannot save optimizer state field {name!r} of type "
                             f"{type(v).__name__}")
    return fields, arrays


def _buffer_from(arrays, key):
    states, counts, words, info = (arrays[f"{key}__{p}"] for p in ("states", "counts", "words",
                                                                   "info"))
    S = states.shape[0]
    ok = (states.dtype == np.uint64 and counts.dtype == np.int64 and words.dtype == np.uint32
          and info.dtype == np.float64 and states.ndim == 1 and S >= 1
          and counts.shape == (S,) and info.shape == (S,) and words.ndim == 2
          and words.shape[0] == S and (counts >= 0).all()
          and int(counts.max(initial=0)) <= words.shape[1] and (states >= 2 ** 32).all())
    if not ok:
        raise ValueError(f"the information buffer {key!r} is malformed")
    buf = InfoBuffer(S)
    buf.states = states.copy()
    buf.counts = counts.copy()
    buf.words = words.copy()
    buf.info = info.copy()
    return buf


def decode_state(template, fields, arrays, prefix="opt__"):
    """Rebuild an optimiser state like ``template`` (a fresh ``opt.init``) from :func:`encode_state`."""
    if set(fields) != set(template._fields):
        raise ValueError(f"the optimizer state fields {sorted(fields)} do not match "
                         f"{sorted(template._fields)}")
    vals = {}
    for name, old in zip(template._fields, template):
        f = fields[name]
        kind = f["kind"]
        if kind == "buffer":
            vals[name] = _buffer_from(arrays, prefix + name)
        elif kind == "array":
            a = np.array(arrays[prefix + name])
            if isinstance(old, np.ndarray) and (a.shape != old.shape or a.dtype != old.dtype):
                raise ValueError(f"optimizer state {name!r} has {a.dtype} {a.shape}, "
                                 f"expected {old.dtype} {old.shape}")
            vals[name] = a
        elif kind == "int":
            vals[name] = int(f["value"])
        elif kind == "float":
            vals[name] = float(f["value"])
        else:
            raise ValueError(f"unknown kind {kind!r} of optimizer state field {name!r}")
    return type(template)(**vals)


# ------------------------------------------------------- write and read
def checksum(meta, arrays):
    """SHA-256 (hex) of ``meta`` (without its ``checksum``) and every array's name, dtype,
    shape and bytes."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _umask():
    old = os.umask(0o022)
    os.umask(old)
    return old


def check_writable(path):
    """Check, before any work, that a file can be written at ``path``; return ``path`` as str.

    The folder must exist and take new files (a probe file is created and
    removed in it), ``path`` must not be a folder, and no part of the folder
    path may be a plain file (``lic.txt/m.npz``).

    Raises
    ------
    ValueError
        Naming ``path`` (never a temporary file) and what is wrong.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"cannot save to {path!r}: it is a folder; give a file name such as "
                         f"{os.path.join(path, 'model.npz')!r}")
    folder = os.path.dirname(os.path.abspath(path))
    probe = folder
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise ValueError(f"cannot save to {path!r}: {probe!r} is a file, not a folder")
    if not os.path.isdir(folder):
        raise ValueError(f"cannot save to {path!r}: folder {folder!r} does not exist")
    try:     # the truest test: root passes os.access everywhere, and /proc refuses new files
        fd, tmp = tempfile.mkstemp(prefix=".revtrain-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"cannot save to {path!r}: folder {folder!r} does not take new "
                         f"files ({e.strerror or e})") from None
    return path


def atomic_write(path, write_fn):
    """Write ``path`` atomically: ``write_fn(f)`` (``f`` a binary file) into a temporary
    file in the same folder, flush and fsync it, give it the mode the umask allows,
    ``os.replace`` it over ``path`` and fsync the folder. On any error the temporary
    file is removed and ``path`` is left as it was.

    Raises
    ------
    ValueError
        ``path`` is a folder or its folder does not exist (named in the message).
    OSError
        Writing failed (the message names ``path``, never the temporary file).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"cannot save to {path!r}: it is a folder; give a file name "
                         f"such as {os.path.join(path, 'model.npz')!r}")
    if not os.path.isdir(folder):
        raise ValueError(f"cannot save to {path!r}: folder {folder!r} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".revtrain-", suffix=".tmp", dir=folder)
    except OSError as e:
        raise OSError(f"cannot save to {path!r}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise OSError(f"cannot save to {path!r}: {e.strerror or e}") from None
        raise
    _fsync_folder(folder)
    return path


def _fsync_folder(folder):
    """Make the rename durable: fsync the folder (where the platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write(path, meta, arrays):
    """Write ``meta`` (JSON-able dict) and ``arrays`` to ``path`` atomically, with a checksum."""
    meta = dict(meta, format=FILE_FORMAT, version=FORMAT_VERSION)
    meta.pop("checksum", None)
    meta["checksum"] = checksum(meta, arrays)
    payload = dict(arrays, meta=np.array(json.dumps(meta)))
    return atomic_write(path, lambda f: np.savez(f, **payload))


def read(path):
    """Read and verify a trainer file; returns ``(meta, arrays)``.

    Raises
    ------
    ModelFileError
        Missing, corrupt or truncated file, a file of another format or of
        another format version, or contents that do not match the checksum.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise ModelFileError(f"model file {path!r} {what}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files or "theta" not in z.files:
                raise ModelFileError(f"{path!r} is not a revtrain model file "
                                     f"(no metadata or parameters)")
            meta = json.loads(str(z["meta"][()]))
            arrays = {k: np.array(z[k]) for k in z.files if k != "meta"}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError,
            json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        detail = f"{type(e).__name__}: {e}"
        if "allow_pickle" in detail:   # np.load's guess for a non-zip file: no pickle advice
            detail = "not an .npz (zip) archive"
        raise ModelFileError(f"{path!r} is corrupt or truncated, not a readable revtrain "
                             f"model file ({detail})") from None
    if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT:
        raise ModelFileError(f"{path!r} is not a revtrain model file")
    version = meta.get("version")
    if version != FORMAT_VERSION:
        from . import __version__
        raise ModelFileError(f"{path!r} has file format version {version!r}; this revtrain "
                             f"({__version__}) reads version {FORMAT_VERSION}")
    stored = meta.pop("checksum", None)
    if stored != checksum(meta, arrays):
        raise ModelFileError(f"{path!r} is corrupt: its contents do not match their checksum")
    return meta, arrays
