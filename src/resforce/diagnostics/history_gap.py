"""The history gap: how far a history is from the ground truth it stands for.

Resampling Forcing (arXiv 2512.15702) trains on a history degraded by the model itself so
that it resembles what the model will see at inference: its own rollout. This measures both
against the ground truth, chunk position by chunk position:

(a) the model's own rollout: the clip's first `prefix_chunks` ground-truth chunks given, the
    rest generated (the run's Euler steps and shift, a context of the whole clip), vs the
    ground truth that continues from the same prefix;
(b) the resampled training history at each strength s (autoregressive and/or parallel
    resampling, t_s drawn per sample from the training distribution with shift s) vs its
    ground truth.

Distances (noise-free, per frame, averaged over the samples and the chunk's frames):

- ``mse``: per-pixel mean squared error (values in [-1, 1]);
- ``hist_l1``: L1 distance between the frames' joint RGB histograms (`bins` per channel,
  normalised to sum 1; in [0, 2]): which colours are on screen and how much of each,
  wherever they are;
- ``chan_stats``: mean over channels of |mean_a - mean_b| + |std_a - std_b| over the frame.

A rollout also diverges from the ground truth legitimately (a chaotic world's trajectory),
which the MSE counts and the two colour distances mostly do not.

With a `score` function (the world's own metrics of a video against the clips' ground truth,
e.g. the ball-count and per-ball identity errors of bouncing balls) every history is scored
as if it were a generated video too: whether the training history itself already loses or
recolours objects, next to what the model's rollout does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from resforce.history import HistoryConfig, build_history
from resforce.rollout import SampleConfig, rollout

DISTANCES = ("mse", "hist_l1", "chan_stats")


def colour_histograms(video: torch.Tensor, bins: int = 4) -> torch.Tensor:
    """(B, F, bins**3): each frame's joint RGB histogram, normalised to sum 1. `video`
    (B, 3, F, H, W) with values in [-1, 1] (clamped)."""
    if video.shape[1] != 3:
        raise ValueError(f"colour histograms need RGB videos (3 channels), got {video.shape[1]}")
    b, _, f, h, w = video.shape
    q = ((video.float().clamp(-1, 1) + 1) / 2 * bins).long().clamp(max=bins - 1)  # bin per channel
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # (B, F, H, W)
    hist = torch.zeros(b, f, bins ** 3, device=video.device)
    hist.scatter_add_(2, idx.reshape(b, f, h * w), torch.ones(b, f, h * w, device=video.device))
    return hist / (h * w)


def frame_distances(a: torch.Tensor, b: torch.Tensor, bins: int = 4) -> dict[str, torch.Tensor]:
    """Per-frame distances between two videos (B, 3, F, H, W): {name: (B, F)} for DISTANCES."""
    if a.shape != b.shape:
        raise ValueError(f"videos of different shapes: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.float(), b.float()
    mse = (a - b).pow(2).mean(dim=(1, 3, 4))
    hist = (colour_histograms(a, bins) - colour_histograms(b, bins)).abs().sum(-1)
    stats = ((a.mean(dim=(3, 4)) - b.mean(dim=(3, 4))).abs()
             + (a.std(dim=(3, 4), unbiased=False) - b.std(dim=(3, 4), unbiased=False)).abs()).mean(1)
    return {"mse": mse, "hist_l1": hist, "chan_stats": stats}


def chunk_distances(a: torch.Tensor, b: torch.Tensor, frames_per_chunk: int, bins: int = 4) -> dict[str, list[float]]:
    """{name: [distance at chunk position 0, 1, ...]}: frame_distances averaged over the
    samples and each chunk's frames."""
    out = {}
    for k, d in frame_distances(a, b, bins).items():
        n = d.shape[1] // frames_per_chunk
        out[k] = d[:, :n * frames_per_chunk].reshape(d.shape[0], n, frames_per_chunk).mean(dim=(0, 2)).tolist()
    return out


@torch.no_grad()
def model_rollout(model, ground_truth: torch.Tensor, prefix_chunks: int, steps: int, shift: float,
                  seed: int = 0, attention=None, actions: torch.Tensor | None = None) -> torch.Tensor:
    """The model's own video of the same length as `ground_truth` (B, C, F, H, W): its first
    `prefix_chunks` chunks given, the rest generated (all history in view: the clip is a
    training clip), clamped to [-1, 1]. `actions`: an action model's per-frame actions of the
    clips (B, F[, D]), the ones that produced the ground truth."""
    fpc = model.config.frames_per_chunk
    b, _, f, h, w = ground_truth.shape
    n = f // fpc
    if not 1 <= prefix_chunks < n:
        raise ValueError(f"prefix_chunks={prefix_chunks} must be >= 1 and < the clip's {n} chunks")
    s = SampleConfig(chunks=n - prefix_chunks, steps=steps, shift=shift, seed=seed, context=0)
    device = next(model.parameters()).device
    video = rollout(model, b, h, w, s, prefix=ground_truth[:, :, :prefix_chunks * fpc].to(device),
                    attention=attention, device=device, actions=None if actions is None else actions.to(device))
    return video.clamp(-1, 1).cpu()


@torch.no_grad()
def resampled_history(model, ground_truth: torch.Tensor, strategy: str, shift: float, generator=None,
                      attention=None, actions: torch.Tensor | None = None, **history_fields) -> torch.Tensor:
    """The training history of `ground_truth` under a resampling strategy at shift s (t_s per
    sample, as the trainer draws it with resample_per_sample), clamped to [-1, 1]. `actions`:
    an action model's per-frame actions of the clips, which the resampling passes see as in
    training."""
    cfg = HistoryConfig(strategy=strategy, resample_shift=shift, resample_per_sample=True, **history_fields)
    device = next(model.parameters()).device
    hist, _ = build_history(cfg, model, ground_truth.to(device), generator, attention=attention,
                            actions=None if actions is None else actions.to(device))
    return hist.clamp(-1, 1).cpu()


def chunk_scores(video: torch.Tensor, score: Callable[[torch.Tensor], dict], frames_per_chunk: int) -> dict[str, list[float]]:
    """{metric: [value at chunk position 0, 1, ...]}: `score(video)`'s per-frame metrics
    ({name: (B, F)}) averaged over the samples and each chunk's frames (NaN, where a metric is
    undefined, left out; a position where it is undefined throughout is NaN)."""
    out = {}
    for k, v in score(video).items():
        v = np.asarray(v, dtype=np.float64)
        n = v.shape[1] // frames_per_chunk
        per = v[:, :n * frames_per_chunk].reshape(v.shape[0], n, frames_per_chunk).transpose(1, 0, 2).reshape(n, -1)
        out[k] = [float(np.nanmean(row)) if np.isfinite(row).any() else math.nan for row in per]
    return out


def history_gap(model, ground_truth: torch.Tensor, shifts=(0.1, 0.6, 3.0),
                strategies=("resampling", "parallel_resampling"), prefix_chunks: int = 2, steps: int = 16,
                sample_shift: float = 2.0, seed: int = 0, bins: int = 4, attention=None,
                rollout_video: torch.Tensor | None = None,
                score: Callable[[torch.Tensor], dict] | None = None, anchors=(0,), per_chunk=(False,),
                actions: torch.Tensor | None = None) -> dict:
    """Distances to the ground truth per chunk position of (a) the model's rollout from the
    first `prefix_chunks` chunks and (b) each strategy's resampled history at each shift:
    {"prefix_chunks", "chunks", "rows": {label: {distance: [per chunk]}}, "scored": [...]}.
    `rollout_video`: the rollout if already made (model_rollout with the same arguments).
    `score`: a video (B, C, F, H, W) -> {metric: per-frame values (B, F)} against the same
    ground truth (the world's metrics); its metrics join each row next to the distances and
    are listed in "scored". `anchors`: history.anchor_chunks values to build each resampled
    history with (0: none; k > 0 adds rows labelled "... anchor k"). `per_chunk`:
    history.resample_per_chunk values (True adds rows labelled "... per chunk": t_s drawn for
    every chunk instead of once per clip). `actions`: an action model's per-frame actions of
    the clips (B, F[, D]): the rollout is commanded and the resampling passes see them, as
    in evaluation and training (without them an action model runs on its null action)."""
    fpc = model.config.frames_per_chunk
    gt = ground_truth.float().clamp(-1, 1)
    if rollout_video is None:
        rollout_video = model_rollout(model, gt, prefix_chunks, steps, shift=sample_shift, seed=seed,
                                      attention=attention, actions=actions)

    def row(video):
        return {**chunk_distances(video, gt, fpc, bins), **(chunk_scores(video, score, fpc) if score else {})}

    rows = {"rollout": row(rollout_video)}
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for strategy in strategies:
        for s in shifts:
            for k in anchors:
                for pc in per_chunk:
                    hist = resampled_history(model, gt, strategy, float(s), g, attention=attention, actions=actions,
                                             anchor_chunks=k, resample_per_chunk=pc)
                    label = f"{strategy} s={float(s):g}" + (f" anchor {k}" if k else "") + (" per chunk" if pc else "")
                    rows[label] = row(hist)
    scored = [k for k in rows["rollout"] if k not in DISTANCES]
    return {"prefix_chunks": prefix_chunks, "chunks": gt.shape[2] // fpc, "samples": gt.shape[0], "rows": rows,
            "scored": scored}


def generated_mean(values: list[float], prefix_chunks: int) -> float:
    """Mean over the chunk positions a rollout generates (prefix_chunks onward); positions
    where a metric is undefined (NaN) left out."""
    v = [x for x in values[prefix_chunks:] if not math.isnan(x)]
    return sum(v) / len(v) if v else math.nan


def gap_table(result: dict, distance: str) -> str:
    """A Markdown table of one distance: a row per history, a column per chunk position, and
    the mean over the generated positions."""
    n, p = result["chunks"], result["prefix_chunks"]
    head = "| history | " + " | ".join(f"c{i}" for i in range(n)) + f" | mean c{p}-c{n - 1} |"
    lines = [head, "|---|" + "---:|" * (n + 1)]
    for label, d in result["rows"].items():
        vals = d[distance]
        lines.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in vals)
                     + f" | **{generated_mean(vals, p):.4f}** |")
    return "\n".join(lines)
