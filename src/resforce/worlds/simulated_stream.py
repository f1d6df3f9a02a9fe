"""SimulatedStream: the seeded, infinite, resumable training stream of a simulated world.

A simulated world draws each clip from one numpy generator (`simulate(config, rng, frames)`),
so the stream's position is that generator's state: state_dict() captures it and a resumed run
sees exactly the clips it would have seen. Use it in one process: copies of the generator in
worker processes would repeat the same clips. Subclasses name their config class, their
simulate function and their states class (which stacks clips' states with `stack`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from resforce.worlds.config_coerce import coerce_config


class SimulatedStream:
    config_class: type
    """The world's config dataclass (its `seed` seeds the stream)."""
    states_class: type
    """The per-clip ground truth; `states_class.stack(list)` adds a leading batch axis."""
    simulate: Callable[[Any, np.random.Generator, int], tuple[np.ndarray, Any]]
    """(config, rng, frames) -> (frames (F, 3, H, W) float32 in [-1, 1], states)."""

    def __init__(self, config: Any | Mapping[str, Any] | None = None, num_frames: int = 16) -> None:
        cls = self.config_class
        self.config = coerce_config(cls() if config is None else config, cls)
        self.num_frames = num_frames
        self.rng = np.random.default_rng(self.config.seed)
        self.clips_emitted = 0

    def sample(self, num_frames: int | None = None) -> tuple[torch.Tensor, Any]:
        """Next clip of the stream: ((3, F, H, W) tensor, ground truth)."""
        frames, states = type(self).simulate(self.config, self.rng, num_frames or self.num_frames)
        self.clips_emitted += 1
        return torch.from_numpy(frames).permute(1, 0, 2, 3).contiguous(), states

    def batch(self, batch_size: int, num_frames: int | None = None) -> tuple[torch.Tensor, Any]:
        """Next `batch_size` clips: ((B, 3, F, H, W) tensor, states with a leading B axis)."""
        clips = [self.sample(num_frames) for _ in range(batch_size)]
        return torch.stack([c[0] for c in clips]), self.states_class.stack([c[1] for c in clips])

    def state_dict(self) -> dict[str, Any]:
        """Stream position: the generator state plus bookkeeping (data only, for checkpoints)."""
        return {"seed": self.config.seed, "clips_emitted": self.clips_emitted,
                "bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the stream exactly where state_dict() was taken."""
        name = state["bit_generator"]["bit_generator"]
        if name != type(self.rng.bit_generator).__name__:
            raise ValueError(f"state_dict bit generator {name!r} does not match this stream's")
        self.rng.bit_generator.state = state["bit_generator"]
        self.clips_emitted = int(state["clips_emitted"])
