"""Training loop: truncated BPTT over long text, mini-batches, validation, saving.

:class:`Trainer` drives a model (any :class:`~revtrain.models.base.RecurrentModel`)
and an optax-style optimiser::

    state = opt.init(theta); state = opt.step(state, grad); theta = opt.params(state)

Data accepted by :meth:`Trainer.fit` and :meth:`Trainer.evaluate`:

* a :class:`~revtrain.data.TextCorpus` (its validation stream is used when
  ``val_data`` is not given), a ``str``, or a 1-D int array of token ids:
  one long stream, trained by truncated BPTT in windows of ``seq_len`` steps
  over ``batch_size`` parallel streams, the final state of one window being
  the initial state of the next (:func:`~revtrain.data.text_windows`);
* a tuple ``(x, y)`` of time-major arrays (the batch axis is the one after
  the time/grid axes): shuffled mini-batches of ``batch_size``, a fresh
  state for each;
* a callable ``data(rng, batch_size) -> (x, y)`` drawing a fresh batch (for
  synthetic tasks; needs ``steps``).

A trainer is saved to one ``.npz`` file (written to a temporary file in the
same folder, then renamed over the target, so a crash never leaves half a
file) holding ``theta``, the optimiser state when it is made of arrays, and a
JSON metadata string (format version, model class and constructor arguments,
optimiser class and arguments, BPTT mode, vocabulary, history, a SHA-256 of
``theta``). Nothing is pickled.
"""
import hashlib
import importlib
import inspect
import json
import math
import os
import pkgutil
import sys
import tempfile
import time
import zipfile

import numpy as np

from .data import CharVocab, TextCorpus, n_windows, stream_matrix, text_windows
from ._checks import positive_int

#: Identifies revtrain trainer files.
FILE_FORMAT = "revtrain-trainer"
#: Version of the file layout written by :meth:`Trainer.save`.
FORMAT_VERSION = 1

LN2 = math.log(2.0)


class ModelFileError(ValueError):
    """A saved trainer file is missing, corrupt, truncated or of an incompatible version."""


# ---------------------------------------------------------------- lookup
def find_class(name, package="revtrain"):
    """The class ``name`` exported by revtrain or defined in one of its modules.

    Looks in ``revtrain`` itself, then ``revtrain.models`` and its modules,
    then ``revtrain.optim``; returns None when no such class exists (yet).
    Modules that fail to import are skipped.
    """
    candidates = [package, package + ".models", package + ".optim"]
    for modname in candidates:
        try:
            mod = importlib.import_module(modname)
        except Exception:
            continue
        obj = getattr(mod, name, None)
        if isinstance(obj, type):
            return obj
    try:
        models = importlib.import_module(package + ".models")
        paths = list(models.__path__)
    except Exception:
        return None
    for info in pkgutil.iter_modules(paths):
        try:
            mod = importlib.import_module(f"{package}.models.{info.name}")
        except Exception:
            continue
        obj = getattr(mod, name, None)
        if isinstance(obj, type):
            return obj
    return None


def _import_class(module, name):
    if module:
        try:
            obj = getattr(importlib.import_module(module), name, None)
            if isinstance(obj, type):
                return obj
        except Exception:
            pass
    return find_class(name)


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


# --------------------------------------------------------------- history
class History:
    """What :meth:`Trainer.fit` recorded (lists, one entry per step or per evaluation).

    Attributes
    ----------
    step : list of int
        Global step number (1-based, continues across ``fit`` calls).
    loss : list of float
        Training loss of each step's batch or window.
    bpc : list of float
        Training bits per character (``loss / ln 2``) when the loss is a
        softmax over characters; else empty.
    time : list of float
        Cumulative training wall time in seconds (validation excluded).
    stored_bytes : list of int
        Bytes the step's BPTT held for its backward pass (the model's accounting).
    val_step, val_loss, val_bpc, val_acc : list
        Step of each validation, its loss, bits per character (character
        data) and accuracy (classification from the last step/cell).
    """

    FIELDS = ("step", "loss", "bpc", "time", "stored_bytes",
              "val_step", "val_loss", "val_bpc", "val_acc")

    def __init__(self, **fields):
        for f in self.FIELDS:
            setattr(self, f, list(fields.get(f, [])))

    def as_dict(self):
        """Plain dict of lists (JSON-able)."""
        return {f: [float(v) if isinstance(v, (float, np.floating)) else int(v)
                    for v in getattr(self, f)] for f in self.FIELDS}

    @classmethod
    def from_dict(cls, d):
        """A History from a dict of lists (as saved in a trainer file); missing fields are empty."""
        return cls(**{f: d.get(f, []) for f in cls.FIELDS})

    def __len__(self):
        return len(self.step)

    def __getitem__(self, key):
        if key not in self.FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __repr__(self):
        parts = [f"steps={len(self.step)}"]
        if self.loss:
            parts.append(f"loss={self.loss[-1]:.4f}")
        if self.val_loss:
            parts.append(f"val_loss={self.val_loss[-1]:.4f}")
        if self.val_bpc:
            parts.append(f"val_bpc={self.val_bpc[-1]:.4f}")
        return "History(" + ", ".join(parts) + ")"


class StopTraining(Exception):
    """Raise from a callback (or return True from it) to end :meth:`Trainer.fit` early."""


# ------------------------------------------------------------- sources
class _Text:
    kind = "text"

    def __init__(self, ids):
        self.ids = ids


class _Arrays:
    kind = "arrays"

    def __init__(self, x, y, axis):
        self.x, self.y, self.axis = x, y, axis
        self.n = x.shape[axis]


class _Generator:
    kind = "generator"

    def __init__(self, fn):
        self.fn = fn


def _looks_like_path(s):
    """A short one-line str naming an existing file or ending like a file name."""
    if len(s) > 4096 or "\n" in s or not s.strip():
        return False
    if os.path.isfile(s):
        return True
    return " " not in s and os.path.splitext(s)[1].lower() in (".txt", ".text", ".md", ".csv",
                                                               ".npz", ".npy", ".json", ".log")


def _take(a, idx, axis):
    return np.ascontiguousarray(np.take(a, idx, axis=axis))


# ---------------------------------------------------------------- trainer
class Trainer:
    """Fit a recurrent model with an optimiser; evaluate, sample, save, load.

    Parameters
    ----------
    model : RecurrentModel
    optimizer : object with ``init(theta)``, ``step(state, grad)``, ``params(state)``
        For example ``rt.Adam(lr)`` or ``rt.ExactSGD(lr, momentum)``.
    bptt : str, optional
        BPTT mode passed to ``model.loss_and_grad`` (``"standard"``,
        ``"checkpoint"``, ``"reversible"``; default the model's first mode).
    seed : int
        Seeds the initial parameters (``model.init_params(seed)``) and the
        shuffling of mini-batches. Same seed, same data, same bits.
    theta : ndarray, optional
        Initial parameters instead of ``model.init_params(seed)``.
    checkpoint_every : int, optional
        Segment length for ``bptt="checkpoint"``.
    init_scale : float
        Scale passed to ``model.init_params``.

    Attributes
    ----------
    theta : ndarray of float64
        Current parameters.
    history : History
    vocab : CharVocab or None
        Set when fitting on text (needed by :meth:`generate`).
    steps_done : int
    """

    def __init__(self, model, optimizer, bptt=None, seed=0, theta=None,
                 checkpoint_every=None, init_scale=1.0):
        if not hasattr(model, "loss_and_grad") or not hasattr(model, "init_params"):
            raise ValueError(f"model must be a revtrain model, got {type(model).__name__}")
        for meth in ("init", "step", "params"):
            if not callable(getattr(optimizer, meth, None)):
                raise ValueError(f"optimizer must have init/step/params methods, "
                                 f"{type(optimizer).__name__} has no {meth}()")
        modes = getattr(model, "bptt_modes", None)
        if bptt is not None and modes is not None and bptt not in modes:
            raise ValueError(f"bptt must be one of {tuple(modes)} for {type(model).__name__}, "
                             f"got {bptt!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.model = model
        self.optimizer = optimizer
        self.bptt = bptt if bptt is not None else (modes[0] if modes else None)
        self.seed = int(seed)
        if checkpoint_every is not None:
            checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
        self.checkpoint_every = checkpoint_every
        self.init_scale = float(init_scale)
        if theta is None:
            theta = model.init_params(seed=self.seed, scale=self.init_scale)
        theta = np.array(theta, dtype=np.float64)
        if hasattr(model, "layout"):
            model.layout.check(theta)
        self.opt_state = optimizer.init(theta)
        self.theta = np.asarray(optimizer.params(self.opt_state), dtype=np.float64)
        self.history = History()
        self.vocab = None
        self.steps_done = 0
        self._rng = np.random.default_rng([self.seed, 1])

    # ----------------------------------------------------------- data
    def _source(self, data, name="data"):
        """Normalise data; returns (source, default_val, is_char)."""
        if isinstance(data, TextCorpus):
            self._set_vocab(data.vocab)
            return _Text(data.train), _Text(data.val), True
        if isinstance(data, os.PathLike) or (isinstance(data, str) and _looks_like_path(data)):
            raise ValueError(f"{name}: a str is trained on as the text itself, and {str(data)!r} "
                             "looks like a file path; to train on a file pass "
                             f"rt.char_corpus({str(data)!r}) (or rt.load_text(path) for its text)")
        if isinstance(data, str):
            if self.vocab is None:
                self._set_vocab(CharVocab.from_text(data))
            return _Text(self.vocab.encode(data)), None, True
        if isinstance(data, np.ndarray) and data.ndim == 1:
            if data.dtype.kind not in "iu":
                raise ValueError(f"{name}: a 1-D array must hold int token ids, got {data.dtype}")
            return _Text(np.asarray(data, dtype=np.int64)), None, self.vocab is not None
        if isinstance(data, tuple) and len(data) == 2:
            x, y = np.asarray(data[0]), np.asarray(data[1])
            nl = getattr(self.model, "n_lead", 1)
            axis = nl  # batch axis of x
            if x.ndim <= axis:
                raise ValueError(f"{name}: x must have the batch axis at {axis}, got shape {x.shape}")
            n = x.shape[axis]
            per_step_ndim = nl + (1 if getattr(self.model, "loss_kind", "softmax") == "softmax"
                                  else 2)
            ybatch = nl if y.ndim == per_step_ndim else 0
            if y.ndim <= ybatch or y.shape[ybatch] != n:
                raise ValueError(f"{name}: y must have {n} examples like x {x.shape}, got {y.shape}")
            src = _Arrays(x, y, axis)
            src.yaxis = ybatch
            return src, None, False
        if callable(data):
            return _Generator(data), None, False
        raise ValueError(f"{name} must be a TextCorpus, str, 1-D int array, (x, y) tuple or "
                         f"callable(rng, batch_size), got {type(data).__name__}")

    def _set_vocab(self, vocab):
        if self.vocab is not None and self.vocab != vocab:
            raise ValueError("data has a different character vocabulary than this trainer's")
        n_in = getattr(self.model, "n_in", None)
        if n_in is not None and vocab.size > n_in:
            raise ValueError(f"the vocabulary has {vocab.size} characters but the model has "
                             f"n_in={n_in}")
        self.vocab = vocab

    def _is_char_loss(self, is_char):
        return is_char and getattr(self.model, "loss_kind", "softmax") == "softmax"

    # ------------------------------------------------------------ fit
    def fit(self, data, steps=None, epochs=None, batch_size=32, seq_len=64, val_data=None,
            callbacks=(), quiet=False, eval_every=None, val_tokens=None, grad_clip=None,
            carry_state=True):
        """Train; returns the :class:`History` (also ``self.history``).

        Parameters
        ----------
        data : TextCorpus, str, 1-D int array, (x, y) or callable
            A :class:`~revtrain.data.TextCorpus` (e.g. ``rt.char_corpus(path)``;
            its validation stream is the default ``val_data``), a ``str`` (the
            training text itself, not a file name) or 1-D int array of token
            ids: one long stream trained by truncated BPTT in windows of
            ``seq_len`` over ``batch_size`` parallel streams. A tuple ``(x,
            y)`` of time-major arrays (batch axis after the time/grid axes):
            shuffled mini-batches. A callable ``data(rng, batch_size) -> (x,
            y)``: a fresh batch per step (needs ``steps``).
        steps : int, optional
            Optimiser steps to run (cycling over the data as needed).
        epochs : int, optional
            Passes over the data instead of ``steps`` (default 1 when neither
            is given; not for callables).
        batch_size : int
            Parallel streams (text) or examples per batch.
        seq_len : int
            Window length of truncated BPTT (text only).
        val_data : same kinds as ``data`` (not callables), optional
            Evaluated every ``eval_every`` steps and at the end. For a
            TextCorpus the default is its validation stream.
        callbacks : callable or sequence of callables ``cb(trainer, record) -> bool``
            Called after every step with ``record`` a dict (``step``,
            ``loss``, ``stored_bytes``, ``time`` and, after a validation,
            ``val_loss`` ...). Returning True (or raising
            :class:`StopTraining`) ends training after that step.
        quiet : bool
            No progress bar (it is also off when stdout is not a terminal).
        eval_every : int, optional
            Validation period in steps (default: 5 validations per call).
        val_tokens : int, optional
            Validate on at most this many tokens of a text stream.
        grad_clip : float, optional
            Rescale the gradient to this global L2 norm when it is larger.
        carry_state : bool
            Text only: start each window from the previous window's final
            state (truncated BPTT, the default) or from zeros (each window an
            independent sequence; also used for validation).

        Returns
        -------
        History
        """
        if steps is not None and epochs is not None:
            raise ValueError(f"give steps or epochs, not both (got steps={steps}, epochs={epochs})")
        batch_size = positive_int(batch_size, "batch_size")
        seq_len = positive_int(seq_len, "seq_len")
        if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(
                grad_clip, (int, float, np.integer, np.floating))
                or not (np.isfinite(grad_clip) and grad_clip > 0)):
            raise ValueError(f"grad_clip must be a positive number, got {grad_clip!r}")
        src, default_val, is_char = self._source(data)
        if val_data is None:
            val = default_val
        else:
            val, _, _ = self._source(val_data, "val_data")
            if val.kind == "generator":
                raise ValueError("val_data must be fixed data, not a callable")
        char_loss = self._is_char_loss(is_char)

        if src.kind == "text":
            per_epoch = n_windows(len(src.ids), batch_size, seq_len)
            if per_epoch == 0:
                stream_matrix(src.ids, batch_size)  # raises a DataError naming the sizes
        elif src.kind == "arrays":
            per_epoch = -(-src.n // batch_size)
        else:
            per_epoch = None
        if steps is None:
            if per_epoch is None:
                raise ValueError("steps is required when data is a callable")
            epochs = 1 if epochs is None else positive_int(epochs, "epochs")
            steps = epochs * per_epoch
        steps = positive_int(steps, "steps")
        if eval_every is None:
            eval_every = max(1, steps // 5)
        eval_every = positive_int(eval_every, "eval_every")
        callbacks = (callbacks,) if callable(callbacks) else tuple(callbacks)
        for cb in callbacks:
            if not callable(cb):
                raise ValueError(f"callbacks must be callables, got {type(cb).__name__}")

        batches = self._batches(src, batch_size, seq_len)
        h = self.history
        t_train = h.time[-1] if h.time else 0.0
        bar = _progress(steps, quiet, desc=type(self.model).__name__)
        state = None
        try:
            for i in range(steps):
                x, y, carry, new_epoch = next(batches)
                if new_epoch or not carry or not carry_state:
                    state = None
                t0 = time.perf_counter()
                try:
                    loss, grad, stats = self.model.loss_and_grad(
                        self.theta, x, y, bptt=self.bptt, checkpoint_every=self.checkpoint_every,
                        return_stats=True, initial_state=state)
                except FloatingPointError as e:
                    raise FloatingPointError(f"training diverged at step {self.steps_done + 1}: "
                                             f"{e}") from None
                if not np.all(np.isfinite(grad)):
                    raise FloatingPointError(f"the gradient has NaN or inf at step "
                                             f"{self.steps_done + 1} (try a smaller learning "
                                             f"rate or grad_clip)")
                if grad_clip is not None:
                    norm = float(np.sqrt(np.dot(grad, grad)))
                    if norm > grad_clip:
                        grad = grad * (grad_clip / norm)
                self.opt_state = self.optimizer.step(self.opt_state, grad)
                self.theta = np.asarray(self.optimizer.params(self.opt_state), dtype=np.float64)
                t_train += time.perf_counter() - t0
                if carry:
                    fs = getattr(stats, "final_state", None)
                    state = None if fs is None else np.array(fs, dtype=np.float64)
                self.steps_done += 1
                h.step.append(self.steps_done)
                h.loss.append(float(loss))
                if char_loss:
                    h.bpc.append(float(loss) / LN2)
                h.time.append(t_train)
                h.stored_bytes.append(int(stats.stored_bytes))
                rec = {"step": self.steps_done, "loss": float(loss), "time": t_train,
                       "stored_bytes": int(stats.stored_bytes)}
                if val is not None and ((i + 1) % eval_every == 0 or i + 1 == steps):
                    ev = self._evaluate(val, batch_size, seq_len, val_tokens, char_loss,
                                        carry_state)
                    h.val_step.append(self.steps_done)
                    h.val_loss.append(ev["loss"])
                    if "bpc" in ev:
                        h.val_bpc.append(ev["bpc"])
                    if "acc" in ev:
                        h.val_acc.append(ev["acc"])
                    rec.update({"val_" + k: v for k, v in ev.items()})
                bar.update(1)
                if i % 10 == 0 or i + 1 == steps:
                    post = {"loss": f"{loss:.3f}"}
                    if h.val_loss:
                        post["val"] = f"{h.val_loss[-1]:.3f}"
                    bar.set_postfix(post, refresh=False)
                stop = False
                for cb in callbacks:
                    try:
                        if cb(self, rec):
                            stop = True
                    except StopTraining:
                        stop = True
                if stop:
                    break
        finally:
            bar.close()
        return h

    def _batches(self, src, batch_size, seq_len):
        """Endless iterator of (x, y, carry_state, new_epoch)."""
        if src.kind == "text":
            while True:
                first = True
                for x, y in text_windows(src.ids, batch_size, seq_len):
                    yield x, y, True, first
                    first = False
        elif src.kind == "arrays":
            while True:
                perm = self._rng.permutation(src.n)
                for a in range(0, src.n, batch_size):
                    idx = perm[a:a + batch_size]
                    yield _take(src.x, idx, src.axis), _take(src.y, idx, src.yaxis), False, a == 0
        else:
            while True:
                out = src.fn(self._rng, batch_size)
                if not (isinstance(out, (tuple, list)) and len(out) == 2):
                    raise ValueError(f"data: the callable must return a pair (x, y), got "
                                     f"{type(out).__name__}"
                                     + (f" of length {len(out)}" if isinstance(out, (tuple, list))
                                        else ""))
                yield out[0], out[1], False, True

    # ------------------------------------------------------- evaluate
    def evaluate(self, data, batch_size=32, seq_len=64, max_tokens=None, carry_state=True):
        """Loss on fixed data (no training).

        Text streams are run in windows with the state carried over, like
        training (or from zeros each window when ``carry_state`` is False).
        Returns a dict with ``loss`` and, where they apply, ``bpc``
        (bits per character) and ``acc`` (accuracy of last-step labels).
        """
        src, default_val, is_char = self._source(data)
        if src.kind == "generator":
            raise ValueError("data must be fixed data, not a callable")
        if default_val is not None:
            src = default_val
        return self._evaluate(src, positive_int(batch_size, "batch_size"),
                              positive_int(seq_len, "seq_len"), max_tokens,
                              self._is_char_loss(is_char), carry_state)

    def _evaluate(self, src, batch_size, seq_len, max_tokens, char_loss, carry_state=True):
        m, theta = self.model, self.theta
        if src.kind == "text":
            ids = src.ids if max_tokens is None else src.ids[:positive_int(max_tokens, "val_tokens")]
            B = min(batch_size, max(1, (len(ids) - 1) // max(seq_len, 1)))
            total, count, state = 0.0, 0, None
            for x, y in text_windows(ids, B, seq_len):
                n = y.size
                total += m.loss(theta, x, y, initial_state=state) * n
                count += n
                if carry_state:
                    state = m.final_state(theta, x, initial_state=state)
            out = {"loss": total / count}
            if char_loss:
                out["bpc"] = out["loss"] / LN2
            return out
        total, count, correct = 0.0, 0, 0
        last_labels = (getattr(m, "loss_kind", None) == "softmax"
                       and src.y.ndim == 1)
        for a in range(0, src.n, batch_size):
            idx = np.arange(a, min(a + batch_size, src.n))
            x, y = _take(src.x, idx, src.axis), _take(src.y, idx, src.yaxis)
            total += m.loss(theta, x, y) * len(idx)
            count += len(idx)
            if last_labels:
                p = m.predict(theta, x)
                last = p.reshape(-1, len(idx), p.shape[-1])[-1]
                correct += int(np.sum(np.argmax(last, axis=1) == y))
        out = {"loss": total / count}
        if last_labels:
            out["acc"] = correct / count
        return out

    # -------------------------------------------------------- generate
    def generate(self, length, prime="\n", temperature=1.0, seed=0):
        """Sample ``length`` characters from a character model.

        Parameters
        ----------
        length : int >= 0
        prime : str
            Text fed first (its characters must be in the vocabulary).
        temperature : float > 0
            Divides the log-probabilities (lower is more conservative).
        seed : int

        Returns
        -------
        text : str
            The sampled characters (without the prime).
        """
        if self.vocab is None:
            raise ValueError("generate needs a character model (train on text first)")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"length must be an int >= 0, got {length!r}")
        if not (isinstance(temperature, (int, float)) and np.isfinite(temperature)
                and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if not prime:
            raise ValueError("prime must be a non-empty str")
        ids = self.vocab.encode(prime)
        rng = np.random.default_rng(seed)
        m, theta = self.model, self.theta
        x = ids[:, None]
        probs = m.predict(theta, x)[-1, 0]
        state = m.final_state(theta, x)
        out = []
        for _ in range(int(length)):
            logp = np.log(np.maximum(probs[:self.vocab.size], 1e-300)) / temperature
            p = np.exp(logp - logp.max())
            c = int(rng.choice(self.vocab.size, p=p / p.sum()))
            out.append(c)
            x = np.array([[c]], dtype=np.int64)
            probs = m.predict(theta, x, initial_state=state)[-1, 0]
            state = m.final_state(theta, x, initial_state=state)
        return self.vocab.decode(out)

    # ------------------------------------------------------------ save
    def _meta(self):
        model, opt = self.model, self.optimizer
        state_fields = None
        st = self.opt_state
        arrays = {}
        if isinstance(st, tuple) and hasattr(st, "_fields"):
            ok = all(isinstance(v, (np.ndarray, int, float, np.integer, np.floating))
                     and not isinstance(v, bool) for v in st)
            if ok:
                state_fields = list(st._fields)
                for f, v in zip(st._fields, st):
                    arrays["opt_" + f] = np.asarray(v)
        meta = {
            "format": FILE_FORMAT,
            "version": FORMAT_VERSION,
            "revtrain_version": _version(),
            "model": {"class": type(model).__name__, "module": type(model).__module__,
                      "args": constructor_args(model)},
            "optimizer": {"class": type(opt).__name__, "module": type(opt).__module__,
                          "args": constructor_args(opt), "state_fields": state_fields},
            "bptt": self.bptt,
            "seed": self.seed,
            "checkpoint_every": self.checkpoint_every,
            "init_scale": self.init_scale,
            "steps_done": self.steps_done,
            "vocab": None if self.vocab is None else self.vocab.chars,
            "history": self.history.as_dict(),
            "theta_sha256": hashlib.sha256(self.theta.tobytes()).hexdigest(),
        }
        return meta, arrays

    def save(self, path):
        """Write the trainer to ``path`` (one ``.npz`` file) atomically.

        The file is written to a temporary file in the same folder and renamed
        over ``path`` (``os.replace``), so readers never see a partial file.

        Returns
        -------
        path : str
        """
        path = os.fspath(path)
        meta, arrays = self._meta()
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"cannot save to {path!r}: folder {folder!r} does not exist")
        if os.path.isdir(path):
            raise ValueError(f"cannot save to {path!r}: it is a folder; give a file name "
                             f"such as {os.path.join(path, 'model.npz')!r}")
        fd, tmp = tempfile.mkstemp(prefix=".revtrain-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), theta=self.theta, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return path

    @classmethod
    def load(cls, path):
        """Read a trainer written by :meth:`save`.

        Raises
        ------
        ModelFileError
            Missing, corrupt or truncated file, a file of another format or
            of a newer format version, or a model/optimiser class this
            revtrain does not have.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ModelFileError(f"model file {path!r} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                if "meta" not in z.files or "theta" not in z.files:
                    raise ModelFileError(f"{path!r} is not a revtrain model file "
                                         f"(no metadata or parameters)")
                meta = json.loads(str(z["meta"][()]))
                theta = np.array(z["theta"], dtype=np.float64)
                extra = {k: np.array(z[k]) for k in z.files if k.startswith("opt_")}
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
            raise ModelFileError(f"{path!r} has file format version {version!r}; this revtrain "
                                 f"({_version()}) reads version {FORMAT_VERSION}")
        try:
            if hashlib.sha256(theta.tobytes()).hexdigest() != meta["theta_sha256"]:
                raise ModelFileError(f"{path!r} is corrupt: the parameters do not match "
                                     f"their checksum")
            mcls = _import_class(meta["model"]["module"], meta["model"]["class"])
            if mcls is None:
                raise ModelFileError(f"{path!r} holds a {meta['model']['class']} model, which "
                                     f"this revtrain does not have")
            ocls = _import_class(meta["optimizer"]["module"], meta["optimizer"]["class"])
            if ocls is None:
                raise ModelFileError(f"{path!r} uses optimizer {meta['optimizer']['class']}, "
                                     f"which this revtrain does not have")
            margs = {k: _from_json(v) for k, v in meta["model"]["args"].items()}
            oargs = {k: _from_json(v) for k, v in meta["optimizer"]["args"].items()}
            try:
                model = mcls(**margs)
                opt = ocls(**oargs)
            except (TypeError, ValueError) as e:
                raise ModelFileError(f"{path!r}: cannot rebuild {mcls.__name__}/{ocls.__name__} "
                                     f"from the saved arguments ({e})") from None
            if hasattr(model, "size") and theta.shape != (model.size,):
                raise ModelFileError(f"{path!r}: theta has shape {theta.shape}, the model "
                                     f"needs ({model.size},)")
            tr = cls(model, opt, bptt=meta["bptt"], seed=int(meta["seed"]), theta=theta,
                     checkpoint_every=meta.get("checkpoint_every"),
                     init_scale=float(meta.get("init_scale", 1.0)))
            fields = meta["optimizer"].get("state_fields")
            if fields and hasattr(tr.opt_state, "_replace"):
                try:
                    vals = {}
                    for f in fields:
                        a = extra["opt_" + f]
                        vals[f] = a[()] if a.ndim == 0 else a
                    cand = tr.opt_state._replace(**vals)
                    if np.array_equal(np.asarray(opt.params(cand), dtype=np.float64), theta):
                        tr.opt_state = cand
                except (KeyError, ValueError, TypeError):
                    pass
            tr.theta = theta
            tr.steps_done = int(meta["steps_done"])
            tr.history = History.from_dict(meta["history"])
            if meta.get("vocab") is not None:
                tr.vocab = CharVocab(meta["vocab"])
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelFileError(f"{path!r} has incomplete or invalid metadata "
                                 f"({type(e).__name__}: {e})") from None
        return tr

    def __repr__(self):
        return (f"Trainer({self.model!r}, {type(self.optimizer).__name__}, bptt={self.bptt!r}, "
                f"seed={self.seed}, steps_done={self.steps_done})")


def _version():
    try:
        from . import __version__
        return __version__
    except ImportError:
        return "unknown"


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *a, **k):
        pass

    def close(self):
        pass


def _progress(total, quiet, desc):
    """A tqdm bar on stdout, or a no-op when quiet or stdout is not a terminal."""
    if quiet or not getattr(sys.stdout, "isatty", lambda: False)():
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="step", file=sys.stdout, dynamic_ncols=True,
                leave=True)
