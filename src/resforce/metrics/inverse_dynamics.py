"""Action following of any video with actions, by an inverse-dynamics classifier.

A small conv net looks at two consecutive frames (frame f - 1, frame f and their difference)
and names the action that produced frame f (resforce.actions: action f is what was done
between frame f - 1 and frame f). It is trained on the ground truth of a world (its training
stream's clips and their actions: any world with a discrete action space, a video folder
with action sidecars included), then scores videos against the actions they were commanded:

  ceiling: its accuracy on held-out ground-truth clips (what perfect videos would score;
           below 1 where actions look alike, e.g. FIRE and NOOP mid-rally in Pong);
  videos:  its accuracy on the videos scored, against their own actions;
  floor:   the same videos against the actions of an independent ground-truth clip (what a
           video that ignores its actions scores).

A video follows its actions as far as it lies above the floor, toward the ceiling. Sizes are
kept small for the CPU (three 3x3 conv layers, about 40k parameters; a few hundred steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from resforce.actions import NULL_ACTION

IDM_SEED = 424_243
"""Stream seed offset of the classifier's training clips (apart from training and evaluation)."""
DIFF_GAIN = 8.0
"""The difference channels are scaled up: a move of a small object changes few pixels."""


class InverseDynamics(nn.Module):
    """(B, 3C, H, W) = [frame f - 1, frame f, difference] -> (B, n) logits of action f."""

    def __init__(self, channels: int, n: int, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3 * channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool2d(4), nn.Flatten(), nn.Linear(2 * width * 16, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def pairs(videos, actions) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B * (F - 1), 3C, H, W) of every pair of consecutive frames of videos (B, C, F, H, W)
    in [-1, 1], and the action that produced the second frame, (B * (F - 1),) int64 (-1: none)."""
    v = torch.as_tensor(np.asarray(videos) if not isinstance(videos, torch.Tensor) else videos).float()
    a = torch.as_tensor(np.asarray(actions)).long()
    prev, cur = v[:, :, :-1], v[:, :, 1:]
    x = torch.cat([prev, cur, DIFF_GAIN * (cur - prev)], dim=1)  # (B, 3C, F-1, H, W)
    x = x.permute(0, 2, 1, 3, 4).flatten(0, 1)
    return x, a[:, 1:].flatten()


@dataclass
class Classifier:
    """A trained inverse-dynamics model and its accuracy on held-out ground truth (the ceiling)."""

    model: InverseDynamics
    n: int
    ceiling: float
    steps: int

    @torch.no_grad()
    def correct(self, videos, actions) -> np.ndarray:
        """(B, F - 1) 1.0 where the predicted action of frame f (f >= 1) is actions[:, f], 0.0 where
        not, NaN where actions[:, f] is the null action."""
        x, y = pairs(videos, actions)
        self.model.eval()
        pred = torch.cat([self.model(c).argmax(-1) for c in x.split(512)])
        out = (pred == y).double().numpy()
        out[(y == NULL_ACTION).numpy()] = np.nan
        b = np.asarray(actions).shape[0]
        return out.reshape(b, -1)


def _actions(info) -> np.ndarray:
    a = getattr(info, "actions", None)
    if a is None:
        raise ValueError("inverse dynamics: the world's clips carry no actions")
    return np.asarray(a.numpy() if isinstance(a, torch.Tensor) else a)


def train_inverse_dynamics(world, steps: int = 400, clips: int = 128, frames: int = 9, seed: int = 0,
                           lr: float = 5e-3, batch: int = 64, held_out: int = 32) -> Classifier:
    """Train the classifier for `steps` minibatches of `batch` frame pairs drawn from `clips`
    ground-truth clips of `frames` frames of the world's stream, then measure it on `held_out`
    clips of another stream seed (the ceiling). Deterministic in `seed`."""
    space = world.action_space
    if space.kind != "discrete":
        raise ValueError(f"inverse dynamics: data.kind={world.kind} has {space.kind!r} actions; the classifier "
                         f"needs discrete actions (a world with an action space, or action sidecars)")
    if steps < 1:
        raise ValueError(f"--inverse-dynamics must be >= 1 training step, got {steps}")
    videos, info = world.stream(seed + IDM_SEED).batch(clips, frames)
    x, y = pairs(videos, _actions(info))
    x, y = x[y != NULL_ACTION], y[y != NULL_ACTION]
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = InverseDynamics(world.channels, space.n)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(y), (batch,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    videos, info = world.stream(seed + IDM_SEED + 1).batch(held_out, frames)
    c = Classifier(model, space.n, float("nan"), steps)
    c.ceiling = float(np.nanmean(c.correct(videos, _actions(info))))
    return c


def action_following(classifier: Classifier, videos, actions, world, given_frames: int = 1,
                     seed: int = 0) -> dict[str, float]:
    """Accuracy of the classifier on videos (B, C, F, H, W) against their actions (B, F), over
    the generated frames (f >= given_frames, f >= 1), next to its ceiling and the floor (the
    same frames against the actions of independent ground-truth clips of the world).
    per_sample: each video's own accuracy and floor (its frames' mean; NaN for a video with no
    scored frame), so two models rolled out on the same seeds can be compared paired."""
    actions = np.asarray(actions)
    b, frames = actions.shape
    first = max(given_frames, 1) - 1  # correct()'s column j scores frame j + 1
    own = classifier.correct(videos, actions)[:, first:]
    _, info = world.stream(seed + IDM_SEED + 2).batch(b, frames)
    other = _actions(info)
    floor = classifier.correct(videos, other)[:, first:]
    return {"ceiling": classifier.ceiling, "videos": float(np.nanmean(own)), "floor": float(np.nanmean(floor)),
            "frames_scored": int(np.isfinite(own).sum()), "steps": classifier.steps,
            "per_sample": {"videos": _row_means(own), "floor": _row_means(floor)}}


def _row_means(a: np.ndarray) -> list:
    """Per-row nanmean as a JSON-ready list (None where a row has no finite value)."""
    out = []
    for row in a:
        ok = np.isfinite(row)
        out.append(float(row[ok].mean()) if ok.any() else None)
    return out


def describe(result: dict[str, float]) -> str:
    """One line of action_following's numbers."""
    return (f"action following (inverse dynamics, {result['steps']} steps on ground truth; accuracy of the action "
            f"that produced each frame): ground truth {result['ceiling']:.3f} (ceiling), these videos "
            f"{result['videos']:.3f}, against another episode's actions {result['floor']:.3f} (floor); "
            f"{result['frames_scored']} frames")
