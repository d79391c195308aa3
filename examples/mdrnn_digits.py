"""8x8 digits with a multidimensional RNN: MDRNN (standard BPTT) vs RevMDRNN (reversible).

Each image is a ``(8, 8)`` grid of pixel intensities, one input per cell;
the class is read from the last cell (bottom right), which sees the whole
image through the north and west recurrences. Uses scikit-learn's digits
when it is installed, else generated 8x8 digits (``revtrain.data.digits_task``).
Prints the validation accuracy of both models and the bytes each kept for
its backward pass.

    python examples/mdrnn_digits.py                  # H=32, 2000 steps of batch 32 (about 25 s)
    python examples/mdrnn_digits.py --steps 2000 --hidden 64
"""
import argparse
import sys
import time

import revtrain as rt
from revtrain.data import digits_task
from revtrain.trainer import Trainer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", choices=("auto", "sklearn", "generated"), default="auto")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)

    task = digits_task(seed=a.seed, source=a.source)
    print(f"digits ({task.source}): {task.x.shape[2]} training and {task.x_val.shape[2]} "
          f"validation images of 8x8, {task.n_classes} classes; H={a.hidden}, {a.steps} steps "
          f"of batch {a.batch_size}, Adam lr={a.lr}")
    rows = []
    for cls, bptt in ((rt.MDRNN, "standard"), (rt.RevMDRNN, "reversible")):
        model = cls(1, a.hidden, task.n_classes)
        tr = Trainer(model, rt.Adam(a.lr), bptt=bptt, seed=a.seed)
        t0 = time.perf_counter()
        h = tr.fit((task.x, task.y), steps=a.steps, batch_size=a.batch_size,
                   val_data=(task.x_val, task.y_val), grad_clip=a.grad_clip, quiet=a.quiet,
                   eval_every=max(1, a.steps // 5))
        rows.append((cls.__name__, bptt, h.val_acc[-1], max(h.val_acc), h.val_loss[-1],
                     time.perf_counter() - t0, max(h.stored_bytes)))
    print(f"\n{'model':<9} {'BPTT':<11} {'val acc':>8} {'best':>6} {'val loss':>9} {'time s':>7} "
          f"{'BPTT bytes':>11}")
    for r in rows:
        print(f"{r[0]:<9} {r[1]:<11} {r[2]:>8.3f} {r[3]:>6.3f} {r[4]:>9.4f} {r[5]:>7.1f} "
              f"{r[6]:>11,d}")
    print(f"(chance: {1 / task.n_classes:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
