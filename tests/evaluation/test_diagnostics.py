"""Diagnostics: history gap and identity sensitivity (resforce.diagnostics)."""

import json

import pytest
import torch

from resforce.config import load_config
from resforce.diagnostics import (chunk_distances, colour_histograms, follow_score, frame_distances, history_gap,
                                  identity_sensitivity, permute_channels, resampled_history)
from resforce.diagnostics.__main__ import main as diagnose
from resforce.diagnostics.identity import model_generator
from resforce.model import build_model
from resforce.training.loop import train
from tiny import tiny

FPC, H, W, N = 1, 8, 8, 4


@pytest.fixture
def model(randomize):
    return randomize(build_model(preset="test", frames_per_chunk=FPC, patch_size=(1, 4, 4)))


def clips(b=2, seed=0):
    return torch.rand(b, 3, N * FPC, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def palette_video(colours, b=1, frames=3):
    """Frames of a black background with a 4x4 square of each colour (one per sample), in [-1, 1]."""
    v = -torch.ones(b, 3, frames, H, W)
    for i, c in enumerate(colours):
        v[i, :, :, 2:6, 2:6] = torch.tensor(c, dtype=torch.float)[:, None, None, None] * 2 - 1
    return v


def test_colour_histograms_and_distances():
    v = palette_video([(1, 0, 0), (0, 1, 0)], b=2)
    h = colour_histograms(v)
    assert h.shape == (2, 3, 64) and torch.allclose(h.sum(-1), torch.ones(2, 3))
    d = frame_distances(v, v)
    assert all(x.shape == (2, 3) and x.abs().max() == 0 for x in d.values())
    # recolouring the square is seen by the colour distances (16 of 64 pixels move bins: 2 * 0.25)
    d = frame_distances(v, permute_channels(v))
    assert torch.allclose(d["hist_l1"], torch.full((2, 3), 0.5))
    assert (d["chan_stats"] > 0).all() and (d["mse"] > 0).all()
    per_chunk = chunk_distances(v, permute_channels(v), frames_per_chunk=1)
    assert set(per_chunk) == {"mse", "hist_l1", "chan_stats"} and len(per_chunk["mse"]) == 3


def test_history_gap_shapes_and_determinism(model):
    gt = clips()
    r1 = history_gap(model, gt, shifts=(0.6, 3.0), prefix_chunks=1, steps=2, sample_shift=2.0, seed=0)
    r2 = history_gap(model, gt, shifts=(0.6, 3.0), prefix_chunks=1, steps=2, sample_shift=2.0, seed=0)
    assert r1 == r2
    assert r1["chunks"] == N and r1["prefix_chunks"] == 1
    assert list(r1["rows"]) == ["rollout", "resampling s=0.6", "resampling s=3", "parallel_resampling s=0.6",
                                "parallel_resampling s=3"]
    for row in r1["rows"].values():
        assert all(len(v) == N for v in row.values())
    roll = r1["rows"]["rollout"]
    assert roll["mse"][0] == 0 and roll["hist_l1"][0] == 0  # the given chunk is the ground truth
    assert min(roll["mse"][1:]) > 0
    # a stronger resampling degrades the history more (MSE averaged over chunks)
    weak, strong = (sum(r1["rows"][f"resampling s={s}"]["mse"]) for s in ("0.6", "3"))
    assert strong > weak
    r3 = history_gap(model, gt, shifts=(0.6,), prefix_chunks=1, steps=2, seed=1)
    assert r3["rows"]["rollout"] != r1["rows"]["rollout"]


def test_follow_score_is_one_for_a_copying_model_and_zero_for_a_fixed_colour():
    history = palette_video([(1, 0, 0), (0, 0, 1)], b=2, frames=2)

    def copy(h):  # continues its history's last frame
        return h[:, :, -1:].repeat(1, 1, 3, 1, 1)

    def fixed(h):  # always a yellow square
        return palette_video([(1, 1, 0), (1, 1, 0)], b=h.shape[0], frames=3)

    s = identity_sensitivity(copy, history, frames_per_chunk=1)
    assert s["follow"] == [1.0, 1.0, 1.0] and s["follow_mean"] == 1.0
    s = identity_sensitivity(fixed, history, frames_per_chunk=1)
    assert s["follow"] == [0.0, 0.0, 0.0] and s["follow_mean"] == 0.0
    assert all(m > 0 for m in s["moved"])
    # a frame the transform leaves alone (empty) has no score
    empty = -torch.ones(1, 3, 2, H, W)
    s = follow_score(empty, empty, permute_channels, 1)
    assert all(f != f for f in s["follow"])  # NaN


def test_identity_sensitivity_of_a_model(model):
    gen = model_generator(model, chunks=3, steps=2, shift=2.0, seed=0)
    history = clips()[:, :, :FPC]
    a = identity_sensitivity(gen, history, FPC)
    b = identity_sensitivity(gen, history, FPC)
    assert a == b and len(a["follow"]) == 3 and all(f == f for f in a["follow"])
    assert gen(history).shape == (2, 3, 3 * FPC, H, W)


def test_entry_point_on_a_trained_tiny_run(tmp_path, capsys):
    cfg = load_config("configs/bb_base.yaml", tiny(tmp_path / "run", "stages.0.clip_chunks=3"))
    train(cfg, stop_at=1, progress=False)
    out = tmp_path / "d.json"
    md = tmp_path / "d.md"
    diagnose([str(tmp_path / "run"), "--samples", "2", "--shifts", "0.6,3", "--prefix-chunks", "1",
              "--json", str(out), "--markdown", str(md)])
    printed = capsys.readouterr().out
    assert "per-pixel MSE" in printed and "| follow |" in printed
    data = json.loads(out.read_text())
    assert data["command"].startswith("python -m resforce.diagnostics ")
    assert len(data["history_gap"]["rows"]) == 5 and len(data["identity"]["follow"]) == 2
    assert md.read_text().splitlines()[0].startswith("<!-- python -m resforce.diagnostics")
    # every history scored with the world's verdict metrics; the rollout's given chunk is the
    # ground truth itself: no ball missing, none recoloured
    gap = data["history_gap"]
    assert gap["scored"] == ["count_error", "identity_error"] and "the world's `identity_error`" in printed
    assert all(len(row["identity_error"]) == 3 for row in gap["rows"].values())
    assert gap["rows"]["rollout"]["count_error"][0] == 0 and gap["rows"]["rollout"]["identity_error"][0] == 0
    diagnose([str(tmp_path / "run"), "--samples", "1", "--shifts", "0.6", "--prefix-chunks", "1",
              "--world-metrics", "failure", "--anchor-chunks", "0", "1", "--json", str(out)])
    gap = json.loads(out.read_text())["history_gap"]
    assert gap["scored"] == ["failure"] and "resampling s=0.6 anchor 1" in gap["rows"] and len(gap["rows"]) == 5
    with pytest.raises(SystemExit, match="--world-metrics colour: not a metric of the bouncing balls world"):
        diagnose([str(tmp_path / "run"), "--samples", "1", "--world-metrics", "colour"])


def test_history_gap_scores_every_history_with_a_world_metric(model):
    """chunk_scores averages a per-frame metric per chunk position, NaN left out."""
    gt = clips()

    def score(video):  # per-frame: the mean absolute difference to the ground truth; NaN in frame 0 of sample 0
        d = (video - gt).abs().mean(dim=(1, 3, 4)).numpy().astype("float64")
        d[0, 0] = float("nan")
        return {"gap": d}

    r = history_gap(model, gt, shifts=(0.6,), strategies=("resampling",), prefix_chunks=1, steps=2, score=score)
    assert r["scored"] == ["gap"]
    roll = r["rows"]["rollout"]
    assert roll["gap"][0] == 0 and min(roll["gap"][1:]) > 0
    hist = r["rows"]["resampling s=0.6"]
    assert all(v > 0 for v in hist["gap"]) and all(k in hist for k in ("mse", "hist_l1", "chan_stats"))
    assert history_gap(model, gt, shifts=(0.6,), strategies=("resampling",), prefix_chunks=1, steps=2)["scored"] == []
    # an anchored history: its first chunk is the ground truth (gap 0), the rest resampled
    r = history_gap(model, gt, shifts=(3.0,), strategies=("resampling",), prefix_chunks=1, steps=2, score=score,
                    anchors=(0, 1))
    assert list(r["rows"]) == ["rollout", "resampling s=3", "resampling s=3 anchor 1"]
    anchored = r["rows"]["resampling s=3 anchor 1"]
    assert anchored["gap"][0] == 0 and anchored["mse"][0] == 0 and r["rows"]["resampling s=3"]["mse"][0] > 0

    # a per-chunk history: the history resample_per_chunk builds, next to the per-clip one
    r = history_gap(model, gt, shifts=(3.0,), strategies=("resampling",), prefix_chunks=1, steps=2,
                    per_chunk=(False, True), seed=4)
    assert list(r["rows"]) == ["rollout", "resampling s=3", "resampling s=3 per chunk"]
    g = torch.Generator().manual_seed(4)
    resampled_history(model, gt, "resampling", 3.0, g)  # the per-clip row's draws come first
    ref = chunk_distances(resampled_history(model, gt, "resampling", 3.0, g, resample_per_chunk=True), gt, 1, 4)
    assert r["rows"]["resampling s=3 per chunk"]["mse"] == ref["mse"]
    assert r["rows"]["resampling s=3 per chunk"]["mse"] != r["rows"]["resampling s=3"]["mse"]


def test_world_score_defaults_to_the_verdict_metrics_the_world_computes():
    """A world whose verdict names a metric it does not compute for these clips (Breakout's
    brick count in a Pong world) is scored with the others; asked for by name, it is an error."""
    from types import SimpleNamespace

    import numpy as np

    from resforce.diagnostics.__main__ import world_score

    def score(videos, states, ground_truth=None, ref_frames=2):
        return {"missing": np.zeros(videos.shape[:1] + videos.shape[2:3]), "drift": np.ones(videos.shape[:1] + videos.shape[2:3])}

    world = SimpleNamespace(verdict_metrics={"missing": (), "brick_error": ()}, score=score, title="game")
    gt = torch.zeros(2, 3, 4, 8, 8)
    assert set(world_score(world, None, gt, 1, None)(gt)) == {"missing"}
    assert set(world_score(world, None, gt, 1, ["drift"])(gt)) == {"drift"}
    with pytest.raises(SystemExit, match="--world-metrics brick_error: not a metric of the game world"):
        world_score(world, None, gt, 1, ["brick_error"])
    assert world_score(SimpleNamespace(verdict_metrics={}, score=score, title="videos"), None, gt, 1, None) is None


AGENT = ["data.kind=agent_balls", "data.agent_balls.balls.resolution=8", "data.agent_balls.balls.radius_min=1.5",
         "data.agent_balls.balls.radius_max=2.0", "data.agent_balls.agent_radius=1.5"]


def test_diagnose_commands_an_action_model_with_its_clips_actions(tmp_path, monkeypatch):
    """An action model's rollout, every resampled history and the identity continuations are
    commanded by the evaluation clips' own actions, as eval and training do: not by its null
    action, which would measure a history gap the model never trains or rolls out with."""
    import sys

    from resforce.actions import actions_of
    from resforce.generation.generate import world_clips

    cfg = load_config("configs/agent_resampling.yaml", tiny(tmp_path / "run", *AGENT, "stages.0.clip_chunks=3",
                                                                "stages.1.clip_chunks=3"))
    train(cfg, stop_at=1, progress=False)
    # the modules (the package exports functions of the same names)
    hg, ident = sys.modules["resforce.diagnostics.history_gap"], sys.modules["resforce.diagnostics.identity"]
    seen = []

    def spy(real, what):
        def call(*a, **k):
            seen.append((what, k.get("actions")))
            return real(*a, **k)
        return call

    monkeypatch.setattr(hg, "rollout", spy(hg.rollout, "rollout"))
    monkeypatch.setattr(hg, "build_history", spy(hg.build_history, "history"))
    monkeypatch.setattr(ident, "rollout", spy(ident.rollout, "identity"))
    diagnose([str(tmp_path / "run"), "--samples", "2", "--shifts", "0.6", "--prefix-chunks", "1"])
    expected = actions_of(world_clips(cfg, 2, 3, 0)[1])[:, :3]
    assert [w for w, _ in seen] == ["rollout", "history", "history", "identity"]
    for what, actions in seen:
        assert actions is not None and torch.equal(actions.cpu(), expected), what


def test_an_action_models_rollout_follows_the_actions_it_is_given(tmp_path):
    """model_rollout's actions reach the model: the same clips and noise commanded by two
    different action sequences give two different continuations."""
    from resforce.diagnostics import model_rollout
    from resforce.io.weights import load_model

    cfg = load_config("configs/agent_resampling.yaml", tiny(tmp_path / "run", *AGENT, "stages.0.clip_chunks=3",
                                                                "stages.1.clip_chunks=3"))
    train(cfg, stop_at=4, progress=False)
    model, _ = load_model(tmp_path / "run")
    gt = clips(2)
    left, right = torch.full((2, N), 1), torch.full((2, N), 2)
    a = model_rollout(model, gt, 1, 2, 2.0, actions=left)
    assert torch.equal(a, model_rollout(model, gt, 1, 2, 2.0, actions=left))
    assert not torch.allclose(a, model_rollout(model, gt, 1, 2, 2.0, actions=right))
