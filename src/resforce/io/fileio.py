"""Atomic, durable file writes: the target is either the old file or the complete new one.

The content is written under a temporary name in the target's directory (same filesystem, so
os.replace is an atomic rename), flushed to disk (fsync), renamed over the target, and the
directory is fsynced so the rename itself survives a power loss. On any error, including
KeyboardInterrupt, the temporary file is removed and an existing target is left untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "write_text_atomic", "fsync_file", "fsync_dir"]


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data and metadata to disk (whoever wrote it, through whatever handle)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries to disk: makes renames, creations and deletions in it durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``.

    Parent directories are created. The temporary name keeps ``path``'s suffix, so writers that
    infer the format from the name (encoders, ``savefig``) still see ".mp4", ".png", ...
    The file is fsynced before the rename and its directory after it. Returns ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        fsync_file(tmp)  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename is on disk
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically and durably (see atomic_write); returns the path."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))
