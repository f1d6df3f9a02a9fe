"""The router-statistics figure (matplotlib stays outside model/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from resforce.model.attention.router_stats import RouterRecorder


def plot_router_selections(recorder: RouterRecorder, path: str | Path) -> Path:
    """Selection frequency vs chunk distance and vs absolute chunk index, one line per
    layer (mean over heads; thin lines per head) - sink + recency show up as peaks at
    index 0 and distance 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for layer in recorder.layers:
        for ax, freq, start in ((axes[0], recorder.distance_frequency(layer), 1),
                                (axes[1], recorder.index_frequency(layer), 0)):
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
    fig.suptitle(f"history router selections ({recorder.calls} routed calls)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
