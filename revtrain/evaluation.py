"""Using a trained model: its loss on fixed data, and text sampled from it."""
import math

import numpy as np

from .data import text_windows

LN2 = math.log(2.0)


def loss_on(model, theta, src, batch_size, seq_len, max_tokens, char_loss, carry_state):
    """Mean loss of ``model`` at ``theta`` on a source (no training).

    Parameters
    ----------
    model : RecurrentModel
    theta : ndarray of float64, shape (P,)
    src : TextSource or ArraySource
        A text stream is read in ``text_windows(ids, B, seq_len)`` with
        ``B = min(batch_size, (N - 1) // seq_len)``; examples in their stored
        order in batches of ``batch_size``.
    batch_size, seq_len : int
    max_tokens : int or None
        Use at most this many tokens of a text stream.
    char_loss : bool
        Also report bits per character, ``loss / ln 2``.
    carry_state : bool
        Text: carry each window's final state into the next (else zeros).

    Returns
    -------
    dict
        ``loss`` (the mean over targets) and, where they apply, ``bpc`` and
        ``acc`` (accuracy of last-step labels, the argmax of the last output).
    """
    if src.kind == "text":
        ids = src.ids if max_tokens is None else src.ids[:max_tokens]
        B = min(batch_size, max(1, (len(ids) - 1) // max(seq_len, 1)))
        total, count, state = 0.0, 0, None
        for x, y in text_windows(ids, B, seq_len):
            total += model.loss(theta, x, y, initial_state=state) * y.size
            count += y.size
            if carry_state:
                state = model.final_state(theta, x, initial_state=state)
        out = {"loss": float(total / count)}
        if char_loss:
            out["bpc"] = out["loss"] / LN2
        return out
    total, count, correct = 0.0, 0, 0
    last_labels = getattr(model, "loss_kind", None) == "softmax" and src.y.ndim == 1
    for x, y in src.in_order(batch_size):
        n = x.shape[src.axis]
        total += model.loss(theta, x, y) * n
        count += n
        if last_labels:
            p = model.predict(theta, x)
            last = p.reshape(-1, n, p.shape[-1])[-1]
            correct += int(np.sum(np.argmax(last, axis=1) == y))
    out = {"loss": float(total / count)}
    if last_labels:
        out["acc"] = correct / count
    return out


def choose(probs, temperature, rng):
    """A token drawn from ``probs ** (1/temperature)`` (normalised); the argmax when 0."""
    if temperature == 0:
        return int(np.argmax(probs))
    logp = np.log(np.maximum(probs, 1e-300)) / temperature
    p = np.exp(logp - logp.max())
    return int(rng.choice(len(p), p=p / p.sum()))


def sample_ids(model, theta, n_tokens, prime_ids, length, temperature, rng, carry_state,
               context):
    """Token ids sampled from a token model after feeding ``prime_ids``.

    With ``carry_state`` one recurrent state runs through the prime and every
    sampled token; otherwise each token is predicted from the last
    ``context`` tokens starting from a zero state (as a model trained with
    reset windows saw its inputs).

    Returns
    -------
    list of int
        ``length`` sampled ids, each in ``[0, n_tokens)``.
    """
    ids = [int(i) for i in prime_ids]
    state, x = None, np.array(ids, dtype=np.int64)[:, None]
    out = []
    for _ in range(length):
        if not carry_state:
            x, state = np.array(ids[-context:], dtype=np.int64)[:, None], None
        probs = model.predict(theta, x, initial_state=state)[-1, 0, :n_tokens]
        if carry_state:
            state = model.final_state(theta, x, initial_state=state)
        c = choose(probs, temperature, rng)
        out.append(c)
        ids.append(c)
        x = np.array([[c]], dtype=np.int64)
    return out
