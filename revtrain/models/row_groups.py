"""Row groups: a batch cut into fixed blocks of rows that run side by side on threads.

Rows of a recurrent batch are independent until the weight gradients are
summed over them. So a batch of ``B`` rows is cut into groups of
``ROW_BLOCK = 16`` rows (:func:`row_groups`, fixed by ``B`` alone); each
group's forward and backward pass runs as a call of its own, the groups on
up to :func:`revtrain.set_row_threads` threads at once (Numba kernels release
the GIL; BLAS runs on one thread inside each), and the groups' gradients are
added in group order (a reversible cell's two halves add into one gradient
chunk after chunk, in that order: :mod:`revtrain.models.lockstep`). The
results therefore depend on ``B`` only, never on the number of threads or the
machine's load. Measured on 2 cores (idle):
RevLSTM float32, T=1000, B=32, H=256, one ``loss_and_grad``: 1.53 s on one
thread, 0.80 s on two.

* Reversible cells (:mod:`revtrain.models.window`) compute every product
  that sets their trajectory, loss or state gradients row by row (real
  dtypes) or in the same 16-row blocks (complex), through
  :func:`revtrain._kernels.gemm.dot_rows`, and sum the loss per row in row
  order, so they also equal the per-step reference over all rows bit for bit.
* Standard cells (:mod:`revtrain.models.sequence`) run each group as a
  batch of its own; the loss is the groups' losses added in group order.
"""
import numpy as np

from .._kernels.gemm import ROW_BLOCK


#: Smallest batch a reversible cell cuts into two halves (smaller ones: one pipelined group).
MIN_HALVES = 4


def window_row_groups(B):
    """The row groups of a reversible cell's batch (:mod:`revtrain.models.window_calls`): two
    halves for ``MIN_HALVES <= B <= 2 * ROW_BLOCK``, else :func:`row_groups`.

    The groups' forward and backward passes run side by side; a batch of one group runs
    alone, its backward pipelined on two threads (:mod:`revtrain.models.pipeline`). Halves
    instead of one 16-row block for small batches: they split the work of every pass in two,
    where the pipeline overlaps only the backward's two stages (RevLSTM float32, T=1000: B=16,
    H=256 took 216-226 against 324-334 ms; B=8, H=128 51 against 74; B=4 35 against 39).
    Fixed by ``B`` alone, like :func:`row_groups`; the trajectory, loss and state gradients
    do not depend on the groups at all (every row on its own), the parameter gradient's
    bits on ``B`` only (the halves add into one gradient chunk after chunk in group order,
    :mod:`revtrain.models.lockstep`; more groups add their own sums in group order).
    """
    if MIN_HALVES <= B <= 2 * ROW_BLOCK:
        half = (B + 1) // 2
        return [(0, half), (half, B)]
    return row_groups(B)


def row_groups(B):
    """The row groups ``[(r0, r1), ...]`` of a batch of ``B`` rows: blocks of ``ROW_BLOCK``.

    Fixed by ``B`` alone, so results do not depend on how many threads run
    the groups (:func:`revtrain._threads.run_groups`).
    """
    return [(r0, min(B, r0 + ROW_BLOCK)) for r0 in range(0, B, ROW_BLOCK)]


def group_batch(batch, r0, r1):
    """The rows ``r0 .. r1-1`` of every step of ``batch`` (a Batch of their own)."""
    B = batch.B
    labels, target = batch.labels, batch.target
    if labels.size:
        labels = np.ascontiguousarray(labels.reshape(-1, B)[:, r0:r1]).reshape(-1)
    if target.size:
        O = target.shape[1]
        target = np.ascontiguousarray(target.reshape(-1, B, O)[:, r0:r1]).reshape(-1, O)
    return batch._replace(x=np.ascontiguousarray(batch.x[:, r0:r1]), B=r1 - r0, labels=labels,
                          target=target)


def group_masks(masks, r0, r1):
    """The rows ``r0 .. r1-1`` of DropoutMasks ``masks`` (None stays None)."""
    if masks is None:
        return None
    return type(masks)(None if masks.embed is None else masks.embed[r0:r1],
                       tuple(m[r0:r1] for m in masks.between), masks.top[r0:r1])
