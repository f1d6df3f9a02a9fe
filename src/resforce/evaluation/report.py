"""Static comparison page: videos side by side, metric-vs-horizon plots and segment tables.

Video format
------------
The page embeds each method's rollout with ``<video loop muted autoplay>`` (no controls over the frames); the MIME
type comes from the file extension. Use **MP4 / H.264 (libx264, yuv420p, even frame size,
``+faststart``)** as written by :func:`resforce.io.video_io.save_video` (re-exported here as
:func:`save_video`) for ``*.mp4``: Debian's Chromium (tested with 156 on bookworm), Chrome,
Firefox and Safari all play it. ``*.webm`` (VP9, libvpx-vp9) also works in Chromium and
Firefox and is written by :func:`save_video` for ``*.webm``. A method may list several files
(``video_path=["a.webm", "a.mp4"]``); they become ``<source>`` elements and the browser plays
the first it supports.

Every file is written atomically (:func:`resforce.io.fileio.atomic_write`: temporary file in the
same directory, then ``os.replace``), and the page is self-contained: inline CSS and a small
inline script, no external JS/CSS/CDN.
The script records on each ``<img>``/``<video>`` whether it loaded (``data-loaded="1"``, or
``data-error``) and a summary on ``<body>`` (``data-images-loaded``/``-total``,
``data-videos-loaded``/``-total``) so a headless browser's ``--dump-dom`` can verify it.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from resforce.io.fileio import atomic_write, write_text_atomic
from resforce.metrics.stats import mean_se, table_cells
from resforce.io.video_io import save_video  # re-exported: the page's videos are written with it

__all__ = [
    "save_video",
    "plot_metric_vs_horizon",
    "rows_to_html",
    "write_compare_page",
    "VIDEO_MIME",
]

VIDEO_MIME = {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".ogv": "video/ogg"}


# ----------------------------------------------------------------------------- plots
def _smooth(x: np.ndarray, k: int) -> np.ndarray:
    """NaN-aware centred moving average along the last axis."""
    if k <= 1:
        return x
    finite = np.isfinite(x)
    kern = np.ones(k)
    pad = k // 2
    num = np.apply_along_axis(lambda r: np.convolve(np.pad(r, (pad, k - 1 - pad)), kern, "valid"), -1, np.where(finite, x, 0.0))
    den = np.apply_along_axis(lambda r: np.convolve(np.pad(r, (pad, k - 1 - pad)), kern, "valid"), -1, finite.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def plot_metric_vs_horizon(
    results: Mapping[str, Mapping[str, Any]],
    metric: str,
    path: str | os.PathLike,
    train_len: int | None = None,
    *,
    title: str | None = None,
    ylabel: str | None = None,
    fps: float | None = None,
    smooth: int = 1,
    logy: bool = False,
) -> Path:
    """Plot ``metric`` against frame index for each method: mean ± standard-error band.

    ``results[method][metric]`` is an (M, F) array (samples x frames; NaN ignored);
    methods lacking the metric are skipped. ``smooth`` > 1 applies a centred moving average
    to each sample before averaging. A dashed vertical line marks ``train_len`` (the training
    horizon) and the region beyond it is shaded. Saved as PNG atomically; returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6.4, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    unit = 1.0 / fps if fps else 1.0
    n_frames = 0
    for name, res in results.items():
        if metric not in res:
            continue
        a = np.atleast_2d(np.asarray(res[metric], dtype=np.float64))
        a = _smooth(a, smooth)
        mean, se = mean_se(a, axis=0)
        se = np.where(np.isfinite(se), se, 0.0)
        t = np.arange(a.shape[1]) * unit
        n_frames = max(n_frames, a.shape[1])
        (line,) = ax.plot(t, mean, lw=1.6, label=f"{name} (n={a.shape[0]})")
        ax.fill_between(t, mean - se, mean + se, color=line.get_color(), alpha=0.25, lw=0)
    if train_len is not None:
        x = train_len * unit
        ax.axvline(x, color="k", ls="--", lw=1.0, label="training length")
        if n_frames * unit > x:
            ax.axvspan(x, (n_frames - 1) * unit, color="0.5", alpha=0.08, lw=0)
    ax.set_xlabel("time (s)" if fps else "frame")
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title or f"{metric} vs horizon (mean ± s.e.)")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


# ----------------------------------------------------------------------------- tables
def rows_to_html(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None, precision: int = 3) -> str:
    """HTML table of :func:`resforce.metrics.stats.segment_table` rows (beyond-training rows marked)."""
    header, body, note = table_cells(rows, metrics, precision)
    out = ['<table class="metrics">', "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
    for r, cells in zip(rows, body):
        cls = ' class="beyond"' if r.get("beyond_train") else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    if any(r.get("beyond_train") for r in rows):
        out.append(f'<p class="note">{html.escape(note)}</p>')
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:1.5em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.4em 0 .5em}
.notes p{margin:.3em 0;max-width:70em}
.videos{display:flex;flex-wrap:wrap;gap:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;text-align:center}
.card video{max-width:100%;height:auto;image-rendering:pixelated;background:#000;display:block;margin:auto}
.card .name{font-weight:600;margin-top:6px}.card .cap{font-size:.85em;color:#555}
.verdict{font-size:1.1em;font-weight:600;background:#eef6ee;border-left:4px solid #4a4;padding:8px 12px;max-width:70em}
.plots{display:flex;flex-wrap:wrap;gap:16px}.plots img{max-width:100%;width:560px;background:#fff;border:1px solid #ddd}
table.metrics{border-collapse:collapse;font-size:.88em;background:#fff;margin:.4em 0}
table.metrics th,table.metrics td{border:1px solid #ccc;padding:3px 8px;white-space:nowrap}
table.metrics th{background:#eee}table.metrics td{text-align:right;font-variant-numeric:tabular-nums}
table.metrics td:first-child{text-align:left}
tr.beyond td{background:#fff4e0}.note{font-size:.85em;color:#555}
"""

_JS = """
(function(){
  var b=document.body;
  function upd(){
    var im=document.images, v=document.getElementsByTagName('video'), il=0, vl=0, err=0, i;
    for(i=0;i<im.length;i++){
      if(im[i].complete&&im[i].naturalWidth>0){im[i].setAttribute('data-loaded','1');il++;}
      else if(im[i].complete){im[i].setAttribute('data-error','1');err++;}
    }
    for(i=0;i<v.length;i++){
      if(v[i].readyState>=1&&v[i].videoWidth>0){v[i].setAttribute('data-loaded','1');vl++;}
      else if(v[i].error||v[i].networkState===3){v[i].setAttribute('data-error','1');err++;}
    }
    b.setAttribute('data-images-total',im.length);b.setAttribute('data-images-loaded',il);
    b.setAttribute('data-videos-total',v.length);b.setAttribute('data-videos-loaded',vl);
    b.setAttribute('data-media-errors',err);
  }
  var ev=['load','error','loadedmetadata','loadeddata','canplay','stalled','emptied'], i, j, all=[];
  var im=document.images, v=document.getElementsByTagName('video'), s=document.getElementsByTagName('source');
  for(i=0;i<im.length;i++)all.push(im[i]);for(i=0;i<v.length;i++)all.push(v[i]);for(i=0;i<s.length;i++)all.push(s[i]);
  for(i=0;i<all.length;i++)for(j=0;j<ev.length;j++)all[i].addEventListener(ev[j],upd);
  window.addEventListener('load',upd);upd();
})();
"""


def _check_rel(out_dir: Path, rel: str, check_files: bool) -> str:
    rel = str(rel).replace(os.sep, "/")
    if rel.startswith("/") or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", rel) or Path(rel).is_absolute():
        raise ValueError(f"page resources must be paths relative to out_dir, got {rel!r}")
    if check_files and not (out_dir / rel).is_file():
        raise FileNotFoundError(f"{out_dir / rel} does not exist")
    return rel


def _src(rel: str) -> str:
    from urllib.parse import quote

    return html.escape(quote(rel, safe="/._-~"), quote=True)


def write_compare_page(
    out_dir: str | os.PathLike,
    methods: Sequence[Mapping[str, Any]],
    plots: Sequence[str] = (),
    title: str = "resforce: long-horizon comparison",
    notes: str | Sequence[str] = "",
    *,
    verdict: str = "",
    metrics: Sequence[str] | None = None,
    check_files: bool = True,
) -> Path:
    """Write ``out_dir/index.html`` comparing methods; returns its path.

    ``methods``: dicts ``{"name", "video_path", "rows"?, "caption"?}`` where ``video_path``
    is relative to ``out_dir`` (one path, or a list of alternatives such as
    ``["x.webm", "x.mp4"]``) and ``rows`` are :func:`resforce.metrics.stats.segment_table` rows
    (gathered into one per-segment table with a method column; ``metrics`` picks its
    columns). ``plots``: PNG paths relative to ``out_dir``. ``notes``: plain text (escaped; blank-line separated paragraphs) or a list of
    paragraphs. ``verdict``: one sentence shown first (resforce.evaluation.verdict). With ``check_files``
    every referenced file must exist. Written atomically.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    if verdict:
        parts.append(f'<p class="verdict">{esc(verdict)}</p>')
    paras = [notes] if isinstance(notes, str) else list(notes)
    paras = [p for blk in paras for p in re.split(r"\n\s*\n", blk) if p.strip()]
    if paras:
        parts.append('<div class="notes">' + "".join(f"<p>{esc(p.strip())}</p>" for p in paras) + "</div>")

    if methods:
        parts.append('<h2>Rollouts</h2><div class="videos">')
        for m in methods:
            paths = m.get("video_path")
            paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths or [])
            rels = [_check_rel(out, p, check_files) for p in paths]
            # no player controls: they would cover the frames; the videos loop by themselves
            attrs = 'loop muted autoplay playsinline preload="auto"'
            if len(rels) == 1:
                tag = f'<video {attrs} src="{_src(rels[0])}"></video>'
            else:
                srcs = "".join(
                    f'<source src="{_src(r)}"'
                    + (f' type="{VIDEO_MIME[Path(r).suffix.lower()]}"' if Path(r).suffix.lower() in VIDEO_MIME else "")
                    + ">"
                    for r in rels
                )
                tag = f"<video {attrs}>{srcs}</video>"
            cap = f'<div class="cap">{esc(str(m["caption"]))}</div>' if m.get("caption") else ""
            parts.append(f'<div class="card">{tag}<div class="name">{esc(str(m["name"]))}</div>{cap}</div>')
        parts.append("</div>")

    if plots:
        parts.append('<h2>Metrics vs horizon</h2><div class="plots">')
        for p in plots:
            rel = _check_rel(out, p, check_files)
            parts.append(f'<img src="{_src(rel)}" alt="{esc(Path(rel).stem)}">')
        parts.append("</div>")

    all_rows = [dict(r, method=m["name"]) for m in methods for r in (m.get("rows") or [])]
    if all_rows:
        parts.append("<h2>Per-segment metrics</h2>")
        parts.append(rows_to_html(all_rows, metrics))

    parts.append(f"<script>{_JS}</script>")
    parts.append("</body></html>")
    page = out / "index.html"
    write_text_atomic(page, "\n".join(parts) + "\n")
    return page
