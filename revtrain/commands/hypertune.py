"""``revtrain hypertune``: learn a learning-rate schedule by hypergradient."""
import math

from ._common import (MODELS, UsageError, Unavailable, pos_int, nonneg_int, pos_float,
                      fraction, model_class, say)


def run(a):
    import numpy as np
    import revtrain
    hypergradient = getattr(revtrain, "hypergradient", None)
    if hypergradient is None:
        try:
            from ..hypergrad import hypergradient
        except ImportError:
            raise Unavailable("hypergradients (revtrain.hypergrad.hypergradient) are not "
                              "available in this revtrain install yet") from None
    from ..data import char_corpus, DataError, stream_matrix
    try:
        corpus = char_corpus(a.data)
        S = stream_matrix(corpus.train, a.batch_size)
        Sv = stream_matrix(corpus.val, a.batch_size)
    except DataError as e:
        raise UsageError(f"--data: {e}") from None
    T, n = a.seq_len, a.iters
    if S.shape[0] < T + 2 or Sv.shape[0] < T + 2:
        raise UsageError(f"--seq-len {T} is too long for the text with --batch-size "
                         f"{a.batch_size}")
    n_win = (S.shape[0] - 1) // T

    def train_batch(t):
        w = (t % n_win) * T
        return S[w:w + T], S[w + 1:w + T + 1]

    Tv = min(4 * T, Sv.shape[0] - 1)                   # validation: 4 windows' worth
    val = (Sv[:Tv], Sv[1:Tv + 1])
    V = corpus.vocab.size
    try:
        model = model_class(MODELS[a.model])(V, a.hidden, V)
    except ValueError as e:
        raise UsageError(f"--hidden {a.hidden}: {e}") from None
    ExactSGD = model_class("ExactSGD", "optimizer")
    theta0 = model.init_params(seed=a.seed)
    log_lr = np.full(n, math.log(a.lr))
    m = np.zeros(n)
    v = np.zeros(n)
    say(False, f"learning a {n}-iteration learning-rate schedule for {type(model).__name__}"
         f"(hidden={a.hidden}) by hypergradient ({a.meta_iters} meta-iterations, "
         f"momentum {a.momentum})")
    best = (math.inf, log_lr.copy())
    for k in range(a.meta_iters + 1):
        lr = np.exp(log_lr)
        hg = hypergradient(model, ExactSGD(lr, a.momentum), theta0, train_batch, val, n)
        vl = float(hg.val_loss)
        say(False, f"meta-iteration {k:3d}: validation loss {vl:.4f}  "
             f"(lr mean {lr.mean():.4g}, min {lr.min():.4g}, max {lr.max():.4g})")
        if k == 0:
            first = vl
        if vl < best[0]:
            best = (vl, log_lr.copy())
        if k == a.meta_iters:
            break
        g = np.asarray(hg.lr, dtype=float).reshape(n, -1).sum(axis=1) * lr  # d loss / d log lr
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        log_lr -= a.meta_lr * (m / (1 - 0.9 ** (k + 1))) / (np.sqrt(v / (1 - 0.999 ** (k + 1)))
                                                             + 1e-12)
    lr = np.exp(best[1])
    print(f"best validation loss {best[0]:.4f} (constant lr {a.lr}: {first:.4f}); learned "
          f"rates: first 10 iterations mean {lr[:10].mean():.4g}, last 10 mean "
          f"{lr[-10:].mean():.4g}")
    if a.out:
        np.savetxt(a.out, lr[:, None], header="learning rate per iteration", fmt="%.8g")
        print(f"learned schedule written to {a.out}")
    return 0


def add_parser(sub):
    """Add the subcommand to ``sub`` (an argparse subparsers object)."""
    h = sub.add_parser("hypertune", help="learn a learning-rate schedule by hypergradient",
                       description="Learn a per-iteration learning-rate schedule of exact "
                       "SGD with momentum by hypergradients through reversed training "
                       "(Maclaurin et al. 2015) on the built-in corpus.")
    h.add_argument("--model", choices=list(MODELS), default="rnn",
                   help="(default: %(default)s)")
    h.add_argument("--hidden", type=pos_int, default=16, help="(default: %(default)s)")
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
                   help="write the learned schedule (text, one rate per line)")
    h.set_defaults(func=run)
