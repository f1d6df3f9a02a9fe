"""Frames/s of the atari world on one core: the emulator alone and the training stream.

For each resolution (32x32 and 64x64) it times, on one thread:
  emulator: ALE stepping (frame_skip 4) plus the area resize of every frame, one episode;
  stream:   the training stream's batches (16 clips of 8 frames; sticky random policy, RAM
            objects, lanes), after its lanes exist (making a lane loads the ROM: ~0.2 s each).
Each is timed in --rounds rounds and shows its best (least disturbed) round; "per CPU s" is
frames per second of CPU time the process used (what an idle core gives when other work shares the cores).
Usage: OMP_NUM_THREADS=1 python benchmarks/bench_atari.py [--game pong] [--frames 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def timed(fn, frames: int, rounds: int) -> tuple[float, float]:
    """(best frames/s of wall time, best frames/s of CPU time) over the rounds."""
    wall, cpu = [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(frames / (time.perf_counter() - t0))
        cpu.append(frames / max(time.process_time() - c0, 1e-9))
    return max(wall), max(cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--game", default="pong")
    p.add_argument("--frames", type=int, default=2000, help="frames per emulator round")
    p.add_argument("--batches", type=int, default=8, help="stream batches (16 x 8 frames) per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    try:
        import ale_py  # noqa: F401
    except ImportError:
        print("skipped: ale-py is not installed (pip install 'resforce[atari]')")
        return
    from resforce.worlds.atari.world import LANES, AtariConfig, AtariStream

    torch.set_num_threads(1)
    print(f"atari world, {args.game}, frame_skip 4, one thread ({args.rounds} rounds, best shown)")
    print(f"{'resolution':>10} {'what':>9} {'frames/s':>9} {'per CPU s':>10}")
    for res in (32, 64):
        cfg = AtariConfig(game=args.game, resolution=res, episode_frames=10_000)
        em = cfg.emulator()
        rng = np.random.default_rng(0)

        def emulate():
            em.reset(rng)
            for f in range(args.frames):
                em.step(f % len(em.actions))
                if em.game_over:
                    em.reset(rng)

        fps, per_cpu = timed(emulate, args.frames, args.rounds)
        print(f"{res:>7}x{res:<2} {'emulator':>9} {fps:9.0f} {per_cpu:10.0f}")
        stream = AtariStream(cfg, 8)
        while any(lane is None for lane in stream.lanes) and stream.clips_emitted < 40 * LANES:
            stream.sample()  # make every lane first
        fps, per_cpu = timed(lambda: [stream.batch(16) for _ in range(args.batches)], args.batches * 16 * 8,
                             args.rounds)
        print(f"{res:>7}x{res:<2} {'stream':>9} {fps:9.0f} {per_cpu:10.0f}")


if __name__ == "__main__":
    main()
