"""The paper's recipe (configs/wan2.1_1.3b_rf.yaml) survives its own run in bf16: all four
stages (teacher 5 s, resampling 5 s, resampling 15 s, routed 15 s) train at least one step each
under bf16 autocast, shrunk to a 2-layer model on tiny random Wan parts (tests/latent_fixtures.py)
and clips of 2-3 chunks, on the CPU. Before the varlen fix the routed stage died at its first
backward. bf16 autocast is slow on these CPUs, so every stage trains one step."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "support"))
from latent_fixtures import TEXT_DIM, Z_DIM, make_text_encoder_folder, make_vae_folder, make_video  # noqa: E402

RECIPE = str(ROOT / "configs" / "wan2.1_1.3b_rf.yaml")
TINY_BF16 = ["model.num_layers=2", "model.num_attention_heads=2", "model.attention_head_dim=12", "model.ffn_dim=48",
             f"model.in_channels={Z_DIM}", f"model.out_channels={Z_DIM}", f"model.text_dim={TEXT_DIM}",
             "precision=bf16", "parallel=none", "device=cpu", "optim.batch_size=1", "optim.grad_accum=1",
             "optim.warmup_steps=0", "log_every=1", "ckpt_every=100", "sample.steps=2",
             "stages.0.steps=1", "stages.0.clip_chunks=2", "stages.1.steps=1", "stages.1.clip_chunks=2",
             "stages.2.steps=1", "stages.2.clip_chunks=3", "stages.3.steps=1", "stages.3.clip_chunks=3",
             "stages.3.attention.topk=1"]


def test_the_four_stages_train_in_bf16(tmp_path):
    from resforce.cli.main import main

    make_vae_folder(tmp_path / "vae")
    make_text_encoder_folder(tmp_path / "wan")
    make_video(tmp_path / "videos" / "clip0.mp4", 40, caption="a red ball moves left")
    main(["prepare", str(tmp_path / "videos"), "--vae", str(tmp_path / "vae"), "--text-encoder",
          str(tmp_path / "wan"), "--out", str(tmp_path / "ds"), "--chunks", "3", "--size", "32", "32",
          "--batch", "1", "--clips-per-video", "0", "--dtype", "float32", "--quiet"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "precision=bf16 on the CPU is slow"
        main(["train", RECIPE, *TINY_BF16, f"data.latents.root={tmp_path / 'ds'}", f"run_dir={tmp_path / 'run'}"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r.get("stage") and "loss" in r]
    assert [r["stage"] for r in trained] == ["teacher_5s", "resampling_5s", "resampling_15s", "routed_15s"]
    assert all(r["loss"] == r["loss"] and r["loss"] < 1e3 for r in trained)  # finite
