"""Action spaces: what a player (or a logged policy) can do at each frame.

A world model is conditioned on one action per frame (model/action_embedding.py). Actions are
either discrete (an index in [0, n): buttons, keys) or continuous (a vector of `dim` floats:
a joystick, a mouse delta). Discrete actions are int64 (frames,); continuous ones float32
(frames, dim). The frame convention: action f is what was done between frame f - 1 and frame
f, so frame f is generated knowing it (frame 0's action is whatever the log says).

The NULL action (index -1 for discrete, the zero vector for continuous) means "no action
given": training replaces a clip's actions by it with probability `model.action_dropout`, so
the model also learns the action-free distribution and guidance over actions is possible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

NULL_ACTION = -1
"""The discrete null action (no action given); continuous actions use the zero vector."""

KINDS = ("none", "discrete", "continuous")


@dataclass
class ActionSpace:
    """What actions a world takes, and how a browser maps keys onto them."""

    kind: str = "none"
    """'none' (no actions), 'discrete' (an index in [0, n)) or 'continuous' (dim floats)."""
    n: int = 0
    """Discrete: the number of actions (buttons); may exceed what the game uses."""
    dim: int = 0
    """Continuous: the width of the action vector."""
    names: list[str] = field(default_factory=list)
    """Discrete: a name per action (n of them)."""
    keys: dict[str, str] = field(default_factory=dict)
    """Browser KeyboardEvent.key -> action name (discrete), e.g. ArrowLeft -> left."""
    default: int = 0
    """Discrete: the action taken when no key is held (e.g. noop)."""

    def validate(self, where: str = "action space") -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "discrete":
            if self.n < 1:
                raise ValueError(f"{where}: a discrete action space needs n >= 1 actions, got n={self.n}")
            if self.names and len(self.names) != self.n:
                raise ValueError(f"{where}: {len(self.names)} names for n={self.n} actions")
            unknown = sorted(set(self.keys.values()) - set(self.names))
            if unknown:
                raise ValueError(f"{where}: keys map to unknown actions {unknown} (names: {self.names})")
        if self.kind == "continuous" and self.dim < 1:
            raise ValueError(f"{where}: a continuous action space needs dim >= 1, got dim={self.dim}")

    @property
    def width(self) -> int:
        """The model's action_dim for this space: n (discrete), dim (continuous), 0 (none)."""
        return {"none": 0, "discrete": self.n, "continuous": self.dim}[self.kind]

    def index(self, name_or_index) -> int:
        """A discrete action from its name or index (ValueError naming the choices)."""
        if isinstance(name_or_index, str):
            if name_or_index not in self.names:
                raise ValueError(f"unknown action {name_or_index!r}; known: {self.names}")
            return self.names.index(name_or_index)
        i = int(name_or_index)
        if not (0 <= i < self.n or i == NULL_ACTION):
            raise ValueError(f"action {i} is outside the discrete action space [0, {self.n}) "
                             f"(or {NULL_ACTION}, the null action)")
        return i

    def check(self, actions: np.ndarray, frames: int | None, what: str) -> np.ndarray:
        """Actions of a clip or file checked against this space (shape, dtype, range); ValueError
        naming `what` otherwise. Returns them as int64 (frames,) or float32 (frames, dim)."""
        a = np.asarray(actions)
        if self.kind == "discrete":
            if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"{what}: discrete actions must be an integer array of shape (frames,), got "
                                 f"{a.dtype} of shape {a.shape}")
            bad = (a < 0) | (a >= self.n)
            if bad.any():
                raise ValueError(f"{what}: action {int(a[bad][0])} at frame {int(np.flatnonzero(bad)[0])} is "
                                 f"outside the discrete action space [0, {self.n})")
            a = a.astype(np.int64)
        elif self.kind == "continuous":
            if a.ndim != 2 or a.shape[1] != self.dim or not np.issubdtype(a.dtype, np.floating):
                raise ValueError(f"{what}: continuous actions must be float of shape (frames, {self.dim}), got "
                                 f"{a.dtype} of shape {a.shape}")
            if not np.isfinite(a).all():
                raise ValueError(f"{what}: continuous actions must be finite (found NaN/inf)")
            a = a.astype(np.float32)
        else:
            raise ValueError(f"{what}: this world has no action space (kind 'none')")
        if frames is not None and a.shape[0] != frames:
            raise ValueError(f"{what}: {a.shape[0]} actions for {frames} frames (one action per frame)")
        return a


NO_ACTIONS = ActionSpace()

ALIGNMENTS = ("produces_next", "produced_this")
"""What the action logged beside frame t of a recording is: the action taken after frame t,
which produces frame t + 1 (how gymnasium / ALE loops record (observation, action) pairs), or
the action that produced frame t (resforce's own convention)."""


def per_frame_actions(logged, alignment: str, what: str = "alignment") -> np.ndarray:
    """Logged actions as resforce's per-frame actions (entry f produced frame f). 'produced_this':
    as they are. 'produces_next': shifted one frame later: frame f gets logged action f - 1 and
    frame 0, which no logged action produced, the null action (-1 discrete, the zero vector
    continuous); the last logged action produced no frame and is dropped. Frames are the last
    axis of integer (discrete) actions, the second-to-last of float (continuous) ones, so one
    log (frames[, dim]) or a batch (videos, frames[, dim]) converts alike."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"{what} must be one of {', '.join(ALIGNMENTS)}, got {alignment!r}")
    a = np.asarray(logged)
    discrete = np.issubdtype(a.dtype, np.integer)
    axis = -1 if discrete else -2
    if alignment == "produced_this" or a.ndim < -axis or a.shape[axis] == 0:
        return a
    a = np.moveaxis(a, axis, 0)
    null = np.full_like(a[:1], NULL_ACTION) if discrete else np.zeros_like(a[:1])
    return np.moveaxis(np.concatenate([null, a[:-1]]), 0, axis)


def actions_of(info) -> torch.Tensor | None:
    """The per-frame actions a data stream's batch info carries (`info.actions`: (B, F) int64
    or (B, F, D) float32, numpy or torch), or None."""
    a = getattr(info, "actions", None)
    if a is None:
        return None
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))


def commanded_actions(model, info) -> torch.Tensor | None:
    """The actions a batch's info carries (actions_of) when `model` takes actions, else None:
    what an action model is commanded with when it replays ground-truth clips (evaluation,
    diagnostics, strength calibration), rather than its null action."""
    return actions_of(info) if model.config.action_kind != "none" else None


def null_actions(like: torch.Tensor) -> torch.Tensor:
    """The null action in the shape of `like` (discrete: -1s, continuous: zeros)."""
    return torch.full_like(like, NULL_ACTION) if not like.is_floating_point() else torch.zeros_like(like)


def drop_actions(actions: torch.Tensor, p: float, generator=None) -> torch.Tensor:
    """Each clip's actions replaced by the null action with probability p (one draw per clip;
    p = 0 draws nothing, so runs without dropout keep their random streams)."""
    if p <= 0:
        return actions
    keep = torch.rand(actions.shape[0], generator=generator, device=actions.device) >= p
    keep = keep.view(-1, *([1] * (actions.ndim - 1)))
    return torch.where(keep, actions, null_actions(actions))


def training_actions(info, model_cfg, device, generator=None) -> torch.Tensor | None:
    """The actions of one training micro-batch for the model (model.action_kind): the data's
    (info.actions), with per-clip action dropout; None for a model without actions (which
    then learns the world without them). Data without actions for an action model is a
    ValueError naming the fields."""
    if model_cfg.action_kind == "none":
        return None
    given = actions_of(info)
    if given is None:
        raise ValueError(f"model.action_kind={model_cfg.action_kind!r} but the data gives no actions (a world with "
                         f"an action space, or NAME.actions.npy sidecars beside a folder's videos)")
    return drop_actions(given.to(device), model_cfg.action_dropout, generator)
