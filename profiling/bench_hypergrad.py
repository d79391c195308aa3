"""Memory and time of hypergradients by exact reversal, against storing the trajectory.

For each number of training iterations, runs ``rt.hypergradient`` on a
character-level RNN (built-in corpus, fixed random windows) with exact SGD at
a constant momentum, and prints a markdown table:

* buffer bytes: what the reverse pass keeps (the information buffer, at its
  peak after the forward pass), against the information bound
  ``P * n_iters * log2(1 / gamma)`` bits;
* trajectory bytes: storing ``w_t`` in float64 for every iteration
  (``8 * P * n_iters``), what reverse mode without reversal needs;
* fingerprint bytes: the 8 bytes per iteration with which the reverse pass
  checks that the complex-step gradient gives the forward step's increment;
* the time of the forward pass (training) and of the reverse pass (undoing
  each step with the gradient and exact Hessian-vector product of one
  ``grad_and_hvp``), and how many reverse iterations also needed
  ``loss_and_grad`` (the complex-step gradient rounded to another increment).

Targets (issue 5): at 1000 iterations and momentum 0.9, memory >= 300x
smaller than the trajectory; reverse <= 4x forward time (issue 12: <= 2x).

Usage: python profiling/bench_hypergrad.py [--iters 100 1000 10000] [--hidden 64] ...
"""
import argparse
import time

import numpy as np

import revtrain as rt
from revtrain.data import char_corpus
from revtrain.optim import quantise_momentum


def make_batches(ids, n_batches, seq_len, batch, seed):
    """``n_batches`` fixed batches of random windows: x (T, B) and next-char targets."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - seq_len - 1, size=(n_batches, batch))
    idx = starts[:, None, :] + np.arange(seq_len)[None, :, None]          # (n, T, B)
    return ids[idx], ids[idx + 1]


def human(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--max-chars", type=int, default=100_000)
    args = ap.parse_args(argv)

    corpus = char_corpus(max_chars=args.max_chars)
    V = corpus.vocab.size
    model = rt.RNN(V, args.hidden, V)
    xs, ys = make_batches(corpus.train, 64, args.seq_len, args.batch, seed=0)
    xv, yv = make_batches(corpus.val, 1, args.seq_len, 4 * args.batch, seed=1)
    val = (xv[0], yv[0])
    theta0 = model.init_params(seed=0)
    gamma = quantise_momentum(args.momentum) / 2**16

    # warm up (compilation), then measure
    rt.hypergradient(model, rt.ExactSGD(args.lr, args.momentum), theta0,
                     lambda t: (xs[t % 64], ys[t % 64]), val, 2)
    print(f"RNN(n_in={V}, n_hidden={args.hidden}, n_out={V}): P = {model.size} parameters; "
          f"batches of T={args.seq_len} x B={args.batch} characters; lr={args.lr}, "
          f"momentum={args.momentum} (held as {gamma * 2**16:.0f}/2**16)\n")
    print("| iterations | buffer bytes | bound bytes | buffer / bound | fingerprint bytes "
          "| trajectory bytes | trajectory / (buffer + fingerprints) | forward s (CPU) "
          "| reverse s (CPU) | reverse / forward (CPU) | reverse / forward (wall) "
          "| extra gradients | val loss |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.iters:
        opt = rt.ExactSGD(args.lr, args.momentum)
        try:
            hg = rt.hypergradient(model, opt, theta0, lambda t: (xs[t % 64], ys[t % 64]), val, n)
        except FloatingPointError as e:
            print(f"| {n} | overflow: {e} |")
            continue
        s = hg.stats
        bound = model.size * n * np.log2(1.0 / gamma) / 8.0
        held = s.buffer_bytes + s.fingerprint_bytes
        print(f"| {n} | {s.buffer_bytes} ({human(s.buffer_bytes)}) | {bound:.0f} "
              f"| {s.buffer_bytes / bound:.4f} | {s.fingerprint_bytes} | {s.trajectory_bytes} "
              f"({human(s.trajectory_bytes)}) | {s.trajectory_bytes / held:.0f}x "
              f"| {s.forward_cpu_seconds:.2f} | {s.reverse_cpu_seconds:.2f} "
              f"| {s.reverse_cpu_seconds / s.forward_cpu_seconds:.2f}x "
              f"| {s.reverse_seconds / s.forward_seconds:.2f}x "
              f"| {s.reverse_gradients} of {n} | {hg.val_loss:.4f} |")

    # where the time goes: one training gradient, one grad_and_hvp, one step / unstep
    x, y = xs[0], ys[0]
    opt = rt.ExactSGD(args.lr, args.momentum)
    state = opt.init(theta0)
    g = model.loss_and_grad(theta0, x, y)[1]

    def best(fn, reps=20):
        ts = []
        for _ in range(reps):
            t0 = time.process_time()
            fn()
            ts.append(time.process_time() - t0)
        return min(ts)

    t_grad = best(lambda: model.loss_and_grad(theta0, x, y))
    t_both = best(lambda: model.grad_and_hvp(theta0, x, y, g))
    st = [state]

    def step_unstep():
        s1 = opt.step(st[0], g)
        st[0] = opt.unstep(s1, lambda th, t: g)

    t_pair = best(step_unstep)
    print(f"\nper iteration (CPU time, best of 20): gradient {t_grad * 1e3:.3f} ms, "
          f"grad_and_hvp (one complex-step pass) {t_both * 1e3:.3f} ms ({t_both / t_grad:.2f}x "
          f"the gradient), ExactSGD step + unstep {t_pair * 1e3:.3f} ms "
          f"({t_pair / model.size * 1e9:.1f} ns per parameter)")
    print("forward per iteration = gradient + step; reverse = grad_and_hvp (its gradient "
          "undoes the step when its increment's fingerprint matches, else also a gradient) "
          "+ unstep")


if __name__ == "__main__":
    main()
