"""revtrain train as a user runs it: checkpoints, kill -9 and Ctrl-C, resume, divergence,
outputs checked before work, evaluate, schedules, progress lines and logs."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import revtrain as rt
from cli_run import run
from revtrain.schedule import save_lr_schedule
from revtrain.trainer import Trainer

TINY = ["--model", "rnn", "--hidden", "8", "--seq-len", "10", "--batch-size", "2"]


def cli(*args):
    return [sys.executable, "-m", "revtrain.cli", *map(str, args)]


def same_file_bits(a, b):
    ta, tb = Trainer.load(a), Trainer.load(b)
    assert ta.steps_done == tb.steps_done
    assert ta.theta.tobytes() == tb.theta.tobytes()
    for x, y in zip(ta.opt_state, tb.opt_state):
        assert np.array_equal(x, y)
    assert ta.history.loss == tb.history.loss


def _stop_when(proc, step, sig):
    """Read progress lines until ``step`` is reported, then send ``sig``; the lines read."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        parts = line.split()
        if len(parts) > 2 and parts[1] == "step" and int(parts[2]) >= step:
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=300)
    return "".join(lines) + out, err


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_to_the_same_bits(tmp_path, text_file, sig):
    steps = 1500
    ref, ck = tmp_path / "ref.npz", tmp_path / "ck.npz"
    args = [*TINY, "--data", text_file, "--steps", steps, "--save-every", 25, "--print-every", 5]
    r = subprocess.run(cli("train", *args, "--out", ref), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    p = subprocess.Popen(cli("train", *args, "--out", ck), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    # step 110: between two saves (every 25 steps), so a SIGKILL seldom lands in one
    out, err = _stop_when(p, 110, sig)
    if sig == signal.SIGKILL:
        assert p.returncode == -signal.SIGKILL
    else:
        assert p.returncode == 130, err
        n = Trainer.load(ck).steps_done
        assert f"interrupted after step {n}: saved step {n} to {ck}" in err
        assert f"revtrain train --resume {ck} --steps {steps}" in err
    done = Trainer.load(ck).steps_done
    assert 0 < done < steps
    left = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    if sig == signal.SIGKILL:
        # a save killed midway leaves at most its temporary file, beside a whole checkpoint
        assert len(left) <= 1 and all(f.startswith(".revtrain-") for f in left)
    else:
        assert left == []                   # an interrupted run ends its saves cleanly
    r = subprocess.run(cli("train", "--resume", ck, "--steps", steps, "--quiet"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    same_file_bits(ck, ref)


def test_resume_refuses_contradicting_options(tmp_path, text_file, capsys):
    out = tmp_path / "m.npz"
    code, _, err = run(["train", *TINY, "--data", str(text_file), "--steps", "3", "--out",
                        str(out), "--quiet"], capsys)
    assert code == 0, err
    for extra, needle in ((["--hidden", "9"], "--hidden 9 contradicts"),
                          (["--optimizer", "sgd"], "--optimizer sgd contradicts"),
                          (["--steps", "2"], "already at step 3")):
        code, _, err = run(["train", "--resume", str(out), *extra], capsys)
        assert code == 2 and needle in err and err.count("\n") == 1
    # the same value again is not a contradiction
    code, _, err = run(["train", "--resume", str(out), "--hidden", "8", "--steps", "5",
                        "--quiet"], capsys)
    assert code == 0, err
    assert Trainer.load(out).steps_done == 5


def test_divergence_exits_3_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "m.npz"
    code, _, err = run(["train", "--model", "lstm", "--hidden", "16", "--lr", "1e6",
                        "--steps", "40", "--out", str(out), "--quiet"], capsys)
    assert code == 3
    assert "training diverged at step" in err and "--lr" in err and "frac_bits" not in err
    assert "Nothing was saved" in err and not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["--out", "/proc/m.npz"], "--out: cannot save to '/proc/m.npz'"),
    (["--out", "LICENSE/m.npz"], "is a file, not a folder"),
    (["--log", "/nonexistent/l.jsonl"], "--log: cannot save to '/nonexistent/l.jsonl'"),
    (["--save-every", "5", "--out", ""], "--save-every needs a file"),
    (["--lr-schedule", "/no/such.txt"], "--lr-schedule"),
])
def test_outputs_are_checked_before_any_work(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))     # LICENSE is a file here
    code, out, err = run(["train", *TINY, "--steps", "100000", *argv], capsys)
    assert code == 2 and needle in err and ".revtrain-" not in err and "step" not in out


def test_evaluate_and_version(tmp_path, text_file, capsys):
    out = tmp_path / "m.npz"
    code, _, err = run(["train", *TINY, "--data", str(text_file), "--steps", "3",
                        "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    code, o, err = run(["evaluate", "--model-file", str(out)], capsys)
    assert code == 0 and "bits/char" in o and "validation part of" in o
    held = tmp_path / "held.txt"
    held.write_text("the small model. " * 5, encoding="utf-8")
    code, o, err = run(["evaluate", "--model-file", str(out), "--data", str(held)], capsys)
    bpc = float(o.split()[0])
    tr = Trainer.load(out)
    assert code == 0 and bpc == pytest.approx(tr.evaluate(held.read_text(), batch_size=2,
                                                           seq_len=10)["bpc"], abs=1e-4)
    held.write_text("Zebras!", encoding="utf-8")
    code, _, err = run(["evaluate", "--model-file", str(out), "--data", str(held)], capsys)
    assert code == 2 and "not in the model's vocabulary" in err and "'!Zb'" in err
    r = subprocess.run(cli("--version"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"revtrain {rt.__version__}"


def test_lr_schedule_log_and_progress_lines(tmp_path, text_file, capsys):
    sched = tmp_path / "lr.txt"
    save_lr_schedule(sched, np.linspace(0.5, 1.0, 6), 0.8, model="rnn")
    log = tmp_path / "l.jsonl"
    code, out, err = run(["train", *TINY, "--data", str(text_file), "--steps", "5",
                          "--lr-schedule", str(sched), "--out", str(tmp_path / "m.npz"),
                          "--log", str(log), "--print-every", "2"], capsys)
    assert code == 0, err
    assert "sgd lr schedule" in out and "note:" not in err    # learned for this model
    assert [ln.split()[2] for ln in out.splitlines() if ln.startswith("RNN step")] == \
        ["2", "4", "5"]
    recs = [json.loads(s) for s in log.read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5] and "val_bpc" in recs[0]
    tr = Trainer.load(tmp_path / "m.npz")
    assert type(tr.optimizer).__name__ == "ExactSGD"
    lr, mom, _ = tr.optimizer.hyperparameters(4)
    assert lr[0] == np.linspace(0.5, 1.0, 6)[4] and mom[0] == round(0.8 * 2**16) / 2**16
    code, _, err = run(["train", *TINY, "--data", str(text_file), "--steps", "7",
                        "--lr-schedule", str(sched), "--out", ""], capsys)
    assert code == 2 and "6 rates, fewer than --steps 7" in err
    code, _, err = run(["train", *TINY, "--steps", "2", "--lr-schedule", str(sched),
                        "--optimizer", "adam"], capsys)
    assert code == 2 and "does not go with --optimizer adam" in err


def test_lr_schedule_of_another_model_is_noted(tmp_path, text_file, capsys):
    sched = tmp_path / "lr.txt"
    save_lr_schedule(sched, np.full(4, 0.5), 0.9, model="rnn", hidden=16, layers=2, embed=4)
    code, out, err = run(["train", *TINY, "--data", str(text_file), "--steps", "2",
                          "--lr-schedule", str(sched), "--out", "", "--quiet"], capsys)
    assert code == 0, err
    assert ("note: --lr-schedule" in err and "hidden 16 (training: 8)" in err
            and "layers 2 (training: 1)" in err and "embed 4 (training: None)" in err
            and "model" not in err.split("model:")[1]), err


def test_sample_greedy_and_reset_state(tmp_path, text_file, capsys):
    out = tmp_path / "m.npz"
    code, _, err = run(["train", *TINY, "--data", str(text_file), "--steps", "3", "--state",
                        "reset", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    outs = []
    for seed in ("1", "2"):
        code, o, err = run(["sample", "--model-file", str(out), "--temperature", "0",
                            "--length", "20", "--seed", seed], capsys)
        assert code == 0, err
        outs.append(o)
    assert outs[0] == outs[1]
    tr = Trainer.load(out)
    assert tr.fit_options["carry_state"] is False
    text = "\n" + tr.generate(20, prime="\n", temperature=0, carry_state=False)
    assert outs[0] == text + ("" if text.endswith("\n") else "\n")


def test_ctrl_c_in_the_final_validation_still_saves(tmp_path, text_file, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "evaluate", interrupted)
    out = tmp_path / "m.npz"
    code, _, err = run(["train", *TINY, "--data", str(text_file), "--steps", "3", "--out",
                        str(out), "--quiet"], capsys)
    assert code == 130 and f"interrupted after step 3: saved step 3 to {out}" in err
    assert Trainer.load(out).steps_done == 3


def test_resume_checks_the_schedule_and_the_text(tmp_path, text_file, capsys):
    sched = tmp_path / "lr.txt"
    save_lr_schedule(sched, np.full(4, 0.5), 0.9)
    out = tmp_path / "m.npz"
    code, _, err = run(["train", *TINY, "--data", str(text_file), "--steps", "2",
                        "--lr-schedule", str(sched), "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    code, _, err = run(["train", "--resume", str(out), "--steps", "6"], capsys)
    assert code == 2 and "beyond the run's learning-rate schedule of 4 rates" in err
    moved = tmp_path / "moved.txt"                       # the same text elsewhere: fine
    moved.write_bytes(text_file.read_bytes())
    code, _, err = run(["train", "--resume", str(out), "--data", str(moved), "--steps", "3",
                        "--quiet"], capsys)
    assert code == 0, err
    text_file.write_text(text_file.read_text().replace("small", "smell"), encoding="utf-8")
    code, _, err = run(["train", "--resume", str(out), "--data", str(text_file), "--steps",
                        "4"], capsys)
    assert code == 2 and "is not the text the run" in err and "it changed" in err


def test_outputs_must_not_overwrite_inputs_and_old_files_are_not_claimed(tmp_path, text_file,
                                                                         capsys):
    code, _, err = run(["train", *TINY, "--data", str(text_file), "--out", str(text_file)],
                       capsys)
    assert code == 2 and "--out and --data name the same file" in err
    old = tmp_path / "old.npz"
    code, _, err = run(["train", *TINY, "--data", str(text_file), "--steps", "2", "--out",
                        str(old), "--quiet"], capsys)
    assert code == 0
    code, _, err = run(["train", "--model", "lstm", "--hidden", "16", "--lr", "1e6", "--steps",
                        "40", "--save-every", "10", "--out", str(old), "--quiet"], capsys)
    assert code == 3 and "Nothing was saved" in err and "checkpoint" not in err
    assert Trainer.load(old).steps_done == 2


def test_profile_output_folder_is_checked_first(tmp_path, capsys):
    f = tmp_path / "file.bak"
    f.write_text("x")
    for bad, needle in (("/proc/x", "cannot write into '/proc/x'"),
                        (str(f), "is a file, not a folder")):
        code, out, err = run(["profile", "--lengths", "4", "--models", "RNN", "--out", bad],
                             capsys)
        assert code == 2 and needle in err and out == ""


def test_evaluate_a_model_saved_from_python_needs_data(tmp_path, capsys):
    tr = Trainer(rt.RNN(20, 4, 20), rt.Adam(0.01), seed=0)
    tr.fit("abcdefghij" * 20, steps=1, batch_size=2, seq_len=5, quiet=True)
    tr.save(tmp_path / "py.npz")
    code, _, err = run(["evaluate", "--model-file", str(tmp_path / "py.npz")], capsys)
    assert code == 2 and "does not say what text it was trained on" in err and "None" not in err


DEEP = ["--model", "revlstm", "--hidden", "8", "--layers", "2", "--embed", "4", "--dropout",
        "0.2", "--seq-len", "10", "--batch-size", "2"]


def test_layers_embed_dropout_are_saved_resumed_and_rebuilt(tmp_path, text_file, capsys):
    ref, out = tmp_path / "ref.npz", tmp_path / "m.npz"
    code, o, err = run(["train", *DEEP, "--data", str(text_file), "--steps", "5", "--out",
                        str(ref), "--quiet"], capsys)
    assert code == 0, err
    assert "summary (RevLSTM, hidden 8, 2 layers, embed 4, dropout 0.2, float32, reversible" in o
    tr = Trainer.load(ref)
    assert (tr.model.n_layers, tr.model.embed_dim, tr.model.dropout) == (2, 4, 0.2)
    cli_opts = tr.metadata["cli"]
    assert (cli_opts["layers"], cli_opts["embed"], cli_opts["dropout"]) == (2, 4, 0.2)
    code, o, err = run(["train", *DEEP, "--data", str(text_file), "--steps", "2", "--out",
                        str(out), "--print-every", "5"], capsys)
    assert code == 0, err
    assert "RevLSTM(hidden=8, 2 layers, embed 4, dropout 0.2, float32) with reversible BPTT" in o
    for extra, needle in ((["--layers", "1"], "--layers 1 contradicts the run"),
                          (["--embed", "5"], "--embed 5 contradicts the run"),
                          (["--dropout", "0"], "--dropout 0.0 contradicts the run")):
        code, _, err = run(["train", "--resume", str(out), "--steps", "5", *extra], capsys)
        assert code == 2 and needle in err and err.count("\n") == 1, err
    code, _, err = run(["train", "--resume", str(out), "--steps", "5", "--layers", "2",
                        "--quiet"], capsys)
    assert code == 0, err
    same_file_bits(out, ref)                         # 2 + 3 resumed steps == 5 steps
    code, o, err = run(["evaluate", "--model-file", str(out)], capsys)
    assert code == 0 and "bits/char" in o and "RevLSTM (2 layers, embed 4, dropout 0.2) after 5 steps" in o, err
    assert float(o.split()[0]) == pytest.approx(Trainer.load(out).evaluate(
        rt.char_corpus(text_file).val, batch_size=2, seq_len=10)["bpc"], abs=1e-4)
    code, o, err = run(["sample", "--model-file", str(out), "--length", "20", "--prime", "a "],
                       capsys)
    assert code == 0 and o.startswith("a ") and len(o) >= 22, err


def test_a_file_from_before_the_stack_options_resumes(tmp_path, text_file, capsys):
    out = tmp_path / "old.npz"
    code, _, err = run(["train", *TINY, "--data", str(text_file), "--steps", "2", "--out",
                        str(out), "--quiet"], capsys)
    assert code == 0, err
    tr = Trainer.load(out)
    for k in ("layers", "embed", "dropout"):
        del tr.metadata["cli"][k]
    tr.save(out)
    code, _, err = run(["train", "--resume", str(out), "--steps", "3", "--quiet"], capsys)
    assert code == 0, err
    code, _, err = run(["train", "--resume", str(out), "--steps", "4", "--layers", "2"], capsys)
    assert code == 2 and "--layers 2 contradicts the run" in err and "(--layers 1)" in err


@pytest.mark.parametrize("argv, needle", [
    (["--layers", "0"], "argument --layers: must be a positive int, got '0'"),
    (["--embed", "0"], "argument --embed: must be a positive int, got '0'"),
    (["--dropout", "1"], "argument --dropout: must be a number in [0, 1), got '1'"),
    (["--dropout", "-0.1"], "argument --dropout: must be a number in [0, 1), got '-0.1'"),
    (["--dropout", "nan"], "argument --dropout: must be a number in [0, 1), got 'nan'"),
    (["--model", "revgru", "--hidden", "7", "--layers", "2"], "--hidden 7: n_hidden must be even"),
])
def test_stack_options_are_checked(argv, needle, text_file, capsys):
    code, out, err = run(["train", "--data", str(text_file), "--steps", "1", "--out", "",
                          *argv], capsys)
    assert code == 2 and needle in err and err.count("\n") == 1 and "step" not in out


def test_a_model_that_does_not_stack_refuses_the_stack_options(monkeypatch):
    from revtrain.commands import _common
    monkeypatch.setitem(_common.MODELS, "mdrnn", "MDRNN")
    with pytest.raises(_common.UsageError, match=r"^--layers 2 --dropout 0.1: MDRNN does not "
                       "stack layers"):
        _common.make_model("mdrnn", 5, 4, layers=2, dropout=0.1)
    assert _common.make_model("mdrnn", 5, 4).n_layers == 1


def test_dtype_option(tmp_path, text_file, capsys):
    """--dtype: float32 by default, saved, checked on resume; --dtype float64 on request;
    a model class without float32 (MDRNN) refuses it with a usage error naming --dtype."""
    out = tmp_path / "m.npz"
    code, o, err = run(["train", "--model", "revlstm", "--hidden", "8", "--seq-len", "10",
                        "--batch-size", "2", "--data", str(text_file), "--steps", "2",
                        "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert Trainer.load(out).model.dtype == "float32" and "float32" in o
    code, _, err = run(["train", "--resume", str(out), "--steps", "3", "--dtype", "float64",
                        "--quiet"], capsys)
    assert code == 2 and "--dtype" in err, err
    code, o, err = run(["train", *TINY, "--data", str(text_file), "--steps", "1", "--out", "",
                        "--dtype", "float64", "--quiet"], capsys)
    assert code == 0 and "float32" not in o and "float64" not in o, err
    from revtrain.commands import _common
    _common.MODELS["mdrnn"] = "MDRNN"
    try:
        with pytest.raises(_common.UsageError, match="--dtype float32: MDRNN computes in "
                                                     "float64 only so far"):
            _common.make_model("mdrnn", 5, 4, dtype="float32")
    finally:
        del _common.MODELS["mdrnn"]
