"""What training recorded: one entry per step and one per validation."""
import math


class History:
    """What :meth:`~revtrain.Trainer.fit` recorded (lists, one entry per step or per evaluation).

    Attributes
    ----------
    step : list of int
        Global step number (1-based, continues across ``fit`` calls and resumes).
    loss : list of float
        Training loss of each step's batch or window.
    bpc : list of float
        Training bits per character (``loss / ln 2``) when the loss is a
        softmax over characters; else empty.
    time : list of float
        Cumulative training wall time in seconds (validation excluded).
    stored_bytes : list of int
        Bytes the step's BPTT held for its backward pass (the model's accounting).
    val_step, val_loss, val_bpc, val_acc : list
        Step of each validation, its loss, bits per character (character
        data) and accuracy (classification from the last step/cell).

    Every entry is a Python ``int`` or ``float`` (never a NumPy scalar), so a
    history survives a JSON round trip unchanged.
    """

    FIELDS = ("step", "loss", "bpc", "time", "stored_bytes",
              "val_step", "val_loss", "val_bpc", "val_acc")
    INT_FIELDS = ("step", "stored_bytes", "val_step")

    def __init__(self, **fields):
        for f in self.FIELDS:
            conv = int if f in self.INT_FIELDS else float
            setattr(self, f, [conv(v) for v in fields.get(f, [])])

    def as_dict(self, lengths=None):
        """Plain dict of lists (JSON-able); ``lengths`` (from :meth:`lengths`) truncates."""
        return {f: list(getattr(self, f))[:None if lengths is None else lengths[f]]
                for f in self.FIELDS}

    def lengths(self):
        """The length of every field: a cheap marker to truncate back to (see :meth:`as_dict`)."""
        return {f: len(getattr(self, f)) for f in self.FIELDS}

    @classmethod
    def from_dict(cls, d):
        """A History from a dict of lists (as saved in a trainer file); missing fields are empty."""
        return cls(**{f: d.get(f, []) for f in cls.FIELDS})

    def record_step(self, step, loss, t, stored_bytes, char_loss):
        """Append one training step (``bpc`` too when ``char_loss``)."""
        self.step.append(int(step))
        self.loss.append(float(loss))
        if char_loss:
            self.bpc.append(float(loss) / math.log(2.0))
        self.time.append(float(t))
        self.stored_bytes.append(int(stored_bytes))

    def record_validation(self, step, ev):
        """Append one validation result ``ev`` (dict with ``loss`` and maybe ``bpc``, ``acc``)."""
        self.val_step.append(int(step))
        self.val_loss.append(float(ev["loss"]))
        if "bpc" in ev:
            self.val_bpc.append(float(ev["bpc"]))
        if "acc" in ev:
            self.val_acc.append(float(ev["acc"]))

    def __len__(self):
        return len(self.step)

    def __getitem__(self, key):
        if key not in self.FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __eq__(self, other):
        return isinstance(other, History) and self.as_dict() == other.as_dict()

    def __repr__(self):
        parts = [f"steps={len(self.step)}"]
        if self.loss:
            parts.append(f"loss={self.loss[-1]:.4f}")
        if self.val_loss:
            parts.append(f"val_loss={self.val_loss[-1]:.4f}")
        if self.val_bpc:
            parts.append(f"val_bpc={self.val_bpc[-1]:.4f}")
        return "History(" + ", ".join(parts) + ")"
