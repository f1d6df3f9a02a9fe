"""Bouncing-balls frame analysis: pixels to palette colours, blobs to balls, balls to tracks.

Each pixel is classified by :func:`segment_colors` (background / palette colour k with its
coverage alpha / off-palette); balls are connected components of same-colour pixels with
area >= ``min_area`` (:func:`analyze_balls`), and tracks link them across frames per colour
by greedy nearest-neighbour matching (:func:`track_balls`). The metrics built on them are in
:mod:`resforce.worlds.bouncing_balls.metrics` (whose docstring defines the conventions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from resforce.metrics.arrays import batch01, as_numpy


# ----------------------------------------------------------------------------- segmentation
def segment_colors(
    frames01: Any,
    palette: Sequence[Sequence[float]],
    background: Sequence[float] = (0.0, 0.0, 0.0),
    bg_thresh: float = 0.15,
    color_thresh: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Classify pixels of RGB frames in [0,1] shaped ``(..., 3, H, W)``.

    Returns ``(labels, alpha)`` shaped ``(..., H, W)``: labels 0 = background, ``k + 1`` =
    palette colour ``k``, -1 = off-palette; alpha = coverage (position on the segment
    background -> palette[k], in [0,1]) for palette pixels, else 0.
    """
    x = as_numpy(frames01).astype(np.float32)
    if x.shape[-3] != 3:
        raise ValueError(f"segment_colors needs RGB frames (..., 3, H, W), got {x.shape}")
    pal = np.asarray(palette, dtype=np.float32).reshape(-1, 3)
    bg = np.asarray(background, dtype=np.float32).reshape(3)
    v = np.moveaxis(x, -3, -1) - bg  # (..., H, W, 3)
    out_shape = v.shape[:-1]
    v = v.reshape(-1, 3)
    dist_bg2 = np.einsum("pc,pc->p", v, v)
    nonbg = np.flatnonzero(dist_bg2 >= bg_thresh * bg_thresh)
    labels = np.zeros(v.shape[0], dtype=np.int16)
    alpha = np.zeros(v.shape[0], dtype=np.float32)
    if len(nonbg) and len(pal):
        vn = v[nonbg]  # only non-background pixels need the palette test
        d = pal - bg  # (K, 3)
        dd = np.maximum((d * d).sum(-1), 1e-12)  # (K,)
        p = vn @ d.T  # (P, K)
        t = np.clip(p / dd, 0.0, 1.0)
        r2 = np.maximum(dist_bg2[nonbg, None] - 2.0 * t * p + t * t * dd, 0.0)
        r = np.sqrt(r2)
        k = np.argmin(r + 1e-3 * (1.0 - t), axis=-1)  # tie-break towards the fuller colour
        rows = np.arange(len(nonbg))
        on = r[rows, k] < color_thresh
        labels[nonbg] = np.where(on, k + 1, -1)
        alpha[nonbg] = np.where(on, t[rows, k], 0.0)
    elif len(nonbg):
        labels[nonbg] = -1
    labels = labels.reshape(out_shape)
    alpha = alpha.reshape(out_shape)
    return labels, alpha


def connected_components(labels: Any, connectivity: int = 4) -> np.ndarray:
    """Label connected components of equal positive labels in ``(N, H, W)``.

    Returns int64 ``(N, H, W)``: -1 for pixels with label <= 0, else a component id that is
    unique across the whole batch (the flat index of the component's first pixel, so ids
    sort by frame). Min-label propagation with pointer jumping; no scipy.
    """
    lab = as_numpy(labels)
    if lab.ndim == 2:
        lab = lab[None]
    n, h, w = lab.shape
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    fg = lab > 0
    fgi = np.flatnonzero(fg)  # global flat indices, sorted
    nf = len(fgi)
    out = np.full(n * h * w, -1, dtype=np.int64)
    if nf == 0:
        return out.reshape(n, h, w)
    compact = np.full(n * h * w, -1, dtype=np.int64)
    compact[fgi] = np.arange(nf)
    compact = compact.reshape(n, h, w)
    shifts = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if connectivity == 8 else [])
    ea, eb = [], []
    for dy, dx in shifts:
        ya, yb = slice(0, h - dy), slice(dy, h)
        xa, xb = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        same = fg[:, ya, xa] & (lab[:, ya, xa] == lab[:, yb, xb])
        ea.append(compact[:, ya, xa][same])
        eb.append(compact[:, yb, xb][same])
    ea = np.concatenate(ea)
    eb = np.concatenate(eb)
    # Hook-and-compress (Shiloach-Vishkin style): parents always have smaller indices, so
    # each tree's root is its smallest pixel; O(log n) rounds.
    parent = np.arange(nf)
    while len(ea):
        la, lb = parent[ea], parent[eb]
        diff = la != lb
        if not diff.any():
            break
        ea, eb, la, lb = ea[diff], eb[diff], la[diff], lb[diff]
        np.minimum.at(parent, np.maximum(la, lb), np.minimum(la, lb))
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    out[fgi] = fgi[parent]
    return out.reshape(n, h, w)


def _dilate3(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation over the last two axes."""
    out = mask.copy()
    out[..., 1:, :] |= mask[..., :-1, :]
    out[..., :-1, :] |= mask[..., 1:, :]
    tmp = out.copy()
    out[..., :, 1:] |= tmp[..., :, :-1]
    out[..., :, :-1] |= tmp[..., :, 1:]
    return out


@dataclass
class BallAnalysis:
    """Segmentation of a batch of bouncing-balls videos (see :func:`analyze_balls`).

    ``blobs`` holds 1-D arrays over every blob of every frame: ``sample``, ``frame``,
    ``color`` (palette index), ``area`` (summed coverage, px), ``npix``, ``cx``, ``cy``,
    ``shape_error`` and ``valid`` (area >= min_area, i.e. counted as a ball). Blobs are
    sorted by (sample, frame).
    """

    shape: tuple[int, int, int, int]  # (M, F, H, W)
    labels: np.ndarray  # (M, F, H, W) int16: 0 bg, k+1 palette, -1 off-palette
    blobs: dict[str, np.ndarray]
    color_integrity: np.ndarray  # (M, F)
    background_noise: np.ndarray  # (M, F)
    n_colors: int
    pixel_center: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def balls(self, m: int, f: int | None = None) -> dict[str, np.ndarray]:
        """Valid blobs (balls) of sample ``m`` (and frame ``f`` if given)."""
        b = self.blobs
        sel = b["valid"] & (b["sample"] == m)
        if f is not None:
            sel &= b["frame"] == f
        return {k: v[sel] for k, v in b.items()}


def analyze_balls(
    videos: Any,
    palette: Sequence[Sequence[float]],
    background: Sequence[float] = (0.0, 0.0, 0.0),
    min_area: float = 4.0,
    bg_thresh: float = 0.15,
    color_thresh: float = 0.2,
    pixel_center: float = 0.0,
    connectivity: int = 4,
) -> BallAnalysis:
    """Segment a batch of videos ((C,F,H,W) or (M,C,F,H,W) in [-1,1]) into coloured blobs."""
    return analyze_balls01(batch01(videos), palette, background, min_area, bg_thresh, color_thresh, pixel_center, connectivity)


def analyze_balls01(v, palette, background, min_area, bg_thresh, color_thresh, pixel_center, connectivity=4) -> BallAnalysis:
    """analyze_balls of videos already in [0, 1], (M, C, F, H, W)."""
    mm, c, ff, hh, ww = v.shape
    frames = np.moveaxis(v, 2, 1).reshape(mm * ff, c, hh, ww)
    labels, alpha = segment_colors(frames, palette, background, bg_thresh, color_thresh)
    comp = connected_components(labels, connectivity)
    n_frames = mm * ff
    fg = comp >= 0
    roots = comp[fg]
    uniq, inv = np.unique(roots, return_inverse=True)
    nb = len(uniq)
    gidx, yi, xi = np.nonzero(fg)
    w = alpha[fg].astype(np.float64)
    x = xi.astype(np.float64) + pixel_center
    y = yi.astype(np.float64) + pixel_center
    area = np.bincount(inv, w, nb)
    npix = np.bincount(inv, minlength=nb)
    a = np.maximum(area, 1e-12)
    cx = np.bincount(inv, w * x, nb) / a
    cy = np.bincount(inv, w * y, nb) / a
    vxx = np.maximum(np.bincount(inv, w * x * x, nb) / a - cx**2, 0.0) + 1.0 / 12.0
    vyy = np.maximum(np.bincount(inv, w * y * y, nb) / a - cy**2, 0.0) + 1.0 / 12.0
    vxy = np.bincount(inv, w * x * y, nb) / a - cx * cy
    tr = vxx + vyy  # + 1/12 per axis: the pixel footprint's own variance
    disc = np.sqrt(np.maximum(((vxx - vyy) * 0.5) ** 2 + vxy**2, 0.0))
    lmax = tr * 0.5 + disc
    lmin = np.maximum(tr * 0.5 - disc, 0.0)
    compact = np.minimum(1.0, area / (2.0 * np.pi * tr))
    iso = np.sqrt(lmin / np.maximum(lmax, 1e-12))
    gframe = uniq // (hh * ww)
    blobs = {
        "sample": (gframe // ff).astype(np.int64),
        "frame": (gframe % ff).astype(np.int64),
        "color": (labels.reshape(-1)[uniq] - 1).astype(np.int64),
        "area": area,
        "npix": npix,
        "cx": cx,
        "cy": cy,
        "shape_error": 1.0 - compact * iso,
        "valid": area >= min_area,
    }

    # colour integrity: on-palette among non-background pixels
    lab_flat = labels.reshape(n_frames, -1)
    nonbg = (lab_flat != 0).sum(1)
    onpal = (lab_flat > 0).sum(1)
    integrity = np.where(nonbg > 0, onpal / np.maximum(nonbg, 1), 1.0)

    # background noise: outside a 1-px dilation of the valid balls
    valid_root = np.zeros(n_frames * hh * ww + 1, dtype=bool)
    valid_root[uniq[blobs["valid"]]] = True
    ball_px = valid_root[np.where(fg, comp, n_frames * hh * ww)]
    bgmask = ~_dilate3(ball_px)
    bgc = np.asarray(background, dtype=np.float32).reshape(1, 3, 1, 1)
    dev = np.abs(frames - bgc).mean(1)  # (N, H, W)
    nbg = bgmask.reshape(n_frames, -1).sum(1)
    noise = np.where(nbg > 0, (dev * bgmask).reshape(n_frames, -1).sum(1) / np.maximum(nbg, 1), np.nan)

    return BallAnalysis(
        shape=(mm, ff, hh, ww),
        labels=labels.reshape(mm, ff, hh, ww),
        blobs=blobs,
        color_integrity=integrity.reshape(mm, ff),
        background_noise=noise.reshape(mm, ff),
        n_colors=len(np.asarray(palette).reshape(-1, 3)),
        pixel_center=pixel_center,
    )


def blob_centroids(analysis: BallAnalysis) -> np.ndarray:
    """(M, F, K, 2) centroid (x, y) of the largest ball of each palette colour; NaN if absent."""
    mm, ff, _, _ = analysis.shape
    k = analysis.n_colors
    out = np.full((mm, ff, k, 2), np.nan)
    best = np.full((mm, ff, k), -1.0)
    b = analysis.blobs
    for i in np.flatnonzero(b["valid"]):
        m, f, c = b["sample"][i], b["frame"][i], b["color"][i]
        if b["area"][i] > best[m, f, c]:
            best[m, f, c] = b["area"][i]
            out[m, f, c] = (b["cx"][i], b["cy"][i])
    return out


def greedy_match(cost: np.ndarray) -> list[tuple[int, int]]:
    """Greedy minimum-cost matching of rows to columns (inf = forbidden)."""
    pairs = []
    if cost.size == 0:
        return pairs
    cost = cost.astype(np.float64).copy()
    for _ in range(min(cost.shape)):
        i = int(np.argmin(cost))
        r, c = divmod(i, cost.shape[1])
        if not np.isfinite(cost[r, c]):
            break
        pairs.append((r, c))
        cost[r, :] = np.inf
        cost[:, c] = np.inf
    return pairs


def track_balls(analysis: BallAnalysis) -> list[list[dict[str, Any]]]:
    """Per sample, a list of tracks ``{"color", "pos" (F,2) with NaN gaps, "area" (F,)}``.

    Balls are linked frame to frame by greedy nearest-neighbour matching within each colour
    (against each track's last known position); unmatched balls start new tracks.
    """
    mm, ff, _, _ = analysis.shape
    b = analysis.blobs
    valid = np.flatnonzero(b["valid"])
    out: list[list[dict[str, Any]]] = []
    key = b["sample"][valid] * ff + b["frame"][valid]
    starts = np.searchsorted(key, np.arange(mm * ff + 1))
    for m in range(mm):
        tracks: list[dict[str, Any]] = []
        last: list[np.ndarray] = []
        for f in range(ff):
            idx = valid[starts[m * ff + f] : starts[m * ff + f + 1]]
            if len(idx) == 0:
                continue
            pos = np.stack([b["cx"][idx], b["cy"][idx]], 1)
            cols = b["color"][idx]
            used = np.zeros(len(idx), bool)
            if tracks:
                tcol = np.array([t["color"] for t in tracks])
                tlast = np.stack(last)
                cost = np.linalg.norm(tlast[:, None] - pos[None], axis=-1)
                cost[tcol[:, None] != cols[None]] = np.inf
                for ti, bi in greedy_match(cost):
                    tracks[ti]["pos"][f] = pos[bi]
                    tracks[ti]["area"][f] = b["area"][idx[bi]]
                    last[ti] = pos[bi]
                    used[bi] = True
            for bi in np.flatnonzero(~used):
                t = {"color": int(cols[bi]), "pos": np.full((ff, 2), np.nan), "area": np.full(ff, np.nan)}
                t["pos"][f] = pos[bi]
                t["area"][f] = b["area"][idx[bi]]
                tracks.append(t)
                last.append(pos[bi])
        out.append(tracks)
    return out
