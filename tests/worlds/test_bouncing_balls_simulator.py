"""Bouncing-balls world: determinism, physics, rendering and resumable streams."""

import pickle

import numpy as np
import pytest
import torch

from resforce.worlds.bouncing_balls.simulator import (
    BouncingBalls,
    BouncingBallsConfig,
    reflect,
    render,
    simulate,
)


def test_same_seed_gives_identical_clips():
    a = BouncingBalls(BouncingBallsConfig(seed=3), num_frames=12)
    b = BouncingBalls(BouncingBallsConfig(seed=3), num_frames=12)
    va, sa = a.batch(3)
    vb, sb = b.batch(3)
    assert torch.equal(va, vb)
    np.testing.assert_array_equal(sa.positions, sb.positions)
    np.testing.assert_array_equal(sa.colors, sb.colors)


def test_different_seeds_differ():
    va, _ = BouncingBalls(BouncingBallsConfig(seed=0), num_frames=8).batch(2)
    vb, _ = BouncingBalls(BouncingBallsConfig(seed=1), num_frames=8).batch(2)
    assert not torch.equal(va, vb)


def test_shapes_dtype_and_range():
    cfg = BouncingBallsConfig(resolution=24, num_balls_min=1, num_balls_max=3, radius_max=4.0)
    video, states = BouncingBalls(cfg, num_frames=5).batch(4)
    assert video.shape == (4, 3, 5, 24, 24) and video.dtype == torch.float32
    assert video.min() >= -1.0 and video.max() <= 1.0
    # Background is black (-1) and balls are saturated, so both ends of the range are used.
    assert video.min() == -1.0 and video.max() == 1.0
    assert states.positions.shape == (4, 5, 3, 2)
    assert states.velocities.shape == (4, 5, 3, 2)
    assert states.radii.shape == (4, 3) and states.colors.shape == (4, 3, 3)
    assert states.valid.shape == (4, 3) and states.valid.dtype == bool
    assert (states.valid.sum(axis=1) >= 1).all()


def test_variable_ball_count_is_padded_and_masked():
    cfg = BouncingBallsConfig(num_balls_min=1, num_balls_max=3, seed=5)
    _, states = BouncingBalls(cfg, num_frames=2).batch(40)
    counts = states.valid.sum(axis=1)
    assert set(counts.tolist()) == {1, 2, 3}
    assert (states.radii[~states.valid] == 0).all()
    assert (states.radii[states.valid] >= cfg.radius_min).all()
    assert (states.radii[states.valid] <= cfg.radius_max).all()


def test_distinct_colors_within_a_clip():
    cfg = BouncingBallsConfig(num_balls_min=3, num_balls_max=3, seed=2)
    _, states = BouncingBalls(cfg, num_frames=1).batch(30)
    for colors in states.colors:
        assert len({tuple(c) for c in colors}) == 3


def test_balls_stay_within_walls_over_long_rollout_and_bounce():
    cfg = BouncingBallsConfig(num_balls_min=2, num_balls_max=2, speed_min=2.0, speed_max=2.5, seed=7)
    _, s = simulate(cfg, np.random.default_rng(0), num_frames=500)
    r = s.radii[None, :, None]
    assert (s.positions - r >= -1e-4).all()
    assert (s.positions + r <= cfg.resolution + 1e-4).all()

    # Speed is conserved (elastic walls), and every velocity sign flip happens at a wall.
    speed = np.linalg.norm(s.velocities, axis=-1)
    np.testing.assert_allclose(speed, speed[:1].repeat(500, axis=0), rtol=1e-5)
    flips = np.sign(s.velocities[1:]) != np.sign(s.velocities[:-1])
    assert flips.sum() > 10, "500 frames at >= 2 px/frame in a 32 px box must bounce many times"
    t, k, axis = np.nonzero(flips)
    # Between the two frames the unreflected step would have crossed the wall.
    unreflected = s.positions[t, k, axis] + s.velocities[t, k, axis]
    crossed = (unreflected <= s.radii[k]) | (unreflected >= cfg.resolution - s.radii[k])
    assert crossed.all()


def test_reflect_exact_values():
    radii = np.array([2.0])
    # Moving right from x=29 at +3: unreflected 32 is 2 past the wall at 30, so it ends at 28.
    pos, vel = reflect(np.array([[32.0, 10.0]]), np.array([[3.0, 1.0]]), radii, 32)
    np.testing.assert_allclose(pos, [[28.0, 10.0]])
    np.testing.assert_allclose(vel, [[-3.0, 1.0]])
    # Left wall: unreflected x=0.5 is 1.5 past the wall at 2.
    pos, vel = reflect(np.array([[0.5, 10.0]]), np.array([[-2.0, 0.0]]), radii, 32)
    np.testing.assert_allclose(pos, [[3.5, 10.0]])
    np.testing.assert_allclose(vel, [[2.0, 0.0]])


def test_rendering_ground_truth_reproduces_frames():
    cfg = BouncingBallsConfig(num_balls_min=1, num_balls_max=3, seed=4)
    frames, s = simulate(cfg, np.random.default_rng(11), num_frames=30)
    again = render(s.positions, s.radii, s.colors, cfg.resolution, cfg.background, cfg.antialias, s.valid)
    np.testing.assert_array_equal(again, frames)
    # Moving a ball changes the image: the frames really depend on the state.
    shifted = render(s.positions + 1.0, s.radii, s.colors, cfg.resolution, valid=s.valid)
    assert np.abs(shifted - frames).max() > 0.5


def test_ball_colour_is_at_its_ground_truth_position():
    cfg = BouncingBallsConfig(num_balls_min=1, num_balls_max=1, seed=9)
    frames, s = simulate(cfg, np.random.default_rng(1), num_frames=40)
    for t in range(40):
        x, y = s.positions[t, 0]
        pixel = frames[t, :, int(y), int(x)]  # pixel containing the centre: fully covered
        np.testing.assert_allclose(pixel, s.colors[0] * 2 - 1, atol=1e-6)
        # A pixel well outside the ball is background.
        far_x = int((x + cfg.resolution / 2) % cfg.resolution)
        far_y = int((y + cfg.resolution / 2) % cfg.resolution)
        if np.hypot(far_x + 0.5 - x, far_y + 0.5 - y) > s.radii[0] + 1:
            np.testing.assert_array_equal(frames[t, :, far_y, far_x], [-1, -1, -1])


def test_antialias_gives_soft_edges_and_hard_mode_does_not():
    pos, radii, colors = np.array([[16.3, 15.7]]), np.array([4.2]), np.array([[1.0, 1.0, 1.0]])
    soft = render(pos, radii, colors, 32, antialias=True)
    hard = render(pos, radii, colors, 32, antialias=False)
    assert soft.shape == (3, 32, 32)
    assert ((soft > -1) & (soft < 1)).any()
    assert set(np.unique(hard).tolist()) == {-1.0, 1.0}
    # Area of the disc is about pi r^2 either way.
    area = (soft[0] + 1).sum() / 2
    assert abs(area - np.pi * 4.2**2) < 2.0


def test_render_draws_every_frame():
    # its speed: benchmarks/bench_metrics.py (timing asserts do not belong in unit tests)
    rng = np.random.default_rng(0)
    pos = rng.uniform(5, 27, size=(256, 2, 2))
    out = render(pos, np.array([4.0, 3.0]), np.array([[1, 0, 0], [0, 1, 0]]), 32)
    assert out.shape == (256, 3, 32, 32)
    assert ((out[:, 0] > 0).any(axis=(1, 2)) & (out[:, 1] > 0).any(axis=(1, 2))).all()  # both balls in every frame


def test_state_dict_round_trip_resumes_exact_stream():
    ds = BouncingBalls(BouncingBallsConfig(seed=21), num_frames=6)
    ds.batch(3)
    state = pickle.loads(pickle.dumps(ds.state_dict()))  # must survive a checkpoint
    expected, expected_states = ds.batch(2)

    resumed = BouncingBalls(BouncingBallsConfig(seed=21), num_frames=6)
    resumed.load_state_dict(state)
    got, got_states = resumed.batch(2)
    assert torch.equal(got, expected)
    np.testing.assert_array_equal(got_states.positions, expected_states.positions)
    assert resumed.clips_emitted == ds.clips_emitted == 5

    fresh, _ = BouncingBalls(BouncingBallsConfig(seed=21), num_frames=6).batch(2)
    assert not torch.equal(fresh, expected)

def test_config_from_mapping():
    ds = BouncingBalls({"resolution": 16, "radius_min": 2.0, "radius_max": 3.0}, num_frames=2)
    assert ds.sample()[0].shape == (3, 2, 16, 16)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"radius_max": 16.0}, "radius_max"),
        ({"num_balls_min": 3, "num_balls_max": 2}, "num_balls_min"),
        ({"colors": []}, "colors"),
        ({"colors": [(1.0, 0.0, 2.0)], "num_balls_max": 1}, "colors[0]"),
        ({"colors": [(1.0, 0.0, 0.0)], "num_balls_max": 2}, "distinct_colors"),
        ({"speed_min": 3.0, "speed_max": 1.0}, "speed_min"),
        ({"radius_min": 0.0}, "radius_min"),
        ({"background": (0.0, 0.0)}, "background"),
        ({"resolution": 2}, "resolution"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        BouncingBallsConfig(**kwargs)


def test_validation_catches_fields_mutated_after_construction():
    cfg = BouncingBallsConfig()
    cfg.radius_max = 20.0
    with pytest.raises(ValueError, match="radius_max"):
        BouncingBalls(cfg)


def test_a_new_world_is_one_class_and_one_registry_entry(tmp_path, monkeypatch):
    """Config checks, training streams, sampling and evaluation ask the run's world: a world
    registered in resforce.worlds.WORLDS is trained on and scored with no other change."""
    import torch

    from resforce import worlds
    from resforce.config import ConfigError, load_config
    from resforce.evaluation.evaluate import score_videos
    from resforce.training.loop import train
    from tiny import tiny

    class Stripes(worlds.World):
        kind = "stripes"
        table_metrics = ("flicker",)

        @property
        def resolution(self):
            return 8, 8

        @property
        def resolution_key(self):
            return "data.kind"

        def stream(self, seed=0):
            class Stream:
                def batch(self, n, frames=None):
                    x = torch.linspace(-1, 1, 8).expand(n, 3, frames, 8, 8).contiguous()
                    return x, None

                def state_dict(self):
                    return {}

                def load_state_dict(self, state):
                    pass

            return Stream()

    with pytest.raises(ConfigError, match="data.kind must be 'bouncing_balls' or 'video_folder'"):
        load_config("configs/bb_teacher.yaml", tiny(tmp_path / "r", "data.kind=stripes"))
    monkeypatch.setitem(worlds.WORLDS, "stripes", Stripes)
    cfg = load_config("configs/bb_teacher.yaml", tiny(tmp_path / "r", "data.kind=stripes", "stages.0.steps=1",
                                                       "stages.1.steps=0", "stages.0.clip_chunks=2"))
    train(cfg, progress=False)
    assert (tmp_path / "r" / "metrics.jsonl").read_text().count("loss") == 1
    scores = score_videos(torch.zeros(1, 3, 4, 8, 8), cfg)
    assert set(scores) == {"sharpness", "flicker", "color_drift", "drift"}  # generic only
    assert worlds.world_of(cfg.data).clips(1, 4, 0) == (None, None)
