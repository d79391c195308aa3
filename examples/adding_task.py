"""The adding problem: MomentumRNN (reversible BPTT) vs RNN (standard BPTT).

Each sequence carries a value channel and a marker channel with two marked
steps; the target, read at the last step, is the sum of the two marked
values (Hochreiter & Schmidhuber 1997). Predicting the mean (1.0) gives a
mean squared error of about 1/6 = 0.167, so a model that learns the task
goes well below that. Fresh batches are drawn every step; the validation set
is fixed. Prints the validation MSE of both models.

    python examples/adding_task.py            # defaults: T=20, 1000 steps, H=64
    python examples/adding_task.py --T 50 --steps 3000 --lr 0.001
"""
import argparse
import sys
import time

import revtrain as rt
from revtrain.data import adding_task
from revtrain.model_file import find_class
from revtrain.trainer import Trainer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, default=20, help="sequence length")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)

    classes = {n: find_class(n) for n in ("RNN", "MomentumRNN")}
    missing = [n for n, c in classes.items() if c is None]
    if missing:
        print(f"adding_task.py: {', '.join(missing)} not available in this revtrain yet",
              file=sys.stderr)
        return 1
    val = adding_task(a.T, 1000, seed=10_000 + a.seed)
    baseline = float(((val[1] - 1.0) ** 2).mean())
    print(f"adding problem: T={a.T}, {a.steps} steps of batch {a.batch_size}, H={a.hidden}, "
          f"Adam lr={a.lr}; validation 1000 sequences, predicting 1.0 gives MSE {baseline:.4f}")

    def draw(rng, batch_size):
        return adding_task(a.T, batch_size, seed=rng)

    rows = []
    for name, bptt in (("RNN", "standard"), ("MomentumRNN", "reversible")):
        model = classes[name](2, a.hidden, 1, loss="mse")
        tr = Trainer(model, rt.Adam(a.lr), bptt=bptt, seed=a.seed)
        t0 = time.perf_counter()
        h = tr.fit(draw, steps=a.steps, batch_size=a.batch_size, val_data=val,
                   grad_clip=a.grad_clip, quiet=a.quiet, eval_every=max(1, a.steps // 5))
        rows.append((name, bptt, h.val_loss[-1], min(h.val_loss), time.perf_counter() - t0,
                     max(h.stored_bytes)))
    print(f"\n{'model':<12} {'BPTT':<11} {'val MSE':>9} {'best':>9} {'time s':>7} "
          f"{'BPTT bytes':>11}")
    for r in rows:
        print(f"{r[0]:<12} {r[1]:<11} {r[2]:>9.4f} {r[3]:>9.4f} {r[4]:>7.1f} {r[5]:>11,d}")
    print(f"(baseline MSE of always predicting 1.0: {baseline:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
