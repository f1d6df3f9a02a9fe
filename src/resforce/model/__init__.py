"""The model math: CausalVideoDiT, RoPE, attention layouts, KV cache (history routing: routing.py lists its files)."""
from resforce.model.cache import KVCache
from resforce.model.dit import PRESETS, CausalVideoDiT, DiTConfig, build_model

__all__ = ["CausalVideoDiT", "DiTConfig", "KVCache", "PRESETS", "build_model"]
