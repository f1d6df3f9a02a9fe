"""History routing (METHOD.md section 5), split by role like MoBA's naive / efficient pair:

| file                         | what                                                       |
|------------------------------|------------------------------------------------------------|
| history_attention_config.py  | HistoryAttentionConfig (dense / topk / window)              |
| routing_naive.py             | the naive reference: dense scores under a per-token mask    |
|                              | (also the routed two-stream training layout)                |
| routing_fast.py              | the fast rollout path over the KV cache (gather + LSE merge)|
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
from .routing_fast import RoutedCachedLayout, merge_lse
from .routing_naive import (RoutedMaskedLayout, routed_block_causal_layout, routed_reference,
                            routed_two_stream_layout)

__all__ = ["AttentionPolicy", "HistoryAttentionConfig", "MODES", "RouterRecorder", "RoutedCachedLayout",
           "RoutedMaskedLayout", "merge_lse", "routed_block_causal_layout", "routed_reference",
           "routed_two_stream_layout"]
