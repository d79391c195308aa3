"""Hypergradients by running exact SGD with momentum backwards (DESIGN §3).

After Maclaurin, Duvenaud & Adams (2015), "Gradient-based hyperparameter
optimization through reversible learning": training is run forward with
:class:`~revtrain.ExactSGD`; the reverse pass undoes it step by step, bit for
bit, recovering every ``(w_t, v_t)`` from the information buffer instead of
storing the trajectory, and accumulates the gradient of the validation loss
with respect to the learning rates, momenta, weight decay, initial weights
and initial weight scale.
"""
import time
from typing import NamedTuple, Optional, Tuple

import numpy as np

from .errors import FixedPointError, ReversalError
from .optim import ExactSGD
from ._kernels.sgd import group_dot


class HyperStats(NamedTuple):
    """Memory and time of one :func:`hypergradient` call.

    Attributes
    ----------
    buffer_bytes : int
        Bytes held by the information buffer after the forward pass (its
        peak): 4 per stored word plus 8 per stream state.
    info_bits : float
        Information destroyed by training, ``P * sum_t log2(1/gamma_t)``
        (per group), in bits: the lower bound on what must be stored.
    trajectory_bytes : int
        Bytes to store ``w_t`` in float64 for every iteration,
        ``8 * P * n_iters``, as a reverse pass without exact reversal needs.
    forward_seconds, reverse_seconds : float
        Wall time of the training run and of the reverse pass (including the
        validation gradient).
    n_iters, n_params : int
    forward_cpu_seconds, reverse_cpu_seconds : float
        The same in CPU time of this process (less sensitive to other load on
        the machine).
    """
    buffer_bytes: int
    info_bits: float
    trajectory_bytes: int
    forward_seconds: float
    reverse_seconds: float
    n_iters: int
    n_params: int
    forward_cpu_seconds: float = 0.0
    reverse_cpu_seconds: float = 0.0


class HyperGradient(NamedTuple):
    """Gradients of the validation loss after training, and what training produced.

    Attributes
    ----------
    lr, momentum : ndarray of float64
        d val_loss / d lr and / d momentum, in the shape the optimiser was given
        (a scalar is returned as a 0-d array). The momentum derivative is taken
        at the quantised momentum ``n / 2**16`` actually used. Schedule entries
        beyond ``n_iters`` get 0.
    weight_decay : ndarray of float64
        Scalar (0-d) or per group ``(n_groups,)``, like the optimiser's.
    init_scale : ndarray of float64, shape (n_groups,)
        d val_loss / d log(s_g), where the initial weights of group ``g`` are
        scaled by ``s_g`` (``ParamLayout.init_scale_direction``), in the order
        of ``groups``.
    theta0 : ndarray of float64, shape (P,)
        d val_loss / d theta0 (the initial weights).
    val_loss : float
        Validation loss at ``final_theta``.
    final_theta : ndarray of float64, shape (P,)
        Weights after training.
    train_loss : ndarray of float64, shape (n_iters,)
        Training loss at each iteration (before its step).
    groups : tuple of str
        Names of the model's parameter groups.
    stats : HyperStats
    """
    lr: np.ndarray
    momentum: np.ndarray
    weight_decay: np.ndarray
    init_scale: np.ndarray
    theta0: np.ndarray
    val_loss: float
    final_theta: np.ndarray
    train_loss: np.ndarray
    groups: Tuple[str, ...]
    stats: Optional[HyperStats]


def _to_shape(g, shape):
    """Reduce per-(iteration, group) gradients ``g (n_iters, G)`` to a hyperparameter's shape."""
    if len(shape) == 0:
        return np.array(g.sum())
    out = np.zeros(shape)
    if len(shape) == 1:
        out[:g.shape[0]] = g.sum(axis=1)
    else:
        out[:g.shape[0]] = g
    return out


def _check_xy(data, name):
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"{name} must be a pair (x, y), got {type(data).__name__}")
    return data


def hypergradient(model, opt, theta0, train_batch, val_data, n_iters, *, bptt=None,
                  check_reversal=True):
    """Gradient of the validation loss after ``n_iters`` steps of exact SGD, by reversal.

    Forward, for ``t = 0 .. n_iters-1`` (``ExactSGD`` in fixed point)::

        g_t = grad L_train(w_t; train_batch(t)) + lambda * w_t
        v_{t+1} = gamma_t * v_t - (1 - gamma_t) * g_t
        w_{t+1} = w_t + alpha_t * v_{t+1}

    then ``f = L_val(w_T)``. Backward, from ``dw = grad f(w_T)``, ``dv = 0``,
    for ``t = n_iters-1 .. 0`` (sums over the parameters of each group)::

        d alpha_t  = dw . v_{t+1}
        dv        += alpha_t * dw
        (w_t, v_t) = unstep(...)            exact: w_t, then g_t at w_t, then v_t
        d gamma_t  = dv . (v_t + g_t)
        d lambda  -= (1 - gamma_t) * w_t . dv
        dw        -= (H_t + lambda) ((1 - gamma_t) * dv)
        dv        *= gamma_t

    with ``H_t u`` the exact (complex-step) Hessian-vector product of the
    training loss at ``w_t`` (``model.hvp``), applied to ``u = (1 - gamma_t) * dv``
    (elementwise: with per-group momenta the order matters). Then ``dtheta0 = dw`` and
    ``d init_scale_g = dw . direction_g``. The fixed-point roundings are
    treated as the identity (each is at most half a unit in the last place).
    Memory: the buffer (about ``log2(1/gamma)`` bits per parameter and
    iteration) plus O(P), not the ``8 * P * n_iters`` bytes of the trajectory.

    Parameters
    ----------
    model : RecurrentModel
        Anything with ``layout``, ``loss_and_grad(theta, x, y, bptt=)`` and
        ``hvp(theta, x, y, v)``.
    opt : ExactSGD
        Per-group hyperparameters use the model's groups (``model.layout``)
        unless the optimiser was given its own.
    theta0 : ndarray of float64, shape (P,)
        Initial weights (rounded to the optimiser's fixed point).
    train_batch : callable ``t -> (x, y)``
        Training batch of iteration ``t``; must be deterministic (it is called
        again, in reverse order, by the backward pass).
    val_data : (x, y)
        Validation inputs and targets.
    n_iters : int
        Training iterations; at most the length of the schedules.
    bptt : str, optional
        BPTT mode for the training gradients (default: the model's).
    check_reversal : bool
        Compare the recovered ``w_0`` with ``to_fixed(theta0)`` and check that
        the buffer is empty (default True; cheap).

    Returns
    -------
    HyperGradient

    Raises
    ------
    ReversalError
        If the reverse pass does not recover the initial weights bit for bit
        (``train_batch`` or the gradient not deterministic, or state corrupted).
    ValueError
        For bad arguments (schedules shorter than ``n_iters``, shapes, ...).
    FloatingPointError
        If the training loss or the reverse accumulation overflows (chaotic training).
    """
    if not isinstance(opt, ExactSGD):
        raise TypeError(f"opt must be an ExactSGD, got {type(opt).__name__}")
    if isinstance(n_iters, bool) or not isinstance(n_iters, (int, np.integer)) or n_iters < 1:
        raise ValueError(f"n_iters must be a positive int, got {n_iters!r}")
    n_iters = int(n_iters)
    if not callable(train_batch):
        raise ValueError(f"train_batch must be a callable t -> (x, y), got "
                         f"{type(train_batch).__name__}")
    xv, yv = _check_xy(val_data, "val_data")
    layout = model.layout
    theta0 = layout.check(np.asarray(theta0), name="theta0")
    if theta0.dtype != np.float64:
        raise ValueError(f"theta0 must be float64, got {theta0.dtype}")
    opt.check_iterations(n_iters)
    if opt.groups is None:
        opt = opt.with_groups(layout)
    P = layout.size
    gidx = opt.group_index(P)
    G = opt.n_groups

    def batch(t):
        return _check_xy(train_batch(t), f"train_batch({t})")

    # ---------------------------------------------------------------- forward
    t0, c0 = time.perf_counter(), time.process_time()
    state = opt.init(theta0)
    w_init = state.w.copy()
    per_iter = opt._tables()["bits"].max(axis=1)        # most bits per parameter, per row
    bits = float(per_iter[:n_iters].sum()) if per_iter.shape[0] > 1 else per_iter[0] * n_iters
    S = state.buffer.n_streams
    state.buffer.reserve(int(bits * (-(-P // S)) / 32.0 * 1.02) + 64)
    train_loss = np.empty(n_iters)
    for t in range(n_iters):
        x, y = batch(t)
        loss, g = model.loss_and_grad(opt.params(state), x, y, bptt=bptt)
        train_loss[t] = loss
        state = opt.step(state, g)
    t1, c1 = time.perf_counter(), time.process_time()
    buffer_bytes = state.buffer.nbytes
    info_bits = state.buffer.info_bits

    # --------------------------------------------------------------- reverse
    final_theta = opt.params(state)
    val_loss, dw = model.loss_and_grad(final_theta, xv, yv)
    dw = dw.copy()
    dv = np.zeros(P)
    d_lr = np.zeros((n_iters, G))
    d_mom = np.zeros((n_iters, G))
    d_wd = np.zeros(G)
    seen = {}

    def grad_fn(theta, t):
        x, y = batch(t)
        _, g = model.loss_and_grad(theta, x, y, bptt=bptt)
        seen["theta"], seen["g"], seen["x"], seen["y"] = theta, g, x, y
        return g

    for t in range(n_iters - 1, -1, -1):
        lr, gam, wd = opt.hyperparameters(t)
        v_next = opt.velocity(state)
        group_dot(dw, v_next, gidx, d_lr[t])
        dv += lr[gidx] * dw
        try:
            state = opt.unstep(state, grad_fn)
        except FixedPointError as e:
            # the forward pass stayed in range, so its exact inverse does too
            raise ReversalError(f"the reverse pass left the fixed-point range at iteration "
                                f"{t} ({e}): train_batch or the gradient is not "
                                "deterministic, or the state was corrupted") from e
        w_t, g_t = seen["theta"], seen["g"]
        v_t = opt.velocity(state)
        wd_e = wd[gidx]
        group_dot(dv, v_t + g_t + wd_e * w_t, gidx, d_mom[t])
        c = (1.0 - gam)[gidx]
        tmp = np.zeros(G)
        group_dot(w_t, dv, gidx, tmp)
        d_wd -= (1.0 - gam) * tmp
        if not (np.isfinite(dv).all() and np.isfinite(dw).all()):
            raise FloatingPointError(
                f"the hypergradient overflowed going back through iteration {t}: the "
                "training run is chaotic (learning rate or momentum too large for it); "
                "its hypergradients do not exist in any useful sense")
        cdv = c * dv                       # (1 - gamma) dv, elementwise
        if np.any(cdv):
            # d g / d w = H + diag(lambda), so dw -= (H + diag(lambda)) diag(1 - gamma) dv:
            # the Hessian acts on (1 - gamma) * dv (not the other way round when gamma
            # differs between groups)
            dw -= model.hvp(w_t, seen["x"], seen["y"], cdv) + wd_e * cdv
        dv *= gam[gidx]
    t2, c2 = time.perf_counter(), time.process_time()
    if check_reversal:
        if not np.array_equal(state.w, w_init):
            bad = np.flatnonzero(state.w != w_init)
            raise ReversalError(
                f"the reverse pass recovered w_0 different from to_fixed(theta0) in "
                f"{bad.size} of {P} parameters (first at index {int(bad[0])}): train_batch or "
                "the gradient is not deterministic, or the state was corrupted")
        if state.v.any() or not state.buffer.is_empty():
            raise ReversalError("the reverse pass did not end with zero velocity and an empty "
                                "information buffer: the state was corrupted")

    directions = layout.init_scale_direction(theta0)
    init_scale = np.array([float(np.dot(dw, directions[g])) for g in layout.groups])
    wd_grad = np.array(d_wd.sum()) if len(opt.weight_decay_shape) == 0 else d_wd
    stats = HyperStats(buffer_bytes=int(buffer_bytes), info_bits=float(info_bits),
                       trajectory_bytes=8 * P * n_iters, forward_seconds=t1 - t0,
                       reverse_seconds=t2 - t1, n_iters=n_iters, n_params=P,
                       forward_cpu_seconds=c1 - c0, reverse_cpu_seconds=c2 - c1)
    return HyperGradient(lr=_to_shape(d_lr, opt.lr_shape),
                         momentum=_to_shape(d_mom, opt.momentum_shape),
                         weight_decay=wd_grad, init_scale=init_scale, theta0=dw,
                         val_loss=float(val_loss), final_theta=final_theta,
                         train_loss=train_loss, groups=tuple(layout.groups), stats=stats)
