"""A trainer in its model file: what :meth:`revtrain.Trainer.save` writes and
:meth:`revtrain.Trainer.load` rebuilds.

The file (:mod:`revtrain.model_file`: one ``.npz``, JSON metadata and
arrays, SHA-256 checked) holds the committed training state: parameters,
optimiser state, step count, data position, carried recurrent state, random
generator state, history, the options of the last fit and, for data-parallel
runs, the micro-batch count.
"""
import numpy as np

from . import model_file
from .data import CharVocab
from .distributed import check_parallel, comm_size
from .history import History
from .model_file import ModelFileError
from .sources import Position


def saved_form(tr, st):
    """``(meta, arrays)`` of trainer ``tr``'s committed state ``st``, as
    :meth:`~revtrain.Trainer.save` writes them."""
    meta = {
        "revtrain_version": version(),
        "model": model_file.describe_object(tr.model),
        "optimizer": model_file.describe_object(tr.optimizer),
        "bptt": tr.bptt,
        "seed": tr.seed,
        "checkpoint_every": tr.checkpoint_every,
        "init_scale": tr.init_scale,
        "steps_done": st.steps_done,
        "vocab": None if tr.vocab is None else tr.vocab.chars,
        "history": tr.history.as_dict(st.hist_len),
        "fit_options": tr.fit_options,
        "metadata": tr.metadata,
        "position": {"epoch": st.position.epoch, "index": st.position.index,
                     "data_key": None if st.data_key is None else list(st.data_key)},
        "rng_state": st.rng_state,
        "micro_batches": tr.micro_batches,
    }
    fields, arrays = model_file.encode_state(st.opt_frozen)
    meta["opt_state"] = fields
    arrays["theta"] = st.theta
    if st.carry is not None:
        arrays["carry"] = st.carry
    return meta, arrays


def from_saved(cls, meta, arrays, path, comm=None):
    """The trainer (of class ``cls``) that ``(meta, arrays)``, read from ``path``, describe,
    on ``comm``."""
    micro = meta.get("micro_batches") if isinstance(meta, dict) else None
    if comm_size(comm) > 1:
        if micro is None:
            raise ValueError(f"{path!r} holds a run trained without micro-batches (the "
                             "whole batch at once), which cannot be split over "
                             f"{comm_size(comm)} MPI processes; resume it without MPI")
        check_parallel(comm, micro)
    try:
        model = model_file.rebuild(meta["model"], "model", path)
        opt = model_file.rebuild(meta["optimizer"], "optimizer", path)
        theta = arrays["theta"]
        if theta.dtype != np.float64 or (hasattr(model, "size")
                                         and theta.shape != (model.size,)):
            raise ModelFileError(f"{path!r}: theta is {theta.dtype} {theta.shape}, the "
                                 f"model needs float64 ({model.size},)")
        tr = cls(model, opt, bptt=meta["bptt"], seed=int(meta["seed"]), theta=theta,
                 checkpoint_every=meta["checkpoint_every"],
                 init_scale=float(meta["init_scale"]), metadata=meta["metadata"],
                 comm=comm, micro_batches=micro)
        opt_state = model_file.decode_state(tr.opt_state, meta["opt_state"], arrays)
        if not np.array_equal(np.asarray(opt.params(opt_state), dtype=np.float64), theta):
            raise ModelFileError(f"{path!r} is inconsistent: the optimizer state does not "
                                 f"hold the saved parameters")
        tr.history = History.from_dict(meta["history"])
        tr.fit_options = dict(meta["fit_options"])
        if meta["vocab"] is not None:
            tr.vocab = CharVocab(meta["vocab"])
        p = meta["position"]
        key = None if p["data_key"] is None else tuple(p["data_key"])
        tr._rng.bit_generator.state = meta["rng_state"]
        carry = arrays.get("carry")
        tr._commit(theta, opt_state, int(meta["steps_done"]),
                   Position(int(p["epoch"]), int(p["index"])), carry, key, None)
        tr.last_saved = (path, tr.steps_done)
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ModelFileError(f"{path!r} has incomplete or invalid metadata "
                             f"({type(e).__name__}: {e})") from None
    return tr


def version():
    """This revtrain's version string."""
    from . import __version__
    return __version__
