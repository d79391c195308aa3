"""One training step: loss and gradient of a batch (whole or in micro-batches), the update.

Split from :mod:`revtrain.trainer` (the loop, files and callbacks live there).

Two ways to get a batch's gradient:

* **whole batch** (``micro_batches=None``, the default): one
  ``model.loss_and_grad`` call on the ``B`` rows, as revtrain always did.
* **micro-batches** (``micro_batches=M``): the ``b`` rows of the batch are cut
  into ``M`` consecutive blocks, block ``m`` holding rows
  ``[floor(m b / M), floor((m+1) b / M))`` (``n_m`` rows; all ``b / M`` when
  ``M`` divides ``b``, as it does for text, whose batches always have ``B``
  rows). The loss is a mean over rows (and steps), so with
  ``w_m = n_m / b``

      L = sum_m w_m L_m,        g = sum_m w_m g_m,

  and each ``w_m g_m`` is summed in fixed point by
  :func:`revtrain.distributed.reduce_micro`
  (``g = 2**-40 sum_m rint(w_m g_m 2**40)``, int64, overflow checked), so the
  gradient, the update and everything after are the same bits without MPI
  and on any number of MPI processes dividing ``M``. The loss is
  ``sum_m w_m L_m`` added in the order of ``m`` (the same on every rank).
  Dropout masks of micro-batch ``m`` come from
  :func:`micro_dropout_seed` ``(seed, step, m)``, so they do not depend on
  which process computes it. The results differ (slightly) from the whole
  batch's: float rounding differs, and the masks are other draws.
"""
import math
from typing import NamedTuple, Optional

import numpy as np

from .distributed import reduce_micro
from .errors import DivergenceError, FixedPointError

HINT = "try a smaller learning rate or grad_clip"


def step_dropout_seed(seed, step):
    """The dropout seed of training step ``step`` (1-based) of a run seeded ``seed``.

    ``SeedSequence([seed, 3, step])``'s first word, a Python int: a function of
    the seed and the step alone (the same on every platform and after a
    resume), different from step to step.
    """
    return int(np.random.SeedSequence([int(seed), 3, int(step)]).generate_state(1)[0])


def micro_dropout_seed(seed, step, m):
    """The dropout seed of micro-batch ``m`` (0-based) of step ``step`` (1-based).

    ``SeedSequence([seed, 4, step, m])``'s first word: a function of the run's
    seed, the step and the micro-batch alone, so a micro-batch draws the same
    masks ``(n_m, width)`` whichever process computes it and after a resume.
    """
    return int(np.random.SeedSequence([int(seed), 4, int(step), int(m)]).generate_state(1)[0])


class StepStats(NamedTuple):
    """What a training step reports besides the loss and gradient.

    Attributes
    ----------
    stored_bytes : int
        Bytes held for the backward pass: of the whole batch, or with
        micro-batches the largest of one micro-batch (they are computed one
        after another, so that is what one process holds at a time).
    final_state : ndarray (b, state_size) or None
        The recurrent state after the batch (rows in batch order).
    """
    stored_bytes: int
    final_state: Optional[np.ndarray]


def hint(model):
    """What to try after an overflow: a float32 model overflows sooner than float64."""
    dtype = getattr(model, "dtype", "float64")
    return HINT if dtype == "float64" else f"{HINT}, or dtype='float64'"


def loss_limit(model, first_loss, factor):
    """The loss above which training counts as diverged (None: not known yet or off)."""
    if factor is None or first_loss is None or not math.isfinite(first_loss):
        return None if factor is None or first_loss is None else math.inf
    limit = factor * abs(first_loss)
    n_out = getattr(model, "n_out", None)
    if getattr(model, "loss_kind", None) == "softmax" and n_out and n_out > 1:
        limit = min(limit, max(3.0 * math.log(n_out), 2.0 * first_loss))
    return limit


def check_loss(loss, limit, step, what):
    """Raise :class:`DivergenceError` for a non-finite loss or one above ``limit``."""
    if not math.isfinite(loss):
        raise DivergenceError(f"training diverged at step {step}: the {what} is {loss}",
                              step=step, loss=loss, hint=HINT)
    if limit is not None and loss > limit:
        raise DivergenceError(f"training diverged at step {step}: the {what} {loss:.4g} is "
                              f"above {limit:.4g}, far above where training started",
                              step=step, loss=loss, hint=HINT)


def batch_axes(model, x, y):
    """The batch axes ``(of x, of y)``: x's after its ``n_lead`` time/grid axes; y's there
    too for per-step targets, else 0 (one target per row)."""
    nl = getattr(model, "n_lead", 1)
    per_step_ndim = nl + (1 if getattr(model, "loss_kind", "softmax") == "softmax" else 2)
    return nl, (nl if np.ndim(y) == per_step_ndim else 0)


def micro_bounds(m, n_micro, rows):
    """Rows ``[lo, hi)`` of micro-batch ``m`` of ``n_micro`` in a batch of ``rows`` rows:
    ``lo = floor(m rows / M)`` (equal blocks ``rows / M`` when ``M`` divides ``rows``)."""
    return m * rows // n_micro, (m + 1) * rows // n_micro


def _model_call(model, theta, x, y, carry, step, bptt, checkpoint_every, dropout_seed):
    # dropout_seed only for a model with dropout: other models (user-defined ones
    # included) need not take the argument
    kw = {"dropout_seed": dropout_seed} if getattr(model, "dropout", 0) else {}
    return model.loss_and_grad(theta, x, y, bptt=bptt, checkpoint_every=checkpoint_every,
                               return_stats=True, initial_state=carry, **kw)


def _diverged(e, step, model):
    return DivergenceError(f"training diverged at step {step}: {getattr(e, 'reason', e)}",
                           step=step, hint=hint(model))


def loss_and_grad(model, theta, x, y, carry, step, bptt, checkpoint_every, seed,
                  micro_batches=None, comm=None, timing=None):
    """Loss and gradient of one batch; non-finite values become a DivergenceError.

    Parameters
    ----------
    model : RecurrentModel
    theta : ndarray of float64, shape (P,)
    x, y : time-major batch (batch axis after the time/grid axes; see :func:`batch_axes`)
    carry : ndarray (b, state_size) or None
        Recurrent state before the batch.
    step : int
        The (1-based) step, for dropout seeds and messages.
    bptt, checkpoint_every : passed to ``model.loss_and_grad``
    seed : int
        The run's seed (dropout masks).
    micro_batches : int or None
        None: the whole batch in one call (``dropout_seed = step_dropout_seed``).
        ``M``: ``M`` micro-batches summed exactly (see the module docstring).
    comm : mpi4py communicator or None
        With micro-batches, the processes sharing them (every rank gets the
        same result).
    timing : dict, optional
        Accumulates the all-reduce's time and bytes (see ``reduce_micro``).

    Returns
    -------
    loss : float
    grad : ndarray of float64, shape (P,)
    stats : :class:`StepStats`
    """
    if micro_batches is None:
        try:
            loss, grad, stats = _model_call(model, theta, x, y, carry, step, bptt,
                                            checkpoint_every, step_dropout_seed(seed, step))
        except FloatingPointError as e:
            raise _diverged(e, step, model) from None
        if not np.all(np.isfinite(grad)):
            raise DivergenceError(f"training diverged at step {step}: the gradient has NaN "
                                  "or inf", step=step, loss=float(loss), hint=hint(model))
        return (float(loss), grad,
                StepStats(int(stats.stored_bytes), getattr(stats, "final_state", None)))
    return _micro_loss_and_grad(model, theta, x, y, carry, step, bptt, checkpoint_every, seed,
                                micro_batches, comm, timing)


def _micro_loss_and_grad(model, theta, x, y, carry, step, bptt, checkpoint_every, seed,
                         M, comm, timing):
    xa, ya = batch_axes(model, x, y)
    x, y = np.asarray(x), np.asarray(y)
    rows = x.shape[xa]
    P = theta.shape[0]

    def compute(m):
        lo, hi = micro_bounds(m, M, rows)
        if hi == lo:              # a short last batch of fixed examples: fewer rows than M
            return (np.zeros(P),), (0.0, 0, 0, None)
        xs = np.take(x, np.arange(lo, hi), axis=xa)
        ys = np.take(y, np.arange(lo, hi), axis=ya)
        cs = None if carry is None else carry[lo:hi]
        loss, grad, st = _model_call(model, theta, xs, ys, cs, step, bptt, checkpoint_every,
                                     micro_dropout_seed(seed, step, m))
        fs = getattr(st, "final_state", None)
        return ((grad * ((hi - lo) / rows),),
                (float(loss), hi - lo, int(st.stored_bytes), None if fs is None
                 else np.asarray(fs, dtype=np.float64)))

    try:
        (grad,), extras = reduce_micro(compute, M, comm, timing=timing)
    except FixedPointError as e:          # a micro-batch gradient too large to sum exactly
        raise DivergenceError(f"training diverged at step {step}: {e}", step=step,
                              hint=hint(model)) from None
    except FloatingPointError as e:
        raise _diverged(e, step, model) from None
    loss = 0.0
    for lm, nm, _, _ in extras:
        loss += lm * (nm / rows)
    finals = [e[3] for e in extras if e[1]]
    final = (None if any(f is None for f in finals)
             else np.concatenate(finals, axis=0))
    return loss, grad, StepStats(max(e[2] for e in extras), final)


def update(optimizer, opt_state, grad, grad_clip, step, exact_norm=False):
    """Clip ``grad`` to the global norm ``grad_clip`` and take one optimiser step.

    ``exact_norm``: compute the squared norm with ``np.sum`` (NumPy's pairwise
    sum: single-threaded, a fixed order, so the same bits on every process of
    the same NumPy build, whatever the BLAS threads), as the micro-batch path
    does; else ``np.dot`` (the whole-batch path, unchanged; a threaded BLAS
    may split it differently with another number of threads).

    Returns
    -------
    theta : ndarray of float64, shape (P,)
    opt_state : the optimiser's new state
    """
    if grad_clip is not None:
        sq = np.sum(np.square(grad)) if exact_norm else np.dot(grad, grad)
        norm = float(np.sqrt(sq))
        if norm > grad_clip:
            grad = grad * (grad_clip / norm)
    try:
        opt_state = optimizer.step(opt_state, grad)
    except FixedPointError as e:
        raise DivergenceError(f"training diverged at step {step}: the optimizer's weights "
                              "or velocity left the fixed-point range", step=step,
                              hint=f"{e}") from None
    theta = np.asarray(optimizer.params(opt_state), dtype=np.float64)
    if not np.isfinite(theta).all():
        raise DivergenceError(f"training diverged at step {step}: the parameters are no "
                              "longer finite", step=step, hint=HINT)
    return theta, opt_state
