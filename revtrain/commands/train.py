"""``revtrain train``: train (or resume) a character-level model and print a summary.

Exit codes: 0 done, 1 failure while running, 2 usage error, 3 training
diverged (the last good checkpoint is kept), 130 interrupted (the last
completed step is saved).

Under ``mpiexec -n N`` (N > 1) it trains data parallel
(:class:`~revtrain.Trainer` with ``comm``): rank 0 checks the options, reads
the text and the ``--resume`` file and sends them to the others, and writes
every output; the other ranks print nothing.
"""
import os
import sys
import time

from ._common import (MODELS, BPTT_MODES, DEFAULT_LR, DEFAULT_STATE, SGD_LR_FACTOR,
                      TRAIN_DEFAULTS, UsageError, pos_int, nonneg_int, pos_float, model_class,
                      make_optimizer, fmt_bytes, say, check_out_path, show, load_trainer,
                      add_stack_options, make_model, stack_text, Unavailable,
                      micro_batches_for)

#: Exit code of a run stopped because training diverged.
EXIT_DIVERGED = 3
#: Exit code of a run stopped by SIGINT (Ctrl-C), after saving the last completed step.
EXIT_INTERRUPTED = 130
#: Options a resumed run takes from the model file (given again, they must agree with it).
SAVED_OPTIONS = ("model", "hidden", "seq_len", "batch_size", "bptt", "lr", "optimizer",
                 "grad_clip", "state", "seed", "data", "val_chars", "lr_schedule",
                 "layers", "embed", "dropout", "dtype", "micro_batches")
#: Options added after files were first written: a file without them ran with these values.
LATER_OPTIONS = {"layers": 1, "embed": None, "dropout": 0.0, "dtype": "float64",
                 "micro_batches": None}


def _flag(name):
    return "--" + name.replace("_", "-")


# --------------------------------------------------------------- options
def _resolve(a, n_procs=1):
    """The options of a new run: what was given, defaults for the rest (a dict)."""
    o = {k: getattr(a, k) for k in SAVED_OPTIONS}
    for k in ("model", "hidden", "seq_len", "batch_size", "grad_clip", "seed", "val_chars",
              "layers", "dropout"):
        if o[k] is None:
            o[k] = TRAIN_DEFAULTS[k]
    if o["data"] is not None:
        o["data"] = os.path.abspath(o["data"])
    if o["lr_schedule"] is not None:
        if o["optimizer"] == "adam":
            raise UsageError("--lr-schedule sets exact SGD's per-step learning rates; it does "
                             "not go with --optimizer adam")
        if o["lr"] is not None:
            raise UsageError("give --lr or --lr-schedule, not both")
        o["lr_schedule"] = os.path.abspath(o["lr_schedule"])
        o["optimizer"] = "sgd"
    if o["optimizer"] is None:
        o["optimizer"] = "adam"
    if o["lr"] is None and o["lr_schedule"] is None:
        o["lr"] = DEFAULT_LR.get(o["model"], 0.01) * (1.0 if o["optimizer"] == "adam"
                                                     else SGD_LR_FACTOR)
    if o["state"] is None:
        o["state"] = DEFAULT_STATE.get(o["model"], "carry")
    cls = model_class(MODELS[o["model"]])
    if o["dtype"] is None:
        o["dtype"] = (TRAIN_DEFAULTS["dtype"] if getattr(cls, "supports_float32", False)
                      else "float64")
    modes = tuple(getattr(cls, "bptt_modes", BPTT_MODES))
    if o["bptt"] is None:
        o["bptt"] = "reversible" if "reversible" in modes else modes[0]
    elif o["bptt"] not in modes:
        raise UsageError(f"--bptt {o['bptt']} is not supported by {cls.__name__} "
                         f"(it supports: {', '.join(modes)})")
    o["steps"] = TRAIN_DEFAULTS["steps"] if a.steps is None else a.steps
    o["micro_batches"] = micro_batches_for(o["micro_batches"], o["batch_size"], n_procs)
    return o


def _check_resumed_micro(o, n_procs, resume):
    """The micro-batches of the run in ``resume`` (``o``) must suit ``n_procs`` processes."""
    M = o["micro_batches"]
    if M is None:
        if n_procs > 1:
            raise UsageError(f"--resume: the run in {resume!r} was trained without "
                             "micro-batches (the whole batch at once), which cannot be split "
                             f"over {n_procs} MPI processes; resume it without mpiexec")
        return
    if M % n_procs:
        raise UsageError(f"--resume: the run in {resume!r} uses {M} micro-batches, which "
                         f"{n_procs} MPI processes cannot share equally; resume it on a "
                         f"number of processes that divides {M} (or without mpiexec)")
    micro_batches_for(M, o["batch_size"], n_procs)


def _resumed(a, n_procs=1):
    """``(options, trainer)`` of ``--resume``: the file's options; a contradiction is a usage error."""
    tr = load_trainer(a.resume, "--resume")
    o = tr.metadata.get("cli")
    if isinstance(o, dict):
        o = {**LATER_OPTIONS, **o}
    if not isinstance(o, dict) or not set(SAVED_OPTIONS) <= set(o):
        raise UsageError(f"--resume: {a.resume!r} was not written by 'revtrain train' (it "
                         "does not hold the run's options)")
    for k in SAVED_OPTIONS:
        given = getattr(a, k)
        if given is None:
            continue
        if k in ("data", "lr_schedule"):
            given = os.path.abspath(given)
        if k == "data" and o[k] is not None:
            continue        # the text may have moved: its content is checked against the run
        if given != o[k]:
            shown = show(o[k], "the built-in corpus" if k == "data" else "none")
            raise UsageError(f"{_flag(k)} {getattr(a, k)} contradicts the run in {a.resume!r} "
                             f"({_flag(k)} {shown}); leave it out to use the file's")
    o = dict(o)
    if a.data is not None:
        o["data"] = os.path.abspath(a.data)
    o["steps"] = o["steps"] if a.steps is None else a.steps
    if o["steps"] <= tr.steps_done:
        raise UsageError(f"--steps {o['steps']}: the run in {a.resume!r} is already at step "
                         f"{tr.steps_done}; give a larger total")
    n_rates = getattr(tr.optimizer, "n_iters", None)
    if n_rates is not None and o["steps"] > n_rates:
        raise UsageError(f"--steps {o['steps']} is beyond the run's learning-rate schedule of "
                         f"{n_rates} rates")
    _check_resumed_micro(o, n_procs, a.resume)
    return o, tr


def _corpus(o, batch_size):
    from ..data import char_corpus, DataError
    try:
        corpus = char_corpus(o["data"])
        n_needed = batch_size + 1
        if len(corpus.train) < n_needed or len(corpus.val) < 2:
            raise DataError(f"the text is too short: {len(corpus.train)} training characters "
                            f"for --batch-size {batch_size} (needs at least {n_needed})")
    except DataError as e:
        raise UsageError(f"--data: {e}") from None
    return corpus


def _optimizer(o):
    if o["lr_schedule"] is None:
        return make_optimizer(o["optimizer"], o["lr"])
    from ..schedule import load_lr_schedule
    try:
        lr, info = load_lr_schedule(o["lr_schedule"])
    except ValueError as e:
        raise UsageError(f"--lr-schedule: {e}") from None
    if len(lr) < o["steps"]:
        raise UsageError(f"--lr-schedule: the schedule has {len(lr)} rates, fewer than "
                         f"--steps {o['steps']}")
    _note_schedule_model(info, o)
    return model_class("ExactSGD", "optimizer")(lr, info.get("momentum", 0.9))


#: Header keys of a schedule from ``hypertune --out`` and the train options they match.
_SCHEDULE_MODEL_KEYS = (("model", "model"), ("hidden", "hidden"), ("layers", "layers"),
                        ("embed", "embed"), ("dropout", "dropout"), ("dtype", "dtype"))


def _note_schedule_model(info, o):
    """Say on stderr when the schedule was learned for another model (allowed: a proxy)."""
    differ = [f"{key} {info[key]!r} (training: {o[opt]!r})" for key, opt in _SCHEDULE_MODEL_KEYS
              if key in info and info[key] != o.get(opt)]
    if differ:
        print(f"note: --lr-schedule {o['lr_schedule']} was learned for a different model: "
              + ", ".join(differ) + "; its rates are used as they are", file=sys.stderr)


def _new_trainer(o, corpus, comm=None):
    from ..trainer import Trainer
    model = make_model(o["model"], corpus.vocab.size, o["hidden"], o["layers"], o["embed"],
                       o["dropout"], o["dtype"])
    return Trainer(model, _optimizer(o), bptt=o["bptt"], seed=o["seed"], metadata={"cli": o},
                   comm=comm, micro_batches=o["micro_batches"])


# ------------------------------------------------------------------- run
def _world():
    """``MPI.COMM_WORLD`` under ``mpiexec -n N > 1``, else None (mpi4py missing: exit 1)."""
    from ..distributed import world
    try:
        return world()
    except ImportError as e:
        raise Unavailable(str(e)) from None


def run(a):
    comm = _world()
    if comm is None:
        o, trainer, corpus, out = _setup(a)
        return _train(a, o, trainer, corpus, out)
    from ..distributed import comm_size, on_root
    from ..trainer import Trainer
    from .. import trainer_file

    def plan():          # rank 0: check the options, read the text and the --resume file
        o, tr, corpus, out = _setup(a, comm_size(comm))
        saved = trainer_file.saved_form(tr, tr._state) if tr.steps_done or a.resume else None
        return o, corpus, out, saved

    o, corpus, out, saved = on_root(plan, comm)
    if saved is None:
        trainer = _new_trainer(o, corpus, comm)
    else:
        trainer = trainer_file.from_saved(Trainer, *saved, a.resume, comm)
    trainer.metadata["cli"] = dict(o)
    return _train(a, o, trainer, corpus, out, comm)


def _setup(a, n_procs=1):
    """``(options, trainer, corpus, out)`` of a run, every option checked (UsageError)."""
    if a.save_every is not None and a.out == "":
        raise UsageError("--save-every needs a file to write: give --out PATH")
    if a.resume:
        o, trainer = _resumed(a, n_procs)
        out = a.resume if a.out is None else a.out
    else:
        o, trainer = _resolve(a, n_procs), None
        out = TRAIN_DEFAULTS["out"] if a.out is None else a.out
    check_out_path(out, "--out")
    if a.log:
        check_out_path(a.log, "--log")
    _check_distinct(out, a.log, o["data"])
    corpus = _corpus(o, o["batch_size"])
    if trainer is None:
        trainer = _new_trainer(o, corpus)
    else:
        _check_same_text(trainer, corpus, o, a.resume)
    trainer.metadata["cli"] = dict(o)
    return o, trainer, corpus, out


def _check_distinct(out, log, data):
    """--out, --log and --data must be different files (else one would overwrite another)."""
    paths = {"--out": out, "--log": log, "--data": data}
    named = [(k, os.path.abspath(v)) for k, v in paths.items() if v]
    for i, (k1, p1) in enumerate(named):
        for k2, p2 in named[i + 1:]:
            if p1 == p2 or (os.path.exists(p1) and os.path.exists(p2)
                            and os.path.samefile(p1, p2)):
                raise UsageError(f"{k1} and {k2} name the same file {p1!r}; writing one would "
                                 "destroy the other")


def _check_same_text(trainer, corpus, o, resume):
    """A resumed run must read the text it was trained on (same characters, same content)."""
    from ..sources import TextSource
    name = show(o["data"], "the built-in corpus")
    if trainer.vocab != corpus.vocab or (
            trainer.data_fingerprint is not None
            and TextSource(corpus.train).fingerprint() != trainer.data_fingerprint):
        raise UsageError(f"--resume: the text in {name} is not the text the run in {resume!r} "
                         "was trained on (it changed); resuming would not continue that run. "
                         "Give the original text with --data")


def _describe(o, trainer, corpus, resumed, n_procs=1):
    from ..data import text_windows
    cls_name = type(trainer.model).__name__
    src = "built-in corpus (pydoc_data.topics)" if o["data"] is None else o["data"]
    x, _ = next(text_windows(corpus.train, o["batch_size"], o["seq_len"]))
    opt = (f"{o['optimizer']} lr {o['lr']}" if o["lr_schedule"] is None
           else f"sgd lr schedule {o['lr_schedule']}")
    verb = f"resuming at step {trainer.steps_done + 1} of" if resumed else "training"
    stack = stack_text(o["layers"], o["embed"], o["dropout"])
    stack += f", {o['dtype']}" if o.get("dtype", "float64") != "float64" else ""
    return (f"{verb} {cls_name}(hidden={o['hidden']}{stack}) with {o['bptt']} BPTT on {src}: "
            f"{len(corpus.train)} train / {len(corpus.val)} validation chars, vocabulary "
            f"{corpus.vocab.size}; {o['steps']} steps of {x.shape[0]} x {o['batch_size']}, "
            f"{opt}, state "
            + ("reset every window" if o["state"] == "reset" else "carried between windows")
            + ("" if o.get("micro_batches") is None else
               f"; {o['micro_batches']} micro-batches summed exactly"
               + (f" over {n_procs} MPI processes (the bits depend on the number of "
                  "micro-batches, not of processes)" if n_procs > 1 else "")))


def _train(a, o, trainer, corpus, out, comm=None):
    from ..distributed import DeferredInterrupt, comm_size, is_root, on_root
    from ..errors import DivergenceError
    root = is_root(comm)
    resumed = trainer.steps_done > 0
    say(a.quiet or not root, _describe(o, trainer, corpus, resumed, comm_size(comm)))
    remaining = o["steps"] - trainer.steps_done
    carry = o["state"] == "carry"
    t0 = time.perf_counter()
    print_every = a.print_every or max(1, remaining // 20)
    try:
        hist = trainer.fit(corpus, steps=remaining, batch_size=o["batch_size"],
                           seq_len=o["seq_len"], quiet=a.quiet,
                           val_tokens=o["val_chars"] or None, grad_clip=o["grad_clip"],
                           eval_every=max(1, o["steps"] // 5), carry_state=carry,
                           save_every=a.save_every, save_path=out or None, log=a.log,
                           print_every=print_every)
    except KeyboardInterrupt as e:
        if comm is not None and not getattr(e, "all_ranks", False):
            raise           # not agreed by the ranks: the command ends the job (MPI_Abort)
        return _interrupted(trainer, o, out) if root else EXIT_INTERRUPTED
    except DivergenceError as e:
        return _diverged(e, o, out, trainer) if root else EXIT_DIVERGED
    sigint = DeferredInterrupt(comm)    # under MPI, Ctrl-C waits until the ranks are in step
    try:
        ev = on_root(lambda: trainer.evaluate(corpus.val, batch_size=o["batch_size"],
                                              seq_len=o["seq_len"], carry_state=carry), comm)
        total = time.perf_counter() - t0
        if comm is not None:
            sigint.agree(False)         # Ctrl-C on any rank: all stop here, training complete
        if out:
            _save_final(trainer, out)   # with comm: every rank calls it, rank 0 writes
    except KeyboardInterrupt as e:
        if comm is not None and not getattr(e, "all_ranks", False):
            raise           # pragma: no cover - SIGINT is deferred under MPI
        if comm is not None and out:
            _save_final(trainer, out)   # every rank: rank 0 writes the trained model
        return _interrupted(trainer, o, out) if root else EXIT_INTERRUPTED
    finally:
        sigint.restore()
    if root:
        _summary(o, trainer, hist, ev, corpus, total, out, resumed)
    return 0


def _save_final(trainer, out):
    from ..distributed import mark_all_ranks
    try:
        trainer.save(out)
    except OSError as e:
        err = RuntimeError(f"{e}; the trained model was NOT saved")
        if getattr(e, "all_ranks", False):
            mark_all_ranks(err)
        raise err from None


def _interrupted(trainer, o, out):
    """Ctrl-C: make sure the last completed step is in ``out`` and say how to go on."""
    import sys
    n = trainer.steps_done
    if out and trainer.last_saved != (out, n):
        try:
            trainer.save(out)
        except (OSError, KeyboardInterrupt):
            out = None
    where = (f"saved step {n} to {out}; continue with: revtrain train --resume {out} "
             f"--steps {o['steps']}") if out else "nothing saved"
    print(f"\nrevtrain train: interrupted after step {n}: {where}", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


def _diverged(e, o, out, trainer):
    import sys
    hint = (f"try a smaller --lr (was {o['lr']})" if o["lr_schedule"] is None
            else "try a schedule with smaller rates") + f" or --grad-clip (was {o['grad_clip']})"
    kept = "nothing was saved"
    if trainer.last_saved is not None and out and trainer.last_saved[0] == out:
        kept = f"the last good checkpoint (step {trainer.last_saved[1]}) is in {out}"
    print(f"revtrain train: error: {e.reason}; {hint}. {kept[0].upper() + kept[1:]}.",
          file=sys.stderr)
    return EXIT_DIVERGED


def _summary(o, trainer, hist, ev, corpus, total, out, resumed):
    from ..data import text_windows
    model, bptt = trainer.model, o["bptt"]
    cls_name = type(model).__name__
    x, y = next(text_windows(corpus.train, o["batch_size"], o["seq_len"]))
    held = max(hist.stored_bytes)
    M = o.get("micro_batches")
    per = f"{x.shape[0]}-step window"
    if M is not None:       # held per micro-batch (they run one after another): compare alike
        rows = o["batch_size"] // M
        x, y = x[:, :rows], y[:, :rows]
        per += f" and micro-batch of {rows} rows"
    if bptt == "standard":
        std = held
    else:   # what standard BPTT would hold for one window of the same size
        try:
            std = model.loss_and_grad(trainer.theta, x, y, bptt="standard",
                                      return_stats=True)[2].stored_bytes
        except (ValueError, NotImplementedError):
            std = None
    last = hist.loss[-10:]
    stack = stack_text(o["layers"], o["embed"], o["dropout"])
    stack += f", {o['dtype']}" if o.get("dtype", "float64") != "float64" else ""
    print(f"\nsummary ({cls_name}, hidden {o['hidden']}{stack}, {bptt} BPTT, "
          f"{len(hist.loss)} steps, seed {o['seed']})")
    print(f"  train loss        {hist.loss[-1]:.4f} nats/char (mean of last {len(last)} steps: "
          f"{sum(last) / len(last):.4f})")
    print(f"  validation        {ev['bpc']:.4f} bits/char "
          f"(loss {ev['loss']:.4f} nats, all {len(corpus.val)} validation chars)")
    print(f"  time              {hist.time[-1]:.1f} s in training steps (first-call "
          f"compilation included" + (", all runs" if resumed else "")
          + f"), {total:.1f} s {'for this run ' if resumed else ''}with validation")
    ratio = f" ({std / held:.1f}x more)" if std and held else ""
    print(f"  memory for BPTT   {fmt_bytes(held)} held per {per} ({bptt})")
    if std is not None and bptt != "standard":
        print(f"  standard BPTT     would hold {fmt_bytes(std)}{ratio}")
    if out:
        print(f"  saved to          {out}")


# ---------------------------------------------------------------- parser
def add_parser(sub):
    """Add the subcommand to ``sub`` (an argparse subparsers object)."""
    d = TRAIN_DEFAULTS
    t = sub.add_parser("train", help="train a character-level model",
                       description="Train a character-level language model (default: RevLSTM "
                       "with reversible BPTT on the built-in corpus, the text of the standard "
                       "library's pydoc_data.topics) and print a summary. Exit codes: 0 done, "
                       "1 failure, 2 usage error, 3 training diverged (the last good "
                       "checkpoint is kept), 130 interrupted (the last completed step is "
                       "saved to --out). Under 'mpiexec -n N' (N > 1, the mpi extra) it "
                       "trains data parallel: rank 0 reads the data and writes every "
                       "output, the other ranks print nothing.")
    t.add_argument("--model", choices=list(MODELS), default=None,
                   help=f"model family (default: {d['model']})")
    t.add_argument("--hidden", type=pos_int, default=None,
                   help=f"hidden units (default: {d['hidden']})")
    add_stack_options(t)
    t.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="float type of the activations and gradients (the fixed-point state "
                   "stays int64, so reversal stays exact; parameters stay float64 for the "
                   f"optimiser) (default: {d['dtype']})")
    t.add_argument("--seq-len", type=pos_int, default=None,
                   help=f"truncated-BPTT window length (default: {d['seq_len']})")
    t.add_argument("--batch-size", type=pos_int, default=None,
                   help=f"parallel text streams (default: {d['batch_size']})")
    t.add_argument("--bptt", choices=BPTT_MODES, default=None,
                   help="BPTT mode (default: reversible for reversible models, else standard)")
    t.add_argument("--steps", type=pos_int, default=None,
                   help=f"optimiser steps in all; with --resume, the total to reach "
                   f"(default: {d['steps']}, or the resumed run's)")
    t.add_argument("--lr", type=pos_float, default=None,
                   help="learning rate (default: per model, " + ", ".join(
                       f"{k} {v}" for k, v in DEFAULT_LR.items()) + f"; x{SGD_LR_FACTOR:g} "
                   "for sgd)")
    t.add_argument("--lr-schedule", default=None, metavar="FILE",
                   help="per-step learning rates for exact SGD, e.g. the file 'revtrain "
                   "hypertune --out FILE' writes (implies --optimizer sgd)")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default=None,
                   help="Adam or exact SGD with momentum 0.9 (default: adam)")
    t.add_argument("--grad-clip", type=pos_float, default=None,
                   help=f"clip the gradient to this global norm (default: {d['grad_clip']})")
    reset = " and ".join(DEFAULT_STATE)
    t.add_argument("--state", choices=("carry", "reset"), default=None,
                   help="carry the final state of a window into the next one (truncated "
                   "BPTT) or start every window from zeros (default: "
                   + (f"reset for {reset}, carry for the others)" if reset else "carry)"))
    t.add_argument("--seed", type=nonneg_int, default=None,
                   help=f"seed of the initial weights (default: {d['seed']})")
    t.add_argument("--out", default=None,
                   help="where to save the trained model and checkpoints; '' to not save "
                   f"(default: {d['out']}, or the --resume file)")
    t.add_argument("--save-every", type=pos_int, default=None, metavar="N",
                   help="also write a checkpoint to --out every N steps")
    t.add_argument("--resume", default=None, metavar="PATH",
                   help="continue the run saved in PATH (its data, model and options) to "
                   "--steps in all")
    t.add_argument("--data", default=None, metavar="PATH",
                   help="a UTF-8 text file to train on (default: the built-in corpus)")
    t.add_argument("--val-chars", type=nonneg_int, default=None,
                   help="validate during training on at most this many characters, 0 for "
                   f"all; the final summary uses all (default: {d['val_chars']})")
    t.add_argument("--log", default=None, metavar="FILE",
                   help="append one JSON line per validation to FILE (step, loss, "
                   "validation loss and bits/char, time)")
    t.add_argument("--print-every", type=pos_int, default=None, metavar="N",
                   help="when the output is not a terminal, print a progress line every N "
                   "steps (default: 20 lines per run)")
    t.add_argument("--micro-batches", type=pos_int, default=None, metavar="M",
                   help="cut each batch into M micro-batches (M must divide --batch-size) "
                   "and sum their gradients exactly in fixed point (int64 at 2**-40), so the "
                   "run gives the same bits without MPI and under 'mpiexec -n N' for every N "
                   "dividing M: the bits depend on M, not on N (saved with the run, kept on "
                   "--resume). Default: none (the whole batch at once) in one process; N "
                   "under 'mpiexec -n N' with N > 1 (give the same M to compare or resume "
                   "runs on different N)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.set_defaults(func=run)
