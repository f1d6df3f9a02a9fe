"""One trainer per run directory: an OS file lock on run_dir/.lock, held for the run's lifetime.

`fcntl.flock` is released by the kernel when its holder exits, however it exits (kill -9
included), so a lock can never outlive its process; the holder's PID is written inside the
file for the error message. Finding a PID in the file when the lock is free means the last
holder died without cleaning up: its lock is taken over and a warning says so. A clean release
empties the file. The file is never deleted (deleting a lock file lets two processes lock two
different inodes of the same name).

Only rank 0 locks under torchrun (the trainer broadcasts the outcome to the other ranks).
"""

from __future__ import annotations

import errno
import fcntl
import os
import warnings
from pathlib import Path

LOCK_NAME = ".lock"


class RunLocked(ValueError):
    """Another live process holds the run directory's lock; the message names its PID."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """`RunLock(run_dir).acquire()` ... `.release()`; also a context manager."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._file = None
        self.took_over: int | None = None
        """PID of a dead holder whose stale lock acquire() took over, else None."""

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunLocked(f"run directory {self.path.parent} is in use by another trainer "
                                f"(PID {holder}, lock file {self.path}); wait for it to finish, stop it, "
                                f"or pick another run_dir") from None
            raise
        f.seek(0)
        previous = f.read().strip()
        if previous.isdigit() and int(previous) != os.getpid():
            self.took_over = int(previous)
            state = "no longer running" if not _alive(int(previous)) else "running but not holding it"
            warnings.warn(f"took over the stale lock {self.path} of PID {previous} ({state}; "
                          f"that trainer ended without releasing it)", stacklevel=2)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
        self._file = f
        return self

    def release(self) -> None:
        if self._file is None:
            return
        f, self._file = self._file, None
        try:
            f.seek(0)
            f.truncate()  # empty file: released cleanly (a PID left inside means a crash)
            f.flush()
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()

    def __enter__(self) -> "RunLock":
        return self.acquire() if not self.held else self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a dropped Trainer lets go of its directory
        try:
            self.release()
        except Exception:
            pass
