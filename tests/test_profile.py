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
    pytest.importorskip("matplotlib", reason="the plot needs the profile extra (matplotlib)")
    profile.plot(rows, tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_unknown_model_names_are_an_error():
    assert profile.unknown_names(["rnn", "LSTM checkpoint", "Foo"]) == ["Foo"]
    with pytest.raises(ValueError, match="no configuration called 'Foo'.*RevLSTM"):
        profile.profile_bptt(lengths=(4,), batch=2, hidden=3, vocab=5, names=["Foo"],
                             progress=False)


def test_stacked_models_are_measured_and_compared_at_the_same_depth():
    one = profile.measure_one("RNN", "standard", T=6, batch=2, hidden=4, vocab=5)
    two = profile.measure_one("RNN", "standard", T=6, batch=2, hidden=4, vocab=5, n_layers=2)
    assert (one["layers"], two["layers"]) == (1, 2)
    assert two["stored_bytes"] == 2 * one["stored_bytes"]          # h and pre-activations per layer
    rows = profile.profile_bptt(lengths=(4,), batch=2, hidden=4, vocab=5,
                                names=["RNN standard", "MDRNN"], layers=(1, 2), progress=False)
    # MDRNN does not stack: measured with one layer only
    assert [(r.label, r.layers) for r in rows] == [("RNN standard", 1), ("MDRNN standard", 1),
                                                   ("RNN standard", 2)]
    table = profile.format_table(rows)
    assert "| RNN standard, 2 layers | 4 |" in table
    with pytest.raises(ValueError, match="layers"):
        profile.profile_bptt(lengths=(4,), batch=2, hidden=3, vocab=5, names=["RNN"], layers=(0,),
                             progress=False)


def test_reversible_cells_standard_mode_is_opt_in():
    labels = [c[0] for c in profile.available_configs(["RevLSTM"])]
    assert labels == ["RevLSTM reversible"]
    labels = [c[0] for c in profile.available_configs(["RevLSTM"], references=True)]
    assert labels == ["RevLSTM reversible", "RevLSTM standard"]
    assert [c[0] for c in profile.available_configs(["RevLSTM standard"])] == ["RevLSTM standard"]
    assert profile.unknown_names(["RevLSTM standard"]) == []
    assert "RevLSTM standard" not in [c[0] for c in profile.available_configs()]


def _script(name):
    """Import profiling/<name>.py (the folder is not a package)."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "profiling" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_profiling_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(label, stored, peak, seconds, layers, T=1000):
    return profile.ProfileRow(label=label, T=T, batch=32, hidden=256, stored_bytes=stored,
                              buffer_bytes=0, info_bits=0.0, tracemalloc_peak=peak,
                              rss_peak=float("nan"), seconds=seconds, loss=1.0, layers=layers)


def test_report_checks_the_deep_targets():
    report = _script("report")
    rows = [_row("LSTM standard", 300_000, 100_000, 1.0, 2),
            _row("RevLSTM reversible", 1_000, 1_000, 2.5, 2),
            _row("RevLSTM standard", 50_000, 20_000, 2.0, 2),
            _row("LSTM standard", 300_000, 100_000, 1.0, 3),
            _row("RevLSTM reversible", 3_000, 3_000, 2.7, 3),
            _row("LSTM standard", 1, 1, 1.0, 1)]             # one layer: no deep target
    lines = report.deep_targets(rows)
    assert [line.split(" ", 2)[1] for line in lines] == ["PASS", "PASS", "PASS",
                                                         "FAIL", "FAIL", "NOT"]
    assert "time = 1.25x RevLSTM standard's" in lines[2]
    assert "(3 layers, T=1000)" in lines[3] and "add --with-standard" in lines[5]
    assert report.deep_targets(rows[-1:]) == []
    assert "at T=1000, 2 layers" in report.summary(rows)


def test_bench_reversible_checks_the_deep_targets():
    bench = _script("bench_reversible")

    def row(model, mode, stored, peak, seconds, layers, buffer=0, info_bits=0.0):
        r = dict(model=model, mode=mode, T=1000, B=32, H=256, vocab=64, stored=stored,
                 buffer=buffer, info_bits=info_bits, peak=peak, seconds=seconds,
                 traced_time=False, loss=1.0)
        if layers != 1:
            r["layers"] = layers
        return r

    rows = [row("LSTM", "standard", 300_000, 100_000, 1.0, 2),
            row("RevLSTM", "reversible", 1_000, 1_000, 2.6, 2, buffer=800, info_bits=8 * 700),
            row("RevLSTM", "standard", 50_000, 20_000, 2.0, 2),
            dict(model="RevLSTM", mode="paired", T=1000, B=32, H=256, vocab=64, layers=2,
                 rev_s=2.9, std_s=2.0, rev_cpu=2.8, std_cpu=2.0),
            row("LSTM", "standard", 300_000, 100_000, 1.0, 1)]      # stored before --layers
    lines = bench.deep_targets(rows)
    assert [line.split(" ", 2)[1] for line in lines] == ["PASS", "PASS", "FAIL", "PASS"]
    assert "CPU time of alternating calls" in lines[2]        # --paired is preferred
    assert bench._key(rows[-1])[-1] == 1 and bench._key(rows[0])[-1] == 2
    table = bench.table(rows)
    assert "| RevLSTM (2 layers) | reversible | 1000 |" in table and "RSS" not in table
    assert "RSS peak MiB" in bench.table(rows[:1] + [dict(rows[1], rss=2.0**20)])


def test_bench_reversible_runs_stacked_rows_tiny(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("memory_profiler")
    bench = _script("bench_reversible")
    bench.main(["--T", "6", "--batch", "2", "--hidden", "4", "--layers", "1", "2",
                "--models", "RevLSTM", "--paired", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| RevLSTM (2 layers) | reversible | 6 |" in out
    assert "| RevLSTM (2 layers) | standard | 6 |" in out
    assert "(2 layers, T=6; the targets are stated at T=1000): RevLSTM reversible time" in out
    # one configuration in a fresh process, with its RSS peak, added to the stored rows
    bench.main(["--T", "6", "--batch", "2", "--hidden", "4", "--layers", "2", "--models",
                "RevLSTM", "--isolate", "--out", str(tmp_path)])
    rows = bench.load(str(tmp_path / "bench_reversible.json"))
    iso = [r for r in rows if r.get("layers") == 2 and r["mode"] == "reversible"]
    assert len(iso) == 1 and iso[0]["rss"] >= 0 and iso[0]["stored"] > 0
    assert len([r for r in rows if r["mode"] != "paired"]) == 4
