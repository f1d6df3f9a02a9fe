"""Prepared Wan latents with captions (data.kind = latents): `resforce prepare` writes them.

Training clips are drawn uniformly from the dataset's clips. A clip of n chunks is the FIRST
3n latent frames of a prepared clip (geometry.py: the Wan VAE is causal, so that is exactly
the latent of the clip's first 12n - 3 video frames, image-alone first latent included).
Each clip comes with its caption's umT5 embedding, zero-padded to the dataset's text length
(info.context), and the embedding of "" (info.empty_context): the trainer's caption dropout
(text.caption_dropout) replaces a caption by it, so the unconditional branch of classifier-free
guidance is trained on exactly the empty prompt WanPipeline's guidance uses.

Generation: a prompt is encoded with the dataset's text encoder (or data.latents.text_encoder,
or generate's --text-encoder), the unconditional branch is `data.latents.negative_prompt`
(or --negative-prompt), and the rollout is decoded chunk by chunk with the VAE's causal feature
cache (latents/vae.py StreamingDecoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from resforce.worlds.base import World


@dataclass
class LatentsConfig:
    """A dataset written by `resforce prepare`."""

    root: str | list[str] = ""
    """The dataset folder (index.json + per-video files), or a list of them read as one dataset
    (`root: [data/a, data/b]`; training draws uniformly from all their clips). They must agree on
    the latent channels and size, the text width and length, and the VAE and text-encoder
    configs; the first one's VAE, text encoder and empty prompt serve generation."""
    negative_prompt: str = ""
    """The unconditional branch of classifier-free guidance at generation time (generate's
    --negative-prompt overrides it); "" = the empty prompt, which caption dropout trains."""
    vae: str | None = None
    """Local Wan VAE folder for decoding; None: the one recorded in the dataset's index."""
    text_encoder: str | None = None
    """Local umT5 folder for prompts; None: the one recorded in the dataset's index."""
    tokenizer: str | None = None
    """Tokenizer folder; None: the one recorded in the dataset's index."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def roots(self) -> list[str]:
        """The dataset folders ([] when root is unset)."""
        if isinstance(self.root, str):
            return [self.root] if self.root else []
        return [str(r) for r in self.root]

    def validate(self) -> None:
        """Raise ValueError naming data.latents.root for a value that names no folders."""
        if isinstance(self.root, str):
            return
        roots = list(self.root) if isinstance(self.root, (list, tuple)) else None
        if not roots or not all(isinstance(r, str) and r for r in roots):
            raise ValueError(f"data.latents.root={self.root!r}: expected a dataset folder or a non-empty list "
                             f"of them, e.g. [data/a, data/b]")
        if len(set(roots)) != len(roots):
            raise ValueError(f"data.latents.root={roots!r}: a folder is listed twice")


class LatentStream:
    """Resumable stream of (latents (n, C, T, h, w), info with .context / .empty_context)."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.rng = dataset, np.random.default_rng(seed)
        self.empty = _pad(dataset.empty_prompt(), dataset.text_len)[None]

    def batch(self, batch_size: int, num_frames: int | None = None):
        c, t = self.dataset.latent_shape[:2]
        frames = t if num_frames is None else num_frames
        if frames > t:
            raise ValueError(_too_long(frames, t, self.dataset.root))
        picks = self.rng.integers(len(self.dataset), size=batch_size)
        latents, texts, captions = [], [], []
        for i in picks:
            z, text, entry = self.dataset.clip(int(i))
            latents.append(z[:, :frames])
            texts.append(_pad(text, self.dataset.text_len))
            captions.append(entry["caption"])
        info = SimpleNamespace(context=torch.stack(texts), empty_context=self.empty, captions=captions)
        return torch.stack(latents), info

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


class LatentsWorld(World):
    kind = "latents"
    config_class = LatentsConfig
    config_doc = "A dataset of Wan latents and caption embeddings from `resforce prepare` (kind = latents)."
    title = "Wan latent clips"
    table_metrics = ()
    plot_metrics = ()
    per_sample_metrics = ()

    def __init__(self, data_cfg) -> None:
        super().__init__(data_cfg)
        self._dataset = None

    def dataset(self, require_complete: bool = False):
        from resforce.worlds.latents.dataset import LatentDatasets

        if not self.config.roots:
            raise ValueError("data.latents.root must name a dataset written by `resforce prepare` (or a list of "
                             "them) when data.kind=latents")
        if self._dataset is None or (require_complete and not self._dataset.complete):
            self._dataset = LatentDatasets(self.config.roots, "data.latents.root", require_complete)
        return self._dataset

    @property
    def channels(self) -> int:
        return self.dataset().latent_shape[0]

    @property
    def resolution(self) -> tuple[int, int]:
        return tuple(self.dataset().latent_shape[2:])

    @property
    def resolution_key(self) -> str:
        return "data.latents.root (its latent size, from `resforce prepare --size`)"

    def check_clip_frames(self, frames: int, key: str) -> None:
        t = self.dataset().latent_shape[1]
        if frames > t:
            raise ValueError(f"{key}: {_too_long(frames, t, self.config.root)}")

    def stream(self, seed: int = 0) -> LatentStream:
        return LatentStream(self.dataset(require_complete=True), seed)

    def text_embeddings(self, prompt, device):
        from resforce.wan.text_encoder import TextEncoder

        ds, cfg = self.dataset(), self.config
        negative = cfg.negative_prompt if prompt.negative is None else prompt.negative
        wanted = [p for p in (prompt.text, negative) if p]  # "" and None: the stored empty prompt
        encoded = {}
        if wanted:
            folder = prompt.text_encoder or cfg.text_encoder or ds.index["text_encoder"]["folder"]
            flag = "--text-encoder" if prompt.text_encoder else ("data.latents.text_encoder" if cfg.text_encoder
                                                                 else f"the text encoder of {ds.root / 'index.json'}")
            tok = cfg.tokenizer or ds.index["text_encoder"].get("tokenizer")
            dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
            encoder = TextEncoder.load(folder, tok, device, dtype, ds.text_len, flag=flag)
            encoded = dict(zip(wanted, encoder.encode(wanted)))
            del encoder  # umT5-XXL is ~11 GB: gone before the rollout
        empty = ds.empty_prompt()
        pick = lambda p: _pad(encoded[p] if p else empty, ds.text_len)[None].to(device)  # noqa: E731
        return pick(prompt.text), pick(negative)

    def pixel_decoder(self, vae: str | None, device):
        from resforce.wan.vae import StreamingDecoder, load_vae

        ds, cfg = self.dataset(), self.config
        folder = vae or cfg.vae or ds.index["vae"]["path"]
        flag = "--vae" if vae else ("data.latents.vae" if cfg.vae else f"the VAE of {ds.root / 'index.json'}")
        return StreamingDecoder(load_vae(folder, device, flag=flag))


def _pad(text: torch.Tensor, text_len: int) -> torch.Tensor:
    from resforce.wan.text_encoder import pad
    return pad([text], text_len)[0]


def _too_long(frames: int, have: int, root) -> str:
    shown = repr(root) if isinstance(root, list) else repr(str(root))
    return (f"a training clip of {frames} latent frames (clip_chunks x model.frames_per_chunk) was asked for, "
            f"but the clips of data.latents.root={shown} have {have} (prepare them with a larger --chunks)")
