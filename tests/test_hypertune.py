"""``revtrain hypertune`` (output checked first, divergence handling) and the schedule file."""
import json
import os

import numpy as np
import pytest

import revtrain as rt
import revtrain.commands.hypertune as hypertune
from cli_run import run
from revtrain.schedule import load_lr_schedule, save_lr_schedule

TINY = ["hypertune", "--iters", "3", "--hidden", "3", "--seq-len", "4", "--batch-size", "2"]


# ---------------------------------------------------------------- the command
@pytest.fixture
def no_work(monkeypatch):
    """Records any call that would start the work (loading data, training)."""
    calls = []
    monkeypatch.setattr(hypertune, "_problem", lambda a: calls.append("data") or 1 / 0)
    monkeypatch.setattr(rt, "hypergradient", lambda *a, **k: calls.append("train") or 1 / 0)
    return calls


def test_bad_out_is_refused_before_any_work(tmp_path, no_work, capsys):
    (tmp_path / "plain").write_text("x")
    for out, needle in (("/nonexistent/x.txt", "does not exist"),
                        (str(tmp_path), "is a folder"),
                        (str(tmp_path / "plain" / "lr.txt"), "is a file, not a folder")):
        code, stdout, err = run(TINY + ["--meta-iters", "2", "--out", out], capsys)
        assert code == 2, err
        assert err.startswith("revtrain hypertune: error: --out") and needle in err
        assert err.count("\n") == 1 and stdout == ""
    assert no_work == []


def test_divergence_at_the_starting_lr_exits_3(tmp_path, text_file, capsys):
    sched = tmp_path / "lr.txt"
    code, out, err = run(TINY + ["--meta-iters", "2", "--lr", "1e9", "--data", str(text_file),
                                 "--out", str(sched)], capsys)
    assert code == 3, err
    assert err.count("\n") == 1
    assert err.startswith("revtrain hypertune: error: meta-iteration 0, at the constant --lr 1e+09")
    assert "training diverged at iteration" in err
    assert err.endswith("no schedule was learned (use a smaller --lr)\n")
    assert "meta-iteration   0: validation loss" not in out
    assert not sched.exists()


def test_blow_up_later_keeps_the_best_schedule_before_it(tmp_path, text_file, capsys):
    # a meta step of 30 in log lr: the next run leaves the optimiser's fixed-point range
    sched = tmp_path / "lr.txt"
    code, out, err = run(TINY + ["--meta-iters", "4", "--meta-lr", "30", "--data",
                                 str(text_file), "--out", str(sched)], capsys)
    assert code == 0, err
    assert err.count("\n") == 1
    assert err.startswith("revtrain hypertune: warning: meta-iteration 1 diverged (")
    assert "fixed-point range" in err and "--meta-lr" in err
    assert "frac_bits" not in err and "learning rate" not in err   # options the CLI lacks
    assert "meta-iteration   0: validation loss" in out and "meta-iteration   1" not in out
    lr, meta = load_lr_schedule(sched)
    assert np.array_equal(lr, np.ones(3))                           # --lr 1, meta-iteration 0
    assert meta["meta_iteration"] == 0 and meta["stopped_early"] is True


def test_divergence_error_mid_search_keeps_the_best_so_far(tmp_path, text_file, monkeypatch,
                                                           capsys):
    real = rt.hypergradient
    seen = []

    def diverge_on_third(*args, **kwargs):
        seen.append(args[1].get_config()["lr"])
        if len(seen) == 3:
            raise rt.DivergenceError("training diverged at iteration t=1 (step 2 of 3): the "
                                     "training loss is inf", step=2, loss=np.inf,
                                     hint="try a smaller learning rate")
        return real(*args, **kwargs)

    monkeypatch.setattr(rt, "hypergradient", diverge_on_third)
    sched = tmp_path / "lr.txt"
    code, out, err = run(TINY + ["--meta-iters", "5", "--data", str(text_file),
                                 "--out", str(sched)], capsys)
    assert code == 0, err
    assert len(seen) == 3
    assert err == ("revtrain hypertune: warning: meta-iteration 2 diverged (training diverged "
                   "at iteration t=1 (step 2 of 3): the training loss is inf); stopped the "
                   "search and kept the best schedule found before it (meta-iteration 1, "
                   "validation loss " + err.split("validation loss ")[1].split(")")[0] +
                   "); a smaller --meta-lr (or --lr) avoids this\n")
    lr, meta = load_lr_schedule(sched)
    assert meta["meta_iteration"] == 1                    # it improved on meta-iteration 0
    assert np.array_equal(lr, seen[1]) and not np.array_equal(lr, seen[0])
    assert f"validation loss {meta['val_loss']:.4f}" in err


@pytest.mark.parametrize("exc,want", [
    (rt.DivergenceError("training diverged at iteration t=3", hint="try a smaller learning rate"),
     "training diverged at iteration t=3"),
    (rt.FixedPointError("step: the weights or velocity would leave the fixed-point range at "
                        "parameter 4 (iteration 2); nothing was changed. Use a smaller learning "
                        "rate or fewer (velocity_)frac_bits"),
     "the weights or velocity would leave the fixed-point range at parameter 4 (iteration 2)"),
    (rt.FixedPointError("RevLSTM: the state left the range at step 3 (|value| must stay < 2**30 "
                        "= 1.07e+09 with frac_bits=32); use fewer frac_bits or shorter sequences"),
     "RevLSTM: the state left the range at step 3 (|value| must stay < 2**30 = 1.07e+09 with "
     "frac_bits=32)"),
    (FloatingPointError("the loss overflowed (try a smaller init scale or learning rate)"),
     "the loss overflowed"),
])
def test_library_advice_is_dropped_from_reasons(exc, want):
    assert hypertune._reason(exc) == want


def test_schedule_file_has_the_header_and_loads_with_numpy(tmp_path, text_file, capsys):
    sched = tmp_path / "lr.txt"
    code, out, err = run(TINY + ["--meta-iters", "1", "--momentum", "0.8", "--data",
                                 str(text_file), "--out", str(sched)], capsys)
    assert code == 0 and err == ""
    lr, meta = load_lr_schedule(sched)
    assert lr.shape == (3,) and np.array_equal(np.loadtxt(sched), lr)
    assert meta["momentum"] == 0.8 and meta["iterations"] == 3 and meta["model"] == "rnn"
    assert meta["hidden"] == 3 and meta["stopped_early"] is False
    assert meta["micro_batches"] is None                 # whole batches (no --micro-batches)
    assert f"best validation loss {meta['val_loss']:.4f}" in out


def test_ctrl_c_keeps_the_best_schedule_so_far(tmp_path, text_file, capsys, monkeypatch):
    """Ctrl-C in meta-iteration 2: exit 130, the best schedule of meta-iterations 0-1 is
    written (stopped early), and the message says where; before any finished
    meta-iteration nothing is written."""
    real, calls = hypertune._evaluate, []

    def evaluate(*args, **kw):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(hypertune, "_evaluate", evaluate)
    sched = tmp_path / "lr.txt"
    stop_at = 3
    code, out, err = run(TINY + ["--meta-iters", "4", "--data", str(text_file), "--out",
                                 str(sched)], capsys)
    assert code == 130
    lr, meta = load_lr_schedule(sched)
    assert meta["stopped_early"] is True and meta["meta_iteration"] in (0, 1)
    assert err == (f"revtrain hypertune: interrupted in meta-iteration 2: the best schedule so "
                   f"far (meta-iteration {meta['meta_iteration']}, validation loss "
                   f"{meta['val_loss']:.4f}) is in {sched}\n")
    calls.clear()
    stop_at = 1
    os.remove(sched)
    code, out, err = run(TINY + ["--meta-iters", "4", "--data", str(text_file), "--out",
                                 str(sched)], capsys)
    assert code == 130 and not sched.exists()
    assert err == "revtrain hypertune: interrupted in meta-iteration 0: nothing saved\n"


# ---------------------------------------------------------------- the schedule file
def test_schedule_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    lr = np.exp(rng.uniform(-30, 10, 50))
    p = tmp_path / "s.txt"
    save_lr_schedule(p, lr, 0.9, model="lstm", hidden=np.int64(7), val_loss=np.float32(1.5),
                     data=None)
    got, meta = load_lr_schedule(p)
    assert got.dtype == np.float64 and np.array_equal(got, lr)
    assert np.array_equal(np.loadtxt(p), lr)
    assert meta == {"format": "revtrain-lr-schedule", "version": 1, "momentum": 0.9,
                    "iterations": 50, "model": "lstm", "hidden": 7, "val_loss": 1.5,
                    "data": None}
    first = p.read_text().splitlines()[0]
    assert first.startswith("# ") and json.loads(first[2:]) == meta
    # per-iteration momentum; overwriting an existing file
    mom = rng.uniform(0.5, 0.99, 50)
    save_lr_schedule(str(p), lr[::-1], mom)
    got, meta = load_lr_schedule(str(p))
    assert np.array_equal(got, lr[::-1]) and meta["momentum"] == mom.tolist()
    assert os.listdir(tmp_path) == ["s.txt"]                        # no temp file left


def test_schedule_mode_follows_the_umask_and_a_failed_write_keeps_the_old_file(tmp_path,
                                                                               monkeypatch):
    p = tmp_path / "s.txt"
    old = os.umask(0o027)
    try:
        save_lr_schedule(p, [0.1, 0.2], 0.9)
    finally:
        os.umask(old)
    assert os.stat(p).st_mode & 0o777 == 0o640
    before = p.read_bytes()

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        save_lr_schedule(p, [0.3], 0.9)
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["s.txt"]


def test_plain_files_without_header_load(tmp_path):
    p = tmp_path / "plain.txt"
    p.write_text("0.5\n\n  0.25  \n# a comment\n1e-3 # inline\n")
    lr, meta = load_lr_schedule(p)
    assert np.array_equal(lr, [0.5, 0.25, 1e-3]) and meta == {}
    # what earlier versions of hypertune wrote (np.savetxt with a text header)
    np.savetxt(p, np.array([[0.1], [0.2]]), header="learning rate per iteration", fmt="%.8g")
    lr, meta = load_lr_schedule(p)
    assert np.array_equal(lr, [0.1, 0.2]) and meta == {}
    # only line 1 can be the header; a header without the known fields is accepted as is
    p.write_text('# {"a": 1}\n# {"b": 2}\n0.3\n')
    lr, meta = load_lr_schedule(p)
    assert np.array_equal(lr, [0.3]) and meta == {"a": 1}


HEADER = '# {"format": "revtrain-lr-schedule", "version": 1, "momentum": 0.9, "iterations": 2}\n'


@pytest.mark.parametrize("name,content,match", [
    ("missing", None, "does not exist"),
    ("empty", "", r"holds no rates \(empty file\)"),
    ("header only", HEADER, "holds no rates"),
    ("blank", "\n  \n# nothing\n", "holds no rates"),
    ("word", "0.1\nfast\n", r"line 2: 'fast' is not a number"),
    ("two per line", "0.1 0.2\n", r"line 1: '0.1 0.2' is not a number \(expected one"),
    ("zero", "0.1\n0\n", r"line 2: learning rates must be finite and > 0, got '0'"),
    ("negative", "-0.1\n", "line 1: learning rates must be finite and > 0"),
    ("nan", "0.1\nnan\n", "line 2: learning rates must be finite"),
    ("inf", "inf\n", "line 1: learning rates must be finite"),
    ("bad json", "# {momentum: 0.9}\n0.1\n", "line 1: the header is not valid JSON"),
    ("unclosed", '# {"momentum": 0.9\n0.1\n', "line 1: the header is not valid JSON"),
    ("other format", '# {"format": "model"}\n0.1\n', "is not a learning-rate schedule"),
    ("newer", '# {"version": 99}\n0.1\n', "version 99"),
    ("truncated", HEADER + "0.1\n", r"says 2 iterations but the file holds 1 rates"),
    ("momentum", '# {"momentum": 1.5}\n0.1\n', r"momentum must be a number in \(0, 1\)"),
    ("momentum list", '# {"momentum": [0.9, 0.9]}\n0.1\n', "a list of 1 such numbers"),
])
def test_bad_schedule_files_raise_clear_value_errors(tmp_path, name, content, match):
    p = tmp_path / "s.txt"
    if content is not None:
        p.write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        load_lr_schedule(p)
    assert str(p) in str(e.value)


def test_folder_and_non_utf8_schedule_files(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        load_lr_schedule(tmp_path)
    p = tmp_path / "bin.txt"
    p.write_bytes(b"\xff\xfe0.1\n")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_lr_schedule(p)


@pytest.mark.parametrize("lr,momentum,info,match", [
    ([0.1, 0.0], 0.9, {}, "finite and > 0, got 0.0 at iteration 1"),
    ([0.1, np.nan], 0.9, {}, "finite and > 0, got nan"),
    ([-1.0], 0.9, {}, "finite and > 0"),
    ([], 0.9, {}, "non-empty 1-D"),
    (np.ones((2, 2)), 0.9, {}, "non-empty 1-D"),
    (["fast"], 0.9, {}, "array of numbers"),
    ([0.1], 1.0, {}, r"momentum must be a number in \(0, 1\)"),
    ([0.1], "0.9", {}, "momentum must be"),
    ([0.1, 0.2], [0.9], {}, "a list of 2 such numbers"),
    ([0.1], True, {}, "momentum must be"),
    ([0.1], 0.9, {"iterations": 5}, "sets iterations itself"),
    ([0.1], 0.9, {"val_loss": float("nan")}, "no NaN or inf"),
    ([0.1], 0.9, {"model": object()}, "must be JSON values"),
])
def test_save_rejects_bad_input_and_writes_nothing(tmp_path, lr, momentum, info, match):
    p = tmp_path / "s.txt"
    with pytest.raises(ValueError, match=match):
        save_lr_schedule(p, lr, momentum, **info)
    assert os.listdir(tmp_path) == []


def test_two_layer_hypertune_with_embedding_and_dropout(tmp_path, text_file, capsys):
    sched = tmp_path / "lr.txt"
    code, out, err = run(TINY + ["--model", "revlstm", "--hidden", "4", "--layers", "2",
                                 "--embed", "3", "--dropout", "0.2", "--meta-iters", "1",
                                 "--data", str(text_file), "--out", str(sched)], capsys)
    assert code == 0, err
    assert "RevLSTM(hidden=4, 2 layers, embed 3, dropout 0.2)" in out
    assert "meta-iteration   1: validation loss" in out
    lr, meta = load_lr_schedule(sched)
    assert lr.shape == (3,) and (meta["layers"], meta["embed"], meta["dropout"]) == (2, 3, 0.2)
    code, _, err = run(TINY + ["--layers", "0"], capsys)
    assert code == 2 and "--layers: must be a positive int" in err
