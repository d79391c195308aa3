"""``revtrain sample``: generate text from a saved model."""
import os
import sys

from ._common import UsageError, nonneg_int, pos_float


def run(a):
    from ..trainer import Trainer, ModelFileError
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


def add_parser(sub):
    """Add the subcommand to ``sub`` (an argparse subparsers object)."""
    s = sub.add_parser("sample", help="generate text from a saved model",
                       description="Generate text from a model saved by 'revtrain train'.")
    s.add_argument("--model-file", required=True, metavar="PATH", help="saved model (.npz)")
    s.add_argument("--length", type=nonneg_int, default=300,
                   help="characters to generate (default: %(default)s)")
    s.add_argument("--prime", default=None, metavar="TEXT",
                   help="text to start from (default: a newline)")
    s.add_argument("--temperature", type=pos_float, default=0.8,
                   help="sampling temperature (default: %(default)s)")
    s.add_argument("--seed", type=nonneg_int, default=0, help="sampling seed")
    s.set_defaults(func=run)
