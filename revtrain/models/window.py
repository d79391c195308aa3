"""BPTT of a reversible stack through whole-window kernels: the Python side shared by the cells.

Python validates, packs the parameters of the stack into contiguous arrays,
allocates the workspaces, makes room in the information buffer for a chunk
of steps, calls one kernel per chunk (forward, then backward) and turns the
kernels' error codes into :class:`~revtrain.FixedPointError` /
:class:`~revtrain.ReversalError` naming the layer. The per-step Python driver
(:mod:`revtrain.models.reversible_bptt`) stays the reference and serves the
complex-step ``hvp``.

Layouts shared with the kernels (``L`` layers, ``B`` rows):

* ``q`` int64 ``(L, n_parts, B, w)``: every layer's fixed-point parts in the
  cell's order (``model._parts()``, all of width ``w``);
* the information buffer has ``L * B`` streams, layer ``l`` uses streams
  ``l*B .. (l+1)*B - 1``;
* inputs ``xtok`` = (the batch's int64 ids ``(T, B_total)``, the run's first row) with
  ``mode_in`` 0 (one-hot: rows of ``V0``) or 1 (embedding rows ``E[x] * m_emb``), or
  ``xflt`` ``(T, B, D0)`` with ``mode_in`` 2; input weights ``V0`` (D0, G) and ``Vs``
  (L-1, H, G; one layer: a (1, 1, G) stand-in);
* dropout masks ``m_emb`` (B, D0), ``m_btw`` (L-1, B, H; one layer: a (1, 1, 1) stand-in),
  ``m_top`` (B, H), all ones without dropout.

A cell subclasses :class:`WindowRun` with ``_pack_cell``, ``_forward_chunk``,
``_backward_chunk``, ``_chunk_grads`` and ``_cell_grads`` (and, to pipeline its backward,
``kept_gates``, ``_undo_chunk`` and ``_backprop_chunk``); :mod:`revtrain.models.window_calls`
runs a call's row groups and combines their results.
"""
from types import SimpleNamespace

import numpy as np

from ..buffer import InfoBuffer
from ..errors import ReversalError, check_reversal
from .window_arrays import chunk_steps, stacked
from .window_pipeline import PipelinedBackward


class WindowRun(PipelinedBackward):
    """The arrays of one ``loss_and_grad`` call of a reversible stack through the kernels.

    Parameters
    ----------
    model : ReversibleModel
    theta : ndarray (size,)
        float64, or already in the model's dtype (the row groups of one call share
        one float32 copy).
    x : ndarray, int64 (T, B_total) token ids or float64 (T, B_total, n_in)
        The whole batch's inputs. The run reads its rows of the token ids in place (the
        kernels take ``(ids, row0)``, so a row group costs no copy of them; the labels
        likewise, :meth:`begin_backward`) and copies its rows of float inputs.
    tokens : bool
    state0 : ndarray (B, state_size) or None
        This run's rows.
    masks : DropoutMasks or None
        This run's rows.
    rows : (int, int) or None
        The run's rows ``row0 .. row1-1`` of the batch (None: all of them).
    chunk : int or None
        Steps per kernel call; None: :func:`~revtrain.models.window_arrays.chunk_steps` of
        this run's rows (two halves take the first half's, to step their chunks together).
    """

    #: Names of the parts in ``q``'s order, and the part names of the kernels' error codes.
    error_parts = ()

    def __init__(self, model, theta, x, tokens, state0, masks, rows=None, chunk=None):
        m = self.m = model
        dt = self.dt = np.dtype(getattr(m, "dtype", "float64"))
        L, H, G = m.n_layers, m.n_hidden, m._n_proj
        row0, row1 = (0, x.shape[1]) if rows is None else rows
        self.T, self.B = x.shape[0], row1 - row0
        B = self.B
        #: First row and rows of the whole batch (a group of rows runs as its own WindowRun).
        self.row0, self.B_total = row0, x.shape[1]
        self.chunk = chunk_steps(B, dt) if chunk is None else chunk
        self.L, self.H = L, H
        self.parts = tuple(nm for nm, _ in m._layout_parts)
        self.w = m._layout_parts[0][1]
        self.theta = theta
        p = self.p = m.layout.views(theta)
        pl = self.pl = m.layer_params(p)
        self.V0 = pl[0]["V"].astype(dt, copy=False)
        self.Vs = stacked(self._upper_v(pl), dt)
        self.E = (p["embed"].astype(dt, copy=False) if m.embed_dim is not None
                  else np.zeros((1, 1), dtype=dt))
        self.U, self.by = p["U"].astype(dt, copy=False), p["b_y"].astype(dt, copy=False)
        self.mode_in = 2 if not tokens else (1 if m.embed_dim is not None else 0)
        #: the kernels' token ids: (the batch's ids (T, B_total), the run's first row)
        self.xtok = ((np.ascontiguousarray(x, dtype=np.int64) if tokens
                      else np.zeros((1, 1), dtype=np.int64)), row0)
        self.xflt = (np.ascontiguousarray(x[:, row0:row1], dtype=dt) if not tokens
                     else np.zeros((1, 1, 1), dtype=dt))
        D0 = self.D0 = self.V0.shape[0] if self.mode_in == 2 else (m.embed_dim or 1)
        # one layer reads no mask between layers: a (1, 1) stand-in
        no_btw = [np.ones((1, 1), dtype=dt)]
        if masks is None:
            self.m_emb = np.ones((B, D0), dtype=dt)
            self.m_btw = stacked([np.ones((B, H), dtype=dt)] * (L - 1) if L > 1 else no_btw, dt)
            self.m_top = np.ones((B, H), dtype=dt)
        else:
            self.m_emb = (masks.embed.astype(dt, copy=False) if masks.embed is not None
                          else np.ones((B, D0), dtype=dt))
            self.m_btw = stacked(list(masks.between) if L > 1 else no_btw, dt)
            self.m_top = masks.top.astype(dt, copy=False)
        q0 = m._initial_fixed(state0, B)
        self.q = np.empty((L, len(self.parts), B, self.w), dtype=np.int64)
        for l in range(L):
            for k, nm in enumerate(self.parts):
                self.q[l, k] = q0[l][nm]
        self.q0 = self.q.copy()
        self.buf = InfoBuffer(L * B, capacity=16)
        self.inp0, self.inpH = np.empty((B, D0), dtype=dt), np.empty((B, H), dtype=dt)
        self.P = np.empty((B, G), dtype=dt)
        self._pack_cell()

    # ------------------------------------------------------------ hooks
    def _pack_cell(self):
        """Contiguous stacked copies of the cell's parameters and its workspaces."""
        raise NotImplementedError

    def _forward_chunk(self, t0, t1, store, s0):
        """Run the forward kernel on steps ``t0 .. t1-1`` (the state after step ``t`` goes to
        ``store[t + 1 - s0]`` when ``store`` has more than one row); return
        ``(t, layer, part, code)``."""
        raise NotImplementedError

    def _backward_chunk(self, t0, t1, reverse, grads, store, batch, bw):
        """Run the backward kernel on steps ``t1-1 .. t0`` (adding their parameter gradients
        when ``grads``); return ``(t, layer, part, code)``.

        ``bw`` is the namespace of :meth:`backward`'s arrays (gradients, workspaces,
        ``terms`` for the per-row losses).
        """
        raise NotImplementedError

    def _chunk_grads(self, t0, t1, bw):
        """Add the parameter gradients of steps ``t0 .. t1-1`` that ``_backward_chunk``
        (``grads`` False) left in ``bw``'s chunk buffers."""
        raise NotImplementedError

    def _cell_grads(self, gl, grad):
        """The cell's gradient blocks and scratch (a dict); ``gl`` the per-layer views of
        the flat gradient ``grad`` (the run's dtype), which the kernels add into in place
        (as typed Lists: :func:`stacked` passes the views as they are)."""
        raise NotImplementedError

    # ------------------------------------------------------------ helpers
    def _reserve(self, steps):
        self.buf.reserve(steps * self.m._step_words)

    def inputs(self):
        """The input arguments shared by the kernels, in their order."""
        return (self.xtok, self.xflt, self.mode_in, self.E, self.m_emb, self.V0, self.Vs)

    def state(self):
        """Float64 ``(B, state_size)`` of the current fixed-point state."""
        m, S = self.m, self.m.layer_state_size
        out = np.empty((self.B, self.L * S))
        for l in range(self.L):
            out[:, l * S:(l + 1) * S] = np.concatenate(list(self.q[l]), axis=1) * m.inv_scale
        return out

    def _raise(self, t, l, part, code, reverse):
        m = self.m
        fn = m._corrupt if reverse else m._overflow
        r, j = divmod(code, self.w)             # rows of a group count from its first row
        code = (r + self.row0) * self.w + j
        m._in_layer(l, fn, self.error_parts[part], t, code, (self.B_total, self.w))

    def layer_q(self, l):
        """Layer ``l``'s fixed-point parts as a dict of views (B, w), in the cell's order."""
        return {nm: self.q[l, k] for k, nm in enumerate(self.parts)}

    def layer_buffer(self, l):
        """Layer ``l``'s streams of the buffer, as an InfoBuffer whose arrays are views."""
        B, b = self.B, self.buf
        view = InfoBuffer(B)
        view.states, view.counts = b.states[l * B:(l + 1) * B], b.counts[l * B:(l + 1) * B]
        view.words, view.info = b.words[l * B:(l + 1) * B], b.info[l * B:(l + 1) * B]
        return view

    def _upper_inputs(self, k):
        """The float inputs of layers ``1 .. L-1`` over ``k`` steps, (L-1, k, B, H) in the
        run's dtype; one layer: a (1, k, 1, 1) stand-in the kernels never read."""
        L, dt = self.L, self.dt
        return (np.empty((L - 1, k, self.B, self.H), dtype=dt) if L > 1
                else np.empty((1, k, 1, 1), dtype=dt))

    # ------------------------------------------------------------ passes
    def forward(self, store=None):
        """All steps in fixed point; ``store`` (T+1, L, n_parts, B, w) gets every state (standard)."""
        st = np.zeros((1,) * 5, dtype=np.int64) if store is None else store
        if store is not None:
            store[0] = self.q
        for t0 in range(0, self.T, self.chunk):
            t1 = min(self.T, t0 + self.chunk)
            self._reserve(t1 - t0)
            t, l, part, code = self._forward_chunk(t0, t1, st, 0)
            if code >= 0:
                self._raise(t, l, part, code, False)

    def forward_top(self):
        """Forward only, chunk by chunk; yields ``(t0, h)`` with ``h`` (k, B, H) the top
        layer's (masked) hidden states after steps ``t0 .. t0+k-1``, float in the run's dtype."""
        L, H = self.L, self.H
        nh = H // self.w
        store = np.empty((self.chunk + 1,) + self.q.shape, dtype=np.int64)
        for t0 in range(0, self.T, self.chunk):
            t1 = min(self.T, t0 + self.chunk)
            self._reserve(t1 - t0)
            t, l, part, code = self._forward_chunk(t0, t1, store, t0)
            if code >= 0:
                self._raise(t, l, part, code, False)
            k = t1 - t0
            top = store[1:k + 1, L - 1, :nh]                        # (k, nh, B, w)
            h = np.concatenate(list(np.moveaxis(top, 1, 0)), axis=2) * self.m.inv_scale
            yield t0, (h * self.m_top).astype(self.dt, copy=False)

    def backward(self, batch, reverse, store, want_dx, grad):
        """Undo (or reload) every step top-down, recompute, backpropagate.

        A reversible run alone in its call, with two row threads or more, runs
        as a two-stage pipeline (:meth:`_pipelined_backward`), with the same bits.
        Two row groups adding into one gradient run chunk by chunk instead
        (:meth:`begin_backward`, :meth:`backward_chunk`, :meth:`add_chunk_grads`,
        :meth:`end_backward`; :func:`~revtrain.models.window_calls.run_window`).

        ``grad`` (size,) in the run's dtype: the gradient is added into it in place
        (the caller's own gradient, or a zeroed array the caller adds to its gradient
        afterwards, group after group: :func:`~revtrain.models.window_calls.run_window`).

        Returns ``(terms, dstate0, dx)``: ``terms`` float64 (steps with a target, B) the
        per-row loss terms (the loss is :func:`~revtrain.models.window_calls.fold_terms`).
        """
        pipelined = reverse and self._pipelined()
        bw = self.begin_backward(batch, reverse, store, want_dx, grad, pipelined)
        if pipelined:
            self._pipelined_backward(bw)
        else:
            for k in range(len(bw.chunks)):
                t, l, part, code = self.backward_chunk(bw, k, True)
                if code >= 0:
                    self._reversal_failed(t, l, part, code)
        return self.end_backward(bw)

    def begin_backward(self, batch, reverse, store, want_dx, grad, pipelined=False):
        """The backward pass's arrays (a namespace; ``chunks``: the chunks' ``(t0, t1)``,
        last first), the gradient ``grad`` (size,) in the run's dtype added into in place.

        ``dPb`` (L, chunk, B, G) receives the chunk's pre-activation gradients, step by step
        (the serial kernels write them there directly). ``pipelined``: also the
        backpropagation stage's own scratch (``dP``, ``stage``), and no ``dPb`` when the
        slots' gates hold it (:meth:`_undo_slot`)."""
        m = self.m
        L, B, H, T = self.L, self.B, self.H, self.T
        dt = self.dt
        g = m.layout.views(grad)
        gl = m.layer_params(g)
        sn = (self.q * m.inv_scale).astype(dt)
        G = m._n_proj
        gE = g["embed"] if m.embed_dim is not None else np.zeros((1, 1), dtype=dt)
        bw = SimpleNamespace(
            sn=sn, sp=np.empty_like(sn), ds=np.zeros_like(sn),
            gU=g["U"], gby=g["b_y"], gE=gE, gV0=gl[0]["V"],
            gVs=stacked(self._upper_v(gl, dt), dt),
            dX=np.empty(self.xflt.shape, dtype=dt) if want_dx else np.zeros((1, 1, 1), dtype=dt),
            want_dx=want_dx, softmax=m.loss_kind == "softmax",
            dP=np.empty((B, G), dtype=dt) if pipelined else None,
            # layer 0's input gradients over a chunk's steps (the embedding rows' sums per chunk)
            dx0=np.empty((self.chunk if self.mode_in == 1 or want_dx else 1, B, self.D0),
                         dtype=dt),
            dxH=np.empty((B, H), dtype=dt),
            # the output layer's inputs and dL/dz over a chunk's rows (one weight product per chunk)
            htop=np.empty((self.chunk * B, H), dtype=dt), dH=np.empty((B, H), dtype=dt),
            work=np.empty((self.chunk * B, m.n_out), dtype=dt),
            dPb=(None if pipelined and self._gates_hold_dp()
                 else np.empty((L, self.chunk, B, G), dtype=dt)),
            stage=self._stage_scratch() if pipelined else None,
            Xb0=np.empty((self.chunk, B, self.D0), dtype=dt),
            XbH=self._upper_inputs(self.chunk),
            # the batch's labels and targets, read in place at the run's rows (head_step)
            labels=(np.ascontiguousarray(batch.labels, dtype=np.int64), self.row0,
                    self.B_total),
            target=(batch.target.astype(dt, copy=False), self.row0, self.B_total),
            cell=self._cell_grads(gl, grad),
            terms=np.zeros((T if batch.per_step else 1, B)),
            batch=batch, reverse=reverse,
            store=np.zeros((1,) * 5, dtype=np.int64) if store is None else store,
            chunks=[(t0, min(T, t0 + self.chunk)) for t0 in reversed(range(0, T, self.chunk))])
        hook = getattr(m, "_fault_hook", None)        # tests inject faults here
        if hook is not None:
            hook("before", self)
        return bw

    def backward_chunk(self, bw, k, grads):
        """Steps of chunk ``bw.chunks[k]``, backwards; ``grads``: add their parameter gradients
        now, else leave them for :meth:`add_chunk_grads`. Returns ``(t, layer, part, code)``."""
        t0, t1 = bw.chunks[k]
        if not bw.reverse:
            return self._backward_chunk(t0, t1, False, grads, bw.store, bw.batch, bw)
        self._reserve(t1 - t0)
        code = self._backward_chunk(t0, t1, True, grads, bw.store, bw.batch, bw)
        self.buf.release_popped()
        return code

    def add_chunk_grads(self, bw, k):
        """Add the parameter gradients :meth:`backward_chunk` left of chunk ``bw.chunks[k]``."""
        self._chunk_grads(*bw.chunks[k], bw)

    def end_backward(self, bw):
        """Check the reversal and read the results: ``(terms, dstate0, dx)`` (:meth:`backward`)."""
        m, L, B = self.m, self.L, self.B
        hook = getattr(m, "_fault_hook", None)
        if hook is not None:
            hook("after", self)
        if bw.reverse:
            for l in range(L):
                check_reversal(f"{m._layer_tag(l)}: reversible BPTT",
                               np.array_equal(self.q[l], self.q0[l]), self.layer_buffer(l))
        S = m.layer_state_size
        dstate0 = np.empty((B, L * S))
        for l in range(L):
            dstate0[:, l * S:(l + 1) * S] = np.concatenate(list(bw.ds[l]), axis=1)
        dx = bw.dX.astype(np.float64, copy=False) if bw.want_dx else None
        return bw.terms, dstate0, dx

    def release(self):
        """Drop the run's arrays (information buffer, parameter copies, workspaces) once its
        backward pass is done: the caller's gradient is then allocated and summed without them."""
        for key in list(self.__dict__):
            if key not in ("m", "L"):
                del self.__dict__[key]

    def _upper_v(self, views, dtype=np.float64):
        """The ``V`` blocks of layers ``1 .. L-1`` in the per-layer ``views`` (a one-layer
        stack never reads them: one (1, G) stand-in of ``dtype``)."""
        if self.L > 1:
            return [views[l]["V"] for l in range(1, self.L)]
        return [np.zeros((1, self.m._n_proj), dtype=dtype)]

    def _reversal_failed(self, t, l, part, code):
        """Raise the ReversalError of a failed undo, blaming the lowest corrupted layer."""
        m = self.m
        try:
            self._raise(t, l, part, code, True)
        except ReversalError as err:
            e = err
        if l == 0:
            raise e
        if self.dt != np.float64:
            # the Python driver below recomputes gates in float64: it cannot re-check float32
            # layers, so say which layers can hold the fault
            raise ReversalError(f"{e} (layer {l} reads the output of layers 0..{l - 1}: the "
                                f"corruption may be there)") from None
        # the Python driver undoes the layers below on their own and names the lowest failing
        q = [self.layer_q(j) for j in range(self.L)]
        q0 = [{nm: self.q0[j, k] for k, nm in enumerate(self.parts)} for j in range(self.L)]
        bufs = [self.layer_buffer(j) for j in range(self.L)]
        masks = SimpleNamespace(embed=self.m_emb, between=tuple(self.m_btw), top=self.m_top)
        ebuf = None if m.embed_dim is None else np.empty((self.B, m.embed_dim))
        x = self.xtok[0][:, self.row0:self.row0 + self.B] if self.mode_in < 2 else self.xflt
        raise m._blame(e, l, t, self.pl, self.p, x, self.mode_in < 2, q, q0, bufs,
                       np.empty((self.B, m._n_proj)), masks, ebuf, self.B) from None
