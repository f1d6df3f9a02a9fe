"""Reading the videos of a prepare: decoded, cropped and resized in worker threads.

Each video is read by one worker into a stream of items: its clips in groups of up to `batch`
(the groups the VAE encodes; a group never mixes videos, so what a clip encodes to does not
depend on which videos were read beside it, by which worker or rank, in which order), then an
"end" item with its caption, or a "skip" item with the reason it gives no clip. The items go
through a bounded queue to the main thread, which runs the VAE on them as they come: decoding
(PyAV releases the GIL while FFmpeg decodes, PIL while it resizes) overlaps the encoding.

Memory: at most `queue_depth` groups wait in the queue, each worker holds one more it cannot
put yet and the main thread the one it encodes, so at most (queue_depth + workers + 1) x batch
clips of pixels are alive at once, however many and however long the videos. With workers = 0 the main thread reads each video itself (the same
items, in the same order of videos).

A video that cannot give a clip (no caption, no video stream, undecodable, too short) is a
"skip" item: listed with its reason, never fatal. Anything else a worker raises (an OSError
reading the file, a bug) is an "error" item naming the file; the reader stops its workers and
`VideoReadError` names the file and the cause.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np


class SkipVideo(Exception):
    """A video that cannot give a clip; the message is the reason listed in the index."""


class VideoReadError(ValueError):
    """Reading a video failed for a reason other than bad content (the message names the file)."""


@dataclass(frozen=True)
class VideoTask:
    """One video to read: its file and its name in the dataset (relative to VIDEO_DIR)."""

    path: Path
    source: str


@dataclass
class Item:
    """What a reader hands the encoder. kind: 'clips' (payload: [(first frame, uint8 (F, H, W, 3))]),
    'end' (payload: the caption), 'skip' (payload: the reason) or 'error' (payload: the exception)."""

    task: VideoTask
    kind: str
    payload: Any = field(repr=False)


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from a video."""

    frames: int
    """Video frames per clip."""
    size: tuple[int, int]
    """(H, W) of the frames."""
    stride: int = 1
    """Keep every k-th decoded frame."""
    limit: int = 0
    """Clips per video, cut one after the other from its first frame; 0 = as many as fit."""
    batch: int = 1
    """Clips per 'clips' item (per VAE call)."""


def clip_groups(path: Path, spec: ClipSpec) -> Iterator[list[tuple[int, np.ndarray]]]:
    """[(first frame, uint8 (frames, H, W, 3))] groups of up to spec.batch clips, cut one after
    the other from the video's first frame. SkipVideo if it gives none or cannot be decoded
    (raised before any frame is decoded when the container or its stream is unusable)."""
    import av

    from resforce.worlds.video_folder.reader import crop_resize  # the video_folder world's crop: the same framing

    group, current, start, kept, made = [], [], 0, 0, 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SkipVideo("no video stream")
            for index, frame in enumerate(container.decode(video=0)):
                if index % spec.stride:
                    continue
                if not current:
                    start = index
                current.append(crop_resize(frame.to_image(), spec.size))
                kept += 1
                if len(current) < spec.frames:
                    continue
                group.append((start, np.stack(current)))
                current, made = [], made + 1
                if len(group) == spec.batch:
                    yield group
                    group = []
                if spec.limit and made == spec.limit:
                    break
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise SkipVideo(f"cannot decode: {e}") from None
    if not made:
        raise SkipVideo(f"too short: {kept} frame(s) with --frame-stride {spec.stride}, a clip needs "
                        f"{spec.frames} (--chunks)")
    if group:
        yield group


def video_items(task: VideoTask, captions, spec: ClipSpec) -> Iterator[Item]:
    """The items of one video; never raises (an unexpected failure is an 'error' item)."""
    try:
        caption = captions.caption(task.path)
        if caption is None:  # before decoding anything
            yield Item(task, "skip", captions.describe())
            return
        for group in clip_groups(task.path, spec):
            yield Item(task, "clips", group)
        yield Item(task, "end", caption)
    except SkipVideo as e:
        yield Item(task, "skip", str(e))
    except Exception as e:  # noqa: BLE001 - handed to the main thread, which raises it naming the file
        yield Item(task, "error", e)


def read_videos(tasks: Iterable[VideoTask], captions, spec: ClipSpec, workers: int,
                queue_depth: int | None = None) -> Iterator[Item]:
    """The items of every video: each video's items in order, videos interleaved as the
    workers finish them (workers = 0: in the main thread, video after video). Raises
    VideoReadError naming the file at the first 'error' item. Closing the iterator (or an
    exception in the consumer) stops the workers."""
    items = _serial(tasks, captions, spec) if workers <= 0 else _Pool(tasks, captions, spec, workers, queue_depth)
    try:
        for item in items:
            if item.kind == "error":
                e = item.payload
                raise VideoReadError(f"reading {item.task.path} failed: {type(e).__name__}: {e}") from e
            yield item
    finally:
        if isinstance(items, _Pool):
            items.close()


def _serial(tasks, captions, spec) -> Iterator[Item]:
    for task in tasks:
        yield from video_items(task, captions, spec)


_DONE = object()  # a worker's last item


class _Pool:
    """`workers` threads, each taking the next task and putting its items on a bounded queue."""

    def __init__(self, tasks, captions, spec, workers: int, queue_depth: int | None) -> None:
        self.captions, self.spec = captions, spec
        self.tasks, self.lock = iter(tasks), threading.Lock()
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, queue_depth or workers))
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._work, name=f"prepare-reader-{i}", daemon=True)
                        for i in range(workers)]
        for t in self.threads:
            t.start()

    def _next_task(self) -> VideoTask | None:
        with self.lock:  # a shared iterator: each task is read by exactly one worker
            return next(self.tasks, None)

    def _put(self, item) -> bool:
        while not self.stop.is_set():  # a full queue blocks, but never past close()
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            while not self.stop.is_set():
                task = self._next_task()
                if task is None:
                    break
                for item in video_items(task, self.captions, self.spec):
                    if not self._put(item):
                        return
        finally:
            self._put(_DONE)

    def __iter__(self) -> Iterator[Item]:
        running = len(self.threads)
        while running:
            item = self.queue.get()
            if item is _DONE:
                running -= 1
            else:
                yield item

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            while t.is_alive():  # empty the queue so a worker blocked on put sees the stop
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    t.join(0.05)
