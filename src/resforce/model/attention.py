"""Attention layouts: one set of weights, three ways to see the sequence.

(a) two-stream training layout (METHOD.md section 4): tokens are
    [history chunk 1..N | noisy chunk 1..N]; history chunk j sees history chunks <= j,
    noisy chunk i sees history chunks < i and itself only;
(b) KV-cached rollout: one chunk sees the cached history plus its own tokens;
(c) plain block-causal single stream: chunk i sees chunks <= i.

A transformer block computes q, k, v (after RoPE) and hands them to `layout.attend(layer,
q, k, v)`; the layout decides which keys each query may see. Layouts never hold weights.

Backends for the masked layouts: "sdpa" (torch's scaled_dot_product_attention with a boolean
mask; the CPU path, and the only one with a backward on the CPU in torch 2.13) and "flex"
(FlexAttention with a BlockMask that skips fully masked blocks; meant for CUDA, where it
should be compiled. Its forward is tested against SDPA on the CPU; untested on a GPU).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from .cache import KVCache


# ----------------------------------------------------------------------------- masks
def two_stream_chunk_mask(num_chunks: int, device=None) -> torch.Tensor:
    """(2N, 2N) bool chunk-level mask, True = may attend. Rows/cols: [history | noisy]."""
    n = num_chunks
    idx = torch.arange(n, device=device)
    mask = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=device)
    mask[:n, :n] = idx[:, None] >= idx[None, :]          # history j sees history <= j
    mask[n:, :n] = idx[:, None] > idx[None, :]           # noisy i sees history < i
    mask[n:, n:] = torch.eye(n, dtype=torch.bool, device=device)  # ... and itself
    return mask


def block_causal_chunk_mask(num_chunks: int, device=None) -> torch.Tensor:
    """(N, N) bool chunk-level mask: chunk i sees chunks <= i."""
    idx = torch.arange(num_chunks, device=device)
    return idx[:, None] >= idx[None, :]


def expand_chunk_mask(chunk_mask: torch.Tensor, tokens_per_chunk: int) -> torch.Tensor:
    """Token-level mask from a chunk-level one (every token of a chunk sees the same keys)."""
    return chunk_mask.repeat_interleave(tokens_per_chunk, 0).repeat_interleave(tokens_per_chunk, 1)


# ----------------------------------------------------------------------------- layouts
class Layout(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: (B, heads, tokens, head_dim) -> (B, heads, tokens, head_dim)."""


class MaskedLayout:
    """Full-sequence attention under a chunk-level mask (layouts a and c)."""

    def __init__(self, chunk_mask: torch.Tensor, tokens_per_chunk: int, backend: str = "sdpa"):
        if backend not in ("sdpa", "flex"):
            raise ValueError(f"attention backend must be 'sdpa' or 'flex', got {backend!r}")
        self.chunk_mask = chunk_mask
        self.tokens_per_chunk = tokens_per_chunk
        self.backend = backend
        self._token_mask = None
        self._block_mask = None

    @property
    def token_mask(self) -> torch.Tensor:
        if self._token_mask is None:
            self._token_mask = expand_chunk_mask(self.chunk_mask, self.tokens_per_chunk)
        return self._token_mask

    def attend(self, layer, q, k, v):
        if self.backend == "flex":
            return self._flex(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.token_mask)

    def _flex(self, q, k, v):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if self._block_mask is None:
            chunk_mask, tpc = self.chunk_mask, self.tokens_per_chunk

            def mask_mod(b, h, q_idx, kv_idx):
                return chunk_mask[q_idx // tpc, kv_idx // tpc]

            s = q.shape[2]
            self._block_mask = create_block_mask(mask_mod, None, None, s, s, device=q.device)
        return flex_attention(q, k, v, block_mask=self._block_mask)


def two_stream_layout(num_chunks: int, tokens_per_chunk: int, backend: str = "sdpa",
                      device=None) -> MaskedLayout:
    return MaskedLayout(two_stream_chunk_mask(num_chunks, device), tokens_per_chunk, backend)


def block_causal_layout(num_chunks: int, tokens_per_chunk: int, backend: str = "sdpa",
                        device=None) -> MaskedLayout:
    return MaskedLayout(block_causal_chunk_mask(num_chunks, device), tokens_per_chunk, backend)


class CachedLayout:
    """Layout (b): the current chunk's queries see cached history plus its own keys.

    With `write=True` the chunk's keys/values are appended to the cache after attending,
    which is how a finished chunk (at t = 0) becomes history.
    """

    def __init__(self, cache: KVCache, write: bool = False):
        self.cache = cache
        self.write = write

    def attend(self, layer, q, k, v):
        lc = self.cache[layer]
        tpc = self.cache.tokens_per_chunk
        if k.requires_grad or k.shape[2] != tpc:  # autograd: keep the graph, no in-place staging
            hist_k, hist_v = lc.chunks()
            k_all, v_all = k, v
            if hist_k is not None:
                k_all = torch.cat([hist_k.flatten(2, 3), k], 2)
                v_all = torch.cat([hist_v.flatten(2, 3), v], 2)
            if self.write:
                lc.append(k.detach(), v.detach(), tpc)
            return F.scaled_dot_product_attention(q, k_all, v_all)
        # the chunk's keys go into the cache's next slot; attention reads a view of
        # [cache | chunk], so no step copies the whole cache
        k_all, v_all = lc.stage(k, v, tpc)
        out = F.scaled_dot_product_attention(q, k_all, v_all)
        if self.write:
            lc.commit()
        return out
