"""A prepared dataset on disk: safetensors shards of latents and text embeddings + index.json.

    DATASET/index.json                what is in it and how it was made (below)
    DATASET/shard-00000.safetensors   per clip j: latents.j (C, T, h, w) normalised Wan latents,
                                      text.j (L_j, D) its caption's umT5 embedding (own tokens)
    DATASET/empty_prompt.safetensors  text (L, D): the embedding of "" (caption dropout, CFG)

index.json records the settings `prepare` ran with (checked when it resumes), the VAE's and
the text encoder's folders and configs (latents_mean / latents_std included), the latent
shape, every shard with its clips (source file, first frame, caption, token count), the
videos done and the videos skipped with the reason. A shard is listed only once its file is
complete on disk (atomic rename first, index second), so the index always says what is done.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

INDEX = "index.json"
EMPTY_PROMPT = "empty_prompt.safetensors"
FORMAT = "resforce-latents"
VERSION = 1


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def read_index(root: str | Path, what: str = "dataset") -> dict:
    """The index of a prepared dataset (FileNotFoundError / ValueError naming `what`)."""
    path = Path(root) / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(root)!r} has no {INDEX}: expected a folder written by "
                                f"`resforce prepare VIDEO_DIR --vae DIR --text-encoder DIR --out {root}`")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise ValueError(f"{path}: not a resforce latents index (format {FORMAT!r} version {VERSION})")
    return index


class LatentDataset:
    """Read access to a prepared dataset: clips by number, the empty-prompt embedding."""

    def __init__(self, root: str | Path, what: str = "dataset", require_complete: bool = True) -> None:
        self.root = Path(root)
        self.index = read_index(root, what)
        if require_complete and not self.index.get("complete"):
            raise ValueError(f"{what} {str(root)!r} is incomplete (`resforce prepare` was stopped): run the "
                             f"same prepare command again to finish it")
        self.clips = [(s["file"], j, c) for s in self.index["shards"] for j, c in enumerate(s["clips"])]
        self._open: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, T, h, w) of every clip."""
        return tuple(self.index["latent_shape"])

    @property
    def text_len(self) -> int:
        return int(self.index["text_encoder"]["text_len"])

    @property
    def text_dim(self) -> int:
        return int(self.index["text_dim"])

    def _shard(self, name: str):
        if name not in self._open:
            from safetensors import safe_open
            path = self.root / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: a shard listed in {self.root / INDEX} is missing")
            self._open[name] = safe_open(str(path), framework="pt")
        return self._open[name]

    def clip(self, i: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(latents (C, T, h, w) float32, text (L, D) float32, the clip's index entry)."""
        name, j, entry = self.clips[i]
        shard = self._shard(name)
        return shard.get_tensor(f"latents.{j}").float(), shard.get_tensor(f"text.{j}").float(), entry

    def empty_prompt(self) -> torch.Tensor:
        """(L, D): the umT5 embedding of the empty prompt, as stored by prepare."""
        from safetensors.torch import load_file
        return load_file(str(self.root / EMPTY_PROMPT))["text"].float()
