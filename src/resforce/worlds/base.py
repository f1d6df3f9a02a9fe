"""World: everything generic code needs to know about where a run's videos come from.

A world is built from a run's DataConfig and gives: the training stream, the frame size (and
the config key that sets it), ground-truth evaluation clips where the world can make them,
per-frame scoring, and which metrics are worth tabulating, plotting and pairing. Sampling,
evaluation, the CLI and the report ask the run's world (`resforce.worlds.world_of`) and never
name one; a new world is one module plus one entry in the registry (worlds/__init__.py).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from resforce.metrics.video import DRIFT_DEFINITION, evaluate_generic

EVAL_SEED_OFFSET = 1_000_003
"""Evaluation clips come from a world seed far from the training stream's."""


class DataStream(Protocol):
    """A resumable training stream: `batch(n, num_frames)` -> (videos (n, C, F, H, W) in
    [-1, 1], per-clip info), plus state_dict / load_state_dict for exact resume."""

    def batch(self, batch_size: int, num_frames: int | None = None) -> tuple[Any, Any]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class World:
    """Base world: generic metrics only, no ground truth. Subclasses set `kind` and the
    resolution and stream; worlds that can simulate themselves override `clips` and `score`."""

    kind: str = ""
    """The `data.kind` value that selects this world."""
    config_class: type | None = None
    """The dataclass of the world's own config, `data.<kind>` (config.DataConfig has one field
    per registered world)."""
    config_doc: str = ""
    """One line on the world's config section, the docstring of its DataConfig field."""
    channels: int = 3
    """Channels of the world's clips (RGB)."""
    table_metrics: tuple[str, ...] = ("drift", "sharpness", "flicker")
    """Columns of the eval / compare tables, in order, where a run has them."""
    plot_metrics: tuple[str, ...] = ("drift",)
    """Metrics drawn against the horizon on the comparison page."""
    per_sample_metrics: tuple[str, ...] = ("drift",)
    """Metrics whose per-sample segment means go into the JSON, for paired comparisons."""
    summary_definition: str = DRIFT_DEFINITION
    """What the summary score of the tables means (printed under them)."""
    verdict_metrics: dict[str, tuple[str, str]] = {}
    """metric -> (what the better method does, what the number is): the paired verdict of
    a comparison (resforce.evaluation.verdict) uses the first one both runs have; none: no verdict."""
    title: str = "videos"
    """What the world's clips are, in messages."""
    scores_files: bool = False
    """`resforce score` can score video files with this world's metrics (it has metrics of its
    own, beyond the generic ones)."""

    @property
    def action_space(self):
        """What actions the world's clips carry (resforce.actions.ActionSpace; kind 'none': none)."""
        from resforce.actions import NO_ACTIONS

        return NO_ACTIONS

    def reference_note(self, prefix_frames: int) -> str:
        """What the first `prefix_frames` frames of a scored file are the reference of."""
        return f"reference: the first {prefix_frames} frame(s)"

    def __init__(self, data_cfg) -> None:
        self.data_cfg = data_cfg

    @property
    def config(self):
        """The world's own section of the run's data config, `data.<kind>`."""
        return getattr(self.data_cfg, self.kind)

    playable: bool = False
    """The world can be simulated step by step under actions (`simulator`)."""

    @classmethod
    def config_for(cls, argument: str):
        """The world's config from the argument of `KIND:ARGUMENT` (e.g. `--world atari:pong`);
        worlds that take none refuse one."""
        raise ValueError(f"--world {cls.kind}:{argument}: the {cls.kind} world takes no argument; give --world {cls.kind}")

    def simulator(self, seed: int):
        """A step-by-step simulator of the world from `seed` (`frame`, `step(action)`,
        `action_space`), for worlds that are `playable`; None for the others."""
        return None

    @property
    def resolution(self) -> tuple[int, int]:
        """(H, W) of the world's frames; default: square frames of the config's `resolution`."""
        return self.config.resolution, self.config.resolution

    @property
    def resolution_key(self) -> str:
        """The config key that sets the resolution (for error messages)."""
        return f"data.{self.kind}.resolution"

    def stream(self, seed: int = 0) -> DataStream:
        """The training stream of the run with seed `seed`."""
        raise NotImplementedError

    def clips(self, batch: int, frames: int, seed: int):
        """(videos, states) of `batch` ground-truth clips from evaluation seed `seed` (far
        from the training stream), or (None, None) for a world without ground truth."""
        return None, None

    def score(self, videos: np.ndarray, states=None, ground_truth=None, ref_frames: int = 2) -> dict[str, np.ndarray]:
        """Per-frame metrics (samples, frames) of videos (B, C, F, H, W) in [-1, 1]."""
        return evaluate_generic(videos)

    # -- worlds whose clips are latents with text (the latents world); defaults: pixels, no text
    def check_clip_frames(self, frames: int, key: str) -> None:
        """ValueError naming `key` when the world cannot give training clips of `frames` frames
        (checked for every stage when a config loads). Default: any length."""

    def text_embeddings(self, prompt, device):
        """(text, uncond_text) embeddings, each (1, tokens, text_dim), of a text_context.PromptOptions,
        or None where the world has no text (its runs generate from the empty-prompt stand-in)."""
        if prompt.text is not None or prompt.negative is not None:
            raise ValueError(f"--prompt / --negative-prompt: this run's data.kind={self.kind} has no text "
                             f"encoder; prompts need a run trained on a world with captions")
        return None

    def pixel_decoder(self, vae, device):
        """An object whose `decode(chunk)` turns each generated chunk into pixel frames (keeping
        whatever state streaming needs), or None when the model generates pixels already. `vae`:
        a local weights folder overriding the world's own, or None."""
        if vae is not None:
            raise ValueError(f"--vae: this run's data.kind={self.kind} generates pixels; there is nothing to decode")
        return None
