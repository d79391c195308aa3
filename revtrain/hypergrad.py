"""Hypergradients by running exact SGD with momentum backwards.

After Maclaurin, Duvenaud & Adams (2015), "Gradient-based hyperparameter
optimization through reversible learning": training is run forward with
:class:`~revtrain.ExactSGD`; the reverse pass undoes it step by step, bit for
bit, recovering every ``(w_t, v_t)`` from the information buffer instead of
storing the trajectory, and accumulates the gradient of the validation loss
with respect to the learning rates, momenta, weight decay, initial weights
and initial weight scale.

Each reverse iteration needs the training gradient at ``w_t`` bit for bit (to
undo the velocity update) and a Hessian-vector product there. One complex-step
pass, ``model.grad_and_hvp``, gives both, but its gradient (the real part of a
complex128 computation, always by standard BPTT) is not guaranteed to be
bit-identical to the ``loss_and_grad`` gradient the forward step used: for some
models, BPTT modes and sizes it differs in the last bit of a few entries. The
step only uses the gradient through its fixed-point increment
``rint((1 - gamma) * 2**Fv * (g + lambda * w))``, so the forward pass keeps a
64-bit fingerprint of that increment vector per iteration (8 bytes, against
about ``P * log2(1/gamma) / 8`` bytes of buffer); the reverse pass takes the
complex-step gradient when the fingerprint of its increment matches and
otherwise recomputes the gradient with ``loss_and_grad``.

Layout: this module holds the public function, its result types and the
argument checks; :mod:`revtrain.hypergrad_steps` the single-process forward
and reverse passes; :mod:`revtrain.hypergrad_shard` the same passes over
micro-batches and parameter blocks, in one process or under MPI
(``comm=``, ``micro_batches=``).
"""
import math
import time
from typing import NamedTuple, Optional, Tuple

import numpy as np

from ._checks import nonneg_int, positive_int
from .errors import DivergenceError
from .distributed import check_parallel, comm_size
from .optim import ExactSGD
from .trainer import step_dropout_seed  # noqa: F401  (hypergrad_steps looks it up here)
from .hypergrad_shard import block_bounds, rank_blocks, run_sharded
from .hypergrad_steps import (DIVERGED_RATIO, DIVERGED_SOFTMAX, _HINT, _Adjoint,  # noqa: F401
                              _Reverse, _check_end, _fingerprint, _forward, _reverse_step)


class HyperStats(NamedTuple):
    """Memory and time of one :func:`hypergradient` call.

    Attributes
    ----------
    buffer_bytes : int
        Bytes held by the information buffer after the forward pass (its
        peak): 4 per stored word plus 8 per stream state (summed over the
        processes of an MPI run).
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
    fingerprint_bytes : int
        Bytes of the per-iteration fingerprints of the velocity increments
        (8 per iteration; 0 for a model without ``grad_and_hvp``), held with
        the buffer.
    reverse_gradients : int
        Training gradients the reverse pass computed with ``loss_and_grad``
        besides its one ``grad_and_hvp`` per iteration: iterations where the
        complex-step gradient's increment differed from the forward's, or
        that needed no Hessian-vector product (then ``loss_and_grad`` alone);
        every iteration for a model without ``grad_and_hvp``.
    rank_buffer_bytes : int
        The part of ``buffer_bytes`` this process holds: with
        ``micro_batches`` under MPI, the buffers of its parameter blocks
        (about ``buffer_bytes / n_ranks``); otherwise ``buffer_bytes``.
    n_ranks : int
        MPI processes that shared the run (1 without ``comm``).
    micro_batches : int
        Micro-batches per training batch (0: the run without micro-batches).
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
    fingerprint_bytes: int = 0
    reverse_gradients: int = 0
    rank_buffer_bytes: int = 0
    n_ranks: int = 1
    micro_batches: int = 0


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


def _check_args(model, opt, theta0, train_batch, val_data, n_iters):
    """Validate :func:`hypergradient`'s arguments.

    Returns ``(opt, theta0, n_iters, val_data, batch)``: the optimiser bound to
    the model's groups if it had none, ``theta0`` checked against the layout,
    ``n_iters`` a Python int, and ``batch(t)`` that checks ``train_batch(t)``.
    """
    if not isinstance(opt, ExactSGD):
        raise TypeError(f"opt must be an ExactSGD, got {type(opt).__name__}")
    if getattr(model, "dtype", "float64") != "float64":
        raise ValueError(f"hypergradients need float64 (their reverse pass uses the complex-step "
                         f"hvp): this {type(model).__name__} computes in {model.dtype}; build "
                         f"the model with dtype='float64'")
    n_iters = positive_int(n_iters, "n_iters")
    if not callable(train_batch):
        raise ValueError(f"train_batch must be a callable t -> (x, y), got "
                         f"{type(train_batch).__name__}")
    val_data = _check_xy(val_data, "val_data")
    theta0 = model.layout.check(np.asarray(theta0), name="theta0")
    if theta0.dtype != np.float64:
        raise ValueError(f"theta0 must be float64, got {theta0.dtype}")
    opt.check_iterations(n_iters)
    if opt.groups is None:
        opt = opt.with_groups(model.layout)
    opt.group_index(model.layout.size)            # checks the groups against the size

    def batch(t):
        return _check_xy(train_batch(t), f"train_batch({t})")

    return opt, theta0, n_iters, val_data, batch


def _validation(model, theta, val_data, n_iters):
    """``(val_loss, dw)``: the validation loss at the trained weights and its gradient."""
    where = f"training diverged: after {n_iters} iterations"
    try:
        val_loss, dw = model.loss_and_grad(theta, *val_data)
    except FloatingPointError as e:
        raise DivergenceError(f"{where} the validation loss cannot be computed "
                              f"({getattr(e, 'reason', e)})",
                              step=n_iters, hint=_HINT) from e
    val_loss = float(val_loss)
    if not (math.isfinite(val_loss) and np.isfinite(dw).all()):
        raise DivergenceError(f"{where} the validation loss is {val_loss:.4g} (or its "
                              f"gradient is not finite)", step=n_iters, loss=val_loss,
                              hint=_HINT)
    return val_loss, np.array(dw, dtype=np.float64)


def _check_parallel(comm, micro_batches, P):
    """Validate ``comm`` and ``micro_batches`` (:func:`~revtrain.distributed.check_parallel`,
    and at most one process per parameter block); return the number of processes ``N``."""
    comm, micro_batches = check_parallel(comm, micro_batches)
    if micro_batches is not None:
        rank_blocks(len(block_bounds(P)) - 1, comm)          # at most one process per block
    return comm_size(comm)


def _result(opt, model, theta0, adj, val_loss, final_theta, train_loss, stats):
    """Assemble the :class:`HyperGradient` in the shapes the optimiser was given.

    The ``init_scale`` dot products are taken with ``math.fsum`` (correctly
    rounded, so the same bits on every process and machine, whatever BLAS
    threading ``np.dot`` would use: OpenBLAS's threaded dot products of long
    vectors depend on the thread count).
    """
    layout = model.layout
    directions = layout.init_scale_direction(theta0)
    init_scale = np.array([math.fsum(adj.dw * directions[g]) for g in layout.groups])
    wd = np.array(adj.d_wd.sum()) if len(opt.weight_decay_shape) == 0 else adj.d_wd
    return HyperGradient(lr=_to_shape(adj.d_lr, opt.lr_shape),
                         momentum=_to_shape(adj.d_mom, opt.momentum_shape),
                         weight_decay=wd, init_scale=init_scale, theta0=adj.dw,
                         val_loss=val_loss, final_theta=final_theta,
                         train_loss=train_loss, groups=tuple(layout.groups), stats=stats)


def hypergradient(model, opt, theta0, train_batch, val_data, n_iters, *, bptt=None,
                  check_reversal=True, dropout_seed=None, comm=None, micro_batches=None):
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
    training loss at ``w_t``, applied to ``u = (1 - gamma_t) * dv``
    (elementwise: with per-group momenta the order matters). One
    ``model.grad_and_hvp`` per iteration gives ``g_t`` and ``H_t u``; its gradient
    is used to undo the step only if it gives the same fixed-point increment as
    the forward's ``loss_and_grad`` gradient (checked against a 64-bit
    fingerprint per iteration kept by the forward pass), else the gradient is
    recomputed with ``loss_and_grad`` (``stats.reverse_gradients`` counts these).
    Then ``dtheta0 = dw`` and
    ``d init_scale_g = dw . direction_g``. The fixed-point roundings are
    treated as the identity (each is at most half a unit in the last place).
    Memory: the buffer (about ``log2(1/gamma)`` bits per parameter and
    iteration), 8 bytes of fingerprint per iteration and O(P), not the
    ``8 * P * n_iters`` bytes of the trajectory.

    Training that diverges is stopped, not differentiated: the forward pass
    raises :class:`~revtrain.DivergenceError` when a training loss or gradient
    is not finite, a step leaves the optimiser's fixed-point range, or a
    training loss exceeds ``10`` times the first
    iteration's (for a softmax model, ``loss_kind == "softmax"``, only when it
    is also above ``3 * log(n_out)``, three times the loss of a uniform
    guess), and after training when the validation loss is not finite.

    Parameters
    ----------
    model : RecurrentModel
        Anything with ``layout``, ``loss_and_grad(theta, x, y, bptt=)`` and
        ``grad_and_hvp(theta, x, y, v) -> (loss, grad, Hv)`` or, without it,
        ``hvp(theta, x, y, v)`` (all also taking ``dropout_seed=`` when the
        model has ``dropout > 0`` and ``dropout_seed`` is given); ``n_out``
        and ``loss_kind`` are used if present. A stack (``n_layers > 1``,
        ``embed_dim``) has the groups ``embed``, ``layer0``, ``layer1``, ...,
        ``output``.
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
        Check that the reverse pass recovered ``w_0 == to_fixed(theta0)`` and
        ``v_0 == 0`` bit for bit and emptied the buffer (default True; cheap).
    dropout_seed : int >= 0, optional
        For a model with ``dropout > 0``: train with variational dropout,
        iteration ``t`` drawing its masks from
        ``revtrain.trainer.step_dropout_seed(dropout_seed, t + 1)`` (as a
        :class:`~revtrain.Trainer` seeded ``dropout_seed`` does at step
        ``t + 1``); the reverse pass uses the same masks at the same
        iteration, so the hypergradient is that of this (deterministic)
        run and ``w_0`` is still recovered exactly. None (default): training
        runs without dropout. The validation loss never uses dropout.
        Ignored for a model without dropout. With ``micro_batches``,
        micro-batch ``m`` of iteration ``t`` draws its own masks from
        ``revtrain.hypergrad_shard.micro_dropout_seed(dropout_seed, t, m)``
        (independent of the number of processes).
    micro_batches : int, optional
        Cut every training batch into this many equal micro-batches along its
        batch axis and take the training gradients and Hessian-vector
        products as exact fixed-point sums over them (``2**-40`` resolution,
        :func:`revtrain.distributed.reduce_micro`), with ExactSGD's state and
        buffer kept in fixed parameter blocks (:mod:`revtrain.hypergrad_shard`
        has the details). Must divide the batch size and be a multiple of the
        number of processes. The result is the same bits with ``comm=None``
        and on any number of processes; without dropout it differs from the
        run without micro-batches only through the rounding of the summed
        gradients (measured on small runs: ``1e-8`` relative or less).
        None (default): whole batches in this process, bits as before.
    comm : mpi4py communicator, optional
        Share the run between the ``N`` processes of ``comm`` (data parallel;
        needs ``micro_batches``): process ``r`` computes micro-batches
        ``r*M/N .. (r+1)*M/N - 1`` and keeps and reverses only its parameter
        blocks' optimiser state (``stats.rank_buffer_bytes``, about ``1/N`` of
        the buffer). Every process must call with the same arguments; every
        process gets the full result. An error found on one process
        (divergence, a failed reversal, an exception of the model or of
        ``train_batch``) is raised on all of them. Default None.

    Returns
    -------
    HyperGradient

    Raises
    ------
    DivergenceError
        (a ``FloatingPointError``) If training diverged, as above, or a step
        would take the weights or velocity outside the optimiser's fixed-point
        range; also when the reverse accumulation overflows (a chaotic
        training run, whose hypergradient does not exist in any useful
        sense). ``e.step`` is the 1-based iteration (``t + 1``; ``n_iters``
        for the validation loss), ``e.loss`` the loss that stopped it (or
        None); the message names the iteration, ``e.reason`` is it without
        the advice, ``e.hint`` the advice (a smaller learning rate).
    ReversalError
        If the reverse pass does not recover the initial weights, a zero
        velocity and an empty buffer bit for bit (``train_batch`` or the
        gradient not deterministic, or state corrupted).
    ValueError
        For bad arguments (schedules shorter than ``n_iters``, shapes, ...;
        ``micro_batches`` that does not divide the batch size or is not a
        multiple of the number of processes; ``comm`` with more than one
        process but no ``micro_batches``; more processes than parameter
        blocks).
    TypeError
        If ``comm`` is not an mpi4py communicator (or None).
    """
    opt, theta0, n_iters, val_data, batch = _check_args(model, opt, theta0, train_batch,
                                                        val_data, n_iters)
    if dropout_seed is not None:
        dropout_seed = nonneg_int(dropout_seed, "dropout_seed")
    P, G = theta0.shape[0], opt.n_groups
    N = _check_parallel(comm, micro_batches, P)
    if micro_batches is not None:
        adj, val_loss, final_theta, train_loss, kw = run_sharded(
            model, opt, theta0, batch, val_data, n_iters, bptt=bptt, drop=dropout_seed,
            comm=comm if N > 1 else None, n_micro=micro_batches,
            check_reversal=check_reversal, validation=_validation)
        stats = HyperStats(trajectory_bytes=8 * P * n_iters, n_iters=n_iters, n_params=P, **kw)
        return _result(opt, model, theta0, adj, val_loss, final_theta, train_loss, stats)
    both = callable(getattr(model, "grad_and_hvp", None))
    t0, c0 = time.perf_counter(), time.process_time()
    state, w_init, train_loss, fps = _forward(model, opt, theta0, batch, n_iters, bptt,
                                              dropout_seed, both)
    t1, c1 = time.perf_counter(), time.process_time()
    buffer_bytes, info_bits = state.buffer.nbytes, state.buffer.info_bits

    final_theta = opt.params(state)
    val_loss, dw = _validation(model, final_theta, val_data, n_iters)
    adj = _Adjoint(dw, n_iters, G)
    rev = _Reverse(model, opt, batch, bptt, dropout_seed, opt.group_index(P), fps)
    v = opt.velocity(state)
    for t in range(n_iters - 1, -1, -1):
        state, v = _reverse_step(rev, state, v, t, adj)
    t2, c2 = time.perf_counter(), time.process_time()
    if check_reversal:
        _check_end(state, w_init)
    stats = HyperStats(buffer_bytes=int(buffer_bytes), info_bits=float(info_bits),
                       trajectory_bytes=8 * P * n_iters, forward_seconds=t1 - t0,
                       reverse_seconds=t2 - t1, n_iters=n_iters, n_params=P,
                       forward_cpu_seconds=c1 - c0, reverse_cpu_seconds=c2 - c1,
                       fingerprint_bytes=0 if fps is None else int(fps.nbytes),
                       reverse_gradients=rev.gradients, rank_buffer_bytes=int(buffer_bytes))
    return _result(opt, model, theta0, adj, val_loss, final_theta, train_loss, stats)
