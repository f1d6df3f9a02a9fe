"""The parts of a prepare, built on the spot (tests/support/latent_fixtures.py; nothing downloads):
a tiny random Wan VAE, umT5 and tokenizer, and a folder of small captioned mp4s."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "support"))
from latent_fixtures import make_text_encoder_folder, make_vae_folder, make_video  # noqa: E402

# sorted: clip0 clip1 clip3 corrupt short sub/clip2 uncaptioned
CAPTIONS = {"clip0.mp4": "a red ball moves left", "clip1.mp4": "blue square", "sub/clip2.mp4": "a blue ball moves up",
            "clip3.mp4": "a red square moves down"}
LENGTHS = (33, 45, 70, 80)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Local weight folders and a video folder: 4 captioned videos (two give two or more
    33-frame clips), one too short, one corrupt, one without a caption."""
    d = tmp_path_factory.mktemp("prepare_parts")
    make_vae_folder(d / "vae")
    make_text_encoder_folder(d / "wan")
    videos = d / "videos"
    for i, (name, caption) in enumerate(CAPTIONS.items()):
        make_video(videos / name, LENGTHS[i], seed=i, caption=caption)
    make_video(videos / "short.mp4", 20, caption="a ball")
    (videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    (videos / "corrupt.txt").write_text("a ball")
    make_video(videos / "uncaptioned.mp4", 40)
    return d
