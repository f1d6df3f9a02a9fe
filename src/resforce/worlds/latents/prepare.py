"""`resforce prepare`: a folder of captioned videos -> a dataset of Wan latents and umT5 text.

Each video gives up to `clips_per_video` clips of `chunks` chunks (12 chunks - 3 frames, see
geometry.py), cut one after the other from its first frame, centre-cropped and resized to
`size`; each clip is encoded on its own from its first frame (Wan's image-alone first latent).
Reader threads decode and resize the videos while the main thread runs the VAE (reader.py);
a video's clips go through the VAE up to `batch` at a time, its caption through the text
encoder, and its file (dataset.py) is written atomically when it is done.

Ranks. Under torchrun every rank takes the videos whose position in the sorted list is its
rank modulo the world size, and writes only their files; rank 0 writes index.json before any
video is read (the settings) and again once every rank is done (the list of files, built from
the files themselves). A video's output does not depend on the ranks, the reader threads or
the order the videos were read in, so any number of ranks writes the same files as one
process. On CUDA each rank takes the GPU of its LOCAL_RANK; the ranks only talk through Gloo
(the start and the end), so prepare needs no NCCL.

Resume: run the same command again, with any number of ranks. Videos whose file exists are
not read again (a file is only ever renamed into place complete); videos added to VIDEO_DIR
since are prepared and listed. Different content settings (chunks, size, ...) are refused,
naming the flag. Videos that cannot be decoded, are too short or have no caption are skipped,
printed and listed with the reason (index.json "skipped"), never fatal; any other failure to
read a video stops the prepare with an error naming the file.

Precision: the VAE runs in bfloat16 on CUDA and float32 elsewhere (`vae_dtype` "auto"), the
text encoder likewise; latents are normalised in float32 and stored in `dtype`.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from resforce.io.fileio import atomic_write, write_text_atomic
from resforce.worlds.latents.captions import Captions
from resforce.worlds.latents.dataset import (CLIPS, EMPTY_PROMPT, FORMAT, INDEX, RECORD_KEY, VERSION, build_listing,
                                             read_index, video_file)
from resforce.worlds.latents.ranks import Ranks, rank_device
from resforce.worlds.latents.reader import ClipSpec, SkipVideo, VideoReadError, VideoTask, read_videos
from resforce.wan.geometry import FRAMES_PER_CHUNK, clip_video_frames
from resforce.wan.text_encoder import WAN_TEXT_LEN, TextEncoder
from resforce.wan.vae import encode, load_vae

__all__ = ["PrepareOptions", "Throughput", "prepare", "run_prepare", "SkipVideo", "VideoReadError"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VAE_DTYPES = ("auto", "float32", "bfloat16")
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
    """Clips of one video per VAE call (a call never mixes videos: see reader.py)."""
    workers: int = 4
    """Reader threads decoding and resizing videos while the VAE runs; 0 = read in the main thread."""
    dtype: str = "bfloat16"
    """Storage dtype of latents and text embeddings."""
    vae_dtype: str = "auto"
    """The VAE's compute dtype: 'auto' = bfloat16 on CUDA, float32 elsewhere (bfloat16 convolutions
    are slow on CPUs without native bf16)."""
    text_len: int = WAN_TEXT_LEN
    """Tokens of the padded text context (Wan: 512); longer captions are truncated."""
    device: str = "auto"
    """'auto' = CUDA when available (under torchrun: the GPU of each rank's LOCAL_RANK), else the CPU."""
    extensions: list[str] = field(default_factory=lambda: [".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif"])
    """File extensions treated as videos (case-insensitive)."""

    def validate(self) -> None:
        checks = [("--chunks", self.chunks >= 1, "an integer >= 1"),
                  ("--size", len(self.size) == 2 and all(v >= 8 and v % 8 == 0 for v in self.size),
                   "H W, multiples of 8 (Wan's VAE)"),
                  ("--frame-stride", self.frame_stride >= 1, "an integer >= 1"),
                  ("--clips-per-video", self.clips_per_video >= 0, "an integer >= 0 (0: all)"),
                  ("--batch", self.batch >= 1, "an integer >= 1"),
                  ("--workers", self.workers >= 0, "an integer >= 0 (0: read in the main thread)"),
                  ("--dtype", self.dtype in DTYPES, f"one of {sorted(DTYPES)}"),
                  ("--vae-dtype", self.vae_dtype in VAE_DTYPES, f"one of {list(VAE_DTYPES)}"),
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

    def clip_spec(self) -> ClipSpec:
        return ClipSpec(clip_video_frames(self.chunks), tuple(self.size), self.frame_stride, self.clips_per_video,
                        self.batch)


@dataclass
class Throughput:
    """What one prepare encoded (summed over the ranks) and how long the slowest rank took,
    from the models being loaded to its last file (model loading not included)."""

    videos: int = 0
    """Videos encoded (skipped ones and ones done before not counted)."""
    clips: int = 0
    frames: int = 0
    """Video frames through the VAE (clips x frames per clip)."""
    seconds: float = 0.0
    ranks: int = 1
    workers: int = 0

    def line(self) -> str:
        rate = (lambda n: n / self.seconds) if self.seconds > 0 else (lambda n: 0.0)
        return (f"encoded {self.clips} clip(s) ({self.frames} frames) of {self.videos} video(s) in "
                f"{self.seconds:.1f} s: {rate(self.clips):.2f} clips/s, {rate(self.frames):.1f} frames/s "
                f"({self.ranks} rank(s), {self.workers} reader thread(s) each)")


def prepare(opts: PrepareOptions, after_video: Callable[[str], None] | None = None, progress: bool = True) -> dict:
    """Run (or resume) a prepare; returns the final index (see run_prepare)."""
    return run_prepare(opts, after_video, progress)[0]


def run_prepare(opts: PrepareOptions, after_video: Callable[[str], None] | None = None,
                progress: bool = True) -> tuple[dict, Throughput]:
    """Run (or resume) a prepare, on every rank of a torchrun launch; returns the final index
    and the throughput (every rank gets both). `after_video(source)` is called after a video's
    file is written, skipped videos' too (tests stop a prepare there, as a kill would)."""
    from resforce.worlds.video_folder.reader import list_videos

    opts.validate()  # everything that can be checked is, before the models take memory
    root, out = Path(opts.videos), Path(opts.out)
    if not root.is_dir():
        raise FileNotFoundError(f"VIDEO_DIR {str(root)!r} is not a directory")
    files = list_videos(root, opts.extensions)
    sources = [f.relative_to(root).as_posix() for f in files]
    captions = Captions(root, opts.captions)
    ranks = Ranks()
    finished = False
    try:
        result = _run(opts, root, out, files, sources, captions, ranks, after_video, progress)
        finished = True
        return result
    finally:
        ranks.close(synchronize=finished)


def _run(opts, root, out, files, sources, captions, ranks, after_video, progress):
    state = None
    if ranks.rank == 0:  # one rank reads the folder's state and tells the others, so all agree
        try:
            index = _resumed_index(out, opts)
            state = ("ok", index, sum(not (out / video_file(s)).is_file() for s in sources))
        except (ValueError, OSError) as e:
            state = ("error", e)
    state = ranks.broadcast(state)
    if state[0] == "error":
        raise state[1]
    index, missing = state[1], state[2]
    if index is not None and index["complete"] and not missing:
        if ranks.rank == 0:
            print(f"{out}: already complete ({sum(len(s['clips']) for s in index['shards'])} clips)")
        return index, Throughput(ranks=ranks.world, workers=opts.workers)

    mine = [VideoTask(f, s) for i, (f, s) in enumerate(zip(files, sources))
            if i % ranks.world == ranks.rank and not (out / video_file(s)).is_file()]
    device = rank_device(opts.device, ranks.world)
    vae = text = None
    if mine or (ranks.rank == 0 and index is None):
        vae_dtype = torch.bfloat16 if opts.vae_dtype == "bfloat16" or (
            opts.vae_dtype == "auto" and device.type == "cuda") else torch.float32
        vae = load_vae(opts.vae, device, vae_dtype)
        text = TextEncoder.load(opts.text_encoder, opts.tokenizer, device,
                                torch.bfloat16 if device.type == "cuda" else torch.float32, opts.text_len)
    if ranks.rank == 0 and index is None:
        index = _new_index(out, opts, vae, text)
    ranks.barrier()  # the settings are on disk before any video file is

    start = time.perf_counter()
    done = Throughput(ranks=ranks.world, workers=opts.workers)
    if mine:
        bar = tqdm(total=len(mine), desc="prepare", unit="video", disable=not progress or ranks.rank != 0,
                   dynamic_ncols=True)
        try:
            _Encoder(out, opts, vae, text, after_video, bar, done).run(mine, captions)
        finally:
            bar.close()
    del vae, text
    done.videos, done.clips, done.frames, done.seconds = ranks.total(
        [done.videos, done.clips, done.frames], time.perf_counter() - start)

    if ranks.rank == 0:
        index.update(build_listing(out, sources), complete=True)
        write_text_atomic(out / INDEX, json.dumps(index, indent=1))
        for stale in (out / CLIPS).rglob(".*.tmp.safetensors"):  # left by a killed write; every rank is done
            stale.unlink(missing_ok=True)
        if index["skipped"]:
            print(f"skipped {len(index['skipped'])} video(s), listed with the reason in {out / INDEX}")
        print(done.line())
    return ranks.broadcast(index), done


def _resumed_index(out: Path, opts: PrepareOptions) -> dict | None:
    if not (out / INDEX).is_file():  # a kill before the first index leaves at most the empty prompt and temp files
        if out.exists() and any(p.name != EMPTY_PROMPT and not p.name.startswith(".") for p in out.iterdir()):
            raise FileExistsError(f"--out {str(out)!r} exists and is not a dataset being prepared (no {INDEX}); "
                                  f"expected a new or empty folder")
        return None
    index = read_index(out, "--out")
    if index["version"] != VERSION:
        raise ValueError(f"--out {str(out)!r} holds a dataset of an older layout (index version "
                         f"{index['version']}); it can be trained on as it is, but not resumed: write to a new --out")
    old, new = index["settings"], opts.content()
    changed = [f"{FLAGS[k]} was {old[k]!r}, now {new[k]!r}" for k in CONTENT if old.get(k) != new[k]]
    if changed:
        raise ValueError(f"--out {str(out)!r} was prepared with other settings ({'; '.join(changed)}): rerun "
                         f"with the same ones to resume, or write to a new --out")
    return index


def _latent_shape(opts: PrepareOptions, vae) -> list[int]:
    spatial = int(vae.config.scale_factor_spatial or 8)
    return [int(vae.config.z_dim), opts.chunks * FRAMES_PER_CHUNK, opts.size[0] // spatial, opts.size[1] // spatial]


def _new_index(out: Path, opts: PrepareOptions, vae, text: TextEncoder) -> dict:
    index = {
        "format": FORMAT, "version": VERSION, "complete": False, "settings": opts.content(),
        "geometry": {"video_frames": clip_video_frames(opts.chunks), "latent_frames": opts.chunks * FRAMES_PER_CHUNK,
                     "frames_per_chunk": FRAMES_PER_CHUNK, "chunks": opts.chunks,
                     "note": "1 + 4k video frames -> 1 + k latent frames; 3 latent frames per chunk"},
        "latent_shape": _latent_shape(opts, vae),
        "text_dim": text.dim,
        "vae": {"path": str(Path(opts.vae).resolve()), "config": _plain(vae.config),
                "dtype": str(next(vae.parameters()).dtype).removeprefix("torch.")},
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


class _Encoder:
    """The main thread's side: encodes the readers' clip groups as they come and writes each
    video's file once its last clip is encoded."""

    def __init__(self, out: Path, opts: PrepareOptions, vae, text: TextEncoder, after_video, bar, done) -> None:
        self.out, self.opts, self.vae, self.text = out, opts, vae, text
        self.after_video, self.bar, self.done = after_video, bar, done
        self.device = next(vae.parameters()).device
        self.expected = tuple(_latent_shape(opts, vae))
        self.dtype = DTYPES[opts.dtype]

    def run(self, tasks: list[VideoTask], captions: Captions) -> None:
        partial: dict[str, list] = {}  # source -> [(first frame, latents)] of the videos being read
        spec = self.opts.clip_spec()
        with contextlib.closing(read_videos(tasks, captions, spec, self.opts.workers)) as items:
            for item in items:
                self.take(item, partial, spec)

    def take(self, item, partial: dict, spec: ClipSpec) -> None:
        source = item.task.source
        if item.kind == "clips":
            partial.setdefault(source, []).extend(self.encode(item.task, item.payload))
        elif item.kind == "skip":
            partial.pop(source, None)  # clips read before a decoding error are dropped with the video
            self.write(source, {"source": source, "skipped": item.payload}, {})
            self.bar.write(f"skipped {item.task.path}: {item.payload}")
        elif item.kind == "end":
            clips = partial.pop(source)
            self.write_clips(source, item.payload, clips)
            self.done.videos += 1
            self.done.clips += len(clips)
            self.done.frames += len(clips) * spec.frames
        if item.kind != "clips":
            self.bar.update(1)
            if self.after_video is not None:
                self.after_video(source)

    def encode(self, task: VideoTask, group: list[tuple[int, np.ndarray]]) -> list[tuple[int, torch.Tensor]]:
        pixels = torch.from_numpy(np.stack([p for _, p in group])).to(self.device)  # (B, F, H, W, 3) uint8
        video = pixels.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)
        latents = encode(self.vae, video).cpu()
        if tuple(latents.shape[1:]) != self.expected:
            raise RuntimeError(f"{task.path}: latents {tuple(latents.shape[1:])}, expected {self.expected}")
        return [(start, z) for (start, _), z in zip(group, latents)]

    def write_clips(self, source: str, caption: str, clips: list[tuple[int, torch.Tensor]]) -> None:
        text = self.text.encode([caption])[0]
        tensors = {f"latents.{j}": z.to(self.dtype, copy=True) for j, (_, z) in enumerate(clips)}
        tensors["text"] = text.to(self.dtype, copy=True)
        record = {"source": source, "caption": caption,
                  "clips": [{"start_frame": start, "text_tokens": int(text.shape[0])} for start, _ in clips]}
        self.write(source, record, tensors)

    def write(self, source: str, record: dict, tensors: dict) -> None:
        from safetensors.torch import save_file

        meta = {RECORD_KEY: json.dumps(record)}
        atomic_write(self.out / video_file(source), lambda tmp: save_file(tensors, str(tmp), metadata=meta))
