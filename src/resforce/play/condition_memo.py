"""Skip the condition embedder when its inputs repeat: a memo for playing on the CPU.

A played world model calls its condition embedder (timestep features -> MLP, the action
embedding, the 6-way AdaLN projection) once per model call, and the inputs repeat: the Euler
grid is the same every frame and a player has a handful of actions, so (steps + 1) x actions
distinct inputs cover a whole session. The memo keys each call on the exact bytes of t and
the actions and returns the stored outputs; the outputs are the same tensors the embedder
made, so what the model computes is unchanged bit for bit (tests/play/test_condition_memo.py).

Applied from outside (the model's code is untouched), only to a model in eval mode under
no_grad, with no text context (a prompt would be one more key). The key reads t and the
actions back to the host: free on the CPU, a sync per call on a GPU, where this is not
meant to be used.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

MAX_ENTRIES = 256
"""Distinct (t, actions) inputs kept (least recently used dropped): bounded memory."""


def _key(t: torch.Tensor, actions: torch.Tensor | None) -> tuple:
    parts = [(str(t.dtype), tuple(t.shape), t.detach().cpu().numpy().tobytes())]
    if actions is not None:
        parts.append((str(actions.dtype), tuple(actions.shape), actions.detach().cpu().numpy().tobytes()))
    return tuple(parts)


class ConditionMemo:
    """Counts hits and misses; `remove()` puts the embedder's own forward back."""

    def __init__(self, model) -> None:
        if model.training:
            raise ValueError("the conditioning memo is for a model in eval mode (call model.eval() first)")
        if model.config.text_dim > 0:
            raise ValueError("the conditioning memo keys on t and actions only: not for a model with text "
                             f"cross-attention (model.text_dim={model.config.text_dim})")
        self.embedder = model.condition_embedder
        self.original = self.embedder.forward
        self.entries: OrderedDict = OrderedDict()
        self.hits = self.misses = 0
        self.embedder.forward = self._forward  # an instance attribute: nn.Module.__call__ finds it first

    def _forward(self, t, context, actions=None):
        if context is not None or torch.is_grad_enabled():  # not what it was made for: compute
            return self.original(t, context, actions)
        key = _key(t, actions)
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
            self.hits += 1
            return hit
        self.misses += 1
        out = self.original(t, context, actions)
        self.entries[key] = out
        if len(self.entries) > MAX_ENTRIES:
            self.entries.popitem(last=False)
        return out

    def remove(self) -> None:
        if self.embedder.__dict__.get("forward") == self._forward:
            del self.embedder.forward
        self.entries.clear()


def memoize_conditioning(model) -> ConditionMemo:
    """Memoize `model`'s condition embedder (see the module doc); returns the memo."""
    return ConditionMemo(model)
