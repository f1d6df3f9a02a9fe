"""Collapse-aware bouncing-balls metrics: a missing, spawned or recoloured ball is a failure.

Videos are drawn by the tiny renderer of test_metrics; the first 2 frames are the given ones.
"""

import numpy as np
import pytest

from resforce.worlds.bouncing_balls import identity as ID
from resforce.worlds.bouncing_balls.metrics import evaluate_bouncing_balls
from test_metrics import BG, PALETTE, add_noise, far_apart, render, scene, trajectory

F = 24
TERMS = ("size_term", "shape_term", "accel_term", "teleport_term")


def one_ball(frames=F, color=0, **kw):
    p = trajectory((10.0, 12.0), (0.9, 0.6), 4.0, frames)[:, None]
    return render(p, [4.0], [PALETTE[color]], **kw), p


def blank(video, start):
    """Paint every frame from ``start`` on with the background."""
    v = video.copy()
    v[:, start:] = np.asarray(BG, np.float32)[:, None, None, None] * 2 - 1
    return v


def old_drift(r):
    """The aggregate this replaces: undefined terms counted as passes (0)."""
    terms = [np.minimum(r["count_error"], 1), 1 - r["color_integrity"], np.minimum(r["size_error"], 1),
             np.minimum(r["shape_error"], 1), np.minimum(r["background_noise"] / 0.1, 1),
             np.minimum(r["accel_error"], 1), r["teleport"]]
    return np.mean([np.nan_to_num(np.clip(x, 0, 1), nan=0.0) for x in terms], 0)


def test_empty_frames_fail_and_healthy_frames_pass():
    healthy, _ = one_ball()
    empty = blank(healthy, 2)  # the ball vanishes after the 2 given frames
    rh = evaluate_bouncing_balls(healthy, PALETTE, BG)
    re = evaluate_bouncing_balls(empty, PALETTE, BG)
    # every per-ball term is undefined in an empty frame, and every one is now a failure
    assert np.all(np.isnan(re["size_error"][0, 2:])) and np.all(np.isnan(re["accel_error"][0, 2:]))
    assert np.all(re["lost"][0, 2:] == 1) and np.all(re["spawned"] == 0)
    assert np.all(re["count_error"][0, 2:] == 1) and np.all(re["identity_error"][0, 2:] == 1)
    for k in TERMS:
        assert np.all(re[k][0, 2:] == 1.0), k
    # identity, size, shape, accel, teleport fail; colour and background have nothing to object to
    assert np.allclose(re["failure"][0, 2:], 5 / 7)
    assert np.nanmax(rh["failure"]) < 0.06 and np.nanmean(rh["failure"]) < 0.03
    assert np.all(re["failure"][0, 2:] > rh["failure"][0, 2:] + 0.6)


def test_old_drift_ranked_an_empty_rollout_above_a_degraded_one():
    healthy, p = one_ball()
    empty = blank(healthy, 2)
    # alive but degraded: a squashed ball in background noise
    degraded = add_noise(render(p, [4.0], [PALETTE[0]], scale_xy=(1.3, 0.8)), 0.12, seed=3)
    re = evaluate_bouncing_balls(empty, PALETTE, BG)
    rd = evaluate_bouncing_balls(degraded, PALETTE, BG)
    assert np.all(rd["ball_count"][0, :8] == 1)
    # the old score passed the empty frames (1 failed term of 7) and ranked them better ...
    assert old_drift(re)[0, 2:].mean() == pytest.approx(1 / 7)
    assert old_drift(re)[0, 2:].mean() < old_drift(rd)[0, 2:].mean()
    # ... the new one fails them and ranks them worse
    assert re["failure"][0, 2:].mean() >= 0.7
    assert re["failure"][0, 2:].mean() > rd["failure"][0, 2:].mean() + 0.4


def test_colour_swap_is_one_lost_and_one_spawned():
    red, p = one_ball()
    swapped = red.copy()
    swapped[:, 10:] = render(p[10:], [4.0], [PALETTE[2]])  # red -> blue at frame 10, same motion
    r = evaluate_bouncing_balls(swapped, PALETTE, BG)
    # the old checks cannot see it: one ball, all pixels on the palette
    assert np.all(r["count_error"] == 0) and np.all(r["color_integrity"] == 1.0)
    assert np.all(r["lost"][0, 10:] == 1) and np.all(r["spawned"][0, 10:] == 1)
    assert np.all(r["lost"][0, :10] == 0) and np.all(r["identity_error"][0, 10:] == 2.0)
    for k in TERMS:  # no blue reference ball to match: both slots fail
        assert np.all(r[k][0, 10:] == 1.0), k
    assert np.allclose(r["failure"][0, 10:], 5 / 7)
    # two balls, one recoloured: half the reference is gone, half the slots fail
    video, pos, radii, colors = scene(frames=F)
    v2 = video.copy()
    v2[:, 12:] = render(pos[12:], radii, [colors[0], PALETTE[1]])  # blue -> green
    r2 = evaluate_bouncing_balls(v2, PALETTE, BG, reference_balls=[[0, 2]])
    apart = far_apart(pos, radii)
    assert np.all(r2["identity_error"][0, 12:][apart[12:]] == 1.0)  # (1 lost + 1 spawned) / 2
    assert np.all(r2["size_term"][0, 12:][apart[12:]] >= 2 / 3)


def test_painted_over_ball_is_lost_and_fails_every_per_ball_term():
    video, pos, radii, colors = scene(frames=40)
    painted = render(np.where(np.arange(40)[:, None, None] >= 20, [[np.nan, np.nan], [0, 0]], 0) + pos,
                     radii, colors)  # ball 0 painted over with background from frame 20 on
    assert np.abs(painted[:, :20] - video[:, :20]).max() == 0
    r = evaluate_bouncing_balls(painted, PALETTE, BG, radii=[radii], reference_balls=[[0, 2]])
    g = evaluate_bouncing_balls(video, PALETTE, BG, radii=[radii], reference_balls=[[0, 2]])
    assert np.all(r["lost"][0, 20:] == 1) and np.all(r["spawned"][0, 20:] == 0)
    assert np.all(r["count_error"][0, 20:] == 1) and np.all(r["identity_error"][0, 20:] == 0.5)
    for k in TERMS:
        # one failed slot of two: at least 1/2, whatever the surviving ball does
        after = r[k][0, 20:]
        assert np.all(np.isfinite(after)) and np.all(after >= 0.5), k
        assert np.nanmean(after) > np.nanmean(g[k][0, 20:]) + 0.4, k
    # the surviving ball's own errors (defined for it alone) look healthy: the old means missed it
    assert np.nanmax(r["size_error"][0, 20:]) < 0.1
    assert r["failure"][0, 20:].mean() > g["failure"][0, 20:].mean() + 0.3


def test_reference_from_states_and_count_error_against_the_given_frames():
    video, pos, radii, colors = scene(frames=F)
    # the states say 2 balls (red, blue); the video shows only the blue one from frame 0 on
    only_blue = render(pos[:, 1:], radii[1:], colors[1:])
    r = evaluate_bouncing_balls(only_blue, PALETTE, BG, reference_balls=[[0, 2]])
    assert np.all(r["count_error"] == 1) and np.all(r["lost"] == 1)
    # without states, the reference is read off the first given frames: nothing lost
    ri = evaluate_bouncing_balls(only_blue, PALETTE, BG)
    assert np.all(ri["count_error"] == 0) and np.all(ri["lost"] == 0)
    # per colour, the most balls seen in any given frame: a ball hidden in frame 0 still counts
    late = video.copy()
    late[:, 0] = only_blue[:, 0]
    rl = evaluate_bouncing_balls(late, PALETTE, BG, ref_frames=2)
    apart = far_apart(pos, radii)
    assert np.all(rl["count_error"][0, 1:][apart[1:]] == 0) and rl["count_error"][0, 0] == 1
    assert ID.palette_indices([[0.9, 0.1, 0.0], [0.0, 0.3, 0.9]], PALETTE).tolist() == [0, 2]
    with pytest.raises(ValueError, match="reference_balls"):
        evaluate_bouncing_balls(video, PALETTE, BG, reference_balls=[[0], [1]])


def test_surplus_balls_of_a_colour_the_largest_is_matched():
    frames = 12
    p_big = trajectory((10.0, 10.0), (0.8, 0.5), 4.0, frames)
    p_small = trajectory((24.0, 24.0), (-0.5, 0.3), 2.5, frames)
    one = render(p_big[:, None], [4.0], [PALETTE[3]])
    two = render(np.stack([p_big, np.where(np.arange(frames)[:, None] >= 6, p_small, np.nan)], 1),
                 [4.0, 2.5], [PALETTE[3], PALETTE[3]])
    r = evaluate_bouncing_balls(two, PALETTE, BG, radii=[[4.0]], reference_balls=[[3]])
    r1 = evaluate_bouncing_balls(one, PALETTE, BG, radii=[[4.0]], reference_balls=[[3]])
    assert np.all(r["spawned"][0, 6:] == 1) and np.all(r["lost"] == 0)
    # slots: the big ball (its own small size error) + the spawned small one (1)
    assert np.allclose(r["size_term"][0, 6:], (r1["size_term"][0, 6:] + 1) / 2)
    assert np.all(r["size_term"][0, 6:] < 0.6)  # were the small ball matched, its 61% error would count


def test_motion_terms_leave_undefined_out_only_when_nothing_is_missing():
    ident = ID.Identity(reference=np.array([[1]]), matched=np.array([[1.0, 1.0, 0.0, 1.0]]),
                        lost=np.array([[0.0, 0.0, 1.0, 1.0]]), spawned=np.zeros((1, 4)),
                        matched_blob=np.zeros(0, bool), frame_of_blob=np.zeros(0, np.int64))
    value = np.array([[0.2, np.nan, np.nan, 0.4]])
    t = ID.motion_term(ident, value)
    assert t[0, 0] == pytest.approx(0.2) and np.isnan(t[0, 1])  # nothing missing: value / excluded
    assert t[0, 2] == 1.0 and t[0, 3] == pytest.approx((0.4 + 1) / 2)
    f = ID.failure_score({k: np.array([[np.nan if k == "accel" else 0.5]]) for k in ID.FAILURE_TERMS})
    assert f[0, 0] == pytest.approx(0.5)  # an undefined term is left out, not a pass
