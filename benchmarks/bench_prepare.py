"""Throughput of `resforce prepare` on the CPU, with the tiny random Wan VAE and umT5 of the tests
(tests/support/latent_fixtures.py: AutoencoderKLWan with base_dim 8, a 2-layer umT5).

`--videos` captioned H.264 files of 81 frames at `--source` x `--source` pixels, each cut into
two 33-frame clips (--chunks 3) resized to 64x64, prepared once with the video decoding in the
main thread (--workers 0) and once per `--workers` value with reader threads, after an untimed
warm-up prepare of one video. The numbers are
prepare's own throughput line (model loading excluded): clips/s and video frames/s through the
VAE. With the tiny VAE the decoding and resizing are a large share of the work, which is what
the reader threads overlap; with Wan's real VAE the encode dominates.

    OMP_NUM_THREADS=1 python benchmarks/bench_prepare.py [--videos 12] [--source 256] [--workers 2 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "support"))
from latent_fixtures import make_text_encoder_folder, make_vae_folder, make_video  # noqa: E402
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)

from resforce.worlds.latents.prepare import PrepareOptions, run_prepare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--source", type=int, default=256, help="side of the source videos, pixels")
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_vae_folder(d / "vae")
        make_text_encoder_folder(d / "wan")
        for i in range(a.videos):
            make_video(d / "videos" / f"v{i:03d}.mp4", 81, size=a.source, seed=i, caption="a red ball moves left")
        make_video(d / "warm" / "v.mp4", 81, size=a.source, caption="a red ball moves left")

        def run(videos: str, out: str, workers: int):
            opts = PrepareOptions(str(d / videos), str(d / "vae"), str(d / "wan"), str(d / out), chunks=3,
                                  size=(64, 64), clips_per_video=0, batch=2, dtype="float32", workers=workers,
                                  device="cpu")
            return run_prepare(opts, progress=False)[1]

        run("warm", "out_warm", 0)  # the first VAE calls of a process are slower (kernel set-up): not timed
        rows = [(workers, run("videos", f"out{workers}", workers)) for workers in [0, *a.workers]]
    print(f"\n{a.videos} videos of 81 frames at {a.source}x{a.source} -> 33-frame clips at 64x64, tiny VAE, CPU")
    for workers, t in rows:
        print(f"  --workers {workers}: {t.clips / t.seconds:6.2f} clips/s  {t.frames / t.seconds:7.1f} frames/s  "
              f"({t.clips} clips in {t.seconds:.1f} s)")
    serial = rows[0][1]
    for workers, t in rows[1:]:
        speedup = serial.seconds / t.seconds
        print(f"  reader threads ({workers}) vs the main thread: {speedup:.2f}x")
        record("prepare", f"clips/s, tiny VAE, {workers} reader threads", t.clips / t.seconds, "clips/s")
        record("prepare", f"{workers} reader threads vs none", speedup)


if __name__ == "__main__":
    main()
