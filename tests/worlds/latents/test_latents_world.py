"""The latents world over several prepared datasets (`data.latents.root: [a, b]`): read as one
dataset, drawn from uniformly, cut to the shortest clip; the single-folder form as before; a
bad value or datasets that do not fit together are errors naming data.latents.root."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
RECIPE = str(ROOT / "configs" / "wan2.1_1.3b_rf.yaml")
TINY = ["model.in_channels=4", "model.out_channels=4", "stages.0.clip_chunks=2", "stages.1.clip_chunks=2",
        "stages.2.steps=0", "stages.3.steps=0"]


def prepared(parts, tmp_path, name, videos, **kw):
    """A dataset prepared from the listed videos of the parts folder."""
    from resforce.worlds.latents.prepare import PrepareOptions, prepare

    folder = tmp_path / f"{name}_videos"
    for v in videos:
        for src in (parts / "videos" / v, (parts / "videos" / v).with_suffix(".txt")):
            (folder / src.relative_to(parts / "videos")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, folder / src.relative_to(parts / "videos"))
    opts = dict(chunks=3, size=(32, 32), clips_per_video=0, dtype="float32", workers=0)
    prepare(PrepareOptions(str(folder), str(parts / "vae"), str(parts / "wan"), str(tmp_path / name), **{**opts, **kw}),
            progress=False)
    return tmp_path / name


def test_two_roots_are_read_as_one_dataset(parts, tmp_path):
    from resforce.config import ConfigError, load_config
    from resforce.worlds import world_of
    from resforce.worlds.latents.dataset import LatentDataset

    a = prepared(parts, tmp_path, "a", ["clip0.mp4", "clip1.mp4"])  # 2 clips of 9 latent frames
    b = prepared(parts, tmp_path, "b", ["sub/clip2.mp4", "clip3.mp4"], chunks=2)  # 6 clips of 6
    world = world_of(load_config(RECIPE, TINY + [f"data.latents.root=[{a}, {b}]"]).data)
    ds = world.dataset()
    assert len(ds) == 8 and ds.latent_shape == (4, 6, 4, 4) and world.resolution == (4, 4)  # the shorter clips
    alone_a, alone_b = LatentDataset(a), LatentDataset(b)
    assert torch.equal(ds.clip(1)[0], alone_a.clip(1)[0][:, :6]) and torch.equal(ds.clip(1)[1], alone_a.clip(1)[1])
    assert torch.equal(ds.clip(2)[0], alone_b.clip(0)[0]) and ds.clip(7)[2] == alone_b.clip(5)[2]
    latents, info = world.stream(seed=0).batch(40)
    assert latents.shape == (40, 4, 6, 4, 4)
    assert set(info.captions) == {"a red ball moves left", "blue square", "a blue ball moves up",
                                  "a red square moves down"}  # every clip of both roots can be drawn

    single = world_of(load_config(RECIPE, TINY + [f"data.latents.root={a}"]).data).dataset()
    assert len(single) == 2 and single.latent_shape == (4, 9, 4, 4)  # one folder, as before

    for value, named in [("[]", "non-empty list"), (f"[{a}, {a}]", "listed twice"), ("3", "")]:
        with pytest.raises(ConfigError, match="data.latents.root.*" + named):
            load_config(RECIPE, TINY + [f"data.latents.root={value}"])
    wide = prepared(parts, tmp_path, "wide", ["clip0.mp4"], size=(32, 48))
    with pytest.raises(ValueError, match=r"data.latents.root\[1\].*wide.*data.latents.root\[0\].*latent channels "
                                         r"and size.*\[4, 4, 4\] vs \[4, 4, 6\]"):
        world_of(load_config(RECIPE, TINY + [f"data.latents.root=[{a}, {wide}]"]).data).dataset()
