"""The ``revtrain`` command: train, sample, profile, hypertune.

Usage errors (bad or inconsistent arguments, a missing data or model file, a
folder where a file is expected) print one line ``revtrain CMD: error: ...``
and exit with code 2; a failure while running (a corrupt or truncated model
file, a part of revtrain that is not installed) prints one line and exits
with code 1.
"""
import argparse
import math
import os
import sys
import time

MODELS = {  # command-line name -> class name (looked up in revtrain at call time)
    "rnn": "RNN", "lstm": "LSTM", "gru": "GRU", "momentum-rnn": "MomentumRNN",
    "revgru": "RevGRU", "revlstm": "RevLSTM",
}
REVERSIBLE = ("momentum-rnn", "revgru", "revlstm")
BPTT_MODES = ("standard", "checkpoint", "reversible")

#: Default Adam learning rate per model.
DEFAULT_LR = {"rnn": 0.01, "lstm": 0.02, "gru": 0.02, "momentum-rnn": 0.003,
              "revgru": 0.01, "revlstm": 0.01}
#: Default handling of the recurrent state between truncated-BPTT windows.
#: MomentumRNN's h = h + v (DESIGN) is not bounded by construction: carried from
#: window to window it drifts and training diverges, so it starts each window
#: from zeros. (RevLSTM's h is a convex combination and is carried.)
DEFAULT_STATE = {"momentum-rnn": "reset"}

#: Exact SGD (v = 0.9 v - 0.1 g, w += lr v, gradients clipped to norm 1) moves a weight far
#: less per unit of lr than Adam does: its default rate is this factor times Adam's (rough).
SGD_LR_FACTOR = 300.0

TRAIN_DEFAULTS = dict(model="revlstm", hidden=128, seq_len=64, batch_size=32, steps=300,
                      lr=None, seed=0, out="revtrain_model.npz", val_chars=20000,
                      grad_clip=1.0)


class UsageError(Exception):
    """A bad argument found after parsing (exit code 2)."""


class Unavailable(Exception):
    """A part of revtrain this command needs is not installed yet (exit code 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------ arg types
def _arg_type(convert, ok, what):
    """An argparse type: ``convert(s)`` accepted when ``ok(value)``, else "must be <what>"."""
    def parse(s):
        try:
            v = convert(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {s!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {s!r}")
        return v
    return parse


_pos_int = _arg_type(int, lambda v: v >= 1, "a positive int")
_nonneg_int = _arg_type(int, lambda v: v >= 0, "an int >= 0")
_pos_float = _arg_type(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
_fraction = _arg_type(float, lambda v: 0.0 < v < 1.0, "a number in (0, 1)")


# ---------------------------------------------------------------- helpers
def _class(name, what="model"):
    from .trainer import find_class
    cls = find_class(name)
    if cls is None:
        raise Unavailable(f"{what} {name} is not available in this revtrain install yet")
    return cls


def _optimizer(name, lr):
    if name == "adam":
        return _class("Adam", "optimizer")(lr)
    return _class("ExactSGD", "optimizer")(lr, 0.9)


def _bytes(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _say(quiet, *a):
    if not quiet:
        print(*a, flush=True)


# ------------------------------------------------------------------ train
def cmd_train(a):
    from .data import char_corpus, DataError, text_windows
    from .trainer import Trainer

    try:
        corpus = char_corpus(a.data)
        n_needed = a.batch_size + 1
        if len(corpus.train) < n_needed or len(corpus.val) < 2:
            raise DataError(f"the text is too short: {len(corpus.train)} training characters "
                            f"for --batch-size {a.batch_size} (needs at least {n_needed})")
    except DataError as e:
        raise UsageError(f"--data: {e}") from None
    cls_name = MODELS[a.model]
    cls = _class(cls_name)
    bptt = a.bptt
    modes = tuple(getattr(cls, "bptt_modes", BPTT_MODES))
    if bptt is None:
        bptt = "reversible" if "reversible" in modes else modes[0]
    elif bptt not in modes:
        raise UsageError(f"--bptt {bptt} is not supported by {cls_name} "
                         f"(it supports: {', '.join(modes)})")
    out_dir = os.path.dirname(os.path.abspath(a.out)) if a.out else None
    if out_dir and not os.path.isdir(out_dir):
        raise UsageError(f"--out: folder {out_dir!r} does not exist")
    if a.out and os.path.isdir(a.out):
        raise UsageError(f"--out: {a.out!r} is a folder; give a file name such as "
                         f"{os.path.join(a.out, 'revtrain_model.npz')!r}")

    V = corpus.vocab.size
    try:
        model = cls(V, a.hidden, V)
    except ValueError as e:
        raise UsageError(f"--hidden {a.hidden}: {e}") from None
    state = a.state or DEFAULT_STATE.get(a.model, "carry")
    if a.lr is not None:
        lr = a.lr
    else:
        lr = DEFAULT_LR.get(a.model, 0.01) * (1.0 if a.optimizer == "adam" else SGD_LR_FACTOR)
    opt = _optimizer(a.optimizer, lr)
    trainer = Trainer(model, opt, bptt=bptt, seed=a.seed)
    src = "built-in corpus (pydoc_data.topics)" if a.data is None else a.data
    # the first window (windows are shorter than --seq-len when the text is)
    x, y = next(text_windows(corpus.train, a.batch_size, a.seq_len))
    win = x.shape[0]
    _say(a.quiet, f"training {cls_name}(hidden={a.hidden}) with {bptt} BPTT on {src}: "
         f"{len(corpus.train)} train / {len(corpus.val)} validation chars, vocabulary {V}; "
         f"{a.steps} steps of {win} x {a.batch_size}, {a.optimizer} lr {lr}"
         + f", state {'reset every window' if state == 'reset' else 'carried between windows'}")
    t0 = time.perf_counter()
    hist = trainer.fit(corpus, steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len,
                       quiet=a.quiet, val_tokens=a.val_chars or None, grad_clip=a.grad_clip,
                       eval_every=max(1, a.steps // 5), carry_state=state == "carry")
    ev = trainer.evaluate(corpus.val, batch_size=a.batch_size, seq_len=a.seq_len,
                          carry_state=state == "carry")
    total = time.perf_counter() - t0

    # what standard BPTT would hold for one window of the same size
    held = max(hist.stored_bytes)
    if bptt == "standard":
        std = held
    else:
        try:
            std = model.loss_and_grad(trainer.theta, x, y, bptt="standard",
                                      return_stats=True)[2].stored_bytes
        except (ValueError, NotImplementedError):
            std = None
    if a.out:
        trainer.save(a.out)

    last = hist.loss[-10:]
    print(f"\nsummary ({cls_name}, hidden {a.hidden}, {bptt} BPTT, {len(hist.loss)} steps, "
          f"seed {a.seed})")
    print(f"  train loss        {hist.loss[-1]:.4f} nats/char (mean of last {len(last)} steps: "
          f"{sum(last) / len(last):.4f})")
    print(f"  validation        {ev['bpc']:.4f} bits/char "
          f"(loss {ev['loss']:.4f} nats, all {len(corpus.val)} validation chars)")
    print(f"  time              {hist.time[-1]:.1f} s in training steps (first-call "
          f"compilation included), {total:.1f} s with validation")
    ratio = f" ({std / held:.1f}x more)" if std and held else ""
    print(f"  memory for BPTT   {_bytes(held)} held per {win}-step window ({bptt})")
    if std is not None and bptt != "standard":
        print(f"  standard BPTT     would hold {_bytes(std)}{ratio}")
    if a.out:
        print(f"  saved to          {a.out}")
    return 0


# ----------------------------------------------------------------- sample
def cmd_sample(a):
    from .trainer import Trainer, ModelFileError
    if a.prime is not None and not a.prime:
        raise UsageError("--prime: must not be empty (leave it out to start from a newline)")
    if not os.path.isfile(a.model_file):
        what = "is a folder" if os.path.isdir(a.model_file) else "does not exist"
        raise UsageError(f"--model-file: {a.model_file!r} {what}")
    try:
        tr = Trainer.load(a.model_file)
    except ModelFileError as e:
        raise RuntimeError(str(e)) from None
    if tr.vocab is None:
        raise UsageError(f"--model-file: {a.model_file!r} is not a character model")
    prime = a.prime
    if prime is None:
        prime = "\n" if "\n" in tr.vocab.chars else tr.vocab.chars[0]
    missing = sorted(set(prime) - set(tr.vocab.chars))
    if missing:
        raise UsageError(f"--prime: characters not in the model's vocabulary: "
                         f"{''.join(missing)!r}")
    text = tr.generate(a.length, prime=prime, temperature=a.temperature, seed=a.seed)
    sys.stdout.write(prime + text + ("\n" if not text.endswith("\n") else ""))
    return 0


# ---------------------------------------------------------------- profile
def cmd_profile(a):
    import inspect
    try:
        from .profile import run_profile
    except ImportError:
        raise Unavailable("profiling (revtrain.profile.run_profile) is not available in "
                          "this revtrain install yet") from None
    from .profile import unknown_names, CONFIGS
    bad = unknown_names(a.models)
    if bad:
        raise UsageError(f"--models: unknown {' '.join(bad)} (choose from "
                         f"{' '.join(dict.fromkeys(c for _, c, _ in CONFIGS))}, or labels "
                         f"such as '{CONFIGS[0][0]}')")
    kw = dict(lengths=tuple(a.lengths), batch=a.batch_size, hidden=a.hidden, vocab=a.vocab,
              names=a.models, out_dir=a.out, rss=a.rss, isolate=a.isolate,
              max_seconds=a.max_seconds, progress=not a.quiet and sys.stdout.isatty())
    params = inspect.signature(run_profile).parameters
    run_profile(**{k: v for k, v in kw.items() if k in params})
    return 0


# -------------------------------------------------------------- hypertune
def cmd_hypertune(a):
    import numpy as np
    import revtrain
    hypergradient = getattr(revtrain, "hypergradient", None)
    if hypergradient is None:
        try:
            from .hypergrad import hypergradient
        except ImportError:
            raise Unavailable("hypergradients (revtrain.hypergrad.hypergradient) are not "
                              "available in this revtrain install yet") from None
    from .data import char_corpus, DataError, stream_matrix
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
        model = _class(MODELS[a.model])(V, a.hidden, V)
    except ValueError as e:
        raise UsageError(f"--hidden {a.hidden}: {e}") from None
    ExactSGD = _class("ExactSGD", "optimizer")
    theta0 = model.init_params(seed=a.seed)
    log_lr = np.full(n, math.log(a.lr))
    m = np.zeros(n)
    v = np.zeros(n)
    _say(False, f"learning a {n}-iteration learning-rate schedule for {type(model).__name__}"
         f"(hidden={a.hidden}) by hypergradient ({a.meta_iters} meta-iterations, "
         f"momentum {a.momentum})")
    best = (math.inf, log_lr.copy())
    for k in range(a.meta_iters + 1):
        lr = np.exp(log_lr)
        hg = hypergradient(model, ExactSGD(lr, a.momentum), theta0, train_batch, val, n)
        vl = float(hg.val_loss)
        _say(False, f"meta-iteration {k:3d}: validation loss {vl:.4f}  "
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


# ----------------------------------------------------------------- parser
def build_parser():
    p = _Parser(prog="revtrain", description="Train recurrent networks with memory-lean, "
                "exactly reversible backpropagation through time.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = TRAIN_DEFAULTS
    t = sub.add_parser("train", help="train a character-level model",
                       description="Train a character-level language model (default: RevLSTM "
                       "with reversible BPTT on the built-in corpus, the text of the standard "
                       "library's pydoc_data.topics) and print a summary.")
    t.add_argument("--model", choices=list(MODELS), default=d["model"],
                   help="model family (default: %(default)s)")
    t.add_argument("--hidden", type=_pos_int, default=d["hidden"],
                   help="hidden units (default: %(default)s)")
    t.add_argument("--seq-len", type=_pos_int, default=d["seq_len"],
                   help="truncated-BPTT window length (default: %(default)s)")
    t.add_argument("--batch-size", type=_pos_int, default=d["batch_size"],
                   help="parallel text streams (default: %(default)s)")
    t.add_argument("--bptt", choices=BPTT_MODES, default=None,
                   help="BPTT mode (default: reversible for reversible models, else standard)")
    t.add_argument("--steps", type=_pos_int, default=d["steps"],
                   help="optimiser steps (default: %(default)s)")
    t.add_argument("--lr", type=_pos_float, default=d["lr"],
                   help="learning rate (default: per model, " + ", ".join(
                       f"{k} {v}" for k, v in DEFAULT_LR.items()) + ")")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="Adam or exact SGD with momentum 0.9 (default: %(default)s)")
    t.add_argument("--grad-clip", type=_pos_float, default=d["grad_clip"],
                   help="clip the gradient to this global norm (default: %(default)s)")
    t.add_argument("--state", choices=("carry", "reset"), default=None,
                   help="carry the final state of a window into the next one (truncated "
                   "BPTT) or start every window from zeros (default: reset for "
                   + " and ".join(DEFAULT_STATE) + ", carry for the others)")
    t.add_argument("--seed", type=_nonneg_int, default=d["seed"],
                   help="seed of the initial weights (default: %(default)s)")
    t.add_argument("--out", default=d["out"],
                   help="where to save the trained model; '' to not save "
                   "(default: %(default)s)")
    t.add_argument("--data", default=None, metavar="PATH",
                   help="a UTF-8 text file to train on (default: the built-in corpus)")
    t.add_argument("--val-chars", type=_nonneg_int, default=d["val_chars"],
                   help="validate during training on at most this many characters, 0 for "
                   "all; the final summary uses all (default: %(default)s)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate text from a saved model",
                       description="Generate text from a model saved by 'revtrain train'.")
    s.add_argument("--model-file", required=True, metavar="PATH", help="saved model (.npz)")
    s.add_argument("--length", type=_nonneg_int, default=300,
                   help="characters to generate (default: %(default)s)")
    s.add_argument("--prime", default=None, metavar="TEXT",
                   help="text to start from (default: a newline)")
    s.add_argument("--temperature", type=_pos_float, default=0.8,
                   help="sampling temperature (default: %(default)s)")
    s.add_argument("--seed", type=_nonneg_int, default=0, help="sampling seed")
    s.set_defaults(func=cmd_sample)

    f = sub.add_parser("profile", help="memory/time of standard, checkpointed and "
                       "reversible BPTT", description="Measure the memory and time of "
                       "standard, checkpointed and reversible BPTT across sequence lengths; "
                       "print a table and write markdown and PNG plots.")
    f.add_argument("--lengths", type=_pos_int, nargs="+", default=[100, 300, 1000],
                   metavar="T", help="sequence lengths (default: 100 300 1000)")
    f.add_argument("--batch-size", type=_pos_int, default=32, help="(default: %(default)s)")
    f.add_argument("--hidden", type=_pos_int, default=256, help="(default: %(default)s)")
    f.add_argument("--vocab", type=_pos_int, default=64, help="(default: %(default)s)")
    f.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="restrict to these model classes or labels")
    f.add_argument("--rss", action="store_true",
                   help="also measure peak resident memory (memory-profiler)")
    f.add_argument("--isolate", action="store_true",
                   help="measure each configuration in a fresh process")
    f.add_argument("--max-seconds", type=_pos_float, default=None,
                   help="skip longer sequences of a configuration after one takes this long")
    f.add_argument("--out", default="profiling/results", metavar="DIR",
                   help="folder for the markdown table and plots (default: %(default)s)")
    f.add_argument("--quiet", action="store_true", help="no progress output")
    f.set_defaults(func=cmd_profile)

    h = sub.add_parser("hypertune", help="learn a learning-rate schedule by hypergradient",
                       description="Learn a per-iteration learning-rate schedule of exact "
                       "SGD with momentum by hypergradients through reversed training "
                       "(Maclaurin et al. 2015) on the built-in corpus.")
    h.add_argument("--model", choices=list(MODELS), default="rnn",
                   help="(default: %(default)s)")
    h.add_argument("--hidden", type=_pos_int, default=16, help="(default: %(default)s)")
    h.add_argument("--seq-len", type=_pos_int, default=20, help="(default: %(default)s)")
    h.add_argument("--batch-size", type=_pos_int, default=16, help="(default: %(default)s)")
    h.add_argument("--iters", type=_pos_int, default=100,
                   help="training iterations per run (default: %(default)s)")
    h.add_argument("--meta-iters", type=_nonneg_int, default=30,
                   help="meta-iterations (default: %(default)s)")
    h.add_argument("--lr", type=_pos_float, default=1.0,
                   help="initial constant learning rate (default: %(default)s)")
    h.add_argument("--momentum", type=_fraction, default=0.9,
                   help="momentum in (0, 1) (default: %(default)s)")
    h.add_argument("--meta-lr", type=_pos_float, default=0.1,
                   help="Adam step on the log learning rates (default: %(default)s)")
    h.add_argument("--seed", type=_nonneg_int, default=0, help="(default: %(default)s)")
    h.add_argument("--data", default=None, metavar="PATH",
                   help="a UTF-8 text file (default: the built-in corpus)")
    h.add_argument("--out", default=None, metavar="PATH",
                   help="write the learned schedule (text, one rate per line)")
    h.set_defaults(func=cmd_hypertune)
    return p


def main(argv=None):
    """Run the ``revtrain`` command; returns the exit code."""
    parser = build_parser()
    a = parser.parse_args(argv)
    prog = f"revtrain {a.command}"
    try:
        return a.func(a)
    except UsageError as e:
        print(f"{prog}: error: {e} (see {prog} --help)", file=sys.stderr)
        return 2
    except Unavailable as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, FloatingPointError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
