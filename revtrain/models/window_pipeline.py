"""The pipelined reversible backward of a window run: its two stages and their slots.

A run alone in its call (one row group, with two row threads) undoes a chunk of steps on a
second thread while the calling thread backpropagates the chunk before
(:func:`~revtrain.models.pipeline.run_pipeline`). :class:`PipelinedBackward` is the part of
:class:`~revtrain.models.window.WindowRun` that sets this up: the slots of arrays the undo
stage fills for the backpropagation stage, the rule for when to pipeline, and the two stages'
hooks, which a cell that pipelines its backward implements (``kept_gates``, ``_undo_chunk``,
``_backprop_chunk``).
"""
from types import SimpleNamespace

import numpy as np

from .._threads import get_row_threads
from .pipeline import run_pipeline


class PipelinedBackward:
    """Mixin of :class:`~revtrain.models.window.WindowRun`: the pipelined backward's slots,
    rule and stages (it reads the run's ``L``, ``B``, ``B_total``, ``chunk``, ``dt``, ``q``,
    ``D0``, ``m`` and ``_upper_inputs``)."""

    def kept_gates(self):
        """Shape of the gates one layer's step keeps for its backward pass; a cell that
        pipelines its backward returns it (and has :meth:`_undo_chunk` and
        :meth:`_backprop_chunk`), None: the cell does not."""
        return None

    def _undo_slot(self):
        """Arrays :meth:`_undo_chunk` fills for :meth:`_backprop_chunk`, for a chunk's steps:
        ``Gs`` (L, chunk, *gates) the gates, ``Qs`` (L, chunk, n_parts, B, w) the states
        before the steps (as float, in the run's dtype), ``X0s`` (chunk, B, D0) and ``XHs``
        (L-1, chunk, B, H) the layers' float inputs (one layer: a (1, chunk, 1, 1) stand-in,
        never read), and ``dPb`` (L, chunk, B, G) the steps' pre-activation gradients: a view
        of ``Gs`` when a step's gates have as many elements (:meth:`_gates_hold_dp`; the
        backpropagation overwrites a step's gates once it has used them), else None (the
        backward's own ``dPb``)."""
        L, B, k, dt = self.L, self.B, self.chunk, self.dt
        Gs = np.empty((L, k) + self.kept_gates(), dtype=dt)
        return SimpleNamespace(Gs=Gs,
                               Qs=np.empty((L, k) + self.q.shape[1:], dtype=dt),
                               X0s=np.empty((k, B, self.D0), dtype=dt),
                               XHs=self._upper_inputs(k),
                               dPb=(Gs.reshape((L, k, B, self.m._n_proj))
                                    if self._gates_hold_dp() else None))

    #: A cell sets it True when its backpropagation kernel reads a step's kept gates only
    #: before writing the step's ``dPb`` row, and the gates have as many elements as that
    #: row (RevLSTM: 2 halves x 5 gates x Hh = 5H = G per row): :meth:`_undo_slot`.
    gates_hold_dp = False

    def _gates_hold_dp(self):
        """Whether the slots' gates also hold the steps' pre-activation gradients (B, G): the
        cell opts in (:attr:`gates_hold_dp`) and the sizes agree."""
        kg = self.kept_gates()
        return (self.gates_hold_dp and kg is not None
                and int(np.prod(kg)) == self.B * self.m._n_proj)

    def _stage_scratch(self):
        """The backpropagation stage's own scratch arrays (a dict, ``bw.stage``): it runs
        beside the undo stage, which uses the run's."""
        return {}

    def _undo_chunk(self, t0, t1, slot):
        """Undo steps ``t1-1 .. t0`` into ``slot``; return ``(t, layer, part, code)``."""
        raise NotImplementedError

    def _backprop_chunk(self, t0, t1, batch, bw, slot):
        """Backpropagate steps ``t1-1 .. t0`` from what :meth:`_undo_chunk` kept in ``slot``."""
        raise NotImplementedError

    def _pipelined(self):
        """Whether the reversible backward runs as a pipeline on two threads: a run alone in
        its call (one row group: no other group keeps a second core busy), with
        :func:`~revtrain.get_row_threads` ``>= 2`` and a cell that supports it."""
        return (self.B == self.B_total and get_row_threads() >= 2
                and self.kept_gates() is not None)

    #: float32 runs whose slot holds at most this many bytes take a third slot.
    THIRD_SLOT_BYTES = 1 << 17

    def _slot_count(self, slot):
        """Slots of the pipeline (:func:`~revtrain.models.pipeline.run_pipeline`): two, so the
        undo stage runs at most one chunk ahead; three for float32 runs with small slots
        (:data:`THIRD_SLOT_BYTES`: small batches), so that neither stage waits for the other
        when a chunk takes one of them longer than the last (RevLSTM float32, T=1000, B=1,
        H=128: the pipelined backward 6.8 against 7.2 ms, undo and backpropagation 6.1 ms each;
        a slot is 115 KiB). float64 keeps two: its peak memory is held to the per-step code's."""
        nbytes = sum(a.nbytes for a in vars(slot).values() if isinstance(a, np.ndarray)
                     and a.base is None)
        return 3 if self.dt == np.float32 and nbytes <= self.THIRD_SLOT_BYTES else 2

    def _pipelined_backward(self, bw):
        """The reversible backward over ``bw.chunks`` (last first) as a two-stage pipeline
        (:func:`~revtrain.models.pipeline.run_pipeline`)."""
        def undo(t0, t1, slot):
            self._reserve(t1 - t0)
            code = self._undo_chunk(t0, t1, slot)
            self.buf.release_popped()
            return code

        def backprop(t0, t1, slot, code):
            t, l, part, c = code
            if c >= 0:
                self._reversal_failed(t, l, part, c)
            self._backprop_chunk(t0, t1, bw.batch, bw, slot)

        first = self._undo_slot()
        slots = [first] + [self._undo_slot() for _ in range(self._slot_count(first) - 1)]
        for slot in slots:
            if slot.dPb is None:
                slot.dPb = bw.dPb
        run_pipeline(bw.chunks, slots, undo, backprop)
