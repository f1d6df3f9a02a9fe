"""Peak memory of long rollouts: a rolling context (the training context) vs dense history.

Each rollout runs in a fresh process and reports its peak resident memory (ru_maxrss), so the
ratio compares whole processes: model, activations and the KV cache. Goal (evaluation-protocol
issue): a 1024-chunk rollout with the rolling context within 10% of a 64-chunk one.
The rollout streams (rollout(..., return_video=False)): finished chunks go to a callback, as
they would to a video encoder or a player, so what is measured is the model, its activations
and the KV cache, not a stored output that grows with the video by construction.
Memory does not depend on the number of Euler steps, so one step keeps this quick.
Usage: python benchmarks/bench_rolling_memory.py [--model FILE] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)

CHILD = """
import dataclasses, json, resource, sys, torch
from resforce.io.weights import load_model
from resforce.rollout import rollout
from resforce.generation.session import training_context_chunks
path, chunks, batch, context = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model, cfg = load_model(path)
res = cfg.data.bouncing_balls.resolution
context = training_context_chunks(cfg) if context == "train" else int(context)
s = dataclasses.replace(cfg.sample, chunks=chunks, steps=1, context=context)
prefix = torch.rand(batch, 3, 2 * model.config.frames_per_chunk, res, res) * 2 - 1
# streaming: chunks go to the callback (a consumer would encode or show them), none are kept
rollout(model, batch, res, res, s, prefix=prefix, callback=lambda i, c: None, return_video=False)
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "context": context}))
"""


def peak(model: str, chunks: int, batch: int, context: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(chunks), str(batch), context],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from resforce.evaluation.demo import shipped_models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(shipped_models()["teacher forcing"]))
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args()
    rows = {}
    for context in ("train", "0"):
        for chunks in (64, 1024):
            rows[(context, chunks)] = r = peak(args.model, chunks, args.batch, context)
            label = "dense (all history)" if context == "0" else f"rolling, context {r['context']}"
            print(f"{label:24s} {chunks:5d} chunks: peak {r['peak_mib']:7.1f} MiB")
    for context, label in (("train", "rolling"), ("0", "dense")):
        ratio = rows[(context, 1024)]["peak_mib"] / rows[(context, 64)]["peak_mib"]
        goal = "  (goal <= 1.10)" if context == "train" else ""
        print(f"{label}: peak memory 1024 / 64 chunks = {ratio:.2f}x{goal}")
        record("rolling_memory", f"{label} peak memory, 1024 / 64 chunks", ratio,
               target="<= 1.1" if context == "train" else None)


if __name__ == "__main__":
    main()
