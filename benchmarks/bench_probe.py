"""How long the start-of-training header probe of a video folder takes (data/videos.py).

1,000 small H.264 files (16 frames of 32x32, ~15 KB each, written once and copied) in a
temporary folder; `probe_videos` opens every container header with PyAV. Median of
`--repeats` full passes, the in-process cache of probed files cleared before each.

    OMP_NUM_THREADS=1 python benchmarks/bench_probe.py [--files 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from resforce.worlds.video_folder import reader as videos
from resforce.io.video_io import save_video

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frames = np.random.default_rng(0).uniform(-1, 1, (3, 16, 32, 32)).astype(np.float32)
        save_video(root / "v0000.mp4", frames, scale=1)
        data = (root / "v0000.mp4").read_bytes()
        for i in range(1, a.files):
            (root / f"v{i:04d}.mp4").write_bytes(data)
        files = videos.list_videos(root, [".mp4"])
        times = []
        for _ in range(a.repeats):
            videos._PROBED.clear()
            t0 = time.perf_counter()
            videos.probe_videos(files)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"probe of {len(files)} files ({len(data) / 1e3:.0f} KB each): median {med:.2f} s "
          f"({1e3 * med / len(files):.2f} ms per file; passes: {', '.join(f'{t:.2f}' for t in times)})")
    record("probe", f"header probe of {len(files)} files", med, "s")


if __name__ == "__main__":
    main()
