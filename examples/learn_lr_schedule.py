"""Learn learning-rate and momentum schedules by gradient descent on hypergradients.

After Maclaurin, Duvenaud & Adams (2015), "Gradient-based hyperparameter
optimization through reversible learning": a character-level RNN is trained
for ``--iters`` iterations of exact SGD with momentum on the text that ships
with Python (:mod:`pydoc_data.topics`, via :func:`revtrain.data.char_corpus`).
Every meta-iteration runs that training forward, then backwards bit for bit
(``rt.hypergradient``), which gives the gradient of the validation loss with
respect to the learning rate and momentum of *every* iteration and the initial
weight scale of every parameter group, without storing the training
trajectory. Adam on ``log lr`` and ``logit momentum`` (and with
``--learn-init-scale`` the ``log`` initial scale per group) follows these
gradients.

Baseline: a small grid of constant learning rates (momentum 0.9), the best one
chosen on the same validation text. Both are compared on held-out text that
neither saw (the second half of the corpus' validation part).

Prints the validation loss per meta-iteration and both held-out losses; saves a
plot of the learned schedules to ``examples/results/learn_lr_schedule.png``.

Usage: python examples/learn_lr_schedule.py [--iters 100] [--meta-iters 30] ...
"""
import argparse
import os
import time

import numpy as np

import revtrain as rt
from revtrain.data import char_corpus

MOMENTUM_RANGE = (0.05, 0.995)


def windows(ids, n, seq_len, batch, seed):
    """``n`` batches of random windows: inputs (n, T, B) and next-character targets."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - seq_len - 1, size=(n, batch))
    idx = starts[:, None, :] + np.arange(seq_len)[None, :, None]
    return ids[idx], ids[idx + 1]


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def scaled_init(model, base, log_scale):
    """Initial weights with the uniform blocks of group g scaled by exp(log_scale[g])."""
    theta = base.copy()
    for g, direction in model.layout.init_scale_direction(base).items():
        theta += np.expm1(log_scale[model.layout.groups.index(g)]) * direction
    return theta


def train(model, opt, theta0, batches, n_iters):
    """Run exact SGD forward only; return the final weights."""
    xs, ys = batches
    state = opt.init(theta0)
    for t in range(n_iters):
        _, g = model.loss_and_grad(opt.params(state), xs[t], ys[t])
        state = opt.step(state, g)
    return opt.params(state)


def interpolation(n_iters, n_knots):
    """Matrix ``B`` (n_iters, n_knots) of piecewise-linear interpolation between knots
    spread evenly over the run; ``n_knots == n_iters`` gives the identity."""
    if n_knots >= n_iters:
        return np.eye(n_iters)
    pos = np.linspace(0, n_knots - 1, n_iters)
    B = np.zeros((n_iters, n_knots))
    lo = np.minimum(np.floor(pos).astype(int), n_knots - 2)
    frac = pos - lo
    B[np.arange(n_iters), lo] = 1 - frac
    B[np.arange(n_iters), lo + 1] = frac
    return B


def unpack(z, B, n_groups):
    """Hyperparameters from the meta-parameters ``z = [log lr knots, logit momentum knots,
    log init scales]``: per-iteration ``lr``, ``momentum``, and ``log_scale`` per group."""
    K = B.shape[1]
    lr = np.exp(B @ z[:K])
    mom = np.clip(sigmoid(B @ z[K:2 * K]), *MOMENTUM_RANGE)
    return lr, mom, z[2 * K:2 * K + n_groups]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=200, help="training iterations")
    ap.add_argument("--knots", type=int, default=10,
                    help="schedule knots (linear interpolation between them); "
                         "--knots equal to --iters learns every iteration freely")
    ap.add_argument("--meta-iters", type=int, default=30, help="hyperparameter updates")
    ap.add_argument("--meta-lr", type=float, default=0.08,
                    help="Adam step on the log-hyperparameters")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-chars", type=int, default=200_000)
    ap.add_argument("--grid", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0])
    ap.add_argument("--tolerance", type=float, default=0.05,
                    help="validation increase over the best that triggers a step back")
    ap.add_argument("--learn-init-scale", action="store_true",
                    help="also learn the initial weight scale of each parameter group")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results"))
    args = ap.parse_args(argv)
    N = args.iters

    corpus = char_corpus(max_chars=args.max_chars)
    half = len(corpus.val) // 2
    val_ids, test_ids = corpus.val[:half], corpus.val[half:]
    V = corpus.vocab.size
    model = rt.RNN(V, args.hidden, V)
    G = len(model.layout.groups)
    batches = windows(corpus.train, N, args.seq_len, args.batch, args.seed)
    xv, yv = windows(val_ids, 1, 50, 256, args.seed + 1)
    xt, yt = windows(test_ids, 1, 50, 256, args.seed + 2)
    val, test = (xv[0], yv[0]), (xt[0], yt[0])
    base = model.init_params(seed=args.seed)
    print(f"RNN(n_in={V}, n_hidden={args.hidden}, n_out={V}), {model.size} parameters; "
          f"{N} training iterations of {args.seq_len}x{args.batch} characters; "
          f"groups {model.layout.groups}")

    # ----------------------------------------------- baseline: constant lr grid
    print("\nconstant learning rate, momentum 0.9:")
    grid = []
    for lr in args.grid:
        try:
            theta = train(model, rt.ExactSGD(lr, 0.9), base, batches, N)
            v, te = model.loss(theta, *val), model.loss(theta, *test)
        except (FloatingPointError, rt.FixedPointError):
            v = te = np.inf
        grid.append((v, lr, te))
        print(f"  lr {lr:6.3f}: validation {v:.4f}  held-out {te:.4f}")
    best_val, best_lr, best_test = min(grid)
    print(f"best constant: lr {best_lr} (validation {best_val:.4f}, held-out {best_test:.4f})")

    # ------------------------------------------- meta-optimise the schedules
    B = interpolation(N, args.knots)
    K = B.shape[1]
    z = np.concatenate([np.full(K, np.log(best_lr)), np.full(K, np.log(0.9 / 0.1)), np.zeros(G)])
    meta = rt.Adam(args.meta_lr)
    mstate = meta.init(z)
    best = (best_val, z.copy())
    print("\nmeta-iteration  validation  (mean lr, mean momentum[, init scales])   "
          "[reverse / forward CPU time, buffer vs trajectory bytes]")
    t_start = time.perf_counter()
    for k in range(args.meta_iters):
        z = meta.params(mstate)
        lr, mom, log_scale = unpack(z, B, G)
        try:
            hg = rt.hypergradient(model, rt.ExactSGD(lr, mom), scaled_init(model, base, log_scale),
                                  lambda t: (batches[0][t], batches[1][t]), val, N)
            failed = None if hg.val_loss <= best[0] + args.tolerance else "validation got worse"
        except (FloatingPointError, rt.FixedPointError) as e:
            failed = f"training diverged ({type(e).__name__})"
        if failed:
            # the schedules left the stable region (training near the best constant
            # rate is close to chaotic): back to the best point, smaller meta steps
            print(f"  {k:3d}  {failed}: back to the best point, meta lr halved")
            meta = rt.Adam(meta.lr / 2)
            mstate = meta.init(best[1])
            continue
        if hg.val_loss < best[0]:
            best = (hg.val_loss, z.copy())
        s = hg.stats
        scales = f", {np.round(np.exp(log_scale), 2).tolist()}" if args.learn_init_scale else ""
        print(f"  {k:3d}  {hg.val_loss:.4f}  ({lr.mean():.3f}, {mom.mean():.3f}{scales})   "
              f"[{s.reverse_cpu_seconds / s.forward_cpu_seconds:.1f}x, {s.buffer_bytes} B vs "
              f"{s.trajectory_bytes} B]")
        # chain rule through lr = exp(B z_lr), momentum = sigmoid(B z_mom)
        sig = sigmoid(B @ z[K:2 * K])
        dz = np.concatenate([B.T @ (hg.lr * lr), B.T @ (hg.momentum * sig * (1 - sig)),
                             hg.init_scale if args.learn_init_scale else np.zeros(G)])
        mstate = meta.step(mstate, dz)
    elapsed = time.perf_counter() - t_start

    lr, mom, log_scale = unpack(best[1], B, G)
    theta0 = scaled_init(model, base, log_scale)
    theta = train(model, rt.ExactSGD(lr, mom), theta0, batches, N)
    learned_val, learned_test = model.loss(theta, *val), model.loss(theta, *test)
    # the same schedules on a training order never seen while they were learned
    fresh = windows(corpus.train, N, args.seq_len, args.batch, args.seed + 100)
    try:
        fresh_const = model.loss(train(model, rt.ExactSGD(best_lr, 0.9), base, fresh, N), *test)
    except (FloatingPointError, rt.FixedPointError):
        fresh_const = np.inf
    try:
        fresh_learned = model.loss(train(model, rt.ExactSGD(lr, mom), theta0, fresh, N), *test)
    except (FloatingPointError, rt.FixedPointError):
        fresh_learned = np.inf
    print(f"\nmeta-optimisation: {args.meta_iters} hypergradients in {elapsed:.1f} s")
    print(f"held-out loss, best constant lr {best_lr} (momentum 0.9): {best_test:.4f}  "
          f"(validation {best_val:.4f}; fresh training batches: {fresh_const:.4f})")
    print(f"held-out loss, learned schedules:                      {learned_test:.4f}  "
          f"(validation {learned_val:.4f}; fresh training batches: {fresh_learned:.4f})")
    print("learned schedules " + ("BEAT" if learned_test < best_test else "did NOT beat")
          + " the best constant learning rate on held-out text")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    os.makedirs(args.out, exist_ok=True)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(lr, label="learned")
    ax[0].axhline(best_lr, color="gray", ls="--", label=f"best constant ({best_lr})")
    ax[0].set(xlabel="iteration", ylabel="learning rate", title="learning rate schedule")
    ax[0].legend()
    ax[1].plot(mom, label="learned")
    ax[1].axhline(0.9, color="gray", ls="--", label="constant (0.9)")
    ax[1].set(xlabel="iteration", ylabel="momentum", title="momentum schedule")
    ax[1].legend()
    fig.tight_layout()
    path = os.path.join(args.out, "learn_lr_schedule.png")
    fig.savefig(path, dpi=120)
    print(f"plot saved to {path}")


if __name__ == "__main__":
    main()
