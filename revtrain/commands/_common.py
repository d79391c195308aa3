"""What the ``revtrain`` subcommands share: model names, defaults, errors, argument types."""
import argparse
import math

MODELS = {  # command-line name -> class name (looked up in revtrain at call time)
    "rnn": "RNN", "lstm": "LSTM", "gru": "GRU", "momentum-rnn": "MomentumRNN",
    "revgru": "RevGRU", "revlstm": "RevLSTM",
}
REVERSIBLE = ("momentum-rnn", "revgru", "revlstm")
BPTT_MODES = ("standard", "checkpoint", "reversible")

#: Default Adam learning rate per model.
#: momentum-rnn 0.015: on the built-in corpus (300 steps, H=128, carried state) 0.01 gave
#: 2.78, 0.015 2.37-2.48 (seeds 0-3), 0.02 2.50-2.63 (seeds 0-1), 0.025 2.85 validation bits/char.
DEFAULT_LR = {"rnn": 0.01, "lstm": 0.02, "gru": 0.02, "momentum-rnn": 0.015,
              "revgru": 0.01, "revlstm": 0.01}
#: Default handling of the recurrent state between truncated-BPTT windows (model -> "reset");
#: every model's state is bounded (MomentumRNN's h = beta h + (1-beta) v and RevLSTM's
#: h = p h + (1-p) o tanh(c) are convex combinations), so every model carries it.
DEFAULT_STATE = {}

#: Exact SGD (v = 0.9 v - 0.1 g, w += lr v, gradients clipped to norm 1) moves a weight far
#: less per unit of lr than Adam does: its default rate is this factor times Adam's (rough).
SGD_LR_FACTOR = 300.0

TRAIN_DEFAULTS = dict(model="revlstm", hidden=128, seq_len=64, batch_size=32, steps=300,
                      lr=None, seed=0, out="revtrain_model.npz", val_chars=20000,
                      grad_clip=1.0, layers=1, embed=None, dropout=0.0, dtype="float32")


class UsageError(Exception):
    """A bad argument found after parsing (exit code 2)."""


class Unavailable(Exception):
    """A part of revtrain this command needs is not installed yet (exit code 1)."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------ arg types
def arg_type(convert, ok, what):
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


pos_int = arg_type(int, lambda v: v >= 1, "a positive int")
nonneg_int = arg_type(int, lambda v: v >= 0, "an int >= 0")
pos_float = arg_type(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
nonneg_float = arg_type(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
fraction = arg_type(float, lambda v: 0.0 < v < 1.0, "a number in (0, 1)")
rate = arg_type(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def add_stack_options(parser, masks="one mask per window, fresh every step"):
    """``--layers``, ``--embed`` and ``--dropout`` of a command that builds a model.

    Their defaults are None (not given); :data:`TRAIN_DEFAULTS` holds the values
    used. ``masks`` says in ``--dropout``'s help how the masks are drawn.
    """
    d = TRAIN_DEFAULTS
    parser.add_argument("--layers", type=pos_int, default=None, metavar="L",
                        help=f"stacked layers of the cell; layer l > 0 reads layer l-1's "
                        f"hidden state (default: {d['layers']})")
    parser.add_argument("--embed", type=pos_int, default=None, metavar="E",
                        help="learn an E-wide character embedding that layer 0 reads "
                        "(default: none, one-hot characters)")
    parser.add_argument("--dropout", type=rate, default=None, metavar="P",
                        help="variational dropout rate in [0, 1) on the embedding, between "
                        f"layers and on the top layer's output ({masks}; not on the "
                        "recurrent state, never when evaluating) "
                        f"(default: {d['dropout']})")


# ---------------------------------------------------------------- helpers
def model_class(name, what="model"):
    from ..model_file import find_class
    cls = find_class(name)
    if cls is None:
        raise Unavailable(f"{what} {name} is not available in this revtrain install yet")
    return cls


def make_model(name, vocab_size, hidden, layers=1, embed=None, dropout=0.0, dtype="float64"):
    """The character model ``--model name`` (vocabulary in and out) with the stack options.

    A model class that does not stack (``stackable`` False) given ``--layers``
    > 1, ``--embed`` or ``--dropout`` > 0, or sizes the class refuses, is a
    :class:`UsageError` naming the option. Stack arguments are passed only when
    they differ from the defaults.
    """
    cls = model_class(MODELS[name])
    kw = {}
    if layers != 1:
        kw["n_layers"] = layers
    if embed is not None:
        kw["embed_dim"] = embed
    if dropout:
        kw["dropout"] = dropout
    stack_kw = dict(kw)
    if dtype != "float64":
        if not getattr(cls, "supports_float32", False):
            raise UsageError(f"--dtype {dtype}: {cls.__name__} computes in float64 only so far")
        kw["dtype"] = dtype
    if stack_kw and not getattr(cls, "stackable", True):
        flags = {"n_layers": "--layers", "embed_dim": "--embed", "dropout": "--dropout"}
        given = " ".join(f"{flags[k]} {v}" for k, v in stack_kw.items())
        raise UsageError(f"{given}: {cls.__name__} does not stack layers (it takes one layer, "
                         "no embedding and no dropout)")
    try:
        return cls(vocab_size, hidden, vocab_size, **kw)
    except ValueError as e:
        msg = str(e)
        for opt, arg, val in (("--hidden", "n_hidden", hidden), ("--layers", "n_layers", layers),
                              ("--embed", "embed_dim", embed), ("--dropout", "dropout", dropout)):
            if msg.startswith(arg) or f" {arg} " in msg:
                raise UsageError(f"{opt} {val}: {msg}") from None
        raise UsageError(f"--model {name}: {msg}") from None


def stack_text(layers=1, embed=None, dropout=0.0, sep=", "):
    """``, 2 layers, embed 64, dropout 0.2`` for the stack options that are not the default."""
    parts = []
    if layers != 1:
        parts.append(f"{layers} layers")
    if embed is not None:
        parts.append(f"embed {embed}")
    if dropout:
        parts.append(f"dropout {dropout:g}")
    return "".join(sep + p for p in parts)


def make_optimizer(name, lr):
    if name == "adam":
        return model_class("Adam", "optimizer")(lr)
    return model_class("ExactSGD", "optimizer")(lr, 0.9)


def fmt_bytes(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def say(quiet, *a):
    if not quiet:
        print(*a, flush=True)




def check_out_path(path, option="--out"):
    """Check, before any work, that a file can be written at ``path``; return it.

    See :func:`revtrain.model_file.check_writable`; its ValueError becomes a
    :class:`UsageError` naming ``option`` and the user's path.
    """
    from ..model_file import check_writable
    if not path:
        return path
    try:
        return check_writable(path)
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from None


def load_trainer(path, option):
    """The :class:`~revtrain.Trainer` saved at ``path`` (named ``option`` in messages).

    A missing file or a folder is a :class:`UsageError`; a corrupt file a
    RuntimeError (exit code 1).
    """
    import os
    from ..model_file import ModelFileError
    from ..trainer import Trainer
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise UsageError(f"{option}: {path!r} {what}")
    try:
        return Trainer.load(path)
    except ModelFileError as e:
        raise RuntimeError(f"{option}: {e}") from None


def load_char_model(path, option="--model-file"):
    """:func:`load_trainer` of a character model (another model is a :class:`UsageError`)."""
    tr = load_trainer(path, option)
    if tr.vocab is None:
        raise UsageError(f"{option}: {path!r} is not a character model")
    return tr


def check_out_dir(path, option="--out"):
    """Check, before any work, that ``path`` is (or can be made) a folder that takes files.

    An existing plain file, or a path under one, or a place that refuses new
    files is a :class:`UsageError` naming ``option`` and ``path``.
    """
    import os
    from ..model_file import check_writable
    if not path:
        return path
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option}: {path!r} is a file, not a folder")
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        check_writable(os.path.join(probe, "probe"))
    except ValueError as e:
        raise UsageError(f"{option}: cannot write into {path!r}: {e}") from None
    return path


def micro_batches_for(M, batch_size, n_procs):
    """The micro-batch count of a new run of ``train`` or ``hypertune``: ``--micro-batches M``
    as given, else ``n_procs`` under ``mpiexec -n N > 1`` and None (whole batches) in one
    process. A UsageError, saying where M came from, when M does not divide the batch size
    or is not a multiple of the number of processes."""
    if M is None:
        if n_procs == 1:
            return None
        if batch_size % n_procs:
            raise UsageError(f"under mpiexec -n {n_procs} the default is --micro-batches "
                             f"{n_procs}, which does not divide --batch-size {batch_size}: pass "
                             f"--micro-batches M (a multiple of {n_procs}) and a --batch-size "
                             "that M divides")
        return n_procs
    if batch_size % M:
        raise UsageError(f"--micro-batches {M} must divide --batch-size {batch_size} (equal "
                         "micro-batches)")
    if M % n_procs:
        raise UsageError(f"--micro-batches {M} must be a multiple of the number of MPI "
                         f"processes ({n_procs}): each process computes the same number of "
                         "micro-batches")
    return M


def show(value, none="none"):
    """An option's value for a message (``none`` for None)."""
    return none if value is None else str(value)
