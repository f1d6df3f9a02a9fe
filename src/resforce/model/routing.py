"""History routing (METHOD.md section 5): each query token attends to its own chunk plus only
the top-k most relevant history chunks, scored per head and per token by q . mean(K_j).

Two implementations of the same attention, proved equal by tests/test_routing.py:

- `RoutedMaskedLayout` (the naive reference, and the routed training layout): dense scores
  over every key, with the chunks a query token did not select masked out (a per (batch,
  head, token) boolean mask handed to SDPA). Built for the two-stream training pass
  ([history | noisy]: history chunk j routes over history chunks < j, noisy chunk i over
  history chunks < i; each also always sees its own chunk) and for the block-causal pass.
  In the two-stream pass the history stream plays the role of the KV cache, so this is,
  chunk by chunk, what routed rollout computes.
- `RoutedCachedLayout` (the fast rollout path): scores the cached chunks by q . k_mean (the
  cache's stored mean keys; no pass over old keys), gathers only the selected chunks' K/V,
  attends over them (history branch) and over the chunk's own keys (intra branch) and
  merges the two by their log-sum-exp. Its cost does not grow with the history length
  except for the O(n * d) scoring and the top-k.

Sliding window (+ attention sink) baselines go through the same interfaces ("window" mode:
a chunk mask in training, a chunk slice in the cached path). "dense" is plain attention.

`RouterRecorder` accumulates, per (layer, head), how often each chunk distance i - j and
each absolute chunk index j is selected during rollout (attention sink + recency, the
paper's Fig. 8), with save() and plot().

Integration: `make_layout_fn(cfg, recorder)` is the `(cache, write) -> layout` factory for
`rollout(..., layout_fn=...)`; `apply_history_attention(model, cfg)` sets the model's
`masked_layout_fn` hook so `model(x, t, history=h, t_history=th)` trains with routing on.
Routed masked layouts always use SDPA (the mask is data dependent), whatever the model's
attention_backend.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .attention import CachedLayout, block_causal_layout, two_stream_layout
from .cache import KVCache

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
                                      f"'post_rope' is implemented (see routing.py)")


# ----------------------------------------------------------------------------- recorder
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

    def plot(self, path: str | Path) -> Path:
        """Selection frequency vs chunk distance and vs absolute chunk index, one line per
        layer (mean over heads; thin lines per head) - sink + recency show up as peaks at
        index 0 and distance 1."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for layer in self.layers:
            for ax, freq, start in ((axes[0], self.distance_frequency(layer), 1),
                                    (axes[1], self.index_frequency(layer), 0)):
                x = np.arange(start, freq.shape[1])
                f = freq[:, start:]
                (line,) = ax.plot(x, np.nanmean(f, axis=0), marker=".", label=f"layer {layer}")
                for row in f:
                    ax.plot(x, row, color=line.get_color(), alpha=0.2, lw=0.8)
        axes[0].set_xlabel("chunk distance i - j")
        axes[1].set_xlabel("history chunk index j")
        for ax in axes:
            ax.set_ylabel("selection frequency")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"history router selections ({self.calls} routed calls)")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


# ----------------------------------------------------------------------------- naive / training
def _select_chunks(cfg: HistoryAttentionConfig, q: torch.Tensor, k: torch.Tensor,
                   cand: torch.Tensor, window: torch.Tensor | None, tpc: int) -> torch.Tensor:
    """(B, H, T, Kc) bool: the candidate key chunks each query token selected.

    cand (T, Kc) bool: key chunks a query token may route to; window (T, Kc): window mode's
    chunk set. Dense scores q . mean(K_c) over all key chunks, non-candidates at -inf."""
    b, h, t, _ = q.shape
    if cfg.mode == "dense":
        return cand.expand(b, h, -1, -1)
    if cfg.mode == "window":
        return (cand & window).expand(b, h, -1, -1)
    with torch.no_grad():  # selection is an index choice: no gradient flows through it
        means = k.detach().unflatten(2, (-1, tpc)).mean(3)             # (B, H, Kc, d)
        scores = q.detach() @ means.transpose(-1, -2)                 # (B, H, T, Kc)
        scores = scores.masked_fill(~cand, float("-inf"))
        kk = min(cfg.topk, scores.shape[-1])
        top = scores.topk(kk, dim=-1)
        sel = torch.zeros_like(scores, dtype=torch.bool)
        sel.scatter_(-1, top.indices, top.values > float("-inf"))  # fewer candidates than k
    return sel


class RoutedMaskedLayout:
    """Full-sequence attention where each query token sees its own chunk plus the history
    chunks it selected (naive reference: dense SDPA under a per-token mask).

    Chunk-level structure (Qc query chunks x Kc key chunks, all of `tokens_per_chunk`):
    own (Qc, Kc) bool: always visible (the query's own chunk); cand (Qc, Kc) bool: history
    chunks the query may route to; q_index (Qc,), k_index (Kc,): the chunks' positions in
    time (for window mode: k_index >= q_index - window or k_index < sink)."""

    def __init__(self, cfg: HistoryAttentionConfig, own: torch.Tensor, cand: torch.Tensor,
                 q_index: torch.Tensor, k_index: torch.Tensor, tokens_per_chunk: int):
        cfg.validate()
        self.cfg = cfg
        self.tokens_per_chunk = tpc = tokens_per_chunk
        self.own = own.repeat_interleave(tpc, 0)       # (T, Kc)
        self.cand = cand.repeat_interleave(tpc, 0)     # (T, Kc)
        win = (k_index[None, :] >= q_index[:, None] - cfg.window) | (k_index[None, :] < cfg.sink)
        self.window = win.repeat_interleave(tpc, 0)    # (T, Kc)

    def chunk_mask(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, H, T, Kc) bool: key chunks each query token attends to (own | selected)."""
        sel = _select_chunks(self.cfg, q, k, self.cand, self.window, self.tokens_per_chunk)
        return sel | self.own

    def attend(self, layer, q, k, v):
        mask = self.chunk_mask(q, k).repeat_interleave(self.tokens_per_chunk, -1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def routed_two_stream_layout(cfg: HistoryAttentionConfig, num_chunks: int, tokens_per_chunk: int,
                             device=None) -> RoutedMaskedLayout:
    """[history 0..N-1 | noisy 0..N-1]: history chunk j routes over history chunks < j (+ own),
    noisy chunk i over history chunks < i (+ itself). The history stream is the KV cache."""
    n = num_chunks
    idx = torch.arange(n, device=device)
    q_index = torch.cat([idx, idx])
    own = torch.eye(2 * n, dtype=torch.bool, device=device)
    cand = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=device)
    cand[:, :n] = q_index[:, None] > idx[None, :]
    return RoutedMaskedLayout(cfg, own, cand, q_index, q_index, tokens_per_chunk)


def routed_block_causal_layout(cfg: HistoryAttentionConfig, num_chunks: int, tokens_per_chunk: int,
                               device=None) -> RoutedMaskedLayout:
    """One stream: chunk i routes over chunks < i (+ itself)."""
    idx = torch.arange(num_chunks, device=device)
    own = torch.eye(num_chunks, dtype=torch.bool, device=device)
    cand = idx[:, None] > idx[None, :]
    return RoutedMaskedLayout(cfg, own, cand, idx, idx, tokens_per_chunk)


def routed_reference(cfg: HistoryAttentionConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     hist_k: torch.Tensor | None, hist_v: torch.Tensor | None) -> torch.Tensor:
    """Naive routed attention of one chunk (q, k, v: (B, H, L, d)) over history chunks
    hist_k/hist_v (B, H, n, L, d): dense scores over [history | own], unselected chunks masked.
    The reference for RoutedCachedLayout."""
    if hist_k is None or hist_k.shape[2] == 0:
        return F.scaled_dot_product_attention(q, k, v)
    n, tpc = hist_k.shape[2], q.shape[2]
    idx = torch.arange(n + 1, device=q.device)
    own = torch.zeros(1, n + 1, dtype=torch.bool, device=q.device)
    own[0, n] = True
    cand = ~own
    layout = RoutedMaskedLayout(cfg, own, cand, idx[n:], idx, tpc)
    return layout.attend(0, q, torch.cat([hist_k.flatten(2, 3), k], 2),
                         torch.cat([hist_v.flatten(2, 3), v], 2))


# ----------------------------------------------------------------------------- fast path
def _attend_lse(q, k, v, scale):
    """Softmax attention and its log-sum-exp. q (..., T, d), k/v (..., S, d) ->
    out (..., T, d), lse (..., T, 1)."""
    logits = (q @ k.transpose(-1, -2)) * scale
    lse = logits.logsumexp(-1, keepdim=True)
    return (logits - lse).exp() @ v, lse


def merge_lse(o_a, lse_a, o_b, lse_b):
    """Combine two attentions over disjoint key sets into the one softmax over their union:
    (e^lse_a o_a + e^lse_b o_b) / (e^lse_a + e^lse_b), computed with max subtraction."""
    m = torch.maximum(lse_a, lse_b)
    w_a, w_b = (lse_a - m).exp(), (lse_b - m).exp()
    return (w_a * o_a + w_b * o_b) / (w_a + w_b)


class RoutedCachedLayout:
    """Rollout layout: the current chunk sees the history chunks its tokens select plus its
    own keys. topk: per query token and head, score the n cached chunks by q . k_mean,
    gather the selected chunks' K/V (index_select on the flattened chunk dim), attend over
    them and over the own chunk separately and merge by log-sum-exp. window: attend over
    the chunk slices [0, sink) and [n - window, n) plus the own chunk. With `write=True` the
    chunk's k/v (and their mean, by LayerCache.append) are appended to the cache afterwards."""

    def __init__(self, cache: KVCache, write: bool, cfg: HistoryAttentionConfig,
                 recorder: RouterRecorder | None = None, workspace: dict | None = None):
        cfg.validate()
        self.cache, self.write, self.cfg = cache, write, cfg
        self.recorder = recorder if (recorder is not None and (recorder.record_writes or not write)) else None
        # reusable buffers for the gathered K/V and history logits (inference only): a fresh
        # multi-MB tensor per call page-faults (glibc mmaps big blocks), which measured 3x
        # slower than the arithmetic; make_layout_fn shares one workspace across its layouts
        self.workspace = {} if workspace is None else workspace

    def attend(self, layer, q, k, v):
        lc = self.cache[layer]
        n = lc.num_chunks
        if n == 0:
            out = F.scaled_dot_product_attention(q, k, v)
        elif self.cfg.mode == "window":
            out = self._window(layer, lc, n, q, k, v)
        elif self.cfg.mode == "dense" or self.cfg.topk >= n:
            hk, hv = lc.chunks()
            out = F.scaled_dot_product_attention(q, torch.cat([hk.flatten(2, 3), k], 2),
                                                 torch.cat([hv.flatten(2, 3), v], 2))
            if self.recorder is not None:
                b, h, t, _ = q.shape
                all_idx = torch.arange(n, device=q.device).expand(b, h, t, n)
                self.recorder.record(layer, all_idx, n)
        else:
            out = self._topk(layer, lc, n, q, k, v)
        if self.write:
            lc.append(k, v, self.cache.tokens_per_chunk)
        return out

    def _window(self, layer, lc, n, q, k, v):
        s = min(self.cfg.sink, n)
        lo = max(s, n - self.cfg.window)
        parts_k = [lc.k[:, :, :s].flatten(2, 3), lc.k[:, :, lo:n].flatten(2, 3), k]
        parts_v = [lc.v[:, :, :s].flatten(2, 3), lc.v[:, :, lo:n].flatten(2, 3), v]
        if self.recorder is not None:
            b, h, t, _ = q.shape
            idx = torch.cat([torch.arange(s), torch.arange(lo, n)]).to(q.device)
            self.recorder.record(layer, idx.expand(b, h, t, -1), n)
        return F.scaled_dot_product_attention(q, torch.cat(parts_k, 2), torch.cat(parts_v, 2))

    def _buffer(self, name: str, shape, like: torch.Tensor) -> torch.Tensor:
        buf = self.workspace.get(name)
        if buf is None or buf.shape != torch.Size(shape) or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.workspace[name] = like.new_empty(shape)
        return buf

    def _topk(self, layer, lc, n, q, k, v):
        b, h, t, d = q.shape
        cap, tpc = lc.k.shape[2], lc.k.shape[3]
        scale = 1.0 / math.sqrt(d)
        kk = self.cfg.topk
        # router: per (b, head, token) scores over the cached mean keys; O(T n d)
        scores = q @ lc.k_mean[:, :, :n].transpose(-1, -2)               # (B, H, T, n)
        idx = scores.topk(kk, dim=-1, sorted=False).indices                # (B, H, T, k)
        if self.recorder is not None:
            self.recorder.record(layer, idx, n)
        # gather only the selected chunks: rows of the (B*H*cap, L*d) view of the buffer
        rows = (idx + (torch.arange(b * h, device=q.device) * cap).view(b, h, 1, 1)).flatten()
        k_rows, v_rows = lc.k.view(b * h * cap, tpc * d), lc.v.view(b * h * cap, tpc * d)
        q1 = q.unsqueeze(-2) * scale                                       # (B, H, T, 1, d)
        if torch.is_grad_enabled() and (q.requires_grad or lc.k.requires_grad or lc.v.requires_grad):
            ks = k_rows.index_select(0, rows).view(b, h, t, kk * tpc, d)
            vs = v_rows.index_select(0, rows).view(b, h, t, kk * tpc, d)
            o_h, lse_h = _attend_lse(q1, ks, vs, 1.0)
        else:  # same math in reused buffers, softmax in place
            ks = torch.index_select(k_rows, 0, rows, out=self._buffer("k", (rows.numel(), tpc * d), q))
            vs = torch.index_select(v_rows, 0, rows, out=self._buffer("v", (rows.numel(), tpc * d), q))
            ks, vs = ks.view(b, h, t, kk * tpc, d), vs.view(b, h, t, kk * tpc, d)
            logits = torch.matmul(q1, ks.transpose(-1, -2),
                                  out=self._buffer("logits", (b, h, t, 1, kk * tpc), q))
            m = logits.amax(-1, keepdim=True)
            p = logits.sub_(m).exp_()
            denom = p.sum(-1, keepdim=True)
            o_h = (p @ vs).div_(denom)
            lse_h = denom.log_().add_(m)
        # history branch above: one query per (b, h, t) against its own k * L gathered keys
        o_h, lse_h = o_h.squeeze(-2), lse_h.squeeze(-2)                    # (B, H, T, d), (B, H, T, 1)
        # intra branch: the chunk's own tokens
        o_i, lse_i = _attend_lse(q, k, v, scale)
        return merge_lse(o_h, lse_h, o_i, lse_i).to(q.dtype)


# ----------------------------------------------------------------------------- integration
class CachedLayoutFactory:
    """(cache, write) -> layout for `rollout(..., layout_fn=...)` (picklable)."""

    def __init__(self, cfg: HistoryAttentionConfig, recorder: RouterRecorder | None = None):
        cfg.validate()
        self.cfg, self.recorder = cfg, recorder
        self.workspace: dict = {}

    def __call__(self, cache: KVCache, write: bool):
        if self.cfg.mode == "dense" and self.recorder is None:
            return CachedLayout(cache, write)
        return RoutedCachedLayout(cache, write, self.cfg, self.recorder, self.workspace)

    def __getstate__(self):
        return {**self.__dict__, "workspace": {}}


def make_layout_fn(cfg: HistoryAttentionConfig, recorder: RouterRecorder | None = None) -> CachedLayoutFactory:
    """The `(cache, write) -> layout` factory for `rollout`: dense, routed or windowed."""
    return CachedLayoutFactory(cfg, recorder)


class MaskedLayoutFactory:
    """(kind, num_chunks, tokens_per_chunk, device) -> layout for CausalVideoDiT.masked_layout_fn:
    the routed / windowed two-stream and block-causal layouts of the training pass."""

    def __init__(self, cfg: HistoryAttentionConfig, backend: str = "sdpa"):
        cfg.validate()
        self.cfg, self.backend = cfg, backend

    def __call__(self, kind: str, num_chunks: int, tokens_per_chunk: int, device=None):
        if kind not in ("two_stream", "block_causal"):
            raise ValueError(f"unknown layout kind {kind!r}")
        if self.cfg.mode == "dense":
            make = two_stream_layout if kind == "two_stream" else block_causal_layout
            return make(num_chunks, tokens_per_chunk, self.backend, device)
        make = routed_two_stream_layout if kind == "two_stream" else routed_block_causal_layout
        return make(self.cfg, num_chunks, tokens_per_chunk, device)


def make_masked_layout_fn(cfg: HistoryAttentionConfig, backend: str = "sdpa") -> MaskedLayoutFactory:
    return MaskedLayoutFactory(cfg, backend)


def apply_history_attention(model, cfg: HistoryAttentionConfig | None):
    """Make model(x, t, history=...) (and the block-causal pass) use routed / windowed
    attention - the routed fine-tune stage. cfg None or mode 'dense' restores dense.
    Returns the model. Rollout takes `layout_fn=make_layout_fn(cfg)` separately."""
    if cfg is None or cfg.mode == "dense":
        model.masked_layout_fn = None
    else:
        model.masked_layout_fn = make_masked_layout_fn(cfg, model.config.attention_backend)
    return model


__all__ = ["HistoryAttentionConfig", "RouterRecorder", "RoutedMaskedLayout", "RoutedCachedLayout",
           "routed_two_stream_layout", "routed_block_causal_layout", "routed_reference",
           "merge_lse", "make_layout_fn", "make_masked_layout_fn", "apply_history_attention",
           "CachedLayoutFactory", "MaskedLayoutFactory"]
