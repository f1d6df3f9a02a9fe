"""loss_motion_weight: the loss's extra weight on what moves in the ground truth (loss.py)."""

import json

import pytest
import torch

from resforce.config import ConfigError, load_config
from resforce.flow import TimestepSampler
from resforce.loss import flow_matching_loss, motion_mask, weigh_motion
from resforce.model import build_model
from resforce.training.loop import train
from tiny import tiny


def moving_dot(frames=3, size=8):
    """(1, 3, F, size, size) in [-1, 1]: a white pixel one step right per frame on black."""
    v = -torch.ones(1, 3, frames, size, size)
    for f in range(frames):
        v[0, :, f, 4, 2 + f] = 1.0
    return v


def test_motion_mask_marks_old_and_new_places_grown_by_one_pixel():
    m = motion_mask(moving_dot(), threshold=0.1)
    assert m.shape == (1, 1, 3, 8, 8)
    assert m[0, 0, 0].sum() == 0  # the first frame has no previous frame
    expect = torch.zeros(8, 8)
    expect[3:6, 1:5] = 1  # the dot left (4, 2) for (4, 3): both places and their neighbours
    assert torch.equal(m[0, 0, 1], expect)
    assert motion_mask(moving_dot(), threshold=2.5).sum() == 0  # a change of 2 is below 2.5
    static = moving_dot()[:, :, :1].expand(-1, -1, 3, -1, -1)
    assert motion_mask(static, 0.1).sum() == 0


def test_weigh_motion_weights_only_moving_elements():
    clean = moving_dot()
    err = torch.ones(1, 3, 3, 8, 8)
    assert weigh_motion(err, clean, 0.0, 0.1) is err
    w = weigh_motion(err, clean, 4.0, 0.1)
    m = motion_mask(clean, 0.1).expand_as(err).bool()
    assert torch.all(w[m] == 5.0) and torch.all(w[~m] == 1.0)


def test_flow_matching_loss_with_motion_weight(randomize):
    model = randomize(build_model(preset="test", frames_per_chunk=1, patch_size=(1, 4, 4)))
    clean = moving_dot()

    def loss(video, **kw):
        with torch.no_grad():
            return flow_matching_loss(model, video, video, torch.zeros(1, 3), TimestepSampler(),
                                      torch.Generator().manual_seed(1), **kw)

    plain = loss(clean)
    assert torch.equal(loss(clean, motion_weight=0.0), plain)
    assert loss(clean, motion_weight=10.0) > plain  # the dot's error counts 11 times
    static = clean[:, :, :1].expand(-1, -1, 3, -1, -1).contiguous()
    assert torch.equal(loss(static, motion_weight=10.0), loss(static))  # nothing moves: the plain loss


def test_config_checks_the_motion_weight(tmp_path):
    with pytest.raises(ConfigError, match="loss_motion_weight=-1.0: expected a finite number >= 0"):
        load_config("configs/bb_teacher.yaml", tiny(tmp_path / "r", "loss_motion_weight=-1.0"))


def test_training_uses_the_motion_weight(tmp_path):
    """Same seed, same draws: the weighted run's first loss is larger (weights >= 1, balls move)."""
    def first_loss(name, *extra):
        c = load_config("configs/bb_teacher.yaml", tiny(tmp_path / name, "stages.0.steps=1",
                                                         "stages.0.clip_chunks=3", "stages.1.steps=0", *extra))
        train(c, progress=False)
        return json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])["loss"]

    assert first_loss("w", "loss_motion_weight=20") > 1.05 * first_loss("plain")


def test_a_stage_sets_its_own_motion_weight(tmp_path):
    """stages.N.loss_motion_weight overrides the run's for that stage only: the first stage
    trains exactly as a plain run, the second's first loss is larger."""
    def losses(name, *extra):
        c = load_config("configs/bb_resampling.yaml", tiny(tmp_path / name, "stages.0.steps=2", "stages.1.steps=1",
                                                           "stages.0.clip_chunks=3", "stages.1.clip_chunks=3", *extra))
        train(c, progress=False)
        return [json.loads(x)["loss"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    plain, staged = losses("plain"), losses("staged", "stages.1.loss_motion_weight=20")
    assert staged[:2] == plain[:2] and staged[2] > 1.05 * plain[2]
    with pytest.raises(ConfigError, match=r"stages.1.loss_motion_weight=-2.0: expected a finite number >= 0"):
        load_config("configs/bb_resampling.yaml", tiny(tmp_path / "r", "stages.1.loss_motion_weight=-2.0"))
