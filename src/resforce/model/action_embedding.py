"""Per-frame action conditioning: actions -> one vector per chunk, added to the timestep
embedding so they reach every block through the chunk's AdaLN modulation (and the output
head), as Oasis, DIAMOND and Matrix-Game condition on actions.

Discrete actions (B, F) int64 in [0, n) go through an embedding table with one extra row,
the null action (index -1, resforce.actions.NULL_ACTION); continuous actions (B, F, D) go
through a bias-free linear layer, so the null action, the zero vector, embeds to zero. With
several frames per chunk, the frames' embeddings are concatenated in order and projected to
one (`merge`), so the chunk knows which of its frames took which action.

Causality comes for free: a chunk's modulation is made from its own frames' actions only,
and the attention layouts let chunk i see chunks <= i, so chunk i's output depends on the
actions of frames in chunks <= i and never on later ones (tests/method/test_actions_model.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn

ACTION_KINDS = ("none", "discrete", "continuous")


class ActionEmbedder(nn.Module):
    def __init__(self, kind: str, width: int, dim: int, frames_per_chunk: int):
        super().__init__()
        if kind not in ("discrete", "continuous"):
            raise ValueError(f"model.action_kind must be one of {ACTION_KINDS}, got {kind!r}")
        self.kind, self.width, self.fpc = kind, width, frames_per_chunk
        if kind == "discrete":
            self.table = nn.Embedding(width + 1, dim)  # the last row is the null action
            nn.init.normal_(self.table.weight, std=0.02)
        else:
            self.proj = nn.Linear(width, dim, bias=False)
        self.merge = nn.Linear(frames_per_chunk * dim, dim) if frames_per_chunk > 1 else None

    @property
    def weight_dtype(self) -> torch.dtype:
        return (self.table if self.kind == "discrete" else self.proj).weight.dtype

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, F) or (B, F, D) per-frame actions -> (B, F / frames_per_chunk, dim) float32."""
        if self.kind == "discrete":
            index = torch.where(actions < 0, self.width, actions)  # null -> the extra row
            e = self.table(index)
        else:
            e = self.proj(actions.to(self.weight_dtype))
        e = e.unflatten(1, (-1, self.fpc)).flatten(2)  # (B, chunks, fpc * dim)
        if self.merge is not None:
            e = self.merge(e.to(self.merge.weight.dtype))
        return e.float()

    def check(self, actions: torch.Tensor, batch: int, frames: int, what: str = "actions") -> None:
        """Shape and dtype of actions for a video of `frames` frames (ValueError naming `what`)."""
        if self.kind == "discrete":
            ok = actions.shape == (batch, frames) and not actions.is_floating_point()
            want = f"({batch}, {frames}) integers"
        else:
            ok = actions.shape == (batch, frames, self.width) and actions.is_floating_point()
            want = f"({batch}, {frames}, {self.width}) floats"
        if not ok:
            raise ValueError(f"{what} must be {want} (one per frame, model.action_kind={self.kind}), got "
                             f"{actions.dtype} of shape {tuple(actions.shape)}")


def null_actions_for(kind: str, width: int, batch: int, frames: int, device=None) -> torch.Tensor:
    """The null action for every frame: (B, F) -1s (discrete) or (B, F, D) zeros (continuous)."""
    if kind == "discrete":
        return torch.full((batch, frames), -1, dtype=torch.long, device=device)
    return torch.zeros(batch, frames, width, device=device)
