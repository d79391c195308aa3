"""``revtrain sample``: generate text from a saved model."""
import sys

from ._common import UsageError, load_char_model, nonneg_int, nonneg_float


def run(a):
    if a.prime is not None and not a.prime:
        raise UsageError("--prime: must not be empty (leave it out to start from a newline)")
    tr = load_char_model(a.model_file)
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
                       description="Generate text from a model saved by 'revtrain train', "
                       "with the state handling it was trained with (carried, or reset every "
                       "window).")
    s.add_argument("--model-file", required=True, metavar="PATH", help="saved model (.npz)")
    s.add_argument("--length", type=nonneg_int, default=300,
                   help="characters to generate (default: %(default)s)")
    s.add_argument("--prime", default=None, metavar="TEXT",
                   help="text to start from (default: a newline)")
    s.add_argument("--temperature", type=nonneg_float, default=0.8,
                   help="sampling temperature; 0 picks the most likely character (greedy) "
                   "(default: %(default)s)")
    s.add_argument("--seed", type=nonneg_int, default=0, help="sampling seed")
    s.set_defaults(func=run)
