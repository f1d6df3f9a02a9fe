"""Object metrics of Atari videos (Pong, Breakout), per frame, from the objects the pixel
detector finds (objects.py) against a reference.

The reference, per sample and frame, says which objects are shown and where:
  * the RAM's ground truth of the same clips (world states: evaluation), on the frames the
    video was given the actions that played them (from the first frame whose action differs,
    the video's own reference below);
  * else ground-truth frames (the detector's objects in them);
  * else the video's own first `ref_frames` frames (the given frames): the objects found in
    any of them are expected in every frame, with no position to compare against (Pong's ball
    is legitimately gone for a moment after each point: the ground truth scored the same way
    shows how often).

Per frame (samples, frames), lower is better unless said:
  missing         reference objects the video lacks (a collapsed video: all of them);
  spurious        objects found that the reference does not show;
  found_rate      found / shown by the reference (higher is better; NaN with none shown);
  <name>_found    1 / 0 where the reference shows the object, NaN where it does not: its mean
                  is the object's found rate (ball_found, player_found, enemy_found);
  <name>_error    distance (world px) between the found and the reference position, where the
                  reference shows the object, has its position and the video has it (NaN
                  elsewhere: `missing` counts the rest);
  position_error  mean over the reference's shown objects of min(distance, MISSING_PX) with
                  an object the video lacks counted as MISSING_PX (a quarter of the frame):
                  a vanished object is the worst error, not a skipped one (these two only
                  where a reference has positions: not against the given frames alone);
  bricks          Breakout: bricks left found in the frame (0 where no wall is found);
  brick_error     Breakout: |bricks - the reference's| (the RAM's count, the ground-truth
                  frames', or the last given frame's).
"""

from __future__ import annotations

import numpy as np

from resforce.worlds.atari import objects as O

MISSING_FRACTION = 0.25
"""position_error counts a missing object (and caps a found one) at this fraction of the
frame's side in pixels (MISSING_PX: 8 px at 32x32, 16 at 64x64)."""

DEFINITION = ("missing = objects of the reference (the ground truth's RAM, else the given frames) that the "
              "video lacks, per frame, found from the pixels (Pong: ball and both paddles; Breakout: ball and "
              "paddle). position_error = mean distance in px between each reference object and the one found, "
              "a missing one counting a quarter of the frame; brick_error = |bricks found - the reference's|")


def _own_reference(found: O.Objects, ref_frames: int) -> O.Objects:
    """The video's own reference: objects found in any of its first `ref_frames` frames are
    expected in every frame (no positions); Breakout's bricks those of the last of them."""
    n = max(1, ref_frames)
    shown = {k: np.broadcast_to(v[:, :n].any(1, keepdims=True), v.shape).copy() for k, v in found.found.items()}
    position = {k: np.full(v.shape, np.nan) for k, v in found.position.items()}
    bricks = None
    if found.bricks is not None:
        last = min(n, found.bricks.shape[1]) - 1
        bricks = np.broadcast_to(found.bricks[:, last:last + 1], found.bricks.shape).copy()
    return O.Objects(shown, position, bricks)


def _fit_frames(ref: O.Objects, frames: int) -> O.Objects:
    """A reference cut or NaN-padded (nothing shown) to `frames` frames."""

    def fit(a, fill):
        a = np.asarray(a)[:, :frames]
        if a.shape[1] < frames:
            pad = np.full((a.shape[0], frames - a.shape[1], *a.shape[2:]), fill, dtype=a.dtype)
            a = np.concatenate([a, pad], 1)
        return a

    return O.Objects({k: fit(v, False) for k, v in ref.found.items()},
                     {k: fit(v.astype(np.float64), np.nan) for k, v in ref.position.items()},
                     None if ref.bricks is None else fit(ref.bricks.astype(np.float64), np.nan))


def reference(game: str, found: O.Objects, resolution: int, states=None, ground_truth=None,
              ref_frames: int = 2) -> tuple[O.Objects, np.ndarray]:
    """(the reference Objects (M, F), (M, F) bool: frames where it is ground truth)."""
    m, f = next(iter(found.found.values())).shape
    own = _own_reference(found, ref_frames)
    objects = getattr(states, "objects", None) or {}
    if objects:
        given = np.asarray(next(iter(objects.values()))).shape[1]  # frames of the ground truth
        gt = _fit_frames(O.shown_in_ram(game, objects, resolution), f)
        valid = np.zeros((m, f), bool)
        valid[:, :given] = True
        played = getattr(states, "played", None)
        if played is not None:  # actions given to the video that did not play the ground truth
            differs = np.asarray(states.actions)[:, :f] != np.asarray(played)[:, :f]
            differs[:, 0] = False  # frame 0's action produced no frame of the clip
            valid[:, :differs.shape[1]] &= ~np.logical_or.accumulate(differs, 1)
    elif ground_truth is not None:
        gt = _fit_frames(O.detect(ground_truth, game), f)
        valid = np.zeros((m, f), bool)
        valid[:, :np.asarray(ground_truth).shape[2]] = True
    else:
        return own, np.zeros((m, f), bool)
    pick = lambda a, b: np.where(valid.reshape(valid.shape + (1,) * (a.ndim - 2)), a, b)  # noqa: E731
    return O.Objects({k: pick(gt.found[k], own.found[k]) for k in own.found},
                     {k: pick(gt.position[k], own.position[k]) for k in own.position},
                     None if own.bricks is None else pick(gt.bricks, own.bricks)), valid


def evaluate_objects(videos, game: str, states=None, ground_truth=None, ref_frames: int = 2) -> dict[str, np.ndarray]:
    """Per-frame object metrics (M, F) of videos (M, 3, F, R, R) in [-1, 1] (see the module doc)."""
    v = np.asarray(videos)
    resolution = v.shape[-1]
    found = O.detect(v, game)
    ref, _ = reference(game, found, resolution, states, ground_truth, ref_frames)
    cap = MISSING_FRACTION * resolution
    names = list(found.found)
    shown = np.stack([ref.found[k] for k in names], -1)  # (M, F, objects)
    got = np.stack([found.found[k] for k in names], -1)
    dist = np.stack([np.linalg.norm(found.position[k] - ref.position[k], axis=-1) for k in names], -1)
    placed = np.stack([np.isfinite(ref.position[k]).all(-1) for k in names], -1)  # reference has a position
    out: dict[str, np.ndarray] = {}
    n_shown = shown.sum(-1)
    out["missing"] = (shown & ~got).sum(-1).astype(np.float64)
    out["spurious"] = (got & ~shown).sum(-1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["found_rate"] = np.where(n_shown > 0, (shown & got).sum(-1) / np.maximum(n_shown, 1), np.nan)
    for i, k in enumerate(names):
        out[f"{k}_found"] = np.where(shown[..., i], got[..., i].astype(np.float64), np.nan)
    if placed.any():  # a reference with positions (ground truth): the position errors
        for i, k in enumerate(names):
            out[f"{k}_error"] = np.where(shown[..., i] & got[..., i] & placed[..., i], dist[..., i], np.nan)
        scored = shown & placed
        term = np.where(got, np.minimum(np.nan_to_num(dist, nan=cap), cap), cap)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["position_error"] = np.where(scored.any(-1), (term * scored).sum(-1) / np.maximum(scored.sum(-1), 1),
                                             np.nan)
    if found.bricks is not None:
        out["bricks"] = found.bricks.astype(np.float64)
        out["brick_error"] = np.abs(found.bricks - ref.bricks)
    return out
