"""Distributed hypergradients: micro-batches, sharded optimiser state, MPI.

The MPI cases run this file as a script under ``mpiexec -n N`` (the worker at
the bottom: each rank writes what it computed or raised to ``OUT/rank<r>``),
and the tests compare the ranks' results bit for bit with each other and with
``comm=None`` in this process. Skipped, with the reason, without mpi4py.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import revtrain as rt
from revtrain.distributed import micro_rows, to_fixed_sum
from mpi_run import needs_mpi, run_mpi

FIELDS = ("lr", "momentum", "weight_decay", "init_scale", "theta0", "final_theta",
          "train_loss")
FINE = dict(frac_bits=48, velocity_frac_bits=60)


class _NoHvpPass:
    """A model without ``grad_and_hvp`` (the reverse pass takes loss_and_grad + hvp)."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        if name == "grad_and_hvp":
            raise AttributeError(name)
        return getattr(self.model, name)


def _data(seed, n, T=5, B=4, V=4):
    rng = np.random.default_rng(seed)
    data = [(rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))) for _ in range(n)]
    val = (rng.integers(0, V, (T, 2 * B)), rng.integers(0, V, (T, 2 * B)))
    return data, val


def _problems():
    """``name -> (model, data, val, theta0, opt, n_iters, kwargs)``: small runs covering
    per-group hyperparameters, dropout with a reversible cell and the two-call reverse."""
    out = {}
    model = rt.RNN(4, 12, 4)
    data, val = _data(0, 6)
    G = len(model.layout.groups)
    lr = np.linspace(0.2, 0.5, 6 * G).reshape(6, G)
    mom = np.linspace(0.7, 0.95, 6 * G).reshape(6, G)
    out["rnn_groups"] = (model, data, val, model.init_params(seed=1),
                         rt.ExactSGD(lr, mom, np.linspace(0.0, 0.02, G), groups=model), 6,
                         dict(micro_batches=2))
    model = rt.RevLSTM(4, 8, 4, dropout=0.25)
    data, val = _data(2, 4)
    out["revlstm_dropout"] = (model, data, val, model.init_params(seed=3),
                              rt.ExactSGD(0.3, 0.9, 0.01), 4,
                              dict(micro_batches=4, dropout_seed=7))
    model = rt.RNN(4, 8, 4)
    data, val = _data(4, 4)
    out["no_hvp_pass"] = (_NoHvpPass(model), data, val, model.init_params(seed=5),
                          rt.ExactSGD(0.3, 0.8, 0.01), 4, dict(micro_batches=2))
    return out


def _hg(name, comm=None, **over):
    model, data, val, theta0, opt, n, kw = _problems()[name]
    kw = dict(kw, **over)
    return rt.hypergradient(model, opt, theta0, lambda t: data[t], val, n, comm=comm, **kw)


def _load(out, n):
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(n)]


def _worker_path():
    return Path(__file__).resolve()


@pytest.fixture(scope="module")
def bits_runs(tmp_path_factory):
    """The 'bits' worker under -n 1 and -n 2: ``{n: [per-rank dict]}``."""
    runs = {}
    for n in (1, 2):
        out = tmp_path_factory.mktemp(f"bits{n}")
        p = run_mpi(n, [sys.executable, _worker_path(), "bits", out], timeout=180)
        assert p.returncode == 0, p.stderr
        runs[n] = _load(out, n)
    return runs


# ------------------------------------------------------------- in one process
def test_micro_batch_runs_reverse_exactly_and_stay_close_to_whole_batches():
    """comm=None: the run with micro-batches and the plain run both recover w_0 bit for
    bit (hypergradient checks it and raises ReversalError otherwise); their results
    differ only by the 2**-40 rounding of the summed gradients."""
    model, data, val, theta0, opt, n, _ = _problems()["rnn_groups"]
    plain = rt.hypergradient(model, opt, theta0, lambda t: data[t], val, n)
    assert plain.stats.micro_batches == 0 and plain.stats.n_ranks == 1
    assert plain.stats.rank_buffer_bytes == plain.stats.buffer_bytes
    for M in (1, 2, 4):
        hg = rt.hypergradient(model, opt, theta0, lambda t: data[t], val, n, micro_batches=M)
        assert hg.stats.micro_batches == M and hg.stats.n_ranks == 1
        assert hg.stats.rank_buffer_bytes == hg.stats.buffer_bytes
        for f in ("lr", "momentum", "theta0", "final_theta"):
            a, b = getattr(hg, f), getattr(plain, f)
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-7 * np.abs(b).max())
            if f != "final_theta":
                assert not np.array_equal(a, b), f    # other gradients: other bits
        # the explicit end check of the reversal: corrupt nothing, switch it off, same bits
        off = rt.hypergradient(model, opt, theta0, lambda t: data[t], val, n,
                               micro_batches=M, check_reversal=False)
        assert np.array_equal(off.theta0, hg.theta0)


class _OffByOneUlp:
    """``grad_and_hvp`` whose gradient is off by a relative 1e-9: its reduced increment
    differs from the forward's, so every reverse iteration must fall back."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def grad_and_hvp(self, *a, **k):
        loss, g, hu = self.model.grad_and_hvp(*a, **k)
        return loss, g * (1 + 1e-9), hu


def test_fingerprint_fallback_with_micro_batches():
    """The fingerprint is taken on the reduced gradient: a complex-step gradient that
    rounds to another increment is replaced by loss_and_grad's, and the results are
    then those of the two-call reverse (loss_and_grad + hvp), bit for bit."""
    model, data, val, theta0, opt, n, _ = _problems()["rnn_groups"]
    kw = dict(micro_batches=2)
    ok = rt.hypergradient(model, opt, theta0, lambda t: data[t], val, n, **kw)
    off = rt.hypergradient(_OffByOneUlp(model), opt, theta0, lambda t: data[t], val, n, **kw)
    two = rt.hypergradient(_NoHvpPass(model), opt, theta0, lambda t: data[t], val, n, **kw)
    assert ok.stats.reverse_gradients < n
    assert off.stats.reverse_gradients == two.stats.reverse_gradients == n
    assert ok.stats.fingerprint_bytes == 8 * n and two.stats.fingerprint_bytes == 0
    for f in FIELDS:
        assert np.array_equal(getattr(off, f), getattr(two, f)), f


def test_non_deterministic_batches_break_the_sharded_reversal():
    model, data, val, theta0, opt, n, _ = _problems()["rnn_groups"]
    calls = {}

    def flaky(t):
        calls[t] = calls.get(t, 0) + 1
        return data[t] if calls[t] == 1 or t != 3 else data[4]

    with pytest.raises(rt.ReversalError, match=r"block \d+ \(parameters \d+\.\.\d+\): w_0 "
                                               r"differs"):
        rt.hypergradient(model, opt, theta0, flaky, val, n, micro_batches=2)


def test_micro_batch_dropout_masks_are_those_of_the_forward_pass(monkeypatch):
    """The reverse pass draws micro-batch m's masks from the same seed as the forward:
    fresh seeds instead break the reversal (so the seeds do matter)."""
    import itertools
    import revtrain.hypergrad_shard as shard
    _hg("revlstm_dropout")                   # recovers w_0 (checked inside)
    fresh = itertools.count(1)
    monkeypatch.setattr(shard, "micro_dropout_seed", lambda seed, t, m: next(fresh))
    with pytest.raises(rt.ReversalError):
        _hg("revlstm_dropout")


def test_float_sums_of_micro_batch_gradients_depend_on_the_grouping():
    """Negative control: why the all-reduce is in fixed point. Two groupings of the
    same four micro-batch gradients (as 1 and 2 processes would add them) differ in
    float64 but not in the exact int64 sum."""
    model, data, _, theta0, _, _, _ = _problems()["rnn_groups"]
    x, y = data[0]
    g = [model.loss_and_grad(theta0, x[:, micro_rows(m, 4, 4)], y[:, micro_rows(m, 4, 4)])[1]
         for m in range(4)]
    one = ((g[0] + g[1]) + g[2]) + g[3]            # one process, in order
    two = (g[0] + g[1]) + (g[2] + g[3])            # two processes, then across
    assert not np.array_equal(one, two)
    assert np.array_equal(to_fixed_sum(g, 4), to_fixed_sum(g[:2], 4) + to_fixed_sum(g[2:], 4))


def test_micro_batch_hypergradient_matches_finite_differences_of_the_learning_rate():
    """d val_loss / d lr_t of the micro-batch run (fine radix) against central
    differences of the whole micro-batch training run (its val_loss)."""
    model = rt.RNN(4, 8, 4)
    data, val = _data(6, 5)
    theta0 = model.init_params(seed=7)
    lr = np.full(5, 0.4)

    def run(lr):
        return rt.hypergradient(model, rt.ExactSGD(lr, 0.85, 0.01, **FINE), theta0,
                                lambda t: data[t], val, 5, micro_batches=2)

    hg, h = run(lr), 1e-3
    for t in (0, 2, 4):
        e = np.zeros(5)
        e[t] = h
        fd = (run(lr + e).val_loss - run(lr - e).val_loss) / (2 * h)
        # measured: relative differences 0.9e-9 .. 6.1e-9 at h = 1e-3 (at h = 1e-4 the
        # 2**-40 rounding of the summed gradients shows: up to 2e-7, against 4e-9 without
        # micro-batches)
        assert abs(hg.lr[t] - fd) <= 1e-7 * abs(fd), (t, hg.lr[t], fd)


def test_bad_parallel_arguments_are_refused_with_what_to_fix():
    model, data, val, theta0, opt, n, _ = _problems()["rnn_groups"]
    batch = lambda t: data[t]  # noqa: E731
    with pytest.raises(ValueError, match="micro_batches=3 must divide the batch size 4"):
        rt.hypergradient(model, opt, theta0, batch, val, n, micro_batches=3)
    with pytest.raises(ValueError, match="micro_batches must be a positive int"):
        rt.hypergradient(model, opt, theta0, batch, val, n, micro_batches=0)
    with pytest.raises(TypeError, match="mpi4py communicator"):
        rt.hypergradient(model, opt, theta0, batch, val, n, micro_batches=2, comm="world")


# ------------------------------------------------------------------ under MPI
@needs_mpi
def test_hypergradients_are_the_same_bits_without_mpi_and_on_1_and_2_processes(bits_runs):
    ranks = bits_runs[1] + bits_runs[2]
    for name in _problems():
        want = _hg(name)
        for r, got in enumerate(ranks):
            for f in FIELDS:
                assert np.array_equal(got[f"{name}.{f}"], getattr(want, f)), (name, r, f)
            assert got[f"{name}.val_loss"] == want.val_loss
            assert got[f"{name}.buffer_bytes"] == want.stats.buffer_bytes
        # memory per rank: the two ranks split the buffer between them
        b1, b2 = (bits_runs[2][r][f"{name}.rank_buffer_bytes"] for r in (0, 1))
        assert b1 + b2 == want.stats.buffer_bytes == bits_runs[1][0][f"{name}.rank_buffer_bytes"]
        assert bits_runs[2][0][f"{name}.n_ranks"] == 2


def _records(out, n=2):
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


@needs_mpi
def test_faults_stop_every_rank_with_the_same_error(tmp_path):
    p = run_mpi(2, [sys.executable, _worker_path(), "faults", tmp_path], timeout=180)
    assert p.returncode == 0, p.stderr
    r0, r1 = _records(tmp_path)
    # divergence: the same DivergenceError, message and step on both ranks
    for case in ("diverge_lr", "nan_on_rank1", "range"):
        assert r0[case] == r1[case], case
        assert r0[case][0] == "DivergenceError", r0[case]
    assert "training diverged at iteration t=" in r0["diverge_lr"][1]
    assert r0["nan_on_rank1"][1].startswith("training diverged at iteration t=2 (step 3 of 6): "
                                            "micro-batch 1 of 2: the training loss is nan")
    assert r0["nan_on_rank1"][2] == 3
    assert "fixed-point range" in r0["range"][1]
    # a non-deterministic batch on rank 1 only: both ranks raise the same ReversalError
    assert r0["flaky_on_rank1"] == r1["flaky_on_rank1"]
    assert r0["flaky_on_rank1"][0] == "ReversalError" and "w_0 differs" in r0["flaky_on_rank1"][1]
    # an unexpected exception on rank 1: re-raised on both, nobody hangs
    assert r1["raise_on_rank1"] == ["RuntimeError", "model failed on rank 1", None]
    assert r0["raise_on_rank1"][0] == "RuntimeError"
    assert "MPI rank 1" in r0["raise_on_rank1"][1] and "model failed on rank 1" in \
        r0["raise_on_rank1"][1]
    # bad arguments
    assert r0["no_micro"][0] == r1["no_micro"][0] == "ValueError"
    assert "2 MPI processes need micro_batches" in r0["no_micro"][1]
    assert "must be a multiple of the number of MPI processes (2)" in r0["odd_micro"][1]
    assert r1["odd_micro"] == r0["odd_micro"]
    assert "must divide the batch size 4" in r0["not_dividing"][1]
    assert r0["ok_after_faults"] == r1["ok_after_faults"] == "ok"


TINY_CLI = ["hypertune", "--iters", "3", "--hidden", "6", "--seq-len", "4", "--batch-size",
            "4", "--meta-iters", "2"]


@needs_mpi
def test_hypertune_under_mpiexec(tmp_path, text_file, capsys):
    from cli_run import run
    args = TINY_CLI + ["--data", text_file, "--micro-batches", "2"]
    code, want_out, err = run([str(a) for a in args] + ["--out", str(tmp_path / "one.txt")],
                              capsys)
    assert code == 0, err
    p = run_mpi(2, [sys.executable, "-m", "revtrain.cli", *args, "--out",
                    tmp_path / "two.txt"], timeout=120)
    assert p.returncode == 0, p.stderr
    # rank 0 alone prints: the same lines, but for the process count
    assert p.stdout == want_out.replace("on 1 process)", "on 2 processes)").replace(
        str(tmp_path / "one.txt"), str(tmp_path / "two.txt")), (p.stdout, want_out)
    assert p.stderr == ""
    assert (tmp_path / "one.txt").read_bytes() == (tmp_path / "two.txt").read_bytes()
    # divergence at the starting lr: exit 3 on every rank, one error line (rank 0's)
    p = run_mpi(2, [sys.executable, "-m", "revtrain.cli", *args, "--lr", "1e9"], timeout=120)
    assert p.returncode == 3, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(
        "revtrain hypertune: error: meta-iteration 0, at the constant --lr 1e+09")
    # under MPI --micro-batches defaults to the number of processes (as for train): the same
    # schedule as --micro-batches 2
    p = run_mpi(2, [sys.executable, "-m", "revtrain.cli", *TINY_CLI, "--data", text_file,
                    "--out", tmp_path / "default.txt"], timeout=120)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "default.txt").read_bytes() == (tmp_path / "two.txt").read_bytes()
    p = run_mpi(2, [sys.executable, "-m", "revtrain.cli", *TINY_CLI, "--data", text_file,
                    "--batch-size", "3"], timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == ("revtrain hypertune: error: under mpiexec -n 2 the default is "
                        "--micro-batches 2, which does not divide --batch-size 3: pass "
                        "--micro-batches M (a multiple of 2) and a --batch-size that M divides "
                        "(see revtrain hypertune --help)\n")


@needs_mpi
def test_hypertune_aborts_the_job_when_one_rank_fails(tmp_path, text_file):
    p = run_mpi(2, [sys.executable, _worker_path(), "cli_abort", tmp_path, text_file],
                timeout=120)
    assert p.returncode != 0
    assert "revtrain hypertune: error: MPI rank 1: RuntimeError: rank 1 lost its data" in p.stderr


# ------------------------------------------------------------------ the worker
def _outcome(fn):
    """``[class name, message, step]`` of what ``fn()`` raised, or "ok"."""
    try:
        fn()
    except Exception as e:
        return [type(e).__name__, str(e), getattr(e, "step", None)]
    return "ok"


class _FailOnRank:
    """Wraps a model: at iteration data ``x_fail`` on rank ``rank``, NaN loss or raise."""

    def __init__(self, model, rank, x_fail, mode):
        self.model, self.rank, self.x_fail, self.mode = model, rank, x_fail, mode

    def __getattr__(self, name):
        return getattr(self.model, name)

    def loss_and_grad(self, theta, x, y, **kw):
        loss, g = self.model.loss_and_grad(theta, x, y, **kw)
        if self.rank and np.array_equal(x, self.x_fail):
            if self.mode == "raise":
                raise RuntimeError("model failed on rank 1")
            return np.nan, g
        return loss, g


def _worker(case, out, extra):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    out = Path(out)
    if case == "bits":
        res = {}
        for name in _problems():
            hg = _hg(name, comm=comm)
            for f in FIELDS:
                res[f"{name}.{f}"] = getattr(hg, f)
            res[f"{name}.val_loss"] = hg.val_loss
            for f in ("buffer_bytes", "rank_buffer_bytes", "n_ranks"):
                res[f"{name}.{f}"] = getattr(hg.stats, f)
        np.savez(out / f"rank{rank}.npz", **res)
        return
    if case == "cli_abort":
        import revtrain.commands.hypertune as ht
        real = ht._evaluate

        def evaluate(*a, **k):
            if rank == 1:
                raise RuntimeError("rank 1 lost its data")
            return real(*a, **k)
        ht._evaluate = evaluate
        from revtrain.cli import main
        sys.exit(main(TINY_CLI + ["--data", extra, "--micro-batches", "2"]))
    # faults
    model, data, val, theta0, opt, n, _ = _problems()["rnn_groups"]
    rec = {}

    def hg(m=model, o=opt, batch=lambda t: data[t], **kw):
        kw = dict(dict(micro_batches=2, comm=comm), **kw)
        return rt.hypergradient(m, o, theta0, batch, val, n, **kw)

    rec["diverge_lr"] = _outcome(lambda: hg(o=rt.ExactSGD(1e9, 0.9)))
    # rank 1 holds micro-batch 1 of 2; its loss is NaN at iteration 2 (x[:, 2:4] of data[2])
    x_fail = np.ascontiguousarray(data[2][0][:, 2:4])
    rec["nan_on_rank1"] = _outcome(lambda: hg(m=_FailOnRank(model, rank, x_fail, "nan")))
    rec["raise_on_rank1"] = _outcome(lambda: hg(m=_FailOnRank(model, rank, x_fail, "raise")))
    rec["range"] = _outcome(lambda: hg(o=rt.ExactSGD(1e12, 0.9)))
    calls = {}

    def flaky(t):
        calls[t] = calls.get(t, 0) + 1
        return data[t] if rank == 0 or calls[t] == 1 or t != 3 else data[4]
    rec["flaky_on_rank1"] = _outcome(lambda: hg(batch=flaky))
    rec["no_micro"] = _outcome(lambda: hg(micro_batches=None))
    rec["odd_micro"] = _outcome(lambda: hg(micro_batches=3))
    rec["not_dividing"] = _outcome(lambda: hg(micro_batches=8))
    rec["ok_after_faults"] = _outcome(lambda: hg())
    (out / f"rank{rank}.json").write_text(json.dumps(rec))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
