"""Activation checkpointing, applied to a model from outside (torchtitan's split): `full`
recomputes every transformer block in the backward; `selective` keeps the attention kernels'
outputs (the expensive part) and recomputes the rest (model.gradient_checkpointing)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from resforce.model.config import checkpoint_mode


def attention_kernel_ops() -> set:
    """The aten kernels that compute attention (output and log-sum-exp) on any backend: what
    selective checkpointing keeps. Recomputing them is most of the FLOPs of a long-clip
    step; their outputs are small (O(tokens), never O(tokens^2))."""
    aten = torch.ops.aten
    names = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
             "_scaled_dot_product_fused_attention_overrideable", "_flash_attention_forward",
             "_efficient_attention_forward")
    ops = {getattr(aten, n).default for n in names if hasattr(aten, n)}
    flex = getattr(torch.ops.higher_order, "flex_attention", None)
    # (importing registers torch.ops.resforce.chunk_attention_forward / routed_attention_forward)
    from resforce.model.attention import chunked, routing_function  # noqa: F401

    resforce = {torch.ops.resforce.chunk_attention_forward.default, torch.ops.resforce.routed_attention_forward.default}
    return ops | ({flex} if flex is not None else set()) | resforce


@contextlib.contextmanager
def _uncached_autocast(ctx):
    """`ctx` with autocast's cast cache off. SAC replays the forward's ops one by one in the
    recomputation and fails on any op it did not see; an autocast region that also covered an
    earlier pass (the no-grad resampling pass) serves the forward's weight casts from its cache
    while the recomputation dispatches them. Without the cache both cast every weight: a block
    uses each weight once per call, so nothing is cast twice."""
    enabled = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        with ctx:
            yield
    finally:
        torch.set_autocast_cache_enabled(enabled)


class _CrossAttentionDepth:
    """How deep the running code is inside a block's cross-attention (attn2), set by hooks
    that apply_activation_checkpointing adds: selective checkpointing keeps self-attention
    outputs only; cross-attention to the text (a few hundred keys) is cheap to recompute and
    its output is as large as self-attention's (0.56 GiB per block for 1.3B at 15 s)."""

    def __init__(self):
        self.depth = 0

    def enter(self, module, args):
        self.depth += 1

    def leave(self, module, args, output):
        self.depth -= 1


def _selective_context(cross: _CrossAttentionDepth):
    """torchtitan's op-level SAC policy, narrowed to self-attention: keep the attention
    kernels' outputs (and LSE) outside cross-attention, recompute everything else (linears,
    norms, modulation, RoPE, cross-attention)."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    keep = attention_kernel_ops()

    def policy(ctx, func, *args, **kwargs):
        save = func in keep and cross.depth == 0
        return CheckpointPolicy.MUST_SAVE if save else CheckpointPolicy.PREFER_RECOMPUTE

    forward, recompute = create_selective_checkpoint_contexts(policy)
    return _one_op_attention(_uncached_autocast(forward)), _one_op_attention(_uncached_autocast(recompute))


@contextlib.contextmanager
def _one_op_attention(ctx):
    """`ctx` with the chunked and the routed attention's forward as one op each
    (chunk_attention.as_one_op), so the policy keeps their merged output and LSE, not every
    tile's or route's."""
    from resforce.model.attention.chunked import as_one_op

    with as_one_op(), ctx:
        yield


def apply_activation_checkpointing(model: nn.Module, mode: str = "full") -> nn.Module:
    """Recompute every transformer block (`model.blocks`) in the backward pass instead of
    keeping its activations, applied from outside the model like torchtitan does, before
    wrapping. torch's composable `checkpoint` works by forward hooks, so parameter names (and
    checkpoints) stay as they are and FSDP2 composes with it. In place; returns the model.

    mode: 'full' recomputes the whole block; 'selective' keeps the self-attention kernels'
    outputs (see attention_kernel_ops) and recomputes the rest, cross-attention included, so
    the backward never re-runs self-attention; 'none' leaves the model as it is."""
    from functools import partial

    from torch.distributed._composable import checkpoint

    mode = checkpoint_mode(mode)
    if mode == "none":
        return model
    kwargs = {}
    if mode == "selective":
        cross = _CrossAttentionDepth()
        for block in model.blocks:
            if getattr(block, "attn2", None) is not None:
                block.attn2.register_forward_pre_hook(cross.enter)
                block.attn2.register_forward_hook(cross.leave, always_call=True)
        kwargs = {"context_fn": partial(_selective_context, cross)}
    for block in model.blocks:
        checkpoint(block, **kwargs)
    return model
