"""The rolling session a trained run is rolled out with, decided in one place.

`generate`, `eval`, `compare`, `demo` and `play` all roll a run's model out as it was trained:
each chunk sees at most `context_chunks` chunks (its own included; the KV cache rolls past
them), the first `sink_chunks` stay in view where the run's last stage trained with a sink,
every call runs under the history attention of the run's last stage (dense, top-k routing or
a window) and the cached history is re-noised to the run's `sample.history_noise`. Any of these
can be overridden; what is not overridden comes from the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from resforce.model.attention.config import HistoryAttentionConfig
from resforce.rollout import SampleConfig


def training_context_chunks(cfg) -> int:
    """Chunks a run's model saw at once in training: its longest training clip."""
    return max(st.clip_chunks for st in cfg.stages)


@dataclass(frozen=True)
class RollingSession:
    """How a run is rolled out: its sample config with the context resolved, and the history
    attention of every call."""

    sample: SampleConfig
    """The run's `sample` config (with overrides) whose `context` is a chunk count (0 = all
    history) and whose `sink` is the run's where it trained with one."""
    attention: HistoryAttentionConfig
    """The history attention of every model call (default: the run's last stage's)."""

    @property
    def context_chunks(self) -> int:
        """Chunks seen at once, own chunk included; 0 = all history (dense)."""
        return self.sample.context

    @property
    def sink_chunks(self) -> int:
        """First chunks kept in view for good when the context rolls."""
        return self.sample.sink


def rolling_session(cfg, sample: SampleConfig | None = None,
                    attention: HistoryAttentionConfig | None = None) -> RollingSession:
    """The session of run config `cfg`: `sample` (default: the run's own `sample` config) with
    context None -> the training context, sink 0 -> the last stage's window sink (with a
    rolling context only), and `attention` None -> the last stage's history attention.
    Validates context and sink before any work."""
    s = cfg.sample if sample is None else sample
    trained = cfg.stages[-1].attention
    if s.context is None:
        s = dataclasses.replace(s, context=training_context_chunks(cfg))
    if s.context and s.sink == 0 and trained.mode == "window" and trained.sink > 0:
        s = dataclasses.replace(s, sink=trained.sink)  # a sink only where training had one
    s.cache_chunks()
    return RollingSession(s, attention or trained)
