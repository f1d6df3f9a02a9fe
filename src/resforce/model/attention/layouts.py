"""Attention layouts: one set of weights, three ways to see the sequence.

(a) two-stream training layout (docs/method.md, the two-stream mask): tokens are
    [history chunk 1..N | noisy chunk 1..N]; history chunk j sees history chunks <= j,
    noisy chunk i sees history chunks < i and itself only;
(b) KV-cached rollout: one chunk sees the cached history plus its own tokens;
(c) plain block-causal single stream: chunk i sees chunks <= i.

A transformer block computes q, k, v (after RoPE) and hands them to `layout.attend(layer,
q, k, v)`; the layout decides which keys each query may see. Layouts never hold weights.

Backends for the masked layouts (a) and (c), all computing the same numbers:
- "chunked" (default): model/attention/chunked.py, block-sparse. Only the allowed (query chunk, key
  chunk) tiles are computed, by flash kernels merged by log-sum-exp, forward and backward;
  no tensor of size S x S (S = tokens) exists. CPU and CUDA.
- "sdpa": the naive reference. The chunk mask expanded to an (S, S) boolean token mask and
  handed to torch's scaled_dot_product_attention, which computes every block (masked ones
  included) and excludes the flash kernels. Kept to check the others against, and because
  checkpoints written before "chunked" existed carry it in their config.
- "flex": FlexAttention with a BlockMask (built once per mask, shape and device, cached at
  module level) whose mask_mod reads the small chunk mask at (q // tpc, kv // tpc).
  Compiled (torch.compile, once) on CUDA; eager elsewhere, which on the CPU in torch 2.13 is
  forward only. On an H100 (torch 2.11, bf16, Wan2.1-1.3B heads) compiled flex agreed with
  "sdpa" and ran forward+backward in 0.8-0.9x the time of "chunked"
  (benchmarks/bench_chunk_attention.py).
"""

from __future__ import annotations

import functools
from typing import Protocol

import torch
import torch.nn.functional as F

from resforce.model.cache import KVCache
from resforce.model.attention.chunked import chunk_attention, chunk_attention_planned, host_chunk_mask, is_fake, plan_of


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


BACKENDS = ("chunked", "sdpa", "flex")


def check_backend(backend: str, field: str = "attention backend") -> None:
    if backend not in BACKENDS:
        raise ValueError(f"{field} must be one of {BACKENDS} ('chunked': block-sparse, the "
                         f"default; 'sdpa': dense-mask reference; 'flex': FlexAttention), "
                         f"got {backend!r}")


class MaskedLayout:
    """Full-sequence attention under a chunk-level mask (layouts a and c).

    `chunk_mask` (Qc, Kc) bool must be a real CPU tensor (host_chunk_mask builds one under
    FakeTensorMode too): it is tiny, the "chunked" backend plans its tiles from its values on
    the host, and the other backends copy it to the tokens' device."""

    def __init__(self, chunk_mask: torch.Tensor, tokens_per_chunk: int, backend: str = "chunked"):
        check_backend(backend)
        if chunk_mask.device.type != "cpu" or is_fake(chunk_mask):
            raise ValueError("MaskedLayout: chunk_mask must be a real CPU tensor, got "
                             f"{type(chunk_mask).__name__} on {chunk_mask.device}; build it "
                             "with chunk_attention.host_chunk_mask")
        self.chunk_mask = chunk_mask
        self.tokens_per_chunk = tokens_per_chunk
        self.backend = backend
        self._token_masks: dict = {}
        # the tile plan, made here on the host: a torch.compile'd block reads it as a constant
        self.plan = plan_of(chunk_mask) if backend == "chunked" else None

    def token_mask(self, device=None) -> torch.Tensor:
        """The (S, S) token mask of the "sdpa" reference (built once per device)."""
        key = str(device)
        if key not in self._token_masks:
            cm = self.chunk_mask.to(device)
            self._token_masks[key] = expand_chunk_mask(cm, self.tokens_per_chunk)
        return self._token_masks[key]

    def attend(self, layer, q, k, v):
        if self.backend == "chunked":
            if torch.compiler.is_compiling():  # one opaque op: nothing host-side is traced
                return chunk_attention_planned(q, k, v, self.plan, self.tokens_per_chunk)
            return chunk_attention(q, k, v, self.chunk_mask, self.tokens_per_chunk)
        if self.backend == "flex":
            block_mask = flex_block_mask(self.chunk_mask, self.tokens_per_chunk, q.shape[2],
                                         k.shape[2], q.device)
            return _flex_attention(q.device.type)(q, k, v, block_mask=block_mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.token_mask(q.device))


# ----------------------------------------------------------------------------- flex
_BLOCK_MASKS: dict = {}


def flex_block_mask(chunk_mask: torch.Tensor, tokens_per_chunk: int, q_len: int, kv_len: int,
                    device):
    """FlexAttention BlockMask of a chunk mask, built once per (mask, lengths, device) and
    cached: create_block_mask evaluates mask_mod over every (query, key) pair, far too slow
    per call. On CUDA it is compiled, which fuses that evaluation so no S x S mask is
    materialised; eager (the CPU) materialises it once per shape."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (chunk_mask.numpy().tobytes(), tuple(chunk_mask.shape), tokens_per_chunk, q_len,
           kv_len, str(device))
    if key not in _BLOCK_MASKS:
        if len(_BLOCK_MASKS) >= 64:  # bounded: a long-running process sees few shapes
            _BLOCK_MASKS.clear()
        cm, tpc = chunk_mask.to(device), tokens_per_chunk

        def mask_mod(b, h, q_idx, kv_idx):  # chunk-level lookup, no token-level table
            return cm[q_idx // tpc, kv_idx // tpc]

        make = create_block_mask
        if torch.device(device).type == "cuda":  # eager evaluates mask_mod on all S x S pairs
            make = torch.compile(create_block_mask)
        _BLOCK_MASKS[key] = make(mask_mod, None, None, q_len, kv_len, device=device)
    return _BLOCK_MASKS[key]


@functools.cache
def _flex_attention(device_type: str):
    """flex_attention, compiled once on CUDA (uncompiled it materialises scores: an unfused
    fallback); eager elsewhere (torch.compile on the CPU would cost minutes per shape)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if device_type == "cuda" else flex_attention


def two_stream_layout(num_chunks: int, tokens_per_chunk: int, backend: str = "chunked",
                      device=None) -> MaskedLayout:
    """`device` is accepted for symmetry with the routed layouts; the chunk mask is built as
    a real CPU tensor (see MaskedLayout), also under FakeTensorMode."""
    return MaskedLayout(host_chunk_mask(two_stream_chunk_mask, num_chunks), tokens_per_chunk, backend)


def block_causal_layout(num_chunks: int, tokens_per_chunk: int, backend: str = "chunked",
                        device=None) -> MaskedLayout:
    return MaskedLayout(host_chunk_mask(block_causal_chunk_mask, num_chunks), tokens_per_chunk, backend)


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
