"""Decoding a rollout chunk by chunk: the streaming decoder (latents/vae.py, the VAE's causal
feature cache carried across chunks) vs re-decoding the whole video so far after every chunk
(what a decoder without a cache must do to show each new chunk seamlessly).

Streaming costs one decode of each latent frame: linear in the video's length. Re-decoding
costs 1 + 2 + ... + N chunk decodes: quadratic. A tiny random AutoencoderKLWan (base_dim 8)
on the CPU by default; the first line checks that both give the same frames.

    OMP_NUM_THREADS=1 python benchmarks/bench_streaming_decode.py
    python benchmarks/bench_streaming_decode.py --device cuda --full-vae --base-dim 96 --size 60 104 --chunks 7
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from resforce.wan.vae import StreamingDecoder, decode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=6)
    p.add_argument("--base-dim", type=int, default=8, help="the VAE's width (Wan2.1: 96)")
    p.add_argument("--size", type=int, nargs=2, default=[4, 4], help="latent height and width")
    p.add_argument("--full-vae", action="store_true", help="Wan2.1's VAE layout (default: 1 res block, dims 1,2,2,2)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    layout = {} if a.full_vae else dict(dim_mult=[1, 2, 2, 2], num_res_blocks=1)
    vae = AutoencoderKLWan(base_dim=a.base_dim, z_dim=16, **layout).to(a.device).eval()
    latents = torch.randn(1, 16, 3 * a.chunks, *a.size, device=a.device)

    def sync():
        if torch.device(a.device).type == "cuda":
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    stream = StreamingDecoder(vae)
    streamed = torch.cat([stream.decode(latents[:, :, 3 * i:3 * i + 3]) for i in range(a.chunks)], dim=2)
    sync()
    t1 = time.perf_counter()
    for i in range(a.chunks):  # the whole video so far after every chunk
        redecoded = decode(vae, latents[:, :, :3 * i + 3])
    sync()
    t2 = time.perf_counter()
    print(f"same frames: {torch.allclose(streamed, redecoded, atol=1e-5)} ({streamed.shape[2]} frames of "
          f"{streamed.shape[3]}x{streamed.shape[4]})")
    print(f"{a.chunks} chunks: streaming {t1 - t0:.2f} s, re-decoding {t2 - t1:.2f} s "
          f"({(t2 - t1) / (t1 - t0):.1f}x; chunk decodes {a.chunks} vs {a.chunks * (a.chunks + 1) // 2})")
    record("streaming_decode", f"re-decoding / streaming time, {a.chunks} chunks", (t2 - t1) / (t1 - t0))


if __name__ == "__main__":
    main()
