"""``revtrain train``: train a character-level model and print a summary."""
import os
import time

from ._common import (MODELS, BPTT_MODES, DEFAULT_LR, DEFAULT_STATE, SGD_LR_FACTOR,
                      TRAIN_DEFAULTS, UsageError, pos_int, nonneg_int, pos_float, model_class,
                      make_optimizer, fmt_bytes, say)


def run(a):
    from ..data import char_corpus, DataError, text_windows
    from ..trainer import Trainer

    try:
        corpus = char_corpus(a.data)
        n_needed = a.batch_size + 1
        if len(corpus.train) < n_needed or len(corpus.val) < 2:
            raise DataError(f"the text is too short: {len(corpus.train)} training characters "
                            f"for --batch-size {a.batch_size} (needs at least {n_needed})")
    except DataError as e:
        raise UsageError(f"--data: {e}") from None
    cls_name = MODELS[a.model]
    cls = model_class(cls_name)
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
    opt = make_optimizer(a.optimizer, lr)
    trainer = Trainer(model, opt, bptt=bptt, seed=a.seed)
    src = "built-in corpus (pydoc_data.topics)" if a.data is None else a.data
    # the first window (windows are shorter than --seq-len when the text is)
    x, y = next(text_windows(corpus.train, a.batch_size, a.seq_len))
    win = x.shape[0]
    say(a.quiet, f"training {cls_name}(hidden={a.hidden}) with {bptt} BPTT on {src}: "
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
    print(f"  memory for BPTT   {fmt_bytes(held)} held per {win}-step window ({bptt})")
    if std is not None and bptt != "standard":
        print(f"  standard BPTT     would hold {fmt_bytes(std)}{ratio}")
    if a.out:
        print(f"  saved to          {a.out}")
    return 0


def add_parser(sub):
    """Add the subcommand to ``sub`` (an argparse subparsers object)."""
    d = TRAIN_DEFAULTS
    t = sub.add_parser("train", help="train a character-level model",
                       description="Train a character-level language model (default: RevLSTM "
                       "with reversible BPTT on the built-in corpus, the text of the standard "
                       "library's pydoc_data.topics) and print a summary.")
    t.add_argument("--model", choices=list(MODELS), default=d["model"],
                   help="model family (default: %(default)s)")
    t.add_argument("--hidden", type=pos_int, default=d["hidden"],
                   help="hidden units (default: %(default)s)")
    t.add_argument("--seq-len", type=pos_int, default=d["seq_len"],
                   help="truncated-BPTT window length (default: %(default)s)")
    t.add_argument("--batch-size", type=pos_int, default=d["batch_size"],
                   help="parallel text streams (default: %(default)s)")
    t.add_argument("--bptt", choices=BPTT_MODES, default=None,
                   help="BPTT mode (default: reversible for reversible models, else standard)")
    t.add_argument("--steps", type=pos_int, default=d["steps"],
                   help="optimiser steps (default: %(default)s)")
    t.add_argument("--lr", type=pos_float, default=d["lr"],
                   help="learning rate (default: per model, " + ", ".join(
                       f"{k} {v}" for k, v in DEFAULT_LR.items()) + ")")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="Adam or exact SGD with momentum 0.9 (default: %(default)s)")
    t.add_argument("--grad-clip", type=pos_float, default=d["grad_clip"],
                   help="clip the gradient to this global norm (default: %(default)s)")
    t.add_argument("--state", choices=("carry", "reset"), default=None,
                   help="carry the final state of a window into the next one (truncated "
                   "BPTT) or start every window from zeros (default: reset for "
                   + " and ".join(DEFAULT_STATE) + ", carry for the others)")
    t.add_argument("--seed", type=nonneg_int, default=d["seed"],
                   help="seed of the initial weights (default: %(default)s)")
    t.add_argument("--out", default=d["out"],
                   help="where to save the trained model; '' to not save "
                   "(default: %(default)s)")
    t.add_argument("--data", default=None, metavar="PATH",
                   help="a UTF-8 text file to train on (default: the built-in corpus)")
    t.add_argument("--val-chars", type=nonneg_int, default=d["val_chars"],
                   help="validate during training on at most this many characters, 0 for "
                   "all; the final summary uses all (default: %(default)s)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.set_defaults(func=run)
