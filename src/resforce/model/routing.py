"""History routing (METHOD.md section 5), split by role like MoBA's naive / efficient pair:

| file                         | what                                                       |
|------------------------------|------------------------------------------------------------|
| history_attention_config.py  | HistoryAttentionConfig (dense / topk / window)              |
| routing_naive.py             | THE naive reference: dense scores under a per-token mask    |
|                              | (an S x S mask; used by tests and benchmarks only)          |
| routing_grouped.py           | queries grouped by selected chunk + LSE merge (MoBA varlen);|
|                              | the routed two-stream / block-causal training layouts       |
| varlen_attention.py          | attention of query groups against one key chunk, with LSE   |
| routing_fast.py              | the fast rollout path over the KV cache (grouped + merge)   |
| router_stats.py              | RouterRecorder: router selections by chunk distance / index |
| attention_policy.py          | AttentionPolicy: config -> layouts, passed to every call    |

Each query token attends to its own chunk plus only the top-k most relevant history chunks,
scored per head and per token by q . mean(K_j). Sliding window (+ attention sink) baselines
go through the same interfaces. The figure of the router statistics is resforce.router_plot.
This module only re-exports the public names.
"""

from .attention_policy import AttentionPolicy
from .history_attention_config import MODES, HistoryAttentionConfig
from .router_stats import RouterRecorder
from .routing_fast import RoutedCachedLayout
from .routing_grouped import (GroupedRoutedLayout, attend_routes, merge_routes, routed_block_causal_layout,
                              routed_two_stream_layout)
from .routing_naive import NaiveRoutedLayout, naive_block_causal_layout, naive_two_stream_layout, routed_reference

__all__ = ["AttentionPolicy", "GroupedRoutedLayout", "HistoryAttentionConfig", "MODES", "NaiveRoutedLayout",
           "RouterRecorder", "RoutedCachedLayout", "attend_routes", "merge_routes", "naive_block_causal_layout",
           "naive_two_stream_layout", "routed_block_causal_layout", "routed_reference", "routed_two_stream_layout"]
