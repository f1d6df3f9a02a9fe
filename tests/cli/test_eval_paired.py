"""scripts/eval_paired.py: paired differences of two eval JSONs of any world, segment 0 (the
given frames) left out, and per-rollout action following when the evals measured it."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _main():
    spec = importlib.util.spec_from_file_location("eval_paired", ROOT / "scripts" / "eval_paired.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _write(path: Path, name: str, missing, own=None, floor=None):
    ev = {"name": name, "frames": 48, "segment_len": 16, "per_sample_segments": {"missing": missing}}
    if own is not None:
        ev["action_following"] = {"per_sample": {"videos": own, "floor": floor}}
    path.write_text(json.dumps(ev))


def test_paired_differences_leave_out_the_given_frames(tmp_path, capsys):
    _write(tmp_path / "a.json", "A", [[9.0, 2.0, 2.0], [9.0, 2.0, 1.0]], own=[0.3, 0.2], floor=[0.2, 0.2])
    _write(tmp_path / "b.json", "B", [[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]], own=[0.5, None], floor=[0.2, 0.1])
    _main()([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2 paired rollouts of 48 frames")
    row = next(x for x in out if x.startswith("missing") and "frames 16+" in x)
    assert "A 1.750  B 0.750  B-A -1.000 ± 0.000" in row  # segment 0's 9.0 and 0.0 do not count
    last = next(x for x in out if x.startswith("missing") and "last segment" in x)
    assert "A 1.500  B 0.500" in last
    above = next(x for x in out if x.startswith("following_above_floor"))
    assert "A 0.050  B 0.300" in above  # a rollout with no scored frame (None) is left out
