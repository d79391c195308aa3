"""A reversible stack's calls through the whole-window kernels: row groups on threads, combined.

A batch is cut into row groups fixed by its size
(:func:`~revtrain.models.row_groups.window_row_groups`); each runs as its own
:class:`~revtrain.models.window.WindowRun` on one of
:func:`revtrain.get_row_threads` threads, and their results are combined in
group order (per-row loss terms folded in the per-step reference's order,
gradients summed group after group; two halves add into one gradient chunk
after chunk, :mod:`revtrain.models.lockstep`), so the bits do not depend on the
number of threads.
"""
import numpy as np

from .._threads import run_groups, get_row_threads
from .lockstep import run_lockstep
from .row_groups import window_row_groups, group_masks
from .window_arrays import chunk_steps
from .._kernels.head import softmax_xent_rows, mse_rows, fold_rows


def fold_terms(terms, scale, forward=False):
    """The loss from per-row terms (steps with a target, B): ``sum_t scale * sum_r terms[t, r]``,
    rows in order, steps last to first (the backward pass's order) or first to last
    (``forward``, a forward-only pass's): the per-step reference's order, in one kernel
    call (a Python loop over the steps cost 0.7 ms at T = 1000)."""
    return float(fold_rows(np.ascontiguousarray(terms, dtype=np.float64), float(scale),
                           bool(forward)))


def _group_runs(model, theta, x, tokens, state0, masks, run_class):
    """One :class:`~revtrain.models.window.WindowRun` per row group of ``x`` (T, B, ...):
    ``[(r0, r1, run), ...]``. Each reads its rows of ``x`` (token ids in place)."""
    B = x.shape[1]
    dt = np.dtype(getattr(model, "dtype", "float64"))
    if dt != theta.dtype:
        theta = theta.astype(dt)         # one copy in the run's dtype, shared by the groups
    out = []
    groups = window_row_groups(B)
    # two halves take their backward chunks in step: the first half's chunk length
    chunk = chunk_steps(groups[0][1] - groups[0][0], dt) if len(groups) == 2 else None
    for r0, r1 in groups:
        whole = r0 == 0 and r1 == B
        run = run_class(model, theta, x, tokens, None if state0 is None else state0[r0:r1],
                        masks if whole else group_masks(masks, r0, r1), rows=(r0, r1),
                        chunk=chunk)
        out.append((r0, r1, run))
    return out


def run_window(model, theta, batch, mode, state0, masks, want_inputs, run_class):
    """``(loss, grad, info)`` of a reversible stack's BPTT through ``run_class``'s kernels.

    The batch's row groups (:func:`window_row_groups`) run as separate
    :class:`~revtrain.models.window.WindowRun` s, side by side on threads.
    """
    B = batch.B
    grouped = _group_runs(model, theta, batch.x, batch.tokens, state0, masks, run_class)
    runs = [run for _, _, run in grouped]
    if batch.target.size and batch.target.dtype != runs[0].dt:
        # one conversion of the targets for all the groups (each reads its rows in place)
        batch = batch._replace(target=batch.target.astype(runs[0].dt))
    T = batch.lead[0]
    stores = [np.empty((T + 1,) + run.q.shape, dtype=np.int64) if mode == "standard" else None
              for run in runs]
    run_groups(lambda i: runs[i].forward(stores[i]), len(runs))
    final_state = np.concatenate([run.state() for run in runs])
    info_bits = sum(run.buf.info_bits for run in runs)
    mask_bytes = 0 if masks is None else sum(
        a.nbytes for a in (masks.embed, masks.top) + tuple(masks.between) if a is not None)
    if mode == "standard":
        stored, buffer_bytes = sum(s.nbytes for s in stores) + mask_bytes, 0
    else:
        buffer_bytes = sum(run.buf.nbytes for run in runs)
        stored = buffer_bytes + B * model.state_size * 8 + mask_bytes
    want_dx = want_inputs and not batch.tokens
    # the gradient has theta's dtype. One or two groups add into it in place when they
    # compute in that dtype, else into a zeroed array of theta's size in their dtype; more
    # groups add into arrays of their own, added group after group. Either way the bits
    # do not depend on the threads.
    in_place = theta.dtype == runs[0].dt
    grad = np.zeros(model.size, dtype=theta.dtype) if in_place else None
    if len(runs) == 2:
        targets = [grad if in_place else np.zeros(model.size, dtype=runs[0].dt)]
        out = backward_in_lockstep(runs, batch, mode != "standard", stores, want_dx,
                                   targets[0])
    else:
        targets = [grad if in_place and i == 0 else np.zeros(model.size, dtype=run.dt)
                   for i, run in enumerate(runs)]
        out = run_groups(lambda i: runs[i].backward(batch, mode != "standard", stores[i],
                                                    want_dx, targets[i]), len(runs))
    stores = None                     # (the standard mode's stored states)
    for run in runs:
        run.release()                 # buffers, parameter copies: before the gradient's sum
    loss = fold_terms(np.concatenate([o[0] for o in out], axis=1), batch.scale)
    if grad is None:
        grad = np.zeros(model.size, dtype=theta.dtype)
    for target in targets:
        if target is not grad:
            grad += target
    targets = None
    info = {"stored_bytes": stored, "buffer_bytes": buffer_bytes, "info_bits": info_bits,
            "final_state": final_state}
    if want_inputs:
        info["dstate0"] = np.concatenate([o[1] for o in out])
        info["dx"] = np.concatenate([o[2] for o in out], axis=1) if want_dx else None
    return loss, grad, info


def backward_in_lockstep(runs, batch, reverse, stores, want_dx, grad):
    """The backward passes of two row groups of ``batch`` (each reads its rows), adding into
    one gradient ``grad`` chunk after chunk in group order
    (:func:`~revtrain.models.lockstep.run_lockstep`), side by side on two row threads.
    Returns each run's ``(terms, dstate0, dx)``."""
    bws = [run.begin_backward(batch, reverse, st, want_dx, grad)
           for run, st in zip(runs, stores)]
    assert bws[0].chunks == bws[1].chunks
    failed = run_lockstep(len(bws[0].chunks),
                          lambda g, k: runs[g].backward_chunk(bws[g], k, False),
                          lambda g, k: runs[g].add_chunk_grads(bws[g], k), get_row_threads())
    if failed is not None:
        g, (t, l, part, code) = failed
        runs[g]._reversal_failed(t, l, part, code)
    return [run.end_backward(bw) for run, bw in zip(runs, bws)]


def window_loss(model, theta, batch, state0, masks, run_class):
    """``(loss, None, info)`` of a forward pass through the kernels (nothing kept for a backward).

    The row groups run on threads; each step's output layer runs on the step's
    rows in the row blocks of :func:`~revtrain._kernels.gemm.dot_rows` and the
    loss is folded from the per-row terms in the per-step reference's order, so
    it is the bits of that reference's ``loss``.
    """
    runs = _group_runs(model, theta, batch.x, batch.tokens, state0, masks, run_class)
    head = softmax_xent_rows if model.loss_kind == "softmax" else mse_rows
    n_steps = batch.lead[0] if batch.per_step else 1
    parts = []

    def group_terms(i):
        r0, r1, run = runs[i]          # the group's rows of the batch's labels, read in place
        B, T, dt, Ball = r1 - r0, batch.lead[0], run.dt, batch.B
        terms = np.zeros((n_steps, B))
        work, dh = np.empty((B, model.n_out), dt), np.empty((B, model.n_hidden), dt)
        gU, gby = np.zeros_like(run.U), np.zeros_like(run.by)
        for t0, h in run.forward_top():
            for j in range(h.shape[0]):
                t = t0 + j
                if batch.per_step:
                    rows, row = slice(t * Ball + r0, t * Ball + r1), t
                elif t == T - 1:
                    rows, row = slice(r0, r1), 0
                else:
                    continue
                tgt = (batch.labels[rows] if model.loss_kind == "softmax"
                       else batch.target[rows].astype(dt, copy=False))
                head(np.ascontiguousarray(h[j]), run.U, run.by, tgt, batch.scale, work, dh,
                     gU, gby, terms[row])
        return terms

    parts = run_groups(group_terms, len(runs))
    final_state = np.concatenate([run.state() for _, _, run in runs])
    loss = fold_terms(np.concatenate(parts, axis=1), batch.scale, forward=True)
    return loss, None, {"stored_bytes": 0, "final_state": final_state}


def window_hidden(model, theta, x, tokens, state0, run_class):
    """``(hs, final_state)``: the top layer's hidden states (T, B, H) float64 and the last state
    (the row groups on threads)."""
    runs = _group_runs(model, theta, x, tokens, state0, None, run_class)
    hs = np.empty((x.shape[0], x.shape[1], model.n_hidden))

    def fill(i):
        r0, r1, run = runs[i]
        for t0, h in run.forward_top():
            hs[t0:t0 + h.shape[0], r0:r1] = h
    run_groups(fill, len(runs))
    return hs, np.concatenate([run.state() for _, _, run in runs])
