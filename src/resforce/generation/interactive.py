"""Step-by-step generation for a player: one chunk per action, forever, in constant memory.

    session = InteractiveSession.from_run("src/resforce/assets/agent_balls/resampling_forcing.safetensors")
    first = session.reset(seed=0)          # (H, W, 3) uint8: the given first frame
    frame = session.step("left")           # (H, W, 3) uint8: the next frame, generated
    session.last_step_seconds              # wall time of that step

Each step denoises one chunk with `steps` Euler steps against a KV cache that rolls at the
run's training context (the cache keeps the last context - 1 chunks: rollout.py's rolling
context), so memory and time per step stay constant however long one plays. The chunk is
then committed to the cache with the actions it was made with, exactly as a rollout of the
same actions would (tests/generation/test_interactive.py proves the two equal).

Frames come back as uint8 (H, W, 3), ready to encode for display. With frames_per_chunk > 1
a step takes one action per frame of the chunk (or one action for all of them) and returns
the chunk's last frame; `last_chunk` holds all of them (frames_per_chunk, H, W, 3).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from resforce.actions import NO_ACTIONS, ActionSpace
from resforce.io.weights import load_model
from resforce.flow import euler_grid, grid_schedule
from resforce.model.dit import CausalVideoDiT
from resforce.rollout import video_actions, write_chunk, chunk_step
from resforce.generation.session import rolling_session
from resforce.model.attention.policy import AttentionPolicy
from resforce.worlds import world_of


@dataclass
class StepTiming:
    """Where the time of the last step went (seconds)."""

    denoise: float = 0.0
    """The Euler steps (steps model calls on one chunk against the cache)."""
    commit: float = 0.0
    """Writing the finished chunk's keys/values to the cache (one model call)."""

    @property
    def total(self) -> float:
        return self.denoise + self.commit


def frames_to_uint8(video: torch.Tensor) -> np.ndarray:
    """(C, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    v = video.detach().float().clamp(-1, 1).cpu().numpy()
    return np.rint((v.transpose(1, 2, 3, 0) + 1.0) * 127.5).astype(np.uint8)


def frames_from_uint8(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (3, F, H, W) float32 in [-1, 1]."""
    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"prefix frames must be uint8 (frames, H, W, 3), got {a.dtype} of shape {a.shape}")
    return torch.from_numpy(a.transpose(3, 0, 1, 2).astype(np.float32) / 127.5 - 1.0)


class InteractiveSession:
    """A model played one chunk at a time (see the module doc)."""

    def __init__(self, model: CausalVideoDiT, cfg, steps: int = 4, shift: float | None = None,
                 context_chunks: int | None = None, seed: int = 0, cfg_scale: float = 1.0, device="cpu",
                 prefix: np.ndarray | torch.Tensor | None = None) -> None:
        """`prefix`: the frames the session starts from (see `reset`); None: the world's."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1 Euler step per chunk, got {steps}")
        self.model, self.cfg, self.device = model.eval(), cfg, torch.device(device)
        self.world = world_of(cfg.data)
        self.steps, self.shift = steps, float(cfg.sample.shift if shift is None else shift)
        if context_chunks is not None and context_chunks < 2:
            raise ValueError(f"context must be >= 2 chunks (the chunk and some history), got {context_chunks}")
        # the run's rolling session (context, sink, history attention, history noise), as
        # `generate` rolls it out; only the context can be changed here
        sample = cfg.sample if context_chunks is None else dataclasses.replace(cfg.sample, context=context_chunks)
        self.session = rolling_session(cfg, sample)
        self.context_chunks = self.session.context_chunks
        if self.context_chunks < 2:
            raise ValueError(f"context must be >= 2 chunks (the chunk and some history), got {self.context_chunks}")
        self.policy = AttentionPolicy(self.session.attention)
        self.cfg_scale = cfg_scale
        if cfg_scale != 1.0 and model.config.action_kind == "none":
            raise ValueError("cfg_scale != 1 guides over actions: this model has none")
        self.height, self.width = self.world.resolution
        self.grid = euler_grid(steps, self.shift)
        self.timing = StepTiming()
        self.seed = int(seed)
        self.reset(prefix=prefix)

    @classmethod
    def from_run(cls, path, steps: int = 4, shift: float | None = None, context_chunks: int | None = None,
                 seed: int = 0, cfg_scale: float = 1.0, device="cpu", prefer_ema: bool = True) -> "InteractiveSession":
        """A session on a run directory, checkpoint directory or exported .safetensors file."""
        model, cfg = load_model(path, device, prefer_ema)
        return cls(model, cfg, steps, shift, context_chunks, seed, cfg_scale, device)

    # -- what the player can do -----------------------------------------------------------
    @property
    def action_space(self) -> ActionSpace:
        """The world's actions (names, browser key map); kind 'none' for a model without."""
        return self.world.action_space if self.model.config.action_kind != "none" else NO_ACTIONS

    @property
    def last_step_seconds(self) -> float:
        return self.timing.total

    @property
    def frames_per_chunk(self) -> int:
        return self.model.config.frames_per_chunk

    def reset(self, seed: int | None = None, prefix: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """Start over: an empty cache, the noise stream from `seed`, and the given frames.
        prefix: uint8 (F, H, W, 3) or float (3, F, H, W) in [-1, 1], F a whole number of chunks;
        None: the world's first frame(s) from `seed` (its simulator, else its evaluation clips).
        Returns the last given frame (H, W, 3) uint8."""
        if seed is not None:
            self.seed = int(seed)
        fpc = self.frames_per_chunk
        video = self._prefix(prefix)
        if video.shape[0] != self.model.config.in_channels or video.shape[-2:] != (self.height, self.width) \
                or video.shape[1] == 0 or video.shape[1] % fpc:
            raise ValueError(f"prefix must be {self.model.config.in_channels} x (a multiple of {fpc} frames) x "
                             f"{self.height} x {self.width}, got (C, F, H, W) = {tuple(video.shape)}")
        guide = self.cfg_scale != 1.0
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        keep, sink = self.context_chunks - 1, self.session.sink_chunks
        self.cache = self.model.new_cache(self.height, self.width, keep, sink, capacity=self.context_chunks)
        self.frame_index = video.shape[1]
        with torch.no_grad():
            for i in range(video.shape[1] // fpc):
                chunk = video[None, :, i * fpc:(i + 1) * fpc].to(self.device)
                write_chunk(self.model, chunk, self.cache, None, self.session.sample.history_noise, self.generator,
                       self.policy, guide,
                       self._actions(self.action_space.default if self.action_space.kind == "discrete" else None))
        self.last_chunk = frames_to_uint8(video[:, -fpc:])
        return self.last_chunk[-1]

    def step(self, action=None) -> np.ndarray:
        """Generate the next chunk under `action` (a name or index of action_space.names, a
        list of one per frame of the chunk, a vector for continuous actions; None: the null
        action, i.e. the model's own guess). Returns its last frame, (H, W, 3) uint8."""
        fpc, mc = self.frames_per_chunk, self.model.config
        acts = self._actions(action)
        noise = torch.randn((1, mc.in_channels, fpc, self.height, self.width), generator=self.generator,
                            device=self.device)
        with torch.no_grad():
            t0 = time.perf_counter()
            chunk = chunk_step(self.model, noise, grid_schedule(self.grid, 1, self.device), self.cache, None,
                               self.policy, cfg_scale=self.cfg_scale, commit=False, actions=acts)
            t1 = time.perf_counter()
            write_chunk(self.model, chunk, self.cache, None, self.session.sample.history_noise, self.generator,
                   self.policy, self.cfg_scale != 1.0, acts)
            t2 = time.perf_counter()
        self.timing = StepTiming(denoise=t1 - t0, commit=t2 - t1)
        self.frame_index += fpc
        self.last_chunk = frames_to_uint8(chunk[0].clamp(-1, 1))
        return self.last_chunk[-1]

    # -- helpers ----------------------------------------------------------------------------
    def _prefix(self, prefix) -> torch.Tensor:
        fpc = self.frames_per_chunk
        if prefix is None:
            sim = self.world.simulator(self.seed)
            if sim is not None:
                frames = [sim.frame] + [sim.step(sim.action_space.default) for _ in range(fpc - 1)]
                return torch.from_numpy(np.stack(frames, axis=1))
            video, _ = self.world.clips(1, fpc, self.seed)
            if video is None:
                raise ValueError(f"data.kind={self.cfg.data.kind} has no ground truth to start from: pass a prefix "
                                 f"(resforce play RUN --prefix FILE: a video whose frames start the session)")
            return video[0]
        if isinstance(prefix, np.ndarray) and prefix.dtype == np.uint8:
            return frames_from_uint8(prefix)
        return torch.as_tensor(prefix, dtype=torch.float32)

    def _actions(self, action) -> torch.Tensor | None:
        """One chunk's actions (1 or 2 for guidance, frames_per_chunk[, D]) from what a player gives."""
        space, fpc = self.action_space, self.frames_per_chunk
        if space.kind == "none":
            if action is not None:
                raise ValueError("this model takes no actions (model.action_kind='none')")
            return None
        if action is None:
            a = None
        elif space.kind == "discrete":
            many = isinstance(action, (list, tuple, np.ndarray, torch.Tensor)) and np.ndim(action) == 1
            items = list(action) if many else [action] * fpc
            if len(items) != fpc:
                raise ValueError(f"give one action or one per frame of the chunk ({fpc}), got {len(items)}")
            a = torch.tensor([[space.index(x) for x in items]], dtype=torch.long)
        else:
            v = torch.as_tensor(action, dtype=torch.float32)
            v = v.expand(fpc, -1) if v.ndim == 1 else v
            if v.shape != (fpc, space.dim):
                raise ValueError(f"a continuous action is a vector of {space.dim} (or {fpc} of them), got {tuple(v.shape)}")
            a = v[None]
        return video_actions(self.model, a, 1, fpc, self.device, self.cfg_scale != 1.0)
