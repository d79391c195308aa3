"""Character language model: RevLSTM (reversible BPTT) vs LSTM (standard BPTT).

Both train for the same number of steps, with the same optimiser, windows and
seed, on the built-in corpus (the text of the standard library's
``pydoc_data.topics``), then are evaluated on the whole validation split.
Prints validation bits per character for both, their ratio (target: RevLSTM
within 3% of LSTM), the time, and the memory each held for BPTT per window.

    python examples/char_lm.py                # defaults: 300 steps, H=128, T=64, B=32, lr 0.01
    python examples/char_lm.py --steps 1000 --data my_text.txt
"""
import argparse
import sys
import time

import revtrain as rt
from revtrain.data import char_corpus
from revtrain.model_file import find_class
from revtrain.trainer import Trainer


def run(cls, corpus, a, bptt):
    V = corpus.vocab.size
    model = cls(V, a.hidden, V)
    tr = Trainer(model, rt.Adam(a.lr), bptt=bptt, seed=a.seed)
    t0 = time.perf_counter()
    h = tr.fit(corpus, steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len,
               val_tokens=20000, grad_clip=a.grad_clip, quiet=a.quiet,
               carry_state=a.state == "carry")
    train_s = time.perf_counter() - t0
    ev = tr.evaluate(corpus.val, batch_size=a.batch_size, seq_len=a.seq_len,
                     carry_state=a.state == "carry")
    return {"name": cls.__name__, "bptt": tr.bptt, "val_bpc": ev["bpc"], "seconds": train_s,
            "train_loss": sum(h.loss[-10:]) / len(h.loss[-10:]),
            "stored": max(h.stored_bytes)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01, help="Adam rate for both models")
    p.add_argument("--state", choices=("reset", "carry"), default="carry",
                   help="carry the previous window's final state into the next window "
                   "(truncated BPTT, default) or start every window from zeros")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="UTF-8 text file (default: built-in corpus)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)

    classes = {n: find_class(n) for n in ("LSTM", "RevLSTM")}
    missing = [n for n, c in classes.items() if c is None]
    if missing:
        print(f"char_lm.py: {', '.join(missing)} not available in this revtrain yet",
              file=sys.stderr)
        return 1
    corpus = char_corpus(a.data)
    print(f"corpus: {corpus.name}, {len(corpus.train)} train / {len(corpus.val)} validation "
          f"chars, vocabulary {corpus.vocab.size}; {a.steps} steps of {a.seq_len} x "
          f"{a.batch_size}, H={a.hidden}, Adam lr={a.lr}, seed {a.seed}, state "
          + ("reset every window" if a.state == "reset" else "carried between windows"))
    res = [run(classes["LSTM"], corpus, a, "standard"),
           run(classes["RevLSTM"], corpus, a, "reversible")]
    print(f"\n{'model':<9} {'BPTT':<11} {'val bits/char':>13} {'train loss':>10} "
          f"{'time s':>7} {'BPTT bytes/window':>18}")
    for r in res:
        print(f"{r['name']:<9} {r['bptt']:<11} {r['val_bpc']:>13.4f} {r['train_loss']:>10.4f} "
              f"{r['seconds']:>7.1f} {r['stored']:>18,d}")
    ratio = res[1]["val_bpc"] / res[0]["val_bpc"]
    print(f"\nRevLSTM / LSTM validation bits per char: {ratio:.4f} "
          f"({(ratio - 1) * 100:+.2f}%; target within 3%: {'met' if ratio <= 1.03 else 'NOT met'})")
    print(f"BPTT memory per window: LSTM {res[0]['stored']:,d} bytes, RevLSTM "
          f"{res[1]['stored']:,d} bytes ({res[0]['stored'] / res[1]['stored']:.1f}x less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
