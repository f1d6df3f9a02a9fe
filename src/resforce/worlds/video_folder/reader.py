"""Training clips from a folder of video files on disk, decoded with PyAV.

Every sample picks a random file and a random start frame, takes `num_frames` frames every
`frame_stride` frames, centre-crops them to the target aspect ratio and resizes them. A caption
sidecar `name.txt` next to `name.mp4` is returned with the clip when present.

Actions (world models): with `actions.kind` discrete or continuous, every `NAME.mp4` needs
`NAME.actions.npy` beside it, one action per frame of the file: int64 (frames,) in [0, n) or
float32 (frames, dim). All sidecars are read and checked when the folder opens, so a missing
one, a length that is not the file's frame count, or a value outside the action space stops
training at start, naming the file. A clip carries the actions of its frames (with
frame_stride > 1: the action that produced each sampled frame) in the batch info's `.actions`.

Which frame a logged action belongs to (`actions.alignment`): gymnasium / ALE recordings store,
beside observation t, the action taken after it, the one that produces observation t + 1
('produces_next', the default); resforce conditions frame f on the action that produced it
(resforce.actions), so such a log is shifted by one frame when read: frame f gets logged
action f - 1, and frame 0 of a file, which no logged action produced, gets the null action
(the last logged action produced no frame of the file and is dropped). Logs that store beside
frame f the action that produced it say 'produced_this' and are used as they are.

Bad data fails loudly: a file that cannot be decoded or is too short raises with the file
name and frame counts. Every file's container header is probed when the folder is opened
(`probe_videos`: 0.6 s for 1,000 small files, benchmarks/bench_probe.py), so an unreadable file
stops training at start, not at the step that first draws it; a file whose header survives but
whose data is cut short is caught when it is read (or up front by `VideoFolder.verify`, which
demuxes every file).
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import av
import numpy as np
import torch
from resforce.worlds.config_coerce import coerce_config
from PIL import Image

from resforce.actions import ALIGNMENTS, ActionSpace, per_frame_actions


@dataclass
class SidecarActions(ActionSpace):
    """The action space of a folder's NAME.actions.npy sidecars, plus how they are aligned."""

    alignment: str = "produces_next"
    """'produces_next': the action beside frame t is the one taken after it, producing frame
    t + 1 (how gymnasium / ALE loops record (observation, action) pairs); 'produced_this': the
    action beside frame t produced frame t (resforce's own convention, used as is)."""

    def validate(self, where: str = "action space") -> None:
        super().validate(where)
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"{where}.alignment must be one of {', '.join(ALIGNMENTS)}, got {self.alignment!r}")

    def per_frame(self, logged: np.ndarray) -> np.ndarray:
        """Checked logged actions (frames[, dim]) as resforce's per-frame actions: entry f is the
        action that produced frame f (produces_next: shifted by one, the null action at frame 0)."""
        return per_frame_actions(logged, self.alignment)


class VideoFileError(ValueError):
    """A video file cannot be used for training (undecodable, or too short)."""


@dataclass
class VideoFolderConfig:
    """Where the videos are and how clips are cut from them."""

    root: str = ""
    """Folder searched recursively for video files (a str or os.PathLike)."""
    extensions: list[str] = field(
        default_factory=lambda: [".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif"]
    )
    """File extensions treated as videos (case-insensitive, with the leading dot)."""
    resolution: int | list[int] = 32
    """Output size: an int (square) or [H, W]; frames are centre-cropped to this aspect, then resized."""
    num_frames: int = 16
    """Frames per clip."""
    frame_stride: int = 1
    """Take every k-th decoded frame (k > 1 lowers the effective frame rate)."""
    seed: int = 0
    """Seed of the file/start-frame choices; the same seed gives the same clips."""
    actions: SidecarActions = field(default_factory=SidecarActions)
    """Per-frame actions from NAME.actions.npy sidecars (kind 'none': no actions, sidecars
    ignored; 'discrete' with n; 'continuous' with dim; names / keys / default for a player;
    alignment: produces_next (gymnasium's, the default) or produced_this)."""

    def __post_init__(self) -> None:
        if isinstance(self.actions, Mapping):
            self.actions = SidecarActions(**self.actions)
        elif type(self.actions) is ActionSpace:
            self.actions = SidecarActions(**dataclasses.asdict(self.actions))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        size = self.size
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"resolution must be a positive int or [H, W], got {self.resolution!r}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if not self.extensions or not all(str(e).startswith(".") for e in self.extensions):
            raise ValueError(f"extensions must be a non-empty list like ['.mp4'], got {self.extensions!r}")
        self.actions.validate("data.video_folder.actions")

    @property
    def size(self) -> tuple[int, ...]:
        """Output (H, W)."""
        if isinstance(self.resolution, int):
            return (self.resolution, self.resolution)
        return tuple(int(v) for v in self.resolution)

    @property
    def span(self) -> int:
        """Decoded frames one clip covers: first to last sampled frame inclusive."""
        return (self.num_frames - 1) * self.frame_stride + 1


class VideoFolder:
    """Random clips from the video files under config.root; resumable like BouncingBalls."""

    def __init__(self, config: VideoFolderConfig | Mapping[str, Any]) -> None:
        config = self.config = coerce_config(config, VideoFolderConfig)
        self.files = _list_videos(Path(config.root), config.extensions)
        probe_videos(self.files)
        self.rng = np.random.default_rng(config.seed)
        self._frame_counts: dict[Path, int] = {}  # demuxing is cheap but not free; files don't change
        self.actions = self._read_actions() if config.actions.kind != "none" else {}
        """file -> its per-frame actions (checked against config.actions), when it has some."""

    def __len__(self) -> int:
        return len(self.files)

    def sample(self) -> tuple[torch.Tensor, str | None]:
        """A random clip: float32 (3, F, H, W) in [-1, 1], and its caption (None without a sidecar)."""
        return self.sample_with_actions()[:2]

    def sample_with_actions(self) -> tuple[torch.Tensor, str | None, np.ndarray | None]:
        """sample(), plus the clip frames' actions (None without an action space)."""
        path = self.files[int(self.rng.integers(len(self.files)))]
        available = self.frame_count(path)
        if available < self.config.span:
            raise VideoFileError(self._too_short_message(path, available))
        start = int(self.rng.integers(available - self.config.span + 1))
        actions = self.actions.get(path)
        if actions is not None:
            actions = actions[start:start + self.config.span:self.config.frame_stride]
        return self.read_clip(path, start), read_caption(path), actions

    def batch(self, batch_size: int, num_frames: int | None = None) -> tuple[torch.Tensor, "ClipInfo"]:
        """`batch_size` random clips: (B, 3, F, H, W) and their captions (a ClipInfo list, with
        `.actions` (B, F[, D]) where the folder has an action space). `num_frames` (like
        BouncingBalls.batch) sets the clip length from now on; None keeps config.num_frames.
        The stream position (rng) carries on across clip lengths."""
        if num_frames is not None and num_frames != self.config.num_frames:
            self.config = dataclasses.replace(self.config, num_frames=num_frames)
        clips = [self.sample_with_actions() for _ in range(batch_size)]
        actions = np.stack([c[2] for c in clips]) if self.actions else None
        return torch.stack([c[0] for c in clips]), ClipInfo([c[1] for c in clips], actions)

    def _read_actions(self) -> dict[Path, np.ndarray]:
        """Every file's NAME.actions.npy, checked against the action space and the file's frame
        count (ValueError naming the file); data only (allow_pickle=False). Returned per frame
        in resforce's convention (entry f produced frame f; see `actions.alignment`)."""
        out = {}
        for path in self.files:
            sidecar = actions_sidecar(path)
            if not sidecar.is_file():
                raise VideoFileError(f"{str(sidecar)!r} is missing: with data.video_folder.actions.kind="
                                     f"{self.config.actions.kind} every video needs its per-frame actions beside it")
            try:
                raw = np.load(sidecar, allow_pickle=False)
            except (ValueError, OSError) as err:
                raise VideoFileError(f"cannot read actions {str(sidecar)!r}: {err}") from err
            checked = self.config.actions.check(raw, self.frame_count(path), f"actions {str(sidecar)!r}")
            out[path] = self.config.actions.per_frame(checked)
        return out

    def frame_count(self, path: Path) -> int:
        """Number of frames in a file, counted from its packets (no decoding)."""
        if path not in self._frame_counts:
            self._frame_counts[path] = _count_frames(path)
        return self._frame_counts[path]

    def verify(self) -> None:
        """Check every file up front (decodable container, long enough), e.g. before a long run."""
        for path in self.files:
            available = self.frame_count(path)
            if available < self.config.span:
                raise VideoFileError(self._too_short_message(path, available))

    def read_clip(self, path: Path, start: int) -> torch.Tensor:
        """Frames start, start + stride, ... (num_frames of them) as float32 (3, F, H, W) in [-1, 1]."""
        cfg = self.config
        wanted = range(start, start + cfg.span, cfg.frame_stride)
        frames: list[np.ndarray] = []
        try:
            with av.open(str(path)) as container:
                # Decode from the beginning: seeking lands on keyframes and gives no exact frame index.
                for index, frame in enumerate(container.decode(video=0)):
                    if index in wanted:
                        frames.append(crop_resize(frame.to_image(), cfg.size))
                    if len(frames) == cfg.num_frames:
                        break
        except av.FFmpegError as err:
            raise VideoFileError(f"cannot decode video {str(path)!r}: {err}") from err
        if len(frames) < cfg.num_frames:  # container metadata promised more frames than it held
            decoded = start + (len(frames) - 1) * cfg.frame_stride + 1 if frames else start
            raise VideoFileError(self._too_short_message(path, decoded))
        video = np.stack(frames).astype(np.float32).transpose(3, 0, 1, 2) / 127.5 - 1.0
        return torch.from_numpy(np.ascontiguousarray(video))

    def state_dict(self) -> dict[str, Any]:
        """Stream position (numpy generator state), picklable for checkpoints."""
        return {"seed": self.config.seed, "bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the clip stream exactly where state_dict() was taken."""
        self.rng.bit_generator.state = state["bit_generator"]

    def _too_short_message(self, path: Path, available: int) -> str:
        cfg = self.config
        return (
            f"video {str(path)!r} has {available} frames but a clip needs {cfg.span} "
            f"(num_frames={cfg.num_frames}, frame_stride={cfg.frame_stride})"
        )


class ClipInfo(list):
    """The captions of a batch (a list, one per clip, None without a sidecar), plus the
    clips' per-frame `actions` ((B, F) int64 or (B, F, D) float32; None without)."""

    def __init__(self, captions, actions: np.ndarray | None = None) -> None:
        super().__init__(captions)
        self.actions = actions


def actions_sidecar(path: Path) -> Path:
    """NAME.actions.npy beside NAME.<ext>."""
    return path.with_name(path.stem + ".actions.npy")


def read_caption(path: Path) -> str | None:
    """Text of the sidecar caption `name.txt` next to `name.<ext>`, or None."""
    sidecar = path.with_suffix(".txt")
    return sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None


_PROBED: set[tuple[str, int, int]] = set()
"""(path, size, mtime) of files whose header already passed probe_videos in this process."""


def probe_videos(files: list[Path]) -> None:
    """Open every file's container header with PyAV: it must parse and hold a video stream
    that FFmpeg can decode. Raises VideoFileError naming each file that fails (the first 10)
    and why. Unchanged files probed before in this process are skipped."""
    bad = []
    for path in files:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key in _PROBED:
            continue
        try:
            with av.open(str(path)) as container:
                streams = container.streams.video
                if not streams:
                    raise VideoFileError("no video stream")
                if streams[0].codec_context is None:
                    raise VideoFileError("no decoder for its video stream")
        except (av.FFmpegError, VideoFileError, UnicodeDecodeError) as err:
            bad.append(f"{str(path)!r} ({err})")
            continue
        _PROBED.add(key)
    if bad:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise VideoFileError(f"{len(bad)} of {len(files)} video file(s) cannot be opened; expected readable "
                             f"video containers: " + "; ".join(bad[:10]) + more)


def list_videos(root: str | Path, extensions: list[str]) -> list[Path]:
    """The video files under root (recursively), sorted; FileNotFoundError if there are none."""
    return _list_videos(Path(root), extensions)


def _list_videos(root: Path, extensions: list[str]) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"video root {str(root)!r} is not a directory")
    wanted = {e.lower() for e in extensions}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in wanted)
    if not files:
        raise FileNotFoundError(
            f"no video files under {str(root)!r} (searched recursively for {sorted(wanted)})"
        )
    return files


def _count_frames(path: Path) -> int:
    """Count the video stream's packets: one per frame for the codecs used for clips.

    stream.frames (container metadata) is 0 for .mkv/.webm/.gif, hence demuxing.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoFileError(f"{str(path)!r} has no video stream")
            packets = container.demux(container.streams.video[0])
            return sum(1 for p in packets if p.size > 0)  # the last packet is an empty flush marker
    except av.FFmpegError as err:
        raise VideoFileError(f"cannot decode video {str(path)!r}: {err}") from err


def crop_resize(image: Image.Image, size: tuple[int, ...]) -> np.ndarray:
    """Centre crop to the target aspect ratio, then resize: uint8 (H, W, 3)."""
    height, width = size
    w0, h0 = image.size
    if (w0, h0) == (width, height):
        return np.asarray(image.convert("RGB"))
    # Largest centred box with the target aspect; PIL accepts a sub-pixel box, so no rounding bias.
    crop_w, crop_h = min(w0, h0 * width / height), min(h0, w0 * height / width)
    left, top = (w0 - crop_w) / 2, (h0 - crop_h) / 2
    box = (left, top, left + crop_w, top + crop_h)
    resized = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC, box=box)
    return np.asarray(resized)

