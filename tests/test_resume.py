"""Resume: fit(k) + save + load + fit(n-k) == fit(n), bit for bit; checkpoints; divergence.

The invariant is tested, not one run's numbers: whatever k, whichever optimiser,
model, BPTT mode and state handling, the saved file holds everything the next
step depends on.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import revtrain as rt
from revtrain.data import CharVocab, TextCorpus, text_windows
from revtrain.errors import check_reversal
from revtrain.model_file import BufferSnapshot
from revtrain.trainer import Trainer, step_dropout_seed

TEXT = ("the quick brown fox jumps over the lazy dog; " * 12
        + "pack my box with five dozen liquor jugs. " * 12)
FIT = dict(batch_size=3, seq_len=12, quiet=True, eval_every=3)
N = 7


def corpus():
    v = CharVocab.from_text(TEXT)
    ids = v.encode(TEXT)
    n = int(len(ids) * 0.85)
    return TextCorpus(ids[:n], ids[n:], v, "test")


V = corpus().vocab.size
CASES = {   # model, optimiser, bptt, carry_state
    "rnn-adam-carry": lambda: (rt.RNN(V, 8, V), rt.Adam(0.02), "standard", True),
    "revlstm-exactsgd-carry": lambda: (rt.RevLSTM(V, 8, V), rt.ExactSGD(3.0, 0.9),
                                       "reversible", True),
    "revgru-adam-reset": lambda: (rt.RevGRU(V, 8, V), rt.Adam(0.02), "reversible", False),
    "lstm-exactsgd-reset": lambda: (rt.LSTM(V, 6, V), rt.ExactSGD(3.0, 0.9), "standard", False),
    # a stack: 2 layers over an embedding, variational dropout with fresh masks every step
    "revlstm2-embed-dropout-adam-carry": lambda: (
        rt.RevLSTM(V, 8, V, n_layers=2, embed_dim=5, dropout=0.25), rt.Adam(0.02),
        "reversible", True),
}


def make(case, seed=3):
    model, opt, bptt, carry = CASES[case]()
    return Trainer(model, opt, bptt=bptt, seed=seed), carry


def state_arrays(tr):
    """Every array and number of the optimiser state (buffers as their stored parts)."""
    out = []
    for v in tr.opt_state:
        if isinstance(v, rt.InfoBuffer):
            out.extend(BufferSnapshot(v).arrays())
        else:
            out.append(v)
    return out


def assert_same_run(a, b):
    assert a.steps_done == b.steps_done
    assert a.theta.tobytes() == b.theta.tobytes()
    sa, sb = state_arrays(a), state_arrays(b)
    assert len(sa) == len(sb)
    for x, y in zip(sa, sb):
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        else:
            assert type(x) is type(y) and x == y
    for f in ("step", "loss", "stored_bytes"):
        assert a.history[f] == b.history[f]
    ca, cb = a._state.carry, b._state.carry
    assert (ca is None) == (cb is None) and (ca is None or ca.tobytes() == cb.tobytes())
    assert a._state.position == b._state.position


_REFERENCE = {}


def reference(case):
    if case not in _REFERENCE:
        tr, carry = make(case)
        tr.fit(corpus(), steps=N, carry_state=carry, **FIT)
        _REFERENCE[case] = tr
    return _REFERENCE[case]


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=3, deadline=None)
@given(k=st.integers(1, N - 1))
def test_fit_save_load_fit_equals_one_fit(case, k, tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "m.npz"
    tr, carry = make(case)
    c = corpus()
    tr.fit(c, steps=k, carry_state=carry, **FIT)
    tr.save(path)
    back = Trainer.load(path)
    assert_same_run(back, tr)
    back.fit(c, steps=N - k, carry_state=carry, **FIT)
    assert_same_run(back, reference(case))


def test_two_fit_calls_continue_through_the_text():
    c = corpus()
    a, _ = make("rnn-adam-carry")
    a.fit(c, steps=3, **FIT)
    a.fit(c, steps=N - 3, **FIT)
    assert_same_run(a, reference("rnn-adam-carry"))
    # the windows of the second call were new ones, not the first three again
    b, _ = make("rnn-adam-carry")
    b.fit(c, steps=3, **FIT)
    b_theta = b.theta.copy()
    b._state = b._state._replace(position=rt.trainer.START, carry=None)   # a restart
    b.fit(c, steps=N - 3, **FIT)
    assert not np.array_equal(b.theta, a.theta) and not np.array_equal(b_theta, a.theta)


def test_new_data_starts_at_its_beginning():
    c = corpus()
    tr, _ = make("rnn-adam-carry")
    tr.fit(c, steps=2, **FIT)
    other = TextCorpus(c.train[::-1].copy(), c.val, c.vocab, "reversed")
    tr.fit(other, steps=1, **FIT)
    assert tr._state.position == rt.trainer.Position(0, 1)


def test_resume_with_arrays_and_generator_data(tmp_path):
    g = rt.digits_task(n=30, seed=0, source="generated")        # a GridTask is accepted

    def run(split):
        tr = Trainer(rt.MDRNN(1, 3, 10), rt.Adam(0.02), seed=1)
        for i, k in enumerate(split):
            tr.fit(g, steps=k, batch_size=10, quiet=True)
            tr.save(tmp_path / "g.npz")
            tr = Trainer.load(tmp_path / "g.npz")
        return tr
    assert_same_run(run([2, 3]), run([5]))                       # crosses an epoch boundary

    def gen(rng, b):
        return rt.adding_task(6, b, seed=rng)

    def run_gen(split):
        tr = Trainer(rt.RNN(2, 4, 1, loss="mse"), rt.ExactSGD(0.5, 0.9), seed=1)
        for k in split:
            tr.fit(gen, steps=k, batch_size=4, quiet=True)
            tr.save(tmp_path / "r.npz")
            tr = Trainer.load(tmp_path / "r.npz")
        return tr
    assert_same_run(run_gen([1, 2, 1]), run_gen([4]))


def test_resumed_exact_sgd_run_still_reverses_to_w0(tmp_path):
    c = corpus()
    model = rt.RNN(V, 6, V)
    tr = Trainer(model, rt.ExactSGD(2.0, 0.9), seed=5)
    w0 = tr.opt_state.w.copy()
    kw = dict(FIT, carry_state=False, grad_clip=None)
    tr.fit(c, steps=3, **kw)
    tr.save(tmp_path / "e.npz")
    tr = Trainer.load(tmp_path / "e.npz")
    tr.fit(c, steps=3, **kw)
    wins = list(text_windows(c.train, FIT["batch_size"], FIT["seq_len"]))

    def grad_fn(theta, t):
        x, y = wins[t % len(wins)]
        return model.loss_and_grad(theta, x, y, bptt="standard")[1]

    state = tr.opt_state
    assert state.t == 6 and state.buffer.nbytes > 8 * state.buffer.n_streams
    for _ in range(6):
        state = tr.optimizer.unstep(state, grad_fn)
    check_reversal("reversing the resumed run", np.array_equal(state.w, w0), state.buffer,
                   what="w_0")
    assert not state.v.any()


def test_saved_numbers_keep_their_python_types(tmp_path):
    tr, _ = make("rnn-adam-carry")
    tr.fit(corpus(), steps=2, **FIT)
    tr.save(tmp_path / "m.npz")
    back = Trainer.load(tmp_path / "m.npz")
    assert type(back.opt_state.t) is int and type(back.steps_done) is int
    assert all(type(v) is int for v in back.history.step + back.history.stored_bytes)
    assert all(type(v) is float for v in back.history.loss + back.history.val_loss)
    assert back.fit_options == tr.fit_options and type(back.fit_options["seq_len"]) is int
    assert type(back._state.position.epoch) is int
    # an Adam state whose counter arrives as a NumPy integer steps to the same bits
    opt = rt.Adam(0.01)
    s = opt.step(opt.init(np.ones(3)), np.full(3, 0.5))
    g = np.array([0.1, -0.2, 0.3])
    assert opt.step(s._replace(t=np.int64(s.t)), g).theta.tobytes() == \
        opt.step(s, g).theta.tobytes()


def test_checkpoint_file_mode_follows_the_umask(tmp_path):
    tr, _ = make("rnn-adam-carry")
    old = os.umask(0o027)
    try:
        tr.fit(corpus(), steps=2, save_every=1, save_path=tmp_path / "c.npz", **FIT)
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "c.npz").st_mode & 0o777) == 0o640
    assert Trainer.load(tmp_path / "c.npz").steps_done == 2
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    c = corpus()
    path = tmp_path / "ck.npz"
    tr = Trainer(rt.LSTM(V, 8, V), rt.Adam(0.01), seed=0)
    tr.fit(c, steps=3, save_every=1, save_path=path, **FIT)
    assert Trainer.load(path).steps_done == 3
    tr.optimizer.lr = 1e6                    # now every step throws the weights far away
    with pytest.raises(rt.DivergenceError, match="diverged at step (5|6)") as e:
        tr.fit(c, steps=10, save_every=1, save_path=path, **FIT)
    assert e.value.step in (5, 6) and "learning rate" in str(e.value)
    good = Trainer.load(path)
    assert good.steps_done == e.value.step - 2    # the weights that made the bad loss: not saved
    x, y = next(text_windows(c.train, 3, 12))
    assert good.model.loss(good.theta, x, y) < 2 * np.log(V)


class NaNAt:
    """A model whose loss becomes NaN from a given call on (as an overflowing model's would)."""

    def __init__(self, model, at):
        self.model, self.at, self.calls = model, at, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def loss_and_grad(self, theta, x, y, **kw):
        self.calls += 1
        loss, grad, stats = self.model.loss_and_grad(theta, x, y, **kw)
        return (np.nan if self.calls >= self.at else loss), grad, stats


def test_non_finite_loss_is_a_divergence():
    tr = Trainer(NaNAt(rt.RNN(V, 4, V), at=3), rt.Adam(0.01), seed=0)
    with pytest.raises(rt.DivergenceError, match="diverged at step 3: the training loss is nan"):
        tr.fit(corpus(), steps=5, **FIT)
    assert tr.steps_done == 2 and len(tr.history.loss) == 2
    assert issubclass(rt.DivergenceError, FloatingPointError)


def test_keyboard_interrupt_saves_the_last_completed_step(tmp_path):
    tr, _ = make("revlstm-exactsgd-carry")

    def interrupt(trainer, rec):
        if rec["step"] == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        tr.fit(corpus(), steps=N, callbacks=interrupt, save_path=tmp_path / "i.npz", **FIT)
    back = Trainer.load(tmp_path / "i.npz")
    assert back.steps_done == 4
    back.fit(corpus(), steps=N - 4, **FIT)
    assert_same_run(back, reference("revlstm-exactsgd-carry"))


def test_kill_9_then_resume_from_the_last_checkpoint(tmp_path):
    """A real SIGKILL mid-run (from inside a callback, so the moment is known)."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import test_resume as T
        tr, carry = T.make("revlstm-exactsgd-carry")
        def die(trainer, rec):
            if rec["step"] == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        tr.fit(T.corpus(), steps=T.N, carry_state=carry, callbacks=die, save_every=2,
               save_path={str(tmp_path / "k.npz")!r}, **T.FIT)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    back = Trainer.load(tmp_path / "k.npz")
    assert back.steps_done == 4                   # written when step 5's loss passed
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
    back.fit(corpus(), steps=N - back.steps_done, **FIT)
    assert_same_run(back, reference("revlstm-exactsgd-carry"))


def test_generate_follows_the_trained_state_mode_and_greedy(tmp_path):
    tr, _ = make("revgru-adam-reset")
    tr.fit(corpus(), steps=2, carry_state=False, **FIT)
    tr.save(tmp_path / "m.npz")
    back = Trainer.load(tmp_path / "m.npz")
    assert back.fit_options["carry_state"] is False
    s = back.generate(30, prime="the ", seed=1)
    assert s == back.generate(30, prime="the ", seed=1, carry_state=False)
    g1 = back.generate(20, prime="the ", temperature=0, seed=1)
    assert g1 == back.generate(20, prime="the ", temperature=0, seed=2)   # greedy: no sampling
    x = back.vocab.encode("the ")[:, None]
    p = back.model.predict(back.theta, x)[-1, 0, :back.vocab.size]
    assert g1[0] == back.vocab.chars[int(np.argmax(p))]
    with pytest.raises(ValueError, match=r"temperature must be in \[0.0, inf\), got -1"):
        back.generate(3, temperature=-1)


def test_evaluate_has_no_vocabulary_side_effect():
    tr = Trainer(rt.RNN(40, 4, 40), rt.Adam(0.01), seed=0)
    tr.evaluate("abcabcabcabc" * 5, batch_size=2, seq_len=5)
    assert tr.vocab is None
    tr.fit(corpus(), steps=1, **FIT)
    with pytest.raises(ValueError, match="not in the model's vocabulary: 'Z'"):
        tr.evaluate("the Zoo", batch_size=1, seq_len=3)
    v2 = CharVocab("xyz")
    with pytest.raises(ValueError, match="different character vocabulary.*pass the text"):
        tr.evaluate(TextCorpus(v2.encode("xyzxyz"), v2.encode("xyzxyz"), v2, "o"))


def test_json_log_and_progress_lines(tmp_path, capsys):
    tr, _ = make("rnn-adam-carry")
    tr.fit(corpus(), steps=6, log=tmp_path / "l.jsonl", print_every=2,
           **dict(FIT, quiet=False))
    lines = [json.loads(s) for s in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6] and all("val_bpc" in r for r in lines)
    out = capsys.readouterr().out.splitlines()
    assert [s.split()[2] for s in out] == ["2", "4", "6"] and "loss" in out[0]
    tr.fit(corpus(), steps=2, quiet=True)
    assert capsys.readouterr().out == ""


class Overflowing(NaNAt):
    """A model whose forward pass overflows at a given call, as the model base reports it."""

    def loss_and_grad(self, theta, x, y, **kw):
        self.calls += 1
        if self.calls >= self.at:
            raise rt.DivergenceError("the loss is inf: the forward pass overflowed",
                                     hint="try a smaller init scale or learning rate")
        return self.model.loss_and_grad(theta, x, y, **kw)


def test_a_model_overflow_keeps_its_reason_and_takes_the_trainer_hint():
    tr = Trainer(Overflowing(rt.RNN(V, 4, V), at=2), rt.Adam(0.01), seed=0)
    with pytest.raises(rt.DivergenceError) as e:
        tr.fit(corpus(), steps=3, **FIT)
    assert e.value.reason == ("training diverged at step 2: the loss is inf: the forward "
                              "pass overflowed")
    assert "init scale" not in e.value.reason and e.value.hint == "try a smaller learning rate "\
        "or grad_clip"


def spy(model):
    """Record the keyword arguments of ``model``'s ``loss_and_grad`` calls (a list)."""
    calls, real = [], model.loss_and_grad

    def loss_and_grad(theta, x, y, **kw):
        calls.append(kw)
        return real(theta, x, y, **kw)
    model.loss_and_grad = loss_and_grad
    return calls


def test_dropout_masks_are_fresh_every_step_and_follow_the_seed(tmp_path):
    tr = Trainer(rt.RevLSTM(V, 8, V, n_layers=2, embed_dim=5, dropout=0.25), rt.Adam(0.02),
                 bptt="reversible", seed=3)
    calls = spy(tr.model)
    tr.fit(corpus(), steps=2, **FIT)
    tr.save(tmp_path / "d.npz")
    back = Trainer.load(tmp_path / "d.npz")            # the rebuilt stack keeps its options
    assert (back.model.n_layers, back.model.embed_dim, back.model.dropout) == (2, 5, 0.25)
    more = spy(back.model)
    back.fit(corpus(), steps=2, **FIT)
    seeds = [kw["dropout_seed"] for kw in calls + more]
    assert seeds == [step_dropout_seed(3, s) for s in (1, 2, 3, 4)]   # steps 3, 4: resumed
    assert all(type(s) is int for s in seeds) and len(set(seeds)) == 4
    masks = [back.model.dropout_masks(s, 3) for s in seeds[:2]]
    assert not np.array_equal(masks[0].top, masks[1].top)            # different masks
    assert step_dropout_seed(4, 1) not in seeds                      # another run seed: others
    # dropout changes training; validation runs without it (the model's plain loss)
    plain = Trainer(rt.RevLSTM(V, 8, V, n_layers=2, embed_dim=5), rt.Adam(0.02),
                    bptt="reversible", seed=3)
    plain.fit(corpus(), steps=4, **FIT)
    assert plain.theta.tobytes() != back.theta.tobytes()
    assert back.history.val_loss[-1] == back.evaluate(corpus(), batch_size=3, seq_len=12)["loss"]
    # a model without dropout is not given a dropout_seed (user models need not take it)
    rnn = Trainer(rt.RNN(V, 4, V), rt.Adam(0.02), seed=3)
    calls = spy(rnn.model)
    rnn.fit(corpus(), steps=2, **FIT)
    assert len(calls) == 2 and all("dropout_seed" not in kw for kw in calls)
