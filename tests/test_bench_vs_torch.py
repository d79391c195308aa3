"""profiling/bench_vs_torch.py runs at toy sizes without torch (no timed assertions)."""
import importlib.util
import json
import math
import pathlib

import pytest


@pytest.fixture(scope="module")
def bench():
    path = pathlib.Path(__file__).resolve().parent.parent / "profiling" / "bench_vs_torch.py"
    spec = importlib.util.spec_from_file_location("_profiling_bench_vs_torch", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_one_cell_in_process(bench):
    r = bench.measure("RevLSTM", "float64", "reversible", 5, 2, 4, 2, repeat=2)
    assert len(r["times_ms"]) == 2 and r["ms"] > 0 and r["mib"] >= 0
    assert math.isfinite(r["loss"])


def test_one_option_answers_json(bench, capsys):
    bench.main(["--one", "LSTM", "float64", "checkpoint", "5", "2", "4", "1", "--repeat", "1"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(r) >= {"ms", "mib", "times_ms", "loss"}
    bad = bench.measure_isolated("NoSuchModel", "float64", "standard", 5, 2, 4, 1, 1)
    assert "NoSuchModel" in bad["error"]


def test_table_without_torch(bench, tmp_path, capsys):
    out = tmp_path / "t.md"
    rows = bench.main(["--sizes", "6,2,4", "--layers", "1", "--dtypes", "float32", "float64",
                       "--repeat", "1", "--no-torch", "--out", str(out)])
    text = capsys.readouterr().out
    assert "before: load average" in text and "after: load average" in text
    assert [(d, L, size) for d, L, size, _ in rows] == [("float32", 1, (6, 2, 4)),
                                                        ("float64", 1, (6, 2, 4))]
    f64 = rows[1][3]
    for label in ("rt LSTM standard", "rt LSTM checkpoint", "rt RevLSTM reversible"):
        assert f64[label]["ms"] > 0 and "error" not in rows[0][3][label]
    line = next(s for s in text.splitlines() if s.startswith("| float64 | 1 | 6 | 2 | 4 |"))
    assert line.count(" - |") == 3 and line.count(" MiB |") == 3     # torch columns empty
    assert "| dtype | L | T | B | H | torch f32 ckpt |" in text       # the ratio table
    assert out.read_text(encoding="utf-8") in text


def test_tables_ratios_and_missing_cells(bench):
    ref = {"ms": 100.0, "mib": 10.0}
    cells = {"torch f32": ref, "torch f64": {"ms": 250.0, "mib": 20.0},
             "rt LSTM standard": {"ms": 50.0, "mib": 300.0},
             "rt LSTM checkpoint": {"error": "MemoryError"},
             "rt RevLSTM reversible": {"na": "n/a (no dtype yet)"}}
    lines = bench.tables([("float64", 2, (10, 3, 8), cells)])
    cell_row, ratio_row = [s for s in lines if s.startswith("| float64 | 2 |")]
    assert "| 100 ms / 10.0 MiB | - | 250 ms / 20.0 MiB | 50 ms / 300.0 MiB | error |" in cell_row
    assert cell_row.endswith("| n/a (no dtype yet) |")
    assert ratio_row == "| float64 | 2 | 10 | 3 | 8 | - | 2.50x | 0.50x | - | - |"
    assert bench.parse_sizes(["1000,32,256 1000,1,128", "5,2,4"]) == [
        (1000, 32, 256), (1000, 1, 128), (5, 2, 4)]
