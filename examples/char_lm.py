"""Character language model: RevLSTM (reversible BPTT) vs LSTM (standard BPTT).

All models train for the same number of steps, with the same optimiser,
windows and seed, on the built-in corpus (the text of the standard library's
``pydoc_data.topics``), then are evaluated on the whole validation split.
Prints validation bits per character, the ratio RevLSTM / LSTM (target:
RevLSTM within 3% of LSTM; 2% for stacks), the time, and the memory each held for BPTT per
window.

With ``--layers L`` (L > 1) the models are L-layer stacks, and a 1-layer
RevLSTM trained the same way (same embedding, dropout, steps, optimiser) is
added, to show what depth buys.

    python examples/char_lm.py                # defaults: 300 steps, H=128, T=64, B=32, lr 0.01
    python examples/char_lm.py --steps 1000 --data my_text.txt
    python examples/char_lm.py --layers 2 --embed 128 --hidden 256 --dropout 0.2 --steps N
"""
import argparse
import sys
import time

import revtrain as rt
from revtrain.data import char_corpus
from revtrain.model_file import find_class
from revtrain.trainer import Trainer


def run(cls, corpus, a, bptt, layers):
    V = corpus.vocab.size
    kw = dict(n_layers=layers, embed_dim=a.embed, dropout=a.dropout)
    if layers == 1 and a.embed is None and not a.dropout:
        kw = {}                                 # the plain one-layer model, as before
    model = cls(V, a.hidden, V, **kw)
    tr = Trainer(model, rt.Adam(a.lr), bptt=bptt, seed=a.seed)
    carry = a.state == "carry"
    t0 = time.perf_counter()
    h = tr.fit(corpus, steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len,
               val_tokens=a.val_chars, eval_every=a.eval_every, grad_clip=a.grad_clip,
               quiet=a.quiet, carry_state=carry)
    fit_s = time.perf_counter() - t0
    ev = tr.evaluate(corpus.val, batch_size=a.batch_size, seq_len=a.seq_len, carry_state=carry)
    return {"name": cls.__name__, "layers": layers, "bptt": tr.bptt, "val_bpc": ev["bpc"],
            "train_s": h.time[-1], "total_s": time.perf_counter() - t0, "fit_s": fit_s,
            "train_loss": sum(h.loss[-10:]) / len(h.loss[-10:]),
            "stored": max(h.stored_bytes), "params": model.size}


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per model")
    p.add_argument("--hidden", type=int, default=128, help="hidden units per layer")
    p.add_argument("--layers", type=int, default=1,
                   help="layers of each stack; > 1 also trains a 1-layer RevLSTM (default 1)")
    p.add_argument("--embed", type=int, default=None,
                   help="character embedding width (default: none, one-hot characters)")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="variational dropout rate in [0, 1) (default 0)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01, help="Adam rate for all models")
    p.add_argument("--state", choices=("reset", "carry"), default="carry",
                   help="carry the previous window's final state into the next window "
                   "(truncated BPTT, default) or start every window from zeros")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-chars", type=int, default=20000,
                   help="characters of each validation during training (the final "
                   "evaluation uses the whole validation split)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="validate every N steps during training (default: 5 times)")
    p.add_argument("--data", default=None, help="UTF-8 text file (default: built-in corpus)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    for name in ("steps", "hidden", "layers", "seq_len", "batch_size", "val_chars"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.embed is not None and a.embed < 1:
        p.error("--embed must be >= 1")
    if not 0.0 <= a.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    if a.hidden % 2:
        p.error("--hidden must be even (RevLSTM has two halves)")
    return a


def main(argv=None):
    a = _args(argv)
    classes = {n: find_class(n) for n in ("LSTM", "RevLSTM")}
    missing = [n for n, c in classes.items() if c is None]
    if missing:
        print(f"char_lm.py: {', '.join(missing)} not available in this revtrain yet",
              file=sys.stderr)
        return 1
    corpus = char_corpus(a.data)
    stack = (f", {a.layers} layers" if a.layers > 1 else "") \
        + (f", embed {a.embed}" if a.embed else "") + (f", dropout {a.dropout:g}" if a.dropout else "")
    print(f"corpus: {corpus.name}, {len(corpus.train)} train / {len(corpus.val)} validation "
          f"chars, vocabulary {corpus.vocab.size}; {a.steps} steps of {a.seq_len} x "
          f"{a.batch_size}, H={a.hidden}{stack}, Adam lr={a.lr}, seed {a.seed}, state "
          + ("reset every window" if a.state == "reset" else "carried between windows"),
          flush=True)
    plan = [(classes["LSTM"], "standard", a.layers), (classes["RevLSTM"], "reversible", a.layers)]
    if a.layers > 1:
        plan.append((classes["RevLSTM"], "reversible", 1))
    res = []
    for cls, bptt, layers in plan:
        res.append(run(cls, corpus, a, bptt, layers))
        r = res[-1]
        print(f"{r['name']} ({layers} layer{'s' if layers > 1 else ''}, {bptt}): validation "
              f"{r['val_bpc']:.4f} bits/char, {r['train_s']:.1f} s in training steps "
              f"({r['train_s'] / a.steps:.3f} s/step), {r['total_s']:.1f} s with validation",
              flush=True)
    print(f"\n{'model':<9} {'layers':>6} {'BPTT':<11} {'params':>9} {'val bits/char':>13} "
          f"{'train loss':>10} {'train s':>8} {'total s':>8} {'BPTT bytes/window':>18}")
    for r in res:
        print(f"{r['name']:<9} {r['layers']:>6} {r['bptt']:<11} {r['params']:>9,d} "
              f"{r['val_bpc']:>13.4f} {r['train_loss']:>10.4f} {r['train_s']:>8.1f} "
              f"{r['total_s']:>8.1f} {r['stored']:>18,d}")
    lstm, rev = res[0], res[1]
    ratio = rev["val_bpc"] / lstm["val_bpc"]
    L = f"{a.layers}-layer " if a.layers > 1 else ""
    tol = 0.02 if a.layers > 1 else 0.03
    print(f"\n{L}RevLSTM / {L}LSTM validation bits per char: {ratio:.4f} "
          f"({(ratio - 1) * 100:+.2f}%; target within {tol:.0%}: "
          f"{'met' if ratio <= 1 + tol else 'NOT met'})")
    if a.layers > 1:
        one = res[2]
        d = rev["val_bpc"] / one["val_bpc"]
        print(f"{L}RevLSTM / 1-layer RevLSTM validation bits per char: {d:.4f} "
              f"({(d - 1) * 100:+.2f}%: {'depth helps' if d < 1 else 'depth does not help'} "
              f"at {a.steps} steps)")
    print(f"BPTT memory per window: {L}LSTM {lstm['stored']:,d} bytes, {L}RevLSTM "
          f"{rev['stored']:,d} bytes ({lstm['stored'] / rev['stored']:.1f}x less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
