"""RouterRecorder: how often the history router selects each chunk distance and index.

Accumulates, per (layer, head), how often each chunk distance i - j and each absolute chunk
index j is selected during rollout (attention sink + recency, the paper's Fig. 8), with
save(); the figure is drawn by resforce.evaluation.router_plot (plotting stays outside model/).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class RouterRecorder:
    """Counts router selections per (layer, head) by chunk distance i - j (>= 1) and by
    absolute chunk index j, and how often each distance / index was *available* (so
    frequency = selected / available). Every routed cached call is recorded: the Euler steps
    of a chunk and the pass that writes it to the cache (set `record_writes=False` to keep
    only the denoising steps)."""

    def __init__(self, record_writes: bool = True) -> None:
        self.record_writes = record_writes
        self.by_distance: dict[int, np.ndarray] = {}
        self.avail_distance: dict[int, np.ndarray] = {}
        self.by_index: dict[int, np.ndarray] = {}
        self.avail_index: dict[int, np.ndarray] = {}
        self.calls = 0

    @staticmethod
    def _add(store: dict[int, np.ndarray], layer: int, counts: np.ndarray) -> None:
        old = store.get(layer)
        if old is None:
            store[layer] = counts.astype(np.int64)
            return
        h, m = max(old.shape[0], counts.shape[0]), max(old.shape[1], counts.shape[1])
        new = np.zeros((h, m), dtype=np.int64)
        new[: old.shape[0], : old.shape[1]] += old
        new[: counts.shape[0], : counts.shape[1]] += counts
        store[layer] = new

    def record(self, layer: int, idx: torch.Tensor, n: int) -> None:
        """idx: (B, heads, T, k) chunk indices selected by each query token while the cache
        holds n chunks (so the querying chunk is chunk n)."""
        b, h, t, _ = idx.shape
        idx = idx.detach().to("cpu", torch.long)
        heads = torch.arange(h).view(1, h, 1, 1)
        by_j = torch.bincount((heads * n + idx).flatten(), minlength=h * n).view(h, n)
        by_d = torch.zeros(h, n + 1, dtype=torch.long)
        by_d[:, 1:] = by_j.flip(1)  # distance d = n - j
        queries = b * t
        avail_j = np.full((h, n), queries, dtype=np.int64)
        avail_d = np.zeros((h, n + 1), dtype=np.int64)
        avail_d[:, 1:] = queries
        self._add(self.by_index, layer, by_j.numpy())
        self._add(self.by_distance, layer, by_d.numpy())
        self._add(self.avail_index, layer, avail_j)
        self._add(self.avail_distance, layer, avail_d)
        self.calls += 1

    @property
    def layers(self) -> list[int]:
        return sorted(self.by_distance)

    @staticmethod
    def _freq(sel: np.ndarray, avail: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(avail > 0, sel / np.maximum(avail, 1), np.nan)

    def distance_frequency(self, layer: int) -> np.ndarray:
        """(heads, max_distance + 1): P(chunk at distance d selected | it was available)."""
        return self._freq(self.by_distance[layer], self.avail_distance[layer])

    def index_frequency(self, layer: int) -> np.ndarray:
        """(heads, max_index + 1): P(chunk j selected | it was available)."""
        return self._freq(self.by_index[layer], self.avail_index[layer])

    def to_dict(self) -> dict:
        def pack(store):
            return {str(k): v.tolist() for k, v in sorted(store.items())}
        return {"calls": self.calls, "by_distance": pack(self.by_distance),
                "avail_distance": pack(self.avail_distance), "by_index": pack(self.by_index),
                "avail_index": pack(self.avail_index)}

    def save(self, path: str | Path) -> Path:
        """JSON if the path ends in .json, else npz (arrays named '<stat>_layer<i>')."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict()))
        else:
            arrays = {f"{name}_layer{layer}": a
                      for name in ("by_distance", "avail_distance", "by_index", "avail_index")
                      for layer, a in getattr(self, name).items()}
            np.savez(path, calls=np.array(self.calls), **arrays)
        return path
