"""Tiny random Wan components built on the spot (no downloads), saved as local folders the way
real weights are: an AutoencoderKLWan with a small base_dim, a 2-layer UMT5EncoderModel and a
word-level tokenizer made with the `tokenizers` library and saved as a transformers fast
tokenizer (so `from_pretrained` loads it like umT5's). Plus small captioned mp4 files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

Z_DIM = 4
TEXT_DIM = 16
WORDS = "a red ball blue square moves left right up down slowly fast on the black background".split()


def make_vae_folder(path: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=8, z_dim=Z_DIM, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True],
                           latents_mean=[0.05, -0.1, 0.2, 0.0], latents_std=[0.05, 0.02, 0.08, 0.04])
    vae.save_pretrained(str(path))
    return path


def make_text_encoder_folder(path: Path, seed: int = 0) -> Path:
    """A Wan-pipeline-like folder: text_encoder/ (UMT5EncoderModel) and tokenizer/."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(path / "tokenizer"))
    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=len(vocab), d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                     relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    UMT5EncoderModel(cfg).save_pretrained(str(path / "text_encoder"))
    return path


def make_video(path: Path, frames: int, size: int = 32, seed: int = 0, caption: str | None = None) -> Path:
    """A moving square on a gradient, H.264 mp4, with its caption sidecar."""
    from resforce.io.video_io import save_video

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, int(rng.integers(256)))], -1)
    video = np.repeat(base[None], frames, 0).astype(np.uint8)
    color = rng.integers(0, 256, 3)
    for f in range(frames):
        c = (4 + f) % (size - 8)
        video[f, 8:16, c:c + 8] = color
    path.parent.mkdir(parents=True, exist_ok=True)
    save_video(path, video, fps=16, scale=1)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def paper_index(path: Path, latent_frames: int = 63) -> Path:
    """The index.json of a prepared 480x832 dataset of 15 s clips (21 chunks), no shards: what a
    config reads when it loads (the latents world's channels, latent size and clip length)."""
    path.mkdir(parents=True)
    (path / "index.json").write_text(json.dumps({
        "format": "resforce-latents", "version": 1, "complete": True, "latent_shape": [16, latent_frames, 60, 104],
        "text_dim": 4096, "text_encoder": {"text_len": 512}, "shards": []}))
    return path
