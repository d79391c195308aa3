"""Trainer: the training loop, with exact resume, checkpoints and divergence stops.

:class:`Trainer` drives a model (any :class:`~revtrain.models.base.RecurrentModel`)
and an optax-style optimiser::

    state = opt.init(theta); state = opt.step(state, grad); theta = opt.params(state)

Everything the next step depends on is held in one committed training state
(parameters, optimiser state, step count, data position, carried recurrent
state, random generator state), replaced in a single assignment at the end
of each step, and written whole by :meth:`Trainer.save`. So ``fit(k)``,
``save``, ``load``, ``fit(n - k)`` gives the same bits as ``fit(n)``, and a
later ``fit`` call continues where the last one stopped.

One step's gradient and update are in :mod:`revtrain.train_step` (whole
batch, or ``micro_batches`` summed exactly, on one process or data parallel
over MPI with ``comm``; see :mod:`revtrain.distributed`).
"""
import math
import time
from typing import Any, NamedTuple, Optional

import numpy as np

from . import model_file
from . import train_step
from . import trainer_file
from .distributed import (DeferredInterrupt, agree, check_micro, check_parallel, comm_size,
                          is_root, on_root)
from .evaluation import loss_on, sample_ids
from .history import History
from .model_file import ModelFileError, constructor_args, find_class  # noqa: F401 (re-exported)
from .progress import JsonLog, Progress
from .sources import START, Position, advance, check_sizes, make_source
from .train_step import step_dropout_seed, micro_dropout_seed  # noqa: F401 (re-exported)
from ._checks import nonneg_int, number_in_range, positive_int, positive_number


class StopTraining(Exception):
    """Raise from a callback (or return True from it) to end :meth:`Trainer.fit` early."""


class TrainState(NamedTuple):
    """What the next training step depends on, committed at the end of each step.

    Attributes
    ----------
    theta : ndarray of float64, shape (P,)
    opt_state : optimiser state (NamedTuple), live
    opt_frozen : the same, frozen (information buffers snapshotted) for saving
    steps_done : int
    position : Position
        Where the next batch of ``data_key`` comes from.
    carry : ndarray or None
        Recurrent state carried into the next text window.
    data_key : tuple or None
        ``(fingerprint, batch_size, seq_len)`` of the data the position refers to.
    rng_state : dict
        State of the generator that callable data draws from.
    hist_len : dict or None
        Length of every history field at the commit (None: the whole history).
    """
    theta: np.ndarray
    opt_state: Any
    opt_frozen: Any
    steps_done: int
    position: Position
    carry: Optional[np.ndarray]
    data_key: Optional[tuple]
    rng_state: dict
    hist_len: Optional[dict]


class Trainer:
    """Fit a recurrent model with an optimiser; evaluate, sample, save, load, resume.

    Parameters
    ----------
    model : RecurrentModel
    optimizer : object with ``init(theta)``, ``step(state, grad)``, ``params(state)``
        For example ``rt.Adam(lr)`` or ``rt.ExactSGD(lr, momentum)``. Its
        state must be a NamedTuple of arrays, Python ints and floats and
        information buffers to be saved.
    bptt : str, optional
        BPTT mode passed to ``model.loss_and_grad`` (``"standard"``,
        ``"checkpoint"``, ``"reversible"``; default the model's first mode).
    seed : int
        Seeds the initial parameters (``model.init_params(seed)``), the order
        of ``(x, y)`` examples, the generator handed to callable data and,
        for a model with ``dropout > 0``, the dropout masks: step ``s``
        (1-based, counted across fits and resumes) passes
        ``dropout_seed=step_dropout_seed(seed, s)`` to ``loss_and_grad``, so
        every step draws fresh masks and a resumed run draws the same ones.
        Validation, :meth:`evaluate` and :meth:`generate` run without dropout.
        Same seed, same data, same bits.
    theta : ndarray, optional
        Initial parameters instead of ``model.init_params(seed)``.
    checkpoint_every : int, optional
        Segment length for ``bptt="checkpoint"``.
    init_scale : float
        Scale passed to ``model.init_params``.
    metadata : dict, optional
        JSON-able information saved with the trainer (the ``revtrain``
        command keeps its options there).
    comm : mpi4py communicator, optional
        Train data parallel over its processes (e.g. ``MPI.COMM_WORLD`` under
        ``mpiexec -n N``; needs ``micro_batches``, a multiple of ``N``). Every
        rank builds the same trainer, calls the same methods with the same
        data and holds the same parameters; rank ``r`` computes micro-batches
        ``r M/N .. (r+1) M/N - 1`` of each batch, and the gradients are summed
        exactly (int64 ``Allreduce``, see :mod:`revtrain.distributed`). Rank 0
        reads the model file in :meth:`load`, validates (the result is
        broadcast), writes every file (checkpoints, :meth:`save`, the log)
        and shows the progress; the others are quiet. An error on one rank
        (in a micro-batch, a validation, a file write) is raised on every
        rank. Default None: one process.
    micro_batches : int, optional
        Cut each batch into this many blocks of rows ``[m b/M, (m+1) b/M)``
        and sum their gradients in fixed point (``2**-40`` resolution, int64,
        overflow checked), so the update and every saved bit are the same
        without MPI and on any number of processes dividing ``M``. Each
        micro-batch draws its own dropout masks
        (``micro_dropout_seed(seed, step, m)``). Must divide ``batch_size``.
        Saved in the model file and used on :meth:`load`. None (default):
        the whole batch in one float computation, as before (a run with
        ``M`` micro-batches is not the same bits as one without).

    Attributes
    ----------
    theta : ndarray of float64
        Current parameters.
    opt_state : the optimiser's state
    steps_done : int
    history : History
    vocab : CharVocab or None
        Set when fitting on text (needed by :meth:`generate`).
    fit_options : dict
        ``batch_size``, ``seq_len``, ``grad_clip``, ``carry_state`` of the last
        :meth:`fit` (saved; :meth:`generate` follows ``carry_state``).
    """

    def __init__(self, model, optimizer, bptt=None, seed=0, theta=None,
                 checkpoint_every=None, init_scale=1.0, metadata=None, comm=None,
                 micro_batches=None):
        if not hasattr(model, "loss_and_grad") or not hasattr(model, "init_params"):
            raise ValueError(f"model must be a revtrain model, got {type(model).__name__}")
        for meth in ("init", "step", "params"):
            if not callable(getattr(optimizer, meth, None)):
                raise ValueError(f"optimizer must have init/step/params methods, "
                                 f"{type(optimizer).__name__} has no {meth}()")
        modes = getattr(model, "bptt_modes", None)
        if bptt is not None and modes is not None and bptt not in modes:
            raise ValueError(f"bptt must be one of {tuple(modes)} for {type(model).__name__}, "
                             f"got {bptt!r}")
        seed = nonneg_int(seed, "seed")
        self.comm, self.micro_batches = check_parallel(comm, micro_batches)
        #: Time and bytes of the exact all-reduce so far (``allreduce_s``,
        #: ``allreduce_bytes``, ``gather_s``, ``calls``), with ``micro_batches``.
        self.comm_stats = {}
        self.model = model
        self.optimizer = optimizer
        self.bptt = bptt if bptt is not None else (modes[0] if modes else None)
        self.seed = int(seed)
        if checkpoint_every is not None:
            checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
        self.checkpoint_every = checkpoint_every
        self.init_scale = float(init_scale)
        if theta is None:
            theta = model.init_params(seed=self.seed, scale=self.init_scale)
        theta = np.array(theta, dtype=np.float64)
        if hasattr(model, "layout"):
            model.layout.check(theta)
        self.history = History()
        self.vocab = None
        self.metadata = dict(metadata or {})
        self.fit_options = {}
        #: ``(path, step)`` of the last file this trainer wrote (None before any).
        self.last_saved = None
        self._rng = np.random.default_rng([self.seed, 1])
        opt_state = optimizer.init(theta)
        self._commit(np.asarray(optimizer.params(opt_state), dtype=np.float64), opt_state, 0,
                     START, None, None, hist_len=None)

    # ------------------------------------------------------------ state
    def _commit(self, theta, opt_state, steps_done, position, carry, data_key, hist_len):
        self._state = TrainState(theta, opt_state, model_file.freeze_state(opt_state),
                                 int(steps_done), position, carry, data_key,
                                 self._rng.bit_generator.state, hist_len)

    @property
    def theta(self):
        """Current parameters, float64 ``(P,)``."""
        return self._state.theta

    @property
    def opt_state(self):
        """The optimiser's current state."""
        return self._state.opt_state

    @property
    def data_fingerprint(self):
        """Digest of the data the saved position refers to (None before any fit)."""
        key = self._state.data_key
        return None if key is None else key[0]

    @property
    def steps_done(self):
        """Optimiser steps taken so far (a Python int; continues across fits and resumes)."""
        return self._state.steps_done

    def _set_vocab(self, vocab):
        if vocab is None:
            return
        if self.vocab is not None and self.vocab != vocab:
            raise ValueError(self._vocab_mismatch(vocab))
        n_in = getattr(self.model, "n_in", None)
        if n_in is not None and vocab.size > n_in:
            raise ValueError(f"the vocabulary has {vocab.size} characters but the model has "
                             f"n_in={n_in}")
        self.vocab = vocab

    def _vocab_mismatch(self, vocab):
        extra = sorted(set(vocab.chars) - set(self.vocab.chars))
        return ("the data has a different character vocabulary than this trainer's "
                f"({vocab.size} vs {self.vocab.size} characters"
                + (f"; not in the trainer's: {''.join(extra[:20])!r}" if extra else "")
                + "): pass the text itself (a str, e.g. rt.load_text(path)), which is encoded "
                "with the trainer's vocabulary")

    def _is_char_loss(self, is_char):
        return is_char and getattr(self.model, "loss_kind", "softmax") == "softmax"

    # -------------------------------------------------------------- fit
    def fit(self, data, steps=None, epochs=None, batch_size=32, seq_len=64, val_data=None,
            callbacks=(), quiet=False, eval_every=None, val_tokens=None, grad_clip=1.0,
            carry_state=True, save_every=None, save_path=None, log=None, print_every=None,
            divergence_factor=10.0):
        """Train, continuing where the last call (or the loaded file) stopped.

        Parameters
        ----------
        data : TextCorpus, GridTask, str, 1-D int array, (x, y) or callable
            A :class:`~revtrain.data.TextCorpus` (e.g. ``rt.char_corpus(path)``;
            its validation stream is the default ``val_data``), a ``str`` (the
            training text itself, not a file name) or 1-D int array of token
            ids: one long stream trained by truncated BPTT in windows of
            ``seq_len`` over ``batch_size`` parallel streams. A
            :class:`~revtrain.data.GridTask` (e.g. ``rt.digits_task()``; its
            validation part is the default ``val_data``) or a tuple ``(x, y)``
            of time-major arrays (batch axis after the time/grid axes):
            mini-batches in a seeded order per epoch. A callable
            ``data(rng, batch_size) -> (x, y)``: a fresh batch per step
            (needs ``steps``).
        steps : int, optional
            Optimiser steps to run in this call (cycling over the data as needed).
        epochs : int, optional
            Passes over the data instead of ``steps`` (default 1 when neither
            is given; not for callables).
        batch_size : int
            Parallel streams (text) or examples per batch.
        seq_len : int
            Window length of truncated BPTT (text only).
        val_data : same kinds as ``data`` (not callables), optional
            Evaluated every ``eval_every`` steps and at the end.
        callbacks : callable or sequence of callables ``cb(trainer, record) -> bool``
            Called after every step with ``record`` a dict (``step``,
            ``loss``, ``stored_bytes``, ``time`` and, after a validation,
            ``val_loss`` ...). Returning True (or raising
            :class:`StopTraining`) ends training after that step.
        quiet : bool
            No progress output.
        eval_every : int, optional
            Validation period in steps (default: 5 validations per call).
        val_tokens : int, optional
            Validate on at most this many tokens of a text stream.
        grad_clip : float or None
            Rescale the gradient to this global L2 norm when it is larger
            (default 1.0, as in the ``revtrain`` command; None: no clipping).
        carry_state : bool
            Text only: start each window from the previous window's final
            state (truncated BPTT, the default) or from zeros (each window an
            independent sequence; also used for validation and sampling).
        save_every : int, optional
            Write a checkpoint to ``save_path`` every this many steps. A
            checkpoint of step ``s`` is written once the loss at its weights
            (step ``s + 1``, or the final validation) passed the divergence
            check, so diverged weights never overwrite a good checkpoint.
        save_path : str or PathLike, optional
            Where checkpoints go (atomically). Also written with the last
            completed step when training is interrupted (KeyboardInterrupt).
        log : str, PathLike or JsonLog, optional
            Append one JSON line per validation (step, loss, validation
            loss, bits per character, time).
        print_every : int, optional
            When stdout is not a terminal, print a progress line every this
            many steps (a terminal gets a progress bar instead).
        divergence_factor : float or None
            Stop with :class:`~revtrain.DivergenceError` when a loss exceeds
            this many times the first training loss of the run (for a softmax
            loss also when it exceeds ``3 log(n_out)``, or twice the first loss
            if that is higher). Non-finite losses and gradients always stop
            training. None: only non-finite values stop it.

        Returns
        -------
        History
            ``self.history``, extended.

        Raises
        ------
        DivergenceError
            The loss or gradient became non-finite or far above the starting
            loss, or the optimiser left its fixed-point range; the message
            names the step. The trainer keeps the weights of the last
            completed step (they produced the bad loss: do not save them).
        """
        if steps is not None and epochs is not None:
            raise ValueError(f"give steps or epochs, not both (got steps={steps}, epochs={epochs})")
        B, T = check_sizes(batch_size, seq_len)
        grad_clip = positive_number(grad_clip, "grad_clip", none_ok=True)
        divergence_factor = positive_number(divergence_factor, "divergence_factor", none_ok=True)
        src, val, char_loss = self._sources(data, val_data)
        per_epoch = src.per_epoch(B, T)
        if steps is None:
            if per_epoch is None:
                raise ValueError("steps is required when data is a callable")
            epochs = 1 if epochs is None else positive_int(epochs, "epochs")
            steps = epochs * per_epoch
        steps = positive_int(steps, "steps")
        eval_every = positive_int(max(1, steps // 5) if eval_every is None else eval_every,
                                  "eval_every")
        if val_tokens is not None:
            val_tokens = positive_int(val_tokens, "val_tokens")
        callbacks = (callbacks,) if callable(callbacks) else tuple(callbacks)
        for cb in callbacks:
            if not callable(cb):
                raise ValueError(f"callbacks must be callables, got {type(cb).__name__}")
        if save_every is not None:
            save_every = positive_int(save_every, "save_every")
            if save_path is None:
                raise ValueError("save_every needs a save_path")
        if print_every is not None:
            print_every = positive_int(print_every, "print_every")
        M, comm = self.micro_batches, self.comm
        if M is not None:
            check_micro(M, B, comm)
        key = (src.fingerprint(), B, T)
        agree((key, steps, self.steps_done), comm,
              "the data, batch_size, seq_len, steps or steps done")
        if not is_root(comm):            # rank 0 writes every file and shows the progress
            quiet, log = True, None
        if save_path is not None:
            on_root(lambda: model_file.check_writable(save_path), comm)
        if log is not None and not isinstance(log, JsonLog):
            log = JsonLog(log)

        self.fit_options = {"batch_size": B, "seq_len": T, "grad_clip": grad_clip,
                            "carry_state": bool(carry_state)}
        st = self._state
        self._rng.bit_generator.state = st.rng_state
        pos, carry = (st.position, st.carry) if st.data_key == key else (START, None)
        h = self.history
        limit = train_step.loss_limit(self.model, h.loss[0] if h.loss else None,
                                      divergence_factor)
        t_train = h.time[-1] if h.time else 0.0
        progress = Progress(steps, self.steps_done + 1, quiet, type(self.model).__name__,
                            print_every)
        pending = None
        sigint = DeferredInterrupt(comm)
        try:
            for i in range(steps):
                step = self.steps_done + 1
                x, y, fresh = src.batch(pos, B, T, self._rng)
                if fresh or not carry_state or not src.carries_state:
                    carry = None
                t0 = time.perf_counter()
                loss, grad, stats = train_step.loss_and_grad(
                    self.model, self.theta, x, y, carry, step, self.bptt, self.checkpoint_every,
                    self.seed, M, comm, self.comm_stats)
                if limit is None:
                    limit = train_step.loss_limit(self.model, loss, divergence_factor)
                train_step.check_loss(loss, limit, step, "training loss")
                if pending is not None:         # the weights of the pending step passed
                    self._write(save_path, pending)
                    pending = None
                theta, opt_state = train_step.update(self.optimizer, self._state.opt_state,
                                                     grad, grad_clip, step,
                                                     exact_norm=M is not None)
                t_train += time.perf_counter() - t0
                fs = stats.final_state
                carry = (None if not (carry_state and src.carries_state and fs is not None)
                         else np.array(fs, dtype=np.float64))
                pos = advance(pos, per_epoch)
                h.record_step(step, loss, t_train, stats.stored_bytes, char_loss)
                rec = {"step": step, "loss": float(loss), "time": t_train,
                       "stored_bytes": int(stats.stored_bytes)}
                validate = val is not None and ((i + 1) % eval_every == 0 or i + 1 == steps)
                if validate:
                    ev = on_root(lambda: loss_on(self.model, theta, val, B, T, val_tokens,
                                                 char_loss, carry_state), comm)
                    train_step.check_loss(ev["loss"], None, step, "validation loss")
                    h.record_validation(step, ev)
                    rec.update({"val_" + k: v for k, v in ev.items()})
                    if log is not None:
                        log.write(rec)
                self._commit(theta, opt_state, step, pos, carry, key, h.lengths())
                if save_every is not None and step % save_every == 0:
                    pending = self._state
                progress.step(i, rec)
                failed = None
                try:
                    stop = self._run_callbacks(callbacks, rec)
                except Exception as e:
                    if comm is None:
                        raise
                    stop, failed = True, e
                if comm is not None:     # one rank's stop, error or Ctrl-C stops all after
                    stop = sigint.agree(stop, failed)                        # this step

                if stop:
                    break
            if pending is not None and (validate or np.isfinite(self.theta).all()):
                self._write(save_path, pending)   # last step: checked by its validation
        except KeyboardInterrupt:
            if save_path is not None and is_root(comm):
                self._write(save_path, self._state, collective=False)
            raise
        finally:
            sigint.restore()
            progress.close()
        return h

    def _sources(self, data, val_data):
        """``(source, validation source or None, char_loss)``; sets the vocabulary."""
        src, default_val, vocab, is_char = make_source(data, self.model, self.vocab, self.seed)
        self._set_vocab(vocab)
        if val_data is None:
            val = default_val
        else:
            val, _, vvocab, _ = make_source(val_data, self.model, self.vocab, self.seed,
                                            "val_data")
            if val.kind == "generator":
                raise ValueError("val_data must be fixed data, not a callable")
            if vvocab is not None and self.vocab is not None and vvocab != self.vocab:
                raise ValueError("val_data: " + self._vocab_mismatch(vvocab))
        return src, val, self._is_char_loss(is_char)

    def _run_callbacks(self, callbacks, rec):
        stop = False
        for cb in callbacks:
            try:
                if cb(self, rec):
                    stop = True
            except StopTraining:
                stop = True
        return stop

    # ------------------------------------------------------- evaluate
    def evaluate(self, data, batch_size=32, seq_len=64, max_tokens=None, carry_state=None):
        """Loss on fixed data (no training, and no change to the trainer).

        Text is encoded with the trainer's vocabulary (a ``str`` whose
        characters are not all in it is a ValueError naming them); a
        TextCorpus or GridTask is evaluated on its validation part. Text
        streams are run in windows with the state carried over, like
        training (or from zeros each window when ``carry_state`` is False;
        default: as the last fit). Returns a dict with ``loss`` and, where
        they apply, ``bpc`` (bits per character) and ``acc`` (accuracy of
        last-step labels).
        """
        if isinstance(data, str) and self.vocab is not None:
            missing = sorted(set(data) - set(self.vocab.chars))
            if missing:
                raise ValueError(f"data: {len(missing)} characters are not in the model's "
                                 f"vocabulary: {''.join(missing[:20])!r}")
        src, default_val, vocab, is_char = make_source(data, self.model, self.vocab, self.seed)
        if vocab is not None and self.vocab is not None and vocab != self.vocab:
            raise ValueError(self._vocab_mismatch(vocab))
        if src.kind == "generator":
            raise ValueError("data must be fixed data, not a callable")
        if default_val is not None:
            src = default_val
        if carry_state is None:
            carry_state = self.fit_options.get("carry_state", True)
        if max_tokens is not None:
            max_tokens = positive_int(max_tokens, "max_tokens")
        B, T = check_sizes(batch_size, seq_len)
        return loss_on(self.model, self.theta, src, B, T, max_tokens,
                       self._is_char_loss(is_char), carry_state)

    # -------------------------------------------------------- generate
    def generate(self, length, prime="\n", temperature=1.0, seed=0, carry_state=None):
        """Sample ``length`` characters from a character model.

        Parameters
        ----------
        length : int >= 0
        prime : str
            Text fed first (its characters must be in the vocabulary).
        temperature : float >= 0
            Divides the log-probabilities (lower is more conservative); 0
            picks the most likely character (greedy).
        seed : int
        carry_state : bool, optional
            True: one recurrent state runs through the whole text. False:
            each character is predicted from the last ``seq_len - 1``
            characters starting from a zero state, as a model trained with
            reset windows saw its inputs. Default: as the model was trained.

        Returns
        -------
        text : str
            The sampled characters (without the prime).
        """
        if self.vocab is None:
            raise ValueError("generate needs a character model (train on text first)")
        length = nonneg_int(length, "length")
        temperature = number_in_range(temperature, "temperature", 0.0, math.inf, hi_open=True)
        if not isinstance(prime, str) or not prime:
            raise ValueError("prime must be a non-empty str")
        if carry_state is None:
            carry_state = self.fit_options.get("carry_state", True)
        context = max(1, self.fit_options.get("seq_len", 64) - 1)
        ids = sample_ids(self.model, self.theta, self.vocab.size, self.vocab.encode(prime),
                         length, temperature, np.random.default_rng(seed), carry_state, context)
        return self.vocab.decode(ids)

    # ------------------------------------------------------ save, load
    def _write(self, path, st, collective=True):
        """Write the committed state ``st`` to ``path`` (atomically; rank 0 only under MPI).

        ``collective``: every rank calls it and learns the outcome (a failure
        on rank 0 is raised on every rank); False for rank 0 alone (Ctrl-C).
        """
        def write():
            return model_file.write(path, *trainer_file.saved_form(self, st))
        out = on_root(write, self.comm) if collective else write()
        self.last_saved = (out, st.steps_done)
        return out

    def save(self, path):
        """Write the trainer to ``path`` (one ``.npz`` file, no pickle) atomically.

        It holds everything the next step depends on: parameters, optimiser
        state (e.g. Adam's moments and step count; ExactSGD's fixed-point
        weights, velocity, iteration and information buffer), the data
        position, the carried recurrent state, the random generator state,
        the history, and the options of the last fit. Written to a temporary
        file in the same folder, fsynced, then renamed over ``path``; the file
        mode follows the umask. With ``comm``, every rank calls it and rank 0
        writes (an error writing is raised on every rank).

        Returns
        -------
        path : str
        """
        return self._write(path, self._state)

    @classmethod
    def load(cls, path, comm=None):
        """Read a trainer written by :meth:`save`, ready to resume bit for bit.

        Parameters
        ----------
        path : str or PathLike
        comm : mpi4py communicator, optional
            Resume data parallel: every rank calls ``load``, rank 0 reads the
            file and sends it to the others. The file's ``micro_batches`` is
            used (it must be a multiple of the number of processes); a run
            saved on ``N`` processes resumes on any other number dividing it
            (or without MPI) to the same bits.

        Raises
        ------
        ModelFileError
            Missing, corrupt or truncated file, a file of another format or
            of another format version, or a model/optimiser class this
            revtrain does not have (on every rank).
        ValueError
            ``comm`` has more than one process and the run was saved without
            micro-batches, or with a number of them it does not divide.
        """
        meta, arrays = on_root(lambda: model_file.read(path), comm)
        return trainer_file.from_saved(cls, meta, arrays, str(path), comm)

    def __repr__(self):
        par = "" if self.micro_batches is None else f", micro_batches={self.micro_batches}"
        par += "" if self.comm is None else f", processes={comm_size(self.comm)}"
        return (f"Trainer({self.model!r}, {type(self.optimizer).__name__}, bptt={self.bptt!r}, "
                f"seed={self.seed}, steps_done={self.steps_done}{par})")
