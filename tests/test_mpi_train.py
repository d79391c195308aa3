"""``mpiexec -n N revtrain train``: the same bits as without MPI, resume across N, faults.

A small driver script runs several ``revtrain train`` commands in one
``mpiexec`` launch (``revtrain.cli.main`` per command, exit codes to
``rc.<rank>.json``), so process start and imports are paid once. Runs without
MPI happen in this process. Skipped, with the reason, without the MPI extra.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from revtrain.cli import main
from mpi_run import mpiexec, needs_mpi, run_mpi

pytestmark = needs_mpi

TEXT = ("the quick brown fox jumps over the lazy dog; " * 10
        + "pack my box with five dozen liquor jugs. " * 10)
SMALL = ["--hidden", "16", "--batch-size", "4", "--seq-len", "8", "--val-chars", "0",
         "--print-every", "2"]
#: RevLSTM stack with dropout and Adam (2 micro-batches; the -n 2 run uses the default, 2);
#: LSTM with exact SGD, 4 micro-batches and checkpoints every 2 steps.
CFG = {"A": ["--model", "revlstm", "--layers", "2", "--embed", "8", "--dropout", "0.1"],
       "B": ["--model", "lstm", "--optimizer", "sgd", "--micro-batches", "4",
             "--save-every", "2"]}

DRIVER = textwrap.dedent('''
    import json, os, sys
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    spec = json.load(open(sys.argv[1]))
    os.chdir(spec["cwd"])
    with open(f"pid.{rank}", "w") as f:
        f.write(str(os.getpid()))
    if spec.get("inject") and rank == 1:      # an error on rank 1 alone, outside collectives
        import revtrain.train_step as ts
        orig = ts.update
        def update(opt, state, grad, clip, step, **kw):
            if step == 2:
                raise RuntimeError("injected failure")
            return orig(opt, state, grad, clip, step, **kw)
        ts.update = update
    from revtrain.cli import main
    rcs = {}
    for name, argv in spec["runs"]:
        rcs[name] = main(argv)
    with open(f"rc.{rank}.json", "w") as f:
        json.dump(rcs, f)
''')


def args(cfg, out, steps=4, extra=()):
    return ["train", "--data", "d.txt", *SMALL, *CFG[cfg], "--steps", str(steps), "--out",
            out, *extra]


def driver(tmp_path, n, runs, inject=False, timeout=120, popen=False):
    spec = tmp_path / f"spec{n}.json"
    spec.write_text(json.dumps({"cwd": str(tmp_path), "runs": runs, "inject": inject}))
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    cmd = [sys.executable, str(script), str(spec)]
    if popen:
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        return subprocess.Popen([mpiexec(), "-n", str(n), *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
    return run_mpi(n, cmd, timeout=timeout)


def rcs(tmp_path, n):
    return [json.loads((tmp_path / f"rc.{r}.json").read_text()) for r in range(n)]


def saved(path):
    """Every array and the step-determining metadata of a model file."""
    with np.load(path) as z:
        arrays = {k: np.array(z[k]) for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"][()]))
    h = meta["history"]
    keep = {k: meta[k] for k in ("steps_done", "position", "rng_state", "micro_batches")}
    keep["history"] = {k: h[k] for k in ("step", "loss", "val_loss", "stored_bytes")}
    return arrays, keep


def assert_same(a, b):
    (xa, ma), (xb, mb) = saved(a), saved(b)
    assert sorted(xa) == sorted(xb)
    for k in xa:
        assert xa[k].dtype == xb[k].dtype and np.array_equal(xa[k], xb[k]), k
    assert ma == mb


def test_same_bits_on_1_and_2_processes_and_resume_across_n(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.txt").write_text(TEXT)
    # without MPI (this process)
    assert main(args("A", "A_none.npz", extra=["--micro-batches", "2"])) == 0
    assert main(args("B", "B_none.npz")) == 0
    assert main(args("A", "A_part.npz", steps=2, extra=["--micro-batches", "2"])) == 0
    assert main(args("A", "whole.npz", steps=1)) == 0           # no micro-batches
    shutil.copy("A_part.npz", "A_part_for_n2.npz")
    capsys.readouterr()
    # -n 1 and -n 2 (the latter: the default --micro-batches, resume, errors)
    r1 = driver(tmp_path, 1, [["A", args("A", "A_n1.npz", extra=["--micro-batches", "2"])],
                              ["B", args("B", "B_n1.npz")]])
    assert r1.returncode == 0, r1.stderr
    runs2 = [["A", args("A", "A_n2.npz")],
             ["B", args("B", "B_n2.npz")],
             ["part", args("A", "A_part_n2.npz", steps=2)],
             ["resume", ["train", "--resume", "A_part_for_n2.npz", "--steps", "4",
                         "--print-every", "2"]],
             ["diverge", args("A", "div.npz", steps=6, extra=["--optimizer", "sgd", "--lr",
                                                              "1e5"])],
             ["bad_m", args("A", "x.npz", extra=["--micro-batches", "3"])],
             ["odd_m", args("A", "x.npz", extra=["--micro-batches", "1"])],
             ["whole", ["train", "--resume", "whole.npz", "--steps", "2"]],
             ["contra", ["train", "--resume", "A_part_for_n2.npz", "--steps", "5",
                         "--micro-batches", "4"]]]
    r2 = driver(tmp_path, 2, runs2)
    assert r2.returncode == 0, r2.stderr
    codes = rcs(tmp_path, 2)
    assert codes[0] == codes[1] == {"A": 0, "B": 0, "part": 0, "resume": 0, "diverge": 3,
                                    "bad_m": 2, "odd_m": 2, "whole": 2, "contra": 2}
    # rank 0 alone prints: one summary per finished run, each error once
    assert r2.stdout.count("summary (") == 4
    assert r2.stdout.count("2 micro-batches summed exactly over 2 MPI processes") == 4
    err = r2.stderr
    assert err.count("training diverged at step") == 1
    assert err.count("--micro-batches 3 must divide --batch-size 4") == 1
    assert err.count("--micro-batches 1 must be a multiple of the number of MPI processes "
                     "(2)") == 1
    assert err.count("was trained without micro-batches (the whole batch at once), which "
                     "cannot be split over 2 MPI processes; resume it without mpiexec") == 1
    assert err.count("--micro-batches 4 contradicts the run") == 1
    assert not os.path.exists(tmp_path / "div.npz")
    # resume without MPI from the -n 2 run's file
    assert main(["train", "--resume", "A_part_n2.npz", "--steps", "4", "--quiet"]) == 0
    for other in ("A_n1.npz", "A_n2.npz", "A_part_for_n2.npz", "A_part_n2.npz"):
        assert_same("A_none.npz", other)
    for other in ("B_n1.npz", "B_n2.npz"):
        assert_same("B_none.npz", other)
    assert saved("A_none.npz")[1]["micro_batches"] == 2
    assert saved("B_none.npz")[1]["micro_batches"] == 4


def test_error_on_one_rank_ends_the_job(tmp_path):
    """Rank 1 fails at step 2 of 50: the job ends (a rank left waiting in a collective would
    hang until the timeout, which raises) with rank 1's error; rank 0 never finishes its run."""
    (tmp_path / "d.txt").write_text(TEXT)
    res = driver(tmp_path, 2, [["A", args("A", "a.npz", steps=50)]], inject=True, timeout=120)
    assert res.returncode == 1
    assert "[MPI rank 1 of 2] revtrain train: error: injected failure; ending all 2 " \
           "processes" in res.stderr
    assert not (tmp_path / "rc.0.json").exists()      # rank 0 was ended, not finished


def test_killed_rank_ends_the_job(tmp_path):
    (tmp_path / "d.txt").write_text(TEXT)
    proc = driver(tmp_path, 2, [["A", args("A", "a.npz", steps=100000,
                                           extra=["--save-every", "1"])]], popen=True)
    try:
        deadline = time.time() + 60
        while not ((tmp_path / "a.npz").exists() and (tmp_path / "pid.1").exists()):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "training did not start"
            time.sleep(0.1)
        os.kill(int((tmp_path / "pid.1").read_text()), signal.SIGKILL)
        proc.communicate(timeout=60)      # the survivor ends (a hang raises TimeoutExpired)
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_argument_errors_and_version_are_printed_once(tmp_path):
    """Parsing runs on every rank, but only rank 0 prints (usage errors exit 2 on all)."""
    cli = [sys.executable, "-m", "revtrain.cli"]
    res = run_mpi(2, cli + ["train", "--micro-batches", "abc"], timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("argument --micro-batches: must be a positive int") == 1, res.stderr
    res = run_mpi(2, cli + ["--version"], timeout=60)
    assert res.returncode == 0 and res.stdout.count("revtrain ") == 1, res.stdout


def test_one_process_commands_refuse_mpiexec(monkeypatch, capsys):
    """evaluate, sample and profile would run N times side by side: under mpiexec they stop
    with a usage error printed by rank 0 alone (the launcher's variables, no MPI needed)."""
    from cli_run import run
    monkeypatch.setenv("PMI_SIZE", "2")
    for rank, shown in (("0", True), ("1", False)):
        monkeypatch.setenv("PMI_RANK", rank)
        for cmd in (["profile"], ["sample", "--model-file", "m.npz"],
                    ["evaluate", "--model-file", "m.npz"]):
            code, out, err = run(cmd, capsys)
            assert code == 2 and out == ""
            msg = (f"revtrain {cmd[0]}: error: {cmd[0]} runs in one process; start it without "
                   "mpiexec (only train and hypertune run data parallel, here on 2 processes)")
            assert (err.startswith(msg) and err.count("\n") == 1) if shown else err == ""
