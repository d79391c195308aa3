"""Progress reporting of a training run: a bar in a terminal, lines in a log, JSON lines.

* In a terminal, a tqdm bar (unless quiet).
* Elsewhere (output piped or redirected), one line every ``print_every``
  steps when that is set (the ``revtrain`` command sets it), so a long run
  shows it is alive.
* :class:`JsonLog` appends one JSON object per validation to a file, for plotting.
"""
import json
import sys


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *a, **k):
        pass

    def close(self):
        pass


def _is_terminal():
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


class Progress:
    """Reports steps of one ``fit`` call.

    Parameters
    ----------
    total : int
        Steps this call will run.
    first_step : int
        Global number of the first of them (1-based).
    quiet : bool
        Report nothing.
    desc : str
        Label (the model's class name).
    print_every : int, optional
        When stdout is not a terminal, print a line every this many steps
        (and at the last); None prints nothing there.
    """

    def __init__(self, total, first_step, quiet, desc, print_every=None):
        self.total, self.first, self.desc = total, first_step, desc
        self.print_every = None if quiet else print_every
        self.bar = _NoBar()
        if not quiet and _is_terminal():
            self.print_every = None
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stdout,
                                dynamic_ncols=True, leave=True)
            except ImportError:
                pass

    def step(self, i, rec):
        """Report step ``i`` (0-based within this call) with its record (``loss``, ``val_loss``...)."""
        self.bar.update(1)
        last = i + 1 == self.total
        if i % 10 == 0 or last:
            post = {"loss": f"{rec['loss']:.3f}"}
            if "val_loss" in rec:
                post["val"] = f"{rec['val_loss']:.3f}"
            self.bar.set_postfix(post, refresh=False)
        if self.print_every and ((i + 1) % self.print_every == 0 or last):
            line = (f"{self.desc} step {rec['step']} ({i + 1}/{self.total}): "
                    f"loss {rec['loss']:.4f}")
            if "val_loss" in rec:
                line += f", validation loss {rec['val_loss']:.4f}"
                if "val_bpc" in rec:
                    line += f" ({rec['val_bpc']:.4f} bits/char)"
            print(line + f", {rec['time']:.1f} s", flush=True)

    def close(self):
        self.bar.close()


class JsonLog:
    """Append one JSON object per line to ``path`` (created if missing, appended on resume).

    Each line is a record passed to :meth:`write` (Python ints and floats;
    non-finite floats are written as strings, which JSON has no numbers for).
    """

    def __init__(self, path):
        from .model_file import check_writable
        try:
            self.path = check_writable(path)
        except ValueError as e:
            raise ValueError(f"log: {e}") from None

    def write(self, rec):
        clean = {k: (v if not isinstance(v, float) or v == v and abs(v) != float("inf")
                     else str(v)) for k, v in rec.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
