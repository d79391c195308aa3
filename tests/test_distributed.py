"""revtrain.distributed and Trainer(micro_batches=, comm=): exact sums, errors, same bits.

Without MPI: the fixed-point sum, its overflow and error messages, the
micro-batch path of the Trainer (argument checks, resume). With MPI (one
``mpiexec -n 2`` launch, skipped with the reason when the extra is missing):
``reduce_micro`` and ``Trainer(comm=COMM_WORLD)`` give the bits of one process.
"""
import sys
import textwrap

import numpy as np
import pytest

import revtrain as rt
from revtrain.data import CharVocab, TextCorpus
from revtrain.distributed import (GRAD_FRAC_BITS, agree, check_micro, micro_rows, on_root,
                                  owned, reduce_micro, to_fixed_sum)
from revtrain.trainer import Trainer
from mpi_run import needs_mpi, run_mpi

TEXT = ("the quick brown fox jumps over the lazy dog; " * 10
        + "pack my box with five dozen liquor jugs. " * 10)


def corpus():
    v = CharVocab.from_text(TEXT)
    ids = v.encode(TEXT)
    n = int(len(ids) * 0.85)
    return TextCorpus(ids[:n], ids[n:], v, "test")


V = corpus().vocab.size
FIT = dict(batch_size=4, seq_len=8, quiet=True, eval_every=2, val_tokens=100)


class FakeComm:
    """Only the size of a communicator (for argument checks; never used to communicate)."""
    def __init__(self, n):
        self.n = n

    def Get_size(self):
        return self.n

    def Get_rank(self):
        return 0

    def Allreduce(self, *a, **k):       # pragma: no cover - never called
        raise AssertionError

    def allgather(self, *a, **k):       # pragma: no cover - never called
        raise AssertionError

    def bcast(self, obj, root=0):       # rank 0's side of a broadcast
        return obj


# --------------------------------------------------------- fixed-point sums
def micro_vectors(M=8, P=1000, seed=0):
    """Gradient-like vectors of very different magnitudes, so float sums depend on order."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(P) * 10.0 ** rng.uniform(-6, 2, P) for _ in range(M)]


def test_fixed_sum_is_independent_of_grouping_float_sum_is_not():
    vs = micro_vectors()
    scale = 2.0 ** -GRAD_FRAC_BITS
    ref = to_fixed_sum(vs, 8)
    assert ref.dtype == np.int64
    np.testing.assert_array_equal(ref, sum(np.rint(v * 2.0 ** GRAD_FRAC_BITS).astype(np.int64)
                                           for v in vs))
    for groups in ([4, 4], [2, 2, 2, 2], [1] * 8):      # N = 2, 4, 8 ranks, then summed
        parts, i = [], 0
        for g in groups:
            parts.append(to_fixed_sum(vs[i:i + g], 8))
            i += g
        assert np.array_equal(sum(parts) * scale, ref * scale)
    # negative control: float sums of the same vectors in another grouping differ in bits
    flat = vs[0]
    for v in vs[1:]:
        flat = flat + v
    pairs = [vs[i] + vs[i + 1] for i in range(0, 8, 2)]
    grouped = (pairs[0] + pairs[1]) + (pairs[2] + pairs[3])
    assert not np.array_equal(flat, grouped)


def test_reduce_micro_without_mpi():
    vs = micro_vectors(M=4, P=50)
    sums, extras = reduce_micro(lambda m: ((vs[m], 2 * vs[m]), ("loss", m)), 4)
    k = to_fixed_sum(vs, 4)
    assert np.array_equal(sums[0], k * 2.0 ** -GRAD_FRAC_BITS)
    assert np.array_equal(sums[1], to_fixed_sum([2 * v for v in vs], 4) * 2.0 ** -40)
    assert extras == [("loss", m) for m in range(4)]
    assert np.abs(sums[0] - sum(vs)).max() <= 4 * 2.0 ** -41 * 1.0001


def test_overflow_and_nonfinite_messages():
    big = np.zeros(5)
    big[3] = 2.0 ** 21            # |v| must stay below 2**22 / M = 2**20 at M = 4
    with pytest.raises(rt.FixedPointError, match=r"too large for the exact all-reduce: "
                       r"2097152\.0 at index 3; \|values\| must stay below 1\.049e\+06 "
                       r"\(2\*\*22 / micro_batches\) at 40 fraction bits"):
        reduce_micro(lambda m: ((big,), None), 4)
    reduce_micro(lambda m: ((big,), None), 1)       # 2**21 < 2**22 / 1: fine at M = 1
    nan = np.array([0.0, np.nan])
    with pytest.raises(rt.DivergenceError, match="NaN or inf"):
        reduce_micro(lambda m: ((nan,), None), 2)


def test_compute_error_is_raised():
    def compute(m):
        if m == 1:
            raise rt.ReversalError("micro-batch one failed")
        return (np.zeros(2),), None
    with pytest.raises(rt.ReversalError, match="micro-batch one failed"):
        reduce_micro(compute, 2)


def test_micro_helpers_and_checks():
    assert [micro_rows(m, 4, 8) for m in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6),
                                                       slice(6, 8)]
    assert list(owned(4)) == [0, 1, 2, 3]
    assert check_micro(4, 8, FakeComm(2)) == 4
    for bad in (0, -1, True, 2.0, "2", None):
        with pytest.raises(ValueError, match="micro_batches must be a positive int"):
            check_micro(bad, 8)
    with pytest.raises(ValueError, match="must divide the batch size 8"):
        check_micro(3, 8)
    with pytest.raises(ValueError, match=r"multiple of the number of MPI processes \(4\)"):
        check_micro(2, 8, FakeComm(4))
    assert on_root(lambda: 7) == 7 and agree(3, None, "x") == 3


# ------------------------------------------------- Trainer(micro_batches=)
def test_trainer_argument_checks():
    model = rt.RevLSTM(V, 8, V)
    with pytest.raises(ValueError, match=r"2 MPI processes need micro_batches: "
                       r"pass micro_batches=M, a multiple of 2"):
        Trainer(model, rt.Adam(0.01), comm=FakeComm(2))
    with pytest.raises(ValueError, match=r"micro_batches=3 must be a multiple of the number "
                       r"of MPI processes \(2\)"):
        Trainer(model, rt.Adam(0.01), comm=FakeComm(2), micro_batches=3)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="micro_batches must be a positive int or None"):
            Trainer(model, rt.Adam(0.01), micro_batches=bad)
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        Trainer(model, rt.Adam(0.01), comm="world", micro_batches=2)
    tr = Trainer(model, rt.Adam(0.01), micro_batches=3)
    with pytest.raises(ValueError, match="micro_batches=3 must divide the batch size 4"):
        tr.fit(corpus(), steps=1, **FIT)


def test_micro_batches_resume_and_default_unchanged(tmp_path):
    def make(M):
        return Trainer(rt.RevLSTM(V, 8, V, n_layers=2, embed_dim=4, dropout=0.2),
                       rt.ExactSGD(2.0, 0.9), seed=1, micro_batches=M)
    straight = make(2)
    straight.fit(corpus(), steps=5, **FIT)
    part = make(2)
    part.fit(corpus(), steps=2, **FIT)
    part.save(tmp_path / "p.npz")
    back = Trainer.load(tmp_path / "p.npz")
    assert back.micro_batches == 2 and "micro_batches=2" in repr(back)
    back.fit(corpus(), steps=3, **FIT)
    assert np.array_equal(back.theta, straight.theta)
    for a, b in zip(back.opt_state, straight.opt_state):
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b)
    assert back.history.loss == straight.history.loss
    # the micro-batch path is another computation than the whole batch (not the same bits)
    whole = make(None)
    whole.fit(corpus(), steps=5, **FIT)
    assert whole.micro_batches is None and not np.array_equal(whole.theta, straight.theta)
    whole.save(tmp_path / "w.npz")
    assert Trainer.load(tmp_path / "w.npz").micro_batches is None
    with pytest.raises(ValueError, match="trained without micro-batches"):
        Trainer.load(tmp_path / "w.npz", comm=FakeComm(2))


def test_short_last_batch_of_examples():
    """Fixed examples whose last batch has fewer rows than micro-batches (empty blocks)."""
    task = rt.adding_task(6, 10, seed=0)
    tr = Trainer(rt.RNN(2, 8, 1, loss="mse"), rt.Adam(0.01), micro_batches=4)
    tr.fit(task, epochs=2, batch_size=4, quiet=True)   # batches of 4, 4, 2 rows
    assert tr.steps_done == 6 and np.isfinite(tr.history.loss).all()


# -------------------------------------------------------------- under MPI
MPI_SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    from mpi4py import MPI
    import revtrain as rt
    from revtrain.distributed import reduce_micro
    sys.path.insert(0, sys.argv[1])
    from test_distributed import corpus, micro_vectors, V, FIT
    comm = MPI.COMM_WORLD
    r = comm.Get_rank()
    vs = micro_vectors(M=4, P=300)
    sums, ex = reduce_micro(lambda m: ((vs[m],), m * 10), 4, comm)
    ref, rex = reduce_micro(lambda m: ((vs[m],), m * 10), 4, None)
    assert np.array_equal(sums[0], ref[0]) and ex == rex == [0, 10, 20, 30]
    # a float all-reduce of the per-rank float sums: not the bits of one process's float sum
    mine = vs[2 * r] + vs[2 * r + 1]
    fsum = np.empty_like(mine)
    comm.Allreduce(mine, fsum, op=MPI.SUM)
    seq = ((vs[0] + vs[1]) + vs[2]) + vs[3]
    print(f"rank {r} float-differs {not np.array_equal(fsum, seq)}")

    def failing(m):
        if m == 3:
            raise rt.ReversalError("kaput")
        return (vs[m],), None
    try:
        reduce_micro(failing, 4, comm)
    except rt.ReversalError as e:
        print(f"rank {r} error {e} all_ranks={getattr(e, 'all_ranks', False)}")

    def make(M, c):
        return rt.Trainer(rt.LSTM(V, 8, V), rt.Adam(0.02), seed=2, comm=c, micro_batches=M)
    tr = make(2, comm)
    tr.fit(corpus(), steps=4, **FIT)
    one = make(2, None)
    one.fit(corpus(), steps=4, **FIT)
    same = (np.array_equal(tr.theta, one.theta) and tr.history.loss == one.history.loss
            and all(np.array_equal(a, b) for a, b in zip(tr.opt_state, one.opt_state)))
    print(f"rank {r} trainer-same {same} calls {tr.comm_stats['calls']}")
    try:
        make(None, comm)
    except ValueError as e:
        print(f"rank {r} none-error {'need micro_batches' in str(e)}")

    # a callback raising on rank 1 alone: both ranks stop after the same step, none hangs
    def cb(trainer, rec):
        if r == 1 and rec["step"] == 2:
            raise KeyError("only here")
    tr = make(2, comm)
    try:
        tr.fit(corpus(), steps=4, callbacks=cb, **FIT)
    except (KeyError, RuntimeError) as e:
        print(f"rank {r} callback-error {type(e).__name__} step {tr.steps_done} "
              f"all_ranks={getattr(e, 'all_ranks', False)} {e}")
''')


@needs_mpi
def test_reduce_micro_and_trainer_on_two_processes(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(MPI_SCRIPT)
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    res = run_mpi(2, [sys.executable, script, tests_dir], timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for r in (0, 1):
        assert f"rank {r} float-differs True" in out
        assert (f"rank {r} error MPI rank 1, micro-batch 3: kaput all_ranks=True" in out
                or (r == 1 and "rank 1 error kaput all_ranks=True" in out))
        assert f"rank {r} trainer-same True calls 4" in out
        assert f"rank {r} none-error True" in out
    assert "rank 1 callback-error KeyError step 2 all_ranks=True 'only here'" in out
    assert ("rank 0 callback-error RuntimeError step 2 all_ranks=True a callback raised on MPI "
            "rank 1 (KeyError: 'only here'); every rank stopped after the same step") in out
