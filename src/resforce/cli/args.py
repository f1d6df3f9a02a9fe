"""Argument helpers shared by the `resforce` commands (cli/main.py, cli/eval.py, cli/score.py):
flags in, library option objects out."""

from __future__ import annotations

import argparse


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The sampling and history-attention flags of generate, eval and compare."""
    g = p.add_argument_group("sampling (defaults: the run's `sample` config)")
    g.add_argument("--chunks", type=int, default=None, help="chunks to generate after the prefix")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--steps", type=int, default=None, help="Euler steps per chunk")
    g.add_argument("--shift", type=float, default=None, help="shift of the Euler grid")
    g.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    g.add_argument("--history-noise", type=float, default=None,
                   help="re-noise cached history to this level (diffusion forcing / noise aug)")
    g.add_argument("--prefix", default=None, help="video file (.npy/.mp4/.gif) whose frames start the rollout")
    g.add_argument("--prefix-chunks", type=int, default=None,
                   help="start from this many ground-truth chunks of the run's own data world")
    g.add_argument("--actions", default=None, metavar="FILE",
                   help="an action model's actions: .npy, one per frame, given frames included (action f produced "
                        "frame f; -1: none), (frames,) for every video or (videos, frames); without --chunks they "
                        "set the rollout's length (default: the world's ground-truth actions, else none)")
    add_alignment_arg(g)
    g.add_argument("--context", type=context_arg, default=None,
                   help="chunks the model sees at once, its own included (the KV cache rolls past "
                        "it; default: the run's training context); 'all' = dense attention over the "
                        "whole history (context extrapolation)")
    g.add_argument("--device", default="auto")
    g.add_argument("--online", action="store_true", help="use the online weights, not the EMA")
    r = p.add_argument_group("history attention at generation time")
    r.add_argument("--topk", type=int, default=None, help="route each query to the top-k history chunks")
    r.add_argument("--window", type=int, default=None, help="attend to the w most recent history chunks")
    r.add_argument("--sink", type=int, default=0, help="with --window: always keep the first s chunks")


def add_alignment_arg(p) -> None:
    """--alignment of --actions files (generate, eval, compare, score)."""
    from resforce.actions import ALIGNMENTS

    p.add_argument("--alignment", default=None, choices=ALIGNMENTS,
                   help="what the action beside frame t of an --actions file is: produced_this (the action that "
                        "produced frame t: resforce's convention, the default) or produces_next (the action taken "
                        "after frame t, which produces frame t + 1: gymnasium's and `resforce record`'s; read "
                        "shifted one frame, frame 0 getting no action, as data.video_folder.actions.alignment does)")


def context_arg(text: str) -> int:
    """--context: a number of chunks >= 1, or 'all' (0: all history)."""
    if text == "all":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of chunks >= 1 or 'all', got {text!r}")
    return value


def attention_from_args(args):
    """The HistoryAttentionConfig of --topk / --window / --sink, or None (the run's own)."""
    from resforce.model.attention.config import HistoryAttentionConfig

    if args.topk is not None and args.window is not None:
        raise SystemExit("error: --topk and --window exclude each other")
    if args.topk is not None:
        return HistoryAttentionConfig(mode="topk", topk=args.topk)
    if args.window is not None:
        return HistoryAttentionConfig(mode="window", window=args.window, sink=args.sink)
    return None  # the attention of the run's last training stage


def sample_overrides(args, **fixed):
    """The SampleOverrides of the sampling flags (`fixed` replaces some, e.g. seed=0)."""
    from resforce.generation.generate import SampleOverrides

    values = dict(chunks=args.chunks, seed=args.seed, steps=args.steps, shift=args.shift, cfg_scale=args.cfg_scale,
                  history_noise=args.history_noise, context=args.context)
    return SampleOverrides(**{**values, **fixed})


def generation_options(args, **fixed) -> dict:
    """Keyword arguments of generate / evaluate / compare from the sampling flags."""
    options = dict(sample=sample_overrides(args, **fixed), attention=attention_from_args(args), device=args.device,
                   prefer_ema=not args.online)
    alignment = alignment_of(args)
    if getattr(args, "actions", None) is not None:
        from resforce.actions import per_frame_actions

        options["actions"] = per_frame_actions(load_actions_file(args.actions), alignment, "--alignment")
    return options


def alignment_of(args) -> str:
    """--alignment (default produced_this); ValueError if it is given without --actions."""
    alignment = getattr(args, "alignment", None)
    if alignment is not None and not getattr(args, "actions", None):
        raise ValueError(f"--alignment {alignment} says how to read --actions FILE: give --actions")
    return alignment or "produced_this"


def load_actions_file(path: str):
    """--actions FILE: a .npy of per-frame actions (data only; checked against the run's
    action space when the model is loaded)."""
    from pathlib import Path

    import numpy as np

    p = Path(path)
    if p.suffix.lower() != ".npy":
        raise ValueError(f"--actions {path}: expected a .npy file of per-frame actions")
    if not p.is_file():
        raise FileNotFoundError(f"--actions {path}: no such file")
    try:
        a = np.load(p, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"--actions {path}: not a numeric .npy array ({e})") from None
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)) or a.ndim not in (1, 2, 3):
        raise ValueError(f"--actions {path}: expected int (frames,) / (videos, frames) or float (frames, D) / "
                         f"(videos, frames, D), got {a.dtype} of shape {a.shape}")
    return a


def add_frechet_arg(p) -> None:
    """--frechet-reference of eval, compare and score."""
    from resforce.evaluation.evaluate import FRECHET_REFERENCE_CLIPS

    p.add_argument("--frechet-reference", type=int, default=FRECHET_REFERENCE_CLIPS, metavar="CLIPS",
                   help="Frechet distances against this many independent ground-truth clips of the world "
                        f"(default {FRECHET_REFERENCE_CLIPS}; 0: none)")


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    """--prompt and the local text encoder / VAE of a run trained on captioned latents."""
    g = p.add_argument_group("prompts (runs trained on `resforce prepare` latents)")
    g.add_argument("--prompt", default=None, help="text prompt (default: the empty prompt)")
    g.add_argument("--negative-prompt", default=None,
                   help="unconditional branch of guidance (default: the run's data.latents.negative_prompt)")
    g.add_argument("--text-encoder", default=None,
                   help="local umT5 folder (default: the one recorded in the run's dataset index)")
    g.add_argument("--vae", default=None, help="local Wan VAE folder (default: the one recorded in the dataset index)")


def prompt_options(args) -> dict:
    """generate()'s prompt= and vae= of the prompt flags."""
    from resforce.text_context import PromptOptions

    return dict(prompt=PromptOptions(getattr(args, "prompt", None), getattr(args, "negative_prompt", None),
                                     getattr(args, "text_encoder", None)), vae=getattr(args, "vae", None))
