"""Several runs on the same seeds: one table, metric-vs-horizon plots, side-by-side videos
and a static HTML page (`resforce compare`, `resforce demo`)."""

from __future__ import annotations

from pathlib import Path

from resforce.evaluation.evaluate import FRECHET_REFERENCE_CLIPS, evaluate, frechet_line, plot_metrics, save_json, table_metrics
from resforce.evaluation.report import plot_metric_vs_horizon, write_compare_page
from resforce.generation.generate import SampleOverrides
from resforce.metrics.stats import format_table
from resforce.evaluation.verdict import paired_verdict
from resforce.io.video_io import save_grid_video


def compare(runs: list, names: list[str], out_dir, samples: int, sample: SampleOverrides | None = None,
            prefix_chunks: int = 2, notes: str = "", title: str = "resforce comparison",
            segment_len: int | None = None, frechet_reference: int | None = None, **options) -> Path:
    """Evaluate every run on the same seeds (`sample`: overrides of the runs' sample configs;
    seed None = 0) and write out_dir/index.html. `options`: attention, device, prefer_ema of
    `resforce.evaluation.evaluate.evaluate`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evs = []
    for run, name in zip(runs, names):
        print(f"[{name}] rolling out {samples} samples from {run}")
        evs.append(evaluate(run, name=name, samples=samples, sample=sample,
                            prefix_chunks=prefix_chunks, segment_len=segment_len,
                            frechet_reference=FRECHET_REFERENCE_CLIPS if frechet_reference is None else frechet_reference,
                            **options))
    slug = lambda s: "".join(c if c.isalnum() else "_" for c in s.lower())
    methods, rows = [], []
    gt = evs[0].generated.ground_truth
    scale = page_scale(evs[0].generated.videos.shape[-1])
    if gt is not None:  # the world's true continuation of the same given frames
        save_grid_video(out / "ground_truth.mp4", list(gt[:4]), fps=8, scale=scale)
        methods.append({"name": "ground truth", "video_path": "ground_truth.mp4",
                        "caption": "the world's own continuation of the same given frames"})
    for ev in evs:
        video = f"{slug(ev.name)}.mp4"
        save_grid_video(out / video, list(ev.generated.videos[:4]), fps=8, scale=scale)
        save_json(ev, out / f"{slug(ev.name)}.json")
        for r in ev.rows:
            rows.append({**r, "method": ev.name})
        methods.append({"name": ev.name, "video_path": video, "rows": ev.rows,
                        "caption": f"{ev.generated.prefix_frames} given frames, then "
                                   f"{ev.generated.videos.shape[2] - ev.generated.prefix_frames} generated"})
    metrics = table_metrics(evs[0])
    plots = []
    train_len = evs[0].generated.train_frames
    for m in plot_metrics(evs[0]):
        png = f"{m}_vs_horizon.png"
        plot_metric_vs_horizon({ev.name: ev.per_frame for ev in evs}, m, out / png, train_len=train_len, smooth=4)
        plots.append(png)
    text = format_table(rows, metrics)
    definition = evs[0].world.summary_definition
    reference = frechet_line(evs[0])
    if reference:
        definition += "\n" + reference
        text += "\n" + reference
    (out / "table.txt").write_text(text + "\n")
    line = paired_verdict(evs, evs[0].world.verdict_metrics)
    page = write_compare_page(out, methods, plots, title=title, metrics=metrics, verdict=line,
                              notes=(notes + "\n" + definition).strip())
    print(text)
    if line:
        print(f"\n{line}")
    return page


def page_scale(width: int) -> int:
    """Nearest-neighbour upscale so each sample of a grid is about 128 px wide."""
    return max(1, 128 // max(1, width))
