"""The experiment recipes load as written, and scripts/bb_summarize.py reports the right numbers."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from resforce.config import load_config
from tiny import tiny

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads(recipe, tmp_path):
    from omegaconf import OmegaConf

    from latent_fixtures import paper_index
    overrides = []  # a recipe on `resforce prepare` latents reads the dataset's index when it loads
    if recipe.stem.startswith("atari_"):
        pytest.importorskip("ale_py", reason="the atari recipes need ale-py: pip install 'resforce[atari]'")
    if OmegaConf.select(OmegaConf.load(recipe), "data.kind") == "latents":
        overrides = [f"data.latents.root={paper_index(tmp_path / 'latents')}"]
    cfg = load_config(recipe, overrides)
    assert cfg.stages and all(s.steps > 0 for s in cfg.stages)
    if recipe.stem.startswith("bb_") and recipe.stem != "bb_base" and not recipe.stem.startswith("bb_long"):
        # equal compute per method: every branch is the same warm-up plus the same number of steps
        assert [s.steps for s in cfg.stages][0] == 1500 and sum(s.steps for s in cfg.stages) == 2300
    if m := re.fullmatch(r"bb_resampling_shift([\d.]+)", recipe.stem):
        assert cfg.stages[-1].history.strategy == "resampling"
        assert cfg.stages[-1].history.resample_shift == float(m.group(1))


def _summarize_module():
    spec = importlib.util.spec_from_file_location("bb_summarize", ROOT / "scripts" / "bb_summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_eval(path: Path, failure_per_sample: np.ndarray, frames: int = 12, **fields):
    """An eval JSON like `resforce eval --json`: 2 segments of 6 frames, per-sample failure;
    fields: more top-level entries (history_attention, weights_sha256, ...)."""
    rows = [{"start": 0, "end": 6, "beyond_train": False}, {"start": 6, "end": 12, "beyond_train": True}]
    per_sample = {"failure": failure_per_sample.tolist(), "count_error": (failure_per_sample * 2).tolist(),
                  "lost": (failure_per_sample * 3).tolist(),
                  "color_integrity": (1 - failure_per_sample).tolist()}
    per_frame = {k: np.repeat(np.mean(v, 0), 6).tolist() for k, v in per_sample.items()}
    path.write_text(json.dumps({"name": path.stem, "segment_len": 6, "train_frames": 4, "prefix_frames": 1,
                                "samples": len(failure_per_sample), "frames": frames, "rows": rows, "context_chunks": 4,
                                "per_sample_segments": per_sample, "per_frame_mean": per_frame, **fields}))


def _write_evals(root: Path, failures: dict, fields: dict | None = None):
    """A fake eval JSON per {name: per-sample failure}, with fields[name] added to its file."""
    for name, failure in failures.items():
        _fake_eval(root / f"{name}.json", np.array(failure), **(fields or {}).get(name, {}))


def _summarize(tmp_path, capsys, monkeypatch, failures: dict, fields: dict | None = None) -> str:
    """Write the fake evals (_write_evals) and return bb_summarize's output."""
    _write_evals(tmp_path, failures, fields)
    monkeypatch.setattr("sys.argv", ["bb_summarize.py", str(tmp_path)])
    _summarize_module().main()
    return capsys.readouterr().out


def test_summarize_seed_statistics_shift_table_and_plots(tmp_path, capsys, monkeypatch):
    out = _summarize(tmp_path, capsys, monkeypatch, {
        # teacher: two seeds whose rollout means are 0.1/0.3 and 0.2/0.5 -> mean 0.15/0.4, s.e. 0.05/0.1
        "bb_teacher_s0": [[0.0, 0.2], [0.2, 0.4]],
        "bb_teacher_s1": [[0.1, 0.4], [0.3, 0.6]],
        # one seed: s.e. over rollouts, marked with a dagger
        "bb_resampling_s0": [[0.0, 0.1], [0.2, 0.3]],
        "bb_resampling_shift0.1_s0": [[0.1, 0.1], [0.1, 0.1]],
        "bb_long_teacher_s0": [[0.3, 0.3], [0.1, 0.1]],
        # the same models under other protocols: labelled tables of their own, never mixed in
        "bb_teacher_s0_dense": [[0.9, 0.9], [0.9, 0.9]],
        "bb_resampling_s0_dense": [[0.5, 0.7], [0.5, 0.7]],
        "bb_teacher_s0_x128": [[0.6, 0.8], [0.6, 0.8]],
        "bb_resampling_s0_x128": [[0.2, 0.2], [0.2, 0.2]],
    })
    assert "| teacher forcing | 2 | 0.150 ± 0.050 | 0.400 ± 0.100 |" in out
    assert "| Resampling Forcing (AR) | 1 | 0.100 ± 0.100† | 0.200 ± 0.100† |" in out
    # paired RF − TF over the same rollouts: (0-0, 0.2-0.2) and (0.1-0.2, 0.3-0.4)
    assert "| RF − TF, seed 0 | 0.000 ± 0.000 | -0.100 ± 0.000 |" in out
    assert "| RF, s = 0.1 | 1 | 0.100 ± 0.000† | 0.100 ± 0.000† |" in out
    assert "| RF, s = 0.1 − s = 0.6, seed 0 | 0.000 ± 0.100 | -0.100 ± 0.100 |" in out
    assert "| TF, 3000 steps | 1 | 0.200 ± 0.100† | 0.200 ± 0.100† |" in out
    # balls lost (3x failure here), paired over the same rollouts
    assert "| RF − TF, seed 0 | 0.000 ± 0.000 | -0.300 ± 0.000 |" in out
    dense = out[out.index("Context extrapolation"):]
    assert "| teacher forcing | 1 | 0.900 ± 0.000† | 0.900 ± 0.000† |" in dense
    assert "0.900" not in out[:out.index("128x the training length")]  # other protocols stay apart
    assert "| RF − TF, seed 0 | -1.200 ± 0.000 | -1.800 ± 0.000 |" in out  # x128, lost
    for png in ("methods_failure_vs_horizon.png", "shift_count_error_vs_horizon.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_gap_scores_degraded_histories(tmp_path, capsys):
    """A tiny run's self-resampled histories get scored; stronger shift -> further from the truth."""
    from resforce.cli.main import main

    run = tmp_path / "rf"  # velocity prediction: one Euler step from a tiny t_s barely moves the clip
    main(["train", "configs/bb_resampling.yaml", *tiny(run, "stages.0.steps=2", "stages.1.steps=1",
                                                        "model.prediction=velocity", "loss_space=velocity")])
    ev = tmp_path / "ev.json"
    main(["eval", str(run), "--chunks", "6", "--samples", "2", "--segment", "4", "--json", str(ev)])
    spec = importlib.util.spec_from_file_location("bb_history_gap", ROOT / "scripts" / "bb_history_gap.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "gap.md"
    mod.main([str(run), str(ev), "--samples", "8", "--shifts", "0.01,100", "--out", str(out)])
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| frames")}
    assert list(rows) == ["ground truth", "self-resampled, s = 0.01", "self-resampled, s = 100",
                          "its rollouts, frames 2-8", "its rollouts, frames 2-6"]
    failure = {name: float(r[0]) for name, r in rows.items()}
    # an untrained model resampling from t_s ~ 1 (s = 100) ruins the clip; t_s ~ 0 (s = 0.01) keeps it
    assert failure["ground truth"] <= failure["self-resampled, s = 0.01"] + 0.02
    assert failure["self-resampled, s = 0.01"] + 0.1 < failure["self-resampled, s = 100"]


def test_summarize_pairs_detached_history_per_seed_and_over_seeds(tmp_path, capsys, monkeypatch):
    out = _summarize(tmp_path, capsys, monkeypatch, {
        "bb_teacher_s0": [[0.0, 0.2], [0.2, 0.4]],
        "bb_teacher_s1": [[0.1, 0.4], [0.3, 0.6]],
        "bb_teacher_detached_s0": [[0.1, 0.2], [0.1, 0.2]],
        "bb_teacher_detached_s1": [[0.3, 0.4], [0.3, 0.6]],
        "bb_native32_teacher_s0": [[0.0, 0.0], [0.0, 0.0]],
    })
    detached = out[out.index("History gradient"):]
    # seed 0: differences (0.1, 0) and (-0.1, -0.2); seed 1: (0.2, 0) and (0, 0)
    assert "| TF detached − TF two-stream, seed 0 | 0.000 ± 0.100 | -0.100 ± 0.100 |" in detached
    assert "| TF detached − TF two-stream, seed 1 | 0.100 ± 0.100 | 0.000 ± 0.000 |" in detached
    # over seeds: the mean of the per-seed means, s.e. across the 2 seeds (training-seed noise)
    assert "| TF detached − TF two-stream, mean over 2 seeds | 0.050 ± 0.050 | -0.050 ± 0.050 |" in detached
    native = out[out.index("Native long context"):]
    assert "| TF 32-chunk − TF 8-chunk clips, seed 0 | -0.100 ± 0.100 | -0.300 ± 0.100 |" in native
    assert "mean over" not in native.split("count_error")[0]  # one seed: no across-seed row


def test_summarize_routing_and_shift_over_seeds(tmp_path, capsys, monkeypatch):
    failures = {
        "bb_teacher_s0": [[0.5, 0.5], [0.5, 0.5]],
        "bb_resampling_s0": [[0.2, 0.4], [0.2, 0.4]],
        "bb_resampling_s1": [[0.2, 0.4], [0.2, 0.4]],
        "bb_resampling_shift0.1_s0": [[0.1, 0.1], [0.1, 0.1]],
        "bb_resampling_shift0.1_s1": [[0.2, 0.2], [0.2, 0.2]],
        "bb_resampling_s0_topk4": [[0.3, 0.6], [0.3, 0.8]],
        "bb_resampling_s1_topk4": [[0.4, 0.6], [0.4, 0.6]],
        "bb_resampling_routed_s0": [[0.2, 0.3], [0.2, 0.3]],
        "bb_resampling_routed_s1": [[0.4, 0.7], [0.4, 0.7]],
    }
    # an evaluation that records its attention is labelled from the file (top-3 here, where the
    # hand-kept table of older evaluations says top-4)
    out = _summarize(tmp_path, capsys, monkeypatch, failures,
                     {"bb_resampling_routed_s0": {"history_attention": {"mode": "topk", "topk": 3}}})
    # shift: per seed (-0.1, -0.3) and (0, -0.2); over 2 seeds the mean and its s.e. across seeds
    assert "| RF, s = 0.1 − s = 0.6, mean over 2 seeds | -0.050 ± 0.050 | -0.250 ± 0.050 |" in out
    routed = out[out.index("Routed fine-tune stage"):]
    # routed − inference-only top-4, seed 0: (-0.1, -0.3) and (-0.1, -0.5), paired over the 2 rollouts
    assert "| routed fine-tune (top-3, context 4) − RF (top-4, context 4), seed 0 | -0.100 ± 0.000 | -0.400 ± 0.100 |" in routed
    # seed 1: routed − top-4 (0, +0.1); mean over the 2 seeds (-0.05, -0.15) ± (0.05, 0.25)
    assert "− RF (top-4, context 4), mean over 2 seeds | -0.050 ± 0.050 | -0.150 ± 0.250 |" in routed
    # top-4 at inference only − dense, same model: seed 0 (0.1, 0.3), seed 1 (0.2, 0.2)
    inference = out[out.index("History attention at inference"):out.index("Routed fine-tune stage")]
    assert "| RF topk4 − RF dense within the context, seed 1 | 0.200 ± 0.000 | 0.200 ± 0.000 |" in inference
    assert "| RF topk4 − RF dense within the context, mean over 2 seeds | 0.150 ± 0.050 | 0.250 ± 0.050 |" in inference
    # routed − dense: seed 0 (0, -0.1), seed 1 (+0.2, +0.3): mean (0.1, 0.1) ± (0.1, 0.2) across the 2 seeds
    dense = "| routed fine-tune (top-3, context 4) − RF (dense, context 4)"
    assert f"{dense}, seed 0 | 0.000 ± 0.000 | -0.100 ± 0.000 |" in routed
    assert f"{dense}, seed 1 | 0.200 ± 0.000 | 0.300 ± 0.000 |" in routed
    assert f"{dense}, mean over 2 seeds | 0.100 ± 0.100 | 0.100 ± 0.200 |" in routed


def test_summarize_never_pairs_an_inference_change_with_other_weights(tmp_path, capsys, monkeypatch):
    """RF top-4 at inference vs RF dense must be one model: evaluations that record different
    weight digests (a retrained run beside a stale evaluation) are left out, with a warning."""
    digests = {"bb_resampling_s0": "a" * 64, "bb_resampling_s0_topk4": "a" * 64,
               "bb_resampling_s1": "b" * 64, "bb_resampling_s1_topk4": "c" * 64}
    _write_evals(tmp_path, {name: [[0.2, 0.4], [0.2, 0.4]] for name in digests},
                 {name: {"weights_sha256": d} for name, d in digests.items()})
    monkeypatch.setattr("sys.argv", ["bb_summarize.py", str(tmp_path)])
    _summarize_module().main()
    out, err = capsys.readouterr()
    inference = out[out.index("History attention at inference"):]
    assert "RF topk4 − RF dense within the context, seed 0" in inference
    assert "seed 1" not in inference and "mean over" not in inference
    assert "bb_resampling_s1_topk4 and bb_resampling_s1 evaluated different weights" in err


def test_summarize_takes_a_retrained_seed_for_inference_attention_with_its_own_dense_baseline(
        tmp_path, capsys, monkeypatch):
    """A seed whose original weights are gone is retrained as bb_resampling_rerun_sN and its
    inference-only variants are paired with that run's own dense evaluation, never with the
    original bb_resampling_sN (other weights); the re-run stays out of the method tables."""
    failures = {
        "bb_teacher_s0": [[0.5, 0.5], [0.5, 0.5]],
        "bb_teacher_s1": [[0.5, 0.5], [0.5, 0.5]],
        "bb_resampling_s0": [[0.2, 0.4], [0.2, 0.4]],
        "bb_resampling_s0_topk4": [[0.3, 0.6], [0.3, 0.8]],
        "bb_resampling_s1": [[0.0, 0.0], [0.0, 0.0]],        # original seed 1: no variants
        "bb_resampling_rerun_s1": [[0.1, 0.2], [0.1, 0.2]],
        "bb_resampling_rerun_s1_topk4": [[0.4, 0.4], [0.4, 0.4]],
        "bb_resampling_routed_s1": [[0.3, 0.3], [0.3, 0.3]],
        "bb_teacher_rerun_s1": [[0.5, 0.5], [0.5, 0.5]],
        "bb_teacher_rerun_s1_x128": [[0.9, 0.9], [0.9, 0.9]],
        "bb_resampling_rerun_s1_x128": [[0.3, 0.4], [0.3, 0.4]],
    }
    topk4 = {"history_attention": {"mode": "topk", "topk": 4}}
    out = _summarize(tmp_path, capsys, monkeypatch, failures, {
        "bb_resampling_routed_s1": topk4, "bb_resampling_rerun_s1_topk4": topk4,
        "bb_resampling_rerun_s1": {"history_attention": {"mode": "dense"}}})
    inference = out[out.index("History attention at inference"):]
    # seed 1 (re-run): (0.4 - 0.1, 0.4 - 0.2); paired with bb_resampling_s1 it would read (0.4, 0.4)
    assert "| RF topk4 − RF dense within the context, seed 1 (re-run) | 0.300 ± 0.000 | 0.200 ± 0.000 |" in inference
    # mean over seed 0 (0.1, 0.3) and seed 1 (0.3, 0.2): each seed once
    assert "| RF topk4 − RF dense within the context, mean over 2 seeds | 0.200 ± 0.100 | 0.250 ± 0.050 |" in inference
    assert "rerun" not in out[:out.index("History attention at inference")]
    # the re-runs pair with each other (both from the re-run warm-up), at 16x and at 128x
    assert "| RF − TF, both retrained from the re-run warm-up, seed 1 | -0.400 ± 0.000 | -0.300 ± 0.000 |" in out
    long = out[out.index("1024 generated chunks"):]
    assert "| RF − TF, seed 1 (re-runs) | -0.600 ± 0.000 | -0.500 ± 0.000 |" in long
    assert "| teacher forcing, re-runs | 1 | 0.900 ± 0.000† | 0.900 ± 0.000† |" in long
    # the control: re-run − original of the same seed (training noise), (0.1, 0.2)
    assert "| control: RF re-run − RF of the tables, seed 1 | 0.100 ± 0.000 | 0.200 ± 0.000 |" in out
    # the routed fine-tune of seed 1 is paired with the same re-run: routed − re-run dense (0.2, 0.1)
    routed = out[out.index("Routed fine-tune stage"):]
    assert "− RF (dense, context 4), seed 1 (re-run) | 0.200 ± 0.000 | 0.100 ± 0.000 |" in routed
    assert "− RF (top-4, context 4), seed 1 (re-run) | -0.100 ± 0.000 | -0.100 ± 0.000 |" in routed


def test_every_default_experiment_job_names_a_config():
    """scripts/bb_experiments.sh trains configs/bb_<method>.yaml (<method>_rerun: the same config
    under another run name) for each default method:seed; a misspelt method would only fail
    hours into the queue."""
    script = (ROOT / "scripts" / "bb_experiments.sh").read_text()
    jobs = re.search(r'JOBS=\$\{JOBS:-"([^"]+)"\}', script).group(1).split()
    assert len(jobs) >= 30
    for job in jobs:
        method, seed = job.split(":")
        assert seed.isdigit(), job
        assert (ROOT / "configs" / f"bb_{method.removesuffix('_rerun')}.yaml").is_file(), job
