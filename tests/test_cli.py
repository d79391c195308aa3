"""The revtrain command: --help, usage errors (exit code 2, one line), a tiny train and sample."""
import subprocess
import sys

import numpy as np
import pytest

import revtrain as rt
import revtrain.model_file as model_file
from revtrain.trainer import Trainer
from cli_run import run
from revtrain.cli import build_parser

COMMANDS = ("train", "evaluate", "sample", "profile", "hypertune")


def test_help_of_every_command(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and all(c in out for c in COMMANDS)
    for c in COMMANDS:
        code, out, err = run([c, "--help"], capsys)
        assert code == 0 and out.startswith(f"usage: revtrain {c}") and err == ""


def test_help_through_the_installed_module():
    r = subprocess.run([sys.executable, "-m", "revtrain.cli", "train", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--bptt" in r.stdout and "--seq-len" in r.stdout


@pytest.mark.parametrize("argv, needle", [
    ([], "required: COMMAND"),
    (["nosuch"], "invalid choice"),
    (["train", "--steps", "-3"], "--steps: must be a positive int, got '-3'"),
    (["train", "--steps", "x"], "--steps: must be a positive int"),
    (["train", "--hidden", "0"], "--hidden: must be a positive int"),
    (["train", "--lr", "nan"], "--lr: must be a positive number"),
    (["train", "--model", "transformer"], "invalid choice: 'transformer'"),
    (["train", "--bptt", "magic"], "invalid choice: 'magic'"),
    (["train", "--model", "rnn", "--bptt", "reversible"], "not supported by RNN"),
    (["train", "--data", "/no/such/file.txt"], "does not exist"),
    (["train", "--model", "rnn", "--out", "/no/such/dir/m.npz"],
     "--out: cannot save to '/no/such/dir/m.npz': folder"),
    (["sample"], "required: --model-file"),
    (["sample", "--model-file", "/no/such.npz"], "does not exist"),
    (["sample", "--model-file", "x", "--temperature", "-1"], "--temperature"),
    (["sample", "--model-file", "x", "--prime", ""], "--prime: must not be empty"),
    (["sample", "--model-file", "."], "'.' is a folder"),
    (["train", "--model", "rnn", "--out", "."], "--out: cannot save to '.': it is a folder"),
    (["hypertune", "--model", "revlstm", "--hidden", "5"], "--hidden 5: n_hidden must be even"),
    (["profile", "--lengths"], "expected at least one argument"),
    (["profile", "--lengths", "4", "--models", "LSTM", "Foo"], "--models: unknown Foo (choose from"),
    (["hypertune", "--momentum", "1.5"], "--momentum: must be a number in (0, 1)"),
])
def test_usage_errors_exit_2_with_one_line(argv, needle, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert needle in err
    assert err.count("\n") == 1 and err.startswith("revtrain")


def test_bad_data_files(tmp_path, capsys):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "bin.txt").write_bytes(b"\x00\xff\xfe" * 10)
    for name, needle in (("empty.txt", "is empty"), ("bin.txt", "not valid UTF-8")):
        code, _, err = run(["train", "--model", "rnn", "--data", str(tmp_path / name)], capsys)
        assert code == 2 and needle in err and err.count("\n") == 1


def test_missing_model_class_is_reported(monkeypatch, capsys):
    real = model_file.find_class
    monkeypatch.setattr(model_file, "find_class",
                        lambda name: None if name == "RevLSTM" else real(name))
    code, _, err = run(["train", "--quiet"], capsys)
    assert code == 1 and "RevLSTM is not available" in err


def test_tiny_train_then_sample(tmp_path, text_file, capsys):
    out_file = tmp_path / "m.npz"
    def argv(out):
        return ["train", "--model", "rnn", "--hidden", "8", "--steps", "4", "--seq-len", "10",
                "--batch-size", "2", "--data", str(text_file), "--lr", "0.01", "--quiet",
                "--out", str(out)]
    code, out, err = run(argv(out_file), capsys)
    assert code == 0, err
    for needle in ("summary (RNN, hidden 8, float32, standard BPTT, 4 steps, seed 0)",
                   "validation", "bits/char", "memory for BPTT", "saved to"):
        assert needle in out
    tr = Trainer.load(out_file)
    assert tr.steps_done == 4 and tr.bptt == "standard"
    # same seed, same bits
    code, out2, _ = run(argv(tmp_path / "m2.npz"), capsys)
    assert code == 0
    assert np.array_equal(Trainer.load(tmp_path / "m2.npz").theta, tr.theta)

    code, out, err = run(["sample", "--model-file", str(out_file), "--length", "30",
                          "--prime", "the ", "--seed", "1"], capsys)
    assert code == 0 and out.startswith("the ") and len(out) >= 34
    code, out_again, _ = run(["sample", "--model-file", str(out_file), "--length", "30",
                              "--prime", "the ", "--seed", "1"], capsys)
    assert out_again == out
    code, _, err = run(["sample", "--model-file", str(out_file), "--prime", "QQ"], capsys)
    assert code == 2 and "not in the model's vocabulary" in err

    broken = tmp_path / "broken.npz"
    broken.write_bytes(out_file.read_bytes()[:100])
    code, _, err = run(["sample", "--model-file", str(broken)], capsys)
    assert code == 1 and "corrupt or truncated" in err and err.count("\n") == 1


def test_window_longer_than_the_text_reports_the_real_window(tmp_path, text_file, capsys):
    code, out, err = run(["train", "--model", "rnn", "--hidden", "4", "--steps", "1",
                          "--seq-len", "100000", "--batch-size", "2", "--data", str(text_file),
                          "--out", ""], capsys)
    assert code == 0, err
    corpus = rt.char_corpus(text_file)
    win = (len(corpus.train) - 1) // 2
    assert f"1 steps of {win} x 2" in out and f"held per {win}-step window" in out
    assert "100000" not in out


def test_checkpoint_mode_reports_standard_memory(tmp_path, text_file, capsys):
    code, out, err = run(["train", "--model", "rnn", "--hidden", "8", "--steps", "2",
                          "--seq-len", "16", "--batch-size", "2", "--bptt", "checkpoint",
                          "--data", str(text_file), "--out", "", "--quiet"], capsys)
    assert code == 0, err
    assert "standard BPTT     would hold" in out and "saved to" not in out


def test_parser_defaults_match_the_documented_target():
    from revtrain.commands.train import _resolve
    a = build_parser().parse_args(["train"])
    assert a.model is None and a.data is None     # None: not given (checked against --resume)
    o = _resolve(a)
    assert (o["model"], o["bptt"], o["data"], o["steps"]) == ("revlstm", "reversible", None, 300)


def test_tiny_hypertune_and_profile(tmp_path, text_file, capsys):
    sched = tmp_path / "lr.txt"
    code, out, err = run(["hypertune", "--iters", "3", "--meta-iters", "1", "--hidden", "3",
                          "--seq-len", "4", "--batch-size", "2", "--data", str(text_file),
                          "--out", str(sched)], capsys)
    assert code == 0, err
    assert "meta-iteration   1: validation loss" in out and "best validation loss" in out
    assert np.loadtxt(sched).shape == (3,)
    code, out, err = run(["profile", "--lengths", "4", "--batch-size", "2", "--hidden", "3",
                          "--vocab", "5", "--models", "RNN", "--out", str(tmp_path / "p"),
                          "--quiet"], capsys)
    assert code == 0, err
    assert "| RNN standard | 4 |" in out and (tmp_path / "p" / "bptt_memory.md").exists()


def test_state_option(tmp_path, text_file, capsys):
    base = ["train", "--model", "rnn", "--hidden", "4", "--steps", "2", "--seq-len", "8",
            "--batch-size", "2", "--data", str(text_file), "--out", ""]
    code, out, _ = run(base, capsys)
    assert code == 0 and "state carried between windows" in out
    code, out, _ = run(base + ["--state", "reset"], capsys)
    assert code == 0 and "state reset every window" in out
    code, _, err = run(base + ["--state", "maybe"], capsys)
    assert code == 2 and "--state" in err
