"""One Wan2.1-1.3B training step at the paper's 5 s setting, on a CUDA GPU.

The paper's geometry: 480x832 video -> Wan-VAE latents 60x104 (16 channels), 1560 tokens per
latent frame after the 2x2 patch, 21 latent frames = 7 chunks of 3, so a two-stream sequence
of 2 x 7 x 4680 = 65,520 tokens, plus a 512-token text context of width 4096.

Random weights (no download: step time and memory do not depend on the values), fp32 master
weights and AdamW, bf16 autocast, activation checkpointing. Measures a teacher-forcing step
and a Resampling Forcing step (self-resampling pass + training pass): median time of the
timed steps and peak allocated memory. Optionally the same with each block compiled.

    python benchmarks/gpu_wan_step.py --json out.json [--compile] [--chunks 7]

Without CUDA it prints "skipped" and exits 0 (so `make bench` runs on the CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

from resforce.training import activation_checkpoint
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device):
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device.type == "cuda" else None


def _autocast(device, dtype):
    return torch.autocast(device_type=device.type, dtype=dtype)


def _build(args, device):
    from resforce.model.dit import CausalVideoDiT, DiTConfig, PRESETS

    fields = dict(PRESETS[args.preset])
    fields.pop("init", None)
    cfg = DiTConfig(**fields, init="wan")
    if args.backend:
        cfg.attention_backend = args.backend
    torch.manual_seed(0)
    with torch.device(device):
        model = CausalVideoDiT(cfg)

    mode = args.checkpointing
    if mode != "none":
        try:  # the selective policy if this version of resforce has it
            activation_checkpoint.apply_activation_checkpointing(model, mode)
        except TypeError:
            activation_checkpoint.apply_activation_checkpointing(model)
            mode = "full"
    return model, cfg, mode


def _step(model, opt, clean, context, strategy, gen, dtype):
    from resforce.flow import TimestepSampler
    from resforce.history import HistoryConfig, build_history
    from resforce.loss import flow_matching_loss

    device = clean.device
    t0 = time.perf_counter()
    with _autocast(device, dtype):
        hist, t_hist = build_history(HistoryConfig(strategy=strategy), model, clean, gen, context=context)
    _sync(device)
    t1 = time.perf_counter()
    with _autocast(device, dtype):
        loss = flow_matching_loss(model, clean, hist, t_hist, TimestepSampler(), gen, context=context)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(device)
    return time.perf_counter() - t0, t1 - t0, float(loss)


def measure(args, device, compiled: bool) -> dict:
    model, cfg, ckpt_mode = _build(args, device)
    if compiled:
        for block in model.blocks:
            block.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=device.type == "cuda")
    lat_h, lat_w = args.height // 8, args.width // 8
    frames = args.chunks * cfg.frames_per_chunk
    gen = torch.Generator(device=device).manual_seed(0)
    clean = torch.randn(1, cfg.in_channels, frames, lat_h, lat_w, device=device, generator=gen)
    context = torch.randn(1, 512, cfg.text_dim, device=device, generator=gen) if cfg.text_dim else None
    tpc = model.tokens_per_chunk(lat_h, lat_w)
    out = {"compiled": compiled, "checkpointing": ckpt_mode, "backend": cfg.attention_backend,
           "tokens_per_chunk": tpc, "two_stream_tokens": 2 * args.chunks * tpc,
           "params": sum(p.numel() for p in model.parameters())}
    for strategy in args.strategies:
        times, resample = [], []
        try:
            for i in range(args.warmup + args.steps):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                dt, dr, loss = _step(model, opt, clean, context, strategy, gen, args.dtype)
                if i >= args.warmup:
                    times.append(dt)
                    resample.append(dr)
                else:
                    out[f"{strategy}_first_step_s"] = round(dt, 3)
            out[strategy] = {"step_s": round(statistics.median(times), 3),
                             "history_s": round(statistics.median(resample), 3),
                             "peak_gib": _peak_gib(device),
                             "loss": loss}
        except Exception as e:  # report, keep going (OOM in one setting should not hide the rest)
            out[strategy] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
            traceback.print_exc()
        print(json.dumps({strategy: out[strategy]}), flush=True)
    del model, opt
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="wan2.1-1.3b")
    p.add_argument("--chunks", type=int, default=7, help="chunks of 3 latent frames (7 = 5 s)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--backend", default=None, help="attention backend (default: the preset's)")
    p.add_argument("--checkpointing", default="selective", help="none | full | selective")
    p.add_argument("--strategies", nargs="+", default=["teacher", "resampling"])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also measure with each block compiled")
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test with --preset test")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_wan_step: skipped (no CUDA device)")
        return 0
    device = torch.device(args.device)
    args.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "setting": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    print(json.dumps({"device": result["device"], "torch": result["torch"]}), flush=True)
    result["runs"].append(measure(args, device, compiled=False))
    if args.compile:
        try:
            result["runs"].append(measure(args, device, compiled=True))
        except Exception as e:
            result["runs"].append({"compiled": True, "error": f"{type(e).__name__}: {str(e)[:400]}"})
            traceback.print_exc()
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
