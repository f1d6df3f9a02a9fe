"""Long-horizon evaluation of a run: rollouts, metrics per frame, tables by segment.

The run's world (resforce.worlds) scores the videos: against what the world allows and,
where it has ground truth, against it; every world gets the generic metrics (sharpness,
colour drift, flicker). Segments are one training length long, so the table reads like the
paper's 0-5 / 5-10 / 10-15 s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resforce.metrics.arrays import nanmean
import torch

from resforce.metrics import frechet as F
from resforce.metrics import stats as S
from resforce.io.fileio import write_text_atomic
from resforce.generation.generate import Generated, SampleOverrides, generate, world_clips
from resforce.worlds import World, world_of

FRECHET_COLUMNS = ("frechet", "frechet_floor")
"""Table columns after the world's own (World.table_metrics), for worlds with ground truth."""
FRECHET_REFERENCE_CLIPS = 256
"""Default size of the Frechet reference: ground-truth clips of the world. Measured with
scripts/frechet_reference_size.py (docs/metrics.md, bb_base world, clips of 32 frames): two
independent sets of 256 clips are 0.011 ± 0.002 apart (64: 0.057 ± 0.020, 512: 0.007 ±
0.002), below the spread of a 16-clip segment's own distance over the clips drawn (s.d. 0.017)."""
FRECHET_REFERENCE_FRAMES = 32
"""Frames per reference clip (the world's frames are stationary: any start time will do)."""
FRECHET_REFERENCE_SEED = 7_654_321
"""World seed of the reference: far from evaluation seeds, and the same for every run and
evaluation seed, so all Frechet distances are measured against one distribution."""


@dataclass
class Evaluation:
    name: str
    generated: Generated
    per_frame: dict[str, np.ndarray]
    """metric -> (samples, frames)."""
    rows: list[dict] = field(default_factory=list)
    segment_len: int = 0
    frechet_reference: dict = field(default_factory=dict)
    """How the Frechet reference was drawn, and the floor per segment (empty: no Frechet)."""
    weights_sha256: str | None = None
    """SHA-256 of the weights file rolled out (None: videos scored, not generated here), so two
    evaluations can be checked to be of the same model before they are paired as such."""
    action_following: dict | None = None
    """With `inverse_dynamics` steps: resforce.metrics.inverse_dynamics.action_following of the
    rollouts against the actions they were commanded (ceiling, videos, floor); else None."""

    @property
    def world(self) -> World:
        return world_of(self.generated.config.data)

    def per_sample_segments(self) -> dict:
        """metric -> [sample][segment] means, for paired comparisons across runs evaluated on
        the same seeds (same prefixes and initial noise)."""
        keys = [m for m in self.world.per_sample_metrics if m in self.per_frame]
        return {k: _segment_means(self.per_frame[k], self.segment_len) for k in keys}

    def summary(self) -> dict:
        return {"name": self.name, "segment_len": self.segment_len,
                "train_frames": self.generated.train_frames,
                "prefix_frames": self.generated.prefix_frames,
                "context_chunks": self.generated.context_chunks,
                "sink_chunks": self.generated.sink_chunks,
                "history_attention": _attention_summary(self.generated.attention),
                "weights_sha256": self.weights_sha256,
                "samples": int(self.generated.videos.shape[0]),
                "frames": int(self.generated.videos.shape[2]),
                "rows": _jsonable(self.rows),
                "dropped_tail_frames": S.whole_segments(int(self.generated.videos.shape[2]), self.segment_len)[1],
                "per_sample_segments": self.per_sample_segments(),
                "frechet_reference": _jsonable(self.frechet_reference),
                "action_following": _jsonable(self.action_following),
                "per_frame_mean": {k: _nanmean0(v) for k, v in self.per_frame.items()}}


def _attention_summary(cfg) -> dict | None:
    """The rollout's history attention, only the fields its mode uses (so summaries of two
    evaluations compare by equality): {'mode': 'dense'}, {'mode': 'topk', 'topk': 4}, ..."""
    if cfg is None:
        return None
    used = {"dense": (), "topk": ("topk",), "window": ("window", "sink")}[cfg.mode]
    return {"mode": cfg.mode, **{k: getattr(cfg, k) for k in used}}


def _segment_means(v: np.ndarray, seg: int) -> list:
    """(samples, frames) -> per sample, the mean of each whole segment (NaN-aware; None if
    undefined); a tail shorter than a segment is left out, as in the table."""
    bounds, _ = S.whole_segments(v.shape[1], seg)
    out = []
    for s, e in bounds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN segments -> NaN
            out.append(np.nanmean(v[:, s:e], axis=1))
    return [[None if not np.isfinite(x) else float(x) for x in row] for row in np.stack(out, 1)]


def _nanmean0(v: np.ndarray) -> list:
    """Mean over samples per frame; frames where a metric is undefined for all give None."""
    return [None if not np.isfinite(x) else float(x) for x in nanmean(v, axis=0)]


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def score(g: Generated) -> dict[str, np.ndarray]:
    """Per-frame metrics (samples, frames) of generated videos."""
    return score_videos(g.videos, g.config, g.states, g.ground_truth)


def score_videos(videos, cfg, states=None, ground_truth=None, ref_frames: int = 2) -> dict[str, np.ndarray]:
    """Per-frame metrics (samples, frames) of any videos (B, C, F, H, W) in [-1, 1] of a run's
    world (World.score): against the world states where given, else against the first
    ``ref_frames`` frames."""
    videos = videos.numpy() if isinstance(videos, torch.Tensor) else np.asarray(videos)
    return world_of(cfg.data).score(videos, states, ground_truth, ref_frames)


def evaluate(path, name: str | None = None, samples: int = 16, sample: SampleOverrides | None = None,
             prefix_chunks: int = 2, segment_len: int | None = None, progress: bool = True,
             frechet_reference: int = FRECHET_REFERENCE_CLIPS, inverse_dynamics: int = 0, **options) -> Evaluation:
    """Roll out ``samples`` videos, score them per frame, summarise them by whole segments.
    ``sample``: overrides of the run's sample config (seed None = 0, the evaluation seeds);
    ``options``: attention, device, prefer_ema of :func:`resforce.generation.generate.generate`.

    With the world's ground truth, each segment also gets its Frechet distance to
    ``frechet_reference`` independent ground-truth clips of the world (0: none), and the
    ground truth of the same clips as the floor (``frechet_floor``).

    ``inverse_dynamics`` > 0 (a world with discrete actions): an inverse-dynamics classifier
    trained that many steps on the world's ground truth scores whether each generated frame
    shows the action it was commanded (``Evaluation.action_following``).
    """
    _check_frechet_reference(frechet_reference)
    sample = sample or SampleOverrides()
    if sample.seed is None:
        sample = dataclasses.replace(sample, seed=0)
    idm = None
    if inverse_dynamics:  # trained (and its world checked) before any rollout
        from resforce.io.weights import inspect_weights
        from resforce.metrics.inverse_dynamics import train_inverse_dynamics

        cfg = inspect_weights(path, options.get("prefer_ema", True))[2]
        world = world_of(cfg.data)
        if world.action_space.kind == "discrete" and cfg.model.action_kind == "none":
            raise ValueError("--inverse-dynamics scores how rollouts follow their actions: this run's model "
                             "takes none (model.action_kind='none')")
        if options.get("actions") is None and world.clips(1, 2, 0)[0] is None:
            raise ValueError(f"--inverse-dynamics: data.kind={world.kind} has no ground-truth clips whose actions "
                             f"the rollouts follow: give --actions")
        chunks = sample.chunks if sample.chunks is not None else cfg.sample.chunks
        frames = (prefix_chunks + chunks) * cfg.model.frames_per_chunk
        # the floor scores the rollouts against clips of the world's stream of the same length
        world.check_clip_frames(frames, f"--inverse-dynamics with --chunks {chunks} and --prefix-chunks {prefix_chunks} "
                                        f"({frames} frames, scored against other episodes' actions)")
        idm = train_inverse_dynamics(world, steps=inverse_dynamics)
    digest = weights_sha256(path, options.get("prefer_ema", True))
    g = generate(path, sample, batch=samples, batch_flag="--samples", prefix_chunks=prefix_chunks, with_ground_truth=True,
                 progress=progress, **options)
    per_frame = score(g)
    frames = int(g.videos.shape[2])
    if segment_len is not None and segment_len > frames:
        raise ValueError(f"--segment {segment_len} is longer than the rollout ({frames} frames)")
    seg = segment_len or min(g.train_frames, frames)
    rows = S.segment_table(per_frame, seg, train_len=g.train_frames)
    info = {}
    if g.ground_truth is not None and frechet_reference:
        info = add_frechet(rows, g.videos, g.config, seg, frechet_reference, floor=g.ground_truth)
    following = None
    if idm is not None:
        from resforce.metrics.inverse_dynamics import action_following

        following = action_following(idm, g.videos, g.actions.numpy(), world, given_frames=g.prefix_frames)
    return Evaluation(name or Path(str(path)).stem, g, per_frame, rows, seg, info, digest, following)


def weights_sha256(path, prefer_ema: bool = True) -> str:
    """SHA-256 of the weights file that `generate` loads from a run, checkpoint or file."""
    from resforce.io.weights import resolve_weights

    h = hashlib.sha256()
    with open(resolve_weights(path, prefer_ema), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # hashlib.file_digest needs Python 3.11
            h.update(block)
    return h.hexdigest()


def _check_frechet_reference(n: int) -> None:
    if n != 0 and n < 2:
        raise ValueError(f"--frechet-reference must be 0 (no Frechet distance) or >= 2 clips, got {n}")


def add_frechet(rows: list[dict], videos, cfg, seg: int, reference_clips: int = FRECHET_REFERENCE_CLIPS,
                floor=None) -> dict:
    """Add ``frechet`` (and ``frechet_floor`` given floor videos) to segment-table rows, against
    ``reference_clips`` ground-truth clips of the run's world from FRECHET_REFERENCE_SEED.
    Returns the reference's description and the floor per segment, for the JSON."""
    np_ = lambda x: x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)  # noqa: E731
    reference, _ = world_clips(cfg, reference_clips, FRECHET_REFERENCE_FRAMES, FRECHET_REFERENCE_SEED)
    fds = F.frechet_vs_horizon(np_(videos), reference.numpy(), seg, floor=None if floor is None else np_(floor))
    for row, fd in zip(rows, fds):
        for k in ("frechet", "frechet_floor"):
            if k in fd:
                row["mean"][k], row["se"][k], row["n"][k] = fd[k], float("nan"), 1
    return {"clips": reference_clips, "clip_frames": FRECHET_REFERENCE_FRAMES, "world_seed": FRECHET_REFERENCE_SEED,
            "floor": [fd.get("frechet_floor") for fd in fds]}


def frechet_line(ev: Evaluation) -> str:
    """One printed line: the reference and the ground-truth floor."""
    ref = ev.frechet_reference
    if not ref:
        return ""
    floor = [x for x in ref.get("floor", []) if x is not None]
    text = (f"Frechet distances against {ref['clips']} independent ground-truth clips of the world "
            f"({ref['clip_frames']} frames each, evaluation world seed {ref['world_seed']})")
    if floor:
        text += (f"; floor (ground truth of the same clips vs that reference): "
                 f"{min(floor):.3f}-{max(floor):.3f} per segment, column frechet_floor")
    return text


def table_metrics(ev: Evaluation) -> list[str]:
    """The columns of the run's world (then the Frechet ones) that the evaluation has."""
    have = set(ev.per_frame) | set(ev.rows[0]["mean"] if ev.rows else ())
    return [m for m in ev.world.table_metrics + FRECHET_COLUMNS if m in have] or list(ev.per_frame)


def plot_metrics(ev: Evaluation) -> list[str]:
    """The metrics of the run's world worth plotting against the horizon."""
    return [m for m in ev.world.plot_metrics if m in ev.per_frame]


def save_json(ev: Evaluation, path, extra: dict | None = None) -> Path:
    """Write the evaluation's summary (plus ``extra`` keys) atomically as JSON."""
    path = Path(path)
    write_text_atomic(path, json.dumps({**ev.summary(), **_jsonable(extra or {})}, indent=1))
    return path


def saved_segments(summary: dict) -> dict[str, np.ndarray]:
    """A saved evaluation's (save_json's) per-sample segment means back as arrays: metric ->
    (samples, segments) float64, NaN where a segment had no value (saved as null)."""
    return {m: np.array([_nan_for_null(row) for row in rows], dtype=np.float64)
            for m, rows in summary["per_sample_segments"].items()}


def saved_following(summary: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """A saved evaluation's per-rollout action following (`eval --inverse-dynamics`): (accuracy,
    floor) per rollout as float64 arrays, NaN for a rollout with no scored frame; None when the
    evaluation did not measure it per rollout."""
    per = (summary.get("action_following") or {}).get("per_sample")
    if not per:
        return None
    return tuple(np.array(_nan_for_null(per[k]), dtype=np.float64) for k in ("videos", "floor"))


def _nan_for_null(values: list) -> list:
    """JSON's null (no value) back as NaN."""
    return [np.nan if x is None else x for x in values]
