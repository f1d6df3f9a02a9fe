"""benchmarks/summary.py: record() writes one JSON line per number only when
RESFORCE_BENCH_SUMMARY names a file, and main() prints one aligned table of them with each
target marked met or missed."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def summary():
    spec = importlib.util.spec_from_file_location("bench_summary", ROOT / "benchmarks" / "summary.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_record_is_a_no_op_without_the_variable(summary, tmp_path, monkeypatch):
    monkeypatch.delenv(summary.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    summary.record("resampling", "RF / TF step", 1.4, target="<= 1.25")
    monkeypatch.setenv(summary.ENV, "")
    summary.record("resampling", "RF / TF step", 1.4, target="<= 1.25")
    assert list(tmp_path.iterdir()) == []


def test_record_appends_one_line_each(summary, tmp_path, monkeypatch):
    out = tmp_path / "s.jsonl"
    monkeypatch.setenv(summary.ENV, str(out))
    summary.record("resampling", "RF / TF step", 1.4, target="<= 1.25")
    summary.record("play", "frames/s, 4 Euler step(s)", 53, "frames/s", ">= 15")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == [
        {"benchmark": "resampling", "what": "RF / TF step", "value": 1.4, "unit": "x", "target": "<= 1.25"},
        {"benchmark": "play", "what": "frames/s, 4 Euler step(s)", "value": 53.0, "unit": "frames/s",
         "target": ">= 15"}]


def test_a_malformed_target_fails_even_without_the_variable(summary, monkeypatch):
    monkeypatch.delenv(summary.ENV, raising=False)
    with pytest.raises(ValueError, match="expected"):
        summary.record("resampling", "RF / TF step", 1.4, target="< 1.25")


def test_main_prints_the_table_with_targets_met_and_missed(summary, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.jsonl"
    monkeypatch.setenv(summary.ENV, str(out))
    summary.record("resampling", "RF / TF step", 1.43, target="<= 1.25")          # missed
    summary.record("chunk_attention", "sdpa / chunked time, N = 32", 2.92, target=">= 2")  # met
    summary.record("play", "frames/s, 4 Euler step(s)", 53.1, "frames/s", ">= 15")  # met
    summary.record("metrics", "render + metrics of 256 frames", 100.04, "ms")       # no target
    summary.record("chunk_attention", "sdpa / chunked time, N = 64", float("nan"), target=">= 2")  # not run
    monkeypatch.delenv(summary.ENV)
    assert summary.main([str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [c.strip() for c in lines[0].split("|")] == ["benchmark", "what", "value", "target", "met"]
    rows = {c[1]: c for c in ([x.strip() for x in line.split("|")] for line in lines[2:-1])}
    assert rows["RF / TF step"] == ["resampling", "RF / TF step", "1.43x", "<= 1.25x", "NO"]
    assert rows["sdpa / chunked time, N = 32"][2:] == ["2.92x", ">= 2x", "yes"]
    assert rows["frames/s, 4 Euler step(s)"][2:] == ["53.1 frames/s", ">= 15 frames/s", "yes"]
    assert rows["render + metrics of 256 frames"][2:] == ["100 ms", "", ""]
    assert rows["sdpa / chunked time, N = 64"][2:] == ["nan", ">= 2x", "NO"]
    assert lines[-1] == "5 numbers from 4 benchmarks; targets met: 2 of 4"
    assert len({line.index("|") for line in lines[:-1] if "|" in line}) == 1, "columns not aligned"
    assert "-+-" in lines[1]


def test_main_without_a_file_is_a_usage_error(summary, monkeypatch, capsys):
    monkeypatch.delenv(summary.ENV, raising=False)
    assert summary.main([]) == 2
    assert "usage" in capsys.readouterr().err
