"""`resforce prepare`: a folder of captioned videos -> a dataset of Wan latents and umT5 text.

Each video gives up to `clips_per_video` clips of `chunks` chunks (12 chunks - 3 frames, see
geometry.py), cut one after the other from its first frame, centre-cropped and resized to
`size`; each clip is encoded on its own from its first frame (Wan's image-alone first latent).
Clips go through the VAE `batch` at a time; every `shard_size` clips (at a video boundary) the
shard is written atomically, then the index (dataset.py) records it and the videos it holds.

Resume: run the same command again. Videos the index lists as done or skipped are not read
again; a shard file the index does not list (a kill between the two writes) is overwritten.
Different content settings (chunks, size, ...) are refused, naming the flag. Videos that
cannot be decoded, are too short or have no caption are skipped and listed with the reason
(index.json "skipped"), never fatal.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from resforce.io.fileio import atomic_write, write_text_atomic
from resforce.worlds.latents.captions import Captions
from resforce.worlds.latents.dataset import EMPTY_PROMPT, FORMAT, INDEX, VERSION, read_index, shard_name
from resforce.wan.geometry import FRAMES_PER_CHUNK, clip_video_frames
from resforce.wan.text_encoder import WAN_TEXT_LEN, TextEncoder
from resforce.wan.vae import encode, load_vae

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CONTENT = ("videos", "captions", "chunks", "size", "frame_stride", "clips_per_video", "dtype", "text_len")
"""Settings that change what the dataset holds: a resumed prepare must use the same ones."""
FLAGS = {"videos": "VIDEO_DIR", "captions": "--captions", "chunks": "--chunks", "size": "--size",
         "frame_stride": "--frame-stride", "clips_per_video": "--clips-per-video", "dtype": "--dtype",
         "text_len": "--text-len"}


@dataclass
class PrepareOptions:
    videos: str
    """Folder searched recursively for videos."""
    vae: str
    """Local AutoencoderKLWan folder (or a Wan pipeline folder with vae/)."""
    text_encoder: str
    """Local UMT5EncoderModel folder (or a Wan pipeline folder with text_encoder/ and tokenizer/)."""
    out: str
    """The dataset folder (created; resumed if it holds an unfinished prepare)."""
    tokenizer: str | None = None
    """Tokenizer folder when it is not in or beside the text encoder's."""
    captions: str | None = None
    """A JSON or CSV manifest of captions; None: clip.txt beside clip.mp4."""
    chunks: int = 21
    """Clip length in chunks of 3 latent frames: 21 = 249 frames (the recipe's 15 s stages;
    5 s stages train on the first 7 chunks of each clip), 7 = 81 frames (5 s at 16 fps)."""
    size: tuple[int, int] = (480, 832)
    """(H, W) of the frames, multiples of 8; Wan2.1's 480p."""
    frame_stride: int = 1
    """Keep every k-th frame (e.g. 2 turns 32 fps video into 16 fps, Wan's rate)."""
    clips_per_video: int = 1
    """Clips cut one after the other from each video; 0 = as many as fit."""
    batch: int = 4
    """Clips per VAE call (and captions per text-encoder call)."""
    shard_size: int = 64
    """Clips per shard file."""
    dtype: str = "bfloat16"
    """Storage dtype of latents and text embeddings."""
    text_len: int = WAN_TEXT_LEN
    """Tokens of the padded text context (Wan: 512); longer captions are truncated."""
    device: str = "auto"
    extensions: list[str] = field(default_factory=lambda: [".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif"])

    def validate(self) -> None:
        checks = [("--chunks", self.chunks >= 1, "an integer >= 1"),
                  ("--size", len(self.size) == 2 and all(v >= 8 and v % 8 == 0 for v in self.size),
                   "H W, multiples of 8 (Wan's VAE)"),
                  ("--frame-stride", self.frame_stride >= 1, "an integer >= 1"),
                  ("--clips-per-video", self.clips_per_video >= 0, "an integer >= 0 (0: all)"),
                  ("--batch", self.batch >= 1, "an integer >= 1"),
                  ("--shard-size", self.shard_size >= 1, "an integer >= 1"),
                  ("--dtype", self.dtype in DTYPES, f"one of {sorted(DTYPES)}"),
                  ("--text-len", self.text_len >= 1, "an integer >= 1")]
        for flag, ok, expected in checks:
            if not ok:
                raise ValueError(f"{flag}={getattr(self, flag[2:].replace('-', '_'))!r}: expected {expected}")

    def content(self) -> dict:
        s = asdict(self)
        s["videos"] = str(Path(self.videos).resolve())
        s["captions"] = None if self.captions is None else str(Path(self.captions).resolve())
        s["size"] = list(self.size)
        return {k: s[k] for k in CONTENT}


class SkipVideo(Exception):
    """A video that cannot give a clip; the message is the reason listed in the index."""


def read_clips(path: Path, frames: int, size: tuple[int, int], stride: int, limit: int) -> list[tuple[int, np.ndarray]]:
    """[(first frame, uint8 (frames, H, W, 3))] cut one after the other from the video's start."""
    import av

    from resforce.worlds.video_folder.reader import crop_resize  # the video_folder world's crop: the same framing

    clips, current, start, kept = [], [], 0, 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SkipVideo("no video stream")
            for index, frame in enumerate(container.decode(video=0)):
                if index % stride:
                    continue
                if not current:
                    start = index
                current.append(crop_resize(frame.to_image(), size))
                kept += 1
                if len(current) == frames:
                    clips.append((start, np.stack(current)))
                    current = []
                    if limit and len(clips) == limit:
                        break
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise SkipVideo(f"cannot decode: {e}") from None
    if not clips:
        raise SkipVideo(f"too short: {kept} frame(s) with --frame-stride {stride}, a clip needs {frames} "
                        f"(--chunks)")
    return clips


def prepare(opts: PrepareOptions, after_shard: Callable[[int], None] | None = None, progress: bool = True) -> dict:
    """Run (or resume) a prepare; returns the final index. `after_shard(k)` is called after
    shard k is recorded (tests stop a prepare there, as a kill would)."""
    from resforce.worlds.video_folder.reader import list_videos
    from resforce.device import resolve_device

    opts.validate()
    root, out = Path(opts.videos), Path(opts.out)
    if not root.is_dir():
        raise FileNotFoundError(f"VIDEO_DIR {str(root)!r} is not a directory")
    files = list_videos(root, opts.extensions)
    captions = Captions(root, opts.captions)
    index = _resumed_index(out, opts)
    if index is not None and index["complete"]:
        print(f"{out}: already complete ({sum(len(s['clips']) for s in index['shards'])} clips)")
        return index
    device = resolve_device(opts.device)
    vae = load_vae(opts.vae, device)
    text = TextEncoder.load(opts.text_encoder, opts.tokenizer, device,
                            torch.bfloat16 if device.type == "cuda" else torch.float32, opts.text_len)
    if index is None:
        index = _new_index(out, opts, vae, text)
    _Writer(out, opts, index, vae, text, after_shard).run(files, root, captions, progress)
    return index


def _resumed_index(out: Path, opts: PrepareOptions) -> dict | None:
    if not (out / INDEX).is_file():  # a kill before the first index leaves at most the empty prompt and temp files
        if out.exists() and any(p.name != EMPTY_PROMPT and not p.name.startswith(".") for p in out.iterdir()):
            raise FileExistsError(f"--out {str(out)!r} exists and is not a dataset being prepared (no {INDEX}); "
                                  f"expected a new or empty folder")
        return None
    index = read_index(out, "--out")
    old, new = index["settings"], opts.content()
    changed = [f"{FLAGS[k]} was {old[k]!r}, now {new[k]!r}" for k in CONTENT if old.get(k) != new[k]]
    if changed:
        raise ValueError(f"--out {str(out)!r} was prepared with other settings ({'; '.join(changed)}): rerun "
                         f"with the same ones to resume, or write to a new --out")
    return index


def _new_index(out: Path, opts: PrepareOptions, vae, text: TextEncoder) -> dict:
    frames = clip_video_frames(opts.chunks)
    spatial = int(vae.config.scale_factor_spatial or 8)
    index = {
        "format": FORMAT, "version": VERSION, "complete": False, "settings": opts.content(),
        "geometry": {"video_frames": frames, "latent_frames": opts.chunks * FRAMES_PER_CHUNK,
                     "frames_per_chunk": FRAMES_PER_CHUNK, "chunks": opts.chunks,
                     "note": "1 + 4k video frames -> 1 + k latent frames; 3 latent frames per chunk"},
        "latent_shape": [int(vae.config.z_dim), opts.chunks * FRAMES_PER_CHUNK,
                         opts.size[0] // spatial, opts.size[1] // spatial],
        "text_dim": text.dim,
        "vae": {"path": str(Path(opts.vae).resolve()), "config": _plain(vae.config)},
        "text_encoder": {"path": str(Path(opts.text_encoder).resolve()), "folder": text.folder,
                         "tokenizer": text.tokenizer_folder, "text_len": opts.text_len,
                         "config": text.model.config.to_dict()},
        "empty_prompt": EMPTY_PROMPT, "shards": [], "done": [], "skipped": [],
    }
    from safetensors.torch import save_file
    empty = text.encode([""])[0].to(DTYPES[opts.dtype]).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / EMPTY_PROMPT, lambda tmp: save_file({"text": empty}, str(tmp)))
    write_text_atomic(out / INDEX, json.dumps(index, indent=1))
    return index


def _plain(config) -> dict:
    return json.loads(json.dumps(dict(config), default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


class _Writer:
    """Collects clips, encodes them in batches, writes shards and the index."""

    def __init__(self, out, opts, index, vae, text, after_shard) -> None:
        self.out, self.opts, self.index, self.vae, self.text = out, opts, index, vae, text
        self.after_shard = after_shard
        self.frames = clip_video_frames(opts.chunks)
        self.clips: list[dict] = []  # entry dicts; "pixels" until encoded, then "latents"
        self.videos: list[str] = []  # sources whose clips are all in self.clips
        self.skipped: list[dict] = []

    def run(self, files: list[Path], root: Path, captions: Captions, progress: bool) -> None:
        seen = set(self.index["done"]) | {s["source"] for s in self.index["skipped"]}
        pending = [f for f in files if f.relative_to(root).as_posix() not in seen]
        bar = tqdm(pending, desc="prepare", unit="video", disable=not progress, dynamic_ncols=True)
        for path in bar:
            source = path.relative_to(root).as_posix()
            try:
                self.add_video(path, source, captions)
            except SkipVideo as e:
                self.skipped.append({"source": source, "reason": str(e)})
            bar.set_postfix(clips=self.total_clips() + len(self.clips), skipped=len(self.index["skipped"]) + len(self.skipped))
            if len(self.clips) >= self.opts.shard_size:
                self.flush()
        bar.close()
        self.flush(final=True)
        if self.index["skipped"]:
            print(f"skipped {len(self.index['skipped'])} video(s), listed with the reason in {self.out / INDEX}")

    def total_clips(self) -> int:
        return sum(len(s["clips"]) for s in self.index["shards"])

    def add_video(self, path: Path, source: str, captions: Captions) -> None:
        caption = captions.caption(path)
        if caption is None:
            raise SkipVideo(captions.describe())
        o = self.opts
        for start, pixels in read_clips(path, self.frames, tuple(o.size), o.frame_stride, o.clips_per_video):
            self.clips.append({"source": source, "start_frame": start, "caption": caption, "pixels": pixels})
            if sum("pixels" in c for c in self.clips) >= o.batch:
                self.encode_pending()
        self.videos.append(source)

    def encode_pending(self) -> None:
        todo = [c for c in self.clips if "pixels" in c]
        for i in range(0, len(todo), self.opts.batch):
            group = todo[i:i + self.opts.batch]
            pixels = torch.from_numpy(np.stack([c.pop("pixels") for c in group]))  # (B, F, H, W, 3) uint8
            video = pixels.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0).to(next(self.vae.parameters()).device)
            latents = encode(self.vae, video).cpu()
            for c, z in zip(group, latents):
                c["latents"] = z

    def flush(self, final: bool = False) -> None:
        self.encode_pending()
        if self.clips:
            self.write_shard()
        if final:
            self.index["complete"] = True
        if self.clips or self.skipped or final:
            self.index["skipped"] += self.skipped
            self.index["done"] += self.videos
            write_text_atomic(self.out / INDEX, json.dumps(self.index, indent=1))
            k = len(self.index["shards"]) - 1
            wrote = bool(self.clips)
            self.clips, self.videos, self.skipped = [], [], []
            if wrote and self.after_shard is not None:
                self.after_shard(k)

    def write_shard(self) -> None:
        from safetensors.torch import save_file

        dtype = DTYPES[self.opts.dtype]
        texts = []
        for i in range(0, len(self.clips), self.opts.batch):
            texts += self.text.encode([c["caption"] for c in self.clips[i:i + self.opts.batch]])
        tensors, entries = {}, []
        expected = tuple(self.index["latent_shape"])
        for j, (c, t) in enumerate(zip(self.clips, texts)):
            if tuple(c["latents"].shape) != expected:
                raise RuntimeError(f"{c['source']}: latents {tuple(c['latents'].shape)}, expected {expected}")
            tensors[f"latents.{j}"] = c["latents"].to(dtype).contiguous()
            tensors[f"text.{j}"] = t.to(dtype).contiguous()
            entries.append({"source": c["source"], "start_frame": c["start_frame"], "caption": c["caption"],
                            "text_tokens": int(t.shape[0])})
        name = shard_name(len(self.index["shards"]))
        atomic_write(self.out / name, lambda tmp: save_file(tensors, str(tmp)))
        self.index["shards"].append({"file": name, "clips": entries})
