"""Captions of the videos to prepare: `clip.txt` beside `clip.mp4`, or one manifest.

A manifest maps video paths (relative to the video folder, or absolute) to captions:
  JSON: {"clip.mp4": "a caption", ...} or [{"file": "clip.mp4", "caption": "..."}, ...]
  CSV:  a header row with the columns `file` and `caption`.
With a manifest the sidecars are not read. A video without a caption is skipped (and listed).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path


class Captions:
    """caption(video) -> str or None."""

    def __init__(self, root: Path, manifest: str | Path | None = None) -> None:
        self.root = root
        self.table = None if manifest is None else read_manifest(Path(manifest), root)

    def caption(self, video: Path) -> str | None:
        if self.table is not None:
            return self.table.get(video.resolve())
        sidecar = video.with_suffix(".txt")
        return sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None

    def describe(self) -> str:
        """Where captions come from, for the skip reason of a video without one."""
        return "no entry in the caption manifest" if self.table is not None else "no caption file (clip.txt beside clip.mp4)"


def read_manifest(path: Path, root: Path) -> dict[Path, str]:
    """{absolute video path: caption} of a JSON or CSV manifest (ValueError naming the file)."""
    if not path.is_file():
        raise FileNotFoundError(f"--captions {str(path)!r}: no such file (expected a .json or .csv manifest)")
    if path.suffix.lower() == ".json":
        rows = _json_rows(path)
    elif path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"--captions {path}: the CSV header must name the columns 'file' and "
                                 f"'caption', got {reader.fieldnames}")
            rows = [(r["file"], r["caption"]) for r in reader]
    else:
        raise ValueError(f"--captions {path}: expected a .json or .csv manifest")
    table = {}
    for name, caption in rows:
        if not isinstance(name, str) or not isinstance(caption, str):
            raise ValueError(f"--captions {path}: every entry needs a file name and a caption text, got {name!r}: {caption!r}")
        table[(root / name).resolve()] = caption.strip()
    return table


def _json_rows(path: Path) -> list[tuple]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"--captions {path}: not valid JSON: {e}") from None
    if isinstance(data, dict):
        return list(data.items())
    if isinstance(data, list) and all(isinstance(r, dict) and {"file", "caption"} <= set(r) for r in data):
        return [(r["file"], r["caption"]) for r in data]
    raise ValueError(f"--captions {path}: expected {{\"clip.mp4\": \"caption\"}} or a list of "
                     f"{{\"file\": ..., \"caption\": ...}} objects")
