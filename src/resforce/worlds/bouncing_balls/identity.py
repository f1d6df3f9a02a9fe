"""Ball identity in bouncing-balls rollouts, and the collapse-aware aggregate ``failure``.

Balls are conserved in the bouncing-balls world and the balls of one clip have distinct
palette colours, so the balls of the *given* (prefix) frames are the reference for every
later frame: a multiset of palette colours per sample, from the world states when they are
known, else read off the first given frames (per colour, the most balls seen in any of them).

Per frame and palette colour ``k`` with ``ref_k`` reference balls and ``det_k`` detected ones:
``matched_k = min(ref_k, det_k)``, ``lost_k = ref_k - matched_k``, ``spawned_k = det_k -
matched_k``. A ball that turns from red to blue is one red ball lost and one blue spawned.

Why another layer on top of the per-frame metrics: those are means over the balls that are
there, so they are undefined (NaN) in a frame whose balls vanished, and the old aggregate
counted undefined as a pass: an empty frame scored better than a healthy rollout. Here every
missing or spawned ball is a failed slot in every per-ball term (size, shape, motion), and
:data:`FAILURE_DEFINITION` says how the terms are combined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "FAILURE_DEFINITION",
    "FAILURE_TERMS",
    "Identity",
    "palette_indices",
    "reference_counts",
    "detected_counts",
    "match_identity",
    "per_ball_term",
    "motion_term",
    "failure_score",
]

FAILURE_TERMS = ("identity", "color", "size", "shape", "background", "accel", "teleport")
"""The seven per-frame failure terms averaged by :func:`failure_score`, in order."""

FAILURE_DEFINITION = (
    "failure (bouncing balls, lower is better) = per frame, the mean of the defined ones of 7 "
    "terms in [0, 1]: min(identity_error, 1); 1 - color_integrity; size_term; shape_term; "
    "min(background_noise / 0.1, 1); accel_term; teleport_term. The reference is the balls of "
    "the given frames (a multiset of palette colours): per colour, matched = min(reference, "
    "detected), lost = reference - matched, spawned = detected - matched; identity_error = "
    "(lost + spawned) / reference count, so a ball turning red -> blue is one lost + one "
    "spawned. size_term / shape_term: mean over slots = matched balls (their own error clipped "
    "to 1; with surplus detections of a colour, the largest are the matched ones) + one slot "
    "scoring 1 per lost or spawned ball. accel_term (accel_error clipped at 1 px/frame^2) / "
    "teleport_term: (value * matched + lost + spawned) / (matched + lost + spawned); where the "
    "value is undefined (near a wall, first frames) the term is left out if no ball is lost or "
    "spawned and is 1 otherwise. A missing or spawned ball therefore fails every per-ball term: "
    "an empty frame with 1 expected ball scores 5/7 = 0.714, a healthy frame about 0."
)


@dataclass
class Identity:
    """Reference balls matched to the detected balls of every frame (see the module doc)."""

    reference: np.ndarray  # (M, K) reference balls per palette colour
    matched: np.ndarray  # (M, F) matched balls
    lost: np.ndarray  # (M, F) reference balls not found
    spawned: np.ndarray  # (M, F) detected balls beyond the reference
    matched_blob: np.ndarray  # (n_blobs,) bool: a valid blob that is a matched ball
    frame_of_blob: np.ndarray  # (n_blobs,) int: flat index sample * F + frame

    @property
    def n_reference(self) -> np.ndarray:
        """(M,) reference balls per sample."""
        return self.reference.sum(1)

    @property
    def identity_error(self) -> np.ndarray:
        """(M, F) (lost + spawned) / reference balls (over 1 where a sample has none)."""
        n_ref = np.maximum(self.n_reference, 1)[:, None]
        return (self.lost + self.spawned) / n_ref


def palette_indices(colors: Any, palette: Sequence[Sequence[float]]) -> np.ndarray:
    """Index of the nearest palette colour (RGB distance) for each RGB triple in ``colors`` (..., 3)."""
    c = np.asarray(colors, dtype=np.float64)
    pal = np.asarray(palette, dtype=np.float64).reshape(-1, 3)
    return np.linalg.norm(c[..., None, :] - pal, axis=-1).argmin(-1)


def detected_counts(blobs: dict[str, np.ndarray], shape: tuple[int, int], n_colors: int) -> np.ndarray:
    """(M, F, K) balls (valid blobs) of each palette colour in each frame."""
    mm, ff = shape
    v = blobs["valid"]
    key = (blobs["sample"][v] * ff + blobs["frame"][v]) * n_colors + blobs["color"][v]
    return np.bincount(key, minlength=mm * ff * n_colors).reshape(mm, ff, n_colors)


def reference_counts(reference_balls: Any, detected: np.ndarray, ref_frames: int) -> np.ndarray:
    """(M, K) reference balls per palette colour.

    ``reference_balls``: per sample, a sequence of palette indices of the given frames' balls
    (negative entries are padding), e.g. from the world states; ``None`` reads them off the
    first ``ref_frames`` frames of ``detected`` (M, F, K): per colour, the most balls seen in
    any of those frames (a ball briefly hidden behind another is still counted).
    """
    mm, ff, kk = detected.shape
    if reference_balls is None:
        return detected[:, : max(1, min(ref_frames, ff))].max(1)
    if len(reference_balls) != mm:
        raise ValueError(f"reference_balls must have one entry per sample ({mm}), got {len(reference_balls)}")
    out = np.zeros((mm, kk), dtype=np.int64)
    for m, idx in enumerate(reference_balls):
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        idx = idx[idx >= 0]
        if np.any(idx >= kk):
            raise ValueError(f"reference_balls[{m}] has palette index {idx.max()}, palette has {kk} colours")
        out[m] = np.bincount(idx, minlength=kk)
    return out


def match_identity(blobs: dict[str, np.ndarray], shape: tuple[int, int], n_colors: int,
                   reference: np.ndarray) -> Identity:
    """Match each frame's balls to the reference per colour, the largest balls first."""
    mm, ff = shape
    det = detected_counts(blobs, shape, n_colors)
    ref = np.asarray(reference, dtype=np.int64)[:, None, :]
    matched = np.minimum(ref, det)
    frame_of_blob = blobs["sample"] * ff + blobs["frame"]
    # rank of each ball within its (sample, frame, colour) by decreasing area: the largest
    # ref_k balls of colour k are the matched ones, the others are spawned
    v = np.flatnonzero(blobs["valid"])
    key = frame_of_blob[v] * n_colors + blobs["color"][v]
    order = np.lexsort((-blobs["area"][v], key))
    ks = key[order]
    first = np.r_[0, np.flatnonzero(np.diff(ks)) + 1] if len(ks) else np.zeros(0, np.int64)
    group = np.cumsum(np.r_[0, np.diff(ks) != 0]) if len(ks) else np.zeros(0, np.int64)
    rank = np.arange(len(ks)) - first[group]
    matched_blob = np.zeros(len(blobs["valid"]), dtype=bool)
    sel = v[order]
    matched_blob[sel] = rank < np.asarray(reference)[blobs["sample"][sel], blobs["color"][sel]]
    return Identity(
        reference=np.asarray(reference, dtype=np.int64),
        matched=matched.sum(-1).astype(np.float64),
        lost=(ref - matched).sum(-1).astype(np.float64),
        spawned=(det - matched).sum(-1).astype(np.float64),
        matched_blob=matched_blob,
        frame_of_blob=frame_of_blob,
    )


def per_ball_term(ident: Identity, blob_error: np.ndarray) -> np.ndarray:
    """(M, F) mean over slots: matched balls (own error clipped to [0, 1]) and one failed slot
    (1) per lost or spawned ball. A matched ball whose error is undefined is no slot; a frame
    with no slot at all is NaN."""
    mm, ff = ident.matched.shape
    ok = ident.matched_blob & np.isfinite(blob_error)
    err = np.clip(blob_error[ok], 0.0, 1.0)
    s = np.bincount(ident.frame_of_blob[ok], err, mm * ff).reshape(mm, ff)
    n = np.bincount(ident.frame_of_blob[ok], minlength=mm * ff).reshape(mm, ff)
    bad = ident.lost + ident.spawned
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n + bad > 0, (s + bad) / np.maximum(n + bad, 1), np.nan)


def motion_term(ident: Identity, value: np.ndarray) -> np.ndarray:
    """(M, F) ``(value * matched + lost + spawned) / (matched + lost + spawned)`` for a per-frame
    mean ``value`` in [0, 1] over tracks; an undefined value is left out (NaN) when no ball is
    lost or spawned, and counts as 1 when one is."""
    bad = ident.lost + ident.spawned
    n = ident.matched + bad
    v = np.where(np.isfinite(value), np.clip(value, 0.0, 1.0), np.where(bad > 0, 1.0, np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (v * ident.matched + bad) / np.maximum(n, 1), np.nan)


def failure_score(terms: dict[str, np.ndarray]) -> np.ndarray:
    """(M, F) mean of the defined terms of :data:`FAILURE_TERMS` (each clipped to [0, 1])."""
    stack = np.stack([np.clip(np.asarray(terms[k], dtype=np.float64), 0.0, 1.0) for k in FAILURE_TERMS])
    finite = np.isfinite(stack)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite.any(0), np.where(finite, stack, 0.0).sum(0) / np.maximum(finite.sum(0), 1), np.nan)
