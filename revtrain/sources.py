"""Training data as sources addressed by a position, so training can stop and resume exactly.

A source turns what the user passed to :meth:`~revtrain.Trainer.fit` into
batches. Every batch is a pure function of the source and a
:class:`Position` ``(epoch, index)`` (plus, for a callable, the trainer's
random generator), so a saved position is all a resumed run needs to see
the same batches as an uninterrupted one.

* :class:`TextSource`: one long token stream, cut by
  :func:`~revtrain.data.stream_matrix` into ``B`` parallel streams and read in
  truncated-BPTT windows of ``seq_len`` steps. Window ``index`` of every epoch
  holds steps ``[index*T, (index+1)*T)`` of each stream; the recurrent state
  is carried from one window into the next and reset at each epoch start.
* :class:`ArraySource`: fixed ``(x, y)`` examples, shuffled per epoch by the
  permutation ``default_rng([seed, 2, epoch])`` (a function of the epoch, not
  of a running generator); a fresh state for each batch.
* :class:`GeneratorSource`: a callable ``fn(rng, batch_size) -> (x, y)``
  drawing a fresh batch from the trainer's generator, whose state is saved.
"""
import hashlib
import os
from typing import NamedTuple

import numpy as np

from .data import CharVocab, GridTask, TextCorpus, n_windows, stream_matrix
from ._checks import positive_int


class Position(NamedTuple):
    """Where the next batch comes from: ``epoch`` and batch ``index`` in it (Python ints)."""
    epoch: int
    index: int


START = Position(0, 0)


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def _take(a, idx, axis):
    return np.ascontiguousarray(np.take(a, idx, axis=axis))


class TextSource:
    """A long stream of token ids read in truncated-BPTT windows.

    Parameters
    ----------
    ids : ndarray of int64, shape (N,)
    """
    kind = "text"
    carries_state = True

    def __init__(self, ids):
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._streams = (None, None)

    def fingerprint(self):
        """A digest of the tokens: the same stream resumes its position, another restarts."""
        return "text:" + _digest(self.ids)

    def per_epoch(self, batch_size, seq_len):
        """Windows in one pass over the stream (raises a DataError when the text is too short)."""
        n = n_windows(len(self.ids), batch_size, seq_len)
        if n == 0:
            stream_matrix(self.ids, batch_size)      # raises a DataError naming the sizes
        return n

    def batch(self, pos, batch_size, seq_len, rng=None):
        """Window ``pos.index``: ``x, y`` int64 ``(T, B)`` and ``fresh`` (True at an epoch start)."""
        key, S = self._streams
        if key != batch_size:
            S = stream_matrix(self.ids, batch_size)
            self._streams = (batch_size, S)
        L = S.shape[0] - 1
        a = pos.index * seq_len
        b = min(a + seq_len, L)
        return S[a:b], S[a + 1:b + 1], pos.index == 0


class ArraySource:
    """Fixed examples ``(x, y)``, batched along the batch axis in a per-epoch seeded order.

    Parameters
    ----------
    x : ndarray, batch axis ``axis`` (after the time or grid axes)
    y : ndarray, batch axis ``yaxis`` (0 for per-example labels)
    seed : int
        Seeds the permutations: epoch ``e`` uses ``default_rng([seed, 2, e])``.
    """
    kind = "arrays"
    carries_state = False

    def __init__(self, x, y, axis, yaxis, seed):
        self.x, self.y, self.axis, self.yaxis = x, y, axis, yaxis
        self.n = x.shape[axis]
        self.seed = int(seed)
        self._perm = (None, None)

    def fingerprint(self):
        return "arrays:" + _digest(self.x, self.y)

    def per_epoch(self, batch_size, seq_len=None):
        return -(-self.n // batch_size)

    def permutation(self, epoch):
        """The order of the examples in ``epoch``: int64 ``(n,)``."""
        e, perm = self._perm
        if e != epoch:
            perm = np.random.default_rng([self.seed, 2, int(epoch)]).permutation(self.n)
            self._perm = (epoch, perm)
        return perm

    def batch(self, pos, batch_size, seq_len=None, rng=None):
        idx = self.permutation(pos.epoch)[pos.index * batch_size:(pos.index + 1) * batch_size]
        return _take(self.x, idx, self.axis), _take(self.y, idx, self.yaxis), True

    def in_order(self, batch_size):
        """Batches ``(x, y)`` over all examples in their stored order (for evaluation)."""
        for a in range(0, self.n, batch_size):
            idx = np.arange(a, min(a + batch_size, self.n))
            yield _take(self.x, idx, self.axis), _take(self.y, idx, self.yaxis)


class GeneratorSource:
    """A callable ``fn(rng, batch_size) -> (x, y)`` drawing a fresh batch per step."""
    kind = "generator"
    carries_state = False

    def __init__(self, fn):
        self.fn = fn

    def fingerprint(self):
        return "generator"

    def per_epoch(self, batch_size, seq_len=None):
        return None

    def batch(self, pos, batch_size, seq_len=None, rng=None):
        out = self.fn(rng, batch_size)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ValueError(f"data: the callable must return a pair (x, y), got "
                             f"{type(out).__name__}"
                             + (f" of length {len(out)}" if isinstance(out, (tuple, list))
                                else ""))
        return out[0], out[1], True


def advance(pos, per_epoch):
    """The position after ``pos`` (the next epoch after the last batch of one)."""
    if per_epoch is not None and pos.index + 1 >= per_epoch:
        return Position(pos.epoch + 1, 0)
    return Position(pos.epoch, pos.index + 1)


def looks_like_path(s):
    """A short one-line str naming an existing file or ending like a file name."""
    if len(s) > 4096 or "\n" in s or not s.strip():
        return False
    if os.path.isfile(s):
        return True
    return " " not in s and os.path.splitext(s)[1].lower() in (".txt", ".text", ".md", ".csv",
                                                               ".npz", ".npy", ".json", ".log")


def _arrays(model, x, y, seed, name):
    x, y = np.asarray(x), np.asarray(y)
    nl = getattr(model, "n_lead", 1)          # time or grid axes before the batch axis
    if x.ndim <= nl:
        raise ValueError(f"{name}: x must have the batch axis at {nl}, got shape {x.shape}")
    n = x.shape[nl]
    per_step_ndim = nl + (1 if getattr(model, "loss_kind", "softmax") == "softmax" else 2)
    yaxis = nl if y.ndim == per_step_ndim else 0
    if y.ndim <= yaxis or y.shape[yaxis] != n:
        raise ValueError(f"{name}: y must have {n} examples like x {x.shape}, got {y.shape}")
    return ArraySource(x, y, nl, yaxis, seed)


def make_source(data, model, vocab, seed, name="data", encode_text=True):
    """Normalise what was passed as ``data`` into a source.

    Parameters
    ----------
    data : TextCorpus, GridTask, str, 1-D int array, (x, y) or callable
    model : RecurrentModel
        Its ``n_lead`` (time/grid axes) and ``loss_kind`` locate the batch axes.
    vocab : CharVocab or None
        Encodes a ``str``; when None a ``str`` defines a new vocabulary.
    seed : int
        Seeds the per-epoch order of ``(x, y)`` examples.
    name : str
        Names the argument in error messages.

    Returns
    -------
    source : TextSource, ArraySource or GeneratorSource
    default_val : source or None
        The validation part that came with the data (TextCorpus, GridTask).
    vocab : CharVocab or None
        The character vocabulary the data defines (TextCorpus, or a ``str`` when
        ``vocab`` was None).
    is_char : bool
        True for character data (bits per character are reported).
    """
    if isinstance(data, TextCorpus):
        return TextSource(data.train), TextSource(data.val), data.vocab, True
    if isinstance(data, GridTask):
        return (_arrays(model, data.x, data.y, seed, name),
                _arrays(model, data.x_val, data.y_val, seed, name), None, False)
    if isinstance(data, os.PathLike) or (isinstance(data, str) and looks_like_path(data)):
        raise ValueError(f"{name}: a str is trained on as the text itself, and {str(data)!r} "
                         "looks like a file path; to train on a file pass "
                         f"rt.char_corpus({str(data)!r}) (or rt.load_text(path) for its text)")
    if isinstance(data, str):
        if vocab is None:
            vocab = CharVocab.from_text(data)
        return TextSource(vocab.encode(data)), None, vocab, True
    if isinstance(data, np.ndarray) and data.ndim == 1:
        if data.dtype.kind not in "iu":
            raise ValueError(f"{name}: a 1-D array must hold int token ids, got {data.dtype}")
        return TextSource(data), None, None, vocab is not None
    if isinstance(data, tuple) and len(data) == 2:
        return _arrays(model, data[0], data[1], seed, name), None, None, False
    if callable(data):
        return GeneratorSource(data), None, None, False
    raise ValueError(f"{name} must be a TextCorpus, GridTask, str, 1-D int array, (x, y) tuple "
                     f"or callable(rng, batch_size), got {type(data).__name__}")


def check_sizes(batch_size, seq_len):
    """Validated ``(batch_size, seq_len)`` as Python ints."""
    return positive_int(batch_size, "batch_size"), positive_int(seq_len, "seq_len")
