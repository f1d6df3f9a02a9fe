"""`resforce memory`: the peak GPU memory of one training step, measured on the CPU with fake
tensors (resforce.training.memory_estimate), before anyone rents a GPU."""

from __future__ import annotations

import json

from resforce.io.checks import check_output
from resforce.io.fileio import write_text_atomic
from resforce.model.dit import PRESETS


def cmd_memory(args) -> None:
    from resforce.training.memory_estimate import MemoryPlan, estimate_memory, format_report

    if args.json:
        check_output(args.json, (".json",), "--json")
    plan = MemoryPlan(preset=args.preset, seconds=args.seconds, chunks=args.chunks, strategy=args.strategy,
                      gpus=args.gpus, batch=args.batch, height=args.height, width=args.width,
                      text_tokens=args.text_tokens, checkpointing=args.checkpointing,
                      attention_backend=args.attention, precision=args.precision,
                      resample_steps=args.resample_steps, resample_unsharded=not args.resample_per_call,
                      history_attention=args.history_attention, topk=args.topk, window=args.window,
                      sink=args.sink, grad_accum=args.grad_accum, grad_sync=args.grad_sync,
                      lora_rank=args.lora_rank, lora_base_dtype=args.lora_base_dtype)
    report = estimate_memory(plan)
    print(format_report(report))
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


def add_command(sub) -> None:
    m = sub.add_parser("memory", help="peak GPU memory of one training step, measured on the CPU (fake tensors)")
    m.add_argument("--preset", default="wan2.1-1.3b", help=f"model preset: {', '.join(sorted(PRESETS))}")
    m.add_argument("--seconds", type=float, default=5.0, help="clip length at 16 fps (5 s = 7 chunks, 15 s = 21)")
    m.add_argument("--chunks", type=int, default=None, help="clip length in chunks (instead of --seconds)")
    m.add_argument("--strategy", default="teacher", choices=["teacher", "resampling"],
                   help="teacher: history = the clip; resampling: the self-resampling pass, then training")
    m.add_argument("--gpus", type=int, default=1, help="1: one GPU; N > 1: FSDP2 over N GPUs (memory per GPU)")
    m.add_argument("--batch", type=int, default=1, help="clips per GPU")
    m.add_argument("--height", type=int, default=480, help="video height in pixels (latents: / 8)")
    m.add_argument("--width", type=int, default=832, help="video width in pixels (latents: / 8)")
    m.add_argument("--text-tokens", type=int, default=512, help="text context length (umT5: 512)")
    m.add_argument("--checkpointing", default=None, choices=["none", "full", "selective"],
                   help="activation checkpointing (default: the preset's)")
    m.add_argument("--attention", default=None, help="model attention backend (default: the preset's)")
    m.add_argument("--precision", default="bf16", choices=["bf16", "fp32"],
                   help="bf16: autocast over fp32 master weights and AdamW")
    m.add_argument("--resample-steps", type=int, default=1, help="Euler steps of the resampling pass")
    m.add_argument("--resample-per-call", action="store_true",
                   help="under FSDP, gather the weights on every model call of the resampling pass "
                        "(history.resample_unsharded: false) instead of once for the pass")
    m.add_argument("--history-attention", default="dense", choices=["dense", "topk", "window"],
                   help="the stage's history attention (stages.N.attention.mode): dense, routed top-k, window")
    m.add_argument("--topk", type=int, default=5, help="topk: history chunks per query token (the recipe: 5)")
    m.add_argument("--window", type=int, default=5, help="window: most recent history chunks kept")
    m.add_argument("--sink", type=int, default=0, help="window: first chunks always kept")
    m.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches per step (optim.grad_accum; the recipe: 8 on 8 GPUs)")
    m.add_argument("--grad-sync", default="auto", choices=["auto", "every", "last"],
                   help="optim.grad_sync: reduce gradients every micro-batch or only the last "
                        "(auto: every under FSDP)")
    m.add_argument("--lora-rank", type=int, default=0,
                   help="LoRA adapters of this rank on every block's linear layers (lora.rank); 0: full fine-tuning")
    m.add_argument("--lora-base-dtype", default="fp32", choices=["fp32", "bf16"],
                   help="lora.base_dtype: storage of the frozen base weights")
    m.add_argument("--json", default=None, help="also write the report here (.json)")
    m.set_defaults(func=cmd_memory)
