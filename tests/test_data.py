"""Built-in corpus, vocabulary, text files, truncated-BPTT windows and synthetic tasks."""
import numpy as np
import pytest

from revtrain.data import (CharVocab, DataError, adding_task, builtin_text, char_corpus,
                           copy_task, digits_task, generated_digits, load_text, n_windows,
                           min_split_length, split_ids, stream_matrix, text_windows)


def test_builtin_text_is_deterministic_and_sorted_topics():
    from pydoc_data.topics import topics
    a, b = builtin_text(), builtin_text()
    assert a == b
    assert len(a) > 100_000
    keys = sorted(topics)
    # the topics appear in sorted key order
    i = a.index(topics[keys[0]].strip("\n")[:200])
    j = a.index(topics[keys[-1]].strip("\n")[:200])
    assert i < j


def test_corpus_split_is_fixed_and_covers_the_text():
    c1, c2 = char_corpus(), char_corpus()
    assert np.array_equal(c1.train, c2.train) and np.array_equal(c1.val, c2.val)
    text = builtin_text()
    assert c1.vocab.decode(np.concatenate([c1.train, c1.val])) == text
    assert len(c1.val) == round(0.1 * len(text))
    assert c1.vocab.chars == "".join(sorted(set(text)))
    assert c1.name == "builtin"


def test_vocab_round_trip_and_errors():
    v = CharVocab.from_text("hello world")
    ids = v.encode("hello")
    assert ids.dtype == np.int64 and ids.shape == (5,)
    assert v.decode(ids) == "hello"
    assert v.size == len(set("hello world"))
    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        v.encode("zz")
    with pytest.raises(ValueError, match=r"ids must be in \[0, 8\)"):
        v.decode([0, 8])
    with pytest.raises(ValueError, match="repeat"):
        CharVocab("aa")


def test_load_text_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="directory"):
        load_text(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_text(empty)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff\xfedef")
    with pytest.raises(DataError, match="not valid UTF-8 \\(byte 3"):
        load_text(bad)
    assert isinstance(DataError("x"), ValueError)


def test_load_text_reads_utf8_and_corpus_from_file(tmp_path):
    p = tmp_path / "t.txt"
    text = "größer als ∑ " * 50
    p.write_text(text, encoding="utf-8")
    assert load_text(p) == text
    c = char_corpus(p, val_fraction=0.2)
    assert c.vocab.decode(np.concatenate([c.train, c.val])) == text
    assert len(c.val) == round(0.2 * len(text))


def test_split_errors():
    with pytest.raises(ValueError, match="val_fraction"):
        split_ids(np.arange(100), 1.5)
    with pytest.raises(DataError, match="too short"):
        split_ids(np.arange(3), 0.1)
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got True"):
        split_ids(np.arange(100), True)


@pytest.mark.parametrize("f, n_min", [(0.1, 15), (0.5, 4), (0.9, 16), (0.2, 8)])  # 15 * 0.9 = 13.5 -> 14
def test_min_split_length_is_the_shortest_text_that_splits(f, n_min):
    assert min_split_length(f) == n_min
    train, val = split_ids(np.arange(n_min), f)
    assert len(train) >= 2 and len(val) >= 2
    with pytest.raises(DataError, match=f"{n_min - 1} characters, needs at least {n_min} "):
        split_ids(np.arange(n_min - 1), f)


def test_an_empty_data_file_is_reported_as_empty(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_bytes(b"\xef\xbb\xbf")                  # only a byte-order mark
    with pytest.raises(DataError, match=r"data file .*empty\.txt' is empty$"):
        char_corpus(p)


@pytest.mark.parametrize("text", ["x", "xy", "xyz", "abcdefghijklmn"])
def test_a_short_data_file_is_reported_as_too_short_to_split(tmp_path, text):
    """Not "empty ... got 1": the file is named, with its length and the minimum."""
    p = tmp_path / "short.txt"
    p.write_text(text, encoding="utf-8")
    assert load_text(p) == text
    with pytest.raises(DataError) as info:
        char_corpus(p)
    msg = str(info.value)
    n = len(text)
    assert msg.startswith(f"data file {str(p)!r}: text too short to split into training "
                          "and validation parts")
    assert f": {n} character{'s' if n > 1 else ''}, needs at least 15 with val_fraction=0.1" in msg
    assert "empty" not in msg


def test_max_chars_too_short_names_the_truncation():
    with pytest.raises(DataError, match=r"^the built-in corpus \(its first max_chars=10 "
                                        r"characters\): text too short.*10 characters"):
        char_corpus(max_chars=10)
    with pytest.raises(ValueError, match="max_chars must be an int >= 4, got 3"):
        char_corpus(max_chars=3)
    assert len(char_corpus(max_chars=np.int32(40)).train) == 36


def test_windows_shapes_and_continuity():
    ids = np.arange(1000, dtype=np.int64)
    B, T = 4, 30
    S = stream_matrix(ids, B)
    L = (len(ids) - 1) // B
    assert S.shape == (L + 1, B)
    for b in range(B):
        assert np.array_equal(S[:, b], ids[b * L: b * L + L + 1])
    wins = list(text_windows(ids, B, T))
    assert len(wins) == n_windows(len(ids), B, T) == -(-L // T)
    for x, y in wins[:-1]:
        assert x.shape == y.shape == (T, B)
    assert wins[-1][0].shape == (L - (len(wins) - 1) * T, B)
    for x, y in wins:
        assert np.array_equal(x[1:], y[:-1])  # next-token targets
    # window w+1 continues window w in every column (so the state carries over)
    for (x0, y0), (x1, _) in zip(wins, wins[1:]):
        assert np.array_equal(y0[-1], x1[0])
        assert np.array_equal(x0[-1] + 1, x1[0])
    # every input token of the used part appears exactly once
    allx = np.concatenate([x for x, _ in wins])
    assert np.array_equal(np.sort(allx.T.ravel()), np.arange(B * L))


def test_windows_errors():
    with pytest.raises(DataError, match="too short"):
        stream_matrix(np.arange(3), 4)
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        list(text_windows(np.arange(100), 2, 0))
    with pytest.raises(ValueError, match="1-D int"):
        stream_matrix(np.zeros(10), 2)


def test_adding_task():
    x, y = adding_task(20, 16, seed=3)
    x2, y2 = adding_task(20, 16, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert x.shape == (20, 16, 2) and y.shape == (16, 1)
    assert np.all(x[:, :, 1].sum(axis=0) == 2)
    assert np.all(x[:10, :, 1].sum(axis=0) == 1)
    assert np.allclose((x[:, :, 0] * x[:, :, 1]).sum(axis=0), y[:, 0])
    assert not np.array_equal(adding_task(20, 16, seed=4)[0], x)


def test_copy_task():
    x, y = copy_task(5, 7, 3, n_symbols=6, seed=1)
    T = 2 * 5 + 7
    assert x.shape == y.shape == (T, 3) and x.dtype == y.dtype == np.int64
    assert np.array_equal(x[:5], y[-5:])
    assert np.all(x[5 + 7] == 7)                      # the marker
    assert np.all(y[:-5] == 0) and np.all((x[:5] >= 1) & (x[:5] <= 6))
    assert np.array_equal(copy_task(5, 7, 3, n_symbols=6, seed=1)[0], x)


def test_digits_task_shapes_and_determinism():
    g = digits_task(n=200, seed=0, source="generated")
    assert g.source == "generated" and g.n_classes == 10
    assert g.x.shape == (8, 8, 160, 1) and g.y.shape == (160,)
    assert g.x_val.shape == (8, 8, 40, 1) and g.y_val.shape == (40,)
    assert g.x.min() >= 0 and g.x.max() <= 1 and g.y.dtype == np.int64
    g2 = digits_task(n=200, seed=0, source="generated")
    assert np.array_equal(g.x, g2.x) and np.array_equal(g.y_val, g2.y_val)
    auto = digits_task(n=50)
    assert auto.source in ("sklearn-digits", "generated")
    assert auto.x.shape[:2] == (8, 8)


def test_generated_digits_classes_differ():
    im, lab = generated_digits(300, seed=0, noise=0.0)
    means = np.array([(im[lab == k] > 0.3).mean() for k in range(10)])
    assert len(np.unique(lab)) == 10
    assert means.std() > 0  # glyphs differ in ink
