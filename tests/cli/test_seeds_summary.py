"""scripts/seeds_summary.py: means over seeds and each candidate's paired differences per seed,
with the better / level / worse tally, from eval JSONs of any world."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METRICS = ("follow", "agent_found", "count_error", "identity_error", "lost")


def _summary():
    spec = importlib.util.spec_from_file_location("seeds_summary", ROOT / "scripts" / "seeds_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _write(folder: Path, name: str, count: list[list[float]], following=None):
    """An eval JSON (segments of 8 frames) whose count_error per rollout and segment is `count`
    (segment 0 holds the given frames); every other metric 0. following: (own, floor) per rollout."""
    segs = {m: [[0.0] * len(count[0]) for _ in count] for m in METRICS}
    segs["count_error"] = count
    ev = {"per_sample_segments": segs, "segment_len": 8}
    if following is not None:
        ev["action_following"] = {"per_sample": {"videos": following[0], "floor": following[1]}}
    (folder / f"{name}.json").write_text(json.dumps(ev))


def test_means_over_seeds_and_the_per_seed_tally(tmp_path, capsys):
    # segment 0 (given frames) is ignored: 9.0 there must not count
    _write(tmp_path, "base_s0", [[9.0, 1.0, 1.0], [9.0, 1.0, 1.0], [9.0, 1.0, 1.0]])
    _write(tmp_path, "base_s1", [[9.0, 1.0, 1.0], [9.0, 1.0, 1.0], [9.0, 1.0, 1.0]])
    # seed 0: lower count error on every rollout (better); seed 1: +/- around zero (level)
    _write(tmp_path, "cand_s0", [[0.0, 0.5, 0.5], [0.0, 0.4, 0.4], [0.0, 0.6, 0.6]])
    _write(tmp_path, "cand_s1", [[0.0, 1.1, 1.1], [0.0, 0.9, 0.9], [0.0, 1.0, 1.0]])
    _summary()([str(tmp_path), "--candidate", "cand", "--baselines", "base"])
    out = capsys.readouterr().out
    assert "mean over 3 rollouts" in out and "count_error frames 8-24 | count_error frames 16-24" in out
    row = next(line for line in out.splitlines() if line.startswith("| cand | 0,1 |"))
    assert "0.750 ± 0.250" in row  # count_error over the generated segments: seed means 0.5 and 1.0
    tally = next(line for line in out.splitlines() if line.startswith("| base | count_error | frames 8-24 |"))
    assert "-0.500 ± 0.058" in tally and "+0.000 ± 0.058" in tally and tally.endswith("| 1 / 1 / 0 |")


def test_unpaired_files_and_missing_methods_are_errors(tmp_path):
    _write(tmp_path, "base_s0", [[0.0, 1.0]] * 3)
    _write(tmp_path, "cand_s0", [[0.0, 1.0]] * 2)
    with pytest.raises(SystemExit, match="different numbers of rollouts"):
        _summary()([str(tmp_path), "--candidate", "cand", "--baselines", "base"])
    with pytest.raises(SystemExit, match="no METHOD_sN.json for other"):
        _summary()([str(tmp_path), "--candidate", "other", "--baselines", "base"])


def test_named_metrics_and_action_following(tmp_path, capsys):
    _write(tmp_path, "base_s0", [[0.0, 1.0]] * 3, following=([0.3, 0.3, 0.3], [0.2, 0.2, 0.2]))
    _write(tmp_path, "cand_s0", [[0.0, 1.0]] * 3, following=([0.5, 0.6, None], [0.2, 0.2, 0.2]))
    _summary()([str(tmp_path), "--candidate", "cand", "--baselines", "base",
                "--metric", "count_error:-", "--metric", "following_above_floor:+"])
    out = capsys.readouterr().out
    assert "| cand | 0 | 1.000 ± nan | 0.350 ± nan |" in out  # one seed: no s.e.; (0.3 + 0.4) / 2, None left out
    tally = next(line for line in out.splitlines() if "| following_above_floor | generated frames |" in line)
    assert tally.endswith("| 1 / 0 / 0 |")
    assert "follow " not in out and "identity_error" not in out
    with pytest.raises(SystemExit, match="no metric 'ball_found'"):
        _summary()([str(tmp_path), "--candidate", "cand", "--baselines", "base", "--metric", "ball_found:+"])
