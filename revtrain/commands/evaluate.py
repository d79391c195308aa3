"""``revtrain evaluate``: bits per character of a saved model on held-out text."""
from ._common import UsageError, load_char_model, pos_int, show, stack_text


def _text(a, tr):
    """``(text, what)``: the file's whole text, or the validation part of the training text."""
    from ..data import DataError, char_corpus, load_text
    if a.data is not None:
        try:
            return load_text(a.data), repr(a.data)
        except DataError as e:
            raise UsageError(f"--data: {e}") from None
    cli = tr.metadata.get("cli")
    if not isinstance(cli, dict) or "data" not in cli:
        raise UsageError(f"--model-file: {a.model_file!r} does not say what text it was "
                         "trained on (it was saved from Python); give the text with --data")
    name = show(cli["data"], "the built-in corpus")
    try:
        corpus = char_corpus(cli["data"])
    except DataError as e:
        raise UsageError(f"the training text {name} cannot be read ({e}); give the text "
                         "with --data") from None
    if corpus.vocab != tr.vocab:
        raise UsageError(f"the training text {name} has changed since the model was trained "
                         "(its characters differ); give held-out text with --data")
    return corpus.vocab.decode(corpus.val), f"the validation part of {name}"


def run(a):
    tr = load_char_model(a.model_file)
    text, what = _text(a, tr)
    missing = sorted(set(text) - set(tr.vocab.chars))
    if missing:
        raise UsageError(f"--data: {len(missing)} characters of {what} are not in the "
                         f"model's vocabulary of {tr.vocab.size}: {''.join(missing[:20])!r}")
    if len(text) < 2:
        raise UsageError(f"--data: {what} has {len(text)} character(s); evaluation needs "
                         "at least 2 (an input and its next character)")
    opts = tr.fit_options
    B = a.batch_size or opts.get("batch_size", 32)
    T = a.seq_len or opts.get("seq_len", 64)
    B = max(1, min(B, (len(text) - 1) // T or 1))
    ev = tr.evaluate(text, batch_size=B, seq_len=T)
    state = "carried between windows" if opts.get("carry_state", True) else "reset every window"
    print(f"{ev['bpc']:.4f} bits/char (loss {ev['loss']:.4f} nats) on {what}: "
          f"{len(text)} characters, {type(tr.model).__name__}{_stack(tr.model)} after "
          f"{tr.steps_done} steps, "
          f"windows of {T} x {B}, state {state}")
    return 0


def add_parser(sub):
    """Add the subcommand to ``sub`` (an argparse subparsers object)."""
    e = sub.add_parser("evaluate", help="bits per character of a saved model",
                       description="Bits per character of a model saved by 'revtrain train' "
                       "on held-out text, with the model's own vocabulary and state mode "
                       "(default: the validation part of the text it was trained on).")
    e.add_argument("--model-file", required=True, metavar="PATH", help="saved model (.npz)")
    e.add_argument("--data", default=None, metavar="PATH",
                   help="a UTF-8 text file to evaluate on, all of it (default: the validation "
                   "part of the training text)")
    e.add_argument("--batch-size", type=pos_int, default=None,
                   help="parallel streams (default: as trained)")
    e.add_argument("--seq-len", type=pos_int, default=None,
                   help="window length (default: as trained)")
    e.set_defaults(func=run)


def _stack(model):
    """``(2 layers, embed 16, dropout 0.1)`` for a stacked model, else ``""``."""
    text = stack_text(getattr(model, "n_layers", 1), getattr(model, "embed_dim", None),
                      getattr(model, "dropout", 0.0))
    return f" ({text[2:]})" if text else ""
