"""Object metrics of the atari world (AtariWorld.score, worlds/atari/metrics.py): the world's own
evaluation clips score at the ceiling against their RAM; a video whose objects vanish scores
every vanished object as missing and at the worst position error (never NaN-ignored); a frozen
video scores position errors; the reference falls back from the RAM to ground-truth frames to
the given frames, and to the given frames from the first frame whose action did not play the
ground truth; the eval tables, plots, paired samples and the paired verdict use the metrics;
games without a detector (and grayscale worlds) keep the generic metrics."""

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("ale_py", reason="the atari world needs ale-py: pip install 'resforce[atari]'")

from resforce.config import TrainConfig  # noqa: E402
from resforce.evaluation.evaluate import Evaluation  # noqa: E402
from resforce.evaluation.verdict import paired_verdict  # noqa: E402
from resforce.generation.generate import Generated  # noqa: E402
from resforce.metrics.stats import segment_table  # noqa: E402
from resforce.worlds import world_of  # noqa: E402
from resforce.worlds.atari import objects  # noqa: E402
from resforce.worlds.atari.metrics import MISSING_FRACTION  # noqa: E402
from resforce.worlds.atari.world import AtariConfig  # noqa: E402

GIVEN, FRAMES = 2, 24


def config(game, resolution=32):
    cfg = TrainConfig()
    cfg.data.kind = "atari"
    cfg.data.atari = AtariConfig(game=game, resolution=resolution, episode_frames=300)
    return cfg


def scene_only(videos, game):
    """The videos with every frame after the given ones replaced by the game's static scene:
    all objects gone, the field still there (a collapse to the background)."""
    scene = objects._model(game, videos.shape[-1])[0] / 127.5 - 1  # (3, R, R)
    out = np.array(videos, dtype=np.float32, copy=True)
    out[:, :, GIVEN:] = scene[None, :, None]
    return out


@pytest.fixture(scope="module", params=["pong", "breakout"])
def clips(request):
    cfg = config(request.param)
    videos, states = world_of(cfg.data).clips(3, FRAMES, seed=0)
    return request.param, cfg, videos.numpy(), states


def test_ground_truth_scores_at_the_ceiling(clips):
    game, cfg, videos, states = clips
    m = world_of(cfg.data).score(videos, states, torch.from_numpy(videos))
    assert m["missing"].shape == (3, FRAMES) and m["missing"].max() == 0 and np.nanmin(m["found_rate"]) == 1
    assert np.nanmax(m["position_error"]) < 0.5 and np.nanmax(m["ball_error"]) < 1.5
    assert {"drift", "sharpness", "flicker"} <= set(m)  # the generic metrics are kept
    if game == "breakout":
        assert m["brick_error"].max() == 0 and m["bricks"].max() <= 108
    else:
        assert "brick_error" not in m and np.nanmax(m["enemy_error"]) < 1


def test_vanished_objects_count_as_missing_at_the_worst_position_error(clips):
    game, cfg, videos, states = clips
    m = world_of(cfg.data).score(scene_only(videos, game), states)
    shown = objects.shown_in_ram(game, states.objects, 32).found
    n_shown = sum(v.astype(int) for v in shown.values())[:, GIVEN:]
    np.testing.assert_array_equal(m["missing"][:, GIVEN:], n_shown)
    assert (m["found_rate"][:, GIVEN:][n_shown > 0] == 0).all()
    cap = MISSING_FRACTION * 32
    np.testing.assert_array_equal(m["position_error"][:, GIVEN:][n_shown > 0], cap)  # not NaN: the worst error
    assert np.isnan(m["ball_error"][:, GIVEN:]).all()
    if game == "breakout":  # no bricks on the scene: all of the RAM's are missing
        np.testing.assert_array_equal(m["brick_error"][:, GIVEN:], states.objects["bricks"][:, GIVEN:])


def test_a_frozen_video_has_position_errors(clips):
    game, cfg, videos, states = clips
    frozen = np.repeat(videos[:, :, GIVEN - 1:GIVEN], FRAMES, axis=2)
    frozen[:, :, :GIVEN] = videos[:, :, :GIVEN]
    truth = world_of(cfg.data).score(videos, states)
    m = world_of(cfg.data).score(frozen, states)
    late = slice(FRAMES - 8, FRAMES)
    assert np.nanmean(m["position_error"][:, late]) > np.nanmean(truth["position_error"][:, late]) + 1.0
    assert np.nanmean(m["ball_error"][:, late]) > 2.0


def test_reference_falls_back_to_ground_truth_frames_then_the_given_frames(clips):
    game, cfg, videos, states = clips
    world = world_of(cfg.data)
    collapsed = scene_only(videos, game)
    by_frames = world.score(collapsed, None, torch.from_numpy(videos))
    first = objects.detect(videos[:, :, GIVEN:], game).found
    np.testing.assert_array_equal(by_frames["missing"][:, GIVEN:], sum(v.astype(int) for v in first.values()))
    assert np.nanmin(by_frames["position_error"][:, GIVEN:]) == MISSING_FRACTION * 32
    own = world.score(collapsed, ref_frames=GIVEN)
    given = objects.detect(videos[:, :, :GIVEN], game).found
    expected = sum(v.any(1).astype(int) for v in given.values())
    np.testing.assert_array_equal(own["missing"][:, GIVEN:], np.repeat(expected[:, None], FRAMES - GIVEN, 1))
    assert "position_error" not in own and "ball_error" not in own  # no positions to compare against
    assert world.reference_note(GIVEN) == "reference objects: those found in the first 2 frame(s)"


def test_ground_truth_is_no_reference_once_the_actions_differ(clips):
    game, cfg, videos, states = clips
    other = states.actions.copy()
    other[:, 10] = (other[:, 10] + 1) % world_of(cfg.data).action_space.n
    given = dataclasses.replace(states, actions=other)  # a rollout commanded otherwise from frame 10
    assert (given.played == states.actions).all()
    m = world_of(cfg.data).score(videos, given)
    assert np.isfinite(m["position_error"][:, :10]).any() and np.isnan(m["position_error"][:, 10:]).all()


def test_eval_tables_samples_and_verdict_use_the_object_metrics():
    cfg = config("pong")
    world = world_of(cfg.data)
    videos, states = world.clips(4, 16, seed=1)
    assert set(world.verdict_metrics) <= set(world.per_sample_metrics)
    assert world.scores_files and "missing" in world.table_metrics and "missing" in world.plot_metrics

    def evaluation(name, video):
        per_frame = world.score(video.numpy(), states, videos)
        assert set(world.table_metrics) - {"brick_error"} <= set(per_frame)
        g = Generated(video, GIVEN, 8, videos, states, cfg)
        return Evaluation(name, g, per_frame, segment_table(per_frame, 8, train_len=8), 8)

    truth = evaluation("GT", videos)
    gone = evaluation("GONE", torch.from_numpy(scene_only(videos.numpy(), "pong")))
    assert set(world.per_sample_metrics) - {"brick_error"} <= set(gone.per_sample_segments())
    line = paired_verdict([gone, truth], world.verdict_metrics)
    assert "GT keeps more of the game's objects (objects missing per frame GT 0.00" in line, line
    assert "GT puts the objects nearer where the game does" in line, line


@pytest.mark.parametrize("atari", [AtariConfig(game="seaquest"), AtariConfig(game="pong", grayscale=True)])
def test_games_without_a_detector_get_the_generic_metrics(atari):
    cfg = config("pong")
    cfg.data.atari = atari
    world = world_of(cfg.data)
    assert set(world.score(np.zeros((1, 3, 4, 32, 32), np.float32))) == {"drift", "sharpness", "flicker", "color_drift"}
    assert world.summary_definition.startswith("drift") and world.reference_note(2) == "reference: the first 2 frame(s)"
