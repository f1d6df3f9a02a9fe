"""The trainer's history variants: calibrated resampling strength (calibration.py) and
history from the previous step's predictions (previous_step_history.py), resumed exactly."""

import json

import pytest
import torch

from resforce.training import previous_step_history
from resforce.training.calibration import calibrate_shift
from resforce.training.checkpoint import latest_checkpoint, load_checkpoint
from resforce.config import load_config
from resforce.flow import TimestepSampler, add_noise, per_frame
from resforce.history import HistoryConfig
from resforce.loss import flow_matching_loss
from resforce.model import build_model
from resforce.training.previous_step_history import loss_and_prediction
from resforce.training.loop import Trainer, train
from tiny import tiny

RECIPE = "configs/bb_resampling.yaml"


def cfg(tmp_path, name, *extra):
    return load_config(RECIPE, tiny(tmp_path / name, "stages.0.steps=2", "stages.1.steps=4",
                                    "stages.0.clip_chunks=3", "stages.1.clip_chunks=3", *extra))


def assert_same_weights(a, b):
    (m1, _, s1), (m2, _, s2) = (load_checkpoint(latest_checkpoint(d)) for d in (a, b))
    assert s1["step"] == s2["step"]
    for k in m1:
        assert torch.equal(m1[k], m2[k]), k
    return s1


def test_calibrate_shift_picks_the_closest_gap(randomize):
    model = randomize(build_model(preset="test", frames_per_chunk=1, patch_size=(1, 4, 4)))
    clean = torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    hc = HistoryConfig(strategy="resampling", calibrate_every=1, calibrate_shifts=[0.1, 1.0, 5.0])
    shift, gaps = calibrate_shift(model, clean, hc, steps=2, sample_shift=2.0)
    assert set(gaps) == {"rollout", "s=0.1", "s=1", "s=5"} and shift in (0.1, 1.0, 5.0)
    assert abs(gaps[f"s={shift:g}"] - gaps["rollout"]) == min(abs(gaps[k] - gaps["rollout"]) for k in gaps if k != "rollout")
    assert gaps["s=5"] > gaps["s=0.1"]  # a stronger shift degrades more
    assert calibrate_shift(model, clean, hc, steps=2, sample_shift=2.0) == (shift, gaps)  # deterministic


def test_calibrated_training_logs_its_shift_and_resumes_exactly(tmp_path):
    extra = ("stages.1.history.calibrate_every=2", "stages.1.history.calibrate_shifts=[0.1,0.6,3.0]",
             "stages.1.history.calibrate_samples=2")
    train(cfg(tmp_path, "full", *extra), progress=False)
    lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all("resample_shift" not in r for r in lines if r["stage"] == "warmup")
    shifts = [r["resample_shift"] for r in lines if r["stage"] == "resampling"]
    assert len(shifts) == 4 and all(s in (0.1, 0.6, 3.0) for s in shifts)
    train(cfg(tmp_path, "part", *extra), stop_at=3, progress=False)  # between two calibrations
    state = load_checkpoint(latest_checkpoint(tmp_path / "part"))[2]
    assert set(state["calibration"]["shifts"]) == {"1"}
    train(cfg(tmp_path, "part", *extra), progress=False)
    assert_same_weights(tmp_path / "full", tmp_path / "part")


def test_loss_and_prediction_is_the_training_loss(randomize):
    model = randomize(build_model(preset="test", frames_per_chunk=1, patch_size=(1, 4, 4)))
    clean = torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sampler = TimestepSampler()
    for space in ("velocity", "x0"):
        ref = flow_matching_loss(model, clean, clean, torch.zeros(2, 3), sampler, torch.Generator().manual_seed(1),
                                 space=space)
        loss, x0 = loss_and_prediction(model, clean, clean, sampler, torch.Generator().manual_seed(1), space=space)
        assert torch.equal(loss, ref) and not x0.requires_grad
    g = torch.Generator().manual_seed(1)
    t = sampler((2, 3), generator=g)
    x_t = add_noise(clean, torch.randn(clean.shape, generator=g), t, 1)
    with torch.no_grad():
        v = model(x_t, t, history=clean, t_history=torch.zeros(2, 3))
    assert torch.allclose(x0, x_t - per_frame(t, 1) * v, atol=1e-6)


def test_previous_step_history_reuses_the_last_predictions(tmp_path, monkeypatch):
    seen = []
    real = previous_step_history.loss_and_prediction

    def spy(model, clean, history, *a, **k):
        loss, x0 = real(model, clean, history, *a, **k)
        seen.append((clean.clone(), history.clone(), x0.clone()))
        return loss, x0

    monkeypatch.setattr(previous_step_history, "loss_and_prediction", spy)
    c = cfg(tmp_path, "prev", "stages.1.history.strategy=teacher", "stages.1.history.history_from_previous_step=true")
    train(c, progress=False)
    assert len(seen) == 4  # the 4 steps of the stage (batch 4: 2 new clips, 2 kept)
    first_clean, first_hist, first_x0 = seen[0]
    assert torch.equal(first_hist, first_clean)  # nothing kept yet: teacher forcing
    for (c0, _, x0), (c1, h1, _) in zip(seen, seen[1:]):
        assert torch.equal(h1[:2], c1[:2])  # new clips: ground-truth history
        assert torch.equal(c1[2:], c0[:2]) and torch.equal(h1[2:], x0[:2])  # kept: last step's predictions
        assert not torch.equal(h1[2:], c1[2:])


def test_previous_step_history_resumes_exactly(tmp_path):
    extra = ("stages.1.history.strategy=teacher", "stages.1.history.history_from_previous_step=true")
    train(cfg(tmp_path, "full", *extra), progress=False)
    train(cfg(tmp_path, "part", *extra), stop_at=4, progress=False)
    state = load_checkpoint(latest_checkpoint(tmp_path / "part"))[2]
    assert state["previous_step"]["clean"]["0"].shape[0] == 2
    train(cfg(tmp_path, "part", *extra), progress=False)
    assert_same_weights(tmp_path / "full", tmp_path / "part")


AGENT = ["data.kind=agent_balls", "data.agent_balls.balls.resolution=8", "data.agent_balls.balls.radius_min=1.5",
         "data.agent_balls.balls.radius_max=2.0", "data.agent_balls.agent_radius=1.5", "model.action_dropout=0.5"]


def agent_cfg(tmp_path, name, *extra):
    return load_config("configs/agent_rf_previous_step.yaml",
                       tiny(tmp_path / name, *AGENT, "stages.0.steps=2", "stages.1.steps=4",
                            "stages.0.clip_chunks=3", "stages.1.clip_chunks=3", *extra))


def test_previous_step_history_keeps_the_actions_of_an_action_model(tmp_path, monkeypatch):
    """The kept clips are conditioned on the actions they were trained with (after action
    dropout), and a resumed run trains what the uninterrupted one does."""
    seen = []
    real = previous_step_history.loss_and_prediction

    def spy(model, clean, history, *a, **k):
        seen.append((clean.clone(), k["actions"].clone()))
        return real(model, clean, history, *a, **k)

    monkeypatch.setattr(previous_step_history, "loss_and_prediction", spy)
    train(agent_cfg(tmp_path, "full"), progress=False)
    assert len(seen) == 4 and seen[0][1].shape == (4, 3)
    for (c0, a0), (c1, a1) in zip(seen, seen[1:]):
        assert torch.equal(c1[2:], c0[:2]) and torch.equal(a1[2:], a0[:2])
    assert not all(torch.equal(a0[:2], a1[:2]) for (_, a0), (_, a1) in zip(seen, seen[1:]))  # new clips, new actions
    monkeypatch.undo()
    train(agent_cfg(tmp_path, "part"), stop_at=4, progress=False)
    state = load_checkpoint(latest_checkpoint(tmp_path / "part"))[2]
    assert state["previous_step"]["actions"]["0"].shape == (2, 3)
    train(agent_cfg(tmp_path, "part"), progress=False)
    assert_same_weights(tmp_path / "full", tmp_path / "part")


def test_calibration_commands_an_action_models_rollout_with_the_clips_actions(tmp_path, monkeypatch):
    """The calibration rollout and resampled histories of an action model see the calibration
    clips' own actions (those of the stream's batch), as training's resampling passes do."""
    from resforce.training import calibration

    seen = []
    real = calibration.calibrate_shift

    def spy(model, clean, *a, **k):
        seen.append((clean.shape, k.get("actions")))
        return real(model, clean, *a, **k)

    monkeypatch.setattr(calibration, "calibrate_shift", spy)
    c = load_config("configs/agent_rf_calibrated.yaml",
                    tiny(tmp_path / "run", *AGENT, "stages.0.steps=1", "stages.1.steps=3", "stages.0.clip_chunks=3",
                         "stages.1.clip_chunks=3", "stages.1.history.calibrate_every=2",
                         "stages.1.history.calibrate_samples=2"))
    train(c, progress=False)
    assert len(seen) == 2
    for shape, actions in seen:
        assert actions is not None and actions.shape == (2, 3) and actions.dtype == torch.int64
        assert shape[0] == 2 and actions.min() >= 0 and actions.max() < 5


def test_previous_step_history_refuses_other_strategies():
    with pytest.raises(ValueError, match="set strategy 'teacher'"):
        HistoryConfig(strategy="resampling", history_from_previous_step=True)


def test_default_training_state_has_no_variant_keys(tmp_path):
    t = Trainer(cfg(tmp_path, "plain"), progress=False)
    t.run(stop_at=3)
    state = load_checkpoint(latest_checkpoint(tmp_path / "plain"))[2]
    assert "calibration" not in state and "previous_step" not in state
