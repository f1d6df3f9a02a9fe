"""LargestOutput: the largest tensor any op returns, forward and backward (a TorchDispatchMode).

The memory proofs use it: no op of a chunked / grouped attention pass may return a tensor of
S x S elements, while the dense-mask references do (the positive control)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LargestOutput(TorchDispatchMode):
    """Records the largest numel of any op output and the op's name."""

    def __init__(self):
        super().__init__()
        self.numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.op = t.numel(), str(func)
        return out
