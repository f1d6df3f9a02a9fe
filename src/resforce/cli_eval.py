"""`resforce eval`, `resforce compare` and `resforce demo`."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

DEMO_MODELS = {"teacher forcing": "teacher_forcing.safetensors",
               "resampling forcing": "resampling_forcing.safetensors"}
DEMO_RECIPES = {"teacher forcing": "bb_teacher.yaml", "resampling forcing": "bb_resampling.yaml"}


def _gen_kwargs(args) -> dict:
    from .cli import _attention_from_args

    return dict(steps=args.steps, shift=args.shift, cfg_scale=args.cfg, history_noise=args.history_noise,
                attention=_attention_from_args(args), device=args.device, prefer_ema=not args.online,
                context=args.context)


def cmd_eval(args) -> None:
    from .checks import check_counts, check_output
    from .evaluation import evaluate, frechet_line, save_json, table_metrics
    from .metrics import format_table

    check_counts(args)
    if args.json:
        check_output(args.json, (".json",), "--json")
    ev = evaluate(args.run, samples=args.samples, chunks=args.chunks, seed=args.seed or 0,
                  prefix_chunks=args.prefix_chunks if args.prefix_chunks is not None else 2,
                  segment_len=args.segment, frechet_reference=args.frechet_reference, **_gen_kwargs(args))
    print(f"{ev.name}: {ev.summary()['samples']} rollouts of {ev.summary()['frames']} frames "
          f"({ev.generated.prefix_frames} given); training clips: {ev.generated.train_frames} frames; "
          f"segments marked * lie beyond the training length")
    print(format_table(ev.rows, table_metrics(ev)))
    if frechet_line(ev):
        print(frechet_line(ev))
    if args.json:
        print(f"wrote {save_json(ev, args.json)}")


def compare(runs: list, names: list[str], out_dir, samples: int, chunks: int | None, seed: int = 0,
            prefix_chunks: int = 2, notes: str = "", title: str = "resforce comparison",
            segment_len: int | None = None, frechet_reference: int | None = None, **gen_kwargs) -> Path:
    """Evaluate every run on the same seeds and write out_dir/index.html."""
    from .evaluation import FRECHET_REFERENCE_CLIPS, evaluate, frechet_line, plot_metrics, save_json, table_metrics
    from .stats import format_table
    from .report import plot_metric_vs_horizon, write_compare_page
    from .verdict import paired_verdict
    from .video_io import save_grid_video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evs = []
    for run, name in zip(runs, names):
        print(f"[{name}] rolling out {samples} samples from {run}")
        evs.append(evaluate(run, name=name, samples=samples, chunks=chunks, seed=seed,
                            prefix_chunks=prefix_chunks, segment_len=segment_len,
                            frechet_reference=FRECHET_REFERENCE_CLIPS if frechet_reference is None else frechet_reference,
                            **gen_kwargs))
    slug = lambda s: "".join(c if c.isalnum() else "_" for c in s.lower())
    methods, rows = [], []
    gt = evs[0].generated.ground_truth
    scale = _page_scale(evs[0].generated.videos.shape[-1])
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
    if frechet_line(evs[0]):
        definition += "\n" + frechet_line(evs[0])
        text += "\n" + frechet_line(evs[0])
    (out / "table.txt").write_text(text + "\n")
    line = paired_verdict(evs)
    page = write_compare_page(out, methods, plots, title=title, metrics=metrics, verdict=line,
                              notes=(notes + "\n" + definition).strip())
    print(text)
    if line:
        print(f"\n{line}")
    return page


def _page_scale(width: int) -> int:
    """Nearest-neighbour upscale so each sample of a grid is about 128 px wide."""
    return max(1, 128 // max(1, width))


def cmd_compare(args) -> None:
    from .checks import check_counts

    check_counts(args)
    names = args.names.split(",") if args.names else [Path(r).stem for r in args.runs]
    if len(names) != len(args.runs):
        raise ValueError(f"--names gives {len(names)} names for {len(args.runs)} runs")
    page = compare(args.runs, names, args.out, args.samples, args.chunks, seed=args.seed or 0,
                   prefix_chunks=args.prefix_chunks if args.prefix_chunks is not None else 2,
                   segment_len=args.segment, frechet_reference=args.frechet_reference, **_gen_kwargs(args))
    print(f"comparison page: {page}")


def shipped_models() -> dict[str, Path]:
    root = resources.files("resforce") / "assets" / "demo"
    return {name: Path(str(root / f)) for name, f in DEMO_MODELS.items()}


def cmd_demo(args) -> None:
    out = Path(args.out)
    models = shipped_models()
    if args.retrain or not all(p.is_file() for p in models.values()):
        models = retrain_demo_models(out / "runs", args.configs)
    page = compare(list(models.values()), list(models), out / "report", samples=args.samples,
                   chunks=args.chunks, seed=0, prefix_chunks=2, segment_len=args.segment,
                   title="Teacher forcing vs Resampling Forcing on bouncing balls",
                   notes=f"Rollouts of {args.chunks} chunks after 2 given frames, each chunk seeing the "
                         f"8 chunks of the training clips (rolling context); models: "
                         + ", ".join(f"{k}: {v.name}" for k, v in models.items()))
    print(f"\ndemo report: {page.resolve()}")
    print(f"videos, plots, table: {(out / 'report').resolve()}/")


def retrain_demo_models(run_root: Path, config_dir: str) -> dict[str, Path]:
    """Train both demo models from scratch (shared teacher-forcing warm-up) and export them."""
    from .checkpoint import resolve_weights
    from .config import load_config
    from .train import train

    cfgs = {name: load_config(Path(config_dir) / recipe, [f"run_dir={run_root / Path(recipe).stem}"])
            for name, recipe in DEMO_RECIPES.items()}
    rf = cfgs["resampling forcing"]
    warm = rf.stages[0].steps
    rf_dir = train(rf, stop_at=warm)           # the shared warm-up, once
    train(cfgs["teacher forcing"], init_from=rf_dir)  # branches from the warm-up checkpoint
    train(rf)
    exported = {}
    for name, cfg in cfgs.items():
        dst = run_root / DEMO_MODELS[name]
        shutil.copyfile(resolve_weights(cfg.run_dir), dst)
        exported[name] = dst
    return exported


def _add_frechet_arg(p) -> None:
    from .evaluation import FRECHET_REFERENCE_CLIPS

    p.add_argument("--frechet-reference", type=int, default=FRECHET_REFERENCE_CLIPS, metavar="CLIPS",
                   help="Frechet distances against this many independent ground-truth clips of the world "
                        f"(default {FRECHET_REFERENCE_CLIPS}; 0: none)")


def add_commands(sub, add_sampling_args) -> None:
    e = sub.add_parser("eval", help="long rollouts, metrics, a table by horizon segment")
    e.add_argument("run", help="run directory, checkpoint directory or .safetensors file")
    e.add_argument("--samples", type=int, default=16)
    e.add_argument("--segment", type=int, default=None, help="frames per table segment (default: training length)")
    e.add_argument("--json", default=None, help="also write the metrics here")
    _add_frechet_arg(e)
    add_sampling_args(e)
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("compare", help="evaluate several runs on the same seeds; one HTML page")
    c.add_argument("runs", nargs="+")
    c.add_argument("--out", required=True, help="output directory (index.html, videos, plots)")
    c.add_argument("--names", default=None, help="comma-separated method names")
    c.add_argument("--samples", type=int, default=16)
    c.add_argument("--segment", type=int, default=None, help="frames per table segment (default: training length)")
    _add_frechet_arg(c)
    add_sampling_args(c)
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", help="teacher forcing vs Resampling Forcing on bouncing balls")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--samples", type=int, default=16)
    d.add_argument("--chunks", type=int, default=126,
                   help="generated chunks after the 2 given frames (128 frames = 16x the 8-frame training clips)")
    d.add_argument("--segment", type=int, default=32, help="frames per table segment")
    d.add_argument("--retrain", action="store_true",
                   help="train the two models from scratch (about an hour on 2 CPU cores) instead of "
                        "using the shipped checkpoints")
    d.add_argument("--configs", default="configs", help="folder with bb_teacher.yaml and bb_resampling.yaml")
    d.set_defaults(func=cmd_demo)

    from .cli_score import add_command as add_score
    add_score(sub)
