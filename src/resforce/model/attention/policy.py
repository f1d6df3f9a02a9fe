"""AttentionPolicy: the one route by which history attention reaches the model.

A HistoryAttentionConfig (dense, routed top-k or window) becomes layouts here, and the policy
is an argument of every model call that needs one:
- `model(x, t, history=..., attention=policy)`: `policy.masked(kind, ...)` builds the
  two-stream (training) or block-causal layout;
- `model.forward_chunk(..., layout=policy.cached(cache, False))` and
  `model.write_cache(..., layout=policy.cached(cache, True))`: rollout and self-resampling
  (rollout.py's chunk step).
No model attribute is patched; `None` wherever a policy is accepted means dense attention.
"""

from __future__ import annotations

from resforce.model.attention.layouts import CachedLayout, block_causal_layout, two_stream_layout
from resforce.model.cache import KVCache
from resforce.model.attention.config import HistoryAttentionConfig
from resforce.model.attention.router_stats import RouterRecorder
from resforce.model.attention.routing_fast import RoutedCachedLayout
from resforce.model.attention.routing_grouped import routed_block_causal_layout, routed_two_stream_layout

MASKED_KINDS = ("two_stream", "block_causal")


class AttentionPolicy:
    """HistoryAttentionConfig -> attention layouts (picklable). `recorder` counts the router's
    selections of the cached (rollout) layouts."""

    def __init__(self, cfg: HistoryAttentionConfig | None = None, recorder: RouterRecorder | None = None):
        cfg = cfg or HistoryAttentionConfig()
        cfg.validate()
        self.cfg, self.recorder = cfg, recorder

    def cached(self, cache: KVCache, write: bool):
        """The layout of one KV-cached call: forward_chunk (write=False) or write_cache (True)."""
        if self.cfg.mode == "dense" and self.recorder is None:
            return CachedLayout(cache, write)
        return RoutedCachedLayout(cache, write, self.cfg, self.recorder)

    def masked(self, kind: str, num_chunks: int, tokens_per_chunk: int, backend: str = "chunked", device=None):
        """The layout of a full-sequence pass: 'two_stream' (training) or 'block_causal'.
        Dense uses the model's attention_backend ('chunked' by default: block-sparse, no
        S x S tensor); routed / windowed layouts group the queries by the
        chunks they attend to (routing_grouped.py), whatever the backend."""
        if kind not in MASKED_KINDS:
            raise ValueError(f"unknown layout kind {kind!r}; expected one of {MASKED_KINDS}")
        if self.cfg.mode == "dense":
            make = two_stream_layout if kind == "two_stream" else block_causal_layout
            return make(num_chunks, tokens_per_chunk, backend, device)
        make = routed_two_stream_layout if kind == "two_stream" else routed_block_causal_layout
        return make(self.cfg, num_chunks, tokens_per_chunk, device)


def cached_layout(policy: AttentionPolicy | None, cache: KVCache, write: bool):
    """policy.cached(cache, write), or None (the model's dense default) without a policy."""
    return policy.cached(cache, write) if policy is not None else None
