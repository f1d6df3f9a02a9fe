"""HistoryAttentionConfig: which history chunks each query token may attend to.

Validated when a config loads (config.py) and again by every layout built from it.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("dense", "topk", "window")


@dataclass
class HistoryAttentionConfig:
    """Which history chunks each query token may attend to (besides its own chunk)."""

    mode: str = "dense"
    """'dense' (all history chunks), 'topk' (history routing) or 'window' (the `window`
    most recent history chunks plus the first `sink` chunks; the LongLive-style baseline)."""
    topk: int = 5
    """topk mode: history chunks selected per query token and head (all of them when fewer
    exist). The paper: 5 of 20 (75% sparsity) for its main results, 1 for 95%."""
    window: int = 5
    """window mode: the w most recent history chunks (the own chunk is not counted)."""
    sink: int = 0
    """window mode: the first s chunks of the video are always kept (attention sink)."""
    descriptor: str = "post_rope"
    """Chunk descriptor of the router score q . mean(K_j). Only 'post_rope' is implemented:
    the mean of chunk j's keys *after* RoPE (see the comment in `validate`)."""

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"history_attention.mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "topk" and self.topk < 1:
            raise ValueError(f"history_attention.topk must be >= 1, got {self.topk}")
        if self.mode == "window" and (self.window < 0 or self.sink < 0 or self.window + self.sink < 1):
            raise ValueError(f"history_attention window={self.window}, sink={self.sink}: both must "
                             f"be >= 0 and keep at least one chunk")
        # Descriptor: keys after RoPE. With post-RoPE keys, q . mean_j(k) is exactly the mean
        # pre-softmax logit of q over chunk j (linearity), i.e. the router ranks chunks by
        # the attention score q would give them on average, including RoPE's relative
        # temporal position, so a learned recency preference can express itself in routing.
        # The KV cache already stores post-RoPE keys and their means (LayerCache.k_mean),
        # so routing needs no extra state, and a cached chunk's descriptor is the same number
        # in training and rollout. Pre-RoPE means would need a second per-chunk store and a
        # hook inside Attention before apply_rope, and would rank chunks by content alone
        # (blind to distance). Side effect of post-RoPE: the spatial RoPE components of a
        # chunk's tokens partly cancel in the mean, so the descriptor emphasises content and
        # temporal / low-frequency components; we accept this (the paper does not say).
        if self.descriptor != "post_rope":
            raise NotImplementedError(f"history_attention.descriptor={self.descriptor!r}: only "
                                      f"'post_rope' is implemented (see model/attention/config.py)")
