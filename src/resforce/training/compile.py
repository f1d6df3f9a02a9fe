"""Regional compilation: torch.compile of each transformer block (torchtitan's choice), not of
the whole model. The blocks are identical in structure, so one compiled graph serves all of
them (recompiled per input shape); everything around them (layout building, the tile plan of
the chunked attention, RoPE tables, the history strategies' loops) stays eager.

Inside a compiled block the chunked attention runs as two opaque custom ops (forward and its
backward: attention/chunked.py `chunk_attention_planned`) with the tile plan the layout made
on the host, so torch._dynamo traces a block without a graph break (tests/model/test_compile.py).
Routed / windowed layouts (routing_grouped.py) are traced as plain torch code.
"""

from __future__ import annotations

import torch
from torch import nn


def compile_blocks(model: nn.Module, backend: str = "inductor", **options) -> nn.Module:
    """torch.compile every block of `model.blocks` in place (nn.Module.compile: parameter
    names, state dicts and FSDP wrapping are unchanged). Call after activation checkpointing
    and before FSDP, as torchtitan does. Returns the model."""
    for block in model.blocks:
        block.compile(backend=backend, **options)
    return model


def graph_breaks(block: nn.Module, *args, **kwargs) -> tuple[int, list[str]]:
    """(graph breaks, their reasons) torch._dynamo finds tracing block(*args, **kwargs)."""
    explained = torch._dynamo.explain(block)(*args, **kwargs)
    return explained.graph_break_count, [str(b.reason) for b in explained.break_reasons]
