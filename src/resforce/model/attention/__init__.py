"""Attention over the chunked two-stream sequence: layouts, the KV-cache path and history routing.

| module            | what                                                                 |
|-------------------|----------------------------------------------------------------------|
| layouts.py        | the chunk masks and the dense layouts (chunked / SDPA / Flex)        |
| chunked.py        | tile-planned attention that skips masked blocks (the dense fast path)|
| varlen.py         | attention of query groups against one key chunk, with LSE            |
| detached.py       | the detached-history layout (history read from a KV cache)           |
| config.py         | HistoryAttentionConfig (dense / topk / window)                       |
| routing_naive.py  | the naive routing reference: dense scores under a per-token mask     |
| routing_grouped.py| queries grouped by selected chunk + LSE merge (MoBA varlen)          |
| routing_function.py| the training default: all of it as one autograd function per head group |
| routing_fast.py   | the fast rollout path over the KV cache (grouped + merge)            |
| router_stats.py   | RouterRecorder: router selections by chunk distance / index          |
| policy.py         | AttentionPolicy: config -> layouts, passed to every call             |

History routing: each query token attends to its own chunk plus only the top-k most relevant
history chunks, scored per head and per token by q . mean(K_j); sliding-window (+ attention
sink) baselines go through the same interfaces (docs/method.md).
"""

from resforce.model.attention.policy import AttentionPolicy
from resforce.model.attention.config import MODES, HistoryAttentionConfig
from resforce.model.attention.router_stats import RouterRecorder
from resforce.model.attention.routing_fast import RoutedCachedLayout
from resforce.model.attention.routing_grouped import (GroupedRoutedLayout, attend_routes, merge_routes, routed_block_causal_layout,
                              routed_two_stream_layout)
from resforce.model.attention.routing_naive import NaiveRoutedLayout, naive_block_causal_layout, naive_two_stream_layout, routed_reference

__all__ = ["AttentionPolicy", "GroupedRoutedLayout", "HistoryAttentionConfig", "MODES", "NaiveRoutedLayout",
           "RouterRecorder", "RoutedCachedLayout", "attend_routes", "merge_routes", "naive_block_causal_layout",
           "naive_two_stream_layout", "routed_block_causal_layout", "routed_reference", "routed_two_stream_layout"]
