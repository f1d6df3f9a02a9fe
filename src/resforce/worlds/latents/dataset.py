"""A prepared dataset on disk: one safetensors file per video + index.json.

    DATASET/index.json                 what is in it and how it was made (below)
    DATASET/clips/SOURCE.safetensors   one per video (SOURCE: its path under VIDEO_DIR, e.g.
                                       clips/sub/a.mp4.safetensors): latents.j (C, T, h, w)
                                       normalised Wan latents of its clip j, text (L, D) its
                                       caption's umT5 embedding (own tokens); a video that
                                       gave no clip has no tensors. The metadata key
                                       "resforce" holds its record as JSON (VIDEO_RECORD).
    DATASET/empty_prompt.safetensors   text (L, D): the embedding of "" (caption dropout, CFG)

A video's file is written atomically when the video is done, so a file that exists is
complete, and `prepare` run again skips the videos whose file exists. index.json records the
settings `prepare` ran with (checked when it resumes), the VAE's and the text encoder's
folders and configs (latents_mean / latents_std included), the latent shape, and, once every
video is done, the list of files with their clips (source, first frame, caption, token count)
in the order of the sorted sources, the videos done and the videos skipped with the reason.
That list is built from the per-video files alone (`build_listing`), so the files written by
any number of ranks, in any order, give the same index.

Older datasets (index version 1: shards of several videos, text.j per clip) are read the same way.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch

INDEX = "index.json"
EMPTY_PROMPT = "empty_prompt.safetensors"
CLIPS = "clips"
FORMAT = "resforce-latents"
VERSION = 2
READABLE = (1, 2)
RECORD_KEY = "resforce"
OPEN_FILES = 64
"""Per-video files a dataset keeps open (least recently used closed first): a dataset of a
million videos must not hold a million file handles."""


def video_file(source: str) -> str:
    """The file of a video, relative to the dataset folder."""
    return f"{CLIPS}/{source}.safetensors"


def read_record(path: Path) -> dict:
    """The record of a per-video file: {"source", "caption", "clips": [{"start_frame",
    "text_tokens"}]} for a video with clips, {"source", "skipped": reason} for one without."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if RECORD_KEY not in meta:
        raise ValueError(f"{path}: not a per-video file of `resforce prepare` (no {RECORD_KEY!r} metadata)")
    return json.loads(meta[RECORD_KEY])


def build_listing(root: Path, sources: list[str]) -> dict:
    """{"shards", "done", "skipped"} of the index from the per-video files of `sources`, in
    their order. FileNotFoundError listing the videos that have no file yet."""
    missing = [s for s in sources if not (root / video_file(s)).is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{root}: {len(missing)} video(s) have no file under {CLIPS}/ yet "
                                f"({', '.join(missing[:5])}{more}): run the same prepare command again")
    shards, done, skipped = [], [], []
    for source in sources:
        record = read_record(root / video_file(source))
        if "skipped" in record:
            skipped.append({"source": source, "reason": record["skipped"]})
            continue
        shards.append({"file": video_file(source),
                       "clips": [{"source": source, "start_frame": c["start_frame"], "caption": record["caption"],
                                  "text_tokens": c["text_tokens"]} for c in record["clips"]]})
        done.append(source)
    return {"shards": shards, "done": done, "skipped": skipped}


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
    if index.get("format") != FORMAT or index.get("version") not in READABLE:
        raise ValueError(f"{path}: not a resforce latents index (format {FORMAT!r}, version {READABLE})")
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
        self._open: OrderedDict[str, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def complete(self) -> bool:
        return bool(self.index.get("complete"))

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

    def _file(self, name: str):
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        from safetensors import safe_open
        path = self.root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: a file listed in {self.root / INDEX} is missing")
        if len(self._open) >= OPEN_FILES:
            self._open.popitem(last=False)
        self._open[name] = safe_open(str(path), framework="pt")
        return self._open[name]

    def clip(self, i: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(latents (C, T, h, w) float32, text (L, D) float32, the clip's index entry)."""
        name, j, entry = self.clips[i]
        f = self._file(name)
        text = f"text.{j}" if self.index["version"] == 1 else "text"  # version 2: one caption per video file
        return f.get_tensor(f"latents.{j}").float(), f.get_tensor(text).float(), entry

    def empty_prompt(self) -> torch.Tensor:
        """(L, D): the umT5 embedding of the empty prompt, as stored by prepare."""
        from safetensors.torch import load_file
        return load_file(str(self.root / EMPTY_PROMPT))["text"].float()


_IGNORED_CONFIG = ("torch_dtype", "dtype", "transformers_version")
"""Config entries that say how a model was loaded, not what it computes."""


def _comparable(config: dict | None) -> dict:
    return {k: v for k, v in (config or {}).items() if not k.startswith("_") and k not in _IGNORED_CONFIG}


class LatentDatasets:
    """Several prepared datasets read as one: their clips one after the other, in the order of
    the roots. They must agree on what a clip is for the model (latent channels and size, text
    width and length, VAE and text-encoder configs); their clip lengths may differ, and then
    every clip is cut to the shortest (the latents of a clip's first frames, as for a shorter
    stage). The first root's index gives the VAE and text encoder of generation and the stored
    empty prompt."""

    def __init__(self, roots: list[str | Path], what: str = "data.latents.root", require_complete: bool = True):
        if not roots:
            raise ValueError(f"{what}: expected at least one dataset folder")
        names = [what] if len(roots) == 1 else [f"{what}[{i}]" for i in range(len(roots))]
        self.parts = [LatentDataset(r, n, require_complete) for r, n in zip(roots, names)]
        first = self.parts[0]
        for name, part in zip(names[1:], self.parts[1:]):
            _check_compatible(names[0], first, name, part)
        self.clips = [(k, i) for k, part in enumerate(self.parts) for i in range(len(part))]

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def root(self) -> Path:
        """The first dataset's folder."""
        return self.parts[0].root

    @property
    def index(self) -> dict:
        """The first dataset's index (its VAE and text encoder serve every root)."""
        return self.parts[0].index

    @property
    def complete(self) -> bool:
        return all(p.complete for p in self.parts)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, T, h, w): T is the shortest clip length of the datasets."""
        c, _, h, w = self.parts[0].latent_shape
        return c, min(p.latent_shape[1] for p in self.parts), h, w

    @property
    def text_len(self) -> int:
        return self.parts[0].text_len

    @property
    def text_dim(self) -> int:
        return self.parts[0].text_dim

    def clip(self, i: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(latents (C, T, h, w) float32 with T = latent_shape[1], text (L, D), the clip's entry)."""
        k, j = self.clips[i]
        latents, text, entry = self.parts[k].clip(j)
        return latents[:, :self.latent_shape[1]], text, entry

    def empty_prompt(self) -> torch.Tensor:
        return self.parts[0].empty_prompt()


def _check_compatible(name_a: str, a: LatentDataset, name_b: str, b: LatentDataset) -> None:
    ia, ib = a.index, b.index
    checks = [("latent channels and size (C, h, w)", [a.latent_shape[i] for i in (0, 2, 3)],
               [b.latent_shape[i] for i in (0, 2, 3)]),
              ("text width", ia.get("text_dim"), ib.get("text_dim")),
              ("text length", ia.get("text_encoder", {}).get("text_len"), ib.get("text_encoder", {}).get("text_len")),
              ("VAE config", _comparable(ia.get("vae", {}).get("config")), _comparable(ib.get("vae", {}).get("config"))),
              ("text-encoder config", _comparable(ia.get("text_encoder", {}).get("config")),
               _comparable(ib.get("text_encoder", {}).get("config")))]
    for what, va, vb in checks:
        if va != vb:
            shown = "" if isinstance(va, dict) else f": {va} vs {vb}"
            raise ValueError(f"{name_b}={str(b.root)!r} cannot be read with {name_a}={str(a.root)!r}: their "
                             f"{what} differ{shown}; prepare them with the same VAE, text encoder, --size "
                             f"and --text-len")
