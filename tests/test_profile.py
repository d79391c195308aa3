"""The profiling helpers measure and report real figures on a tiny problem."""
import numpy as np
import pytest

from revtrain import profile


def test_measure_one_reports_the_models_accounting():
    r = profile.measure_one("RNN", "standard", T=6, batch=2, hidden=4, vocab=5)
    # standard BPTT of the RNN keeps h (T+1, B, H) and the pre-activations (T, B, H) in float64
    assert r["stored_bytes"] == 8 * (7 * 2 * 4 + 6 * 2 * 4)
    assert r["tracemalloc_peak"] >= r["stored_bytes"]
    assert r["seconds"] > 0 and np.isfinite(r["loss"])
    c = profile.measure_one("RNN", "checkpoint", T=16, batch=2, hidden=4, vocab=5)
    s = profile.measure_one("RNN", "standard", T=16, batch=2, hidden=4, vocab=5)
    assert c["stored_bytes"] < s["stored_bytes"]
    assert abs(c["loss"] - s["loss"]) <= 1e-14 * abs(s["loss"])   # summed per segment


def test_table_and_plot(tmp_path):
    rows = profile.profile_bptt(lengths=(4, 8), batch=2, hidden=3, vocab=5, names=["RNN"],
                                progress=False)
    assert [(r.label, r.T) for r in rows] == [("RNN standard", 4), ("RNN standard", 8),
                                              ("RNN checkpoint", 4), ("RNN checkpoint", 8)]
    table = profile.format_table(rows)
    assert table.count("\n") == 1 + len(rows)
    profile.plot(rows, tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_unknown_model_names_are_an_error():
    assert profile.unknown_names(["rnn", "LSTM checkpoint", "Foo"]) == ["Foo"]
    with pytest.raises(ValueError, match="no configuration called 'Foo'.*RevLSTM"):
        profile.profile_bptt(lengths=(4,), batch=2, hidden=3, vocab=5, names=["Foo"],
                             progress=False)
