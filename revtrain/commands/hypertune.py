"""``revtrain hypertune``: learn a learning-rate schedule by hypergradient.

Meta-iteration ``k`` trains ``--iters`` steps of exact SGD with momentum with
the rates ``lr = exp(log_lr)`` (one per iteration) and reverses the run to
get ``d val_loss / d log_lr = lr * d val_loss / d lr``; an Adam step of size
``--meta-lr`` on ``log_lr`` gives the next schedule. The best schedule seen is
kept. If a run diverges, the search stops there and keeps the best schedule
found before it (exit 0 with a warning); if the very first run, at the
constant ``--lr``, diverges, there is nothing to keep (exit 3).

Data parallel: ``mpiexec -n N revtrain hypertune --micro-batches M ...``
(``M`` a multiple of ``N`` dividing ``--batch-size``) cuts each batch into
``M`` micro-batches shared by the ``N`` processes and shards the optimiser's
state (:mod:`revtrain.hypergrad_shard`); the schedule, losses and output are
the same bits for every ``N`` and for ``--micro-batches M`` without
``mpiexec``. Rank 0 reads the data and prints and writes everything; the
other ranks print nothing. Errors that every rank meets together (bad
arguments, divergence) exit with the usual code; any other exception on a
rank prints ``revtrain hypertune: error: MPI rank r: ...`` and aborts the
job (``MPI_Abort``), so no rank is left waiting.
"""
import math
import re
import sys

from ._common import (MODELS, TRAIN_DEFAULTS, UsageError, Unavailable, pos_int, nonneg_int,
                      pos_float, fraction, model_class, say, check_out_path, add_stack_options,
                      make_model, stack_text, micro_batches_for)

#: Advice inside library messages, in the library's terms (``lr``, ``frac_bits``, init
#: scale): a trailing "; use ..." / ". Try ..." clause or a "(try ...)" aside.
_ADVICE = (re.compile(r"\s*\((?:try|use) [^()]*\)", re.IGNORECASE),
           re.compile(r"\s*[;.]\s*(?:try|use) .*$", re.IGNORECASE | re.DOTALL))


class _Diverged(Exception):
    """A meta-iteration's training left the usable range; ``reason`` says how."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class _Interrupted(Exception):
    """Ctrl-C during the search; ``best`` is ``(loss, lr, k, first)`` so far (``lr`` None
    before a meta-iteration finished), ``when`` says where it stopped ("in meta-iteration 3")."""

    def __init__(self, best, when):
        super().__init__(f"interrupted {when}")
        self.best, self.when = best, when


#: Exit code of an interrupted command (Ctrl-C), as revtrain train's.
EXIT_INTERRUPTED = 130


def _reason(e):
    """What went wrong, without the library's advice (it names options this CLI lacks).

    A DivergenceError carries it as ``e.reason``; other messages (a model's or
    the optimiser's FixedPointError) have their advice clauses removed.
    """
    msg = getattr(e, "reason", None) or str(e)
    msg = re.sub(r"^(un)?step: ", "", msg.replace("; nothing was changed", ""))
    for pattern in _ADVICE:
        msg = pattern.sub("", msg)
    return msg.rstrip(" ;.")


def _read(a):
    """``((S, Sv, vocab_size), None)``: the training and validation stream matrices, or
    ``(None, message)`` for a usage error (the message of the UsageError)."""
    from ..data import char_corpus, DataError, stream_matrix
    try:
        corpus = char_corpus(a.data)
        S = stream_matrix(corpus.train, a.batch_size)
        Sv = stream_matrix(corpus.val, a.batch_size)
    except DataError as e:
        return None, f"--data: {e}"
    return (S, Sv, corpus.vocab.size), None


def _rank0_read(a):
    """:func:`_read` after checking ``--out`` (rank 0 of an MPI run writes it)."""
    try:
        check_out_path(a.out, "--out")
    except UsageError as e:
        return None, str(e)
    return _read(a)


def _problem(a, comm=None):
    """``(model, theta0, train_batch, val)`` for the corpus and sizes in ``a``.

    Under MPI (``comm``), rank 0 checks ``--out`` and reads the data and
    broadcasts the data (or the usage error, then raised on every rank).
    """
    if comm is None:
        data, err = _read(a)
    else:
        data, err = comm.bcast(_rank0_read(a) if comm.Get_rank() == 0 else None, root=0)
    if err:
        raise UsageError(err)
    S, Sv, vocab_size = data
    T = a.seq_len
    if S.shape[0] < T + 2 or Sv.shape[0] < T + 2:
        raise UsageError(f"--seq-len {T} is too long for the text with --batch-size "
                         f"{a.batch_size}")
    n_win = (S.shape[0] - 1) // T

    def train_batch(t):
        w = (t % n_win) * T
        return S[w:w + T], S[w + 1:w + T + 1]

    Tv = min(4 * T, Sv.shape[0] - 1)                   # validation: 4 windows' worth
    val = (Sv[:Tv], Sv[1:Tv + 1])
    model = make_model(a.model, vocab_size, a.hidden, *_stack(a))
    return model, model.init_params(seed=a.seed), train_batch, val


def _stack(a):
    """``(layers, embed, dropout)`` of the command line, defaults filled in."""
    d = TRAIN_DEFAULTS
    return (d["layers"] if a.layers is None else a.layers, a.embed,
            d["dropout"] if a.dropout is None else a.dropout)


def _hypergradient():
    import revtrain
    fn = getattr(revtrain, "hypergradient", None)
    if fn is None:
        raise Unavailable("hypergradients (revtrain.hypergrad.hypergradient) are not "
                          "available in this revtrain install yet")
    return fn


def _evaluate(a, model, theta0, train_batch, val, lr, comm=None):
    """``(val_loss, d val_loss / d log lr (n,))`` of one training run with rates ``lr``.

    Raises :class:`_Diverged` if the run diverges (the library's DivergenceError,
    or its FixedPointError: weights or velocity out of fixed-point range).
    """
    import numpy as np
    from ..errors import DivergenceError, FixedPointError
    if not (np.isfinite(lr).all() and (lr > 0).all()):
        raise _Diverged("the meta step took some learning rates out of the float range")
    ExactSGD = model_class("ExactSGD", "optimizer")
    try:
        kw = {"dropout_seed": a.seed} if getattr(model, "dropout", 0) else {}
        if a.micro_batches is not None:
            kw.update(micro_batches=a.micro_batches, comm=comm)
        hg = _hypergradient()(model, ExactSGD(lr, a.momentum), theta0, train_batch, val,
                              lr.shape[0], **kw)
    except (DivergenceError, FixedPointError) as e:
        raise _Diverged(_reason(e)) from None
    d_lr = np.asarray(hg.lr, dtype=float).reshape(lr.shape[0], -1).sum(axis=1)
    return float(hg.val_loss), d_lr * lr


class _MetaAdam:
    """Adam on the log learning rates: ``log_lr -= meta_lr * mhat / (sqrt(vhat) + 1e-12)``."""

    def __init__(self, n, meta_lr):
        import numpy as np
        self.m, self.v, self.k, self.meta_lr = np.zeros(n), np.zeros(n), 0, meta_lr

    def step(self, log_lr, g):
        import numpy as np
        self.k += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        mhat = self.m / (1.0 - 0.9 ** self.k)
        vhat = self.v / (1.0 - 0.999 ** self.k)
        return log_lr - self.meta_lr * mhat / (np.sqrt(vhat) + 1e-12)


def _search(a, model, theta0, train_batch, val, comm=None):
    """Run the meta-iterations; returns ``(best_loss, best_lr, best_k, first_loss, stopped)``.

    ``stopped`` is None, or the one-line warning when a meta-iteration ``k >= 1``
    diverged. Raises :class:`_Diverged` if meta-iteration 0 does.
    """
    import numpy as np
    n = a.iters
    log_lr = np.full(n, math.log(a.lr))
    adam = _MetaAdam(n, a.meta_lr)
    best = (math.inf, None, -1)
    first = None
    from ..distributed import DeferredInterrupt
    k, where = 0, "in"
    sigint = DeferredInterrupt(comm)   # under MPI, Ctrl-C waits for the meta-iteration's end
    try:
        for k in range(a.meta_iters + 1):
            with np.errstate(over="ignore", under="ignore"):
                lr = np.exp(log_lr)                 # out of range: _evaluate says so
            try:
                vl, g = _evaluate(a, model, theta0, train_batch, val, lr, comm)
            except _Diverged as e:
                if k == 0:
                    raise
                return best + (first, f"meta-iteration {k} diverged ({e.reason}); stopped "
                               "the search and kept the best schedule found before it "
                               f"(meta-iteration {best[2]}, validation loss {best[0]:.4f}); a "
                               "smaller --meta-lr (or --lr) avoids this")
            say(a.quiet, f"meta-iteration {k:3d}: validation loss {vl:.4f}  "
                 f"(lr mean {lr.mean():.4g}, min {lr.min():.4g}, max {lr.max():.4g})")
            first = vl if k == 0 else first
            if vl < best[0]:
                best = (vl, lr, k)
            if k < a.meta_iters:
                log_lr = adam.step(log_lr, g)
            if comm is not None:
                where = "after"
                sigint.agree(False)         # every rank raises KeyboardInterrupt together
                where = "in"
    except KeyboardInterrupt:
        raise _Interrupted(best + (first,), f"{where} meta-iteration {k}") from None
    finally:
        sigint.restore()
    return best + (first, None)


def _check_micro(a, comm):
    """``--micro-batches`` against ``--batch-size`` and the number of MPI processes
    (:func:`~._common.micro_batches_for`: under ``mpiexec -n N`` it defaults to N, as for
    ``revtrain train``)."""
    a.micro_batches = micro_batches_for(a.micro_batches, a.batch_size,
                                        1 if comm is None else comm.Get_size())


def run(a):
    from ..distributed import world
    comm = world()
    if comm is None:
        a.quiet = False
        return _run(a, None)
    from ..errors import DivergenceError
    rank = comm.Get_rank()
    a.quiet = rank != 0
    try:
        code = _run(a, comm)
    except (UsageError, Unavailable, DivergenceError) as e:
        # met by every rank together (checks on the same data, the library's collective
        # status checks): rank 0 reports it, the others exit with the same code
        if rank == 0:
            raise
        return 2 if isinstance(e, UsageError) else 3 if isinstance(e, DivergenceError) else 1
    except KeyboardInterrupt:           # outside the search: nothing to keep
        if rank == 0:
            print("revtrain hypertune: interrupted", file=sys.stderr, flush=True)
        _end_interrupted(comm, rank)
    except BaseException as e:          # one rank alone: do not leave the others waiting
        print(f"revtrain hypertune: error: MPI rank {rank}: {type(e).__name__}: {e}",
              file=sys.stderr, flush=True)
        from ..distributed import abort_job
        abort_job(comm, 1)
        raise                           # pragma: no cover - Abort does not return
    return code                         # (an interrupted search ends on every rank together)


def _end_interrupted(comm, rank):
    """End an interrupted MPI job: Ctrl-C reaches the ranks at different points (some may
    wait in a collective), so rank 0, done writing, aborts the job with code 130; the
    others give it a moment to do so."""
    import time
    from ..distributed import abort_job
    if rank != 0:
        time.sleep(10.0)
        comm.Abort(EXIT_INTERRUPTED)
    abort_job(comm, EXIT_INTERRUPTED)       # once rank 0's message has had time to leave


def _run(a, comm):
    from ..errors import DivergenceError
    _check_micro(a, comm)
    if comm is None:
        check_out_path(a.out, "--out")
        model, theta0, train_batch, val = _problem(a)
    else:
        model, theta0, train_batch, val = _problem(a, comm)
    _hypergradient()
    par = ""
    if a.micro_batches is not None:
        N = 1 if comm is None else comm.Get_size()
        par = f", {a.micro_batches} micro-batches on {N} process{'es' if N > 1 else ''}"
    say(a.quiet, f"learning a {a.iters}-iteration learning-rate schedule for "
        f"{type(model).__name__}(hidden={a.hidden}{stack_text(*_stack(a))}) by hypergradient "
        f"({a.meta_iters} meta-iterations, momentum {a.momentum}{par})")
    try:
        best_loss, lr, best_k, first, stopped = _search(a, model, theta0, train_batch, val,
                                                        comm)
    except _Diverged as e:                     # the command exits with code 3
        raise DivergenceError(f"meta-iteration 0, at the constant --lr {a.lr:g}: {e.reason}; "
                              "no schedule was learned", hint="use a smaller --lr") from None
    except _Interrupted as e:
        return _interrupted(a, e)
    if a.quiet:
        return 0
    if stopped:
        print(f"revtrain hypertune: warning: {stopped}", file=sys.stderr, flush=True)
    print(f"best validation loss {best_loss:.4f} (constant lr {a.lr}: {first:.4f}); learned "
          f"rates: first 10 iterations mean {lr[:10].mean():.4g}, last 10 mean "
          f"{lr[-10:].mean():.4g}")
    if a.out:
        _save(a, lr, best_k, best_loss, first, stopped is not None)
        print(f"learned schedule written to {a.out}")
    return 0


def _save(a, lr, best_k, best_loss, first, stopped_early):
    from ..schedule import save_lr_schedule
    layers, embed, dropout = _stack(a)
    save_lr_schedule(a.out, lr, a.momentum, model=a.model, hidden=a.hidden, layers=layers,
                     embed=embed, dropout=dropout, dtype="float64", seq_len=a.seq_len,
                     batch_size=a.batch_size, micro_batches=a.micro_batches, seed=a.seed,
                     data=a.data, start_lr=a.lr, meta_lr=a.meta_lr,
                     meta_iteration=best_k, val_loss=best_loss,
                     val_loss_constant_lr=first, stopped_early=stopped_early)


def _interrupted(a, e):
    """Ctrl-C: write the best schedule found so far (if any, and ``--out``); exit code 130."""
    if a.quiet:
        return EXIT_INTERRUPTED
    best_loss, lr, best_k, first = e.best
    where = "nothing saved"
    if lr is not None and a.out:
        try:
            _save(a, lr, best_k, best_loss, first, True)
            where = (f"the best schedule so far (meta-iteration {best_k}, validation loss "
                     f"{best_loss:.4f}) is in {a.out}")
        except (OSError, ValueError) as err:
            where = f"nothing saved ({err})"
    print(f"revtrain hypertune: interrupted {e.when}: {where}",
          file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


def add_parser(sub):
    """Add the subcommand to ``sub`` (an argparse subparsers object)."""
    h = sub.add_parser("hypertune", help="learn a learning-rate schedule by hypergradient",
                       description="Learn a per-iteration learning-rate schedule of exact "
                       "SGD with momentum by hypergradients through reversed training "
                       "(Maclaurin et al. 2015) on the built-in corpus. Exit codes: 0 done "
                       "(also when a later meta-iteration diverged: the best schedule before "
                       "it is kept, with a warning), 1 a failure while running, 2 bad "
                       "arguments, 3 training diverged at the starting --lr, 130 interrupted "
                       "(Ctrl-C; the best schedule so far is written to --out).")
    h.add_argument("--model", choices=list(MODELS), default="rnn",
                   help="(default: %(default)s)")
    h.add_argument("--hidden", type=pos_int, default=16, help="(default: %(default)s)")
    add_stack_options(h, masks="one mask per window, fresh every iteration, drawn from "
                      "--seed, the same in the reverse pass")
    h.add_argument("--seq-len", type=pos_int, default=20, help="(default: %(default)s)")
    h.add_argument("--batch-size", type=pos_int, default=16, help="(default: %(default)s)")
    h.add_argument("--iters", type=pos_int, default=100,
                   help="training iterations per run (default: %(default)s)")
    h.add_argument("--meta-iters", type=nonneg_int, default=30,
                   help="meta-iterations (default: %(default)s)")
    h.add_argument("--lr", type=pos_float, default=1.0,
                   help="initial constant learning rate (default: %(default)s)")
    h.add_argument("--momentum", type=fraction, default=0.9,
                   help="momentum in (0, 1) (default: %(default)s)")
    h.add_argument("--meta-lr", type=pos_float, default=0.1,
                   help="Adam step on the log learning rates (default: %(default)s)")
    h.add_argument("--seed", type=nonneg_int, default=0, help="(default: %(default)s)")
    h.add_argument("--data", default=None, metavar="PATH",
                   help="a UTF-8 text file (default: the built-in corpus)")
    h.add_argument("--out", default=None, metavar="PATH",
                   help="write the learned schedule: one rate per line after a '#' JSON "
                   "header (momentum, iterations, model, ...); np.loadtxt reads it")
    h.add_argument("--micro-batches", type=pos_int, default=None, metavar="M",
                   help="cut each batch into M micro-batches whose gradients are summed "
                   "exactly in fixed point: the same bits on any number of MPI processes "
                   "dividing M (under mpiexec -n N: a multiple of N dividing --batch-size). "
                   "Default: whole batches in one process; N under 'mpiexec -n N' with N > 1 "
                   "(the bits depend on M: give the same M to compare runs on different N)")
    h.set_defaults(func=run)
