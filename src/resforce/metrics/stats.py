"""Statistics of per-frame metrics: NaN-aware means and standard errors, paired
differences, tables by frame segment (text, Markdown; :mod:`resforce.evaluation.report` makes HTML).

Per-frame metrics are arrays shaped ``(samples, frames)``; ``NaN`` means "undefined for this
frame" and every function here ignores it.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from resforce.metrics.arrays import nanmean, as_numpy

__all__ = ["mean_se", "paired_difference", "whole_segments", "segment_table", "format_table"]


def mean_se(x: Any, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware mean and standard error (std with ddof=1 / sqrt(n)) along ``axis``.

    The standard error is NaN where fewer than 2 finite values exist.
    """
    x = as_numpy(x).astype(np.float64)
    finite = np.isfinite(x)
    n = finite.sum(axis=axis)
    xs = np.where(finite, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, xs.sum(axis=axis) / np.maximum(n, 1), np.nan)
        dev = np.where(finite, x - np.expand_dims(mean, axis), 0.0)
        var = (dev**2).sum(axis=axis) / np.maximum(n - 1, 1)
        se = np.where(n > 1, np.sqrt(var) / np.sqrt(np.maximum(n, 1)), np.nan)
    if np.ndim(mean) == 0:
        return float(mean), float(se)
    return mean, se


def paired_difference(a: Any, b: Any, axis: int = 0):
    """Mean and standard error of ``a - b`` over paired samples (same seeds) along ``axis``.

    Pairs where either value is NaN are dropped. Returns ``(mean, se)`` (floats for 1-D
    input). A difference is significant at ~95% when ``|mean| > 2 se``.
    """
    a = as_numpy(a).astype(np.float64)
    b = as_numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays must have the same shape, got {a.shape} and {b.shape}")
    return mean_se(a - b, axis=axis)



def whole_segments(frames: int, segment_len: int) -> tuple[list[tuple[int, int]], int]:
    """Whole segments ``[(start, end), ...]`` of ``segment_len`` frames from frame 0, and the
    number of tail frames left out because they do not fill a segment.

    A 2-frame tail averaged like a 32-frame segment would be a noisy row that looks as
    trustworthy as the others, so tables, per-sample segment means and Frechet distances all
    use these whole segments only.
    """
    if segment_len <= 0:
        raise ValueError(f"segment length must be positive, got {segment_len}")
    if segment_len > frames:
        raise ValueError(f"segment length {segment_len} is longer than the video ({frames} frames)")
    n = frames // segment_len
    return [(i * segment_len, (i + 1) * segment_len) for i in range(n)], frames - n * segment_len


def segment_table(
    per_frame: Mapping[str, Any],
    segment_len: int,
    train_len: int | None = None,
    metrics: Iterable[str] | None = None,
    fps: float | None = None,
) -> list[dict[str, Any]]:
    """Summarise per-frame metrics ``{name: (M, F)}`` over consecutive whole frame segments.

    Each sample's metric is first averaged over the segment's frames (NaN-aware), then the
    mean and standard error across samples are taken. Returns one row per segment::

        {"start": s, "end": e (exclusive), "label": "s-e" (or seconds if fps),
         "beyond_train": s >= train_len, "mean": {metric: float}, "se": {metric: float},
         "n": {metric: number of samples with a finite value},
         "dropped_tail_frames": frames after the last whole segment, left out}

    Segments start at frame 0; a tail shorter than ``segment_len`` is dropped (see
    :func:`whole_segments`) and the tables say so. Add ``"method": name`` to rows to get a
    method column from :func:`format_table`.
    """
    names = list(metrics) if metrics is not None else list(per_frame)
    arrs = {k: np.atleast_2d(as_numpy(per_frame[k]).astype(np.float64)) for k in names}
    ff = max(a.shape[1] for a in arrs.values()) if arrs else 0
    bounds, dropped = whole_segments(ff, segment_len)
    rows = []
    for s, e in bounds:
        label = f"{s}-{e}" if fps is None else f"{s / fps:g}-{e / fps:g}s"
        row: dict[str, Any] = {
            "start": s,
            "end": e,
            "label": label,
            "beyond_train": bool(train_len is not None and s >= train_len),
            "mean": {},
            "se": {},
            "n": {},
            "dropped_tail_frames": dropped,
        }
        for k, a in arrs.items():
            per_sample = nanmean(a[:, s:e], axis=1)
            mean, se = mean_se(per_sample)
            row["mean"][k] = mean
            row["se"][k] = se
            row["n"][k] = int(np.isfinite(per_sample).sum())
        rows.append(row)
    return rows


def _fmt(mean: float, se: float, precision: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    s = f"{mean:.{precision}f}"
    if np.isfinite(se):
        s += f" ± {se:.{precision}f}"
    return s


def table_cells(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None, precision: int):
    """(header, body, note) of a segment table: the cells every table format (text,
    Markdown, the report's HTML) lays out the same way."""
    if metrics is None:
        metrics = list(rows[0]["mean"]) if rows else []
    has_method = any("method" in r for r in rows)
    header = (["method"] if has_method else []) + ["frames"] + list(metrics)
    body = []
    for r in rows:
        label = str(r.get("label", f"{r['start']}-{r['end']}")) + (" *" if r.get("beyond_train") else "")
        cells = ([str(r.get("method", ""))] if has_method else []) + [label]
        cells += [_fmt(r["mean"].get(m, np.nan), r["se"].get(m, np.nan), precision) for m in metrics]
        body.append(cells)
    notes = []
    if any(r.get("beyond_train") for r in rows):
        notes.append("* = segment starts beyond the training length")
    notes.append("values are mean ± standard error over samples")
    tails = sorted({(r["end"], r["dropped_tail_frames"]) for r in rows if r.get("dropped_tail_frames")})
    if tails:
        end, n = tails[-1]
        notes.append(f"the last {n} frame(s) ({end}-{end + n}) do not fill a segment and are left out")
    note = "; ".join(notes)
    return header, body, note


def _needs_note(rows: Sequence[Mapping[str, Any]]) -> bool:
    return any(r.get("beyond_train") or r.get("dropped_tail_frames") for r in rows)


def format_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None, precision: int = 3) -> str:
    """Fixed-width text table of :func:`segment_table` rows (``mean ± se`` per metric)."""
    header, body, note = table_cells(rows, metrics, precision)
    widths = [max(len(header[i]), *(len(b[i]) for b in body)) if body else len(header[i]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [line(header), "  ".join("-" * w for w in widths)] + [line(b) for b in body]
    if _needs_note(rows):
        out.append(note)
    return "\n".join(out)
