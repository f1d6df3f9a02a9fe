"""The paper's recipe end to end at toy size: tiny random Wan VAE / umT5 folders
(tests/support/latent_fixtures.py) -> `resforce prepare` -> the four stages of
configs/wan2.1_1.3b_rf.yaml in bf16 (teacher 5 s, resampling 5 s, resampling 15 s, routed 15 s,
shrunk to a 2-layer model, 2-3 chunk clips, one step each) -> `resforce generate --prompt`.
Prints one line per phase and exits non-zero on failure. Used by scripts/gpu_smoke.sh.

    PYTHONPATH=src python scripts/tiny_recipe_run.py --device cuda   # or cpu (slow bf16: ~1 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "tests" / "wan"))  # the shrunk four-stage recipe of test_recipe_bf16


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    from latent_fixtures import make_text_encoder_folder, make_vae_folder, make_video
    from test_recipe_bf16 import RECIPE, TINY_BF16

    from resforce.cli.main import main as cli

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t0 = time.perf_counter()
        make_vae_folder(d / "vae")
        make_text_encoder_folder(d / "wan")
        make_video(d / "videos" / "clip0.mp4", 40, caption="a red ball moves left")
        cli(["prepare", str(d / "videos"), "--vae", str(d / "vae"), "--text-encoder", str(d / "wan"),
             "--out", str(d / "ds"), "--chunks", "3", "--size", "32", "32", "--batch", "1",
             "--clips-per-video", "0", "--dtype", "float32", "--quiet", "--device", args.device])
        print(f"prepare: {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        overrides = [o for o in TINY_BF16 if not o.startswith("device=")] + [f"device={args.device}"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cli(["train", RECIPE, *overrides, f"data.latents.root={d / 'ds'}", f"run_dir={d / 'run'}"])
        rows = [json.loads(x) for x in (d / "run" / "metrics.jsonl").read_text().splitlines()]
        stages = [r["stage"] for r in rows if r.get("stage") and "loss" in r]
        if stages != ["teacher_5s", "resampling_5s", "resampling_15s", "routed_15s"]:
            raise SystemExit(f"train: expected one step in each of the four stages, got {stages}")
        print(f"train (4 stages, bf16): {time.perf_counter() - t0:.1f} s, losses "
              + ", ".join(f"{r['loss']:.3f}" for r in rows if "loss" in r))
        t0 = time.perf_counter()
        cli(["generate", str(d / "run"), "--prompt", "a red ball moves left", "--cfg", "5", "--chunks", "3",
             "--steps", "2", "--device", args.device, "--fps", "16", "--out", str(d / "video.mp4")])
        print(f"generate: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
