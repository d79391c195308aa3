"""Hypergradients over micro-batches and parameter shards, in one process or under MPI.

:func:`revtrain.hypergradient` with ``micro_batches=M`` (and optionally an
mpi4py communicator ``comm`` of ``N`` processes, ``N`` dividing ``M``) runs
the passes of :mod:`revtrain.hypergrad_steps` with two changes, chosen so that
every bit of the result is the same for ``comm=None`` and for every ``N``:

Micro-batches (data parallel)
    Each training batch ``(x, y)`` is cut along its batch axis (the axis after
    the time axis, or after the two grid axes) into ``M`` equal micro-batches
    (:func:`revtrain.distributed.micro_rows`); rank ``r`` computes micro-batches
    ``r*M/N .. (r+1)*M/N - 1``. The training gradient and the Hessian-vector
    product are the exact fixed-point sums::

        g   = 2**-F * sum_m rint(2**F * g_m / M)          (F = 40 fraction bits)
        H u = 2**-F * sum_m rint(2**F * H_m u / M)

    (:func:`revtrain.distributed.reduce_micro`: int64 ``Allreduce``, overflow
    checked), ``g_m`` and ``H_m`` the gradient and Hessian of micro-batch
    ``m``'s mean loss, and the training loss is ``sum_m loss_m / M`` added in
    the order of ``m``. As the micro-batches have equal size, this is the
    gradient of the batch's mean loss up to the rounding ``2**-41`` per
    entry. The forward and the reverse pass use the same reduction, and the
    fingerprint of the velocity increment is taken on the reduced gradient
    (so the reverse pass's complex-step gradient is used exactly when its
    reduced increment equals the forward's). Dropout: micro-batch ``m`` of
    iteration ``t`` draws its masks from :func:`micro_dropout_seed`
    ``(dropout_seed, t, m)``, a function of ``(seed, t, m)`` alone, so the
    masks do not depend on ``N`` (they differ from those of the same run
    without micro-batches, which draws one mask set for the whole batch).

Shards (the optimiser's state)
    The ``P`` parameters are cut into ``K`` fixed contiguous blocks (4 to 64,
    about 2048 parameters each: :func:`block_bounds`, independent of ``N``,
    which must be at most ``K``); rank ``r``
    owns the blocks ``K*r//N .. K*(r+1)//N - 1`` and keeps, for each, an
    :class:`~revtrain.ExactSGDState` (``w``, ``v`` and its own information
    buffer) of :meth:`ExactSGD.for_slice`: memory ``~1/N`` of the buffer per
    rank. After each step the full weights are assembled exactly (allgather
    of the int64 block weights) for the next gradient. The reverse pass
    undoes each block with the reduced gradient's slice; the adjoints ``dw``,
    ``dv`` are kept per rank slice, ``u = (1 - gamma) * dv`` is assembled for
    the Hessian-vector product, and the per-group sums (``d alpha_t``,
    ``d gamma_t``, ``w . dv`` of ``d lambda``) are computed per block, gathered
    and added in block order. Blocks (not ranks) fix the stream layout of
    the buffers and the order of every sum, so ``N = 1`` (``comm=None``) and
    ``N > 1`` give the same bits. The bits differ from those of the run
    without ``micro_batches`` (other gradients, other sum order).

Faults
    Every decision that ends the run (divergence, a step out of the
    fixed-point range, a failed reversal, a non-finite adjoint) is made on
    data that every rank holds, or exchanged in a collective status check,
    so all ranks raise the same error with the same message instead of
    leaving a partner waiting. Exceptions of the model or of ``train_batch``
    are re-raised on every rank by ``reduce_micro``.
"""
import math
import time

import numpy as np

from .distributed import GRAD_FRAC_BITS, check_micro, comm_rank, comm_size, micro_rows
from .distributed import reduce_micro
from .errors import DivergenceError, FixedPointError, ReversalError
from .fixed_point import from_fixed, to_fixed
from .hypergrad_steps import _HINT, _check_train_loss, _fingerprint
from ._kernels.adjoint import adjoint_after, adjoint_before
from ._kernels.rans import INITIAL_STATE

#: Most fixed parameter blocks the optimiser's state is cut into: the unit of sharding
#: (so at most this many MPI processes) and of every per-group sum.
SHARD_BLOCKS = 64
#: Parameters per block aimed at (fewer, larger blocks for a small model: each block costs
#: about 0.1 ms of Python per iteration, measured at P = 536, 32 blocks).
BLOCK_PARAMS = 2048
#: Blocks of even the smallest model (at most P), so that it can run on up to 4 processes.
MIN_BLOCKS = 4


def micro_dropout_seed(seed, t, m):
    """Dropout seed of micro-batch ``m`` at iteration ``t`` of a run seeded ``seed``.

    ``SeedSequence([seed, 5, t + 1, m])``'s first word (the tag 5 keeps it
    apart from :func:`revtrain.trainer.step_dropout_seed`'s ``[seed, 3, step]``).
    """
    return int(np.random.SeedSequence([int(seed), 5, int(t) + 1, int(m)]).generate_state(1)[0])


def block_bounds(P):
    """Bounds ``(K + 1,)`` of the ``K`` near-equal contiguous blocks of ``P`` parameters:
    block ``k`` is ``[b[k], b[k+1])``, with ``b[k] = P * k // K`` and
    ``K = min(P, SHARD_BLOCKS, max(MIN_BLOCKS, P // BLOCK_PARAMS))`` (a function of
    ``P`` alone, never of the number of processes)."""
    K = min(P, SHARD_BLOCKS, max(MIN_BLOCKS, P // BLOCK_PARAMS))
    return [P * k // K for k in range(K + 1)]


def rank_blocks(n_blocks, comm):
    """The blocks this rank keeps: ``range(K*r//N, K*(r+1)//N)`` (contiguous, near equal)."""
    N, r = comm_size(comm), comm_rank(comm)
    if N > n_blocks:
        raise ValueError(f"{N} MPI processes but the optimiser's state of this model is cut "
                         f"into only {n_blocks} blocks (revtrain.hypergrad_shard.block_bounds):"
                         f" run on at most {n_blocks} processes")
    return range(n_blocks * r // N, n_blocks * (r + 1) // N)


def _exchange(comm, value, failure=None):
    """Every rank's ``value`` in rank order, after a collective status check.

    ``failure`` is None or ``(kind, message, step, loss, hint, cause)`` with
    ``kind`` ``"divergence"`` or ``"reversal"``. If any rank reports one, every
    rank raises the first (in rank order) as a DivergenceError or
    ReversalError built from the same fields, so the message is the same
    everywhere (the reporting rank chains its local ``cause``).
    """
    mine = None if failure is None else tuple(failure[:5])
    gathered = [(mine, value)] if comm is None else comm.allgather((mine, value))
    for r, (f, _) in enumerate(gathered):
        if f is not None:
            kind, msg, step, loss, hint = f
            err = (DivergenceError(msg, step=step, loss=loss, hint=hint)
                   if kind == "divergence" else ReversalError(msg))
            cause = failure[5] if failure is not None and r == comm_rank(comm) else None
            raise err from cause
    return [v for _, v in gathered]


def _cut(model, x, y, m, n_micro):
    """``(x_m, y_m)``: micro-batch ``m`` of ``n_micro`` (rows of the batch axis, the
    axis after the ``model.n_lead`` time or grid axes; for targets of the last step
    only, ``(B,)`` or ``(B, n_out)``, the first axis)."""
    nl = int(getattr(model, "n_lead", 1))
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim <= nl:
        raise ValueError(f"x must have a batch axis after its {nl} leading axes, got shape "
                         f"{x.shape}")
    B = x.shape[nl]
    rows = micro_rows(m, n_micro, B)
    lead = (slice(None),) * nl
    per_step = y.ndim >= nl + 1 + (getattr(model, "loss_kind", "softmax") == "mse")
    ym = y[lead + (rows,)] if per_step else y[rows]
    return np.ascontiguousarray(x[lead + (rows,)]), np.ascontiguousarray(ym)


class _Micro:
    """Training gradients and Hessian-vector products as exact sums over micro-batches.

    ``gradients`` counts the reverse pass's ``loss_and_grad`` reductions (as
    :attr:`HyperStats.reverse_gradients`).
    """

    def __init__(self, model, batch, n_micro, comm, bptt, drop, n_iters):
        self.model, self.batch, self.M, self.comm = model, batch, n_micro, comm
        self.bptt, self.drop, self.n_iters = bptt, drop, n_iters
        self.both = callable(getattr(model, "grad_and_hvp", None))
        self.bound = 2.0 ** (62 - GRAD_FRAC_BITS) / n_micro
        self.gradients = 0
        self._cached = (None, None)

    def _part(self, t, m):
        """``(x_m, y_m, dropout kwargs)`` of micro-batch ``m`` of iteration ``t``."""
        if self._cached[0] != t:
            self._cached = (t, self.batch(t))
        x, y = self._cached[1]
        nl = int(getattr(self.model, "n_lead", 1))
        shape = np.shape(x)
        if len(shape) > nl:
            check_micro(self.M, shape[nl], self.comm)
        xm, ym = _cut(self.model, x, y, m, self.M)
        dkw = {}
        if self.drop is not None and getattr(self.model, "dropout", 0):
            dkw = {"dropout_seed": micro_dropout_seed(self.drop, t, m)}
        return xm, ym, dkw

    def _bad(self, v, what):
        """None, or why ``v`` (a micro-batch's share, already divided by M) cannot be summed."""
        if not np.isfinite(v).all():
            return f"the {what} has NaN or inf"
        big = np.abs(v) >= self.bound
        if big.any():
            i = int(np.flatnonzero(big)[0])
            return (f"the {what} is too large for the exact all-reduce ({float(v[i] * self.M):.4g} "
                    f"at index {i}; |values| / micro_batches must stay below "
                    f"2**{62 - GRAD_FRAC_BITS} / micro_batches)")
        return None

    def _grad_compute(self, theta, t):
        """``compute(m)`` for reduce_micro: ``((g_m / M,), (loss_m, why))``; ``why`` is None
        or what went wrong (then the vector is zeros, so the sum cannot fail)."""
        P = theta.shape[0]

        def compute(m):
            xm, ym, dkw = self._part(t, m)
            try:
                loss, g = self.model.loss_and_grad(theta, xm, ym, bptt=self.bptt, **dkw)
            except FloatingPointError as e:           # includes DivergenceError
                return (np.zeros(P),), (None, getattr(e, "reason", None) or str(e))
            loss = float(loss)
            if not math.isfinite(loss):
                return (np.zeros(P),), (loss, f"the training loss is {loss}")
            g = np.asarray(g, dtype=np.float64) / self.M
            why = self._bad(g, "training gradient")
            return ((np.zeros(P),) if why else (g,)), (loss, why)
        return compute

    def loss_and_grad(self, theta, t):
        """``(loss, g)`` of iteration ``t`` at ``theta``; DivergenceError (on every rank)
        if a micro-batch's loss or gradient is not finite or too large to sum."""
        (g,), extras = reduce_micro(self._grad_compute(theta, t), self.M, self.comm,
                                    what="training gradient")
        for m, (loss, why) in enumerate(extras):
            if why is not None:
                raise DivergenceError(f"training diverged at iteration t={t} (step {t + 1} of "
                                      f"{self.n_iters}): micro-batch {m} of {self.M}: {why}",
                                      step=t + 1, loss=loss, hint=_HINT)
        total = 0.0
        for loss, _ in extras:
            total += loss
        return total / self.M, g

    def reverse_gradient(self, theta, t):
        """The reduced training gradient of iteration ``t`` by ``loss_and_grad`` (as the
        forward pass computed it); ReversalError if it cannot be computed now."""
        self.gradients += 1
        (g,), extras = reduce_micro(self._grad_compute(theta, t), self.M, self.comm,
                                    what="training gradient")
        for m, (_, why) in enumerate(extras):
            if why is not None:
                raise ReversalError(f"the reverse pass could not recompute the training "
                                    f"gradient of iteration t={t} that the forward pass "
                                    f"computed (micro-batch {m}: {why}): train_batch or the "
                                    "gradient is not deterministic")
        return g

    def gradient_and_hvp(self, theta, t, u, check):
        """``(g, Hu)`` at ``theta`` for iteration ``t``: ``Hu`` the reduced Hessian-vector
        product with ``u`` (full vector; None: ``u`` is 0, then ``Hu`` None), ``g`` the
        reduced gradient with the forward's increment: the complex-step one when
        ``check(g)`` (its fingerprint matches), else :meth:`reverse_gradient`."""
        if u is None:
            return self.reverse_gradient(theta, t), None
        P, model = theta.shape[0], self.model

        def compute(m):
            xm, ym, dkw = self._part(t, m)
            try:
                if self.both:
                    _, g, hu = model.grad_and_hvp(theta, xm, ym, u, **dkw)
                else:
                    g = model.loss_and_grad(theta, xm, ym, bptt=self.bptt, **dkw)[1]
                    hu = model.hvp(theta, xm, ym, u, **dkw)
            except FloatingPointError as e:
                reason = getattr(e, "reason", None) or str(e)
                return (np.zeros(P), np.zeros(P)), (reason, reason)
            g = np.asarray(g, dtype=np.float64) / self.M
            hu = np.asarray(hu, dtype=np.float64) / self.M
            gbad = self._bad(g, "gradient")
            hbad = self._bad(hu, "Hessian-vector product")
            return ((np.zeros(P) if gbad else g, np.zeros(P) if hbad else hu), (gbad, hbad))

        (g, hu), extras = reduce_micro(compute, self.M, self.comm,
                                       what="gradient or Hessian-vector product")
        if any(h is not None for _, h in extras):
            raise _overflow(t)
        if not self.both:
            self.gradients += 1
            if any(gb is not None for gb, _ in extras):
                raise ReversalError(f"the reverse pass could not recompute the training "
                                    f"gradient of iteration t={t}: train_batch or the "
                                    "gradient is not deterministic")
        elif any(gb is not None for gb, _ in extras) or not check(g):
            g = self.reverse_gradient(theta, t)
        return g, hu


def _overflow(t):
    return DivergenceError(
        f"the hypergradient overflowed going back through iteration t={t}: the "
        "training run is chaotic (learning rate or momentum too large for it) and "
        "its hypergradients do not exist in any useful sense", step=t + 1, hint=_HINT)


class _Shard:
    """This rank's blocks of the optimiser's state.

    Attributes
    ----------
    bounds : list of int, (K + 1,)
        All blocks' bounds (:func:`block_bounds`).
    mine : range
        This rank's blocks; ``lo, hi`` the bounds of its slice.
    opts, states : list
        Per block: ``opt.for_slice(...)`` and its :class:`ExactSGDState`.
    w_init : ndarray of int64, (P,)
        ``to_fixed(theta0)``, full, on every rank.
    """

    def __init__(self, opt, theta0, n_iters, comm):
        P = theta0.shape[0]
        self.P, self.comm, self.opt = P, comm, opt
        self.bounds = block_bounds(P)
        self.mine = rank_blocks(len(self.bounds) - 1, comm)
        self.lo, self.hi = self.bounds[self.mine.start], self.bounds[self.mine.stop]
        self.w_init = to_fixed(theta0, opt.frac_bits)
        self.opts, self.states = [], []
        per_param = opt.info_bits_per_param(n_iters)
        for a, b in self.ranges():
            o = opt.for_slice(a, b, P)
            s = o.init(theta0[a:b])
            chunk = -(-(b - a) // s.buffer.n_streams)
            s.buffer.reserve(int(per_param * chunk / 32.0 * 1.02) + 64)
            self.opts.append(o)
            self.states.append(s)

    def ranges(self):
        """``(a, b)`` global bounds of this rank's blocks."""
        return [(self.bounds[k], self.bounds[k + 1]) for k in self.mine]

    def local(self, a, b):
        """The slice of a rank-local vector that holds parameters ``a .. b-1``."""
        return slice(a - self.lo, b - self.lo)

    def w_local(self):
        return np.concatenate([s.w for s in self.states])

    def buffer_bytes(self):
        return sum(s.buffer.nbytes for s in self.states)

    def step(self, g, t, n_iters):
        """Step every block with its slice of the full gradient ``g``; None or a failure."""
        for k, (a, b) in enumerate(self.ranges()):
            try:
                self.states[k] = self.opts[k].step(self.states[k], g[a:b])
            except (FixedPointError, FloatingPointError) as e:
                return ("divergence", f"training diverged at iteration t={t} (step {t + 1} "
                        f"of {n_iters}): the weights or velocity would leave the optimiser's "
                        "fixed-point range", t + 1, None,
                        "try a smaller learning rate, or fewer (velocity_)frac_bits for more "
                        "range", e)
        return None

    def check_end(self):
        """None, or the failure naming what the reverse pass did not recover in which block."""
        bad = []
        for k, (a, b), s in zip(self.mine, self.ranges(), self.states):
            parts = []
            dw = np.flatnonzero(s.w != self.w_init[a:b])
            if dw.size:
                parts.append(f"w_0 differs in {dw.size} parameters (first at index "
                             f"{a + int(dw[0])})")
            if s.v.any():
                parts.append(f"v_0 is not 0 in {int(np.count_nonzero(s.v))} entries")
            words = int(s.buffer.counts.sum())
            if words:
                parts.append(f"the information buffer still holds {words} words")
            if (s.buffer.states != INITIAL_STATE).any():
                parts.append("the buffer's rANS state is not back at its initial value")
            if parts:
                where = f"block {k} (parameters {a}..{b - 1}"
                where += f", MPI rank {comm_rank(self.comm)})" if self.comm is not None else ")"
                bad.append(f"{where}: " + ", ".join(parts))
        if not bad:
            return None
        return ("reversal", "hypergradient's reverse pass (train_batch and the model's "
                "gradients must be deterministic) failed: " + "; ".join(bad)
                + " (corrupted buffer or kept state); no result is returned",
                None, None, None, None)


def run_sharded(model, opt, theta0, batch, val_data, n_iters, *, bptt, drop, comm,
                n_micro, check_reversal, validation):
    """Forward, validation and reverse pass over micro-batches and shards.

    Returns ``(adj, val_loss, final_theta, train_loss, stats_kw)``: the
    adjoints (full ``dw``, per-iteration and per-group hyperparameter
    gradients), the validation loss, the trained weights (full, float64),
    the training losses ``(n_iters,)`` and the :class:`HyperStats` fields.
    ``validation(model, theta, val_data, n_iters)`` computes the validation
    loss and gradient, the same on every rank (no micro-batches).
    """
    from .hypergrad_steps import _Adjoint
    P, G = theta0.shape[0], opt.n_groups
    gidx = opt.group_index(P)
    micro = _Micro(model, batch, n_micro, comm, bptt, drop, n_iters)
    t0, c0 = time.perf_counter(), time.process_time()
    shard = _Shard(opt, theta0, n_iters, comm)
    w, train_loss, fps = _forward(opt, micro, shard, n_iters, gidx)
    t1, c1 = time.perf_counter(), time.process_time()
    rank_bytes = shard.buffer_bytes()
    per_rank = _exchange(comm, (rank_bytes, [s.buffer.info for s in shard.states]))
    buffer_bytes = sum(b for b, _ in per_rank)
    info_bits = 0.0
    for _, infos in per_rank:          # block order: the same sum for every N
        for info in infos:
            info_bits += float(info.sum())
    final_theta = from_fixed(w, opt.frac_bits)
    val_loss, dw = validation(model, final_theta, val_data, n_iters)
    adj = _Adjoint(dw, n_iters, G)
    _reverse(opt, micro, shard, n_iters, adj, fps, gidx, check_reversal)
    t2, c2 = time.perf_counter(), time.process_time()
    stats = dict(buffer_bytes=int(buffer_bytes), info_bits=info_bits,
                 forward_seconds=t1 - t0, reverse_seconds=t2 - t1,
                 forward_cpu_seconds=c1 - c0, reverse_cpu_seconds=c2 - c1,
                 fingerprint_bytes=0 if fps is None else int(fps.nbytes),
                 reverse_gradients=micro.gradients, rank_buffer_bytes=int(rank_bytes),
                 n_ranks=comm_size(comm), micro_batches=n_micro)
    return adj, val_loss, final_theta, train_loss, stats


def _forward(opt, micro, shard, n_iters, gidx):
    """Train ``n_iters`` steps; returns the full final weights (int64), the losses and
    the fingerprints of the reduced gradients' increments (None without grad_and_hvp)."""
    w = shard.w_init.copy()
    train_loss = np.empty(n_iters)
    fps = np.zeros(n_iters, dtype=np.uint64) if micro.both else None
    limit = math.inf
    for t in range(n_iters):
        loss, g = micro.loss_and_grad(from_fixed(w, opt.frac_bits), t)
        limit = _check_train_loss(micro.model, loss, t, n_iters, limit, train_loss[0])
        train_loss[t] = loss
        if fps is not None:
            fp = _fingerprint(opt, t, w, g, gidx)
            fps[t] = 0 if fp is None else fp     # None: the step refuses g (raised below)
        failure = shard.step(g, t, n_iters)
        w = np.concatenate(_exchange(shard.comm, None if failure else shard.w_local(),
                                     failure))
    return w, train_loss, fps


def _reverse(opt, micro, shard, n_iters, adj, fps, gidx, check_reversal):
    """Undo the ``n_iters`` steps block by block and accumulate the adjoints into ``adj``
    (the maths of :func:`revtrain.hypergrad_steps._reverse_step`; per-group sums per
    block, added in block order). On return ``adj.dw`` is the full d f / d theta0."""
    comm, G = shard.comm, adj.d_wd.shape[0]
    lo, hi = shard.lo, shard.hi
    dw, dv = adj.dw[lo:hi].copy(), np.zeros(hi - lo)
    blocks = list(zip(shard.ranges(), shard.opts))
    v = [o.velocity(s) for o, s in zip(shard.opts, shard.states)]
    for t in range(n_iters - 1, -1, -1):
        lr, gam, wd = opt.hyperparameters(t)
        om = 1.0 - gam
        u_loc = np.empty(hi - lo)
        d_lr_parts, pendings, failure = [], [], None
        for k, ((a, b), o) in enumerate(blocks):
            s = shard.local(a, b)
            p = np.zeros(G)
            adjoint_before(dw[s], v[k], dv[s], o.group_index(b - a), lr, om, p, u_loc[s])
            d_lr_parts.append(p)
        for k, ((a, b), o) in enumerate(blocks):
            try:
                pendings.append(o.unstep_weights(shard.states[k]))
            except FixedPointError as e:
                failure = ("reversal", f"the reverse pass left the fixed-point range at "
                           f"iteration {t} ({e}): train_batch or the gradient is not "
                           "deterministic, or the state was corrupted", None, None, None, e)
                break
        mine = None if failure else (np.concatenate([p.w for p in pendings]), u_loc)
        gathered = _exchange(comm, mine, failure)
        w_t = np.concatenate([x[0] for x in gathered])
        u = np.concatenate([x[1] for x in gathered])
        theta_t = from_fixed(w_t, opt.frac_bits)

        def check(g, t=t, w_t=w_t):
            return _fingerprint(opt, t, w_t, g, gidx) == fps[t]

        g, hu = micro.gradient_and_hvp(theta_t, t, u if u.any() else None, check)
        parts = []
        for k, ((a, b), o) in enumerate(blocks):
            s = shard.local(a, b)
            try:
                shard.states[k] = o.unstep_velocity(pendings[k], g[a:b])
            except (FixedPointError, FloatingPointError) as e:
                failure = ("reversal", f"the reverse pass left the fixed-point range at "
                           f"iteration {t} ({e}): train_batch or the gradient is not "
                           "deterministic, or the state was corrupted", None, None, None, e)
                break
            v[k] = o.velocity(shard.states[k])
            pm, pw = np.zeros(G), np.zeros(G)
            hu_k = u[a:b] if hu is None else hu[a:b]
            finite = adjoint_after(dw[s], dv[s], v[k], g[a:b], theta_t[a:b], hu_k, u[a:b],
                                   hu is not None, o.group_index(b - a), gam, wd, pm, pw)
            parts.append((d_lr_parts[k], pm, pw, bool(finite)))
        d_lr, d_mom, wdv, finite = np.zeros(G), np.zeros(G), np.zeros(G), True
        for rank_parts in _exchange(comm, None if failure else parts, failure):
            for p_lr, p_mom, p_wd, fin in rank_parts:       # block order
                d_lr, d_mom, wdv = d_lr + p_lr, d_mom + p_mom, wdv + p_wd
                finite = finite and fin
        adj.d_lr[t] += d_lr
        adj.d_mom[t] += d_mom
        adj.d_wd -= om * wdv
        if not finite:
            raise _overflow(t)
    failure = shard.check_end() if check_reversal else None
    adj.dw = np.concatenate(_exchange(comm, dw, failure))
