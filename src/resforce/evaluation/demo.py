"""The demo: teacher forcing vs Resampling Forcing, the two shipped models (assets/demo/), on
long rollouts far past their training length (`resforce demo`)."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

DEMO_MODELS = {"teacher forcing": "teacher_forcing.safetensors",
               "resampling forcing": "resampling_forcing.safetensors"}
DEMO_RECIPES = {"teacher forcing": "bb_teacher.yaml", "resampling forcing": "bb_resampling.yaml"}
DEMO_TITLE = "Teacher forcing vs Resampling Forcing on bouncing balls"
"""The shipped models were trained on the bouncing-balls world (configs/bb_*.yaml)."""


def shipped_models() -> dict[str, Path]:
    """name -> the shipped .safetensors file of each demo model."""
    root = resources.files("resforce") / "assets" / "demo"
    return {name: Path(str(root / f)) for name, f in DEMO_MODELS.items()}


def run_demo(out: Path, samples: int, chunks: int, segment: int, retrain: bool = False,
             configs: str = "configs") -> Path:
    """Compare the shipped models (or, with `retrain` or without them, freshly trained ones)
    and write the report under out/report; returns the page."""
    from resforce.evaluation.compare import compare
    from resforce.generation.generate import SampleOverrides

    models = shipped_models()
    if retrain or not all(p.is_file() for p in models.values()):
        models = retrain_demo_models(out / "runs", configs)
    return compare(list(models.values()), list(models), out / "report", samples=samples,
                   sample=SampleOverrides(chunks=chunks, seed=0), prefix_chunks=2, segment_len=segment,
                   title=DEMO_TITLE,
                   notes=f"Rollouts of {chunks} chunks after 2 given frames, each chunk seeing the "
                         f"8 chunks of the training clips (rolling context); models: "
                         + ", ".join(f"{k}: {v.name}" for k, v in models.items()))


def retrain_demo_models(run_root: Path, config_dir: str) -> dict[str, Path]:
    """Train both demo models from scratch (shared teacher-forcing warm-up) and export them."""
    from resforce.io.weights import resolve_weights
    from resforce.config import load_config
    from resforce.training.loop import train  # training only when asked

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
