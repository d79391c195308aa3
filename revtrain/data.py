"""Built-in data: a character corpus, synthetic sequence tasks and a 2-D task.

Nothing is downloaded. The character corpus is the help text that every
CPython install carries in :mod:`pydoc_data.topics`; the adding and copy
tasks are generated from a seed; the 2-D task uses scikit-learn's 8x8 digits
when scikit-learn is installed and a generated one otherwise.

Shapes are time-major (see :mod:`revtrain.batch`): sequences ``(T, B, D)``
floats or ``(T, B)`` int token ids, grids ``(rows, cols, B, D)``.

Long text is trained with truncated BPTT: the token stream is cut into ``B``
contiguous parallel streams, one per batch column, and each stream is walked
in windows of ``seq_len`` steps (:func:`text_windows`). Window ``w + 1``
continues where window ``w`` stopped in every column, so the recurrent state
after one window is the right initial state for the next one.
"""
from typing import NamedTuple

import numpy as np
from ._checks import positive_int, nonneg_int, int_at_least, number_in_range


class DataError(ValueError):
    """A data file or data argument is unusable (missing, empty, not UTF-8, too short)."""


# ------------------------------------------------------------------- text
def builtin_text():
    """The built-in corpus: the text of :data:`pydoc_data.topics.topics`.

    The topics (a dict of str) are joined in sorted key order with a blank
    line between them, so every install of the same CPython version yields
    the same string (about 465 000 characters for CPython 3.11).

    Returns
    -------
    text : str
    """
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n"


def read_file_bytes(path, what, error=ValueError):
    """The bytes of the file ``path``; ``error`` (naming ``what`` and the path) if it does not
    exist, is a folder or cannot be read."""
    import os
    p = os.fspath(path)
    if not os.path.exists(p):
        raise error(f"{what} {p!r} does not exist")
    if os.path.isdir(p):
        raise error(f"{what} {p!r} is a folder (directory), not a file")
    try:
        with open(p, "rb") as f:
            return f.read()
    except OSError as e:
        raise error(f"{what} {p!r} cannot be read: {e.strerror or e}") from None


def load_text(path):
    """Read a whole UTF-8 text file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    text : str

    Raises
    ------
    DataError
        The file does not exist, is a directory, cannot be read, is not valid
        UTF-8 (the byte offset is given) or is empty (no character after an
        optional byte-order mark). A text too short to split is reported by
        :func:`split_ids` / :func:`char_corpus`, which know ``val_fraction``.
    """
    import os
    p = os.fspath(path)
    raw = read_file_bytes(p, "data file", DataError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {p!r} is not valid UTF-8 (byte {e.start}: "
                        f"{e.reason})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text:
        raise DataError(f"data file {p!r} is empty")
    return text


class CharVocab:
    """A character vocabulary: the sorted distinct characters of a text.

    Parameters
    ----------
    chars : str
        The characters, in id order, each once.

    Attributes
    ----------
    chars : str
    size : int
        Number of characters (the model's ``n_in`` and ``n_out``).
    """

    def __init__(self, chars):
        if not isinstance(chars, str) or not chars:
            raise ValueError(f"chars must be a non-empty str, got {chars!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("chars must not repeat a character")
        self.chars = chars
        self.size = len(chars)
        self._index = {c: i for i, c in enumerate(chars)}
        self._table = np.array([ord(c) for c in chars], dtype=np.int64)

    @classmethod
    def from_text(cls, text):
        """The vocabulary of ``text`` (sorted by code point)."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"text must be a non-empty str, got {type(text).__name__}")
        return cls("".join(sorted(set(text))))

    def encode(self, text):
        """Token ids of ``text``: int64 array of shape ``(len(text),)``.

        Raises ValueError naming the first character not in the vocabulary.
        """
        try:
            return np.fromiter((self._index[c] for c in text), dtype=np.int64,
                               count=len(text))
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary "
                             f"({self.size} characters)") from None

    def decode(self, ids):
        """The text of token ids (any int array-like of values in ``[0, size)``)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"ids must be in [0, {self.size}), got range "
                             f"[{ids.min()}, {ids.max()}]")
        return "".join(self.chars[i] for i in ids)

    def __len__(self):
        return self.size

    def __eq__(self, other):
        return isinstance(other, CharVocab) and other.chars == self.chars

    def __repr__(self):
        return f"CharVocab(size={self.size})"


class TextCorpus(NamedTuple):
    """A character corpus split into training and validation token streams.

    Attributes
    ----------
    train : ndarray of int64, shape (n_train,)
    val : ndarray of int64, shape (n_val,)
    vocab : CharVocab
    name : str
        ``"builtin"`` or the file path.
    """
    train: np.ndarray
    val: np.ndarray
    vocab: CharVocab
    name: str


def _n_val(n, val_fraction):
    """Validation length of an ``n``-token split: ``round(n * val_fraction)`` (half to even)."""
    return int(round(n * val_fraction))


def _splits(n, val_fraction):
    """True if ``n`` tokens leave at least 2 on each side of the split."""
    n_val = _n_val(n, val_fraction)
    return n_val >= 2 and n - n_val >= 2


def min_split_length(val_fraction):
    """The fewest tokens :func:`split_ids` can split with ``val_fraction`` (at least 4).

    The smallest ``n`` with ``n_val = round(n * f) >= 2`` and ``n - n_val >= 2``
    (``f = val_fraction`` in (0, 1)). Both need ``n * f >= 1.5`` and
    ``n * (1 - f) >= 1.5``, so the search starts just below
    ``max(1.5 / f, 1.5 / (1 - f))`` and takes a few steps (rounding half to even).
    For example 15 for ``f = 0.1``, 4 for ``f = 0.5`` and 16 for ``f = 0.9``
    (``15 * 0.9 = 13.5`` rounds to 14, leaving 1 for training).
    """
    f = number_in_range(val_fraction, "val_fraction", 0, 1, lo_open=True, hi_open=True)
    n = max(4, int(1.5 / f) - 1, int(1.5 / (1.0 - f)) - 1)
    while not _splits(n, f):
        n += 1
    return n


def split_ids(ids, val_fraction=0.1):
    """Fixed split of a token stream: the first part trains, the last ``val_fraction`` validates.

    ``n_val = round(len(ids) * val_fraction)``; both parts must hold at least 2
    tokens, so ``len(ids) >= min_split_length(val_fraction)``.

    Returns
    -------
    train, val : ndarray of int64

    Raises
    ------
    DataError
        The stream is too short; the message gives its length and the minimum.
    """
    ids = np.asarray(ids)
    val_fraction = number_in_range(val_fraction, "val_fraction", 0, 1, lo_open=True, hi_open=True)
    if not _splits(len(ids), val_fraction):
        raise DataError(f"text too short to split into training and validation parts: "
                        f"{len(ids)} character{'' if len(ids) == 1 else 's'}, needs at least "
                        f"{min_split_length(val_fraction)} with val_fraction={val_fraction:g} "
                        f"(at least 2 on each side)")
    n_val = _n_val(len(ids), val_fraction)
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:]


def char_corpus(path=None, val_fraction=0.1, max_chars=None):
    """The built-in corpus (``path=None``) or a UTF-8 file, encoded and split.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A UTF-8 text file (see :func:`load_text`); default the built-in corpus.
    val_fraction : float in (0, 1)
        The last fraction of the text is the validation stream.
    max_chars : int, optional
        Keep only the first ``max_chars`` characters (for quick runs).

    Returns
    -------
    TextCorpus
    """
    text = builtin_text() if path is None else load_text(path)
    if max_chars is not None:
        max_chars = int_at_least(max_chars, "max_chars", 4)
        text = text[:max_chars]
    vocab = CharVocab.from_text(text)
    try:
        train, val = split_ids(vocab.encode(text), val_fraction)
    except DataError as e:
        where = "the built-in corpus" if path is None else f"data file {str(path)!r}"
        first = "" if max_chars is None else f" (its first max_chars={max_chars} characters)"
        raise DataError(f"{where}{first}: {e}") from None
    return TextCorpus(train, val, vocab, "builtin" if path is None else str(path))


# ------------------------------------------------------- truncated BPTT
def stream_matrix(ids, batch_size):
    """Cut a token stream into ``batch_size`` contiguous streams.

    Stream ``b`` is ``ids[b*L : b*L + L + 1]`` with ``L = (len(ids) - 1) // batch_size``
    (one extra token so the last input has a target); the tail that does not
    fit is dropped.

    Returns
    -------
    streams : ndarray of int64, shape (L + 1, batch_size)
        Time-major: column ``b`` is stream ``b``.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"ids must be a 1-D int array, got {ids.dtype} {ids.shape}")
    B = positive_int(batch_size, "batch_size")
    L = (len(ids) - 1) // B
    if L < 1:
        raise DataError(f"text of {len(ids)} tokens is too short for batch_size={B} "
                        f"(needs at least {B + 1})")
    idx = np.arange(B)[None, :] * L + np.arange(L + 1)[:, None]
    return np.ascontiguousarray(ids[idx], dtype=np.int64)


def n_windows(n_tokens, batch_size, seq_len):
    """How many windows :func:`text_windows` yields for a stream of ``n_tokens``."""
    L = (int(n_tokens) - 1) // positive_int(batch_size, "batch_size")
    return -(-L // positive_int(seq_len, "seq_len")) if L >= 1 else 0


def text_windows(ids, batch_size, seq_len):
    """Truncated-BPTT windows over a long token stream.

    The stream is cut by :func:`stream_matrix` into ``B = batch_size`` columns
    of ``L`` steps; window ``w`` holds steps ``[w*seq_len, (w+1)*seq_len)`` of
    every column (the last window may be shorter). Targets are the next
    tokens. Window ``w + 1`` continues window ``w`` column by column, so carry
    the model's final state from one into the next.

    Yields
    ------
    x : ndarray of int64, shape (T, B)
        Input token ids, ``T = seq_len`` (or less for the last window).
    y : ndarray of int64, shape (T, B)
        Next-token targets: ``y[t, b] == x[t + 1, b]`` inside a window.
    """
    S = stream_matrix(ids, batch_size)
    T = positive_int(seq_len, "seq_len")
    L = S.shape[0] - 1
    for a in range(0, L, T):
        b = min(a + T, L)
        yield S[a:b], S[a + 1:b + 1]


# ------------------------------------------------------- synthetic tasks
def adding_task(T, batch_size, seed=0):
    """The adding problem (Hochreiter & Schmidhuber 1997).

    Each sequence has two input channels: a value uniform in [0, 1) and a
    marker that is 1 at exactly two steps (one in the first half, one in the
    second) and 0 elsewhere. The target is the sum of the two marked values,
    read at the last step. Always predicting 1 gives mean squared error
    about 1/6 ~= 0.167.

    Parameters
    ----------
    T : int >= 2
    batch_size : int
    seed : int or numpy Generator

    Returns
    -------
    x : ndarray of float64, shape (T, B, 2)
    y : ndarray of float64, shape (B, 1)
    """
    T = positive_int(T, "T")
    if T < 2:
        raise ValueError(f"T must be >= 2 for the adding task, got {T}")
    B = positive_int(batch_size, "batch_size")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    x = np.zeros((T, B, 2))
    x[:, :, 0] = rng.random((T, B))
    half = T // 2
    i = rng.integers(0, half, size=B)
    j = rng.integers(half, T, size=B)
    cols = np.arange(B)
    x[i, cols, 1] = 1.0
    x[j, cols, 1] = 1.0
    y = (x[i, cols, 0] + x[j, cols, 0])[:, None]
    return x, y


def copy_task(n_copy, delay, batch_size, n_symbols=8, seed=0):
    """The copy (memory) task.

    Tokens: 0 blank, ``1..n_symbols`` data symbols, ``n_symbols + 1`` the
    recall marker. A sequence shows ``n_copy`` random symbols, then
    ``delay`` blanks, then the marker, then ``n_copy - 1`` blanks; the target
    is blank everywhere except the last ``n_copy`` steps, where it is the
    symbols in order. Length ``T = 2*n_copy + delay``. Guessing gives
    cross-entropy ``n_copy/T * log(n_symbols)`` at best.

    Returns
    -------
    x : ndarray of int64, shape (T, B)
        Token ids in ``[0, n_symbols + 2)`` (the model's ``n_in``).
    y : ndarray of int64, shape (T, B)
        Labels in ``[0, n_symbols + 1)`` (the model's ``n_out``).
    """
    n_copy = positive_int(n_copy, "n_copy")
    delay = nonneg_int(delay, "delay")
    B = positive_int(batch_size, "batch_size")
    n_symbols = positive_int(n_symbols, "n_symbols")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    T = 2 * n_copy + delay
    sym = rng.integers(1, n_symbols + 1, size=(n_copy, B))
    x = np.zeros((T, B), dtype=np.int64)
    y = np.zeros((T, B), dtype=np.int64)
    x[:n_copy] = sym
    x[n_copy + delay] = n_symbols + 1
    y[T - n_copy:] = sym
    return x, y


class GridTask(NamedTuple):
    """A 2-D classification task for multidimensional RNNs.

    Attributes
    ----------
    x, x_val : ndarray of float64, shape (rows, cols, B, 1)
        Pixel intensities in [0, 1], time-major grid layout.
    y, y_val : ndarray of int64, shape (B,)
        Class labels in ``[0, n_classes)`` (read from the last cell).
    n_classes : int
    source : str
        ``"sklearn-digits"`` or ``"generated"``.
    """
    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int
    source: str


_GLYPHS = (  # 5x3 strokes of the digits 0-9, scaled to 8x8 by generated_digits
    "111101101101111", "010110010010111", "111001111100111", "111001111001111",
    "101101111001001", "111100111001111", "111100111101111", "111001010010010",
    "111101111101111", "111101111001111")


def generated_digits(n, seed=0, noise=0.15):
    """Synthetic 8x8 digit images: 5x3 glyphs of 0-9, jittered, shifted, with noise.

    Returns
    -------
    images : ndarray of float64, shape (n, 8, 8), values in [0, 1]
    labels : ndarray of int64, shape (n,)
    """
    n = positive_int(n, "n")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = np.zeros((n, 8, 8))
    for k in range(n):
        g = np.array([int(c) for c in _GLYPHS[labels[k]]], dtype=float).reshape(5, 3)
        sy, sx = rng.integers(1, 3), rng.integers(1, 3)          # stretch: 1 or 2
        big = np.repeat(np.repeat(g, sy, axis=0)[:8], sx, axis=1)[:, :8]
        h, w = big.shape
        oy = rng.integers(0, 8 - h + 1)
        ox = rng.integers(0, 8 - w + 1)
        images[k, oy:oy + h, ox:ox + w] = big * rng.uniform(0.6, 1.0)
    images += noise * rng.random(images.shape)
    return np.clip(images, 0.0, 1.0), labels.astype(np.int64)


def digits_task(n=None, val_fraction=0.2, seed=0, source="auto"):
    """The 2-D task: 8x8 digit images as ``(8, 8, B, 1)`` grids with labels ``(B,)``.

    Parameters
    ----------
    n : int, optional
        Number of images (default: all 1797 scikit-learn digits, or 1797
        generated ones).
    val_fraction : float in (0, 1)
        Fraction held out as the validation set (after a seeded shuffle).
    seed : int
    source : {"auto", "sklearn", "generated"}
        ``"auto"`` uses scikit-learn's digits when it is importable.

    Returns
    -------
    GridTask
    """
    if source not in ("auto", "sklearn", "generated"):
        raise ValueError(f"source must be 'auto', 'sklearn' or 'generated', got {source!r}")
    val_fraction = number_in_range(val_fraction, "val_fraction", 0, 1, lo_open=True, hi_open=True)
    images = None
    if source in ("auto", "sklearn"):
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            if source == "sklearn":
                raise DataError("source='sklearn' needs scikit-learn, which is not "
                                "installed") from None
        else:
            d = load_digits()
            images, labels, src = d.images / 16.0, d.target.astype(np.int64), "sklearn-digits"
    rng = np.random.default_rng(seed)
    if images is None:
        images, labels = generated_digits(1797 if n is None else n, seed=rng)
        src = "generated"
    perm = rng.permutation(len(labels))
    if n is not None:
        perm = perm[:positive_int(n, "n")]
    images, labels = images[perm], labels[perm]
    n_val = max(1, int(round(len(labels) * val_fraction)))
    if len(labels) - n_val < 1:
        raise DataError(f"n={len(labels)} is too small to split with val_fraction={val_fraction}")
    grid = np.ascontiguousarray(images.transpose(1, 2, 0)[..., None], dtype=np.float64)
    nt = len(labels) - n_val
    return GridTask(np.ascontiguousarray(grid[:, :, :nt]), labels[:nt],
                    np.ascontiguousarray(grid[:, :, nt:]), labels[nt:], 10, src)
