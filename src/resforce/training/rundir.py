"""The run directory: one trainer at a time, a fresh start never mixed with an old run,
leftovers of a crash cleaned up, and a metrics log that survives a half-written line.

`open_run_dir` runs on rank 0 before anything is read or written:
1. creates run_dir and takes its lock (runlock.py): a second trainer fails naming the holder;
2. a fresh start (resume=False) in a directory that already holds a run (checkpoints or a
   metrics log) is refused, unless `overwrite`: then the whole directory is renamed to
   run_dir.old-<time> in one atomic rename and a new, empty run_dir is started;
3. removes what a trainer killed mid-save left (checkpoint.recover_interrupted_saves).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

from resforce.training.checkpoint import checkpoint_dirs, recover_interrupted_saves
from resforce.io.fileio import fsync_dir
from resforce.training.runlock import RunLock

METRICS = "metrics.jsonl"


class RunDirInUse(ValueError):
    """A fresh start was asked for in a directory that holds another run."""


def is_used(run_dir: str | os.PathLike) -> bool:
    """Does run_dir hold a run (a checkpoint or a non-empty metrics log)?"""
    d = Path(run_dir)
    metrics = d / METRICS
    return bool(checkpoint_dirs(d)) or (metrics.is_file() and metrics.stat().st_size > 0)


def _aside_name(run_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = run_dir.with_name(f"{run_dir.name}.old-{stamp}"), 1
    while target.exists():
        target, n = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}"), n + 1
    return target


def open_run_dir(run_dir: str | os.PathLike, resume: bool, overwrite: bool = False) -> RunLock:
    """Lock run_dir for this trainer (steps 1-3 above); returns the held lock."""
    run_dir = Path(run_dir)
    blocker = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise NotADirectoryError(f"run_dir={run_dir}: {blocker} is a file, not a directory; expected a run "
                                 f"directory (or a path where one can be made)")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir).acquire()
    try:
        if not resume and is_used(run_dir):
            last = checkpoint_dirs(run_dir)
            held = f"checkpoints up to {last[-1].name}" if last else f"a {METRICS}"
            if not overwrite:
                raise RunDirInUse(f"run_dir {run_dir} already holds a run ({held}); --no-resume would mix "
                                  f"two runs: add --overwrite to move the old run aside to "
                                  f"{run_dir.name}.old-<time>, resume it (drop --no-resume), or pick "
                                  f"another run_dir")
            aside = _aside_name(run_dir)
            os.replace(run_dir, aside)  # one atomic rename: the old run stays whole
            fsync_dir(run_dir.parent)
            run_dir.mkdir()
            fresh = RunLock(run_dir).acquire()
            lock.release()
            lock = fresh
            warnings.warn(f"--overwrite: moved the previous run ({held}) from {run_dir} to {aside}",
                          stacklevel=2)
        for line in recover_interrupted_saves(run_dir):
            warnings.warn(f"{run_dir}: {line}", stacklevel=2)
    except BaseException:
        lock.release()
        raise
    return lock


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics log. Lines that are not a JSON object (a half-written last
    line after a full disk or a kill) are skipped with a warning naming the file and line."""
    path = Path(path)
    records, bad = [], []
    for i, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad.append(i)
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} unreadable line(s) (line {', '.join(map(str, bad[:5]))}); "
                      f"expected one JSON object per line (an interrupted write leaves a half line)",
                      stacklevel=2)
    return records
