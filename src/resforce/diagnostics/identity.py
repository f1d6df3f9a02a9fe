"""Identity sensitivity: do a continuation's colours follow its history's colours?

Recolour the given history H with a colour transform P (by default a cyclic permutation of
the RGB channels: red -> blue -> green -> red; it maps a palette of primary and secondary
colours on a black background, such as the bouncing-balls world's, onto itself, so P(H) is
as plausible a history as H), generate the continuation from H and from P(H) with the same
noise, and score per chunk after the prefix

    follow = 1 - d(gen(P(H)), P(gen(H))) / d(gen(H), P(gen(H)))

with d the per-pixel squared error summed over the samples and the chunk's pixels (a ratio
of sums, so frames where P changes nothing, e.g. an empty frame, weigh nothing).

- follow = 1: the continuation of the recoloured history is the recoloured continuation:
  the colours come from the history (a model that copies its history scores exactly 1).
- follow = 0: the continuation is the same whatever the history's colours (a model that
  ignores them, e.g. one that always draws the same colour, scores exactly 0).
- follow < 0: it moves even further from P(gen(H)) than gen(H) is.

The score compares pixels, so it is high only where the same noise gives the same motion
from H and from P(H); a model whose motion depends on the colours loses follow score for that
too, so read it next to the rollouts' colour metrics.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from resforce.rollout import SampleConfig, rollout

PERMUTATIONS = {"gbr": (1, 2, 0), "brg": (2, 0, 1), "rbg": (0, 2, 1), "bgr": (2, 1, 0), "grb": (1, 0, 2)}
"""Channel permutations by name: the new R, G, B are the old channels at these indices."""


def permute_channels(video: torch.Tensor, perm=(1, 2, 0)) -> torch.Tensor:
    """`video` (B, 3, F, H, W) with its channels permuted: out[:, k] = video[:, perm[k]]."""
    if sorted(perm) != list(range(video.shape[1])):
        raise ValueError(f"perm {tuple(perm)} is not a permutation of the video's {video.shape[1]} channels")
    return video[:, list(perm)]


def follow_score(gen_h: torch.Tensor, gen_ph: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor],
                 frames_per_chunk: int) -> dict:
    """The follow score per chunk of two continuations (B, C, F, H, W), gen(H) and
    gen(P(H)), under the transform P: {"follow": [per chunk], "follow_mean": over all chunks,
    "moved": [d(gen(H), P(gen(H))) per chunk, per pixel: how much P changes the continuation]}."""
    if gen_h.shape != gen_ph.shape:
        raise ValueError(f"continuations of different shapes: {tuple(gen_h.shape)} vs {tuple(gen_ph.shape)}")
    gen_h, gen_ph = gen_h.float(), gen_ph.float()
    p_gen = transform(gen_h)
    b, c, f, h, w = gen_h.shape
    n = f // frames_per_chunk

    def per_chunk(x):  # squared error summed over samples and each chunk's pixels: (n,)
        return x.pow(2)[:, :, :n * frames_per_chunk].reshape(b, c, n, frames_per_chunk, h, w).sum(dim=(0, 1, 3, 4, 5))

    num, den = per_chunk(gen_ph - p_gen), per_chunk(gen_h - p_gen)
    follow = [1 - a / d if d > 0 else math.nan for a, d in zip(num.tolist(), den.tolist())]
    total = den.sum().item()
    mean = 1 - num.sum().item() / total if total > 0 else math.nan
    size = b * c * frames_per_chunk * h * w
    return {"follow": follow, "follow_mean": mean, "moved": (den / size).tolist()}


def identity_sensitivity(generate: Callable[[torch.Tensor], torch.Tensor], history: torch.Tensor,
                         frames_per_chunk: int,
                         transform: Callable[[torch.Tensor], torch.Tensor] = permute_channels) -> dict:
    """follow_score of the continuations `generate` makes from `history` (B, C, F, H, W) and
    from transform(history). `generate(history)` returns the continuation only (B, C, F', H,
    W), and must use the same noise on every call (a fixed seed)."""
    gen_h = generate(history)
    gen_ph = generate(transform(history))
    return follow_score(gen_h, gen_ph, transform, frames_per_chunk)


def model_generator(model, chunks: int, steps: int, shift: float, seed: int = 0, context: int = 0,
                    attention=None, actions: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """generate(history) for identity_sensitivity: `chunks` new chunks after the history from
    a model, the same noise every call (seed), clamped to [-1, 1]. context: chunks seen at
    once (0 = all history). actions: an action model's per-frame actions (B, F[, D]) of the
    history's frames and the generated ones, the same every call."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def generate(history: torch.Tensor) -> torch.Tensor:
        b, _, f, h, w = history.shape
        s = SampleConfig(chunks=chunks, steps=steps, shift=shift, seed=seed, context=context)
        a = None if actions is None else actions[:, :f + chunks * model.config.frames_per_chunk].to(device)
        video = rollout(model, b, h, w, s, prefix=history.to(device), attention=attention, device=device, actions=a)
        return video[:, :, f:].clamp(-1, 1).cpu()

    return generate
