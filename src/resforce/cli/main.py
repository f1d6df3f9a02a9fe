"""`resforce` commands. Thin: parse arguments, call the library, print where outputs are."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resforce.cli.args import add_prompt_args, add_sampling_args


def cmd_train(args) -> None:
    from resforce.config import load_config
    from resforce.training.loop import train

    overrides, init_from = list(args.overrides), args.init_from
    if init_from is not None:
        import json

        from resforce.wan.folder import is_wan_folder

        if is_wan_folder(init_from):  # a diffusers Wan folder: its config.json sets the model's shape
            overrides, init_from = overrides + [f"init.wan={json.dumps(str(init_from))}"], None
    cfg = load_config(args.config, overrides)
    import os

    if args.stop_at is not None and args.stop_at < 1:
        raise ValueError(f"--stop-at {args.stop_at}: expected a global step >= 1")
    run_dir = train(cfg, resume=not (args.no_resume or args.overwrite), stop_at=args.stop_at,
                    init_from=init_from, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # torchrun: print once (the group is shut down by now)
        print(f"run directory: {run_dir}  (checkpoints/, metrics.jsonl, config.yaml)")


def generate_from_args(args, batch: int, record_router: bool = False, with_ground_truth: bool = False):
    from resforce.io.checks import check_video_values
    from resforce.cli.args import generation_options, prompt_options
    from resforce.generation.generate import generate
    from resforce.io.video_io import load_video

    prefix = load_video(args.prefix) if args.prefix else None
    if prefix is not None:
        check_video_values(prefix, f"--prefix {args.prefix}")
    return generate(args.run, batch=batch, prefix=prefix, prefix_chunks=args.prefix_chunks or 0,
                    record_router=record_router, with_ground_truth=with_ground_truth, **generation_options(args),
                    **prompt_options(args))


def cmd_generate(args) -> None:
    from resforce.io.checks import check_counts, check_output
    from resforce.io.video_io import SAVE_EXTENSIONS, save_grid_video, save_video

    check_counts(args)
    out = check_output(args.out, SAVE_EXTENSIONS)  # before the rollout, not after it
    if args.router_stats:
        check_output(args.router_stats, (".json",), "--router-stats")
    g = generate_from_args(args, args.batch, record_router=bool(args.router_stats))
    videos = g.videos
    info = {"prefix_frames": g.prefix_frames, "train_frames": g.train_frames}
    if out.suffix == ".npy":
        import numpy as np

        from resforce.io.fileio import atomic_write
        array = videos.numpy() if args.batch > 1 else videos[0].numpy()
        atomic_write(out, lambda tmp: np.save(tmp, array))
    elif args.batch > 1:
        save_grid_video(out, list(videos), fps=args.fps)
    else:
        save_video(out, videos[0], fps=args.fps)
    print(f"wrote {out}: {videos.shape[0]} video(s) of {videos.shape[2]} frames "
          f"({info['prefix_frames']} given, training clips were {info['train_frames']} frames)")
    if args.router_stats:
        from resforce.evaluation.router_plot import plot_router_selections

        g.recorder.save(args.router_stats)
        plot_router_selections(g.recorder, Path(args.router_stats).with_suffix(".png"))
        print(f"router statistics: {args.router_stats} (plot: {Path(args.router_stats).with_suffix('.png')})")


def cmd_export(args) -> None:
    from resforce.io.export import export_weights

    out = export_weights(args.run, args.out, args.dtype, prefer_ema=not args.online,
                         merge_lora=args.merge_lora)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.dtype}, config in its metadata)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resforce", description="Resampling Forcing for autoregressive video diffusion")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a YAML recipe, with key=value overrides")
    t.add_argument("config", help="YAML recipe (see configs/)")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. optim.lr=3e-4 stages.1.steps=500")
    t.add_argument("--no-resume", action="store_true",
                   help="start from step 0; refused if run_dir already holds a run, unless --overwrite")
    t.add_argument("--overwrite", action="store_true",
                   help="start over (implies --no-resume): move an old run in run_dir aside to run_dir.old-<time>")
    t.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) at this global step")
    t.add_argument("--init-from", default=None,
                   help="start from another run's checkpoint (full state), e.g. a shared warm-up, or "
                        "from a local diffusers Wan2.1 folder (as init.wan=DIR: weights and model shape)")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="roll out a trained model chunk by chunk")
    g.add_argument("run", help="run directory, checkpoint directory or .safetensors file")
    g.add_argument("--out", required=True, help="output .mp4, .gif or .npy")
    g.add_argument("--batch", type=int, default=1, help="videos to generate (side by side in mp4/gif)")
    g.add_argument("--fps", type=int, default=8)
    g.add_argument("--router-stats", default=None, help="save which history chunks each head selects (.json)")
    add_sampling_args(g)
    add_prompt_args(g)
    g.set_defaults(func=cmd_generate)

    x = sub.add_parser("export", help="one self-contained .safetensors file (weights + config) from a run")
    x.add_argument("run", help="run directory, checkpoint directory or .safetensors file")
    x.add_argument("--out", required=True)
    x.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    x.add_argument("--online", action="store_true", help="export the online weights, not the EMA")
    x.add_argument("--merge-lora", action="store_true",
                   help="a LoRA run: fold its adapters into the base weights and export the full model "
                        "(default for a LoRA run: the adapters alone)")
    x.set_defaults(func=cmd_export)

    from resforce.cli import diagnose as cli_diagnose
    from resforce.cli import eval as cli_eval
    from resforce.cli import memory as cli_memory
    from resforce.cli import play as cli_play
    from resforce.cli import prepare as cli_prepare
    from resforce.cli import record as cli_record
    from resforce.cli import score as cli_score
    cli_prepare.add_command(sub)
    cli_eval.add_commands(sub)
    cli_play.add_command(sub)
    cli_score.add_command(sub)
    cli_memory.add_command(sub)
    cli_diagnose.add_command(sub)
    cli_record.add_command(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as e:  # bad input, missing files, a full disk: no traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
