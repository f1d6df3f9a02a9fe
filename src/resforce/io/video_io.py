"""Writing and reading whole videos for users: .mp4 (H.264), .webm (VP9), .gif and .npy.

Layouts accepted by the writers:
  * float (C, F, H, W) in [-1, 1], C in {1, 3}: the project's per-sample layout (torch or numpy);
  * uint8 (F, H, W, 3): the usual layout of decoded video frames.
The dtype decides which layout is meant, so a float array is never read as (F, H, W, C).

Writes are atomic: the file is written under a temporary name in the target directory and then
renamed over the target with os.replace, so an existing output is either the old file or the
complete new one, never half-written (e.g. when a long evaluation run is interrupted); see
resforce.io.fileio.atomic_write.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence, Union

import av
import numpy as np
import torch
from PIL import GifImagePlugin, Image

from resforce.io.fileio import atomic_write

VideoLike = Union[torch.Tensor, np.ndarray]

SAVE_EXTENSIONS = (".mp4", ".gif", ".npy", ".webm", ".m4v")
"""Extensions save_video can write."""
LOAD_EXTENSIONS = (".mp4", ".gif", ".npy", ".webm", ".mkv", ".mov", ".avi")
"""Extensions load_video can read (everything but .npy is decoded with PyAV)."""
MIN_VIEW_SIDE = 128
"""Default upscaling makes the shorter side at least this many pixels, so 32 px clips are viewable."""
DEFAULT_CRF = 18
"""Constant rate factor for H.264/VP9: 18 is visually lossless for H.264 (evaluation may re-read files)."""


def save_video(
    path: str | os.PathLike,
    frames: VideoLike,
    fps: float = 8,
    scale: int | None = None,
    min_side: int = MIN_VIEW_SIDE,
    crf: int = DEFAULT_CRF,
) -> Path:
    """Write a video atomically; the extension picks the format; returns the path written.

    frames: float (C, F, H, W) in [-1, 1] or uint8 (F, H, W, 3), torch or numpy.
    .npy stores the raw float32 (C, F, H, W) array (no clamping, no scaling).
    .mp4/.m4v: H.264 (libx264, yuv420p, "+faststart" so browsers start playing at once);
    .webm: VP9 (libvpx-vp9, yuv420p); .gif: one GIF frame per input frame.
    Everything but .npy is upscaled by an integer nearest-neighbour factor `scale`; None picks the
    smallest factor making the shorter side >= `min_side`. For .mp4/.webm an odd side (after
    scaling) is padded by one replicated row/column because yuv420p needs even sizes. `crf` is
    the encoder's constant rate factor (lower = better quality, larger files).
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in SAVE_EXTENSIONS:
        raise ValueError(f"cannot save {str(path)!r}: unsupported extension, use one of {SAVE_EXTENSIONS}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    video = _to_float_cfhw(frames)  # validates before any file is touched
    if ext == ".npy":
        return atomic_write(path, lambda f: _write_npy(f, video))
    pixels = _upscale(_to_uint8_fhwc(video), _resolve_scale(scale, video.shape[2:], min_side))
    if ext == ".gif":
        return atomic_write(path, lambda f: _write_gif(f, pixels, fps))
    if ext == ".webm":
        return atomic_write(path, lambda f: _write_webm(f, _pad_even(pixels), fps, crf=crf))
    return atomic_write(path, lambda f: _write_mp4(f, _pad_even(pixels), fps, crf=crf))


def load_video(path: str | os.PathLike) -> torch.Tensor:
    """Read a whole video as float32 (C, F, H, W) in [-1, 1] (.npy is returned as stored)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in LOAD_EXTENSIONS:
        raise ValueError(f"cannot load {str(path)!r}: unsupported extension, use one of {LOAD_EXTENSIONS}")
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {str(path)!r}")
    if ext == ".npy":
        try:
            array = np.load(path, allow_pickle=False)  # never unpickle what a user hands us
        except (ValueError, OSError, EOFError) as e:  # numpy's hint (allow_pickle=True) is unsafe: not forwarded
            raise ValueError(f"{str(path)!r} is not a numeric .npy array ({type(e).__name__}); expected a "
                             f"(C, F, H, W) float array saved with numpy.save; object arrays are never loaded") from None
        if array.ndim != 4:
            raise ValueError(f"{str(path)!r}: expected a (C, F, H, W) array, got shape {array.shape}")
        if 0 in array.shape:
            raise ValueError(f"{str(path)!r}: an empty video of shape {array.shape}: expected at least one frame "
                             f"of at least 1x1 pixel")
        return torch.from_numpy(array.astype(np.float32, copy=False))
    pixels = _decode_all(path)  # (F, H, W, 3) uint8
    video = pixels.astype(np.float32).transpose(3, 0, 1, 2) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(video))


def make_grid(videos: Sequence[VideoLike], separator: int = 2, separator_value: float = 1.0) -> np.ndarray:
    """Place videos side by side: float32 (C, F, H, sum(W) + separator * (n - 1)) in [-1, 1].

    All videos need the same channel count and height. Shorter videos hold their last frame so
    rollouts of different lengths can still be compared frame by frame.
    """
    if len(videos) == 0:
        raise ValueError("make_grid needs at least one video")
    clips = [_to_float_cfhw(v) for v in videos]
    c, _, h, _ = clips[0].shape
    for i, clip in enumerate(clips):
        if clip.shape[0] != c or clip.shape[2] != h:
            raise ValueError(
                f"videos[{i}] has shape {clip.shape}; all videos need C={c} and H={h} to share a grid"
            )
    num_frames = max(clip.shape[1] for clip in clips)
    gap = np.full((c, num_frames, h, separator), separator_value, dtype=np.float32)
    columns: list[np.ndarray] = []
    for i, clip in enumerate(clips):
        if clip.shape[1] < num_frames:
            hold = np.repeat(clip[:, -1:], num_frames - clip.shape[1], axis=1)
            clip = np.concatenate([clip, hold], axis=1)
        columns += [clip] if i == 0 or separator == 0 else [gap, clip]
    return np.concatenate(columns, axis=3)


def save_grid_video(
    path: str | os.PathLike,
    videos: Sequence[VideoLike],
    fps: float = 8,
    scale: int | None = None,
    separator: int = 2,
    separator_value: float = 1.0,
) -> Path:
    """Write several (C, F, H, W) videos side by side into one file, for comparisons.

    The separator is `separator` source pixels wide (white by default) and is upscaled with the
    videos, so it stays visible at any scale. See make_grid and save_video.
    """
    return save_video(path, make_grid(videos, separator, separator_value), fps=fps, scale=scale)


# ----------------------------------------------------------------------------- array layouts


def _to_float_cfhw(frames: VideoLike) -> np.ndarray:
    """Validate and convert any accepted layout to float32 (C, F, H, W)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        frames = frames.numpy() if frames.dtype == torch.uint8 else frames.float().numpy()
    array = np.asarray(frames)
    if array.ndim != 4:
        raise ValueError(
            f"frames must be 4-D: float (C, F, H, W) or uint8 (F, H, W, 3); got shape {array.shape}"
        )
    if array.dtype == np.uint8:
        if array.shape[3] != 3:
            raise ValueError(f"uint8 frames must be (F, H, W, 3); got shape {array.shape}")
        return array.transpose(3, 0, 1, 2).astype(np.float32) / 127.5 - 1.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"frames must be float (C, F, H, W) or uint8 (F, H, W, 3); got dtype {array.dtype}")
    if array.shape[0] not in (1, 3):
        raise ValueError(
            f"float frames must be (C, F, H, W) with C in (1, 3); got shape {array.shape} "
            "(for (F, C, H, W) data, permute to (C, F, H, W) first)"
        )
    if min(array.shape[1:]) < 1:
        raise ValueError(f"frames must not be empty; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("frames contain NaN or infinite values")
    return array.astype(np.float32, copy=False)


def _to_uint8_fhwc(video: np.ndarray) -> np.ndarray:
    """float (C, F, H, W) in [-1, 1] -> uint8 (F, H, W, 3); grey is repeated to RGB."""
    pixels = np.round((np.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    if pixels.shape[0] == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    return np.ascontiguousarray(pixels.transpose(1, 2, 3, 0))


def _resolve_scale(scale: int | None, size: tuple[int, ...], min_side: int = MIN_VIEW_SIDE) -> int:
    if scale is None:
        return max(1, math.ceil(min_side / min(size)))
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def _upscale(pixels: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (F, H, W, 3): keeps pixels crisp, unlike bilinear."""
    if scale == 1:
        return pixels
    return pixels.repeat(scale, axis=1).repeat(scale, axis=2)


def _pad_even(pixels: np.ndarray) -> np.ndarray:
    """yuv420p stores chroma at half resolution, so H.264 rejects odd widths/heights."""
    _, h, w, _ = pixels.shape
    return np.pad(pixels, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


# ----------------------------------------------------------------------------- writers


def _write_npy(tmp: Path, video: np.ndarray) -> None:
    with open(tmp, "wb") as f:  # a file object stops np.save from appending another ".npy"
        np.save(f, video, allow_pickle=False)


def _write_mp4(tmp: Path, pixels: np.ndarray, fps: float, crf: int = DEFAULT_CRF) -> None:
    """H.264 in MP4; falls back to MPEG-4 Part 2 when PyAV's FFmpeg lacks libx264."""
    if "libx264" in av.codecs_available:
        codec, options = "libx264", {"crf": str(crf)}
    else:
        codec, options = "mpeg4", {"qscale": "2"}
    # faststart moves the index to the front so browsers (HTML reports) can start playing at once.
    _encode(tmp, pixels, fps, "mp4", codec, options, {"movflags": "+faststart"})


def _write_webm(tmp: Path, pixels: np.ndarray, fps: float, crf: int = DEFAULT_CRF) -> None:
    """VP9 in WebM, constant quality (b=0); realtime settings keep encoding fast."""
    if "libvpx-vp9" not in av.codecs_available:
        raise RuntimeError("cannot write .webm: PyAV's FFmpeg has no libvpx-vp9 encoder; use .mp4")
    options = {"crf": str(max(crf, 15)), "b": "0", "deadline": "realtime", "cpu-used": "8"}
    _encode(tmp, pixels, fps, "webm", "libvpx-vp9", options)


def _encode(
    tmp: Path,
    pixels: np.ndarray,
    fps: float,
    fmt: str,
    codec: str,
    options: dict[str, str],
    container_options: dict[str, str] | None = None,
) -> None:
    """Encode uint8 (F, H, W, 3) (even H and W) as yuv420p with PyAV."""
    _, h, w, _ = pixels.shape
    with av.open(str(tmp), mode="w", format=fmt, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.options = options
        for frame in pixels:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed (B-)frames
            container.mux(packet)


def _write_gif(tmp: Path, pixels: np.ndarray, fps: float) -> None:
    """GIF with one frame per input frame.

    Image.save(save_all=True) silently merges identical consecutive frames into one longer
    frame, which changes the frame count (a ball at rest, a static background clip). So the
    file is assembled from Pillow's per-frame GIF blocks instead: header, one block per frame
    (each with its own 256-colour palette, for accuracy), trailer.
    """
    # GIF delays are whole centiseconds, and browsers replace delays < 20 ms with 100 ms.
    duration_ms = max(20, round(100.0 / fps) * 10)
    images = [Image.fromarray(frame).quantize(256, method=Image.Quantize.MEDIANCUT) for frame in pixels]
    header, _ = GifImagePlugin.getheader(images[0], info={"loop": 0, "duration": duration_ms})
    with open(tmp, "wb") as f:
        f.writelines(header)
        for image in images:
            f.writelines(GifImagePlugin.getdata(image, duration=duration_ms, include_color_table=True))
        f.write(b";")  # GIF trailer


# ----------------------------------------------------------------------------- reader


def _decode_all(path: Path) -> np.ndarray:
    """Decode every frame of the first video stream to uint8 (F, H, W, 3)."""
    try:
        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.FFmpegError, ValueError, IndexError) as err:  # a file without a video stream (PyAV: ValueError or IndexError)
        raise ValueError(f"cannot decode video {str(path)!r}: {err}") from err
    if not frames:
        raise ValueError(f"video {str(path)!r} contains no frames")
    return np.stack(frames)
