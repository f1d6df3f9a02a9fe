"""Tests for resforce.metrics.facade on synthetic bouncing-balls videos drawn by a tiny renderer."""

import numpy as np
import pytest

from resforce.metrics.frechet import FEATURE_DIM, frame_features, frechet_distance, frechet_vs_horizon
from resforce.metrics.stats import format_table, mean_se, paired_difference, segment_table, whole_segments
from resforce.metrics.video import evaluate_generic, sharpness
from resforce.worlds.bouncing_balls.analysis import analyze_balls, blob_centroids, connected_components, track_balls
from resforce.worlds.bouncing_balls.metrics import evaluate_bouncing_balls

PALETTE = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.4, 1.0), (1.0, 1.0, 0.0)]
BG = (0.0, 0.0, 0.0)
H = W = 32


# ----------------------------------------------------------------------------- renderer
def trajectory(p0, v, r, frames, h=H, w=W):
    """Constant velocity with elastic reflections; pixel centres at integers, walls at -0.5, w-0.5."""
    lo = np.array([r - 0.5, r - 0.5])
    hi = np.array([w - 0.5 - r, h - 0.5 - r])
    span = hi - lo
    t = np.arange(frames)[:, None]
    raw = np.asarray(p0, float) - lo + t * np.asarray(v, float)
    m = np.mod(raw, 2 * span)
    return lo + np.where(m > span, 2 * span - m, m)  # (F, 2)


def render(positions, radii, colors, h=H, w=W, bg=BG, scale_xy=None):
    """positions (F, N, 2) (x, y) -> video (3, F, h, w) in [-1, 1] with anti-aliased discs."""
    positions = np.asarray(positions, float)
    f, n, _ = positions.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    img = np.broadcast_to(np.asarray(bg, float)[:, None, None, None], (3, f, h, w)).copy()
    for i in range(n):
        x = positions[:, i, 0][:, None, None]
        y = positions[:, i, 1][:, None, None]
        sx, sy = (1.0, 1.0) if scale_xy is None else scale_xy
        d = np.sqrt(((xx - x) / sx) ** 2 + ((yy - y) / sy) ** 2)
        a = np.clip(radii[i] - d + 0.5, 0.0, 1.0)
        a = np.where(np.isfinite(a), a, 0.0)[None]
        img = img * (1 - a) + a * np.asarray(colors[i], float)[:, None, None, None]
    return (img * 2 - 1).astype(np.float32)


def scene(frames=64, seed=0):
    """Two balls of distinct colours; returns video, positions (F,2,2), radii, colours."""
    radii = [3.5, 4.0]
    pos = np.stack(
        [trajectory((6.0, 8.0), (1.3, 0.7), radii[0], frames), trajectory((24.0, 20.0), (-0.9, 1.1), radii[1], frames)],
        1,
    )
    colors = [PALETTE[0], PALETTE[2]]
    return render(pos, radii, colors), pos, radii, colors


def far_apart(pos, radii, margin=2.0):
    return np.linalg.norm(pos[:, 0] - pos[:, 1], axis=1) > radii[0] + radii[1] + margin


def near_wall(pos, radii, speed, h=H, w=W):
    out = np.zeros(len(pos), bool)
    for i, r in enumerate(radii):
        p = pos[:, i]
        d = np.minimum.reduce([p[:, 0] + 0.5, w - 0.5 - p[:, 0], p[:, 1] + 0.5, h - 0.5 - p[:, 1]])
        out |= d < r + 1 + speed
    return out


def add_noise(video, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(video + 2 * sigma * rng.standard_normal(video.shape).astype(np.float32), -1, 1)


def box_blur(video):
    p = np.pad(video, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    return sum(p[:, :, i : i + video.shape[2], j : j + video.shape[3]] for i in range(3) for j in range(3)) / 9.0


# ----------------------------------------------------------------------------- bouncing balls
def test_perfect_ground_truth():
    video, pos, radii, colors = scene()
    gt_colors = [[0, 2]]
    r = evaluate_bouncing_balls(
        video[None], PALETTE, BG, radii=[radii], gt_frames=video[None], gt_positions=pos[None], gt_colors=gt_colors
    )
    for k, v in r.items():
        assert v.shape == (1, 64), k
    apart = far_apart(pos, radii)
    assert apart.sum() > 40
    assert np.all(r["count_error"][0, apart] == 0)
    assert np.all(r["ball_count"][0, apart] == 2)
    assert np.nanmax(r["position_error"][0, apart]) < 0.5
    assert np.all(r["color_integrity"] == 1.0)
    assert np.nanmax(r["size_error"][0, apart]) < 0.05
    assert np.nanmax(r["shape_error"][0, apart]) < 0.1
    assert np.nanmax(r["background_noise"]) < 1e-6
    assert np.all(r["mse"] == 0) and np.all(r["psnr"] >= 99)
    # steady velocity away from walls and overlaps: accel ~ 0
    ok = apart & np.roll(apart, 1) & np.roll(apart, -1) & ~near_wall(pos, radii, 1.8)
    acc = r["accel_error"][0, ok]
    assert np.isfinite(acc).sum() >= 5
    assert np.nanmax(acc) < 0.1
    assert np.nanmax(r["teleport"]) == 0
    assert np.max(r["failure"][0, apart]) < 0.03
    assert np.all(r["lost"] == 0) and np.all(r["spawned"] == 0) and np.all(r["identity_error"] == 0)


def test_centroids_and_pixel_center():
    video, pos, radii, _ = scene(frames=8)
    an = analyze_balls(video, PALETTE, BG, pixel_center=0.5)
    cen = blob_centroids(an)
    assert cen.shape == (1, 8, len(PALETTE), 2)
    assert np.all(np.isnan(cen[0, :, 1]))  # green is unused
    assert np.max(np.abs(cen[0, :, 0] - (pos[:, 0] + 0.5))) < 0.3
    assert np.max(np.abs(cen[0, :, 2] - (pos[:, 1] + 0.5))) < 0.3


def test_ball_disappears_halfway():
    video, pos, radii, colors = scene(frames=40)
    pos2 = pos.copy()
    pos2[20:, 1] = np.nan  # second ball vanishes at frame 20
    v = render(pos2, radii, colors)
    r = evaluate_bouncing_balls(v, PALETTE, BG, expected_count=2)
    r_inferred = evaluate_bouncing_balls(v, PALETTE, BG)  # expected count from first frames
    apart = far_apart(pos, radii)
    for res in (r, r_inferred):
        assert np.all(res["count_error"][0, 20:] == 1)
        assert np.all(res["count_error"][0, :20][apart[:20]] == 0)
    assert r["failure"][0, 20:].mean() > r["failure"][0, :20].mean()


def test_noise_monotonic():
    video, pos, radii, _ = scene(frames=24)
    bn, fl = [], []
    for s in [0.0, 0.03, 0.08, 0.2]:
        v = add_noise(video, s, seed=1)
        r = evaluate_bouncing_balls(v, PALETTE, BG, radii=3.75)
        g = evaluate_generic(v)
        bn.append(np.nanmean(r["background_noise"]))
        fl.append(np.nanmean(g["flicker"]))
    assert np.all(np.diff(bn) > 0), bn
    assert np.all(np.diff(fl) > 0), fl


def test_color_shift():
    video, pos, radii, colors = scene(frames=32)
    shifted = [(1.0, 0.45, 0.0), (0.35, 0.4, 0.7)]  # hue / saturation drift, off the palette
    v = video.copy()
    v[:, 16:] = render(pos[16:], radii, shifted)
    r0 = evaluate_bouncing_balls(video, PALETTE, BG)
    r1 = evaluate_bouncing_balls(v, PALETTE, BG)
    assert np.all(r1["color_integrity"][0, 16:] < 0.5)
    assert np.all(r1["color_integrity"][0, :16] == 1.0)
    assert r1["failure"][0, 16:].mean() > r0["failure"][0, 16:].mean() + 0.05
    g0 = evaluate_generic(video)
    g1 = evaluate_generic(v)
    assert g1["color_drift"][0, 16:].mean() > 3 * g0["color_drift"][0, 16:].mean()
    assert g1["color_drift"][0, 16:].mean() > 0.02
    # against real data as the reference
    gr = evaluate_generic(v, reference=video)
    assert gr["color_drift"][0, 16:].mean() > gr["color_drift"][0, :16].mean()


def test_blur_lowers_sharpness():
    video, *_ = scene(frames=16)
    s0 = sharpness(video)
    s1 = sharpness(box_blur(video))
    assert np.all(s1 < 0.7 * s0)
    assert np.allclose(evaluate_generic(video)["sharpness"], s0)


def test_size_shape_motion_errors():
    frames = 30
    p = trajectory((8.0, 16.0), (0.8, 0.0), 4.0, frames)[:, None]
    good = render(p, [4.0], [PALETTE[3]])
    rg = evaluate_bouncing_balls(good, PALETTE, BG, radii=4.0)
    # shrinking ball -> size error grows
    shrink = np.concatenate([render(p[i : i + 1], [4.0 - 0.05 * i], [PALETTE[3]]) for i in range(frames)], 1)
    rs = evaluate_bouncing_balls(shrink, PALETTE, BG, radii=4.0)
    assert rs["size_error"][0, -1] > 0.3 > rg["size_error"][0, -1]
    # no radii: reference areas from the first frames
    rs2 = evaluate_bouncing_balls(shrink, PALETTE, BG)
    assert rs2["size_error"][0, -1] > 0.3
    # stretched ball -> shape error
    ell = render(p, [4.0], [PALETTE[3]], scale_xy=(1.6, 0.7))
    re = evaluate_bouncing_balls(ell, PALETTE, BG)
    assert np.nanmin(re["shape_error"]) > 0.25 > np.nanmax(rg["shape_error"]) + 0.15
    # a ball that stops dead mid-frame (away from walls) -> accel error; jump -> teleport
    x = 8.0 + 0.6 * np.minimum(np.arange(frames), 15)
    stop = render(np.stack([x, np.full(frames, 16.0)], -1)[:, None], [4.0], [PALETTE[3]])
    rd = evaluate_bouncing_balls(stop, PALETTE, BG)
    assert rd["accel_error"][0, 15] > 0.5 > 0.1 > np.nanmax(rg["accel_error"])
    jp = p.copy()
    jp[15:, 0, 0] += 12.0
    rt = evaluate_bouncing_balls(render(jp, [4.0], [PALETTE[3]]), PALETTE, BG)
    assert rt["teleport"][0, 15] == 1.0
    assert np.nansum(rt["teleport"]) == 1.0


def test_two_balls_same_colour_tracked_separately():
    frames = 20
    pos = np.stack([trajectory((6, 6), (1.0, 0.0), 3.0, frames), trajectory((6, 25), (1.0, 0.0), 3.0, frames)], 1)
    v = render(pos, [3.0, 3.0], [PALETTE[1], PALETTE[1]])
    an = analyze_balls(v, PALETTE, BG)
    tracks = track_balls(an)[0]
    assert len(tracks) == 2
    r = evaluate_bouncing_balls(v, PALETTE, BG, radii=3.0)
    assert np.nanmax(r["teleport"]) == 0
    assert np.all(r["count_error"] == 0)


def test_connected_components():
    lab = np.zeros((2, 6, 6), int)
    lab[0, 0:2, 0:2] = 1
    lab[0, 0:2, 2:4] = 2  # touching but a different colour
    lab[0, 4, 4] = 1
    lab[1, 1:5, 1] = 1
    lab[1, 4, 1:5] = 1  # L shape
    lab[1, 0, 5] = -1  # off-palette is not a component
    cc = connected_components(lab)
    assert len(np.unique(cc[0][cc[0] >= 0])) == 3
    assert len(np.unique(cc[1][cc[1] >= 0])) == 1
    assert cc[1, 0, 5] == -1
    diag = np.zeros((1, 3, 3), int)
    diag[0, 0, 0] = diag[0, 1, 1] = 1
    assert len(np.unique(connected_components(diag)[connected_components(diag) >= 0])) == 2
    c8 = connected_components(diag, connectivity=8)
    assert len(np.unique(c8[c8 >= 0])) == 1


def test_metrics_of_a_long_clip_have_one_value_per_frame():
    # their speed: benchmarks/bench_metrics.py (timing asserts do not belong in unit tests)
    v, *_ = scene(frames=256)
    r = evaluate_bouncing_balls(v, PALETTE, BG, radii=[[3.5, 4.0]])
    g = evaluate_generic(v)
    assert r["failure"].shape == g["drift"].shape == (1, 256)
    assert np.isfinite(r["failure"]).all() and np.isfinite(g["drift"]).all()


# ----------------------------------------------------------------------------- Frechet
def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 4))
    assert frechet_distance(a, a) < 1e-6
    b = a + np.array([1.0, 0.0, 0.0, 0.0])
    assert abs(frechet_distance(a, b) - 1.0) < 1e-3  # pure mean shift: |mu|^2
    c = rng.standard_normal((4000, 4)) * 2.0  # Gaussian N(0, 4I) vs N(0, I): 4 * (2 - 1)^2 = 4
    assert abs(frechet_distance(a, c) - 4.0) < 0.4

    video, *_ = scene(frames=48)
    fa = frame_features(video)
    assert fa.shape == (1, 48, FEATURE_DIM)
    assert frechet_distance(fa, fa) < 1e-6
    d = [frechet_distance(fa, frame_features(add_noise(video, s, seed=2))) for s in (0.02, 0.08, 0.2)]
    assert d[0] < d[1] < d[2], d
    rows = frechet_vs_horizon(add_noise(video, 0.1), video, 16)
    assert [(r["start"], r["end"]) for r in rows] == [(0, 16), (16, 32), (32, 48)]
    assert all(r["frechet"] > 0 for r in rows)


# ----------------------------------------------------------------------------- tables
def test_segment_table_and_standard_errors():
    per = {"a": np.tile(np.array([[1.0], [2.0], [3.0]]), (1, 50)), "b": np.arange(50.0)[None].repeat(2, 0)}
    per["b"][1, 0] = np.nan  # NaN-aware
    rows = segment_table(per, segment_len=16, train_len=32)
    # whole segments only: frames 48-50 do not fill a segment and are left out (and said so)
    assert [(r["start"], r["end"]) for r in rows] == [(0, 16), (16, 32), (32, 48)]
    assert all(r["dropped_tail_frames"] == 2 for r in rows)
    assert [r["beyond_train"] for r in rows] == [False, False, True]
    assert rows[0]["mean"]["a"] == pytest.approx(2.0)
    assert rows[0]["se"]["a"] == pytest.approx(1.0 / np.sqrt(3.0))
    assert rows[0]["n"]["a"] == 3
    assert rows[2]["mean"]["b"] == pytest.approx(39.5)
    assert rows[2]["se"]["b"] == pytest.approx(0.0)
    assert rows[0]["mean"]["b"] == pytest.approx((7.5 + 8.0) / 2)
    assert segment_table(per, 25, train_len=None, fps=5)[1]["label"] == "5-10s"
    assert segment_table(per, 25)[-1]["dropped_tail_frames"] == 0

    txt = format_table(rows, ["a", "b"])
    lines = txt.splitlines()
    assert lines[0].split() == ["frames", "a", "b"]
    assert "32-48 *" in txt and "2.000 ± 0.577" in txt and "48-50" not in lines[-2]
    assert "last 2 frame(s) (48-50)" in lines[-1]
    assert len({len(line) for line in lines[:5]}) == 1  # fixed width


def test_whole_segments_everywhere():
    """130 frames in segments of 32: four whole segments, the 2-frame tail left out, in the
    table, the per-sample segment means of the JSON and the Frechet rows alike."""
    from resforce.evaluation.evaluate import _segment_means

    assert whole_segments(130, 32) == ([(0, 32), (32, 64), (64, 96), (96, 128)], 2)
    assert whole_segments(128, 32)[1] == 0
    with pytest.raises(ValueError, match="longer than the video"):
        whole_segments(20, 32)
    v = np.zeros((2, 130))
    v[:, 128:] = 100.0  # a tail that would dominate a 2-frame segment
    assert _segment_means(v, 32) == [[0.0] * 4] * 2
    assert [r["end"] for r in segment_table({"x": v}, 32)] == [32, 64, 96, 128]
    video, *_ = scene(frames=50)
    assert [(r["start"], r["end"]) for r in frechet_vs_horizon(video, video, 16)] == [(0, 16), (16, 32), (32, 48)]


    mean, se = mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5) and se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    d, s = paired_difference([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 2.0, 5.0])
    assert d == pytest.approx(0.25)
    assert s == pytest.approx(np.sqrt(2.75 / 3) / 2)
    d2, s2 = paired_difference(np.array([[1.0, 0.0], [3.0, 0.0]]), np.zeros((2, 2)))
    assert np.allclose(d2, [2.0, 0.0]) and np.allclose(s2, [1.0, 0.0])


def test_frechet_floor_rows():
    """With floor videos, each row gets the floor's distance to the same reference; videos equal
    to the floor score exactly the floor, degraded ones more."""
    video, *_ = scene(frames=48)
    ref = add_noise(video, 0.01, seed=5)
    rows = frechet_vs_horizon(video, ref, 16, floor=video)
    assert all(r["frechet"] == r["frechet_floor"] for r in rows)
    noisy = frechet_vs_horizon(add_noise(video, 0.1), ref, 16, floor=video)
    assert all(r["frechet"] > r["frechet_floor"] + 0.01 for r in noisy)
    assert "frechet_floor" not in frechet_vs_horizon(video, ref, 16)[0]
