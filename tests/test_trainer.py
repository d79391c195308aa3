"""Trainer: truncated BPTT with state carry, determinism, histories, save/load and file errors."""
import json
import math
import os
import zipfile
from typing import NamedTuple

import numpy as np
import pytest

import revtrain as rt
from revtrain.data import CharVocab, TextCorpus, adding_task, text_windows
from revtrain import model_file
from revtrain.model_file import FORMAT_VERSION, ModelFileError, constructor_args, find_class
from revtrain.trainer import StopTraining, Trainer

TEXT = ("the quick brown fox jumps over the lazy dog; " * 40
        + "pack my box with five dozen liquor jugs. " * 40)


class SGDState(NamedTuple):
    theta: np.ndarray
    t: int


class PlainSGD:
    """Stand-in optimiser with the optax-style interface (init / step / params)."""

    def __init__(self, lr):
        self.lr = lr

    def init(self, theta):
        return SGDState(np.array(theta, dtype=np.float64), 0)

    def step(self, state, grad):
        return SGDState(state.theta - self.lr * grad, state.t + 1)

    def params(self, state):
        return state.theta


class Spy:
    """Wraps a model and records what loss_and_grad received and returned."""

    def __init__(self, model):
        self.model = model
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def loss_and_grad(self, theta, x, y, **kw):
        out = self.model.loss_and_grad(theta, x, y, **kw)
        s0 = kw.get("initial_state")
        self.calls.append((x.copy(), None if s0 is None else s0.copy(),
                           out[2].final_state.copy(), theta.copy(), out[0]))
        return out


def corpus():
    v = CharVocab.from_text(TEXT)
    ids = v.encode(TEXT)
    n = int(len(ids) * 0.9)
    return TextCorpus(ids[:n], ids[n:], v, "test")


def rnn(v, H=8):
    return rt.RNN(v, H, v)


def test_state_is_carried_between_windows_and_reset_each_epoch():
    c = corpus()
    spy = Spy(rnn(c.vocab.size))
    tr = Trainer(spy, PlainSGD(0.1), seed=1)
    B, T = 3, 50
    wins = list(text_windows(c.train, B, T))
    n = len(wins)
    tr.fit(c, steps=n + 2, batch_size=B, seq_len=T, quiet=True, val_data=None, eval_every=1000)
    calls = spy.calls
    assert len(calls) == n + 2
    assert calls[0][1] is None and calls[n][1] is None          # fresh state each epoch
    for k in range(1, n):
        assert np.array_equal(calls[k][1], calls[k - 1][2])     # carried over
        assert np.array_equal(calls[k][0], wins[k][0])
    assert np.array_equal(calls[n + 1][1], calls[n][2])
    # the carried state is the model's final state for that window and parameters
    x, s0, s1, theta, loss = calls[3]
    assert np.array_equal(spy.model.final_state(theta, x, initial_state=s0), s1)


def test_same_seed_same_bits_and_history_fields():
    c = corpus()
    runs = []
    for seed in (0, 0, 1):
        tr = Trainer(rnn(c.vocab.size), rt.Adam(0.01), seed=seed)
        h = tr.fit(c, steps=6, batch_size=4, seq_len=20, eval_every=3, quiet=True)
        runs.append((tr.theta.copy(), list(h.loss), list(h.val_loss)))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1] and runs[0][2] == runs[1][2]
    assert not np.array_equal(runs[0][0], runs[2][0])
    h = tr.history
    assert h.step == [1, 2, 3, 4, 5, 6] and h.val_step == [3, 6]
    assert h.bpc == [l / math.log(2) for l in h.loss]
    assert h.val_bpc == [l / math.log(2) for l in h.val_loss]
    assert len(h.time) == 6 and all(b > a for a, b in zip(h.time, h.time[1:]))
    assert all(isinstance(b, int) and b > 0 for b in h.stored_bytes)
    # validation loss equals a direct evaluation of the validation stream
    ev = tr.evaluate(c.val, batch_size=4, seq_len=20)
    assert ev["loss"] == pytest.approx(h.val_loss[-1], rel=1e-12)


def test_training_reduces_loss_and_generate_is_seeded():
    c = corpus()
    tr = Trainer(rnn(c.vocab.size, 16), rt.Adam(0.02), seed=0)
    h = tr.fit(c, epochs=3, batch_size=4, seq_len=25, quiet=True, grad_clip=1.0)
    assert np.mean(h.loss[-5:]) < np.mean(h.loss[:5])
    assert h.val_loss[-1] < math.log(c.vocab.size)
    s1 = tr.generate(40, prime="the ", temperature=0.7, seed=3)
    s2 = tr.generate(40, prime="the ", temperature=0.7, seed=3)
    assert s1 == s2 and len(s1) == 40 and set(s1) <= set(c.vocab.chars)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tr.generate(5, prime="Z")


def test_arrays_and_generator_data_with_mse():
    m = rt.RNN(2, 6, 1, loss="mse")
    x, y = adding_task(12, 40, seed=0)
    xv, yv = adding_task(12, 20, seed=1)
    tr = Trainer(m, rt.Adam(0.01), seed=0)
    h = tr.fit((x, y), epochs=2, batch_size=16, val_data=(xv, yv), quiet=True)
    assert len(h.loss) == 2 * 3 and h.bpc == [] and h.val_bpc == []
    assert h.val_loss[-1] == pytest.approx(m.loss(tr.theta, xv, yv), rel=1e-12)
    tr2 = Trainer(m, rt.Adam(0.01), seed=0)
    h2 = tr2.fit((x, y), epochs=2, batch_size=16, val_data=(xv, yv), quiet=True)
    assert h2.loss == h.loss
    gen = lambda rng, b: adding_task(12, b, seed=rng)
    h3 = Trainer(m, rt.Adam(0.01), seed=0).fit(gen, steps=4, batch_size=8, quiet=True)
    assert len(h3.loss) == 4
    with pytest.raises(ValueError, match="steps is required"):
        Trainer(m, rt.Adam(0.01)).fit(gen)


def test_classification_accuracy_on_last_step_labels():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(5, 30))
    y = x[-1].copy()                                 # label = last token
    tr = Trainer(rt.RNN(3, 8, 3), rt.Adam(0.05), seed=0)
    h = tr.fit((x, y), epochs=20, batch_size=10, val_data=(x, y), quiet=True)
    assert 0.0 <= h.val_acc[-1] <= 1.0 and h.val_acc[-1] > 0.8


def test_callbacks_stop_and_records():
    c = corpus()
    seen = []

    def cb(trainer, rec):
        seen.append(rec)
        return rec["step"] == 3

    def cb2(trainer, rec):
        if rec["step"] == 10:
            raise StopTraining

    tr = Trainer(rnn(c.vocab.size), rt.Adam(0.01))
    h = tr.fit(c, steps=50, batch_size=2, seq_len=10, callbacks=[cb], quiet=True,
               eval_every=2)
    assert len(h.loss) == 3 and [r["step"] for r in seen] == [1, 2, 3]
    assert "val_loss" in seen[1] and "val_bpc" in seen[1]
    h = tr.fit(c, steps=50, batch_size=2, seq_len=10, callbacks=[cb2], quiet=True)
    assert tr.steps_done == 10 and h.step[-1] == 10


def test_bad_arguments():
    c = corpus()
    m = rnn(c.vocab.size)
    with pytest.raises(ValueError, match="bptt must be one of"):
        Trainer(m, rt.Adam(0.01), bptt="reversible")
    with pytest.raises(ValueError, match="has no init"):
        Trainer(m, object())
    tr = Trainer(m, rt.Adam(0.01))
    with pytest.raises(ValueError, match="not both"):
        tr.fit(c, steps=1, epochs=1)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        tr.fit(c, steps=1, batch_size=0)
    with pytest.raises(ValueError, match="too short"):
        tr.fit(c.train[:5], steps=1, batch_size=8)
    with pytest.raises(ValueError, match="n_in"):
        Trainer(rt.RNN(3, 4, 3), rt.Adam(0.01)).fit(TEXT, steps=1)


def test_no_progress_output_when_not_a_terminal(capsys):
    c = corpus()
    Trainer(rnn(c.vocab.size), rt.Adam(0.01)).fit(c, steps=2, batch_size=2, seq_len=5)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


# ------------------------------------------------------------ save / load
def trained(opt=None, steps=4):
    c = corpus()
    tr = Trainer(rnn(c.vocab.size), opt or rt.Adam(0.01), seed=2)
    tr.fit(c, steps=steps, batch_size=3, seq_len=15, quiet=True, eval_every=2)
    return tr, c


def test_save_load_round_trip_and_resume(tmp_path):
    tr, c = trained()
    p = tmp_path / "m.npz"
    assert tr.save(p) == str(p)
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]         # no temporary left behind
    t2 = Trainer.load(p)
    assert type(t2.model) is type(tr.model) and repr(t2.model) == repr(tr.model)
    assert t2.theta.dtype == np.float64 and np.array_equal(t2.theta, tr.theta)
    assert t2.history.as_dict() == tr.history.as_dict()
    assert t2.vocab == tr.vocab and t2.steps_done == tr.steps_done == 4
    assert constructor_args(t2.optimizer) == constructor_args(tr.optimizer)
    assert t2.opt_state.t == 4 and np.array_equal(t2.opt_state.v, tr.opt_state.v)
    # resuming after a reload gives the same bits as going on without it
    tr.fit(c, steps=3, batch_size=3, seq_len=15, quiet=True)
    t2.fit(c, steps=3, batch_size=3, seq_len=15, quiet=True)
    assert np.array_equal(tr.theta, t2.theta)
    assert tr.generate(20, prime="t", seed=1) == t2.generate(20, prime="t", seed=1)
    # the file holds no pickles
    with np.load(p, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"][()]))
    assert meta["version"] == FORMAT_VERSION and meta["model"]["class"] == "RNN"


def test_save_load_exact_sgd(tmp_path):
    tr, _ = trained(rt.ExactSGD(0.1, 0.9))
    tr.save(tmp_path / "s.npz")
    t2 = Trainer.load(tmp_path / "s.npz")
    assert type(t2.optimizer).__name__ == "ExactSGD"
    assert np.array_equal(t2.theta, tr.theta)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    tr, _ = trained()
    p = tmp_path / "m.npz"
    tr.save(p)
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        tr.save(p)
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["m.npz"]
    with pytest.raises(ValueError, match="does not exist"):
        tr.save(tmp_path / "nope" / "m.npz")
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        tr.save(tmp_path)
    assert os.listdir(tmp_path) == ["m.npz"]


def _rewrite(src, dst, meta_fn=None, theta_fn=None, fix_checksum=True):
    """Edit a saved file; by default recompute its checksum (to reach the later checks)."""
    with np.load(src, allow_pickle=False) as z:
        d = {k: np.array(z[k]) for k in z.files}
    meta = json.loads(str(d["meta"][()]))
    if meta_fn:
        meta_fn(meta)
    if theta_fn:
        d["theta"] = theta_fn(d["theta"])
    if fix_checksum:
        meta.pop("checksum")
        meta["checksum"] = model_file.checksum(meta, {k: v for k, v in d.items() if k != "meta"})
    d["meta"] = np.array(json.dumps(meta))
    with open(dst, "wb") as f:
        np.savez(f, **d)


def test_load_errors(tmp_path):
    tr, _ = trained(steps=2)
    good = tmp_path / "good.npz"
    tr.save(good)
    raw = good.read_bytes()

    with pytest.raises(ModelFileError, match="does not exist"):
        Trainer.load(tmp_path / "missing.npz")
    for cut in (len(raw) // 2, len(raw) - 30, 10):
        (tmp_path / "trunc.npz").write_bytes(raw[:cut])
        with pytest.raises(ModelFileError, match="corrupt or truncated"):
            Trainer.load(tmp_path / "trunc.npz")
    # flip bytes inside the stored parameters: zip CRC or our checksum catches it
    bad = bytearray(raw)
    for i in range(len(raw) // 3, len(raw) // 3 + 64):
        bad[i] ^= 0x5A
    (tmp_path / "flip.npz").write_bytes(bytes(bad))
    with pytest.raises(ModelFileError):
        Trainer.load(tmp_path / "flip.npz")
    (tmp_path / "text.npz").write_text("not a model")
    with pytest.raises(ModelFileError, match="corrupt or truncated") as e:
        Trainer.load(tmp_path / "text.npz")
    assert "not an .npz (zip) archive" in str(e.value) and "pickle" not in str(e.value)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ModelFileError, match="not a revtrain model file"):
        Trainer.load(tmp_path / "other.npz")

    def newer(m):
        m["version"] = FORMAT_VERSION + 1
    _rewrite(good, tmp_path / "v.npz", newer)
    with pytest.raises(ModelFileError, match=f"version {FORMAT_VERSION + 1}.*reads version "
                                             f"{FORMAT_VERSION}"):
        Trainer.load(tmp_path / "v.npz")

    def unknown(m):
        m["model"]["class"] = "NoSuchNet"
        m["model"]["module"] = "revtrain.models.nosuch"
    _rewrite(good, tmp_path / "u.npz", unknown)
    with pytest.raises(ModelFileError, match="NoSuchNet"):
        Trainer.load(tmp_path / "u.npz")
    _rewrite(good, tmp_path / "c.npz", theta_fn=lambda t: t + 1e-9, fix_checksum=False)
    with pytest.raises(ModelFileError, match="checksum"):
        Trainer.load(tmp_path / "c.npz")

    def more_steps(m):
        m["steps_done"] += 1
    _rewrite(good, tmp_path / "s.npz", more_steps, fix_checksum=False)
    with pytest.raises(ModelFileError, match="checksum"):     # the metadata is covered too
        Trainer.load(tmp_path / "s.npz")

    def drop(m):
        del m["history"]
    _rewrite(good, tmp_path / "d.npz", drop)
    with pytest.raises(ModelFileError, match="incomplete"):
        Trainer.load(tmp_path / "d.npz")
    assert issubclass(ModelFileError, ValueError)
    assert zipfile.is_zipfile(good)


def test_find_class():
    assert find_class("RNN") is rt.RNN
    assert find_class("Adam") is rt.Adam
    assert find_class("NoSuchModel") is None


def test_no_carry_starts_every_window_from_zeros():
    c = corpus()
    spy = Spy(rnn(c.vocab.size))
    tr = Trainer(spy, PlainSGD(0.1), seed=1)
    tr.fit(c, steps=4, batch_size=3, seq_len=20, quiet=True, carry_state=False, eval_every=4)
    assert all(call[1] is None for call in spy.calls)
    ev = tr.evaluate(c.val, batch_size=3, seq_len=20, carry_state=False)
    assert ev["loss"] == pytest.approx(tr.history.val_loss[-1], rel=1e-12)


def test_grid_data_batches_on_the_batch_axis():
    g = rt.digits_task(n=30, seed=0, source="generated")
    spy = Spy(rt.MDRNN(1, 4, 10))
    tr = Trainer(spy, rt.Adam(0.01), seed=0)
    h = tr.fit((g.x, g.y), epochs=1, batch_size=10, val_data=(g.x_val, g.y_val), quiet=True)
    assert [c[0].shape for c in spy.calls][:2] == [(8, 8, 10, 1)] * 2
    assert sum(c[0].shape[2] for c in spy.calls) == g.x.shape[2]
    assert len(h.val_acc) == 3 and all(0.0 <= a <= 1.0 for a in h.val_acc)
    # the same examples each epoch, in a seeded order
    seen = np.concatenate([c[0].reshape(64, -1).T for c in spy.calls])
    assert np.array_equal(np.sort(seen, axis=0), np.sort(g.x.reshape(64, -1).T, axis=0))


def test_fit_rejects_a_file_path_given_as_text(tmp_path):
    # a str is trained on as the text itself: a path must not be silently used as the text
    f = tmp_path / "corpus.txt"
    f.write_text("abcab" * 20)
    tr = Trainer(rt.RNN(40, 4, 40), rt.Adam(0.01), seed=0)
    for bad in (str(f), f, "no/such/file.txt"):
        with pytest.raises(ValueError, match="looks like a file path.*char_corpus"):
            tr.fit(bad, steps=1, batch_size=2, seq_len=5, quiet=True)
    assert tr.steps_done == 0
    tr.fit("abcab" * 20, steps=1, batch_size=2, seq_len=5, quiet=True)   # real text still works
    tr.fit(rt.char_corpus(f), steps=1, batch_size=2, seq_len=5, quiet=True)
    assert tr.steps_done == 2


def test_fit_argument_errors_are_clear():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, (6, 8)), rng.integers(0, 3, (6, 8))
    tr = Trainer(rt.RNN(5, 4, 3), rt.Adam(0.01), seed=0)
    kw = dict(steps=1, batch_size=4, quiet=True)
    with pytest.raises(ValueError,
                       match="grad_clip must be a positive finite number or None, got .1."):
        tr.fit((x, y), grad_clip="1", **kw)
    with pytest.raises(ValueError, match=r"must return a pair \(x, y\), got ndarray"):
        tr.fit(lambda r, b: x, **kw)
    with pytest.raises(ValueError, match=r"must return a pair \(x, y\), got tuple of length 3"):
        tr.fit(lambda r, b: (x, y, y), **kw)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive int, got 0"):
        Trainer(rt.RNN(5, 4, 3), rt.Adam(0.01), bptt="checkpoint", checkpoint_every=0)
    seen = []
    tr.fit((x, y), callbacks=lambda t, rec: seen.append(rec["step"]), **kw)   # one callable
    assert len(seen) == 1 and tr.steps_done == 1
