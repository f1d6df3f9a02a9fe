"""What `resforce play` plays: a FrameSource makes frames one action at a time.

The play server (play/server.py) knows only this protocol, so the same page plays the
ground truth of a built-in world (`WorldSource`: the world's simulator, for comparison and to
develop without a trained model) and a trained world model (`ModelSource`: an
InteractiveSession rolling out chunk by chunk over a rolling KV cache).

A source returns frames as it makes them (float (3, H, W) or (3, F, H, W) in [-1, 1], like a
simulator, or uint8 (H, W, 3) or (F, H, W, 3), like an InteractiveSession); `display_frames`
turns either into the (H, W, 3) uint8 frames the page shows, one per video frame (a chunk of
several frames is several frames).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from resforce.actions import ActionSpace


class FrameSource(Protocol):
    """Something a player steers: reset(seed) -> first frame(s), step(action index) -> next."""

    action_space: ActionSpace
    description: str
    """What is being played, for the page's title line."""

    def reset(self, seed: int) -> Any: ...

    def step(self, action: int) -> Any: ...


def display_frames(frames) -> list[np.ndarray]:
    """A source's output, float (3, H, W) or (3, F, H, W) (or with a leading batch of 1) in
    [-1, 1], or uint8 (H, W, 3) or (F, H, W, 3), as a list of contiguous (H, W, 3) uint8 frames."""
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8:
        f = frames[None] if frames.ndim == 3 else frames
        if f.ndim != 4 or f.shape[-1] != 3:
            raise ValueError(f"a frame source's uint8 frames must be (H, W, 3) or (F, H, W, 3), got shape {frames.shape}")
        return [np.ascontiguousarray(x) for x in f]
    f = frames.detach().float().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if f.ndim in (4, 5) and f.shape[0] == 1:  # a batch of one ((1, 3, ...): RGB is never axis 0 of size 1)
        f = f[0]
    if f.ndim == 3:
        f = f[:, None]
    if f.ndim != 4 or f.shape[0] != 3:
        raise ValueError(f"a frame source must return RGB frames (3, H, W) or (3, F, H, W), got shape {f.shape}")
    u8 = np.clip(np.rint((f + 1.0) * 127.5), 0, 255).astype(np.uint8)  # (3, F, H, W)
    return [np.ascontiguousarray(u8[:, i].transpose(1, 2, 0)) for i in range(u8.shape[1])]


def check_playable(space: ActionSpace, what: str) -> ActionSpace:
    """The page maps keys and buttons to discrete actions: other spaces are refused here."""
    if space.kind == "none":
        raise ValueError(f"{what}: a model trained without actions (model.action_kind='none') cannot be "
                         f"steered; train one on a world with actions, e.g. configs/agent_resampling.yaml")
    if space.kind != "discrete":
        raise ValueError(f"{what}: resforce play maps keys to discrete actions; this model takes "
                         f"{space.kind} actions")
    return space


class WorldSource:
    """The ground truth of a built-in controllable world (its `simulator`): `KIND`, or
    `KIND:ARGUMENT` for a world configured by one (`atari:pong`: the game)."""

    def __init__(self, kind: str, seed: int = 0) -> None:
        from resforce.config import DataConfig
        from resforce.worlds import WORLDS, world_of

        spec = kind
        kind, _, argument = spec.partition(":")
        playable = sorted(k for k, w in WORLDS.items() if w.playable)
        if kind not in playable:
            raise ValueError(f"--world {spec!r}: not a controllable world; playable worlds: {', '.join(playable)} "
                             f"(atari:GAME for an Atari game, e.g. atari:pong)")
        data = DataConfig(kind=kind)
        if argument:
            setattr(data, kind, WORLDS[kind].config_for(argument))
        world = world_of(data)
        self.simulator = world.simulator(seed)
        self.action_space = check_playable(world.action_space, f"--world {spec}")
        what = f"{kind} world" + (f", {argument}" if argument else "")
        self.description = f"ground truth of the {what}"

    def reset(self, seed: int):
        return self.simulator.reset(seed)

    def step(self, action: int):
        return self.simulator.step(action)


class ModelSource:
    """A trained world model (interactive.InteractiveSession: one chunk per action, rolling
    context of the training length, so memory stays constant however long it is played)."""

    def __init__(self, session, what: str = "the session", guidance: float = 1.0, prefix=None) -> None:
        """A source over an InteractiveSession already made (`from_run` loads one from a path);
        `what` names it in messages; `prefix`: float (3, F, H, W) frames every episode starts
        from (None: the world's first frame(s) of the seed)."""
        self.session = session
        self.prefix = prefix
        if session.model.config.text_dim == 0:
            from resforce.play.condition_memo import memoize_conditioning

            # the Euler grid and the actions repeat: skip the condition embedder for inputs it has seen
            self.memo = memoize_conditioning(session.model)
        self.action_space = check_playable(session.action_space, what)
        guided = f", action guidance {guidance:g}" if guidance != 1.0 else ""
        self.description = (f"world model {what.removeprefix('RUN ')} ({session.steps} Euler steps a frame, "
                            f"shift {session.shift:g}, context {session.context_chunks} chunks{guided})")

    @classmethod
    def from_run(cls, run: str | Path, steps: int | None = None, seed: int = 0, context_chunks: int | None = None,
                 cfg_scale: float = 1.0, shift: float | None = None, prefix: str | Path | None = None) -> "ModelSource":
        """steps None: the session's default (4 Euler steps, what the agent recipes sample with);
        shift None: the run's sample.shift.
        cfg_scale != 1: guidance over actions (the action-free branch runs in the same batch)."""
        if not Path(run).exists():
            raise ValueError(f"RUN {run}: no such run directory, checkpoint directory or .safetensors file")
        from resforce.generation.interactive import InteractiveSession

        kwargs = {"seed": seed, "context_chunks": context_chunks, "cfg_scale": cfg_scale, "shift": shift}
        if steps is not None:
            kwargs["steps"] = steps
        if prefix is None:
            return cls(InteractiveSession.from_run(run, **kwargs), f"RUN {run}", cfg_scale)
        from resforce.io.weights import load_model
        from resforce.worlds import world_of

        model, cfg = load_model(run, "cpu", True)
        video = load_prefix(prefix, model.config.in_channels, world_of(cfg.data).resolution,
                            model.config.frames_per_chunk)
        return cls(InteractiveSession(model, cfg, prefix=video, **kwargs), f"RUN {run}", cfg_scale, video)

    def reset(self, seed: int):
        self.session.reset(seed, prefix=self.prefix)  # --prefix, else the world's first frame(s) of this seed
        return self.session.last_chunk  # (frames_per_chunk, H, W, 3) uint8: every frame, not only the last

    def step(self, action: int):
        self.session.step(action)
        return self.session.last_chunk


def load_prefix(path: str | Path, channels: int, resolution: tuple[int, int], frames_per_chunk: int) -> torch.Tensor:
    """--prefix FILE: a video's frames (float (3, F, H, W) in [-1, 1]) for a session: at the
    model's resolution (or an integer upscale of it, as `resforce generate` writes), its last
    whole chunks kept. ValueError naming the file otherwise."""
    from resforce.cli.score import load_video_array, to_world_resolution

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--prefix {path}: no such file")
    try:
        video = load_video_array(p)[0]
    except (ValueError, OSError) as e:
        raise ValueError(f"--prefix {path}: cannot read it as a video ({e})") from None
    video, _ = to_world_resolution(video, tuple(resolution))
    h, w = resolution
    if video.shape[0] != channels or video.shape[-2:] != (h, w) or video.shape[1] < frames_per_chunk:
        raise ValueError(f"--prefix {path}: expected at least {frames_per_chunk} frame(s) of {channels} x {h} x {w} "
                         f"(the model's frames, or an integer upscale of them), got (C, F, H, W) = {tuple(video.shape)}")
    keep = video.shape[1] - video.shape[1] % frames_per_chunk
    return torch.from_numpy(np.ascontiguousarray(video[:, -keep:]))
