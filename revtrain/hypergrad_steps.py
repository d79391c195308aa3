"""The single-process forward and reverse passes of :func:`revtrain.hypergradient`.

Split from :mod:`revtrain.hypergrad` (which holds the public function, its
result types and the argument checks; see its docstring for the maths).
:mod:`revtrain.hypergrad_shard` runs the same passes over micro-batches and
parameter shards, optionally under MPI, and reuses the helpers here.
"""
import math

import numpy as np

from .errors import DivergenceError, FixedPointError, ReversalError
from .errors import check_reversal as _check_reversal
from ._kernels.adjoint import fingerprint_kernel, adjoint_before, adjoint_after

#: Training stops (DivergenceError) when its loss exceeds this many times the first
#: iteration's loss (for a softmax loss, only if it is also above DIVERGED_SOFTMAX * log(n_out)).
DIVERGED_RATIO = 10.0
#: A softmax loss above this many times log(n_out) (that of a uniform guess) may be divergence.
DIVERGED_SOFTMAX = 3.0
_HINT = "try a smaller learning rate"

# ------------------------------------------------------------------- forward
def _loss_limit(model, first_loss):
    """Training losses above this count as divergence (``inf``: no limit).

    ``DIVERGED_RATIO * first_loss`` when the first loss is positive; for a
    softmax model (``loss_kind == "softmax"`` and an ``n_out``) at least
    ``DIVERGED_SOFTMAX * log(n_out)``, three times the loss of a uniform guess,
    so a well-trained start with a tiny loss is not stopped by noise.
    """
    limit = DIVERGED_RATIO * first_loss if first_loss > 0 else math.inf
    n_out = getattr(model, "n_out", None)
    if getattr(model, "loss_kind", None) == "softmax" and n_out is not None and n_out > 1:
        limit = max(limit, DIVERGED_SOFTMAX * math.log(n_out))
    return limit


def _check_train_loss(model, loss, t, n_iters, limit, first):
    """The divergence limit after iteration ``t``'s training loss ``loss`` (set from the first
    iteration's, ``first``); raise DivergenceError when a later loss is above it."""
    if t == 0:
        return _loss_limit(model, loss)
    if loss > limit:
        raise DivergenceError(
            f"training diverged at iteration t={t} (step {t + 1} of {n_iters}): the "
            f"training loss {loss:.4g} is above {limit:.4g} (the first iteration's was "
            f"{first:.4g})", step=t + 1, loss=loss, hint=_HINT)
    return limit


def _dropout_kw(model, dropout_seed, t):
    """``{"dropout_seed": ...}`` of iteration ``t``, or ``{}`` (no dropout: the model has
    none or no seed was given; a model without dropout need not take the argument).

    The seed is ``revtrain.hypergrad.step_dropout_seed(dropout_seed, t + 1)``, looked
    up in :mod:`revtrain.hypergrad` at call time (it can be replaced there, as a test
    does to break the reversal)."""
    if dropout_seed is None or not getattr(model, "dropout", 0):
        return {}
    from . import hypergrad
    return {"dropout_seed": hypergrad.step_dropout_seed(dropout_seed, t + 1)}


def _train_gradient(model, w, x, y, bptt, t, n_iters, drop):
    """``(loss, grad)`` of iteration ``t``; a DivergenceError if either is not finite."""
    where = f"training diverged at iteration t={t} (step {t + 1} of {n_iters})"
    try:
        loss, g = model.loss_and_grad(w, x, y, bptt=bptt, **_dropout_kw(model, drop, t))
    except DivergenceError:
        raise
    except FloatingPointError as e:
        raise DivergenceError(f"{where}: {getattr(e, 'reason', e)}", step=t + 1,
                              hint=_HINT) from e
    loss = float(loss)
    if not math.isfinite(loss):
        raise DivergenceError(f"{where}: the training loss is {loss}", step=t + 1, loss=loss,
                              hint=_HINT)
    if not np.isfinite(g).all():
        raise DivergenceError(f"{where}: the training gradient has NaN or inf "
                              f"(loss {loss:.4g})", step=t + 1, loss=loss, hint=_HINT)
    return loss, g


def _step(opt, state, g, t, n_iters):
    """``opt.step``; leaving the fixed-point range there is divergence (DivergenceError)."""
    try:
        return opt.step(state, g)
    except FixedPointError as e:
        raise DivergenceError(f"training diverged at iteration t={t} (step {t + 1} of "
                              f"{n_iters}): the weights or velocity would leave the optimiser's "
                              f"fixed-point range", step=t + 1,
                              hint="try a smaller learning rate, or fewer (velocity_)frac_bits "
                              "for more range") from e


def _fingerprint(opt, t, w, g, gidx):
    """Fingerprint (uint64) of the fixed-point velocity increment that ``opt``'s step
    ``t`` makes from weights ``w`` (int64) and training gradient ``g``, or None when
    that step would refuse ``g`` (not finite, out of range).

    Equal fingerprints mean (up to a 2**-64 chance for increments that differ in
    several entries; never for one entry) that the step, and so its exact undo,
    is the same for both gradients. ``cv`` and ``wd`` are the step kernels'
    (``(1 - gamma_t) * 2**Fv`` from the quantised momentum, the weight decay).
    """
    _, gam, wd = opt.hyperparameters(t)
    cv = (1.0 - gam) * 2.0 ** opt.velocity_frac_bits
    ok, h = fingerprint_kernel(np.ascontiguousarray(g, dtype=np.float64), w, gidx, cv,
                                np.ascontiguousarray(wd), 2.0 ** -opt.frac_bits)
    return h if ok else None


def _forward(model, opt, theta0, batch, n_iters, bptt, drop, fingerprints):
    """Train ``n_iters`` exact steps from ``theta0``.

    Returns ``(state, w_init, train_loss, fps)``: the final :class:`ExactSGDState`,
    ``to_fixed(theta0)`` (int64 ``(P,)``), the training losses ``(n_iters,)`` and,
    if ``fingerprints``, the :func:`_fingerprint` of every step (uint64
    ``(n_iters,)``; else None). Raises :class:`DivergenceError` as
    :func:`hypergradient` documents.
    """
    state = opt.init(theta0)
    w_init = state.w.copy()
    gidx = opt.group_index(w_init.shape[0])
    S = state.buffer.n_streams
    chunk = -(-state.w.shape[0] // S)
    state.buffer.reserve(int(opt.info_bits_per_param(n_iters) * chunk / 32.0 * 1.02) + 64)
    train_loss = np.empty(n_iters)
    fps = np.zeros(n_iters, dtype=np.uint64) if fingerprints else None
    limit = math.inf
    for t in range(n_iters):
        x, y = batch(t)
        loss, g = _train_gradient(model, opt.params(state), x, y, bptt, t, n_iters, drop)
        limit = _check_train_loss(model, loss, t, n_iters, limit, train_loss[0])
        train_loss[t] = loss
        w_t = state.w
        state = _step(opt, state, g, t, n_iters)
        if fps is not None:       # the step took g, so its increment is finite and in range
            fps[t] = _fingerprint(opt, t, w_t, g, gidx)
    return state, w_init, train_loss, fps


# ------------------------------------------------------------------- reverse
class _Adjoint:
    """What the reverse pass accumulates.

    ``dw``, ``dv`` (float64 ``(P,)``): d f / d w_t and d f / d v_t of the
    validation loss ``f``; ``d_lr``, ``d_mom`` (``(n_iters, G)``) and ``d_wd``
    (``(G,)``): the hyperparameter gradients per iteration and group.
    """
    __slots__ = ("dw", "dv", "d_lr", "d_mom", "d_wd")

    def __init__(self, dw, n_iters, G):
        self.dw = dw
        self.dv = np.zeros_like(dw)
        self.d_lr = np.zeros((n_iters, G))
        self.d_mom = np.zeros((n_iters, G))
        self.d_wd = np.zeros(G)


def _undo(fn, t, *args):
    """``fn(*args)``, an optimiser's unstep half; leaving the range means a broken reversal."""
    try:
        return fn(*args)
    except FixedPointError as e:
        # the forward pass stayed in range, so its exact inverse does too
        raise ReversalError(f"the reverse pass left the fixed-point range at iteration "
                            f"{t} ({e}): train_batch or the gradient is not "
                            "deterministic, or the state was corrupted") from e


class _Reverse:
    """What the reverse pass needs besides the state and the adjoints, and its counts.

    ``fps``: the forward's fingerprints (None: the model has no ``grad_and_hvp``,
    so each iteration takes ``loss_and_grad`` and ``hvp``); ``gradients``: the
    ``loss_and_grad`` calls made so far.
    """
    __slots__ = ("model", "opt", "batch", "bptt", "drop", "gidx", "fps", "gradients")

    def __init__(self, model, opt, batch, bptt, drop, gidx, fps):
        self.model, self.opt, self.batch, self.bptt, self.drop = model, opt, batch, bptt, drop
        self.gidx, self.fps, self.gradients = gidx, fps, 0

    def gradient(self, w_t, x, y, dkw):
        self.gradients += 1
        return self.model.loss_and_grad(w_t, x, y, bptt=self.bptt, **dkw)[1]

    def gradient_and_hvp(self, t, pending, x, y, u, dkw):
        """``(g, Hu)`` at ``w_t = pending.theta``: ``g`` bit for bit the step's gradient
        or one with the same fixed-point increment (so the undo is exact), ``Hu`` the
        Hessian-vector product of the training loss (``u`` None when it is 0: then
        ``loss_and_grad`` alone, and ``Hu`` None)."""
        w_t = pending.theta
        if u is None:
            return self.gradient(w_t, x, y, dkw), None
        if self.fps is None:
            return self.gradient(w_t, x, y, dkw), self.model.hvp(w_t, x, y, u, **dkw)
        _, g, hu = self.model.grad_and_hvp(w_t, x, y, u, **dkw)
        fp = _fingerprint(self.opt, t, pending.w, g, self.gidx)
        if fp is None or fp != self.fps[t]:
            # the complex-step gradient rounds to another increment somewhere
            g = self.gradient(w_t, x, y, dkw)
        return g, hu


def _reverse_step(rev, state, v, t, adj):
    """Undo iteration ``t`` exactly and carry the adjoints ``adj`` back through it.

    With ``u = (1 - gamma_t) * dv`` (elementwise, per group) and sums over
    each group's parameters::

        d alpha_t  = dw . v_{t+1}
        dv        += alpha_t * dw
        w_t        = w_{t+1} - alpha_t * v_{t+1}            (exact, unstep_weights)
        g_t, H_t u = grad L_train(w_t; batch t), its Hessian times u
        v_t        = (v_{t+1} + (1 - gamma_t) * (g_t + lambda * w_t)) / gamma_t
                                                            (exact, unstep_velocity)
        d gamma_t  = dv . (v_t + g_t + lambda * w_t)
        d lambda  -= (1 - gamma_t) * w_t . dv
        dw        -= H_t u + lambda * u                     (H_t: Hessian of L_train at w_t)
        dv        *= gamma_t

    ``g_t`` and ``H_t u`` come from one ``grad_and_hvp`` (plus a ``loss_and_grad``
    when its gradient's increment does not match the forward's, see
    :meth:`_Reverse.gradient_and_hvp`). ``v`` is ``v_{t+1}`` in float64; ``rev.drop``
    the dropout seed of the run (or None): iteration ``t`` uses the masks its
    forward step used. Returns ``(state, v_t)``, the state before iteration ``t``
    and its velocity in float64; ``adj`` is updated in place.
    """
    model, opt, gidx = rev.model, rev.opt, rev.gidx
    dkw = _dropout_kw(model, rev.drop, t)
    lr, gam, wd = opt.hyperparameters(t)
    # d g / d w = H + diag(lambda): the Hessian acts on (1 - gamma) * dv, not the
    # other way round (they differ when gamma differs between groups)
    u = np.empty_like(adj.dv)
    nonzero = adjoint_before(adj.dw, v, adj.dv, gidx, lr, 1.0 - gam, adj.d_lr[t], u)
    pending = _undo(opt.unstep_weights, t, state)
    w_t = pending.theta
    x, y = rev.batch(t)
    g, hu = rev.gradient_and_hvp(t, pending, x, y, u if nonzero else None, dkw)
    state = _undo(opt.unstep_velocity, t, pending, g)
    v = opt.velocity(state)
    wdv = np.zeros(adj.d_wd.shape[0])
    finite = adjoint_after(adj.dw, adj.dv, v, np.ascontiguousarray(g, dtype=np.float64), w_t,
                            u if hu is None else np.ascontiguousarray(hu, dtype=np.float64),
                            u, hu is not None, gidx, gam, wd, adj.d_mom[t], wdv)
    adj.d_wd -= (1.0 - gam) * wdv
    if not finite:
        raise DivergenceError(
            f"the hypergradient overflowed going back through iteration t={t}: the "
            "training run is chaotic (learning rate or momentum too large for it) and "
            "its hypergradients do not exist in any useful sense", step=t + 1, hint=_HINT)
    return state, v


def _check_end(state, w_init):
    """Raise ReversalError unless the reverse pass ended at ``(to_fixed(theta0), 0)``
    with an empty buffer; the message names what differs."""
    P = w_init.shape[0]
    bad_w = np.flatnonzero(state.w != w_init)
    bad_v = np.flatnonzero(state.v)
    parts = []
    if bad_w.size:
        parts.append(f"w_0 (in {bad_w.size} of {P} parameters, first at index "
                     f"{int(bad_w[0])})")
    if bad_v.size:
        parts.append(f"velocity v_0 (must be 0; {bad_v.size} of {P} entries are not, first "
                     f"at index {int(bad_v[0])})")
    _check_reversal("hypergradient's reverse pass (train_batch and the model's gradients "
                   "must be deterministic)", not parts, state.buffer,
                   what=" and ".join(parts) or "w_0")
