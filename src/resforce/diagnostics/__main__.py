"""resforce diagnose RUN_OR_WEIGHTS [--samples N] [--shifts S ...] [--json OUT]
(also: python -m resforce.diagnostics ...)

History gap (the model's rollout vs its resampled training history, per chunk position) and
identity sensitivity (the follow score) of a trained model on its world's evaluation clips
(seed --seed, the clips `resforce eval --seed` starts from), over one training clip.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

import torch

from resforce.actions import commanded_actions
from resforce.io.weights import load_model
from resforce.io.fileio import write_text_atomic
from resforce.model.attention.policy import AttentionPolicy
from resforce.generation.generate import world_clips
from resforce.worlds import world_of
from resforce.generation.session import training_context_chunks
from resforce.diagnostics.history_gap import DISTANCES, gap_table, history_gap, model_rollout
from resforce.diagnostics.identity import PERMUTATIONS, follow_score, model_generator, permute_channels


def _floats(values: list[str]) -> list[float]:
    return [float(x) for v in values for x in v.split(",") if x]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m resforce.diagnostics", description=DESCRIPTION)
    add_arguments(ap)
    return ap.parse_args(argv)


DESCRIPTION = "history gap and identity sensitivity of a trained model on its world's evaluation clips"


def add_arguments(ap) -> None:
    """The arguments of `resforce diagnose` and `python -m resforce.diagnostics`."""
    ap.add_argument("run", help="run directory, checkpoint directory or weights file")
    ap.add_argument("--samples", type=int, default=16, help="clips (default 16)")
    ap.add_argument("--shifts", nargs="+", default=["0.1", "0.6", "3.0"],
                    help="resampling shifts s (space- or comma-separated; default 0.1 0.6 3.0)")
    ap.add_argument("--strategies", nargs="+", default=["resampling", "parallel_resampling"],
                    choices=["resampling", "parallel_resampling"])
    ap.add_argument("--prefix-chunks", type=int, default=2, help="ground-truth chunks given to the rollout (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="evaluation clips and noise (default 0)")
    ap.add_argument("--bins", type=int, default=4, help="colour histogram bins per channel (default 4)")
    ap.add_argument("--perm", default="gbr", choices=sorted(PERMUTATIONS),
                    help="channel permutation of the identity test (default gbr: R<-G, G<-B, B<-R)")
    ap.add_argument("--anchor-chunks", nargs="+", type=int, default=[0], metavar="K",
                    help="also build each resampled history with its first K chunks kept clean and "
                         "self-resampling continuing from them (history.anchor_chunks; default 0: none)")
    ap.add_argument("--per-chunk", action="store_true",
                    help="also build each resampled history with t_s drawn per chunk (history.resample_per_chunk)")
    ap.add_argument("--world-metrics", nargs="+", default=None, metavar="METRIC",
                    help="the world's metrics each history is scored with, as if it were a generated video "
                         "(default: the world's verdict metrics, e.g. count_error identity_error)")
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--markdown", help="also write the printed report here")


def run(a) -> tuple[dict, str]:
    """(numbers, Markdown report) for parsed arguments."""
    torch.manual_seed(a.seed)
    model, cfg = load_model(a.run)
    fpc = model.config.frames_per_chunk
    n = training_context_chunks(cfg)
    gt, states = world_clips(cfg, a.samples, n * fpc, a.seed)
    if gt is None:
        raise SystemExit(f"{a.run}: its world ({cfg.data.kind}) has no ground-truth clips to compare with")
    gt = gt.float()
    # an action model is commanded with the clips' own actions, as eval does and as training's
    # resampling passes see them (without them it would run on its null action)
    actions = commanded_actions(model, states)
    actions = None if actions is None else actions[:, :n * fpc]
    steps, shift = cfg.sample.steps, cfg.sample.shift
    attention = AttentionPolicy(cfg.stages[-1].attention)
    p = a.prefix_chunks * fpc
    score = world_score(world_of(cfg.data), states, gt, p, a.world_metrics)
    video = model_rollout(model, gt, a.prefix_chunks, steps, shift, seed=a.seed, attention=attention, actions=actions)
    gap = history_gap(model, gt, _floats(a.shifts), a.strategies, a.prefix_chunks, steps, shift, a.seed,
                      a.bins, attention, rollout_video=video, score=score, anchors=a.anchor_chunks,
                      per_chunk=(False, True) if a.per_chunk else (False,), actions=actions)
    perm = PERMUTATIONS[a.perm]

    def transform(v):
        return permute_channels(v, perm)

    gen_ph = model_generator(model, n - a.prefix_chunks, steps, shift, a.seed, 0, attention,
                             actions=actions)(transform(gt[:, :, :p]))
    ident = follow_score(video[:, :, p:], gen_ph, transform, fpc)
    numbers = {"run": str(a.run), "samples": a.samples, "clip_chunks": n, "frames_per_chunk": fpc,
               "euler_steps": steps, "sample_shift": shift, "seed": a.seed, "bins": a.bins,
               "history_gap": gap, "identity": {"permutation": a.perm, **ident}}
    return numbers, report(numbers)


def world_score(world, states, gt: torch.Tensor, ref_frames: int, metrics: list[str] | None):
    """A video -> {metric: (B, F)} of the world's `metrics` (default: those of its verdict
    metrics it computes for these clips, e.g. no brick count for Pong) against the clips'
    ground truth (`states`, `gt`); None where there are none. A metric asked for that the
    world does not compute is an error naming it and those it does."""
    known = world.score(gt.numpy(), states, ground_truth=gt, ref_frames=ref_frames)
    names = [m for m in world.verdict_metrics if m in known] if metrics is None else metrics
    if not names:
        return None
    unknown = [m for m in names if m not in known]
    if unknown:
        raise SystemExit(f"error: --world-metrics {' '.join(unknown)}: not a metric of the {world.title} world "
                         f"(its metrics: {', '.join(sorted(known))})")

    def score(video: torch.Tensor) -> dict:
        m = world.score(video.numpy(), states, ground_truth=gt, ref_frames=ref_frames)
        return {k: m[k] for k in names}

    return score


def report(numbers: dict) -> str:
    """The Markdown report of run()'s numbers."""
    gap, ident = numbers["history_gap"], numbers["identity"]
    p, n = gap["prefix_chunks"], gap["chunks"]
    out = [f"## History gap of `{numbers['run']}`", "",
           f"{numbers['samples']} clips of {n} chunks (world evaluation seed {numbers['seed']}). "
           f"`rollout`: chunks c0-c{p - 1} given, c{p}-c{n - 1} generated ({numbers['euler_steps']} Euler "
           f"steps, shift {numbers['sample_shift']:g}, all history in view), vs the ground truth. Resampled "
           f"rows: the training history at shift s (t_s per sample) vs its ground truth. The last column "
           f"averages the generated positions.", ""]
    titles = {"mse": "per-pixel MSE", "hist_l1": f"colour-histogram L1 ({numbers['bins']}^3 RGB bins, in [0, 2])",
              "chan_stats": "per-channel |mean| + |std| difference"}
    for d in DISTANCES:
        out += [f"### {titles[d]}", "", gap_table(gap, d), ""]
    for m in gap.get("scored", []):
        out += [f"### the world's `{m}` of each history (scored as a generated video against the ground truth)",
                "", gap_table(gap, m), ""]
    out += [f"## Identity sensitivity (channel permutation {ident['permutation']})", "",
            "follow = 1 - d(gen(P(H)), P(gen(H))) / d(gen(H), P(gen(H))): 1 = the continuation's colours "
            "follow the history's, 0 = they ignore them. `moved`: per-pixel d(gen(H), P(gen(H))).", "",
            "| | " + " | ".join(f"c{p + i}" for i in range(len(ident["follow"]))) + " | all |",
            "|---|" + "---:|" * (len(ident["follow"]) + 1),
            "| follow | " + " | ".join(f"{v:.3f}" for v in ident["follow"]) + f" | **{ident['follow_mean']:.3f}** |",
            "| moved | " + " | ".join(f"{v:.4f}" for v in ident["moved"]) + " | |", ""]
    return "\n".join(out)


def main(argv=None, a=None, prog: str = "python -m resforce.diagnostics"):
    """Run, print, write; `a`: arguments already parsed (the `resforce diagnose` command)."""
    a = parse_args(argv) if a is None else a
    numbers, text = run(a)
    command = prog + " " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(text)
    if a.json:
        write_text_atomic(a.json, json.dumps({"command": command, **numbers}, indent=1) + "\n")
    if a.markdown:
        write_text_atomic(a.markdown, f"<!-- {command} -->\n\n`{command}`\n\n" + text)


if __name__ == "__main__":
    main()
