"""Wall-time of a step with history from the previous step's predictions vs a Resampling
Forcing step (autoregressive, s = 0.6, one Euler step) and a teacher-forcing step.

Runs the real trainer (resforce.training.loop.Trainer.train_step) for each recipe from the same
random weights, steps of the kinds interleaved so background load hits them alike, and
prints the median step times and their ratios to resampling.
Usage: python benchmarks/bench_previous_step.py [--config configs/bb_resampling.yaml] [--steps 6] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from resforce.config import load_config
from resforce.training.loop import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)

KINDS = {
    "resampling": ["stages.0.history.strategy=resampling", "stages.0.history.resample_shift=0.6"],
    "previous_step": ["stages.0.history.strategy=teacher", "stages.0.history.history_from_previous_step=true"],
    "teacher": ["stages.0.history.strategy=teacher"],
}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/bb_resampling.yaml")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per kind (after 1 warm-up step)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="the test suite's tiny model and world (seconds)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    extra = []
    if a.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
        from tiny import TINY
        extra = TINY
    times = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for kind, over in KINDS.items():
            # one stage of the kind only (the recipe's later stages dropped), steps enough to time
            cfg = load_config(a.config, [*extra, f"run_dir={tmp}/{kind}", "stages=[{}]", "stages.0.name=bench",
                                         f"stages.0.steps={a.steps + 1}", "stages.0.clip_chunks=8", *over])
            trainers[kind] = Trainer(cfg, resume=False, progress=False)
        try:
            for i in range(a.steps + 1):
                for kind, t in trainers.items():
                    m = t.train_step()
                    if i:  # the first step warms up (and previous_step's has nothing kept yet)
                        times[kind].append(m["step_time"])
        finally:
            for t in trainers.values():
                t.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    b = trainers["resampling"].cfg.optim.batch_size
    print(f"{a.config}{' (tiny)' if a.tiny else ''}, batch {b}, 8 chunks, {a.threads} thread(s), "
          f"median of {a.steps} steps:")
    for k, v in med.items():
        print(f"  {k:14s} {v:.3f} s/step   ratio to resampling {v / med['resampling']:.2f}")
    record("previous_step", "previous_step / resampling step", med["previous_step"] / med["resampling"])
    record("previous_step", "teacher / resampling step", med["teacher"] / med["resampling"])
    print(f"previous_step / resampling step-time ratio: {med['previous_step'] / med['resampling']:.2f} "
          f"(new clips per step: previous_step {b - b // 2}, resampling {b})")


if __name__ == "__main__":
    main()
