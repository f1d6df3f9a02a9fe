"""A still of long rollouts: ground truth, then each model, 4 rollouts each, frames picked
along the horizon (same given frames and initial noise for every model, rolling context).
    python scripts/bb_filmstrip.py OUT.png [MODEL ...]   (default: the two shipped demo models)
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from resforce.cli.eval import shipped_models
from resforce.generation.generate import generate

FRAMES = [0, 1, 4, 8, 16, 32, 48, 64, 96, 127]


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "results/bb/filmstrip.png"
    models = sys.argv[2:] or [str(p) for p in shipped_models().values()]
    rows = []
    for i, path in enumerate(models):
        g = generate(path, batch=4, chunks=FRAMES[-1] - 1, seed=0, prefix_chunks=2, progress=False,
                     with_ground_truth=i == 0)
        if i == 0:
            rows.append(g.ground_truth.numpy())
        rows.append(g.videos.numpy())
    pad = lambda f: np.pad(f, ((0, 0), (1, 1), (1, 1)), constant_values=1.0)  # white grid lines
    strips = [np.concatenate([pad(r[s][:, f]) for f in FRAMES], axis=2) for r in rows for s in range(4)]
    img = ((np.concatenate(strips, axis=1).transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).resize((img.shape[1] * 3, img.shape[0] * 3), Image.NEAREST).save(out)
    print(f"wrote {out}: rows = ground truth, " + ", ".join(models) + f" (4 rollouts each); columns = frames {FRAMES}")


if __name__ == "__main__":
    main()
