"""One throughput table of the bouncing-balls model, every number measured in this one run.

Rows (the model of configs/bb_base.yaml: 6 blocks, width 192, 16 tokens per 16x16 frame):
1. MFU: model FLOPs of a teacher-forcing (TF) two-stream training step, per second of its
   wall time, against the fp32 matmul peak measured on this machine at the same thread
   count (best of a few large square matmuls).
2. Our forward+backward vs diffusers' WanTransformer3DModel: the same config (bb_base's
   shape plus the text cross-attention every Wan has, over a short context) and the same
   weights (resforce.wan.transformer.load_wan), one chunk holding every frame at one timestep per clip,
   which is the same math as Wan's bidirectional pass. Diffusers is timed with a per-clip
   timestep (B,) and with per-token timesteps (B, seq_len) (Wan2.2's way of giving frames
   their own t). Prints the time ratios and the max |ours - diffusers| of the outputs.
3. Rollout frames/s (resforce.rollout.rollout, streaming, return_video=False) with the
   rolling context of training (8 chunks: the KV cache keeps 7) vs dense attention over all
   history (context 0), at 16, 128 and 1024 chunks; batch 1, one Euler step per chunk plus
   the cache write (2 model calls per chunk; at the configs' 16 steps every rate is about
   2/17 of this, the dense/rolling ratio falls less).
4. Step-time ratios RF/TF, two-stream and detached history (`history_grad: false`), from
   bench_detached_history.median_step_times; its TF two-stream time is row 1's step time.

Model FLOPs of one TF two-stream step (forward + backward; `step_flops`). B clips, N chunks
of T tokens, width D = H heads x d, FFN width Fh, L blocks, P = in_channels x prod(patch),
Po = out_channels x prod(patch), f = freq_dim, S = 2 N T tokens per clip (history and noisy
stream, both with gradient). A multiply-add is 2 FLOPs; a matmul's backward is twice its
forward (dX and dW), once where its input needs no gradient (dW only); biases, norms, RoPE,
softmax, AdaLN arithmetic, the loss and the optimizer are not counted (as in MFU).
  linear:
    blocks        6 B S L (4 D^2 + 2 D Fh)      q, k, v, out projections and the FFN
    patch embed   4 B S P D                      dW only: the video needs no gradient
    time embed    4 R f D + 6 R (D^2 + 6 D^2)    R = 2 B N rows, one per chunk of each stream;
                                                 the sinusoids need no gradient
    head          6 B N T D Po                   proj_out, noisy stream only
  attention, over the allowed (query chunk, key chunk) pairs only (the default "chunked"
  backend computes nothing else): N (N + 1) / 2 history block-causal + N (N - 1) / 2 noisy
  to earlier history + N noisy to itself = N^2 + N of the (2N)^2:
    14 B L H d T^2 (N^2 + N)                     forward QK^T and PV: 4 H d T^2 a pair;
                                                 backward 10: QK^T recomputed, dP, dV, dQ, dK
                                                 (torch.utils.flop_counter's convention)
The count is checked against torch.utils.flop_counter.FlopCounterMode on one step
(`counted_step_flops`; both printed, tests/benchmarks/test_bench_throughput.py holds them within
0.1%). The counter has no formula for the CPU flash kernels the chunked backend calls, so
they are given torch's own SDPA formulas (without that it counts no attention at all).

Cost: 191 s of process CPU at 1 thread (289 s wall on a busy 2-core machine, of which dense
rollout to 1024 chunks 140 s); elapsed wall and CPU time are printed. CPU only. On a busy
machine use --threads 1 (or OMP_NUM_THREADS=1, the default's source): two OpenMP threads that
wait for each other at every small op made a 16-token rollout call 12x slower there (510 ms vs
42 ms, measured).
    python benchmarks/bench_throughput.py [--threads 2] [--json FILE] [--quick]
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()  # elapsed includes the imports (diffusers' takes seconds)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch.utils import flop_counter  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from resforce.config import load_config  # noqa: E402
from resforce.history import HistoryConfig  # noqa: E402
from resforce.model.dit import CausalVideoDiT, DiTConfig  # noqa: E402
from resforce.rollout import SampleConfig, rollout  # noqa: E402
from resforce.generation.session import training_context_chunks  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_detached_history as detached  # noqa: E402  (reused, not copied: the brief's rule)
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)

aten = torch.ops.aten
FLASH_CPU = (aten._scaled_dot_product_flash_attention_for_cpu,
             aten._scaled_dot_product_flash_attention_for_cpu_backward)


@dataclass
class Sizes:
    """What one run measures; `--quick` shrinks every size (for the test), same rows."""

    batch: int | None = None        # training-step clips; None: the config's (16)
    step_rounds: int = 3            # timed rounds of the four step kinds, after one warm-up
    peak_sizes: tuple = (1024, 2048)
    peak_reps: int = 3
    wan_batch: int = 4
    wan_frames: int = 16            # one chunk of 16 frames = 256 tokens, the TF pass's length
    wan_text_dim: int = 64
    wan_text_len: int = 16
    wan_reps: int = 3
    roll_lengths: tuple = (16, 128, 1024)
    roll_steps: int = 1
    chunks: int | None = None       # training chunks; None: the config's training context (8)


QUICK = Sizes(batch=2, step_rounds=1, peak_sizes=(256, 512), peak_reps=2, wan_batch=1, wan_frames=4,
              wan_reps=1, roll_lengths=(4, 8, 16), chunks=4)


# ----------------------------------------------------------------------------- FLOPs
def step_flops(mc: DiTConfig, batch: int, chunks: int, tokens_per_chunk: int) -> dict:
    """Model FLOPs of one TF two-stream training step, {"linear", "attention"} (module
    docstring). Models with text cross-attention are not covered."""
    if mc.text_dim:
        raise ValueError(f"step_flops counts models without text cross-attention; model.text_dim="
                         f"{mc.text_dim} (expected 0)")
    b, n, t, d, L = batch, chunks, tokens_per_chunk, mc.inner_dim, mc.num_layers
    patch = mc.patch_size[0] * mc.patch_size[1] * mc.patch_size[2]
    s = 2 * n * t                                     # tokens per clip, both streams
    rows = 2 * b * n                                  # time-embedding rows
    blocks = 6 * b * s * L * (4 * d * d + 2 * d * mc.ffn_dim)
    embed = 4 * b * s * mc.in_channels * patch * d
    time_embed = 4 * rows * mc.freq_dim * d + 6 * rows * (d * d + 6 * d * d)
    head = 6 * b * n * t * d * mc.out_channels * patch
    pairs = n * n + n
    attention = 14 * b * L * mc.num_attention_heads * mc.attention_head_dim * t * t * pairs
    return {"linear": blocks + embed + time_embed + head, "attention": attention}


def _flash_cpu_forward(q, k, v, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(q.shape, k.shape, v.shape)


def _flash_cpu_backward(grad_out, q, k, v, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out.shape, q.shape, k.shape, v.shape)


_flash_cpu_forward._get_raw = _flash_cpu_backward._get_raw = True  # FlopCounterMode: raw args


def counted_step_flops(model, cfg, clean) -> dict:
    """FLOPs FlopCounterMode sees in one TF two-stream step as the trainer takes it,
    {"linear": matmuls and convolutions, "attention": the flash kernels}."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: counting leaves the weights alone
    gen = torch.Generator().manual_seed(0)
    counter = FlopCounterMode(display=False, custom_mapping=dict(zip(FLASH_CPU, (_flash_cpu_forward,
                                                                                  _flash_cpu_backward))))
    with counter:
        detached.step(model, opt, cfg, clean, HistoryConfig(strategy="teacher"), True, gen)
    ops = counter.get_flop_counts()["Global"]
    attention = sum(v for op, v in ops.items() if op in FLASH_CPU)
    return {"linear": sum(ops.values()) - attention, "attention": attention}


# ----------------------------------------------------------------------------- peak
def matmul_peak(sizes, reps: int) -> tuple[dict, dict]:
    """({n: FLOP/s of wall time}, {n: FLOP/s of process CPU time}) of fp32 (n x n) @ (n x n),
    medians of `reps` after one warm-up."""
    wall, cpu = {}, {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        times, cpu_times = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        wall[n], cpu[n] = 2 * n ** 3 / statistics.median(times), 2 * n ** 3 / statistics.median(cpu_times)
    return wall, cpu


# ----------------------------------------------------------------------------- diffusers
def _random_wan(mc: DiTConfig, text_dim: int):
    """diffusers' WanTransformer3DModel of mc's shape, every weight random and O(1) (as
    tests/wan/test_wan.py's tiny_wan: zero-init gates would make the comparison vacuous)."""
    from diffusers import WanTransformer3DModel

    wan = WanTransformer3DModel(
        patch_size=tuple(mc.patch_size), num_attention_heads=mc.num_attention_heads,
        attention_head_dim=mc.attention_head_dim, in_channels=mc.in_channels, out_channels=mc.out_channels,
        text_dim=text_dim, freq_dim=mc.freq_dim, ffn_dim=mc.ffn_dim, num_layers=mc.num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=mc.eps, rope_max_seq_len=1024)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in wan.named_parameters():
            if p.dim() > 1 and "scale_shift_table" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return wan


def _fwd_bwd(model, call):
    """Seconds of one forward + backward (loss: mean square of the output) and the output."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    out = call()
    out.square().mean().backward()
    return time.perf_counter() - t0, out.detach()


def vs_diffusers(mc: DiTConfig, sz: Sizes) -> dict:
    """Ours vs diffusers' Wan, forward + backward, same weights and inputs (module docstring)."""
    try:
        wan = _random_wan(mc, sz.wan_text_dim)
    except ImportError:
        return {"skipped": "diffusers is not installed (pip install -e '.[wan]')"}
    from resforce.wan.transformer import load_wan

    ours = load_wan(wan, frames_per_chunk=sz.wan_frames)
    g = torch.Generator().manual_seed(1)
    b, (h, w) = sz.wan_batch, (16, 16)
    x = torch.randn(b, mc.in_channels, sz.wan_frames, h, w, generator=g)
    ctx = torch.randn(b, sz.wan_text_len, sz.wan_text_dim, generator=g)
    t = torch.rand(b, generator=g)
    seq = ours.tokens_per_chunk(h, w)
    runs = {"ours": (ours, lambda: ours(x, t[:, None], context=ctx)),
            "diffusers t (B,)": (wan, lambda: wan(x, timestep=t * 1000, encoder_hidden_states=ctx,
                                                 return_dict=False)[0]),
            "diffusers t (B, seq_len)": (wan, lambda: wan(x, timestep=(t * 1000)[:, None].expand(b, seq),
                                                         encoder_hidden_states=ctx, return_dict=False)[0])}
    times, outs = {k: [] for k in runs}, {}
    for i in range(sz.wan_reps + 1):  # interleaved; the first round warms up
        for name, (model, call) in runs.items():
            dt, outs[name] = _fwd_bwd(model, call)
            if i:
                times[name].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": b, "tokens": seq, "text_len": sz.wan_text_len, "text_dim": sz.wan_text_dim,
            "seconds": med,
            "ratio_per_clip_t": med["ours"] / med["diffusers t (B,)"],
            "ratio_per_token_t": med["ours"] / med["diffusers t (B, seq_len)"],
            "max_abs_diff": max((outs["ours"] - outs[k]).abs().max().item() for k in outs if k != "ours"),
            "output_mean_abs": outs["ours"].abs().mean().item()}


# ----------------------------------------------------------------------------- rollout
def rollout_seconds(model, context: int, lengths, steps: int, res) -> dict:
    """{(chunks, context; 0 = dense): seconds} of streaming rollouts, batch 1."""
    rollout(model, 1, *res, SampleConfig(chunks=2, steps=steps), return_video=False)  # warm-up
    out = {}
    for n in lengths:
        for ctx in (context, 0):
            t0 = time.perf_counter()
            rollout(model, 1, *res, SampleConfig(chunks=n, steps=steps, context=ctx), return_video=False)
            out[(n, ctx)] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------- table
def _rows(r: dict) -> list[tuple[str, str, str]]:
    m, f, w = r["mfu"], r["flops"], r["diffusers"]
    flop_check = (f"FlopCounterMode: linear {f['counted']['linear'] / 1e9:.3f}, attention "
                  f"{f['counted']['attention'] / 1e9:.4f} (analytic {f['analytic']['linear'] / 1e9:.3f}, "
                  f"{f['analytic']['attention'] / 1e9:.4f}); rel. diff {f['max_rel_diff']:.1e}")
    rows = [
        ("fp32 matmul peak", f"{m['peak'] / 1e9:.1f} GFLOP/s",
         "best of square matmuls " + ", ".join(f"{n}: {v / 1e9:.1f}" for n, v in m["peak_by_size"].items())
         + " (before and after the steps)"),
        ("TF step model FLOPs", f"{f['analytic_total'] / 1e9:.2f} GFLOP", flop_check),
        ("TF step time", f"{m['step_s'] * 1000:.0f} ms",
         f"batch {r['batch']}, {r['chunks']} chunks x {r['tokens_per_chunk']} tokens, two-stream, "
         f"median wall (CPU time {m['step_cpu_s'] * 1000:.0f} ms)"),
        ("TF step model FLOP/s (MFU)", f"{m['flops_per_s'] / 1e9:.1f} GFLOP/s ({m['mfu']:.0%})",
         f"FLOPs / step wall time / peak; by process CPU time (step and peak alike): {m['mfu_cpu']:.0%}")]
    if "skipped" in w:
        rows.append(("ours / diffusers Wan, fwd+bwd", "skipped", w["skipped"]))
    else:
        rows.append(("ours / diffusers Wan, fwd+bwd", f"{w['ratio_per_clip_t']:.2f}x",
                     f"vs t (B,); {w['ratio_per_token_t']:.2f}x vs t (B, seq_len); max abs diff "
                     f"{w['max_abs_diff']:.1e} (outputs ~{w['output_mean_abs']:.2f}); batch {w['batch']}, "
                     f"1 chunk x {w['tokens']} tokens, text {w['text_len']} x {w['text_dim']}"))
    ctx = r["context"]
    for n in r["roll_lengths"]:
        rolling, dense = r["rollout_fps"][f"{n}/{ctx}"], r["rollout_fps"][f"{n}/0"]
        rows.append((f"rollout frames/s, {n} chunks", f"{rolling:.1f} / {dense:.1f}",
                     f"context {ctx} / dense: {rolling / dense:.2f}x; {r['rollout_s'][f'{n}/{ctx}']:.1f} s / "
                     f"{r['rollout_s'][f'{n}/0']:.1f} s; {r['roll_steps']} Euler step(s) + cache write, batch 1"))
    s = r["steps"]
    for label, a, b in [("RF / TF, two-stream", "RF two-stream", "TF two-stream"),
                        ("RF / TF, detached history", "RF detached", "TF detached"),
                        ("RF detached / TF two-stream", "RF detached", "TF two-stream")]:
        rows.append((f"step ratio {label}", f"{s[a] / s[b]:.2f}",
                     f"{s[a] * 1000:.0f} / {s[b] * 1000:.0f} ms (wall, median)"))
    return rows


def record_headlines(r: dict) -> None:
    """The headline numbers for `make bench`'s summary table (benchmarks/summary.py)."""
    record("throughput", "TF step MFU", 100 * r["mfu"]["mfu"], "%")
    if "skipped" not in r["diffusers"]:
        record("throughput", "ours / diffusers Wan, fwd+bwd time", r["diffusers"]["ratio_per_clip_t"])
    n, ctx = max(r["roll_lengths"]), r["context"]
    record("throughput", f"rollout frames/s rolling / dense, {n} chunks",
           r["rollout_fps"][f"{n}/{ctx}"] / r["rollout_fps"][f"{n}/0"])
    s = r["steps"]
    record("throughput", "RF detached / TF two-stream step", s["RF detached"] / s["TF two-stream"], target="<= 0.9")


def markdown(r: dict) -> str:
    lines = ["| quantity | value | detail |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in _rows(r)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def _mfu(sz: Sizes, cfg, batch: int, chunks: int) -> tuple[dict, dict, dict]:
    """(mfu, flops, step times): the peak around the four step kinds, the FLOP count of the TF
    step and its check; the step times also give the RF/TF ratios."""
    peaks = [matmul_peak(sz.peak_sizes, sz.peak_reps)]
    wall, cpu, model, clean = detached.median_step_times(cfg, batch, chunks, sz.step_rounds)
    peaks.append(matmul_peak(sz.peak_sizes, sz.peak_reps))
    peak_by_size = {n: max(p[0][n] for p in peaks) for n in sz.peak_sizes}
    peak_cpu = max(p[1][n] for p in peaks for n in sz.peak_sizes)
    tpc = model.tokens_per_chunk(*clean.shape[-2:])
    analytic, counted = step_flops(cfg.model, batch, chunks, tpc), counted_step_flops(model, cfg, clean)
    total, peak = sum(analytic.values()), max(peak_by_size.values())
    step_s, step_cpu_s = wall["TF two-stream"], cpu["TF two-stream"]
    mfu = {"peak": peak, "peak_by_size": peak_by_size, "peak_cpu": peak_cpu, "step_s": step_s,
           "step_cpu_s": step_cpu_s, "flops_per_s": total / step_s, "mfu": total / step_s / peak,
           "mfu_cpu": total / step_cpu_s / peak_cpu}
    flops = {"analytic": analytic, "counted": counted, "analytic_total": total, "tokens_per_chunk": tpc,
             "max_rel_diff": max(abs(counted[k] - analytic[k]) / analytic[k] for k in analytic)}
    return mfu, flops, {"wall": wall, "cpu": cpu, "params": sum(p.numel() for p in model.parameters()),
                        "res": tuple(clean.shape[-2:])}


def measure(sz: Sizes, config: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    cfg = load_config(config)
    context = training_context_chunks(cfg)
    batch, chunks = sz.batch or cfg.optim.batch_size, sz.chunks or context
    load_before = os.getloadavg()[0]
    mfu, flops, steps = _mfu(sz, cfg, batch, chunks)
    diffusers = vs_diffusers(cfg.model, sz)
    roll = rollout_seconds(CausalVideoDiT(cfg.model).eval(), context, sz.roll_lengths, sz.roll_steps, steps["res"])
    fpc = cfg.model.frames_per_chunk
    return {"config": config, "threads": threads, "batch": batch, "chunks": chunks,
            "tokens_per_chunk": flops["tokens_per_chunk"], "params": steps["params"], "flops": flops, "mfu": mfu,
            "steps": steps["wall"], "steps_cpu": steps["cpu"], "diffusers": diffusers, "context": context,
            "roll_lengths": list(sz.roll_lengths), "roll_steps": sz.roll_steps,
            "rollout_s": {f"{n}/{c}": v for (n, c), v in roll.items()},
            "rollout_fps": {f"{n}/{c}": n * fpc / v for (n, c), v in roll.items()},
            "load_average_1min": [load_before, os.getloadavg()[0]], "cpus": os.cpu_count()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "").strip() or 2),
                    help="torch threads for everything (default: OMP_NUM_THREADS, else 2)")
    ap.add_argument("--config", default="configs/bb_resampling.yaml",
                    help="model, batch and training context (RF's config; TF shares its model)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write every number to FILE")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, same table (for the test)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    result = measure(QUICK if args.quick else Sizes(), args.config, args.threads)
    result["elapsed_s"] = time.perf_counter() - _T_START
    result["cpu_s"] = time.process_time()  # all threads; at 1 thread, about an idle machine's wall time
    result["quick"] = args.quick
    load = result["load_average_1min"]
    print(f"model {result['params'] / 1e6:.1f}M params ({args.config}), CPU, {args.threads} thread(s), "
          f"torch {torch.__version__}{', QUICK sizes' if args.quick else ''}; load average "
          f"{load[0]:.1f} -> {load[1]:.1f} on {result['cpus']} CPUs")
    print(markdown(result))
    record_headlines(result)
    print(f"elapsed {result['elapsed_s']:.0f} s wall, {result['cpu_s']:.0f} s process CPU (imports included)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
