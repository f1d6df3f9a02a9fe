"""KV cache for chunk-by-chunk rollout.

Per layer it holds the keys/values of the retained finished chunks, shaped (B, heads,
chunks, tokens_per_chunk, head_dim), in the dtype of the keys it is given (bf16 under bf16
autocast). It also keeps each chunk's mean key (B, heads, chunks, head_dim): history routing
scores chunks by q . mean(K_j) and must not re-read old keys to do so.

Capacity: the buffer has one slot per chunk it will ever hold at once, the chunk being
denoised included (it is staged in the slot after the cached ones). Callers that know that
number pass it (`capacity`: self-resampling of N chunks needs N, a rollout needs its prefix
plus its chunks), and a rolling context bounds it by max_chunks + 1; the buffer is then
allocated once at exactly that size. Only a cache with neither grows, by doubling (appending
a chunk costs amortised O(1)).

Rolling context (`max_chunks`): past that many cached chunks the oldest is evicted (after the
first `sink` chunks, which are kept for good), so a rollout of any length attends to at most
the history it was trained with and memory stays constant. This is how Self Forcing and
LongLive generate past their training length. Keys are stored after RoPE at their absolute
positions (`position` counts every chunk ever committed), and RoPE logits depend only on
relative positions, so eviction never re-encodes a key: the distances the model sees stay
those of training. Eviction shifts the retained chunks down by one slot (an O(context) copy
per generated chunk, small next to the `steps` attention passes that read the same keys).
"""

from __future__ import annotations

import torch


class LayerCache:
    """Keys, values and mean keys of the cached chunks for one attention layer."""

    def __init__(self, max_chunks: int | None = None, sink: int = 0, capacity: int | None = None) -> None:
        if max_chunks is not None and not 0 <= sink <= max_chunks:
            raise ValueError(f"cache sink={sink} must be between 0 and max_chunks={max_chunks}")
        if capacity is not None and capacity < 1:
            raise ValueError(f"cache capacity must be >= 1 chunk (or None: unknown), got {capacity}")
        if max_chunks is not None:  # a rolling cache never holds more than this
            capacity = max_chunks + 1 if capacity is None else min(capacity, max_chunks + 1)
        self.capacity = capacity
        """Slots to allocate (cached chunks + the staged one); None: unknown, grow by doubling."""
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.k_mean: torch.Tensor | None = None
        self.num_chunks = 0
        """Chunks held now (at most max_chunks)."""
        self.evicted = 0
        """Chunks dropped so far; num_chunks + evicted = chunks ever committed."""
        self.max_chunks = max_chunks
        self.sink = sink

    def _grow(self, k: torch.Tensor, needed: int) -> None:
        b, h, _, l, d = k.shape
        if self.k is None and self.capacity is not None and needed <= self.capacity:
            cap = self.capacity  # exact: allocated once
        else:  # unknown size (or a caller's capacity was too small): double
            cap = max(4, needed, 2 * (0 if self.k is None else self.k.shape[2]))
        new_k = k.new_empty(b, h, cap, l, d)
        new_v = k.new_empty(b, h, cap, l, d)
        new_m = k.new_empty(b, h, cap, d)
        if self.k is not None:
            n = self.num_chunks
            new_k[:, :, :n] = self.k[:, :, :n]
            new_v[:, :, :n] = self.v[:, :, :n]
            new_m[:, :, :n] = self.k_mean[:, :, :n]
        self.k, self.v, self.k_mean = new_k, new_v, new_m

    def stage(self, k: torch.Tensor, v: torch.Tensor, tokens_per_chunk: int):
        """Put (B, heads, c * tokens_per_chunk, d) keys/values of c whole chunks into the
        slots after the cached ones, without committing them, and return views (B, heads,
        (n + c) * tokens_per_chunk, d) of cache + staged keys/values. Attention reads these
        views instead of a concatenated copy of the whole cache at every step."""
        if self.k is not None and k.dtype != self.k.dtype:
            raise ValueError(f"KV cache holds {self.k.dtype} keys, got {k.dtype}: a cache written under "
                             f"one precision cannot be read under another (use one autocast for the "
                             f"whole rollout)")
        k = k.unflatten(2, (-1, tokens_per_chunk))
        v = v.unflatten(2, (-1, tokens_per_chunk))
        c = k.shape[2]
        if self.k is None or self.num_chunks + c > self.k.shape[2]:
            self._grow(k, self.num_chunks + c)
        n = self.num_chunks
        self.k[:, :, n:n + c] = k
        self.v[:, :, n:n + c] = v
        return self.k[:, :, :n + c].flatten(2, 3), self.v[:, :, :n + c].flatten(2, 3)

    def commit(self, chunks: int = 1) -> None:
        """Make the staged chunks part of the cache (and record their mean keys)."""
        n = self.num_chunks
        self.k_mean[:, :, n:n + chunks] = self.k[:, :, n:n + chunks].mean(dim=3)
        self.num_chunks = n + chunks
        if self.max_chunks is not None and self.num_chunks > self.max_chunks:
            self._evict(self.num_chunks - self.max_chunks)

    def _evict(self, count: int) -> None:
        """Drop the `count` oldest chunks after the sink; later chunks move down."""
        n, lo = self.num_chunks, self.sink
        if lo + count > n:
            raise ValueError(f"cannot evict {count} chunks: {n} held, {lo} of them sink")
        if count == 0:
            return
        for buf in (self.k, self.v, self.k_mean):  # clone: source and target overlap
            buf[:, :, lo:n - count] = buf[:, :, lo + count:n].clone()
        self.num_chunks = n - count
        self.evicted += count

    @property
    def position(self) -> int:
        """Absolute index of the next chunk (RoPE position of what is staged next)."""
        return self.num_chunks + self.evicted

    def append(self, k: torch.Tensor, v: torch.Tensor, tokens_per_chunk: int) -> None:
        """Append (B, heads, c * tokens_per_chunk, d) keys/values of c whole chunks."""
        self.stage(k, v, tokens_per_chunk)
        self.commit(k.shape[2] // tokens_per_chunk)

    def chunks(self, index: torch.Tensor | slice | None = None):
        """(k, v) of the cached chunks, (B, heads, n, L, d); all of them by default."""
        n = self.num_chunks
        if self.k is None or n == 0:
            return None, None
        if index is None:
            index = slice(0, n)
        return self.k[:, :, index], self.v[:, :, index]

    def means(self) -> torch.Tensor | None:
        return None if self.k is None else self.k_mean[:, :, : self.num_chunks]


class KVCache:
    """One LayerCache per transformer block, plus the number of cached chunks.

    max_chunks: history chunks kept (None = all, the cache grows with the video); sink: the
    first chunks of the video that are never evicted (only for models trained with a sink);
    capacity: the most chunks it will hold at once, the one being denoised included (None =
    unknown: max_chunks + 1 for a rolling cache, else the buffer grows by doubling)."""

    def __init__(self, num_layers: int, tokens_per_chunk: int, max_chunks: int | None = None,
                 sink: int = 0, capacity: int | None = None) -> None:
        if max_chunks is not None and max_chunks < 0:
            raise ValueError(f"cache max_chunks must be >= 0 (or None for all), got {max_chunks}")
        self.layers = [LayerCache(max_chunks, sink, capacity) for _ in range(num_layers)]
        self.tokens_per_chunk = tokens_per_chunk
        self.max_chunks = max_chunks

    @property
    def num_chunks(self) -> int:
        """Chunks the cache holds now."""
        return self.layers[0].num_chunks

    @property
    def position(self) -> int:
        """Absolute chunk index of the next chunk: its RoPE offset."""
        return self.layers[0].position

    def __getitem__(self, layer: int) -> LayerCache:
        return self.layers[layer]
